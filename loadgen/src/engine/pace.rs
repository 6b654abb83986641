//! Timing of dials: a pacer that releases steps at a fixed rate from a start instant (each step
//! keeps its intended time, however late it is taken), and the retry backoff.

/// Releases `limit` steps, step `k` due at `start + k / rate`.
#[derive(Clone, Debug)]
pub struct Pacer {
    start_ns: u64,
    interval_ns: f64,
    issued: u64,
    limit: u64,
}

impl Pacer {
    /// A pacer at `rate` steps per second (0 or less: all due at once).
    pub fn new(start_ns: u64, rate: f64, limit: u64) -> Pacer {
        Pacer {
            start_ns,
            interval_ns: if rate > 0.0 { 1e9 / rate } else { 0.0 },
            issued: 0,
            limit,
        }
    }

    /// When the next step is due, if any is left.
    pub fn next_due(&self) -> Option<u64> {
        (self.issued < self.limit).then(|| self.due_at(self.issued))
    }

    /// Takes the next step if it is due by `now_ns`: its index and intended time.
    pub fn take(&mut self, now_ns: u64) -> Option<(u64, u64)> {
        let due = self.next_due()?;
        if due > now_ns {
            return None;
        }
        self.issued += 1;
        Some((self.issued - 1, due))
    }

    fn due_at(&self, step: u64) -> u64 {
        self.start_ns + (step as f64 * self.interval_ns) as u64
    }
}

/// Longest delay between retries.
const MAX_BACKOFF_NS: u64 = 5_000_000_000;

/// The delay before retry `attempt` (1-based): `base · 2^(attempt-1)`, capped, with up to 50 %
/// jitter from `noise` so retries of a burst do not arrive together.
pub fn backoff_ns(base_ns: u64, attempt: u32, noise: u64) -> u64 {
    let delay = base_ns
        .saturating_mul(1 << (attempt.saturating_sub(1)).min(20))
        .min(MAX_BACKOFF_NS);
    delay / 2 + noise % (delay / 2 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_releases_steps_on_time() {
        let mut p = Pacer::new(1_000, 1_000.0, 3);
        assert_eq!(p.take(999), None);
        assert_eq!(p.take(1_000), Some((0, 1_000)));
        assert_eq!(p.next_due(), Some(1_001_000));
        // Late: both due steps come out with their intended times.
        assert_eq!(p.take(5_000_000), Some((1, 1_001_000)));
        assert_eq!(p.take(5_000_000), Some((2, 2_001_000)));
        assert_eq!(p.take(u64::MAX), None);
        let mut unpaced = Pacer::new(7, 0.0, 2);
        assert_eq!(unpaced.take(7), Some((0, 7)));
        assert_eq!(unpaced.take(7), Some((1, 7)));
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        for noise in [0, 12_345, u64::MAX] {
            let first = backoff_ns(100, 1, noise);
            assert!((50..=100).contains(&first), "{first}");
            let third = backoff_ns(100, 3, noise);
            assert!((200..=400).contains(&third), "{third}");
            assert!(backoff_ns(1_000_000_000, 30, noise) <= MAX_BACKOFF_NS);
        }
    }
}
