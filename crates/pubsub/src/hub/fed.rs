//! A fed hub, for cluster mode: an upstream (the Redis bridge) numbers the messages and hands them
//! in; the hub keeps a topic live only while a reactor wants it, says so with [`Interest`]s, and
//! while the upstream is unreachable numbers local publishes provisionally, to be confirmed or
//! reset when the upstream's numbering comes back.

use std::sync::Arc;
use std::time::Instant;

use super::Hub;
use super::topics::TopicState;
use crate::message::{Message, Payload, Post};
use crate::reactors::Reactors;

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

/// Tells `state`'s reactors that the topic now stands at `state.seq` in the upstream's numbering.
fn post_reset(name: &Arc<str>, state: &TopicState, send: &mut impl FnMut(Post, Reactors)) {
    let reset = Post::Reset {
        topic: name.clone(),
        seq: state.seq,
    };
    send(reset, Reactors::from_bits(state.reactors));
}

impl Hub {
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
            Some((message, Reactors::from_bits(state.reactors)))
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
        send(Post::Message(message), Reactors::from_bits(state.reactors));
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
            Reactors::from_bits(state.waiting)
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
        self.collect(|name, state| {
            (state.reactors != 0 || state.waiting != 0).then(|| name.clone())
        })
    }

    /// Fed hub: a topic nobody wants any more stops being live and tells the upstream.
    pub(super) fn release(&self, name: &Arc<str>, state: &mut TopicState) {
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

    /// Sends `interest` to a fed hub's upstream (a numbering hub has none to tell).
    pub(super) fn tell(&self, interest: Interest) {
        if let Some(upstream) = &self.upstream {
            // Fails only once the upstream is gone; there is nobody to tell then.
            let _ = upstream.send(interest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use crate::hub::HubConfig;
    use crate::hub::tests::{EPOCH, resume, seqs};
    use crate::message::Format;

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
                Post::Probe(round) => format!("probe {round}"),
            })
            .collect()
    }

    /// A fed hub with topic `t` live at `seq` 5 for reactor 0.
    fn live_fed_hub() -> Hub {
        let (tx, _interest) = crossbeam_channel::unbounded();
        let hub = Hub::fed(HubConfig::default(), tx);
        hub.set_epoch(EPOCH);
        let now = Instant::now();
        assert!(hub.join("t", 0, None, true, usize::MAX, now).is_err());
        let recent = (1..=5).map(|seq| numbered("t", seq)).collect();
        hub.sync("t", 5, recent, false, |_, _| ());
        hub.join("t", 0, None, true, usize::MAX, now).unwrap();
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
            .join("t", 0, Some(&resume(5)), false, usize::MAX, Instant::now())
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
                    Post::Ready(_) | Post::Probe(_) => {}
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
            hub.join("t", 1, None, true, usize::MAX, now),
            Err(Error::Pending)
        ));
        assert!(matches!(
            hub.join("t", 2, None, true, usize::MAX, now),
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
        let (seq, recovery) = hub
            .join("t", 1, Some(&resume(3)), true, usize::MAX, now)
            .unwrap();
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
}
