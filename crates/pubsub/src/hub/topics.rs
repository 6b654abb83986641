//! The hub's topic table: each topic's state behind its own mutex, in a map sharded by the
//! topic's hash so that publishers on different topics rarely meet on a lock; the bookkeeping of
//! the history rings it holds (the hub-wide gauges and byte budget); and the sweep that removes
//! idle topics.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use super::Hub;
use crate::Error;
use crate::epoch::Resume;
use crate::history::{Change, History, Recovery};
use crate::message::Message;

/// Topic map shards: enough that publishers on different topics rarely meet on a shard lock.
pub(super) const SHARDS: usize = 64;

/// One topic's shared state, guarded by its own mutex.
#[derive(Debug)]
pub(super) struct TopicState {
    /// The last `seq` assigned.
    pub(super) seq: u64,
    /// Fed hub: the last `seq` the upstream numbered; the ones above it up to `seq` are this
    /// node's provisional messages.
    pub(super) confirmed: u64,
    /// Reactors with at least one local subscriber (bit `i` for reactor `i`).
    pub(super) reactors: u64,
    /// Fed hub: reactors with a subscribe waiting for the topic to become live.
    pub(super) waiting: u64,
    /// `seq` and history are current: always in a numbering hub, while fed in a fed one.
    pub(super) live: bool,
    /// Local subscribers, all reactors together.
    pub(super) subscribers: u64,
    /// Recent messages, contiguous up to `seq`, for resume.
    pub(super) history: History,
}

/// One shard of the topic table: its map's lock is held only to find or add a topic, the
/// topic's own lock for the rest.
pub(super) type Shard = RwLock<HashMap<Arc<str>, Mutex<TopicState>>>;

impl Hub {
    /// The shard that holds `topic`.
    fn shard(&self, topic: &str) -> &Shard {
        // SHARDS is a power of two, so the mask keeps the index in range.
        &self.shards[self.hasher.hash_one(topic) as usize & (SHARDS - 1)]
    }

    /// Runs `f` on an existing topic under its lock, or gives `f` back if there is none. The
    /// shard's read lock is held throughout, so [`Hub::sweep`] cannot remove the topic meanwhile.
    pub(super) fn existing<R, F>(&self, topic: &str, f: F) -> Result<R, F>
    where
        F: FnOnce(&Arc<str>, &mut TopicState) -> R,
    {
        let map = self
            .shard(topic)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match map.get_key_value(topic) {
            Some((name, cell)) => {
                let mut state = cell.lock().unwrap_or_else(PoisonError::into_inner);
                Ok(f(name, &mut state))
            }
            None => Err(f),
        }
    }

    /// Whether `topic` is in the table.
    pub(super) fn exists(&self, topic: &str) -> bool {
        self.shard(topic)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(topic)
    }

    /// Runs `f` on `topic` under its lock, creating the topic first if needed (for a `client`,
    /// within the hub's `client_topic_rate`).
    pub(super) fn get_or_create<R>(
        &self,
        topic: &str,
        client: bool,
        now: Instant,
        f: impl FnOnce(&Arc<str>, &mut TopicState) -> R,
    ) -> Result<R, Error> {
        let f = match self.existing(topic, f) {
            Ok(result) => return Ok(result),
            Err(f) => f,
        };
        let mut map = self
            .shard(topic)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = match map.entry(Arc::from(topic)) {
            Entry::Occupied(entry) => entry,
            Entry::Vacant(entry) => {
                if self.topics.fetch_add(1, Relaxed) >= self.config.max_topics {
                    self.topics.fetch_sub(1, Relaxed);
                    return Err(Error::TooManyTopics);
                }
                if client && !self.may_create(now) {
                    self.topics.fetch_sub(1, Relaxed);
                    return Err(Error::TooManyNewTopics);
                }
                let floor = self.seq_floor.load(Relaxed);
                entry.insert_entry(Mutex::new(TopicState {
                    seq: floor,
                    confirmed: floor,
                    reactors: 0,
                    waiting: 0,
                    live: self.upstream.is_none(),
                    subscribers: 0,
                    history: History::default(),
                }))
            }
        };
        let name = entry.key().clone();
        let state = entry
            .into_mut()
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(f(&name, state))
    }

