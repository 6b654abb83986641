//! Topics, fanout and history, without sockets: pubsub knows frames and connection ids, never a
//! socket, a backend or a route. The push server's engine threads (reactors) use it to deliver
//! each published message to every subscriber, framed once.
//!
//! # Two halves
//!
//! - [`Hub`], one, shared by every reactor thread: per topic the sequence number (`seq`, from 1
//!   without gaps, meaningful within the hub's [`Epoch`]), the history ring that resumes replay,
//!   and the set of reactors that have local subscribers. A publish assigns the next `seq` and
//!   hands the message to the caller's closure under the topic's lock, so whatever the closure
//!   enqueues (one send per interested reactor) leaves in `seq` order.
//! - [`Registry`], one per reactor, unshared (no locks): topic name to local subscriber ids, and
//!   the fanout list for a message that arrived from the hub. Each connection keeps its own
//!   [`Subscriptions`] (16 bytes), a list of small [`TopicId`] handles, so closing it can leave
//!   every topic.
//!
//! A [`Message`] holds its payload as one WebSocket frame in an `Arc<[u8]>` ([`Payload`]), built
//! before any lock is taken: every subscriber on every reactor is sent the same bytes by
//! reference, and history holds the same `Arc`.
//!
//! Resume without a gap or a duplicate: a subscribe reads the topic's current `seq` (and, when
//! asked, the missed history) in the same critical section that makes the hub send future
//! publishes to the reactor; the registry then keeps the new subscriber out of every message at
//! or below that `seq`, which history already covered.
//!
//! In a cluster the hub is *fed* (see [`Hub::fed`]): the bridge numbers messages upstream and
//! delivers them here, and what reactors receive is a [`Post`]: a message, word that a topic
//! a subscribe waited for is ready, or that the upstream renumbered a topic (a reset).
//!
//! # First use
//!
//! One reactor (index 0) with one subscribed connection (id 7); the inbox that carries messages
//! from the hub to the reactor is a channel here (the engine's mailboxes in the server).
//!
//! ```
//! use std::sync::{Arc, mpsc};
//! use std::time::Instant;
//!
//! use clarion_pubsub::{Epoch, Format, Hub, HubConfig, Payload, Registry, Resume, Subscriptions};
//!
//! let now = Instant::now();
//! let hub = Arc::new(Hub::new(HubConfig::default(), Epoch::random()));
//! let mut registry = Registry::new(hub.clone(), 0)?;
//! let mut subscriptions = Subscriptions::default(); // kept in the connection's state
//! registry.subscribe(7, &mut subscriptions, "news", None, usize::MAX, now)?;
//!
//! // Any thread publishes: framed once, numbered under the topic's lock, posted to each reactor
//! // that has subscribers.
//! let (to_reactor, inbox) = mpsc::channel();
//! let payload = Payload::new(Format::Text, b"hello");
//! let seq = hub.publish_with("news", payload, now, |message, reactors| {
//!     for reactor in reactors.iter() {
//!         assert_eq!(reactor, 0);
//!         to_reactor.send(message.clone()).unwrap();
//!     }
//!     message.seq()
//! })?;
//! assert_eq!(seq, 1);
//!
//! // The reactor drains its inbox and sends each local subscriber the shared frame.
//! for message in inbox.try_iter() {
//!     let frame: &Arc<[u8]> = message.payload().frame(); // the same bytes for everyone
//!     let subscribers: Vec<usize> = registry.fanout(&message).collect();
//!     assert_eq!((subscribers, &frame[..]), (vec![7], &b"\x81\x05hello"[..]));
//! }
//!
//! // A client that reconnects with the last `seq` it saw gets what it missed from history.
//! let resume = Resume { since: 0, epoch: Some(hub.epoch()) };
//! let missed = hub.since("news", &resume, now);
//! assert!(missed.recovered);
//! assert_eq!(missed.messages[0].payload().bytes(), b"hello");
//!
//! registry.unsubscribe_all(7, &mut subscriptions); // the connection closed
//! # Ok::<(), clarion_pubsub::Error>(())
//! ```
//!
//! # The modules
//!
//! `hub/` (the shared half: `mod.rs` the hub and joining, `topics.rs` its sharded table and
//! history bookkeeping, `local.rs` local numbering, `fed.rs` cluster mode), `registry.rs` (the
//! per-reactor half), `message.rs` (payloads, frames, posts), `history.rs` (a topic's ring and the
//! resume rule), `epoch.rs`, `reactors.rs` (reactor sets) and `topic.rs` (valid topic names).
#![deny(missing_docs)]

mod epoch;
mod history;
mod hub;
mod message;
mod reactors;
mod registry;
mod topic;

pub use epoch::{Epoch, Resume};
pub use history::Recovery;
pub use hub::{Admission, Delivered, Hub, HubConfig, HubStats, Interest, TopicCount};
pub use message::{
    Format, Message, Payload, Post, frame_payload, shared_compressed_frame, shared_frame,
};
pub use reactors::{MAX_REACTORS, Reactors};
pub use registry::{Registry, Subscribed, Subscriptions, TopicId};
pub use topic::{TopicError, validate_topic};

/// Why pubsub refused an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The hub already holds its configured maximum of topics.
    TooManyTopics,
    /// A reactor index at or above [`MAX_REACTORS`].
    TooManyReactors,
    /// A connection id or local topic count too large for the registry's 32-bit bookkeeping.
    IdOverflow,
    /// A fed hub is fetching the topic from its upstream: subscribe again once it posts that
    /// the topic is ready.
    Pending,
    /// Clients created new topics faster than the hub's `client_topic_rate` allows: try again
    /// later (existing topics are not affected).
    TooManyNewTopics,
    /// The reactors that would receive the message are behind (their inboxes are full): it was
    /// not published; try again later.
    Busy,
}

impl Error {
    /// Worth trying again later (the server is behind, or clients are creating topics too
    /// fast), rather than never.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Busy | Error::TooManyNewTopics)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Error::TooManyTopics => "too many topics",
            Error::TooManyReactors => "too many reactors for the hub's 64-bit reactor sets",
            Error::IdOverflow => "id does not fit the registry's 32-bit bookkeeping",
            Error::Pending => "the topic is being fetched from the cluster",
            Error::TooManyNewTopics => "too many new topics at once; try again later",
            Error::Busy => "the server is behind on delivering; try again later",
        })
    }
}

impl std::error::Error for Error {}
