//! Server-Sent Events (`/sse`) and NDJSON (`/stream`) over real sockets: events and their ids,
//! resume from `Last-Event-ID` and from `since` without a gap or a duplicate, several topics
//! on one stream, chunked (HTTP/1.1) and unframed (HTTP/1.0) bodies, heartbeats, tokens (401,
//! 403, expiry with a `close` event), CORS, publishing with a client's token, a stream that
//! stops reading ended as a slow consumer, a stream the server ends (expiry, slow consumer,
//! shutdown with 1001) ending its body with the last chunk before EOF, a stream past the
//! server's `max_topics` refused with 503, and a real nginx with its defaults in the path
//! (unbuffered events, resume across a restart of the node behind it, in cluster mode).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clarion::server::AppConfig;
use clarion::server::auth::{AuthMode, JwtConfig};
use clarion::server::state::{ClientPublish, SlowConsumer};
use common::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

const SECRET: &str = "an end-to-end secret, 32 bytes or more";

/// One SSE event (or NDJSON line, as `data`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Event {
    event: String,
    data: String,
    id: Option<String>,
}

/// A stream read as a client would: the head, then events, through the chunked framing when
/// there is one.
struct Stream {
    reader: BufReader<Body>,
    head: String,
    sse: bool,
    /// The first event of a stream that opened: `session`.
    session: Option<Event>,
}

/// A response body: chunks decoded, or the bytes as they come.
struct Body {
    stream: TcpStream,
    chunked: bool,
    /// Bytes of the current chunk still to read.
    left: usize,
    /// A chunk was read, so its closing CRLF comes before the next size.
    started: bool,
    /// The last chunk (`0\r\n\r\n`) came: the body is complete, not cut.
    ended: bool,
}

impl Body {
    fn line(&mut self) -> std::io::Result<Option<String>> {
        let mut line = Vec::new();
        let mut byte = [0u8];
        while !line.ends_with(b"\r\n") {
            if self.stream.read(&mut byte)? == 0 {
                return Ok(None);
            }
            line.push(byte[0]);
        }
        Ok(Some(
            String::from_utf8_lossy(&line[..line.len() - 2]).into_owned(),
        ))
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.chunked {
            return self.stream.read(buf);
        }
        if self.left == 0 {
            if self.started && self.line()?.is_none() {
                return Ok(0);
            }
            let Some(size) = self.line()? else {
                return Ok(0);
            };
            let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
            if size == 0 {
                self.ended = self.line()?.is_some_and(|line| line.is_empty());
                return Ok(0);
            }
            self.left = size;
            self.started = true;
        }
        let want = buf.len().min(self.left);
        let n = self.stream.read(&mut buf[..want])?;
        self.left -= n;
        Ok(n)
    }
}

impl Stream {
    fn open(addr: SocketAddr, path: &str, headers: &str, http10: bool) -> Stream {
        let mut stream = tcp(addr);
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let version = if http10 { "1.0" } else { "1.1" };
        let request = format!("GET {path} HTTP/{version}\r\nHost: x\r\n{headers}\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let head = read_head(&mut stream);
        let chunked = head.contains("Transfer-Encoding: chunked");
        let sse = head.contains("text/event-stream");
        let body = Body {
            stream,
            chunked,
            left: 0,
            started: false,
            ended: false,
        };
        let mut stream = Stream {
            reader: BufReader::new(body),
            head,
            sse,
            session: None,
        };
        if stream.status() == 200 {
            stream.session = stream.next();
        }
        stream
    }

    fn status(&self) -> u16 {
        split(&self.head).0
    }

    /// The next event, skipping `retry:` blocks; comments come as events named `:`.
    fn next(&mut self) -> Option<Event> {
        let mut event = Event::default();
        let mut data: Vec<String> = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches('\n');
            if !self.sse {
                return Some(Event {
                    data: line.to_owned(),
                    ..Event::default()
                });
            }
            if line.is_empty() {
                if data.is_empty() && event.event.is_empty() && event.id.is_none() {
                    continue;
                }
                event.data = data.join("\n");
                return Some(event);
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "" => event.event = ":".to_owned(),
                "event" => event.event = value.to_owned(),
                "data" => data.push(value.to_owned()),
                "id" => event.id = Some(value.to_owned()),
                _ => {}
            }
        }
    }

