//! The buffers a loop lends its connections only while they need them: a receive buffer while a
//! frame or the upgrade answer is incomplete, a backlog while the socket has not taken everything
//! written. A connection holds the entry's index ([`LentId`], 4 bytes) and gives it back once both
//! are empty, so an idle connection owns no buffer. Returned entries keep their capacity for the
//! next borrower (trimmed to [`KEEP_BYTES`]), up to [`KEEP_FREE`] of them.

use std::num::NonZeroU32;

/// Capacity a returned buffer keeps for its next borrower; a larger one is shrunk to it.
const KEEP_BYTES: usize = 64 << 10;
/// Returned entries that keep their buffers' capacity; beyond, a returned entry frees them.
const KEEP_FREE: usize = 1024;

/// A connection's entry in its loop's [`Lender`] (index + 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LentId(NonZeroU32);

/// The buffers of one entry.
#[derive(Debug, Default)]
pub struct Lent {
    /// Partial handshake answers and frames.
    pub rx: Vec<u8>,
    /// Bytes the socket did not take yet.
    pub backlog: Vec<u8>,
}

impl Lent {
    /// Whether the borrower needs nothing of it any more.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty() && self.backlog.is_empty()
    }
}

/// The entries of one loop.
#[derive(Debug, Default)]
pub struct Lender {
    entries: Vec<Lent>,
    free: Vec<LentId>,
}

impl Lender {
    /// Lends an entry (both buffers empty).
    pub fn lend(&mut self) -> LentId {
        if let Some(id) = self.free.pop() {
            return id;
        }
        self.entries.push(Lent::default());
        let index = u32::try_from(self.entries.len()).expect("fewer than 2^32 connections a loop");
        LentId(NonZeroU32::new(index).expect("at least one entry"))
    }

    /// The entry `id`.
    pub fn get(&mut self, id: LentId) -> &mut Lent {
        &mut self.entries[id.0.get() as usize - 1]
    }

    /// Takes entry `id` back, emptying it.
    pub fn give_back(&mut self, id: LentId) {
        let keep = self.free.len() < KEEP_FREE;
        let lent = self.get(id);
        for buffer in [&mut lent.rx, &mut lent.backlog] {
            buffer.clear();
            if !keep {
                *buffer = Vec::new();
            } else if buffer.capacity() > KEEP_BYTES {
                buffer.shrink_to(KEEP_BYTES);
            }
        }
        self.free.push(id);
    }

    /// Entries lent out now.
    #[cfg(test)]
    pub fn lent(&self) -> usize {
        self.entries.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_reused_with_their_capacity_trimmed() {
        let mut lender = Lender::default();
        let a = lender.lend();
        let b = lender.lend();
        assert_ne!(a, b);
        lender.get(a).rx.extend_from_slice(&[1; 100]);
        lender.get(b).backlog.resize(KEEP_BYTES * 4, 0);
        assert_eq!(lender.lent(), 2);
        lender.give_back(b);
        assert_eq!(lender.lent(), 1);
        let again = lender.lend();
        assert_eq!(again, b, "the returned entry is lent first");
        let lent = lender.get(again);
        assert!(lent.is_empty());
        assert!(lent.backlog.capacity() >= KEEP_BYTES && lent.backlog.capacity() < 2 * KEEP_BYTES);
        assert!(!lender.get(a).is_empty());
    }

    #[test]
    fn past_the_kept_entries_returned_buffers_are_freed() {
        let mut lender = Lender::default();
        let ids: Vec<LentId> = (0..KEEP_FREE + 1).map(|_| lender.lend()).collect();
        for &id in &ids {
            lender.get(id).rx.reserve(1000);
            lender.give_back(id);
        }
        assert_eq!(lender.lent(), 0);
        assert!(lender.get(ids[0]).rx.capacity() >= 1000);
        assert_eq!(lender.get(ids[KEEP_FREE]).rx.capacity(), 0);
    }
}
