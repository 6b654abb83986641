//! The Rust client of the Clarion push server: the `/ws` envelope protocol with everything a
//! production subscriber needs, as `docs/clients.md` specifies for both official clients.
//!
//! - Subscriptions survive reconnections and resume from their last `seq` and `epoch`: each
//!   message reaches the application once, in order; a loss the server cannot repair is
//!   announced (`Subscribed { recovered: false }`), never silent.
//! - Reconnection with exponential backoff and full jitter, stop codes honoured (a refused
//!   token, policy 1008), a heartbeat watch that detects a dead connection, token refresh
//!   before expiry, publishes acknowledged or rejected with the server's code and queued (up to
//!   a bound) while disconnected.
//! - Async on tokio; the WebSocket is Clarion's own sans-IO protocol core
//!   ([`clarion_protocol`], client role) over a tokio `TcpStream`, through rustls for `wss:`
//!   URLs (certificates checked against the platform's roots and any CA added in [`Tls`];
//!   sessions resumed on reconnection), and all client logic is a sans-IO state machine too,
//!   tested on virtual time.
//!
//! ```no_run
//! use clarion_client::{Client, Event, Options};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let client = Client::connect("ws://127.0.0.1:9001/ws", Options::default()).unwrap();
//! let mut events = client.events();
//! client.subscribe("chat.lobby", None);
//! tokio::spawn({
//!     let client = client.clone();
//!     async move { client.publish("chat.lobby", "hi".into()).await }
//! });
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Message { topic, seq, data } => println!("{topic} #{seq}: {data:?}"),
//!         Event::Subscribed { resumed: true, recovered: false, topic, .. } => {
//!             println!("{topic}: messages were lost while away, reload its state");
//!         }
//!         other => println!("{other:?}"),
//!     }
//! }
//! # }
//! ```
//!
//! The modules: [`session`](crate) (the protocol logic: attempts, commands and answers,
//! timers, stop codes), `subscriptions` (resume, gaps, resets), `queue` (publishes held while
//! disconnected), `backoff`, `wire` (the JSON on the wire), `tls` (trust and the rustls
//! settings), and `driver` (the tokio task that moves the bytes).
#![deny(missing_docs)]

mod backoff;
mod client;
mod driver;
mod event;
mod events;
mod options;
mod queue;
mod session;
mod subscriptions;
mod tls;
mod url;
mod wire;

pub use backoff::Backoff;
pub use client::{Client, Subscription};
pub use event::{Data, Event, Position, PublishAck, PublishError, State, SubscriptionState};
pub use events::Events;
pub use options::{Auth, BoxError, Options, TokenFuture, TokenProvider};
pub use tls::Tls;
pub use url::ConnectError;

/// The README's Rust blocks, compiled as doctests so that they keep up with the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
