//! The core of a reactor, the same for both I/O models: the connection table and what it
//! borrows (pools, timers, compression), and its bookkeeping: the sweep that arms timers,
//! refills allowances and trims pools, retiring released entries, the wait's timeout, accept
//! back-off, what the limits count (handshakes, buffered bytes, stalled connections), and stats.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clarion_protocol::{Connection, State};
use slab::Slab;

use super::conn::{Conn, ConnFlags};
use super::tls::TlsTable;
use super::writer::{ConnWriter, Writing, Written, writer_for};
use crate::buffer::Pool;
use crate::compression::Compression;
use crate::limits::{LiveLimits, Rates};
use crate::timer::{TimerKey, TimerWheel};
use crate::txqueue::TxQueue;
use crate::{Config, Ctx, Handler, Stats};

/// How often the reactor sweeps its table for deadlines coming up. A connection holds a wheel
/// node only while its next deadline is within one sweep, so an idle connection waiting out a
/// 30 s ping interval holds none (24 bytes saved per connection).
pub(super) const SWEEP: Duration = crate::SWEEP_INTERVAL;
/// Connections one turn's step of a sweep visits: a sweep of a large table goes on over several
/// turns, so that it neither holds up the reactor's other work (a million entries take tens of
/// milliseconds) nor writes to all the connections it has something for at once (on io_uring
/// each such write holds a pooled write queue of about 100 bytes until the kernel completes
/// it: a burst of a second's heartbeats to 1,000 streams kept 100 KiB in the pool).
const SWEEP_STEP: usize = 1024;
/// Timer resolution: fine enough for close and pong deadlines, coarse enough to batch.
const TICK: Duration = Duration::from_millis(10);
/// 4096 ticks of 10 ms: one rotation covers 41 s, so common timeouts fire in one pass.
const WHEEL_SLOTS: usize = 4096;
/// Free receive buffers and write queues a reactor keeps through a quiet second (more while
/// the last second's peak of lending needs them: a steady fanout allocates nothing). A burst of
/// more allocates, tens of nanoseconds an item against microseconds of I/O. At 1,024 a reactor
/// kept up to 1,024 receive buffers of up to 64 KiB each (64 MiB) after a burst of partial
/// messages, outside every budget, and a C1M server's 57 reactors a quarter of a million write
/// queues.
const POOL_KEEPS: usize = 64;
/// Pause after the process or system runs out of descriptors or memory at accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one accept-error log line per interval.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// What a connection still speaking HTTP (before an upgrade, or between keep-alive requests)
/// is told in `on_request` and counted, kept apart so that open WebSockets do not pay for it.
/// Only a connection with something to keep has an entry (a known peer, a listener other than
/// 0, a request answered); it is removed at the upgrade or the end. What else a request is told
/// about its connection (TLS details) belongs here too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct HttpConn {
    pub(super) peer: Option<SocketAddr>,
    /// The listener it was accepted on.
    pub(super) listener: u8,
    /// Requests answered on it so far.
    pub(super) answered: u32,
}

/// A sweep under way: where its next step starts and what it applies to every entry.
#[derive(Clone, Copy, Debug)]
struct SweepPass {
    /// The table index the next step starts at.
    next: usize,
    /// The handler asked for [`Handler::on_sweep_conn`].
    per_conn: bool,
    /// Allowances are refilled (a rate is on, or was).
    refill: bool,
    /// Time since the last sweep began: what allowances are refilled for.
    elapsed: Duration,
    /// Queued bytes under which a connection has room (half the write cap).
    low_mark: usize,
}

