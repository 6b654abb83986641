//! Per (subscriber, publisher) delivery bookkeeping: which sequence numbers arrived, so each
//! delivery is classified as new, out of order or duplicate without storing the whole history.
//! A 64-message window behind the highest number seen is exact; older arrivals are counted as
//! out of order (they cannot be told from duplicates without unbounded memory).

/// What a delivery was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The next number or a later one (numbers skipped may still come).
    InOrder,
    /// A number below the highest seen, not seen before.
    OutOfOrder,
    /// A number already seen.
    Duplicate,
}

/// Numbers seen from one publisher (which one is the caller's to know: 16 bytes per
/// subscriber and publisher).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tracker {
    /// One more than the highest number seen (0: none yet).
    next: u64,
    /// Bit `i`: number `next - 1 - i` was seen.
    recent: u64,
}

impl Tracker {
    /// Classifies number `seq` and remembers it.
    pub fn arrive(&mut self, seq: u64) -> Arrival {
        if seq >= self.next {
            let shift = seq - self.next + 1;
            self.recent = if shift >= 64 { 0 } else { self.recent << shift };
            self.recent |= 1;
            self.next = seq + 1;
            return Arrival::InOrder;
        }
        let age = self.next - 1 - seq;
        if age >= 64 {
            return Arrival::OutOfOrder;
        }
        let bit = 1u64 << age;
        if self.recent & bit != 0 {
            Arrival::Duplicate
        } else {
            self.recent |= bit;
            Arrival::OutOfOrder
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Arrival::*;

    #[test]
    fn classifies_arrivals() {
        let mut t = Tracker::default();
        let got: Vec<Arrival> = [0, 1, 3, 2, 2, 3, 4, 100, 50, 99, 99]
            .iter()
            .map(|&s| t.arrive(s))
            .collect();
        assert_eq!(
            got,
            [
                InOrder, InOrder, InOrder, OutOfOrder, Duplicate, Duplicate, InOrder, InOrder,
                OutOfOrder, OutOfOrder, Duplicate
            ]
        );
    }

    #[test]
    fn first_message_may_be_late_in_the_sequence() {
        let mut t = Tracker::default();
        assert_eq!(t.arrive(5), InOrder);
        assert_eq!(t.arrive(0), OutOfOrder);
        assert_eq!(t.arrive(5), Duplicate);
    }
}
