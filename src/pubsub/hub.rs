//! The shared half of pubsub: per topic the `seq`, the history ring and the reactors with local
//! subscribers, behind one short lock per topic in a sharded map.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Error;
use super::history::{Change, History, Limits, Recovery};
use super::message::{Message, Payload};

/// Most reactors a hub can address: a topic's reactor set is one `u64`.
pub const MAX_REACTORS: usize = 64;

/// Topic map shards: enough that publishers on different topics rarely meet on a shard lock.
const SHARDS: usize = 64;

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

/// A set of reactor indexes (below [`MAX_REACTORS`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reactors(u64);

impl Reactors {
    /// Whether reactor `index` is in the set.
    pub fn contains(self, index: usize) -> bool {
        self.0 & bit(index) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The reactor indexes, ascending.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            let index = bits.trailing_zeros() as usize;
            bits &= bits.wrapping_sub(1);
            (index < MAX_REACTORS).then_some(index)
        })
    }
}

/// The bit of reactor `index`; none for an index out of range.
fn bit(index: usize) -> u64 {
    u32::try_from(index)
        .ok()
        .and_then(|i| 1u64.checked_shl(i))
        .unwrap_or(0)
}

/// Limits of the hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubConfig {
    /// Messages kept per topic for resume; 0 turns history off.
    pub history_size: usize,
    /// Payload bytes kept per topic.
    pub history_max_bytes: usize,
    /// Age after which a message leaves history; zero keeps messages whatever their age.
    pub history_max_age: Duration,
    /// Payload bytes kept across all topics. Past it a publish is not retained and empties its
    /// topic's ring, so the total stays bounded without a global eviction order.
    pub history_total_bytes: usize,
    /// Most topics alive at once; a publish or subscribe that would create one more fails.
    pub max_topics: usize,
}

impl Default for HubConfig {
    fn default() -> HubConfig {
        HubConfig {
            history_size: 100,
            history_max_bytes: 1 << 20,
            history_max_age: Duration::from_secs(300),
            history_total_bytes: 256 << 20,
            max_topics: 100_000,
        }
    }
}

/// The hub's numbers, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Topics alive.
    pub topics: u64,
    /// Messages published since start.
    pub published: u64,
    /// Messages retained in history.
    pub history_messages: u64,
    /// Payload bytes retained in history.
    pub history_bytes: u64,
    /// Messages evicted from history (by count, size or age) since start.
    pub history_evicted: u64,
}

/// One topic's shared state, guarded by its own mutex.
#[derive(Debug)]
struct TopicState {
    /// The last `seq` assigned.
    seq: u64,
    /// Reactors with at least one local subscriber (bit `i` for reactor `i`).
    reactors: u64,
    history: History,
}

type Shard = RwLock<HashMap<Arc<str>, Mutex<TopicState>>>;

/// Topics shared by all reactors. See the module docs for the ordering contract.
#[derive(Debug)]
pub struct Hub {
    epoch: Epoch,
    config: HubConfig,
    limits: Limits,
    hasher: RandomState,
    shards: [Shard; SHARDS],
    topics: AtomicUsize,
    /// The highest `seq` of any topic removed by [`Hub::sweep`]: a topic created again starts
    /// there, so a `seq` never means two messages within one epoch.
    seq_floor: AtomicU64,
    published: AtomicU64,
    history_messages: AtomicU64,
    history_bytes: AtomicU64,
    history_evicted: AtomicU64,
}

