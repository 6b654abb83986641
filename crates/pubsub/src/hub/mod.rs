//! The shared half of pubsub: per topic the `seq`, the history ring and the reactors with local
//! subscribers, behind one short lock per topic in a sharded map.
//!
//! A hub numbers messages itself ([`Hub::new`], one node) or is *fed* ([`Hub::fed`]): an
//! upstream (the cluster bridge) numbers them and hands them in with [`Hub::deliver`]. A fed hub
//! keeps a topic *live* (its `seq` current, its history a copy of the upstream's recent
//! messages) only while some reactor wants it: the first subscribe sends [`Interest::Join`] and
//! waits (the subscribe answers [`Error::Pending`]) until the upstream calls [`Hub::sync`]; the
//! last one to leave sends [`Interest::Leave`]. Everything else (join, resume, fanout order)
//! works the same in both modes. While the upstream is unreachable a fed hub can number local
//! publishes provisionally ([`Hub::publish_provisional`]); [`Hub::deliver`] later confirms
//! them, or resets the topic to the upstream's numbering ([`crate::Post::Reset`]).
//!
//! Here: the [`Hub`] and what both modes share (limits, numbers, joining and leaving a topic,
//! resume and subscriber queries). Beside it, one concern each: `topics.rs` (the sharded table of
//! topic states, history bookkeeping, the sweep), `local.rs` (a hub that numbers its own
//! publishes) and `fed.rs` (a hub numbered by a cluster upstream).

mod fed;
mod local;
mod topics;

use std::hash::RandomState;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::Error;
use super::epoch::{Epoch, Resume};
use super::history::{History, Limits, Recovery};
use super::reactors::{Reactors, bit};
pub use fed::{Delivered, Interest};
use topics::{SHARDS, Shard};

/// Limits of the hub. History is counted in bytes of memory, as messages really take it
/// ([`crate::Message::memory`]: an empty message costs about 150 bytes, not nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubConfig {
    /// Messages kept per topic for resume; 0 turns history off.
    pub history_size: usize,
    /// Bytes of history kept per topic.
    pub history_max_bytes: usize,
    /// Age after which a message leaves history; zero keeps messages whatever their age.
    pub history_max_age: Duration,
    /// Bytes of history kept across all topics. When a publish would go past it, a topic may
    /// keep no more than an equal share of it (this total over the topics with history): a
    /// topic above its share evicts its own oldest messages, one below keeps its history and
    /// the new message, and each sweep trims every topic to its share. One topic, or a few,
    /// cannot flush the others' history; the total stays under twice this between sweeps.
    pub history_total_bytes: usize,
    /// Most topics alive at once; a publish or subscribe that would create one more fails.
    pub max_topics: usize,
    /// New topics clients may create per second (by subscribing, or publishing where allowed),
    /// across the hub, with a burst of ten seconds' worth; 0: no limit. Publishes through the
    /// API ([`Hub::publish_with`]) are not counted.
    pub client_topic_rate: u32,
}

impl Default for HubConfig {
    fn default() -> HubConfig {
        HubConfig {
            history_size: 100,
            history_max_bytes: 1 << 20,
            history_max_age: Duration::from_secs(300),
            history_total_bytes: 256 << 20,
            max_topics: 100_000,
            client_topic_rate: 1000,
        }
    }
}

/// What a publish must meet before it is numbered (checked under the topic's lock).
pub struct Admission<'a> {
    /// A client's publish: creating its topic draws on the hub's `client_topic_rate`.
    pub client: bool,
    /// Whether the reactors that would receive the message can take it now.
    pub room: &'a dyn Fn(Reactors) -> bool,
}

impl Admission<'_> {
    /// A trusted publisher's (the HTTP API): every topic may be created, every reactor takes it.
    pub const API: Admission<'static> = Admission {
        client: false,
        room: &|_| true,
    };
}

/// The hub's allowance of new topics for clients, refilled by the time since it was last used.
#[derive(Debug)]
struct Creations {
    /// Thousandths of a topic.
    millis: u64,
    refilled: Instant,
}

/// One topic's numbers ([`Hub::topic_counts`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicCount {
    /// The topic.
    pub name: Arc<str>,
    /// Its subscribers on this node.
    pub subscribers: u64,
    /// Its last `seq`.
    pub seq: u64,
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
    /// Messages evicted from history (by count, size, age or the fair share) since start.
    pub history_evicted: u64,
    /// Topics with history, as of the last sweep.
    pub topics_with_history: u64,
    /// New topics refused to clients past `client_topic_rate`.
    pub topics_refused: u64,
}

/// Topics shared by all reactors. See the module docs for the ordering contract.
#[derive(Debug)]
pub struct Hub {
    epoch: AtomicU64,
    /// A fed hub's line to its upstream; `None` in a hub that numbers messages itself.
    upstream: Option<Sender<Interest>>,
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
    /// Topics with history, counted by the sweep: what a topic's fair share divides by.
    topics_with_history: AtomicU64,
    creations: Mutex<Creations>,
    topics_refused: AtomicU64,
}

