//! The unsent bytes of one connection, in order: owned bytes (copied when a write fell short)
//! and shared frames (one framed message referenced by many connections, never copied).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;

/// Most slices handed to one `writev`.
pub const MAX_IOVECS: usize = 64;

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
#[derive(Debug, Default)]
pub struct TxQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already sent.
    sent: usize,
    /// Bytes still to send.
    len: usize,
}

impl TxQueue {
    /// Bytes still to send.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a copy of `bytes` (to the last owned chunk when there is one).
    pub fn push_copy(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        if let Some(Chunk::Owned(last)) = self.chunks.back_mut() {
            last.extend_from_slice(bytes);
        } else {
            self.chunks.push_back(Chunk::Owned(bytes.to_vec()));
        }
    }

    /// Appends a shared frame, from byte `from` on.
    pub fn push_shared(&mut self, frame: Arc<[u8]>, from: usize) {
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
    pub fn slices<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_IOVECS]) -> usize {
        let mut n = 0;
        for (i, chunk) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
            let bytes = chunk.bytes();
            out[i] = IoSlice::new(if i == 0 { &bytes[self.sent..] } else { bytes });
            n += 1;
        }
        n
    }

    /// Drops `written` bytes from the front.
    pub fn consume(&mut self, mut written: usize) {
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

    /// Empties the queue, keeping its allocation for reuse.
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.sent = 0;
        self.len = 0;
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
