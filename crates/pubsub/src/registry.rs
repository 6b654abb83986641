//! One reactor's topics: topic name to local subscriber ids, kept so that fanout walks a plain
//! slice and an idle subscription costs a few dozen bytes.
//!
//! Per subscription the registry holds a 4-byte id in the topic's member list and an entry in
//! the topic's position index (what makes unsubscribe O(1)); the connection holds a
//! [`Subscriptions`] (16 bytes, no allocation for its first topic). Connection ids are stored as
//! `u32`: a reactor's slab never comes near 2³² entries, and halving them halves the registry.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use slab::Slab;

use super::Error;
use super::epoch::Resume;
use super::history::Recovery;
use super::hub::Hub;
use super::message::Message;
use super::reactors::MAX_REACTORS;

/// A handle on a topic in one reactor's [`Registry`], valid while the connection holding it is
/// subscribed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicId(NonZeroU32);

impl TopicId {
    fn from_key(key: usize) -> Result<TopicId, Error> {
        u32::try_from(key)
            .ok()
            .and_then(|k| NonZeroU32::new(k.wrapping_add(1)))
            .map(TopicId)
            .ok_or(Error::IdOverflow)
    }

    fn key(self) -> usize {
        self.0.get() as usize - 1
    }
}

/// The topics one connection is subscribed to, kept by the connection: 16 bytes, and no
/// allocation until a second topic.
#[derive(Debug, Default)]
pub struct Subscriptions {
    first: Option<TopicId>,
    #[expect(
        clippy::box_collection,
        reason = "one pointer instead of a Vec's three words keeps every connection 16 bytes smaller"
    )]
    more: Option<Box<Vec<TopicId>>>,
}

impl Subscriptions {
    /// How many topics (to enforce a per-connection maximum before subscribing).
    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.more.as_ref().map_or(0, |more| more.len())
    }

    /// No topic at all.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// The topics, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = TopicId> + '_ {
        self.first
            .into_iter()
            .chain(self.more.iter().flat_map(|more| more.iter().copied()))
    }

    fn insert(&mut self, id: TopicId) {
        match self.first {
            None => self.first = Some(id),
            Some(_) => self.more.get_or_insert_default().push(id),
        }
    }

    fn remove(&mut self, id: TopicId) {
        if self.first == Some(id) {
            // Refill `first` from the tail so `first` is empty only when everything is.
            self.first = self.more.as_mut().and_then(|more| more.pop());
        } else if let Some(more) = self.more.as_mut()
            && let Some(at) = more.iter().position(|&other| other == id)
        {
            more.swap_remove(at);
        }
        if self.more.as_ref().is_some_and(|more| more.is_empty()) {
            self.more = None;
        }
    }
}

/// A subscription the registry accepted.
#[derive(Debug)]
pub struct Subscribed {
    /// The topic's handle in this registry.
    pub topic: TopicId,
    /// The topic's `seq` when the subscription took effect: the subscriber gets every message
    /// after it, live, and none at or below it (history covers those).
    pub seq: u64,
    /// What a resume found, when one was asked for a new subscription. When it is not
    /// `complete` (more than the replay budget was missed) the subscriber is *held*: it gets
    /// no live message until [`Registry::replay`] has given it the rest.
    pub recovery: Option<Recovery>,
    /// The connection was subscribed already: nothing changed and nothing is replayed.
    pub already: bool,
}

/// A held subscriber's `joined_at`: it takes no live message until its replay catches up.
const HELD: u64 = u64::MAX;

/// One topic's local subscribers.
#[derive(Debug)]
struct LocalTopic {
    name: Arc<str>,
    /// Live subscribers, the slice fanout walks.
    members: Vec<u32>,
    /// Each member's position in `members`.
    index: HashMap<u32, u32>,
    /// New subscribers and the `seq` they joined at; they become members with the first
    /// message above it, so messages already in flight to this reactor skip them.
    joining: Vec<(u32, u64)>,
    /// The highest `seq` fanned out here: what is still in flight is above it.
    last_seq: u64,
}

