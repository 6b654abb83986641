//! A connection's entry in its reactor's table, and its flags: everything an idle connection
//! costs (no buffer, no queue, no timer node), its allowance of messages and bytes included.

use bitflags::bitflags;
use clarion_protocol::Connection;
use slab::Slab;

use crate::limits::Allowance;
use crate::sys::completion::Sockets;
use crate::timer::TimerKey;
use crate::txqueue::TxQueue;

bitflags! {
    /// Where a connection is in its life: two bytes of its entry (in what was padding).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub(crate) struct ConnFlags: u16 {
        /// The WebSocket is over: `on_close` has run, FIN goes out once the queue drains, and
        /// the socket is closed at the peer's FIN or after the close timeout.
        const LINGER = 1;
        /// The handler saw `on_open`, so it gets `on_close`.
        const OPENED = 1 << 1;
        /// Readiness: a read hit the per-event cap, so read again next turn (edge-triggered: no
        /// new event comes for bytes already there).
        const READ_AGAIN = 1 << 2;
        /// Closed: the entry stays (with its queue, which the kernel may still be reading) until
        /// the backend has no operation in flight on it and the current turn's events are all
        /// handled, so that no event of a batch reaches a connection that reuses the token.
        const RELEASING = 1 << 3;
        /// FIN was sent.
        const FIN_SENT = 1 << 4;
        /// Readiness: the peer's FIN is pending behind the data, so read to the end of the
        /// stream.
        const PEER_CLOSED = 1 << 5;
        /// Bytes were queued for it this turn that the end of the turn moves on (written, or
        /// submitted), once for everything queued.
        const DIRTY = 1 << 6;
        /// It negotiated permessage-deflate and is counted by the reactor's compression until
        /// released (once, when its WebSocket ends).
        const DEFLATE = 1 << 7;
        /// Over its write cap: not read until its queue drains to the low mark (and dropped if
        /// it stays over past `write_timeout`; the reactor's `stalled` list has since when).
        const PAUSED = 1 << 8;
        /// Its `rx` holds received bytes not parsed yet (it went over its cap between frames):
        /// they are fed, in order, before anything read later.
        const UNREAD = 1 << 9;
        /// The handler asked for `on_writable` once the queue is at or below the low mark.
        const WANTS_WRITABLE = 1 << 10;
        /// Still sending its request head (or body): counted against `max_handshakes_per_reactor`.
        const HANDSHAKING = 1 << 11;
        /// The listener takes PROXY protocol headers and this connection's first bytes have not
        /// been looked at yet ([`super::proxy_header`]).
        const PROXY_HEADER = 1 << 12;
    }
}

/// One connection's entry in the table (see [`crate::connection_size`] for what it weighs).
pub(crate) struct Conn<S, C> {
    pub(crate) socket: S,
    pub(crate) ws: Connection,
    /// A partial frame or message, in a buffer lent from the reactor's pool while it lasts.
    #[allow(
        clippy::box_collection,
        reason = "one word per connection instead of a Vec's three"
    )]
    pub(crate) rx: Option<Box<Vec<u8>>>,
    /// Unsent bytes, in a queue lent from the reactor's pool until they are sent.
    pub(crate) tx: Option<Box<TxQueue>>,
    /// Its node in the timer wheel, while its next deadline is less than a sweep away.
    pub(crate) timer: Option<TimerKey>,
    /// The handler's state, from the upgrade on.
    pub(crate) app: Option<C>,
    pub(crate) flags: ConnFlags,
    /// Messages and bytes it may still send now (refilled by the sweep).
    pub(crate) allowance: Allowance,
}

impl<S, C> Conn<S, C> {
    /// A new connection, handshaking, with a full allowance.
    pub(crate) fn new(
        socket: S,
        ws: Connection,
        timer: Option<TimerKey>,
        allowance: Allowance,
    ) -> Self {
        Conn {
            socket,
            ws,
            rx: None,
            tx: None,
            timer,
            app: None,
            flags: ConnFlags::HANDSHAKING,
            allowance,
        }
    }

