//! One reactor's loop: accept, take in bytes (read into the shared buffer, or a completion
//! backend's provided buffer), drive each connection's protocol state machine, dispatch to the
//! handler, write (corked, or queued and submitted), fire timers, drain on shutdown.
//! Backend-independent: the OS part is a [`Backend`].

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use slab::Slab;

use super::buffer::Pool;
use super::compression::{Compression, ConnInflate};
use super::mailbox::Mailboxes;
use super::sys::{Backend, Flushed, IoEvent, Sockets};
use super::timer::{TimerKey, TimerWheel};
use super::txqueue::TxQueue;
use super::{Answer, Config, ConnId, Ctx, Handler, Local, LocalOps, Push, Sink, Stats};
use clarion_protocol::deflate::Params;
use clarion_protocol::handshake::write_response;
use clarion_protocol::{CloseCode, Connection, Event, State, Transmit};

/// How often the reactor sweeps its table for deadlines coming up. A connection holds a wheel
/// node only while its next deadline is within one sweep, so an idle connection waiting out a
/// 30 s ping interval holds none (24 bytes saved per connection).
const SWEEP: Duration = super::SWEEP_INTERVAL;
/// Timer resolution: fine enough for close and pong deadlines, coarse enough to batch.
const TICK: Duration = Duration::from_millis(10);
/// 4096 ticks of 10 ms: one rotation covers 41 s, so common timeouts fire in one pass.
const WHEEL_SLOTS: usize = 4096;
/// Reads from one socket per readiness event before others get a turn.
const MAX_READS_PER_EVENT: usize = 8;
/// Inbox messages handled per loop turn before connections get a turn.
const MAX_INBOX_PER_TURN: usize = 4096;
/// Accepts per loop turn before connections get a turn.
const MAX_ACCEPTS_PER_TURN: usize = 256;
/// Bytes gathered in the cork buffer before writing; larger payloads are written directly.
const CORK_SIZE: usize = 16 << 10;
/// Pause after the process or system runs out of descriptors or memory at accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one accept-error log line per interval.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// The WebSocket is over: on_close has run, FIN is sent once the queue drains, and the socket
/// is closed at the peer's FIN or after the close timeout.
const LINGER: u8 = 1;
/// The handler saw `on_open`, so it gets `on_close`.
const OPENED: u8 = 2;
/// A read hit the per-event cap: read again next turn (edge-triggered, no new event will come).
const READ_AGAIN: u8 = 4;
/// Closed: the entry stays (with its queue, which the kernel may still be reading) until the
/// backend has no operation in flight on it and the current turn's events are all handled,
/// so that no event of a batch reaches a connection that reuses the token.
const RELEASING: u8 = 8;
/// FIN was sent.
const FIN_SENT: u8 = 16;
/// The peer's FIN is pending behind the data: read to the end of the stream.
const PEER_CLOSED: u8 = 32;
/// Frames were queued for it while draining the inbox: flush it once the drain is done.
const DIRTY: u8 = 64;
/// It negotiated permessage-deflate and is counted by the reactor's [`Compression`] until
/// released (once, when its WebSocket ends).
const DEFLATE: u8 = 128;

/// One connection's entry in the table. Everything an idle connection costs is here (plus its
/// timer): no buffer, no queue.
struct Conn<S, C> {
    socket: S,
    ws: Connection,
    #[allow(
        clippy::box_collection,
        reason = "one word per connection instead of a Vec's three"
    )]
    rx: Option<Box<Vec<u8>>>,
    tx: Option<Box<TxQueue>>,
    timer: Option<TimerKey>,
    app: Option<C>,
    flags: u8,
}

impl<S, C> Sockets<S> for Slab<Conn<S, C>> {
    fn socket(&mut self, token: usize) -> Option<&mut S> {
        self.get_mut(token).map(|conn| &mut conn.socket)
    }
}

pub(super) struct Reactor<B: Backend, H: Handler> {
    backend: B,
    core: Core<B::Socket, H>,
    events: Vec<IoEvent<B::Socket>>,
    index: usize,
    mailboxes: Arc<Mailboxes<H::Inbox>>,
    /// The inbox held more than one turn's worth: drain again without waiting.
    inbox_again: bool,
}