impl LocalTopic {
    fn has(&self, conn: u32) -> bool {
        self.index.contains_key(&conn) || self.joining.iter().any(|&(c, _)| c == conn)
    }

    fn len(&self) -> usize {
        self.members.len() + self.joining.len()
    }

    fn remove(&mut self, conn: u32) -> bool {
        if let Some(at) = self.index.remove(&conn) {
            let at = at as usize;
            if at < self.members.len() {
                self.members.swap_remove(at);
                if let Some(&moved) = self.members.get(at) {
                    self.index.insert(moved, at as u32);
                }
            }
            // A topic that once had many subscribers should not keep their memory.
            if self.members.capacity() > 64 && self.members.len() < self.members.capacity() / 4 {
                self.members.shrink_to(self.members.len() * 2);
                self.index.shrink_to(self.members.len() * 2);
            }
            true
        } else if let Some(at) = self.joining.iter().position(|&(c, _)| c == conn) {
            self.joining.swap_remove(at);
            true
        } else {
            false
        }
    }
}

/// Adds a live member (a field-level helper, so it can run while `joining` is borrowed).
fn add_member(members: &mut Vec<u32>, index: &mut HashMap<u32, u32>, conn: u32) {
    // A reactor holds fewer than 2³² connections, so a position always fits.
    index.insert(conn, members.len() as u32);
    members.push(conn);
}

/// One reactor's topics and their local subscribers. Not shared: each reactor owns one.
#[derive(Debug)]
pub struct Registry {
    hub: Arc<Hub>,
    reactor: usize,
    /// Only live slab keys: a topic leaves both maps together.
    by_name: HashMap<Arc<str>, TopicId>,
    topics: Slab<LocalTopic>,
    subscriptions: usize,
}

impl Registry {
    /// The registry of reactor `reactor` (below [`MAX_REACTORS`]) on `hub`.
    pub fn new(hub: Arc<Hub>, reactor: usize) -> Result<Registry, Error> {
        if reactor >= MAX_REACTORS {
            return Err(Error::TooManyReactors);
        }
        Ok(Registry {
            hub,
            reactor,
            by_name: HashMap::new(),
            topics: Slab::new(),
            subscriptions: 0,
        })
    }

    /// The hub this registry belongs to.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Whether `conn` holds `topic` already: subscribing again changes nothing, so it takes no
    /// new place under a per-connection maximum.
    pub fn is_subscribed(&self, conn: usize, topic: &str) -> bool {
        let (Ok(conn), Some(id)) = (u32::try_from(conn), self.by_name.get(topic)) else {
            return false;
        };
        self.topics[id.key()].has(conn)
    }

    /// Subscribes connection `conn` to `topic`, replaying from `resume` when given, up to
    /// `replay_bytes` at once (the rest through [`Registry::replay`]). The caller has validated
    /// the name and checked `subs.len()` against its per-connection maximum (a topic it
    /// [holds](Registry::is_subscribed) already takes no new place); on success, it sends the
    /// recovered messages (if any) before anything [`Registry::fanout`] gives it later.
    pub fn subscribe(
        &mut self,
        conn: usize,
        subs: &mut Subscriptions,
        topic: &str,
        resume: Option<&Resume>,
        replay_bytes: usize,
        now: Instant,
    ) -> Result<Subscribed, Error> {
        let conn = u32::try_from(conn).map_err(|_| Error::IdOverflow)?;
        let existing = self.by_name.get(topic).copied();
        if let Some(id) = existing
            && self.topics[id.key()].has(conn)
        {
            let (seq, _) = self.hub.join(topic, self.reactor, None, false, 0, now)?;
            return Ok(Subscribed {
                topic: id,
                seq,
                recovery: None,
                already: true,
            });
        }
        let (seq, recovery) =
            self.hub
                .join(topic, self.reactor, resume, true, replay_bytes, now)?;
        let id = match existing {
            Some(id) => id,
            None => {
                let entry = self.topics.vacant_entry();
                let id = match TopicId::from_key(entry.key()) {
                    Ok(id) => id,
                    Err(error) => {
                        self.hub.leave(topic, self.reactor, true);
                        return Err(error);
                    }
                };
                let name: Arc<str> = Arc::from(topic);
                entry.insert(LocalTopic {
                    name: name.clone(),
                    members: Vec::new(),
                    index: HashMap::new(),
                    joining: Vec::new(),
                    last_seq: 0,
                });
                self.by_name.insert(name, id);
                id
            }
        };
        let local = &mut self.topics[id.key()];
        let held = recovery.as_ref().is_some_and(|r| !r.complete);
        if held {
            local.joining.push((conn, HELD));
        } else if local.last_seq >= seq {
            // Nothing at or below `seq` can still be in flight to this reactor.
            add_member(&mut local.members, &mut local.index, conn);
        } else {
            local.joining.push((conn, seq));
        }
        subs.insert(id);
        self.subscriptions += 1;
        Ok(Subscribed {
            topic: id,
            seq,
            recovery,
            already: false,
        })
    }

