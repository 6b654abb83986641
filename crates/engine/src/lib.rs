//! The engine: one event loop per core, generic over a [`Handler`] (the application).
//!
//! Each reactor thread owns its `SO_REUSEPORT` listener, its connection table (a `slab`), its
//! buffer pools, its timer wheel and one shared read buffer. It knows WebSockets and HTTP heads
//! (through [`clarion_protocol`]) but no routes, topics or API: those are the handler's.
//! I/O goes through a [`sys::Backend`]; everything else lives once, in [`event_loop`].
#![deny(missing_docs)]

pub mod buffer;
mod compression;
mod event_loop;
mod listen;
pub mod mailbox;
mod proxies;
pub mod proxy_protocol;
pub mod sys;
pub mod timer;
pub mod txqueue;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clarion_protocol::deflate::Params;
use clarion_protocol::handshake::{Rejection, Request};
use clarion_protocol::{CloseCode, MessageKind, SendError, Transmit};

pub use compression::{CompressionConfig, Policy};
pub use listen::bind_reuseport;
pub use mailbox::Mailboxes;
pub use proxies::{Cidr, CidrError, TrustedProxies};
pub use proxy_protocol::ProxyProtocol;
pub use sys::uring::UringConfig;

/// Which event-loop backend the reactors use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// io_uring where the kernel allows it, else epoll.
    Auto,
    /// epoll (readiness, through mio).
    Epoll,
    /// io_uring (completions, direct descriptors, provided buffers).
    Uring,
}

/// Identifies a connection within its reactor (its slab key).
pub type ConnId = usize;

/// Settings of the engine, shared by every reactor.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Number of reactor threads.
    pub threads: usize,
    /// Pin reactor `i` to core `i % cores`.
    pub pin_threads: bool,
    /// Give each reactor thread its own file table (`unshare(CLONE_FILES)`), so each can hold
    /// up to `RLIMIT_NOFILE` sockets: the epoll backend's way past the limit on hosts where it
    /// cannot be raised (a reactor never shares its sockets).
    pub private_fd_table: bool,
    /// `listen(2)` backlog of each reactor's listener.
    pub backlog: i32,
    /// Most connections per reactor; further ones are refused at accept.
    pub max_connections_per_reactor: usize,
    /// Bytes of the one read buffer each reactor shares among its connections.
    pub read_buffer_size: usize,
    /// On shutdown, how long connections get to finish their close handshake.
    pub drain_timeout: Duration,
    /// The backend.
    pub io: Io,
    /// io_uring ring and buffer sizes (per reactor).
    pub uring: UringConfig,
    /// Protocol limits and timeouts.
    pub protocol: clarion_protocol::Config,
    /// permessage-deflate.
    pub compression: CompressionConfig,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9001)),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin_threads: true,
            private_fd_table: false,
            backlog: 4096,
            max_connections_per_reactor: 1 << 20,
            read_buffer_size: 64 << 10,
            drain_timeout: Duration::from_secs(10),
            io: Io::Auto,
            uring: UringConfig::default(),
            protocol: clarion_protocol::Config::default(),
            compression: CompressionConfig::default(),
        }
    }
}

/// The application on top of a reactor; one instance per reactor thread, so no locking.
pub trait Handler {
    /// Per-connection state, stored in the connection's slab entry: every byte here is paid by
    /// every connection, so keep it small.
    type Conn;

    /// What other threads post to this reactor through [`Mailboxes`].
    type Inbox: Send + 'static;