/// Everything of a reactor but its backend, so that a completion backend's buffer can be
/// borrowed while the core processes it.
struct Core<S, H: Handler> {
    handler: H,
    config: Arc<Config>,
    stats: Arc<Stats>,
    conns: Slab<Conn<S, H::Conn>>,
    /// Peer addresses of connections still handshaking (handed to `on_request`), kept apart so
    /// open connections do not pay for them.
    peers: HashMap<usize, SocketAddr>,
    timers: TimerWheel<u32>,
    rx_pool: Pool<Vec<u8>>,
    tx_pool: Pool<TxQueue>,
    read_buf: Box<[u8]>,
    cork: Vec<u8>,
    scratch: Vec<u8>,
    compression: Compression,
    read_again: Vec<usize>,
    /// Connections with frames queued during the inbox drain.
    dirty: Vec<usize>,
    /// Connections the handler wrote to or closed during a sweep: (token, socket failed).
    swept: Vec<(usize, bool)>,
    /// Tokens released this turn, freed once the turn's events are handled.
    retired: Vec<usize>,
    accept_again: bool,
    accept_paused_until: Option<Instant>,
    accept_logged_at: Option<Instant>,
    drain_deadline: Option<Instant>,
    next_sweep: Instant,
}

impl<B: Backend, H: Handler> Reactor<B, H> {
    pub(super) fn new(
        backend: B,
        handler: H,
        config: Arc<Config>,
        stats: Arc<Stats>,
        index: usize,
        mailboxes: Arc<Mailboxes<H::Inbox>>,
    ) -> Self {
        let core = Core {
            handler,
            stats,
            conns: Slab::new(),
            peers: HashMap::new(),
            timers: TimerWheel::new(Instant::now(), TICK, WHEEL_SLOTS),
            rx_pool: Pool::new(1024, 64 << 10),
            tx_pool: Pool::new(1024, 64 << 10),
            read_buf: vec![0; config.read_buffer_size.max(4096)].into_boxed_slice(),
            cork: Vec::with_capacity(CORK_SIZE),
            scratch: Vec::new(),
            compression: Compression::new(config.compression),
            read_again: Vec::new(),
            dirty: Vec::new(),
            swept: Vec::new(),
            retired: Vec::new(),
            accept_again: false,
            accept_paused_until: None,
            accept_logged_at: None,
            drain_deadline: None,
            next_sweep: Instant::now() + SWEEP,
            config,
        };
        Reactor {
            backend,
            core,
            events: Vec::with_capacity(1024),
            index,
            mailboxes,
            inbox_again: false,
        }
    }

    pub(super) fn run(mut self, shutdown: &AtomicBool) {
        loop {
            let now = Instant::now();
            self.fire_timers(now);
            if shutdown.load(Ordering::Relaxed) && self.core.drain_deadline.is_none() {
                self.begin_drain(now);
            }
            // Every event of the last batch is handled: tokens released since can be reused.
            self.core.free_retired();
            if now >= self.core.next_sweep {
                self.sweep(now);
            }
            if let Some(deadline) = self.core.drain_deadline
                && (self.core.conns.is_empty() || now >= deadline)
            {
                break;
            }
            if self
                .core
                .accept_paused_until
                .is_some_and(|until| now >= until)
            {
                self.core.accept_paused_until = None;
                self.core.accept_again = true;
                self.backend.resume_accepting();
            }
            self.core.publish_stats();
            let timeout = if self.inbox_again {
                Some(Duration::ZERO)
            } else {
                self.core.wait_timeout(now)
            };
            let mut events = std::mem::take(&mut self.events);
            if let Err(e) = self
                .backend
                .wait(&mut events, timeout, &mut self.core.conns)
            {
                tracing::error!("reactor wait failed: {e}");
                break;
            }
            let now = Instant::now();
            if std::mem::take(&mut self.core.accept_again) {
                self.accept(now);
            }
            for token in std::mem::take(&mut self.core.read_again) {
                self.on_readable(token, false, now);
            }
            for event in events.drain(..) {
                self.on_event(event, now);
            }
            self.events = events;
            self.drain_inbox(now);
        }
        let tokens: Vec<usize> = self.core.conns.iter().map(|(token, _)| token).collect();
        for token in tokens {
            self.drop_conn(token);
        }
        self.core.free_retired();
        // Queues a completion backend may still read from are leaked, not freed under it.
        for conn in self.core.conns.drain() {
            std::mem::forget(conn.tx);
        }
        self.core.publish_stats();
    }

    /// The periodic walk of the table (see [`Core::sweep`]), then the I/O bookkeeping of the
    /// connections the handler wrote to or closed during it.
    fn sweep(&mut self, now: Instant) {
        self.core.sweep::<B>(now);
        let mut swept = std::mem::take(&mut self.core.swept);
        for &(token, failed) in &swept {
            self.after_io(token, failed, now);
        }
        swept.clear();
        self.core.swept = swept;
    }

