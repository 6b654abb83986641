//! The TLS record layer between a connection's socket bytes and its protocol bytes: rustls'
//! unbuffered server connection, kept beside the table (never in a plaintext connection's
//! entry), with every buffer lent from the reactor's pools only while bytes are in it.
//!
//! - In: ciphertext from the socket (the readiness driver's shared read buffer, or io_uring's
//!   provided buffer) is decrypted into the reactor's one plaintext buffer, which the protocol
//!   then reads exactly as a plaintext connection's bytes. Only the tail of a record that has
//!   not fully arrived is kept, in a buffer lent from the receive pool.
//! - Out: a TLS connection's writer queues plaintext (frames shared by many connections stay
//!   shared). The turn's end (`Reactor::flush`) encrypts what is queued, gathering several
//!   small messages into one record, into a ciphertext queue lent from the write pool, and
//!   sends that; the next batch is encrypted only when the socket has taken it, so plaintext,
//!   not ciphertext, is what waits (and what the per-connection cap on queued bytes counts).
//! - An idle TLS connection holds its rustls state (the session keys and what the protocol
//!   needs after the handshake, see `docs/architecture.md`) and no buffer.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bitflags::bitflags;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use rustls::{HandshakeKind, ServerConfig};

use crate::Stats;
use crate::buffer::Pool;
use crate::txqueue::TxQueue;

/// Plaintext gathered into one record: TLS's largest (16 KiB). Messages queued for one
/// connection share records up to this size, so a subscriber behind on several small messages
/// pays one record's overhead (22 to 29 bytes, one AEAD call) for all of them.
const RECORD: usize = 16 << 10;
/// Plaintext encrypted per flush before the socket must take it: bounds the ciphertext a
/// connection holds beyond its plaintext cap.
const BATCH: usize = 4 * RECORD;
/// A queued chunk at least this long is encrypted where it lies instead of being gathered.
const GATHER_BELOW: usize = 4 << 10;

bitflags! {
    /// Where a TLS connection is.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    struct TlsFlags: u8 {
        /// The handshake has not finished (counted under the reactor's handshake cap).
        const HANDSHAKING = 1;
        /// Nothing more goes out but what is queued: our close_notify, or a fatal alert.
        const DONE_SENDING = 1 << 1;
        /// The peer sent close_notify, or a record we could not read: nothing more is read.
        const DONE_READING = 1 << 2;
    }
}

/// One TLS connection's state beside its entry.
pub(crate) struct TlsConn {
    session: UnbufferedServerConnection,
    /// The tail of a record that has not fully arrived (and, during the handshake, records
    /// rustls has read but not yet released), lent from the receive pool while it lasts.
    #[allow(
        clippy::box_collection,
        reason = "one word per connection instead of a Vec's three"
    )]
    incoming: Option<Box<Vec<u8>>>,
    /// Ciphertext the socket has not taken yet, lent from the write pool while it lasts.
    pub(crate) outgoing: Option<Box<TxQueue>>,
    flags: TlsFlags,
}

/// What decrypting a connection's bytes did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// Plaintext (maybe none) was appended to the reactor's plaintext buffer.
    Data,
    /// The TLS layer failed (a bad record, a refused handshake): the alert, if any, is queued;
    /// the connection is over.
    Failed,
}

/// The reactor's TLS connections (by token) and what they share: the server settings, the
/// buffers records are built in, the handshake count.
pub(crate) struct TlsTable {
    config: Option<Arc<ServerConfig>>,
    max_handshakes: usize,
    conns: Vec<Option<Box<TlsConn>>>,
    /// Connections in the handshake.
    handshaking: usize,
    /// Decrypted bytes of the read being handled (the reactor's one plaintext buffer).
    pub(crate) plain: Vec<u8>,
    /// Small queued messages gathered into one record.
    gather: Vec<u8>,
    /// Where records are built before they are queued.
    scratch: Vec<u8>,
}

