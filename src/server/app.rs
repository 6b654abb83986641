//! The server's [`Handler`]: routes requests and serves each WebSocket route.
//!
//! WebSocket routes: `/echo` (every message comes back as it came), `/t/<topic>` (a raw topic
//! socket: receives every payload of the topic as is; what it sends is published to it when
//! `client_publish` allows) and `/ws` (the JSON envelope protocol of [`super::envelope`]).
//! HTTP: `/healthz`, `/metrics`, `/stats` and the publish API of [`super::http`]. Anything else
//! is a 404. The protocols are specified in `docs/protocol.md`.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use slab::Slab;

use super::auth::Grants;
use super::envelope::{self, Command, ErrorCode, Id, delivery_frame, format_of};
use super::http;
use super::state::{ClientPublish, Full, Server, SlowConsumer};
use crate::protocol::deflate::{Deflater, Params};
use crate::protocol::handshake::Request;
use crate::protocol::{CloseCode, MessageKind};
use crate::pubsub::{
    self, Message, Payload, Registry, Subscriptions, frame_payload, shared_compressed_frame,
    validate_topic,
};
use crate::reactor::{
    Answer, CompressionConfig, ConnId, Ctx, Handler, Local, Policy, Push, Response,
};

/// What a WebSocket connection is for, chosen by its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/echo`.
    Echo,
    /// `/t/<topic>`: subscribed to one topic, payloads as is.
    Topic,
    /// `/ws`: JSON envelope commands and deliveries.
    Envelope,
}

/// A connection's state in its slab entry: 24 bytes, paid by every connection.
#[derive(Debug)]
pub struct Conn {
    subs: Subscriptions,
    /// Key + 1 in the reactor's side table, for the few connections that have an [`Extra`].
    extra: Option<NonZeroU32>,
    route: Route,
    /// A `/t/` connection may publish what it sends.
    may_publish: bool,
}

/// What only some connections need (token grants, a counted IP), kept out of the slab entry.
#[derive(Debug, Default)]
struct Extra {
    grants: Option<Grants>,
    ip: Option<IpAddr>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.grants.is_none() && self.ip.is_none()
    }
}

/// What an accepted upgrade hands to `on_open`, which the reactor calls right after
/// `on_request` when the handshake succeeds. Kept here rather than in the connection because a
/// handshake that fails drops the connection state without an `on_close`.
#[derive(Debug)]
struct Pending {
    topic: Option<Box<str>>,
    extra: Extra,
}

/// One reactor's application state.
pub struct App {
    server: Arc<Server>,
    index: usize,
    registry: Registry,
    extras: Slab<Extra>,
    pending: Option<Pending>,
    scratch: Vec<u8>,
    /// Compresses fanout frames once for every subscriber they fit; made on first use.
    deflater: Option<Deflater>,
}

impl App {
    /// Reactor `index`'s handler.
    pub fn new(server: Arc<Server>, index: usize) -> Result<App, pubsub::Error> {
        Ok(App {
            registry: Registry::new(server.hub.clone(), index)?,
            server,
            index,
            extras: Slab::new(),
            pending: None,
            scratch: Vec::new(),
            deflater: None,
        })
    }

