//! The client's whole protocol logic as a sans-IO state machine (`docs/clients.md`): attempts,
//! the envelope commands and their answers, subscriptions and resume, the publish queue, the
//! heartbeat watch, token refresh, backoff and when to stop. No socket, no clock, no task: the
//! driver feeds it what happened and `now`, and carries out what it asks ([`Output`]); the tests
//! drive it on virtual time.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::backoff::{self, Backoff, Rng};
use crate::event::{Event, PublishAck, PublishError, State};
use crate::options::{Auth, Options};
use crate::queue::{Publish, Queue, Ticket};
use crate::subscriptions::{Delivery, SubCell, Subscriptions};
use crate::wire::{self, Incoming};

/// Why the session wants a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// For the connection attempt under way.
    Connect,
    /// For a `refresh` on the open connection.
    Refresh,
    /// After a 4003: whether the provider now has another token.
    Recheck,
}

/// The answer to one application call.
#[derive(Debug, PartialEq)]
pub(crate) enum Reply {
    Publish(Result<PublishAck, PublishError>),
    Ping(Result<Duration, PublishError>),
    /// An unsubscribe or `close()` is done.
    Done,
}

/// What the session asks the driver to do, in order.
#[derive(Debug)]
pub(crate) enum Output {
    /// Send this text message on the open connection.
    Send(String),
    /// Give this event to the application; a delivery carries its subscription, so that one
    /// ended meanwhile by the application is not shown.
    Event(Event, Option<Arc<SubCell>>),
    /// Answer an application call.
    Reply(Ticket, Reply),
    /// Call the token provider and report with [`Session::token_ready`].
    FetchToken(Purpose),
    /// Open a connection (TCP and upgrade, with this token) and report with
    /// [`Session::opened`] or [`Session::ended`].
    Connect(Option<String>),
    /// Drop the socket or the attempt at once, without waiting for a close handshake
    /// (section 4.4); a close frame with this code may be sent on the way out.
    Abandon(u16, &'static str),
    /// `close()`: close the socket with 1000 (or drop the attempt); the session is over.
    Shutdown,
}

/// A command sent and not yet answered, by `id`.
#[derive(Debug)]
enum Pending {
    Hello,
    Subscribe {
        cell: Arc<SubCell>,
        resumed: bool,
    },
    /// The application's (with its ticket) or a gap repair's (none).
    Unsubscribe(Option<Ticket>),
    Publish(Publish),
    Refresh,
    Ping {
        ticket: Ticket,
        sent: Instant,
    },
}

/// How a connection or attempt ended, kept while the decision waits for the token provider.
#[derive(Debug)]
struct Ended {
    code: u16,
    reason: String,
    status: Option<u16>,
    /// When its socket opened (none for an attempt that never opened one).
    opened: Option<Instant>,
}

#[derive(Debug)]
enum Phase {
    /// Attempt: waiting for the token provider.
    Token {
        deadline: Instant,
    },
    /// Attempt: the driver opens the socket.
    Opening {
        deadline: Instant,
    },
    /// Attempt: the socket is open and `hello` sent; waiting for its ack.
    Hello {
        deadline: Instant,
        opened: Instant,
    },
    Connected {
        opened: Instant,
        heartbeat: Duration,
        last_heard: Instant,
    },
    /// A 4003 with a token provider: asking it for another token before deciding.
    Recheck(Ended),
    Waiting {
        until: Instant,
    },
    Closed,
}

/// The refresh schedule of the open connection (section 9).
#[derive(Debug, Default)]
struct Refresh {
    at: Option<Instant>,
    /// When the server will close with 4001.
    expires: Option<Instant>,
    in_flight: bool,
}

/// One client's state. See the module docs.
pub(crate) struct Session {
    heartbeat_secs: u64,
    backoff: Backoff,
    connect_timeout: Duration,
    publish_timeout: Duration,
    refresh_before: Duration,
    auth: AuthKind,
    phase: Phase,
    rng: Rng,
    /// `n`: consecutive failures since the last stable connection.
    failures: u32,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    subs: Subscriptions,
    queue: Queue,
    /// Publish timeouts, queued or sent.
    deadlines: BTreeSet<(Instant, Ticket)>,
    /// The token of the attempt under way or the connection open.
    token: Option<String>,
    /// A token to use on the next attempt without asking the provider (after a 4003 recheck).
    next_token: Option<String>,
    refresh: Refresh,
    /// The application is behind on events: the driver stopped reading, so silence means
    /// nothing and the heartbeat watch pauses.
    paused: bool,
    out: VecDeque<Output>,
}

/// Where tokens come from, as far as the session needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
enum AuthKind {
    None,
    Fixed(String),
    Provider,
}

impl Session {
    /// A session that starts its first attempt at once.
    pub(crate) fn new(options: &Options, now: Instant, rng: Rng) -> Session {
        let mut session = Session {
            heartbeat_secs: options.heartbeat_secs(),
            backoff: options.backoff.clone(),
            connect_timeout: options.connect_timeout,
            publish_timeout: options.publish_timeout,
            refresh_before: options.refresh_before,
            auth: match &options.auth {
                Auth::None => AuthKind::None,
                Auth::Fixed(token) => AuthKind::Fixed(token.clone()),
                Auth::Provider(_) => AuthKind::Provider,
            },
            phase: Phase::Closed,
            rng,
            failures: 0,
            next_id: 1,
            pending: HashMap::new(),
            subs: Subscriptions::default(),
            queue: Queue::new(options.max_queued, options.max_queued_bytes),
            deadlines: BTreeSet::new(),
            token: None,
            next_token: None,
            refresh: Refresh::default(),
            paused: false,
            out: VecDeque::new(),
        };
        session.begin_attempt(now);
        session
    }

