//! The completion model: a backend that the reactor asks for work (accepts, receives, sends,
//! shutdowns, closes) and that reports it done; its receive buffers are its own, lent out per
//! arrival.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use super::{Flushed, Reported, Waker};
use crate::txqueue::TxQueue;

/// What a completion backend reports finished, per connection token.
#[derive(Debug)]
pub(crate) enum Completed<S> {
    /// A connection was accepted (with its peer's address when the backend was asked for it)
    /// on the listener of this index.
    Accepted(S, Option<SocketAddr>, usize),
    /// Accepting stopped on an error (the file table is full, say);
    /// [`Completion::resume_accepting`] starts it again.
    AcceptFailed(io::Error),
    /// `len` bytes arrived in provided buffer `buffer` ([`Completion::received`]); give it
    /// back with [`Completion::release_buffer`] once they are processed.
    Received {
        /// The connection.
        token: usize,
        /// The provided buffer holding the bytes.
        buffer: u16,
        /// How many bytes.
        len: u32,
    },
    /// The peer closed its side, or receiving failed.
    ReadClosed(usize),
    /// The send started by [`Completion::send`] finished (bytes written, or -errno).
    Sent {
        /// The connection.
        token: usize,
        /// Bytes written, or a negated errno.
        result: i32,
    },
    /// Every operation of a connection closed with [`Completion::close`] has finished; its
    /// token may be reused.
    Released(usize),
    /// Another thread called [`super::Wake::wake`].
    Woken,
}

/// The reactor's connections as a completion backend sees them while it reaps: the backend
/// keeps its per-connection state in the socket, inside the reactor's entry, instead of a table
/// of its own.
pub(crate) trait Sockets<S> {
    /// The socket registered under `token`, while its entry exists (until it is released).
    fn socket(&mut self, token: usize) -> Option<&mut S>;
}

/// A completion backend for one reactor thread.
pub(crate) trait Completion {
    /// An accepted connection's socket.
    type Socket;

    /// Submits what the turn asked for, waits until something completes or `timeout` passes,
    /// then appends what completed to `events`; `sockets` lends the connections' sockets.
    fn wait(
        &mut self,
        events: &mut Vec<Completed<Self::Socket>>,
        timeout: Option<Duration>,
        sockets: &mut impl Sockets<Self::Socket>,
    ) -> io::Result<Reported>;

    /// Submits what is queued without waiting for anything to complete.
    fn submit(&mut self) -> io::Result<()>;

    /// Asks for accepts again after an accept error stopped them.
    fn resume_accepting(&mut self);

    /// Stops accepting (shutdown): the accepts are cancelled, the listeners closed.
    fn stop_accepting(&mut self);

    /// Starts receiving on a new connection under `token`.
    fn register(&mut self, socket: &mut Self::Socket, token: usize) -> io::Result<()>;

    /// The bytes of a `Received` event.
    fn received(&mut self, buffer: u16, len: u32) -> &mut [u8];

    /// Gives a provided buffer back once its bytes are processed.
    fn release_buffer(&mut self, buffer: u16);

    /// Starts sending what `queue` holds, unless a send is already in flight; `Sent` follows.
    /// The queue must stay where it is, unchanged in front, until then.
    fn send(
        &mut self,
        token: usize,
        socket: &mut Self::Socket,
        queue: &mut TxQueue,
    ) -> io::Result<Flushed>;

    /// Sends FIN once what was sent before is out; receiving goes on.
    fn shutdown_write(&mut self, token: usize, socket: &mut Self::Socket);

    /// Stops receiving on a connection (it is over its write cap): what arrives waits in the
    /// socket, and TCP pushes back on the peer. Receives already completing still come.
    fn pause_receiving(&mut self, token: usize, socket: &mut Self::Socket);

    /// Receives again after [`Completion::pause_receiving`] (armed with the next wait).
    fn resume_receiving(&mut self, token: usize, socket: &mut Self::Socket);

    /// Closes a registered connection. `true`: done, the token is free now. `false`: operations
    /// are still in flight; `Released` will say when the token is free (until then the queue
    /// the kernel may be reading must be kept).
    fn close(&mut self, token: usize, socket: &mut Self::Socket) -> bool;

    /// Closes an accepted socket that was never registered (refused at admission).
    fn discard(&mut self, socket: Self::Socket);

    /// A handle that wakes this backend's `wait` from any thread.
    fn waker(&self) -> Waker;
}
