//! The handler's side of the streaming routes (`/sse`, `/stream`; formats in
//! [`crate::server::stream`]): a request checked and answered, its subscriptions and first
//! events, its share of each message's fanout, heartbeats, resets and its end.
//!
//! Frame once: a message's stream bytes are built once per message per reactor and sent by
//! reference to every stream they fit, as WebSocket frames are. NDJSON lines and the SSE events
//! of single-topic streams are the same for every such stream; an SSE event of a stream of
//! several topics carries the stream's position in each of them, so it is shared by the
//! streams of the same topics. Those positions need nothing per connection: a live member of a
//! topic has received everything fanned out here, so its position is the registry's last `seq`
//! of the topic. Only a stream still joining a topic (a message at or below the `seq` it
//! joined at in flight) or waiting for one (cluster mode) gets events of its own until then.

use std::collections::HashMap;
use std::sync::Arc;

use clarion_engine::{Answer, ConnId, Ctx, Local, Push, Response};
use clarion_protocol::CloseCode;
use clarion_protocol::handshake::Request;
use clarion_pubsub::{Epoch, Message, Registry, Resume, Subscribed, Subscriptions, TopicId};

use super::{App, Conn, Parked, Pending, REPLAY_SLICE, Replay, Reply, Route, subscribe_close};
use crate::server::auth::Grants;
use crate::server::cors;
use crate::server::http;
use crate::server::refusals::Refusal;
use crate::server::stream::{
    self, KINDS, STREAM_HEADERS, StreamKind, StreamRequest, Writer, close_json, session_json,
    subscribed_json,
};

/// A message's bytes for each stream kind, by [`StreamKind::index`], once built.
type PerKind = [Option<Arc<[u8]>>; KINDS.len()];

/// One message's stream bytes on this reactor, built on first need.
#[derive(Debug, Default)]
pub(super) struct StreamFrames {
    /// By [`StreamKind::index`]: NDJSON lines, and SSE events of single-topic streams.
    single: PerKind,
    /// SSE events of streams of several topics, by their topics (sorted handles).
    shapes: Vec<(Vec<TopicId>, PerKind)>,
    /// The last event built for one stream alone.
    own: Option<Arc<[u8]>>,
    /// A stream's topics, gathered to find its shape.
    key: Vec<TopicId>,
    scratch: Vec<u8>,
    id: Vec<u8>,
}

impl StreamFrames {
    /// Forgets the last message's bytes.
    pub(super) fn clear(&mut self) {
        self.single = Default::default();
        self.shapes.clear();
        self.own = None;
    }

    /// The bytes of `message` for stream `conn` (of `kind`, subscribed to `subs`), shared with
    /// every stream of the same kind and topics unless this one's positions are its own
    /// (`waiting` for a topic, or joining one, or `held` by a replay in slices).
    #[allow(
        clippy::too_many_arguments,
        reason = "the parts of the app a fanout reads"
    )]
    pub(super) fn bytes(
        &mut self,
        kind: StreamKind,
        conn: ConnId,
        subs: &Subscriptions,
        message: &Message,
        registry: &Registry,
        waiting: bool,
        held: &[Replay],
        epoch: Epoch,
    ) -> &Arc<[u8]> {
        let StreamFrames {
            single,
            shapes,
            own,
            key,
            scratch,
            id,
        } = self;
        let slot = kind.index();
        if !kind.has_ids() {
            return single[slot]
                .get_or_insert_with(|| Writer::new(kind, scratch).message(message, None).shared());
        }
        if waiting || subs.iter().any(|topic| registry.is_joining(topic, conn)) {
            write_positions(id, epoch, &positions(registry, conn, subs, &[], held));
            let bytes = Writer::new(kind, scratch)
                .message(message, Some(id))
                .shared();
            return own.insert(bytes);
        }
        let built = if subs.len() == 1 {
            &mut single[slot]
        } else {
            key.clear();
            key.extend(subs.iter());
            key.sort_unstable();
            let at = match shapes.iter().position(|(topics, _)| topics == key) {
                Some(at) => at,
                None => {
                    shapes.push((key.clone(), Default::default()));
                    shapes.len() - 1
                }
            };
            &mut shapes[at].1[slot]
        };
        built.get_or_insert_with(|| {
            write_positions(id, epoch, &positions(registry, conn, subs, &[], &[]));
            Writer::new(kind, scratch)
                .message(message, Some(id))
                .shared()
        })
    }
}

