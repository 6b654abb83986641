//! Publishes held while disconnected, bounded in count and bytes (`docs/clients.md`, section 8).

use std::collections::VecDeque;
use std::time::Instant;

use crate::event::PublishError;

/// Names one application call (a publish, a ping, an unsubscribe) so its answer finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Ticket(pub(crate) u64);

/// A publish not yet answered: its command without the `id`, and when it times out.
#[derive(Debug)]
pub(crate) struct Publish {
    pub(crate) ticket: Ticket,
    pub(crate) topic: String,
    /// `{"type":"publish",…,"id":` (see [`crate::wire::publish_prefix`]).
    pub(crate) prefix: String,
    pub(crate) deadline: Option<Instant>,
}

impl Publish {
    /// Its size as sent, counting 20 bytes for the largest `id` and the closing brace.
    pub(crate) fn size(&self) -> usize {
        self.prefix.len() + 21
    }
}

/// The queue: FIFO, at most `max` publishes and `max_bytes` bytes of commands.
#[derive(Debug)]
pub(crate) struct Queue {
    items: VecDeque<Publish>,
    bytes: usize,
    max: usize,
    max_bytes: usize,
}

impl Queue {
    pub(crate) fn new(max: usize, max_bytes: usize) -> Queue {
        Queue {
            items: VecDeque::new(),
            bytes: 0,
            max,
            max_bytes,
        }
    }

    /// Queues `publish`, or says why not: `disconnected` when queueing is off, `queue_full`
    /// past a bound.
    pub(crate) fn push(&mut self, publish: Publish) -> Result<(), PublishError> {
        if self.max == 0 {
            return Err(PublishError::local("disconnected", "not connected", false));
        }
        if self.items.len() >= self.max || self.bytes + publish.size() > self.max_bytes {
            return Err(PublishError::local(
                "queue_full",
                "too many publishes are waiting for the connection",
                false,
            ));
        }
        self.bytes += publish.size();
        self.items.push_back(publish);
        Ok(())
    }

    /// Takes the oldest.
    pub(crate) fn pop(&mut self) -> Option<Publish> {
        let publish = self.items.pop_front()?;
        self.bytes -= publish.size();
        Some(publish)
    }

    /// Takes the one of `ticket`, if queued.
    pub(crate) fn remove(&mut self, ticket: Ticket) -> Option<Publish> {
        let at = self.items.iter().position(|p| p.ticket == ticket)?;
        let publish = self.items.remove(at)?;
        self.bytes -= publish.size();
        Some(publish)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(ticket: u64, data: &str) -> Publish {
        Publish {
            ticket: Ticket(ticket),
            topic: "t".into(),
            prefix: crate::wire::publish_prefix("t", &serde_json::Value::from(data)),
            deadline: None,
        }
    }

    #[test]
    fn bounded_by_count_and_bytes() {
        let mut queue = Queue::new(2, 1 << 20);
        assert!(queue.push(publish(1, "a")).is_ok());
        assert!(queue.push(publish(2, "b")).is_ok());
        assert_eq!(queue.push(publish(3, "c")).unwrap_err().code, "queue_full");
        assert_eq!(queue.pop().unwrap().ticket, Ticket(1));
        assert_eq!(queue.remove(Ticket(2)).unwrap().ticket, Ticket(2));
        assert!(queue.remove(Ticket(2)).is_none());
        assert_eq!((queue.len(), queue.bytes), (0, 0));

        let size = publish(1, "0123456789").size();
        let mut queue = Queue::new(100, 2 * size);
        assert!(queue.push(publish(1, "0123456789")).is_ok());
        assert!(queue.push(publish(2, "0123456789")).is_ok());
        assert_eq!(
            queue.push(publish(3, "x")).unwrap_err().code,
            "queue_full",
            "bytes"
        );
    }

    #[test]
    fn no_queue_rejects_as_disconnected() {
        let mut queue = Queue::new(0, 1 << 20);
        let error = queue.push(publish(1, "a")).unwrap_err();
        assert_eq!(
            (error.code.as_str(), error.maybe_sent),
            ("disconnected", false)
        );
    }
}
