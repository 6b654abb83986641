//! Shared helpers for the end-to-end tests: an in-process server on a free port, a third-party
//! client (tungstenite) and a raw-socket client for bytes no library would send, HTTP requests,
//! and the `/ws` envelope commands.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod nginx;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod tls;

#[allow(unused_imports, reason = "each test binary uses a different subset")]
pub use process::{Clarion, PATIENCE, TEST_ENV, free_port, spawn_clarion};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use clarion::server::AppConfig;
use clarion_engine::Runtime;
use serde_json::Value;
use tungstenite::{Message, WebSocket};

/// The backend under test: `CLARION_TEST_IO=epoll|uring` (default: whatever `auto` picks).
pub fn io() -> clarion_engine::Io {
    match process::io_name() {
        Some("epoll") => clarion_engine::Io::Epoll,
        Some(_) => clarion_engine::Io::Uring,
        None => clarion_engine::Io::Auto,
    }
}

/// The server's default settings with what the end-to-end tests exercise turned on (as
/// [`TEST_ENV`] for a process): `/echo`,
/// publishing from clients, and no per-client rates (tests send as fast as they can; the
/// limits have tests of their own in `tests/hostile.rs`).
pub fn app() -> AppConfig {
    AppConfig {
        echo: true,
        client_publish: clarion::server::state::ClientPublish::All,
        message_rate: 0,
        byte_rate: 0,
        ..AppConfig::default()
    }
}

/// Whether the server closes a new connection without answering its request (a limit at
/// accept: `max_connections`, `max_handshakes_per_reactor`).
pub fn refused_at_accept(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return true;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
}

/// Starts the server ([`app`]'s settings) on 127.0.0.1 with a free port, two reactors, after
/// `adjust`.
pub fn start(adjust: impl FnOnce(&mut clarion_engine::Config)) -> Runtime {
    start_app(adjust, app())
}

/// [`start`] with application settings. The monitoring routes are served on the public port
/// too (`public_metrics`), where the helpers below read them.
pub fn start_app(adjust: impl FnOnce(&mut clarion_engine::Config), mut app: AppConfig) -> Runtime {
    app.public_metrics = true;
    let mut config = clarion_engine::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 2,
        pin_threads: false,
        io: io(),
        ..clarion_engine::Config::default()
    };
    adjust(&mut config);
    let runtime = clarion::server::start(config, app).expect("server starts");
    if io() != clarion_engine::Io::Auto {
        assert_eq!(
            runtime.io(),
            io(),
            "the backend under test is the one running"
        );
    }
    runtime
}

/// A tungstenite client connected to `path`.
pub fn connect(addr: SocketAddr, path: &str) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (ws, response) =
        tungstenite::client(format!("ws://{addr}{path}"), stream).expect("handshake");
    assert_eq!(response.status(), 101);
    ws
}

/// A plain TCP connection with a 10 s read timeout.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// The upgrade request a conforming client sends.
pub fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// A raw connection upgraded on `/echo`, its 101 head consumed.
pub fn raw_ws(addr: SocketAddr) -> TcpStream {
    let mut stream = tcp(addr);
    stream.write_all(&upgrade_request("/echo")).unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

/// Reads an HTTP head byte by byte (so nothing after it is consumed).
pub fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Sends a raw request on a new connection and returns the answer (head and body).
pub fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = tcp(addr);
    stream.write_all(request).unwrap();
    read_answer(&mut stream)
}

/// Reads one HTTP answer: its head, then `Content-Length` bytes of body (the connection may
/// stay open: HTTP keep-alive). What arrived if the connection ends first.
pub fn read_answer(stream: &mut TcpStream) -> String {
    let head = read_head(stream);
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .map_or(0, |n| n.trim().parse().unwrap_or(0));
    let mut body = Vec::with_capacity(length);
    let _ = stream.take(length as u64).read_to_end(&mut body);
    head + &String::from_utf8_lossy(&body)
}

