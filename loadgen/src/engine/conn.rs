//! One connection slot of an event loop: its socket, where it is in its life and the mode's
//! state; nothing else. The buffers a connection needs only now and then (a partial frame, bytes
//! the socket did not take) are lent by the loop ([`super::lent`]) and the slot keeps only their
//! index, so an idle slot is 64 bytes plus the mode's state (the `size_of` tests below). Also the
//! socket helpers the loop uses (write with a backlog, read with retry on EINTR, both also through
//! TLS).

use std::io::{self, Read, Write};

use clarion_protocol::Connection;
use clarion_protocol::handshake::ClientHandshake;
use mio::net::TcpStream;

use super::lent::LentId;
use crate::failure::Reason;

/// Most bytes a connection may have waiting for the socket before it counts as stalled.
pub const MAX_BACKLOG: usize = 16 << 20;

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
    /// TLS handshake (`wss://`) in progress since the TCP connect ended at `since_ns`; its
    /// state is beside the slot.
    Securing {
        /// When the client's hello left.
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
    /// `sse` transport: the event stream is open (or, once we sent our FIN, ending).
    Stream(crate::sse::Decoder),
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

/// [`flush`] through TLS: `tx` is encrypted, and the records go out as far as the socket takes
/// them; what it does not take waits in rustls (which the slot's TLS state holds anyway), so a
/// TLS connection never borrows a backlog.
pub fn flush_tls(
    stream: &mut TcpStream,
    tls: &mut rustls::ClientConnection,
    tx: &mut Vec<u8>,
) -> Result<(), Reason> {
    if !tx.is_empty() {
        // rustls holds up to MAX_BACKLOG (set_buffer_limit at connect): past it, stalled.
        let taken = tls.writer().write(tx).map_err(|e| Reason::of_io(&e))?;
        let all = taken == tx.len();
        tx.clear();
        if !all {
            return Err(Reason::Stalled);
        }
    }
    while tls.wants_write() {
        match tls.write_tls(stream) {
            Ok(0) => return Err(Reason::Reset),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Reason::of_io(&e)),
        }
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

/// Reads into `buf` (with TLS: decrypted bytes; a short read does not mean the socket is
/// drained, only [`Got::Empty`] does).
pub fn read(
    stream: &mut TcpStream,
    tls: Option<&mut rustls::ClientConnection>,
    buf: &mut [u8],
) -> Got {
    if let Some(tls) = tls {
        return read_tls(stream, tls, buf);
    }
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

/// [`read`] through TLS: plaintext rustls holds first, else records from the socket.
fn read_tls(stream: &mut TcpStream, tls: &mut rustls::ClientConnection, buf: &mut [u8]) -> Got {
    loop {
        match tls.reader().read(buf) {
            Ok(0) => return Got::Eof,
            Ok(n) => return Got::Bytes(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Got::Eof,
            Err(_) => return Got::Failed(Reason::Tls),
        }
        match receive_tls(stream, tls) {
            Ok(true) => {}
            Ok(false) => return Got::Empty,
            Err(got) => return got,
        }
    }
}

/// Reads records from the socket into rustls and processes them; `false` when the socket had
/// nothing.
pub fn receive_tls(
    stream: &mut TcpStream,
    tls: &mut rustls::ClientConnection,
) -> Result<bool, Got> {
    loop {
        match tls.read_tls(stream) {
            Ok(0) => return Err(Got::Eof),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Got::Failed(Reason::of_io(&e))),
        }
    }
    match tls.process_new_packets() {
        Ok(_) => Ok(true),
        Err(_) => Err(Got::Failed(Reason::Tls)),
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