impl Hub {
    /// An empty hub that numbers messages itself, for a server run of `epoch`.
    pub fn new(config: HubConfig, epoch: Epoch) -> Hub {
        Hub::build(config, epoch, None)
    }

    /// An empty hub fed by an upstream, which receives the hub's [`Interest`]s on `upstream` and
    /// sets the epoch with [`Hub::set_epoch`].
    pub fn fed(config: HubConfig, upstream: Sender<Interest>) -> Hub {
        Hub::build(config, Epoch::new(0), Some(upstream))
    }

    fn build(config: HubConfig, epoch: Epoch, upstream: Option<Sender<Interest>>) -> Hub {
        let creations = Creations {
            millis: u64::from(config.client_topic_rate) * CREATION_BURST_SECONDS * 1000,
            refilled: Instant::now(),
        };
        Hub {
            epoch: AtomicU64::new(epoch.value()),
            upstream,
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
            topics_with_history: AtomicU64::new(0),
            creations: Mutex::new(creations),
            topics_refused: AtomicU64::new(0),
        }
    }

    /// Whether a client may create one more topic now (drawing on `client_topic_rate`).
    fn may_create(&self, now: Instant) -> bool {
        let rate = u64::from(self.config.client_topic_rate);
        if rate == 0 {
            return true;
        }
        let mut creations = self
            .creations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let elapsed = now
            .saturating_duration_since(creations.refilled)
            .as_millis() as u64;
        creations.refilled = creations.refilled.max(now);
        let full = rate * CREATION_BURST_SECONDS * 1000;
        creations.millis = (creations.millis + rate.saturating_mul(elapsed)).min(full);
        if creations.millis < 1000 {
            self.topics_refused.fetch_add(1, Relaxed);
            return false;
        }
        creations.millis -= 1000;
        true
    }

    /// The limits it was made with.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The epoch that this hub's `seq`s belong to.
    pub fn epoch(&self) -> Epoch {
        Epoch::new(self.epoch.load(Relaxed))
    }

    /// Fed hub: the upstream's numbering started over as `epoch`.
    pub fn set_epoch(&self, epoch: Epoch) {
        self.epoch.store(epoch.value(), Relaxed);
    }

    /// Whether an upstream numbers the messages.
    pub fn is_fed(&self) -> bool {
        self.upstream.is_some()
    }

    /// Adds `reactor` to `topic`'s reactor set and reads, in the same critical section, the
    /// current `seq` (and what `resume` missed, up to `replay_bytes` of it): every later
    /// publish reaches the reactor, and every earlier one is at or below the returned `seq`.
    /// `new` counts one more subscriber. In a fed hub a topic that is not live answers
    /// [`Error::Pending`] (see the module docs). Subscribing is a client's act: creating the
    /// topic draws on `client_topic_rate`.
    pub(crate) fn join(
        &self,
        topic: &str,
        reactor: usize,
        resume: Option<&Resume>,
        new: bool,
        replay_bytes: usize,
        now: Instant,
    ) -> Result<(u64, Option<Recovery>), Error> {
        self.get_or_create(topic, true, now, |name, state| {
            if !state.live {
                if state.reactors == 0 && state.waiting == 0 {
                    self.tell(Interest::Join(name.clone()));
                }
                state.waiting |= bit(reactor);
                return Err(Error::Pending);
            }
            state.reactors |= bit(reactor);
            state.waiting &= !bit(reactor);
            state.subscribers += u64::from(new);
            let recovery = resume.map(|resume| {
                self.expire(state, now);
                self.recover(&state.history, state.seq, resume, replay_bytes)
            });
            Ok((state.seq, recovery))
        })?
    }

    /// One subscriber of `topic` on `reactor` left; with `last`, the reactor's last one.
    pub(crate) fn leave(&self, topic: &str, reactor: usize, last: bool) {
        // A topic already swept has no reactor to remove.
        let _ = self.existing(topic, |name, state| {
            state.subscribers = state.subscribers.saturating_sub(1);
            if last {
                state.reactors &= !bit(reactor);
                self.release(name, state);
            }
        });
    }

    /// `reactor` no longer waits for `topic` (its waiting subscribers left before it was live).
    pub(crate) fn cancel_wait(&self, topic: &str, reactor: usize) {
        let _ = self.existing(topic, |name, state| {
            state.waiting &= !bit(reactor);
            self.release(name, state);
        });
    }

    /// What a subscriber resuming from `resume` missed on `topic`, without subscribing.
    pub fn since(&self, topic: &str, resume: &Resume, now: Instant) -> Recovery {
        self.replay(topic, resume, usize::MAX, now).0
    }

    /// What a subscriber resuming from `resume` missed on `topic`, up to `max_bytes` of it (at
    /// least one message), and the topic's `seq` as of the same moment: the next slice of a
    /// replay is asked for from the last message of this one, and when one is `complete` the
    /// subscriber has everything up to that `seq`.
    pub fn replay(
        &self,
        topic: &str,
        resume: &Resume,
        max_bytes: usize,
        now: Instant,
    ) -> (Recovery, u64) {
        let found = self.existing(topic, |_, state| {
            self.expire(state, now);
            let recovery = self.recover(&state.history, state.seq, resume, max_bytes);
            (recovery, state.seq)
        });
        // A topic that does not exist has no history, and its `seq` would start at the floor.
        found.unwrap_or_else(|_| {
            let floor = self.seq_floor.load(Relaxed);
            let recovery = self.recover(&History::default(), floor, resume, max_bytes);
            (recovery, floor)
        })
    }