    /// The next slice of a held subscriber's replay ([`Subscribed::recovery`] not complete):
    /// what `topic` has after `resume.since` (the last `seq` it was sent), up to `max_bytes`.
    /// When the slice is `complete` (it reaches the topic's `seq`), or history no longer has
    /// what follows `since` (`recovered` false: the subscriber has a gap), the subscriber takes
    /// live messages from there on, as if it had subscribed at that `seq`.
    pub fn replay(
        &mut self,
        conn: usize,
        topic: TopicId,
        resume: &Resume,
        max_bytes: usize,
        now: Instant,
    ) -> Recovery {
        let Some(local) = self.topics.get_mut(topic.key()) else {
            return Recovery::default();
        };
        let (recovery, seq) = self.hub.replay(&local.name, resume, max_bytes, now);
        if recovery.complete || !recovery.recovered {
            let conn = u32::try_from(conn).unwrap_or(u32::MAX);
            if let Some(at) = local
                .joining
                .iter()
                .position(|&(c, joined_at)| c == conn && joined_at == HELD)
            {
                if local.last_seq >= seq {
                    local.joining.swap_remove(at);
                    add_member(&mut local.members, &mut local.index, conn);
                } else {
                    local.joining[at].1 = seq;
                }
            }
        }
        recovery
    }

    /// `topic`'s handle here, while some connection here subscribes to it.
    pub fn id(&self, topic: &str) -> Option<TopicId> {
        self.by_name.get(topic).copied()
    }

    /// Unsubscribes connection `conn` from `topic`; false if it was not subscribed.
    pub fn unsubscribe(&mut self, conn: usize, subs: &mut Subscriptions, topic: &str) -> bool {
        let (Ok(conn), Some(&id)) = (u32::try_from(conn), self.by_name.get(topic)) else {
            return false;
        };
        let removed = self.remove(id, conn);
        if removed {
            subs.remove(id);
        }
        removed
    }

    /// Unsubscribes connection `conn` from everything (it is closing); returns how many topics
    /// it left.
    pub fn unsubscribe_all(&mut self, conn: usize, subs: &mut Subscriptions) -> usize {
        let subs = std::mem::take(subs);
        let Ok(conn) = u32::try_from(conn) else {
            return 0;
        };
        subs.iter().filter(|&id| self.remove(id, conn)).count()
    }

