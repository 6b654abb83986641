//! The application's handles: [`Client`] and [`Subscription`]. Each call becomes a command to
//! the client's task; nothing here blocks or does I/O.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::backoff::Rng;
use crate::driver::{self, Command, Setup, SharedState};
use crate::event::{Position, PublishAck, PublishError, State, SubscriptionState};
use crate::events::{self, Events};
use crate::options::{Auth, Options};
use crate::session::Session;
use crate::subscriptions::SubCell;
use crate::tls;
use crate::url::{self, ConnectError};

/// A connection to a Clarion server that reconnects by itself and keeps its subscriptions.
/// Cheap to clone (all clones are the same client); when every clone is dropped the client
/// closes.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    state: Arc<SharedState>,
    /// The topics held, so that subscribing twice returns the same subscription.
    subscriptions: Mutex<HashMap<String, Arc<SubCell>>>,
    /// The stream made at `connect`, until the first `events()` call takes it.
    initial: Mutex<Option<Events>>,
    event_buffer: usize,
}

impl Client {
    /// Starts connecting to `url` (`ws://` or `wss://HOST[:PORT]/ws`) at once and returns.
    /// Fails only for a URL it cannot use or, for `wss:`, when no root certificate can be
    /// trusted (`Options::tls`). Must be called within a tokio runtime (the connection is a
    /// task spawned on it).
    pub fn connect(url: &str, options: Options) -> Result<Client, ConnectError> {
        let endpoint = url::parse(url)?;
        let tls = match endpoint.tls {
            true => Some((
                options.tls.client_config()?,
                tls::server_name(&endpoint.host)?,
            )),
            false => None,
        };
        let mut rng = Rng::from_entropy();
        let session = Session::new(&options, tokio_now(), Rng::new(rng.next_u64()));
        let (commands, receiver) = mpsc::unbounded_channel();
        let state = Arc::new(SharedState::new());
        let (sink, initial) = events::channel(options.event_buffer, false);
        let setup = Setup {
            endpoint,
            tls,
            provider: match &options.auth {
                Auth::Provider(provider) => Some(provider.clone()),
                Auth::None | Auth::Fixed(_) => None,
            },
            connect_timeout: options.connect_timeout,
            event_buffer: options.event_buffer,
            max_message_size: options.max_message_size,
            state: state.clone(),
            rng,
        };
        tokio::spawn(driver::run(session, setup, receiver, sink));
        Ok(Client {
            inner: Arc::new(Inner {
                commands,
                state,
                subscriptions: Mutex::new(HashMap::new()),
                initial: Mutex::new(Some(initial)),
                event_buffer: options.event_buffer,
            }),
        })
    }

    /// An ordered stream of the client's events. The first call gets every event since
    /// `connect` (if made before `event_buffer` events happened; the client does not wait for
    /// it beyond that); later calls get the events from then on. Read every stream you take:
    /// when one falls `event_buffer` events behind, the client stops reading the socket until
    /// it catches up. Drop a stream you no longer read.
    pub fn events(&self) -> Events {
        let initial = lock(&self.inner.initial).take();
        if let Some(initial) = initial.filter(Events::take) {
            return initial;
        }
        let (sink, events) = events::channel(self.inner.event_buffer, true);
        // A stopped client's stream ends at once.
        let _ = self.inner.commands.send(Command::Events(sink));
        events
    }

    /// The client's state.
    pub fn state(&self) -> State {
        self.inner.state.get()
    }

    /// Subscribes to `topic`, now if connected, else on the next connection, and on every
    /// reconnection after, resuming from its position. `from` starts it at a position the
    /// application kept. A topic already held returns the subscription that holds it.
    pub fn subscribe(&self, topic: &str, from: Option<Position>) -> Subscription {
        let mut held = lock(&self.inner.subscriptions);
        if let Some(cell) = held.get(topic).filter(|cell| !cell.ended()) {
            return self.subscription(cell.clone());
        }
        let cell = SubCell::new(topic.to_owned(), from);
        held.insert(topic.to_owned(), cell.clone());
        // Sent while the map is locked, so commands on one topic keep the application's order.
        let _ = self.inner.commands.send(Command::Subscribe(cell.clone()));
        drop(held);
        self.subscription(cell)
    }

    fn subscription(&self, cell: Arc<SubCell>) -> Subscription {
        Subscription {
            cell,
            client: Arc::downgrade(&self.inner),
        }
    }

    /// Ends the subscription of `topic` at once (no message of it is read from the event
    /// streams after this call); the future completes when the server acknowledges, or at once
    /// when not connected. A topic not held completes at once.
    pub fn unsubscribe(&self, topic: &str) -> impl Future<Output = ()> + Send + use<> {
        wait_done(unsubscribe(&self.inner, topic, None))
    }

