//! The io_uring backend: completion-based, one ring per reactor thread.
//!
//! - Accept: one multishot accept straight into the ring's fixed-file table (direct descriptors,
//!   `IORING_FILE_INDEX_ALLOC`), so accepted sockets take no process file descriptor and one
//!   process can hold more connections than `RLIMIT_NOFILE` (the kernel caps each table at the
//!   soft limit, so more connections need more rings, i.e. reactors). A multishot accept writes
//!   every peer's address to the same place, so when peer addresses are wanted
//!   ([`UringConfig::peer_addresses`]) a few single-shot accepts, each with its own address
//!   buffer, stay in flight instead.
//! - Receive: one multishot recv per connection drawing from a provided-buffer ring: the kernel
//!   picks a buffer only when bytes arrive, so an idle connection holds none; the reactor hands
//!   it back right after parsing. `ENOBUFS` (ring empty) ends the recv without losing data; it
//!   is re-armed at the next turn, once the turn's buffers are back.
//! - Send: at most one send in flight per connection, straight from its write queue, which
//!   pins what the kernel reads until the completion (a plain send for one chunk, a `sendmsg`
//!   with the queue's message header for several). A turn's submissions go in with one
//!   `io_uring_enter`, which also waits (with the timer wheel's timeout).
//! - Close: cancel the recv, close the direct descriptor; the token is released (and may be
//!   reused) only once every operation on it has completed, so no completion of a connection's
//!   previous life can reach the next one on the same token. The cancel names the recv by its
//!   `user_data`, which holds token and slot, and goes in before the close that frees the slot,
//!   so it cannot match a later connection either.

use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

mod accept;
mod direct;
mod eventfd;
mod setup;

use super::completion::{Completed, Completion, Sockets};
use super::{Flushed, Reported, Wake};
use crate::txqueue::{Outgoing, TxQueue};
use accept::{Accepts, PEER_ACCEPTS};
use clarion_host::uring::{BUFFER_GROUP, BufRing, build_ring, submit_and_wait};
pub(crate) use direct::Direct;
use direct::Ops;
use eventfd::EventFd;
pub use setup::UringConfig;
pub(crate) use setup::probe;
use setup::register;

// user_data: the operation (8 bits) and the token (or an accept's index).
const ACCEPT: u64 = 1 << 56;
const RECV: u64 = 2 << 56;
const SEND: u64 = 3 << 56;
const WAKE: u64 = 4 << 56;
const IGNORE: u64 = 5 << 56;
const SHUTDOWN: u64 = 6 << 56;
const OP_MASK: u64 = 0xFF << 56;
/// Tokens must fit their field of `user_data`.
const MAX_TOKENS: usize = 1 << 24;
const TOKEN_MASK: u64 = MAX_TOKENS as u64 - 1;

/// Completions taken per turn, as the epoll backend takes at most 1,024 events: a burst (a
/// ramp of accepts, a fanout's sends) leaves no per-reactor vector sized by its peak, and
/// timers and the inbox get their turn between chunks.
const MAX_COMPLETIONS: usize = 1024;

/// One reactor's ring, listeners, provided buffers and waker.
pub(crate) struct Uring {
    ring: IoUring,
    /// By listener index; empty once accepting stopped.
    listeners: Vec<TcpListener>,
    /// The accepts in flight on each listener, by index.
    accepts: Vec<Accepts>,
    buffers: BufRing,
    waker: Arc<EventFd>,
    /// Tokens whose multishot recv ended and must be armed again.
    rearm: Vec<usize>,
    /// Completions reaped in one wait (at most [`MAX_COMPLETIONS`]), allocated at start like
    /// epoll's event list.
    completed: Vec<cqueue::Entry>,
}