    /// A complete HTTP request (head and `Content-Length` body) arrived. WebSocket upgrades are
    /// validated by the reactor after an [`Answer::Upgrade`]; anything else is answered as
    /// plain HTTP.
    fn on_request<'r>(
        &mut self,
        request: &Request<'r>,
        body: &[u8],
        peer: Option<SocketAddr>,
    ) -> Answer<'r, Self::Conn>;

    /// The WebSocket is open (the 101 answer is queued).
    fn on_open(&mut self, _ctx: &mut Ctx<'_, Self::Conn>) {}

    /// A complete message arrived.
    fn on_message(&mut self, ctx: &mut Ctx<'_, Self::Conn>, kind: MessageKind, payload: &[u8]);

    /// The WebSocket is over (close handshake, failure, timeout or dropped TCP); called once per
    /// opened connection. `code` is the close code sent or received, `None` if the TCP
    /// connection dropped without one.
    fn on_close(&mut self, _id: ConnId, _conn: &mut Self::Conn, _code: Option<CloseCode>) {}

    /// A message posted to this reactor. Frames sent through `local` are queued by reference
    /// and each touched connection is written once after the inbox is drained, so a subscriber
    /// behind on several messages gets them in one write.
    fn on_inbox(&mut self, _local: &mut Local<'_, Self::Conn>, _message: Self::Inbox) {}

    /// The reactor's sweep begins: it walks its table about once a second ([`SWEEP_INTERVAL`]
    /// apart at least; later when the loop is busy) to arm the timers of connections whose
    /// deadlines come near. Return true to have [`Handler::on_sweep_conn`] called for every
    /// open WebSocket during this sweep; false (the default) costs nothing per connection.
    fn on_sweep(&mut self, _now: Instant) -> bool {
        false
    }

    /// During a sweep that [`Handler::on_sweep`] asked for, once per open WebSocket: the place
    /// for the handler's own coarse deadlines (a token's expiry, an application heartbeat)
    /// without a timer or an allocation per connection. Sends and closes work as in any other
    /// callback.
    fn on_sweep_conn(&mut self, _ctx: &mut Ctx<'_, Self::Conn>) {}
}

/// How often, at most, a reactor sweeps its table (and calls [`Handler::on_sweep`]).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What [`Local::send_shared`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// Queued for writing.
    Queued,
    /// Not queued: the connection already has more than the allowed bytes waiting.
    Full,
    /// Not queued: the connection is gone or no longer open.
    Closed,
}

/// A handler's access to every connection of its reactor, during [`Handler::on_inbox`].
pub struct Local<'a, C> {
    ops: &'a mut dyn LocalOps<C>,
    now: Instant,
}

/// The reactor side of [`Local`].
trait LocalOps<C> {
    fn conn(&mut self, id: ConnId) -> Option<&mut C>;
    fn queued(&self, id: ConnId) -> Option<usize>;
    fn deflate(&self, id: ConnId) -> Option<Params>;
    fn send_shared(&mut self, id: ConnId, frame: &Arc<[u8]>, max_queued: usize) -> Push;
    fn close(&mut self, id: ConnId, code: CloseCode, reason: &str, now: Instant);
}

impl<C> Local<'_, C> {
    /// When the reactor woke.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// An open connection's application state.
    pub fn conn(&mut self, id: ConnId) -> Option<&mut C> {
        self.ops.conn(id)
    }

    /// Bytes waiting to be written to a connection.
    pub fn queued(&self, id: ConnId) -> Option<usize> {
        self.ops.queued(id)
    }

    /// The permessage-deflate parameters an open connection negotiated, if it did: a frame
    /// compressed on its own fits it when [`Params::accepts_shared`] says so.
    pub fn deflate(&self, id: ConnId) -> Option<Params> {
        self.ops.deflate(id)
    }

    /// Queues a whole frame shared with other connections, unless more than `max_queued`
    /// bytes would then wait for this connection.
    pub fn send_shared(&mut self, id: ConnId, frame: &Arc<[u8]>, max_queued: usize) -> Push {
        self.ops.send_shared(id, frame, max_queued)
    }

    /// Starts the close handshake of a connection.
    pub fn close(&mut self, id: ConnId, code: CloseCode, reason: &str) {
        self.ops.close(id, code, reason, self.now);
    }
}

/// What every reactor's handler is built with: the way to reach the other reactors, and
/// everyone's counters.
pub struct Shared<M> {
    /// The reactors' inboxes.
    pub mailboxes: Arc<Mailboxes<M>>,
    /// The reactors' counters.
    pub stats: Arc<[Arc<Stats>]>,
}

/// How to answer a request head.
pub enum Answer<'r, C> {
    /// Open a WebSocket with this state and subprotocol (one the client offered).
    Upgrade {
        /// The connection's application state.
        conn: C,
        /// The chosen subprotocol.
        protocol: Option<&'r str>,
    },
    /// Answer as plain HTTP, then close.
    Respond(Response),
    /// Refuse with a status (and the header it calls for).
    Reject(Rejection),
}

/// A plain HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Further headers.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a body and no further headers.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }
}

/// Where a handler's outgoing frames go: the connection's corked writer.
pub trait Sink: Transmit {
    /// Queues a frame shared with other connections (framed once, never copied per connection).
    fn transmit_shared(&mut self, frame: &Arc<[u8]>);
}

