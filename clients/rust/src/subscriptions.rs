//! Per-topic subscription state and the resume rules of `docs/clients.md` section 7: what a
//! (re)subscribe sends, what an ack, a delivery and a reset do to the position.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::event::{Event, Position, SubscriptionState};

/// What the application's [`crate::Subscription`] reads: the session writes it on every change.
#[derive(Debug)]
pub(crate) struct SubCell {
    pub(crate) topic: String,
    view: Mutex<(SubscriptionState, Option<Position>)>,
}

impl SubCell {
    pub(crate) fn new(topic: String, position: Option<Position>) -> Arc<SubCell> {
        Arc::new(SubCell {
            topic,
            view: Mutex::new((SubscriptionState::Subscribing, position)),
        })
    }

    pub(crate) fn state(&self) -> SubscriptionState {
        self.lock().0
    }

    pub(crate) fn position(&self) -> Option<Position> {
        self.lock().1.clone()
    }

    /// Whether the subscription is over (no message of it reaches the application any more).
    pub(crate) fn ended(&self) -> bool {
        matches!(
            self.state(),
            SubscriptionState::Unsubscribed | SubscriptionState::Failed
        )
    }

    /// Ends it from the application's side, at once.
    pub(crate) fn end(&self) {
        self.lock().0 = SubscriptionState::Unsubscribed;
    }

    fn set(&self, state: SubscriptionState, position: &Option<Position>) {
        let mut view = self.lock();
        view.0 = state;
        if view.1 != *position {
            view.1.clone_from(position);
        }
    }

