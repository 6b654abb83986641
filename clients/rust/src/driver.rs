//! The tokio task behind a [`crate::Client`]: it owns the socket, its TLS session for `wss:`
//! (rustls) and the protocol state ([`clarion_protocol::Connection`]), runs the token provider
//! and the timers, and carries out what the [`Session`] asks. All decisions are the session's;
//! this only moves bytes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use clarion_protocol::connection::Failure;
use clarion_protocol::handshake::{ClientError, ClientHandshake};
use clarion_protocol::{CloseCode, Connection, MessageKind};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::backoff::Rng;
use crate::event::{Event, PublishAck, PublishError, State};
use crate::events::{self, Sink};
use crate::options::TokenProvider;
use crate::queue::Ticket;
use crate::session::{Output, Purpose, Reply, Session};
use crate::subscriptions::SubCell;
use crate::tls::{self, Nonblocking};
use crate::url::Endpoint;

/// What a handle asks of the task.
pub(crate) enum Command {
    Subscribe(Arc<SubCell>),
    Unsubscribe(Arc<SubCell>, oneshot::Sender<()>),
    Publish(
        String,
        serde_json::Value,
        oneshot::Sender<Result<PublishAck, PublishError>>,
    ),
    Ping(oneshot::Sender<Result<Duration, PublishError>>),
    Close(oneshot::Sender<()>),
    Events(Sink),
}

/// Where an answer goes.
enum Responder {
    Publish(oneshot::Sender<Result<PublishAck, PublishError>>),
    Ping(oneshot::Sender<Result<Duration, PublishError>>),
    Done(oneshot::Sender<()>),
    /// Nobody waits (the handles were dropped).
    Nobody,
}

/// The client's state, mirrored for the handles.
#[derive(Debug)]
pub(crate) struct SharedState(AtomicU8);

impl SharedState {
    pub(crate) fn new() -> SharedState {
        SharedState(AtomicU8::new(State::Connecting as u8))
    }

    pub(crate) fn get(&self) -> State {
        match self.0.load(Ordering::Acquire) {
            0 => State::Connecting,
            1 => State::Connected,
            2 => State::Disconnected,
            _ => State::Closed,
        }
    }

    fn set(&self, state: State) {
        self.0.store(state as u8, Ordering::Release);
    }
}

/// Everything the task needs besides the session.
pub(crate) struct Setup {
    pub(crate) endpoint: Endpoint,
    /// For `wss:`: the client's rustls settings (its session cache lives as long as it does)
    /// and the name the certificate must carry.
    pub(crate) tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    pub(crate) provider: Option<TokenProvider>,
    pub(crate) connect_timeout: Duration,
    pub(crate) event_buffer: usize,
    pub(crate) max_message_size: u64,
    pub(crate) state: Arc<SharedState>,
    pub(crate) rng: Rng,
}

/// An open WebSocket.
struct Link {
    transport: Transport,
    ws: Connection,
    /// Lent to the protocol: holds only an incomplete frame or message (empty otherwise).
    rx: Vec<u8>,
    /// Bytes for the server not yet written.
    tx: Vec<u8>,
}

/// A finished upgrade: the socket (and its TLS session), and whatever arrived behind the 101.
struct Opened {
    transport: Transport,
    early: Vec<u8>,
}

/// A failed attempt: the code to report (1006, or 1015 for a TLS failure that will repeat),
/// the reason, and the HTTP status of a refused upgrade.
struct AttemptError {
    code: u16,
    reason: String,
    status: Option<u16>,
}

