//! A hub that numbers messages itself (one node, no cluster): a publish takes the topic's next
//! `seq` under the topic's lock, so whatever its closure enqueues leaves in `seq` order.

use std::sync::Arc;
use std::time::Instant;

use super::{Admission, Hub};
use crate::Error;
use crate::message::{Message, Payload};
use crate::reactors::Reactors;

impl Hub {
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
        self.publish_admitted(topic, payload, now, &Admission::API, send)
    }

    /// [`Hub::publish_with`] for a publisher that must meet `admission`: a client's publish may
    /// create its topic only within `client_topic_rate` ([`Error::TooManyNewTopics`]), and the
    /// message is numbered only if `admission.room` says the reactors that would receive it can
    /// take it ([`Error::Busy`] otherwise: nothing was published).
    pub fn publish_admitted<R>(
        &self,
        topic: &str,
        payload: Payload,
        now: Instant,
        admission: &Admission<'_>,
        send: impl FnOnce(&Arc<Message>, Reactors) -> R,
    ) -> Result<R, Error> {
        self.get_or_create(topic, admission.client, now, |name, state| {
            let reactors = Reactors::from_bits(state.reactors);
            if !(admission.room)(reactors) {
                return Err(Error::Busy);
            }
            state.seq += 1;
            let message = Arc::new(Message::new(name.clone(), state.seq, now, payload));
            self.record(state, &message);
            Ok(send(&message, reactors))
        })?
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::mpsc;

    use super::*;
    use crate::hub::HubConfig;
    use crate::hub::tests::{hub, publish};
    use crate::message::Format;

    #[test]
    fn seq_starts_at_one_per_topic() {
        let hub = hub(HubConfig::default());
        let now = Instant::now();
        assert_eq!(publish(&hub, "a", "x", now), 1);
        assert_eq!(publish(&hub, "a", "y", now), 2);
        assert_eq!(publish(&hub, "b", "z", now), 1);
        let stats = hub.stats();
        assert_eq!((stats.topics, stats.published), (2, 3));
        let each = Message::new(Arc::from("a"), 1, now, Payload::new(Format::Text, b"x")).memory();
        assert_eq!(
            (stats.history_messages, stats.history_bytes),
            (3, 3 * each as u64),
            "counted as they take memory"
        );
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
}
