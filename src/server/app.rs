//! The server's [`Handler`]: routes requests and serves each WebSocket route.
//!
//! WebSocket routes: `/echo` (every message comes back as it came), `/t/<topic>` (a raw topic
//! socket: receives every payload of the topic as is; what it sends is published to it when
//! `client_publish` allows) and `/ws` (the JSON envelope protocol of [`super::envelope`]).
//! Streams for clients without WebSockets: `/sse` (Server-Sent Events) and `/stream` (NDJSON),
//! in [`streams`] and [`super::stream`]. HTTP: `/healthz`, `/metrics`, `/stats`,
//! `/topics/<topic>` and the publish API of [`super::http`], with CORS preflights
//! ([`super::cors`]). Anything else is a 404, or a 405 with `Allow` on a known path, or a 501
//! for a method no route takes. The protocols are specified in `docs/protocol.md`.
//!
//! In a cluster the first subscribe of a topic on this node waits (without blocking anything)
//! until the bridge has synced the topic from Redis: it is *parked* here and answered when the
//! inbox says the topic is ready.
//!
//! Time-based duties ride on the reactor's once-a-second sweep ([`Handler::on_sweep`]), with
//! nothing per connection but a byte: a token whose `exp` plus the leeway has passed closes its
//! connection with 4001, and an envelope client that asked for heartbeats (`hello`) gets one
//! every `heartbeat` seconds, spread over the interval by connection id.
//!
//! Logs: each refused client at `info` (rate-limited, [`super::refusals`]); each WebSocket's
//! open and close at `debug`; requests, commands and each message's fanout at `trace`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use slab::Slab;

mod streams;

use super::auth::{Grants, Unauthorized};
use super::cors;
use super::envelope::{
    self, Command, ErrorCode, HEARTBEAT, Id, TOKEN_EXPIRED, TOKEN_REFUSED, delivery_frame,
    format_of,
};
use super::forwarded;
use super::live::Cached;
use super::refusals::Refusal;
use super::state::{Live, Origin, PublishError, Server, SlowConsumer};
use super::stream::{self, KINDS, StreamKind, StreamRequest};
use super::{ADMIN_LISTENER, dashboard, http};
use clarion_engine::{
    Answer, CompressionConfig, ConnId, Ctx, Handler, Limit, LimitHit, Local, Policy, Push,
    RequestInfo, Response,
};
use clarion_protocol::deflate::{Deflater, Params};
use clarion_protocol::handshake::Request;
use clarion_protocol::{CloseCode, MessageKind};
use clarion_pubsub::{
    self, Message, Payload, Post, Registry, Resume, Subscribed, Subscriptions, TopicId,
    frame_payload, shared_compressed_frame, shared_frame, validate_topic,
};
use streams::StreamFrames;

/// What a WebSocket connection is for, chosen by its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/echo`.
    Echo,
    /// `/t/<topic>`: subscribed to one topic, payloads as is.
    Topic,
    /// `/ws`: JSON envelope commands and deliveries.
    Envelope,
    /// `/sse` or `/stream`: a streaming response, subscribed to the topics of its URL.
    Stream(StreamKind),
    /// `/dashboard/ws` on the admin listener: the system topic of the dashboard's snapshots,
    /// payloads as is; what it sends is ignored.
    Dashboard,
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
    /// `/ws`: seconds between application heartbeats, 0 for none (fits the padding: the entry
    /// stays 24 bytes).
    heartbeat: u8,
}

/// What only some connections need (token grants, a counted IP), kept out of the slab entry.
#[derive(Debug, Default)]
struct Extra {
    grants: Option<Grants>,
    /// The key the per-IP cap counted this client under ([`Server::client_key`]).
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
    /// A stream's request: its kind, topics and positions.
    stream: Option<StreamRequest>,
    extra: Extra,
    /// `/ws` with a token refused: opened only to be closed with a code a browser can read.
    refused: Option<Unauthorized>,
    /// The client's address, for the `debug` line of the open (as `peer`).
    client: Option<SocketAddr>,
}

/// What a client that passed [`App::check_client`] takes to its open.
struct Checked {
    extra: Extra,
    /// `/ws` with a token refused: opened only to be closed with a code a browser can read.
    refused_token: Option<Unauthorized>,
    /// `/t/`: the connection may publish to its topic.
    may_publish: bool,
}

/// A subscribe waiting for its topic to be synced from the cluster.
#[derive(Debug)]
struct Parked {
    conn: ConnId,
    /// An envelope subscribe's id (its JSON text), to answer with; `None` if it had none.
    id: Option<Box<str>>,
    resume: Option<clarion_pubsub::Resume>,
    /// An envelope subscribe, answered when done; otherwise a `/t/` socket's own topic.
    envelope: bool,
}

/// Where a subscribe's answers go: the connection of a callback, or one reached from the inbox.
trait Reply {
    /// The connection.
    fn id(&self) -> ConnId;
    /// Its state; `None` once it is gone or closing.
    fn conn(&mut self) -> Option<&mut Conn>;
    /// Queues a frame; false if the connection is gone or closing.
    fn send_frame(&mut self, frame: &Arc<[u8]>) -> bool;
    /// Less than half the connection's write cap waits: room for the next slice of a replay.
    fn has_room(&self) -> bool;
    /// Asks for `on_writable` once the queue is down to half the write cap.
    fn notify_writable(&mut self);
    /// Ends the connection with `code`.
    fn close(&mut self, code: CloseCode, reason: &str);
}

impl Reply for Ctx<'_, Conn> {
    fn id(&self) -> ConnId {
        Ctx::id(self)
    }

    fn conn(&mut self) -> Option<&mut Conn> {
        Some(Ctx::conn(self))
    }

    fn send_frame(&mut self, frame: &Arc<[u8]>) -> bool {
        self.send_shared(frame).is_ok()
    }

    fn has_room(&self) -> bool {
        Ctx::has_room(self)
    }

    fn notify_writable(&mut self) {
        Ctx::notify_writable(self);
    }

    fn close(&mut self, code: CloseCode, reason: &str) {
        Ctx::close(self, code, reason);
    }
}

/// Connection `.1`, reached from the inbox.
struct To<'l, 'a>(&'l mut Local<'a, Conn>, ConnId);

impl Reply for To<'_, '_> {
    fn id(&self) -> ConnId {
        self.1
    }

    fn conn(&mut self) -> Option<&mut Conn> {
        self.0.conn(self.1)
    }

    fn send_frame(&mut self, frame: &Arc<[u8]>) -> bool {
        // Answers are not deliveries: no slow-consumer cap (they come from reading the
        // connection, which stops past its cap; replays go out only while it has room).
        matches!(self.0.send_shared(self.1, frame, usize::MAX), Push::Queued)
    }

    fn has_room(&self) -> bool {
        self.0.has_room(self.1)
    }

    fn notify_writable(&mut self) {
        self.0.notify_writable(self.1);
    }

    fn close(&mut self, code: CloseCode, reason: &str) {
        self.0.close(self.1, code, reason);
    }
}

