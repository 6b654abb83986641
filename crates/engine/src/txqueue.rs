//! The unsent bytes of one connection, in order: owned bytes (copied when a write fell short
//! or, on a completion backend, when a frame was queued for submission) and shared frames (one
//! framed message referenced by many connections, never copied).
//!
//! A completion backend (io_uring) sends from the queue asynchronously: [`TxQueue::start_send`]
//! pins the chunks the kernel reads from until [`TxQueue::finish_send`]. One chunk (a handshake
//! answer, a subscriber's one message of the turn) goes as a plain send and needs nothing more;
//! several small ones are copied into one buffer and go as a plain send too, and larger ones go
//! through the queue's own message header and slices. Both live in [`Gather`], made for the first
//! send of several chunks and sized to it, so a queue that never has two (most of them) carries
//! none.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Instant;

/// Most slices handed to one `writev` or one asynchronous send: 64 queued messages of a
/// subscriber behind on fanout go in one write (16 made an io_uring subscriber more than 16
/// behind wait a completion per 16, so it fell further behind under overload).
pub(crate) const MAX_IOVECS: usize = 64;

#[derive(Debug)]
enum Chunk {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(s) => s,
        }
    }
}

/// Chunks and gather slices a queue keeps when it goes back to its pool (at most 32 x 24 bytes
/// of chunks and 32 x 16 of slices, plus the copy buffer, at most [`FLATTEN_UP_TO`] rounded up
/// by `Vec` growth): a subscriber up to 32 messages behind reuses them, while
/// one that fell 64 behind does not leave every pooled queue the size of its backlog. Under
/// overload a send carries many messages (17 per write for 5,000 subscribers at 400 msgs/s on
/// one core); a queue that shrank to 8 on every return to the pool grew its chunks and rebuilt
/// its gather on every send, about 5% of the saturated core in `malloc` and `free` (perf).
const KEPT_SLICES: usize = 32;

/// Most bytes of several chunks that one asynchronous send copies into one buffer and sends as
/// a plain send, instead of gathering them. The copy (frames just written, in cache: tens of
/// nanoseconds per KiB) costs less than what a gathered send adds in the kernel: io_uring's
/// `SENDMSG` copies in a message header and its slices and goes through `sendmsg`'s generic
/// path; the send path's own kernel functions (io_uring's and the socket layer's, not TCP's)
/// took 17% of a saturated fanout's core with it and 10% with plain sends (perf, 5,000
/// subscribers at 100 msgs/s, 3 messages per send). 1 KiB is 15 fanout messages of 64 bytes;
/// the buffer is lent with the queue, as the header is. (epoll's `sendmsg` is cheaper, a direct
/// system call: the same copy saved it 0.9% of the core in the kernel and cost about as much in
/// user time, so it was not kept there.)
const FLATTEN_UP_TO: usize = 1024;

/// A connection's write queue. It exists only while there is something to send.
#[derive(Default)]
pub(crate) struct TxQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already sent.
    sent: usize,
    /// Bytes still to send.
    len: usize,
    /// Front chunks an asynchronous send is reading: their bytes must not move.
    pinned: usize,
    /// The message header of a gathered asynchronous send; none until the queue gathers.
    gather: Option<Box<Gather>>,
    /// When the oldest shared frame not yet handed to a write was queued (`Stats::write_wait`).
    shared_since: Option<Instant>,
}

/// What a send of several chunks reads: their bytes copied into `flat` (at most
/// [`FLATTEN_UP_TO`]), or a message header and slices; boxed, so all stay put while the kernel
/// reads them. Each grows to the largest send the queue made that way (slices: at most
/// [`MAX_IOVECS`], 16 bytes each), instead of always taking room for the most.
struct Gather {
    header: libc::msghdr,
    slices: Vec<libc::iovec>,
    flat: Vec<u8>,
}

/// The unsent bytes of `chunks`, chunk by chunk, when the first has `sent` bytes gone.
fn unsent(chunks: &VecDeque<Chunk>, sent: usize) -> impl Iterator<Item = &[u8]> {
    let mut skip = sent;
    chunks
        .iter()
        .map(move |chunk| &chunk.bytes()[std::mem::take(&mut skip)..])
}