/// A stream's position in each of its topics, by topic name: the subscribed ones from the
/// registry (or, for a topic `held` by its replay, the last `seq` the replay sent), and
/// `extra` ones (topics it waits for, with the position it asked for, if any).
fn positions(
    registry: &Registry,
    conn: ConnId,
    subs: &Subscriptions,
    extra: &[(Arc<str>, Option<u64>)],
    held: &[Replay],
) -> Vec<(Arc<str>, Option<u64>)> {
    let mut all: Vec<(Arc<str>, Option<u64>)> = subs
        .iter()
        .filter_map(|topic| {
            let name = registry.name(topic)?.clone();
            let position = match held.iter().find(|replay| replay.topic == topic) {
                Some(replay) => Some(replay.sent),
                None => registry.position(topic, conn),
            };
            Some((name, position))
        })
        .chain(extra.iter().cloned())
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// Writes an id from positions by topic name.
fn write_positions(out: &mut Vec<u8>, epoch: Epoch, positions: &[(Arc<str>, Option<u64>)]) {
    out.clear();
    stream::write_id(out, epoch, positions.iter().map(|(_, seq)| *seq));
}

/// The position a stream asked to resume `topic` from, if it is of this epoch: what its id
/// says until the topic is subscribed.
fn asked(resume: Option<&Resume>, epoch: Epoch) -> Option<u64> {
    resume
        .filter(|resume| resume.epoch == Some(epoch))
        .map(|resume| resume.since)
}

impl App {
    /// `GET /sse…` and `GET /stream…`: checked like a WebSocket subscriber (caps, origin, token,
    /// each topic), then answered with the stream's head; its subscriptions start in
    /// [`App::open_stream`].
    pub(super) fn stream<'r>(
        &mut self,
        request: &Request<'r>,
        client: Option<std::net::SocketAddr>,
    ) -> Answer<'r, Conn> {
        let live = self.live.get();
        let cors = cors::headers(request, &live.origins);
        let refuse = |mut response: Response| {
            response.headers.extend(cors.iter().cloned());
            Answer::Respond(response)
        };
        let wanted = match stream::parse(request, live.config.max_topics_per_connection) {
            Ok(wanted) => wanted,
            Err(reason) => return refuse(http::error(400, reason)),
        };
        let kind = wanted.kind;
        let topics: Vec<&str> = wanted.topics.iter().map(|want| &*want.topic).collect();
        let checked = match self.check_client(Route::Stream(kind), request, client, &topics) {
            Ok(checked) => checked,
            Err(refusal) => return refuse(refusal),
        };
        // The server's `max_topics`: refused before the stream starts rather than ended at
        // once by its first subscribe (which still does, if other reactors fill the table
        // between this look and the subscribe).
        if !self.server.hub.has_room_for(topics.iter().copied()) {
            let reason = "too many topics on the server";
            self.server.refusals.log(Refusal {
                path: request.path(),
                peer: client,
                status: 503,
                reason,
                subject: checked.extra.grants.as_ref().and_then(Grants::subject),
            });
            return refuse(http::error(503, reason));
        }
        let heartbeat = match wanted.heartbeat {
            Some(asked) if asked > 0 => live.config.heartbeat(asked),
            _ => live.config.stream_heartbeat_secs(),
        };
        let mut response = Response::new(200, kind.content_type(), Vec::new());
        response.headers = STREAM_HEADERS
            .iter()
            .map(|&(name, value)| (name, value.to_owned()))
            .chain(cors)
            .collect();
        if kind.chunked {
            response
                .headers
                .push(("Transfer-Encoding", "chunked".to_owned()));
        }
        self.pending = Some(Pending {
            topic: None,
            stream: Some(wanted),
            extra: checked.extra,
            refused: None,
            client,
        });
        Answer::Stream {
            conn: Conn {
                subs: Subscriptions::default(),
                extra: None,
                route: Route::Stream(kind),
                may_publish: false,
                heartbeat,
            },
            response,
        }
    }

    /// A stream's head is out: subscribe its topics, then send, per topic, `subscribed` and
    /// what a resume recovered, each event with the positions the client then holds.
    pub(super) fn open_stream(&mut self, ctx: &mut Ctx<'_, Conn>, request: StreamRequest) {
        let (id, now, kind) = (ctx.id(), ctx.now(), request.kind);
        self.heartbeats += 1;
        let epoch = self.server.hub.epoch();
        let mut subscribed: Vec<Option<Subscribed>> = Vec::with_capacity(request.topics.len());
        // One replay slice for the whole stream (at least a message per topic): the rest goes
        // out as the stream's queue drains.
        let mut budget = REPLAY_SLICE;
        for want in &request.topics {
            let subs = &mut ctx.conn().subs;
            match self
                .registry
                .subscribe(id, subs, &want.topic, want.resume.as_ref(), budget, now)
            {
                Ok(done) => {
                    let replayed = done.recovery.as_ref().map_or(0, |recovery| {
                        recovery.messages.iter().map(|m| m.memory()).sum::<usize>()
                    });
                    budget = budget.saturating_sub(replayed);
                    subscribed.push(Some(done));
                }
                Err(clarion_pubsub::Error::Pending) => {
                    let parked = Parked {
                        conn: id,
                        id: None,
                        resume: want.resume,
                        envelope: false,
                    };
                    self.park(&want.topic, parked);
                    subscribed.push(None);
                }
                Err(e) => {
                    self.update_gauge();
                    return self.end_stream(ctx, subscribe_close(&e), &e.to_string());
                }
            }
        }
        self.update_gauge();
        // Until a topic is announced, the id says what the client asked for.
        let mut positions: Vec<(Arc<str>, Option<u64>)> = request
            .topics
            .iter()
            .map(|want| (Arc::from(&*want.topic), asked(want.resume.as_ref(), epoch)))
            .collect();
        let mut out = std::mem::take(&mut self.scratch);
        let mut json = Vec::new();
        let mut writer = Writer::new(kind, &mut out);
        // Native EventSources that lose the stream come back spread over 1 to 5 s.
        writer.retry(1000 + (id as u64).wrapping_mul(7919) % 4000);
        let heartbeat = ctx.conn().heartbeat;
        session_json(&mut json, heartbeat, self.expires_in(ctx.conn()));
        writer.control("session", &json, None);
        let mut events = 1;
        let mut held = Vec::new();
        for (at, done) in subscribed.into_iter().enumerate() {
            let Some(done) = done else { continue };
            let topic = positions[at].0.clone();
            let recovery = done.recovery.unwrap_or_default();
            let start = match &request.topics[at].resume {
                Some(resume) if recovery.recovered => resume.since,
                _ => done.seq,
            };
            positions[at].1 = Some(start);
            subscribed_json(&mut json, &topic, recovery.recovered, epoch, done.seq);
            let mut id_bytes = Vec::new();
            write_positions(&mut id_bytes, epoch, &positions);
            writer.control("subscribed", &json, Some(&id_bytes));
            for message in &recovery.messages {
                positions[at].1 = Some(message.seq());
                write_positions(&mut id_bytes, epoch, &positions);
                writer.message(message, Some(&id_bytes));
            }
            events += 1 + recovery.messages.len();
            if !recovery.complete {
                held.push(Replay {
                    topic: done.topic,
                    sent: positions[at].1.unwrap_or(start),
                    epoch: Some(epoch),
                });
            }
        }
        let bytes = writer.finish();
        if !bytes.is_empty() && ctx.send_bytes(bytes).is_ok() {
            self.server.counters[self.index].sent_many(events, bytes.len());
        }
        if !held.is_empty() {
            self.hold(ctx, held, &mut out);
        }
        self.scratch = out;
    }

    /// Replays of stream `to` that go on in slices ([`App::pump_replays`]): their first slices
    /// are out.
    fn hold(&mut self, to: &mut impl Reply, held: Vec<Replay>, out: &mut Vec<u8>) {
        self.server.counters[self.index]
            .sliced_replays
            .fetch_add(held.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.replays.entry(to.id()).or_default().extend(held);
        self.pump_replays(to, out);
    }

    /// One slice of the replay of `topic` to stream `to`, as events whose ids carry the
    /// stream's positions (`held`: its replays, this one's position moving with each message);
    /// the `seq` of the last message, if any.
    pub(super) fn send_stream_replay(
        &mut self,
        to: &mut impl Reply,
        kind: StreamKind,
        topic: TopicId,
        held: &[Replay],
        messages: &[Arc<Message>],
    ) -> Option<u64> {
        let last = messages.last()?.seq();
        let conn = to.id();
        let epoch = self.server.hub.epoch();
        let waiting = self.waiting_positions(conn, epoch);
        let mut positions = {
            let subs = &to.conn()?.subs;
            positions(&self.registry, conn, subs, &waiting, held)
        };
        let name = self.registry.name(topic)?.clone();
        let at = positions.iter().position(|(n, _)| *n == name)?;
        let mut out = std::mem::take(&mut self.scratch);
        let mut writer = Writer::new(kind, &mut out);
        let mut id_bytes = Vec::new();
        for message in messages {
            positions[at].1 = Some(message.seq());
            write_positions(&mut id_bytes, epoch, &positions);
            writer.message(message, Some(&id_bytes));
        }
        let bytes = writer.shared();
        self.scratch = out;
        if to.send_frame(&bytes) {
            self.server.counters[self.index].sent_many(messages.len(), bytes.len());
        }
        Some(last)
    }

    /// A topic a stream waited for (cluster mode) is subscribed: `subscribed` and what its
    /// resume recovered, with the stream's positions.
    pub(super) fn stream_subscribed(
        &mut self,
        local: &mut Local<'_, Conn>,
        conn: ConnId,
        kind: StreamKind,
        topic: &Arc<str>,
        done: Subscribed,
        resume: Option<Resume>,
    ) {
        let epoch = self.server.hub.epoch();
        let Some(subs) = local.conn(conn).map(|c| std::mem::take(&mut c.subs)) else {
            return;
        };
        let waiting = self.waiting_positions(conn, epoch);
        let held = self.replays.get(&conn).map_or(&[][..], Vec::as_slice);
        let mut positions = positions(&self.registry, conn, &subs, &waiting, held);
        if let Some(c) = local.conn(conn) {
            c.subs = subs;
        }
        let Some(at) = positions.iter().position(|(name, _)| name == topic) else {
            return;
        };
        let start = match &resume {
            Some(resume) if done.recovery.as_ref().is_some_and(|r| r.recovered) => resume.since,
            _ => done.seq,
        };
        let recovery = done.recovery.unwrap_or_default();
        positions[at].1 = Some(start);
        let mut json = Vec::new();
        subscribed_json(&mut json, topic, recovery.recovered, epoch, done.seq);
        let mut id_bytes = Vec::new();
        write_positions(&mut id_bytes, epoch, &positions);
        let mut out = std::mem::take(&mut self.scratch);
        let mut writer = Writer::new(kind, &mut out);
        writer.control("subscribed", &json, Some(&id_bytes));
        for message in &recovery.messages {
            positions[at].1 = Some(message.seq());
            write_positions(&mut id_bytes, epoch, &positions);
            writer.message(message, Some(&id_bytes));
        }
        let bytes: Arc<[u8]> = writer.shared();
        let to = &mut super::To(local, conn);
        if to.send_frame(&bytes) {
            let events = 1 + recovery.messages.len();
            self.server.counters[self.index].sent_many(events, bytes.len());
        }
        if !recovery.complete {
            let replay = Replay {
                topic: done.topic,
                sent: positions[at].1.unwrap_or(start),
                epoch: Some(epoch),
            };
            self.hold(to, vec![replay], &mut out);
        }
        self.scratch = out;
    }

    /// The topics stream `conn` still waits for (cluster mode), with the positions it asked.
    fn waiting_positions(&self, conn: ConnId, epoch: Epoch) -> Vec<(Arc<str>, Option<u64>)> {
        self.parked
            .iter()
            .flat_map(|(topic, list)| {
                list.iter()
                    .filter(move |p| p.conn == conn)
                    .map(move |p| (topic.clone(), asked(p.resume.as_ref(), epoch)))
            })
            .collect()
    }

    /// A stream the cluster renumbered: `reset`, with the positions it now holds.
    pub(super) fn stream_reset(
        &mut self,
        local: &mut Local<'_, Conn>,
        conn: ConnId,
        kind: StreamKind,
        reset: &[u8],
    ) -> Option<usize> {
        let epoch = self.server.hub.epoch();
        let subs = local.conn(conn).map(|c| std::mem::take(&mut c.subs))?;
        let waiting = self.waiting_positions(conn, epoch);
        let held = self.replays.get(&conn).map_or(&[][..], Vec::as_slice);
        let positions = positions(&self.registry, conn, &subs, &waiting, held);
        if let Some(c) = local.conn(conn) {
            c.subs = subs;
        }
        let mut id_bytes = Vec::new();
        write_positions(&mut id_bytes, epoch, &positions);
        let mut out = std::mem::take(&mut self.scratch);
        let bytes: Arc<[u8]> = Writer::new(kind, &mut out)
            .control("reset", reset, Some(&id_bytes))
            .shared();
        self.scratch = out;
        matches!(local.send_shared(conn, &bytes, usize::MAX), Push::Queued).then_some(bytes.len())
    }

    /// Ends the stream of a callback with a `close` event saying why.
    pub(super) fn end_stream(&mut self, ctx: &mut Ctx<'_, Conn>, code: CloseCode, reason: &str) {
        if let Route::Stream(kind) = ctx.conn().route {
            let mut out = std::mem::take(&mut self.scratch);
            let bytes = close_event(kind, &mut out, code, reason);
            let _ = ctx.send_shared(&bytes);
            self.scratch = out;
        }
        ctx.close(code, reason);
    }
}

