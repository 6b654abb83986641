//! Sets of reactors as one `u64`: which reactors have local subscribers of a topic, or wait for
//! it, so a publish posts to exactly those and a set costs 8 bytes per topic.

/// Most reactors a hub can address: a topic's reactor set is one `u64`.
pub const MAX_REACTORS: usize = 64;

/// A set of reactor indexes (below [`MAX_REACTORS`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reactors(u64);

impl Reactors {
    /// Whether reactor `index` is in the set.
    pub fn contains(self, index: usize) -> bool {
        self.0 & bit(index) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The reactor indexes, ascending.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            let index = bits.trailing_zeros() as usize;
            bits &= bits.wrapping_sub(1);
            (index < MAX_REACTORS).then_some(index)
        })
    }

    /// The set whose members are the bits set in `bits` (bit `i` for reactor `i`).
    pub(crate) fn from_bits(bits: u64) -> Reactors {
        Reactors(bits)
    }
}

/// The bit of reactor `index`; none for an index out of range.
pub(crate) fn bit(index: usize) -> u64 {
    u32::try_from(index)
        .ok()
        .and_then(|i| 1u64.checked_shl(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterates_its_members_in_order_and_ignores_indexes_out_of_range() {
        let set = Reactors::from_bits(bit(0) | bit(5) | bit(63) | bit(64) | bit(usize::MAX));
        assert_eq!(set.iter().collect::<Vec<_>>(), [0, 5, 63]);
        assert!(set.contains(5) && !set.contains(4) && !set.contains(64));
        assert!(Reactors::default().is_empty() && !set.is_empty());
        assert_eq!(Reactors::default().iter().count(), 0);
    }
}
