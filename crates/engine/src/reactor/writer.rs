//! A connection's writer: where the protocol core's bytes (pongs, close frames, HTTP answers)
//! and the handler's messages go, in each I/O model.
//!
//! - Readiness ([`Corked`]): small frames are copied into the reactor's cork buffer and written
//!   with one syscall when the connection's turn ends; a frame larger than the cork is written at
//!   once; what the socket does not take goes to the connection's queue, whose rest a `Writable`
//!   event writes.
//! - Completion ([`Queued`]): every byte goes to the connection's queue (owned bytes copied once,
//!   shared frames by reference), and the turn's end starts one send per connection.
//!
//! - TLS ([`TlsWriter`] in either model): every byte goes to the connection's queue as
//!   plaintext (shared frames by reference), and the turn's end encrypts and sends it
//!   (`reactor/tls.rs`): a frame is still framed once, and encrypted once per connection.
//!
//! Queues are borrowed from the reactor's pool until they drain. Seams for what comes next:
//! - Every byte counts against the connection's write cap ([`Sink::queued`] here, `Conn::queued`
//!   in `Local::send_shared`): the core stops reading a connection over its cap, between two
//!   frames even within one read, until its queue drains (`lifecycle.rs`).
//! - Coalescing everything queued for a subscriber into one write per turn is the `DIRTY` list
//!   that [`Written::Queued`] feeds: a readiness writer that queues instead of writing at once
//!   joins it unchanged.

use std::io::{self, IoSlice};
use std::marker::PhantomData;
use std::sync::Arc;

use clarion_protocol::Transmit;

use crate::buffer::Pool;
use crate::sys::readiness::Readiness;
use crate::txqueue::TxQueue;

/// Bytes gathered in the cork buffer before writing; larger payloads are written directly.
const CORK_SIZE: usize = 16 << 10;

/// Where a handler's outgoing frames go: the connection's writer.
pub(crate) trait Sink: Transmit {
    /// Queues a frame shared with other connections (framed once, never copied per connection
    /// unless a short write leaves part of it).
    fn transmit_shared(&mut self, frame: &Arc<[u8]>);

    /// Bytes given to the writer that the socket has not taken yet (corked or queued): what
    /// counts against the connection's write cap.
    fn queued(&self) -> usize;
}

/// How a connection's turn of writing ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Written {
    /// Nothing waits on the turn's end: all was written, or the rest waits for the socket.
    Done,
    /// Bytes wait in the queue for the turn's end to move them on (send them once).
    Queued,
    /// The socket failed (reset, broken pipe): the connection must be dropped.
    Failed,
}

/// One connection's writer for one turn.
pub(crate) trait ConnWriter: Sink {
    /// Ends the turn's writing (writes what was corked) and says what is left to do.
    fn finish(self) -> Written;
}

/// How one I/O model writes: the state its connections' writers share.
pub(crate) trait Writing<S> {
    /// A connection's writer.
    type Writer<'a>: ConnWriter
    where
        Self: 'a,
        S: 'a;

    /// The writer of the connection with `socket` and write queue `tx`.
    fn writer<'a>(
        &'a mut self,
        socket: &'a mut S,
        tx: &'a mut Option<Box<TxQueue>>,
        tx_pool: &'a mut Pool<TxQueue>,
    ) -> Self::Writer<'a>;
}

/// Readiness: the cork buffer the connections' writers share (one per reactor).
pub(crate) struct Corked<B> {
    cork: Vec<u8>,
    /// Writes that carried bytes, since start.
    pub(super) writes: u64,
    backend: PhantomData<fn() -> B>,
}

impl<B> Corked<B> {
    pub(crate) fn new() -> Self {
        Corked {
            cork: Vec::with_capacity(CORK_SIZE),
            writes: 0,
            backend: PhantomData,
        }
    }
}

impl<B: Readiness> Writing<B::Socket> for Corked<B> {
    type Writer<'a>
        = CorkedWriter<'a, B>
    where
        Self: 'a,
        B::Socket: 'a;