/// Everything of a reactor but its driver, so that a driver's buffer can be borrowed while the
/// core processes its bytes.
pub(crate) struct Core<S, H: Handler> {
    pub(super) handler: H,
    pub(super) config: Arc<Config>,
    pub(super) stats: Arc<Stats>,
    pub(super) conns: Slab<Conn<S, H::Conn>>,
    /// What connections still speaking HTTP are told and counted (see [`HttpConn`]).
    pub(super) http: HashMap<usize, HttpConn>,
    pub(super) timers: TimerWheel<u32>,
    pub(super) rx_pool: Pool<Vec<u8>>,
    pub(super) tx_pool: Pool<TxQueue>,
    pub(super) scratch: Vec<u8>,
    pub(super) compression: Compression,
    /// TLS connections' state, beside the table (empty on a plaintext listener).
    pub(super) tls: TlsTable,
    /// Connections with bytes queued this turn, moved on once at its end.
    pub(super) dirty: Vec<usize>,
    /// Connections the handler wrote to or closed during a sweep, and how their writer ended.
    pub(super) swept: Vec<(usize, Written)>,
    /// Tokens released this turn, freed once the turn's events are handled.
    pub(super) retired: Vec<usize>,
    pub(super) accept_paused_until: Option<Instant>,
    accept_logged_at: Option<Instant>,
    pub(super) drain_deadline: Option<Instant>,
    pub(super) next_sweep: Instant,
    /// The sweep under way, if one is (it goes on by one step per turn).
    sweeping: Option<SweepPass>,
    /// The limits in force (shared by the runtime's reactors) and the process's connections.
    pub(super) limits: Arc<LiveLimits>,
    /// The rates as of the last sweep (what new connections' allowances start from).
    pub(super) rates: Rates,
    /// When allowances were last refilled (the last sweep's start).
    refilled_at: Instant,
    /// Connections still handshaking (flag `HANDSHAKING`).
    pub(super) handshaking: usize,
    /// Bytes held in connections' receive buffers (capacity, what they really take).
    pub(super) partial_bytes: usize,
    /// Connections over their write cap (flag `PAUSED`), and since when.
    pub(super) stalled: HashMap<usize, Instant>,
}

impl<S, H: Handler> Core<S, H> {
    pub(super) fn new(
        handler: H,
        config: Arc<Config>,
        stats: Arc<Stats>,
        limits: Arc<LiveLimits>,
    ) -> Self {
        let now = Instant::now();
        Core {
            rates: limits.rates(),
            limits,
            refilled_at: now,
            handshaking: 0,
            partial_bytes: 0,
            stalled: HashMap::new(),
            handler,
            stats,
            conns: Slab::new(),
            http: HashMap::new(),
            timers: TimerWheel::new(now, TICK, WHEEL_SLOTS),
            rx_pool: Pool::new(POOL_KEEPS, 64 << 10),
            tx_pool: Pool::new(POOL_KEEPS, 64 << 10),
            scratch: Vec::new(),
            compression: Compression::new(config.compression),
            tls: TlsTable::new(config.tls.as_ref()),
            dirty: Vec::new(),
            swept: Vec::new(),
            retired: Vec::new(),
            accept_paused_until: None,
            accept_logged_at: None,
            drain_deadline: None,
            next_sweep: now + SWEEP,
            sweeping: None,
            config,
        }
    }