impl TlsTable {
    /// A table for a listener with `config` (or none: a plaintext listener, costing nothing).
    pub(crate) fn new(config: Option<&crate::TlsConfig>) -> TlsTable {
        TlsTable {
            config: config.map(|c| c.server.clone()),
            max_handshakes: config.map_or(0, |c| c.max_handshakes),
            conns: Vec::new(),
            handshaking: 0,
            plain: Vec::new(),
            gather: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Connections in the handshake now.
    pub(crate) fn handshaking(&self) -> usize {
        self.handshaking
    }

    /// The TLS state of `token`, if it is a TLS connection.
    pub(crate) fn get_mut(&mut self, token: usize) -> Option<&mut TlsConn> {
        self.conns.get_mut(token)?.as_deref_mut()
    }

    /// Whether `token` is a TLS connection.
    pub(crate) fn is_tls(&self, token: usize) -> bool {
        self.conns.get(token).is_some_and(Option::is_some)
    }

    /// Starts the TLS side of a connection accepted under `token`; `false` (the connection is
    /// to be refused) at the handshake cap.
    pub(crate) fn admit(&mut self, token: usize, stats: &Stats) -> bool {
        let Some(config) = &self.config else {
            return true;
        };
        if self.handshaking >= self.max_handshakes {
            stats.tls_refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let session = match UnbufferedServerConnection::new(config.clone()) {
            Ok(session) => session,
            Err(e) => {
                tracing::warn!("cannot start a TLS connection: {e}");
                return false;
            }
        };
        if self.conns.len() <= token {
            self.conns.resize_with(token + 1, || None);
        }
        self.conns[token] = Some(Box::new(TlsConn {
            session,
            incoming: None,
            outgoing: None,
            flags: TlsFlags::HANDSHAKING,
        }));
        self.handshaking += 1;
        true
    }

    /// Forgets `token`'s TLS state (its entry is being freed), giving back what it borrowed.
    pub(crate) fn remove(
        &mut self,
        token: usize,
        rx_pool: &mut Pool<Vec<u8>>,
        tx_pool: &mut Pool<TxQueue>,
    ) {
        let Some(conn) = self.conns.get_mut(token).and_then(Option::take) else {
            return;
        };
        if conn.flags.contains(TlsFlags::HANDSHAKING) {
            self.handshaking -= 1;
        }
        let TlsConn {
            incoming, outgoing, ..
        } = *conn;
        if let Some(incoming) = incoming {
            rx_pool.give(incoming);
        }
        if let Some(outgoing) = outgoing {
            tx_pool.give(outgoing);
        }
    }

    /// Gives back the receive buffer of a connection being dropped (its ciphertext queue stays
    /// until the entry is freed: a completion backend may still be sending from it).
    pub(crate) fn release_incoming(&mut self, token: usize, rx_pool: &mut Pool<Vec<u8>>) {
        if let Some(incoming) = self.get_mut(token).and_then(|c| c.incoming.take()) {
            rx_pool.give(incoming);
        }
    }

    /// Leaks every ciphertext queue (at exit: a completion backend may still read from them).
    pub(crate) fn leak_queues(&mut self) {
        for conn in self.conns.iter_mut().flatten() {
            std::mem::forget(conn.outgoing.take());
        }
    }

    /// Decrypts ciphertext received on `token` into `self.plain` (cleared first), and queues
    /// what the handshake answers.
    pub(crate) fn receive(
        &mut self,
        token: usize,
        input: &mut [u8],
        rx_pool: &mut Pool<Vec<u8>>,
        tx_pool: &mut Pool<TxQueue>,
        stats: &Stats,
    ) -> Received {
        self.plain.clear();
        let TlsTable {
            conns,
            handshaking,
            plain,
            scratch,
            ..
        } = self;
        let Some(conn) = conns.get_mut(token).and_then(Option::as_deref_mut) else {
            return Received::Data;
        };
        if conn.flags.contains(TlsFlags::DONE_READING) {
            return Received::Data;
        }
        // Records are read where they lie: in the input itself, unless the start of one is
        // already waiting in the connection's buffer.
        let result = match conn.incoming.take() {
            Some(mut held) => {
                held.extend_from_slice(input);
                let (result, used) = conn.read_records(&mut held, plain, scratch, tx_pool);
                held.drain(..used);
                conn.keep_incoming(held, rx_pool);
                result
            }
            None => {
                let (result, used) = conn.read_records(input, plain, scratch, tx_pool);
                if used < input.len() {
                    let mut held = rx_pool.take();
                    held.extend_from_slice(&input[used..]);
                    conn.keep_incoming(held, rx_pool);
                }
                result
            }
        };
        if conn.flags.contains(TlsFlags::HANDSHAKING) && !conn.session.is_handshaking() {
            conn.flags.remove(TlsFlags::HANDSHAKING);
            *handshaking -= 1;
            stats.tls_handshakes.fetch_add(1, Ordering::Relaxed);
            if conn.session.handshake_kind() == Some(HandshakeKind::Resumed) {
                stats.tls_resumed.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Err(e) = result {
            tracing::debug!(token, "TLS failed: {e}");
            stats.tls_failures.fetch_add(1, Ordering::Relaxed);
            // rustls queued the alert that says why (if it is one it sends): out it goes, and
            // nothing after it.
            conn.encode_pending(scratch, tx_pool);
            conn.flags
                .insert(TlsFlags::DONE_SENDING | TlsFlags::DONE_READING);
            if let Some(held) = conn.incoming.take() {
                rx_pool.give(held);
            }
            return Received::Failed;
        }
        Received::Data
    }

    /// Whether `token` may have plaintext encrypted now (its handshake has come far enough, and
    /// it has not finished sending).
    pub(crate) fn can_encrypt(&self, token: usize) -> bool {
        self.conns
            .get(token)
            .and_then(Option::as_deref)
            .is_some_and(|c| {
                !c.flags.contains(TlsFlags::DONE_SENDING) && !c.session.is_handshaking()
            })
    }

    /// Encrypts up to a batch of `plain` (consumed) into `token`'s ciphertext queue.
    pub(crate) fn encrypt(
        &mut self,
        token: usize,
        plain: &mut TxQueue,
        tx_pool: &mut Pool<TxQueue>,
    ) -> Result<(), EncryptError> {
        let TlsTable {
            conns,
            gather,
            scratch,
            ..
        } = self;
        let Some(conn) = conns.get_mut(token).and_then(Option::as_deref_mut) else {
            return Ok(());
        };
        let mut encrypted = 0;
        while !plain.is_empty() && encrypted < BATCH {
            let taken = {
                let mut runs = plain.runs().peekable();
                let first = runs.next().unwrap_or_default();
                let record: &[u8] = if first.len() >= GATHER_BELOW || runs.peek().is_none() {
                    &first[..first.len().min(BATCH)]
                } else {
                    gather.clear();
                    for run in std::iter::once(first).chain(runs) {
                        let room = RECORD - gather.len();
                        gather.extend_from_slice(&run[..run.len().min(room)]);
                        if gather.len() == RECORD {
                            break;
                        }
                    }
                    gather
                };
                conn.seal(record, scratch, tx_pool)?;
                record.len()
            };
            plain.consume(taken);
            encrypted += taken;
        }
        Ok(())
    }

    /// Queues `token`'s close_notify once, when it may still send; true if it did.
    pub(crate) fn close_notify(&mut self, token: usize, tx_pool: &mut Pool<TxQueue>) -> bool {
        let TlsTable { conns, scratch, .. } = self;
        let Some(conn) = conns.get_mut(token).and_then(Option::as_deref_mut) else {
            return false;
        };
        if conn.flags.contains(TlsFlags::DONE_SENDING) {
            return false;
        }
        conn.flags.insert(TlsFlags::DONE_SENDING);
        if conn.session.is_handshaking() {
            // No keys agreed yet: nothing to say it with; FIN says it.
            return false;
        }
        conn.with_write_traffic(scratch, tx_pool, |write, out| write.queue_close_notify(out))
            .is_ok()
    }
}

impl TlsConn {
    /// Hands `held` back to the pool when it emptied, else keeps it.
    #[allow(clippy::box_collection, reason = "the pool lends boxed buffers")]
    fn keep_incoming(&mut self, held: Box<Vec<u8>>, rx_pool: &mut Pool<Vec<u8>>) {
        if held.is_empty() {
            rx_pool.give(held);
        } else {
            self.incoming = Some(held);
        }
    }

    fn queue<'a>(
        outgoing: &'a mut Option<Box<TxQueue>>,
        tx_pool: &mut Pool<TxQueue>,
    ) -> &'a mut TxQueue {
        outgoing.get_or_insert_with(|| tx_pool.take())
    }

    /// Runs rustls over `buf`: application data to `plain`, handshake messages to the
    /// ciphertext queue. Returns the result and how many bytes of `buf` may be dropped.
    fn read_records(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
        tx_pool: &mut Pool<TxQueue>,
    ) -> (Result<(), rustls::Error>, usize) {
        let mut used = 0;
        loop {
            let status = self.session.process_tls_records(&mut buf[used..]);
            let mut discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(e) => return (Err(e), used + discard),
            };
            let more = match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                plain.extend_from_slice(record.payload);
                            }
                            Err(e) => return (Err(e), used + discard),
                        }
                    }
                    true
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    let outgoing = Self::queue(&mut self.outgoing, tx_pool);
                    encode_into(scratch, outgoing, |out| data.encode(out));
                    true
                }
                // What was encoded is queued in order and goes out at the turn's end.
                ConnectionState::TransmitTlsData(data) => {
                    data.done();
                    true
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.flags.insert(TlsFlags::DONE_READING);
                    false
                }
                // Waiting for the peer (BlockedHandshake), ready to write (WriteTraffic), or
                // early data, which is never enabled.
                _ => false,
            };
            used += discard;
            if !more {
                return (Ok(()), used);
            }
        }
    }

    /// Queues what rustls has left to send (after an error: its alert). Only while it has
    /// something: past that, rustls would read records again, and after an error its reader
    /// must not be called.
    fn encode_pending(&mut self, scratch: &mut Vec<u8>, tx_pool: &mut Pool<TxQueue>) {
        while self.session.wants_write() {
            let status = self.session.process_tls_records(&mut []);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    let outgoing = Self::queue(&mut self.outgoing, tx_pool);
                    encode_into(scratch, outgoing, |out| data.encode(out));
                }
                _ => return,
            }
        }
    }

    /// Runs `f` with rustls' encrypting side and a buffer, queuing what it wrote.
    fn with_write_traffic(
        &mut self,
        scratch: &mut Vec<u8>,
        tx_pool: &mut Pool<TxQueue>,
        mut f: impl FnMut(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut [u8],
        ) -> Result<usize, EncryptError>,
    ) -> Result<(), EncryptError> {
        // rustls reads records before it offers to write, and expects the bytes it kept from
        // the last read (a handshake message split over records): give it those, not nothing.
        let mut held = self.incoming.take();
        let result = loop {
            let buf: &mut [u8] = held.as_deref_mut().map_or(&mut [], |v| &mut v[..]);
            let status = self.session.process_tls_records(buf);
            let discard = status.discard;
            let result = match status.state {
                Ok(ConnectionState::WriteTraffic(mut write)) => {
                    let outgoing = Self::queue(&mut self.outgoing, tx_pool);
                    Some(encrypt_into(scratch, outgoing, |out| f(&mut write, out)))
                }
                // A key update to send first.
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    let outgoing = Self::queue(&mut self.outgoing, tx_pool);
                    encode_into(scratch, outgoing, |out| data.encode(out));
                    None
                }
                Ok(ConnectionState::TransmitTlsData(data)) => {
                    data.done();
                    None
                }
                _ => Some(Err(EncryptError::EncryptExhausted)),
            };
            if let Some(held) = held.as_deref_mut() {
                held.drain(..discard);
            }
            if let Some(result) = result {
                break result;
            }
        };
        // Held bytes are a record's beginning, which rustls cannot use up here; if it ever did,
        // the next read gives the empty buffer back.
        self.incoming = held;
        result
    }

    /// Encrypts `record` (one or more records' worth) into the ciphertext queue.
    fn seal(
        &mut self,
        record: &[u8],
        scratch: &mut Vec<u8>,
        tx_pool: &mut Pool<TxQueue>,
    ) -> Result<(), EncryptError> {
        self.with_write_traffic(scratch, tx_pool, |write, out| write.encrypt(record, out))
    }
}