/// Bytes of history one replay slice takes at most (the first at the subscribe, the next ones
/// as the connection's queue drains): a resume never queues more than this beyond the
/// connection's low mark, whatever `since` asks for. Half the write cap when that is smaller
/// ([`App::replay_slice`]), so that a slice on top of the low mark stays under the cap.
const REPLAY_SLICE: usize = 64 << 10;

/// A resume whose replay goes out in slices: the subscriber is held (no live message) until it
/// has everything up to the topic's `seq`.
#[derive(Debug)]
struct Replay {
    topic: TopicId,
    /// The last `seq` sent.
    sent: u64,
    epoch: Option<clarion_pubsub::Epoch>,
}

/// One reactor's application state.
pub struct App {
    server: Arc<Server>,
    /// The settings in force, refreshed at the start of each callback that reads them.
    live: Cached<Live>,
    index: usize,
    registry: Registry,
    /// This reactor's subscribers of the system topics (the dashboards).
    system: Registry,
    extras: Slab<Extra>,
    pending: Option<Pending>,
    /// Cluster mode: subscribes waiting for their topic, by topic.
    parked: HashMap<Arc<str>, Vec<Parked>>,
    /// Resumes whose replay goes out in slices, by connection (only while one does).
    replays: HashMap<ConnId, Vec<Replay>>,
    scratch: Vec<u8>,
    /// Compresses fanout frames once for every subscriber they fit; made on first use.
    deflater: Option<Deflater>,
    /// `{"type":"heartbeat"}`, framed once for every connection.
    heartbeat_frame: Arc<[u8]>,
    /// Each stream kind's heartbeat, built once.
    stream_heartbeats: [Arc<[u8]>; KINDS.len()],
    /// The current message's stream bytes.
    stream_frames: StreamFrames,
    /// Connections of this reactor with heartbeats on.
    heartbeats: usize,
    /// The reactor's sweeps, as whole seconds since `origin`: this one and the one before
    /// (heartbeats fall due when a multiple of their interval lies between them).
    origin: Instant,
    tick: u64,
    prev_tick: u64,
    /// Unix seconds at this sweep, for token expiry.
    wall: u64,
}

impl App {
    /// Reactor `index`'s handler.
    pub fn new(server: Arc<Server>, index: usize) -> Result<App, clarion_pubsub::Error> {
        Ok(App {
            registry: Registry::new(server.hub.clone(), index)?,
            system: Registry::new(server.system.clone(), index)?,
            live: server.cached(),
            server,
            index,
            extras: Slab::new(),
            pending: None,
            parked: HashMap::new(),
            replays: HashMap::new(),
            scratch: Vec::new(),
            deflater: None,
            heartbeat_frame: shared_frame(MessageKind::Text, HEARTBEAT),
            stream_heartbeats: streams::heartbeats(),
            stream_frames: StreamFrames::default(),
            heartbeats: 0,
            origin: Instant::now(),
            tick: 0,
            prev_tick: 0,
            wall: 0,
        })
    }

    /// The client's address: the peer's, or the one trusted proxies forwarded the request for.
    /// A trusted proxy's forwarding header that cannot be read is refused with 400 (and the
    /// refusal logged with the proxy's address: the client's is what could not be read).
    fn client(
        &self,
        request: &Request<'_>,
        peer: Option<SocketAddr>,
    ) -> Result<Option<SocketAddr>, Response> {
        let Some(peer) = peer else {
            return Ok(None);
        };
        let config = &self.live.get().config;
        let counters = &self.server.counters[self.index];
        match forwarded::client(
            request,
            peer,
            &config.trusted_proxies,
            config.forwarded_header,
        ) {
            Ok(None) => Ok(Some(peer)),
            Ok(Some(client)) => {
                counters.forwarded_requests.fetch_add(1, Relaxed);
                Ok(Some(client))
            }
            Err(e) => {
                counters.forwarded_refused.fetch_add(1, Relaxed);
                let reason = format!("malformed forwarding header: {e}");
                self.server.refusals.log(Refusal {
                    path: request.path(),
                    peer: Some(peer),
                    status: 400,
                    reason: &reason,
                    subject: None,
                });
                Err(http::error(400, &reason))
            }
        }
    }

