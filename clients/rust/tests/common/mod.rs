//! What the client's end-to-end tests share: the real `clarion` binary and `redis-server`
//! (started by the root crate's own test helpers, included by path), a TCP proxy that cuts or
//! stalls connections, the HTTP publish API, HS256 tokens, and waiting for events.
#![allow(dead_code, reason = "each test binary uses a different subset")]

#[path = "../../../../tests/common/process.rs"]
pub mod process;
#[path = "../../../../tests/common/redis.rs"]
pub mod redis;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clarion_client::{Event, Events};
use process::Clarion;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The longest wait for an event that should come: a bound for one that never does, not a
/// timing assertion (the machine is shared and may be slow).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The HS256 secret of the servers started with [`Server::jwt`].
pub const SECRET: &str = "the client tests' secret, 32 bytes or more";

/// A `clarion serve` process that can be stopped and started again on the same port.
pub struct Server {
    clarion: Option<Clarion>,
    pub addr: SocketAddr,
    args: Vec<String>,
}

impl Server {
    /// One reactor, not pinned, on a free loopback port, with `extra` flags.
    pub fn start(extra: &[&str]) -> Server {
        Server::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), extra)
    }

    /// [`Server::start`] on `addr`.
    pub fn start_at(addr: SocketAddr, extra: &[&str]) -> Server {
        let mut server = Server {
            clarion: None,
            addr,
            args: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.launch();
        server
    }

    /// A server that needs HS256 tokens signed with [`SECRET`], without leeway.
    pub fn jwt(extra: &[&str]) -> Server {
        let mut args = vec![
            "--auth",
            "jwt",
            "--jwt-secret",
            SECRET,
            "--jwt-leeway",
            "0s",
            // Publishing as the token grants (the tests' environment opens it to all).
            "--client-publish",
            "token",
        ];
        args.extend(extra);
        Server::start(&args)
    }

    fn launch(&mut self) {
        let listen = self.addr.to_string();
        // `/stats` on the public port, where these tests read it.
        let mut args = vec![
            "--listen",
            &listen,
            "--threads",
            "1",
            "--no-pin",
            "--public-metrics",
        ];
        args.extend(self.args.iter().map(String::as_str));
        let clarion = tokio::task::block_in_place(|| Clarion::start(&args, &[]));
        self.addr = clarion.addr;
        self.clarion = Some(clarion);
    }

    /// `ws://ADDR/ws`.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `wss://ADDR/ws` (for a server started with [`Certs::args`]).
    pub fn wss_url(&self) -> String {
        format!("wss://{}/ws", self.addr)
    }

    /// The server's counter `key` in `/stats` totals, from its admin listener (plaintext, also
    /// when the public listener speaks TLS).
    pub async fn admin_stat(&self, key: &str) -> u64 {
        let admin = self
            .clarion
            .as_ref()
            .and_then(|c| c.admin)
            .expect("admin listener");
        let (_, body) = http(admin, "GET", "/stats", "").await;
        let stats: serde_json::Value = serde_json::from_str(&body).expect("stats JSON");
        stats["totals"][key].as_u64().unwrap_or(0)
    }

    /// Kills it (SIGKILL: the sockets die with the process).
    pub fn kill(&mut self) {
        drop(self.clarion.take());
    }

    /// Starts it again on the same port: a new run, a new epoch.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// The server's counter `key` in `/stats` totals.
    pub async fn stat(&self, key: &str) -> u64 {
        let (_, body) = http(self.addr, "GET", "/stats", "").await;
        let stats: serde_json::Value = serde_json::from_str(&body).expect("stats JSON");
        stats["totals"][key].as_u64().unwrap_or(0)
    }

    /// `POST /publish/<topic>` with `body` (text); the status.
    pub async fn publish(&self, topic: &str, body: &str) -> u16 {
        http(self.addr, "POST", &format!("/publish/{topic}"), body)
            .await
            .0
    }
}

/// A local CA and a server certificate it signed (for localhost, 127.0.0.1 and ::1), made by
/// `scripts/make-cert.sh` in a fresh directory.
pub struct Certs {
    pub dir: std::path::PathBuf,
}

