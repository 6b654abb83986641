//! TLS on the engine's listener, on both backends (epoll and io_uring, each test runs on both):
//! WebSocket echo and fanout over TLS 1.3 and 1.2, plain HTTP answers closed with close_notify,
//! ALPN, session resumption, a certificate replaced while connections stay up, the handshake
//! cap, garbage that is not TLS, and an idle TLS connection holding no buffer. The client is
//! rustls (buffered) under tungstenite.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clarion_engine::tls::{ReloadableCert, TlsConfig, certified_key, rustls};
use clarion_engine::{
    Answer, ConnId, Ctx, Handler, Io, Local, Mailboxes, Push, RequestInfo, Response, Runtime,
    Shared, Stats,
};
use clarion_protocol::handshake::Request;
use clarion_protocol::{CloseCode, MessageKind, frame};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tungstenite::{Message, WebSocket};

const CERT: &[u8] = include_bytes!("tls/cert.pem");
const KEY: &[u8] = include_bytes!("tls/key.pem");
const CHAIN: &[u8] = include_bytes!("tls/chain.pem");
const CERT2: &[u8] = include_bytes!("tls/cert2.pem");
const KEY2: &[u8] = include_bytes!("tls/key2.pem");
const CA: &[u8] = include_bytes!("tls/ca.pem");

/// Echo on `/echo`, subscribers on `/sub`, `POST /pub` broadcasts, `/info` says whether the
/// request came over TLS.
struct App {
    subscribers: Vec<ConnId>,
    mailboxes: Arc<Mailboxes<Arc<[u8]>>>,
}

impl Handler for App {
    type Conn = ();
    type Inbox = Arc<[u8]>;

    fn on_request<'r>(
        &mut self,
        request: &Request<'r>,
        body: &[u8],
        info: &RequestInfo,
    ) -> Answer<'r, ()> {
        match (request.method(), request.path()) {
            ("GET", "/echo" | "/sub") => Answer::Upgrade {
                conn: (),
                protocol: None,
            },
            ("GET", "/info") => Answer::Respond(Response::new(
                200,
                "text/plain",
                format!("tls={}", info.tls()),
            )),
            ("POST", "/pub") => {
                let frame: Arc<[u8]> =
                    frame::encode_frame(clarion_protocol::OpCode::Binary, body).into();
                for reactor in 0..self.mailboxes.len() {
                    self.mailboxes.post(reactor, frame.clone());
                }
                Answer::Respond(Response::new(202, "text/plain", ""))
            }
            _ => Answer::Respond(Response::new(404, "text/plain", "")),
        }
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, ()>) {
        self.subscribers.push(ctx.id());
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, kind: MessageKind, payload: &[u8]) {
        let _ = ctx.send(kind, payload);
    }

    fn on_close(&mut self, id: ConnId, _: &mut (), _: Option<CloseCode>, _: Instant) {
        self.subscribers.retain(|&s| s != id);
    }

    fn on_inbox(&mut self, local: &mut Local<'_, ()>, frame: Arc<[u8]>) {
        for &id in &self.subscribers {
            assert_eq!(local.send_shared(id, &frame, 1 << 20), Push::Queued);
        }
    }
}

struct Server {
    runtime: Runtime,
    cert: Arc<ReloadableCert>,
}