    /// Checks a WebSocket request from `client` (limits, and for pubsub routes origin, token and
    /// topic) and answers the upgrade or the refusal.
    fn websocket<'r>(
        &mut self,
        route: Route,
        request: &Request<'r>,
        client: Option<SocketAddr>,
        topic: Option<&str>,
    ) -> Answer<'r, Conn> {
        let checked = match self.check_client(route, request, client, topic.as_slice()) {
            Ok(checked) => checked,
            Err(refusal) => return Answer::Respond(refusal),
        };
        self.pending = Some(Pending {
            topic: topic.map(Box::from),
            stream: None,
            extra: checked.extra,
            refused: checked.refused_token,
            client,
        });
        Answer::Upgrade {
            conn: Conn {
                subs: Subscriptions::default(),
                extra: None,
                route,
                may_publish: checked.may_publish,
                heartbeat: 0,
            },
            protocol: None,
        }
    }

    /// What every client passes before it is answered: the connection caps, and on pubsub
    /// routes the origin, the token, and each topic's name and grant. What its open needs, or
    /// the refusal (logged, with a JSON body).
    fn check_client(
        &self,
        route: Route,
        request: &Request<'_>,
        client: Option<SocketAddr>,
        topics: &[&str],
    ) -> Result<Checked, Response> {
        let (server, live) = (&*self.server, self.live.get());
        let refused = |status, reason: &str, grants: Option<&Grants>| {
            server.refusals.log(Refusal {
                path: request.path(),
                peer: client,
                status,
                reason,
                subject: grants.and_then(Grants::subject),
            });
            http::error(status, reason)
        };
        let ip = client
            .filter(|_| server.counts_ips())
            .map(|c| server.client_key(c.ip()));
        if server.admit(&live.config, ip).is_err() {
            return Err(refused(429, "too many connections from this address", None));
        }
        let mut checked = Checked {
            extra: Extra { grants: None, ip },
            refused_token: None,
            may_publish: false,
        };
        if route == Route::Echo {
            return Ok(checked);
        }
        if !live.origins.allows(request) {
            return Err(refused(403, "origin not allowed", None));
        }
        if let Some(jwt) = &live.jwt {
            match jwt.authenticate(request) {
                Ok(grants) => checked.extra.grants = Some(grants),
                // A browser sees no HTTP status when an upgrade fails, only 1006: an envelope
                // client is told why with a close code instead (logged with it).
                Err(e) if route == Route::Envelope => {
                    server.refusals.log(Refusal {
                        path: request.path(),
                        peer: client,
                        status: token_close_code(e).0,
                        reason: &e.to_string(),
                        subject: None,
                    });
                    checked.refused_token = Some(e);
                }
                Err(e) => {
                    let mut response = refused(401, &e.to_string(), None);
                    response
                        .headers
                        .push(("WWW-Authenticate", "Bearer".to_owned()));
                    return Err(response);
                }
            }
        }
        let grants = checked.extra.grants.as_ref();
        for topic in topics {
            if let Err(e) = validate_topic(topic, live.config.max_topic_length) {
                return Err(refused(400, &e.to_string(), grants));
            }
            if !live.can_subscribe(grants, topic) {
                return Err(refused(403, "topic not allowed", grants));
            }
        }
        checked.may_publish = route == Route::Topic
            && topics
                .first()
                .is_some_and(|topic| live.can_publish(grants, topic));
        Ok(checked)
    }

    /// The path an open connection came on, as far as its state tells (a `/t/` socket's topic
    /// while it is subscribed): for the log line of a limit it hit.
    fn path_of(&self, conn: &Conn) -> Cow<'static, str> {
        match conn.route {
            Route::Echo => Cow::Borrowed("/echo"),
            Route::Envelope => Cow::Borrowed("/ws"),
            Route::Topic => match conn
                .subs
                .iter()
                .next()
                .and_then(|id| self.registry.name(id))
            {
                Some(topic) => Cow::Owned(format!("/t/{topic}")),
                None => Cow::Borrowed("/t/"),
            },
            Route::Stream(kind) => Cow::Borrowed(kind.path()),
            Route::Dashboard => Cow::Borrowed("/dashboard/ws"),
        }
    }

    /// Bytes of history one replay slice takes at most: [`REPLAY_SLICE`], or half the write
    /// cap when that is smaller (a slice holds at least one message whatever its size).
    fn replay_slice(&self) -> usize {
        REPLAY_SLICE.min(self.live.get().config.max_queued_bytes / 2)
    }

    fn grants(&self, conn: &Conn) -> Option<&Grants> {
        grants_in(&self.extras, conn)
    }

    /// Seconds until the token of `conn` ends it (`exp` plus the leeway), with tokens in use.
    fn expires_in(&self, conn: &Conn) -> Option<u64> {
        let grants = self.grants(conn)?;
        let remaining = self.live.get().jwt.as_ref()?.remaining(grants, unix_now());
        Some(remaining.unwrap_or(0))
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
        let first = conn.subs.iter().next();
        let topic = match first {
            Some(id) => self.registry.name(id).cloned(),
            None => self.parked_topic(ctx.id()),
        };
        let Some(topic) = topic else {
            return;
        };
        let payload = Payload::new(format_of(kind, payload), payload);
        // A raw socket has no answer to carry a refusal: the publisher is told by the close
        // code (and the refusal counted), never left believing it was sent.
        if let Err(e) = self.publish(&topic, payload) {
            let code = match e {
                PublishError::TooLarge { .. } => CloseCode::MESSAGE_TOO_BIG,
                e if e.is_transient() => CloseCode::TRY_AGAIN_LATER,
                _ => CloseCode::POLICY_VIOLATION,
            };
            ctx.close(code, &e.to_string());
        }
    }

    /// A client's publish, within the write cap in force; a refusal is counted.
    fn publish(&self, topic: &str, payload: Payload) -> Result<Option<u64>, PublishError> {
        let max_queued = self.live.get().config.max_queued_bytes;
        let published = self
            .server
            .publish(topic, payload, Origin::Client, max_queued);
        if published.is_err() {
            self.server.counters[self.index]
                .publishes_refused
                .fetch_add(1, Relaxed);
        }
        published
    }

    /// The topic a `/t/` connection waits for, in cluster mode.
    fn parked_topic(&self, conn: ConnId) -> Option<Arc<str>> {
        self.parked
            .iter()
            .find(|(_, list)| list.iter().any(|p| p.conn == conn))
            .map(|(topic, _)| topic.clone())
    }

    /// How many subscribes of `conn` wait.
    fn parked_count(&self, conn: ConnId) -> usize {
        self.parked
            .values()
            .map(|list| list.iter().filter(|p| p.conn == conn).count())
            .sum()
    }

    fn park(&mut self, topic: &str, parked: Parked) {
        match self.parked.get_mut(topic) {
            Some(list) => list.push(parked),
            None => {
                self.parked.insert(Arc::from(topic), vec![parked]);
            }
        }
    }

    /// Forgets `conn`'s waiting subscribes (of `topic` only, if given); a topic nobody here
    /// waits for any more is given up.
    fn unpark_conn(&mut self, conn: ConnId, topic: Option<&str>) {
        let registry = &self.registry;
        self.parked.retain(|name, list| {
            if topic.is_none_or(|t| t == &**name) {
                list.retain(|p| p.conn != conn);
            }
            let keep = !list.is_empty();
            if !keep {
                registry.abandon(name);
            }
            keep
        });
    }

    /// The topic the parked subscribes waited for is live: subscribe them now.
    fn unpark(&mut self, local: &mut Local<'_, Conn>, topic: Arc<str>) {
        let Some(parked) = self.parked.remove(&topic) else {
            // Everyone here who waited has left.
            return self.registry.abandon(&topic);
        };
        let (now, slice) = (local.now(), self.replay_slice());
        let mut out = std::mem::take(&mut self.scratch);
        for p in parked {
            let Some(conn) = local.conn(p.conn) else {
                continue;
            };
            let id = p.id.as_deref().map(Id::verbatim);
            // A `refresh` while it waited may have taken the grant away.
            if p.envelope && !self.live.get().can_subscribe(self.grants(conn), &topic) {
                out.clear();
                let message = "subscribing to this topic is not allowed";
                envelope::render_error(&mut out, id, ErrorCode::Forbidden, message);
                self.send(&mut To(local, p.conn), &out);
                continue;
            }
            let resume = p.resume.as_ref();
            let stream = match conn.route {
                Route::Stream(kind) => Some(kind),
                _ => None,
            };
            let subscribed =
                self.registry
                    .subscribe(p.conn, &mut conn.subs, &topic, resume, slice, now);
            match subscribed {
                Err(clarion_pubsub::Error::Pending) => {
                    // The topic was given up and is wanted again: wait for the next sync.
                    self.park(&topic, p);
                }
                Err(e) if p.envelope => {
                    out.clear();
                    let (code, message) = subscribe_error(e);
                    envelope::render_error(&mut out, id, code, message);
                    self.send(&mut To(local, p.conn), &out);
                }
                Err(e) => {
                    let (code, reason) = (subscribe_close(&e), e.to_string());
                    match stream {
                        Some(kind) => {
                            streams::end_from_inbox(local, &mut out, p.conn, kind, (code, &reason))
                        }
                        None => local.close(p.conn, code, &reason),
                    }
                }
                Ok(subscribed) => {
                    self.update_gauge();
                    if p.envelope {
                        let to = &mut To(local, p.conn);
                        self.answer_subscribed(to, id, &topic, subscribed, &mut out);
                    } else if let Some(kind) = stream {
                        self.scratch = std::mem::take(&mut out);
                        self.stream_subscribed(local, p.conn, kind, &topic, subscribed, p.resume);
                        out = std::mem::take(&mut self.scratch);
                    }
                }
            }
        }
        self.scratch = out;
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
        let topic = command.topic().unwrap_or_default();
        tracing::trace!(
            reactor = self.index,
            conn = ctx.id(),
            command = command.name(),
            topic,
            "command"
        );
        let error = |out: &mut Vec<u8>, code, message: &str| {
            envelope::render_error(out, id, code, message);
        };
        if command.topic().is_some()
            && let Err(e) = validate_topic(topic, self.live.get().config.max_topic_length)
        {
            error(out, ErrorCode::InvalidTopic, &e.to_string());
            return self.reply(ctx, out);
        }
        match &command {
            Command::Hello { heartbeat, .. } => {
                let interval = self.live.get().config.heartbeat(*heartbeat);
                let conn = ctx.conn();
                match (conn.heartbeat != 0, interval != 0) {
                    (false, true) => self.heartbeats += 1,
                    (true, false) => self.heartbeats -= 1,
                    _ => {}
                }
                conn.heartbeat = interval;
                let expires_in = self.expires_in(ctx.conn());
                envelope::render_session(out, id, Some(interval), expires_in);
            }
            Command::Refresh { token, .. } => return self.refresh(ctx, id, token, out),
            Command::Ping { .. } => envelope::render_ack(out, id),
            Command::Subscribe { resume, .. } => {
                return self.subscribe(ctx, id, topic, *resume, out);
            }
            Command::Unsubscribe { .. } => {
                let conn_id = ctx.id();
                if let Some(id) = self.registry.id(topic) {
                    end_replay(&mut self.replays, conn_id, id);
                }
                self.registry
                    .unsubscribe(conn_id, &mut ctx.conn().subs, topic);
                if !self.parked.is_empty() {
                    self.unpark_conn(conn_id, Some(topic));
                }
                self.update_gauge();
                envelope::render_ack(out, id);
            }
            Command::Publish { format, data, .. } => {
                if !self.live.get().can_publish(self.grants(ctx.conn()), topic) {
                    error(
                        out,
                        ErrorCode::Forbidden,
                        "publishing to this topic is not allowed",
                    );
                } else {
                    match self.publish(topic, Payload::new(*format, data)) {
                        Ok(seq) => envelope::render_published(out, id, topic, seq),
                        Err(e @ PublishError::TooLarge { .. }) => {
                            error(out, ErrorCode::TooLarge, &e.to_string());
                        }
                        Err(
                            e @ PublishError::Hub(
                                clarion_pubsub::Error::TooManyTopics
                                | clarion_pubsub::Error::TooManyNewTopics,
                            ),
                        ) => {
                            error(out, ErrorCode::TooManyTopics, &e.to_string());
                        }
                        Err(e) => error(out, ErrorCode::Unavailable, &e.to_string()),
                    }
                }
            }
        }
        self.reply(ctx, out);
    }

    /// `refresh`: the new token's grants replace the old ones, subscriptions they no longer
    /// allow are ended (an `unsubscribed` for each, before the ack), and its `exp` is the one
    /// that now ends the connection. A refused token changes nothing.
    fn refresh(
        &mut self,
        ctx: &mut Ctx<'_, Conn>,
        id: Option<Id<'_>>,
        token: &str,
        out: &mut Vec<u8>,
    ) {
        let Some(jwt) = &self.live.get().jwt else {
            let message = "tokens are not in use on this server";
            envelope::render_error(out, id, ErrorCode::Unauthorized, message);
            return self.reply(ctx, out);
        };
        let grants = match jwt.verify(token.as_bytes()) {
            Ok(grants) => grants,
            Err(e) => {
                envelope::render_error(out, id, ErrorCode::Unauthorized, &e.to_string());
                return self.reply(ctx, out);
            }
        };
        // Every `/ws` connection under `auth = jwt` was opened with grants.
        let Some(key) = ctx.conn().extra.map(|key| key.get() as usize - 1) else {
            let message = "this connection has no token to replace";
            envelope::render_error(out, id, ErrorCode::Unauthorized, message);
            return self.reply(ctx, out);
        };
        let old_subject = self.extras[key].grants.as_ref().map(Grants::subject);
        if old_subject.is_some_and(|subject| subject != grants.subject()) {
            let message = "the token is for another subject";
            envelope::render_error(out, id, ErrorCode::Unauthorized, message);
            return self.reply(ctx, out);
        }
        let conn_id = ctx.id();
        let ended: Vec<Arc<str>> = ctx
            .conn()
            .subs
            .iter()
            .filter_map(|topic| self.registry.name(topic))
            .filter(|topic| !grants.can_subscribe(topic))
            .cloned()
            .collect();
        for topic in &ended {
            if let Some(id) = self.registry.id(topic) {
                end_replay(&mut self.replays, conn_id, id);
            }
            self.registry
                .unsubscribe(conn_id, &mut ctx.conn().subs, topic);
            out.clear();
            let message = "the refreshed token does not grant this topic";
            envelope::render_unsubscribed(out, topic, ErrorCode::Forbidden, message);
            self.reply(ctx, out);
        }
        if !ended.is_empty() {
            self.update_gauge();
        }
        let expires_in = jwt.remaining(&grants, unix_now()).unwrap_or(0);
        self.extras[key].grants = Some(grants);
        self.server.counters[self.index]
            .token_refreshes
            .fetch_add(1, Relaxed);
        out.clear();
        envelope::render_session(out, id, None, Some(expires_in));
        self.reply(ctx, out);
    }

    fn subscribe(
        &mut self,
        ctx: &mut Ctx<'_, Conn>,
        id: Option<Id<'_>>,
        topic: &str,
        resume: Option<clarion_pubsub::Resume>,
        out: &mut Vec<u8>,
    ) {
        let (conn_id, now, slice) = (ctx.id(), ctx.now(), self.replay_slice());
        let max = self.live.get().config.max_topics_per_connection;
        let waiting = if self.parked.is_empty() {
            0
        } else {
            self.parked_count(conn_id)
        };
        let result = if !self
            .live
            .get()
            .can_subscribe(self.grants(ctx.conn()), topic)
        {
            Err((
                ErrorCode::Forbidden,
                "subscribing to this topic is not allowed",
            ))
        } else if ctx.conn().subs.len() + waiting >= max
            && !self.registry.is_subscribed(conn_id, topic)
        {
            Err((
                ErrorCode::TooManyTopics,
                "too many topics on this connection",
            ))
        } else {
            let subs = &mut ctx.conn().subs;
            match self
                .registry
                .subscribe(conn_id, subs, topic, resume.as_ref(), slice, now)
            {
                Ok(subscribed) => Ok(subscribed),
                Err(clarion_pubsub::Error::Pending) => {
                    let id = id.map(|id| Box::from(id.as_json()));
                    let parked = Parked {
                        conn: conn_id,
                        id,
                        resume,
                        envelope: true,
                    };
                    return self.park(topic, parked);
                }
                Err(e) => Err(subscribe_error(e)),
            }
        };
        match result {
            Ok(subscribed) => {
                self.update_gauge();
                self.answer_subscribed(ctx, id, topic, subscribed, out);
            }
            Err((code, message)) => {
                envelope::render_error(out, id, code, message);
                self.reply(ctx, out);
            }
        }
    }

    /// Sends a subscribe's ack, then what a resume recovered: what was missed goes out before
    /// anything live (live deliveries come from the inbox, after this). A replay larger than
    /// one slice goes on as the connection's queue drains ([`App::pump_replays`]), the
    /// subscriber held meanwhile: a small `subscribe` never queues a megabyte.
    fn answer_subscribed(
        &mut self,
        to: &mut impl Reply,
        id: Option<Id<'_>>,
        topic: &str,
        subscribed: Subscribed,
        out: &mut Vec<u8>,
    ) {
        let recovery = subscribed.recovery.unwrap_or_default();
        let epoch = self.server.hub.epoch();
        out.clear();
        envelope::render_subscribed(out, id, topic, recovery.recovered, epoch, subscribed.seq);
        self.send(to, out);
        let sent = self.send_deliveries(to, &recovery.messages, out);
        if recovery.complete {
            return;
        }
        self.server.counters[self.index]
            .sliced_replays
            .fetch_add(1, Relaxed);
        let replay = Replay {
            topic: subscribed.topic,
            sent: sent.unwrap_or(subscribed.seq),
            epoch: Some(epoch),
        };
        self.replays.entry(to.id()).or_default().push(replay);
        self.pump_replays(to, out);
    }

    /// Sends `messages` as envelope deliveries; the `seq` of the last one, if any.
    fn send_deliveries(
        &self,
        to: &mut impl Reply,
        messages: &[Arc<Message>],
        out: &mut Vec<u8>,
    ) -> Option<u64> {
        for message in messages {
            let frame = delivery_frame(message, out);
            if to.send_frame(&frame) {
                self.server.counters[self.index].sent(frame.len());
            }
        }
        messages.last().map(|m| m.seq())
    }

    /// Sends the next slices of `to`'s replays while its queue has room, and asks to be told
    /// when it drains if any is left. A replay that reaches its topic's `seq` ends, and its
    /// subscriber takes live messages from there; one whose history was evicted under it
    /// meanwhile is a slow consumer (closed, or with `drop` left with the gap in `seq`).
    fn pump_replays(&mut self, to: &mut impl Reply, out: &mut Vec<u8>) {
        let conn = to.id();
        let Some(mut replays) = self.replays.remove(&conn) else {
            return;
        };
        let stream = match to.conn().map(|c| c.route) {
            Some(Route::Stream(kind)) => Some(kind),
            _ => None,
        };
        let (now, slice_bytes) = (Instant::now(), self.replay_slice());
        while let Some(replay) = replays.last() {
            if !to.has_room() {
                break;
            }
            let resume = Resume {
                since: replay.sent,
                epoch: replay.epoch,
            };
            let topic = replay.topic;
            let slice = self.registry.replay(conn, topic, &resume, slice_bytes, now);
            if !slice.recovered {
                // A stream cannot skip a message (its ids are positions): it always ends.
                if stream.is_some() || self.live.get().config.slow_consumer == SlowConsumer::Close {
                    self.server.counters[self.index]
                        .slow_consumer_closes
                        .fetch_add(1, Relaxed);
                    if let Some(kind) = stream {
                        to.send_frame(&streams::close_event(kind, out, SLOW.0, SLOW.1));
                    }
                    return to.close(SLOW.0, SLOW.1);
                }
                replays.pop();
                continue;
            }
            let last = match stream {
                Some(kind) => self.send_stream_replay(to, kind, topic, &replays, &slice.messages),
                None => self.send_deliveries(to, &slice.messages, out),
            };
            if let (Some(last), Some(replay)) = (last, replays.last_mut()) {
                replay.sent = last;
            }
            if slice.complete {
                replays.pop();
            }
        }
        if !replays.is_empty() {
            to.notify_writable();
            self.replays.insert(conn, replays);
        }
    }

    /// Sends `out` as one text message.
    fn send(&self, to: &mut impl Reply, out: &[u8]) {
        if to.send_frame(&shared_frame(MessageKind::Text, out)) {
            self.server.counters[self.index].sent(out.len());
        }
    }

    fn reply(&self, ctx: &mut Ctx<'_, Conn>, out: &[u8]) {
        if ctx.send(MessageKind::Text, out).is_ok() {
            self.server.counters[self.index].sent(out.len());
        }
    }
}