impl Certs {
    /// Runs `scripts/make-cert.sh` into a new directory named after `name`.
    pub fn make(name: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!(
            "clarion-client-{name}-{}-{}",
            std::process::id(),
            CERTS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make-cert.sh");
        let status = std::process::Command::new("bash")
            .arg(script)
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("bash runs scripts/make-cert.sh");
        assert!(
            status.success(),
            "scripts/make-cert.sh failed (openssl installed?)"
        );
        Certs { dir }
    }

    /// The server's flags: `--tls-cert DIR/chain.pem --tls-key DIR/key.pem`.
    pub fn args(&self) -> Vec<String> {
        let path = |name: &str| self.dir.join(name).to_str().unwrap().to_owned();
        vec![
            "--tls-cert".into(),
            path("chain.pem"),
            "--tls-key".into(),
            path("key.pem"),
        ]
    }

    /// `DIR/ca.pem`, the CA that signed the certificate.
    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.join("ca.pem")
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static CERTS: AtomicU64 = AtomicU64::new(0);

/// A loopback address nothing listens on (a port the kernel just handed out and took back).
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], process::free_port()))
}

/// Polls `condition` every 50 ms for up to [`PATIENCE`].
pub async fn eventually<F: std::future::Future<Output = bool>>(mut condition: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One HTTP request, answered and closed; (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("the server answers");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, body.to_owned())
}

/// An HS256 token for [`Server::jwt`] servers, valid for `ttl`, with these grants.
pub fn token(ttl: Duration, subscribe: &[&str], publish: &[&str]) -> String {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        + ttl;
    let claims = serde_json::json!({
        "exp": exp.as_secs(),
        "subscribe": subscribe,
        "publish": publish,
        // Tokens minted in the same second still differ.
        "jti": SERIAL.fetch_add(1, Ordering::Relaxed),
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Reads events until `want` matches one (returned), keeping those before it in `seen`.
/// Panics after [`PATIENCE`] or when the stream ends.
pub async fn until(
    events: &mut Events,
    seen: &mut Vec<Event>,
    want: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(event)) if want(&event) => return event,
            Ok(Some(event)) => seen.push(event),
            Ok(None) => panic!("the event stream ended; before: {seen:#?}"),
            Err(_) => panic!("no such event within {PATIENCE:?}; before: {seen:#?}"),
        }
    }
}

/// [`until`] without keeping the others.
pub async fn next_matching(events: &mut Events, want: impl Fn(&Event) -> bool) -> Event {
    until(events, &mut Vec::new(), want).await
}

pub fn is_connected(event: &Event) -> bool {
    matches!(event, Event::Connected { .. })
}

pub fn is_subscribed(event: &Event) -> bool {
    matches!(event, Event::Subscribed { .. })
}

pub fn is_disconnected(event: &Event) -> bool {
    matches!(event, Event::Disconnected { .. })
}

/// The `seq` of a message event.
pub fn seq_of(event: &Event) -> Option<u64> {
    match event {
        Event::Message { seq, .. } => Some(*seq),
        _ => None,
    }
}

/// A TCP proxy in front of a server that can cut every connection at once or stall them
/// (stop forwarding, keep them open), as a dying network does.
pub struct Proxy {
    pub addr: SocketAddr,
    /// Bumped to cut every connection open.
    cuts: watch::Sender<u64>,
    stalled: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cuts, _) = watch::channel(0u64);
        let (stalled, _) = watch::channel(false);
        let task = tokio::spawn({
            let (cuts, stalled) = (cuts.clone(), stalled.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(target).await else {
                        continue;
                    };
                    tokio::spawn(relay(client, server, cuts.subscribe(), stalled.subscribe()));
                }
            }
        });
        Proxy {
            addr,
            cuts,
            stalled,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Drops every connection open now (new ones are accepted as before).
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Stops (or resumes) forwarding on every connection; they stay open.
    pub fn stall(&self, stalled: bool) {
        self.stalled.send_replace(stalled);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// Copies both ways until either side ends or a cut comes; holds the bytes while stalled.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    mut cuts: watch::Receiver<u64>,
    stalled: watch::Receiver<bool>,
) {
    cuts.mark_unchanged();
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pipe(client_read, server_write, stalled.clone());
    let down = pipe(server_read, client_write, stalled);
    tokio::select! {
        _ = cuts.changed() => {}
        _ = async { tokio::join!(up, down) } => {}
    }
    // Dropping both halves of both sockets closes them.
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Counts calls, for token providers.
#[derive(Clone, Default)]
pub struct Calls(Arc<AtomicU64>);

impl Calls {
    pub fn bump(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
