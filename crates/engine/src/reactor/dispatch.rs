//! Protocol events to the handler: a connection's bytes go through its state machine, and each
//! event it gives is dispatched at once (a request is answered or upgraded, a message handed to
//! `on_message`).
//!
//! [`Core::on_data`] is the one entry of a connection's received bytes for both I/O models (the
//! readiness driver's shared read buffer, a completion backend's provided buffer). Transport
//! layers go there, before the protocol: the PROXY protocol header ([`super::proxy_header`])
//! first, then TLS: a TLS connection's records are decrypted into the reactor's one plaintext
//! buffer (`reactor/tls.rs`), which then goes the same way.
//!
//! HTTP keep-alive: a plain answer keeps the connection for the next request when the client
//! asks for it (HTTP/1.1 by default, HTTP/1.0 with `Connection: keep-alive`), the handler did
//! not answer `Connection: close`, the connection is under `keep_alive_requests` and the reactor
//! is not draining; the state machine then reads the next head, and requests pipelined behind
//! the answered one are answered in order. Streaming responses (Server-Sent Events, NDJSON): an
//! [`Answer::Stream`] writes its head in [`write_answer`], then the state machine carries the
//! body (`Connection::stream`), the handler gets `on_open`, and the connection is a target of
//! `Local::send_shared` like an open WebSocket.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use clarion_protocol::deflate::Params;
use clarion_protocol::handshake::{
    Persistence, Request, write_response, write_response_head, write_stream_head,
};
use clarion_protocol::{CloseCode, Connection, Event, State};

use super::bookkeeping::{Core, HttpConn, rearm_on_state_change};
use super::conn::{Conn, ConnFlags};
use super::proxy_header::{self, Step};
use super::tls::Received;
use super::writer::{ConnWriter, Sink, Writing, Written, writer_for};
use crate::compression::{Compression, ConnInflate, Negotiator};
use crate::limits::{Allowance, Rates};
use crate::sys::Peer;
use crate::{Answer, Config, Ctx, Handler, Limit, LimitHit, RequestInfo, Stats};

impl<S: Peer, H: Handler> Core<S, H> {
    /// Feeds bytes received on `token` (decrypted first on a TLS connection) to its protocol
    /// state machine and dispatches the events; what the connection's writer left to do.
    ///
    /// Limits applied on the way: the connection's byte and message allowance (over it: 1008
    /// "rate limit", at once); its write cap (over it between two frames, the rest of the
    /// plaintext is parked in `rx`, marked `UNREAD`, and fed when the queue drains); and the
    /// reactor's budget for what receive buffers hold (a buffer that would take it past the
    /// budget closes its connection with 1013).
    pub(super) fn on_data<W: Writing<S>>(
        &mut self,
        writing: &mut W,
        token: usize,
        input: &mut [u8],
        now: Instant,
    ) -> Written {
        // The PROXY protocol header comes before everything, TLS included: what is left of the
        // bytes after it goes on; a header cut across reads is gathered in the connection's
        // lent `rx` (counted against the partial-message budget, 1 KiB at most) and fed from
        // there.
        let mut gathered = Vec::new();
        let mut input = input;
        if let Some(conn) = self.conns.get_mut(token)
            && conn.flags.contains(ConnFlags::PROXY_HEADER)
        {
            let held_before = conn.rx.as_deref().map_or(0, Vec::capacity);
            let mut rxb = conn.rx.take().unwrap_or_else(|| self.rx_pool.take());
            let (config, http, stats) = (&self.config, &mut self.http, &self.stats);
            let step = proxy_header::step(
                config,
                &mut http.entry(token).or_default().peer,
                stats,
                token,
                &mut conn.flags,
                input,
                &mut rxb,
            );
            self.partial_bytes -= held_before;
            match step {
                Step::Wait => {
                    if rxb.is_empty() {
                        self.rx_pool.give(rxb);
                    } else {
                        self.partial_bytes += rxb.capacity();
                        conn.rx = Some(rxb);
                    }
                    return Written::Done;
                }
                Step::Refuse => {
                    let state_before = conn.ws.state();
                    conn.ws.finish();
                    self.rx_pool.give(rxb);
                    rearm_on_state_change(&mut self.timers, conn, state_before);
                    return Written::Done;
                }
                Step::Feed { from, held } => {
                    if held {
                        gathered = std::mem::take(&mut *rxb);
                    }
                    self.rx_pool.give(rxb);
                    input = if held {
                        &mut gathered[from..]
                    } else {
                        &mut input[from..]
                    };
                }
            }
        }
        let written = if self.tls.is_tls(token) {
            self.on_records(writing, token, input, now)
        } else {
            self.on_plaintext(writing, false, token, input, true, now)
        };
        if gathered.capacity() > 0 {
            // The gathered header's buffer came from the pool: it goes back there.
            let mut rxb = self.rx_pool.take();
            if gathered.capacity() > rxb.capacity() {
                gathered.clear();
                *rxb = gathered;
            }
            self.rx_pool.give(rxb);
        }
        written
    }