/// Calls rustls' `encode` with `scratch` as its buffer, growing it when rustls asks, and
/// queues what it wrote.
fn encode_into(
    scratch: &mut Vec<u8>,
    queue: &mut TxQueue,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) {
    loop {
        match encode(scratch_space(scratch)) {
            Ok(n) => return queue.push_copy(&scratch[..n]),
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                scratch.resize(required_size, 0)
            }
            Err(_) => return,
        }
    }
}

/// Like [`encode_into`], for encryption.
fn encrypt_into(
    scratch: &mut Vec<u8>,
    queue: &mut TxQueue,
    mut encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), EncryptError> {
    loop {
        match encrypt(scratch_space(scratch)) {
            Ok(n) => {
                queue.push_copy(&scratch[..n]);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                scratch.resize(required_size, 0)
            }
            Err(e) => return Err(e),
        }
    }
}

/// The scratch buffer, at least one full record long.
fn scratch_space(scratch: &mut Vec<u8>) -> &mut [u8] {
    // A record's plaintext plus its header, explicit nonce and tag (TLS 1.2 AES-GCM's 29
    // bytes are the most), with room for a few records gathered in one call.
    const MIN: usize = RECORD + 256;
    if scratch.len() < MIN {
        scratch.resize(MIN, 0);
    }
    scratch
}