    fn writer<'a>(
        &'a mut self,
        socket: &'a mut B::Socket,
        tx: &'a mut Option<Box<TxQueue>>,
        tx_pool: &'a mut Pool<TxQueue>,
    ) -> CorkedWriter<'a, B> {
        CorkedWriter {
            socket,
            tx,
            tx_pool,
            cork: &mut self.cork,
            writes: &mut self.writes,
            failed: false,
        }
    }
}

/// A readiness connection's writer: corks small frames, writes the rest now, queues what the
/// socket does not take.
pub(crate) struct CorkedWriter<'a, B: Readiness> {
    socket: &'a mut B::Socket,
    tx: &'a mut Option<Box<TxQueue>>,
    tx_pool: &'a mut Pool<TxQueue>,
    cork: &'a mut Vec<u8>,
    writes: &'a mut u64,
    failed: bool,
}

impl<B: Readiness> CorkedWriter<'_, B> {
    /// Writes `bufs` now; returns how much the socket took.
    fn write_now(&mut self, bufs: &[IoSlice<'_>]) -> usize {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut written = 0;
        while written < total && !self.failed {
            // Rebuild the slices past what was written (rare: only after a short write).
            let mut skip = written;
            let mut rest = [IoSlice::new(&[]); 3];
            let mut n = 0;
            for b in bufs {
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                rest[n] = IoSlice::new(&b[skip..]);
                skip = 0;
                n += 1;
            }
            match B::send(self.socket, &rest[..n]) {
                Ok(0) => break,
                Ok(k) => {
                    written += k;
                    *self.writes += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.failed = true,
            }
        }
        written
    }

    fn queue(&mut self) -> &mut TxQueue {
        self.tx.get_or_insert_with(|| self.tx_pool.take())
    }

    /// Writes the cork buffer; the rest goes to the queue.
    fn uncork(&mut self) {
        if self.cork.is_empty() {
            return;
        }
        let cork = std::mem::take(self.cork);
        let written = if self.tx.is_none() {
            self.write_now(&[IoSlice::new(&cork)])
        } else {
            0
        };
        if written < cork.len() && !self.failed {
            self.queue().push_copy(&cork[written..]);
        }
        *self.cork = cork;
        self.cork.clear();
    }
}

impl<B: Readiness> Transmit for CorkedWriter<'_, B> {
    fn transmit(&mut self, header: &[u8], payload: &[u8]) {
        if self.failed {
            return;
        }
        if let Some(queue) = self.tx.as_deref_mut() {
            // Bytes are already waiting for the socket: queue, in order.
            queue.push_frame(header, payload);
            return;
        }
        let len = header.len() + payload.len();
        if self.cork.len() + len <= CORK_SIZE {
            self.cork.extend_from_slice(header);
            self.cork.extend_from_slice(payload);
            return;
        }
        self.uncork();
        if self.tx.is_some() {
            return self.transmit(header, payload);
        }
        let written = self.write_now(&[IoSlice::new(header), IoSlice::new(payload)]);
        if written < len && !self.failed {
            let queue = self.queue();
            if written < header.len() {
                queue.push_frame(&header[written..], payload);
            } else {
                queue.push_copy(&payload[written - header.len()..]);
            }
        }
    }
}

impl<B: Readiness> Sink for CorkedWriter<'_, B> {
    fn transmit_shared(&mut self, frame: &Arc<[u8]>) {
        if self.failed {
            return;
        }
        if self.tx.is_none() && self.cork.len() + frame.len() <= CORK_SIZE {
            self.cork.extend_from_slice(frame);
            return;
        }
        self.uncork();
        let written = if self.tx.is_none() {
            self.write_now(&[IoSlice::new(frame)])
        } else {
            0
        };
        if written < frame.len() && !self.failed {
            self.queue().push_shared(frame.clone(), written);
        }
    }

    fn queued(&self) -> usize {
        self.cork.len() + self.tx.as_deref().map_or(0, TxQueue::len)
    }
}