    /// Checks a WebSocket request (limits, and for pubsub routes origin, token and topic) and
    /// answers the upgrade or the refusal.
    fn websocket<'r>(
        &mut self,
        route: Route,
        request: &Request<'r>,
        peer: Option<SocketAddr>,
        topic: Option<&str>,
    ) -> Answer<'r, Conn> {
        let server = &*self.server;
        let ip = peer.map(|p| p.ip()).filter(|_| server.counts_ips());
        match server.admit(ip) {
            Err(Full::Server) => return refuse(503, "too many connections"),
            Err(Full::Ip) => return refuse(429, "too many connections from this address"),
            Ok(()) => {}
        }
        let mut extra = Extra { grants: None, ip };
        let mut may_publish = false;
        if route != Route::Echo {
            if !server.origins.allows(request) {
                return refuse(403, "origin not allowed");
            }
            if let Some(jwt) = &server.jwt {
                match jwt.authenticate(request) {
                    Ok(grants) => extra.grants = Some(grants),
                    Err(e) => {
                        let mut response = http::error(401, &e.to_string());
                        response
                            .headers
                            .push(("WWW-Authenticate", "Bearer".to_owned()));
                        return Answer::Respond(response);
                    }
                }
            }
            if let Some(topic) = topic {
                if let Err(e) = validate_topic(topic, server.config.max_topic_length) {
                    return refuse(400, &e.to_string());
                }
                if !self.can_subscribe(extra.grants.as_ref(), topic) {
                    return refuse(403, "topic not allowed");
                }
                may_publish = self.can_publish(extra.grants.as_ref(), topic);
            }
        }
        self.pending = Some(Pending {
            topic: topic.map(Box::from),
            extra,
        });
        Answer::Upgrade {
            conn: Conn {
                subs: Subscriptions::default(),
                extra: None,
                route,
                may_publish,
            },
            protocol: None,
        }
    }

    fn can_subscribe(&self, grants: Option<&Grants>, topic: &str) -> bool {
        self.server.jwt.is_none() || grants.is_some_and(|g| g.can_subscribe(topic))
    }

    fn can_publish(&self, grants: Option<&Grants>, topic: &str) -> bool {
        match self.server.config.client_publish {
            ClientPublish::All => true,
            ClientPublish::None => false,
            ClientPublish::Token => grants.is_some_and(|g| g.can_publish(topic)),
        }
    }

    fn grants(&self, conn: &Conn) -> Option<&Grants> {
        let key = conn.extra?.get() as usize - 1;
        self.extras.get(key)?.grants.as_ref()
    }

    fn update_gauge(&self) {
        self.server.counters[self.index]
            .subscriptions
            .store(self.registry.subscriptions() as u64, Relaxed);
    }

    /// A message on `/t/<topic>`: published to the topic, if the connection may.
    fn raw_publish(&mut self, ctx: &mut Ctx<'_, Conn>, kind: MessageKind, payload: &[u8]) {
        let conn = ctx.conn();
        if !conn.may_publish {
            return ctx.close(CloseCode::POLICY_VIOLATION, "publishing not allowed");
        }
        let Some(topic) = conn
            .subs
            .iter()
            .next()
            .and_then(|id| self.registry.name(id))
        else {
            return;
        };
        let payload = Payload::new(format_of(kind, payload), payload);
        if let Err(e) = self.server.publish(topic, payload) {
            ctx.close(CloseCode::POLICY_VIOLATION, &e.to_string());
        }
    }

    /// A message on `/ws`: one command, answered with an ack or an error.
    fn command(&mut self, ctx: &mut Ctx<'_, Conn>, kind: MessageKind, payload: &[u8]) {
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        if kind == MessageKind::Binary {
            let message = "commands are JSON text messages";
            envelope::render_error(&mut out, None, ErrorCode::BadRequest, message);
            self.reply(ctx, &out);
        } else {
            match envelope::parse_command(payload) {
                Ok(command) => self.execute(ctx, command, &mut out),
                Err(e) => {
                    e.render(&mut out);
                    self.reply(ctx, &out);
                }
            }
        }
        self.scratch = out;
    }

    fn execute(&mut self, ctx: &mut Ctx<'_, Conn>, command: Command<'_>, out: &mut Vec<u8>) {
        let id = command.id();
        let topic = command.topic();
        let error = |out: &mut Vec<u8>, code, message: &str| {
            envelope::render_error(out, id, code, message);
        };
        if let Err(e) = validate_topic(topic, self.server.config.max_topic_length) {
            error(out, ErrorCode::InvalidTopic, &e.to_string());
            return self.reply(ctx, out);
        }
        match &command {
            Command::Subscribe { resume, .. } => {
                return self.subscribe(ctx, id, topic, *resume, out);
            }
            Command::Unsubscribe { .. } => {
                let conn_id = ctx.id();
                self.registry
                    .unsubscribe(conn_id, &mut ctx.conn().subs, topic);
                self.update_gauge();
                envelope::render_ack(out, id);
            }
            Command::Publish { format, data, .. } => {
                if !self.can_publish(self.grants(ctx.conn()), topic) {
                    error(
                        out,
                        ErrorCode::Forbidden,
                        "publishing to this topic is not allowed",
                    );
                } else {
                    match self.server.publish(topic, Payload::new(*format, data)) {
                        Ok(seq) => envelope::render_published(out, id, topic, seq),
                        Err(e) => error(out, ErrorCode::TooManyTopics, &e.to_string()),
                    }
                }
            }
        }
        self.reply(ctx, out);
    }

    fn subscribe(
        &mut self,
        ctx: &mut Ctx<'_, Conn>,
        id: Option<Id<'_>>,
        topic: &str,
        resume: Option<pubsub::Resume>,
        out: &mut Vec<u8>,
    ) {
        let (conn_id, now) = (ctx.id(), ctx.now());
        let max = self.server.config.max_topics_per_connection;
        let result = if !self.can_subscribe(self.grants(ctx.conn()), topic) {
            Err((
                ErrorCode::Forbidden,
                "subscribing to this topic is not allowed",
            ))
        } else if ctx.conn().subs.len() >= max {
            Err((
                ErrorCode::TooManyTopics,
                "too many topics on this connection",
            ))
        } else {
            let subs = &mut ctx.conn().subs;
            match self
                .registry
                .subscribe(conn_id, subs, topic, resume.as_ref(), now)
            {
                Ok(subscribed) => Ok(subscribed),
                Err(pubsub::Error::TooManyTopics) => {
                    Err((ErrorCode::TooManyTopics, "too many topics on the server"))
                }
                Err(_) => Err((ErrorCode::BadRequest, "cannot subscribe")),
            }
        };
        let subscribed = match result {
            Ok(subscribed) => subscribed,
            Err((code, message)) => {
                envelope::render_error(out, id, code, message);
                return self.reply(ctx, out);
            }
        };
        self.update_gauge();
        let recovery = subscribed.recovery.unwrap_or_default();
        let epoch = self.server.hub.epoch();
        envelope::render_subscribed(out, id, topic, recovery.recovered, epoch, subscribed.seq);
        self.reply(ctx, out);
        // What was missed goes out before anything live: live deliveries come from the inbox,
        // after this callback.
        for message in &recovery.messages {
            let frame = delivery_frame(message, out);
            if ctx.send_shared(&frame).is_ok() {
                self.server.counters[self.index].sent(frame.len());
            }
        }
    }

    fn reply(&self, ctx: &mut Ctx<'_, Conn>, out: &[u8]) {
        if ctx.send(MessageKind::Text, out).is_ok() {
            self.server.counters[self.index].sent(out.len());
        }
    }
}

