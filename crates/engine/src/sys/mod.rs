//! The narrow, OS-specific part of a reactor: accept, read into a buffer, write or submit, wait.
//!
//! Two models behind one trait. A readiness backend (epoll) reports that a socket can be read or
//! written, and the reactor then reads into its shared buffer and writes directly. A completion
//! backend (io_uring) reports finished work: a connection accepted, bytes received into one of
//! its provided buffers, a send done. Each backend produces only the events of its model; the
//! reactor handles both, so the connection table, buffers, timers, parsing, dispatch and the
//! close procedure live once, in [`super::event_loop`].

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::txqueue::TxQueue;

pub mod epoll;
pub mod uring;

/// What happened, per connection token.
#[derive(Debug)]
pub enum IoEvent<S> {
    /// Readiness: connections wait on the listener; call [`Backend::accept`] until `None`.
    Acceptable,
    /// Completion: a connection was accepted (with its peer's address when the backend was
    /// asked for it).
    Accepted(S, Option<SocketAddr>),
    /// Completion: accepting stopped on an error (e.g. the file table is full);
    /// [`Backend::resume_accepting`] starts it again.
    AcceptFailed(io::Error),
    /// Readiness: read with [`Backend::read`]. `closed`: the peer has also shut its side, so
    /// reading must go on to the end of the stream (no further edge will come).
    Readable {
        /// The connection.
        token: usize,
        /// The peer's FIN (or an error) is already pending.
        closed: bool,
    },
    /// Completion: `len` bytes arrived in provided buffer `buffer` ([`Backend::received`]).
    Received {
        /// The connection.
        token: usize,
        /// The provided buffer holding the bytes.
        buffer: u16,
        /// How many bytes.
        len: u32,
    },
    /// Completion: the peer closed its side, or receiving failed.
    ReadClosed(usize),
    /// Readiness: the connection's queue can be flushed with [`Backend::flush`].
    Writable(usize),
    /// Completion: the send started by [`Backend::flush`] finished (bytes written, or -errno).
    Sent {
        /// The connection.
        token: usize,
        /// Bytes written, or a negated errno.
        result: i32,
    },
    /// Completion: every operation of a connection closed with [`Backend::close`] has
    /// finished; its token may be reused.
    Released(usize),
    /// Another thread called [`Wake::wake`].
    Woken,
}

/// What [`Backend::flush`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flushed {
    /// The queue is empty.
    Done,
    /// Bytes remain; a `Writable` or `Sent` event will follow.
    Pending,
}

/// Wakes a reactor from another thread.
pub trait Wake: Send + Sync {
    /// Interrupts the reactor's wait.
    fn wake(&self);
}

/// The reactor's connections as a backend sees them while it reaps completions: a completion
/// backend keeps its per-connection state in the socket, inside the reactor's entry, instead of
/// a table of its own.
pub trait Sockets<S> {
    /// The socket registered under `token`, while its entry exists (until it is released).
    fn socket(&mut self, token: usize) -> Option<&mut S>;
}

/// An event-loop backend for one reactor thread.
pub trait Backend {
    /// An accepted connection's socket.
    type Socket;

    /// Whether [`Backend::write_now`] writes synchronously. Completion backends queue every byte
    /// and send it when the reactor calls [`Backend::flush`] at the end of its turn.
    const WRITES_NOW: bool;

    /// Submits what is pending, waits until something happens or `timeout` passes, then fills
    /// `events`; `sockets` lends the connections' sockets meanwhile.
    fn wait(
        &mut self,
        events: &mut Vec<IoEvent<Self::Socket>>,
        timeout: Option<Duration>,
        sockets: &mut dyn Sockets<Self::Socket>,
    ) -> io::Result<()>;

    /// Readiness: accepts one pending connection; `Ok(None)` when there is none.
    fn accept(&mut self) -> io::Result<Option<(Self::Socket, Option<SocketAddr>)>>;

    /// Starts accepting again after an accept error paused it.
    fn resume_accepting(&mut self);

    /// Stops accepting (shutdown): the listener is closed.
    fn stop_accepting(&mut self);

    /// Starts watching (or receiving on) a new connection under `token`.
    fn register(&mut self, socket: &mut Self::Socket, token: usize) -> io::Result<()>;

    /// Readiness: reads into `buf`; `Ok(0)` at end of stream, `WouldBlock` when nothing is there.
    fn read(socket: &mut Self::Socket, buf: &mut [u8]) -> io::Result<usize>;

    /// Completion: the bytes of a `Received` event.
    fn received(&mut self, buffer: u16, len: u32) -> &mut [u8];

    /// Completion: gives a provided buffer back once its bytes are processed.
    fn release_buffer(&mut self, buffer: u16);

    /// Writes as much of `bufs` as the socket takes now (0 on completion backends).
    fn write_now(socket: &mut Self::Socket, bufs: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Sends what `queue` holds: writes it now (readiness) or starts an asynchronous send
    /// (completion; nothing if one is already in flight).
    fn flush(
        &mut self,
        token: usize,
        socket: &mut Self::Socket,
        queue: &mut TxQueue,
    ) -> io::Result<Flushed>;

    /// Sends FIN once what was written before is sent; reading goes on.
    fn shutdown_write(&mut self, token: usize, socket: &mut Self::Socket);

    /// Closes the connection. `true`: done, the token is free now. `false`: operations are still
    /// in flight; a `Released` event will say when the token is free (until then the queue the
    /// kernel may be reading must be kept).
    fn close(&mut self, token: usize, socket: &mut Self::Socket) -> bool;

    /// A handle that wakes this backend's `wait` from any thread.
    fn waker(&self) -> Arc<dyn Wake>;
}