    /// Decrypts the TLS records received on `token` and feeds their plaintext on.
    fn on_records<W: Writing<S>>(
        &mut self,
        writing: &mut W,
        token: usize,
        input: &mut [u8],
        now: Instant,
    ) -> Written {
        let Some(conn) = self.conns.get_mut(token) else {
            return Written::Done;
        };
        if conn.flags.contains(ConnFlags::LINGER) {
            // The WebSocket is over: what comes now (a close_notify) is read only to see FIN.
            return Written::Done;
        }
        let received = self.tls.receive(
            token,
            input,
            &mut self.rx_pool,
            &mut self.tx_pool,
            &self.stats,
        );
        let mut plain = std::mem::take(&mut self.tls.plain);
        let written = if received == Received::Failed {
            let conn = &mut self.conns[token];
            let state_before = conn.ws.state();
            conn.ws.finish();
            rearm_on_state_change(&mut self.timers, conn, state_before);
            Written::Done
        } else if plain.is_empty() {
            Written::Done
        } else {
            self.on_plaintext(writing, true, token, &mut plain, true, now)
        };
        self.tls.plain = plain;
        let handshake_out = self
            .tls
            .get_mut(token)
            .is_some_and(|tls| tls.outgoing.is_some());
        if handshake_out && written == Written::Done {
            // Handshake messages or an alert wait: the turn's end sends them.
            Written::Queued
        } else {
            written
        }
    }

