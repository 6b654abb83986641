//! Event streams: one ordered channel per [`crate::Client::events`] call, counted so that an
//! application that falls behind slows the client's reading instead of growing memory.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::sync::{Notify, mpsc};

use crate::event::Event;
use crate::subscriptions::SubCell;

/// An event on its way, with the subscription of a delivery (checked when it is read, so no
/// message of a subscription the application ended reaches it afterwards).
pub(crate) struct Item {
    event: Event,
    cell: Option<Arc<SubCell>>,
}

/// The first stream is made at `connect` so that it sees everything from the start; until an
/// application takes it with `events()` it is `UNTAKEN`, and the driver drops it (`ABANDONED`)
/// rather than wait for a reader who may never come.
const UNTAKEN: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

struct Counter {
    /// Events sent and not yet read.
    queued: AtomicUsize,
    /// Signalled when the reader takes one from a full stream.
    room: Notify,
    status: AtomicU8,
}

/// The driver's end of one stream.
pub(crate) struct Sink {
    tx: mpsc::UnboundedSender<Item>,
    counter: Arc<Counter>,
}

/// An ordered stream of [`Event`]s (a [`futures_core::Stream`]; or call [`Events::next`]). It
/// ends when the client has stopped for good and every event before was read.
pub struct Events {
    rx: mpsc::UnboundedReceiver<Item>,
    counter: Arc<Counter>,
    capacity: usize,
}

/// A new stream: `taken` for one an application asked for, else the initial one.
pub(crate) fn channel(capacity: usize, taken: bool) -> (Sink, Events) {
    let (tx, rx) = mpsc::unbounded_channel();
    let counter = Arc::new(Counter {
        queued: AtomicUsize::new(0),
        room: Notify::new(),
        status: AtomicU8::new(if taken { TAKEN } else { UNTAKEN }),
    });
    let sink = Sink {
        tx,
        counter: counter.clone(),
    };
    (
        sink,
        Events {
            rx,
            counter,
            capacity: capacity.max(1),
        },
    )
}

