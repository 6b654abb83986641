//! The readiness model: a backend that reports which sockets can make progress, and leaves the
//! accepting, reading and writing to the reactor, done at once with plain syscalls.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::time::Duration;

use super::{Reported, Waker};

/// What a readiness backend reports, per connection token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ready {
    /// Connections wait on this listener (its index): call [`Readiness::accept`] until it has
    /// none.
    Acceptable(usize),
    /// Read with [`Readiness::read`] until it would block (edge-triggered: no new event comes
    /// for bytes already there).
    Readable {
        /// The connection.
        token: usize,
        /// The peer's FIN (or an error) is already pending, so read on to the end of the stream
        /// even after a short read.
        closed: bool,
    },
    /// The socket takes bytes again: write what the connection's queue holds.
    Writable(usize),
    /// Another thread called [`super::Wake::wake`].
    Woken,
}

/// A readiness backend for one reactor thread.
pub(crate) trait Readiness {
    /// An accepted connection's socket (it closes when dropped).
    type Socket;

    /// Waits until something is ready or `timeout` passes, then appends what is to `events`.
    fn wait(&mut self, events: &mut Vec<Ready>, timeout: Option<Duration>) -> io::Result<Reported>;

    /// Accepts one pending connection on listener `listener`; `Ok(None)` when there is none.
    fn accept(&mut self, listener: usize)
    -> io::Result<Option<(Self::Socket, Option<SocketAddr>)>>;

    /// How many listeners it accepts on (0 once stopped).
    fn listeners(&self) -> usize;

    /// Stops accepting (shutdown): the listeners are closed.
    fn stop_accepting(&mut self);

    /// Starts watching a new connection under `token`, for reading and writing.
    fn register(&mut self, socket: &mut Self::Socket, token: usize) -> io::Result<()>;

    /// Reads into `buf`: `Ok(0)` at the end of the stream, `WouldBlock` when nothing is there.
    fn read(socket: &mut Self::Socket, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes as much of `bufs` as the socket takes now.
    fn send(socket: &mut Self::Socket, bufs: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Sends FIN once what was written is sent; reading goes on.
    fn shutdown_write(socket: &mut Self::Socket);

    /// A handle that wakes this backend's `wait` from any thread.
    fn waker(&self) -> Waker;
}
