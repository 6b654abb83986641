//! The readiness driver: runs the shared core over a [`Readiness`] backend (epoll). It accepts
//! and reads itself when the backend says it can (reads go to one buffer the whole reactor
//! shares), writes at once through the cork, and writes a queue's rest when the socket is
//! writable again.

use std::io::{self, IoSlice};
use std::time::{Duration, Instant};

use super::Reactor;
use super::conn::{ConnFlags, live};
use super::driver::Driver;
use super::writer::{Corked, Written};
use crate::Handler;
use crate::sys::completion::Sockets;
use crate::sys::readiness::{Readiness, Ready};
use crate::sys::{Flushed, Peer, Reported, Waker};
use crate::txqueue::{MAX_IOVECS, TxQueue};

/// Reads from one socket per readiness event before others get a turn.
const MAX_READS_PER_EVENT: usize = 8;
/// Accepts per loop turn before connections get a turn.
const MAX_ACCEPTS_PER_TURN: usize = 256;

/// A readiness backend and what only this model needs.
pub(crate) struct ReadinessDriver<B: Readiness> {
    backend: B,
    writing: Corked<B>,
    events: Vec<Ready>,
    /// The one buffer every connection of the reactor reads into; a partial frame is copied out
    /// to the connection's own (pooled) buffer.
    read_buf: Box<[u8]>,
    /// Connections whose read hit the per-event cap: read again next turn.
    read_again: Vec<usize>,
    /// Listeners to accept on next turn, a bit per index: the per-turn cap was hit, or a pause
    /// ended.
    accept_again: u8,
}

impl<B: Readiness> ReadinessDriver<B> {
    /// Drives `backend`, reading into a shared buffer of `read_buffer_size` bytes.
    pub(crate) fn new(backend: B, read_buffer_size: usize) -> Self {
        ReadinessDriver {
            backend,
            writing: Corked::new(),
            events: Vec::with_capacity(1024),
            read_buf: vec![0; read_buffer_size.max(4096)].into_boxed_slice(),
            read_again: Vec::new(),
            accept_again: 0,
        }
    }
}

