//! One topic's ring of recent messages, and the rule that decides whether a resume is complete.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::message::Message;

/// What a resume (`since`) found.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// Every message after `since` is still in history: the subscriber has no gap.
    pub recovered: bool,
    /// The missed messages in `seq` order (the first of them, when a byte budget was given and
    /// they do not all fit it); empty when not recovered.
    pub messages: Vec<Arc<Message>>,
    /// `messages` reach the topic's current `seq`: nothing more to replay.
    pub complete: bool,
}

impl Default for Recovery {
    /// Not recovered: nothing to replay.
    fn default() -> Recovery {
        Recovery {
            recovered: false,
            messages: Vec::new(),
            complete: true,
        }
    }
}

/// Limits of every topic's ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Limits {
    /// Most messages kept.
    pub capacity: usize,
    /// Most bytes kept, as messages take them in memory ([`Message::memory`]).
    pub max_bytes: usize,
    /// Oldest message kept; zero keeps messages whatever their age.
    pub max_age: Duration,
}

/// What leaving or entering the ring changed, for the hub's gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Change {
    /// Messages added (0 or 1).
    pub added: u64,
    /// Messages evicted.
    pub evicted: u64,
    /// Bytes added (in memory).
    pub bytes_added: u64,
    /// Bytes evicted (in memory).
    pub bytes_evicted: u64,
}

/// Contiguous recent messages of one topic, oldest first: eviction only ever takes the front, so
/// the ring always holds every `seq` from its oldest to the topic's current one.
#[derive(Debug, Default)]
pub(super) struct History {
    ring: VecDeque<Arc<Message>>,
    bytes: usize,
}

impl History {
    /// Appends the newest message, then evicts what the limits no longer allow.
    pub fn push(&mut self, message: Arc<Message>, limits: &Limits) -> Change {
        let mut change = self.expire(message.published_at, limits);
        let size = message.memory();
        if limits.capacity == 0 || size > limits.max_bytes {
            // It could never be replayed whole, and keeping it would evict everything else;
            // dropping every older message keeps the ring contiguous.
            change.absorb(self.evict_while(|_, _| true));
            return change;
        }
        self.ring.push_back(message);
        self.bytes += size;
        change.added = 1;
        change.bytes_added = size as u64;
        change.absorb(
            self.evict_while(|ring, bytes| {
                ring.len() > limits.capacity || bytes > limits.max_bytes
            }),
        );
        change
    }

    /// Evicts the messages older than the age limit at `now`.
    pub fn expire(&mut self, now: Instant, limits: &Limits) -> Change {
        if limits.max_age.is_zero() {
            return Change::default();
        }
        self.evict_while(|ring, _| {
            ring.front().is_some_and(|oldest| {
                now.saturating_duration_since(oldest.published_at) > limits.max_age
            })
        })
    }

    /// The resume rule: recovered iff every message with a `seq` above `since` is still here, up
    /// to `current` (the topic's latest `seq`). A `since` above `current` is from another life of
    /// the topic and is never recovered. Of the messages after `since`, those that fit
    /// `max_bytes` (in memory; always at least one) are returned, the rest left for a later
    /// call from the last one returned.
    pub fn recover(&self, since: u64, current: u64, max_bytes: usize) -> Recovery {
        let oldest = self
            .ring
            .front()
            .map_or(current.saturating_add(1), |m| m.seq);
        if since > current || since.saturating_add(1) < oldest {
            return Recovery::default();
        }
        let skip = usize::try_from(since.saturating_add(1) - oldest).unwrap_or(usize::MAX);
        let mut budget = max_bytes;
        let messages: Vec<Arc<Message>> = self
            .ring
            .iter()
            .skip(skip)
            .enumerate()
            .take_while(|(i, m)| {
                let fits = *i == 0 || m.memory() <= budget;
                budget = budget.saturating_sub(m.memory());
                fits
            })
            .map(|(_, m)| m.clone())
            .collect();
        let complete = messages.last().is_none_or(|m| m.seq == current);
        Recovery {
            recovered: true,
            messages,
            complete,
        }
    }

    /// Evicts the oldest messages until at most `max_bytes` are kept (a topic over its share
    /// of the hub's budget).
    pub fn trim(&mut self, max_bytes: usize) -> Change {
        self.evict_while(|_, bytes| bytes > max_bytes)
    }