    /// Feeds plaintext received on `token` to its protocol state machine and dispatches the
    /// events. `arrived`: the bytes arrived now and are charged to the connection's byte
    /// allowance (bytes parked under the write cap were charged when they arrived).
    #[allow(
        clippy::too_many_arguments,
        reason = "the transport's facts about the bytes, passed apart"
    )]
    pub(super) fn on_plaintext<W: Writing<S>>(
        &mut self,
        writing: &mut W,
        tls: bool,
        token: usize,
        input: &mut [u8],
        arrived: bool,
        now: Instant,
    ) -> Written {
        let draining = self.drain_deadline.is_some();
        let Core {
            handler,
            config,
            conns,
            http,
            rx_pool,
            tx_pool,
            scratch,
            stats,
            compression,
            limits,
            rates,
            partial_bytes,
            ..
        } = self;
        let Some(conn) = conns.get_mut(token) else {
            return Written::Done;
        };
        let Conn {
            socket,
            ws,
            rx,
            tx,
            app,
            flags,
            allowance,
            ..
        } = conn;
        let state_before = ws.state();
        let held_before = rx.as_deref().map_or(0, Vec::capacity);
        let mut rxb = rx.take().unwrap_or_else(|| rx_pool.take());
        let mut out = writer_for(writing, tls, socket, tx, tx_pool);
        let cap = limits.max_queued_bytes();
        let mut dispatch = Dispatch {
            handler,
            config,
            scratch,
            stats,
            compression,
            http,
            draining,
            kept_alive: false,
            now,
            token,
            tls,
            rates: *rates,
            cap,
        };
        let mut hit = None;
        if arrived && state_before == State::Open && !allowance.take_bytes(rates, input.len()) {
            hit = Some(Limit::Rate);
        } else if flags.contains(ConnFlags::UNREAD) {
            // Bytes parked earlier are fed first: these wait behind them.
            rxb.extend_from_slice(input);
        } else {
            let mut stop = dispatch.drive(ws, app, flags, allowance, &mut out, input, &mut rxb);
            while stop == Stop::Again {
                // What the client sent right behind a request that was read in pieces (frames
                // after an upgrade, pipelined requests after a kept answer): feed it now, in
                // order.
                let mut early = std::mem::take(&mut *rxb);
                stop = dispatch.drive(ws, app, flags, allowance, &mut out, &mut early, &mut rxb);
            }
            if stop == Stop::Rate {
                hit = Some(Limit::Rate);
            }
        }
        if hit == Some(Limit::Rate) {
            ws.abort(CloseCode::POLICY_VIOLATION, Limit::Rate.reason(), &mut out);
        }
        if ws.state() == State::Closed {
            // Nothing more is parsed: what the buffer held is moot (once the last event's
            // borrow of it is given back).
            ws.settle(&mut rxb);
            rxb.clear();
            flags.remove(ConnFlags::UNREAD);
        }
        let held = if rxb.is_empty() { 0 } else { rxb.capacity() };
        *partial_bytes = *partial_bytes - held_before + held;
        if held > held_before && *partial_bytes > config.max_partial_bytes_per_reactor {
            ws.abort(CloseCode::TRY_AGAIN_LATER, "server busy", &mut out);
            ws.settle(&mut rxb);
            rxb.clear();
            flags.remove(ConnFlags::UNREAD);
            *partial_bytes -= held;
            hit = Some(Limit::PartialBudget);
        }
        // Counted before the close goes out (epoll writes it in `finish`): a peer that has read
        // the close finds it counted.
        if let Some(limit) = hit {
            Stats::bump(match limit {
                Limit::Rate => &stats.rate_limited,
                _ => &stats.partial_budget_closes,
            });
        }
        let kept_alive = dispatch.kept_alive;
        let written = out.finish();
        if rxb.is_empty() {
            rx_pool.give(rxb);
        } else {
            *rx = Some(rxb);
        }
        if let Some(limit) = hit {
            let peer = match state_before {
                State::Handshaking => http.get(&token).and_then(|h| h.peer),
                _ => socket.peer(),
            };
            handler.on_limit(&LimitHit {
                limit,
                id: Some(token),
                peer,
                conn: app.as_ref(),
                now,
            });
        }
        rearm_on_state_change(&mut self.timers, conn, state_before);
        // A kept connection's deadline moved (to `keep_alive_timeout`, maybe earlier).
        if kept_alive && let Some(key) = conn.timer.take() {
            self.timers.cancel(key);
        }
        self.left_handshake(token, kept_alive);
        written
    }
}

/// Why [`Dispatch::drive`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// The input is consumed (or parked in `rx`).
    End,
    /// Bytes behind a request were left in `rx` (frames after an upgrade, pipelined requests
    /// after a kept answer): feed them.
    Again,
    /// The connection sent more messages than its allowance.
    Rate,
}

/// What a connection's events are dispatched with (the parts of the core they need).
struct Dispatch<'a, H> {
    handler: &'a mut H,
    config: &'a Config,
    scratch: &'a mut Vec<u8>,
    stats: &'a Stats,
    compression: &'a mut Compression,
    http: &'a mut HashMap<usize, HttpConn>,
    /// The reactor is draining: no connection is kept for another request.
    draining: bool,
    /// A request was answered and the connection kept for the next.
    kept_alive: bool,
    now: Instant,
    token: usize,
    /// The connection speaks TLS.
    tls: bool,
    rates: Rates,
    /// The connection's write cap.
    cap: usize,
}