    /// The next event that is not a heartbeat.
    fn next_event(&mut self) -> Event {
        loop {
            let event = self.next().expect("an event");
            if event.event != ":" && event.data != r#"{"type":"heartbeat"}"# {
                return event;
            }
        }
    }

    fn json(&mut self) -> Value {
        serde_json::from_str(&self.next_event().data).unwrap()
    }

    /// Whether a chunked body ended with its last chunk (after which the server closed).
    fn ended(&mut self) -> bool {
        let mut rest = Vec::new();
        let _ = self.reader.read_to_end(&mut rest);
        self.reader.get_ref().ended
    }
}

/// A stream's request on a new connection, its head (asserted 200) read: the raw body follows.
fn raw_stream(addr: SocketAddr, path: &str, http10: bool) -> TcpStream {
    let mut stream = tcp(addr);
    let version = if http10 { "1.0" } else { "1.1" };
    let request = format!("GET {path} HTTP/{version}\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream
}

/// Everything a stream sends until the server closes it (EOF, not a reset or a timeout).
fn to_the_end(mut stream: TcpStream) -> String {
    let mut body = Vec::new();
    stream.read_to_end(&mut body).expect("read to EOF");
    String::from_utf8(body).unwrap()
}

/// How a body the server ended with `json` ends: the close event (SSE `@close`, or the NDJSON
/// line), in one chunk followed by the last chunk when chunked, else as it is.
fn closing(sse: bool, chunked: bool, json: &str) -> String {
    let event = match sse {
        true => format!("event: @close\ndata: {json}\n\n"),
        false => format!("{json}\n"),
    };
    match chunked {
        true => format!("{:x}\r\n{event}\r\n0\r\n\r\n", event.len()),
        false => event,
    }
}

fn publish(addr: SocketAddr, topic: &str, content_type: &str, body: &[u8]) -> Value {
    let header = format!("Content-Type: {content_type}\r\n");
    let (status, body) = post(addr, &format!("/publish/{topic}"), &header, body);
    assert_eq!(status, 202, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    encode(&Header::default(), &claims, &key).unwrap()
}

#[test]
fn sse_events_carry_payloads_as_they_are_and_resume_from_last_event_id() {
    let server = start(|c| c.threads = 1);
    let addr = server.local_addr();
    let epoch = publish(addr, "news", "application/json", br#"{"n": 1}"#)["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut sse = Stream::open(addr, "/sse/news", "", false);
    assert_eq!(sse.status(), 200);
    for header in [
        "Content-Type: text/event-stream",
        "Cache-Control: no-cache",
        "X-Accel-Buffering: no",
        "Transfer-Encoding: chunked",
    ] {
        assert!(sse.head.contains(header), "{header} in {}", sse.head);
    }
    let subscribed = sse.next_event();
    assert_eq!(subscribed.event, "@subscribed");
    let ack: Value = serde_json::from_str(&subscribed.data).unwrap();
    assert_eq!(
        ack,
        json!({"type":"subscribed","topic":"news","recovered":false,"epoch":epoch,"seq":1})
    );
    assert_eq!(subscribed.id.as_deref(), Some(&*format!("{epoch}:1")));
    let session = sse.session.take().unwrap();
    assert_eq!(session.event, "@session");
    assert_eq!(session.data, r#"{"type":"session","heartbeat":15}"#);
    assert_eq!(session.id, None);
    publish(addr, "news", "application/json", br#"{"n": 2}"#);
    publish(addr, "news", "text/plain", b"two\nlines");
    publish(addr, "news", "application/octet-stream", &[0, 1, 2, 255]);
    let got: Vec<Event> = (0..3).map(|_| sse.next_event()).collect();
    let expect = |data: &str, seq: u64| Event {
        event: "news".into(),
        data: data.into(),
        id: Some(format!("{epoch}:{seq}")),
    };
    assert_eq!(
        got,
        [
            expect(r#"{"n": 2}"#, 2),
            expect("two\nlines", 3),
            expect("AAEC/w==", 4)
        ]
    );
    drop(sse);
    // Missed while away, then back with the last id: replayed, no gap, no duplicate.
    publish(addr, "news", "text/plain", b"five");
    publish(addr, "news", "text/plain", b"six");
    let last = format!("Last-Event-ID: {epoch}:4\r\n");
    let mut back = Stream::open(addr, "/sse/news?since=1", &last, false);
    let ack: Value = serde_json::from_str(&back.next_event().data).unwrap();
    assert_eq!(
        (ack["recovered"].as_bool(), ack["seq"].as_u64()),
        (Some(true), Some(6))
    );
    publish(addr, "news", "text/plain", b"seven");
    let data: Vec<String> = (0..3).map(|_| back.next_event().data).collect();
    assert_eq!(data, ["five", "six", "seven"]);
    // An id from another run: not recovered, live from the topic's seq.
    let stale = "Last-Event-ID: 0123456789abcdef:4\r\n";
    let mut other = Stream::open(addr, "/sse/news", stale, false);
    let ack: Value = serde_json::from_str(&other.next_event().data).unwrap();
    assert_eq!(
        (ack["recovered"].as_bool(), ack["seq"].as_u64()),
        (Some(false), Some(7))
    );
}

#[test]
fn one_stream_of_several_topics_lists_each_position_and_resumes_them_all() {
    let server = start(|c| c.threads = 1);
    let addr = server.local_addr();
    let epoch = publish(addr, "b", "text/plain", b"b1")["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    // Topics in any order, named twice: ids list positions by name (a, then b).
    let mut sse = Stream::open(addr, "/sse?topic=b&topic=a&topic=b", "", false);
    let first = sse.next_event();
    assert_eq!(first.event, "@subscribed");
    assert_eq!(first.id.as_deref(), Some(&*format!("{epoch}:0,")));
    let second = sse.next_event();
    assert_eq!(second.id.as_deref(), Some(&*format!("{epoch}:0,1")));
    publish(addr, "a", "text/plain", b"a1");
    publish(addr, "b", "text/plain", b"b2");
    let a1 = sse.next_event();
    assert_eq!(
        (a1.event.as_str(), a1.id.as_deref()),
        ("a", Some(&*format!("{epoch}:1,1")))
    );
    let b2 = sse.next_event();
    assert_eq!(
        (b2.event.as_str(), b2.id.as_deref()),
        ("b", Some(&*format!("{epoch}:1,2")))
    );
    drop(sse);
    for (topic, body) in [("a", "a2"), ("b", "b3"), ("a", "a3")] {
        publish(addr, topic, "text/plain", body.as_bytes());
    }
    let last = format!("Last-Event-ID: {}\r\n", b2.id.unwrap());
    let mut back = Stream::open(addr, "/sse?topic=a&topic=b", &last, false);
    // Per topic, in name order: `subscribed` (recovered), then what it missed.
    let got: Vec<(String, String)> = (0..5)
        .map(|_| back.next_event())
        .map(|e| match e.event.as_str() {
            "@subscribed" => {
                let ack: Value = serde_json::from_str(&e.data).unwrap();
                assert_eq!(ack["recovered"], true, "{ack}");
                (e.event, ack["topic"].as_str().unwrap().to_owned())
            }
            _ => (e.event, e.data),
        })
        .collect();
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        got,
        [
            pair("@subscribed", "a"),
            pair("a", "a2"),
            pair("a", "a3"),
            pair("@subscribed", "b"),
            pair("b", "b3")
        ]
    );
    // A second stream of the same topics gets the very same events (shared bytes).
    let mut twin = Stream::open(addr, "/sse?topic=a&topic=b", "", false);
    twin.next_event();
    twin.next_event();
    publish(addr, "a", "text/plain", b"a4");
    let (x, y) = (back.next_event(), twin.next_event());
    assert_eq!(x, y);
    assert_eq!(x.id.as_deref(), Some(&*format!("{epoch}:4,3")));
}

#[test]
fn ndjson_streams_are_envelopes_chunked_or_to_the_end_and_resume_from_since() {
    let server = start_app(
        |c| c.threads = 1,
        AppConfig {
            stream_heartbeat: Duration::from_secs(1),
            ..AppConfig::default()
        },
    );
    let addr = server.local_addr();
    let epoch = publish(addr, "t", "application/json", b"[1]")["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    publish(addr, "t", "text/plain", b"second");
    for http10 in [false, true] {
        let path = format!("/stream/t?since={epoch}:0");
        let mut nd = Stream::open(addr, &path, "", http10);
        let session = nd.session.take().unwrap();
        assert_eq!(session.data, r#"{"type":"session","heartbeat":1}"#);
        assert!(nd.head.contains("Content-Type: application/x-ndjson"));
        assert_eq!(nd.head.contains("Transfer-Encoding: chunked"), !http10);
        assert_eq!(
            nd.json(),
            json!({"type":"subscribed","topic":"t","recovered":true,"epoch":epoch,"seq":2})
        );
        assert_eq!(
            nd.json(),
            json!({"type":"message","topic":"t","seq":1,"data":[1]})
        );
        assert_eq!(
            nd.json(),
            json!({"type":"message","topic":"t","seq":2,"data":"second"})
        );
        // Nothing happens for a while: heartbeats keep the stream alive.
        assert_eq!(nd.next().unwrap().data, r#"{"type":"heartbeat"}"#);
    }
    // SSE with envelope data: the same JSON, one event each, with ids.
    let mut env = Stream::open(
        addr,
        &format!("/sse/t?format=envelope&since=1&epoch={epoch}"),
        "",
        false,
    );
    let ack = env.next_event();
    assert_eq!(ack.event, "");
    assert_eq!(ack.id.as_deref(), Some(&*format!("{epoch}:1")));
    let message = env.next_event();
    assert_eq!(
        serde_json::from_str::<Value>(&message.data).unwrap(),
        json!({"type":"message","topic":"t","seq":2,"data":"second"})
    );
    assert_eq!(message.id.as_deref(), Some(&*format!("{epoch}:2")));
    let heartbeat = env.next().unwrap();
    assert_eq!(heartbeat.event, ":");
}

#[test]
fn bad_stream_requests_are_refused_with_a_status() {
    let server = start(|c| c.threads = 1);
    let addr = server.local_addr();
    for (path, status) in [
        ("/sse", 400),
        ("/sse?since=1&topic=a", 400),
        ("/sse/a?format=xml", 400),
        ("/sse/a?epoch=nothex", 400),
        ("/sse/bad%20name", 400),
        ("/stream?topic=a&since=x", 400),
    ] {
        assert_eq!(get(addr, path).0, status, "{path}");
    }
    let (status, _) = post(addr, "/sse/a", "", b"");
    assert_eq!(status, 405);
}

fn jwt_app(adjust: impl FnOnce(&mut AppConfig)) -> AppConfig {
    let mut app = AppConfig {
        auth: AuthMode::Jwt,
        jwt: JwtConfig {
            secret: Some(SECRET.into()),
            leeway: Duration::ZERO,
            ..JwtConfig::default()
        },
        allowed_origins: vec!["https://page.example".to_owned()],
        ..AppConfig::default()
    };
    adjust(&mut app);
    app
}

#[test]
fn tokens_origins_and_cors_on_streams() {
    let server = start_app(|c| c.threads = 1, jwt_app(|_| {}));
    let addr = server.local_addr();
    let origin = "Origin: https://page.example\r\n";
    let good = token(json!({"exp": unix_now() + 600, "subscribe": ["news.*"]}));
    // No token: 401, readable by the page (CORS headers on the refusal too).
    let refused = Stream::open(addr, "/sse/news.eu", origin, false);
    assert_eq!(refused.status(), 401);
    assert!(
        refused
            .head
            .contains("Access-Control-Allow-Origin: https://page.example")
    );
    // A topic the token does not grant: 403.
    let path = format!("/sse?topic=news.eu&topic=sport&token={good}");
    assert_eq!(Stream::open(addr, &path, origin, false).status(), 403);
    // Another origin: 403, and no CORS header.
    let path = format!("/sse/news.eu?token={good}");
    let foreign = Stream::open(addr, &path, "Origin: https://evil.example\r\n", false);
    assert_eq!(foreign.status(), 403);
    assert!(!foreign.head.contains("Access-Control-Allow-Origin"));
    // The page's own origin, token in the query: streamed, with CORS headers.
    let mut ok = Stream::open(addr, &path, origin, false);
    assert_eq!(ok.status(), 200);
    assert!(
        ok.head
            .contains("Access-Control-Allow-Origin: https://page.example")
    );
    assert!(ok.head.contains("Vary: Origin"));
    assert_eq!(ok.next_event().event, "@subscribed");
    // The preflight of a page that sends the token in a header.
    let preflight = http(
        addr,
        b"OPTIONS /sse/news.eu HTTP/1.1\r\nHost: x\r\nOrigin: https://page.example\r\n\
          Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: authorization\r\n\r\n",
    );
    assert!(preflight.starts_with("HTTP/1.1 200"), "{preflight}");
    for header in [
        "Access-Control-Allow-Origin: https://page.example",
        "Access-Control-Allow-Headers: Authorization, Content-Type, Last-Event-ID",
        "Access-Control-Allow-Methods: GET, POST, OPTIONS",
    ] {
        assert!(preflight.contains(header), "{header} in {preflight}");
    }
    let foreign = http(
        addr,
        b"OPTIONS /publish/a HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n\r\n",
    );
    assert!(foreign.starts_with("HTTP/1.1 403"), "{foreign}");
}

#[test]
fn a_stream_ends_with_a_close_event_when_its_token_expires() {
    let server = start_app(|c| c.threads = 1, jwt_app(|_| {}));
    let addr = server.local_addr();
    let short = token(json!({"exp": unix_now() + 2, "subscribe": ["t"]}));
    let mut nd = Stream::open(
        addr,
        &format!("/stream/t?token={short}&heartbeat=7"),
        "",
        false,
    );
    let session: Value = serde_json::from_str(&nd.session.take().unwrap().data).unwrap();
    assert_eq!(
        session["heartbeat"], 7,
        "asked for, within heartbeat_min and heartbeat_max"
    );
    assert!(session["expires_in"].as_u64().unwrap() <= 2, "{session}");
    assert_eq!(nd.json()["type"], "subscribed");
    assert_eq!(
        nd.json(),
        json!({"type":"close","code":4001,"reason":"token expired"})
    );
    assert!(nd.next().is_none(), "the stream ends after it");
    assert!(nd.ended(), "with the last chunk: complete, not cut");
    // The raw bytes: the close event, then the body's end, then EOF.
    let json = r#"{"type":"close","code":4001,"reason":"token expired"}"#;
    let short = token(json!({"exp": unix_now() + 2, "subscribe": ["t"]}));
    let opened: Vec<_> = [
        (format!("/sse/t?token={short}"), true, false),
        (format!("/stream/t?token={short}"), false, false),
        (format!("/sse/t?token={short}"), true, true),
    ]
    .into_iter()
    .map(|(path, sse, http10)| {
        let stream = raw_stream(addr, &path, http10);
        (path, sse, http10, stream)
    })
    .collect();
    for (path, sse, http10, stream) in opened {
        let body = to_the_end(stream);
        let end = closing(sse, !http10, json);
        assert!(body.ends_with(&end), "{path} HTTP/1.0 {http10}: {body:?}");
    }
}

#[test]
fn clients_publish_over_http_with_their_token() {
    let server = start_app(
        |c| c.threads = 1,
        jwt_app(|app| {
            app.api_key = Some("the-api-key".into());
            app.client_publish = ClientPublish::Token;
        }),
    );
    let addr = server.local_addr();
    let client = token(json!({"exp": unix_now() + 600, "publish": ["chat.*"]}));
    let bearer = |token: &str| format!("Authorization: Bearer {token}\r\n");
    let origin = "Origin: https://page.example\r\n";
    let (status, body) = post(addr, "/publish/chat.a", &(bearer(&client) + origin), b"hi");
    assert_eq!(status, 202, "{body}");
    let (status, _) = post(addr, &format!("/publish/chat.a?token={client}"), "", b"hi");
    assert_eq!(
        status, 202,
        "the token in the query, as a page without headers sends it"
    );
    let answer = http(
        addr,
        format!(
            "POST /publish/chat.b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n{}{origin}\r\nhi",
            bearer(&client)
        )
        .as_bytes(),
    );
    assert!(answer.contains("Access-Control-Allow-Origin: https://page.example"));
    let (status, _) = post(addr, "/publish/news", &bearer(&client), b"hi");
    assert_eq!(status, 403, "a topic the token does not grant");
    let batch = br#"[{"topic":"chat.a","data":1},{"topic":"news","data":2}]"#;
    assert_eq!(post(addr, "/publish", &bearer(&client), batch).0, 403);
    assert_eq!(post(addr, "/publish/chat.a", &bearer("junk"), b"hi").0, 401);
    assert_eq!(
        post(addr, "/publish/news", &bearer("the-api-key"), b"hi").0,
        202
    );
    assert_eq!(post(addr, "/publish/news", "", b"hi").0, 401);
}

#[test]
fn a_stream_that_stops_reading_is_ended_as_a_slow_consumer_under_either_policy() {
    for policy in [SlowConsumer::Close, SlowConsumer::Drop] {
        let server = start_app(
            |c| c.threads = 1,
            AppConfig {
                max_queued_bytes: 64 << 10,
                slow_consumer: policy,
                ..AppConfig::default()
            },
        );
        let addr = server.local_addr();
        let mut stuck = Stream::open(addr, "/stream/t", "", false);
        assert_eq!(stuck.json()["type"], "subscribed");
        // Half the cap: a publish larger than max_queued_bytes is refused (413) up front.
        let big = vec![b'x'; 32 << 10];
        assert!(
            eventually(|| {
                publish(addr, "t", "text/plain", &big);
                total_stat(addr, "slow_consumer_closes") == 1
            }),
            "{policy:?}"
        );
        assert_eq!(total_stat(addr, "drops"), 0, "nothing skipped silently");
        // Read what was queued: deliveries, then why it ended, then the end.
        let mut last = Value::Null;
        while let Some(event) = stuck.next() {
            last = serde_json::from_str(&event.data).unwrap();
        }
        assert_eq!(
            last,
            json!({"type":"close","code":1013,"reason":"slow consumer"})
        );
        assert!(stuck.ended(), "{policy:?}: the last chunk after it");
    }
}

#[test]
fn shutdown_ends_every_stream_with_a_close_event_1001_and_the_body_end() {
    let server = start(|c| c.threads = 2);
    let addr = server.local_addr();
    let streams: Vec<_> = [
        ("/sse/a", true, false),
        ("/stream/b", false, false),
        ("/sse/a", true, true),
        ("/stream/b", false, true),
    ]
    .into_iter()
    .map(|(path, sse, http10)| {
        let mut stream = raw_stream(addr, path, http10);
        // Open (its subscribed event sent) before the shutdown.
        let mut seen = Vec::new();
        let mut byte = [0u8];
        while !String::from_utf8_lossy(&seen).contains("subscribed") {
            assert_eq!(stream.read(&mut byte).unwrap(), 1, "{path}");
            seen.push(byte[0]);
        }
        (path, sse, http10, stream)
    })
    .collect();
    let mut ws = connect(addr, "/ws");
    server.shutdown();
    let json = r#"{"type":"close","code":1001,"reason":"server shutdown"}"#;
    for (path, sse, http10, stream) in streams {
        let body = to_the_end(stream);
        let end = closing(sse, !http10, json);
        assert!(body.ends_with(&end), "{path} HTTP/1.0 {http10}: {body:?}");
    }
    match ws.read() {
        Ok(tungstenite::Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("a WebSocket's close frame: {other:?}"),
    }
    server.join();
}

#[test]
fn a_stream_past_the_servers_max_topics_is_refused_with_503_before_it_starts() {
    let mut app = app();
    app.hub.max_topics = 2;
    let server = start_app(|c| c.threads = 2, app);
    let addr = server.local_addr();
    let mut a = Stream::open(addr, "/sse/a", "", false);
    let mut b = Stream::open(addr, "/stream/b", "", false);
    assert_eq!(a.next_event().event, "@subscribed");
    assert_eq!(b.json()["type"], "subscribed");
    for path in ["/sse/c", "/stream/c", "/sse?topic=a&topic=c"] {
        let refused = Stream::open(addr, path, "", false);
        assert_eq!(refused.status(), 503, "{path}: {}", refused.head);
        let (status, body) = get(addr, path);
        assert_eq!(status, 503, "{path}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"error":"too many topics on the server"})
        );
    }
    // Topics that exist take no room: their streams open.
    let mut again = Stream::open(addr, "/sse?topic=a&topic=b", "", false);
    assert_eq!(again.status(), 200);
    assert_eq!(again.next_event().event, "@subscribed");
}

#[test]
fn a_stream_refused_a_new_topic_for_the_rate_ends_with_1013_to_retry() {
    // One new topic a second, ten seconds' worth at once: a stream of twelve new topics is
    // refused one (the bucket cannot refill two in the microseconds its subscribes take) and
    // ended with 1013, which a client retries with backoff (1008 would stop it).
    let mut app = app();
    app.hub.client_topic_rate = 1;
    let server = start_app(|c| c.threads = 1, app);
    let addr = server.local_addr();
    let topics: Vec<String> = (0..12).map(|n| format!("topic=new.{n}")).collect();
    let body = to_the_end(raw_stream(
        addr,
        &format!("/sse?{}", topics.join("&")),
        false,
    ));
    let json =
        r#"{"type":"close","code":1013,"reason":"too many new topics at once; try again later"}"#;
    assert!(body.ends_with(&closing(true, true, json)), "{body:?}");
}

/// `clarion serve` on `listen`, linked to `redis` (whose seq, epoch and history outlive it).
fn cluster_node(listen: &str, redis: &redis::Redis) -> Clarion {
    let url = redis.url();
    let args = [
        "--listen",
        listen,
        "--threads",
        "1",
        "--no-pin",
        "--redis",
        &url,
    ];
    let node = Clarion::start(&args, &[]);
    // A bound for a node that never links, not a timing assertion.
    let linked = (0..2000).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        get(node.addr, "/healthz").1.contains("cluster: up")
    });
    assert!(linked, "the node did not reach Redis: {:#?}", node.log);
    node
}

/// `POST /publish/<topic>` of `text` through `addr` (nginx, which keeps clients alive: this one
/// asks it not to).
fn publish_text(addr: SocketAddr, topic: &str, text: &str) {
    let headers = "Connection: close\r\nContent-Type: text/plain\r\n";
    let (status, body) = post(addr, &format!("/publish/{topic}"), headers, text.as_bytes());
    assert_eq!(status, 202, "{body}");
}

#[test]
fn through_nginx_with_its_defaults_a_stream_flows_unbuffered_and_resumes_across_a_restart() {
    let redis = redis::Redis::start();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut node = cluster_node(&listen, &redis);
    let other = cluster_node("127.0.0.1:0", &redis);
    let nginx = nginx::Nginx::start(node.addr);
    // The plain proxy drops `Upgrade`, so WebSockets cannot pass; the upgrading one lets them.
    assert_ne!(upgrade_status(nginx.plain, "/ws", ""), 101);
    assert_eq!(upgrade_status(nginx.upgrading, "/ws", ""), 101);

    let mut sse = Stream::open(nginx.plain, "/sse/news?heartbeat=5", "", false);
    assert_eq!(sse.status(), 200, "{}\n{}", sse.head, nginx.log());
    assert!(sse.head.contains("text/event-stream"), "{}", sse.head);
    let ack: Value = serde_json::from_str(&sse.next_event().data).unwrap();
    assert_eq!(ack["recovered"], false, "{ack}");
    // nginx would hold these bytes in its buffers (4 KiB and more) but for X-Accel-Buffering:
    // each event is read before the next is published, so a buffered one would never come.
    let comment = sse.next().expect("a heartbeat through nginx");
    assert_eq!(comment.event, ":", "{comment:?}");
    let mut got: Vec<Event> = Vec::new();
    for text in ["m1", "m2", "m3"] {
        publish_text(nginx.plain, "news", text);
        got.push(sse.next_event());
    }
    // The node dies; the stream ends; what is published meanwhile (on the other node) is kept
    // in Redis; the node comes back on the same address behind the same nginx.
    drop(node);
    assert_eq!(sse.next(), None, "the stream ends with its upstream");
    publish_text(other.addr, "news", "m4");
    publish_text(other.addr, "news", "m5");
    node = cluster_node(&listen, &redis);
    let last = got.last().unwrap().id.clone().expect("an id");
    let header = format!("Last-Event-ID: {last}\r\n");
    let mut back = Stream::open(nginx.plain, "/sse/news", &header, false);
    assert_eq!(back.status(), 200, "{}\n{}", back.head, nginx.log());
    let ack: Value = serde_json::from_str(&back.next_event().data).unwrap();
    assert_eq!(ack["recovered"], true, "{ack}");
    got.push(back.next_event());
    got.push(back.next_event());
    publish_text(nginx.plain, "news", "m6");
    got.push(back.next_event());
    // No gap, no duplicate: six messages in order, ids one apart in one epoch.
    let data: Vec<&str> = got.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, ["m1", "m2", "m3", "m4", "m5", "m6"]);
    let epoch = ack["epoch"].as_str().unwrap();
    let first: u64 = got[0]
        .id
        .as_deref()
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    for (i, event) in got.iter().enumerate() {
        assert_eq!(event.event, "news");
        assert_eq!(
            event.id.as_deref(),
            Some(&*format!("{epoch}:{}", first + i as u64))
        );
    }
    drop(node);
}

#[test]
fn a_resume_larger_than_a_slice_replays_in_order_with_ids_that_never_run_ahead() {
    // A small write cap and a replay larger than the sockets' buffers can hold: it waits for
    // the client to read, slice by slice.
    let small = AppConfig {
        max_queued_bytes: 256 << 10,
        hub: clarion_pubsub::HubConfig {
            history_size: 1000,
            history_max_bytes: 32 << 20,
            ..Default::default()
        },
        ..common::app()
    };
    let server = start_app(|c| c.threads = 1, small);
    let addr = server.local_addr();
    let epoch = publish(addr, "a", "text/plain", b"a1")["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    // 600 messages of 16 KiB: many replay slices (64 KiB each), all within history.
    let pad = "x".repeat(16 << 10);
    for n in 1..=600 {
        publish(addr, "b", "text/plain", format!("b{n} {pad}").as_bytes());
    }
    let last = format!("Last-Event-ID: {epoch}:0,0\r\n");
    let mut sse = Stream::open(addr, "/sse?topic=a&topic=b", &last, false);
    // While b is still replaying (the client has not read yet), a goes on live: its events
    // must carry b's position as far as the replay got, never b's latest seq.
    publish(addr, "a", "text/plain", b"a2");
    let (mut at_a, mut at_b) = (0, 0);
    while at_a < 2 || at_b < 600 {
        let event = sse.next_event();
        let id = event
            .id
            .clone()
            .unwrap_or_else(|| panic!("an id: {} {}", event.event, event.data));
        let positions = id.strip_prefix(&format!("{epoch}:")).expect("this epoch");
        let (a, b) = positions.split_once(',').unwrap();
        let (a, b): (u64, u64) = (a.parse().unwrap_or(0), b.parse().unwrap_or(0));
        match event.event.as_str() {
            "@subscribed" => continue,
            "a" => {
                at_a += 1;
                assert_eq!(event.data, format!("a{at_a}"));
            }
            "b" => {
                at_b += 1;
                let n = event.data.split(' ').next().unwrap();
                assert_eq!(n, format!("b{at_b}"), "b in order, none skipped");
            }
            other => panic!("unexpected {other}: {}", event.data),
        }
        assert_eq!((a, b), (at_a, at_b), "{id} after a{at_a}, b{at_b}");
    }
    assert!(total_stat(addr, "sliced_replays") >= 1);
    // Caught up: b is live again.
    publish(addr, "b", "text/plain", b"b601");
    let live = sse.next_event();
    assert_eq!((live.event.as_str(), live.data.as_str()), ("b", "b601"));
    assert_eq!(live.id, Some(format!("{epoch}:2,601")));
}