/// One TLS connection's record layer as the reactor runs it, without a reactor: for the fuzz
/// target (`fuzz/fuzz_targets/tls_server.rs`), which feeds it arbitrary bytes. Not an API.
#[doc(hidden)]
pub struct Pipe {
    table: TlsTable,
    rx_pool: Pool<Vec<u8>>,
    tx_pool: Pool<TxQueue>,
    plain_out: Option<Box<TxQueue>>,
    stats: Stats,
}

impl Pipe {
    /// A connection on a listener with `config`.
    pub fn new(config: &crate::TlsConfig) -> Pipe {
        let mut table = TlsTable::new(Some(config));
        let stats = Stats::default();
        assert!(table.admit(0, &stats), "one connection is under any cap");
        Pipe {
            table,
            rx_pool: Pool::new(4, 64 << 10),
            tx_pool: Pool::new(4, 64 << 10),
            plain_out: None,
            stats,
        }
    }

    /// Ciphertext received: the plaintext it decrypted, or `None` once the connection failed.
    pub fn receive(&mut self, input: &mut [u8]) -> Option<&[u8]> {
        let received =
            self.table
                .receive(0, input, &mut self.rx_pool, &mut self.tx_pool, &self.stats);
        (received == Received::Data).then_some(&self.table.plain[..])
    }