    /// Publishes `data` (a JSON string is published as its text) on `topic`: sent now if
    /// connected, else queued up to `max_queued` (or refused). The command is issued by this
    /// call, so publishes keep the order of the calls whenever their futures are awaited. The
    /// future resolves with the server's ack or fails with its error code or a local one
    /// (`disconnected`, `queue_full`, `timeout`, `closed`).
    pub fn publish(
        &self,
        topic: &str,
        data: serde_json::Value,
    ) -> impl Future<Output = Result<PublishAck, PublishError>> + Send + use<> {
        let (tx, rx) = oneshot::channel();
        let _ = self
            .inner
            .commands
            .send(Command::Publish(topic.to_owned(), data, tx));
        async move { rx.await.unwrap_or_else(|_| Err(closed())) }
    }

    /// The round trip of a `ping` command; fails at once with `disconnected` when not
    /// connected.
    pub fn ping(&self) -> impl Future<Output = Result<Duration, PublishError>> + Send + use<> {
        let (tx, rx) = oneshot::channel();
        let _ = self.inner.commands.send(Command::Ping(tx));
        async move { rx.await.unwrap_or_else(|_| Err(closed())) }
    }

    /// Stops for good: no more retries, pending publishes fail with `closed`, the socket is
    /// closed with 1000. The future completes when that is done.
    pub fn close(&self) -> impl Future<Output = ()> + Send + use<> {
        let (tx, rx) = oneshot::channel();
        let sent = self.inner.commands.send(Command::Close(tx)).is_ok();
        wait_done(sent.then_some(rx))
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("state", &self.state())
            .finish()
    }
}

/// One topic's subscription. It lives until the application ends it or the server refuses it,
/// across any number of reconnections.
#[derive(Clone, Debug)]
pub struct Subscription {
    cell: Arc<SubCell>,
    /// Weak: a subscription alone does not keep the client open.
    client: std::sync::Weak<Inner>,
}

impl Subscription {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.cell.topic
    }

    /// Where it is in its life.
    pub fn state(&self) -> SubscriptionState {
        self.cell.state()
    }

    /// Its position (the last `seq` accounted for and its epoch), to persist and resume from
    /// later; `None` before the first ack unless one was given.
    pub fn position(&self) -> Option<Position> {
        self.cell.position()
    }

    /// Ends it, as [`Client::unsubscribe`] does.
    pub fn unsubscribe(&self) -> impl Future<Output = ()> + Send + use<> {
        let done = match self.client.upgrade() {
            Some(inner) => unsubscribe(&inner, &self.cell.topic, Some(&self.cell)),
            None => {
                self.cell.end();
                None
            }
        };
        wait_done(done)
    }
}

/// Ends the subscription of `topic` (only if it is `cell`'s, when one is given); the answer to
/// wait for, if a command went to the task.
fn unsubscribe(
    inner: &Inner,
    topic: &str,
    cell: Option<&Arc<SubCell>>,
) -> Option<oneshot::Receiver<()>> {
    let mut held = lock(&inner.subscriptions);
    let current = held.get(topic)?;
    if cell.is_some_and(|cell| !Arc::ptr_eq(cell, current)) {
        return None;
    }
    let current = held.remove(topic).expect("just found");
    current.end();
    let (tx, rx) = oneshot::channel();
    inner
        .commands
        .send(Command::Unsubscribe(current, tx))
        .ok()
        .map(|()| rx)
}

/// Completes when `done` is answered (or dropped), at once without one.
async fn wait_done(done: Option<oneshot::Receiver<()>>) {
    if let Some(done) = done {
        let _ = done.await;
    }
}

fn closed() -> PublishError {
    PublishError::local("closed", "the client is closed", false)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn tokio_now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribing_twice_returns_the_same_subscription() {
        let client = Client::connect("ws://127.0.0.1:9/ws", Options::default()).unwrap();
        let a = client.subscribe("t", None);
        let b = client.subscribe("t", None);
        assert!(Arc::ptr_eq(&a.cell, &b.cell));
        assert_eq!(a.state(), SubscriptionState::Subscribing);
        client.unsubscribe("t").await;
        assert_eq!(a.state(), SubscriptionState::Unsubscribed);
        let c = client.subscribe("t", None);
        assert!(!Arc::ptr_eq(&a.cell, &c.cell), "a new one after the end");
        // The old handle does not end the new subscription.
        a.unsubscribe().await;
        assert_eq!(c.state(), SubscriptionState::Subscribing);
        client.close().await;
        assert_eq!(client.state(), State::Closed);
        let error = client.publish("t", 1.into()).await.unwrap_err();
        assert_eq!(error.code, "closed");
    }

    #[test]
    fn a_bad_url_is_refused_at_once() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        assert!(Client::connect("http://127.0.0.1/ws", Options::default()).is_err());
    }
}
