//! What the client tells the application: events, positions, publish results and errors
//! (`docs/clients.md`, sections 3 and 8).

use std::fmt;
use std::time::Duration;

/// A delivery's payload: the JSON value the server sent, or bytes for a binary message
/// (`"encoding":"base64"` on the wire).
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// A JSON payload (a text payload arrives as a JSON string).
    Json(serde_json::Value),
    /// A binary payload, decoded.
    Binary(Vec<u8>),
}

/// Where a subscription stands in its topic: the last `seq` it accounted for, in `epoch`. Persist
/// it to resume later with [`crate::Client::subscribe`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// The last `seq` emitted, or announced by an ack or a reset.
    pub seq: u64,
    /// The server run (or, in cluster mode, the Redis data set) the `seq` belongs to.
    pub epoch: String,
}

/// Something that happened, in the order it happened (`docs/clients.md`, section 3).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The `hello` ack arrived on a new connection.
    Connected {
        /// The heartbeat interval in effect (zero: none, no watch).
        heartbeat: Duration,
        /// When the server will end the connection for the token's expiry, if it uses tokens.
        expires_in: Option<Duration>,
    },
    /// A connection ended or an attempt failed.
    Disconnected {
        /// The close code seen (1006 when the socket failed or the attempt did; 4000 for the
        /// client's own heartbeat timeout).
        code: u16,
        /// The close reason, or what failed.
        reason: String,
        /// Whether the client will try again.
        will_retry: bool,
        /// When it will, if it will.
        retry_in: Option<Duration>,
        /// The HTTP status of a refused upgrade.
        status: Option<u16>,
    },
    /// A subscribe was acknowledged (the first one and every resubscribe).
    Subscribed {
        /// The topic.
        topic: String,
        /// Whether the subscribe carried a position (`since`).
        resumed: bool,
        /// Whether everything after that position follows. `resumed && !recovered`: messages
        /// were lost; reload the topic's state from its source of truth.
        recovered: bool,
        /// The topic's last `seq` when the subscription took effect.
        seq: u64,
        /// The epoch of that `seq`.
        epoch: String,
    },
    /// A delivery, each `seq` once and in order per topic (section 7).
    Message {
        /// The topic.
        topic: String,
        /// Its number in the topic.
        seq: u64,
        /// The payload.
        data: Data,
    },
    /// Cluster renumbering: drop what you hold of `topic` above `seq` (section 7.5).
    Reset {
        /// The topic.
        topic: String,
        /// The last `seq` that stands; the next message is `seq` + 1.
        seq: u64,
        /// The epoch from now on.
        epoch: String,
        /// The numbering started over: reload the topic's state.
        epoch_changed: bool,
    },
    /// Something went wrong that no future reports (a subscription refused or ended by the
    /// server, a refused refresh, the token provider failing, an unreadable message).
    Error {
        /// `forbidden`, `invalid_topic`, `too_many_topics`, `bad_request`, `unauthorized`,
        /// `token_provider`, `protocol`, or another code from the server.
        code: String,
        /// For people.
        message: String,
        /// The subscription it ended, if any.
        topic: Option<String>,
    },
}

/// A publish the server accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishAck {
    /// The topic.
    pub topic: String,
    /// The `seq` the message got; `None` in cluster mode, where Redis numbers it after the ack.
    pub seq: Option<u64>,
}

/// Why a publish (or a ping) failed. Every publish ends in exactly one ack or one of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishError {
    /// The server's code (`forbidden`, `invalid_topic`, `too_many_topics`, `unavailable`,
    /// `bad_request`) or a local one: `disconnected`, `queue_full`, `timeout`, `closed`.
    pub code: String,
    /// For people.
    pub message: String,
    /// Whether the server may have taken it (it was sent and not answered). The client never
    /// sends it again by itself.
    pub maybe_sent: bool,
}

impl PublishError {
    pub(crate) fn local(code: &str, message: &str, maybe_sent: bool) -> PublishError {
        PublishError {
            code: code.to_owned(),
            message: message.to_owned(),
            maybe_sent,
        }
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if self.maybe_sent {
            f.write_str(" (it may have been published)")?;
        }
        Ok(())
    }
}

impl std::error::Error for PublishError {}

/// Where the client is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// An attempt is under way (token, upgrade, `hello`).
    Connecting,
    /// The `hello` ack arrived.
    Connected,
    /// Waiting to retry.
    Disconnected,
    /// Stopped for good (`close()`, or a code that means stop).
    Closed,
}

/// Where a subscription is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriptionState {
    /// Its subscribe is sent or will be on the next connection.
    Subscribing,
    /// Acknowledged on the current connection.
    Subscribed,
    /// Ended by the application.
    Unsubscribed,
    /// Refused or ended by the server; never resubscribed.
    Failed,
}
