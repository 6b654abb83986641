//! Inboxes through which other threads (other reactors, the cluster bridge) hand messages to a
//! reactor: a channel per reactor and a coalesced wake, so a burst of posts costs one wake-up,
//! not one per message.
//!
//! Each inbox counts what waits in it, in bytes as the senders weigh their messages, against a
//! capacity. A post itself never fails or blocks (a message a sender already committed to, say
//! numbered, must arrive); senders ask [`Mailboxes::has_room`] before they commit, and refuse
//! or wait when it says no. Between the check and the post others may post too, so an inbox
//! holds at most its capacity plus one message per concurrent sender.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};

use crate::sys::Waker;

/// One inbox per reactor.
pub struct Mailboxes<M> {
    boxes: Vec<Mailbox<M>>,
    /// Bytes that may wait in each inbox before [`Mailboxes::has_room`] says no.
    capacity: usize,
}

struct Mailbox<M> {
    sender: Sender<(M, usize)>,
    receiver: Receiver<(M, usize)>,
    /// Bytes waiting, as weighed by their senders.
    queued: AtomicUsize,
    /// Set once the reactor's backend exists; posts before that wait in the channel.
    waker: OnceLock<Waker>,
    /// A wake is on its way: further posts need not send another.
    woken: AtomicBool,
}

impl<M> Mailboxes<M> {
    /// Inboxes for `reactors` reactors, with no capacity to speak of (for tests and tools; a
    /// runtime's come from [`crate::Config::max_inbox_bytes`]).
    pub fn new(reactors: usize) -> Mailboxes<M> {
        Mailboxes::with_capacity(reactors, usize::MAX)
    }

    /// Inboxes for `reactors` reactors, each with room for `capacity` bytes.
    pub fn with_capacity(reactors: usize, capacity: usize) -> Mailboxes<M> {
        let boxes = (0..reactors)
            .map(|_| {
                let (sender, receiver) = crossbeam_channel::unbounded();
                Mailbox {
                    sender,
                    receiver,
                    queued: AtomicUsize::new(0),
                    waker: OnceLock::new(),
                    woken: AtomicBool::new(false),
                }
            })
            .collect();
        Mailboxes { boxes, capacity }
    }

    /// How many reactors there are.
    pub fn len(&self) -> usize {
        self.boxes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty()
    }

    /// Hands `message` to reactor `reactor` and wakes it (once per burst), weighing it as its
    /// own size.
    pub fn post(&self, reactor: usize, message: M) {
        self.post_weighed(reactor, message, size_of::<M>());
    }

    /// [`Mailboxes::post`] of a message that holds `bytes` (what it keeps alive while it waits,
    /// as the sender counts it).
    pub fn post_weighed(&self, reactor: usize, message: M, bytes: usize) {
        let mailbox = &self.boxes[reactor];
        mailbox.queued.fetch_add(bytes, Ordering::Relaxed);
        // Fails only once the reactor has exited; the message is moot then.
        if mailbox.sender.send((message, bytes)).is_err() {
            mailbox.queued.fetch_sub(bytes, Ordering::Relaxed);
        }
        if !mailbox.woken.swap(true, Ordering::AcqRel)
            && let Some(waker) = mailbox.waker.get()
        {
            waker.wake();
        }
    }

    /// Whether reactor `reactor`'s inbox holds less than its capacity.
    pub fn has_room(&self, reactor: usize) -> bool {
        self.queued_bytes(reactor) < self.capacity
    }

    /// Bytes waiting in reactor `reactor`'s inbox.
    pub fn queued_bytes(&self, reactor: usize) -> usize {
        self.boxes[reactor].queued.load(Ordering::Relaxed)
    }

    pub(crate) fn set_waker(&self, reactor: usize, waker: Waker) {
        let _ = self.boxes[reactor].waker.set(waker);
    }

    /// Reactor side: the next message, if any. Call [`Mailboxes::rearm`] before draining.
    pub(crate) fn take(&self, reactor: usize) -> Option<M> {
        let mailbox = &self.boxes[reactor];
        let (message, bytes) = mailbox.receiver.try_recv().ok()?;
        mailbox.queued.fetch_sub(bytes, Ordering::Relaxed);
        Some(message)
    }

    /// Reactor side: the next post must wake the reactor again.
    pub(crate) fn rearm(&self, reactor: usize) {
        self.boxes[reactor].woken.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::sys::Wake;

    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_burst_wakes_once_and_keeps_order() {
        let boxes = Mailboxes::new(2);
        let wakes = Arc::new(Counter(AtomicUsize::new(0)));
        boxes.set_waker(1, wakes.clone());
        for i in 0..100 {
            boxes.post(1, i);
        }
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        boxes.rearm(1);
        let drained: Vec<i32> = std::iter::from_fn(|| boxes.take(1)).collect();
        assert_eq!(drained, (0..100).collect::<Vec<_>>());
        boxes.post(1, 7);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 2);
        assert_eq!(boxes.take(0), None);
    }

    #[test]
    fn an_inbox_counts_what_waits_against_its_capacity() {
        let boxes = Mailboxes::with_capacity(2, 100);
        assert!(boxes.has_room(0));
        boxes.post_weighed(0, "a", 60);
        assert!(boxes.has_room(0), "60 of 100");
        boxes.post_weighed(0, "b", 60);
        assert!(!boxes.has_room(0), "a post never fails: 120 of 100");
        assert!(boxes.has_room(1), "each inbox on its own");
        assert_eq!(boxes.take(0), Some("a"));
        assert!(boxes.has_room(0));
        assert_eq!(boxes.take(0), Some("b"));
        assert_eq!(boxes.queued_bytes(0), 0);
    }
}
