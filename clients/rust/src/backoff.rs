//! Reconnection delays: exponential backoff with full jitter (`docs/clients.md`, section 5), and
//! the small random source it draws from.

use std::time::Duration;

/// The backoff policy: the `n`-th consecutive failure waits a uniform random time in
/// `[0, cap(n)]`, `cap(n) = min(max, min × factor^(n−1))`.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// `cap(1)` (default 1 s).
    pub min: Duration,
    /// The largest cap (default 30 s).
    pub max: Duration,
    /// Growth of the cap per failure (default 2).
    pub factor: f64,
    /// A connection open this long is stable: the next failure counts as the first again
    /// (default 10 s).
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(30),
            factor: 2.0,
            reset_after: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The cap of the `n`-th consecutive failure (`n` ≥ 1).
    pub fn cap(&self, n: u32) -> Duration {
        let exponent = n.saturating_sub(1).min(1024) as i32;
        let grown = self.min.as_secs_f64() * self.factor.max(1.0).powi(exponent);
        if grown.is_finite() && grown < self.max.as_secs_f64() {
            Duration::from_secs_f64(grown)
        } else {
            self.max
        }
    }

    /// A fresh draw for the `n`-th failure: uniform in `[0, cap(n)]`.
    pub(crate) fn delay(&self, n: u32, rng: &mut Rng) -> Duration {
        let cap = self.cap(n).as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(rng.below_inclusive(cap))
    }
}

/// Close codes that mean the client or its traffic caused the end (a protocol error, a message
/// too big, a slow consumer, a rate limit): the failure count grows even after a stable
/// connection, so reconnecting at once does not repeat it.
pub(crate) fn client_caused(code: u16) -> bool {
    matches!(code, 1002 | 1003 | 1007 | 1008 | 1009 | 1013)
}

/// SplitMix64: jitter and nonces only need to differ between clients, not to be secret.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator with this seed (tests pass a fixed one).
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A generator seeded from the process's hash keys (random per process) and a counter, so
    /// that clients started in the same instant still draw differently.
    pub(crate) fn from_entropy() -> Rng {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        Rng(hasher.finish())
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, bound]` (multiply-shift: the bias is below 2^-64 per draw).
    fn below_inclusive(&mut self, bound: u64) -> u64 {
        let span = bound as u128 + 1;
        ((self.next_u64() as u128 * span) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_grow_by_the_factor_up_to_max() {
        let backoff = Backoff::default();
        let secs: Vec<f64> = (1..=8).map(|n| backoff.cap(n).as_secs_f64()).collect();
        assert_eq!(secs, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]);
        assert_eq!(backoff.cap(u32::MAX), backoff.max);
        let flat = Backoff {
            factor: 0.5,
            ..Backoff::default()
        };
        assert_eq!(
            flat.cap(5),
            flat.min,
            "a factor below 1 does not shrink the cap"
        );
    }

    #[test]
    fn delays_stay_within_the_cap_and_cover_it() {
        let backoff = Backoff::default();
        let mut rng = Rng::new(7);
        for n in 1..=7 {
            let cap = backoff.cap(n);
            let draws: Vec<Duration> = (0..2000).map(|_| backoff.delay(n, &mut rng)).collect();
            assert!(draws.iter().all(|d| *d <= cap), "n = {n}");
            // Full jitter: both the bottom and the top tenth of [0, cap] are drawn.
            assert!(draws.iter().any(|d| *d < cap / 10), "n = {n}");
            assert!(draws.iter().any(|d| *d > cap - cap / 10), "n = {n}");
            let mean = draws.iter().sum::<Duration>() / draws.len() as u32;
            assert!(
                mean > cap * 4 / 10 && mean < cap * 6 / 10,
                "n = {n}: {mean:?}"
            );
        }
    }

    #[test]
    fn generators_from_entropy_differ() {
        let (mut a, mut b) = (Rng::from_entropy(), Rng::from_entropy());
        assert_ne!(a.next_u64(), b.next_u64());
    }

    #[test]
    fn client_caused_codes() {
        for code in [1002, 1003, 1007, 1008, 1009, 1013] {
            assert!(client_caused(code));
        }
        for code in [1000, 1001, 1006, 1011, 4000, 4001] {
            assert!(!client_caused(code));
        }
    }
}
