//! Protocol events to the handler: a connection's bytes go through its state machine, and each
//! event it gives is dispatched at once (a request is answered or upgraded, a message handed to
//! `on_message`).
//!
//! [`Core::on_data`] is the one entry of a connection's received bytes for both I/O models (the
//! readiness driver's shared read buffer, a completion backend's provided buffer). Transport
//! layers go there, before the protocol: the PROXY protocol header ([`super::proxy_header`])
//! is the first, and TLS goes after it: records decrypted into a plaintext buffer lent from a
//! reactor pool, then fed here.
//! Streaming responses (Server-Sent Events, NDJSON): an [`Answer::Stream`] writes its head in
//! [`write_answer`], then the state machine carries the body (`Connection::stream`), the
//! handler gets `on_open`, and the connection is a target of `Local::send_shared` like an open
//! WebSocket. HTTP keep-alive starts in [`write_answer`] too: an answer that keeps the
//! connection (a new `Answer` variant; the enum is non-exhaustive for it) leaves it reading the
//! next head where `Respond` now finishes it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use clarion_protocol::deflate::Params;
use clarion_protocol::handshake::{Request, write_response, write_stream_head};
use clarion_protocol::{CloseCode, Connection, Event, State};

use super::bookkeeping::{Core, rearm_on_state_change};
use super::conn::{Conn, ConnFlags};
use super::proxy_header::{self, Step};
use super::writer::{ConnWriter, Sink, Writing, Written};
use crate::compression::{Compression, ConnInflate, Negotiator};
use crate::limits::{Allowance, Rates};
use crate::sys::Peer;
use crate::{Answer, Config, Ctx, Handler, Limit, LimitHit, RequestInfo, Stats};

impl<S: Peer, H: Handler> Core<S, H> {
    /// Feeds bytes received on `token` to its protocol state machine and dispatches the events;
    /// what the connection's writer left to do.
    ///
    /// Limits applied on the way: the connection's byte and message allowance (over it: 1008
    /// "rate limit", at once); its write cap (over it between two frames, the rest of `input`
    /// is parked in `rx`, marked `UNREAD`, and fed when the queue drains); and the reactor's
    /// budget for what receive buffers hold (a buffer that would take it past the budget
    /// closes its connection with 1013).
    pub(super) fn on_data<W: Writing<S>>(
        &mut self,
        writing: &mut W,
        token: usize,
        input: &mut [u8],
        now: Instant,
    ) -> Written {
        self.feed(writing, token, input, true, now)
    }

    /// [`Core::on_data`] for bytes that arrived now (`arrived`: charged to the connection's
    /// byte allowance) or that were parked when they arrived (charged then).
    pub(super) fn feed<W: Writing<S>>(
        &mut self,
        writing: &mut W,
        token: usize,
        input: &mut [u8],
        arrived: bool,
        now: Instant,
    ) -> Written {
        let Core {
            handler,
            config,
            conns,
            peers,
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
        // The PROXY protocol header, before the client's bytes: what is left of them after it
        // is fed on; a header cut across reads is gathered in `rxb` and fed from there.
        let mut gathered = Vec::new();
        let mut input = input;
        if flags.contains(ConnFlags::PROXY_HEADER) {
            match proxy_header::step(config, peers, stats, token, flags, input, &mut rxb) {
                Step::Wait => {
                    // A header cut across reads (1 KiB at most) counts against the budget too.
                    let held = if rxb.is_empty() { 0 } else { rxb.capacity() };
                    *partial_bytes = *partial_bytes - held_before + held;
                    if held == 0 {
                        rx_pool.give(rxb);
                    } else {
                        *rx = Some(rxb);
                    }
                    return Written::Done;
                }
                Step::Refuse => {
                    *partial_bytes -= held_before;
                    ws.finish();
                    rx_pool.give(rxb);
                    rearm_on_state_change(&mut self.timers, conn, state_before);
                    return Written::Done;
                }
                Step::Feed { from, held: false } => input = &mut input[from..],
                Step::Feed { from, held: true } => {
                    gathered = std::mem::take(&mut *rxb);
                    input = &mut gathered[from..];
                }
            }
        }
        let mut out = writing.writer(socket, tx, tx_pool);
        let cap = limits.max_queued_bytes();
        let mut dispatch = Dispatch {
            handler,
            config,
            scratch,
            stats,
            compression,
            peers,
            now,
            token,
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
            if stop == Stop::Early {
                // Frames the client sent right behind its request head: feed them now, in order.
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
        let mut held = if rxb.is_empty() { 0 } else { rxb.capacity() };
        *partial_bytes = *partial_bytes - held_before + held;
        if held > held_before && *partial_bytes > config.max_partial_bytes_per_reactor {
            ws.abort(CloseCode::TRY_AGAIN_LATER, "server busy", &mut out);
            ws.settle(&mut rxb);
            rxb.clear();
            flags.remove(ConnFlags::UNREAD);
            *partial_bytes -= held;
            held = 0;
            hit = Some(Limit::PartialBudget);
        }
        let written = out.finish();
        if held == 0 {
            // The gathered header's buffer came from the pool: it goes back there.
            if gathered.capacity() > rxb.capacity() {
                gathered.clear();
                *rxb = gathered;
            }
            rx_pool.give(rxb);
        } else {
            *rx = Some(rxb);
        }
        if let Some(limit) = hit {
            Stats::bump(match limit {
                Limit::Rate => &stats.rate_limited,
                _ => &stats.partial_budget_closes,
            });
            let peer = match state_before {
                State::Handshaking => peers.get(&token).copied(),
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
        self.left_handshake(token);
        written
    }
}

/// Why [`Dispatch::drive`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// The input is consumed (or parked in `rx`).
    End,
    /// The request head was answered with an upgrade and frames follow it in `rx`: feed them.
    Early,
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
    peers: &'a mut HashMap<usize, SocketAddr>,
    now: Instant,
    token: usize,
    rates: Rates,
    /// The connection's write cap.
    cap: usize,
}

impl<H: Handler> Dispatch<'_, H> {
    /// Runs the state machine over `input` until it is consumed, the connection goes over its
    /// write cap between two frames (the rest is parked in `rx`), or over its message rate.
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
                    let info = RequestInfo {
                        id: token,
                        peer: self.peers.remove(&token),
                        now: self.now,
                    };
                    let answer = self.handler.on_request(&request, body, &info);
                    let negotiator = &mut self.compression.policy;
                    let answered = write_answer(answer, &request, negotiator, self.scratch, stats);
                    out.transmit(self.scratch, &[]);
                    let conn = match answered {
                        Answered::Upgraded(conn, deflate) => {
                            ws.accept(self.now, rx);
                            if let Some(params) = deflate {
                                ws.set_deflate(params);
                                flags.insert(ConnFlags::DEFLATE);
                            }
                            self.stats.upgrades.fetch_add(1, Ordering::Relaxed);
                            conn
                        }
                        Answered::Streaming(conn) => {
                            ws.stream(self.now, rx);
                            conn
                        }
                        Answered::Closed => {
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
                        return Stop::Early;
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
    /// The connection ends after the answer.
    Closed,
}

/// Writes the handler's answer to a request head into `scratch`.
fn write_answer<C>(
    answer: Answer<'_, C>,
    request: &Request<'_>,
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
            let headers: Vec<(&str, &str)> = response
                .headers
                .iter()
                .map(|(n, v)| (*n, v.as_str()))
                .collect();
            write_response(
                scratch,
                response.status,
                &headers,
                response.content_type,
                &response.body,
            );
            stats.http_requests.fetch_add(1, Ordering::Relaxed);
            None
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
