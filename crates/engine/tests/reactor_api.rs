//! The engine's application interface, through a small broadcast handler: a request body
//! (the publish), a post to every reactor's mailbox, frames shared by reference with every
//! subscriber (WebSockets and streaming responses alike), backpressure reported to the handler,
//! request body limits, and what each callback is told. Clients are tungstenite and raw sockets; `CLARION_TEST_IO=epoll|uring`
//! picks the backend.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{eventually, io};

use clarion_engine::{
    Answer, ConnId, Ctx, Handler, Io, Local, Mailboxes, Push, RequestInfo, Response, Runtime,
    Shared, Stats,
};
use clarion_protocol::handshake::Request;
use clarion_protocol::{CloseCode, MessageKind, SendError, frame};
use tungstenite::{Message, WebSocket};

/// What a connection's callbacks were told, in order.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Request {
        id: ConnId,
        peer: Option<SocketAddr>,
        now: Instant,
    },
    Open(ConnId),
    Close {
        id: ConnId,
        code: Option<u16>,
        now: Instant,
    },
}

/// Subscribers on `/sub`; `POST /pub` broadcasts its body to all of them, on every reactor. A
/// subscriber's message `stall <ms>` holds its reactor that long (a handler busy for a while).
struct Broadcast {
    subscribers: Vec<ConnId>,
    mailboxes: Arc<Mailboxes<Arc<[u8]>>>,
    full: Arc<AtomicU64>,
    max_queued: usize,
    /// Copies of each post queued to every subscriber (a burst behind one turn).
    copies: usize,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Handler for Broadcast {
    type Conn = ();
    type Inbox = Arc<[u8]>;

    fn on_request<'r>(
        &mut self,
        request: &Request<'r>,
        body: &[u8],
        info: &RequestInfo,
    ) -> Answer<'r, ()> {
        self.seen.lock().unwrap().push(Seen::Request {
            id: info.id(),
            peer: info.peer(),
            now: info.now(),
        });
        match (request.method(), request.path()) {
            ("GET", "/sub") => Answer::Upgrade {
                conn: (),
                protocol: None,
            },
            ("GET", "/stream") => {
                let mut response = Response::new(200, "text/plain", "head\n");
                response.headers.push(("X-Stream", "yes".to_owned()));
                Answer::Stream { conn: (), response }
            }
            ("GET" | "HEAD", "/listener") => Answer::Respond(Response::new(
                200,
                "text/plain",
                format!("listener {}", info.listener()),
            )),
            ("GET", "/close") => {
                let mut response = Response::new(200, "text/plain", "bye");
                response.headers.push(("Connection", "close".to_owned()));
                Answer::Respond(response)
            }
            ("POST", "/pub") => {
                let frame: Arc<[u8]> =
                    frame::encode_frame(clarion_protocol::OpCode::Binary, body).into();
                for reactor in 0..self.mailboxes.len() {
                    self.mailboxes.post(reactor, frame.clone());
                }
                Answer::Respond(Response::new(202, "text/plain", body.len().to_string()))
            }
            _ => Answer::Respond(Response::new(404, "text/plain", "")),
        }
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, ()>) {
        self.seen.lock().unwrap().push(Seen::Open(ctx.id()));
        self.subscribers.push(ctx.id());
        if ctx.is_streaming() {
            ctx.send_bytes(b"opened\n").unwrap();
            assert_eq!(ctx.send(MessageKind::Text, b"x"), Err(SendError::NotOpen));
        }
    }

    fn on_message(&mut self, _ctx: &mut Ctx<'_, ()>, _kind: MessageKind, payload: &[u8]) {
        if let Some(ms) = payload.strip_prefix(b"stall ") {
            let ms = std::str::from_utf8(ms).unwrap().parse().unwrap();
            std::thread::sleep(Duration::from_millis(ms));
        }
    }

    fn on_close(&mut self, id: ConnId, _conn: &mut (), code: Option<CloseCode>, now: Instant) {
        let code = code.map(|c| c.0);
        self.seen
            .lock()
            .unwrap()
            .push(Seen::Close { id, code, now });
        self.subscribers.retain(|&s| s != id);
    }

    fn on_inbox(&mut self, local: &mut Local<'_, ()>, frame: Arc<[u8]>) {
        for _ in 0..self.copies {
            for &id in &self.subscribers {
                if local.send_shared(id, &frame, self.max_queued) == Push::Full {
                    self.full.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

struct Server {
    runtime: Runtime,
    full: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn start(threads: usize, max_queued: usize) -> Server {
    start_with(threads, max_queued, 1, |_| {})
}

fn start_copying(threads: usize, max_queued: usize, copies: usize) -> Server {
    start_with(threads, max_queued, copies, |_| {})
}

/// A server whose handler sends each published frame `copies` times, on a config `adjust`ed.
fn start_with(
    threads: usize,
    max_queued: usize,
    copies: usize,
    adjust: impl FnOnce(&mut clarion_engine::Config),
) -> Server {
    let mut config = clarion_engine::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads,
        pin_threads: false,
        io: io(),
        protocol: clarion_protocol::Config {
            max_body_size: 65536,
            ..Default::default()
        },
        ..clarion_engine::Config::default()
    };
    config.uring.peer_addresses = true;
    adjust(&mut config);
    let (full, seen) = (Arc::new(AtomicU64::new(0)), Arc::default());
    let (full2, seen2) = (full.clone(), Arc::clone(&seen));
    let runtime = Runtime::start(config, move |_, shared: &Shared<Arc<[u8]>>| {
        Ok(Broadcast {
            subscribers: Vec::new(),
            mailboxes: shared.mailboxes.clone(),
            full: full2.clone(),
            max_queued,
            copies,
            seen: Arc::clone(&seen2),
        })
    })
    .unwrap();
    if io() != Io::Auto {
        assert_eq!(
            runtime.io(),
            io(),
            "the backend under test is the one running"
        );
    }
    Server {
        runtime,
        full,
        seen,
    }
}

fn subscribe(addr: SocketAddr) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (ws, response) = tungstenite::client(format!("ws://{addr}/sub"), stream).unwrap();
    assert_eq!(response.status(), 101);
    ws
}

/// Sends a raw request on a new connection and returns the answer.
fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = connect(addr);
    stream.write_all(request).unwrap();
    read_answer(&mut stream, true)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads one HTTP answer: its head, then `Content-Length` bytes of body (`with_body`; not for
/// `HEAD`). Empty if the connection ends first.
fn read_answer(stream: &mut TcpStream, with_body: bool) -> String {
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => answer.push(byte[0]),
            _ => return String::from_utf8_lossy(&answer).into_owned(),
        }
    }
    let head = String::from_utf8_lossy(&answer).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut body = vec![0; if with_body { length } else { 0 }];
    stream.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

/// Whether the server closed `stream` (a read finds the end, not data).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    matches!(stream.read(&mut [0u8; 1]), Ok(0))
}

fn publish(addr: SocketAddr, body: &[u8]) -> String {
    let head = format!(
        "POST /pub HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    http(addr, &[head.as_bytes(), body].concat())
}

fn total(runtime: &Runtime, counter: impl Fn(&Stats) -> &AtomicU64) -> u64 {
    let stats = runtime.stats().iter();
    stats.map(|s| counter(s).load(Ordering::Relaxed)).sum()
}

#[test]
fn a_post_reaches_every_subscriber_on_every_reactor() {
    every_post_reaches_every_subscriber(start(2, 1 << 20), 3);
}

/// With a descriptor table per reactor, a reactor that wakes another writes to that one's
/// waker by number: the number must not be one of its own sockets (it was, for reactors that
/// copied their table before the others made their wakers: 8 bytes in a client's stream).
#[test]
fn with_private_fd_tables_a_wake_up_never_reaches_a_client() {
    let server = start_with(4, 1 << 20, 1, |config| config.private_fd_table = true);
    every_post_reaches_every_subscriber(server, 12);
}

/// 50 subscribers, `posts` posts (each from whichever reactor takes its connection): every
/// subscriber reads exactly the posts, in order, and nothing else.
fn every_post_reaches_every_subscriber(server: Server, posts: usize) {
    let addr = server.runtime.local_addr();
    let mut subscribers: Vec<_> = (0..50).map(|_| subscribe(addr)).collect();
    assert!(eventually(|| total(&server.runtime, |s| &s.upgrades) == 50));
    for n in 0..posts {
        let body = format!("message {n}");
        let answer = publish(addr, body.as_bytes());
        assert!(
            answer.starts_with("HTTP/1.1 202") && answer.ends_with(&body.len().to_string()),
            "{answer}"
        );
    }
    for ws in &mut subscribers {
        for n in 0..posts {
            let expected = Message::Binary(format!("message {n}").into_bytes().into());
            assert_eq!(ws.read().unwrap(), expected);
        }
    }
    assert!(
        eventually(|| total(&server.runtime, |s| &s.tx_queues_lent) == 0),
        "queues go back once written"
    );
}

/// Reads from `stream` until `wanted` bytes have come.
fn read_exactly(stream: &mut TcpStream, wanted: usize) -> Vec<u8> {
    let mut got = vec![0; wanted];
    stream.read_exact(&mut got).unwrap();
    got
}

#[test]
fn a_streaming_response_carries_its_head_its_own_bytes_and_shared_ones() {
    let server = start(1, 1 << 20);
    let addr = server.runtime.local_addr();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Bytes behind the request are not a second request: a stream reads nothing.
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\nGET /nothing HTTP/1.1\r\n\r\n")
        .unwrap();
    let head = "HTTP/1.1 200 OK\r\nX-Stream: yes\r\nContent-Type: text/plain\r\n\
                Connection: close\r\n\r\nhead\nopened\n";
    let got = read_exactly(&mut stream, head.len());
    assert_eq!(String::from_utf8_lossy(&got), head);
    assert!(eventually(|| server.seen.lock().unwrap().len() == 2));
    for n in 0..3 {
        let body = format!("message {n}");
        assert!(publish(addr, body.as_bytes()).starts_with("HTTP/1.1 202"));
        // The shared bytes, as the handler built them (a WebSocket frame here), unchanged.
        let shared = frame::encode_frame(clarion_protocol::OpCode::Binary, body.as_bytes());
        assert_eq!(read_exactly(&mut stream, shared.len()), shared);
    }
    // The client hangs up: the handler hears of it once, without a close code.
    drop(stream);
    assert!(eventually(|| server.seen.lock().unwrap().len() == 3 + 3));
    let seen = server.seen.lock().unwrap();
    let closes: Vec<_> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Close { code, .. } => Some(*code),
            _ => None,
        })
        .collect();
    assert_eq!(closes, [None]);
}

#[test]
fn everything_queued_for_a_subscriber_in_a_turn_leaves_in_one_write() {
    // 40 frames per subscriber from one post: more than the 16 slices one io_uring send took
    // before, fewer than the 64 of one write now.
    const SUBSCRIBERS: u64 = 20;
    const COPIES: usize = 40;
    let server = start_copying(1, 1 << 20, COPIES);
    let addr = server.runtime.local_addr();
    let mut subscribers: Vec<_> = (0..SUBSCRIBERS).map(|_| subscribe(addr)).collect();
    assert!(eventually(
        || total(&server.runtime, |s| &s.upgrades) == SUBSCRIBERS
    ));
    assert!(publish(addr, b"burst").starts_with("HTTP/1.1 202"));
    for ws in &mut subscribers {
        for _ in 0..COPIES {
            assert_eq!(
                ws.read().unwrap(),
                Message::Binary(b"burst".to_vec().into())
            );
        }
    }
    // One write per handshake answer (the subscribers' and the publish's), then one per
    // subscriber for all 40 frames.
    let expected = SUBSCRIBERS + 1 + SUBSCRIBERS;
    let writes = || total(&server.runtime, |s| &s.socket_writes);
    assert!(eventually(|| writes() >= expected), "{} writes", writes());
    assert_eq!(writes(), expected, "one write per subscriber for the burst");
}

#[test]
fn a_body_sent_after_100_continue_and_in_pieces() {
    let server = start(2, 1 << 20);
    let mut stream = TcpStream::connect(server.runtime.local_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(
            b"POST /pub HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
        )
        .unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"01234").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    stream.write_all(b"56789").unwrap();
    let answer = read_answer(&mut stream, true);
    assert!(
        answer.starts_with("HTTP/1.1 202") && answer.ends_with("10"),
        "{answer}"
    );
}

#[test]
fn bodies_over_the_limit_or_without_a_length_are_refused() {
    let server = start(2, 1 << 20);
    let addr = server.runtime.local_addr();
    let answer = http(
        addr,
        b"POST /pub HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let answer = http(addr, b"POST /pub HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");
    let answer = http(
        addr,
        b"POST /pub HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[test]
fn a_subscriber_that_does_not_read_hits_its_cap_and_others_are_unaffected() {
    let server = start(2, 256 * 1024);
    let addr = server.runtime.local_addr();
    let _stalled = subscribe(addr);
    let mut reader = subscribe(addr);
    assert!(eventually(|| total(&server.runtime, |s| &s.upgrades) == 2));
    let body = vec![b'x'; 60_000];
    for _ in 0..300 {
        publish(addr, &body);
        assert_eq!(reader.read().unwrap(), Message::Binary(body.clone().into()));
    }
    // 300 x 60 KB is far more than loopback socket buffers plus the stalled one's 256 KiB cap.
    assert!(
        server.full.load(Ordering::Relaxed) > 0,
        "the handler was told the stalled subscriber is full"
    );
}

#[test]
fn each_callback_is_told_its_connection_its_peer_and_the_time() {
    let server = start(1, 1 << 20);
    let addr = server.runtime.local_addr();
    let before = Instant::now();
    let mut ws = subscribe(addr);
    let client = ws.get_ref().local_addr().unwrap();
    assert!(eventually(|| server.seen.lock().unwrap().len() == 2));
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    assert!(eventually(|| server.seen.lock().unwrap().len() == 3));
    let after = Instant::now();
    let seen = server.seen.lock().unwrap();
    let Seen::Request { id, peer, now } = seen[0] else {
        panic!("{seen:?}");
    };
    assert_eq!(peer, Some(client), "the peer is the client's address");
    assert!(
        before <= now && now <= after,
        "`now` is the reactor's clock"
    );
    assert_eq!(
        seen[1],
        Seen::Open(id),
        "the upgrade keeps the request's id"
    );
    let Seen::Close {
        id: closed,
        code,
        now: closed_at,
    } = seen[2]
    else {
        panic!("{seen:?}");
    };
    assert_eq!((closed, code), (id, Some(1005)), "a close without a code");
    assert!(now <= closed_at && closed_at <= after);
}

/// Counts the sweep hooks; with `per_conn`, each open connection gets a "tick" at its first
/// sweep and a close with 4000 at its second.
struct Sweeper {
    per_conn: bool,
    sweeps: Arc<AtomicU64>,
    visits: Arc<AtomicU64>,
}

impl Handler for Sweeper {
    type Conn = u8;
    type Inbox = ();

    fn on_request<'r>(
        &mut self,
        request: &Request<'r>,
        _body: &[u8],
        _info: &RequestInfo,
    ) -> Answer<'r, u8> {
        if request.path() == "/stream" {
            let response = Response::new(200, "text/plain", "");
            return Answer::Stream { conn: 0, response };
        }
        Answer::Upgrade {
            conn: 0,
            protocol: None,
        }
    }

    fn on_message(&mut self, _ctx: &mut Ctx<'_, u8>, _kind: MessageKind, _payload: &[u8]) {}

    fn on_sweep(&mut self, _now: Instant) -> bool {
        self.sweeps.fetch_add(1, Ordering::Relaxed);
        self.per_conn
    }

    fn on_sweep_conn(&mut self, ctx: &mut Ctx<'_, u8>) {
        self.visits.fetch_add(1, Ordering::Relaxed);
        *ctx.conn() += 1;
        match (*ctx.conn(), ctx.is_streaming()) {
            (1, false) => ctx.send(MessageKind::Text, b"tick").unwrap(),
            (1, true) => ctx.send_bytes(b"tick\n").unwrap(),
            _ => ctx.close(CloseCode(4000), "swept"),
        }
    }
}

/// One reactor on a free loopback port, on the backend under test.
fn one_reactor() -> clarion_engine::Config {
    clarion_engine::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        pin_threads: false,
        io: io(),
        ..clarion_engine::Config::default()
    }
}

fn start_sweeper(per_conn: bool) -> (Runtime, Arc<AtomicU64>, Arc<AtomicU64>) {
    let (sweeps, visits) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (s, v) = (sweeps.clone(), visits.clone());
    let runtime = Runtime::start(one_reactor(), move |_, _: &Shared<()>| {
        Ok(Sweeper {
            per_conn,
            sweeps: s.clone(),
            visits: v.clone(),
        })
    })
    .unwrap();
    (runtime, sweeps, visits)
}

#[test]
fn the_sweep_hands_each_open_connection_to_the_handler_which_can_send_and_close() {
    let (server, sweeps, _) = start_sweeper(true);
    let mut ws = subscribe(server.local_addr());
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("tick"));
    match ws.read().unwrap() {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 4000),
        other => panic!("expected the sweep's close, got {other:?}"),
    }
    assert!(sweeps.load(Ordering::Relaxed) >= 2);
}