/// What one asynchronous send reads, as [`TxQueue::start_send`] pinned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outgoing {
    /// One run of bytes (address and length): the front chunk's unsent bytes, or several small
    /// chunks' copied into the queue's buffer. A plain send, no header.
    One(*const u8, usize),
    /// Several chunks, through the queue's message header.
    Gathered(*const libc::msghdr),
}

impl std::fmt::Debug for TxQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxQueue")
            .field("len", &self.len)
            .field("chunks", &self.chunks.len())
            .field("sending", &(self.pinned > 0))
            .finish()
    }
}

impl TxQueue {
    /// Bytes still to send.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Nothing to send.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a copy of `bytes` (to the last owned chunk when there is one).
    pub(crate) fn push_copy(&mut self, bytes: &[u8]) {
        self.push_frame(bytes, &[]);
    }

    /// Appends a copy of a frame's `header` and `payload`, to the last owned chunk when there
    /// is one, else in a new chunk of exactly their size: one allocation, where a chunk of the
    /// header grown by the payload took a `malloc` and a `realloc` (7% of io_uring's user time
    /// per echoed message, measured with perf).
    pub(crate) fn push_frame(&mut self, header: &[u8], payload: &[u8]) {
        let len = header.len() + payload.len();
        if len == 0 {
            return;
        }
        self.len += len;
        let last_is_free = self.chunks.len() > self.pinned;
        if let Some(Chunk::Owned(last)) = self.chunks.back_mut()
            && last_is_free
        {
            last.extend_from_slice(header);
            last.extend_from_slice(payload);
        } else {
            let mut chunk = Vec::with_capacity(len);
            chunk.extend_from_slice(header);
            chunk.extend_from_slice(payload);
            self.push_chunk(Chunk::Owned(chunk));
        }
    }

    /// Appends a shared frame, from byte `from` on.
    pub(crate) fn push_shared(&mut self, frame: Arc<[u8]>, from: usize) {
        if from >= frame.len() {
            return;
        }
        if from > 0 {
            self.push_copy(&frame[from..]);
            return;
        }
        self.len += frame.len();
        self.push_chunk(Chunk::Shared(frame));
    }

    /// Appends a chunk. A queue's first chunk takes room for one (24 bytes), not the four
    /// `VecDeque` starts with (96): most queues never hold more (a handshake answer, a
    /// subscriber's one message of the turn, a heartbeat), and on a completion backend every
    /// send in flight holds its queue, and the pool keeps as many as the last second's peak (a
    /// sweep sends heartbeats to one stream in 15 at once at the default 15 s: 1,000 of 15,000).
    fn push_chunk(&mut self, chunk: Chunk) {
        if self.chunks.capacity() == 0 {
            self.chunks.reserve_exact(1);
        }
        self.chunks.push_back(chunk);
    }

    /// The unsent bytes when they are all in one chunk.
    pub(crate) fn single(&self) -> Option<&[u8]> {
        match self.chunks.as_slices() {
            ([one], []) => Some(&one.bytes()[self.sent..]),
            _ => None,
        }
    }

    /// The unsent bytes, chunk by chunk, in order.
    pub(crate) fn runs(&self) -> impl Iterator<Item = &[u8]> {
        unsent(&self.chunks, self.sent)
    }

