//! Per-reactor pools of the two things a connection may borrow: a receive buffer (while it holds
//! a partial frame or message) and a write queue (while it has unsent bytes). Both go back as
//! soon as they drain, which is what lets an idle connection own neither.

use super::txqueue::TxQueue;

/// Something a pool can hand out again after it has been used.
pub trait Recycle: Default {
    /// Empties it, and gives back memory beyond `max_capacity` bytes.
    fn recycle(&mut self, max_capacity: usize);
}

impl Recycle for Vec<u8> {
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
#[derive(Debug)]
pub struct Pool<T> {
    free: Vec<Box<T>>,
    /// Most items kept for reuse; the rest are freed.
    max_free: usize,
    /// Largest capacity kept; an item that grew past it (a large message) is trimmed back.
    max_capacity: usize,
    /// Items lent out and not yet given back (a leak shows up here).
    lent: usize,
}

impl<T: Recycle> Pool<T> {
    /// A pool keeping up to `max_free` items of up to `max_capacity` bytes each.
    pub fn new(max_free: usize, max_capacity: usize) -> Pool<T> {
        Pool {
            free: Vec::new(),
            max_free,
            max_capacity,
            lent: 0,
        }
    }

    /// An empty item, reused when one is free.
    pub fn take(&mut self) -> Box<T> {
        self.lent += 1;
        self.free.pop().unwrap_or_default()
    }

    /// Returns an item to the pool (its contents are discarded).
    pub fn give(&mut self, mut item: Box<T>) {
        self.lent -= 1;
        if self.free.len() < self.max_free {
            item.recycle(self.max_capacity);
            self.free.push(item);
        }
    }

    /// Items lent out and not yet given back.
    pub fn lent(&self) -> usize {
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
    fn the_free_list_is_bounded() {
        let mut pool: Pool<Vec<u8>> = Pool::new(2, 1024);
        let taken: Vec<_> = (0..5).map(|_| pool.take()).collect();
        assert_eq!(pool.lent(), 5);
        taken.into_iter().for_each(|b| pool.give(b));
        assert_eq!(pool.free.len(), 2);
        assert_eq!(pool.lent(), 0);
    }
}