    fn set_seq(&self, seq: u64) {
        if let Some(at) = &mut self.lock().1 {
            at.seq = seq;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (SubscriptionState, Option<Position>)> {
        // A panic elsewhere while holding it leaves a plain value: still readable.
        self.view
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One subscription, as the session keeps it.
struct Sub {
    cell: Arc<SubCell>,
    state: SubscriptionState,
    position: Option<Position>,
    /// When the application first subscribed: resubscribes go out in this order.
    order: u64,
}

impl Sub {
    fn sync(&self) {
        self.cell.set(self.state, &self.position);
    }
}

/// What to do with a delivery (section 7.4).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Emit it.
    Emit(Arc<SubCell>),
    /// Not subscribed, or a duplicate: drop it.
    Drop,
    /// A gap: drop it and resubscribe this subscription from this position.
    Repair(Arc<SubCell>, Position),
}

/// Cells compare by identity: one per subscription.
impl PartialEq for SubCell {
    fn eq(&self, other: &SubCell) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for SubCell {}

/// Every live subscription of one client, by topic.
#[derive(Default)]
pub(crate) struct Subscriptions {
    by_topic: HashMap<String, Sub>,
    next_order: u64,
}

impl Subscriptions {
    /// Adds the application's subscription `cell` (a topic already held is replaced: the
    /// handle hands out a new cell only for a topic it does not hold).
    pub(crate) fn add(&mut self, cell: Arc<SubCell>) {
        let sub = Sub {
            position: cell.position(),
            state: SubscriptionState::Subscribing,
            cell,
            order: self.next_order,
        };
        self.next_order += 1;
        sub.sync();
        self.by_topic.insert(sub.cell.topic.clone(), sub);
    }

    /// Removes `cell`'s subscription (ended by the application); whether it was held.
    pub(crate) fn remove(&mut self, cell: &Arc<SubCell>) -> bool {
        cell.end();
        let held = self
            .by_topic
            .get(&cell.topic)
            .is_some_and(|sub| Arc::ptr_eq(&sub.cell, cell));
        if held {
            self.by_topic.remove(&cell.topic);
        }
        held
    }

    /// The subscribe to send for `topic` on this connection: its cell and the position to resume
    /// from. Marks it `subscribing`.
    pub(crate) fn resubscribe(&mut self, topic: &str) -> Option<(Arc<SubCell>, Option<Position>)> {
        let sub = self.by_topic.get_mut(topic)?;
        sub.state = SubscriptionState::Subscribing;
        sub.sync();
        Some((sub.cell.clone(), sub.position.clone()))
    }

    /// Every topic, in the order the application first subscribed.
    pub(crate) fn topics_in_order(&self) -> Vec<String> {
        let mut subs: Vec<&Sub> = self.by_topic.values().collect();
        subs.sort_by_key(|sub| sub.order);
        subs.into_iter().map(|sub| sub.cell.topic.clone()).collect()
    }

    /// The connection ended: every subscription waits for the next one, its position kept.
    pub(crate) fn all_subscribing(&mut self) {
        for sub in self.by_topic.values_mut() {
            sub.state = SubscriptionState::Subscribing;
            sub.sync();
        }
    }

    fn current(&mut self, cell: &Arc<SubCell>) -> Option<&mut Sub> {
        self.by_topic
            .get_mut(&cell.topic)
            .filter(|sub| Arc::ptr_eq(&sub.cell, cell))
    }

    /// The subscribe ack of `cell` (7.3); `None` when that subscription is gone (no event).
    pub(crate) fn acked(
        &mut self,
        cell: &Arc<SubCell>,
        resumed: bool,
        recovered: bool,
        seq: u64,
        epoch: String,
    ) -> Option<Event> {
        let sub = self.current(cell)?;
        let keep = resumed && recovered && sub.position.is_some();
        let position = sub.position.get_or_insert(Position {
            seq,
            epoch: String::new(),
        });
        if !keep {
            position.seq = seq;
        }
        position.epoch.clone_from(&epoch);
        sub.state = SubscriptionState::Subscribed;
        sub.sync();
        Some(Event::Subscribed {
            topic: cell.topic.clone(),
            resumed,
            recovered,
            seq,
            epoch,
        })
    }

    /// The subscribe of `cell` was refused, or the server ended it: `failed`, removed, never
    /// resubscribed. Whether it was still held.
    pub(crate) fn failed(&mut self, cell: &Arc<SubCell>) -> bool {
        let held = self.current(cell).is_some();
        if held {
            self.fail_topic(&cell.topic.clone());
        }
        held
    }

    /// The server ended `topic`'s subscription (`unsubscribed`); whether one was held.
    pub(crate) fn fail_topic(&mut self, topic: &str) -> bool {
        match self.by_topic.remove(topic) {
            Some(mut sub) => {
                sub.state = SubscriptionState::Failed;
                sub.sync();
                true
            }
            None => false,
        }
    }

    /// A delivery of `seq` on `topic` (7.4).
    pub(crate) fn delivered(&mut self, topic: &str, seq: u64) -> Delivery {
        let Some(sub) = self.by_topic.get_mut(topic) else {
            return Delivery::Drop;
        };
        let Some(position) = &mut sub.position else {
            return Delivery::Drop;
        };
        if sub.state != SubscriptionState::Subscribed || seq <= position.seq {
            return Delivery::Drop;
        }
        if seq == position.seq + 1 {
            position.seq = seq;
            sub.cell.set_seq(seq);
            return Delivery::Emit(sub.cell.clone());
        }
        let position = position.clone();
        sub.state = SubscriptionState::Subscribing;
        sub.sync();
        Delivery::Repair(sub.cell.clone(), position)
    }

    /// A cluster `reset` (7.5): the event to emit, if any.
    pub(crate) fn reset(&mut self, topic: &str, epoch: String, seq: u64) -> Option<Event> {
        let sub = self.by_topic.get_mut(topic)?;
        let position = sub.position.as_mut()?;
        if sub.state != SubscriptionState::Subscribed {
            return None;
        }
        let epoch_changed = position.epoch != epoch;
        if !epoch_changed && position.seq <= seq {
            return None;
        }
        position.seq = seq;
        position.epoch.clone_from(&epoch);
        sub.sync();
        Some(Event::Reset {
            topic: topic.to_owned(),
            seq,
            epoch,
            epoch_changed,
        })
    }

    /// The position of `topic`, if held.
    #[cfg(test)]
    pub(crate) fn position(&self, topic: &str) -> Option<Position> {
        self.by_topic.get(topic)?.position.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64, epoch: &str) -> Position {
        Position {
            seq,
            epoch: epoch.into(),
        }
    }

    fn subscribed(subs: &mut Subscriptions, topic: &str, seq: u64) -> Arc<SubCell> {
        let cell = SubCell::new(topic.into(), None);
        subs.add(cell.clone());
        subs.resubscribe(topic).unwrap();
        subs.acked(&cell, false, false, seq, "e".into()).unwrap();
        cell
    }

    #[test]
    fn deliveries_are_emitted_once_in_order_and_gaps_repaired() {
        let mut subs = Subscriptions::default();
        let cell = subscribed(&mut subs, "t", 41);
        assert_eq!(subs.delivered("t", 41), Delivery::Drop, "at the ack's seq");
        assert!(matches!(subs.delivered("t", 42), Delivery::Emit(_)));
        assert_eq!(subs.delivered("t", 42), Delivery::Drop, "a duplicate");
        assert_eq!(
            subs.delivered("t", 44),
            Delivery::Repair(cell.clone(), at(42, "e"))
        );
        assert_eq!(cell.state(), SubscriptionState::Subscribing);
        assert_eq!(subs.delivered("t", 45), Delivery::Drop, "repairing");
        assert_eq!(subs.delivered("other", 1), Delivery::Drop, "not held");
        assert_eq!(cell.position(), Some(at(42, "e")));
    }

    #[test]
    fn an_ack_keeps_the_position_only_when_resumed_and_recovered() {
        let mut subs = Subscriptions::default();
        let cell = SubCell::new("t".into(), Some(at(10, "old")));
        subs.add(cell.clone());
        let (_, from) = subs.resubscribe("t").unwrap();
        assert_eq!(from, Some(at(10, "old")));
        subs.acked(&cell, true, true, 15, "old".into()).unwrap();
        assert_eq!(
            subs.position("t"),
            Some(at(10, "old")),
            "the replay follows"
        );
        subs.all_subscribing();
        let event = subs.acked(&cell, true, false, 0, "new".into()).unwrap();
        assert!(matches!(
            event,
            Event::Subscribed {
                resumed: true,
                recovered: false,
                seq: 0,
                ..
            }
        ));
        assert_eq!(subs.position("t"), Some(at(0, "new")));
        assert_eq!(cell.position(), Some(at(0, "new")));
    }

    #[test]
    fn an_ack_of_a_removed_subscription_is_ignored() {
        let mut subs = Subscriptions::default();
        let old = subscribed(&mut subs, "t", 1);
        assert!(subs.remove(&old));
        assert_eq!(old.state(), SubscriptionState::Unsubscribed);
        let new = SubCell::new("t".into(), None);
        subs.add(new.clone());
        assert_eq!(subs.acked(&old, false, false, 3, "e".into()), None);
        assert!(subs.acked(&new, false, false, 3, "e".into()).is_some());
        assert!(
            !subs.remove(&old),
            "the new one is not removed by the old handle"
        );
    }

    #[test]
    fn resets_follow_the_spec() {
        let mut subs = Subscriptions::default();
        subscribed(&mut subs, "t", 4);
        for seq in 5..=6 {
            assert!(matches!(subs.delivered("t", seq), Delivery::Emit(_)));
        }
        assert_eq!(
            subs.reset("t", "e".into(), 4),
            Some(Event::Reset {
                topic: "t".into(),
                seq: 4,
                epoch: "e".into(),
                epoch_changed: false
            })
        );
        assert!(matches!(subs.delivered("t", 5), Delivery::Emit(_)));
        assert_eq!(subs.reset("t", "e".into(), 7), None, "nothing above 7");
        assert_eq!(
            subs.reset("t", "f".into(), 9),
            Some(Event::Reset {
                topic: "t".into(),
                seq: 9,
                epoch: "f".into(),
                epoch_changed: true
            })
        );
        assert_eq!(subs.reset("x", "f".into(), 1), None, "not held");
    }

    #[test]
    fn resubscribes_go_in_first_subscribed_order() {
        let mut subs = Subscriptions::default();
        for topic in ["b", "a", "c"] {
            subs.add(SubCell::new(topic.into(), None));
        }
        assert_eq!(subs.topics_in_order(), ["b", "a", "c"]);
        assert!(subs.fail_topic("a"));
        assert_eq!(subs.topics_in_order(), ["b", "c"]);
    }
}