    /// One step of the sweep, starting a new one if none is under way: over the next
    /// [`SWEEP_STEP`] connections of the table, arms a timer for each whose deadline falls
    /// within the next sweep, refills allowances by the rates times the time since the last
    /// sweep began, and, if the handler asked at the start ([`Handler::on_sweep`]), gives it
    /// each open WebSocket ([`Handler::on_sweep_conn`]). A sweep's start also frees pooled
    /// buffers the last period did not need. Connections it wrote to or closed are left in
    /// `swept` for the reactor's bookkeeping. Returns true when the sweep is done.
    pub(super) fn sweep<W: Writing<S>>(&mut self, writing: &mut W, now: Instant) -> bool {
        let pass = match self.sweeping {
            Some(pass) => pass,
            None => self.begin_sweep(now),
        };
        let Core {
            handler,
            config,
            conns,
            timers,
            tx_pool,
            stats,
            compression,
            swept,
            tls,
            rates,
            ..
        } = self;
        let end = conns.capacity();
        let mut next = pass.next;
        let mut visited = 0;
        while next < end && visited < SWEEP_STEP {
            let token = next;
            next += 1;
            let Some(conn) = conns.get_mut(token) else {
                continue;
            };
            visited += 1;
            if conn
                .flags
                .intersects(ConnFlags::LINGER | ConnFlags::RELEASING)
            {
                continue;
            }
            if pass.refill {
                conn.allowance.refill(rates, pass.elapsed);
            }
            if pass.per_conn
                && conn.flags.contains(ConnFlags::OPENED)
                && conn.writable()
                && let Some(app) = conn.app.as_mut()
            {
                let state_before = conn.ws.state();
                let mut out = writer_for(
                    writing,
                    tls.is_tls(token),
                    &mut conn.socket,
                    &mut conn.tx,
                    tx_pool,
                );
                handler.on_sweep_conn(&mut Ctx {
                    id: token,
                    conn: app,
                    ws: &mut conn.ws,
                    out: &mut out,
                    deflating: &mut compression.deflating,
                    stats,
                    flags: &mut conn.flags,
                    low_mark: pass.low_mark,
                    now,
                });
                let written = out.finish();
                rearm_on_state_change(timers, conn, state_before);
                // Queued bytes and a failed socket are the reactor's to move on; a close needs
                // its deadline armed by the same bookkeeping.
                if written != Written::Done || conn.ws.state() != state_before {
                    swept.push((token, written));
                    continue;
                }
            }
            if conn.timer.is_none() {
                conn.timer = arm(timers, config, &conn.ws, token, now);
            }
        }
        if next < end {
            self.sweeping = Some(SweepPass { next, ..pass });
            return false;
        }
        self.sweeping = None;
        self.next_sweep = now + SWEEP;
        true
    }

    /// Starts a sweep: trims the pools, asks the handler whether it wants each connection, and
    /// takes the rates and the time since the last sweep began.
    fn begin_sweep(&mut self, now: Instant) -> SweepPass {
        self.rx_pool.trim();
        self.tx_pool.trim();
        let per_conn = self.handler.on_sweep(now);
        let rates = self.limits.rates();
        let refill = rates.any() || self.rates.any();
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.rates = rates;
        self.refilled_at = now;
        SweepPass {
            next: 0,
            per_conn,
            refill,
            elapsed,
            low_mark: self.limits.max_queued_bytes() / 2,
        }
    }

    /// Whether a sweep is under way or due.
    pub(super) fn sweep_due(&self, now: Instant) -> bool {
        self.sweeping.is_some() || now >= self.next_sweep
    }

    /// Frees the entries of connections released this turn.
    pub(super) fn free_retired(&mut self) {
        for token in self.retired.drain(..) {
            if let Some(mut conn) = self.conns.try_remove(token) {
                self.limits.release();
                if let Some(tx) = conn.tx.take() {
                    self.tx_pool.give(tx);
                }
            }
            self.tls.remove(token, &mut self.rx_pool, &mut self.tx_pool);
        }
    }

    /// Stops counting `token` as handshaking once it no longer is (upgraded, answered,
    /// timed out or dropped). `kept`: a request was answered and the connection kept for the
    /// next; it leaves the count for good (its later requests are bounded by
    /// `handshake_timeout` each, the partial-message budget and `max_connections`), so idle
    /// keep-alive connections do not hold the slots new handshakes need.
    pub(super) fn left_handshake(&mut self, token: usize, kept: bool) {
        if let Some(conn) = self.conns.get_mut(token)
            && conn.flags.contains(ConnFlags::HANDSHAKING)
            && (kept
                || conn.ws.state() != State::Handshaking
                || conn.flags.contains(ConnFlags::RELEASING))
        {
            conn.flags.remove(ConnFlags::HANDSHAKING);
            self.handshaking -= 1;
        }
    }

    /// The connection exists and is not being released.
    pub(super) fn is_live(&self, token: usize) -> bool {
        self.conns
            .get(token)
            .is_some_and(|conn| !conn.flags.contains(ConnFlags::RELEASING))
    }

    /// Whether new connections are taken now (not paused, not draining).
    pub(super) fn accepting(&self) -> bool {
        self.accept_paused_until.is_none() && self.drain_deadline.is_none()
    }

