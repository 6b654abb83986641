//! The engine's application interface, through a small broadcast handler: a request body
//! (the publish), a post to every reactor's mailbox, frames shared by reference with every
//! subscriber, backpressure reported to the handler, and request body limits.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clarion_engine::{
    self, Answer, ConnId, Ctx, Handler, Local, Mailboxes, Push, Response, Runtime, Shared,
};
use clarion_protocol::handshake::Request;
use clarion_protocol::{MessageKind, frame};
use common::*;

/// Subscribers on `/sub`; `POST /pub` broadcasts its body to all of them, on every reactor.
struct Broadcast {
    subscribers: Vec<ConnId>,
    mailboxes: Arc<Mailboxes<Arc<[u8]>>>,
    full: Arc<AtomicU64>,
    max_queued: usize,
}

impl Handler for Broadcast {
    type Conn = ();
    type Inbox = Arc<[u8]>;

    fn on_request<'r>(
        &mut self,
        request: &Request<'r>,
        body: &[u8],
        _peer: Option<SocketAddr>,
    ) -> Answer<'r, ()> {
        match (request.method(), request.path()) {
            ("GET", "/sub") => Answer::Upgrade {
                conn: (),
                protocol: None,
            },
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
        self.subscribers.push(ctx.id());
    }

    fn on_message(&mut self, _ctx: &mut Ctx<'_, ()>, _kind: MessageKind, _payload: &[u8]) {}

    fn on_close(&mut self, id: ConnId, _conn: &mut (), _code: Option<clarion_protocol::CloseCode>) {
        self.subscribers.retain(|&s| s != id);
    }

    fn on_inbox(&mut self, local: &mut Local<'_, ()>, frame: Arc<[u8]>) {
        for &id in &self.subscribers {
            if local.send_shared(id, &frame, self.max_queued) == Push::Full {
                self.full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn start_broadcast(max_queued: usize, full: Arc<AtomicU64>) -> Runtime {
    let config = clarion_engine::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 2,
        pin_threads: false,
        io: io(),
        protocol: clarion_protocol::Config {
            max_body_size: 65536,
            ..Default::default()
        },
        ..clarion_engine::Config::default()
    };
    Runtime::start(config, move |_, shared: &Shared<Arc<[u8]>>| {
        Ok(Broadcast {
            subscribers: Vec::new(),
            mailboxes: shared.mailboxes.clone(),
            full: full.clone(),
            max_queued,
        })
    })
    .unwrap()
}

fn subscribe(addr: SocketAddr) -> std::net::TcpStream {
    let mut stream = tcp(addr);
    stream.write_all(&upgrade_request("/sub")).unwrap();
    assert!(read_head(&mut stream).starts_with("HTTP/1.1 101"));
    stream
}

#[test]
fn a_post_reaches_every_subscriber_on_every_reactor() {
    let server = start_broadcast(1 << 20, Arc::default());
    let addr = server.local_addr();
    let mut subscribers: Vec<_> = (0..50).map(|_| subscribe(addr)).collect();
    assert!(eventually(|| total(&server, |s| &s.upgrades) == 50));
    for n in 0..3 {
        let body = format!("message {n}");
        let answer = http(
            addr,
            format!(
                "POST /pub HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        assert!(
            answer.starts_with("HTTP/1.1 202") && answer.ends_with(&body.len().to_string()),
            "{answer}"
        );
    }
    for stream in &mut subscribers {
        for n in 0..3 {
            assert_eq!(
                read_frame(stream).unwrap(),
                (true, 0x2, format!("message {n}").into_bytes())
            );
        }
    }
    assert!(
        eventually(|| total(&server, |s| &s.tx_queues_lent) == 0),
        "queues go back once written"
    );
}

#[test]
fn a_body_sent_after_100_continue_and_in_pieces() {
    let server = start_broadcast(1 << 20, Arc::default());
    let mut stream = tcp(server.local_addr());
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
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 202") && answer.ends_with("10"),
        "{answer}"
    );
}

#[test]
fn bodies_over_the_limit_or_without_a_length_are_refused() {
    let server = start_broadcast(1 << 20, Arc::default());
    let addr = server.local_addr();
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
    let full = Arc::new(AtomicU64::new(0));
    let server = start_broadcast(256 * 1024, full.clone());
    let addr = server.local_addr();
    let _stalled = subscribe(addr);
    let mut reader = subscribe(addr);
    assert!(eventually(|| total(&server, |s| &s.upgrades) == 2));
    let body = vec![b'x'; 60_000];
    let request = [
        format!(
            "POST /pub HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes(),
        body.clone(),
    ]
    .concat();
    for _ in 0..300 {
        http(addr, &request);
        let (_, _, payload) = read_frame(&mut reader).unwrap();
        assert_eq!(payload, body);
    }
    // 300 x 60 KB is far more than loopback socket buffers plus the stalled one's 256 KiB cap.
    assert!(
        full.load(Ordering::Relaxed) > 0,
        "the handler was told the stalled subscriber is full"
    );
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
        _request: &Request<'r>,
        _body: &[u8],
        _peer: Option<SocketAddr>,
    ) -> Answer<'r, u8> {
        Answer::Upgrade {
            conn: 0,
            protocol: None,
        }
    }

    fn on_message(&mut self, _ctx: &mut Ctx<'_, u8>, _kind: MessageKind, _payload: &[u8]) {}

    fn on_sweep(&mut self, _now: std::time::Instant) -> bool {
        self.sweeps.fetch_add(1, Ordering::Relaxed);
        self.per_conn
    }

    fn on_sweep_conn(&mut self, ctx: &mut Ctx<'_, u8>) {
        self.visits.fetch_add(1, Ordering::Relaxed);
        *ctx.conn() += 1;
        match *ctx.conn() {
            1 => ctx.send(MessageKind::Text, b"tick").unwrap(),
            _ => ctx.close(clarion_protocol::CloseCode(4000), "swept"),
        }
    }
}

fn start_sweeper(per_conn: bool) -> (Runtime, Arc<AtomicU64>, Arc<AtomicU64>) {
    let (sweeps, visits) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let config = clarion_engine::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        pin_threads: false,
        io: io(),
        ..clarion_engine::Config::default()
    };
    let (s, v) = (sweeps.clone(), visits.clone());
    let runtime = Runtime::start(config, move |_, _: &Shared<()>| {
        Ok(Sweeper {
            per_conn,
            sweeps: s.clone(),
            visits: v.clone(),
        })
    })
    .unwrap();
    (runtime, sweeps, visits)
}

/// Waits up to 30 s (sweeps are a second apart; a loaded machine may stretch them).
fn within_30s(mut condition: impl FnMut() -> bool) -> bool {
    (0..3000).any(|_| {
        condition() || {
            std::thread::sleep(Duration::from_millis(10));
            false
        }
    })
}

#[test]
fn the_sweep_hands_each_open_connection_to_the_handler_which_can_send_and_close() {
    let (server, sweeps, _) = start_sweeper(true);
    let mut stream = subscribe(server.local_addr());
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (_, opcode, payload) = read_frame(&mut stream).unwrap();
    assert_eq!((opcode, &payload[..]), (0x1, &b"tick"[..]));
    assert_eq!(read_close_code(&mut stream), 4000);
    assert!(sweeps.load(Ordering::Relaxed) >= 2);
}

#[test]
fn a_handler_that_declines_the_sweep_is_not_called_per_connection() {
    let (server, sweeps, visits) = start_sweeper(false);
    let _stream = subscribe(server.local_addr());
    assert!(eventually(|| total(&server, |s| &s.upgrades) == 1));
    let seen = sweeps.load(Ordering::Relaxed);
    assert!(within_30s(|| sweeps.load(Ordering::Relaxed) >= seen + 2));
    assert_eq!(visits.load(Ordering::Relaxed), 0);
}