/// A masked client frame, written by hand.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0xA1, 0xB2, 0xC3, 0xD4];
    let mut out = vec![(fin as u8) << 7 | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// Reads one unmasked server frame: (fin, opcode, payload).
pub fn read_frame(stream: &mut TcpStream) -> std::io::Result<(bool, u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head)?;
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
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
    Ok((head[0] & 0x80 != 0, head[0] & 0x0F, payload))
}

/// Reads until the server's close frame and returns its code.
pub fn read_close_code(stream: &mut TcpStream) -> u16 {
    loop {
        let (_, opcode, payload) = read_frame(stream).expect("a close frame");
        if opcode == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

/// Sum of a counter over all reactors.
pub fn total(
    runtime: &Runtime,
    counter: impl Fn(&clarion_engine::Stats) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    runtime
        .stats()
        .iter()
        .map(|s| counter(s).load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}

/// Polls `condition` every 10 ms for up to 5 s.
pub fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A client WebSocket over a plain TCP stream.
pub type Ws = WebSocket<TcpStream>;

/// `POST path` with `body` and extra header lines; (status, body).
pub fn post(addr: SocketAddr, path: &str, headers: &str, body: &[u8]) -> (u16, String) {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    split(&http(addr, &request))
}

pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    split(&http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    ))
}

pub fn split(answer: &str) -> (u16, String) {
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, body.to_owned())
}

/// The status a WebSocket upgrade of `path` gets, with extra header lines.
pub fn upgrade_status(addr: SocketAddr, path: &str, headers: &str) -> u16 {
    let request = String::from_utf8(upgrade_request(path)).unwrap();
    let request = request.replacen("\r\n\r\n", &format!("\r\n{headers}\r\n"), 1);
    let mut stream = tcp(addr);
    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
    split(&read_head(&mut stream)).0
}

pub fn stats(addr: SocketAddr) -> Value {
    let (status, body) = get(addr, "/stats");
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

pub fn total_stat(addr: SocketAddr, key: &str) -> u64 {
    stats(addr)["totals"][key].as_u64().unwrap()
}

pub fn send(ws: &mut Ws, command: Value) {
    ws.send(Message::text(command.to_string())).unwrap();
}

/// The next text message, as JSON.
pub fn next(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("a message") {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Binary(_) => panic!("binary from /ws"),
            _ => {}
        }
    }
}

/// Sends `command` and returns the reply (the next message).
pub fn call(ws: &mut Ws, command: Value) -> Value {
    send(ws, command);
    next(ws)
}

/// Runs headless Chromium on `tests/interop/browser.html` against `addr` (`scheme` `ws` or
/// `wss`; the latter with `--ignore-certificate-errors`, for the test CA) until the page posts
/// its result to a listener of ours (`--dump-dom` dumps at the load event, before any WebSocket
/// traffic); the page's JSON.
pub fn run_page(addr: SocketAddr, name: &str, scheme: &str) -> serde_json::Value {
    let report = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = std::env::temp_dir().join(format!("clarion-chromium-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("profile")).unwrap();
    let file = dir.join("page.html");
    let page = include_str!("../interop/browser.html")
        .replace("{{ADDR}}", &addr.to_string())
        .replace("{{SCHEME}}", scheme)
        .replace("{{REPORT}}", &report.local_addr().unwrap().to_string());
    std::fs::write(&file, page).unwrap();
    let mut chromium = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--ignore-certificate-errors",
            &format!("--user-data-dir={}", dir.join("profile").display()),
            &format!("file://{}", file.display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium runs (apt-get install chromium; scripts/test.sh does)");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // The page's one POST: head, then a Content-Length body.
        let Ok((mut stream, _)) = report.accept() else {
            return;
        };
        let head = read_head(&mut stream);
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        let _ = stream.read_exact(&mut body);
        let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
    });
    let body = rx.recv_timeout(Duration::from_secs(60));
    let _ = chromium.kill();
    let _ = chromium.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let body = body.expect("the page reports within 60 s");
    serde_json::from_str(&body).unwrap_or_else(|_| panic!("the page says {body}"))
}