/// How a slow consumer is closed: 1013, not 1008, since falling behind is temporary (a client
/// retries with backoff and resumes on 1013, where 1008 tells it to stop).
const SLOW: (CloseCode, &str) = (CloseCode::TRY_AGAIN_LATER, "slow consumer");

/// The error answer to a subscribe the registry refused.
fn subscribe_error(error: clarion_pubsub::Error) -> (ErrorCode, &'static str) {
    match error {
        clarion_pubsub::Error::TooManyTopics => {
            (ErrorCode::TooManyTopics, "too many topics on the server")
        }
        clarion_pubsub::Error::TooManyNewTopics => (
            ErrorCode::TooManyTopics,
            "too many new topics at once; try again later",
        ),
        _ => (ErrorCode::BadRequest, "cannot subscribe"),
    }
}

/// How a raw socket or a stream whose subscribe the registry refused is closed: 1013 for a
/// refusal that passes (clients creating topics too fast), so the client retries with
/// backoff, 1008 for one that does not.
fn subscribe_close(error: &clarion_pubsub::Error) -> CloseCode {
    match error.is_transient() {
        true => CloseCode::TRY_AGAIN_LATER,
        false => CloseCode::POLICY_VIOLATION,
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

/// What a close code says, for the `debug` line of a close (the code is in the line too).
fn close_reason(code: Option<CloseCode>) -> &'static str {
    match code {
        None => "dropped without a close frame (reset, read error or timeout)",
        Some(CloseCode::NORMAL) => "normal",
        Some(CloseCode::GOING_AWAY) => "going away (idle, drain or client leaving)",
        Some(CloseCode::PROTOCOL_ERROR) => "protocol error",
        Some(CloseCode::UNSUPPORTED_DATA) => "unsupported data",
        Some(CloseCode::NO_STATUS) => "closed without a code",
        Some(CloseCode::INVALID_PAYLOAD) => "invalid UTF-8",
        Some(CloseCode::POLICY_VIOLATION) => {
            "policy (rate limit, forbidden publish, too many topics)"
        }
        Some(CloseCode::MESSAGE_TOO_BIG) => "message too big",
        Some(CloseCode::INTERNAL_ERROR) => "internal error",
        Some(CloseCode::TRY_AGAIN_LATER) => {
            "try again later (slow consumer, server busy, a publish refused for now)"
        }
        Some(_) => "application code",
    }
}

/// The 404 answer.
fn not_found<'r>() -> Answer<'r, Conn> {
    Answer::Respond(Response::new(404, "text/plain", "not found\n"))
}

/// The methods some route takes; any other is answered 501 (RFC 9110 §15.6.2). Methods are
/// case-sensitive: `get` is not `GET`.
const METHODS: [&str; 4] = ["GET", "HEAD", "POST", "OPTIONS"];

/// The answer to a request no route took: 405 with `Allow` on a path that takes other methods
/// (RFC 9110 §15.5.6), else 404. The routes that answer every method themselves (WebSocket
/// routes, streams, `/topics/`) are not listed.
fn unrouted<'r>(path: &str, public_metrics: bool, on_admin: bool) -> Answer<'r, Conn> {
    let allow = match path {
        "/healthz" => "GET, HEAD",
        "/readyz" | "/metrics" | "/stats" if on_admin || public_metrics => "GET, HEAD",
        "/dashboard" | "/dashboard/ws" if on_admin => "GET, HEAD",
        "/publish" if !on_admin => "POST, OPTIONS",
        _ if !on_admin && path.starts_with("/publish/") => "POST, OPTIONS",
        _ => return not_found(),
    };
    method_not_allowed("method not allowed", allow)
}

/// A 405 whose `Allow` lists the methods the path takes (RFC 9110 §15.5.6).
fn method_not_allowed<'r>(message: &str, allow: &str) -> Answer<'r, Conn> {
    let mut response = http::error(405, message);
    response.headers.push(("Allow", allow.to_owned()));
    Answer::Respond(response)
}

impl App {
    /// An admin route's answer, if `request` is one: on the admin listener (`on_admin`) the
    /// monitoring routes and the dashboard, on the public port (with `public_metrics`) the
    /// monitoring routes. `/healthz` and `/readyz` are open (probes carry no key); the rest
    /// need the admin key when one is set.
    fn admin<'r>(
        &mut self,
        request: &Request<'r>,
        client: Option<SocketAddr>,
        on_admin: bool,
    ) -> Option<Answer<'r, Conn>> {
        let (server, live) = (&*self.server, self.live.get());
        let path = request.path();
        let read = matches!(request.method(), "GET" | "HEAD");
        let monitoring =
            read && matches!(path, "/metrics" | "/stats") || path.starts_with("/topics/");
        let dashboard = on_admin && read && matches!(path, "/dashboard" | "/dashboard/ws");
        match path {
            "/healthz" if read && on_admin => return Some(Answer::Respond(http::health(server))),
            "/readyz" if read => return Some(Answer::Respond(http::ready(server))),
            _ if !monitoring && !dashboard => return None,
            _ => {}
        }
        if let Some(key) = &live.admin_key
            && !key.check_or_query(request)
        {
            let reason = "missing or wrong admin key";
            server.refusals.log(Refusal {
                path,
                peer: client,
                status: 401,
                reason,
                subject: None,
            });
            let mut response = http::error(401, reason);
            response
                .headers
                .push(("WWW-Authenticate", "Bearer".to_owned()));
            return Some(Answer::Respond(response));
        }
        Some(match path {
            "/metrics" => Answer::Respond(http::metrics(server)),
            "/stats" => Answer::Respond(http::stats(server)),
            "/dashboard" => Answer::Respond(http::dashboard_page()),
            "/dashboard/ws" if !http::same_origin(request) => {
                Answer::Respond(http::error(403, "origin not allowed"))
            }
            "/dashboard/ws" => {
                self.pending = Some(Pending {
                    topic: None,
                    stream: None,
                    extra: Extra::default(),
                    refused: None,
                    client,
                });
                Answer::Upgrade {
                    conn: Conn {
                        subs: Subscriptions::default(),
                        extra: None,
                        route: Route::Dashboard,
                        may_publish: false,
                        heartbeat: 0,
                    },
                    protocol: None,
                }
            }
            _ if !read => method_not_allowed("method not allowed", "GET, HEAD"),
            _ => Answer::Respond(http::presence(server, live, &path["/topics/".len()..])),
        })
    }
}