    /// How long the loop may sleep: until the next timer, sweep, end of an accept pause or the
    /// drain deadline.
    pub(super) fn wait_timeout(&self, now: Instant) -> Option<Duration> {
        let sweep = if self.sweeping.is_some() {
            Some(Duration::ZERO)
        } else {
            (!self.conns.is_empty()).then(|| self.next_sweep.saturating_duration_since(now))
        };
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

    /// Publishes the gauges, and the driver's count of socket writes.
    pub(super) fn publish_stats(&self, socket_writes: u64) {
        let s = &self.stats;
        s.socket_writes
            .store(socket_writes, std::sync::atomic::Ordering::Relaxed);
        Stats::set(&s.connections, self.conns.len());
        Stats::set(&s.rx_buffers_lent, self.rx_pool.lent());
        Stats::set(&s.tx_queues_lent, self.tx_pool.lent());
        Stats::set(&s.timers, self.timers.len());
        Stats::set(&s.handshaking, self.handshaking);
        Stats::set(&s.paused, self.stalled.len());
        Stats::set(&s.partial_bytes, self.partial_bytes);
        Stats::set(&s.tls_handshaking, self.tls.handshaking());
        self.compression.policy.publish(s);
    }

    /// Accepting failed: pause it, and say so (once per interval when it is the descriptor or
    /// memory limit).
    pub(super) fn accept_failed(&mut self, e: io::Error, now: Instant) {
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

    /// Marks a connection for the turn's end, which moves its queue on once.
    pub(super) fn mark_dirty(&mut self, token: usize) {
        mark_dirty(&mut self.conns, &mut self.dirty, token);
    }

    /// Timers and the end of the WebSocket after I/O. True once the WebSocket is over.
    pub(super) fn end_of_websocket(&mut self, token: usize, now: Instant) -> bool {
        let conn = &mut self.conns[token];
        if conn.ws.state() != State::Closed {
            if conn.timer.is_none() {
                let timer = arm(&mut self.timers, &self.config, &conn.ws, token, now);
                self.conns[token].timer = timer;
            }
            return false;
        }
        if !conn.flags.contains(ConnFlags::LINGER) {
            conn.flags.insert(ConnFlags::LINGER);
            release_deflate(&mut self.compression, token, conn);
            if conn.flags.contains(ConnFlags::OPENED)
                && let Some(app) = conn.app.as_mut()
            {
                self.handler.on_close(token, app, conn.ws.close_code(), now);
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

/// Marks `token` for the turn's end, once.
pub(super) fn mark_dirty<S, C>(conns: &mut Slab<Conn<S, C>>, dirty: &mut Vec<usize>, token: usize) {
    if let Some(conn) = conns.get_mut(token)
        && !conn.flags.contains(ConnFlags::DIRTY)
    {
        conn.flags.insert(ConnFlags::DIRTY);
        dirty.push(token);
    }
}

/// Gives back what a connection that negotiated compression holds (its windows, its place under
/// the cap), once.
pub(super) fn release_deflate<S, C>(
    compression: &mut Compression,
    token: usize,
    conn: &mut Conn<S, C>,
) {
    if conn.flags.contains(ConnFlags::DEFLATE) {
        conn.flags.remove(ConnFlags::DEFLATE);
        if let Some(params) = conn.ws.deflate() {
            compression.release(token, params);
        }
    }
}

/// A wheel timer at the connection's next deadline if that is within one sweep; later
/// deadlines are left to the sweep.
pub(super) fn arm(
    timers: &mut TimerWheel<u32>,
    config: &Config,
    ws: &Connection,
    token: usize,
    now: Instant,
) -> Option<TimerKey> {
    let deadline = ws.poll_timeout(&config.protocol)?;
    (deadline <= now + SWEEP).then(|| timers.insert(deadline, token as u32))
}

/// A state change can move the deadline earlier (open -> closing): drop the timer so that
/// `end_of_websocket` arms it again at the new deadline.
pub(super) fn rearm_on_state_change<S, C>(
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