impl Server {
    fn start(io: Io, max_handshakes: usize) -> Server {
        let cert = Arc::new(ReloadableCert::new(certified_key(CHAIN, KEY).unwrap()));
        let mut tls = TlsConfig::new(cert.clone()).unwrap();
        tls.max_handshakes = max_handshakes;
        let config = clarion_engine::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            threads: 1,
            pin_threads: false,
            io,
            tls: Some(tls),
            ..clarion_engine::Config::default()
        };
        let runtime = Runtime::start(config, |_, shared: &Shared<Arc<[u8]>>| {
            Ok(App {
                subscribers: Vec::new(),
                mailboxes: shared.mailboxes.clone(),
            })
        })
        .unwrap();
        Server { runtime, cert }
    }

    fn addr(&self) -> SocketAddr {
        self.runtime.local_addr()
    }

    fn stats(&self) -> &Stats {
        &self.runtime.stats()[0]
    }

    fn stat(&self, f: impl Fn(&Stats) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(self.stats()).load(Ordering::Relaxed)
    }

    /// Waits (up to 10 s) for a counter to reach `want`.
    fn wait_for(&self, what: &str, f: impl Fn(&Stats) -> u64, want: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while f(self.stats()) != want {
            assert!(
                Instant::now() < deadline,
                "{what}: {} != {want}",
                f(self.stats())
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn client_config(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(CA) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(clarion_engine::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Tls {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut tcp = tcp;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    rustls::StreamOwned::new(conn, tcp)
}

fn websocket(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, path: &str) -> WebSocket<Tls> {
    let stream = connect(addr, config);
    let (ws, _) = tungstenite::client(format!("wss://localhost{path}"), stream).unwrap();
    ws
}

/// A plain HTTP request over TLS, with `Connection: close` added; the answer, read to the
/// server's close_notify.
fn http(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, request: &str) -> String {
    let mut stream = connect(addr, config);
    let request = request.replacen("\r\n", "\r\nConnection: close\r\n", 1);
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    // A clean end (close_notify before FIN), or rustls reports UnexpectedEof.
    stream.read_to_string(&mut answer).unwrap();
    answer
}

fn backends() -> [Io; 2] {
    [Io::Epoll, Io::Uring]
}

#[test]
fn websocket_echo_over_tls_1_3_and_1_2_in_one_record_or_many() {
    for io in backends() {
        let server = Server::start(io, 64);
        for versions in [&[&rustls::version::TLS13], &[&rustls::version::TLS12]] {
            let config = client_config(versions);
            let mut ws = websocket(server.addr(), &config, "/echo");
            let tls = &ws.get_ref().conn;
            assert_eq!(tls.alpn_protocol(), Some(&b"http/1.1"[..]), "{io:?}");
            assert_eq!(tls.protocol_version(), Some(versions[0].version));
            for len in [0, 1, 125, 16 << 10, 100_000, 1 << 20] {
                let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                ws.send(Message::binary(payload.clone())).unwrap();
                assert_eq!(ws.read().unwrap(), Message::binary(payload), "{io:?} {len}");
            }
            ws.send(Message::text("bye")).unwrap();
            assert_eq!(ws.read().unwrap(), Message::text("bye"));
            ws.close(None).unwrap();
            while ws.read().is_ok() {}
        }
        server.wait_for("connections", |s| s.connections.load(Ordering::Relaxed), 0);
        assert_eq!(server.stat(|s| &s.tls_handshakes), 2, "{io:?}");
        assert_eq!(server.stat(|s| &s.tls_failures), 0, "{io:?}");
        assert_eq!(server.stat(|s| &s.tls_handshaking), 0, "{io:?}");
        assert_eq!(server.stat(|s| &s.rx_buffers_lent), 0, "{io:?}");
        assert_eq!(server.stat(|s| &s.tx_queues_lent), 0, "{io:?}");
    }
}

#[test]
fn every_route_answers_over_tls_and_the_answer_ends_with_close_notify() {
    for io in backends() {
        let server = Server::start(io, 64);
        let config = client_config(&[&rustls::version::TLS13]);
        let answer = http(
            server.addr(),
            &config,
            "GET /info HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{io:?}: {answer}");
        assert!(answer.ends_with("tls=true"), "{io:?}: {answer}");
        let answer = http(
            server.addr(),
            &config,
            "GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 404"), "{io:?}: {answer}");
    }
}

#[test]
fn fanout_reaches_every_tls_subscriber_in_order_and_idle_ones_hold_no_buffer() {
    for io in backends() {
        let server = Server::start(io, 64);
        let config = client_config(&[&rustls::version::TLS13]);
        let mut subscribers: Vec<_> = (0..20)
            .map(|_| websocket(server.addr(), &config, "/sub"))
            .collect();
        server.wait_for("upgrades", |s| s.upgrades.load(Ordering::Relaxed), 20);
        // Subscribers read only after every publish: their messages queue up and share records.
        for i in 0..50 {
            let answer = http(
                server.addr(),
                &config,
                &format!("POST /pub HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nm{i:02}"),
            );
            assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
        }
        for ws in &mut subscribers {
            for i in 0..50 {
                assert_eq!(
                    ws.read().unwrap(),
                    Message::binary(format!("m{i:02}").into_bytes()),
                    "{io:?}"
                );
            }
        }
        // Everything is delivered and read: the reactor lends nothing to idle connections.
        server.wait_for("rx lent", |s| s.rx_buffers_lent.load(Ordering::Relaxed), 0);
        server.wait_for("tx lent", |s| s.tx_queues_lent.load(Ordering::Relaxed), 0);
        drop(subscribers);
    }
}

#[test]
fn a_second_connection_resumes_the_session() {
    for io in backends() {
        let server = Server::start(io, 64);
        for versions in [&[&rustls::version::TLS13], &[&rustls::version::TLS12]] {
            let config = client_config(versions);
            let mut first = websocket(server.addr(), &config, "/echo");
            first.send(Message::text("one")).unwrap();
            assert_eq!(first.read().unwrap(), Message::text("one"));
            let kind = first.get_ref().conn.handshake_kind();
            assert_eq!(kind, Some(rustls::HandshakeKind::Full), "{io:?}");
            let mut second = websocket(server.addr(), &config, "/echo");
            second.send(Message::text("two")).unwrap();
            assert_eq!(second.read().unwrap(), Message::text("two"));
            let kind = second.get_ref().conn.handshake_kind();
            assert_eq!(
                kind,
                Some(rustls::HandshakeKind::Resumed),
                "{io:?} {versions:?}"
            );
        }
        assert_eq!(server.stat(|s| &s.tls_resumed), 2, "{io:?}");
    }
}

#[test]
fn a_replaced_certificate_serves_new_connections_while_open_ones_stay_up() {
    for io in backends() {
        let server = Server::start(io, 64);
        let config = client_config(&[&rustls::version::TLS13]);
        let mut before = websocket(server.addr(), &config, "/echo");
        let leaf = |ws: &WebSocket<Tls>| ws.get_ref().conn.peer_certificates().unwrap()[0].to_vec();
        let first = CertificateDer::pem_slice_iter(CERT)
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(leaf(&before), first.to_vec());
        server.cert.replace(certified_key(CERT2, KEY2).unwrap());
        let fresh = client_config(&[&rustls::version::TLS13]);
        let mut after = websocket(server.addr(), &fresh, "/echo");
        let second = CertificateDer::pem_slice_iter(CERT2)
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(leaf(&after), second.to_vec(), "{io:?}");
        for ws in [&mut before, &mut after] {
            ws.send(Message::text("still here")).unwrap();
            assert_eq!(ws.read().unwrap(), Message::text("still here"));
        }
    }
}

#[test]
fn connections_past_the_handshake_cap_are_refused_and_the_cap_frees_up() {
    for io in backends() {
        let server = Server::start(io, 2);
        // Two connections that never say hello hold the reactor's two handshake places.
        let silent: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(server.addr()).unwrap())
            .collect();
        server.wait_for(
            "handshaking",
            |s| s.tls_handshaking.load(Ordering::Relaxed),
            2,
        );
        let mut third = TcpStream::connect(server.addr()).unwrap();
        third
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut byte = [0; 1];
        // Closed without a word: end of stream, or a reset.
        assert!(matches!(third.read(&mut byte), Ok(0) | Err(_)), "{io:?}");
        assert_eq!(server.stat(|s| &s.tls_refused), 1, "{io:?}");
        drop(silent);
        server.wait_for(
            "handshaking",
            |s| s.tls_handshaking.load(Ordering::Relaxed),
            0,
        );
        let config = client_config(&[&rustls::version::TLS13]);
        let mut ws = websocket(server.addr(), &config, "/echo");
        ws.send(Message::text("in")).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text("in"));
    }
}

#[test]
fn bytes_that_are_not_tls_end_the_connection_with_an_alert_and_nothing_leaks() {
    for io in backends() {
        let server = Server::start(io, 64);
        for garbage in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5][..],
            &[0x17; 300][..],
        ] {
            let mut tcp = TcpStream::connect(server.addr()).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            tcp.write_all(garbage).unwrap();
            let mut answer = Vec::new();
            let _ = tcp.read_to_end(&mut answer);
            // At most an alert record (content type 21), never anything else.
            assert!(answer.is_empty() || answer[0] == 21, "{io:?}: {answer:?}");
        }
        server.wait_for("connections", |s| s.connections.load(Ordering::Relaxed), 0);
        assert_eq!(server.stat(|s| &s.tls_failures), 3, "{io:?}");
        assert_eq!(server.stat(|s| &s.tls_handshaking), 0, "{io:?}");
        assert_eq!(server.stat(|s| &s.rx_buffers_lent), 0, "{io:?}");
        assert_eq!(server.stat(|s| &s.tx_queues_lent), 0, "{io:?}");
    }
}

#[test]
fn a_client_hello_in_pieces_still_completes() {
    for io in backends() {
        let server = Server::start(io, 64);
        let config = client_config(&[&rustls::version::TLS13]);
        let name = ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(config, name).unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        let mut tcp = TcpStream::connect(server.addr()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.set_nodelay(true).unwrap();
        for piece in hello.chunks(7) {
            tcp.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).unwrap();
        }
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        stream
            .write_all(b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.ends_with("tls=true"), "{io:?}: {answer}");
    }
}