    /// Whether `topics` fit under `max_topics` now: the ones that do not exist yet, added to the
    /// topics alive, do not go past it. A look, not a reservation: topics created meanwhile
    /// (on other reactors) can still fill the table before a subscribe creates these, which
    /// then answers [`Error::TooManyTopics`] as always.
    pub fn has_room_for<'t>(&self, topics: impl IntoIterator<Item = &'t str>) -> bool {
        let new = topics
            .into_iter()
            .filter(|topic| !self.exists(topic))
            .count();
        new == 0 || self.topics.load(Relaxed).saturating_add(new) <= self.config.max_topics
    }

    /// Local subscribers of `topic`, all reactors together.
    pub fn subscribers(&self, topic: &str) -> u64 {
        self.existing(topic, |_, state| state.subscribers)
            .unwrap_or(0)
    }

    /// Every topic with local subscribers, and how many.
    pub fn subscriber_counts(&self) -> Vec<(Arc<str>, u64)> {
        self.collect(|name, state| {
            (state.subscribers != 0).then(|| (name.clone(), state.subscribers))
        })
    }

    /// Every topic's name, local subscribers and current `seq` (its messages so far: a rate
    /// is the difference of two calls). One pass over the table, each topic's lock taken once.
    pub fn topic_counts(&self) -> Vec<TopicCount> {
        self.collect(|name, state| {
            Some(TopicCount {
                name: name.clone(),
                subscribers: state.subscribers,
                seq: state.seq,
            })
        })
    }

    /// Current numbers.
    pub fn stats(&self) -> HubStats {
        HubStats {
            topics: self.topics.load(Relaxed) as u64,
            published: self.published.load(Relaxed),
            history_messages: self.history_messages.load(Relaxed),
            history_bytes: self.history_bytes.load(Relaxed),
            history_evicted: self.history_evicted.load(Relaxed),
            topics_with_history: self.topics_with_history.load(Relaxed),
            topics_refused: self.topics_refused.load(Relaxed),
        }
    }
}

/// Seconds of `client_topic_rate` that may be spent at once after a quiet spell.
const CREATION_BURST_SECONDS: u64 = 10;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Format, Payload};

    pub(super) const EPOCH: Epoch = Epoch::new(0xfeed);
    /// No budget on a replay: everything at once.
    pub(super) const ALL: usize = usize::MAX;

    pub(super) fn hub(config: HubConfig) -> Hub {
        Hub::new(config, EPOCH)
    }

    pub(super) fn publish(hub: &Hub, topic: &str, body: &str, now: Instant) -> u64 {
        hub.publish_with(
            topic,
            Payload::new(Format::Text, body.as_bytes()),
            now,
            |m, _| m.seq(),
        )
        .unwrap()
    }

    pub(super) fn resume(since: u64) -> Resume {
        Resume {
            since,
            epoch: Some(EPOCH),
        }
    }

    pub(super) fn seqs(recovery: &Recovery) -> Vec<u64> {
        recovery.messages.iter().map(|m| m.seq()).collect()
    }

    #[test]
    fn topic_counts_give_each_topic_s_seq() {
        let hub = hub(HubConfig::default());
        let now = Instant::now();
        for topic in ["a", "b", "a"] {
            publish(&hub, topic, "x", now);
        }
        let mut counts: Vec<(String, u64, u64)> = hub
            .topic_counts()
            .into_iter()
            .map(|c| (c.name.to_string(), c.subscribers, c.seq))
            .collect();
        counts.sort();
        assert_eq!(counts, [("a".into(), 0, 2), ("b".into(), 0, 1)]);
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
            epoch: Some(Epoch::new(1)),
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
        assert!(matches!(
            hub.join("t", 3, None, true, ALL, now),
            Ok((0, None))
        ));
        hub.join("t", 63, None, true, ALL, now).unwrap();
        hub.join("t", 64, None, true, ALL, now).unwrap(); // out of range: no bit
        let reactors = hub
            .publish_with("t", Payload::new(Format::Binary, b""), now, |_, r| r)
            .unwrap();
        assert_eq!(reactors.iter().collect::<Vec<_>>(), [3, 63]);
        assert!(reactors.contains(3) && !reactors.contains(4) && !reactors.contains(99));
        hub.leave("t", 3, true);
        hub.leave("gone", 3, true);
        let reactors = hub
            .publish_with("t", Payload::new(Format::Binary, b""), now, |_, r| r)
            .unwrap();
        assert_eq!(reactors.iter().collect::<Vec<_>>(), [63]);
        let (seq, recovery) = hub.join("t", 0, Some(&resume(1)), true, ALL, now).unwrap();
        assert_eq!(seq, 2);
        assert_eq!(seqs(&recovery.unwrap()), [2]);
    }
}
