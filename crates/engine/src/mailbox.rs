//! Inboxes through which other threads (other reactors, the cluster bridge) hand messages to a
//! reactor: an unbounded channel per reactor and a coalesced wake, so a burst of posts costs
//! one wake-up, not one per message.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender};

use crate::sys::Waker;

/// One inbox per reactor.
pub struct Mailboxes<M> {
    boxes: Vec<Mailbox<M>>,
}

struct Mailbox<M> {
    sender: Sender<M>,
    receiver: Receiver<M>,
    /// Set once the reactor's backend exists; posts before that wait in the channel.
    waker: OnceLock<Waker>,
    /// A wake is on its way: further posts need not send another.
    woken: AtomicBool,
}

impl<M> Mailboxes<M> {
    /// Inboxes for `reactors` reactors.
    pub fn new(reactors: usize) -> Mailboxes<M> {
        let boxes = (0..reactors)
            .map(|_| {
                let (sender, receiver) = crossbeam_channel::unbounded();
                Mailbox {
                    sender,
                    receiver,
                    waker: OnceLock::new(),
                    woken: AtomicBool::new(false),
                }
            })
            .collect();
        Mailboxes { boxes }
    }

    /// How many reactors there are.
    pub fn len(&self) -> usize {
        self.boxes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty()
    }

    /// Hands `message` to reactor `reactor` and wakes it (once per burst).
    pub fn post(&self, reactor: usize, message: M) {
        let mailbox = &self.boxes[reactor];
        // Fails only once the reactor has exited; the message is moot then.
        let _ = mailbox.sender.send(message);
        if !mailbox.woken.swap(true, Ordering::AcqRel)
            && let Some(waker) = mailbox.waker.get()
        {
            waker.wake();
        }
    }

    pub(crate) fn set_waker(&self, reactor: usize, waker: Waker) {
        let _ = self.boxes[reactor].waker.set(waker);
    }

    /// Reactor side: the next message, if any. Call [`Mailboxes::rearm`] before draining.
    pub(crate) fn take(&self, reactor: usize) -> Option<M> {
        self.boxes[reactor].receiver.try_recv().ok()
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
}
