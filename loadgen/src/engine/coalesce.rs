//! Receive coalescing (`--coalesce PERIOD`), as a network card's interrupt moderation does it:
//! while traffic flows, the loop polls its sockets at most once per period, without blocking,
//! and sleeps in between; once polls come back empty it blocks again until something arrives.
//!
//! On loopback the sender's `send` runs the receiving socket's path inline, and a receiver
//! blocked in `epoll_wait` is woken from inside that `send`, on the sender's CPU time. A loop
//! that sleeps on a timer instead is not waiting on the sockets, so the sender only queues the
//! data: each delivery stops paying for a cross-core wake-up, as it would not over a real
//! network, at the price of up to one period of added latency.

/// Empty polls in a row after which the loop blocks instead (a quiet period ends coalescing).
const EMPTY_POLLS_BEFORE_BLOCKING: u32 = 10;

/// How the next poll should go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextPoll {
    /// Sleep until this instant ([`crate::clock`] nanoseconds) first.
    pub sleep_until_ns: Option<u64>,
    /// Then poll with this timeout.
    pub timeout_ns: u64,
}

/// The coalescing state of one loop.
#[derive(Debug)]
pub struct Coalesce {
    period_ns: u64,
    empty_polls: u32,
    last_poll_ns: u64,
}

impl Coalesce {
    /// Coalescing over `period_ns` (0: off, every poll blocks until something happens).
    pub fn new(period_ns: u64) -> Coalesce {
        Coalesce {
            period_ns,
            empty_polls: EMPTY_POLLS_BEFORE_BLOCKING,
            last_poll_ns: 0,
        }
    }

    /// Plans the poll at `now_ns`, when the loop has nothing else to do for `wait_ns`.
    pub fn next(&self, now_ns: u64, wait_ns: u64) -> NextPoll {
        if self.period_ns == 0 || self.empty_polls >= EMPTY_POLLS_BEFORE_BLOCKING {
            return NextPoll {
                sleep_until_ns: None,
                timeout_ns: wait_ns,
            };
        }
        let until = (self.last_poll_ns + self.period_ns).min(now_ns + wait_ns);
        NextPoll {
            sleep_until_ns: (until > now_ns).then_some(until),
            timeout_ns: 0,
        }
    }

    /// Records a poll made at `at_ns` and whether it found anything.
    pub fn polled(&mut self, at_ns: u64, found: bool) {
        self.last_poll_ns = at_ns;
        self.empty_polls = if found {
            0
        } else {
            self.empty_polls.saturating_add(1)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: u64 = 50_000_000;

    #[test]
    fn off_always_blocks() {
        let mut c = Coalesce::new(0);
        c.polled(1_000, true);
        assert_eq!(
            c.next(2_000, WAIT),
            NextPoll {
                sleep_until_ns: None,
                timeout_ns: WAIT
            }
        );
    }

    #[test]
    fn traffic_is_polled_once_per_period_without_blocking() {
        let mut c = Coalesce::new(100_000);
        // Idle at first: block until something arrives.
        assert_eq!(c.next(0, WAIT).timeout_ns, WAIT);
        c.polled(1_000, true);
        // Something did: the next poll waits out the period, then does not block.
        assert_eq!(
            c.next(5_000, WAIT),
            NextPoll {
                sleep_until_ns: Some(101_000),
                timeout_ns: 0
            }
        );
        // A loop that took longer than a period polls at once.
        assert_eq!(c.next(200_000, WAIT).sleep_until_ns, None);
        // Never sleeps past what the loop has due.
        assert_eq!(c.next(5_000, 20_000).sleep_until_ns, Some(25_000));
    }

    #[test]
    fn a_quiet_spell_goes_back_to_blocking() {
        let mut c = Coalesce::new(100_000);
        c.polled(0, true);
        for i in 1..EMPTY_POLLS_BEFORE_BLOCKING as u64 {
            c.polled(i * 100_000, false);
            assert_eq!(c.next(i * 100_000, WAIT).timeout_ns, 0, "poll {i}");
        }
        c.polled(1_000_000, false);
        assert_eq!(c.next(1_000_000, WAIT).timeout_ns, WAIT);
        c.polled(1_500_000, true);
        assert_eq!(c.next(1_500_000, WAIT).timeout_ns, 0);
    }
}
