//! The OS part of a reactor, in the two models the kernel offers: one trait each, and one
//! backend each.
//!
//! - [`readiness::Readiness`] (epoll, [`epoll`]): the backend says a socket *can* be accepted on,
//!   read or written; the reactor then accepts, reads into its one shared buffer and writes,
//!   itself, at once.
//! - [`completion::Completion`] (io_uring, [`uring`]): the reactor *asks* for work (accept,
//!   receive, send, shut down, close) and the backend reports it *done*: a connection accepted,
//!   bytes received into one of its provided buffers, a send finished, a closed connection's last
//!   operation over. What a turn asks for is submitted at its end, with the wait.
//!
//! A backend implements its own model and nothing else. The reactor's drivers
//! (`crate::reactor::readiness`, `crate::reactor::completion`) turn each model's events into the
//! calls of the shared core, which holds the connection table, timers, parsing, dispatch and the
//! close procedure once for both.
//!
//! A reactor may accept on several listeners (a public and an admin port): `Acceptable` and
//! `Accepted` carry the listener's index. TLS needs nothing here (it works on the bytes above,
//! in the reactor).

use std::sync::Arc;

pub(crate) mod completion;
pub(crate) mod epoll;
pub(crate) mod readiness;
pub(crate) mod uring;

/// What one wait reported of what was ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reported {
    /// Everything: once the turn has handled it, the reactor has seen all its peers had sent
    /// when the wait returned.
    All,
    /// A batch cut at the backend's budget (events or completions): more is waiting.
    Part,
}

/// What moving a connection's queue on did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flushed {
    /// The queue is empty.
    Done,
    /// Bytes remain; a `Writable` (readiness) or `Sent` (completion) event will follow.
    Pending,
}

/// What an accepted socket can say of its peer, for the log line of a limit it hit after the
/// handshake (before it, the address comes from accept).
pub(crate) trait Peer {
    /// The peer's address, when the socket can tell.
    fn peer(&self) -> Option<std::net::SocketAddr>;
}

/// Wakes a reactor from another thread.
pub(crate) trait Wake: Send + Sync {
    /// Interrupts the reactor's wait.
    fn wake(&self);
}

/// The waker of a backend, shared with the threads that post to the reactor.
pub(crate) type Waker = Arc<dyn Wake>;
