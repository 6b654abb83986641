//! The push server end to end over real sockets: fanout to thousands of raw subscribers, the
//! envelope protocol, the HTTP publish API, resume, slow consumers, auth and limits.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use clarion::server::AppConfig;
use clarion::server::auth::AuthMode;
use clarion::server::state::SlowConsumer;
use clarion_engine::Runtime;
use clarion_pubsub::HubConfig;
use common::*;
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

fn server(app: AppConfig) -> (Runtime, SocketAddr) {
    let runtime = start_app(|_| {}, app);
    let addr = runtime.local_addr();
    (runtime, addr)
}

fn text_of(message: Message) -> Option<String> {
    match message {
        Message::Text(text) => Some(text.to_string()),
        _ => None,
    }
}

#[test]
fn five_thousand_raw_subscribers_get_every_message_once_in_order() {
    const SUBSCRIBERS: usize = 5_000;
    const MESSAGES: usize = 20;
    let (_runtime, addr) = server(app());
    let mut subscribers: Vec<Ws> = (0..SUBSCRIBERS)
        .map(|_| connect(addr, "/t/fan.out"))
        .collect();
    assert!(eventually(
        || total_stat(addr, "subscriptions") == SUBSCRIBERS as u64
    ));
    for i in 0..MESSAGES {
        let (status, body) = post(addr, "/publish/fan.out", "", format!("m{i}").as_bytes());
        assert_eq!(status, 202, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["seq"], i + 1);
    }
    for ws in &mut subscribers {
        for i in 0..MESSAGES {
            let text = text_of(ws.read().unwrap()).expect("a text message");
            assert_eq!(text, format!("m{i}"));
        }
    }
    // Nothing more: a duplicate would be the next message.
    let ws = &mut subscribers[SUBSCRIBERS / 2];
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(ws.read().is_err(), "no duplicate");
    let totals = &stats(addr)["totals"];
    assert_eq!(totals["deliveries"], (SUBSCRIBERS * MESSAGES) as u64);
    assert_eq!(totals["drops"], 0);
}

