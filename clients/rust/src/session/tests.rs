//! The session on virtual time: every rule of `docs/clients.md` it owns, without a socket.

use serde_json::{Value, json};

use super::*;
use crate::event::{Data, Position, SubscriptionState};

const SEC: Duration = Duration::from_secs(1);

/// What one step produced, sorted by kind.
#[derive(Debug, Default)]
struct Drained {
    sent: Vec<Value>,
    events: Vec<Event>,
    replies: Vec<(Ticket, Reply)>,
    /// Everything else, in order.
    actions: Vec<Output>,
}

struct Harness {
    session: Session,
    now: Instant,
    next_ticket: u64,
}

impl Harness {
    fn new(options: Options) -> Harness {
        let now = Instant::now();
        Harness {
            session: Session::new(&options, now, Rng::new(42)),
            now,
            next_ticket: 0,
        }
    }

    fn drain(&mut self) -> Drained {
        let mut drained = Drained::default();
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::Send(text) => drained.sent.push(serde_json::from_str(&text).unwrap()),
                Output::Event(event, _) => drained.events.push(event),
                Output::Reply(ticket, reply) => drained.replies.push((ticket, reply)),
                other => drained.actions.push(other),
            }
        }
        drained
    }

    fn advance(&mut self, by: Duration) -> Drained {
        self.now += by;
        self.session.handle_timeout(self.now);
        self.drain()
    }

    /// Runs timers up to the next one that is due.
    fn run_to_next_timer(&mut self) -> Drained {
        let at = self.session.poll_timeout().expect("a timer");
        let by = at.saturating_duration_since(self.now);
        self.advance(by)
    }

    fn text(&mut self, message: Value) -> Drained {
        self.session.received_text(&message.to_string(), self.now);
        self.drain()
    }

    fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        Ticket(self.next_ticket)
    }

    /// Opens the socket and answers `hello` (heartbeat `h`, expiry `expires_in`).
    fn connect(&mut self, h: u64, expires_in: Option<u64>) -> Drained {
        self.session.opened(self.now);
        let opened = self.drain();
        assert_eq!(opened.sent[0]["type"], "hello");
        let mut ack = json!({"type":"ack","id":1,"heartbeat":h});
        if let Some(secs) = expires_in {
            ack["expires_in"] = json!(secs);
        }
        let mut after = self.text(ack);
        after.sent.splice(0..0, opened.sent);
        after
    }

    fn subscribe(&mut self, topic: &str, from: Option<Position>) -> Arc<SubCell> {
        let cell = SubCell::new(topic.into(), from);
        self.session.subscribe(cell.clone());
        cell
    }

    fn publish(&mut self, topic: &str, data: Value) -> Ticket {
        let ticket = self.ticket();
        self.session.publish(ticket, topic.into(), &data, self.now);
        ticket
    }
}

