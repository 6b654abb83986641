//! One connection slot of an event loop: its socket, where it is in its life, the buffers it
//! borrows only while it needs them, and the two socket helpers the loop uses (write with a
//! backlog, read with retry on EINTR).

use std::io::{self, Read, Write};

use clarion_protocol::Connection;
use clarion_protocol::handshake::ClientHandshake;
use mio::net::TcpStream;

use crate::failure::Reason;

/// Most bytes a connection may have waiting for the socket before it counts as stalled.
pub const MAX_BACKLOG: usize = 16 << 20;

/// Where the socket is.
#[derive(Debug)]
pub enum Phase {
    /// No socket: not dialed yet, waiting to retry, or finished.
    Idle,
    /// TCP connect in progress.
    Connecting,
    /// TLS handshake in progress (`wss://`); its state is beside the slot.
    Securing,
    /// Upgrade request sent, waiting for the 101.
    Handshaking(ClientHandshake),
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
    /// Counted as failed, dropped or done; nothing more to count.
    Ended,
}

/// One slot.
#[derive(Debug)]
pub struct Conn<S> {
    /// The socket, while there is one.
    pub stream: Option<TcpStream>,
    /// Socket phase.
    pub phase: Phase,
    /// Counting state.
    pub life: Life,
    /// Whether it counts as ramped (ready or ended).
    pub settled: bool,
    /// We sent our close frame.
    pub we_closed: bool,
    /// Partial handshake answers and frames; empty (unallocated) otherwise.
    pub rx: Vec<u8>,
    /// Bytes the socket did not take yet; empty (unallocated) otherwise.
    pub backlog: Vec<u8>,
    /// Global connection index (picks the source, target and topic).
    pub index: usize,
    /// Dials so far for this connection.
    pub attempts: u32,
    /// Changes on every dial, so stale deadlines are recognised.
    pub generation: u32,
    /// When the current phase began (dial, request sent).
    pub phase_ns: u64,
    /// When the dial was due.
    pub due_ns: u64,
    /// The mode's state.
    pub state: S,
}

impl<S: Default> Conn<S> {
    /// A fresh slot for connection `index`.
    pub fn new(index: usize) -> Conn<S> {
        Conn {
            stream: None,
            phase: Phase::Idle,
            life: Life::Pending,
            settled: false,
            we_closed: false,
            rx: Vec::new(),
            backlog: Vec::new(),
            index,
            attempts: 0,
            generation: 0,
            phase_ns: 0,
            due_ns: 0,
            state: S::default(),
        }
    }
}

/// Writes `tx` after whatever is in `backlog`; what the socket does not take is kept in
/// `backlog` (with TLS: in rustls, as records). `tx` is left empty.
pub fn flush(
    stream: &mut TcpStream,
    tls: Option<&mut rustls::ClientConnection>,
    backlog: &mut Vec<u8>,
    tx: &mut Vec<u8>,
) -> Result<(), Reason> {
    if let Some(tls) = tls {
        return flush_tls(stream, tls, tx);
    }
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
        if backlog.is_empty() {
            // Give the memory back: most connections never need a backlog again.
            *backlog = Vec::new();
        }
    }
    if backlog.len() > MAX_BACKLOG {
        return Err(Reason::Stalled);
    }
    Ok(())
}

/// [`flush`] through TLS: `tx` is encrypted, and the records go out as far as the socket takes
/// them.
fn flush_tls(
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

/// Whether bytes wait for the socket (in `backlog`, or as TLS records).
pub fn has_backlog(backlog: &[u8], tls: Option<&rustls::ClientConnection>) -> bool {
    !backlog.is_empty() || tls.is_some_and(|tls| tls.wants_write())
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
