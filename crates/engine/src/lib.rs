//! Clarion's engine: thread-per-core WebSocket and HTTP event loops on io_uring or epoll,
//! generic over a [`Handler`], the application you write.
//!
//! # Where it sits
//!
//! ```text
//! your server (a Handler)       the push server `clarion` is one
//! clarion-engine   <- here      reactors, backends, timers, buffers, the Handler API
//! clarion-pubsub                topics and frame-once fanout, no sockets (optional)
//! clarion-protocol              sans-IO RFC 6455 / 7692: bytes and `now` in, events out
//! ```
//!
//! [`Runtime::start`] binds, for each address it listens on ([`Config::listen`] and any
//! [`Config::also_listen`], an admin port say), one `SO_REUSEPORT` listener per reactor thread
//! (the kernel spreads connections over them) and runs a reactor on each; a request is told
//! which listener it came on ([`RequestInfo::listener`]). A reactor owns its connections outright:
//! their table (one small entry each, see [`connection_size`]), one read buffer, pools of receive
//! buffers and write queues that connections borrow only while they hold bytes, and a timer
//! wheel for pings, pongs and timeouts. It speaks WebSocket and HTTP/1.1 (keep-alive and
//! pipelining included: [`Config::keep_alive_requests`]) request heads itself
//! and hands you each request, each message and each close, with `now`, on the reactor's
//! thread: one [`Handler`] per reactor, so no locks. The two backends (epoll readiness,
//! io_uring completion; [`Io`]) behave the same to a handler.
//!
//! # A first handler
//!
//! Answer a request with [`Answer::Upgrade`] to open a WebSocket (or [`Answer::Respond`] for
//! plain HTTP), then act on messages through [`Ctx`]:
//!
//! ```no_run
//! use clarion_engine::{Answer, Config, Ctx, Handler, RequestInfo, Response, Runtime};
//! use clarion_protocol::MessageKind;
//! use clarion_protocol::handshake::Request;
//!
//! /// Echoes every message on `/echo`.
//! struct Echo;
//!
//! impl Handler for Echo {
//!     type Conn = (); // per-connection state: none
//!     type Inbox = (); // nothing is posted from other threads
//!
//!     fn on_request<'r>(&mut self, request: &Request<'r>, _body: &[u8], _info: &RequestInfo)
//!         -> Answer<'r, ()> {
//!         match request.path() {
//!             "/echo" => Answer::Upgrade { conn: (), protocol: None },
//!             _ => Answer::Respond(Response::new(404, "text/plain", "not found\n")),
//!         }
//!     }
//!
//!     fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, kind: MessageKind, payload: &[u8]) {
//!         let _ = ctx.send(kind, payload); // fails only once our close frame is out
//!     }
//! }
//!
//! let config = Config { listen: "127.0.0.1:9001".parse().unwrap(), ..Config::default() };
//! let runtime = Runtime::start(config, |_reactor, _shared| Ok(Echo))?;
//! runtime.join(); // until `runtime.shutdown()` or a `ShutdownHandle` from another thread
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Reaching connections on other reactors
//!
//! Each handler is built with a [`Shared`]: the reactors' [`Mailboxes`] and counters. Post a
//! message (your [`Handler::Inbox`] type) to any reactor; its handler gets it in
//! [`Handler::on_inbox`] with a [`Local`] that reaches every connection of that reactor. A
//! broadcast frames a message once ([`clarion_protocol::frame::encode_frame`]) into an
//! `Arc<[u8]>` and [`Local::send_shared`] queues it by reference for each receiver, with a cap
//! on what may wait per connection; each connection touched is written once after the inbox
//! drain. `examples/chat.rs` in the repository is a chat server built this way; `examples/` also
//! has an echo server and a client on the protocol crate.
//!
//! Linux only (epoll, io_uring, Linux socket options).
#![deny(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!("clarion-engine runs on Linux only: it is built on epoll and io_uring");

mod buffer;
mod compression;
mod config;
mod context;
mod handler;
mod histogram;
mod limits;
mod listen;
mod mailbox;
mod proxies;
pub mod proxy_protocol;
mod reactor;
mod runtime;
mod stats;
mod sys;
mod timer;
pub mod tls;
mod txqueue;

pub use compression::{CompressionConfig, Policy};
pub use config::{Config, Io, MAX_LISTENERS};
pub(crate) use context::LocalOps;
pub use context::{Ctx, Local};
pub use handler::{Answer, Handler, Limit, LimitHit, Push, RequestInfo, Response};
pub use histogram::{BUCKETS, Histogram, LatencyHistogram};
pub use limits::{Limits, LiveLimits, MAX_MESSAGE_BURST};
pub use mailbox::Mailboxes;
pub use proxies::{Cidr, CidrError, TrustedProxies};
pub use proxy_protocol::ProxyProtocol;
pub use runtime::{Runtime, Shared, ShutdownHandle};
pub use stats::Stats;
pub use sys::uring::UringConfig;
pub use tls::TlsConfig;

/// Identifies a connection within its reactor (its slab key).
pub type ConnId = usize;

/// How often, at most, a reactor sweeps its table (and calls [`Handler::on_sweep`]).
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Bytes one connection takes in its reactor's table when the handler's per-connection state is
/// `C` (its [`Handler::Conn`]): the socket, the protocol state machine, slots for a receive
/// buffer, a write queue and a timer (empty while idle), the state, two bytes of flags, its
/// allowance of messages and bytes (6 bytes), and the table's own link. The same on both backends. An idle connection costs this and nothing more
/// in the engine (plus what the kernel keeps per socket).
pub const fn connection_size<C>() -> usize {
    let epoll = size_of::<reactor::SlabEntry<reactor::Conn<std::net::TcpStream, C>>>();
    let uring = size_of::<reactor::SlabEntry<reactor::Conn<sys::uring::Direct, C>>>();
    if epoll > uring { epoll } else { uring }
}