impl Sink {
    /// Sends `event`; `false` when the stream is gone (dropped, or abandoned while untaken).
    pub(crate) fn send(&self, event: Event, cell: Option<Arc<SubCell>>, capacity: usize) -> bool {
        if self.counter.status.load(Ordering::Acquire) == ABANDONED {
            return false;
        }
        // Counted before it can be read, so the reader never counts below zero.
        let queued = self.counter.queued.fetch_add(1, Ordering::AcqRel) + 1;
        if self.tx.send(Item { event, cell }).is_err() {
            return false;
        }
        // Nobody took the initial stream and it is full: nobody is going to.
        !(queued >= capacity
            && self
                .counter
                .status
                .compare_exchange(UNTAKEN, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok())
    }

    /// Whether its reader is behind by `capacity` events or more.
    pub(crate) fn full(&self, capacity: usize) -> bool {
        self.counter.queued.load(Ordering::Acquire) >= capacity
    }

    /// Waits until its reader takes an event, or not at all if it is no longer `capacity`
    /// behind. Registered for the reader's signal before it checks, so a read that comes in
    /// between still ends the wait.
    async fn room(&self, capacity: usize) {
        let mut notified = std::pin::pin!(self.counter.room.notified());
        notified.as_mut().enable();
        if self.full(capacity) {
            notified.await;
        }
    }
}

impl Events {
    /// Claims the initial stream for the application; `false` if the driver dropped it.
    pub(crate) fn take(&self) -> bool {
        self.counter
            .status
            .compare_exchange(UNTAKEN, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The next event; `None` once the client stopped for good and all were read.
    pub async fn next(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            let Some(item) = std::task::ready!(self.rx.poll_recv(cx)) else {
                return Poll::Ready(None);
            };
            let before = self.counter.queued.fetch_sub(1, Ordering::AcqRel);
            if before >= self.capacity {
                self.counter.room.notify_one();
            }
            if item.cell.as_ref().is_some_and(|cell| cell.ended()) {
                continue;
            }
            return Poll::Ready(Some(item.event));
        }
    }
}

impl futures_core::Stream for Events {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().poll_event(cx)
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("queued", &self.counter.queued.load(Ordering::Relaxed))
            .finish()
    }
}

/// The first of `sinks` whose reader is `capacity` events behind.
pub(crate) fn first_full(sinks: &[Sink], capacity: usize) -> Option<&Sink> {
    sinks.iter().find(|sink| sink.full(capacity))
}

/// While the driver has stopped reading because a stream was full: ends when that stream's
/// reader takes an event, or at once when no stream is full any more (its reader may have
/// caught up since the driver looked), so the driver looks again and reads on.
pub(crate) async fn caught_up(sinks: &[Sink], capacity: usize) {
    if let Some(sink) = first_full(sinks, capacity) {
        sink.room(capacity).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(n: u64) -> Event {
        Event::Error {
            code: n.to_string(),
            message: String::new(),
            topic: None,
        }
    }

    #[tokio::test]
    async fn counts_signal_room_and_filter_ended_subscriptions() {
        let (sink, mut events) = channel(2, true);
        assert!(sink.send(error(1), None, 2));
        assert!(!sink.full(2));
        let cell = SubCell::new("t".into(), None);
        let message = Event::Message {
            topic: "t".into(),
            seq: 1,
            data: crate::Data::Json(1.into()),
        };
        assert!(sink.send(message, Some(cell.clone()), 2));
        assert!(sink.full(2));
        assert!(
            sink.send(error(3), None, 2),
            "a taken stream is never dropped"
        );
        cell.end();
        assert_eq!(events.next().await, Some(error(1)));
        // Room was signalled.
        caught_up(std::slice::from_ref(&sink), 2).await;
        assert_eq!(
            events.next().await,
            Some(error(3)),
            "the ended one is skipped"
        );
        drop(sink);
        assert_eq!(events.next().await, None);
    }

    /// Polls `future` once, without a runtime's waker.
    fn ready_now<F: std::future::Future>(future: F) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        std::pin::pin!(future).poll(&mut cx).is_ready()
    }

    #[tokio::test]
    async fn a_reader_that_catches_up_before_the_driver_waits_still_wakes_it() {
        // The driver saw the stream full and stopped reading the socket...
        let (sink, mut events) = channel(2, true);
        let sinks = [sink];
        assert!(sinks[0].send(error(1), None, 2));
        assert!(sinks[0].send(error(2), None, 2));
        assert!(first_full(&sinks, 2).is_some());
        // ...and before it waits for room, the application reads everything.
        assert_eq!(events.next().await, Some(error(1)));
        assert_eq!(events.next().await, Some(error(2)));
        // Nothing will be read any more: the wait must end now, or the client never reads
        // the socket again (the stall of the gap scenario).
        assert!(ready_now(caught_up(&sinks, 2)));
    }

    #[tokio::test]
    async fn the_wait_for_room_ends_when_the_reader_takes_one() {
        let (sink, mut events) = channel(2, true);
        let sinks = [sink];
        for n in 1..=3 {
            assert!(sinks[0].send(error(n), None, 2));
        }
        let mut wait = Box::pin(caught_up(&sinks, 2));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(wait.as_mut().poll(&mut cx).is_pending(), "still 3 behind");
        assert_eq!(events.next().await, Some(error(1)));
        assert!(
            wait.as_mut().poll(&mut cx).is_ready(),
            "the reader took one"
        );
    }

    #[tokio::test]
    async fn an_untaken_initial_stream_is_dropped_when_full() {
        let (sink, events) = channel(2, false);
        assert!(sink.send(error(1), None, 2));
        assert!(!sink.send(error(2), None, 2));
        assert!(!events.take());
        let (sink, events) = channel(2, false);
        assert!(events.take());
        assert!(sink.send(error(1), None, 2));
        assert!(sink.send(error(2), None, 2));
    }
}