impl AttemptError {
    fn new(reason: String) -> AttemptError {
        AttemptError {
            code: 1006,
            reason,
            status: None,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Read buffer shared by every client on a thread: an idle client holds none (64 KiB).
const SCRATCH: usize = 64 << 10;

thread_local! {
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Runs one client until it stops for good.
pub(crate) async fn run(
    mut session: Session,
    setup: Setup,
    mut commands: mpsc::UnboundedReceiver<Command>,
    initial: Sink,
) {
    let mut driver = Driver {
        endpoint: Arc::new(setup.endpoint),
        tls: setup.tls.map(Arc::new),
        provider: setup.provider,
        connect_timeout: setup.connect_timeout,
        event_buffer: setup.event_buffer.max(1),
        ws_config: clarion_protocol::Config {
            max_frame_size: setup.max_message_size,
            max_message_size: setup.max_message_size,
            // The session watches liveness (heartbeats); the server pings and we answer.
            ping_interval: None,
            ..clarion_protocol::Config::default()
        },
        state: setup.state,
        rng: setup.rng,
        sinks: vec![initial],
        replies: HashMap::new(),
        next_ticket: 0,
        paused: false,
    };
    let mut attempt: Option<BoxFuture<Result<Opened, AttemptError>>> = None;
    let mut token: Option<(Purpose, BoxFuture<Result<String, String>>)> = None;
    let mut link: Option<Link> = None;
    let mut handles_alive = true;
    loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Send(text) => {
                    if let Some(link) = &mut link {
                        let mut bytes = text.into_bytes();
                        let _ = link
                            .ws
                            .send_in_place(MessageKind::Text, &mut bytes, &mut link.tx);
                    }
                }
                Output::Event(event, cell) => driver.emit(event, cell),
                Output::Reply(ticket, reply) => driver.respond(ticket, reply),
                Output::FetchToken(purpose) => token = Some((purpose, driver.fetch_token())),
                Output::Connect(bearer) => attempt = Some(driver.open(bearer)),
                Output::Abandon(code, reason) => {
                    attempt = None;
                    if matches!(token, Some((Purpose::Connect, _))) {
                        token = None;
                    }
                    if let Some(link) = link.take() {
                        link.abandon(code, reason);
                    }
                }
                Output::Shutdown => {
                    attempt = None;
                    token = None;
                    if let Some(link) = link.take() {
                        link.shutdown().await;
                    }
                }
            }
        }
        if let Some(link) = &mut link {
            link.flush();
        }
        let state = session.state();
        driver.state.set(state);
        if state == State::Closed {
            break;
        }
        let paused = driver.behind();
        if paused != driver.paused {
            driver.paused = paused;
            session.set_paused(paused, now());
            continue;
        }
        let deadline = session.poll_timeout();
        let write_waiting = link.as_ref().is_some_and(Link::write_waiting);
        tokio::select! {
            command = commands.recv(), if handles_alive => match command {
                Some(command) => driver.command(&mut session, command),
                None => {
                    // Every handle is gone: nobody can use the client any more.
                    handles_alive = false;
                    let ticket = driver.ticket(Responder::Nobody);
                    session.close(ticket);
                }
            },
            opened = optional(attempt.as_mut()) => {
                attempt = None;
                match opened {
                    Ok(opened) => {
                        let mut new = driver.link(opened.transport);
                        session.opened(now());
                        let mut early = opened.early;
                        if let Some((code, reason)) = driver.feed(&mut session, &mut new, &mut early) {
                            new.flush();
                            session.ended(code, &reason, None, now());
                        } else {
                            link = Some(new);
                        }
                    }
                    Err(e) => session.ended(e.code, &e.reason, e.status, now()),
                }
            }
            fetched = optional(token.as_mut().map(|(_, fetch)| fetch)) => {
                let (purpose, _) = token.take().expect("polled");
                session.token_ready(purpose, fetched, now());
            }
            ready = optional(link.as_ref().filter(|_| !paused).map(|l| l.transport.stream.readable())) => {
                let mut open = link.take().expect("polled");
                let ended = match ready {
                    Ok(()) => driver.read(&mut session, &mut open),
                    Err(e) => Some((1006, e.to_string())),
                };
                match ended {
                    Some((code, reason)) => {
                        open.flush();
                        session.ended(code, &reason, None, now());
                    }
                    None => link = Some(open),
                }
            }
            writable = optional(link.as_ref().filter(|_| write_waiting).map(|l| l.transport.stream.writable())) => {
                if let Err(e) = writable {
                    link = None;
                    session.ended(1006, &e.to_string(), None, now());
                }
            }
            () = optional(deadline.map(|at| tokio::time::sleep_until(at.into()))) => {
                session.handle_timeout(now());
            }
            // Ends at once if the reader caught up since `behind()` looked (reading is off
            // meanwhile: a wait that missed it would stop the client for good).
            () = events::caught_up(&driver.sinks, driver.event_buffer), if paused => {}
        }
    }
    // Streams end here: every event before was sent.
}

/// Awaits `future` if there is one, else never.
async fn optional<F: Future>(future: Option<F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

struct Driver {
    endpoint: Arc<Endpoint>,
    tls: Option<TlsSetup>,
    provider: Option<TokenProvider>,
    connect_timeout: Duration,
    event_buffer: usize,
    ws_config: clarion_protocol::Config,
    state: Arc<SharedState>,
    rng: Rng,
    sinks: Vec<Sink>,
    replies: HashMap<Ticket, Responder>,
    next_ticket: u64,
    /// Reading is stopped because a stream is full.
    paused: bool,
}

impl Driver {
    fn ticket(&mut self, responder: Responder) -> Ticket {
        self.next_ticket += 1;
        let ticket = Ticket(self.next_ticket);
        self.replies.insert(ticket, responder);
        ticket
    }

    fn command(&mut self, session: &mut Session, command: Command) {
        let now = now();
        match command {
            Command::Subscribe(cell) => session.subscribe(cell),
            Command::Unsubscribe(cell, done) => {
                let ticket = self.ticket(Responder::Done(done));
                session.unsubscribe(&cell, ticket);
            }
            Command::Publish(topic, data, answer) => {
                let ticket = self.ticket(Responder::Publish(answer));
                session.publish(ticket, topic, &data, now);
            }
            Command::Ping(answer) => {
                let ticket = self.ticket(Responder::Ping(answer));
                session.ping(ticket, now);
            }
            Command::Close(done) => {
                let ticket = self.ticket(Responder::Done(done));
                session.close(ticket);
            }
            Command::Events(sink) => self.sinks.push(sink),
        }
    }

    fn respond(&mut self, ticket: Ticket, reply: Reply) {
        // A receiver that was dropped (the application stopped waiting) is no error.
        match (self.replies.remove(&ticket), reply) {
            (Some(Responder::Publish(tx)), Reply::Publish(result)) => drop(tx.send(result)),
            (Some(Responder::Ping(tx)), Reply::Ping(result)) => drop(tx.send(result)),
            (Some(Responder::Done(tx)), Reply::Done) => drop(tx.send(())),
            _ => {}
        }
    }

    fn emit(&mut self, event: Event, cell: Option<Arc<SubCell>>) {
        let capacity = self.event_buffer;
        match self.sinks.len() {
            0 => {}
            1 => {
                if !self.sinks[0].send(event, cell, capacity) {
                    self.sinks.clear();
                }
            }
            _ => self
                .sinks
                .retain(|sink| sink.send(event.clone(), cell.clone(), capacity)),
        }
    }

    /// Whether a stream's reader is `event_buffer` events behind.
    fn behind(&self) -> bool {
        events::first_full(&self.sinks, self.event_buffer).is_some()
    }

    fn fetch_token(&self) -> BoxFuture<Result<String, String>> {
        let Some(provider) = &self.provider else {
            return Box::pin(async { Err("no token provider".to_owned()) });
        };
        let fetch = provider();
        let limit = self.connect_timeout;
        Box::pin(async move {
            match tokio::time::timeout(limit, fetch).await {
                Ok(Ok(token)) => Ok(token),
                Ok(Err(e)) => Err(format!("the token provider failed: {e}")),
                Err(_) => Err("the token provider timed out".to_owned()),
            }
        })
    }

    fn open(&mut self, bearer: Option<String>) -> BoxFuture<Result<Opened, AttemptError>> {
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&self.rng.next_u64().to_ne_bytes());
        nonce[8..].copy_from_slice(&self.rng.next_u64().to_ne_bytes());
        Box::pin(open(self.endpoint.clone(), self.tls.clone(), bearer, nonce))
    }

    fn link(&mut self, transport: Transport) -> Link {
        Link {
            transport,
            ws: Connection::client(now(), self.rng.next_u64() as u32),
            rx: Vec::new(),
            tx: Vec::new(),
        }
    }

    /// Reads what the socket has (a few buffers at most, so one busy client cannot hog its
    /// thread); `Some` when the connection ended.
    fn read(&mut self, session: &mut Session, link: &mut Link) -> Option<(u16, String)> {
        SCRATCH_BUF.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            for _ in 0..4 {
                match link.transport.receive(&mut buf) {
                    Ok(0) => return Some((1006, "the connection closed".to_owned())),
                    Ok(n) => {
                        if let Some(end) = self.feed(session, link, &mut buf[..n]) {
                            return Some(end);
                        }
                        if n < buf.len() || self.behind() {
                            return None;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                    Err(e) => return Some((1006, e.to_string())),
                }
            }
            None
        })
    }

    /// Hands bytes to the protocol and its messages to the session; `Some` when the
    /// connection ended (the server's close, or its frames broke the protocol).
    fn feed(
        &mut self,
        session: &mut Session,
        link: &mut Link,
        input: &mut [u8],
    ) -> Option<(u16, String)> {
        let now = now();
        let mut input = input;
        while let Some(event) =
            link.ws
                .read(&mut input, &mut link.rx, now, &self.ws_config, &mut link.tx)
        {
            use clarion_protocol::Event as Ws;
            match event {
                Ws::Message(MessageKind::Text, text) => match std::str::from_utf8(text) {
                    Ok(text) => session.received_text(text, now),
                    // The protocol validated it; this cannot happen.
                    Err(_) => session.received_binary(now),
                },
                Ws::Message(MessageKind::Binary, _) => session.received_binary(now),
                Ws::Ping(_) | Ws::Pong(_) => session.heard(now),
                Ws::Close(close) => {
                    let (code, reason) =
                        close.map_or((1005, ""), |(code, reason)| (code.0, reason));
                    return Some((code, reason.to_owned()));
                }
                Ws::Failed(Failure::Protocol(code, reason)) => {
                    return Some((code.0, reason.to_owned()));
                }
                Ws::Failed(Failure::Head(_)) | Ws::Request(..) => {
                    return Some((1002, "not a client event".to_owned()));
                }
            }
        }
        None
    }
}

impl Link {
    fn write_waiting(&self) -> bool {
        self.transport.write_waiting(&self.tx)
    }

