//! Topics, fanout and history, without sockets: pubsub knows frames and connection ids, never a
//! socket, a backend or a route.
//!
//! Two halves:
//! - [`Hub`], shared by every reactor thread: per topic the sequence number, the history ring and
//!   the set of reactors that have local subscribers. A publish assigns the next `seq` and hands
//!   the message to the caller's closure under the topic's lock, so whatever the closure enqueues
//!   (one send per interested reactor) leaves in `seq` order.
//! - [`Registry`], one per reactor, unshared: topic name to local subscriber ids, and the
//!   fanout list for a message that arrived from the hub. Each connection keeps its own
//!   [`Subscriptions`], a list of small [`TopicId`] handles, so closing it can leave every topic.
//!
//! In a cluster the hub is *fed* (see [`Hub::fed`]): the bridge numbers messages upstream and
//! delivers them here, and what reactors receive is a [`Post`]: a message, word that a topic
//! a subscribe waited for is ready, or that the upstream renumbered a topic (a reset).
//!
//! Resume without a gap or a duplicate: a subscribe reads the topic's current `seq` (and, when
//! asked, the missed history) in the same critical section that makes the hub send future
//! publishes to the reactor; the registry then keeps the new subscriber out of every message at
//! or below that `seq`, which history already covered.

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
pub use hub::{Delivered, Hub, HubConfig, HubStats, Interest};
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
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Error::TooManyTopics => "too many topics",
            Error::TooManyReactors => "too many reactors for the hub's 64-bit reactor sets",
            Error::IdOverflow => "id does not fit the registry's 32-bit bookkeeping",
            Error::Pending => "the topic is being fetched from the cluster",
        })
    }
}

impl std::error::Error for Error {}
