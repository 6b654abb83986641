//! The application's side of a reactor: the [`Handler`] trait, and what its callbacks are told
//! and answer.

use std::net::SocketAddr;
use std::time::Instant;

use clarion_protocol::handshake::{Rejection, Request};
use clarion_protocol::{CloseCode, MessageKind};

use crate::{ConnId, Ctx, Local};

/// The application on top of a reactor; one instance per reactor thread, so no locking.
///
/// Every callback is told `now`, the time the reactor woke for the event: a handler never
/// needs to read the clock for bookkeeping.
pub trait Handler {
    /// Per-connection state, stored in the connection's slab entry: every byte here is paid by
    /// every connection, so keep it small ([`crate::connection_size`] says what an entry
    /// weighs with it).
    type Conn;

    /// What other threads post to this reactor through [`crate::Mailboxes`].
    type Inbox: Send + 'static;

    /// A complete HTTP request (head and `Content-Length` body) arrived. WebSocket upgrades are
    /// validated by the reactor after an [`Answer::Upgrade`]; anything else is answered as
    /// plain HTTP.
    fn on_request<'r>(
        &mut self,
        request: &Request<'r>,
        body: &[u8],
        info: &RequestInfo,
    ) -> Answer<'r, Self::Conn>;

    /// The WebSocket is open (the 101 answer is queued), or a streaming response began
    /// ([`Answer::Stream`]: its head is queued).
    fn on_open(&mut self, _ctx: &mut Ctx<'_, Self::Conn>) {}

    /// A complete message arrived.
    fn on_message(&mut self, ctx: &mut Ctx<'_, Self::Conn>, kind: MessageKind, payload: &[u8]);

    /// The WebSocket (or the streaming response) is over (close handshake, failure, timeout or
    /// dropped TCP); called once per opened connection. `code` is the close code sent or received, `None` if the TCP
    /// connection dropped without one.
    fn on_close(
        &mut self,
        _id: ConnId,
        _conn: &mut Self::Conn,
        _code: Option<CloseCode>,
        _now: Instant,
    ) {
    }

    /// The last bytes of a streaming response ([`Answer::Stream`]) that the reactor ends by
    /// itself, with `code` and `reason` (at shutdown: 1001 "server shutdown"): written into `out`
    /// before the connection closes, as a WebSocket gets its close frame (a closing event, a
    /// chunked body's last chunk). Nothing by default. The handler's own closes
    /// ([`Ctx::close`], [`Local::close`]) write their ending themselves, before.
    fn stream_ending(
        &mut self,
        _conn: &mut Self::Conn,
        _code: CloseCode,
        _reason: &str,
        _out: &mut Vec<u8>,
    ) {
    }

    /// A message posted to this reactor. Frames sent through `local` are queued by reference
    /// and each touched connection is written once after the inbox is drained, so a subscriber
    /// behind on several messages gets them in one write.
    fn on_inbox(&mut self, _local: &mut Local<'_, Self::Conn>, _message: Self::Inbox) {}

    /// The reactor's sweep begins: it walks its table about once a second
    /// ([`crate::SWEEP_INTERVAL`] apart at least; later when the loop is busy) to arm the timers
    /// of connections whose deadlines come near, 1,024 connections a turn (a large table takes
    /// several turns, so the walk neither holds up other work nor writes to every connection at
    /// once). Return true to have [`Handler::on_sweep_conn`] called for every open WebSocket
    /// during this sweep; false (the default) costs nothing per connection.
    fn on_sweep(&mut self, _now: Instant) -> bool {
        false
    }

    /// During a sweep that [`Handler::on_sweep`] asked for, once per open WebSocket or streaming
    /// response (a connection opened during the sweep may be left for the next): the place
    /// for the handler's own coarse deadlines (a token's expiry, an application heartbeat)
    /// without a timer or an allocation per connection. Sends and closes work as in any other
    /// callback.
    fn on_sweep_conn(&mut self, _ctx: &mut Ctx<'_, Self::Conn>) {}

    /// The connection's queue drained to its low mark (half its write cap) after
    /// [`Ctx::notify_writable`] or [`Local::notify_writable`]: the place to send the next slice
    /// of something long (a replay) without holding it all in the queue. Called once per ask.
    fn on_writable(&mut self, _ctx: &mut Ctx<'_, Self::Conn>) {}

    /// The engine enforced a limit on a client by itself (closed it at accept, at the handshake
    /// deadline, for its rate, its stalled queue or the reactor's buffer budget): the place to
    /// log or count it. Called before the connection's `on_close`, if it has one.
    fn on_limit(&mut self, _hit: &LimitHit<'_, Self::Conn>) {}
}

/// A limit the engine enforces by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// The process's `max_connections` or the reactor's `max_connections_per_reactor` was
    /// reached: closed at accept.
    Connections,
    /// The reactor's `max_handshakes_per_reactor` was reached: closed at accept.
    Handshakes,
    /// No complete request within `handshake_timeout` (a silent or drip-feeding client): closed.
    HandshakeTimeout,
    /// Messages or bytes per second past the connection's allowance: closed with 1008
    /// "rate limit".
    Rate,
    /// Over its write cap for `write_timeout` (its peer is not reading): dropped.
    WriteTimeout,
    /// Its receive buffer would take the reactor past `max_partial_bytes_per_reactor`: closed
    /// with 1013 "try again later".
    PartialBudget,
}

impl Limit {
    /// What happened, for a log line.
    pub fn reason(self) -> &'static str {
        match self {
            Limit::Connections => "too many connections",
            Limit::Handshakes => "too many connections still handshaking",
            Limit::HandshakeTimeout => "no complete request within the handshake timeout",
            Limit::Rate => "rate limit",
            Limit::WriteTimeout => "not reading: over its write cap past the write timeout",
            Limit::PartialBudget => "the reactor's buffer for partial messages is full",
        }
    }
}

/// A limit enforced on one client: what [`Handler::on_limit`] is told.
#[derive(Debug)]
pub struct LimitHit<'a, C> {
    /// Which limit.
    pub limit: Limit,
    /// The connection's id in its reactor; `None` for one closed at accept.
    pub id: Option<ConnId>,
    /// The peer's address, when known: at accept and during the handshake as
    /// [`RequestInfo::peer`] has it; after the upgrade on epoll (asked of the socket), not on
    /// io_uring.
    pub peer: Option<SocketAddr>,
    /// The application's state of an opened connection.
    pub conn: Option<&'a C>,
    /// When the reactor woke for it.
    pub now: Instant,
}

/// Where and when a request arrived: what [`Handler::on_request`] is told besides the request
/// itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    pub(crate) id: ConnId,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) listener: usize,
    pub(crate) now: Instant,
    pub(crate) tls: bool,
}

impl RequestInfo {
    /// What a request on connection `id` from `peer`, at `now`, on listener 0, is told (for
    /// testing a handler without sockets; the reactor makes these itself).
    pub fn new(id: ConnId, peer: Option<SocketAddr>, now: Instant) -> RequestInfo {
        RequestInfo {
            id,
            peer,
            listener: 0,
            now,
            tls: false,
        }
    }

    /// The same, for a request that came over TLS.
    pub fn over_tls(self) -> RequestInfo {
        RequestInfo { tls: true, ..self }
    }

    /// Whether the request came over TLS (`https`, `wss`).
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The same request, on listener `listener`.
    pub fn on_listener(self, listener: usize) -> RequestInfo {
        RequestInfo { listener, ..self }
    }

    /// The listener the connection was accepted on: 0 for [`crate::Config::listen`], `i + 1`
    /// for `also_listen[i]`. A handler serves different routes on each (a public and an admin
    /// port).
    pub fn listener(&self) -> usize {
        self.listener
    }

    /// The connection's id in its reactor (the id its WebSocket keeps if the request upgrades).
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The peer's address, when the backend reports it (always on epoll; on io_uring when
    /// [`crate::UringConfig::peer_addresses`] asks for it, or the PROXY protocol is on). Behind
    /// a trusted proxy's PROXY protocol header, the client's address that the header gives.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// When the reactor woke for this request.
    pub fn now(&self) -> Instant {
        self.now
    }
}

/// How to answer a request head.
#[non_exhaustive]
pub enum Answer<'r, C> {
    /// Open a WebSocket with this state and subprotocol (one the client offered).
    Upgrade {
        /// The connection's application state.
        conn: C,
        /// The chosen subprotocol.
        protocol: Option<&'r str>,
    },
    /// Answer as plain HTTP. The connection is kept for the next request if the client asks
    /// (HTTP/1.1 by default), within [`crate::Config::keep_alive_requests`], unless the
    /// response carries `Connection: close`.
    Respond(Response),
    /// Answer with a response whose body is streamed (Server-Sent Events, NDJSON): its head is
    /// written now (no `Content-Length`; the response's body, if any, follows it), then the
    /// connection stays open with this state, gets [`Handler::on_open`], and carries whatever
    /// the handler sends ([`Ctx::send_bytes`], or shared bytes through
    /// [`Local::send_shared`], by reference, exactly as WebSocket frames are), until it is
    /// closed. The handler frames the body (chunked or not) and says so in `response.headers`,
    /// and writes its end: before its own closes, and through [`Handler::stream_ending`] when
    /// the reactor ends it (shutdown).
    Stream {
        /// The connection's application state.
        conn: C,
        /// The head (status, content type, further headers) and the first bytes of the body.
        response: Response,
    },
    /// Refuse with a status (and the header it calls for).
    Reject(Rejection),
}

/// A plain HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Further headers.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a body and no further headers.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }
}

/// What [`Local::send_shared`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// Queued for writing.
    Queued,
    /// Not queued: the connection already has more than the allowed bytes waiting.
    Full,
    /// Not queued: the connection is gone or no longer open.
    Closed,
}
