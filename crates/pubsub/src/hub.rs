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
//! them, or resets the topic to the upstream's numbering ([`Post::Reset`]).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crossbeam_channel::Sender;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Error;
use super::history::{Change, History, Limits, Recovery};
use super::message::{Message, Payload, Post};

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

/// Tells `state`'s reactors that the topic now stands at `state.seq` in the upstream's numbering.
fn post_reset(name: &Arc<str>, state: &TopicState, send: &mut impl FnMut(Post, Reactors)) {
    let reset = Post::Reset {
        topic: name.clone(),
        seq: state.seq,
    };
    send(reset, Reactors(state.reactors));
}

/// The bit of reactor `index`; none for an index out of range.
fn bit(index: usize) -> u64 {
    u32::try_from(index)
        .ok()
        .and_then(|i| 1u64.checked_shl(i))
        .unwrap_or(0)
}

/// What a fed hub asks of its upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interest {
    /// A reactor wants `topic`, which is not live: feed it and call [`Hub::sync`].
    Join(Arc<str>),
    /// No reactor wants `topic` any more: stop feeding it.
    Leave(Arc<str>),
}

/// What [`Hub::deliver`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// Numbered right after the topic's `seq`: recorded and sent.
    Sent,
    /// At or below the topic's `seq`: already delivered, ignored.
    Duplicate,
    /// Above `have + 1`: the messages between are missing. Nothing was done; deliver them first
    /// (or this one with `accept_gap`).
    Gap {
        /// The topic's `seq`.
        have: u64,
    },
    /// This node's own provisional message, numbered as it was: already sent, not again.
    Confirmed,
    /// Nobody here wants the topic (or it is not synced yet): ignored.
    NotLive,
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
    /// Fed hub: the last `seq` the upstream numbered; the ones above it up to `seq` are this
    /// node's provisional messages.
    confirmed: u64,
    /// Reactors with at least one local subscriber (bit `i` for reactor `i`).
    reactors: u64,
    /// Fed hub: reactors with a subscribe waiting for the topic to become live.
    waiting: u64,
    /// `seq` and history are current: always in a numbering hub, while fed in a fed one.
    live: bool,
    /// Local subscribers, all reactors together.
    subscribers: u64,
    history: History,
}

type Shard = RwLock<HashMap<Arc<str>, Mutex<TopicState>>>;

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
}

impl Hub {
    /// An empty hub that numbers messages itself, for a server run of `epoch`.
    pub fn new(config: HubConfig, epoch: Epoch) -> Hub {
        Hub::build(config, epoch, None)
    }

    /// An empty hub fed by an upstream, which receives the hub's [`Interest`]s on `upstream` and
    /// sets the epoch with [`Hub::set_epoch`].
    pub fn fed(config: HubConfig, upstream: Sender<Interest>) -> Hub {
        Hub::build(config, Epoch(0), Some(upstream))
    }

    fn build(config: HubConfig, epoch: Epoch, upstream: Option<Sender<Interest>>) -> Hub {
        Hub {
            epoch: AtomicU64::new(epoch.0),
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
        }
    }