    /// Whether the handler may send to it: an open WebSocket or a streaming response.
    pub(crate) fn writable(&self) -> bool {
        self.ws.can_send() || self.ws.is_streaming()
    }

    /// Bytes waiting to be written.
    pub(crate) fn queued(&self) -> usize {
        self.tx.as_deref().map_or(0, TxQueue::len)
    }
}

/// The table lends a completion backend its sockets while it reaps.
impl<S, C> Sockets<S> for Slab<Conn<S, C>> {
    fn socket(&mut self, token: usize) -> Option<&mut S> {
        self.get_mut(token).map(|conn| &mut conn.socket)
    }
}

/// A connection that exists and is not being released.
pub(crate) fn live<S, C>(conns: &mut Slab<Conn<S, C>>, token: usize) -> Option<&mut Conn<S, C>> {
    conns
        .get_mut(token)
        .filter(|conn| !conn.flags.contains(ConnFlags::RELEASING))
}

/// A live connection whose WebSocket is open for sending, or that carries a streaming response.
pub(crate) fn open<S, C>(conns: &mut Slab<Conn<S, C>>, token: usize) -> Option<&mut Conn<S, C>> {
    live(conns, token).filter(|conn| !conn.flags.contains(ConnFlags::LINGER) && conn.writable())
}

/// Same shape as `slab`'s private entry type: what one connection really occupies in the table.
#[allow(dead_code, reason = "only its size is used")]
pub(crate) enum SlabEntry<T> {
    Vacant(usize),
    Occupied(T),
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::sys::uring::Direct;

    /// Shaped like the push server's per-connection state: a subscription list (two words), a
    /// side-table key, a route and a flag; 24 bytes, with a niche for `Option`.
    #[allow(dead_code, reason = "only its size is used")]
    struct PushState {
        subs: [usize; 2],
        extra: Option<NonZeroU32>,
        route: Route,
        may_publish: bool,
    }

    #[allow(dead_code, reason = "only its size is used")]
    enum Route {
        Echo,
        Topic,
        Envelope,
    }

    #[test]
    fn an_idle_connection_costs_its_entry_and_nothing_else() {
        assert_eq!(size_of::<PushState>(), 24);
        assert_eq!(size_of::<ConnFlags>(), 2);
        assert_eq!(size_of::<Allowance>(), 6);
        assert_eq!(size_of::<Connection>(), 48, "the protocol state machine");
        // The timer key has a niche: no tag for the `Option`.
        assert_eq!(size_of::<Option<TimerKey>>(), 4);
        // Epoll's socket is a descriptor, io_uring's a slot and its operations: 4 bytes each.
        assert_eq!(size_of::<std::net::TcpStream>(), 4);
        assert_eq!(size_of::<Direct>(), 4);
        // socket 4 + protocol 48 + rx 8 + tx 8 + timer 4 + state 24 + flags 2 + allowance 6:
        // 104, no padding. The write cap, the pause and the rate limits cost no byte more than
        // before they came (the timer's tag and the padding paid for them).
        assert_eq!(size_of::<Conn<std::net::TcpStream, PushState>>(), 104);
        assert_eq!(size_of::<Conn<Direct, PushState>>(), 104);
        // The slab's tag goes in the socket's niche: 104 bytes per connection in the table.
        assert_eq!(
            size_of::<SlabEntry<Conn<std::net::TcpStream, PushState>>>(),
            104
        );
        assert_eq!(size_of::<SlabEntry<Conn<Direct, PushState>>>(), 104);
        assert_eq!(crate::connection_size::<PushState>(), 104);
        // With no state of its own (an echo server): 88, 8 more than before the allowance came:
        // the rest fills 80 bytes exactly, and the `Option` of a zero-sized state takes one.
        assert_eq!(crate::connection_size::<()>(), 88);
    }
}