    /// The unsent bytes as slices for `writev`, in order.
    pub(crate) fn slices<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_IOVECS]) -> usize {
        let mut n = 0;
        for (slot, run) in out.iter_mut().zip(self.runs()) {
            *slot = IoSlice::new(run);
            n += 1;
        }
        n
    }

    /// Drops `written` bytes from the front.
    pub(crate) fn consume(&mut self, mut written: usize) {
        self.len -= written;
        while let Some(front) = self.chunks.front() {
            let left = front.bytes().len() - self.sent;
            if written < left {
                self.sent += written;
                return;
            }
            written -= left;
            self.sent = 0;
            self.chunks.pop_front();
        }
    }

    /// Empties the queue, keeping small allocations for reuse (see [`KEPT_SLICES`]). Not while
    /// a send is in flight.
    pub(crate) fn clear(&mut self) {
        debug_assert!(!self.is_sending());
        self.chunks.clear();
        if self.chunks.capacity() > KEPT_SLICES {
            // Only a queue that held more than KEPT_SLICES chunks can have gathered more slices
            // (the header is not read here: it is likely out of cache by now).
            self.chunks.shrink_to(KEPT_SLICES);
            self.gather = None;
        }
        self.sent = 0;
        self.len = 0;
        self.shared_since = None;
    }

    /// Notes that a shared frame was queued at `at`, unless an older one still waits.
    pub(crate) fn stamp_shared(&mut self, at: Instant) {
        self.shared_since.get_or_insert(at);
    }

    /// When the oldest shared frame waiting for a write was queued, forgotten from now on: the
    /// caller is writing it.
    pub(crate) fn take_shared_since(&mut self) -> Option<Instant> {
        self.shared_since.take()
    }

    /// Whether an asynchronous send is reading from the queue.
    pub(crate) fn is_sending(&self) -> bool {
        self.pinned > 0
    }

    /// Prepares an asynchronous send of the queue's front (up to [`MAX_IOVECS`] chunks) and pins
    /// what it reads. The bytes, a copy of them, or a gathered send's header and slices, stay
    /// valid and put until [`TxQueue::finish_send`]; bytes pushed meanwhile go to new chunks.
    /// The queue must be non-empty and not sending.
    pub(crate) fn start_send(&mut self) -> Outgoing {
        debug_assert!(!self.is_empty() && !self.is_sending());
        let count = self.chunks.len().min(MAX_IOVECS);
        self.pinned = count;
        if count == 1 {
            let front = &self.chunks[0].bytes()[self.sent..];
            return Outgoing::One(front.as_ptr(), front.len());
        }
        let gather = self.gather.get_or_insert_with(|| {
            Box::new(Gather {
                // SAFETY: msghdr is a plain C struct; all zeroes is a valid (empty) value.
                header: unsafe { std::mem::zeroed() },
                slices: Vec::new(),
                flat: Vec::new(),
            })
        });
        let pinned = || unsent(&self.chunks, self.sent).take(count);
        // All of the queue (the common case) or its first MAX_IOVECS chunks.
        let bytes = if count == self.chunks.len() {
            self.len
        } else {
            pinned().map(<[u8]>::len).sum()
        };
        if bytes <= FLATTEN_UP_TO {
            gather.flat.clear();
            // One growth for the whole run rather than one per chunk copied in.
            gather.flat.reserve(bytes);
            pinned().for_each(|run| gather.flat.extend_from_slice(run));
            return Outgoing::One(gather.flat.as_ptr(), bytes);
        }
        gather.slices.clear();
        gather.slices.extend(pinned().map(|run| libc::iovec {
            iov_base: run.as_ptr() as *mut libc::c_void,
            iov_len: run.len(),
        }));
        gather.header.msg_iov = gather.slices.as_mut_ptr();
        gather.header.msg_iovlen = count;
        Outgoing::Gathered(&gather.header)
    }

    /// The asynchronous send finished having written `written` bytes: drops them and unpins.
    pub(crate) fn finish_send(&mut self, written: usize) {
        self.pinned = 0;
        self.consume(written.min(self.len));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut TxQueue, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while !q.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = q.slices(&mut slices);
            let flat: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
            let take = step.min(flat.len());
            out.extend_from_slice(&flat[..take]);
            q.consume(take);
        }
        out
    }

    #[test]
    fn the_oldest_waiting_shared_frame_is_remembered_until_taken_or_cleared() {
        let t0 = Instant::now();
        let (t1, t2) = (
            t0 + std::time::Duration::from_millis(1),
            t0 + std::time::Duration::from_millis(2),
        );
        let mut q = TxQueue::default();
        assert_eq!(q.take_shared_since(), None);
        q.stamp_shared(t1);
        q.stamp_shared(t2);
        assert_eq!(q.take_shared_since(), Some(t1), "the oldest");
        assert_eq!(q.take_shared_since(), None, "taken once");
        q.stamp_shared(t2);
        q.push_copy(b"x");
        q.clear();
        assert_eq!(
            q.take_shared_since(),
            None,
            "a cleared queue waits for nothing"
        );
    }

    #[test]
    fn a_frame_is_one_chunk_of_its_exact_size_or_joins_the_last_free_one() {
        let mut q = TxQueue::default();
        q.push_frame(&[0x81, 5], b"hello");
        assert_eq!(q.chunks.len(), 1);
        let Some(Chunk::Owned(first)) = q.chunks.front() else {
            panic!("a copied frame is an owned chunk");
        };
        assert_eq!(
            (first.as_slice(), first.capacity()),
            (&b"\x81\x05hello"[..], 7)
        );
        q.push_frame(&[0x81, 2], b"hi");
        assert_eq!(q.chunks.len(), 1, "appended to the free last chunk");
        let _pinned = q.start_send();
        q.push_frame(&[0x82, 0], b"");
        assert_eq!(q.chunks.len(), 2, "a pinned chunk is not appended to");
        assert_eq!(q.len(), 13);
        q.push_frame(b"", b"");
        assert_eq!((q.chunks.len(), q.len()), (2, 13));
    }

    #[test]
    fn bytes_pushed_during_a_send_do_not_move_the_pinned_ones() {
        let mut q = TxQueue::default();
        q.push_copy(b"first");
        let Outgoing::One(ptr, len) = q.start_send() else {
            panic!("one chunk goes as a plain send");
        };
        q.push_copy(&[b'x'; 100_000]);
        // SAFETY: pinned bytes stay valid and unmoved until finish_send.
        assert_eq!(unsafe { std::slice::from_raw_parts(ptr, len) }, b"first");
        q.finish_send(3);
        assert!(!q.is_sending());
        assert_eq!(q.len(), 2 + 100_000);
        assert_eq!(&drain(&mut q, 4096)[..3], b"stx");
    }

    /// Slices and bytes of the send `start_send` just prepared.
    fn prepared(outgoing: Outgoing) -> (usize, usize) {
        let header = match outgoing {
            Outgoing::One(_, len) => return (1, len),
            Outgoing::Gathered(header) => header,
        };
        // SAFETY: start_send just filled the header and its slices, which stay put until
        // finish_send.
        let slices = unsafe { std::slice::from_raw_parts((*header).msg_iov, (*header).msg_iovlen) };
        (slices.len(), slices.iter().map(|s| s.iov_len).sum())
    }

    #[test]
    fn one_send_carries_as_many_queued_frames_as_one_writev() {
        let mut q = TxQueue::default();
        let frame: Arc<[u8]> = Arc::from(&[7; 100][..]);
        for _ in 0..MAX_IOVECS + 6 {
            q.push_shared(frame.clone(), 0);
        }
        assert_eq!(prepared(q.start_send()), (MAX_IOVECS, MAX_IOVECS * 100));
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        assert_eq!(
            q.slices(&mut slices),
            MAX_IOVECS,
            "the same as a writev takes"
        );
        q.finish_send(MAX_IOVECS * 100);
        assert_eq!(
            prepared(q.start_send()),
            (1, 600),
            "the rest in the next send, copied into one run"
        );
        q.finish_send(600);
        assert!(q.is_empty());
    }

    #[test]
    fn small_chunks_go_as_one_copied_run_that_stays_put_until_the_send_finishes() {
        let mut q = TxQueue::default();
        q.push_copy(b"xxab");
        q.consume(2);
        q.push_shared(Arc::from(&b"cde"[..]), 0);
        q.push_shared(Arc::from(&b"__fg"[..]), 2);
        let Outgoing::One(ptr, len) = q.start_send() else {
            panic!("three small chunks go as a plain send");
        };
        q.push_copy(&[b'h'; FLATTEN_UP_TO]);
        // SAFETY: what start_send pinned stays valid and unmoved until finish_send.
        assert_eq!(unsafe { std::slice::from_raw_parts(ptr, len) }, b"abcdefg");
        q.finish_send(4);
        assert_eq!(q.len(), 3 + FLATTEN_UP_TO, "a short send leaves the rest");
        assert_eq!(
            prepared(q.start_send()),
            (3, 3 + FLATTEN_UP_TO),
            "past FLATTEN_UP_TO bytes, chunks are gathered: e, fg, h..."
        );
        q.finish_send(3 + FLATTEN_UP_TO);
        assert!(q.is_empty());
    }

    #[test]
    fn only_a_send_of_several_chunks_takes_a_buffer_and_a_pooled_queue_keeps_a_small_one() {
        let frame: Arc<[u8]> = Arc::from(&b"0123456789"[..]);
        let mut q = TxQueue::default();
        q.push_copy(b"HTTP/1.1 101 Switching Protocols");
        q.push_copy(b" and a welcome frame behind it");
        assert!(matches!(q.start_send(), Outgoing::One(_, 62)));
        q.finish_send(62);
        assert!(q.gather.is_none(), "a one-chunk send needs no header");
        // Two small frames: copied into one run, a buffer sized to them.
        q.push_shared(frame.clone(), 0);
        q.push_shared(frame.clone(), 3);
        assert_eq!(prepared(q.start_send()), (1, 17));
        let gather = q.gather.as_ref().expect("a buffer for the copy");
        assert!(gather.slices.capacity() == 0 && gather.flat.capacity() < 64);
        q.finish_send(17);
        // Two large frames: gathered, with slices for two (not for 64).
        let large: Arc<[u8]> = Arc::from(&[1; FLATTEN_UP_TO][..]);
        q.push_shared(large.clone(), 0);
        q.push_shared(large.clone(), 0);
        assert_eq!(prepared(q.start_send()), (2, 2 * FLATTEN_UP_TO));
        let capacity = q.gather.as_ref().map(|gather| gather.slices.capacity());
        assert!(
            capacity.is_some_and(|c| (2..=KEPT_SLICES).contains(&c)),
            "{capacity:?}"
        );
        q.finish_send(2 * FLATTEN_UP_TO);
        q.clear();
        assert!(
            q.gather.is_some(),
            "a small header stays for the next gathered send"
        );
        // A subscriber 64 behind: its queue goes back to the pool without the large header.
        for _ in 0..MAX_IOVECS {
            q.push_shared(large.clone(), 0);
        }
        let behind = MAX_IOVECS * FLATTEN_UP_TO;
        assert_eq!(prepared(q.start_send()), (MAX_IOVECS, behind));
        q.finish_send(behind);
        q.clear();
        assert!(q.gather.is_none());
        assert!(
            q.chunks.capacity() <= KEPT_SLICES,
            "{}",
            q.chunks.capacity()
        );
    }

    #[test]
    fn a_queue_back_from_a_send_of_many_messages_keeps_its_chunks_and_gather() {
        // 20 fanout frames behind, as under overload: the next such send must not allocate.
        let frame: Arc<[u8]> = Arc::from(&[7; 40][..]);
        let mut q = TxQueue::default();
        for _ in 0..20 {
            q.push_shared(frame.clone(), 0);
        }
        assert_eq!(
            prepared(q.start_send()),
            (1, 20 * 40),
            "copied into one run"
        );
        q.finish_send(20 * 40);
        q.clear();
        let capacity = q.chunks.capacity();
        assert!((20..=KEPT_SLICES).contains(&capacity), "{capacity}");
        let flat = q.gather.as_ref().map(|gather| gather.flat.capacity());
        assert!(flat.is_some_and(|c| c >= 20 * 40), "{flat:?}");
    }

    #[test]
    fn a_queue_of_one_chunk_is_its_unsent_bytes_and_of_two_is_not_single() {
        let mut q = TxQueue::default();
        assert_eq!(q.single(), None, "empty");
        q.push_shared(Arc::from(&b"frame"[..]), 0);
        assert_eq!(q.single(), Some(&b"frame"[..]));
        assert_eq!(q.chunks.capacity(), 1, "room for the one chunk, not four");
        q.consume(2);
        assert_eq!(q.single(), Some(&b"ame"[..]), "what is left of it");
        q.push_copy(b"next");
        assert_eq!(q.single(), None, "two chunks go as slices");
        assert!(q.chunks.capacity() >= 2, "then it grows as a deque does");
        q.consume(3);
        assert_eq!(q.single(), Some(&b"next"[..]));
    }

    #[test]
    fn mixed_chunks_come_out_in_order_at_any_write_size() {
        for step in [1, 2, 3, 7, 100] {
            let mut q = TxQueue::default();
            q.push_copy(b"ab");
            q.push_copy(b"cd");
            q.push_shared(Arc::from(&b"efg"[..]), 0);
            q.push_shared(Arc::from(&b"xxhij"[..]), 2);
            q.push_copy(b"");
            assert_eq!(q.len(), 10);
            assert_eq!(drain(&mut q, step), b"abcdefghij");
        }
    }
}
