//! The tokio task behind a [`crate::Client`]: it owns the socket and the protocol state
//! ([`clarion_protocol::Connection`]), runs the token provider and the timers, and carries out
//! what the [`Session`] asks. All decisions are the session's; this only moves bytes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use clarion_protocol::connection::Failure;
use clarion_protocol::handshake::{ClientError, ClientHandshake};
use clarion_protocol::{CloseCode, Connection, MessageKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

use crate::backoff::Rng;
use crate::event::{Event, PublishAck, PublishError, State};
use crate::events::Sink;
use crate::options::TokenProvider;
use crate::queue::Ticket;
use crate::session::{Output, Purpose, Reply, Session};
use crate::subscriptions::SubCell;
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
    pub(crate) provider: Option<TokenProvider>,
    pub(crate) connect_timeout: Duration,
    pub(crate) event_buffer: usize,
    pub(crate) max_message_size: u64,
    pub(crate) state: Arc<SharedState>,
    pub(crate) rng: Rng,
}

/// An open WebSocket.
struct Link {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    ws: Connection,
    /// Lent to the protocol: holds only an incomplete frame or message (empty otherwise).
    rx: Vec<u8>,
    /// Bytes for the server not yet written.
    tx: Vec<u8>,
}

/// A finished upgrade: the stream and whatever arrived behind the 101.
struct Opened {
    stream: TcpStream,
    early: Vec<u8>,
}

/// A failed attempt: the reason, and the HTTP status of a refused upgrade.
struct AttemptError {
    reason: String,
    status: Option<u16>,
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
        let write_waiting = link.as_ref().is_some_and(|l| !l.tx.is_empty());
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
                        let mut new = driver.link(opened.stream);
                        session.opened(now());
                        let mut early = opened.early;
                        if let Some((code, reason)) = driver.feed(&mut session, &mut new, &mut early) {
                            new.flush();
                            session.ended(code, &reason, None, now());
                        } else {
                            link = Some(new);
                        }
                    }
                    Err(e) => session.ended(1006, &e.reason, e.status, now()),
                }
            }
            fetched = optional(token.as_mut().map(|(_, fetch)| fetch)) => {
                let (purpose, _) = token.take().expect("polled");
                session.token_ready(purpose, fetched, now());
            }
            ready = optional(link.as_ref().filter(|_| !paused).map(|l| l.read.readable())) => {
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
            writable = optional(link.as_ref().filter(|_| write_waiting).map(|l| l.write.writable())) => {
                if let Err(e) = writable {
                    link = None;
                    session.ended(1006, &e.to_string(), None, now());
                }
            }
            () = optional(deadline.map(|at| tokio::time::sleep_until(at.into()))) => {
                session.handle_timeout(now());
            }
            () = optional(driver.first_full().map(Sink::room)), if paused => {}
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
        self.first_full().is_some()
    }

    fn first_full(&self) -> Option<&Sink> {
        self.sinks.iter().find(|s| s.full(self.event_buffer))
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
        Box::pin(open(self.endpoint.clone(), bearer, nonce))
    }

    fn link(&mut self, stream: TcpStream) -> Link {
        let (read, write) = stream.into_split();
        Link {
            read,
            write,
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
                match link.read.try_read(&mut buf) {
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
    /// Writes what it can without waiting.
    fn flush(&mut self) {
        while !self.tx.is_empty() {
            match self.write.try_write(&self.tx) {
                Ok(n) => {
                    self.tx.drain(..n);
                }
                Err(_) => return,
            }
        }
        if self.tx.capacity() > SCRATCH {
            self.tx = Vec::new();
        }
    }

    /// Ends it at once: a close frame if the socket takes it now, then the socket is dropped.
    fn abandon(mut self, code: u16, reason: &str) {
        self.ws.close(CloseCode(code), reason, now(), &mut self.tx);
        self.flush();
    }

    /// `close()`: the close frame, written within a second, then the socket is dropped.
    async fn shutdown(mut self) {
        self.ws.close(CloseCode::NORMAL, "", now(), &mut self.tx);
        let write = async {
            self.write.write_all(&self.tx).await?;
            self.write.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
    }
}

/// One attempt: TCP, the upgrade request (token as `Authorization: Bearer`), the 101.
async fn open(
    endpoint: Arc<Endpoint>,
    bearer: Option<String>,
    nonce: [u8; 16],
) -> Result<Opened, AttemptError> {
    let failed = |reason: String| AttemptError {
        reason,
        status: None,
    };
    let mut stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| failed(format!("connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    let handshake = ClientHandshake::new(nonce);
    let mut request = Vec::with_capacity(256);
    let authorization = bearer.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = authorization
        .as_deref()
        .map(|value| ("Authorization", value))
        .into_iter()
        .collect();
    handshake.write_request(&endpoint.authority, &endpoint.path, &headers, &mut request);
    stream
        .write_all(&request)
        .await
        .map_err(|e| failed(format!("upgrade: {e}")))?;
    let mut answer = Vec::with_capacity(512);
    loop {
        let n = stream
            .read_buf(&mut answer)
            .await
            .map_err(|e| failed(format!("upgrade: {e}")))?;
        if n == 0 {
            return Err(failed("the server closed during the upgrade".to_owned()));
        }
        match handshake.read_response(&answer) {
            Ok(None) => {}
            Ok(Some(head)) => {
                let early = answer.split_off(head);
                return Ok(Opened { stream, early });
            }
            Err(ClientError::Status(status)) => {
                return Err(AttemptError {
                    reason: format!("upgrade refused with HTTP {status}"),
                    status: Some(status),
                });
            }
            Err(e) => return Err(failed(format!("bad upgrade answer: {e:?}"))),
        }
    }
}
