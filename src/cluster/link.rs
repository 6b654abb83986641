//! The state of a node's link to Redis, shared by the bridge threads and read by `/healthz` and
//! the metrics, and the reconnect back-off.

use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// First wait after a failed connection; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often a waiting bridge thread looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// The link's counters and flags.
#[derive(Debug, Default)]
pub(super) struct Link {
    pub publisher_up: AtomicBool,
    pub feed_up: AtomicBool,
    /// Publishes accepted but not yet taken by Redis, and the bytes they take.
    pub buffered: AtomicU64,
    pub buffered_bytes: AtomicU64,
    /// Publishes refused because the buffer was full, or that Redis refused.
    pub dropped: AtomicU64,
    /// Connections re-established after a loss.
    pub reconnects: AtomicU64,
    /// Publishes Redis took.
    pub published: AtomicU64,
    /// Messages that came from Redis (live or fetched to fill a gap).
    pub received: AtomicU64,
    /// Local publishes delivered locally with a provisional `seq` while the link was down.
    pub provisional: AtomicU64,
    /// Topics reset to Redis's numbering under their local subscribers.
    pub resets: AtomicU64,
    /// Batches whose `WAIT` found fewer replicas than `min_replicas_ack` (sent again).
    pub replica_timeouts: AtomicU64,
    /// The bridge threads are to exit.
    pub stop: AtomicBool,
    /// Set at shutdown: the publisher sends what waits until then before it exits.
    pub flush_until: OnceLock<Instant>,
    /// Publishes still waiting when the process stopped, not sent.
    pub lost_at_exit: AtomicU64,
}

/// A node's cluster numbers, for `/healthz` and the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Both connections (publishing, and receiving) are up.
    pub up: bool,
    /// Publishes waiting for Redis.
    pub buffered: u64,
    /// Their payload bytes.
    pub buffered_bytes: u64,
    /// Publishes dropped: refused for a full buffer, refused by Redis, or left unsent at
    /// shutdown.
    pub dropped: u64,
    /// Reconnections after a lost connection.
    pub reconnects: u64,
    /// Publishes Redis took from this node.
    pub published: u64,
    /// Messages received from Redis.
    pub received: u64,
    /// Local publishes delivered here with a provisional `seq` while Redis was down.
    pub provisional: u64,
    /// Topics renumbered by Redis under their local subscribers.
    pub resets: u64,
    /// Batches of publishes whose `WAIT` found fewer replicas than `min_replicas_ack`.
    pub replica_timeouts: u64,
    /// Redis Cluster redirections (`MOVED`, `ASK`) followed.
    pub redirects: u64,
}

impl Link {
    /// Both connections work: a publish will come back through the feed.
    pub fn up(&self) -> bool {
        self.publisher_up.load(Relaxed) && self.feed_up.load(Relaxed)
    }

    pub fn stats(&self) -> ClusterStats {
        ClusterStats {
            up: self.up(),
            buffered: self.buffered.load(Relaxed),
            buffered_bytes: self.buffered_bytes.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            published: self.published.load(Relaxed),
            received: self.received.load(Relaxed),
            provisional: self.provisional.load(Relaxed),
            resets: self.resets.load(Relaxed),
            replica_timeouts: self.replica_timeouts.load(Relaxed),
            redirects: 0,
        }
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }
}

/// Exponential back-off with jitter: each wait is a random point in the upper half of the
/// current step, so nodes that lost Redis together do not come back in lockstep.
#[derive(Debug)]
pub(super) struct Backoff {
    step: Duration,
    random: RandomState,
    draws: u64,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff {
            step: MIN_BACKOFF,
            random: RandomState::new(),
            draws: 0,
        }
    }

    /// A connection succeeded: the next failure starts from the shortest wait.
    pub fn reset(&mut self) {
        self.step = MIN_BACKOFF;
    }

    /// The next wait, and the step doubled for the one after.
    pub fn next(&mut self) -> Duration {
        self.draws += 1;
        let half = self.step / 2;
        let jitter = self.random.hash_one(self.draws) % (half.as_micros() as u64 + 1);
        let wait = half + Duration::from_micros(jitter);
        self.step = (self.step * 2).min(MAX_BACKOFF);
        wait
    }

    /// Sleeps the next wait, or less if `link` is stopping.
    pub fn wait(&mut self, link: &Link) {
        let mut left = self.next();
        while !left.is_zero() && !link.stopping() {
            let nap = left.min(STOP_CHECK);
            std::thread::sleep(nap);
            left -= nap;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_in_the_upper_half() {
        let mut backoff = Backoff::new();
        let mut step = MIN_BACKOFF;
        for _ in 0..10 {
            let wait = backoff.next();
            assert!(wait >= step / 2 && wait <= step, "{wait:?} for {step:?}");
            step = (step * 2).min(MAX_BACKOFF);
        }
        backoff.reset();
        assert!(backoff.next() <= MIN_BACKOFF);
    }

    #[test]
    fn up_needs_both_connections() {
        let link = Link::default();
        link.publisher_up.store(true, Relaxed);
        assert!(!link.stats().up);
        link.feed_up.store(true, Relaxed);
        assert!(link.stats().up);
    }
}
