//! What the shared core asks of an I/O model: the [`Driver`] trait, implemented once per model
//! (`readiness::ReadinessDriver` over an epoll-like backend, `completion::CompletionDriver`
//! over an io_uring-like one).
//!
//! The core (table, timers, parsing, dispatch, the close procedure) is generic over a driver and
//! monomorphized for each: no `dyn` between the loop and the socket. A driver owns its backend
//! and what only its model needs (readiness: the shared read buffer, the cork, reads and accepts
//! carried to the next turn; completion: the events it reaps), and calls back into the core for
//! everything else.

use std::io;
use std::time::{Duration, Instant};

use super::Reactor;
use super::writer::Writing;
use crate::Handler;
use crate::sys::completion::Sockets;
use crate::sys::{Flushed, Peer, Reported, Waker};
use crate::txqueue::TxQueue;

/// One I/O model, as the shared core drives it.
pub(crate) trait Driver: Sized {
    /// Whether `flush` only queues a send for the next submission (completion), rather than
    /// writing (readiness).
    const SENDS_AT_SUBMIT: bool;
    /// A connection's socket, kept in its entry.
    type Socket: Peer;
    /// How this model's connections write.
    type Writing: Writing<Self::Socket>;

    /// The writers' shared state.
    fn writing(&mut self) -> &mut Self::Writing;

    /// Waits for I/O, at most `timeout` (less if the model carried work over), submitting what
    /// the turn asked for first; whether what it reports is all there is.
    fn wait(
        &mut self,
        sockets: &mut impl Sockets<Self::Socket>,
        timeout: Option<Duration>,
    ) -> io::Result<Reported>;

    /// Handles what the wait reported, through the reactor's shared procedures.
    fn dispatch<H: Handler>(reactor: &mut Reactor<Self, H>, now: Instant);

    /// Starts watching a connection admitted under `token`.
    fn register(&mut self, socket: &mut Self::Socket, token: usize) -> io::Result<()>;

    /// Closes an accepted socket that was refused before it was registered.
    fn refuse(&mut self, socket: Self::Socket);

    /// Moves a connection's queue on: readiness writes what the socket takes now; completion
    /// starts a send unless one is in flight.
    fn flush(
        &mut self,
        token: usize,
        socket: &mut Self::Socket,
        queue: &mut TxQueue,
    ) -> io::Result<Flushed>;

    /// Gives the kernel the sends `flush` queued, without waiting: completion's are run only by
    /// a submission (this or the next wait); readiness writes in `flush` and has none.
    fn submit(&mut self) -> io::Result<()>;

    /// Sends FIN behind what is queued.
    fn shutdown_write(&mut self, token: usize, socket: &mut Self::Socket);

    /// Stops reading a connection (over its write cap): its bytes wait in the socket.
    fn pause_reading(&mut self, token: usize, socket: &mut Self::Socket);

    /// Reads a paused connection again: readiness reads what waits (no new edge would come),
    /// completion arms its receive again.
    fn resume_reading(&mut self, token: usize, socket: &mut Self::Socket);

    /// Closes a connection; `false` while operations are still in flight on it (the model then
    /// reports its release).
    fn close(&mut self, token: usize, socket: &mut Self::Socket) -> bool;

    /// Accepts again after a pause (the process ran out of descriptors or memory).
    fn resume_accepting(&mut self);

    /// Stops accepting for good (shutdown).
    fn stop_accepting(&mut self);

    /// Wakes this reactor's wait from other threads.
    fn waker(&self) -> Waker;

    /// Writes that carried bytes to sockets since start (`Stats::socket_writes`).
    fn socket_writes(&self) -> u64;
}