impl Handler for App {
    type Conn = Conn;
    type Inbox = Post;

    fn on_request<'r>(
        &mut self,
        request: &Request<'r>,
        body: &[u8],
        info: &RequestInfo,
    ) -> Answer<'r, Conn> {
        self.pending = None;
        self.server.refresh(&mut self.live);
        self.server.maybe_sweep(info.now());
        let peer = info.peer();
        let client = match self.client(request, peer) {
            Ok(client) => client,
            Err(refusal) => return Answer::Respond(refusal),
        };
        let path = request.path();
        tracing::trace!(
            reactor = self.index,
            method = request.method(),
            path,
            ?peer,
            ?client,
            "request"
        );
        if !METHODS.contains(&request.method()) {
            return Answer::Respond(http::error(501, "method not implemented"));
        }
        let live = self.live.get();
        let on_admin = live.config.admin_listen.is_some() && info.listener() == ADMIN_LISTENER;
        let public_metrics = live.config.public_metrics;
        if on_admin || public_metrics {
            let served = self.admin(request, client, on_admin);
            if served.is_some() || on_admin {
                return served.unwrap_or_else(|| unrouted(path, public_metrics, on_admin));
            }
        }
        let (server, live) = (&*self.server, self.live.get());
        match (request.method(), path) {
            ("GET" | "HEAD", "/healthz") => Answer::Respond(http::health(server)),
            ("POST", "/publish") => Answer::Respond(http::publish(
                server, live, request, body, client, self.index,
            )),
            ("POST", _) if path.starts_with("/publish/") => Answer::Respond(http::publish(
                server, live, request, body, client, self.index,
            )),
            ("OPTIONS", _) if stream::is_stream_path(path) || path.starts_with("/publish") => {
                Answer::Respond(cors::preflight(request, &live.origins))
            }
            ("GET", _) if stream::is_stream_path(path) => self.stream(request, client),
            (_, _) if stream::is_stream_path(path) => {
                method_not_allowed("streams are read with GET", "GET, OPTIONS")
            }
            (_, "/echo") if live.config.echo => self.websocket(Route::Echo, request, client, None),
            (_, "/ws") => self.websocket(Route::Envelope, request, client, None),
            (_, _) if path.starts_with("/t/") => {
                self.websocket(Route::Topic, request, client, path.get(3..))
            }
            _ => unrouted(path, public_metrics, false),
        }
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, Conn>) {
        let Pending {
            topic,
            stream,
            extra,
            refused,
            client,
        } = self.pending.take().unwrap_or(Pending {
            topic: None,
            stream: None,
            extra: Extra::default(),
            refused: None,
            client: None,
        });
        tracing::debug!(
            reactor = self.index,
            conn = ctx.id(),
            route = ?ctx.conn().route,
            peer = ?client,
            topic = topic.as_deref(),
            sub = extra.grants.as_ref().and_then(Grants::subject),
            "websocket open"
        );
        self.server.opened(extra.ip);
        if !extra.is_empty() {
            let key = self.extras.insert(extra);
            // A slab key of a live connection's extra is far below 2³²; if not, the extra is
            // simply not found later (no grants: publish and subscribe are refused).
            ctx.conn().extra = u32::try_from(key + 1).ok().and_then(NonZeroU32::new);
        }
        if let Some(refused) = refused {
            // The close is the whole answer: nothing the client sends is read any more.
            return ctx.close(token_close_code(refused), &refused.to_string());
        }
        if let Some(request) = stream {
            return self.open_stream(ctx, request);
        }
        if ctx.conn().route == Route::Dashboard {
            let (id, now) = (ctx.id(), ctx.now());
            let topic = dashboard::STATS_TOPIC;
            if let Err(e) = self
                .system
                .subscribe(id, &mut ctx.conn().subs, topic, None, 0, now)
            {
                ctx.close(CloseCode::INTERNAL_ERROR, &e.to_string());
            }
            return;
        }
        if let Some(topic) = topic {
            let (id, now) = (ctx.id(), ctx.now());
            let subscribed =
                self.registry
                    .subscribe(id, &mut ctx.conn().subs, &topic, None, 0, now);
            self.update_gauge();
            match subscribed {
                Ok(_) => {}
                Err(clarion_pubsub::Error::Pending) => {
                    let parked = Parked {
                        conn: id,
                        id: None,
                        resume: None,
                        envelope: false,
                    };
                    self.park(&topic, parked);
                }
                Err(e) => ctx.close(subscribe_close(&e), &e.to_string()),
            }
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Conn>, kind: MessageKind, payload: &[u8]) {
        self.server.refresh(&mut self.live);
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
            // A stream reads nothing: the engine never delivers a message on one.
            Route::Stream(_) => {}
            Route::Dashboard => {}
        }
    }

    /// A stream the engine ends (shutdown): its `close` event and the body's end, as the
    /// handler's own closes send them.
    fn stream_ending(&mut self, conn: &mut Conn, code: CloseCode, reason: &str, out: &mut Vec<u8>) {
        if let Route::Stream(kind) = conn.route {
            out.extend_from_slice(&streams::close_event(kind, &mut self.scratch, code, reason));
        }
    }

    fn on_close(&mut self, id: ConnId, conn: &mut Conn, code: Option<CloseCode>, now: Instant) {
        tracing::debug!(
            reactor = self.index,
            conn = id,
            route = ?conn.route,
            code = code.map(|c| c.0),
            reason = close_reason(code),
            topics = conn.subs.len(),
            "websocket closed"
        );
        if conn.heartbeat != 0 {
            conn.heartbeat = 0;
            self.heartbeats -= 1;
        }
        if conn.route == Route::Dashboard {
            self.system.unsubscribe_all(id, &mut conn.subs);
        } else if self.registry.unsubscribe_all(id, &mut conn.subs) > 0 {
            self.update_gauge();
        }
        if !self.parked.is_empty() {
            self.unpark_conn(id, None);
        }
        self.replays.remove(&id);
        let extra = conn
            .extra
            .take()
            .and_then(|key| self.extras.try_remove(key.get() as usize - 1));
        self.server.closed(extra.and_then(|extra| extra.ip));
        self.server.maybe_sweep(now);
    }

    fn on_inbox(&mut self, local: &mut Local<'_, Conn>, post: Post) {
        self.server.refresh(&mut self.live);
        match post {
            Post::Message(message) => self.fan_out(local, message),
            Post::Ready(topic) => self.unpark(local, topic),
            Post::Reset { topic, seq } => self.reset(local, &topic, seq),
            Post::Probe(round) => self.server.answered(self.index, round),
        }
    }

    fn on_sweep(&mut self, now: Instant) -> bool {
        self.server.refresh(&mut self.live);
        self.prev_tick = self.tick;
        self.tick = now.saturating_duration_since(self.origin).as_secs();
        let expiring = self.live.get().jwt.is_some() && !self.extras.is_empty();
        if expiring {
            self.wall = unix_now();
        }
        expiring || self.heartbeats > 0
    }

    fn on_sweep_conn(&mut self, ctx: &mut Ctx<'_, Conn>) {
        let id = ctx.id();
        let conn = ctx.conn();
        let heartbeat = u64::from(conn.heartbeat);
        let route = conn.route;
        if let Some(jwt) = &self.live.get().jwt
            && let Some(grants) = self.grants(conn)
            && jwt.remaining(grants, self.wall).is_none()
        {
            self.server.counters[self.index]
                .token_expired_closes
                .fetch_add(1, Relaxed);
            return self.end_stream(ctx, TOKEN_EXPIRED, "token expired");
        }
        // Due when a multiple of the interval, shifted by the connection's phase, was passed
        // since the last sweep: once per interval however late a sweep comes.
        let phase = id as u64 % heartbeat.max(1);
        if heartbeat != 0 && (self.tick + phase) / heartbeat != (self.prev_tick + phase) / heartbeat
        {
            let counters = &self.server.counters[self.index];
            // A client that is behind has bytes coming: a heartbeat would only add to them.
            if !ctx.has_room() {
                counters.heartbeats_skipped.fetch_add(1, Relaxed);
            } else {
                let frame = match route {
                    Route::Stream(kind) => &self.stream_heartbeats[kind.index()],
                    _ => &self.heartbeat_frame,
                };
                if ctx.send_shared(frame).is_ok() {
                    counters.heartbeats.fetch_add(1, Relaxed);
                    counters.sent(frame.len());
                }
            }
        }
    }

    fn on_writable(&mut self, ctx: &mut Ctx<'_, Conn>) {
        let mut out = std::mem::take(&mut self.scratch);
        self.pump_replays(ctx, &mut out);
        self.scratch = out;
    }

    fn on_limit(&mut self, hit: &LimitHit<'_, Conn>) {
        let path: Cow<str> = match hit.conn {
            None => Cow::Borrowed(""),
            Some(conn) => self.path_of(conn),
        };
        let status = match hit.limit {
            Limit::Rate => CloseCode::POLICY_VIOLATION.0,
            Limit::PartialBudget => CloseCode::TRY_AGAIN_LATER.0,
            Limit::HandshakeTimeout => 408,
            // Closed or dropped without an answer: what an HTTP server would have said.
            _ => 503,
        };
        self.server.refusals.log(Refusal {
            path: &path,
            peer: hit.peer,
            status,
            reason: hit.limit.reason(),
            subject: hit.conn.and_then(|conn| self.grants(conn)?.subject()),
        });
    }
}

