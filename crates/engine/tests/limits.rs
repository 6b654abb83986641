//! What the engine bounds by itself, over real sockets: a connection over its write cap is not
//! read (and is dropped past the write timeout), long output goes out in slices as the queue
//! drains (`on_writable`), messages and bytes per second, connections and handshakes at accept,
//! the handshake deadline, and the reactor's budget for partial messages. Every limit reaches
//! the handler's `on_limit`. `CLARION_TEST_IO=epoll|uring` picks the backend.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{eventually, io};

use clarion_engine::{
    Answer, Ctx, Handler, Io, Limit, LimitHit, Limits, RequestInfo, Response, Runtime, Shared,
    Stats,
};
use clarion_protocol::handshake::Request;
use clarion_protocol::{MessageKind, frame};

/// Bytes of each frame `/stream` sends.
const SLICE: usize = 16 * 1024;

/// A connection's route, and for `/stream` the frames it still has to send.
#[derive(Debug)]
enum Route {
    Echo,
    Stream { sent: u32, total: u32 },
}

/// What the handler saw of a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hit {
    limit: Limit,
    opened: bool,
    peer: Option<SocketAddr>,
}

/// `/echo` echoes; `/stream` answers a message "N" with N frames of [`SLICE`] bytes, numbered,
/// sent only while the queue has room and resumed in `on_writable`.
struct Limited {
    hits: Arc<Mutex<Vec<Hit>>>,
    /// The most bytes `/stream` saw queued right after a send.
    most_queued: Arc<AtomicUsize>,
}

impl Limited {
    fn pump(&mut self, ctx: &mut Ctx<'_, Route>) {
        loop {
            let room = ctx.has_room();
            let Route::Stream { sent, total } = ctx.conn() else {
                return;
            };
            if *sent == *total {
                return;
            }
            if !room {
                return ctx.notify_writable();
            }
            let n = *sent;
            *sent += 1;
            let mut payload = vec![(n % 251) as u8; SLICE];
            payload[..4].copy_from_slice(&n.to_be_bytes());
            ctx.send(MessageKind::Binary, &payload).unwrap();
            self.most_queued.fetch_max(ctx.queued(), Ordering::Relaxed);
        }
    }
}

impl Handler for Limited {
    type Conn = Route;
    type Inbox = ();

    fn on_request<'r>(
        &mut self,
        request: &Request<'r>,
        _body: &[u8],
        _info: &RequestInfo,
    ) -> Answer<'r, Route> {
        match request.path() {
            "/echo" => Answer::Upgrade {
                conn: Route::Echo,
                protocol: None,
            },
            "/stream" => Answer::Upgrade {
                conn: Route::Stream { sent: 0, total: 0 },
                protocol: None,
            },
            _ => Answer::Respond(Response::new(404, "text/plain", "")),
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Route>, kind: MessageKind, payload: &[u8]) {
        match ctx.conn() {
            Route::Echo => {
                let _ = ctx.send(kind, payload);
            }
            Route::Stream { total, .. } => {
                *total = std::str::from_utf8(payload).unwrap().parse().unwrap();
                self.pump(ctx);
            }
        }
    }

    fn on_writable(&mut self, ctx: &mut Ctx<'_, Route>) {
        self.pump(ctx);
    }

    fn on_limit(&mut self, hit: &LimitHit<'_, Route>) {
        self.hits.lock().unwrap().push(Hit {
            limit: hit.limit,
            opened: hit.conn.is_some(),
            peer: hit.peer,
        });
    }
}

struct Server {
    runtime: Runtime,
    hits: Arc<Mutex<Vec<Hit>>>,
    most_queued: Arc<AtomicUsize>,
}

impl Server {
    fn addr(&self) -> SocketAddr {
        self.runtime.local_addr()
    }

