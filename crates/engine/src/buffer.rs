//! Per-reactor pools of the two things a connection may borrow: a receive buffer (while it holds
//! a partial frame or message) and a write queue (while it has unsent bytes). Both go back as
//! soon as they drain, which is what lets an idle connection own neither.

use super::txqueue::TxQueue;

/// Something a pool can hand out again after it has been used.
pub(crate) trait Recycle: Default {
    /// Empties it, and gives back memory beyond `max_capacity` bytes.
    fn recycle(&mut self, max_capacity: usize);
}

impl Recycle for Vec<u8> {
    #[inline]
    fn recycle(&mut self, max_capacity: usize) {
        self.clear();
        if self.capacity() > max_capacity {
            self.shrink_to(max_capacity);
        }
    }
}

impl Recycle for TxQueue {
    fn recycle(&mut self, _max_capacity: usize) {
        self.clear();
    }
}

/// Free items of one reactor, boxed so a connection pays one pointer for what it borrows.
/// Not thread-safe: each reactor owns its pools.
///
/// The pool keeps as many free items as the recent peak of lending needs, so that a fanout
/// which lends one item to each of thousands of subscribers, ten times a second, allocates
/// nothing once warm; [`Pool::trim`], called about once a second, frees what the last period
/// did not need beyond `max_free` (items lent at a trim count for the period they were lent
/// in, so a peak gone is freed one or two trims later).
#[derive(Debug)]
pub(crate) struct Pool<T> {
    free: Vec<Box<T>>,
    /// Free items always kept, whatever the recent peak.
    max_free: usize,
    /// Largest capacity kept; an item that grew past it (a large message) is trimmed back.
    max_capacity: usize,
    /// Items lent out and not yet given back (a leak shows up here).
    lent: usize,
    /// Most items lent at once since the last trim.
    peak: usize,
    /// Items, free and lent, that the last trim kept. Those lent at the trim (a fanout's sends
    /// in flight) belong to the period before it: without this they would be freed on their
    /// way back, and the next fanout would allocate them again, up to a queue per subscriber
    /// at every trim.
    kept: usize,
}

impl<T: Recycle> Pool<T> {
    /// A pool keeping at least `max_free` free items of up to `max_capacity` bytes each, and
    /// up to the recent peak of lending.
    pub(crate) fn new(max_free: usize, max_capacity: usize) -> Pool<T> {
        Pool {
            free: Vec::new(),
            max_free,
            max_capacity,
            lent: 0,
            peak: 0,
            kept: 0,
        }
    }

    /// An empty item, reused when one is free.
    pub(crate) fn take(&mut self) -> Box<T> {
        self.lent += 1;
        self.peak = self.peak.max(self.lent);
        self.free.pop().unwrap_or_default()
    }

    /// Returns an item to the pool (its contents are discarded).
    pub(crate) fn give(&mut self, mut item: Box<T>) {
        self.lent -= 1;
        let wanted = self.peak.max(self.kept) - self.lent;
        if self.free.len() < self.max_free.max(wanted) {
            item.recycle(self.max_capacity);
            self.free.push(item);
        }
    }

    /// Frees the free items that neither `max_free` nor the peak since the last trim calls
    /// for, and starts a new period.
    pub(crate) fn trim(&mut self) {
        let keep = self.max_free.max(self.peak - self.lent);
        self.free.truncate(keep);
        self.free.shrink_to(keep);
        self.peak = self.lent;
        self.kept = self.lent + self.free.len();
    }

    /// Items lent out and not yet given back.
    pub(crate) fn lent(&self) -> usize {
        self.lent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_cleared_and_trimmed() {
        let mut pool: Pool<Vec<u8>> = Pool::new(2, 1024);
        let mut a = pool.take();
        a.extend_from_slice(&[1; 4096]);
        pool.give(a);
        assert_eq!(pool.lent(), 0);
        let b = pool.take();
        assert!(b.is_empty());
        assert!(
            b.capacity() <= 1024 && b.capacity() > 0,
            "kept, trimmed: {}",
            b.capacity()
        );
        pool.give(b);
    }

    #[test]
    fn a_recurring_peak_is_served_without_allocating() {
        let mut pool: Pool<Vec<u8>> = Pool::new(2, 1024);
        let taken: Vec<_> = (0..5).map(|_| pool.take()).collect();
        assert_eq!(pool.lent(), 5);
        let addresses: Vec<*const Vec<u8>> = taken.iter().map(|b| &**b as *const _).collect();
        taken.into_iter().for_each(|b| pool.give(b));
        assert_eq!(pool.free.len(), 5, "the peak is kept");
        assert_eq!(pool.lent(), 0);
        // The same peak again takes the same items back.
        let again: Vec<_> = (0..5).map(|_| pool.take()).collect();
        for item in &again {
            assert!(addresses.contains(&(&**item as *const _)));
        }
        again.into_iter().for_each(|b| pool.give(b));
        // A trim keeps what the period needed; the next one, after a quiet period, frees down
        // to `max_free`.
        pool.trim();
        assert_eq!(pool.free.len(), 5);
        pool.trim();
        assert_eq!(pool.free.len(), 2);
    }

    #[test]
    fn items_lent_at_a_trim_come_back_to_the_free_list() {
        let mut pool: Pool<Vec<u8>> = Pool::new(2, 1024);
        let mut taken: Vec<_> = (0..5).map(|_| pool.take()).collect();
        let addresses: Vec<*const Vec<u8>> = taken.iter().map(|b| &**b as *const _).collect();
        taken.drain(..2).for_each(|b| pool.give(b));
        // A trim while three are still lent (sends in flight): they are part of the peak.
        pool.trim();
        taken.into_iter().for_each(|b| pool.give(b));
        assert_eq!(pool.free.len(), 5, "kept on their way back");
        let again: Vec<_> = (0..5).map(|_| pool.take()).collect();
        for item in &again {
            assert!(addresses.contains(&(&**item as *const _)));
        }
        again.into_iter().for_each(|b| pool.give(b));
        // With nothing lent since, the pool still comes down to `max_free`.
        pool.trim();
        pool.trim();
        assert_eq!(pool.free.len(), 2);
    }

    #[test]
    fn the_free_list_never_outgrows_the_peak() {
        let mut pool: Pool<Vec<u8>> = Pool::new(2, 1024);
        let mut held = Vec::new();
        for round in 0..100 {
            held.push(pool.take());
            if round % 3 == 0 {
                pool.give(held.pop().expect("one"));
            }
            assert!(pool.free.len() + pool.lent() <= pool.peak.max(2));
        }
        held.into_iter().for_each(|b| pool.give(b));
        pool.trim();
        pool.trim();
        assert_eq!(pool.free.len(), 2);
    }
}