#[test]
fn envelope_protocol_subscribe_publish_unsubscribe_and_errors() {
    let (_runtime, addr) = server(app());
    let mut sub = connect(addr, "/ws");
    let mut publisher = connect(addr, "/ws");
    let ack = call(
        &mut sub,
        json!({"type": "subscribe", "topic": "chat", "id": 1}),
    );
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["id"], 1);
    assert_eq!(ack["topic"], "chat");
    assert_eq!(ack["seq"], 0);
    assert!(ack["epoch"].is_string());

    let ack = call(
        &mut publisher,
        json!({"type": "publish", "topic": "chat", "data": {"hi": [1, 2]}, "id": "p"}),
    );
    assert_eq!(
        ack,
        json!({"type": "ack", "id": "p", "topic": "chat", "seq": 1})
    );
    let delivery = next(&mut sub);
    assert_eq!(
        delivery,
        json!({"type": "message", "topic": "chat", "seq": 1, "data": {"hi": [1, 2]}})
    );
    call(
        &mut publisher,
        json!({"type": "publish", "topic": "chat", "data": "plain"}),
    );
    assert_eq!(next(&mut sub)["data"], "plain");

    // A raw subscriber of the same topic gets payloads as they are.
    let mut raw = connect(addr, "/t/chat");
    call(
        &mut publisher,
        json!({"type": "publish", "topic": "chat", "data": "third"}),
    );
    assert_eq!(text_of(raw.read().unwrap()).unwrap(), "third");
    assert_eq!(next(&mut sub)["seq"], 3);
    raw.send(Message::binary(vec![0u8, 1, 2])).unwrap();
    let binary = next(&mut sub);
    assert_eq!(
        (binary["data"].as_str(), binary["encoding"].as_str()),
        (Some("AAEC"), Some("base64"))
    );

    let ack = call(
        &mut sub,
        json!({"type": "unsubscribe", "topic": "chat", "id": 2}),
    );
    assert_eq!(ack, json!({"type": "ack", "id": 2}));
    call(
        &mut publisher,
        json!({"type": "publish", "topic": "chat", "data": 5}),
    );

    let errors = [
        (Message::text("not json"), "bad_request"),
        (
            Message::text(r#"{"type":"dance","topic":"chat","id":9}"#),
            "unknown_type",
        ),
        (
            Message::text(r#"{"type":"subscribe","id":9}"#),
            "bad_request",
        ),
        (
            Message::text(r#"{"type":"subscribe","topic":"a b","id":9}"#),
            "invalid_topic",
        ),
        (Message::text(r#"[1,2,3]"#), "bad_request"),
        (Message::binary(b"{}".to_vec()), "bad_request"),
    ];
    for (command, code) in errors {
        sub.send(command).unwrap();
        let reply = next(&mut sub);
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], code, "{reply}");
        assert!(reply["message"].is_string());
    }
    // Unsubscribed: the publish of `5` never arrived; the connection still works.
    let ack = call(
        &mut sub,
        json!({"type": "subscribe", "topic": "other", "id": 3}),
    );
    assert_eq!(ack["id"], 3);
}

#[test]
fn http_publish_needs_the_api_key_and_reaches_subscribers() {
    let (_runtime, addr) = server(AppConfig {
        api_key: Some("sekret".into()),
        ..app()
    });
    let mut a = connect(addr, "/t/a");
    let mut b = connect(addr, "/t/b.c");
    let key = "Authorization: Bearer sekret\r\n";
    assert_eq!(post(addr, "/publish/a", "", b"x").0, 401);
    assert_eq!(
        post(addr, "/publish/a", "Authorization: Bearer nope\r\n", b"x").0,
        401
    );
    assert_eq!(post(addr, "/publish", "", b"[]").0, 401);

    let (status, body) = post(addr, "/publish/a", key, b"one");
    assert_eq!(status, 202, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (answer["topic"].as_str(), answer["seq"].as_u64()),
        (Some("a"), Some(1))
    );
    assert_eq!(answer["epoch"].as_str().unwrap().len(), 16);
    assert_eq!(text_of(a.read().unwrap()).unwrap(), "one");

    let binary = format!("{key}Content-Type: application/octet-stream\r\n");
    assert_eq!(post(addr, "/publish/a", &binary, b"\x00\xff").0, 202);
    assert_eq!(a.read().unwrap(), Message::binary(vec![0u8, 0xff]));

    let many = json!([{"topic": "a", "data": "two"}, {"topic": "b.c", "data": {"n": 1}}]);
    let (status, body) = post(addr, "/publish", key, many.to_string().as_bytes());
    assert_eq!(status, 202, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer["results"],
        json!([{"topic": "a", "seq": 3}, {"topic": "b.c", "seq": 1}])
    );
    assert_eq!(text_of(a.read().unwrap()).unwrap(), "two");
    assert_eq!(text_of(b.read().unwrap()).unwrap(), r#"{"n":1}"#);

    for bad in [
        &b"{"[..],
        b"[{\"topic\":\"a b\",\"data\":1}]",
        b"[{\"data\":1}]",
    ] {
        assert_eq!(post(addr, "/publish", key, bad).0, 400);
    }
    let json = format!("{key}Content-Type: application/json\r\n");
    assert_eq!(post(addr, "/publish/a", &json, b"{oops").0, 400);
    assert_eq!(post(addr, "/publish/bad%20topic", key, b"x").0, 400);

    let (status, metrics) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("clarion_deliveries_total"), "{metrics}");
    assert!(metrics.contains("clarion_published_total"), "{metrics}");
    assert_eq!(stats(addr)["hub"]["published"], 4);
    assert_eq!(get(addr, "/healthz"), (200, "ok\n".to_owned()));
}

#[test]
fn publishes_over_one_kept_connection_arrive_in_order_until_its_request_cap() {
    const CAP: usize = 10;
    let runtime = start_app(
        |config| config.keep_alive_requests = CAP as u32,
        AppConfig {
            api_key: Some("sekret".into()),
            ..AppConfig::default()
        },
    );
    let addr = runtime.local_addr();
    let mut subscriber = connect(addr, "/t/kept");
    assert!(eventually(|| total_stat(addr, "subscriptions") == 1));
    // CAP publishes pipelined in one write, the fourth with a wrong key: refused, the
    // connection kept.
    let publishes: Vec<u8> = (0..CAP)
        .flat_map(|i| {
            let key = if i == 3 { "nope" } else { "sekret" };
            format!(
                "POST /publish/kept HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
                 Content-Length: 2\r\n\r\nm{i}"
            )
            .into_bytes()
        })
        .collect();
    let mut stream = tcp(addr);
    stream.write_all(&publishes).unwrap();
    let mut seq = 0;
    for i in 0..CAP {
        let answer = read_answer(&mut stream);
        let (status, body) = split(&answer);
        if i == 3 {
            assert_eq!(status, 401, "{answer}");
        } else {
            seq += 1;
            assert_eq!(status, 202, "{answer}");
            let answer: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(answer["seq"], seq);
        }
        // The last request the connection may carry says so, and only that one.
        assert_eq!(
            answer.contains("Connection: close"),
            i == CAP - 1,
            "{answer}"
        );
    }
    let mut rest = Vec::new();
    assert_eq!(
        stream.read_to_end(&mut rest).unwrap(),
        0,
        "closed at the cap"
    );
    for i in (0..CAP).filter(|&i| i != 3) {
        assert_eq!(
            text_of(subscriber.read().unwrap()).unwrap(),
            format!("m{i}")
        );
    }
    assert_eq!(stats(addr)["hub"]["published"], CAP as u64 - 1);
}

#[test]
fn resume_replays_the_gap_exactly_then_goes_live() {
    let (_runtime, addr) = server(AppConfig {
        hub: HubConfig {
            history_size: 3,
            ..HubConfig::default()
        },
        ..app()
    });
    let publish = |i: u64| {
        let (status, body) = post(addr, "/publish/feed", "", format!("{i}").as_bytes());
        assert_eq!(status, 202, "{body}");
    };
    let mut ws = connect(addr, "/ws");
    let ack = call(&mut ws, json!({"type": "subscribe", "topic": "feed"}));
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    for i in 1..=2 {
        publish(i);
        assert_eq!(next(&mut ws)["seq"], i);
    }
    drop(ws);
    publish(3);
    publish(4);

    let mut ws = connect(addr, "/ws");
    let ack = call(
        &mut ws,
        json!({"type": "subscribe", "topic": "feed", "since": 2, "epoch": epoch}),
    );
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(ack["seq"], 4);
    publish(5);
    for i in 3..=5u64 {
        let delivery = next(&mut ws);
        assert_eq!(delivery["seq"], i, "{delivery}");
        assert_eq!(delivery["data"], i, "{delivery}");
    }
    drop(ws);

    for i in 6..=10 {
        publish(i);
    }
    let mut ws = connect(addr, "/ws");
    let too_old = call(
        &mut ws,
        json!({"type": "subscribe", "topic": "feed", "since": 5, "epoch": epoch}),
    );
    assert_eq!(too_old["recovered"], false, "{too_old}");
    assert_eq!(too_old["seq"], 10);
    let mut other = connect(addr, "/ws");
    let wrong_epoch = call(
        &mut other,
        json!({"type": "subscribe", "topic": "feed", "since": 9, "epoch": "0000000000000001"}),
    );
    assert_eq!(wrong_epoch["recovered"], false, "{wrong_epoch}");
    publish(11);
    assert_eq!(next(&mut ws)["seq"], 11, "live after a failed resume");
    assert_eq!(next(&mut other)["seq"], 11);
}

/// One fast and one stalled raw subscriber; 16 KiB messages published through `/ws` until the
/// stalled one is far past the 64 KiB cap. Returns the server address, the stalled socket and
/// the number published.
fn stall(policy: SlowConsumer) -> (Runtime, SocketAddr, Ws, usize) {
    const MESSAGES: usize = 600;
    let (runtime, addr) = server(AppConfig {
        max_queued_bytes: 64 << 10,
        slow_consumer: policy,
        ..app()
    });
    let slow = connect_stalled(addr, "/t/firehose");
    let mut fast = connect(addr, "/t/firehose");
    // The fast subscriber reads each message before the next is published, so only the
    // stalled one can fall behind, however busy the machine is.
    let (got, received) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for i in 0..MESSAGES {
            let text = text_of(fast.read().unwrap()).unwrap();
            assert!(
                text.starts_with(&format!("{i}:")),
                "fast subscriber in order"
            );
            got.send(()).unwrap();
        }
    });
    let mut publisher = connect(addr, "/ws");
    let filler = "x".repeat(16 << 10);
    for i in 0..MESSAGES {
        let data = format!("{i}:{filler}");
        let ack = call(
            &mut publisher,
            json!({"type": "publish", "topic": "firehose", "data": data}),
        );
        assert_eq!(ack["seq"], i + 1);
        received.recv().expect("the fast subscriber keeps up");
    }
    reader.join().expect("the fast subscriber got everything");
    (runtime, addr, slow, MESSAGES)
}