/// Compresses a fanout payload on its own (no context takeover), with the configured level and
/// window: every reactor compresses alike, so whichever is first makes the frame for all.
fn compress(
    deflater: &mut Option<Deflater>,
    config: &CompressionConfig,
    payload: &[u8],
) -> Vec<u8> {
    let deflater = deflater.get_or_insert_with(|| Deflater::new(config.level, config.window_bits));
    let mut out = Vec::new();
    deflater.compress(payload, &mut out, false);
    out
}

/// Whether a subscriber that negotiated `params` takes a shared compressed frame of a payload
/// of `len` bytes.
fn takes_compressed(params: Option<Params>, config: &CompressionConfig, len: usize) -> bool {
    config.policy != Policy::Off
        && len >= config.threshold
        && params.is_some_and(|p| p.accepts_shared(config.window_bits, len))
}

/// A refusal before the upgrade, with a JSON body.
fn refuse<'r>(status: u16, message: &str) -> Answer<'r, Conn> {
    Answer::Respond(http::error(status, message))
}

impl Handler for App {
    type Conn = Conn;
    type Inbox = Arc<Message>;

    fn on_request<'r>(
        &mut self,
        request: &Request<'r>,
        body: &[u8],
        peer: Option<SocketAddr>,
    ) -> Answer<'r, Conn> {
        self.pending = None;
        self.server.maybe_sweep(Instant::now());
        let path = request.path();
        match (request.method(), path) {
            ("GET" | "HEAD", "/healthz") => {
                Answer::Respond(Response::new(200, "text/plain", "ok\n"))
            }
            ("GET", "/metrics") => Answer::Respond(http::metrics(&self.server)),
            ("GET", "/stats") => Answer::Respond(http::stats(&self.server)),
            ("POST", "/publish") => {
                Answer::Respond(http::publish(&self.server, request, body, self.index))
            }
            ("POST", _) if path.starts_with("/publish/") => {
                Answer::Respond(http::publish(&self.server, request, body, self.index))
            }
            (_, "/echo") => self.websocket(Route::Echo, request, peer, None),
            (_, "/ws") => self.websocket(Route::Envelope, request, peer, None),
            (_, _) if path.starts_with("/t/") => {
                self.websocket(Route::Topic, request, peer, path.get(3..))
            }
            _ => Answer::Respond(Response::new(404, "text/plain", "not found\n")),
        }
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, Conn>) {
        let Pending { topic, extra } = self.pending.take().unwrap_or(Pending {
            topic: None,
            extra: Extra::default(),
        });
        self.server.opened(extra.ip);
        if !extra.is_empty() {
            let key = self.extras.insert(extra);
            // A slab key of a live connection's extra is far below 2³²; if not, the extra is
            // simply not found later (no grants: publish and subscribe are refused).
            ctx.conn().extra = u32::try_from(key + 1).ok().and_then(NonZeroU32::new);
        }
        if let Some(topic) = topic {
            let (id, now) = (ctx.id(), ctx.now());
            let subscribed = self
                .registry
                .subscribe(id, &mut ctx.conn().subs, &topic, None, now);
            self.update_gauge();
            if let Err(e) = subscribed {
                ctx.close(CloseCode::POLICY_VIOLATION, &e.to_string());
            }
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Conn>, kind: MessageKind, payload: &[u8]) {
        self.server.counters[self.index]
            .bytes_in
            .fetch_add(payload.len() as u64, Relaxed);
        match ctx.conn().route {
            // A send fails only once our close frame is out; the message is then moot.
            Route::Echo => {
                let _ = ctx.send(kind, payload);
            }
            Route::Topic => self.raw_publish(ctx, kind, payload),
            Route::Envelope => self.command(ctx, kind, payload),
        }
    }

    fn on_close(&mut self, id: ConnId, conn: &mut Conn, _code: Option<CloseCode>) {
        if self.registry.unsubscribe_all(id, &mut conn.subs) > 0 {
            self.update_gauge();
        }
        let extra = conn
            .extra
            .take()
            .and_then(|key| self.extras.try_remove(key.get() as usize - 1));
        self.server.closed(extra.and_then(|extra| extra.ip));
        self.server.maybe_sweep(Instant::now());
    }

    fn on_inbox(&mut self, local: &mut Local<'_, Conn>, message: Arc<Message>) {
        let server = &*self.server;
        let counters = &server.counters[self.index];
        let (max_queued, policy) = (server.config.max_queued_bytes, server.config.slow_consumer);
        let raw = message.payload().frame();
        let zconfig = &server.config.compression;
        let compressing = zconfig.policy != Policy::Off;
        // Built on the first envelope subscriber, then shared by all of them (and compressed
        // once, on the first that takes it).
        let mut wrapped: Option<Arc<[u8]>> = None;
        let mut wrapped_compressed: Option<Arc<[u8]>> = None;
        let (mut delivered, mut bytes, mut dropped, mut evicted) = (0u64, 0u64, 0u64, 0u64);
        let (mut compressed, mut compressed_bytes) = (0u64, 0u64);
        for id in self.registry.fanout(&message) {
            let Some(route) = local.conn(id).map(|conn| conn.route) else {
                continue;
            };
            // With compression off, the plain path is as before: no lookup per subscriber.
            let params = if compressing { local.deflate(id) } else { None };
            let (frame, is_compressed) = if route == Route::Envelope {
                let plain =
                    wrapped.get_or_insert_with(|| delivery_frame(&message, &mut self.scratch));
                let len = frame_payload(plain).len();
                if takes_compressed(params, zconfig, len) {
                    let frame = wrapped_compressed.get_or_insert_with(|| {
                        let payload = compress(&mut self.deflater, zconfig, frame_payload(plain));
                        shared_compressed_frame(MessageKind::Text, &payload)
                    });
                    (&*frame, true)
                } else {
                    (&*plain, false)
                }
            } else if takes_compressed(params, zconfig, message.payload().bytes().len()) {
                let deflater = &mut self.deflater;
                let frame =
                    message.compressed_frame(|payload| compress(deflater, zconfig, payload));
                (frame, true)
            } else {
                (raw, false)
            };
            match local.send_shared(id, frame, max_queued) {
                Push::Queued => {
                    delivered += 1;
                    bytes += frame.len() as u64;
                    if is_compressed {
                        compressed += 1;
                        compressed_bytes += frame_payload(frame).len() as u64;
                    }
                }
                Push::Full if policy == SlowConsumer::Drop => dropped += 1,
                Push::Full => {
                    local.close(id, CloseCode::POLICY_VIOLATION, "slow consumer");
                    evicted += 1;
                }
                Push::Closed => {}
            }
        }
        counters.deliveries.fetch_add(delivered, Relaxed);
        counters.messages_out.fetch_add(delivered, Relaxed);
        counters.bytes_out.fetch_add(bytes, Relaxed);
        if compressed > 0 {
            counters.deflate_deliveries.fetch_add(compressed, Relaxed);
            counters
                .deflate_delivery_bytes
                .fetch_add(compressed_bytes, Relaxed);
        }
        if dropped > 0 {
            counters.drops.fetch_add(dropped, Relaxed);
        }
        if evicted > 0 {
            counters.slow_consumer_closes.fetch_add(evicted, Relaxed);
        }
        let now = Instant::now();
        counters
            .latency
            .record(now.saturating_duration_since(message.published_at()));
        server.maybe_sweep(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_costs_24_bytes() {
        assert!(size_of::<Conn>() <= 24, "{}", size_of::<Conn>());
    }
}