/// The grants of `conn`, kept in the reactor's side table `extras`.
fn grants_in<'e>(extras: &'e Slab<Extra>, conn: &Conn) -> Option<&'e Grants> {
    let key = conn.extra?.get() as usize - 1;
    extras.get(key)?.grants.as_ref()
}

/// Forgets `conn`'s replay of `topic` (it unsubscribed or lost the grant).
fn end_replay(replays: &mut HashMap<ConnId, Vec<Replay>>, conn: ConnId, topic: TopicId) {
    if let Some(list) = replays.get_mut(&conn) {
        list.retain(|r| r.topic != topic);
        if list.is_empty() {
            replays.remove(&conn);
        }
    }
}

/// How a `/ws` upgrade whose token was refused is closed: 4001 for an expired token (get a new
/// one), 4003 for the rest (do not retry with it).
fn token_close_code(refused: Unauthorized) -> CloseCode {
    match refused {
        Unauthorized::Expired => TOKEN_EXPIRED,
        _ => TOKEN_REFUSED,
    }
}

/// Seconds since the Unix epoch (0 for a clock set before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

impl App {
    /// The cluster renumbered `topic` above `seq`: envelope subscribers are told (raw sockets
    /// have no `seq` to correct).
    fn reset(&mut self, local: &mut Local<'_, Conn>, topic: &str, seq: u64) {
        let subscribers = self.registry.reset(topic, seq);
        // A replay in progress goes on from `seq` in the new numbering (the client drops what
        // it had above it, as `reset` tells every subscriber).
        if let Some(id) = self.registry.id(topic) {
            let epoch = Some(self.server.hub.epoch());
            for replay in self.replays.values_mut().flatten() {
                if replay.topic == id {
                    replay.sent = replay.sent.min(seq);
                    replay.epoch = epoch;
                }
            }
        }
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        envelope::render_reset(&mut out, topic, self.server.hub.epoch(), seq);
        let frame = shared_frame(MessageKind::Text, &out);
        for id in subscribers {
            match local.conn(id).map(|conn| conn.route) {
                Some(Route::Envelope) => {
                    if matches!(local.send_shared(id, &frame, usize::MAX), Push::Queued) {
                        self.server.counters[self.index].sent(out.len());
                    }
                }
                Some(Route::Stream(kind)) => {
                    if let Some(bytes) = self.stream_reset(local, id, kind, &out) {
                        self.server.counters[self.index].sent(bytes);
                    }
                }
                _ => {}
            }
        }
        self.scratch = out;
    }