#[test]
fn the_sweep_visits_streaming_responses_too_and_a_close_ends_them() {
    let (server, _, visits) = start_sweeper(true);
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(b"GET /stream HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\ntick\n"), "{answer}");
    assert!(visits.load(Ordering::Relaxed) >= 2);
}

/// Records each sweep's steps: how many connections the handler was given at each `now`
/// (one `now` per reactor turn).
struct StepRecorder {
    sweeps: Arc<Mutex<Vec<Vec<usize>>>>,
    last_now: Option<Instant>,
}

impl Handler for StepRecorder {
    type Conn = ();
    type Inbox = ();

    fn on_request<'r>(
        &mut self,
        _request: &Request<'r>,
        _body: &[u8],
        _info: &RequestInfo,
    ) -> Answer<'r, ()> {
        let response = Response::new(200, "text/plain", "");
        Answer::Stream { conn: (), response }
    }

    fn on_message(&mut self, _ctx: &mut Ctx<'_, ()>, _kind: MessageKind, _payload: &[u8]) {}

    fn on_sweep(&mut self, _now: Instant) -> bool {
        self.sweeps.lock().unwrap().push(Vec::new());
        self.last_now = None;
        true
    }

    fn on_sweep_conn(&mut self, ctx: &mut Ctx<'_, ()>) {
        let mut sweeps = self.sweeps.lock().unwrap();
        let steps = sweeps.last_mut().unwrap();
        if self.last_now == Some(ctx.now()) {
            *steps.last_mut().unwrap() += 1;
        } else {
            steps.push(1);
            self.last_now = Some(ctx.now());
        }
    }
}