    /// Evicts everything (before a message that does not follow the newest one).
    pub fn clear(&mut self) -> Change {
        self.evict_while(|_, _| true)
    }

    /// Evicts the messages above `seq` (numbered provisionally, and numbered otherwise since):
    /// the ring stays contiguous, now ending at or below `seq`.
    pub fn truncate_after(&mut self, seq: u64) -> Change {
        let mut change = Change::default();
        while let Some(newest) = self.ring.back()
            && newest.seq > seq
        {
            let size = newest.memory();
            self.ring.pop_back();
            self.bytes -= size;
            change.evicted += 1;
            change.bytes_evicted += size as u64;
        }
        change
    }

    /// Whether `upstream` (messages in `seq` order) has, under a `seq` up to `upto` that this
    /// ring also holds, a message of other content (format or payload bytes): the upstream is
    /// not the copy these messages came from (a replica promoted before it had them, a restored
    /// backup). Only the overlap can be compared; content is the identity a client sees.
    pub fn differs(&self, upstream: &[Arc<Message>], upto: u64) -> bool {
        let Some(oldest) = self.ring.front().map(|m| m.seq) else {
            return false;
        };
        upstream
            .iter()
            .filter(|theirs| theirs.seq >= oldest && theirs.seq <= upto)
            .any(|theirs| {
                let at = usize::try_from(theirs.seq - oldest).unwrap_or(usize::MAX);
                self.ring.get(at).is_some_and(|ours| {
                    ours.payload.format() != theirs.payload.format()
                        || ours.payload.bytes() != theirs.payload.bytes()
                })
            })
    }

    /// Nothing retained.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    fn evict_while(
        &mut self,
        mut evict: impl FnMut(&VecDeque<Arc<Message>>, usize) -> bool,
    ) -> Change {
        let mut change = Change::default();
        while evict(&self.ring, self.bytes) {
            let Some(oldest) = self.ring.pop_front() else {
                break;
            };
            let size = oldest.memory();
            self.bytes -= size;
            change.evicted += 1;
            change.bytes_evicted += size as u64;
        }
        change
    }
}

impl Change {
    fn absorb(&mut self, other: Change) {
        self.added += other.added;
        self.evicted += other.evicted;
        self.bytes_added += other.bytes_added;
        self.bytes_evicted += other.bytes_evicted;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Format, Payload};

    fn message(seq: u64, at: Instant, size: usize) -> Arc<Message> {
        let payload = Payload::new(Format::Binary, &vec![0; size]);
        Arc::new(Message::new(Arc::from("t"), seq, at, payload))
    }

    const LIMITS: Limits = Limits {
        capacity: 3,
        max_bytes: 100_000,
        max_age: Duration::ZERO,
    };

    /// What a message of `size` payload bytes takes in memory.
    fn cost(size: usize) -> usize {
        message(0, Instant::now(), size).memory()
    }

    fn seqs(recovery: &Recovery) -> Vec<u64> {
        recovery.messages.iter().map(|m| m.seq).collect()
    }

    fn filled(upto: u64, limits: &Limits, start: Instant) -> History {
        let mut history = History::default();
        for seq in 1..=upto {
            history.push(message(seq, start + Duration::from_secs(seq), 10), limits);
        }
        history
    }

    #[test]
    fn recovers_everything_after_since_while_it_is_retained() {
        let history = filled(5, &LIMITS, Instant::now()); // keeps 3, 4, 5
        assert_eq!((history.ring.len(), history.bytes), (3, 3 * cost(10)));
        let r = history.recover(2, 5, usize::MAX); // exact boundary: since + 1 == oldest
        assert!(r.recovered);
        assert_eq!(seqs(&r), [3, 4, 5]);
        let r = history.recover(4, 5, usize::MAX);
        assert!(r.recovered);
        assert_eq!(seqs(&r), [5]);
    }

    #[test]
    fn truncating_keeps_the_ring_contiguous_up_to_the_new_end() {
        let mut history = filled(5, &LIMITS, Instant::now()); // keeps 3, 4, 5
        let change = history.truncate_after(3);
        assert_eq!(
            (change.evicted, change.bytes_evicted),
            (2, 2 * cost(10) as u64)
        );
        assert_eq!(history.bytes, cost(10));
        assert_eq!(seqs(&history.recover(2, 3, usize::MAX)), [3]);
        assert!(history.truncate_after(9).evicted == 0 && !history.is_empty());
        assert_eq!(history.truncate_after(0).evicted, 1);
        assert!(history.is_empty());
    }