    /// Queues plaintext, as a TLS connection's writer does.
    pub fn send(&mut self, plain: &[u8]) {
        self.plain_out
            .get_or_insert_with(|| self.tx_pool.take())
            .push_copy(plain);
    }

    /// Encrypts what is queued, as the turn's end does, and takes all the ciphertext waiting;
    /// `None` if encrypting failed.
    pub fn flush(&mut self) -> Option<Vec<u8>> {
        if let Some(plain) = self.plain_out.as_deref_mut() {
            if self.table.can_encrypt(0) {
                while !plain.is_empty() {
                    self.table.encrypt(0, plain, &mut self.tx_pool).ok()?;
                }
            } else {
                plain.clear();
            }
        }
        if let Some(plain) = self.plain_out.take() {
            self.tx_pool.give(plain);
        }
        Some(self.take_output())
    }

    /// Queues close_notify (if the connection may still send) and takes what waits.
    pub fn close(&mut self) -> Vec<u8> {
        self.table.close_notify(0, &mut self.tx_pool);
        self.take_output()
    }

    fn take_output(&mut self) -> Vec<u8> {
        let mut bytes = Vec::new();
        if let Some(mut queue) = self.table.get_mut(0).and_then(|c| c.outgoing.take()) {
            while !queue.is_empty() {
                let mut slices = [std::io::IoSlice::new(&[]); crate::txqueue::MAX_IOVECS];
                let n = queue.slices(&mut slices);
                let before = bytes.len();
                slices[..n].iter().for_each(|s| bytes.extend_from_slice(s));
                queue.consume(bytes.len() - before);
            }
            self.tx_pool.give(queue);
        }
        bytes
    }

    /// Ends the connection; the buffers still lent (receive, write), which must be none.
    pub fn finish(mut self) -> (usize, usize) {
        self.table.remove(0, &mut self.rx_pool, &mut self.tx_pool);
        (self.rx_pool.lent(), self.tx_pool.lent())
    }