impl<B: Readiness> ConnWriter for CorkedWriter<'_, B> {
    fn finish(mut self) -> Written {
        self.uncork();
        if self.failed {
            Written::Failed
        } else {
            // What the socket did not take waits for its `Writable` event.
            Written::Done
        }
    }
}

/// A connection's writer: its model's, or a TLS connection's (which queues plaintext for the
/// turn's end to encrypt, whatever the model).
pub(crate) enum EitherWriter<'a, W> {
    /// A plaintext connection: the model's writer.
    Plain(W),
    /// A TLS connection.
    Tls(TlsWriter<'a>),
}

/// A TLS connection's writer: the completion model's, queuing plaintext in order.
pub(crate) type TlsWriter<'a> = QueuedWriter<'a>;

/// The writer of the connection with `socket` and queue `tx`: `writing`'s, or for a TLS
/// connection the queuing one.
pub(crate) fn writer_for<'a, S, W: Writing<S>>(
    writing: &'a mut W,
    tls: bool,
    socket: &'a mut S,
    tx: &'a mut Option<Box<TxQueue>>,
    tx_pool: &'a mut Pool<TxQueue>,
) -> EitherWriter<'a, W::Writer<'a>> {
    if tls {
        EitherWriter::Tls(QueuedWriter {
            tx,
            tx_pool,
            queued: false,
        })
    } else {
        EitherWriter::Plain(writing.writer(socket, tx, tx_pool))
    }
}

impl<W: ConnWriter> Transmit for EitherWriter<'_, W> {
    fn transmit(&mut self, header: &[u8], payload: &[u8]) {
        match self {
            EitherWriter::Plain(w) => w.transmit(header, payload),
            EitherWriter::Tls(w) => w.transmit(header, payload),
        }
    }
}

impl<W: ConnWriter> Sink for EitherWriter<'_, W> {
    fn transmit_shared(&mut self, frame: &Arc<[u8]>) {
        match self {
            EitherWriter::Plain(w) => w.transmit_shared(frame),
            EitherWriter::Tls(w) => w.transmit_shared(frame),
        }
    }

    fn queued(&self) -> usize {
        match self {
            EitherWriter::Plain(w) => w.queued(),
            EitherWriter::Tls(w) => w.queued(),
        }
    }
}

impl<W: ConnWriter> ConnWriter for EitherWriter<'_, W> {
    fn finish(self) -> Written {
        match self {
            EitherWriter::Plain(w) => w.finish(),
            EitherWriter::Tls(w) => w.finish(),
        }
    }
}

/// Completion: every byte goes to the connection's queue, sent at the turn's end. The writers
/// share nothing.
pub(crate) struct Queued;

impl<S> Writing<S> for Queued {
    type Writer<'a>
        = QueuedWriter<'a>
    where
        S: 'a;

    fn writer<'a>(
        &'a mut self,
        _socket: &'a mut S,
        tx: &'a mut Option<Box<TxQueue>>,
        tx_pool: &'a mut Pool<TxQueue>,
    ) -> QueuedWriter<'a> {
        QueuedWriter {
            tx,
            tx_pool,
            queued: false,
        }
    }
}

/// A completion connection's writer: queues, in order.
pub(crate) struct QueuedWriter<'a> {
    tx: &'a mut Option<Box<TxQueue>>,
    tx_pool: &'a mut Pool<TxQueue>,
    queued: bool,
}

impl QueuedWriter<'_> {
    fn queue(&mut self) -> &mut TxQueue {
        self.queued = true;
        self.tx.get_or_insert_with(|| self.tx_pool.take())
    }
}

impl Transmit for QueuedWriter<'_> {
    fn transmit(&mut self, header: &[u8], payload: &[u8]) {
        self.queue().push_frame(header, payload);
    }
}

impl Sink for QueuedWriter<'_> {
    fn transmit_shared(&mut self, frame: &Arc<[u8]>) {
        self.queue().push_shared(frame.clone(), 0);
    }

    fn queued(&self) -> usize {
        self.tx.as_deref().map_or(0, TxQueue::len)
    }
}