    /// What `pick` takes of each topic (name and state), where it takes something.
    pub(super) fn collect<T>(&self, pick: impl Fn(&Arc<str>, &TopicState) -> Option<T>) -> Vec<T> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let map = shard.read().unwrap_or_else(PoisonError::into_inner);
            for (name, cell) in map.iter() {
                let state = cell.lock().unwrap_or_else(PoisonError::into_inner);
                out.extend(pick(name, &state));
            }
        }
        out
    }

    /// Appends `message` (the topic's new `seq`) to history and counts it. When the hub's
    /// history would go past `history_total_bytes`, the topic may keep only its fair share
    /// ([`Hub::fair_share`]): one above it evicts its own oldest messages, one below it keeps
    /// its history and the new message. Only past twice the total does a publish flush its
    /// own topic's history (the sweep trims topics to their shares within a second).
    pub(super) fn record(&self, state: &mut TopicState, message: &Arc<Message>) {
        let size = message.memory() as u64;
        let total = self.config.history_total_bytes as u64;
        let used = self.history_bytes.load(Relaxed).saturating_add(size);
        let mut limits = self.limits;
        if used > total {
            limits.max_bytes = limits.max_bytes.min(self.fair_share(&state.history));
        }
        if used > total.saturating_mul(2) {
            limits.capacity = 0;
        }
        let change = state.history.push(message.clone(), &limits);
        self.account(change);
        self.published.fetch_add(1, Relaxed);
    }

    /// A topic's share of `history_total_bytes` while the hub is over it: the total divided by
    /// the topics with history (as of the last sweep, this one counted if it had none).
    fn fair_share(&self, history: &History) -> usize {
        let counted = self.topics_with_history.load(Relaxed);
        let topics = counted + u64::from(history.is_empty()) + u64::from(counted == 0);
        (self.config.history_total_bytes as u64 / topics.max(1)) as usize
    }

    /// The resume rule of [`History::recover`], for a claim of this hub's epoch only: a `seq`
    /// of another epoch names other messages.
    pub(super) fn recover(
        &self,
        history: &History,
        current: u64,
        resume: &Resume,
        max_bytes: usize,
    ) -> Recovery {
        if resume.epoch == Some(self.epoch()) {
            history.recover(resume.since, current, max_bytes)
        } else {
            Recovery::default()
        }
    }

    /// Evicts what the age limit no longer allows from `state`'s history, and counts it.
    pub(super) fn expire(&self, state: &mut TopicState, now: Instant) {
        let change = state.history.expire(now, &self.limits);
        self.account(change);
    }

    /// Applies a history change to the hub-wide gauges.
    pub(super) fn account(&self, change: Change) {
        self.history_messages.fetch_add(change.added, Relaxed);
        self.history_messages.fetch_sub(change.evicted, Relaxed);
        self.history_bytes.fetch_add(change.bytes_added, Relaxed);
        self.history_bytes.fetch_sub(change.bytes_evicted, Relaxed);
        self.history_evicted.fetch_add(change.evicted, Relaxed);
    }

    /// Removes the topics that no reactor subscribes to and whose history has expired (or was
    /// never kept), counts the topics with history, and while the hub holds more history than
    /// `history_total_bytes` trims every topic to its fair share (the total over that count).
    /// Call it now and then (every few seconds) from any one thread.
    pub fn sweep(&self, now: Instant) -> usize {
        let (mut removed, mut with_history) = (0, 0);
        for shard in &self.shards {
            let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, cell| {
                let state = cell.get_mut().unwrap_or_else(PoisonError::into_inner);
                self.expire(state, now);
                with_history += u64::from(!state.history.is_empty());
                let idle = state.reactors == 0 && state.waiting == 0 && state.history.is_empty();
                if idle {
                    self.seq_floor.fetch_max(state.seq, Relaxed);
                    removed += 1;
                }
                !idle
            });
        }
        self.topics.fetch_sub(removed, Relaxed);
        self.topics_with_history.store(with_history, Relaxed);
        let total = self.config.history_total_bytes;
        if self.history_bytes.load(Relaxed) > total as u64 {
            let share = total / with_history.max(1) as usize;
            for shard in &self.shards {
                let map = shard.read().unwrap_or_else(PoisonError::into_inner);
                for cell in map.values() {
                    let mut state = cell.lock().unwrap_or_else(PoisonError::into_inner);
                    let change = state.history.trim(share);
                    self.account(change);
                }
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::hub::tests::{hub, publish, resume, seqs};
    use crate::hub::{Admission, HubConfig};
    use crate::message::{Format, Payload};

    #[test]
    fn topic_limit_and_sweep() {
        let hub = hub(HubConfig {
            max_topics: 2,
            history_max_age: Duration::from_secs(1),
            ..HubConfig::default()
        });
        let now = Instant::now();
        publish(&hub, "a", "1", now);
        publish(&hub, "a", "2", now);
        hub.join("b", 0, None, true, usize::MAX, now).unwrap();
        let full = hub.publish_with("c", Payload::new(Format::Text, b""), now, |_, _| ());
        assert_eq!(full, Err(Error::TooManyTopics));
        assert!(matches!(
            hub.join("c", 0, None, true, usize::MAX, now),
            Err(Error::TooManyTopics)
        ));
        assert_eq!(
            hub.sweep(now),
            0,
            "history and subscribers keep topics alive"
        );
        let later = now + Duration::from_secs(5);
        assert_eq!(hub.sweep(later), 1, "a has expired, b has a reactor");
        assert_eq!(hub.stats().topics, 1);
        assert_eq!(hub.stats().history_messages, 0);
        // Re-created, `a` goes on from the floor: old `seq`s never name new messages.
        assert_eq!(publish(&hub, "a", "3", later), 3);
        assert!(!hub.since("a", &resume(1), later).recovered);
        assert_eq!(seqs(&hub.since("a", &resume(2), later)), [3]);
    }

    #[test]
    fn a_flooding_topic_cannot_flush_the_others_history() {
        let now = Instant::now();
        let big = Payload::new(Format::Text, &[b'x'; 1000]);
        let one = Message::new(Arc::from("junk"), 1, now, big.clone()).memory();
        let total = 10 * one;
        let hub = hub(HubConfig {
            history_total_bytes: total,
            history_size: 1000,
            ..HubConfig::default()
        });
        for topic in ["a", "b"] {
            publish(&hub, topic, "1", now);
            publish(&hub, topic, "2", now);
        }
        // A publisher floods one topic with far more than the hub keeps.
        for _ in 0..100 {
            hub.publish_with("junk", big.clone(), now, |_, _| ())
                .unwrap();
        }
        let used = hub.stats().history_bytes as usize;
        assert!(used <= 2 * total, "{used} of {total}");
        for topic in ["a", "b"] {
            assert_eq!(seqs(&hub.since(topic, &resume(0), now)), [1, 2], "{topic}");
        }
        // The sweep brings the total back under the budget at the flooder's expense: three
        // topics with history, a third of the budget each at most.
        hub.sweep(now);
        assert!(hub.stats().history_bytes as usize <= total);
        assert_eq!(hub.stats().topics_with_history, 3);
        let junk = hub.since("junk", &resume(0), now);
        assert!(!junk.recovered, "the flood's oldest are gone");
        let kept = hub.since("junk", &resume(97), now);
        assert!(kept.recovered && kept.messages.len() * one <= total / 3);
        for topic in ["a", "b"] {
            assert_eq!(seqs(&hub.since(topic, &resume(0), now)), [1, 2], "{topic}");
        }
        // Past twice the total a publish keeps nothing of its topic: the last stop.
        let tiny = super::super::tests::hub(HubConfig {
            history_total_bytes: 1,
            ..HubConfig::default()
        });
        publish(&tiny, "a", "1", now);
        assert_eq!(tiny.stats().history_messages, 0);
    }

    #[test]
    fn clients_create_topics_within_their_rate_and_the_api_without() {
        let now = Instant::now();
        let hub = hub(HubConfig {
            client_topic_rate: 1,
            ..HubConfig::default()
        });
        // A burst of ten seconds' worth, then one a second.
        for n in 0..10 {
            hub.join(&format!("t{n}"), 0, None, true, usize::MAX, now)
                .unwrap();
        }
        let refused = hub.join("t10", 0, None, true, usize::MAX, now);
        assert!(matches!(refused, Err(Error::TooManyNewTopics)));
        hub.join("t0", 0, None, false, usize::MAX, now)
            .expect("an existing topic is not new");
        let client = Admission {
            client: true,
            room: &|_| true,
        };
        let payload = || Payload::new(Format::Text, b"x");
        let refused = hub.publish_admitted("p", payload(), now, &client, |_, _| ());
        assert_eq!(refused, Err(Error::TooManyNewTopics));
        hub.publish_with("p", payload(), now, |_, _| ())
            .expect("the API is not counted");
        assert_eq!(hub.stats().topics_refused, 2);
        let later = now + Duration::from_millis(1500);
        hub.join("t10", 0, None, true, usize::MAX, later).unwrap();
    }

    #[test]
    fn a_publish_is_not_numbered_when_its_reactors_have_no_room() {
        let now = Instant::now();
        let hub = hub(HubConfig::default());
        hub.join("t", 3, None, true, usize::MAX, now).unwrap();
        let busy = Admission {
            client: false,
            room: &|reactors: crate::Reactors| !reactors.contains(3),
        };
        let payload = Payload::new(Format::Text, b"x");
        assert_eq!(
            hub.publish_admitted("t", payload.clone(), now, &busy, |m, _| m.seq()),
            Err(Error::Busy)
        );
        assert_eq!(
            publish(&hub, "t", "y", now),
            1,
            "the refused one took no seq"
        );
        assert_eq!(hub.stats().published, 1);
    }
}
