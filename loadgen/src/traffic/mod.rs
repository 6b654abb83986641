//! What a mode does on its connections, as callbacks the engine makes: the engine owns sockets,
//! dialing, timeouts and closing; a [`Traffic`] decides what to send and how to read what arrives.

pub mod churn;
pub mod echo;
pub mod envelope;
pub mod idle;
pub mod subscribe;

use std::borrow::Cow;

use clarion_protocol::{Connection, MessageKind};

use crate::failure::Reason;
use crate::stamp::Stamp;
use crate::tally::Tally;
use crate::url::Target;

/// What the engine should do with a connection after a callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep going.
    Continue,
    /// The connection did its job: close it cleanly.
    Finish,
    /// Drop it, counted under this reason.
    Fail(Reason),
}

/// One open connection, lent to a callback.
pub struct Link<'a> {
    /// Its protocol state; sends go through it into `tx`.
    pub ws: &'a mut Connection,
    /// Bytes to write to the socket after the callback.
    pub tx: &'a mut Vec<u8>,
    /// The loop's counters.
    pub tally: &'a mut Tally,
    /// When the event was read.
    pub now_ns: u64,
    /// The connection's slot in its loop.
    pub slot: usize,
    /// The connection's global index (picks its source, target and topic).
    pub index: usize,
    /// Whether traffic runs (the warm-up or the measurement window: new messages may be sent).
    pub sending: bool,
    /// When the measurement begins: messages stamped earlier are warm-up, not counted.
    pub go_ns: u64,
    /// When the measurement ends (0 before it begins).
    pub stop_ns: u64,
}

impl Link<'_> {
    /// Whether a message stamped `sent_ns` counts (it was sent in the measurement window, not
    /// during the warm-up).
    pub fn measured(&self, sent_ns: u64) -> bool {
        sent_ns >= self.go_ns
    }

    /// Sends `payload` (which the protocol masks in place) and counts it.
    pub fn send(&mut self, kind: MessageKind, payload: &mut [u8]) {
        if self.ws.send_in_place(kind, payload, self.tx).is_ok() {
            self.tally.messages_sent += 1;
        }
    }

    /// Sends a copy of `template` with `stamp` written over its start.
    pub fn send_stamped(
        &mut self,
        kind: MessageKind,
        template: &[u8],
        scratch: &mut Vec<u8>,
        stamp: Stamp,
    ) {
        scratch.clear();
        scratch.extend_from_slice(template);
        stamp.write(scratch);
        self.send(kind, scratch);
    }
}

/// A mode's behaviour on the connections of one event loop.
pub trait Traffic {
    /// Per-connection state.
    type Conn: Default;

    /// The request path for connection `index` to `target`.
    fn path<'t>(&self, _index: usize, target: &'t Target) -> Cow<'t, str> {
        Cow::Borrowed(&target.path)
    }

    /// The connection is being dialed; the dial was due at `due_ns`.
    fn dialed(&mut self, _conn: &mut Self::Conn, _due_ns: u64) {}

    /// The WebSocket just opened (again, after the reconnect storm dropped it).
    fn opened(&mut self, _conn: &mut Self::Conn, _link: &mut Link<'_>) -> Verdict {
        Verdict::Continue
    }

    /// Whether the connection counts as ramped up (a subscription may have to be acknowledged).
    fn ready(&self, _conn: &Self::Conn) -> bool {
        true
    }

    /// The measurement begins at `go_ns`; called once before [`Traffic::started`].
    fn begin(&mut self, _go_ns: u64) {}

    /// The measurement begins, for each open connection.
    fn started(&mut self, _conn: &mut Self::Conn, _link: &mut Link<'_>) {}

    /// A message arrived.
    fn message(
        &mut self,
        conn: &mut Self::Conn,
        link: &mut Link<'_>,
        kind: MessageKind,
        payload: &[u8],
    ) -> Verdict;

    /// Rate-driven modes: pushes the slots that have sends due by `now_ns` into `due`.
    fn schedule(&mut self, _now_ns: u64, _due: &mut Vec<usize>) {}

    /// When [`Traffic::schedule`] next has something due.
    fn next_due_ns(&self) -> Option<u64> {
        None
    }

    /// Sends what is due on a slot [`Traffic::schedule`] named.
    fn send_due(&mut self, _conn: &mut Self::Conn, _link: &mut Link<'_>) {}

    /// After the measurement: whether nothing is left to wait for (`sockets`: still open).
    fn drained(&self, tally: &Tally, sockets: usize) -> bool;
}
