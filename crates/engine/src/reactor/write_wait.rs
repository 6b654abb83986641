//! The write wait (`Stats::write_wait`): how long a fanout's frame waited in its connection's
//! queue until the kernel took the write carrying it, timed per batch of writes, not per write.

use std::time::Instant;

use crate::histogram::LatencyHistogram;

/// The frames whose writes were made since the last batch closed: when each was queued.
pub(super) struct WriteWaits {
    queued: Vec<Instant>,
}

impl WriteWaits {
    /// Room for `batch` writes, allocated once: the most a turn's end makes between two
    /// closes.
    pub(super) fn new(batch: usize) -> WriteWaits {
        WriteWaits {
            queued: Vec::with_capacity(batch),
        }
    }

    /// A write (or a send) is made for a frame queued at `since`.
    pub(super) fn made(&mut self, since: Instant) {
        self.queued.push(since);
    }

    /// Whether writes wait for their batch to close.
    pub(super) fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// The kernel took the batch's writes, in order, between `start` and `end`: the k-th of n
    /// at `start + k (end - start) / n`, one addition per write.
    pub(super) fn taken(&mut self, start: Instant, end: Instant, histogram: &LatencyHistogram) {
        let n = self.queued.len();
        if n == 0 {
            return;
        }
        let step = end.saturating_duration_since(start) / n as u32;
        let mut at = start;
        for since in self.queued.drain(..) {
            histogram.record(at.saturating_duration_since(since));
            at += step;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_batch_is_spread_over_the_time_the_kernel_took_it() {
        let histogram = LatencyHistogram::new();
        let mut waits = WriteWaits::new(4);
        let queued = Instant::now();
        for _ in 0..4 {
            waits.made(queued);
        }
        let start = queued + Duration::from_millis(10);
        waits.taken(start, start + Duration::from_millis(8), &histogram);
        assert!(waits.is_empty());
        // Waits of 10, 12, 14 and 16 ms.
        let recorded = histogram.snapshot();
        assert_eq!(recorded.count(), 4);
        assert_eq!(recorded.sum_micros(), 10_000 + 12_000 + 14_000 + 16_000);
    }

    #[test]
    fn an_empty_batch_records_nothing_and_a_frame_queued_later_waits_zero() {
        let histogram = LatencyHistogram::new();
        let mut waits = WriteWaits::new(1);
        let now = Instant::now();
        waits.taken(now, now, &histogram);
        assert_eq!(histogram.snapshot().count(), 0);
        waits.made(now + Duration::from_secs(1));
        waits.taken(now, now, &histogram);
        let recorded = histogram.snapshot();
        assert_eq!((recorded.count(), recorded.sum_micros()), (1, 0));
    }
}