    /// The limits it was made with.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The epoch that this hub's `seq`s belong to.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Relaxed))
    }

    /// Fed hub: the upstream's numbering started over as `epoch`.
    pub fn set_epoch(&self, epoch: Epoch) {
        self.epoch.store(epoch.0, Relaxed);
    }

    /// Whether an upstream numbers the messages.
    pub fn is_fed(&self) -> bool {
        self.upstream.is_some()
    }

    /// Publishes `payload` to `topic` (created if new): assigns the next `seq`, appends to
    /// history, then calls `send` with the message and the reactors that have subscribers of
    /// the topic, all under the topic's lock. Whatever `send` enqueues is therefore in `seq`
    /// order; keep it to enqueueing (wake the reactors after this returns). A fed hub leaves
    /// numbering to its upstream: publish there instead.
    pub fn publish_with<R>(
        &self,
        topic: &str,
        payload: Payload,
        now: Instant,
        send: impl FnOnce(&Arc<Message>, Reactors) -> R,
    ) -> Result<R, Error> {
        self.get_or_create(topic, |name, state| {
            state.seq += 1;
            let message = Arc::new(Message::new(name.clone(), state.seq, now, payload));
            self.record(state, &message);
            send(&message, Reactors(state.reactors))
        })
    }

    /// Fed hub, upstream unreachable: delivers a local publish here at once. If `topic` is live
    /// here, the message takes the topic's next `seq` *provisionally* (recorded and sent like
    /// [`Hub::publish_with`]) until the upstream numbers it: [`Hub::deliver`] then confirms it
    /// (same number: not sent again) or, if the upstream numbered it otherwise, resets the
    /// topic's subscribers to the upstream's numbering. `send` gets the message (`None` when the
    /// topic is not live here: nobody to deliver to) and the reactors, under the topic's lock, so
    /// that the caller can queue the publish upstream in provisional order.
    pub fn publish_provisional<R>(
        &self,
        topic: &str,
        payload: Payload,
        now: Instant,
        send: impl FnOnce(Option<&Arc<Message>>, Reactors) -> R,
    ) -> R {
        let found = self.existing(topic, |name, state| {
            if !state.live || state.reactors == 0 {
                return None;
            }
            state.seq += 1;
            let message = Arc::new(Message::new(name.clone(), state.seq, now, payload));
            self.record(state, &message);
            Some((message, Reactors(state.reactors)))
        });
        match found {
            Ok(Some((message, reactors))) => send(Some(&message), reactors),
            _ => send(None, Reactors::default()),
        }
    }

    /// Fed hub: takes `message`, numbered upstream, if it is the next of its live topic; sends it
    /// like [`Hub::publish_with`] (as a [`Post`]). With `accept_gap` a message past a gap is taken
    /// too (the history restarts at it, so it stays contiguous). A topic that has provisional
    /// messages ([`Hub::publish_provisional`]) confirms them one by one as they come back with
    /// the same numbers; at the first that does not, it sends its reactors [`Post::Reset`] and
    /// takes the upstream's numbering.
    pub fn deliver(
        &self,
        message: Arc<Message>,
        accept_gap: bool,
        mut send: impl FnMut(Post, Reactors),
    ) -> Delivered {
        let topic = message.topic.clone();
        let result = self.existing(&topic, |name, state| {
            if !state.live {
                return Delivered::NotLive;
            }
            self.take(name, state, message, accept_gap, &mut send)
        });
        result.unwrap_or(Delivered::NotLive)
    }

    /// [`Hub::deliver`] under the topic's lock.
    fn take(
        &self,
        name: &Arc<str>,
        state: &mut TopicState,
        message: Arc<Message>,
        accept_gap: bool,
        send: &mut impl FnMut(Post, Reactors),
    ) -> Delivered {
        let seq = message.seq;
        if seq <= state.confirmed {
            return Delivered::Duplicate;
        }
        let next = seq == state.confirmed + 1;
        if !next && !accept_gap {
            return Delivered::Gap {
                have: state.confirmed,
            };
        }
        if state.seq > state.confirmed {
            if next && message.provisional == seq {
                state.confirmed = seq;
                return Delivered::Confirmed;
            }
            self.rewind(name, state, send);
        }
        if !next {
            let change = state.history.clear();
            self.account(change);
        }
        state.seq = seq;
        state.confirmed = seq;
        self.record(state, &message);
        send(Post::Message(message), Reactors(state.reactors));
        Delivered::Sent
    }

    /// Drops the provisional messages (the upstream numbered them otherwise) and tells the
    /// reactors that their subscribers' view above the last confirmed `seq` is void.
    fn rewind(
        &self,
        name: &Arc<str>,
        state: &mut TopicState,
        send: &mut impl FnMut(Post, Reactors),
    ) {
        let change = state.history.truncate_after(state.confirmed);
        self.account(change);
        state.seq = state.confirmed;
        post_reset(name, state, send);
    }

    /// Fed hub: the upstream's view of `topic`, with `seq` its latest number and `recent` its
    /// latest messages in `seq` order. A topic that is not live takes them as its history and
    /// goes live; a live one (after the upstream reconnected) takes the messages it missed as
    /// [`Hub::deliver`] would. With `replace` (the upstream's numbering started over), a `seq`
    /// below what the topic took, or `recent` messages that differ from the ones the topic took
    /// under the same `seq` (the upstream went back to an older copy, or to a replica that had
    /// not got them all), a live topic is reset like a new one, and its reactors are sent
    /// [`Post::Reset`]. Returns the reactors
    /// waiting for the topic: tell them it is ready.
    pub fn sync(
        &self,
        topic: &str,
        seq: u64,
        recent: Vec<Arc<Message>>,
        replace: bool,
        mut send: impl FnMut(Post, Reactors),
    ) -> Reactors {
        let result = self.existing(topic, |name, state| {
            if state.reactors == 0 && state.waiting == 0 {
                return Reactors::default();
            }
            // A Redis restored from an older copy, or a replica promoted before it had this
            // node's latest messages (same epoch), numbers below what this node took, or holds
            // other messages under those numbers: waiting for it to catch up would drop its new
            // messages as duplicates, or keep messages it no longer has.
            let renumbered =
                replace || seq < state.confirmed || state.history.differs(&recent, state.confirmed);
            if state.live && !renumbered {
                for message in recent {
                    if message.seq > state.confirmed {
                        self.take(name, state, message, true, &mut send);
                    }
                }
                if seq > state.confirmed {
                    // The log no longer holds what the upstream numbered since: a gap.
                    if state.seq > state.confirmed {
                        self.rewind(name, state, &mut send);
                    }
                    let change = state.history.clear();
                    self.account(change);
                    state.seq = seq;
                    state.confirmed = seq;
                }
            } else {
                let change = state.history.clear();
                self.account(change);
                for message in recent {
                    let change = state.history.push(message, &self.limits);
                    self.account(change);
                }
                state.seq = seq;
                state.confirmed = seq;
                if state.live {
                    post_reset(name, state, &mut send);
                }
            }
            state.live = true;
            Reactors(state.waiting)
        });
        result.unwrap_or_default()
    }

    /// Fed hub: whether some reactor wants `topic` (`None` if not), and if so whether it is live.
    pub fn wants(&self, topic: &str) -> Option<bool> {
        let found = self.existing(topic, |_, state| {
            (state.reactors != 0 || state.waiting != 0).then_some(state.live)
        });
        found.ok().flatten()
    }

    /// The topics some reactor wants (subscribed or waiting).
    pub fn wanted(&self) -> Vec<Arc<str>> {
        self.collect(|state| state.reactors != 0 || state.waiting != 0)
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    /// Local subscribers of `topic`, all reactors together.
    pub fn subscribers(&self, topic: &str) -> u64 {
        self.existing(topic, |_, state| state.subscribers)
            .unwrap_or(0)
    }

    /// Every topic with local subscribers, and how many.
    pub fn subscriber_counts(&self) -> Vec<(Arc<str>, u64)> {
        self.collect(|state| state.subscribers != 0)
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

    /// Name and subscriber count of the topics that pass `filter`.
    fn collect(&self, filter: impl Fn(&TopicState) -> bool) -> Vec<(Arc<str>, u64)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let map = shard.read().unwrap_or_else(PoisonError::into_inner);
            for (name, cell) in map.iter() {
                let state = cell.lock().unwrap_or_else(PoisonError::into_inner);
                if filter(&state) {
                    out.push((name.clone(), state.subscribers));
                }
            }
        }
        out
    }

    /// Appends `message` (the topic's new `seq`) to history and counts it.
    fn record(&self, state: &mut TopicState, message: &Arc<Message>) {
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
                let idle = state.reactors == 0 && state.waiting == 0 && state.history.is_empty();
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
    /// every earlier one is at or below the returned `seq`. `new` counts one more subscriber.
    /// In a fed hub a topic that is not live answers [`Error::Pending`] (see the module docs).
    pub(super) fn join(
        &self,
        topic: &str,
        reactor: usize,
        resume: Option<&Resume>,
        new: bool,
        now: Instant,
    ) -> Result<(u64, Option<Recovery>), Error> {
        self.get_or_create(topic, |name, state| {
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
                self.recover(&state.history, state.seq, resume)
            });
            Ok((state.seq, recovery))
        })?
    }

    /// One subscriber of `topic` on `reactor` left; with `last`, the reactor's last one.
    pub(super) fn leave(&self, topic: &str, reactor: usize, last: bool) {
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
    pub(super) fn cancel_wait(&self, topic: &str, reactor: usize) {
        let _ = self.existing(topic, |name, state| {
            state.waiting &= !bit(reactor);
            self.release(name, state);
        });
    }

    /// Fed hub: a topic nobody wants any more stops being live and tells the upstream.
    fn release(&self, name: &Arc<str>, state: &mut TopicState) {
        if self.upstream.is_none() || state.reactors != 0 || state.waiting != 0 {
            return;
        }
        if state.live {
            state.live = false;
            let change = state.history.clear();
            self.account(change);
        }
        self.tell(Interest::Leave(name.clone()));
    }

    fn tell(&self, interest: Interest) {
        if let Some(upstream) = &self.upstream {
            // Fails only once the upstream is gone; there is nobody to tell then.
            let _ = upstream.send(interest);
        }
    }

    fn recover(&self, history: &History, current: u64, resume: &Resume) -> Recovery {
        if resume.epoch == Some(self.epoch()) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Format;
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
        assert!(matches!(hub.join("t", 3, None, true, now), Ok((0, None))));
        hub.join("t", 63, None, true, now).unwrap();
        hub.join("t", 64, None, true, now).unwrap(); // out of range: no bit
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
        let (seq, recovery) = hub.join("t", 0, Some(&resume(1)), true, now).unwrap();
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
        hub.join("b", 0, None, true, now).unwrap();
        let full = hub.publish_with("c", Payload::new(Format::Text, b""), now, |_, _| ());
        assert_eq!(full, Err(Error::TooManyTopics));
        assert!(matches!(
            hub.join("c", 0, None, true, now),
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

    fn numbered(topic: &str, seq: u64) -> Arc<Message> {
        let payload = Payload::new(Format::Text, format!("{seq}").as_bytes());
        Arc::new(Message::new(Arc::from(topic), seq, Instant::now(), payload))
    }

    fn seq_of(post: &Post) -> u64 {
        match post {
            Post::Message(m) => m.seq(),
            other => panic!("not a message: {other:?}"),
        }
    }

    /// What a fed hub sent, as text: `5` for a message, `reset 4` for a reset.
    fn posts(sent: &[Post]) -> Vec<String> {
        sent.iter()
            .map(|post| match post {
                Post::Message(m) => m.seq().to_string(),
                Post::Reset { seq, .. } => format!("reset {seq}"),
                Post::Ready(topic) => format!("ready {topic}"),
            })
            .collect()
    }

    /// A fed hub with topic `t` live at `seq` 5 for reactor 0.
    fn live_fed_hub() -> Hub {
        let (tx, _interest) = crossbeam_channel::unbounded();
        let hub = Hub::fed(HubConfig::default(), tx);
        hub.set_epoch(EPOCH);
        let now = Instant::now();
        assert!(hub.join("t", 0, None, true, now).is_err());
        let recent = (1..=5).map(|seq| numbered("t", seq)).collect();
        hub.sync("t", 5, recent, false, |_, _| ());
        hub.join("t", 0, None, true, now).unwrap();
        hub
    }

    /// Publishes `count` messages provisionally; returns their `seq`s.
    fn provisional(hub: &Hub, topic: &str, count: usize) -> Vec<u64> {
        let now = Instant::now();
        (0..count)
            .map(|_| {
                let payload = Payload::new(Format::Text, b"mine");
                hub.publish_provisional(topic, payload, now, |m, r| {
                    let expected: &[usize] = if m.is_some() { &[0] } else { &[] };
                    assert_eq!(r.iter().collect::<Vec<_>>(), expected);
                    m.map_or(0, |m| m.seq())
                })
            })
            .collect()
    }

    fn own(seq: u64, provisional: u64) -> Arc<Message> {
        let payload = Payload::new(Format::Text, b"mine");
        let message = Message::new(Arc::from("t"), seq, Instant::now(), payload);
        Arc::new(message.provisional_here(provisional))
    }

    #[test]
    fn provisional_messages_confirmed_with_their_numbers_are_not_sent_again() {
        let hub = live_fed_hub();
        assert_eq!(provisional(&hub, "t", 2), [6, 7]);
        assert_eq!(provisional(&hub, "not-live", 1), [0]);
        let (_, recovery) = hub
            .join("t", 0, Some(&resume(5)), false, Instant::now())
            .unwrap();
        assert_eq!(
            seqs(&recovery.unwrap()),
            [6, 7],
            "history has them meanwhile"
        );
        let mut sent = Vec::new();
        let arrivals = [own(6, 6), own(6, 6), own(7, 7), numbered("t", 8)];
        let outcomes: Vec<Delivered> = arrivals
            .into_iter()
            .map(|m| hub.deliver(m, false, |p, _| sent.push(p)))
            .collect();
        use Delivered::{Confirmed, Duplicate, Sent};
        assert_eq!(outcomes, [Confirmed, Duplicate, Confirmed, Sent]);
        assert_eq!(posts(&sent), ["8"]);
        assert_eq!(seqs(&hub.since("t", &resume(5), Instant::now())), [6, 7, 8]);
    }

    #[test]
    fn another_node_s_message_in_the_provisional_range_resets_to_the_upstream_numbering() {
        let hub = live_fed_hub();
        assert_eq!(provisional(&hub, "t", 3), [6, 7, 8]);
        // 6 is ours as numbered; 7 is another node's; ours come back as 8 and 9, the last one
        // numbered 8 here.
        let mut sent = Vec::new();
        let arrivals = [own(6, 6), numbered("t", 7), own(8, 7), own(9, 8)];
        let outcomes: Vec<Delivered> = arrivals
            .into_iter()
            .map(|m| hub.deliver(m, false, |p, _| sent.push(p)))
            .collect();
        use Delivered::{Confirmed, Sent};
        assert_eq!(outcomes, [Confirmed, Sent, Sent, Sent]);
        assert_eq!(posts(&sent), ["reset 6", "7", "8", "9"]);
        let replay = hub.since("t", &resume(5), Instant::now());
        assert_eq!(seqs(&replay), [6, 7, 8, 9]);
        assert_eq!(
            replay.messages[1].payload().bytes(),
            b"7",
            "the upstream's 7"
        );
        // A provisional publish after the reset continues from the upstream's numbering.
        assert_eq!(provisional(&hub, "t", 1), [10]);
    }

    #[test]
    fn a_sync_after_reconnecting_confirms_or_resets_like_live_delivery() {
        let hub = live_fed_hub();
        assert_eq!(provisional(&hub, "t", 2), [6, 7]);
        let mut sent = Vec::new();
        // Redis has our 6, then another node's 7 and 8.
        let recent = vec![
            numbered("t", 5),
            own(6, 6),
            numbered("t", 7),
            numbered("t", 8),
        ];
        hub.sync("t", 8, recent, false, |p, _| sent.push(p));
        assert_eq!(posts(&sent), ["reset 6", "7", "8"]);
        // Our 7 comes back later as 9: sent (envelope subscribers were told to expect it).
        sent.clear();
        assert_eq!(
            hub.deliver(own(9, 7), false, |p, _| sent.push(p)),
            Delivered::Sent
        );
        assert_eq!(posts(&sent), ["9"]);

        // Redis lost its data: live topics restart at its numbering, and say so.
        sent.clear();
        hub.sync(
            "t",
            2,
            vec![numbered("t", 1), numbered("t", 2)],
            true,
            |p, _| sent.push(p),
        );
        assert_eq!(posts(&sent), ["reset 2"]);
        assert_eq!(provisional(&hub, "t", 1), [3]);

        // Redis came back from an older copy, same epoch: its numbering wins, or its next
        // messages would be taken for duplicates.
        sent.clear();
        hub.sync("t", 1, vec![numbered("t", 1)], false, |p, _| sent.push(p));
        assert_eq!(posts(&sent), ["reset 1"]);
        assert_eq!(
            hub.deliver(numbered("t", 2), false, |p, _| sent.push(p)),
            Delivered::Sent
        );
    }

    #[test]
    fn a_sync_that_finds_other_messages_under_taken_numbers_resets() {
        // The node took 1..=5 from a master that failed before its replica had 4 and 5; the
        // promoted replica numbered other publishes 4, 5 and 6 since.
        let hub = live_fed_hub();
        let other = |seq: u64| {
            let payload = Payload::new(Format::Text, format!("other {seq}").as_bytes());
            Arc::new(Message::new(Arc::from("t"), seq, Instant::now(), payload))
        };
        let mut sent = Vec::new();
        let recent = vec![numbered("t", 3), other(4), other(5), other(6)];
        hub.sync("t", 6, recent, false, |p, _| sent.push(p));
        assert_eq!(posts(&sent), ["reset 6"]);
        let replay = hub.since("t", &resume(3), Instant::now());
        assert_eq!(seqs(&replay), [4, 5, 6]);
        assert_eq!(replay.messages[0].payload().bytes(), b"other 4");

        // The same messages again (a reconnection to the same copy): nothing to do.
        sent.clear();
        let recent = vec![numbered("t", 3), other(4), other(5), other(6), other(7)];
        hub.sync("t", 7, recent, false, |p, _| sent.push(p));
        assert_eq!(posts(&sent), ["7"]);
    }

    /// What the model of a node and its upstream can do next.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        /// The node publishes while its link is down: delivered here at once, queued upstream.
        Provisional,
        /// Another node's publish reaches the upstream.
        Foreign,
        /// The node's oldest queued publish reaches the upstream.
        Flush,
        /// The upstream's next message reaches the node.
        Deliver,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Step::Provisional),
            Just(Step::Foreign),
            Just(Step::Flush),
            Just(Step::Deliver)
        ]
    }

    proptest::proptest! {
        /// Whatever the interleaving of provisional publishes, other nodes' publishes and
        /// deliveries, an envelope subscriber that applies resets ends with exactly the upstream's
        /// sequence, and a raw subscriber gets every message exactly once.
        #[test]
        fn provisional_delivery_converges_on_the_upstream_sequence(
            steps in proptest::collection::vec(step(), 0..60)
        ) {
            let hub = live_fed_hub();
            let mut posts: Vec<Post> = Vec::new();
            let mut queued: std::collections::VecDeque<(String, u64)> = Default::default();
            let mut upstream: Vec<(String, u64)> = Vec::new(); // payload, provisional seq if ours
            let (mut delivered, mut published) = (0, 0);
            let deliver = |hub: &Hub, upstream: &[(String, u64)], at: usize, posts: &mut Vec<Post>| {
                let (body, provisional) = &upstream[at];
                let payload = Payload::new(Format::Text, body.as_bytes());
                let seq = 5 + at as u64 + 1;
                let message = Message::new(Arc::from("t"), seq, Instant::now(), payload);
                let outcome = hub.deliver(
                    Arc::new(message.provisional_here(*provisional)),
                    false,
                    |p, _| posts.push(p),
                );
                assert!(!matches!(outcome, Delivered::Gap { .. } | Delivered::NotLive));
            };
            let all = steps.into_iter().chain(std::iter::repeat_n(Step::Flush, 60));
            for step in all.chain(std::iter::repeat_n(Step::Deliver, 200)) {
                match step {
                    Step::Provisional => {
                        published += 1;
                        let body = format!("own-{published}");
                        let payload = Payload::new(Format::Text, body.as_bytes());
                        hub.publish_provisional("t", payload, Instant::now(), |m, _| {
                            let m = m.expect("t is live");
                            queued.push_back((body.clone(), m.seq()));
                            posts.push(Post::Message(m.clone()));
                        });
                    }
                    Step::Foreign => upstream.push((format!("foreign-{}", upstream.len()), 0)),
                    Step::Flush => upstream.extend(queued.pop_front()),
                    Step::Deliver if delivered < upstream.len() => {
                        deliver(&hub, &upstream, delivered, &mut posts);
                        delivered += 1;
                    }
                    Step::Deliver => {}
                }
            }
            let expected: Vec<(u64, String)> = upstream
                .iter()
                .enumerate()
                .map(|(at, (body, _))| (5 + at as u64 + 1, body.clone()))
                .collect();
            let mut view: Vec<(u64, String)> = Vec::new();
            let mut raw: Vec<String> = Vec::new();
            for post in &posts {
                match post {
                    Post::Message(m) => {
                        let body = String::from_utf8(m.payload().bytes().to_vec()).unwrap();
                        proptest::prop_assert!(view.last().is_none_or(|(last, _)| *last < m.seq()));
                        view.push((m.seq(), body.clone()));
                        if m.provisional() == 0 {
                            raw.push(body);
                        }
                    }
                    Post::Reset { seq, .. } => view.retain(|(s, _)| s <= seq),
                    Post::Ready(_) => {}
                }
            }
            proptest::prop_assert_eq!(&view, &expected);
            raw.sort();
            let mut all: Vec<String> = upstream.into_iter().map(|(body, _)| body).collect();
            all.sort();
            proptest::prop_assert_eq!(raw, all);
        }
    }

    #[test]
    fn a_fed_hub_waits_for_sync_then_takes_each_seq_once_in_order() {
        let (tx, interest) = crossbeam_channel::unbounded();
        let hub = Hub::fed(HubConfig::default(), tx);
        hub.set_epoch(EPOCH);
        let now = Instant::now();
        assert!(hub.is_fed());
        assert!(matches!(
            hub.join("t", 1, None, true, now),
            Err(Error::Pending)
        ));
        assert!(matches!(
            hub.join("t", 2, None, true, now),
            Err(Error::Pending)
        ));
        assert_eq!(
            interest.try_iter().collect::<Vec<_>>(),
            [Interest::Join("t".into())]
        );
        assert_eq!(hub.wants("t"), Some(false));
        assert_eq!(
            hub.deliver(numbered("t", 4), false, |_, _| ()),
            Delivered::NotLive
        );
        assert_eq!(
            provisional(&hub, "t", 1),
            [0],
            "not live: nobody to deliver to"
        );

        // Synced at seq 5 with 4 and 5 in the log: the waiting reactors are told.
        let recent = vec![numbered("t", 4), numbered("t", 5)];
        let waiting = hub.sync("t", 5, recent, false, |_, _| panic!("nothing live yet"));
        assert_eq!(waiting.iter().collect::<Vec<_>>(), [1, 2]);
        let (seq, recovery) = hub.join("t", 1, Some(&resume(3)), true, now).unwrap();
        assert_eq!((seq, seqs(&recovery.unwrap())), (5, vec![4, 5]));
        assert_eq!(hub.subscribers("t"), 1);

        let mut sent = Vec::new();
        let mut take = |p: Post, r: Reactors| sent.push((seq_of(&p), r));
        assert_eq!(
            hub.deliver(numbered("t", 5), false, &mut take),
            Delivered::Duplicate
        );
        assert_eq!(
            hub.deliver(numbered("t", 6), false, &mut take),
            Delivered::Sent
        );
        assert_eq!(
            hub.deliver(numbered("t", 9), false, &mut take),
            Delivered::Gap { have: 6 }
        );
        assert_eq!(
            hub.deliver(numbered("t", 9), true, &mut take),
            Delivered::Sent
        );
        assert_eq!(sent.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [6, 9]);
        assert!(
            sent.iter()
                .all(|(_, r)| r.iter().collect::<Vec<_>>() == [1])
        );
        // History restarted at the gap, so it stays contiguous.
        assert!(!hub.since("t", &resume(6), now).recovered);
        assert_eq!(seqs(&hub.since("t", &resume(8), now)), [9]);

        // Reconnected: the sync sends what was missed, after the hub's seq only.
        let recent = vec![numbered("t", 9), numbered("t", 10), numbered("t", 11)];
        let mut caught_up = Vec::new();
        hub.sync("t", 11, recent, false, |p, _| caught_up.push(seq_of(&p)));
        assert_eq!(caught_up, [10, 11]);

        // Reactor 2 never subscribed after all; reactor 1's subscriber leaves: released.
        hub.cancel_wait("t", 2);
        assert!(interest.try_recv().is_err(), "reactor 1 still wants it");
        hub.leave("t", 1, true);
        assert_eq!(interest.try_recv(), Ok(Interest::Leave("t".into())));
        assert_eq!(hub.wants("t"), None);
        assert_eq!(hub.subscribers("t"), 0);
        assert_eq!(hub.sweep(now), 1, "a released topic keeps no history");
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