    /// Hands posted messages to the handler, then writes each connection they queued frames
    /// for, once.
    fn drain_inbox(&mut self, now: Instant) {
        self.mailboxes.rearm(self.index);
        let mut handled = 0;
        while handled < MAX_INBOX_PER_TURN {
            let Some(message) = self.mailboxes.take(self.index) else {
                break;
            };
            let Core {
                handler,
                conns,
                tx_pool,
                cork,
                timers,
                dirty,
                ..
            } = &mut self.core;
            let mut ops = LocalConns::<B, H> {
                conns,
                tx_pool,
                cork,
                timers,
                dirty,
            };
            handler.on_inbox(&mut Local { ops: &mut ops, now }, message);
            handled += 1;
        }
        self.inbox_again = handled == MAX_INBOX_PER_TURN;
        let mut dirty = std::mem::take(&mut self.core.dirty);
        for &token in &dirty {
            if let Some(conn) = self.core.conns.get_mut(token) {
                conn.flags &= !DIRTY;
                if B::WRITES_NOW {
                    self.flush(token, now);
                }
                self.after_io(token, false, now);
            }
        }
        dirty.clear();
        self.core.dirty = dirty;
    }

    fn on_event(&mut self, event: IoEvent<B::Socket>, now: Instant) {
        match event {
            IoEvent::Acceptable => self.accept(now),
            IoEvent::Accepted(socket, peer) => self.on_accepted(socket, peer, now),
            IoEvent::AcceptFailed(e) => self.core.accept_failed(e, now),
            IoEvent::Readable { token, closed } => self.on_readable(token, closed, now),
            IoEvent::Received { token, buffer, len } => {
                if self.core.is_live(token) {
                    let input = self.backend.received(buffer, len);
                    let failed = self.core.on_data::<B>(token, input, now);
                    self.backend.release_buffer(buffer);
                    self.after_io(token, failed, now);
                } else {
                    self.backend.release_buffer(buffer);
                }
            }
            IoEvent::ReadClosed(token) => self.drop_conn(token),
            IoEvent::Writable(token) => self.flush(token, now),
            IoEvent::Sent { token, result } => self.on_sent(token, result, now),
            IoEvent::Released(token) => self.core.retired.push(token),
            IoEvent::Woken => {}
        }
    }