    #[test]
    fn a_byte_budget_recovers_in_slices_from_the_last_one_given() {
        let history = filled(5, &LIMITS, Instant::now()); // keeps 3, 4, 5
        let first = history.recover(2, 5, 2 * cost(10));
        assert!(first.recovered && !first.complete);
        assert_eq!(seqs(&first), [3, 4]);
        let rest = history.recover(4, 5, 2 * cost(10));
        assert!(rest.recovered && rest.complete);
        assert_eq!(seqs(&rest), [5]);
        // At least one message however small the budget; nothing when nothing was missed.
        assert_eq!(seqs(&history.recover(2, 5, 0)), [3]);
        let none = history.recover(5, 5, 0);
        assert!(none.recovered && none.complete && none.messages.is_empty());
    }

    #[test]
    fn trimming_keeps_the_newest_within_the_bytes() {
        let mut history = filled(5, &LIMITS, Instant::now()); // keeps 3, 4, 5
        let change = history.trim(cost(10) + 1);
        assert_eq!(change.evicted, 2);
        assert_eq!(seqs(&history.recover(4, 5, usize::MAX)), [5]);
    }

    #[test]
    fn too_old_is_not_recovered() {
        let history = filled(5, &LIMITS, Instant::now());
        let r = history.recover(1, 5, usize::MAX); // seq 2 is gone
        assert!(!r.recovered);
        assert!(r.messages.is_empty());
    }

    #[test]
    fn since_at_current_is_recovered_with_nothing_even_without_history() {
        let history = filled(5, &LIMITS, Instant::now());
        let r = history.recover(5, 5, usize::MAX);
        assert!(r.recovered && r.messages.is_empty());
        let empty = History::default();
        assert!(empty.recover(7, 7, usize::MAX).recovered);
        assert!(!empty.recover(6, 7, usize::MAX).recovered);
        assert!(empty.recover(0, 0, usize::MAX).recovered);
    }

    #[test]
    fn since_from_the_future_is_not_recovered() {
        let history = filled(5, &LIMITS, Instant::now());
        assert!(!history.recover(6, 5, usize::MAX).recovered);
        assert!(!history.recover(u64::MAX, 5, usize::MAX).recovered);
    }

    #[test]
    fn age_limit_expires_from_the_front() {
        let start = Instant::now();
        let limits = Limits {
            max_age: Duration::from_secs(10),
            ..LIMITS
        };
        let mut history = filled(3, &limits, start); // published at start + 1s, 2s, 3s
        let change = history.expire(start + Duration::from_secs(12), &limits);
        assert_eq!((change.evicted, change.bytes_evicted), (1, cost(10) as u64));
        assert!(!history.recover(0, 3, usize::MAX).recovered);
        assert_eq!(seqs(&history.recover(1, 3, usize::MAX)), [2, 3]);
        history.expire(start + Duration::from_secs(60), &limits);
        assert!(history.is_empty());
        assert!(!history.recover(2, 3, usize::MAX).recovered);
        assert!(history.recover(3, 3, usize::MAX).recovered);
    }

    #[test]
    fn byte_limit_evicts_and_oversized_messages_empty_the_ring() {
        let limits = Limits {
            max_bytes: 2 * cost(10) + 5,
            ..LIMITS
        };
        let history = filled(3, &limits, Instant::now());
        assert_eq!((history.ring.len(), history.bytes), (2, 2 * cost(10)));
        let mut history = history;
        let change = history.push(message(4, Instant::now(), 2 * cost(10)), &limits);
        assert_eq!((change.added, change.evicted), (0, 2));
        assert!(history.is_empty());
        assert!(history.recover(4, 4, usize::MAX).recovered);
        assert!(!history.recover(3, 4, usize::MAX).recovered);
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let limits = Limits {
            capacity: 0,
            ..LIMITS
        };
        let history = filled(3, &limits, Instant::now());
        assert!(history.is_empty());
        assert!(history.recover(3, 3, usize::MAX).recovered);
        assert!(!history.recover(2, 3, usize::MAX).recovered);
    }
}