impl Hub {
    /// An empty hub for a server run of `epoch`.
    pub fn new(config: HubConfig, epoch: Epoch) -> Hub {
        Hub {
            epoch,
            limits: Limits {
                capacity: config.history_size,
                max_bytes: config.history_max_bytes,
                max_age: config.history_max_age,
            },
            config,
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| RwLock::default()),
            topics: AtomicUsize::new(0),
            seq_floor: AtomicU64::new(0),
            published: AtomicU64::new(0),
            history_messages: AtomicU64::new(0),
            history_bytes: AtomicU64::new(0),
            history_evicted: AtomicU64::new(0),
        }
    }

    /// This run's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Publishes `payload` to `topic` (created if new): assigns the next `seq`, appends to
    /// history, then calls `send` with the message and the reactors that have subscribers of
    /// the topic, all under the topic's lock. Whatever `send` enqueues is therefore in `seq`
    /// order; keep it to enqueueing (wake the reactors after this returns).
    pub fn publish_with<R>(
        &self,
        topic: &str,
        payload: Payload,
        now: Instant,
        send: impl FnOnce(&Arc<Message>, Reactors) -> R,
    ) -> Result<R, Error> {
        self.get_or_create(topic, |name, state| {
            state.seq += 1;
            let message = Arc::new(Message {
                topic: name.clone(),
                seq: state.seq,
                published_at: now,
                payload,
                compressed: Default::default(),
            });
            let size = message.payload.bytes().len();
            let room = self.history_bytes.load(Relaxed).saturating_add(size as u64)
                <= self.config.history_total_bytes as u64;
            let limits = if room {
                self.limits
            } else {
                Limits {
                    capacity: 0,
                    ..self.limits
                }
            };
            let change = state.history.push(message.clone(), &limits);
            self.account(change);
            self.published.fetch_add(1, Relaxed);
            send(&message, Reactors(state.reactors))
        })
    }

    /// What a subscriber resuming from `resume` missed on `topic`, without subscribing.
    pub fn since(&self, topic: &str, resume: &Resume, now: Instant) -> Recovery {
        let found = self.existing(topic, |_, state| {
            self.expire(state, now);
            self.recover(&state.history, state.seq, resume)
        });
        // A topic that does not exist has no history, and its `seq` would start at the floor.
        found.unwrap_or_else(|_| {
            self.recover(&History::default(), self.seq_floor.load(Relaxed), resume)
        })
    }

    /// Removes the topics that no reactor subscribes to and whose history has expired (or was
    /// never kept). Call it now and then (every few seconds) from any one thread.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut removed = 0;
        for shard in &self.shards {
            let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, cell| {
                let state = cell.get_mut().unwrap_or_else(PoisonError::into_inner);
                self.expire(state, now);
                let idle = state.reactors == 0 && state.history.is_empty();
                if idle {
                    self.seq_floor.fetch_max(state.seq, Relaxed);
                    removed += 1;
                }
                !idle
            });
        }
        self.topics.fetch_sub(removed, Relaxed);
        removed
    }

    /// Current numbers.
    pub fn stats(&self) -> HubStats {
        HubStats {
            topics: self.topics.load(Relaxed) as u64,
            published: self.published.load(Relaxed),
            history_messages: self.history_messages.load(Relaxed),
            history_bytes: self.history_bytes.load(Relaxed),
            history_evicted: self.history_evicted.load(Relaxed),
        }
    }

    /// Adds `reactor` to `topic`'s reactor set and reads, in the same critical section, the
    /// current `seq` (and what `resume` missed): every later publish reaches the reactor, and
    /// every earlier one is at or below the returned `seq`.
    pub(super) fn join(
        &self,
        topic: &str,
        reactor: usize,
        resume: Option<&Resume>,
        now: Instant,
    ) -> Result<(u64, Option<Recovery>), Error> {
        self.get_or_create(topic, |_, state| {
            state.reactors |= bit(reactor);
            let recovery = resume.map(|resume| {
                self.expire(state, now);
                self.recover(&state.history, state.seq, resume)
            });
            (state.seq, recovery)
        })
    }

    /// Removes `reactor` from `topic`'s reactor set (its last local subscriber left).
    pub(super) fn leave(&self, topic: &str, reactor: usize) {
        // A topic already swept has no reactor to remove.
        let _ = self.existing(topic, |_, state| state.reactors &= !bit(reactor));
    }

    fn recover(&self, history: &History, current: u64, resume: &Resume) -> Recovery {
        if resume.epoch == Some(self.epoch) {
            history.recover(resume.since, current)
        } else {
            Recovery::default()
        }
    }

    fn expire(&self, state: &mut TopicState, now: Instant) {
        let change = state.history.expire(now, &self.limits);
        self.account(change);
    }

    fn account(&self, change: Change) {
        self.history_messages.fetch_add(change.added, Relaxed);
        self.history_messages.fetch_sub(change.evicted, Relaxed);
        self.history_bytes.fetch_add(change.bytes_added, Relaxed);
        self.history_bytes.fetch_sub(change.bytes_evicted, Relaxed);
        self.history_evicted.fetch_add(change.evicted, Relaxed);
    }

    fn shard(&self, topic: &str) -> &Shard {
        // SHARDS is a power of two, so the mask keeps the index in range.
        &self.shards[self.hasher.hash_one(topic) as usize & (SHARDS - 1)]
    }

    /// Runs `f` on an existing topic under its lock, or gives `f` back if there is none. The
    /// shard's read lock is held throughout, so [`Hub::sweep`] cannot remove the topic meanwhile.
    fn existing<R, F>(&self, topic: &str, f: F) -> Result<R, F>
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

    /// Runs `f` on `topic` under its lock, creating the topic first if needed.
    fn get_or_create<R>(
        &self,
        topic: &str,
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
                entry.insert_entry(Mutex::new(TopicState {
                    seq: self.seq_floor.load(Relaxed),
                    reactors: 0,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::message::Format;
    use std::sync::mpsc;

    const EPOCH: Epoch = Epoch(0xfeed);

    fn hub(config: HubConfig) -> Hub {
        Hub::new(config, EPOCH)
    }

    fn publish(hub: &Hub, topic: &str, body: &str, now: Instant) -> u64 {
        hub.publish_with(
            topic,
            Payload::new(Format::Text, body.as_bytes()),
            now,
            |m, _| m.seq(),
        )
        .unwrap()
    }

    fn resume(since: u64) -> Resume {
        Resume {
            since,
            epoch: Some(EPOCH),
        }
    }

    fn seqs(recovery: &Recovery) -> Vec<u64> {
        recovery.messages.iter().map(|m| m.seq()).collect()
    }

    #[test]
    fn seq_starts_at_one_per_topic() {
        let hub = hub(HubConfig::default());
        let now = Instant::now();
        assert_eq!(publish(&hub, "a", "x", now), 1);
        assert_eq!(publish(&hub, "a", "y", now), 2);
        assert_eq!(publish(&hub, "b", "z", now), 1);
        let stats = hub.stats();
        assert_eq!((stats.topics, stats.published), (2, 3));
        assert_eq!((stats.history_messages, stats.history_bytes), (3, 3));
    }

    #[test]
    fn since_recovers_in_order_and_checks_the_epoch() {
        let hub = hub(HubConfig::default());
        let now = Instant::now();
        for body in ["a", "b", "c"] {
            publish(&hub, "t", body, now);
        }
        let r = hub.since("t", &resume(1), now);
        assert!(r.recovered);
        assert_eq!(seqs(&r), [2, 3]);
        assert_eq!(r.messages[0].payload().bytes(), b"b");
        assert_eq!(&**r.messages[0].topic(), "t");
        let other = Resume {
            since: 1,
            epoch: Some(Epoch(1)),
        };
        assert!(!hub.since("t", &other, now).recovered);
        let unknown = Resume {
            since: 1,
            epoch: None,
        };
        assert!(!hub.since("t", &unknown, now).recovered);
        // A topic nobody published to: only `since: 0` has nothing missing.
        assert!(hub.since("nope", &resume(0), now).recovered);
        assert!(!hub.since("nope", &resume(3), now).recovered);
    }

    #[test]
    fn since_is_too_old_after_the_ring_wrapped_and_after_the_age_limit() {
        let hub = hub(HubConfig {
            history_size: 2,
            history_max_age: Duration::from_secs(10),
            ..HubConfig::default()
        });
        let start = Instant::now();
        for i in 0..4 {
            publish(&hub, "t", "m", start + Duration::from_secs(i));
        }
        assert!(!hub.since("t", &resume(1), start).recovered);
        assert_eq!(seqs(&hub.since("t", &resume(2), start)), [3, 4]);
        // Seq 3 (published at 2 s) is past the 10 s age limit, seq 4 (at 3 s) is not yet.
        let late = start + Duration::from_millis(12_500);
        assert!(!hub.since("t", &resume(2), late).recovered);
        assert_eq!(seqs(&hub.since("t", &resume(3), late)), [4]);
        let later = late + Duration::from_secs(1);
        assert!(!hub.since("t", &resume(3), later).recovered);
        assert!(hub.since("t", &resume(4), later).recovered);
        assert_eq!(hub.stats().history_evicted, 4);
    }

    #[test]
    fn publish_reaches_only_joined_reactors() {
        let hub = hub(HubConfig::default());
        let now = Instant::now();
        assert!(matches!(hub.join("t", 3, None, now), Ok((0, None))));
        hub.join("t", 63, None, now).unwrap();
        hub.join("t", 64, None, now).unwrap(); // out of range: no bit
        let reactors = hub
            .publish_with("t", Payload::new(Format::Binary, b""), now, |_, r| r)
            .unwrap();
        assert_eq!(reactors.iter().collect::<Vec<_>>(), [3, 63]);
        assert!(reactors.contains(3) && !reactors.contains(4) && !reactors.contains(99));
        hub.leave("t", 3);
        hub.leave("gone", 3);
        let reactors = hub
            .publish_with("t", Payload::new(Format::Binary, b""), now, |_, r| r)
            .unwrap();
        assert_eq!(reactors.iter().collect::<Vec<_>>(), [63]);
        let (seq, recovery) = hub.join("t", 0, Some(&resume(1)), now).unwrap();
        assert_eq!(seq, 2);
        assert_eq!(seqs(&recovery.unwrap()), [2]);
    }

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
        hub.join("b", 0, None, now).unwrap();
        let full = hub.publish_with("c", Payload::new(Format::Text, b""), now, |_, _| ());
        assert_eq!(full, Err(Error::TooManyTopics));
        assert!(matches!(
            hub.join("c", 0, None, now),
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
    fn total_history_bytes_stay_bounded() {
        let hub = hub(HubConfig {
            history_total_bytes: 10,
            ..HubConfig::default()
        });
        let now = Instant::now();
        publish(&hub, "a", "12345678", now);
        publish(&hub, "b", "12", now);
        assert_eq!(hub.stats().history_bytes, 10);
        publish(&hub, "a", "x", now); // no room: not kept, and `a`'s ring is emptied
        assert_eq!(hub.stats().history_bytes, 2);
        assert!(!hub.since("a", &resume(1), now).recovered);
        assert!(hub.since("a", &resume(2), now).recovered);
        assert_eq!(seqs(&hub.since("b", &resume(0), now)), [1]);
    }

    #[test]
    fn concurrent_publishers_keep_seq_order_as_the_closure_sees_it() {
        const THREADS: usize = 4;
        const EACH: u64 = 2_000;
        let hub = Arc::new(hub(HubConfig::default()));
        let (tx, rx) = mpsc::channel();
        let now = Instant::now();
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let (hub, tx) = (hub.clone(), tx.clone());
                scope.spawn(move || {
                    for i in 0..EACH {
                        let topic = ["x", "y"][(i % 2) as usize];
                        let payload = Payload::new(Format::Text, format!("{thread}").as_bytes());
                        hub.publish_with(topic, payload, now, |m, _| tx.send(m.clone()))
                            .unwrap()
                            .unwrap();
                    }
                });
            }
        });
        drop(tx);
        let mut last: HashMap<Arc<str>, u64> = HashMap::new();
        let mut total = 0;
        for message in rx {
            let previous = last.insert(message.topic().clone(), message.seq());
            assert_eq!(message.seq(), previous.unwrap_or(0) + 1, "gap or reorder");
            total += 1;
        }
        assert_eq!(total, THREADS as u64 * EACH);
        assert_eq!(last["x"] + last["y"], total);
    }

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