impl ConnWriter for QueuedWriter<'_> {
    fn finish(self) -> Written {
        if self.queued {
            Written::Queued
        } else {
            Written::Done
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    use super::*;
    use crate::sys::epoll::Epoll;

    /// A connected pair: the reactor's non-blocking side and the peer's.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        ours.set_nonblocking(true).unwrap();
        let (peer, _) = listener.accept().unwrap();
        (ours, peer)
    }

    fn read_exactly(peer: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        peer.read_exact(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn a_corked_writer_writes_small_frames_once_at_the_end_in_order() {
        let (mut ours, mut peer) = pair();
        let (mut corked, mut pool) = (Corked::<Epoll>::new(), Pool::new(1, 1024));
        let mut tx = None;
        let mut out = corked.writer(&mut ours, &mut tx, &mut pool);
        out.transmit(b"ab", b"cd");
        out.transmit_shared(&Arc::from(&b"ef"[..]));
        out.transmit(b"g", b"");
        // Nothing has left yet: the cork holds it until the turn's end.
        assert_eq!(out.cork.as_slice(), b"abcdefg");
        assert_eq!(out.finish(), Written::Done);
        assert!(tx.is_none(), "the socket took it all");
        assert_eq!(read_exactly(&mut peer, 7), b"abcdefg");
    }

    #[test]
    fn a_corked_writer_queues_what_the_socket_does_not_take_and_keeps_order() {
        let (mut ours, mut peer) = pair();
        let (mut corked, mut pool) = (Corked::<Epoll>::new(), Pool::new(1, 1024));
        let mut tx = None;
        let big: Vec<u8> = (0..32 << 20).map(|i| (i % 251) as u8).collect();
        let mut out = corked.writer(&mut ours, &mut tx, &mut pool);
        out.transmit(b"head", &big);
        // Behind a queue, even a small frame waits its turn rather than being corked.
        out.transmit(b"tail", b"");
        assert_eq!(out.finish(), Written::Done, "the rest waits for `Writable`");
        let queue = tx
            .as_deref_mut()
            .expect("32 MiB does not fit a loopback socket");
        let queued = queue.len();
        assert!(queued > 0 && queued < big.len() + 8);
        let reader = std::thread::spawn(move || read_exactly(&mut peer, 4 + big.len() + 4));
        while !queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); crate::txqueue::MAX_IOVECS];
            let n = queue.slices(&mut slices);
            match Epoll::send(&mut ours, &slices[..n]) {
                Ok(written) => queue.consume(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        let received = reader.join().unwrap();
        let big: Vec<u8> = (0..32 << 20).map(|i| (i % 251) as u8).collect();
        assert_eq!(&received[..4], b"head");
        assert!(
            received[4..4 + big.len()] == big[..],
            "the payload, in order"
        );
        assert_eq!(&received[4 + big.len()..], b"tail");
    }

    #[test]
    fn a_queued_writer_queues_everything_for_the_turn_s_end_and_shares_frames() {
        let (mut pool, mut tx, mut queued, mut socket) = (Pool::new(1, 1024), None, Queued, ());
        let frame: Arc<[u8]> = Arc::from(&b"shared"[..]);
        let mut out = queued.writer(&mut socket, &mut tx, &mut pool);
        out.transmit(b"ab", b"cd");
        out.transmit_shared(&frame);
        assert_eq!(out.finish(), Written::Queued);
        assert_eq!(tx.as_deref().map(TxQueue::len), Some(10));
        assert_eq!(Arc::strong_count(&frame), 2, "referenced, not copied");
        let mut idle = None;
        let out = queued.writer(&mut socket, &mut idle, &mut pool);
        assert_eq!(
            out.finish(),
            Written::Done,
            "nothing written, nothing to send"
        );
        assert!(idle.is_none(), "no queue is lent for nothing");
    }
}