#[test]
fn a_large_table_is_swept_in_steps_of_at_most_1024_one_per_turn() {
    const STREAMS: usize = 2500;
    let sweeps = Arc::new(Mutex::new(Vec::new()));
    let recorded = sweeps.clone();
    let server = Runtime::start(one_reactor(), move |_, _: &Shared<()>| {
        Ok(StepRecorder {
            sweeps: recorded.clone(),
            last_now: None,
        })
    })
    .unwrap();
    let _streams: Vec<TcpStream> = (0..STREAMS)
        .map(|_| {
            let mut stream = connect(server.local_addr());
            stream
                .write_all(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            stream
        })
        .collect();
    assert!(eventually(
        || total(&server, |s| &s.http_requests) == STREAMS as u64
    ));
    // The first sweep to start with every stream open visits each once, over several turns.
    let seen = sweeps.lock().unwrap().len();
    assert!(eventually(|| sweeps.lock().unwrap().len() > seen + 1));
    let steps = sweeps.lock().unwrap()[seen].clone();
    assert_eq!(steps.iter().sum::<usize>(), STREAMS, "{steps:?}");
    assert!(
        steps.len() >= 3 && steps.iter().all(|&n| n <= 1024),
        "{steps:?}"
    );
}

#[test]
fn a_handler_that_declines_the_sweep_is_not_called_per_connection() {
    let (server, sweeps, visits) = start_sweeper(false);
    let _ws = subscribe(server.local_addr());
    assert!(eventually(|| total(&server, |s| &s.upgrades) == 1));
    let seen = sweeps.load(Ordering::Relaxed);
    assert!(eventually(|| sweeps.load(Ordering::Relaxed) >= seen + 2));
    assert_eq!(visits.load(Ordering::Relaxed), 0);
}

#[test]
fn every_reactor_serves_every_listener_and_tells_the_handler_which() {
    let server = start_with(2, 1 << 20, 1, |config| {
        config.also_listen = vec!["127.0.0.1:0".parse().unwrap(); 2];
    });
    let addrs = server.runtime.local_addrs().to_vec();
    assert_eq!(addrs.len(), 3);
    assert_eq!(addrs[0], server.runtime.local_addr());
    for (index, &addr) in addrs.iter().enumerate() {
        // Enough connections that both reactors take some (SO_REUSEPORT hashes them).
        for _ in 0..8 {
            let answer = http(addr, b"GET /listener HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(answer.ends_with(&format!("listener {index}")), "{answer}");
        }
    }
    // WebSockets open on any listener, and a broadcast reaches them all.
    let mut subscribers: Vec<_> = addrs.iter().map(|&addr| subscribe(addr)).collect();
    assert!(eventually(|| total(&server.runtime, |s| &s.upgrades) == 3));
    publish(addrs[2], b"everywhere");
    for ws in &mut subscribers {
        assert_eq!(
            ws.read().unwrap(),
            Message::Binary(b"everywhere".to_vec().into())
        );
    }
    // Shutdown closes every listener.
    server.runtime.shutdown();
    server.runtime.join();
    for addr in addrs {
        assert!(TcpStream::connect(addr).is_err(), "{addr} still accepts");
    }
}

#[test]
fn a_kept_connection_answers_requests_in_order_pipelined_or_not() {
    let server = start(1, 1 << 20);
    let addr = server.runtime.local_addr();
    let mut stream = connect(addr);
    let get = b"GET /listener HTTP/1.1\r\nHost: x\r\n\r\n";
    for _ in 0..3 {
        stream.write_all(get).unwrap();
        let answer = read_answer(&mut stream, true);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            !answer.contains("Connection:"),
            "HTTP/1.1 keeps by default: {answer}"
        );
    }
    // Kept and idle, it holds no buffer and no write queue.
    assert!(eventually(|| {
        total(&server.runtime, |s| &s.rx_buffers_lent) == 0
            && total(&server.runtime, |s| &s.tx_queues_lent) == 0
            && total(&server.runtime, |s| &s.connections) == 1
    }));
    // Pipelined: a POST with a body, a HEAD (its length, no body), a GET; in one write.
    let pipelined = [
        &b"POST /pub HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"[..],
        b"HEAD /listener HTTP/1.1\r\nHost: x\r\n\r\n",
        get,
    ]
    .concat();
    stream.write_all(&pipelined).unwrap();
    let post = read_answer(&mut stream, true);
    assert!(
        post.starts_with("HTTP/1.1 202") && post.ends_with("\r\n\r\n5"),
        "{post}"
    );
    let head = read_answer(&mut stream, false);
    assert!(
        head.starts_with("HTTP/1.1 200") && head.contains("Content-Length: 10"),
        "{head}"
    );
    let third = read_answer(&mut stream, true);
    assert!(third.ends_with("\r\n\r\nlistener 0"), "{third}");
    // A request read in pieces, with the next one right behind it in the last piece.
    stream.write_all(b"GET /listener HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    stream
        .write_all(b"st: x\r\n\r\nGET /close HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(read_answer(&mut stream, true).ends_with("listener 0"));
    // The handler said `Connection: close`: said once, and done.
    let last = read_answer(&mut stream, true);
    assert_eq!(last.matches("Connection:").count(), 1, "{last}");
    assert!(
        last.contains("Connection: close") && last.ends_with("bye"),
        "{last}"
    );
    assert!(closed_by_server(&mut stream));
    // The same connection can also upgrade after plain answers.
    let mut stream = connect(addr);
    stream.write_all(get).unwrap();
    read_answer(&mut stream, true);
    let (mut ws, response) = tungstenite::client(format!("ws://{addr}/sub"), stream).unwrap();
    assert_eq!(response.status(), 101);
    publish(addr, b"kept");
    assert_eq!(ws.read().unwrap(), Message::Binary(b"kept".to_vec().into()));
}

#[test]
fn keep_alive_follows_the_client_and_the_limits() {
    let server = start_with(1, 1 << 20, 1, |config| {
        config.keep_alive_requests = 2;
        config.protocol.keep_alive_timeout = Duration::from_millis(300);
    });
    let addr = server.runtime.local_addr();
    let ask = |request: &[u8]| {
        let mut stream = connect(addr);
        stream.write_all(request).unwrap();
        (read_answer(&mut stream, true), stream)
    };
    // HTTP/1.1 with `Connection: close`, and HTTP/1.0: closed after the answer.
    for request in [
        &b"GET /listener HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"GET /listener HTTP/1.0\r\n\r\n",
    ] {
        let (answer, mut stream) = ask(request);
        assert!(answer.contains("Connection: close"), "{answer}");
        assert!(closed_by_server(&mut stream));
    }
    // HTTP/1.0 asking for keep-alive is told so; its second request is the last of two.
    let request = b"GET /listener HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    let (answer, mut stream) = ask(request);
    assert!(answer.contains("Connection: keep-alive"), "{answer}");
    stream.write_all(request).unwrap();
    let answer = read_answer(&mut stream, true);
    assert!(answer.contains("Connection: close"), "the cap: {answer}");
    assert!(closed_by_server(&mut stream));
    // A kept connection that stays quiet is closed after keep_alive_timeout.
    let (answer, mut stream) = ask(b"GET /listener HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!answer.contains("Connection:"), "{answer}");
    assert!(closed_by_server(&mut stream), "closed when idle");
}

/// A client frame (FIN, masked with a zero key, so the payload goes as it is) of `opcode`.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    [
        &[0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0],
        payload,
    ]
    .concat()
}

/// A server frame's opcode and payload (unmasked, under 126 bytes, as pings and closes are).
fn read_server_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).unwrap();
    let mut payload = vec![0; usize::from(head[1] & 0x7f)];
    stream.read_exact(&mut payload).unwrap();
    (head[0] & 0x0f, payload)
}

