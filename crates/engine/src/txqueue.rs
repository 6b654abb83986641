//! The unsent bytes of one connection, in order: owned bytes (copied when a write fell short
//! or, on a completion backend, when a frame was queued for submission) and shared frames (one
//! framed message referenced by many connections, never copied).
//!
//! A completion backend (io_uring) sends from the queue asynchronously: [`TxQueue::start_send`]
//! pins the chunks the kernel reads from and fills the queue's own message header, so both stay
//! put until [`TxQueue::finish_send`].

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;

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
    /// The asynchronous send's message header and slices (boxed queues keep their address).
    in_flight: Option<Box<InFlight>>,
}

struct InFlight {
    header: libc::msghdr,
    /// As many slices as the largest send of this queue took (at most [`MAX_IOVECS`]): a
    /// stream's head and first events, or one frame, take one (16 bytes), where a full array
    /// took 1 KiB in every queue lent at once (a burst of opens lends one per connection).
    slices: Vec<libc::iovec>,
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
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        let last_is_free = self.chunks.len() > self.pinned;
        if let Some(Chunk::Owned(last)) = self.chunks.back_mut()
            && last_is_free
        {
            last.extend_from_slice(bytes);
        } else {
            self.chunks.push_back(Chunk::Owned(bytes.to_vec()));
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
        self.chunks.push_back(Chunk::Shared(frame));
    }

    /// The unsent bytes as slices for `writev`, in order.
    pub(crate) fn slices<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_IOVECS]) -> usize {
        let mut n = 0;
        for (i, chunk) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
            let bytes = chunk.bytes();
            out[i] = IoSlice::new(if i == 0 { &bytes[self.sent..] } else { bytes });
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

    /// Empties the queue, keeping its allocations for reuse. Not while a send is in flight.
    pub(crate) fn clear(&mut self) {
        debug_assert!(!self.is_sending());
        self.chunks.clear();
        self.sent = 0;
        self.len = 0;
    }

    /// Whether an asynchronous send is reading from the queue.
    pub(crate) fn is_sending(&self) -> bool {
        self.pinned > 0
    }

    /// Prepares an asynchronous `sendmsg` of the queue's front and pins what it reads. The
    /// header stays valid, and the bytes it points to stay put, until [`TxQueue::finish_send`];
    /// bytes pushed meanwhile go to new chunks. The queue must be non-empty and not sending.
    pub(crate) fn start_send(&mut self) -> *const libc::msghdr {
        debug_assert!(!self.is_empty() && !self.is_sending());
        let in_flight = self.in_flight.get_or_insert_with(|| {
            Box::new(InFlight {
                // SAFETY: msghdr is a plain C struct; all zeroes is a valid (empty) value.
                header: unsafe { std::mem::zeroed() },
                slices: Vec::new(),
            })
        });
        in_flight.slices.clear();
        in_flight
            .slices
            .reserve_exact(self.chunks.len().min(MAX_IOVECS));
        let sent = self.sent;
        in_flight
            .slices
            .extend(
                self.chunks
                    .iter()
                    .take(MAX_IOVECS)
                    .enumerate()
                    .map(|(i, chunk)| {
                        let bytes = chunk.bytes();
                        let bytes = if i == 0 { &bytes[sent..] } else { bytes };
                        libc::iovec {
                            iov_base: bytes.as_ptr() as *mut libc::c_void,
                            iov_len: bytes.len(),
                        }
                    }),
            );
        // The slices are not touched again until `finish_send`: their address holds.
        let count = in_flight.slices.len();
        in_flight.header.msg_iov = in_flight.slices.as_mut_ptr();
        in_flight.header.msg_iovlen = count;
        self.pinned = count;
        &in_flight.header
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
    fn bytes_pushed_during_a_send_do_not_move_the_pinned_ones() {
        let mut q = TxQueue::default();
        q.push_copy(b"first");
        let header = q.start_send();
        // SAFETY: the header and its single slice were just filled by start_send.
        let slice = unsafe { *(*header).msg_iov };
        let (ptr, len) = (slice.iov_base as *const u8, slice.iov_len);
        q.push_copy(&[b'x'; 100_000]);
        // SAFETY: pinned bytes stay valid and unmoved until finish_send.
        assert_eq!(unsafe { std::slice::from_raw_parts(ptr, len) }, b"first");
        q.finish_send(3);
        assert!(!q.is_sending());
        assert_eq!(q.len(), 2 + 100_000);
        assert_eq!(&drain(&mut q, 4096)[..3], b"stx");
    }

    /// Slices and bytes of the send `start_send` just prepared.
    fn prepared(header: *const libc::msghdr) -> (usize, usize) {
        // SAFETY: start_send just filled the header and its slices, which stay put until
        // finish_send.
        let slices = unsafe { std::slice::from_raw_parts((*header).msg_iov, (*header).msg_iovlen) };
        (slices.len(), slices.iter().map(|s| s.iov_len).sum())
    }

    #[test]
    fn one_send_carries_as_many_queued_frames_as_one_writev() {
        let mut q = TxQueue::default();
        let frame: Arc<[u8]> = Arc::from(&b"0123456789"[..]);
        for _ in 0..MAX_IOVECS + 6 {
            q.push_shared(frame.clone(), 0);
        }
        let header = q.start_send();
        assert_eq!(prepared(header), (MAX_IOVECS, MAX_IOVECS * 10));
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        assert_eq!(
            q.slices(&mut slices),
            MAX_IOVECS,
            "the same as a writev takes"
        );
        q.finish_send(MAX_IOVECS * 10);
        let header = q.start_send();
        assert_eq!(prepared(header), (6, 60), "the rest in the next send");
        q.finish_send(60);
        assert!(q.is_empty());
    }

    #[test]
    fn a_queue_holds_slices_for_its_largest_send_only() {
        let mut q = TxQueue::default();
        q.push_copy(b"HTTP/1.1 200 OK\r\n\r\n");
        q.push_copy(b"event: @session\n\n");
        let header = q.start_send();
        assert_eq!(prepared(header).0, 1, "copied bytes share one chunk");
        q.finish_send(q.len());
        let in_flight = q.in_flight.as_ref().expect("a send was prepared");
        // 16 bytes, not 64 slices (1 KiB) for every queue a burst of opens lends at once.
        assert_eq!(in_flight.slices.capacity(), 1);
        assert!(size_of::<InFlight>() <= 96, "{}", size_of::<InFlight>());
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