impl Uring {
    /// Sets up a ring for `listeners` (bound and listening), on the thread that will use it.
    /// Errors say what the host lacks.
    pub(crate) fn new(listeners: Vec<TcpListener>, config: UringConfig) -> io::Result<Uring> {
        let ring = build_ring(config.entries)?;
        register(&ring, &config)?;
        let buffers = BufRing::new(&ring, config.buffers, config.buffer_size)?;
        let waker = Arc::new(EventFd::new()?);
        let mut uring = Uring {
            ring,
            accepts: (0..listeners.len())
                .map(|_| Accepts::new(config.peer_addresses))
                .collect(),
            listeners,
            buffers,
            waker,
            rearm: Vec::new(),
            completed: Vec::with_capacity(MAX_COMPLETIONS),
        };
        uring.watch_waker()?;
        uring.resume_accepting();
        Ok(uring)
    }

    /// Arms the multishot poll on the waker's eventfd.
    fn watch_waker(&mut self) -> io::Result<()> {
        let poll = opcode::PollAdd::new(types::Fd(self.waker.fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(WAKE);
        self.push(poll)
    }

    /// Queues a submission, submitting first if the queue is full.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry pushed here points only at memory that outlives its operation:
            // the listener, eventfd and accept address buffers (owned by self and dropped after
            // the ring), a boxed write queue kept until the send completes, or nothing.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// The `user_data` of operation `op` on `token`.
    fn user_data(op: u64, token: usize) -> u64 {
        op | token as u64 & TOKEN_MASK
    }

    fn arm_recv(&mut self, token: usize, socket: &mut Direct) -> io::Result<()> {
        let recv = opcode::RecvMulti::new(types::Fixed(socket.slot()), BUFFER_GROUP)
            .build()
            .user_data(Self::user_data(RECV, token));
        self.push(recv)?;
        socket.insert(Ops::RECV_ARMED);
        Ok(())
    }

    /// Whether a closing connection has nothing left in flight.
    fn released(socket: &mut Direct) -> bool {
        let ops = socket.ops();
        let in_flight = Ops::RECV_ARMED | Ops::SEND_IN_FLIGHT | Ops::SHUTDOWN_IN_FLIGHT;
        if ops.contains(Ops::CLOSING) && !ops.intersects(in_flight) {
            socket.set_ops(Ops::empty());
            return true;
        }
        false
    }

    fn on_completion(
        &mut self,
        cqe: cqueue::Entry,
        events: &mut Vec<Completed<Direct>>,
        sockets: &mut impl Sockets<Direct>,
    ) {
        let (user_data, result, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
        let token = (user_data & TOKEN_MASK) as usize;
        let op = user_data & OP_MASK;
        match op {
            ACCEPT => {
                let (listener, index) = (token / PEER_ACCEPTS, token % PEER_ACCEPTS);
                let peer = self
                    .accepts
                    .get_mut(listener)
                    .and_then(|accepts| accepts.completed(index, cqueue::more(flags), result));
                if result >= 0 {
                    let socket = Direct::new(result as u32);
                    events.push(Completed::Accepted(socket, peer, listener));
                    self.resume_accepting();
                } else if result != -libc::ECANCELED {
                    let error = io::Error::from_raw_os_error(-result);
                    events.push(Completed::AcceptFailed(error));
                }
            }
            RECV | SEND | SHUTDOWN => {
                // A connection's operations all complete before its entry is released.
                if let Some(socket) = sockets.socket(token) {
                    self.on_connection_completion(op, token, socket, result, flags, events);
                }
            }
            WAKE => {
                self.waker.drain();
                events.push(Completed::Woken);
                if !cqueue::more(flags) {
                    let _ = self.watch_waker();
                }
            }
            _ => {}
        }
    }

    /// A completion of `token`'s receive, send or shutdown.
    fn on_connection_completion(
        &mut self,
        op: u64,
        token: usize,
        socket: &mut Direct,
        result: i32,
        flags: u32,
        events: &mut Vec<Completed<Direct>>,
    ) {
        match op {
            RECV => {
                let more = cqueue::more(flags);
                if !more {
                    socket.remove(Ops::RECV_ARMED);
                }
                let closing = socket.ops().contains(Ops::CLOSING);
                if result > 0 {
                    let buffer = cqueue::buffer_select(flags)
                        .expect("a recv from a buffer group names its buffer");
                    events.push(Completed::Received {
                        token,
                        buffer,
                        len: result as u32,
                    });
                    if !more && !closing {
                        self.rearm.push(token);
                    }
                } else if result == -libc::ENOBUFS || result == -libc::ECANCELED {
                    // Every buffer is out (the data waits in the socket), or a pause cancelled
                    // the recv: ask again next turn unless still paused (a resume re-arms it).
                    if !closing && !socket.ops().contains(Ops::RECV_PAUSED) {
                        self.rearm.push(token);
                    }
                } else if !closing {
                    // 0: the peer closed; otherwise an error such as a reset.
                    events.push(Completed::ReadClosed(token));
                }
            }
            SEND => {
                socket.remove(Ops::SEND_IN_FLIGHT);
                events.push(Completed::Sent { token, result });
            }
            _ => {
                let deferred = socket.ops().contains(Ops::CLOSE_DEFERRED);
                socket.remove(Ops::SHUTDOWN_IN_FLIGHT | Ops::CLOSE_DEFERRED);
                if deferred {
                    let close = opcode::Close::new(types::Fixed(socket.slot()))
                        .build()
                        .user_data(IGNORE);
                    let _ = self.push(close);
                }
            }
        }
        if Self::released(socket) {
            events.push(Completed::Released(token));
        }
    }
}

impl Completion for Uring {
    type Socket = Direct;

    fn wait(
        &mut self,
        events: &mut Vec<Completed<Direct>>,
        timeout: Option<Duration>,
        sockets: &mut impl Sockets<Direct>,
    ) -> io::Result<Reported> {
        // Taken and put back, so the list keeps its capacity from turn to turn. A recv the
        // submission queue cannot take now stays listed for the next turn.
        let mut rearm = std::mem::take(&mut self.rearm);
        let armable = Ops::LIVE | Ops::RECV_ARMED | Ops::RECV_PAUSED;
        rearm.retain(|&token| match sockets.socket(token) {
            Some(socket) if socket.ops() & armable == Ops::LIVE => {
                self.arm_recv(token, socket).is_err()
            }
            _ => false,
        });
        self.rearm = rearm;
        submit_and_wait(&self.ring, timeout)?;
        let mut completed = std::mem::take(&mut self.completed);
        // What is left stays in the ring for the next turn, which then does not block.
        completed.extend(self.ring.completion().take(MAX_COMPLETIONS));
        // A full batch left completions in the ring; a recv not armed leaves bytes in its
        // socket.
        let reported = if completed.len() < MAX_COMPLETIONS && self.rearm.is_empty() {
            Reported::All
        } else {
            Reported::Part
        };
        for cqe in completed.drain(..) {
            self.on_completion(cqe, events, sockets);
        }
        self.completed = completed;
        Ok(reported)
    }

    fn submit(&mut self) -> io::Result<()> {
        self.ring.submit().map(drop)
    }

    fn resume_accepting(&mut self) {
        for listener in 0..self.listeners.len() {
            let fd = types::Fd(self.listeners[listener].as_raw_fd());
            while let Some((index, accept)) = self.accepts[listener].next_idle(fd) {
                let user_data = ACCEPT | (listener * PEER_ACCEPTS + index) as u64;
                if self.push(accept.user_data(user_data)).is_err() {
                    return;
                }
                self.accepts[listener].armed(index);
            }
        }
    }

    fn stop_accepting(&mut self) {
        self.listeners.clear();
        for listener in 0..self.accepts.len() {
            for index in self.accepts[listener].in_flight() {
                let user_data = ACCEPT | (listener * PEER_ACCEPTS + index) as u64;
                let cancel = opcode::AsyncCancel::new(user_data);
                let _ = self.push(cancel.build().user_data(IGNORE));
            }
        }
    }

    fn register(&mut self, socket: &mut Direct, token: usize) -> io::Result<()> {
        if token >= MAX_TOKENS {
            return Err(io::Error::other(format!(
                "an io_uring reactor holds at most {MAX_TOKENS} connections"
            )));
        }
        socket.set_ops(Ops::LIVE);
        self.arm_recv(token, socket)
    }

    fn received(&mut self, buffer: u16, len: u32) -> &mut [u8] {
        self.buffers.get(buffer, len)
    }

    fn release_buffer(&mut self, buffer: u16) {
        self.buffers.recycle(buffer);
    }

    fn send(
        &mut self,
        token: usize,
        socket: &mut Direct,
        queue: &mut TxQueue,
    ) -> io::Result<Flushed> {
        if queue.is_empty() {
            return Ok(Flushed::Done);
        }
        if queue.is_sending() {
            return Ok(Flushed::Pending);
        }
        let user_data = Self::user_data(SEND, token);
        let flags = libc::MSG_NOSIGNAL;
        // What start_send pinned (the bytes, and a gathered send's header and slices) stays
        // valid and in place until finish_send, after this send completes. One chunk (the
        // common case) goes out as a plain send: no message header to import.
        let send = match queue.start_send() {
            Outgoing::One(bytes, len) => {
                opcode::Send::new(types::Fixed(socket.slot()), bytes, len as u32)
                    .flags(flags)
                    .build()
            }
            Outgoing::Gathered(header) => opcode::SendMsg::new(types::Fixed(socket.slot()), header)
                .flags(flags as u32)
                .build(),
        }
        .user_data(user_data);
        if let Err(e) = self.push(send) {
            queue.finish_send(0);
            return Err(e);
        }
        socket.insert(Ops::SEND_IN_FLIGHT);
        Ok(Flushed::Pending)
    }

    fn shutdown_write(&mut self, token: usize, socket: &mut Direct) {
        let shutdown = opcode::Shutdown::new(types::Fixed(socket.slot()), libc::SHUT_WR)
            .build()
            .user_data(Self::user_data(SHUTDOWN, token));
        if self.push(shutdown).is_ok() {
            socket.insert(Ops::SHUTDOWN_IN_FLIGHT);
        }
    }

    fn pause_receiving(&mut self, token: usize, socket: &mut Direct) {
        socket.insert(Ops::RECV_PAUSED);
        if socket.ops().contains(Ops::RECV_ARMED) {
            // Completes with ECANCELED (not a reset: the recv ends without `ReadClosed`).
            let recv = Self::user_data(RECV, token);
            let _ = self.push(opcode::AsyncCancel::new(recv).build().user_data(IGNORE));
        }
    }

    fn resume_receiving(&mut self, token: usize, socket: &mut Direct) {
        socket.remove(Ops::RECV_PAUSED);
        if !socket.ops().contains(Ops::RECV_ARMED) {
            self.rearm.push(token);
        }
    }

    fn close(&mut self, token: usize, socket: &mut Direct) -> bool {
        let ops = (socket.ops() - Ops::LIVE) | Ops::CLOSING;
        socket.set_ops(ops);
        if ops.contains(Ops::RECV_ARMED) {
            let recv = Self::user_data(RECV, token);
            let _ = self.push(opcode::AsyncCancel::new(recv).build().user_data(IGNORE));
        }
        if ops.contains(Ops::SEND_IN_FLIGHT) {
            // A send to a peer that does not read never completes on its own (the socket lives
            // on in the request, whatever becomes of the slot): a dropped connection's is
            // cancelled, so that it is released.
            let send = Self::user_data(SEND, token);
            let _ = self.push(opcode::AsyncCancel::new(send).build().user_data(IGNORE));
        }
        if ops.contains(Ops::SHUTDOWN_IN_FLIGHT) {
            socket.insert(Ops::CLOSE_DEFERRED);
            return false;
        }
        let close = opcode::Close::new(types::Fixed(socket.slot()))
            .build()
            .user_data(IGNORE);
        let _ = self.push(close);
        Self::released(socket)
    }

    fn discard(&mut self, socket: Direct) {
        // Never registered: nothing is in flight on it.
        let close = opcode::Close::new(types::Fixed(socket.slot()))
            .build()
            .user_data(IGNORE);
        let _ = self.push(close);
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Uring {
        ring_with(vec![TcpListener::bind("127.0.0.1:0").unwrap()], 16)
    }

    /// A ring of 8 submissions (so 32 completions) and 8 provided buffers of 64 bytes.
    fn ring_with(listeners: Vec<TcpListener>, files: u32) -> Uring {
        let config = UringConfig {
            entries: 8,
            files,
            buffers: 8,
            buffer_size: 64,
            peer_addresses: false,
        };
        Uring::new(listeners, config).expect("io_uring is available on the test host")
    }

    /// The test's connection table: token `i` is `sockets[i]`.
    impl Sockets<Direct> for Vec<Direct> {
        fn socket(&mut self, token: usize) -> Option<&mut Direct> {
            self.get_mut(token)
        }
    }

    #[test]
    fn more_completions_than_the_queue_holds_and_than_buffers_all_arrive() {
        use std::io::Write;
        const CLIENTS: usize = 100;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut uring = ring_with(vec![listener], 128);
        let mut clients: Vec<_> = (0..CLIENTS)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let mut events = Vec::new();
        let mut sockets = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sockets.len() < CLIENTS && std::time::Instant::now() < deadline {
            let wait = Some(Duration::from_millis(10));
            uring.wait(&mut events, wait, &mut sockets).unwrap();
            for event in events.drain(..) {
                if let Completed::Accepted(socket, _, 0) = event {
                    sockets.push(socket);
                }
            }
        }
        assert_eq!(sockets.len(), CLIENTS);
        for (token, socket) in sockets.iter_mut().enumerate() {
            uring.register(socket, token).unwrap();
        }
        // All at once: 100 receive completions for a 32-entry queue, and 8 buffers for them.
        for (i, client) in clients.iter_mut().enumerate() {
            client.write_all(&[i as u8; 40]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut received = vec![0usize; CLIENTS];
        let mut overflowed = false;
        while received.iter().any(|&n| n < 40) && std::time::Instant::now() < deadline {
            let wait = Some(Duration::from_millis(10));
            uring.wait(&mut events, wait, &mut sockets).unwrap();
            overflowed |= uring.ring.submission().cq_overflow();
            for event in events.drain(..) {
                match event {
                    Completed::Received { token, buffer, len } => {
                        let bytes = uring.received(buffer, len);
                        assert!(bytes.iter().all(|&b| b == token as u8), "token {token}");
                        received[token] += bytes.len();
                        uring.release_buffer(buffer);
                    }
                    Completed::ReadClosed(token) => panic!("connection {token} closed"),
                    _ => {}
                }
            }
        }
        assert_eq!(received, vec![40; CLIENTS], "every byte, none twice");
        assert!(overflowed, "the completion queue overflowed at least once");
    }

    #[test]
    fn user_data_carries_operation_and_token() {
        let token = MAX_TOKENS - 1;
        let user_data = Uring::user_data(SHUTDOWN, token);
        assert_eq!(user_data & OP_MASK, SHUTDOWN);
        assert_eq!((user_data & TOKEN_MASK) as usize, token);
    }

    #[test]
    fn tokens_past_the_user_data_field_are_refused() {
        let mut uring = ring();
        let error = uring.register(&mut Direct::new(0), MAX_TOKENS).unwrap_err();
        assert!(error.to_string().contains("at most"), "{error}");
    }
}