impl<H: Handler> Dispatch<'_, H> {
    /// Runs the state machine over `input` until it is consumed, bytes behind a request are
    /// left in `rx`, the connection goes over its write cap between two frames (the rest is
    /// parked in `rx`), or over its message rate.
    #[allow(
        clippy::too_many_arguments,
        reason = "the connection's parts, borrowed apart"
    )]
    fn drive(
        &mut self,
        ws: &mut Connection,
        app: &mut Option<H::Conn>,
        flags: &mut ConnFlags,
        allowance: &mut Allowance,
        out: &mut impl Sink,
        mut input: &mut [u8],
        rx: &mut Vec<u8>,
    ) -> Stop {
        let (stats, token) = (self.stats, self.token);
        loop {
            // Over its write cap: read no further until the queue drains. Only between two
            // frames, where `rx` is free to hold the rest as it came.
            if !input.is_empty() && out.queued() > self.cap && ws.settle(rx) {
                rx.extend_from_slice(input);
                flags.insert(ConnFlags::UNREAD);
                return Stop::End;
            }
            let mut inflate = ConnInflate {
                inflating: &mut self.compression.inflating,
                token,
                stats,
            };
            let Some(event) = ws.read_inflating(
                &mut input,
                rx,
                &mut inflate,
                self.now,
                &self.config.protocol,
                out,
            ) else {
                return Stop::End;
            };
            match event {
                Event::Request(request, body) => {
                    let http = self.http.get(&token).copied().unwrap_or_default();
                    let info = RequestInfo {
                        id: token,
                        peer: http.peer,
                        listener: usize::from(http.listener),
                        now: self.now,
                        tls: self.tls,
                    };
                    let answer = self.handler.on_request(&request, body, &info);
                    let keep = request.wants_keep_alive()
                        && !self.draining
                        && http.answered.saturating_add(1) < self.config.keep_alive_requests;
                    let negotiator = &mut self.compression.policy;
                    let answered =
                        write_answer(answer, &request, keep, negotiator, self.scratch, stats);
                    out.transmit(self.scratch, &[]);
                    let conn = match answered {
                        Answered::Upgraded(conn, deflate) => {
                            self.http.remove(&token);
                            ws.accept(self.now, rx);
                            if let Some(params) = deflate {
                                ws.set_deflate(params);
                                flags.insert(ConnFlags::DEFLATE);
                            }
                            self.stats.upgrades.fetch_add(1, Ordering::Relaxed);
                            conn
                        }
                        Answered::Streaming(conn) => {
                            self.http.remove(&token);
                            ws.stream(self.now, rx);
                            conn
                        }
                        Answered::Kept => {
                            let answered = http.answered + 1;
                            self.http.insert(token, HttpConn { answered, ..http });
                            ws.next_request(self.now, rx);
                            self.kept_alive = true;
                            if rx.is_empty() {
                                continue;
                            }
                            return Stop::Again;
                        }
                        Answered::Closed => {
                            self.http.remove(&token);
                            ws.finish();
                            return Stop::End;
                        }
                    };
                    flags.insert(ConnFlags::OPENED);
                    let app = app.insert(conn);
                    self.handler.on_open(&mut Ctx {
                        id: self.token,
                        conn: app,
                        ws,
                        out,
                        deflating: &mut self.compression.deflating,
                        stats,
                        flags,
                        low_mark: self.cap / 2,
                        now: self.now,
                    });
                    if !rx.is_empty() {
                        return Stop::Again;
                    }
                }
                Event::Message(kind, payload) => {
                    if !allowance.take_messages(&self.rates, 1) {
                        return Stop::Rate;
                    }
                    self.stats.messages_in.fetch_add(1, Ordering::Relaxed);
                    if let Some(app) = app.as_mut() {
                        let mut ctx = Ctx {
                            id: self.token,
                            conn: app,
                            ws,
                            out,
                            deflating: &mut self.compression.deflating,
                            stats,
                            flags,
                            low_mark: self.cap / 2,
                            now: self.now,
                        };
                        self.handler.on_message(&mut ctx, kind, payload);
                    }
                }
                // A ping costs a pong: counted like a message.
                Event::Ping(_) | Event::Pong(_) => {
                    if !allowance.take_messages(&self.rates, 1) {
                        return Stop::Rate;
                    }
                }
                Event::Failed(failure) => {
                    tracing::debug!(token = self.token, ?failure, "connection failed")
                }
                Event::Close(_) => {}
            }
        }
    }
}