/// A handler's view of one open connection during a callback.
pub struct Ctx<'a, C> {
    id: ConnId,
    conn: &'a mut C,
    ws: &'a mut clarion_protocol::Connection,
    out: &'a mut dyn Sink,
    deflating: &'a mut compression::Deflating,
    stats: &'a Stats,
    now: Instant,
}

impl<C> Ctx<'_, C> {
    /// The connection's id in its reactor.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The connection's application state.
    pub fn conn(&mut self) -> &mut C {
        self.conn
    }

    /// When the reactor woke for this event.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Sends a message (written at once if the socket takes it, else queued), compressed when
    /// the connection negotiated permessage-deflate and the payload reaches the threshold.
    pub fn send(&mut self, kind: MessageKind, payload: &[u8]) -> Result<(), SendError> {
        let (id, stats) = (self.id, self.stats);
        self.deflating
            .send(id, self.ws, kind, payload, &mut *self.out, stats)
    }

    /// The permessage-deflate parameters the connection negotiated, if it did.
    pub fn deflate(&self) -> Option<Params> {
        self.ws.deflate()
    }

    /// Sends a whole frame built with [`clarion_protocol::frame::encode_frame`], shared by many
    /// connections.
    pub fn send_shared(&mut self, frame: &Arc<[u8]>) -> Result<(), SendError> {
        if !self.ws.can_send() {
            return Err(SendError::NotOpen);
        }
        self.out.transmit_shared(frame);
        Ok(())
    }

    /// Starts the close handshake.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        self.ws.close(code, reason, self.now, &mut *self.out);
    }
}

/// Counters of one reactor, read by metrics and tests from other threads.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections in the table (any state).
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// WebSocket handshakes completed.
    pub upgrades: AtomicU64,
    /// Plain HTTP requests answered.
    pub http_requests: AtomicU64,
    /// Messages received.
    pub messages_in: AtomicU64,
    /// Receive buffers currently lent to connections.
    pub rx_buffers_lent: AtomicU64,
    /// Write queues currently lent to connections.
    pub tx_queues_lent: AtomicU64,
    /// Pending timers.
    pub timers: AtomicU64,
    /// Open connections that negotiated permessage-deflate.
    pub deflate_connections: AtomicU64,
    /// Of those, connections holding their own windows (context takeover).
    pub deflate_windows: AtomicU64,
    /// Connections given no context takeover because `max_windows` was reached.
    pub deflate_capped: AtomicU64,
    /// Compressed messages received.
    pub deflate_messages_in: AtomicU64,
    /// Compressed payload bytes received (as sent, before inflating).
    pub deflate_bytes_in: AtomicU64,
    /// Messages sent compressed through [`Ctx::send`].
    pub deflate_messages_out: AtomicU64,
    /// Compressed payload bytes sent through [`Ctx::send`].
    pub deflate_bytes_out: AtomicU64,
}

impl Stats {
    fn set(gauge: &AtomicU64, value: usize) {
        gauge.store(value as u64, Ordering::Relaxed);
    }
}

/// Starts a graceful shutdown from any thread (a signal handler thread, a test).
#[derive(Clone)]
pub struct ShutdownHandle {
    flag: Arc<AtomicBool>,
    wakers: Vec<Arc<dyn sys::Wake>>,
}

impl ShutdownHandle {
    /// Stop accepting, close every connection with 1001, drain, then let the reactors exit.
    pub fn shutdown(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.wakers.iter().for_each(|w| w.wake());
    }
}

/// Running reactors: their stats, and the way to stop them.
pub struct Runtime {
    local_addr: SocketAddr,
    io: Io,
    shutdown: ShutdownHandle,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stats: Vec<Arc<Stats>>,
}

impl Runtime {
    /// Binds one listener per reactor and starts the reactor threads on the configured backend.
    /// `make_handler(i, shared)` builds reactor `i`'s handler, on that reactor's thread; an error
    /// there fails the start like a backend that cannot be built.
    pub fn start<H, F>(config: Config, make_handler: F) -> io::Result<Runtime>
    where
        H: Handler + 'static,
        F: Fn(usize, &Shared<H::Inbox>) -> io::Result<H> + Send + Sync + 'static,
    {
        let listeners = bind_reuseport(config.listen, config.threads.max(1), config.backlog)?;
        let local_addr = listeners[0].local_addr()?;
        let mut runtime = Runtime {
            local_addr,
            io: config.io,
            shutdown: ShutdownHandle {
                flag: Arc::new(AtomicBool::new(false)),
                wakers: Vec::new(),
            },
            threads: Mutex::new(Vec::new()),
            stats: Vec::new(),
        };
        let config = Arc::new(config);
        let make_handler = Arc::new(make_handler);
        runtime.io = match config.io {
            Io::Auto => match sys::uring::probe(&config.uring) {
                Ok(()) => Io::Uring,
                Err(e) => {
                    tracing::info!("io_uring unavailable ({e}); using epoll");
                    Io::Epoll
                }
            },
            io => io,
        };
        if runtime.io == Io::Uring {
            let uring = config.uring;
            runtime.spawn(listeners, &config, &make_handler, move |l| {
                sys::uring::Uring::new(l, uring)
            })?;
        } else {
            runtime.spawn(listeners, &config, &make_handler, |l| {
                sys::epoll::Epoll::new(l, 1024)
            })?;
        }
        Ok(runtime)
    }