    fn accept(&mut self, now: Instant) {
        if self.core.accept_paused_until.is_some() || self.core.drain_deadline.is_some() {
            return;
        }
        for _ in 0..MAX_ACCEPTS_PER_TURN {
            match self.backend.accept() {
                Ok(Some((socket, peer))) => self.on_accepted(socket, peer, now),
                Ok(None) => return,
                Err(e) => match e.raw_os_error() {
                    // The peer gave up before we accepted: try the next one.
                    Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM | libc::EINTR) => {}
                    _ => return self.core.accept_failed(e, now),
                },
            }
        }
        self.core.accept_again = true;
    }

    fn on_accepted(&mut self, mut socket: B::Socket, peer: Option<SocketAddr>, now: Instant) {
        let core = &mut self.core;
        if core.conns.len() >= core.config.max_connections_per_reactor
            || core.drain_deadline.is_some()
        {
            // Refused: closed without a word (nothing was registered, so nothing is in flight).
            let _ = self.backend.close(usize::MAX, &mut socket);
            return;
        }
        let entry = core.conns.vacant_entry();
        let token = entry.key();
        if let Err(e) = self.backend.register(&mut socket, token) {
            tracing::warn!("cannot watch accepted socket: {e}");
            let _ = self.backend.close(usize::MAX, &mut socket);
            return;
        }
        let ws = Connection::server(now);
        let timer = arm(&mut core.timers, &core.config, &ws, token, now);
        entry.insert(Conn {
            socket,
            ws,
            rx: None,
            tx: None,
            timer,
            app: None,
            flags: 0,
        });
        if let Some(peer) = peer {
            core.peers.insert(token, peer);
        }
        core.stats.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads what a readable socket holds. `closed`: the peer's FIN is pending too, so read to
    /// the end even after a short read.
    fn on_readable(&mut self, token: usize, closed: bool, now: Instant) {
        let mut buf = std::mem::take(&mut self.core.read_buf);
        for _ in 0..MAX_READS_PER_EVENT {
            let Some(conn) = live(&mut self.core.conns, token) else {
                break;
            };
            conn.flags &= !READ_AGAIN;
            if closed {
                conn.flags |= PEER_CLOSED;
            }
            let closed = conn.flags & PEER_CLOSED != 0;
            match B::read(&mut conn.socket, &mut buf) {
                Ok(0) => {
                    self.drop_conn(token);
                    break;
                }
                Ok(n) => {
                    let failed = self.core.on_data::<B>(token, &mut buf[..n], now);
                    self.after_io(token, failed, now);
                    // A short read drained the socket; new data brings a new edge. A FIN that
                    // came with the data brings none: read on to see it.
                    if n < buf.len() && !closed {
                        break;
                    }
                    if let Some(conn) = self.core.conns.get_mut(token) {
                        conn.flags |= READ_AGAIN;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.drop_conn(token);
                    break;
                }
            }
        }
        if self
            .core
            .conns
            .get(token)
            .is_some_and(|conn| conn.flags & READ_AGAIN != 0)
        {
            self.core.read_again.push(token);
        }
        self.core.read_buf = buf;
    }

    /// Writes a connection's queue (on readiness, or after a completed send).
    fn flush(&mut self, token: usize, now: Instant) {
        let Some(conn) = self.core.conns.get_mut(token) else {
            return;
        };
        if conn.flags & RELEASING != 0 {
            return;
        }
        let Some(queue) = conn.tx.as_deref_mut() else {
            return;
        };
        match self.backend.flush(token, &mut conn.socket, queue) {
            Ok(Flushed::Done) => {
                let queue = conn.tx.take().expect("present");
                self.core.tx_pool.give(queue);
                self.after_io(token, false, now);
            }
            Ok(Flushed::Pending) => {}
            Err(_) => self.drop_conn(token),
        }
    }

    fn on_sent(&mut self, token: usize, result: i32, now: Instant) {
        let Some(conn) = self.core.conns.get_mut(token) else {
            return;
        };
        if let Some(queue) = conn.tx.as_deref_mut() {
            queue.finish_send(result.max(0) as usize);
        }
        if conn.flags & RELEASING != 0 {
            return;
        }
        if result < 0 {
            return self.drop_conn(token);
        }
        self.flush(token, now);
    }

    /// Bookkeeping after a connection did I/O: submit queued bytes, timers, the end of the
    /// WebSocket, FIN.
    fn after_io(&mut self, token: usize, failed: bool, now: Instant) {
        if failed {
            return self.drop_conn(token);
        }
        let Some(conn) = live(&mut self.core.conns, token) else {
            return;
        };
        if !B::WRITES_NOW && conn.tx.as_deref().is_some_and(|q| !q.is_sending()) {
            return self.flush(token, now);
        }
        if self.core.end_of_websocket(token, now) {
            let conn = &mut self.core.conns[token];
            if conn.tx.is_none() && conn.flags & FIN_SENT == 0 {
                conn.flags |= FIN_SENT;
                self.backend.shutdown_write(token, &mut conn.socket);
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(token) = self.core.timers.poll_expired(now) {
            let token = token as usize;
            let Some(conn) = self.core.conns.get_mut(token) else {
                continue;
            };
            conn.timer = None;
            if conn.flags & LINGER != 0 {
                self.drop_conn(token);
                continue;
            }
            let config = self.core.config.clone();
            let failed = self.core.with_writer::<B, _>(token, |ws, out| {
                if let Some(timeout) = ws.handle_timeout(now, &config.protocol, out) {
                    tracing::debug!(token, ?timeout, "timeout");
                }
            });
            self.after_io(token, failed, now);
        }
    }

    fn begin_drain(&mut self, now: Instant) {
        self.backend.stop_accepting();
        self.core.accept_again = false;
        self.core.drain_deadline = Some(now + self.core.config.drain_timeout);
        let tokens: Vec<usize> = self.core.conns.iter().map(|(token, _)| token).collect();
        for token in tokens {
            if !self.core.is_live(token) {
                continue;
            }
            let failed = self.core.with_writer::<B, _>(token, |ws, out| {
                ws.close(CloseCode::GOING_AWAY, "server shutdown", now, out);
            });
            self.after_io(token, failed, now);
        }
    }

    /// Ends a connection: tells the handler, returns what it borrowed, closes its socket.
    fn drop_conn(&mut self, token: usize) {
        let core = &mut self.core;
        let Some(conn) = core.conns.get_mut(token) else {
            return;
        };
        if conn.flags & RELEASING != 0 {
            return;
        }
        core.peers.remove(&token);
        if let Some(key) = conn.timer.take() {
            core.timers.cancel(key);
        }
        if let Some(rx) = conn.rx.take() {
            core.rx_pool.give(rx);
        }
        release_deflate(&mut core.compression, token, conn);
        if conn.flags & (OPENED | LINGER) == OPENED
            && let Some(app) = conn.app.as_mut()
        {
            // Dropped before the close handshake finished: no code (1006 on the other side).
            core.handler.on_close(token, app, conn.ws.close_code());
        }
        conn.flags |= RELEASING;
        if self.backend.close(token, &mut conn.socket) {
            core.retired.push(token);
        }
    }
}

impl<S, H: Handler> Core<S, H> {
    /// Arms a timer for every connection whose deadline now falls within the next sweep, frees
    /// pooled buffers the last period did not need, and, if the handler asks, gives it each
    /// open WebSocket ([`Handler::on_sweep_conn`]) in the same pass. Connections it wrote to or
    /// closed are left in `swept` for the reactor's bookkeeping.
    fn sweep<B: Backend<Socket = S>>(&mut self, now: Instant) {
        self.rx_pool.trim();
        self.tx_pool.trim();
        let per_conn = self.handler.on_sweep(now);
        let Core {
            handler,
            config,
            conns,
            timers,
            tx_pool,
            cork,
            stats,
            compression,
            swept,
            ..
        } = self;
        for (token, conn) in conns.iter_mut() {
            if conn.flags & (LINGER | RELEASING) != 0 {
                continue;
            }
            if per_conn
                && conn.flags & OPENED != 0
                && conn.ws.can_send()
                && let Some(app) = conn.app.as_mut()
            {
                let state_before = conn.ws.state();
                let mut out = Writer::<B> {
                    socket: &mut conn.socket,
                    tx: &mut conn.tx,
                    tx_pool,
                    cork,
                    failed: false,
                };
                handler.on_sweep_conn(&mut Ctx {
                    id: token,
                    conn: app,
                    ws: &mut conn.ws,
                    out: &mut out,
                    deflating: &mut compression.deflating,
                    stats,
                    now,
                });
                out.flush();
                let failed = out.failed;
                rearm_on_state_change(timers, conn, state_before);
                // A completion backend submits queued bytes in `after_io`; a readiness backend
                // has written them or waits for writability. A close needs its deadline armed.
                if failed
                    || conn.ws.state() != state_before
                    || (!B::WRITES_NOW && conn.tx.is_some())
                {
                    swept.push((token, failed));
                    continue;
                }
            }
            if conn.timer.is_none() {
                conn.timer = arm(timers, config, &conn.ws, token, now);
            }
        }
        self.next_sweep = now + SWEEP;
    }

    /// Frees the entries of connections released this turn.
    fn free_retired(&mut self) {
        for token in self.retired.drain(..) {
            if let Some(mut conn) = self.conns.try_remove(token)
                && let Some(tx) = conn.tx.take()
            {
                self.tx_pool.give(tx);
            }
        }
    }

    /// The connection exists and is not being released.
    fn is_live(&self, token: usize) -> bool {
        self.conns
            .get(token)
            .is_some_and(|conn| conn.flags & RELEASING == 0)
    }

    fn wait_timeout(&self, now: Instant) -> Option<Duration> {
        if self.accept_again || !self.read_again.is_empty() {
            return Some(Duration::ZERO);
        }
        let sweep =
            (!self.conns.is_empty()).then(|| self.next_sweep.saturating_duration_since(now));
        [
            self.timers.next_wakeup(now),
            sweep,
            self.accept_paused_until
                .map(|t| t.saturating_duration_since(now)),
            self.drain_deadline
                .map(|t| t.saturating_duration_since(now)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn publish_stats(&self) {
        let s = &self.stats;
        Stats::set(&s.connections, self.conns.len());
        Stats::set(&s.rx_buffers_lent, self.rx_pool.lent());
        Stats::set(&s.tx_queues_lent, self.tx_pool.lent());
        Stats::set(&s.timers, self.timers.len());
        self.compression.policy.publish(s);
    }

    fn accept_failed(&mut self, e: io::Error, now: Instant) {
        match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                if self
                    .accept_logged_at
                    .is_none_or(|at| now >= at + ACCEPT_LOG_INTERVAL)
                {
                    tracing::warn!("accept failed, pausing accepts for {ACCEPT_BACKOFF:?}: {e}");
                    self.accept_logged_at = Some(now);
                }
            }
            _ => tracing::warn!("accept failed: {e}"),
        }
        self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
    }

    /// Runs `f` with a connection's protocol state and its writer; true if the socket failed.
    fn with_writer<B: Backend<Socket = S>, R>(
        &mut self,
        token: usize,
        f: impl FnOnce(&mut Connection, &mut Writer<'_, B>) -> R,
    ) -> bool {
        let Some(conn) = self.conns.get_mut(token) else {
            return false;
        };
        let state_before = conn.ws.state();
        let mut out = Writer::<B> {
            socket: &mut conn.socket,
            tx: &mut conn.tx,
            tx_pool: &mut self.tx_pool,
            cork: &mut self.cork,
            failed: false,
        };
        f(&mut conn.ws, &mut out);
        out.flush();
        let failed = out.failed;
        rearm_on_state_change(&mut self.timers, conn, state_before);
        failed
    }

    /// Feeds bytes received on `token` to its protocol state machine and dispatches the events.
    /// True if the socket failed.
    fn on_data<B: Backend<Socket = S>>(
        &mut self,
        token: usize,
        input: &mut [u8],
        now: Instant,
    ) -> bool {
        let Core {
            handler,
            config,
            conns,
            peers,
            rx_pool,
            tx_pool,
            cork,
            scratch,
            stats,
            compression,
            ..
        } = self;
        let Some(conn) = conns.get_mut(token) else {
            return false;
        };
        let Conn {
            socket,
            ws,
            rx,
            tx,
            app,
            flags,
            ..
        } = conn;
        let state_before = ws.state();
        let mut rxb = rx.take().unwrap_or_else(|| rx_pool.take());
        let mut out = Writer::<B> {
            socket,
            tx,
            tx_pool,
            cork,
            failed: false,
        };
        let mut dispatch = Dispatch {
            handler,
            config,
            scratch,
            stats,
            compression,
            peers,
            now,
            token,
        };
        if dispatch.drive(ws, app, flags, &mut out, input, &mut rxb) {
            // Frames the client sent right behind its request head: feed them now, in order.
            let mut early = std::mem::take(&mut *rxb);
            dispatch.drive(ws, app, flags, &mut out, &mut early, &mut rxb);
        }
        out.flush();
        let failed = out.failed;
        if rxb.is_empty() {
            rx_pool.give(rxb);
        } else {
            *rx = Some(rxb);
        }
        rearm_on_state_change(&mut self.timers, conn, state_before);
        failed
    }

    /// Timers and the end of the WebSocket after I/O. True once the WebSocket is over.
    fn end_of_websocket(&mut self, token: usize, now: Instant) -> bool {
        let conn = &mut self.conns[token];
        if conn.ws.state() != State::Closed {
            if conn.timer.is_none() {
                let timer = arm(&mut self.timers, &self.config, &conn.ws, token, now);
                self.conns[token].timer = timer;
            }
            return false;
        }
        if conn.flags & LINGER == 0 {
            conn.flags |= LINGER;
            release_deflate(&mut self.compression, token, conn);
            if conn.flags & OPENED != 0
                && let Some(app) = conn.app.as_mut()
            {
                self.handler.on_close(token, app, conn.ws.close_code());
            }
            // The peer has close_timeout to read what is queued and hang up.
            if let Some(key) = conn.timer.take() {
                self.timers.cancel(key);
            }
            conn.timer = Some(
                self.timers
                    .insert(now + self.config.protocol.close_timeout, token as u32),
            );
        }
        true
    }
}

/// Gives back what a connection that negotiated compression holds (its windows, its place under
/// the cap), once.
fn release_deflate<S, C>(compression: &mut Compression, token: usize, conn: &mut Conn<S, C>) {
    if conn.flags & DEFLATE != 0 {
        conn.flags &= !DEFLATE;
        if let Some(params) = conn.ws.deflate() {
            compression.release(token, params);
        }
    }
}

/// A wheel timer at the connection's next deadline if that is within one sweep; later
/// deadlines are left to the sweep.
fn arm(
    timers: &mut TimerWheel<u32>,
    config: &Config,
    ws: &Connection,
    token: usize,
    now: Instant,
) -> Option<TimerKey> {
    let deadline = ws.poll_timeout(&config.protocol)?;
    (deadline <= now + SWEEP).then(|| timers.insert(deadline, token as u32))
}

/// A connection that exists and is not being released.
fn live<S, C>(conns: &mut Slab<Conn<S, C>>, token: usize) -> Option<&mut Conn<S, C>> {
    conns
        .get_mut(token)
        .filter(|conn| conn.flags & RELEASING == 0)
}

/// A live connection whose WebSocket is open for sending.
fn open<S, C>(conns: &mut Slab<Conn<S, C>>, token: usize) -> Option<&mut Conn<S, C>> {
    live(conns, token).filter(|conn| conn.flags & LINGER == 0 && conn.ws.can_send())
}

/// The handler's view of every connection during the inbox drain.
struct LocalConns<'a, B: Backend, H: Handler> {
    conns: &'a mut Slab<Conn<B::Socket, H::Conn>>,
    tx_pool: &'a mut Pool<TxQueue>,
    cork: &'a mut Vec<u8>,
    timers: &'a mut TimerWheel<u32>,
    dirty: &'a mut Vec<usize>,
}

impl<B: Backend, H: Handler> LocalOps<H::Conn> for LocalConns<'_, B, H> {
    fn conn(&mut self, id: ConnId) -> Option<&mut H::Conn> {
        open(self.conns, id)?.app.as_mut()
    }

    fn queued(&self, id: ConnId) -> Option<usize> {
        let conn = self.conns.get(id)?;
        Some(conn.tx.as_deref().map_or(0, TxQueue::len))
    }

    fn deflate(&self, id: ConnId) -> Option<Params> {
        self.conns.get(id)?.ws.deflate()
    }

    fn send_shared(&mut self, id: ConnId, frame: &Arc<[u8]>, max_queued: usize) -> Push {
        let Some(conn) = open(self.conns, id) else {
            return Push::Closed;
        };
        let queued = conn.tx.as_deref().map_or(0, TxQueue::len);
        if queued + frame.len() > max_queued {
            return Push::Full;
        }
        conn.tx
            .get_or_insert_with(|| self.tx_pool.take())
            .push_shared(frame.clone(), 0);
        if conn.flags & DIRTY == 0 {
            conn.flags |= DIRTY;
            self.dirty.push(id);
        }
        Push::Queued
    }

    fn close(&mut self, id: ConnId, code: CloseCode, reason: &str, now: Instant) {
        let Some(conn) = live(self.conns, id).filter(|c| c.flags & LINGER == 0) else {
            return;
        };
        let state_before = conn.ws.state();
        let mut out = Writer::<B> {
            socket: &mut conn.socket,
            tx: &mut conn.tx,
            tx_pool: self.tx_pool,
            cork: self.cork,
            failed: false,
        };
        conn.ws.close(code, reason, now, &mut out);
        out.flush();
        // A failed write shows up again at the next read or write of this connection.
        rearm_on_state_change(self.timers, conn, state_before);
        if conn.flags & DIRTY == 0 {
            conn.flags |= DIRTY;
            self.dirty.push(id);
        }
    }
}

/// A state change can move the deadline earlier (open -> closing): drop the timer so that
/// `end_of_websocket` arms it again at the new deadline.
fn rearm_on_state_change<S, C>(
    timers: &mut TimerWheel<u32>,
    conn: &mut Conn<S, C>,
    state_before: State,
) {
    if conn.ws.state() != state_before
        && let Some(key) = conn.timer.take()
    {
        timers.cancel(key);
    }
}

/// What a connection's events are dispatched with (the parts of the reactor they need).
struct Dispatch<'a, H> {
    handler: &'a mut H,
    config: &'a Config,
    scratch: &'a mut Vec<u8>,
    stats: &'a Stats,
    compression: &'a mut Compression,
    peers: &'a mut HashMap<usize, SocketAddr>,
    now: Instant,
    token: usize,
}

impl<H: Handler> Dispatch<'_, H> {
    /// Runs the state machine over `input`; true when bytes behind the request head were left in
    /// `rx` to be fed again.
    fn drive(
        &mut self,
        ws: &mut Connection,
        app: &mut Option<H::Conn>,
        flags: &mut u8,
        out: &mut impl Sink,
        mut input: &mut [u8],
        rx: &mut Vec<u8>,
    ) -> bool {
        let (stats, token) = (self.stats, self.token);
        while let Some(event) = ws.read_inflating(
            &mut input,
            rx,
            &mut ConnInflate {
                inflating: &mut self.compression.inflating,
                token,
                stats,
            },
            self.now,
            &self.config.protocol,
            out,
        ) {
            match event {
                Event::Request(request, body) => {
                    let peer = self.peers.remove(&self.token);
                    let answer = self.handler.on_request(&request, body, peer);
                    self.scratch.clear();
                    let mut deflate = None;
                    let upgrade = match answer {
                        Answer::Upgrade { conn, protocol } if request.wants_websocket() => {
                            match request.upgrade() {
                                Ok(accept) => {
                                    deflate = self.compression.policy.negotiate(&request, stats);
                                    let extensions = deflate.as_ref().map(|(_, a)| a.as_str());
                                    accept.write_response(protocol, extensions, self.scratch);
                                    Some(conn)
                                }
                                Err(rejection) => {
                                    rejection.write_response(self.scratch);
                                    None
                                }
                            }
                        }
                        Answer::Upgrade { .. } => {
                            write_response(
                                self.scratch,
                                426,
                                &[("Upgrade", "websocket")],
                                "text/plain",
                                b"Upgrade Required",
                            );
                            None
                        }
                        Answer::Respond(response) => {
                            let headers: Vec<(&str, &str)> = response
                                .headers
                                .iter()
                                .map(|(n, v)| (*n, v.as_str()))
                                .collect();
                            write_response(
                                self.scratch,
                                response.status,
                                &headers,
                                response.content_type,
                                &response.body,
                            );
                            self.stats.http_requests.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                        Answer::Reject(rejection) => {
                            rejection.write_response(self.scratch);
                            None
                        }
                    };
                    out.transmit(self.scratch, &[]);
                    let Some(conn) = upgrade else {
                        ws.finish();
                        return false;
                    };
                    ws.accept(self.now, rx);
                    if let Some((params, _)) = deflate {
                        ws.set_deflate(params);
                        *flags |= DEFLATE;
                    }
                    self.stats.upgrades.fetch_add(1, Ordering::Relaxed);
                    *flags |= OPENED;
                    let app = app.insert(conn);
                    self.handler.on_open(&mut Ctx {
                        id: self.token,
                        conn: app,
                        ws,
                        out,
                        deflating: &mut self.compression.deflating,
                        stats,
                        now: self.now,
                    });
                    if !rx.is_empty() {
                        return true;
                    }
                }
                Event::Message(kind, payload) => {
                    self.stats.messages_in.fetch_add(1, Ordering::Relaxed);
                    if let Some(app) = app.as_mut() {
                        let mut ctx = Ctx {
                            id: self.token,
                            conn: app,
                            ws,
                            out,
                            deflating: &mut self.compression.deflating,
                            stats,
                            now: self.now,
                        };
                        self.handler.on_message(&mut ctx, kind, payload);
                    }
                }
                Event::Failed(failure) => {
                    tracing::debug!(token = self.token, ?failure, "connection failed")
                }
                Event::Ping(_) | Event::Pong(_) | Event::Close(_) => {}
            }
        }
        false
    }
}

/// Writes for one connection. On a readiness backend, small frames are corked (gathered in the
/// reactor's cork buffer and written with one syscall at the end of the connection's turn) and
/// what the socket does not take goes to the connection's write queue. On a completion backend
/// every frame goes to the queue, which the reactor submits at the end of the turn. Queues are
/// borrowed from the pool until they drain.
struct Writer<'a, B: Backend> {
    socket: &'a mut B::Socket,
    tx: &'a mut Option<Box<TxQueue>>,
    tx_pool: &'a mut Pool<TxQueue>,
    cork: &'a mut Vec<u8>,
    /// The socket failed (reset, broken pipe): the connection must be dropped.
    failed: bool,
}

impl<B: Backend> Writer<'_, B> {
    /// Writes `bufs` now; returns how much the socket took.
    fn write_now(&mut self, bufs: &[IoSlice<'_>]) -> usize {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut written = 0;
        while written < total && !self.failed {
            // Rebuild the slices past what was written (rare: only after a short write).
            let mut skip = written;
            let mut rest = [IoSlice::new(&[]); 3];
            let mut n = 0;
            for b in bufs {
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                rest[n] = IoSlice::new(&b[skip..]);
                skip = 0;
                n += 1;
            }
            match B::write_now(self.socket, &rest[..n]) {
                Ok(0) => break,
                Ok(k) => written += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.failed = true,
            }
        }
        written
    }

    fn queue(&mut self) -> &mut TxQueue {
        self.tx.get_or_insert_with(|| self.tx_pool.take())
    }

    /// Writes the cork buffer; the rest goes to the queue.
    fn flush(&mut self) {
        if self.cork.is_empty() {
            return;
        }
        let cork = std::mem::take(self.cork);
        let written = if self.tx.is_none() {
            self.write_now(&[IoSlice::new(&cork)])
        } else {
            0
        };
        if written < cork.len() && !self.failed {
            self.queue().push_copy(&cork[written..]);
        }
        *self.cork = cork;
        self.cork.clear();
    }
}

impl<B: Backend> Transmit for Writer<'_, B> {
    fn transmit(&mut self, header: &[u8], payload: &[u8]) {
        if self.failed {
            return;
        }
        if !B::WRITES_NOW || self.tx.is_some() {
            // Submitted later, or bytes are already waiting: queue, in order.
            let queue = self.queue();
            queue.push_copy(header);
            queue.push_copy(payload);
            return;
        }
        let len = header.len() + payload.len();
        if self.cork.len() + len <= CORK_SIZE {
            self.cork.extend_from_slice(header);
            self.cork.extend_from_slice(payload);
            return;
        }
        self.flush();
        if self.tx.is_some() {
            return self.transmit(header, payload);
        }
        let written = self.write_now(&[IoSlice::new(header), IoSlice::new(payload)]);
        if written < len && !self.failed {
            let queue = self.queue();
            if written < header.len() {
                queue.push_copy(&header[written..]);
                queue.push_copy(payload);
            } else {
                queue.push_copy(&payload[written - header.len()..]);
            }
        }
    }
}

impl<B: Backend> Sink for Writer<'_, B> {
    fn transmit_shared(&mut self, frame: &Arc<[u8]>) {
        if self.failed {
            return;
        }
        if B::WRITES_NOW && self.tx.is_none() && self.cork.len() + frame.len() <= CORK_SIZE {
            self.cork.extend_from_slice(frame);
            return;
        }
        self.flush();
        let written = if B::WRITES_NOW && self.tx.is_none() {
            self.write_now(&[IoSlice::new(frame)])
        } else {
            0
        };
        if written < frame.len() && !self.failed {
            self.queue().push_shared(frame.clone(), written);
        }
    }
}