    /// The local subscribers that get `message`, which arrived from the hub (messages of a
    /// topic must come here in `seq` order). Empty when no connection here subscribes.
    pub fn fanout(&mut self, message: &Message) -> impl ExactSizeIterator<Item = usize> + '_ {
        let topic = self.deliver(message);
        let members: &[u32] = topic.map_or(&[], |id| &self.topics[id.key()].members);
        members.iter().map(|&conn| conn as usize)
    }

    /// [`Registry::fanout`] in two steps, for a caller that reads the registry (positions)
    /// while it walks the subscribers: takes `message` in (the topic's last `seq`, subscribers
    /// that stop waiting for it), and gives the topic's handle when it has local subscribers.
    pub fn deliver(&mut self, message: &Message) -> Option<TopicId> {
        let id = *self.by_name.get(&**message.topic())?;
        let seq = message.seq();
        let LocalTopic {
            members,
            index,
            joining,
            last_seq,
            ..
        } = &mut self.topics[id.key()];
        *last_seq = seq.max(*last_seq);
        joining.retain(|&(conn, joined_at)| {
            let waiting = seq <= joined_at;
            if !waiting {
                add_member(members, index, conn);
            }
            waiting
        });
        Some(id)
    }

    /// The live subscribers of `topic` here: after [`Registry::deliver`], those that get the
    /// message it took in.
    pub fn members(&self, topic: TopicId) -> impl ExactSizeIterator<Item = usize> + '_ {
        let members: &[u32] = self
            .topics
            .get(topic.key())
            .map_or(&[], |local| &local.members);
        members.iter().map(|&conn| conn as usize)
    }

    /// The hub renumbered `topic` above `seq` ([`super::Post::Reset`]): what arrives next starts
    /// right above `seq`, so no subscriber waits for anything higher. Returns the local
    /// subscribers, to be told.
    pub fn reset(&mut self, topic: &str, seq: u64) -> Vec<usize> {
        let Some(&id) = self.by_name.get(topic) else {
            return Vec::new();
        };
        let local = &mut self.topics[id.key()];
        local.last_seq = seq;
        for (_, joined_at) in &mut local.joining {
            // A held subscriber stays held: its replay goes on in the new numbering.
            if *joined_at != HELD {
                *joined_at = (*joined_at).min(seq);
            }
        }
        let joining = local.joining.iter().map(|&(conn, _)| conn);
        local
            .members
            .iter()
            .copied()
            .chain(joining)
            .map(|conn| conn as usize)
            .collect()
    }

    /// A subscribe here waited for `topic` ([`Error::Pending`]) but nobody is left to retry it.
    pub fn abandon(&self, topic: &str) {
        if !self.by_name.contains_key(topic) {
            self.hub.cancel_wait(topic, self.reactor);
        }
    }

    /// Local subscribers of `topic`.
    pub fn count(&self, topic: &str) -> usize {
        self.by_name
            .get(topic)
            .map_or(0, |id| self.topics[id.key()].len())
    }

    /// The last `seq` connection `conn` has of `topic` (a topic it subscribes to): the `seq`
    /// it joined at while messages up to it may still be in flight to this reactor (they skip
    /// it), otherwise the highest `seq` fanned out here, which every live member received (a
    /// member that could not take one was closed or dropped it). `None` for a topic the
    /// registry does not hold.
    pub fn position(&self, topic: TopicId, conn: usize) -> Option<u64> {
        let local = self.topics.get(topic.key())?;
        let joined = local
            .joining
            .iter()
            .find(|&&(c, _)| c as usize == conn)
            .map(|&(_, seq)| seq);
        Some(joined.unwrap_or(local.last_seq))
    }

    /// Whether `conn` still waits to become a live member of `topic` (see
    /// [`Registry::position`]): while it does, its position differs from the other members'.
    pub fn is_joining(&self, topic: TopicId, conn: usize) -> bool {
        self.topics.get(topic.key()).is_some_and(|local| {
            !local.joining.is_empty() && local.joining.iter().any(|&(c, _)| c as usize == conn)
        })
    }

    /// The name of a topic a connection holds a handle on.
    pub fn name(&self, id: TopicId) -> Option<&Arc<str>> {
        self.topics.get(id.key()).map(|local| &local.name)
    }

    /// Topics with at least one local subscriber.
    pub fn topics(&self) -> usize {
        self.topics.len()
    }

    /// Local subscriptions, all topics together.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions
    }

    /// Removes `conn` from topic `id`; the topic goes when its last local subscriber does.
    fn remove(&mut self, id: TopicId, conn: u32) -> bool {
        let Some(local) = self.topics.get_mut(id.key()) else {
            return false;
        };
        if !local.remove(conn) {
            return false;
        }
        self.subscriptions -= 1;
        if local.len() == 0 {
            let local = self.topics.remove(id.key());
            self.by_name.remove(&local.name);
            self.hub.leave(&local.name, self.reactor, true);
        } else {
            self.hub.leave(&local.name, self.reactor, false);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::epoch::Epoch;
    use crate::hub::HubConfig;
    use crate::message::{Format, Payload};
    use std::sync::mpsc::{self, Receiver, Sender};

    const EPOCH: Epoch = Epoch::new(7);

    type Side = (Registry, Receiver<Arc<Message>>);

    struct World {
        hub: Arc<Hub>,
        inboxes: Vec<Sender<Arc<Message>>>,
        now: Instant,
    }

    impl World {
        fn new(reactors: usize) -> (World, Vec<Side>) {
            let hub = Arc::new(Hub::new(HubConfig::default(), EPOCH));
            let (inboxes, sides) = (0..reactors)
                .map(|i| {
                    let (tx, rx) = mpsc::channel();
                    (tx, (Registry::new(hub.clone(), i).unwrap(), rx))
                })
                .unzip();
            let now = Instant::now();
            (World { hub, inboxes, now }, sides)
        }

        fn publish(&self, topic: &str) -> u64 {
            let payload = Payload::new(Format::Text, topic.as_bytes());
            self.hub
                .publish_with(topic, payload, self.now, |message, reactors| {
                    for i in reactors.iter() {
                        self.inboxes[i].send(message.clone()).unwrap();
                    }
                    message.seq()
                })
                .unwrap()
        }
    }

    /// Drains a reactor's inbox: (conn, seq) for every delivery.
    fn drain(registry: &mut Registry, inbox: &Receiver<Arc<Message>>) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        while let Ok(message) = inbox.try_recv() {
            let seq = message.seq();
            out.extend(registry.fanout(&message).map(|conn| (conn, seq)));
        }
        out.sort();
        out
    }

    #[test]
    fn a_position_is_the_seq_a_subscriber_joined_at_until_the_reactor_passes_it() {
        let (world, mut sides) = World::new(1);
        let (registry, inbox) = &mut sides[0];
        let (mut old, mut new) = (Subscriptions::default(), Subscriptions::default());
        let topic = registry
            .subscribe(1, &mut old, "t", None, 0, world.now)
            .unwrap()
            .topic;
        assert_eq!(world.publish("t"), 1);
        assert_eq!(drain(registry, inbox), [(1, 1)]);
        assert_eq!(registry.position(topic, 1), Some(1));
        // 2 is in flight when connection 2 joins at 2: it waits, its position is 2, and the old
        // member's is 1 until 2 is fanned out.
        world.publish("t");
        assert_eq!(
            registry
                .subscribe(2, &mut new, "t", None, 0, world.now)
                .unwrap()
                .seq,
            2
        );
        assert!(registry.is_joining(topic, 2) && !registry.is_joining(topic, 1));
        assert_eq!(
            (registry.position(topic, 1), registry.position(topic, 2)),
            (Some(1), Some(2))
        );
        assert_eq!(drain(registry, inbox), [(1, 2)]);
        assert_eq!(
            (registry.position(topic, 1), registry.position(topic, 2)),
            (Some(2), Some(2))
        );
        world.publish("t");
        assert_eq!(drain(registry, inbox), [(1, 3), (2, 3)]);
        assert!(!registry.is_joining(topic, 2));
        assert_eq!(
            (registry.position(topic, 1), registry.position(topic, 2)),
            (Some(3), Some(3))
        );
    }

    #[test]
    fn subscribe_unsubscribe_and_counts() {
        let (world, mut sides) = World::new(1);
        let (registry, _) = &mut sides[0];
        let (mut a, mut b) = (Subscriptions::default(), Subscriptions::default());
        let now = world.now;
        let sub = registry
            .subscribe(1, &mut a, "t", None, usize::MAX, now)
            .unwrap();
        assert!(!sub.already && sub.recovery.is_none());
        assert_eq!(registry.name(sub.topic).map(|n| &**n), Some("t"));
        registry
            .subscribe(2, &mut b, "t", None, usize::MAX, now)
            .unwrap();
        registry
            .subscribe(1, &mut a, "u", None, usize::MAX, now)
            .unwrap();
        assert!(
            registry
                .subscribe(1, &mut a, "t", None, usize::MAX, now)
                .unwrap()
                .already
        );
        assert_eq!((registry.count("t"), registry.count("u")), (2, 1));
        assert_eq!((registry.topics(), registry.subscriptions()), (2, 3));
        assert_eq!((a.len(), b.len()), (2, 1));

        assert!(registry.unsubscribe(1, &mut a, "t"));
        assert!(!registry.unsubscribe(1, &mut a, "t"));
        assert!(!registry.unsubscribe(1, &mut a, "nope"));
        assert!(!registry.unsubscribe(usize::MAX, &mut a, "u"));
        assert_eq!((registry.count("t"), a.len()), (1, 1));
        assert_eq!(a.iter().filter_map(|id| registry.name(id)).count(), 1);

        assert_eq!(registry.unsubscribe_all(1, &mut a), 1);
        assert!(a.is_empty());
        assert_eq!(registry.count("u"), 0);
        assert_eq!(registry.topics(), 1);
        assert_eq!(registry.unsubscribe_all(2, &mut b), 1);
        assert_eq!((registry.topics(), registry.subscriptions()), (0, 0));
        assert!(matches!(
            registry.subscribe(usize::MAX, &mut a, "t", None, usize::MAX, now),
            Err(Error::IdOverflow)
        ));
    }

    #[test]
    fn fanout_reaches_every_member_once_and_only_interested_reactors() {
        let (world, mut sides) = World::new(2);
        let mut subs: Vec<Subscriptions> = (0..100).map(|_| Subscriptions::default()).collect();
        for (conn, s) in subs.iter_mut().enumerate() {
            sides[0]
                .0
                .subscribe(conn, s, "t", None, usize::MAX, world.now)
                .unwrap();
        }
        for conn in (0..100).step_by(3) {
            assert!(sides[0].0.unsubscribe(conn, &mut subs[conn], "t"));
        }
        // A subscriber of a topic with no message yet becomes live with the first one.
        assert_eq!(world.publish("t"), 1);
        let (registry, inbox) = &mut sides[0];
        let got = drain(registry, inbox);
        let expected: Vec<_> = (0..100).filter(|c| c % 3 != 0).map(|c| (c, 1)).collect();
        assert_eq!(got, expected);
        let (registry, inbox) = &mut sides[1];
        assert!(drain(registry, inbox).is_empty());
    }

    #[test]
    fn a_reset_lets_waiting_subscribers_take_the_renumbered_messages() {
        let (world, mut sides) = World::new(1);
        let (registry, inbox) = &mut sides[0];
        let (mut a, mut b) = (Subscriptions::default(), Subscriptions::default());
        registry
            .subscribe(1, &mut a, "t", None, usize::MAX, world.now)
            .unwrap();
        assert_eq!(world.publish("t"), 1);
        assert_eq!(world.publish("t"), 2);
        // Joins at 2 while 1 and 2 are still in flight here: it waits for 3.
        registry
            .subscribe(2, &mut b, "t", None, usize::MAX, world.now)
            .unwrap();
        assert_eq!(drain(registry, inbox), [(1, 1), (1, 2)]);
        // The upstream renumbered everything above 1: the next message is 2 again, for both.
        let mut told = registry.reset("t", 1);
        told.sort();
        assert_eq!(told, [1, 2]);
        let again = Message::new(
            Arc::from("t"),
            2,
            world.now,
            Payload::new(Format::Text, b""),
        );
        let mut got: Vec<usize> = registry.fanout(&again).collect();
        got.sort();
        assert_eq!(got, [1, 2]);
        assert!(registry.reset("other", 1).is_empty());
    }

    #[test]
    fn last_subscriber_leaving_stops_the_reactor_receiving() {
        let (world, mut sides) = World::new(2);
        let mut s = Subscriptions::default();
        sides[1]
            .0
            .subscribe(5, &mut s, "t", None, usize::MAX, world.now)
            .unwrap();
        world.publish("t");
        assert_eq!(sides[1].1.try_iter().count(), 1);
        sides[1].0.unsubscribe_all(5, &mut s);
        world.publish("t");
        assert_eq!(sides[1].1.try_iter().count(), 0);
    }

    #[test]
    fn resume_has_no_gap_and_no_duplicate_with_messages_in_flight() {
        let (world, mut sides) = World::new(1);
        let (registry, inbox) = &mut sides[0];
        let (mut old, mut new) = (Subscriptions::default(), Subscriptions::default());
        registry
            .subscribe(1, &mut old, "t", None, usize::MAX, world.now)
            .unwrap();
        for _ in 0..3 {
            world.publish("t"); // in flight: the reactor has not run its inbox yet
        }
        let resume = Resume {
            since: 1,
            epoch: Some(EPOCH),
        };
        let sub = registry
            .subscribe(2, &mut new, "t", Some(&resume), usize::MAX, world.now)
            .unwrap();
        assert_eq!(sub.seq, 3);
        let recovery = sub.recovery.unwrap();
        assert!(recovery.recovered);
        let replayed: Vec<u64> = recovery.messages.iter().map(|m| m.seq()).collect();
        assert_eq!(replayed, [2, 3]);
        world.publish("t");
        let got = drain(registry, inbox);
        assert_eq!(got, [(1, 1), (1, 2), (1, 3), (1, 4), (2, 4)]);
        // Now caught up, a further subscriber is live at once.
        let mut third = Subscriptions::default();
        registry
            .subscribe(3, &mut third, "t", None, usize::MAX, world.now)
            .unwrap();
        world.publish("t");
        assert_eq!(drain(registry, inbox), [(1, 5), (2, 5), (3, 5)]);
    }

    #[test]
    fn a_replay_in_slices_holds_the_subscriber_until_it_catches_up() {
        let (world, mut sides) = World::new(1);
        let (registry, inbox) = &mut sides[0];
        let (mut old, mut new) = (Subscriptions::default(), Subscriptions::default());
        registry
            .subscribe(1, &mut old, "t", None, usize::MAX, world.now)
            .unwrap();
        for _ in 0..5 {
            world.publish("t");
        }
        // A budget of one message: the resume gets seq 1 now and is held for the rest.
        let resume = Resume {
            since: 0,
            epoch: Some(EPOCH),
        };
        let sub = registry
            .subscribe(2, &mut new, "t", Some(&resume), 0, world.now)
            .unwrap();
        let first = sub.recovery.unwrap();
        assert!(first.recovered && !first.complete);
        assert_eq!(
            first.messages.iter().map(|m| m.seq()).collect::<Vec<_>>(),
            [1]
        );
        // Live messages (the five in flight, and one more) skip it while it is held.
        world.publish("t");
        assert_eq!(
            drain(registry, inbox)
                .iter()
                .filter(|(c, _)| *c == 2)
                .count(),
            0
        );
        // Slice by slice, from the last it was sent; the one that reaches the topic's `seq`
        // lets it go live right after it.
        let mut sent = 1;
        loop {
            let resume = Resume {
                since: sent,
                epoch: Some(EPOCH),
            };
            let slice = registry.replay(2, sub.topic, &resume, 0, world.now);
            assert!(slice.recovered);
            sent = slice.messages.last().map_or(sent, |m| m.seq());
            if slice.complete {
                break;
            }
        }
        assert_eq!(sent, 6);
        world.publish("t");
        assert_eq!(drain(registry, inbox), [(1, 7), (2, 7)]);
    }

    #[test]
    fn resubscribing_skips_messages_left_in_flight_from_before() {
        let (world, mut sides) = World::new(1);
        let (registry, inbox) = &mut sides[0];
        let mut s = Subscriptions::default();
        registry
            .subscribe(1, &mut s, "t", None, usize::MAX, world.now)
            .unwrap();
        world.publish("t");
        registry.unsubscribe(1, &mut s, "t");
        registry
            .subscribe(1, &mut s, "t", None, usize::MAX, world.now)
            .unwrap();
        world.publish("t");
        assert_eq!(drain(registry, inbox), [(1, 2)]);
    }

    #[test]
    fn a_joining_subscriber_can_leave_before_going_live() {
        let (world, mut sides) = World::new(1);
        let (registry, inbox) = &mut sides[0];
        let (mut a, mut b) = (Subscriptions::default(), Subscriptions::default());
        registry
            .subscribe(1, &mut a, "t", None, usize::MAX, world.now)
            .unwrap();
        world.publish("t");
        registry
            .subscribe(2, &mut b, "t", None, usize::MAX, world.now)
            .unwrap();
        assert_eq!(registry.count("t"), 2);
        assert!(registry.unsubscribe(2, &mut b, "t"));
        world.publish("t");
        assert_eq!(drain(registry, inbox), [(1, 1), (1, 2)]);
    }

    /// What a connection and each of its subscriptions cost, in bytes (64-bit targets).
    #[test]
    fn sizes_per_connection_and_per_subscription() {
        use std::mem::{size_of, size_of_val};
        // In the connection's state: one topic without allocating, more in a boxed list of
        // 4-byte handles.
        assert_eq!(size_of::<Subscriptions>(), 16);
        assert_eq!(size_of::<Option<TopicId>>(), 4);
        // In the registry, per subscriber: its id in the member list and its position in the
        // index (a hash map entry: plus one control byte and the map's spare capacity), or, while
        // it waits for messages in flight, its id and the `seq` it joined at.
        let (world, mut sides) = World::new(1);
        let (registry, _) = &mut sides[0];
        let (mut a, mut b) = (Subscriptions::default(), Subscriptions::default());
        registry
            .subscribe(1, &mut a, "t", None, usize::MAX, world.now)
            .unwrap();
        world.publish("t");
        let id = registry
            .subscribe(2, &mut b, "t", None, usize::MAX, world.now)
            .unwrap()
            .topic;
        let local = &registry.topics[id.key()];
        assert_eq!(size_of_val(&local.members[0]), 4);
        let (conn, at) = local.index.iter().next().unwrap();
        assert_eq!(size_of_val(conn) + size_of_val(at), 8);
        assert_eq!(size_of_val(&local.joining[0]), 16);
        // Per topic per reactor, whatever its subscriber count.
        assert_eq!(size_of::<LocalTopic>(), 120);
    }

    #[test]
    fn subscriptions_keep_their_topics() {
        let mut s = Subscriptions::default();
        let ids: Vec<TopicId> = (0..4).map(|k| TopicId::from_key(k).unwrap()).collect();
        ids.iter().for_each(|&id| s.insert(id));
        assert_eq!(s.len(), 4);
        s.remove(ids[0]);
        s.remove(ids[2]);
        let mut left: Vec<usize> = s.iter().map(TopicId::key).collect();
        left.sort();
        assert_eq!(left, [1, 3]);
        s.remove(ids[1]);
        s.remove(ids[3]);
        assert!(s.is_empty() && s.more.is_none());
        assert!(TopicId::from_key(u32::MAX as usize).is_err());
    }

    #[test]
    fn too_many_reactors_is_refused() {
        let hub = Arc::new(Hub::new(HubConfig::default(), EPOCH));
        assert!(Registry::new(hub.clone(), MAX_REACTORS - 1).is_ok());
        assert!(matches!(
            Registry::new(hub, MAX_REACTORS),
            Err(Error::TooManyReactors)
        ));
    }
}