    /// Starts one reactor thread per listener on the backend `make_backend` builds there (a ring
    /// belongs to the thread that creates it). Fails, stopping what started, if any cannot.
    fn spawn<B, H, F>(
        &mut self,
        listeners: Vec<std::net::TcpListener>,
        config: &Arc<Config>,
        make_handler: &Arc<F>,
        make_backend: impl Fn(std::net::TcpListener) -> io::Result<B> + Clone + Send + 'static,
    ) -> io::Result<()>
    where
        B: sys::Backend + 'static,
        H: Handler + 'static,
        F: Fn(usize, &Shared<H::Inbox>) -> io::Result<H> + Send + Sync + 'static,
    {
        let mut threads = Vec::new();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        self.stats = (0..listeners.len())
            .map(|_| Arc::new(Stats::default()))
            .collect();
        let shared = Arc::new(Shared {
            mailboxes: Arc::new(Mailboxes::<H::Inbox>::new(listeners.len())),
            stats: self.stats.iter().cloned().collect(),
        });
        for (index, listener) in listeners.into_iter().enumerate() {
            let stats = self.stats[index].clone();
            let (config, make_handler, flag) = (
                config.clone(),
                make_handler.clone(),
                self.shutdown.flag.clone(),
            );
            let (make_backend, ready_tx, shared) =
                (make_backend.clone(), ready_tx.clone(), shared.clone());
            let thread = std::thread::Builder::new()
                .name(format!("reactor-{index}"))
                .spawn(move || {
                    if config.pin_threads {
                        listen::pin_to_core(index);
                    }
                    let backend = match make_backend(listener) {
                        Ok(backend) => backend,
                        Err(e) => return drop(ready_tx.send(Err(e))),
                    };
                    // After the backend exists: its waker's descriptor, which other threads write
                    // to, must be the same in their table and in this thread's copy.
                    if config.private_fd_table
                        && let Err(e) = clarion_host::unshare_fd_table()
                    {
                        return drop(ready_tx.send(Err(e)));
                    }
                    let waker = sys::Backend::waker(&backend);
                    shared.mailboxes.set_waker(index, waker.clone());
                    let handler = match make_handler(index, &shared) {
                        Ok(handler) => handler,
                        Err(e) => return drop(ready_tx.send(Err(e))),
                    };
                    let _ = ready_tx.send(Ok(waker));
                    let mailboxes = shared.mailboxes.clone();
                    drop(shared);
                    event_loop::Reactor::new(backend, handler, config, stats, index, mailboxes)
                        .run(&flag);
                })?;
            threads.push(thread);
        }
        *self.threads.lock().unwrap_or_else(|e| e.into_inner()) = threads;
        for _ in 0..self.stats.len() {
            match ready.recv() {
                Ok(Ok(waker)) => self.shutdown.wakers.push(waker),
                Ok(Err(e)) => {
                    self.shutdown();
                    self.join();
                    return Err(e);
                }
                Err(_) => return Err(io::Error::other("a reactor thread died while starting")),
            }
        }
        Ok(())
    }

    /// The backend the reactors run on (`Auto` resolved).
    pub fn io(&self) -> Io {
        self.io
    }

    /// The address the listeners are bound to (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Per-reactor counters.
    pub fn stats(&self) -> &[Arc<Stats>] {
        &self.stats
    }

    /// Begins a graceful shutdown: stop accepting, close every connection with 1001, drain.
    pub fn shutdown(&self) {
        self.shutdown.shutdown();
    }

    /// A handle that begins the shutdown from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Waits for every reactor to finish (after [`Runtime::shutdown`]).
    pub fn join(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shutdown();
        self.join();
    }
}
