//! Latency histograms that a reactor records into without locks and that metrics read from
//! other threads: power-of-two buckets from 1 µs to about 8.4 s, a sum, snapshots to merge and
//! subtract.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Finite histogram buckets: upper bounds of 2^0 to 2^(BUCKETS-1) µs (1 µs to about 8.4 s).
pub const BUCKETS: usize = 24;

/// A latency histogram that many threads record into without locks (one relaxed add per
/// bucket and one for the sum). Give each reactor its own, to keep its cache line local, and
/// [`Histogram::merge`] the snapshots when rendering.
#[derive(Debug)]
pub struct LatencyHistogram {
    /// Per bucket, not cumulative; the last one counts everything above the finite bounds.
    counts: [AtomicU64; BUCKETS + 1],
    sum_micros: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> LatencyHistogram {
        LatencyHistogram::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram.
    pub const fn new() -> LatencyHistogram {
        LatencyHistogram {
            counts: [const { AtomicU64::new(0) }; BUCKETS + 1],
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Counts one latency.
    pub fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // The smallest bucket whose bound 2^i µs is at least `micros`.
        let bucket = match micros {
            0 | 1 => 0,
            _ => (u64::BITS - (micros - 1).leading_zeros()) as usize,
        };
        if let Some(count) = self.counts.get(bucket.min(BUCKETS)) {
            count.fetch_add(1, Relaxed);
        }
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> Histogram {
        Histogram {
            counts: std::array::from_fn(|i| self.counts[i].load(Relaxed)),
            sum_micros: self.sum_micros.load(Relaxed),
        }
    }
}

/// A histogram's counts at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    counts: [u64; BUCKETS + 1],
    sum_micros: u64,
}

impl Histogram {
    /// Adds another histogram's counts (another reactor's).
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine = mine.wrapping_add(theirs);
        }
        self.sum_micros = self.sum_micros.wrapping_add(other.sum_micros);
    }

    /// What was counted after `earlier` (a snapshot of the same histograms taken before).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            counts: std::array::from_fn(|i| self.counts[i].wrapping_sub(earlier.counts[i])),
            sum_micros: self.sum_micros.wrapping_sub(earlier.sum_micros),
        }
    }

    /// Latencies counted. Summed from the buckets, so it always agrees with them even though a
    /// snapshot is not atomic across buckets.
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0, |sum, &n| sum.wrapping_add(n))
    }

    /// All latencies added up, in microseconds.
    pub fn sum_micros(&self) -> u64 {
        self.sum_micros
    }

    /// Counts per bucket, not cumulative: bucket `i < BUCKETS` holds latencies above 2^(i-1) µs
    /// and at most 2^i µs; the last, everything above 2^(BUCKETS-1) µs.
    pub fn counts(&self) -> &[u64; BUCKETS + 1] {
        &self.counts
    }

    /// The upper bound in µs of the bucket holding quantile `q` (0 to 1): the true value is at
    /// most this and more than half of it. `None` when empty or above the finite buckets.
    pub fn quantile_micros(&self, q: f64) -> Option<u64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        // The rank of the quantile, 1-based; the cast saturates for out-of-range `q`.
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        let bucket = self.counts.iter().position(|&n| {
            seen = seen.saturating_add(n);
            seen >= rank
        })?;
        (bucket < BUCKETS).then(|| 1u64 << bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(us: u64) -> Duration {
        Duration::from_micros(us)
    }

    #[test]
    fn buckets_are_powers_of_two_microseconds() {
        let histogram = LatencyHistogram::new();
        for us in [0, 1, 2, 3, 4, 5, 1 << 23, (1 << 23) + 1] {
            histogram.record(micros(us));
        }
        histogram.record(Duration::from_secs(3600));
        histogram.record(Duration::MAX);
        let snapshot = histogram.snapshot();
        let mut expected = [0u64; BUCKETS + 1];
        expected[0] = 2; // 0, 1
        expected[1] = 1; // 2
        expected[2] = 2; // 3, 4
        expected[3] = 1; // 5
        expected[23] = 1; // 2^23
        expected[24] = 3; // above
        assert_eq!(snapshot.counts, expected);
        assert_eq!(snapshot.count(), 10);
    }

    #[test]
    fn quantiles_and_merge() {
        let a = LatencyHistogram::new();
        let b = LatencyHistogram::default();
        assert_eq!(a.snapshot().quantile_micros(0.5), None);
        for _ in 0..90 {
            a.record(micros(100)); // bucket bound 128
        }
        for _ in 0..9 {
            b.record(micros(1000)); // 1024
        }
        b.record(Duration::from_secs(100)); // above the finite buckets
        let mut merged = a.snapshot();
        merged.merge(&b.snapshot());
        assert_eq!(merged.count(), 100);
        assert_eq!(merged.sum_micros(), 90 * 100 + 9 * 1000 + 100_000_000);
        assert_eq!(merged.quantile_micros(0.0), Some(128));
        assert_eq!(merged.quantile_micros(0.5), Some(128));
        assert_eq!(merged.quantile_micros(0.9), Some(128));
        assert_eq!(merged.quantile_micros(0.95), Some(1024));
        assert_eq!(merged.quantile_micros(0.999), None);
        assert_eq!(merged.quantile_micros(f64::NAN), Some(128));
        let later = {
            b.record(micros(3));
            let mut later = a.snapshot();
            later.merge(&b.snapshot());
            later
        };
        let last = later.since(&merged);
        assert_eq!((last.count(), last.sum_micros()), (1, 3));
        assert_eq!(last.quantile_micros(0.5), Some(4));
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let histogram = LatencyHistogram::new();
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let histogram = &histogram;
                scope.spawn(move || {
                    for i in 0..10_000 {
                        histogram.record(micros(i * t));
                    }
                });
            }
        });
        assert_eq!(histogram.snapshot().count(), 40_000);
    }
}