#[test]
fn a_reactor_held_up_does_not_time_out_a_pong_it_has_not_read_yet() {
    // Peer A answers its ping at once, but another connection's message holds the reactor (a
    // handler busy for 600 ms) until well past A's 100 ms pong deadline: judged against the
    // clock, A would be closed for a pong that waited in its socket.
    let server = start_with(1, 1 << 20, 1, |config| {
        config.protocol.ping_interval = Some(Duration::from_millis(300));
        config.protocol.pong_timeout = Duration::from_millis(100);
    });
    let addr = server.runtime.local_addr();
    let (mut a, mut b) = (subscribe(addr), subscribe(addr));
    assert_eq!(read_server_frame(a.get_mut()), (0x9, vec![]), "a ping");
    b.get_mut()
        .write_all(&client_frame(0x1, b"stall 600"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    a.get_mut().write_all(&client_frame(0xA, b"")).unwrap();
    // Two more ping rounds on A, answered at once: no close among them. (B, which answers
    // nothing more, is closed by its own pong timeout meanwhile.)
    for _ in 0..2 {
        let (opcode, payload) = read_server_frame(a.get_mut());
        assert_eq!(
            (opcode, String::from_utf8_lossy(&payload).into_owned()),
            (0x9, String::new()),
            "a ping, not a close"
        );
        a.get_mut().write_all(&client_frame(0xA, b"")).unwrap();
    }
}

/// A reactor whose handler cannot be made (an error, or a panic in the factory) fails the start,
/// and the reactors that did start are stopped: the start returns rather than waiting on the
/// thread that is gone, with or without private fd tables (where the threads wait for each
/// other's backends).
#[test]
fn a_reactor_that_cannot_start_fails_the_start_without_hanging() {
    for private_fd_table in [false, true] {
        for panics in [false, true] {
            let config = clarion_engine::Config {
                listen: "127.0.0.1:0".parse().unwrap(),
                threads: 3,
                pin_threads: false,
                io: io(),
                private_fd_table,
                ..clarion_engine::Config::default()
            };
            let (done, result) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let started = Runtime::start(config, move |index, _: &Shared<()>| {
                    if index == 1 {
                        assert!(
                            !panics,
                            "the handler factory of reactor 1 panics (on purpose)"
                        );
                        return Err(std::io::Error::other("reactor 1 has no handler"));
                    }
                    Ok(Sweeper {
                        per_conn: false,
                        sweeps: Arc::default(),
                        visits: Arc::default(),
                    })
                });
                let _ = done.send(started.err().map(|e| e.to_string()));
            });
            let error = result
                .recv_timeout(Duration::from_secs(60))
                .expect("the start returns");
            let expected = if panics {
                "died while starting"
            } else {
                "has no handler"
            };
            assert!(
                error.as_deref().is_some_and(|e| e.contains(expected)),
                "private fd tables {private_fd_table}, panics {panics}: {error:?}"
            );
        }
    }
}