    fn total(&self, counter: impl Fn(&Stats) -> &AtomicU64) -> u64 {
        let stats = self.runtime.stats().iter();
        stats.map(|s| counter(s).load(Ordering::Relaxed)).sum()
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

/// One reactor, after `adjust`.
fn start(adjust: impl FnOnce(&mut clarion_engine::Config)) -> Server {
    let mut config = clarion_engine::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        pin_threads: false,
        io: io(),
        ..clarion_engine::Config::default()
    };
    config.uring.peer_addresses = true;
    adjust(&mut config);
    let hits = Arc::new(Mutex::new(Vec::new()));
    let most_queued = Arc::new(AtomicUsize::new(0));
    let (h, q) = (hits.clone(), most_queued.clone());
    let runtime = Runtime::start(config, move |_, _: &Shared<()>| {
        Ok(Limited {
            hits: h.clone(),
            most_queued: q.clone(),
        })
    })
    .unwrap();
    Server {
        runtime,
        hits,
        most_queued,
    }
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// A raw connection upgraded on `path`, its 101 head consumed.
fn upgraded(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = tcp(addr);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    stream
}

/// A masked client frame.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut header = [0u8; frame::MAX_HEADER_LEN];
    let op = match opcode {
        0 => clarion_protocol::OpCode::Continuation,
        1 => clarion_protocol::OpCode::Text,
        2 => clarion_protocol::OpCode::Binary,
        9 => clarion_protocol::OpCode::Ping,
        _ => unreachable!(),
    };
    let key = [1, 2, 3, 4];
    let h = frame::FrameHeader {
        fin,
        rsv: 0,
        opcode: op,
        mask: Some(key),
        payload_len: payload.len() as u64,
    };
    let n = frame::encode_header(&mut header, &h);
    let mut out = header[..n].to_vec();
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// Reads one server frame: (opcode, payload).
fn read_frame(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head)?;
    let len = match head[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b)?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b)?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok((head[0] & 0x0F, payload))
}

