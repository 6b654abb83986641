//! The completion driver: runs the shared core over a [`Completion`] backend (io_uring). It
//! takes in accepted connections and received buffers as they complete, parses each buffer in
//! place and hands it straight back, and sends each connection's queue once per turn (one send
//! in flight per connection; the next at the end of the turn in which it completed, carrying
//! everything queued until then).

use std::io;
use std::time::{Duration, Instant};

use clarion_protocol::State;

use super::Reactor;
use super::conn::ConnFlags;
use super::driver::Driver;
use super::writer::{Queued, Written};
use crate::Handler;
use crate::sys::completion::{Completed, Completion, Sockets};
use crate::sys::{Flushed, Peer, Reported, Waker};
use crate::txqueue::TxQueue;

/// A completion backend and what only this model needs.
pub(crate) struct CompletionDriver<B: Completion> {
    backend: B,
    writing: Queued,
    events: Vec<Completed<B::Socket>>,
    /// Sends that completed having written, since start.
    writes: u64,
}

impl<B: Completion> CompletionDriver<B> {
    /// Drives `backend`.
    pub(crate) fn new(backend: B) -> Self {
        CompletionDriver {
            backend,
            writing: Queued,
            events: Vec::with_capacity(1024),
            writes: 0,
        }
    }
}

impl<B: Completion> Driver for CompletionDriver<B>
where
    B::Socket: Peer,
{
    type Socket = B::Socket;
    type Writing = Queued;
    const SENDS_AT_SUBMIT: bool = true;

    fn writing(&mut self) -> &mut Queued {
        &mut self.writing
    }

    fn wait(
        &mut self,
        sockets: &mut impl Sockets<B::Socket>,
        timeout: Option<Duration>,
    ) -> io::Result<Reported> {
        self.backend.wait(&mut self.events, timeout, sockets)
    }

    fn dispatch<H: Handler>(reactor: &mut Reactor<Self, H>, now: Instant) {
        let mut events = std::mem::take(&mut reactor.driver.events);
        for event in events.drain(..) {
            match event {
                Completed::Accepted(socket, peer, listener) => {
                    reactor.on_accepted(socket, peer, listener, now)
                }
                Completed::AcceptFailed(e) => reactor.core.accept_failed(e, now),
                Completed::Received { token, buffer, len } => {
                    reactor.on_received(token, buffer, len, now)
                }
                Completed::ReadClosed(token) => reactor.drop_conn(token, now),
                Completed::Sent { token, result } => reactor.on_sent(token, result, now),
                Completed::Released(token) => reactor.core.retired.push(token),
                Completed::Woken => {}
            }
        }
        reactor.driver.events = events;
    }

    fn register(&mut self, socket: &mut B::Socket, token: usize) -> io::Result<()> {
        self.backend.register(socket, token)
    }

    fn refuse(&mut self, socket: B::Socket) {
        self.backend.discard(socket);
    }

    fn flush(
        &mut self,
        token: usize,
        socket: &mut B::Socket,
        queue: &mut TxQueue,
    ) -> io::Result<Flushed> {
        self.backend.send(token, socket, queue)
    }

    fn submit(&mut self) -> io::Result<()> {
        self.backend.submit()
    }

    fn shutdown_write(&mut self, token: usize, socket: &mut B::Socket) {
        self.backend.shutdown_write(token, socket);
    }

    fn pause_reading(&mut self, token: usize, socket: &mut B::Socket) {
        self.backend.pause_receiving(token, socket);
    }

    fn resume_reading(&mut self, token: usize, socket: &mut B::Socket) {
        self.backend.resume_receiving(token, socket);
    }

    fn close(&mut self, token: usize, socket: &mut B::Socket) -> bool {
        self.backend.close(token, socket)
    }

    fn resume_accepting(&mut self) {
        self.backend.resume_accepting();
    }

    fn stop_accepting(&mut self) {
        self.backend.stop_accepting();
    }

    fn waker(&self) -> Waker {
        self.backend.waker()
    }

    fn socket_writes(&self) -> u64 {
        self.writes
    }
}

impl<B: Completion, H: Handler> Reactor<CompletionDriver<B>, H>
where
    B::Socket: Peer,
{
    /// Parses the bytes of a provided buffer in place, then gives the buffer back.
    fn on_received(&mut self, token: usize, buffer: u16, len: u32, now: Instant) {
        if !self.core.is_live(token) {
            return self.driver.backend.release_buffer(buffer);
        }
        let CompletionDriver {
            backend, writing, ..
        } = &mut self.driver;
        let input = backend.received(buffer, len);
        let written = self.core.on_data(writing, token, input, now);
        self.driver.backend.release_buffer(buffer);
        self.after_io(token, written, now);
    }

    /// A send finished: drop what it wrote; the rest goes at the turn's end, with whatever the
    /// turn still queues (the inbox's fanout comes after the completions), in one send rather
    /// than one now and another behind it a turn later. An empty queue goes back to the pool
    /// now; only a WebSocket that is over has more to do then (FIN, a TLS close_notify): its
    /// timers were seen to when the send started (the turn's end, or whatever wrote and
    /// changed its state since, runs `after_io`), so an open connection does not pay for
    /// that bookkeeping twice per message.
    fn on_sent(&mut self, token: usize, result: i32, now: Instant) {
        let Some(conn) = self.core.conns.get_mut(token) else {
            return;
        };
        // The queue the send read from: a TLS connection's ciphertext, else its own.
        let queue = match self.core.tls.get_mut(token) {
            Some(tls) => tls.outgoing.as_deref_mut(),
            None => conn.tx.as_deref_mut(),
        };
        if let Some(queue) = queue {
            queue.finish_send(result.max(0) as usize);
        }
        if result > 0 {
            self.driver.writes += 1;
        }
        if conn.flags.contains(ConnFlags::RELEASING) {
            return;
        }
        if result < 0 {
            return self.drop_conn(token, now);
        }
        if conn.tx.as_deref().is_some_and(|queue| !queue.is_empty()) {
            return self.core.mark_dirty(token);
        }
        if self.flush(token, now)
            && self
                .core
                .conns
                .get(token)
                .is_some_and(|conn| conn.ws.state() == State::Closed)
        {
            self.after_io(token, Written::Done, now);
        }
        self.after_flush(token, now);
    }
}
