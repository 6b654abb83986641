//! Epochs and resume points: a `seq` names a message only together with the epoch (the run of
//! the server, or of the cluster's Redis) that numbered it, so a subscriber resumes from an
//! [`Resume`] of both.

use std::hash::{BuildHasher, RandomState};
use std::time::{SystemTime, UNIX_EPOCH};

/// Identifies one run of the server: a `seq` means something only together with its epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Epoch(u64);

impl Epoch {
    /// An epoch with a chosen value (tests, or a value persisted elsewhere).
    pub const fn new(value: u64) -> Epoch {
        Epoch(value)
    }

    /// A fresh epoch for a server start: random, so a restart never reuses one.
    pub fn random() -> Epoch {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // `RandomState` is keyed from the OS's randomness; hashing the clock and pid with it
        // gives an unpredictable value without another dependency.
        Epoch(RandomState::new().hash_one((nanos, std::process::id())))
    }

    /// Parses the form [`Epoch`]'s `Display` writes: 1 to 16 hex digits.
    pub fn parse(text: &str) -> Option<Epoch> {
        // `from_str_radix` alone would also take a leading `+`.
        if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(Epoch)
    }

    /// The raw value.
    pub fn value(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A subscriber's claim of what it already has: every message up to `since` in `epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The last `seq` the subscriber received.
    pub since: u64,
    /// The epoch that `seq` belongs to; `None` (absent or unreadable) never recovers.
    pub epoch: Option<Epoch>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_round_trips_through_text() {
        let epoch = Epoch::new(0x0123_abcd);
        assert_eq!(epoch.to_string(), "000000000123abcd");
        assert_eq!(Epoch::parse(&epoch.to_string()), Some(epoch));
        assert_eq!(Epoch::parse("FF"), Some(Epoch::new(255)));
        for bad in ["", "+1", "-1", "0x1", "g", "11111111111111111"] {
            assert_eq!(Epoch::parse(bad), None, "{bad:?}");
        }
        assert_ne!(Epoch::random(), Epoch::random());
    }
}