/// Whether stream `conn` waits for a topic (only ever in cluster mode).
pub(super) fn waits(parked: &HashMap<Arc<str>, Vec<Parked>>, conn: ConnId) -> bool {
    parked.values().flatten().any(|p| p.conn == conn)
}

/// Ends a stream from the inbox with a `close` event saying why (past its queue's cap: it is
/// the last thing the stream gets). A delivery a stream cannot take (its queue is full) ends it
/// under either slow-consumer policy: its ids are positions, so it cannot skip a message and
/// go on (its next id would claim the skipped one), and the client's reconnection from its
/// last id replays what it missed.
pub(super) fn end_from_inbox(
    local: &mut Local<'_, Conn>,
    scratch: &mut Vec<u8>,
    conn: ConnId,
    kind: StreamKind,
    (code, reason): (CloseCode, &str),
) {
    let bytes = close_event(kind, scratch, code, reason);
    let _ = local.send_shared(conn, &bytes, usize::MAX);
    local.close(conn, code, reason);
}

/// The last bytes of a stream of `kind` that the server ends: the `close` event saying why,
/// and the end of the body (a chunked body's last chunk). Whoever ends the stream uses this
/// (the handler before its close, the engine at shutdown through `Handler::stream_ending`).
pub(super) fn close_event(
    kind: StreamKind,
    out: &mut Vec<u8>,
    code: CloseCode,
    reason: &str,
) -> Arc<[u8]> {
    let mut json = Vec::new();
    close_json(&mut json, code.0, reason);
    Arc::from(Writer::new(kind, out).control("close", &json, None).end())
}

/// The heartbeat of each stream kind, by [`StreamKind::index`], built once.
pub(super) fn heartbeats() -> [Arc<[u8]>; KINDS.len()] {
    let mut out = Vec::new();
    KINDS.map(|kind| Writer::new(kind, &mut out).heartbeat().shared())
}
