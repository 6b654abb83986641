//! One connection slot of an event loop: its socket, where it is in its life and the mode's
//! state; nothing else. The buffers a connection needs only now and then (a partial frame, bytes
//! the socket did not take) are lent by the loop ([`super::lent`]) and the slot keeps only their
//! index, so an idle slot is 64 bytes plus the mode's state (the `size_of` tests below). Also the
//! two socket helpers the loop uses (write with a backlog, read with retry on EINTR).

use std::io::{self, Read, Write};

use clarion_protocol::Connection;
use clarion_protocol::handshake::ClientHandshake;
use mio::net::TcpStream;

use super::lent::LentId;
use crate::failure::Reason;

/// Most bytes a connection may have waiting for the socket before it counts as stalled.
const MAX_BACKLOG: usize = 16 << 20;

/// Where the socket is.
#[derive(Debug)]
pub enum Phase {
    /// No socket: not dialed yet, waiting to retry, or finished.
    Idle,
    /// TCP connect in progress, started at `since_ns`.
    Connecting {
        /// When the dial started.
        since_ns: u64,
    },
    /// Upgrade request sent at `since_ns`, waiting for the 101.
    Handshaking {
        /// The key to check the answer against.
        handshake: ClientHandshake,
        /// When the request left.
        since_ns: u64,
    },
    /// WebSocket open (or closing, once we sent our close frame).
    Open(Connection),
    /// The WebSocket is over; waiting for the server to close TCP first, so the TIME_WAIT
    /// lands on its side and the loadgen's ports stay free.
    Finishing,
}

/// What the connection has been counted as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// Not open yet (dialing, retrying).
    Pending,
    /// Counted as established.
    Open,
    /// Dropped on purpose by the reconnect storm and dialing again; counted as established
    /// already, so its return is counted by the storm, not as a new connection.
    Rejoining,
    /// Counted as failed, dropped or done; nothing more to count.
    Ended,
}

/// One slot. Its global connection index (which picks the source, target and topic) is the
/// loop's first index plus the slot number, so it is not stored.
#[derive(Debug)]
pub struct Conn<S> {
    /// The socket, while there is one.
    pub stream: Option<TcpStream>,
    /// Socket phase.
    pub phase: Phase,
    /// Changes on every dial, so stale deadlines are recognised.
    pub generation: u32,
    /// The buffers lent to this connection, while it has any.
    pub lent: Option<LentId>,
    /// Dials so far for this connection (retries are at most 100).
    pub attempts: u8,
    /// Counting state.
    pub life: Life,
    /// Whether it counts as ramped (ready or ended).
    pub settled: bool,
    /// We sent our close frame.
    pub we_closed: bool,
    /// The mode's state.
    pub state: S,
}

impl<S: Default> Conn<S> {
    /// A fresh slot.
    pub fn new() -> Conn<S> {
        Conn {
            stream: None,
            phase: Phase::Idle,
            generation: 0,
            lent: None,
            attempts: 0,
            life: Life::Pending,
            settled: false,
            we_closed: false,
            state: S::default(),
        }
    }
}

/// Writes `tx` after whatever is in `backlog`; what the socket does not take is kept in
/// `backlog`. `tx` is left empty.
pub fn flush(
    stream: &mut TcpStream,
    backlog: &mut Vec<u8>,
    tx: &mut Vec<u8>,
) -> Result<(), Reason> {
    if backlog.is_empty() {
        if tx.is_empty() {
            return Ok(());
        }
        let written = write_some(stream, tx);
        if let Ok(n) = written
            && n < tx.len()
        {
            backlog.extend_from_slice(&tx[n..]);
        }
        tx.clear();
        written?;
    } else {
        backlog.extend_from_slice(tx);
        tx.clear();
        let written = write_some(stream, backlog)?;
        backlog.drain(..written);
    }
    if backlog.len() > MAX_BACKLOG {
        return Err(Reason::Stalled);
    }
    Ok(())
}

/// Writes as much of `bytes` as the socket takes now.
fn write_some(stream: &mut TcpStream, bytes: &[u8]) -> Result<usize, Reason> {
    let mut written = 0;
    while written < bytes.len() {
        match stream.write(&bytes[written..]) {
            Ok(0) => return Err(Reason::Reset),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Reason::of_io(&e)),
        }
    }
    Ok(written)
}

/// What a read gave.
pub enum Got {
    /// Bytes (at the start of the buffer).
    Bytes(usize),
    /// Nothing more for now.
    Empty,
    /// The server closed its side.
    Eof,
    /// The socket broke.
    Failed(Reason),
}

/// Reads into `buf`.
pub fn read(stream: &mut TcpStream, buf: &mut [u8]) -> Got {
    loop {
        return match stream.read(buf) {
            Ok(0) => Got::Eof,
            Ok(n) => Got::Bytes(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Got::Empty,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Got::Failed(Reason::of_io(&e)),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::{Traffic, churn, echo, subscribe};

    type Of<T> = Conn<<T as Traffic>::Conn>;

    /// What every connection costs the loop, whatever it does: these are the bytes per idle
    /// connection at a million (plus the mode's side tables, see `Subscribe`). Debug builds of
    /// mio add a selector id to every socket (4 bytes become 16), so the sizes are stated for a
    /// release build and the debug build's extra is added on top.
    #[test]
    fn slots_stay_small() {
        // (socket, what the slot grows by with the socket's 8-byte alignment in debug)
        let (socket, mio_debug) = if cfg!(debug_assertions) {
            (16, 16)
        } else {
            (4, 0)
        };
        assert_eq!(size_of::<Option<TcpStream>>(), socket);
        assert_eq!(
            size_of::<Phase>(),
            48,
            "the protocol state, with the phases in its niche"
        );
        assert_eq!(size_of::<Conn<()>>(), 64 + mio_debug, "idle");
        assert_eq!(
            size_of::<Of<churn::Churn>>(),
            72 + mio_debug,
            "churn: when its dial was due"
        );
        assert_eq!(
            size_of::<Of<echo::Echo>>(),
            88 + mio_debug,
            "echo: counts in flight, sent, owed"
        );
        assert_eq!(
            size_of::<Of<subscribe::Subscribe>>(),
            80 + mio_debug,
            "fanout: last seq, flags"
        );
    }
}