fn message(topic: &str, seq: u64) -> Value {
    json!({"type":"message","topic":topic,"seq":seq,"data":seq})
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

fn disconnected(events: &[Event]) -> (u16, bool, Option<Duration>) {
    events
        .iter()
        .find_map(|e| match e {
            Event::Disconnected {
                code,
                will_retry,
                retry_in,
                ..
            } => Some((*code, *will_retry, *retry_in)),
            _ => None,
        })
        .expect("a disconnected event")
}

fn publish_error(replies: &[(Ticket, Reply)], ticket: Ticket) -> PublishError {
    replies
        .iter()
        .find_map(|(t, r)| match r {
            Reply::Publish(Err(e)) if *t == ticket => Some(e.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no rejection of {ticket:?} in {replies:?}"))
}

#[test]
fn first_attempt_at_once_then_hello_subscribes_and_queued_publishes_in_order() {
    let mut h = Harness::new(Options::default());
    let start = h.drain();
    assert!(matches!(start.actions[..], [Output::Connect(None)]));
    assert_eq!(h.session.state(), State::Connecting);
    h.subscribe("b", None);
    h.subscribe(
        "a",
        Some(Position {
            seq: 7,
            epoch: "e".into(),
        }),
    );
    h.publish("a", json!({"x":1}));
    assert!(
        h.drain().sent.is_empty(),
        "nothing is sent before the socket opens"
    );
    let d = h.connect(20, None);
    assert_eq!(
        d.sent,
        [
            json!({"type":"hello","heartbeat":20,"id":1}),
            json!({"type":"subscribe","topic":"b","id":2}),
            json!({"type":"subscribe","topic":"a","since":7,"epoch":"e","id":3}),
            json!({"type":"publish","topic":"a","data":{"x":1},"id":4}),
        ]
    );
    assert_eq!(
        d.events,
        [Event::Connected {
            heartbeat: 20 * SEC,
            expires_in: None
        }]
    );
    assert_eq!(h.session.state(), State::Connected);
}

#[test]
fn messages_once_in_order_and_a_gap_is_repaired() {
    let mut h = Harness::new(Options::default());
    h.drain();
    let cell = h.subscribe("t", None);
    h.connect(20, None);
    let d = h.text(json!({"type":"ack","id":2,"topic":"t","recovered":false,"epoch":"e","seq":41}));
    assert_eq!(
        d.events,
        [Event::Subscribed {
            topic: "t".into(),
            resumed: false,
            recovered: false,
            seq: 41,
            epoch: "e".into()
        }]
    );
    assert_eq!(cell.state(), SubscriptionState::Subscribed);
    let mut events = Vec::new();
    for seq in [42, 43, 43, 41] {
        events.extend(h.text(message("t", seq)).events);
    }
    assert_eq!(seqs(&events), [42, 43]);
    // 46 skips 44 and 45: dropped, and the subscription resumes from 43.
    let d = h.text(message("t", 46));
    assert!(d.events.is_empty());
    assert_eq!(
        d.sent,
        [
            json!({"type":"unsubscribe","topic":"t","id":3}),
            json!({"type":"subscribe","topic":"t","since":43,"epoch":"e","id":4}),
        ]
    );
    assert!(h.text(message("t", 47)).events.is_empty(), "repairing");
    h.text(json!({"type":"ack","id":3}));
    let d = h.text(json!({"type":"ack","id":4,"topic":"t","recovered":true,"epoch":"e","seq":47}));
    assert!(matches!(
        d.events[..],
        [Event::Subscribed {
            resumed: true,
            recovered: true,
            ..
        }]
    ));
    let mut events = Vec::new();
    for seq in 44..=48 {
        events.extend(h.text(message("t", seq)).events);
    }
    assert_eq!(seqs(&events), [44, 45, 46, 47, 48]);
    assert_eq!(cell.position().unwrap().seq, 48);
}

#[test]
fn reconnect_resumes_from_the_position_and_reports_recovered_false() {
    let mut h = Harness::new(Options::default());
    h.drain();
    h.subscribe("t", None);
    h.connect(20, None);
    h.text(json!({"type":"ack","id":2,"topic":"t","recovered":false,"epoch":"e1","seq":5}));
    h.text(message("t", 6));
    h.session.ended(1001, "shutdown", None, h.now);
    let d = h.drain();
    let (code, will_retry, retry_in) = disconnected(&d.events);
    assert_eq!((code, will_retry), (1001, true));
    assert!(retry_in.unwrap() <= SEC, "n = 1 after a first failure");
    assert_eq!(h.session.state(), State::Disconnected);
    let d = h.run_to_next_timer();
    assert!(matches!(d.actions[..], [Output::Connect(None)]));
    let d = h.connect(20, None);
    assert_eq!(
        d.sent[1],
        json!({"type":"subscribe","topic":"t","since":6,"epoch":"e1","id":2})
    );
    // The server restarted: a new epoch, nothing recovered.
    let d = h.text(json!({"type":"ack","id":2,"topic":"t","recovered":false,"epoch":"e2","seq":0}));
    assert!(matches!(
        d.events[..],
        [Event::Subscribed {
            resumed: true,
            recovered: false,
            seq: 0,
            ..
        }]
    ));
    assert_eq!(seqs(&h.text(message("t", 1)).events), [1]);
}

#[test]
fn heartbeat_silence_abandons_the_socket_and_anything_heard_counts() {
    let mut h = Harness::new(Options::default());
    h.drain();
    h.connect(5, None);
    assert!(h.advance(9 * SEC).actions.is_empty());
    h.session.heard(h.now); // a WebSocket ping, say
    assert!(h.advance(9 * SEC).actions.is_empty());
    h.text(json!({"type":"heartbeat"}));
    // While the application is behind on events the watch pauses.
    h.session.set_paused(true, h.now);
    assert!(h.advance(60 * SEC).actions.is_empty());
    h.session.set_paused(false, h.now);
    let d = h.advance(10 * SEC);
    assert!(matches!(
        d.actions[..],
        [Output::Abandon(4000, "heartbeat timeout")]
    ));
    assert_eq!(disconnected(&d.events).0, 4000);
    assert!(disconnected(&d.events).1);
}

#[test]
fn an_old_server_without_hello_means_no_watch() {
    let mut h = Harness::new(Options::default());
    h.drain();
    h.session.opened(h.now);
    h.drain();
    let d = h.text(json!({"type":"error","id":1,"code":"unknown_type","message":"?"}));
    assert_eq!(
        d.events,
        [Event::Connected {
            heartbeat: Duration::ZERO,
            expires_in: None
        }]
    );
    assert_eq!(h.session.poll_timeout(), None);
}

#[test]
fn connect_timeout_covers_the_upgrade_and_the_hello_ack() {
    let mut h = Harness::new(Options::default());
    h.drain();
    h.session.opened(h.now);
    h.drain();
    let d = h.advance(10 * SEC);
    assert!(matches!(
        d.actions[..],
        [Output::Abandon(1000, "connect timeout")]
    ));
    let (code, will_retry, _) = disconnected(&d.events);
    assert_eq!((code, will_retry), (1006, true));
}

#[test]
fn backoff_grows_with_failures_and_resets_after_a_stable_connection() {
    let mut h = Harness::new(Options::default());
    h.drain();
    let backoff = Backoff::default();
    for n in 1..=8 {
        h.session.ended(1006, "refused", None, h.now);
        let (_, will_retry, retry_in) = disconnected(&h.drain().events);
        assert!(will_retry);
        assert!(retry_in.unwrap() <= backoff.cap(n), "n = {n}");
        assert!(matches!(
            h.run_to_next_timer().actions[..],
            [Output::Connect(None)]
        ));
    }
    assert_eq!(h.session.failures, 8);
    // A connection that stayed up 10 s: the next failure is the first again.
    h.connect(0, None);
    h.advance(10 * SEC);
    h.session.ended(1001, "restart", None, h.now);
    h.drain();
    assert_eq!(h.session.failures, 1);
    // A stable connection closed for the client's own traffic (1013) still grows it.
    h.run_to_next_timer();
    h.connect(0, None);
    h.advance(10 * SEC);
    h.session.ended(1013, "slow consumer", None, h.now);
    let (_, will_retry, _) = disconnected(&h.drain().events);
    assert!(will_retry);
    assert_eq!(h.session.failures, 2);
}

#[test]
fn stop_codes() {
    // 1008: policy, stop.
    let mut h = Harness::new(Options::default());
    h.drain();
    h.connect(0, None);
    let queued_later = {
        h.session.ended(1008, "policy", None, h.now);
        h.publish("t", json!(1))
    };
    let d = h.drain();
    assert_eq!(disconnected(&d.events), (1008, false, None));
    assert_eq!(h.session.state(), State::Closed);
    assert_eq!(publish_error(&d.replies, queued_later).code, "closed");

    // A fixed token: 4001 and 4003 stop; an HTTP 403 stops whatever the token.
    for (code, status) in [
        (4001, None),
        (4003, None),
        (1006, Some(401)),
        (1006, Some(403)),
    ] {
        let mut h = Harness::new(Options::default().token("t"));
        assert!(matches!(
            &h.drain().actions[..],
            [Output::Connect(Some(t))] if t == "t"
        ));
        let queued = h.publish("t", json!(1));
        h.session.ended(code, "refused", status, h.now);
        let d = h.drain();
        assert!(!disconnected(&d.events).1, "{code} {status:?}");
        assert_eq!(publish_error(&d.replies, queued).code, "closed");
    }
}

#[test]
fn a_tls_handshake_that_will_fail_again_stops_whatever_the_token() {
    // 1015 (the server's certificate refused) on the attempt: no retry, no provider recheck.
    let harnesses = [
        Harness::new(Options::default()),
        Harness::new(Options::default().token("t")),
        provider_harness(),
    ];
    for mut h in harnesses {
        h.drain();
        let queued = h.publish("t", json!(1));
        h.session.ended(
            1015,
            "TLS: invalid peer certificate: UnknownIssuer",
            None,
            h.now,
        );
        let d = h.drain();
        assert_eq!(disconnected(&d.events), (1015, false, None));
        assert!(d.actions.is_empty(), "{:?}", d.actions);
        assert_eq!(h.session.state(), State::Closed);
        assert_eq!(publish_error(&d.replies, queued).code, "closed");
    }
}

fn provider_harness() -> Harness {
    let options = Options::default().token_provider(|| Box::pin(async { Ok("unused".into()) }));
    let mut h = Harness::new(options);
    assert!(matches!(
        h.drain().actions[..],
        [Output::FetchToken(Purpose::Connect)]
    ));
    h.session
        .token_ready(Purpose::Connect, Ok("tok1".into()), h.now);
    assert!(matches!(
        &h.drain().actions[..],
        [Output::Connect(Some(t))] if t == "tok1"
    ));
    h
}

#[test]
fn with_a_provider_4001_retries_and_4003_asks_it_again() {
    let mut h = provider_harness();
    h.connect(0, None);
    h.session.ended(4001, "token expired", None, h.now);
    assert!(disconnected(&h.drain().events).1);
    assert!(matches!(
        h.run_to_next_timer().actions[..],
        [Output::FetchToken(Purpose::Connect)]
    ));

    // 4003 and the same token again: stop.
    h.session
        .token_ready(Purpose::Connect, Ok("tok1".into()), h.now);
    h.drain();
    h.session.ended(4003, "invalid token", None, h.now);
    let d = h.drain();
    assert!(d.events.is_empty(), "the decision waits for the provider");
    assert!(matches!(
        d.actions[..],
        [Output::FetchToken(Purpose::Recheck)]
    ));
    assert_eq!(h.session.state(), State::Disconnected);
    h.session
        .token_ready(Purpose::Recheck, Ok("tok1".into()), h.now);
    assert_eq!(disconnected(&h.drain().events), (4003, false, None));

    // 4003 and a new token: retry with it, without asking again.
    let mut h = provider_harness();
    h.session.opened(h.now);
    h.session.ended(4003, "invalid token", None, h.now);
    h.drain();
    h.session
        .token_ready(Purpose::Recheck, Ok("tok2".into()), h.now);
    assert!(disconnected(&h.drain().events).1);
    assert!(matches!(
        &h.run_to_next_timer().actions[..],
        [Output::Connect(Some(t))] if t == "tok2"
    ));

    // 4003 and a failing provider: the provider is down, not the token wrong: retry.
    let mut h = provider_harness();
    h.session.opened(h.now);
    h.session.ended(4003, "invalid token", None, h.now);
    h.drain();
    h.session
        .token_ready(Purpose::Recheck, Err("down".into()), h.now);
    let d = h.drain();
    assert!(matches!(&d.events[0], Event::Error { code, .. } if code == "token_provider"));
    assert!(disconnected(&d.events).1);
}

#[test]
fn with_a_provider_1008_retries_only_with_another_token() {
    for (answer, retry) in [
        (Ok("tok1".to_owned()), false),
        (Err("down".to_owned()), false),
        (Ok("tok2".to_owned()), true),
    ] {
        let mut h = provider_harness();
        h.connect(0, None);
        h.session.ended(1008, "policy", None, h.now);
        assert!(matches!(
            h.drain().actions[..],
            [Output::FetchToken(Purpose::Recheck)]
        ));
        h.session.token_ready(Purpose::Recheck, answer, h.now);
        assert_eq!(disconnected(&h.drain().events).1, retry);
    }
}

#[test]
fn a_failing_provider_fails_the_attempt() {
    let options = Options::default().token_provider(|| Box::pin(async { Ok("x".into()) }));
    let mut h = Harness::new(options);
    h.drain();
    h.session
        .token_ready(Purpose::Connect, Err("boom".into()), h.now);
    let d = h.drain();
    assert!(matches!(&d.events[0], Event::Error { code, .. } if code == "token_provider"));
    let (code, will_retry, _) = disconnected(&d.events);
    assert_eq!((code, will_retry), (1006, true));
}

#[test]
fn refresh_before_expiry_and_once_more_after_a_refusal() {
    let mut h = provider_harness();
    h.connect(0, Some(300));
    // 300 − min(30, 150) = 270 s.
    assert!(h.advance(269 * SEC).actions.is_empty());
    let d = h.advance(SEC);
    assert!(matches!(
        d.actions[..],
        [Output::FetchToken(Purpose::Refresh)]
    ));
    h.session
        .token_ready(Purpose::Refresh, Ok("tok2".into()), h.now);
    let d = h.drain();
    assert_eq!(d.sent, [json!({"type":"refresh","token":"tok2","id":2})]);
    h.text(json!({"type":"ack","id":2,"expires_in":60}));
    // 60 − min(30, 30) = 30 s; refused this time: tried again at half of the 30 s left.
    let d = h.advance(30 * SEC);
    assert!(matches!(
        d.actions[..],
        [Output::FetchToken(Purpose::Refresh)]
    ));
    h.session
        .token_ready(Purpose::Refresh, Ok("bad".into()), h.now);
    h.drain();
    let d = h.text(json!({"type":"error","id":3,"code":"unauthorized","message":"invalid token"}));
    assert!(matches!(&d.events[..], [Event::Error { code, .. }] if code == "unauthorized"));
    assert!(h.advance(14 * SEC).actions.is_empty());
    let d = h.advance(SEC);
    assert!(matches!(
        d.actions[..],
        [Output::FetchToken(Purpose::Refresh)]
    ));
    // A fixed token is never refreshed.
    let mut h = Harness::new(Options::default().token("t"));
    h.drain();
    h.connect(0, Some(300));
    assert_eq!(h.session.poll_timeout(), None);
}

#[test]
fn publishes_resolve_reject_queue_and_time_out() {
    let options = Options {
        max_queued: 2,
        ..Options::default()
    };
    let mut h = Harness::new(options);
    h.drain();
    // Disconnected: queued up to the bound.
    let queued = [h.publish("t", json!(1)), h.publish("t", json!(2))];
    let over = h.publish("t", json!(3));
    assert_eq!(publish_error(&h.drain().replies, over).code, "queue_full");
    let d = h.connect(0, None);
    assert_eq!(d.sent.len(), 3, "hello and the two queued");
    h.text(json!({"type":"ack","id":2,"topic":"t","seq":8}));
    let d = h.text(json!({"type":"error","id":3,"code":"forbidden","message":"no"}));
    assert_eq!(
        publish_error(&d.replies, queued[1]),
        PublishError {
            code: "forbidden".into(),
            message: "no".into(),
            maybe_sent: false
        }
    );
    assert_eq!(h.session.deadlines.len(), 0);
    // In flight at a cut: maybe sent.
    let in_flight = h.publish("t", json!(4));
    h.session.ended(1006, "cut", None, h.now);
    let error = publish_error(&h.drain().replies, in_flight);
    assert_eq!(
        (error.code.as_str(), error.maybe_sent),
        ("disconnected", true)
    );
    // Queued too long: timed out and removed.
    let late = h.publish("t", json!(5));
    let d = h.advance(30 * SEC);
    let error = publish_error(&d.replies, late);
    assert_eq!((error.code.as_str(), error.maybe_sent), ("timeout", false));
    assert_eq!(h.session.queue.len(), 0);
}

#[test]
fn the_first_publish_ack_carries_the_seq() {
    let mut h = Harness::new(Options::default());
    h.drain();
    h.connect(0, None);
    let ticket = h.publish("t", json!("hi"));
    let d = h.text(json!({"type":"ack","id":2,"topic":"t","seq":8}));
    assert_eq!(
        d.replies,
        [(
            ticket,
            Reply::Publish(Ok(PublishAck {
                topic: "t".into(),
                seq: Some(8)
            }))
        )]
    );
}

#[test]
fn unsubscribe_ping_and_close() {
    let mut h = Harness::new(Options::default());
    h.drain();
    // Not connected: answered at once, and ping is refused.
    let cell = h.subscribe("t", None);
    let ticket = h.ticket();
    h.session.unsubscribe(&cell, ticket);
    assert_eq!(h.drain().replies, [(ticket, Reply::Done)]);
    let ticket = h.ticket();
    h.session.ping(ticket, h.now);
    assert!(
        matches!(&h.drain().replies[..], [(_, Reply::Ping(Err(e)))] if e.code == "disconnected")
    );

    h.connect(0, None);
    let cell = h.subscribe("u", None);
    h.drain();
    let ticket = h.ticket();
    h.session.unsubscribe(&cell, ticket);
    let d = h.drain();
    assert_eq!(d.sent, [json!({"type":"unsubscribe","topic":"u","id":3})]);
    assert!(d.replies.is_empty());
    // The subscribe's late ack is ignored; the unsubscribe's resolves it.
    let d = h.text(json!({"type":"ack","id":2,"topic":"u","recovered":false,"epoch":"e","seq":0}));
    assert!(d.events.is_empty());
    assert_eq!(
        h.text(json!({"type":"ack","id":3})).replies,
        [(ticket, Reply::Done)]
    );

    let ping = h.ticket();
    h.session.ping(ping, h.now);
    h.drain();
    h.now += Duration::from_millis(5);
    let d = h.text(json!({"type":"ack","id":4}));
    assert_eq!(
        d.replies,
        [(ping, Reply::Ping(Ok(Duration::from_millis(5))))]
    );

    let in_flight = h.publish("t", json!(1));
    let close = h.ticket();
    h.session.close(close);
    let d = h.drain();
    assert!(matches!(d.actions[..], [Output::Shutdown]));
    assert_eq!(disconnected(&d.events), (1000, false, None));
    assert_eq!(publish_error(&d.replies, in_flight).code, "closed");
    assert_eq!(d.replies.last(), Some(&(close, Reply::Done)));
    assert_eq!(h.session.state(), State::Closed);
    let after = h.publish("t", json!(2));
    assert_eq!(publish_error(&h.drain().replies, after).code, "closed");
}

#[test]
fn server_errors_end_subscriptions_and_surface() {
    let mut h = Harness::new(Options::default());
    h.drain();
    let refused = h.subscribe("vip", None);
    let kept = h.subscribe("t", None);
    h.connect(0, None);
    let d = h.text(json!({"type":"error","id":2,"code":"forbidden","message":"no"}));
    assert_eq!(
        d.events,
        [Event::Error {
            code: "forbidden".into(),
            message: "no".into(),
            topic: Some("vip".into())
        }]
    );
    assert_eq!(refused.state(), SubscriptionState::Failed);
    h.text(json!({"type":"ack","id":3,"topic":"t","recovered":false,"epoch":"e","seq":0}));
    let d = h.text(json!({"type":"unsubscribed","topic":"t","code":"forbidden","message":"gone"}));
    assert!(matches!(&d.events[..], [Event::Error { topic: Some(t), .. }] if t == "t"));
    assert_eq!(kept.state(), SubscriptionState::Failed);
    let d = h.text(json!({"type":"error","code":"bad_request","message":"?"}));
    assert!(matches!(&d.events[..], [Event::Error { topic: None, .. }]));
    let d = h.text(json!([1]));
    assert!(matches!(&d.events[..], [Event::Error { code, .. }] if code == "protocol"));
    h.session.received_binary(h.now);
    assert!(matches!(&h.drain().events[..], [Event::Error { code, .. }] if code == "protocol"));
}

#[test]
fn a_reset_renumbers_and_the_sequence_continues() {
    let mut h = Harness::new(Options::default());
    h.drain();
    h.subscribe("t", None);
    h.connect(0, None);
    h.text(json!({"type":"ack","id":2,"topic":"t","recovered":false,"epoch":"e","seq":4}));
    h.text(message("t", 5));
    h.text(message("t", 6));
    let d = h.text(json!({"type":"reset","topic":"t","epoch":"e","seq":4}));
    assert_eq!(
        d.events,
        [Event::Reset {
            topic: "t".into(),
            seq: 4,
            epoch: "e".into(),
            epoch_changed: false
        }]
    );
    let mut events = Vec::new();
    for seq in 5..=7 {
        events.extend(h.text(message("t", seq)).events);
    }
    assert_eq!(seqs(&events), [5, 6, 7]);
    let data =
        h.text(json!({"type":"message","topic":"t","seq":8,"data":"aGk=","encoding":"base64"}));
    assert!(
        matches!(&data.events[..], [Event::Message { data: Data::Binary(b), .. }] if b == b"hi")
    );
}