    /// Whether the handshake is done.
    pub fn handshake_done(&self) -> bool {
        self.table.can_encrypt(0) || self.table.handshaking() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    use super::*;
    use crate::tls::{ReloadableCert, certified_key};

    fn server() -> crate::TlsConfig {
        let key = certified_key(
            include_bytes!("../../tests/tls/chain.pem"),
            include_bytes!("../../tests/tls/key.pem"),
        )
        .unwrap();
        crate::TlsConfig::new(Arc::new(ReloadableCert::new(key))).unwrap()
    }

    /// A client and a pipe with the TLS 1.3 handshake done between them, in memory.
    fn pair() -> (rustls::ClientConnection, Pipe) {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(include_bytes!("../../tests/tls/ca.pem")) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut pipe = Pipe::new(&server());
        while client.is_handshaking() || client.wants_write() {
            let mut hello = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut hello).unwrap();
            }
            assert!(pipe.receive(&mut hello).is_some());
            let answer = pipe.flush().unwrap();
            client.read_tls(&mut &answer[..]).unwrap();
            client.process_new_packets().unwrap();
        }
        (client, pipe)
    }

    /// The TLS records in `bytes`: (content type, length) each.
    fn records(mut bytes: &[u8]) -> Vec<(u8, usize)> {
        let mut found = Vec::new();
        while bytes.len() >= 5 {
            let len = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
            found.push((bytes[0], len));
            bytes = &bytes[5 + len..];
        }
        assert!(bytes.is_empty(), "a record cut short");
        found
    }

    #[test]
    fn queued_messages_share_records_and_large_ones_are_cut_at_the_record_size() {
        let (mut client, mut pipe) = pair();
        // The session ticket rustls sends after the handshake is not application data.
        let ticket = pipe.flush().unwrap();
        client.read_tls(&mut &ticket[..]).unwrap();
        client.process_new_packets().unwrap();
        for i in 0..50u8 {
            pipe.send(&[i; 64]);
        }
        let out = pipe.flush().unwrap();
        assert_eq!(records(&out).len(), 1, "50 small messages, one record");
        let big = vec![7; 40_000];
        pipe.send(&big);
        let out2 = pipe.flush().unwrap();
        let sizes: Vec<usize> = records(&out2).iter().map(|r| r.1).collect();
        assert_eq!(sizes.len(), 3, "{sizes:?}");
        assert!(sizes.iter().all(|&len| len <= RECORD + 256), "{sizes:?}");
        let mut all = out;
        all.extend(out2);
        let (mut rest, mut plain) = (&all[..], Vec::new());
        while !rest.is_empty() {
            client.read_tls(&mut rest).unwrap();
            client.process_new_packets().unwrap();
            let mut chunk = [0; 4096];
            while let Ok(n @ 1..) = client.reader().read(&mut chunk) {
                plain.extend_from_slice(&chunk[..n]);
            }
        }
        let mut want: Vec<u8> = (0..50u8).flat_map(|i| [i; 64]).collect();
        want.extend(&big);
        assert!(
            plain == want,
            "in order, whole: {} of {} bytes",
            plain.len(),
            want.len()
        );
        assert_eq!(pipe.finish(), (0, 0), "every buffer back");
    }

    #[test]
    fn a_record_in_pieces_is_held_until_whole_and_the_buffer_goes_back() {
        let (mut client, mut pipe) = pair();
        client.writer().write_all(b"hello over tls").unwrap();
        let mut record = Vec::new();
        client.write_tls(&mut record).unwrap();
        let (head, tail) = record.split_at_mut(7);
        assert_eq!(pipe.receive(head), Some(&b""[..]), "nothing whole yet");
        assert_eq!(pipe.receive(tail), Some(&b"hello over tls"[..]));
        // A record that does not decrypt fails the connection; after it nothing more is read.
        assert_eq!(pipe.receive(&mut [0x17, 3, 3, 0, 2, 0, 0]), None);
        assert_eq!(pipe.receive(&mut record.clone()), Some(&b""[..]));
        assert_eq!(pipe.finish(), (0, 0));
    }

    #[test]
    fn what_an_idle_tls_connection_holds_beside_its_entry() {
        // The rustls connection (its keys and protocol state; rustls and aws-lc allocate about
        // 1 KB more), two empty buffer slots and a flags byte, boxed; 8 bytes in the table.
        assert_eq!(size_of::<UnbufferedServerConnection>(), 1088);
        assert_eq!(size_of::<TlsConn>(), 1112);
        assert_eq!(size_of::<Option<Box<TlsConn>>>(), 8);
    }
}
