//! The narrow, OS-specific part of a reactor: accept, read into a buffer, write, wait.
//!
//! Everything else (the connection table, buffers, timers, parsing, dispatch) lives once, above,
//! in [`super::event_loop`]. One file per backend.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub mod epoll;

/// Token of the listening socket in readiness events.
pub const LISTENER: usize = usize::MAX - 1;
/// Token of the cross-thread waker.
pub const WAKER: usize = usize::MAX - 2;

/// What woke the reactor, per connection token (or [`LISTENER`], [`WAKER`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEvent {
    /// Bytes (or end of stream) can be read.
    Readable(usize),
    /// Queued bytes can be written.
    Writable(usize),
}

/// Wakes a reactor from another thread.
pub trait Wake: Send + Sync {
    /// Interrupts the reactor's wait.
    fn wake(&self);
}

/// An event-loop backend for one reactor thread.
pub trait Backend {
    /// An accepted connection's socket.
    type Socket;

    /// Waits until something is ready or `timeout` passes, then fills `events`.
    fn wait(&mut self, events: &mut Vec<IoEvent>, timeout: Option<Duration>) -> io::Result<()>;

    /// Accepts one pending connection; `Ok(None)` when there is none.
    fn accept(&mut self) -> io::Result<Option<(Self::Socket, SocketAddr)>>;

    /// Stops accepting (shutdown): the listener is closed, queued connections are refused.
    fn stop_accepting(&mut self);

    /// Starts watching a new connection under `token`.
    fn register(&mut self, socket: &mut Self::Socket, token: usize) -> io::Result<()>;

    /// Reads into `buf`: `Ok(0)` at end of stream, `WouldBlock` when nothing is there.
    fn read(&mut self, socket: &mut Self::Socket, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes as much of `bufs` as the socket takes now.
    fn write(&mut self, socket: &mut Self::Socket, bufs: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Sends FIN after the queued bytes; reading goes on.
    fn shutdown_write(&mut self, socket: &mut Self::Socket);

    /// Stops watching and closes the socket.
    fn close(&mut self, socket: Self::Socket);

    /// A handle that wakes this backend's `wait` from any thread.
    fn waker(&self) -> Arc<dyn Wake>;
}