/// The close code of the next close frame (frames before it skipped).
fn close_code(stream: &mut TcpStream) -> u16 {
    loop {
        let (opcode, payload) = read_frame(stream).expect("a close frame");
        if opcode == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

/// Writes `frame` over and over without reading, until `limit` bytes went out or the socket
/// took nothing for two seconds; the bytes it took.
fn flood_without_reading(stream: &TcpStream, frame: &[u8], limit: usize) -> usize {
    let mut stream = stream.try_clone().unwrap();
    stream.set_nonblocking(true).unwrap();
    let (mut sent, mut offset) = (0, 0);
    let mut progress = Instant::now();
    while sent < limit && progress.elapsed() < Duration::from_secs(2) {
        match stream.write(&frame[offset..]) {
            Ok(n) => {
                sent += n;
                offset = (offset + n) % frame.len();
                progress = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    }
    stream.set_nonblocking(false).unwrap();
    sent
}

const CAP: usize = 64 * 1024;

fn capped(config: &mut clarion_engine::Config) {
    config.limits.max_queued_bytes = CAP;
}

#[test]
fn a_client_that_sends_and_never_reads_is_not_read_past_its_cap_then_is_dropped() {
    // Well past the flood's own 2 s without progress, so that the pause is seen before the drop
    // even on a busy machine (a 2 s timeout raced it: the flood met the reset).
    let server = start(|c| {
        capped(c);
        c.write_timeout = Duration::from_secs(8);
    });
    let stream = upgraded(server.addr(), "/echo");
    // 64 MiB of echo requests: a server that kept reading would queue them all as echoes.
    let message = client_frame(true, 2, &[7u8; 60_000]);
    let sent = flood_without_reading(&stream, &message, 64 << 20);
    assert!(
        sent < 24 << 20,
        "the server stopped reading: {sent} bytes were taken, about the socket buffers' worth"
    );
    assert!(eventually(|| server.total(|s| &s.paused) == 1));
    // It never drains: past the write timeout the connection is dropped, and the handler
    // hears of it with the connection's state and, on epoll, its peer.
    assert!(eventually(|| server.total(|s| &s.write_timeouts) == 1));
    let hits = server.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!((hits[0].limit, hits[0].opened), (Limit::WriteTimeout, true));
    if server.runtime.io() == Io::Epoll {
        assert_eq!(hits[0].peer, Some(stream.local_addr().unwrap()));
    }
    assert!(eventually(|| server.total(|s| &s.paused) == 0));
    assert!(eventually(|| server.total(|s| &s.connections) == 0));
}

#[test]
fn a_client_that_reads_late_gets_every_echo_in_order() {
    let server = start(capped);
    let mut stream = upgraded(server.addr(), "/echo");
    let writer = stream.try_clone().unwrap();
    // 8 MiB of echoes through a 64 KiB cap: the server pauses and resumes many times, parking
    // what it read past the cap and feeding it first when it resumes.
    let sender = std::thread::spawn(move || {
        let mut writer = writer;
        for i in 0..128u32 {
            let mut payload = vec![(i % 251) as u8; 65_536];
            payload[..4].copy_from_slice(&i.to_be_bytes());
            writer.write_all(&client_frame(true, 2, &payload)).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..128u32 {
        let (opcode, payload) = read_frame(&mut stream).unwrap();
        assert_eq!(opcode, 2);
        assert_eq!(payload.len(), 65_536);
        assert_eq!(payload[..4], i.to_be_bytes(), "in order");
        assert!(payload[4..].iter().all(|&b| b == (i % 251) as u8));
    }
    sender.join().unwrap();
    assert!(eventually(|| server.total(|s| &s.tx_queues_lent) == 0));
    assert_eq!(server.total(|s| &s.partial_bytes), 0, "nothing left parked");
    assert!(server.hits().is_empty());
}

#[test]
fn long_output_goes_out_in_slices_as_the_queue_drains() {
    let server = start(capped);
    let mut stream = upgraded(server.addr(), "/stream");
    // 4 MiB for a client that reads slowly at first: the handler is told each time the queue
    // is down to half the cap, and never has more than the cap and a slice waiting.
    stream.write_all(&client_frame(true, 1, b"256")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for n in 0..256u32 {
        let (opcode, payload) = read_frame(&mut stream).unwrap();
        assert_eq!((opcode, payload.len()), (2, SLICE));
        assert_eq!(payload[..4], n.to_be_bytes(), "in order");
    }
    let most = server.most_queued.load(Ordering::Relaxed);
    assert!(
        most <= CAP / 2 + SLICE + 16,
        "at most the low mark and a slice: {most}"
    );
    assert!(eventually(|| server.total(|s| &s.tx_queues_lent) == 0));
}

#[test]
fn a_flood_of_messages_or_bytes_closes_with_1008_rate_limit() {
    let server = start(|c| {
        c.limits.message_rate = 10;
        c.limits.message_burst = 20;
        c.limits.byte_rate = 100_000;
        c.limits.byte_burst = 200_000;
    });
    // Within the burst: answered.
    let mut calm = upgraded(server.addr(), "/echo");
    for _ in 0..10 {
        calm.write_all(&client_frame(true, 1, b"hi")).unwrap();
        assert_eq!(read_frame(&mut calm).unwrap(), (1, b"hi".to_vec()));
    }
    // Pings count as messages: 100 at once is past the burst.
    let mut pinger = upgraded(server.addr(), "/echo");
    let pings: Vec<u8> = (0..100).flat_map(|_| client_frame(true, 9, b"")).collect();
    pinger.write_all(&pings).unwrap();
    assert_eq!(close_code(&mut pinger), 1008);
    // Bytes: 300 KB in a few messages is past the byte burst.
    let mut bulk = upgraded(server.addr(), "/echo");
    let big = client_frame(true, 2, &[0u8; 100_000]);
    for _ in 0..3 {
        if bulk.write_all(&big).is_err() {
            break;
        }
    }
    assert_eq!(close_code(&mut bulk), 1008);
    assert!(eventually(|| server.total(|s| &s.rate_limited) == 2));
    let hits = server.hits();
    assert!(
        hits.iter().all(|h| h.limit == Limit::Rate && h.opened),
        "{hits:?}"
    );
    // The calm connection was not affected.
    calm.write_all(&client_frame(true, 1, b"still here"))
        .unwrap();
    assert_eq!(read_frame(&mut calm).unwrap(), (1, b"still here".to_vec()));
}

#[test]
fn connections_past_the_process_cap_are_closed_at_accept_until_it_is_raised() {
    let server = start(|c| c.limits.max_connections = 2);
    let addr = server.addr();
    let _a = upgraded(addr, "/echo");
    let _b = upgraded(addr, "/echo");
    let mut refused = tcp(addr);
    let _ = refused.write_all(b"GET /echo HTTP/1.1\r\n\r\n");
    let mut buf = [0u8; 16];
    assert!(
        matches!(refused.read(&mut buf), Ok(0) | Err(_)),
        "closed without an answer"
    );
    assert!(eventually(|| server.total(|s| &s.refused_connections) == 1));
    assert_eq!(
        server.hits()[0],
        Hit {
            limit: Limit::Connections,
            opened: false,
            peer: Some(refused.local_addr().unwrap()),
        }
    );
    // Raised while the server runs: admitted.
    server.runtime.limits().store(&Limits {
        max_connections: 3,
        ..server.runtime.limits().load()
    });
    let _c = upgraded(addr, "/echo");
    assert_eq!(server.runtime.limits().connections(), 3);
}

#[test]
fn silent_and_drip_fed_handshakes_are_capped_and_closed_at_the_deadline() {
    let server = start(|c| {
        c.max_handshakes_per_reactor = 2;
        c.protocol.handshake_timeout = Duration::from_secs(1);
    });
    let addr = server.addr();
    let silent = tcp(addr);
    let mut drip = tcp(addr);
    assert!(eventually(|| server.total(|s| &s.handshaking) == 2));
    // A third connection while two are mid-handshake: closed at accept.
    let mut third = tcp(addr);
    let mut buf = [0u8; 16];
    assert!(matches!(third.read(&mut buf), Ok(0) | Err(_)));
    assert!(eventually(|| server.total(|s| &s.refused_handshakes) == 1));
    // One header byte every 100 ms never completes: the deadline closes it, and the silent one.
    let dripper = std::thread::spawn(move || {
        for byte in
            b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: 1234567890123456789012345678901234567890\r\n"
        {
            if drip.write_all(&[*byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut buf = [0u8; 16];
        matches!(drip.read(&mut buf), Ok(0) | Err(_))
    });
    assert!(eventually(|| server.total(|s| &s.handshake_timeouts) == 2));
    assert!(
        dripper.join().unwrap(),
        "the drip-fed connection was closed"
    );
    drop(silent);
    assert!(eventually(|| server.total(|s| &s.handshaking) == 0));
    let hits = server.hits();
    let timeouts = hits.iter().filter(|h| h.limit == Limit::HandshakeTimeout);
    assert_eq!(timeouts.count(), 2, "{hits:?}");
    assert!(hits.iter().all(|h| !h.opened && h.peer.is_some()));
    // Slots are free again.
    let _ok = upgraded(addr, "/echo");
}

#[test]
fn partial_messages_past_the_reactor_budget_close_with_1013() {
    let server = start(|c| {
        c.max_partial_bytes_per_reactor = 256 * 1024;
        c.protocol.max_message_size = 1 << 20;
        c.protocol.max_frame_size = 1 << 20;
    });
    let addr = server.addr();
    // Fragments that never finish, 100 KB each: the third connection takes the reactor past
    // its budget. Each connection on its own is within max_message_size.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = upgraded(addr, "/echo");
        stream
            .write_all(&client_frame(false, 2, &[1u8; 100_000]))
            .unwrap();
        held.push(stream);
        let before = held.len() as u64 * 100_000;
        assert!(eventually(|| server.total(|s| &s.partial_bytes) >= before));
    }
    let mut over = upgraded(addr, "/echo");
    over.write_all(&client_frame(false, 2, &[1u8; 100_000]))
        .unwrap();
    assert_eq!(close_code(&mut over), 1013);
    assert_eq!(server.total(|s| &s.partial_budget_closes), 1);
    assert!(server.total(|s| &s.partial_bytes) <= 256 * 1024);
    // Those within the budget go on: their messages complete.
    for stream in &mut held {
        stream.write_all(&client_frame(true, 0, b"end")).unwrap();
        let (opcode, payload) = read_frame(stream).unwrap();
        assert_eq!((opcode, payload.len()), (2, 100_003));
    }
    assert!(eventually(|| server.total(|s| &s.partial_bytes) == 0));
    assert_eq!(server.hits()[0].limit, Limit::PartialBudget);
}
