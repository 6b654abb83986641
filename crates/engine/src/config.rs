//! The engine's settings, shared by every reactor, and the choice of backend.

use std::net::SocketAddr;
use std::time::Duration;

use crate::{CompressionConfig, Limits, ProxyProtocol, TlsConfig, TrustedProxies, UringConfig};

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

/// Most listeners a reactor serves (`listen` and `also_listen` together).
pub const MAX_LISTENERS: usize = 8;

/// Settings of the engine, shared by every reactor.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on: listener 0 ([`crate::RequestInfo::listener`]).
    pub listen: SocketAddr,
    /// Further addresses, each served by every reactor like `listen` (an admin port, say):
    /// a request that came on `also_listen[i]` is told listener `i + 1`. At most
    /// [`MAX_LISTENERS`] listeners in all.
    pub also_listen: Vec<SocketAddr>,
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
    /// Most connections per reactor; further ones are closed at accept.
    pub max_connections_per_reactor: usize,
    /// Most connections per reactor still sending their request head (or a request body);
    /// further ones are closed at accept, so slow or silent clients cannot take every slot.
    pub max_handshakes_per_reactor: usize,
    /// Bytes a reactor buffers for all its connections together in their receive buffers:
    /// partial request heads and bodies, partial frames and fragmented messages. A connection
    /// whose buffer would take the total past it is closed (1013 "try again later"; before
    /// the upgrade, without an answer).
    pub max_partial_bytes_per_reactor: usize,
    /// How long a connection may stay over its write cap ([`Limits::max_queued_bytes`]) before
    /// it is dropped: its peer is not reading.
    pub write_timeout: Duration,
    /// Bytes of posted messages (as their senders weigh them) that may wait in one reactor's
    /// inbox; senders check [`crate::Mailboxes::has_room`] and refuse work past it.
    pub max_inbox_bytes: usize,
    /// The limits that may change while the reactors run (through [`crate::LiveLimits`]).
    pub limits: Limits,
    /// Bytes of the one read buffer each reactor shares among its connections (epoll; io_uring
    /// receives into its provided buffers, [`UringConfig`]).
    pub read_buffer_size: usize,
    /// HTTP keep-alive: most requests answered on one connection; the answer to the last says
    /// `Connection: close`. 1 closes after every answer. (How long a kept connection may idle:
    /// `protocol.keep_alive_timeout`.)
    pub keep_alive_requests: u32,
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
    /// TLS on the listener (every connection, every route); `None`: plaintext.
    pub tls: Option<TlsConfig>,
    /// The PROXY protocol header the trusted proxies send at the start of each connection, in
    /// the versions taken; `Off` (the default) looks for none. On, a trusted peer's connection
    /// without an acceptable header is closed, and so is any other peer's that starts with
    /// one; the header's source address is the peer the handler is told. Spoken on `listen`
    /// only: the `also_listen` listeners (an admin port) take plain connections.
    pub proxy_protocol: ProxyProtocol,
    /// The peers whose PROXY protocol headers are believed (the application may trust them with
    /// more, such as forwarding headers).
    pub trusted_proxies: TrustedProxies,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9001)),
            also_listen: Vec::new(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin_threads: true,
            private_fd_table: false,
            backlog: 4096,
            max_connections_per_reactor: 1 << 20,
            max_handshakes_per_reactor: 1024,
            max_partial_bytes_per_reactor: 64 << 20,
            write_timeout: Duration::from_secs(30),
            max_inbox_bytes: 64 << 20,
            limits: Limits::default(),
            read_buffer_size: 64 << 10,
            keep_alive_requests: 1000,
            drain_timeout: Duration::from_secs(10),
            io: Io::Auto,
            uring: UringConfig::default(),
            protocol: clarion_protocol::Config::default(),
            compression: CompressionConfig::default(),
            tls: None,
            proxy_protocol: ProxyProtocol::Off,
            trusted_proxies: TrustedProxies::default(),
        }
    }
}