    /// The next thing to do, if any.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub(crate) fn state(&self) -> State {
        match self.phase {
            Phase::Token { .. } | Phase::Opening { .. } | Phase::Hello { .. } => State::Connecting,
            Phase::Connected { .. } => State::Connected,
            Phase::Recheck(_) | Phase::Waiting { .. } => State::Disconnected,
            Phase::Closed => State::Closed,
        }
    }

    /// When [`Session::handle_timeout`] next has something to do.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Token { deadline }
            | Phase::Opening { deadline }
            | Phase::Hello { deadline, .. } => Some(deadline),
            Phase::Connected {
                heartbeat,
                last_heard,
                ..
            } if !heartbeat.is_zero() && !self.paused => Some(last_heard + 2 * heartbeat),
            Phase::Waiting { until } => Some(until),
            _ => None,
        };
        let refresh = match self.phase {
            Phase::Connected { .. } if !self.refresh.in_flight => self.refresh.at,
            _ => None,
        };
        let publish = self.deadlines.first().map(|(at, _)| *at);
        [phase, refresh, publish].into_iter().flatten().min()
    }

    /// Acts on every timer due by `now` (timers may fire late or early: this checks).
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Token { deadline }
            | Phase::Opening { deadline }
            | Phase::Hello { deadline, .. }
                if deadline <= now =>
            {
                self.out.push_back(Output::Abandon(1000, "connect timeout"));
                self.end(1006, "connect timeout", None, now);
            }
            Phase::Connected {
                heartbeat,
                last_heard,
                ..
            } if !heartbeat.is_zero() && !self.paused && last_heard + 2 * heartbeat <= now => {
                self.out
                    .push_back(Output::Abandon(4000, "heartbeat timeout"));
                self.end(4000, "heartbeat timeout", None, now);
            }
            Phase::Waiting { until } if until <= now => self.begin_attempt(now),
            _ => {}
        }
        if matches!(self.phase, Phase::Connected { .. })
            && !self.refresh.in_flight
            && self.refresh.at.is_some_and(|at| at <= now)
        {
            self.refresh.at = None;
            self.refresh.in_flight = true;
            self.out.push_back(Output::FetchToken(Purpose::Refresh));
        }
        while let Some(&(at, ticket)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            self.publish_timed_out(ticket);
        }
    }

    // --- what the driver reports ---

    /// The token provider answered (`Err`: it failed or timed out).
    pub(crate) fn token_ready(
        &mut self,
        purpose: Purpose,
        token: Result<String, String>,
        now: Instant,
    ) {
        match (purpose, &self.phase) {
            (Purpose::Connect, &Phase::Token { deadline }) => match token {
                Ok(token) => {
                    self.token = Some(token.clone());
                    self.phase = Phase::Opening { deadline };
                    self.out.push_back(Output::Connect(Some(token)));
                }
                Err(why) => {
                    self.token_provider_failed(why);
                    self.end(1006, "token provider failed", None, now);
                }
            },
            (Purpose::Refresh, Phase::Connected { .. }) if self.refresh.in_flight => match token {
                Ok(token) => self.send(|id| wire::refresh(id, &token), Pending::Refresh),
                Err(why) => {
                    self.refresh.in_flight = false;
                    self.token_provider_failed(why);
                    self.refresh_later(now);
                }
            },
            (Purpose::Recheck, Phase::Recheck(_)) => {
                let Phase::Recheck(ended) = std::mem::replace(&mut self.phase, Phase::Closed)
                else {
                    unreachable!("matched above")
                };
                let retry = match token {
                    Ok(token) if Some(&token) != self.token.as_ref() => {
                        self.next_token = Some(token);
                        true
                    }
                    Ok(_) => false,
                    // A provider that is down may recover after a refused token; after a
                    // broken policy only a new token gives a reason to come back.
                    Err(why) => {
                        self.token_provider_failed(why);
                        ended.code != 1008
                    }
                };
                self.finish(ended, retry, now);
            }
            // The attempt or connection it was for is over.
            _ => {}
        }
    }

    /// The socket is open (the server answered 101).
    pub(crate) fn opened(&mut self, now: Instant) {
        let Phase::Opening { deadline } = self.phase else {
            return;
        };
        self.phase = Phase::Hello {
            deadline,
            opened: now,
        };
        self.next_id = 1;
        let heartbeat = self.heartbeat_secs;
        self.send(|id| wire::hello(id, heartbeat), Pending::Hello);
        for topic in self.subs.topics_in_order() {
            self.send_subscribe(&topic);
        }
        while let Some(publish) = self.queue.pop() {
            self.send_publish(publish);
        }
    }

    /// A text message arrived.
    pub(crate) fn received_text(&mut self, text: &str, now: Instant) {
        self.heard(now);
        match wire::decode(text) {
            Ok(message) => self.dispatch(message, now),
            Err(why) => self.emit_error("protocol", why, None),
        }
    }

    /// A binary message arrived (the server never sends one on `/ws`).
    pub(crate) fn received_binary(&mut self, now: Instant) {
        self.heard(now);
        self.emit_error("protocol", "a binary message on /ws".to_owned(), None);
    }

    /// Anything at all arrived (a ping or pong included).
    pub(crate) fn heard(&mut self, now: Instant) {
        if let Phase::Connected { last_heard, .. } = &mut self.phase {
            *last_heard = now;
        }
    }

    /// The connection or attempt ended: the server's close (`code`, `reason`), the socket
    /// failing (1006), or a refused upgrade (1006 with the HTTP `status`).
    pub(crate) fn ended(&mut self, code: u16, reason: &str, status: Option<u16>, now: Instant) {
        if matches!(
            self.phase,
            Phase::Opening { .. } | Phase::Hello { .. } | Phase::Connected { .. }
        ) {
            self.end(code, reason, status, now);
        }
    }

    /// The application fell behind on events (`true`) or caught up.
    pub(crate) fn set_paused(&mut self, paused: bool, now: Instant) {
        self.paused = paused;
        if !paused {
            // Nothing was read meanwhile: the watch starts over.
            self.heard(now);
        }
    }

    // --- what the application asks ---

    /// A new subscription (the handle makes one per topic).
    pub(crate) fn subscribe(&mut self, cell: Arc<SubCell>) {
        let topic = cell.topic.clone();
        self.subs.add(cell);
        if self.socket_open() {
            self.send_subscribe(&topic);
        }
    }

    /// The application ended `cell`'s subscription; answered when the server acknowledges
    /// (or at once when nothing is sent).
    pub(crate) fn unsubscribe(&mut self, cell: &Arc<SubCell>, ticket: Ticket) {
        if self.subs.remove(cell) && self.socket_open() {
            let topic = &cell.topic;
            self.send(
                |id| wire::unsubscribe(id, topic),
                Pending::Unsubscribe(Some(ticket)),
            );
        } else {
            self.reply(ticket, Reply::Done);
        }
    }

    pub(crate) fn publish(&mut self, ticket: Ticket, topic: String, data: &Value, now: Instant) {
        if matches!(self.phase, Phase::Closed) {
            let error = PublishError::local("closed", "the client is closed", false);
            return self.reply(ticket, Reply::Publish(Err(error)));
        }
        let deadline = (!self.publish_timeout.is_zero()).then(|| now + self.publish_timeout);
        let publish = Publish {
            ticket,
            prefix: wire::publish_prefix(&topic, data),
            topic,
            deadline,
        };
        if self.socket_open() {
            self.send_publish(publish);
        } else {
            match self.queue.push(publish) {
                Ok(()) => {
                    if let Some(at) = deadline {
                        self.deadlines.insert((at, ticket));
                    }
                }
                Err(error) => self.reply(ticket, Reply::Publish(Err(error))),
            }
        }
    }

    pub(crate) fn ping(&mut self, ticket: Ticket, now: Instant) {
        match self.phase {
            Phase::Connected { .. } => self.send(wire::ping, Pending::Ping { ticket, sent: now }),
            Phase::Closed => {
                let error = PublishError::local("closed", "the client is closed", false);
                self.reply(ticket, Reply::Ping(Err(error)));
            }
            _ => {
                let error = PublishError::local("disconnected", "not connected", false);
                self.reply(ticket, Reply::Ping(Err(error)));
            }
        }
    }

    /// `close()`: final (section 2).
    pub(crate) fn close(&mut self, ticket: Ticket) {
        if matches!(self.phase, Phase::Closed) {
            return self.reply(ticket, Reply::Done);
        }
        let closed = |maybe_sent| PublishError::local("closed", "the client is closed", maybe_sent);
        for (_, pending) in std::mem::take(&mut self.pending) {
            match pending {
                Pending::Publish(publish) => {
                    self.reply(publish.ticket, Reply::Publish(Err(closed(true))));
                }
                Pending::Ping { ticket, .. } => self.reply(ticket, Reply::Ping(Err(closed(false)))),
                Pending::Unsubscribe(Some(ticket)) => self.reply(ticket, Reply::Done),
                _ => {}
            }
        }
        self.reject_queued(closed(false));
        self.deadlines.clear();
        self.phase = Phase::Closed;
        self.out.push_back(Output::Shutdown);
        self.emit(Event::Disconnected {
            code: 1000,
            reason: "closed by the client".to_owned(),
            will_retry: false,
            retry_in: None,
            status: None,
        });
        self.reply(ticket, Reply::Done);
    }

    // --- inside ---

    fn socket_open(&self) -> bool {
        matches!(self.phase, Phase::Hello { .. } | Phase::Connected { .. })
    }

    fn begin_attempt(&mut self, now: Instant) {
        let deadline = now + self.connect_timeout;
        if let Some(token) = self.next_token.take() {
            self.token = Some(token.clone());
            self.phase = Phase::Opening { deadline };
            self.out.push_back(Output::Connect(Some(token)));
            return;
        }
        match &self.auth {
            AuthKind::Provider => {
                self.phase = Phase::Token { deadline };
                self.out.push_back(Output::FetchToken(Purpose::Connect));
            }
            AuthKind::Fixed(token) => {
                self.token = Some(token.clone());
                self.phase = Phase::Opening { deadline };
                self.out.push_back(Output::Connect(Some(token.clone())));
            }
            AuthKind::None => {
                self.phase = Phase::Opening { deadline };
                self.out.push_back(Output::Connect(None));
            }
        }
    }

    fn send(&mut self, command: impl FnOnce(u64) -> String, pending: Pending) {
        let id = self.next_id;
        self.next_id += 1;
        self.out.push_back(Output::Send(command(id)));
        self.pending.insert(id, pending);
    }

    fn send_subscribe(&mut self, topic: &str) {
        let Some((cell, from)) = self.subs.resubscribe(topic) else {
            return;
        };
        let resumed = from.is_some();
        self.send(
            |id| wire::subscribe(id, topic, from.as_ref()),
            Pending::Subscribe { cell, resumed },
        );
    }

    fn send_publish(&mut self, publish: Publish) {
        if let Some(at) = publish.deadline {
            self.deadlines.insert((at, publish.ticket));
        }
        let prefix = publish.prefix.clone();
        self.send(|id| format!("{prefix}{id}}}"), Pending::Publish(publish));
    }

    fn dispatch(&mut self, message: Incoming, now: Instant) {
        match message {
            Incoming::Ack(Some(id), ack) => match self.pending.remove(&id) {
                Some(Pending::Hello) => self.connected(now, ack.heartbeat, ack.expires_in),
                Some(Pending::Subscribe { cell, resumed }) => {
                    let recovered = ack.recovered.unwrap_or(false);
                    let (seq, epoch) = (ack.seq.unwrap_or(0), ack.epoch.unwrap_or_default());
                    if let Some(event) = self.subs.acked(&cell, resumed, recovered, seq, epoch) {
                        self.emit(event);
                    }
                }
                Some(Pending::Unsubscribe(Some(ticket))) => self.reply(ticket, Reply::Done),
                Some(Pending::Publish(publish)) => {
                    self.forget_deadline(&publish);
                    let ack = PublishAck {
                        topic: publish.topic,
                        seq: ack.seq,
                    };
                    self.reply(publish.ticket, Reply::Publish(Ok(ack)));
                }
                Some(Pending::Refresh) => {
                    self.refresh.in_flight = false;
                    if let Some(secs) = ack.expires_in {
                        self.schedule_refresh(now, secs);
                    }
                }
                Some(Pending::Ping { ticket, sent }) => {
                    let round_trip = now.saturating_duration_since(sent);
                    self.reply(ticket, Reply::Ping(Ok(round_trip)));
                }
                Some(Pending::Unsubscribe(None)) | None => {}
            },
            Incoming::Ack(None, _) => {}
            Incoming::Error {
                id: Some(id),
                code,
                message,
            } => match self.pending.remove(&id) {
                // An older server that does not know `hello`: connected, no watch, no refresh.
                Some(Pending::Hello) => self.connected(now, None, None),
                Some(Pending::Subscribe { cell, .. }) if self.subs.failed(&cell) => {
                    let topic = cell.topic.clone();
                    self.emit_error(&code, message, Some(topic));
                }
                Some(Pending::Unsubscribe(Some(ticket))) => self.reply(ticket, Reply::Done),
                Some(Pending::Publish(publish)) => {
                    self.forget_deadline(&publish);
                    let error = PublishError {
                        code,
                        message,
                        maybe_sent: false,
                    };
                    self.reply(publish.ticket, Reply::Publish(Err(error)));
                }
                Some(Pending::Refresh) => {
                    self.refresh.in_flight = false;
                    self.emit_error(&code, message, None);
                    self.refresh_later(now);
                }
                Some(Pending::Ping { ticket, .. }) => {
                    let error = PublishError {
                        code,
                        message,
                        maybe_sent: false,
                    };
                    self.reply(ticket, Reply::Ping(Err(error)));
                }
                Some(Pending::Unsubscribe(None) | Pending::Subscribe { .. }) | None => {}
            },
            Incoming::Error {
                id: None,
                code,
                message,
            } => self.emit_error(&code, message, None),
            Incoming::Message { topic, seq, data } => match self.subs.delivered(&topic, seq) {
                Delivery::Emit(cell) => {
                    let event = crate::Event::Message { topic, seq, data };
                    self.out.push_back(Output::Event(event, Some(cell)));
                }
                Delivery::Drop => {}
                Delivery::Repair(cell, from) => {
                    // Section 7.4 rule 4: the server handles both in order, so the resume
                    // replays from the last seq emitted.
                    self.send(
                        |id| wire::unsubscribe(id, &topic),
                        Pending::Unsubscribe(None),
                    );
                    self.send(
                        |id| wire::subscribe(id, &topic, Some(&from)),
                        Pending::Subscribe {
                            cell,
                            resumed: true,
                        },
                    );
                }
            },
            Incoming::Reset { topic, epoch, seq } => {
                if let Some(event) = self.subs.reset(&topic, epoch, seq) {
                    self.emit(event);
                }
            }
            Incoming::Unsubscribed {
                topic,
                code,
                message,
            } => {
                if self.subs.fail_topic(&topic) {
                    self.emit_error(&code, message, Some(topic));
                }
            }
            Incoming::Heartbeat | Incoming::Unknown => {}
        }
    }

    /// The `hello` answer: connected.
    fn connected(&mut self, now: Instant, heartbeat: Option<u64>, expires_in: Option<u64>) {
        let Phase::Hello { opened, .. } = self.phase else {
            return;
        };
        let heartbeat = Duration::from_secs(heartbeat.unwrap_or(0));
        self.phase = Phase::Connected {
            opened,
            heartbeat,
            last_heard: now,
        };
        self.emit(Event::Connected {
            heartbeat,
            expires_in: expires_in.map(Duration::from_secs),
        });
        if let Some(secs) = expires_in {
            self.schedule_refresh(now, secs);
        }
    }

    /// After an answer with `expires_in`: refresh at `expires − min(refresh_before, left / 2)`.
    fn schedule_refresh(&mut self, now: Instant, expires_in_secs: u64) {
        if self.auth != AuthKind::Provider {
            return;
        }
        let left = Duration::from_secs(expires_in_secs);
        self.refresh.expires = Some(now + left);
        self.refresh.at = Some(now + left - self.refresh_before.min(left / 2));
    }

    /// A refresh failed: once more at half the time left, if that is more than 2 s; otherwise
    /// the connection ends with 4001 and the next attempt fetches a token.
    fn refresh_later(&mut self, now: Instant) {
        let half = self
            .refresh
            .expires
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now) / 2);
        self.refresh.at = (half > Duration::from_secs(2)).then(|| now + half);
    }

    /// The end of a connection or attempt (section 4.3).
    fn end(&mut self, code: u16, reason: &str, status: Option<u16>, now: Instant) {
        let opened = match self.phase {
            Phase::Hello { opened, .. } | Phase::Connected { opened, .. } => Some(opened),
            Phase::Token { .. } | Phase::Opening { .. } => None,
            Phase::Recheck(_) | Phase::Waiting { .. } | Phase::Closed => return,
        };
        for (_, pending) in std::mem::take(&mut self.pending) {
            match pending {
                Pending::Publish(publish) => {
                    self.forget_deadline(&publish);
                    let error = PublishError::local(
                        "disconnected",
                        "the connection ended before the answer",
                        true,
                    );
                    self.reply(publish.ticket, Reply::Publish(Err(error)));
                }
                Pending::Ping { ticket, .. } => {
                    let error = PublishError::local("disconnected", "the connection ended", false);
                    self.reply(ticket, Reply::Ping(Err(error)));
                }
                Pending::Unsubscribe(Some(ticket)) => self.reply(ticket, Reply::Done),
                _ => {}
            }
        }
        self.refresh = Refresh::default();
        self.subs.all_subscribing();
        let ended = Ended {
            code,
            reason: reason.to_owned(),
            status,
            opened,
        };
        // Section 6: a refused token (4003, or 401 from an older server) and a broken policy
        // (1008) are retried only with another token from the provider. A TLS handshake that
        // will fail again (1015: the server's certificate refused) stops the client, as a 403
        // does: retrying could only hide the misconfiguration.
        let refused = code == 4003 || status == Some(401);
        let retry = match self.auth {
            _ if status == Some(403) || code == 1015 => false,
            AuthKind::Provider if refused || code == 1008 => {
                self.phase = Phase::Recheck(ended);
                self.out.push_back(Output::FetchToken(Purpose::Recheck));
                return;
            }
            AuthKind::Provider => true,
            AuthKind::Fixed(_) | AuthKind::None => !refused && code != 1008 && code != 4001,
        };
        self.finish(ended, retry, now);
    }

    /// Section 4.3 steps 3 to 5, once `retry` is decided.
    fn finish(&mut self, ended: Ended, retry: bool, now: Instant) {
        let Ended {
            code,
            reason,
            status,
            opened,
        } = ended;
        let retry_in = if retry {
            let stable = opened
                .is_some_and(|at| now.saturating_duration_since(at) >= self.backoff.reset_after);
            self.failures = if stable && !backoff::client_caused(code) {
                1
            } else {
                self.failures.saturating_add(1)
            };
            let delay = self.backoff.delay(self.failures, &mut self.rng);
            self.phase = Phase::Waiting { until: now + delay };
            Some(delay)
        } else {
            self.phase = Phase::Closed;
            None
        };
        self.emit(Event::Disconnected {
            code,
            reason,
            will_retry: retry,
            retry_in,
            status,
        });
        if !retry {
            self.reject_queued(PublishError::local("closed", "the client stopped", false));
            self.deadlines.clear();
        }
    }

    fn reject_queued(&mut self, error: PublishError) {
        while let Some(publish) = self.queue.pop() {
            self.reply(publish.ticket, Reply::Publish(Err(error.clone())));
        }
    }

    fn publish_timed_out(&mut self, ticket: Ticket) {
        let timeout = |maybe_sent| {
            PublishError::local("timeout", "no answer within publish_timeout", maybe_sent)
        };
        if self.queue.remove(ticket).is_some() {
            return self.reply(ticket, Reply::Publish(Err(timeout(false))));
        }
        let sent = self
            .pending
            .iter()
            .find(|(_, p)| matches!(p, Pending::Publish(publish) if publish.ticket == ticket))
            .map(|(id, _)| *id);
        if let Some(id) = sent {
            self.pending.remove(&id);
            self.reply(ticket, Reply::Publish(Err(timeout(true))));
        }
    }

    fn forget_deadline(&mut self, publish: &Publish) {
        if let Some(at) = publish.deadline {
            self.deadlines.remove(&(at, publish.ticket));
        }
    }

    fn token_provider_failed(&mut self, why: String) {
        self.emit_error("token_provider", why, None);
    }

    fn emit(&mut self, event: Event) {
        self.out.push_back(Output::Event(event, None));
    }

    fn emit_error(&mut self, code: &str, message: String, topic: Option<String>) {
        self.emit(Event::Error {
            code: code.to_owned(),
            message,
            topic,
        });
    }

    fn reply(&mut self, ticket: Ticket, reply: Reply) {
        self.out.push_back(Output::Reply(ticket, reply));
    }
}

#[cfg(test)]
mod tests;