/// What became of a connection after its answer.
enum Answered<C> {
    /// A WebSocket opened with this state and the compression agreed.
    Upgraded(C, Option<Params>),
    /// A streaming response began, with this state.
    Streaming(C),
    /// A plain answer; the connection reads the next request.
    Kept,
    /// The connection ends after the answer.
    Closed,
}

/// Writes the handler's answer to a request head into `scratch`. A plain answer keeps the
/// connection when `keep` allows it and the handler did not say `Connection: close`.
fn write_answer<C>(
    answer: Answer<'_, C>,
    request: &Request<'_>,
    keep: bool,
    negotiator: &mut Negotiator,
    scratch: &mut Vec<u8>,
    stats: &Stats,
) -> Answered<C> {
    scratch.clear();
    let mut deflate = None;
    let upgrade = match answer {
        Answer::Upgrade { conn, protocol } if request.wants_websocket() => {
            match request.upgrade() {
                Ok(accept) => {
                    deflate = negotiator.negotiate(request, stats);
                    let extensions = deflate.as_ref().map(|(_, a)| a.as_str());
                    accept.write_response(protocol, extensions, scratch);
                    Some(conn)
                }
                Err(rejection) => {
                    rejection.write_response(scratch);
                    None
                }
            }
        }
        Answer::Upgrade { .. } => {
            write_response(
                scratch,
                426,
                &[("Upgrade", "websocket")],
                "text/plain",
                b"Upgrade Required",
            );
            None
        }
        Answer::Respond(response) => {
            let is_connection = |name: &str| name.eq_ignore_ascii_case("connection");
            let close_asked = response
                .headers
                .iter()
                .any(|(n, v)| is_connection(n) && v.eq_ignore_ascii_case("close"));
            let persistence = match keep && !close_asked {
                false => Persistence::Close,
                true if request.minor_version() == 0 => Persistence::KeepAlive,
                true => Persistence::Kept,
            };
            let headers: Vec<(&str, &str)> = response
                .headers
                .iter()
                .filter(|(n, _)| !is_connection(n))
                .map(|(n, v)| (*n, v.as_str()))
                .collect();
            write_response_head(
                scratch,
                response.status,
                &headers,
                response.content_type,
                response.body.len(),
                persistence,
            );
            // A HEAD answer has the length of a GET's body but not the body, which would be
            // read as the next answer on a kept connection.
            if request.method() != "HEAD" {
                scratch.extend_from_slice(&response.body);
            }
            stats.http_requests.fetch_add(1, Ordering::Relaxed);
            return match persistence {
                Persistence::Close => Answered::Closed,
                _ => Answered::Kept,
            };
        }
        Answer::Stream { conn, response } => {
            let headers: Vec<(&str, &str)> = response
                .headers
                .iter()
                .map(|(n, v)| (*n, v.as_str()))
                .collect();
            write_stream_head(scratch, response.status, &headers, response.content_type);
            scratch.extend_from_slice(&response.body);
            stats.http_requests.fetch_add(1, Ordering::Relaxed);
            return Answered::Streaming(conn);
        }
        Answer::Reject(rejection) => {
            rejection.write_response(scratch);
            None
        }
    };
    match upgrade {
        Some(conn) => Answered::Upgraded(conn, deflate.map(|(params, _)| params)),
        None => Answered::Closed,
    }
}