    /// Writes what it can without waiting; the rest waits for the socket to be writable. A
    /// buffer a large message grew past 64 KiB is given back once it is all out.
    fn flush(&mut self) {
        let _ = self.transport.send(&mut self.tx);
        if self.tx.is_empty() && self.tx.capacity() > SCRATCH {
            self.tx = Vec::new();
        }
    }

    /// Ends it at once: a close frame if the socket takes it now, then the socket is dropped.
    fn abandon(mut self, code: u16, reason: &str) {
        self.ws.close(CloseCode(code), reason, now(), &mut self.tx);
        self.flush();
    }

    /// `close()`: the close frame (and TLS close_notify), written within a second, then the
    /// socket is dropped.
    async fn shutdown(mut self) {
        self.ws.close(CloseCode::NORMAL, "", now(), &mut self.tx);
        let write = async {
            self.transport.send_all(&mut self.tx).await?;
            if let Some(tls) = &mut self.transport.tls {
                tls.send_close_notify();
                self.transport.send_all(&mut Vec::new()).await?;
            }
            self.transport.stream.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
    }
}

/// The socket, through TLS for `wss:`: plaintext in and out, without waiting (the `try_`
/// calls) or waiting for readiness (the async ones).
struct Transport {
    stream: TcpStream,
    /// `wss:`: the TLS session between the socket's bytes and the WebSocket's.
    tls: Option<Box<ClientConnection>>,
}

impl Transport {
    /// Plaintext from the server, as `try_read` gives it: `Ok(0)` at the end, `WouldBlock`
    /// when nothing is ready. Through TLS, records are read and decrypted until some plaintext
    /// comes; the read that finds the socket empty clears tokio's readiness, as a plain
    /// `try_read` does, and no plaintext is left behind unread once it says `WouldBlock`.
    fn receive(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(tls) = &mut self.tls else {
            return self.stream.try_read(buf);
        };
        loop {
            match tls.reader().read(buf) {
                // 0: the server's close_notify.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // The socket ended without close_notify: the end all the same (a truncated
                // WebSocket message is the protocol's to notice).
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            tls.read_tls(&mut Nonblocking(&self.stream))?;
            // The error keeps rustls' own inside, for `attempt_error`.
            tls.process_new_packets().map_err(std::io::Error::other)?;
        }
    }

    /// Plaintext TLS has already decrypted (behind the 101, in the same records), into `into`.
    fn take_decrypted(&mut self, into: &mut Vec<u8>) {
        let Some(tls) = &mut self.tls else { return };
        let _ = tls.reader().read_to_end(into);
    }

    /// Writes what it can of `tx` (drained as it goes) without waiting; `Ok` when all of it,
    /// and every TLS record, is out. rustls takes plaintext up to its buffer limit (64 KiB).
    fn send(&mut self, tx: &mut Vec<u8>) -> std::io::Result<()> {
        let Some(tls) = &mut self.tls else {
            while !tx.is_empty() {
                let n = self.stream.try_write(tx)?;
                tx.drain(..n);
            }
            return Ok(());
        };
        loop {
            let taken = match tx.is_empty() {
                true => 0,
                false => tls.writer().write(tx)?,
            };
            tx.drain(..taken);
            if tls.wants_write() {
                tls.write_tls(&mut Nonblocking(&self.stream))?;
            } else if tx.is_empty() || taken == 0 {
                return Ok(());
            }
        }
    }

    fn write_waiting(&self, tx: &[u8]) -> bool {
        !tx.is_empty() || self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// [`Transport::send`], waiting until all of it is out.
    async fn send_all(&mut self, tx: &mut Vec<u8>) -> std::io::Result<()> {
        loop {
            match self.send(tx) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.stream.writable().await?;
                }
                done => return done,
            }
        }
    }