impl<B: Readiness> Driver for ReadinessDriver<B>
where
    B::Socket: Peer,
{
    type Socket = B::Socket;
    type Writing = Corked<B>;
    const SENDS_AT_SUBMIT: bool = false;

    fn writing(&mut self) -> &mut Corked<B> {
        &mut self.writing
    }

    fn wait(
        &mut self,
        _sockets: &mut impl Sockets<B::Socket>,
        timeout: Option<Duration>,
    ) -> io::Result<Reported> {
        // Work carried over (edge-triggered: no new event will come for it) must not wait.
        let carried = self.accept_again != 0 || !self.read_again.is_empty();
        let timeout = if carried {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        let reported = self.backend.wait(&mut self.events, timeout)?;
        // Reads carried over left bytes in their sockets.
        Ok(if carried { Reported::Part } else { reported })
    }

    fn dispatch<H: Handler>(reactor: &mut Reactor<Self, H>, now: Instant) {
        let again = std::mem::take(&mut reactor.driver.accept_again);
        for listener in (0..crate::MAX_LISTENERS).filter(|i| again & 1 << i != 0) {
            reactor.accept(listener, now);
        }
        for token in std::mem::take(&mut reactor.driver.read_again) {
            reactor.on_readable(token, false, now);
        }
        let mut events = std::mem::take(&mut reactor.driver.events);
        for event in events.drain(..) {
            match event {
                Ready::Acceptable(listener) => reactor.accept(listener, now),
                Ready::Readable { token, closed } => reactor.on_readable(token, closed, now),
                Ready::Writable(token) => {
                    if reactor.flush(token, now) {
                        reactor.after_io(token, Written::Done, now);
                    }
                    reactor.after_flush(token, now);
                }
                Ready::Woken => {}
            }
        }
        reactor.driver.events = events;
    }

    fn register(&mut self, socket: &mut B::Socket, token: usize) -> io::Result<()> {
        self.backend.register(socket, token)
    }

    fn submit(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn refuse(&mut self, socket: B::Socket) {
        // Dropping the socket closes it; it was never registered.
        drop(socket);
    }

    fn flush(
        &mut self,
        _token: usize,
        socket: &mut B::Socket,
        queue: &mut TxQueue,
    ) -> io::Result<Flushed> {
        while !queue.is_empty() {
            // A queue of one chunk (a subscriber's one message of the turn, the common case)
            // goes without filling the 64 slices (1 KiB of stores per write).
            let sent = match queue.single() {
                Some(bytes) => B::send(socket, &[IoSlice::new(bytes)]),
                None => {
                    let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                    let n = queue.slices(&mut slices);
                    B::send(socket, &slices[..n])
                }
            };
            match sent {
                Ok(0) => return Ok(Flushed::Pending),
                Ok(written) => {
                    queue.consume(written);
                    self.writing.writes += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Pending),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Flushed::Done)
    }

    fn shutdown_write(&mut self, _token: usize, socket: &mut B::Socket) {
        B::shutdown_write(socket);
    }

    fn pause_reading(&mut self, _token: usize, _socket: &mut B::Socket) {
        // Nothing to tell the kernel: `on_readable` skips a paused connection.
    }

    fn resume_reading(&mut self, token: usize, _socket: &mut B::Socket) {
        // Edge-triggered: bytes that came while paused bring no new event.
        self.read_again.push(token);
    }

    fn close(&mut self, _token: usize, _socket: &mut B::Socket) -> bool {
        // Nothing is in flight: the descriptor closes (and leaves the epoll set) when the entry
        // is freed at the end of the turn and the socket dropped.
        true
    }

    fn resume_accepting(&mut self) {
        // Edge-triggered: no new event comes for connections already waiting.
        self.accept_again = ((1u16 << self.backend.listeners()) - 1) as u8;
    }

    fn stop_accepting(&mut self) {
        self.accept_again = 0;
        self.backend.stop_accepting();
    }

    fn waker(&self) -> Waker {
        self.backend.waker()
    }

    fn socket_writes(&self) -> u64 {
        self.writing.writes
    }
}

impl<B: Readiness, H: Handler> Reactor<ReadinessDriver<B>, H>
where
    B::Socket: Peer,
{
    /// Accepts what waits on listener `listener`, up to the per-turn cap.
    fn accept(&mut self, listener: usize, now: Instant) {
        if !self.core.accepting() {
            return;
        }
        for _ in 0..MAX_ACCEPTS_PER_TURN {
            match self.driver.backend.accept(listener) {
                Ok(Some((socket, peer))) => self.on_accepted(socket, peer, listener, now),
                Ok(None) => return,
                Err(e) => match e.raw_os_error() {
                    // The peer gave up before we accepted: try the next one.
                    Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM | libc::EINTR) => {}
                    _ => return self.core.accept_failed(e, now),
                },
            }
        }
        self.driver.accept_again |= 1 << listener;
    }

    /// Reads what a readable socket holds. `closed`: the peer's FIN is pending too, so read to
    /// the end even after a short read.
    fn on_readable(&mut self, token: usize, closed: bool, now: Instant) {
        let mut buf = std::mem::take(&mut self.driver.read_buf);
        for _ in 0..MAX_READS_PER_EVENT {
            let Some(conn) = live(&mut self.core.conns, token) else {
                break;
            };
            conn.flags.remove(ConnFlags::READ_AGAIN);
            if closed {
                conn.flags.insert(ConnFlags::PEER_CLOSED);
            }
            let closed = conn.flags.contains(ConnFlags::PEER_CLOSED);
            if conn.flags.contains(ConnFlags::PAUSED) {
                // Over its write cap: what waits is read once the queue drains (resume).
                break;
            }
            match B::read(&mut conn.socket, &mut buf) {
                Ok(0) => {
                    self.drop_conn(token, now);
                    break;
                }
                Ok(n) => {
                    let written =
                        self.core
                            .on_data(&mut self.driver.writing, token, &mut buf[..n], now);
                    self.after_io(token, written, now);
                    // A short read drained the socket; new data brings a new edge. A FIN that
                    // came with the data brings none: read on to see it.
                    if n < buf.len() && !closed {
                        break;
                    }
                    if let Some(conn) = self.core.conns.get_mut(token) {
                        conn.flags.insert(ConnFlags::READ_AGAIN);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.drop_conn(token, now);
                    break;
                }
            }
        }
        if self.core.conns.get(token).is_some_and(|conn| {
            conn.flags & (ConnFlags::READ_AGAIN | ConnFlags::PAUSED) == ConnFlags::READ_AGAIN
        }) {
            self.driver.read_again.push(token);
        }
        self.driver.read_buf = buf;
    }
}