/// A client with a 4 KiB receive buffer: the kernel cannot hide a reader that stopped.
fn connect_stalled(addr: SocketAddr, path: &str) -> Ws {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    tungstenite::client(format!("ws://{addr}{path}"), stream)
        .unwrap()
        .0
}

/// Reads what is there: (messages in order, close code if a close came).
fn drain(ws: &mut Ws) -> (Vec<usize>, Option<CloseCode>) {
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut seen = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => {
                seen.push(text.split(':').next().unwrap().parse().unwrap());
            }
            Ok(Message::Close(frame)) => return (seen, frame.map(|f| f.code)),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                return (seen, None);
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_slow_consumer_is_closed_with_1013_and_the_others_keep_up() {
    let (_runtime, addr, mut slow, published) = stall(SlowConsumer::Close);
    assert!(eventually(|| total_stat(addr, "slow_consumer_closes") == 1));
    let (seen, code) = drain(&mut slow);
    assert_eq!(code, Some(CloseCode::Again));
    assert!(
        seen.len() < published,
        "bounded: {} of {published}",
        seen.len()
    );
    assert!(
        seen.iter().enumerate().all(|(i, &n)| i == n),
        "a prefix, in order"
    );
    assert_eq!(total_stat(addr, "drops"), 0);
}

#[test]
fn a_slow_consumer_under_drop_sees_a_gap_and_stays_connected() {
    let (runtime, addr, mut slow, published) = stall(SlowConsumer::Drop);
    let drops = total_stat(addr, "drops");
    assert!(drops > 0);
    assert_eq!(total_stat(addr, "slow_consumer_closes"), 0);
    let (seen, code) = drain(&mut slow);
    assert_eq!(code, None);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(
        seen.len() as u64 + drops,
        published as u64,
        "each message delivered or dropped"
    );
    assert!(seen.len() < published);
    // Still subscribed: the next message arrives.
    post(addr, "/publish/firehose", "", b"999:after");
    let (after, _) = drain(&mut slow);
    assert_eq!(after, [999]);
    // Once drained, the write queue went back to its pool: nothing stays allocated.
    assert!(eventually(|| total(&runtime, |s| &s.tx_queues_lent) == 0));
}

#[test]
fn tokens_origins_and_limits() {
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    let secret = "a secret of at least thirty-two bytes";
    let sign = |claims: Value, secret: &str| {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let (runtime, addr) = server(AppConfig {
        auth: AuthMode::Jwt,
        jwt: clarion::server::auth::JwtConfig {
            secret: Some(secret.into()),
            ..Default::default()
        },
        allowed_origins: vec!["https://ok.example".into()],
        client_publish: clarion::server::state::ClientPublish::Token,
        // Room for the two held and the short-lived upgrades below (one may still be closing).
        max_connections: 4,
        max_topics_per_connection: 2,
        max_topic_length: 16,
        ..app()
    });
    let exp = get_current_timestamp() + 600;
    let good = sign(
        json!({"exp": exp, "subscribe": ["news", "room.*"], "publish": ["room.*"]}),
        secret,
    );
    let expired = sign(json!({"exp": exp - 7200, "subscribe": ["news"]}), secret);
    let forged = sign(json!({"exp": exp, "subscribe": ["news"]}), "other");
    let bearer = |token: &str| format!("Authorization: Bearer {token}\r\n");

    assert_eq!(upgrade_status(addr, "/t/news", ""), 401);
    assert_eq!(upgrade_status(addr, "/t/news", &bearer(&expired)), 401);
    assert_eq!(upgrade_status(addr, "/t/news", &bearer(&forged)), 401);
    assert_eq!(upgrade_status(addr, "/t/news?token=garbage", ""), 401);
    // `/ws` answers a refused token with a close code instead (tests/auth.rs).
    assert_eq!(upgrade_status(addr, "/t/sports", &bearer(&good)), 403);
    let evil = format!("{}Origin: https://evil.example\r\n", bearer(&good));
    assert_eq!(upgrade_status(addr, "/t/news", &evil), 403);
    let long = format!("/t/{}", "n".repeat(17));
    assert_eq!(upgrade_status(addr, &long, &bearer(&good)), 400);
    let ok = format!("{}Origin: https://ok.example\r\n", bearer(&good));
    assert_eq!(upgrade_status(addr, "/t/news", &ok), 101);

    let mut news = connect(addr, &format!("/t/news?token={good}"));
    let mut ws = connect(addr, &format!("/ws?token={good}"));
    let reply = |ws: &mut Ws, command: Value| call(ws, command)["code"].clone();
    assert_eq!(
        reply(&mut ws, json!({"type": "subscribe", "topic": "room.1"})),
        Value::Null
    );
    assert_eq!(
        reply(&mut ws, json!({"type": "subscribe", "topic": "sports"})),
        "forbidden"
    );
    assert_eq!(
        reply(&mut ws, json!({"type": "subscribe", "topic": "news"})),
        Value::Null
    );
    assert_eq!(
        reply(&mut ws, json!({"type": "subscribe", "topic": "room.2"})),
        "too_many_topics"
    );
    // At the limit, a topic already held is no new topic: subscribing again is acked.
    assert_eq!(
        reply(&mut ws, json!({"type": "subscribe", "topic": "news"})),
        Value::Null
    );
    assert_eq!(
        reply(
            &mut ws,
            json!({"type": "subscribe", "topic": "room.xxxxxxxxxxxx"})
        ),
        "invalid_topic"
    );
    assert_eq!(
        reply(
            &mut ws,
            json!({"type": "publish", "topic": "news", "data": 1})
        ),
        "forbidden"
    );
    let ack = call(
        &mut ws,
        json!({"type": "publish", "topic": "room.1", "data": 1}),
    );
    assert_eq!(ack["seq"], 1);
    assert_eq!(next(&mut ws)["topic"], "room.1", "its own delivery");

    // A raw socket without a publish grant is closed when it sends.
    news.send(Message::text("hello")).unwrap();
    loop {
        match news.read() {
            Ok(Message::Close(frame)) => {
                assert_eq!(frame.unwrap().code, CloseCode::Policy);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    drop(news);
    // Only `ws` is left once the server has seen the others go.
    assert!(eventually(|| total(&runtime, |s| &s.connections) == 1));

    // Four open: the next connection is closed at accept, whatever it was going to ask.
    let _second = connect(addr, &format!("/t/news?token={good}"));
    let _third = connect(addr, &format!("/t/news?token={good}"));
    let _fourth = connect(addr, "/echo");
    assert!(eventually(|| refused_at_accept(addr)));
    assert_eq!(total(&runtime, |s| &s.refused_connections), 1);
}

/// Opens a WebSocket on `/echo` from source address `source`; the status of its upgrade and
/// the stream (held open by the caller).
#[test]
fn clients_creating_topics_too_fast_are_told_to_try_again_later() {
    // One new topic a second, ten seconds' worth at once.
    let (runtime, addr) = server(AppConfig {
        hub: HubConfig {
            client_topic_rate: 1,
            ..HubConfig::default()
        },
        ..app()
    });
    let mut ws = connect(addr, "/ws");
    let mut fresh = 0;
    // New topics until one is refused (the bucket refills by one a second meanwhile).
    let mut until_refused = |ws: &mut Ws| loop {
        fresh += 1;
        assert!(fresh < 1000, "never refused");
        let reply = call(
            ws,
            json!({"type": "subscribe", "topic": format!("new.{fresh}")}),
        );
        if reply["type"] == "error" {
            return reply;
        }
    };
    let refused = until_refused(&mut ws);
    assert_eq!(refused["code"], "too_many_topics", "{refused}");
    assert_eq!(
        refused["message"], "too many new topics at once; try again later",
        "{refused}"
    );
    // A raw socket has only its close code: 1013, which a client retries with backoff (1008
    // would tell it to stop). Bounded retries: a token may refill between the two.
    let closed_with = (0..5)
        .map(|attempt| {
            until_refused(&mut ws);
            let mut raw = connect(addr, &format!("/t/raw.{attempt}"));
            drain(&mut raw).1
        })
        .find(Option::is_some)
        .flatten();
    assert_eq!(closed_with, Some(CloseCode::Again));
    drop(ws);
    drop(runtime);
}

fn upgrade_from(source: [u8; 4], addr: SocketAddr) -> (u16, TcpStream) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream = TcpStream::from(socket);
    std::io::Write::write_all(&mut stream, &upgrade_request("/echo")).unwrap();
    let status = split(&read_head(&mut stream)).0;
    (status, stream)
}

#[test]
fn the_per_ip_cap_refuses_only_the_crowded_address() {
    let (runtime, addr) = server(AppConfig {
        max_connections_per_ip: 2,
        ..app()
    });
    let (first, held) = upgrade_from([127, 0, 0, 1], addr);
    let (second, _second) = upgrade_from([127, 0, 0, 1], addr);
    assert_eq!((first, second), (101, 101));
    assert_eq!(upgrade_from([127, 0, 0, 1], addr).0, 429);
    // Another address has its own count.
    assert_eq!(upgrade_from([127, 0, 0, 2], addr).0, 101);
    // Once the server has seen one of the first two go, the address is admitted again.
    drop(held);
    assert!(eventually(|| total(&runtime, |s| &s.connections) == 1));
    assert_eq!(upgrade_from([127, 0, 0, 1], addr).0, 101);
}