    /// [`Transport::receive`], waiting for some plaintext (or the end); what TLS has to send
    /// meanwhile (its handshake) is sent.
    async fn receive_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            self.send_all(&mut Vec::new()).await?;
            match self.receive(buf) {
                // What the records just read asked for (a handshake message) goes first.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && self.write_waiting(&[]) => {
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.stream.readable().await?;
                }
                done => return done,
            }
        }
    }
}

/// An I/O failure during an attempt, as the session sees it: a TLS failure that will repeat
/// (a refused certificate) is 1015, which stops the client; anything else is 1006.
fn attempt_error(stage: &str, e: &std::io::Error) -> AttemptError {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(tls_error) => AttemptError {
            code: if tls::is_permanent(tls_error) {
                1015
            } else {
                1006
            },
            reason: format!("TLS: {tls_error}"),
            status: None,
        },
        None => AttemptError::new(format!("{stage}: {e}")),
    }
}

type TlsSetup = Arc<(Arc<ClientConfig>, ServerName<'static>)>;

/// One attempt: TCP, TLS for `wss:` (its handshake carries the upgrade request), the upgrade
/// request (token as `Authorization: Bearer`), the 101.
async fn open(
    endpoint: Arc<Endpoint>,
    tls: Option<TlsSetup>,
    bearer: Option<String>,
    nonce: [u8; 16],
) -> Result<Opened, AttemptError> {
    let stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| AttemptError::new(format!("connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    let tls = match tls {
        Some(tls) => Some(Box::new(
            tls::connection(&tls.0, &tls.1).map_err(|e| attempt_error("TLS", &e))?,
        )),
        None => None,
    };
    let mut transport = Transport { stream, tls };
    let handshake = ClientHandshake::new(nonce);
    let mut request = Vec::with_capacity(256);
    let authorization = bearer.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = authorization
        .as_deref()
        .map(|value| ("Authorization", value))
        .into_iter()
        .collect();
    handshake.write_request(&endpoint.authority, &endpoint.path, &headers, &mut request);
    transport
        .send_all(&mut request)
        .await
        .map_err(|e| attempt_error("upgrade", &e))?;
    let mut answer = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match transport.receive_some(&mut chunk).await {
            Ok(n) => n,
            Err(e) => {
                // A TLS alert for the server, if the socket takes it.
                let _ = transport.send(&mut Vec::new());
                return Err(attempt_error("upgrade", &e));
            }
        };
        if n == 0 {
            return Err(AttemptError::new(
                "the server closed during the upgrade".to_owned(),
            ));
        }
        answer.extend_from_slice(&chunk[..n]);
        match handshake.read_response(&answer) {
            Ok(None) => {}
            Ok(Some(head)) => {
                let mut early = answer.split_off(head);
                transport.take_decrypted(&mut early);
                return Ok(Opened { transport, early });
            }
            Err(ClientError::Status(status)) => {
                return Err(AttemptError {
                    code: 1006,
                    reason: format!("upgrade refused with HTTP {status}"),
                    status: Some(status),
                });
            }
            Err(e) => return Err(AttemptError::new(format!("bad upgrade answer: {e:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flush_keeps_the_bytes_the_socket_did_not_take() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        // Accepted and never read: the kernel takes a few MiB of the 64 MiB at most.
        let (_peer, _) = listener.accept().await.unwrap();
        let mut link = Link {
            transport: Transport { stream, tls: None },
            ws: Connection::client(now(), 1),
            rx: Vec::new(),
            tx: vec![7; 64 << 20],
        };
        link.flush();
        assert!(
            !link.tx.is_empty(),
            "the rest of a large message waits for the socket"
        );
        assert!(link.tx.iter().all(|&byte| byte == 7));
    }

    #[test]
    fn only_a_tls_failure_that_will_repeat_is_1015() {
        let refused = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let error = attempt_error("upgrade", &std::io::Error::other(refused));
        assert_eq!(error.code, 1015);
        assert_eq!(error.reason, "TLS: invalid peer certificate: UnknownIssuer");
        let corrupt = std::io::Error::other(rustls::Error::DecryptError);
        assert_eq!(attempt_error("upgrade", &corrupt).code, 1006);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let error = attempt_error("upgrade", &reset);
        assert_eq!(error.code, 1006);
        assert!(error.reason.starts_with("upgrade: "), "{}", error.reason);
    }
}
