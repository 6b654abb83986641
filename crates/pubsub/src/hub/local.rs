//! A hub that numbers messages itself (one node, no cluster): a publish takes the topic's next
//! `seq` under the topic's lock, so whatever its closure enqueues leaves in `seq` order.

use std::sync::Arc;
use std::time::Instant;

use super::Hub;
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
        self.get_or_create(topic, |name, state| {
            state.seq += 1;
            let message = Arc::new(Message::new(name.clone(), state.seq, now, payload));
            self.record(state, &message);
            send(&message, Reactors::from_bits(state.reactors))
        })
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
        assert_eq!((stats.history_messages, stats.history_bytes), (3, 3));
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