    /// A message from the hub, to this reactor's subscribers of its topic.
    fn fan_out(&mut self, local: &mut Local<'_, Conn>, message: Arc<Message>) {
        let (server, config) = (&*self.server, &self.live.get().config);
        let counters = &server.counters[self.index];
        let (max_queued, policy) = (config.max_queued_bytes, config.slow_consumer);
        let raw = message.payload().frame();
        let zconfig = &config.compression;
        let compressing = zconfig.policy != Policy::Off;
        // Built on the first envelope subscriber, then shared by all of them (and compressed
        // once, on the first that takes it).
        let mut wrapped: Option<Arc<[u8]>> = None;
        let mut wrapped_compressed: Option<Arc<[u8]>> = None;
        let (mut delivered, mut bytes, mut dropped, mut evicted) = (0u64, 0u64, 0u64, 0u64);
        let (mut compressed, mut compressed_bytes) = (0u64, 0u64);
        // A node's own provisional publish, numbered otherwise by the cluster, reached the raw
        // sockets here already; envelope subscribers were told to expect it again.
        let raw_had_it = message.provisional() != 0;
        let registry = if message.topic().starts_with('$') {
            &mut self.system
        } else {
            &mut self.registry
        };
        let topic = registry.deliver(&message);
        let registry = &*registry;
        self.stream_frames.clear();
        let epoch = server.hub.epoch();
        for id in topic.iter().flat_map(|&topic| registry.members(topic)) {
            let Some(conn) = local.conn(id) else {
                continue;
            };
            let route = conn.route;
            if raw_had_it && route == Route::Topic {
                continue;
            }
            if let Route::Stream(kind) = route {
                let waiting = !self.parked.is_empty() && streams::waits(&self.parked, id);
                let held = self.replays.get(&id).map_or(&[][..], Vec::as_slice);
                let frames = &mut self.stream_frames;
                let frame = frames.bytes(
                    kind, id, &conn.subs, &message, registry, waiting, held, epoch,
                );
                match local.send_shared(id, frame, max_queued) {
                    Push::Queued => {
                        delivered += 1;
                        bytes += frame.len() as u64;
                    }
                    Push::Full => {
                        streams::end_from_inbox(local, &mut self.scratch, id, kind, SLOW);
                        evicted += 1;
                    }
                    Push::Closed => {}
                }
                continue;
            }
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
                    evicted += 1;
                    if let Some(conn) = local.conn(id) {
                        let path = match route {
                            Route::Topic => format!("/t/{}", message.topic()),
                            _ => "/ws".to_owned(),
                        };
                        server.refusals.log(Refusal {
                            path: &path,
                            peer: None,
                            status: CloseCode::TRY_AGAIN_LATER.0,
                            reason: "slow consumer",
                            subject: grants_in(&self.extras, conn).and_then(Grants::subject),
                        });
                    }
                    // 1013, not 1008: falling behind is temporary, and a client retries (with
                    // backoff) and resumes on 1013 where 1008 tells it to stop.
                    local.close(id, SLOW.0, SLOW.1);
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
        tracing::trace!(
            reactor = self.index,
            topic = &**message.topic(),
            seq = message.seq(),
            delivered,
            dropped,
            evicted,
            "fanout"
        );
        // The clock, not `local.now()`: the latency includes the inbox messages handled before
        // this one in the same turn.
        let fanned_out = Instant::now();
        counters
            .latency
            .record(fanned_out.saturating_duration_since(message.published_at()));
        server.maybe_sweep(local.now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_costs_24_bytes_of_state_and_104_in_its_reactor() {
        assert_eq!(size_of::<Conn>(), 24);
        // The engine's entry around it: what an idle push-server connection costs.
        assert_eq!(clarion_engine::connection_size::<Conn>(), 104);
    }

    #[test]
    fn a_known_path_with_another_method_is_405_with_allow_and_the_rest_404() {
        let answer = |path, public_metrics, on_admin| match unrouted(path, public_metrics, on_admin)
        {
            Answer::Respond(response) => {
                let allow = response.headers.iter().find(|(n, _)| *n == "Allow");
                (response.status, allow.map(|(_, v)| v.clone()))
            }
            _ => panic!("{path}: not a plain answer"),
        };
        let allows = |methods: &str| (405, Some(methods.to_owned()));
        assert_eq!(
            answer("/publish/news", false, false),
            allows("POST, OPTIONS")
        );
        assert_eq!(answer("/publish", false, false), allows("POST, OPTIONS"));
        assert_eq!(answer("/healthz", false, false), allows("GET, HEAD"));
        assert_eq!(answer("/healthz", false, true), allows("GET, HEAD"));
        assert_eq!(answer("/metrics", false, true), allows("GET, HEAD"));
        assert_eq!(answer("/metrics", true, false), allows("GET, HEAD"));
        assert_eq!(answer("/dashboard", false, true), allows("GET, HEAD"));
        // Paths a listener does not serve stay 404 whatever the method.
        assert_eq!(answer("/metrics", false, false), (404, None));
        assert_eq!(answer("/dashboard", true, false), (404, None));
        assert_eq!(answer("/publish/news", false, true), (404, None));
        assert_eq!(answer("/publisher", false, false), (404, None));
        assert_eq!(answer("/nowhere", true, true), (404, None));
    }
}
