//! Settings: command-line flags over `CLARION_*` environment variables over an optional TOML
//! file over defaults (how the sources merge: [`super::sources`]).
//!
//! Every flag of `clarion serve` has a TOML key of the same name (with `_` for `-`), except
//! `--redis`, which is `redis` in the `[cluster]` table, and `--tls-cert` and `--tls-key`,
//! which are `cert` and `key` in the `[tls]` table, and an environment variable
//! `CLARION_<KEY>` (upper case; `__` for a table: `CLARION_CLUSTER__REDIS`). Sizes are in bytes,
//! durations are written `500ms`, `10s`, `2m` or `1h`; `0` turns an optional timer off. The
//! list of keys is read off [`Settings`] itself ([`keys`]); `docs/configuration.md` and
//! `config/clarion.toml` are tested against it.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use clap::{Args, ValueEnum};
use clarion_engine::tls::ReloadableCert;
use clarion_host::parse_duration;
use serde::Deserialize;

use super::auth::{AuthMode, JwtConfig};
use super::forwarded::ForwardedHeader;
use super::keys::{Key, SECRET, keys_of};
use super::logging::LogFormat;
use super::sources::{Layer, Sources};
use super::state::{AppConfig, ClientPublish, SlowConsumer};
use crate::cluster::{self, Auth, ClusterConfig, Upstream};

use clarion_engine::{Cidr, TrustedProxies};
use clarion_pubsub::{HubConfig, MAX_REACTORS};

/// A configured secret (JWT key, API key, a URL with a password): used as a `str`, never shown
/// by `Debug`. A key of this type may also be read from a file (`<key>_file`, see
/// [`super::sources`]): it asks serde for the newtype [`SECRET`], which is how the key list
/// knows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Secret, D::Error> {
        struct Text;
        impl<'de> serde::de::Visitor<'de> for Text {
            type Value = Secret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_newtype_struct<D: serde::Deserializer<'de>>(
                self,
                de: D,
            ) -> Result<Secret, D::Error> {
                String::deserialize(de).map(Secret)
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Secret, E> {
                Ok(Secret(text.to_owned()))
            }
        }
        de.deserialize_newtype_struct(SECRET, Text)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::ops::Deref for Secret {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(text.to_owned()))
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Secret {
        Secret(text.to_owned())
    }
}

/// Where the admin listener listens by default: loopback, a port beside the public one's.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9011);

/// `admin_listen`: an address, or `off` for no admin listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminListen(pub Option<SocketAddr>);

impl std::str::FromStr for AdminListen {
    type Err = String;

    fn from_str(text: &str) -> Result<AdminListen, String> {
        match text.trim() {
            "off" | "none" => Ok(AdminListen(None)),
            addr => addr
                .parse()
                .map(|addr| AdminListen(Some(addr)))
                .map_err(|_| format!("expected ADDR:PORT or off, found {text:?}")),
        }
    }
}

impl<'de> Deserialize<'de> for AdminListen {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<AdminListen, D::Error> {
        String::deserialize(de)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The `--io` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoChoice {
    /// io_uring if available, else epoll.
    Auto,
    /// epoll.
    Epoll,
    /// io_uring; fail if unavailable.
    Uring,
}

/// The `proxy_protocol` choices: which PROXY protocol versions the trusted proxies send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocolChoice {
    /// None looked for.
    Off,
    /// Version 1 (text).
    V1,
    /// Version 2 (binary).
    V2,
    /// Either.
    Any,
}

/// The `compression` choices (permessage-deflate).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompressionChoice {
    /// Decline every offer.
    Off,
    /// No context takeover, one compressor per reactor: nothing per connection.
    Shared,
    /// Context takeover with windows of its own, for up to `compression_max_windows`
    /// connections per reactor (shared beyond).
    PerConnection,
}

/// `clarion serve` flags, which are also the config keys: each flag overrides its
/// `CLARION_<KEY>` variable, which overrides the config file's key of the same name.
#[derive(Args, Debug, Default, Deserialize, Clone)]
#[group(skip)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// TOML config file (keys as these flags, with `_` for `-`) [env: CLARION_CONFIG]. Every
    /// key can also be set as `CLARION_<KEY>` (`CLARION_CLUSTER__REDIS` for `[cluster] redis`):
    /// flags win over the environment, which wins over the file.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:9001]. Use 0.0.0.0:9001 (or [::]:9001) for
    /// all interfaces.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,

    /// Event-loop backend: io_uring where the kernel allows it (auto), or one of them
    /// [default: auto].
    #[arg(long, value_enum)]
    pub io: Option<IoChoice>,

    /// io_uring: fixed-file slots per reactor, i.e. the most connections one reactor holds
    /// [default: the soft RLIMIT_NOFILE after raising it to the hard limit].
    #[arg(long, value_name = "N")]
    pub uring_files: Option<u32>,

    /// io_uring: provided receive buffers per reactor, a power of two [default: 512].
    #[arg(long, value_name = "N")]
    pub uring_buffers: Option<u16>,

    /// io_uring: bytes per provided receive buffer [default: 16384].
    #[arg(long, value_name = "BYTES")]
    pub uring_buffer_size: Option<u32>,

    /// Reactor threads, one per core [default: available cores]. More than the cores is
    /// allowed (with io_uring each reactor adds a fixed-file table).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Give each reactor thread a private file table (unshare(CLONE_FILES)), so each holds up to
    /// RLIMIT_NOFILE sockets: how the epoll backend passes the limit where it cannot be raised.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub private_fd_table: Option<bool>,

    /// Do not pin reactor threads to cores.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub no_pin: Option<bool>,

    /// listen(2) backlog of each reactor's listener [default: 4096].
    #[arg(long, value_name = "N")]
    pub backlog: Option<i32>,

    /// Most connections per reactor; more are closed at accept [default: 1048576].
    #[arg(long, value_name = "N")]
    pub max_connections_per_reactor: Option<usize>,

    /// Most connections per reactor still sending their request (head or body); more are
    /// closed at accept, so slow or silent clients cannot take every slot [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_handshakes_per_reactor: Option<usize>,

    /// Bytes a reactor buffers for partial request heads and bodies, frames and messages, all
    /// its connections together; a connection that would go past it is closed with 1013
    /// [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    pub max_partial_bytes_per_reactor: Option<usize>,

    /// How long a connection may stay over its write cap (max_queued_bytes, not reading)
    /// before it is dropped [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub write_timeout: Option<Duration>,

    /// Bytes of messages that may wait in one reactor's inbox; past it publishes are refused
    /// (HTTP 503, envelope `unavailable`) [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    pub max_inbox_bytes: Option<usize>,

    /// Largest frame payload in bytes; larger closes with 1009 [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub max_frame_size: Option<u64>,

    /// Largest message in bytes, fragments together; larger closes with 1009 [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub max_message_size: Option<u64>,

    /// Largest HTTP request head in bytes; larger gets 431 [default: 8192].
    #[arg(long, value_name = "BYTES")]
    pub max_head_size: Option<usize>,

    /// Most HTTP request headers; more gets 431 [default: 64, at most 100].
    #[arg(long, value_name = "N")]
    pub max_headers: Option<usize>,

    /// Largest plain HTTP request body in bytes (the publish API); larger gets 413
    /// [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub max_body_size: Option<usize>,

    /// Time a new connection has to send its request head [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub handshake_timeout: Option<Duration>,

    /// Ping a peer after this long without hearing from it; 0 = never [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub ping_interval: Option<Duration>,

    /// After a ping, time the peer has to answer before the connection is dropped [default: 15s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub pong_timeout: Option<Duration>,

    /// Close (1001) after this long without hearing from the peer; 0 = never [default: 0].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub idle_timeout: Option<Duration>,

    /// Time the peer has to answer our close frame [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub close_timeout: Option<Duration>,

    /// On SIGINT/SIGTERM, time connections get to close before the process exits [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub drain_timeout: Option<Duration>,

    /// HTTP keep-alive (publish API, metrics): most requests answered on one connection; the
    /// last answer says `Connection: close`. 1 closes after every answer [default: 1000].
    #[arg(long, value_name = "N")]
    pub keep_alive_requests: Option<u32>,

    /// HTTP keep-alive: how long a kept connection may wait for its next request
    /// [default: 75s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub keep_alive_timeout: Option<Duration>,

    /// Bytes of each reactor's shared read buffer [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub read_buffer_size: Option<usize>,

    /// Serve /echo (every message comes back), for conformance runs and benchmarks
    /// [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub echo: Option<bool>,

    /// Start even when listening beyond loopback with publishing open to anyone (no api_key,
    /// or client_publish = all without auth), which is otherwise refused [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub insecure: Option<bool>,

    /// Whether /t/ and /ws need a JWT (in ?token= or Authorization: Bearer) [default: none].
    #[arg(long, value_enum)]
    pub auth: Option<AuthMode>,

    /// HS256: the shared secret of `auth = jwt`, at least 32 bytes (flags show in `ps`: prefer
    /// --jwt-secret-file or CLARION_JWT_SECRET_FILE).
    #[arg(long, value_name = "SECRET")]
    pub jwt_secret: Option<Secret>,

    /// A file holding the JWT secret (trailing newlines trimmed), re-read on SIGHUP.
    #[arg(long, value_name = "FILE", conflicts_with = "jwt_secret")]
    #[serde(skip)]
    pub jwt_secret_file: Option<PathBuf>,

    /// RS256 or ES256 (from the key's type): a PEM file with the token signer's public key
    /// (RSA of 2048 bits or more, or EC P-256), instead of jwt_secret; re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,

    /// Accepted `aud` values, comma-separated; when set, tokens need one [default: not checked].
    #[arg(long, value_name = "AUD", value_delimiter = ',')]
    pub jwt_audience: Option<Vec<String>>,

    /// Accepted `iss` values, comma-separated; when set, tokens need one [default: not checked].
    #[arg(long, value_name = "ISS", value_delimiter = ',')]
    pub jwt_issuer: Option<Vec<String>>,

    /// Clock skew allowed on `exp` and `nbf`, in whole seconds; a connection is closed with
    /// 4001 once its token's `exp` plus this has passed [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub jwt_leeway: Option<Duration>,

    /// Shortest application heartbeat interval a /ws client may ask for (`hello`), 1s to 255s
    /// [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub heartbeat_min: Option<Duration>,

    /// Longest application heartbeat interval, 1s to 255s [default: 120s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub heartbeat_max: Option<Duration>,

    /// How often a Server-Sent Events or NDJSON stream gets a heartbeat so that proxies do not
    /// time it out, 1s to 255s [default: 15s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub stream_heartbeat: Option<Duration>,

    /// Bearer key of the HTTP publish API; unset leaves the API open (a warning is logged).
    /// Flags show in `ps`: prefer --api-key-file or CLARION_API_KEY_FILE.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<Secret>,

    /// A file holding the API key (trailing newlines trimmed), re-read on SIGHUP.
    #[arg(long, value_name = "FILE", conflicts_with = "api_key")]
    #[serde(skip)]
    pub api_key_file: Option<PathBuf>,

    /// The admin listener: /metrics, /stats, /topics/<topic>, /healthz, /readyz and the live
    /// dashboard (/dashboard), apart from the public port; `off` for none. Loopback by default,
    /// so that only the host reaches it [default: 127.0.0.1:9011].
    #[arg(long, value_name = "ADDR:PORT|off")]
    pub admin_listen: Option<AdminListen>,

    /// Bearer key of the admin routes but /healthz and /readyz (`Authorization: Bearer <key>`,
    /// or `?key=` for a browser's dashboard); unset leaves them open to whoever reaches the
    /// admin listener. Flags show in `ps`: prefer --admin-key-file or CLARION_ADMIN_KEY_FILE.
    #[arg(long, value_name = "KEY")]
    pub admin_key: Option<Secret>,

    /// A file holding the admin key (trailing newlines trimmed), re-read on SIGHUP.
    #[arg(long, value_name = "FILE", conflicts_with = "admin_key")]
    #[serde(skip)]
    pub admin_key_file: Option<PathBuf>,

    /// Also serve /metrics, /stats, /topics/<topic> and /readyz on the public port (with the
    /// admin key when one is set); the public port otherwise answers /healthz only
    /// [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub public_metrics: Option<bool>,

    /// Origins allowed to open /t/ and /ws, comma-separated `scheme://host[:port]`; requests
    /// without an Origin header always pass [default: any].
    #[arg(long, value_name = "ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,

    /// Who may publish by sending on a WebSocket [default: none with auth = none, token with
    /// auth = jwt].
    #[arg(long, value_enum)]
    pub client_publish: Option<ClientPublish>,

    /// Most connections in the process, of any kind (handshaking, plain HTTP, WebSocket,
    /// closing); more are closed at accept; 0 = no limit [default: 0].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Most open WebSockets per client address, refused with 429 beyond; 0 = no limit. An
    /// IPv6 client is its block of `ipv6_prefix` bits. Both backends (on io_uring a non-zero
    /// cap makes accepts carry the peer's address) [default: 0].
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,

    /// Prefix length of the IPv6 block the per-IP cap counts as one client, 1 to 128
    /// [default: 64]. IPv4 addresses (IPv4-mapped IPv6 included) count one each.
    #[arg(long, value_name = "BITS")]
    pub ipv6_prefix: Option<u8>,

    /// Proxies and load balancers whose forwarding header names the client, comma-separated
    /// addresses or CIDR blocks (10.0.0.0/8, ::1); empty: forwarding headers are ignored
    /// [default: none].
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    #[serde(default, deserialize_with = "de_cidrs")]
    pub trusted_proxies: Option<Vec<Cidr>>,

    /// The header the trusted proxies set: x-forwarded-for or forwarded (RFC 7239); only that
    /// one is read [default: x-forwarded-for].
    #[arg(long, value_enum)]
    pub forwarded_header: Option<ForwardedHeader>,

    /// PROXY protocol on the listener: the versions trusted_proxies send at the start of each
    /// connection (v1, v2 or any); their connections without one are closed, and so are other
    /// peers' that start with one. Needs trusted_proxies [default: off].
    #[arg(long, value_enum)]
    pub proxy_protocol: Option<ProxyProtocolChoice>,

    /// Most topics one connection subscribes to [default: 100].
    #[arg(long, value_name = "N")]
    pub max_topics_per_connection: Option<usize>,

    /// Longest topic name in bytes [default: 256].
    #[arg(long, value_name = "BYTES")]
    pub max_topic_length: Option<usize>,

    /// Most topics alive at once [default: 100000].
    #[arg(long, value_name = "N")]
    pub max_topics: Option<usize>,

    /// A connection's write cap: bytes that may wait to be written to it (deliveries, replies,
    /// replays). A subscriber with this much waiting gets `slow_consumer`; a connection over it
    /// is not read until it drains; a publish whose delivery frame is larger is refused (413)
    /// [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub max_queued_bytes: Option<usize>,

    /// What happens to a subscriber past `max_queued_bytes`: close it with 1013, or drop
    /// messages (it sees a gap in `seq`) [default: close].
    #[arg(long, value_enum)]
    pub slow_consumer: Option<SlowConsumer>,

    /// Messages (data, ping, pong) a client may send per second; past it the connection is
    /// closed with 1008 "rate limit"; 0 = no limit [default: 100].
    #[arg(long, value_name = "N")]
    pub message_rate: Option<u32>,

    /// Messages a client may send at once, at most 65535 [default: 200].
    #[arg(long, value_name = "N")]
    pub message_burst: Option<u32>,

    /// Bytes a client may send per second once its WebSocket is open; past it the connection
    /// is closed with 1008 "rate limit"; 0 = no limit [default: 262144].
    #[arg(long, value_name = "BYTES")]
    pub byte_rate: Option<u32>,

    /// Bytes a client may send at once; at least max_message_size and read_buffer_size
    /// [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub byte_burst: Option<u32>,

    /// New topics clients may create per second across the server (by subscribing, or by
    /// publishing where allowed), with a burst of ten seconds' worth; 0 = no limit. The HTTP
    /// API is not counted [default: 1000].
    #[arg(long, value_name = "N")]
    pub client_topic_rate: Option<u32>,

    /// Messages kept per topic for resume; 0 = no history [default: 100].
    #[arg(long, value_name = "N")]
    pub history_size: Option<usize>,

    /// Bytes of history kept per topic, as messages take them in memory [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub history_max_bytes: Option<usize>,

    /// Age after which a message leaves history; 0 = no age limit [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub history_max_age: Option<Duration>,

    /// Bytes of history kept across all topics, as messages take them in memory; past it a
    /// topic keeps at most an equal share [default: 268435456].
    #[arg(long, value_name = "BYTES")]
    pub history_total_bytes: Option<usize>,

    /// permessage-deflate: off, shared (no context takeover, nothing per connection) or
    /// per-connection (context takeover, windows of its own, capped) [default: off].
    #[arg(long, value_enum)]
    pub compression: Option<CompressionChoice>,

    /// zlib level, 0 to 9 [default: 6].
    #[arg(long, value_name = "N")]
    pub compression_level: Option<u32>,

    /// Largest LZ77 window the server compresses with and asks of clients, 8 to 15
    /// (2^N bytes) [default: 15].
    #[arg(long, value_name = "BITS")]
    pub compression_window_bits: Option<u8>,

    /// Messages shorter than this are sent uncompressed [default: 128].
    #[arg(long, value_name = "BYTES")]
    pub compression_threshold: Option<usize>,

    /// per-connection: most connections per reactor with windows of their own; others get
    /// shared [default: 1000].
    #[arg(long, value_name = "N")]
    pub compression_max_windows: Option<usize>,

    /// Join the cluster on this Redis (e.g. redis://127.0.0.1:6379): topics, `seq`s, history and
    /// presence are shared with every node on it. Unset: a self-contained node. In the config
    /// file: `redis` in the `[cluster]` table (or `redis_file`, for a URL with a password),
    /// which wins over `sentinels` and `redis_cluster`, the other ways to name Redis.
    #[arg(long, value_name = "URL")]
    #[serde(skip)]
    pub redis: Option<String>,

    /// What to log: a level (error, warn, info, debug, trace) or `tracing` filter directives
    /// such as `info,clarion::server=debug`; RUST_LOG is read when CLARION_LOG_LEVEL is not
    /// set. Applied again on SIGHUP [default: info].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Log lines as plain text or one JSON object each [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,

    /// The config file's `[cluster]` table.
    #[arg(skip)]
    pub cluster: Option<ClusterSettings>,

    /// Serve TLS (https, wss) on the listener with this certificate chain (PEM, leaf first,
    /// intermediates after it); needs --tls-key. Read again on SIGHUP. In the config file:
    /// `cert` in the `[tls]` table.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC). In the config file:
    /// `key` in the `[tls]` table.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub tls_key: Option<PathBuf>,

    /// The config file's `[tls]` table.
    #[arg(skip)]
    pub tls: Option<TlsSettings>,
}

/// The `[tls]` table of the config file: TLS on the listener, on once `cert` and `key` are set.
#[derive(Debug, Default, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The certificate chain, PEM (the `--tls-cert` flag wins over it).
    pub cert: Option<PathBuf>,
    /// Its private key, PEM (the `--tls-key` flag wins over it).
    pub key: Option<PathBuf>,
    /// Most connections of one reactor in the TLS handshake at once; more are closed at accept
    /// [default: 1024].
    pub max_handshakes: Option<usize>,
}

/// The `[cluster]` table of the config file: where Redis is (`redis`, or `sentinels` with
/// `master_name`, or `redis_cluster`), and how the node uses it.
#[derive(Debug, Default, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// The Redis URL (the `--redis` flag wins over it). A secret: it may hold a password. Set,
    /// it wins over `sentinels` and `redis_cluster`.
    pub redis: Option<Secret>,
    /// Redis Sentinel addresses (`host:port`): the node uses the master they know as
    /// `master_name`, and follows failovers.
    pub sentinels: Option<Vec<String>>,
    /// The name the sentinels monitor the master under.
    pub master_name: Option<String>,
    /// Redis Cluster nodes (`host:port`) to read the slot map from.
    pub redis_cluster: Option<Vec<String>>,
    /// ACL user for the Redis servers named by `sentinels` or `redis_cluster`.
    pub username: Option<String>,
    /// Password for the Redis servers named by `sentinels` or `redis_cluster`.
    pub password: Option<Secret>,
    /// Password for the sentinels themselves.
    pub sentinel_password: Option<Secret>,
    /// Replicas that must acknowledge a publish (`WAIT`) before the node lets go of it
    /// [default: 0].
    pub min_replicas_ack: Option<u32>,
    /// Bytes of publishes that may wait for Redis while it is slow or down, as they take
    /// memory; past it publishes are refused [default: 16777216].
    pub buffer_bytes: Option<usize>,
    /// How often the node writes its subscriber counts to Redis; they expire after three
    /// [default: 1s].
    #[serde(default, deserialize_with = "de_duration")]
    pub heartbeat: Option<Duration>,
}

impl ClusterSettings {
    /// What is wrong with the way the table names Redis, if anything.
    fn conflict(&self) -> Option<&'static str> {
        if self.sentinels.is_some() && self.redis_cluster.is_some() {
            return Some("[cluster] sentinels and redis_cluster name Redis twice: keep one");
        }
        if self.master_name.is_some() != self.sentinels.is_some() {
            return Some("[cluster] sentinels and master_name go together");
        }
        None
    }
}

/// Every config key, read off [`Settings`] once (see [`super::keys`]).
pub fn keys() -> &'static [Key] {
    static KEYS: LazyLock<Vec<Key>> = LazyLock::new(keys_of::<Settings>);
    &KEYS
}

/// The flags of `clarion serve`, as a command of their own (for tests and tools).
pub fn command() -> clap::Command {
    Settings::augment_args(clap::Command::new("serve"))
}

/// Settings read from their sources, and the merged keys they came from.
#[derive(Debug)]
pub struct Loaded {
    /// The settings, validated.
    pub settings: Settings,
    /// The merged keys (secrets read from their files), to compare on reload.
    pub layer: Layer,
    /// Environment variables ignored, to log once logging is set up.
    pub warnings: Vec<String>,
}

impl Settings {
    /// Reads `sources` with the environment `vars`, merges and validates them.
    pub fn load(
        sources: &Sources,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Loaded, String> {
        let (layer, warnings) = sources.read(keys(), vars)?;
        let settings = Self::validated(layer.deserialize(keys())?)?;
        Ok(Loaded {
            settings,
            layer,
            warnings,
        })
    }

    fn validated(settings: Settings) -> Result<Settings, String> {
        let bad_log_level = super::logging::filter(&settings.log_level()).is_err();
        let config = settings.reactor_config();
        let p = &config.protocol;
        let app = settings.app_config();
        let checks = [
            (config.threads == 0, "threads must be at least 1"),
            (config.threads > MAX_REACTORS, "threads must be at most 64"),
            (
                app.auth == AuthMode::None && app.client_publish == ClientPublish::Token,
                "client_publish = token needs auth = jwt",
            ),
            (
                settings.api_key.as_deref() == Some(""),
                "api_key must not be empty",
            ),
            (
                settings.admin_key.as_deref() == Some(""),
                "admin_key must not be empty",
            ),
            (
                app.admin_listen.is_some_and(|admin| {
                    admin.port() != 0
                        && admin.port() == config.listen.port()
                        && (admin.ip() == config.listen.ip()
                            || admin.ip().is_unspecified()
                            || config.listen.ip().is_unspecified())
                }),
                "admin_listen must not be the address of listen",
            ),
            (
                app.max_topics_per_connection == 0 || app.max_topic_length == 0,
                "max_topics_per_connection and max_topic_length must be at least 1",
            ),
            (app.hub.max_topics == 0, "max_topics must be at least 1"),
            (
                !(1..=128).contains(&app.ipv6_prefix),
                "ipv6_prefix must be 1 to 128",
            ),
            (
                config.proxy_protocol != clarion_engine::ProxyProtocol::Off
                    && app.trusted_proxies.is_empty(),
                "proxy_protocol needs trusted_proxies: the proxies that send the header",
            ),
            (
                app.max_queued_bytes < 1024,
                "max_queued_bytes must be at least 1024",
            ),
            (
                config.max_connections_per_reactor == 0,
                "max_connections_per_reactor must be at least 1",
            ),
            (
                p.max_frame_size == 0 || p.max_message_size == 0,
                "max_frame_size and max_message_size must be at least 1",
            ),
            (
                p.max_message_size > u32::MAX as u64,
                "max_message_size must be below 4 GiB",
            ),
            (p.max_head_size < 256, "max_head_size must be at least 256"),
            (
                p.max_headers == 0 || p.max_headers > clarion_protocol::handshake::MAX_HEADERS_CAP,
                "max_headers must be 1 to 100",
            ),
            (
                p.handshake_timeout.is_zero()
                    || p.pong_timeout.is_zero()
                    || p.close_timeout.is_zero()
                    || p.keep_alive_timeout.is_zero(),
                "handshake_timeout, pong_timeout, close_timeout and keep_alive_timeout must be \
                 above 0",
            ),
            (
                config.keep_alive_requests == 0,
                "keep_alive_requests must be at least 1 (1 turns keep-alive off)",
            ),
            (
                config.read_buffer_size < 4096,
                "read_buffer_size must be at least 4096",
            ),
            (config.backlog < 1, "backlog must be at least 1"),
            (
                !config.uring.buffers.is_power_of_two() || config.uring.buffers > 32768,
                "uring_buffers must be a power of two up to 32768",
            ),
            (
                config.uring.buffer_size < 1024,
                "uring_buffer_size must be at least 1024",
            ),
            (config.uring.files == 0, "uring_files must be at least 1"),
            (
                app.cluster.as_ref().is_some_and(|c| c.heartbeat.is_zero()),
                "cluster heartbeat must be above 0",
            ),
            (
                bad_log_level,
                "log_level is not a valid filter (e.g. info or info,clarion=debug)",
            ),
            (
                config.compression.level > 9,
                "compression_level must be 0 to 9",
            ),
            (
                !(8..=15).contains(&config.compression.window_bits),
                "compression_window_bits must be 8 to 15",
            ),
            (
                config.max_handshakes_per_reactor == 0 || config.write_timeout.is_zero(),
                "max_handshakes_per_reactor and write_timeout must be above 0",
            ),
            (
                app.message_rate != 0
                    && !(1..=clarion_engine::MAX_MESSAGE_BURST).contains(&app.message_burst),
                "message_burst must be 1 to 65535 (with a message_rate)",
            ),
            (
                app.byte_rate != 0
                    && (u64::from(app.byte_burst) < p.max_message_size
                        || (app.byte_burst as usize) < config.read_buffer_size),
                "byte_burst must be at least max_message_size and read_buffer_size (with a \
                 byte_rate)",
            ),
        ];
        if let Some((_, message)) = checks.iter().find(|(bad, _)| *bad) {
            return Err((*message).to_owned());
        }
        if let Some(conflict) = settings
            .cluster
            .as_ref()
            .and_then(ClusterSettings::conflict)
        {
            return Err(conflict.to_owned());
        }
        if let Some(cluster) = &app.cluster {
            cluster::check(cluster)?;
        }
        app.check()?;
        app.check_exposure(config.listen)?;
        settings.tls_files()?;
        if settings.tls_max_handshakes() == 0 {
            return Err("tls max_handshakes must be at least 1".to_owned());
        }
        Ok(settings)
    }

    /// The certificate and key files, when TLS is on (both set); one without the other is an
    /// error.
    pub fn tls_files(&self) -> Result<Option<(PathBuf, PathBuf)>, String> {
        let table = self.tls.clone().unwrap_or_default();
        let cert = self.tls_cert.clone().or(table.cert);
        let key = self.tls_key.clone().or(table.key);
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some((cert, key))),
            (None, None) => Ok(None),
            _ => Err("TLS needs both a certificate and its key (tls_cert and tls_key)".to_owned()),
        }
    }

    fn tls_max_handshakes(&self) -> usize {
        self.tls
            .as_ref()
            .and_then(|t| t.max_handshakes)
            .unwrap_or(clarion_engine::tls::DEFAULT_MAX_HANDSHAKES)
    }

    /// TLS for the listener, when it is on: the certificate read from its files (which is what
    /// can fail) behind a handle that a reload replaces.
    pub fn tls_config(
        &self,
    ) -> Result<Option<(clarion_engine::TlsConfig, Arc<ReloadableCert>)>, String> {
        let Some((cert, key)) = self.tls_files()? else {
            return Ok(None);
        };
        let cert = Arc::new(ReloadableCert::new(super::tls::load(&cert, &key)?));
        let mut config = clarion_engine::TlsConfig::new(cert.clone())
            .map_err(|e| format!("TLS settings: {e}"))?;
        config.max_handshakes = self.tls_max_handshakes();
        Ok(Some((config, cert)))
    }

    /// The log filter (default `info`).
    pub fn log_level(&self) -> String {
        self.log_level.clone().unwrap_or_else(|| "info".to_owned())
    }

    /// The push server's configuration these settings describe (defaults where unset).
    pub fn app_config(&self) -> AppConfig {
        let d = AppConfig::default();
        let h = HubConfig::default();
        let auth = self.auth.unwrap_or(d.auth);
        AppConfig {
            echo: self.echo.unwrap_or(d.echo),
            insecure: self.insecure.unwrap_or(d.insecure),
            auth,
            jwt: JwtConfig {
                secret: self.jwt_secret.clone(),
                public_key: self.jwt_public_key.clone(),
                audience: self.jwt_audience.clone().unwrap_or_default(),
                issuer: self.jwt_issuer.clone().unwrap_or_default(),
                leeway: self.jwt_leeway.unwrap_or(d.jwt.leeway),
            },
            heartbeat_min: self.heartbeat_min.unwrap_or(d.heartbeat_min),
            heartbeat_max: self.heartbeat_max.unwrap_or(d.heartbeat_max),
            api_key: self.api_key.clone(),
            admin_listen: self
                .admin_listen
                .unwrap_or(AdminListen(Some(DEFAULT_ADMIN_LISTEN)))
                .0,
            admin_key: self.admin_key.clone(),
            public_metrics: self.public_metrics.unwrap_or(false),
            allowed_origins: self.allowed_origins.clone().unwrap_or_default(),
            client_publish: self.client_publish.unwrap_or(match auth {
                AuthMode::None => ClientPublish::None,
                AuthMode::Jwt => ClientPublish::Token,
            }),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_connections_per_ip: self
                .max_connections_per_ip
                .unwrap_or(d.max_connections_per_ip),
            ipv6_prefix: self.ipv6_prefix.unwrap_or(d.ipv6_prefix),
            trusted_proxies: TrustedProxies::new(self.trusted_proxies.clone().unwrap_or_default()),
            forwarded_header: self.forwarded_header.unwrap_or(d.forwarded_header),
            max_topics_per_connection: self
                .max_topics_per_connection
                .unwrap_or(d.max_topics_per_connection),
            max_topic_length: self.max_topic_length.unwrap_or(d.max_topic_length),
            max_queued_bytes: self.max_queued_bytes.unwrap_or(d.max_queued_bytes),
            stream_heartbeat: self.stream_heartbeat.unwrap_or(d.stream_heartbeat),
            slow_consumer: self.slow_consumer.unwrap_or(d.slow_consumer),
            message_rate: self.message_rate.unwrap_or(d.message_rate),
            message_burst: self.message_burst.unwrap_or(d.message_burst),
            byte_rate: self.byte_rate.unwrap_or(d.byte_rate),
            byte_burst: self.byte_burst.unwrap_or(d.byte_burst),
            hub: HubConfig {
                history_size: self.history_size.unwrap_or(h.history_size),
                history_max_bytes: self.history_max_bytes.unwrap_or(h.history_max_bytes),
                history_max_age: self.history_max_age.unwrap_or(h.history_max_age),
                history_total_bytes: self.history_total_bytes.unwrap_or(h.history_total_bytes),
                max_topics: self.max_topics.unwrap_or(h.max_topics),
                client_topic_rate: self.client_topic_rate.unwrap_or(h.client_topic_rate),
            },
            cluster: self.cluster_config(),
            compression: self.compression_config(),
        }
    }

    /// The compression settings (defaults where unset), for the engine and for fanout.
    pub fn compression_config(&self) -> clarion_engine::CompressionConfig {
        let d = clarion_engine::CompressionConfig::default();
        clarion_engine::CompressionConfig {
            policy: match self.compression {
                None | Some(CompressionChoice::Off) => clarion_engine::Policy::Off,
                Some(CompressionChoice::Shared) => clarion_engine::Policy::Shared,
                Some(CompressionChoice::PerConnection) => clarion_engine::Policy::PerConnection,
            },
            level: self.compression_level.unwrap_or(d.level),
            window_bits: self.compression_window_bits.unwrap_or(d.window_bits),
            threshold: self.compression_threshold.unwrap_or(d.threshold),
            max_windows: self.compression_max_windows.unwrap_or(d.max_windows),
        }
    }

    /// The cluster this node joins, if Redis is named (`--redis`, or `[cluster]` `redis`,
    /// `sentinels` or `redis_cluster`).
    fn cluster_config(&self) -> Option<ClusterConfig> {
        let table = self.cluster.clone().unwrap_or_default();
        let redis = self
            .redis
            .clone()
            .or_else(|| table.redis.map(|url| String::from(&*url)));
        let upstream = match (redis, table.sentinels) {
            (Some(url), _) => Upstream::Redis(url),
            (None, Some(sentinels)) => Upstream::Sentinel {
                sentinels,
                master_name: table.master_name.unwrap_or_default(),
            },
            (None, None) => Upstream::Cluster(table.redis_cluster?),
        };
        let text = |secret: Option<Secret>| secret.map(|s| String::from(&*s));
        let d = ClusterConfig::default();
        Some(ClusterConfig {
            upstream,
            auth: Auth {
                username: table.username,
                password: text(table.password),
                sentinel_password: text(table.sentinel_password),
            },
            buffer_bytes: table.buffer_bytes.unwrap_or(d.buffer_bytes),
            heartbeat: table.heartbeat.unwrap_or(d.heartbeat),
            min_replicas_ack: table.min_replicas_ack.unwrap_or(d.min_replicas_ack),
        })
    }

    /// The engine configuration these settings describe (defaults where unset: the engine's,
    /// but for the message limits, [`MAX_MESSAGE_SIZE`]).
    pub fn reactor_config(&self) -> clarion_engine::Config {
        let d = clarion_engine::Config::default();
        let p = clarion_protocol::Config::default();
        let optional = |value: Option<Duration>, default| match value {
            Some(Duration::ZERO) => None,
            Some(v) => Some(v),
            None => default,
        };
        let max_connections_per_reactor = self
            .max_connections_per_reactor
            .unwrap_or(d.max_connections_per_reactor);
        let default_files = clarion_host::fd_limit()
            .min(max_connections_per_reactor as u64)
            .min(u32::MAX as u64) as u32;
        clarion_engine::Config {
            listen: self.listen.unwrap_or(d.listen),
            also_listen: Vec::new(),
            io: match self.io.unwrap_or(IoChoice::Auto) {
                IoChoice::Auto => clarion_engine::Io::Auto,
                IoChoice::Epoll => clarion_engine::Io::Epoll,
                IoChoice::Uring => clarion_engine::Io::Uring,
            },
            uring: clarion_engine::UringConfig {
                entries: d.uring.entries,
                files: self.uring_files.unwrap_or(default_files),
                buffers: self.uring_buffers.unwrap_or(d.uring.buffers),
                buffer_size: self.uring_buffer_size.unwrap_or(d.uring.buffer_size),
                peer_addresses: d.uring.peer_addresses,
            },
            threads: self.threads.unwrap_or(d.threads),
            pin_threads: !self.no_pin.unwrap_or(false),
            private_fd_table: self.private_fd_table.unwrap_or(false),
            backlog: self.backlog.unwrap_or(d.backlog),
            max_connections_per_reactor: self
                .max_connections_per_reactor
                .unwrap_or(d.max_connections_per_reactor),
            max_handshakes_per_reactor: self
                .max_handshakes_per_reactor
                .unwrap_or(d.max_handshakes_per_reactor),
            max_partial_bytes_per_reactor: self
                .max_partial_bytes_per_reactor
                .unwrap_or(d.max_partial_bytes_per_reactor),
            write_timeout: self.write_timeout.unwrap_or(d.write_timeout),
            max_inbox_bytes: self.max_inbox_bytes.unwrap_or(d.max_inbox_bytes),
            limits: self.app_config().engine_limits(),
            read_buffer_size: self.read_buffer_size.unwrap_or(d.read_buffer_size),
            keep_alive_requests: self.keep_alive_requests.unwrap_or(d.keep_alive_requests),
            drain_timeout: self.drain_timeout.unwrap_or(d.drain_timeout),
            protocol: clarion_protocol::Config {
                max_frame_size: self.max_frame_size.unwrap_or(MAX_MESSAGE_SIZE),
                max_message_size: self.max_message_size.unwrap_or(MAX_MESSAGE_SIZE),
                max_head_size: self.max_head_size.unwrap_or(p.max_head_size),
                max_headers: self.max_headers.unwrap_or(p.max_headers),
                max_body_size: self.max_body_size.unwrap_or(p.max_body_size),
                handshake_timeout: self.handshake_timeout.unwrap_or(p.handshake_timeout),
                keep_alive_timeout: self.keep_alive_timeout.unwrap_or(p.keep_alive_timeout),
                ping_interval: optional(self.ping_interval, p.ping_interval),
                pong_timeout: self.pong_timeout.unwrap_or(p.pong_timeout),
                idle_timeout: optional(self.idle_timeout, p.idle_timeout),
                close_timeout: self.close_timeout.unwrap_or(p.close_timeout),
            },
            compression: self.compression_config(),
            proxy_protocol: match self.proxy_protocol {
                None | Some(ProxyProtocolChoice::Off) => clarion_engine::ProxyProtocol::Off,
                Some(ProxyProtocolChoice::V1) => clarion_engine::ProxyProtocol::V1,
                Some(ProxyProtocolChoice::V2) => clarion_engine::ProxyProtocol::V2,
                Some(ProxyProtocolChoice::Any) => clarion_engine::ProxyProtocol::Any,
            },
            // Read from its files by `tls_config`, which can fail.
            tls: None,
            // The server's start hands the engine `AppConfig::trusted_proxies`.
            ..clarion_engine::Config::default()
        }
    }
}

/// The push server's default `max_frame_size` and `max_message_size`, 64 KiB (the protocol
/// library's is 16 MiB): what clients send a push server is commands and small publishes, and a
/// connection may hold a partial message of this size in memory; 64 KiB is what Centrifugo
/// ships, four times uWebSockets' 16 KiB, and far above a subscribe or a chat message. Larger
/// payloads go through the HTTP API (`max_body_size`, 1 MiB).
pub const MAX_MESSAGE_SIZE: u64 = 64 << 10;

fn de_duration<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(de)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn de_cidrs<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<Vec<Cidr>>, D::Error> {
    let texts = Vec::<String>::deserialize(de)?;
    texts
        .iter()
        .map(|text| text.parse().map_err(serde::de::Error::custom))
        .collect::<Result<_, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::sources::scratch_dir;
    use std::path::Path;

    /// `clarion serve ARGS` in an environment of `env` only.
    fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Loaded, String> {
        let matches = command()
            .try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let vars = || {
            env.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        };
        let sources = Sources::new(keys(), &matches, vars())?;
        Settings::load(&sources, vars())
    }

    fn example(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config")
            .join(name);
        path.to_str().unwrap().to_owned()
    }

    #[test]
    fn flags_override_the_environment_which_overrides_the_file() {
        let file = scratch_dir("precedence").join("clarion.toml");
        std::fs::write(
            &file,
            "threads = 3\nping_interval = \"0\"\nmax_frame_size = 1000\nlisten = \"0.0.0.0:80\"\n\
             backlog = 7\ninsecure = true\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let env = [
            ("CLARION_THREADS", "4"),
            ("CLARION_BACKLOG", "8"),
            ("CLARION_MAX_HEADERS", "10"),
        ];
        let loaded = load(&["--config", file, "--threads", "5"], &env).unwrap();
        let config = loaded.settings.reactor_config();
        assert_eq!(
            config.threads, 5,
            "the flag wins over the environment and the file"
        );
        assert_eq!(config.backlog, 8, "the environment wins over the file");
        assert_eq!(
            config.protocol.max_headers, 10,
            "the environment over a default"
        );
        assert_eq!(
            config.listen,
            "0.0.0.0:80".parse().unwrap(),
            "the file over a default"
        );
        assert_eq!(config.protocol.max_frame_size, 1000);
        assert_eq!(config.protocol.ping_interval, None);
        assert_eq!(config.protocol.close_timeout, Duration::from_secs(5));
        assert_eq!(loaded.layer.origin("threads"), Some("--threads"));
        assert_eq!(loaded.layer.origin("backlog"), Some("CLARION_BACKLOG"));
        // CLARION_CONFIG names the file when --config does not.
        let loaded = load(&[], &[("CLARION_CONFIG", file)]).unwrap();
        assert_eq!(loaded.settings.reactor_config().threads, 3);
    }

    #[test]
    fn every_kind_of_value_comes_from_the_environment() {
        let loaded = load(
            &[],
            &[
                ("CLARION_LISTEN", "127.0.0.1:7000"),
                ("CLARION_IO", "epoll"),
                ("CLARION_NO_PIN", "true"),
                ("CLARION_IDLE_TIMEOUT", "2m"),
                (
                    "CLARION_ALLOWED_ORIGINS",
                    "https://a.example, https://b.example",
                ),
                ("CLARION_SLOW_CONSUMER", "drop"),
                ("CLARION_COMPRESSION", "per-connection"),
                ("CLARION_CLUSTER__REDIS", "redis://127.0.0.1:7001"),
                ("CLARION_CLUSTER__HEARTBEAT", "2s"),
                ("CLARION_API_KEY", "k"),
                ("CLARION_LOG_FORMAT", "json"),
                ("CLARION_LOG_LEVEL", "debug"),
            ],
        )
        .unwrap();
        let (config, app) = (
            loaded.settings.reactor_config(),
            loaded.settings.app_config(),
        );
        assert_eq!(config.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(config.io, clarion_engine::Io::Epoll);
        assert!(!config.pin_threads);
        assert_eq!(config.protocol.idle_timeout, Some(Duration::from_secs(120)));
        assert_eq!(
            app.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(app.slow_consumer, SlowConsumer::Drop);
        assert_eq!(
            config.compression.policy,
            clarion_engine::Policy::PerConnection
        );
        let cluster = app.cluster.unwrap();
        assert_eq!(
            cluster.upstream,
            Upstream::Redis("redis://127.0.0.1:7001".into())
        );
        assert_eq!(cluster.heartbeat, Duration::from_secs(2));
        assert_eq!(app.api_key.as_deref(), Some("k"));
        assert_eq!(loaded.settings.log_format, Some(LogFormat::Json));
        assert_eq!(loaded.settings.log_level(), "debug");
        // RUST_LOG stands in for CLARION_LOG_LEVEL, below it.
        let rust_log = load(&[], &[("RUST_LOG", "warn")]).unwrap();
        assert_eq!(rust_log.settings.log_level(), "warn");
        let both = load(&[], &[("RUST_LOG", "warn"), ("CLARION_LOG_LEVEL", "error")]);
        assert_eq!(both.unwrap().settings.log_level(), "error");
    }

    #[test]
    fn bad_values_name_their_source() {
        let error = |args: &[&str], env: &[(&str, &str)]| load(args, env).unwrap_err();
        assert_eq!(
            error(&[], &[("CLARION_THREADS", "x")]),
            "CLARION_THREADS: expected an integer, found \"x\""
        );
        let timeout = error(&[], &[("CLARION_IDLE_TIMEOUT", "soon")]);
        assert!(
            timeout.starts_with("CLARION_IDLE_TIMEOUT: invalid idle_timeout"),
            "{timeout}"
        );
        let io = error(&[], &[("CLARION_IO", "kqueue")]);
        assert!(io.starts_with("CLARION_IO: invalid io"), "{io}");
        let negative = error(&[], &[("CLARION_BACKLOG", "-1")]);
        assert!(negative.contains("backlog"), "{negative}");
        assert_eq!(
            error(&[], &[("CLARION_THREADS", "0")]),
            "threads must be at least 1"
        );
        assert!(error(&["--log-level", "clarion=loud"], &[]).starts_with("log_level"));
        let file = scratch_dir("bad-values").join("clarion.toml");
        std::fs::write(&file, "max_topics = \"many\"\n").unwrap();
        let path = file.to_str().unwrap();
        let typed = error(&["--config", path], &[]);
        assert!(
            typed.starts_with(&format!("{path}: invalid max_topics")),
            "{typed}"
        );
        // A variable that names no setting is ignored, with a warning.
        let loaded = load(&[], &[("CLARION_MAX_CONECTIONS", "5")]).unwrap();
        assert_eq!(loaded.settings.app_config().max_connections, 0);
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    }

    #[test]
    fn secrets_come_from_files_named_anywhere() {
        let dir = scratch_dir("secret-files");
        let (jwt, key) = (dir.join("jwt"), dir.join("key"));
        std::fs::write(&jwt, "swordfish, a secret of 32 bytes or more\n").unwrap();
        std::fs::write(&key, "hunter2\r\n").unwrap();
        let (jwt, key) = (jwt.to_str().unwrap(), key.to_str().unwrap());
        let loaded = load(
            &["--auth", "jwt", "--jwt-secret-file", jwt],
            &[("CLARION_API_KEY_FILE", key)],
        )
        .unwrap();
        let app = loaded.settings.app_config();
        let secret = app.jwt.secret.as_deref();
        assert_eq!(secret, Some("swordfish, a secret of 32 bytes or more"));
        assert_eq!(app.api_key.as_deref(), Some("hunter2"));

        let file = dir.join("clarion.toml");
        std::fs::write(
            &file,
            format!("api_key = \"in the file\"\njwt_secret_file = {jwt:?}\n"),
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let loaded = load(&["--config", file], &[("CLARION_API_KEY_FILE", key)]).unwrap();
        let app = loaded.settings.app_config();
        let secret = app.jwt.secret.as_deref();
        assert_eq!(secret, Some("swordfish, a secret of 32 bytes or more"));
        assert_eq!(
            app.api_key.as_deref(),
            Some("hunter2"),
            "the environment's file wins over the config file's value"
        );

        let missing = load(&[], &[("CLARION_API_KEY_FILE", "/nonexistent/key")]).unwrap_err();
        assert!(
            missing.starts_with("CLARION_API_KEY_FILE: cannot read api_key_file /nonexistent/key"),
            "{missing}"
        );
        let both = load(&["--api-key", "x", "--api-key-file", key], &[]).unwrap_err();
        assert!(both.contains("cannot be used with"), "{both}");
    }

    #[test]
    fn every_flag_is_a_key_or_names_a_secret_file() {
        for arg in command().get_arguments() {
            let id = arg.get_id().as_str();
            let path = match id {
                "config" => continue,
                "redis" => "cluster.redis",
                "tls_cert" => "tls.cert",
                "tls_key" => "tls.key",
                id => id,
            };
            let known = keys().iter().any(|key| {
                key.path == path
                    || (key.secret
                        && path.strip_suffix(super::super::keys::FILE_SUFFIX) == Some(&key.path))
            });
            assert!(known, "--{id} sets no key");
        }
    }

    #[test]
    fn the_shipped_example_is_valid_and_matches_the_defaults() {
        let example = load(&["--config", &example("clarion.toml")], &[])
            .unwrap()
            .settings;
        let config = example.reactor_config();
        let defaults = Settings::default().reactor_config();
        assert_eq!(format!("{config:?}"), format!("{defaults:?}"));
        // The server's own defaults, where they differ from the engine's (a library's).
        let engine = clarion_engine::Config::default();
        assert_eq!(config.protocol.max_message_size, MAX_MESSAGE_SIZE);
        assert!(engine.protocol.max_message_size > MAX_MESSAGE_SIZE);
        assert_eq!(config.limits, AppConfig::default().engine_limits());
        assert_eq!(engine.limits.message_rate, 0, "no rates in the library");
        // An embedding application picks its own ports: the library's default has no admin
        // listener, `clarion serve`'s has one on loopback.
        let served = AppConfig {
            admin_listen: Some(DEFAULT_ADMIN_LISTEN),
            ..AppConfig::default()
        };
        assert_eq!(example.app_config(), served);
        assert_eq!(example.log_level(), "info");
        assert_eq!(example.log_format, Some(LogFormat::default()));
        // The [cluster] table's values, used once a Redis URL is set.
        let table = example.cluster.unwrap();
        let cluster = ClusterConfig::default();
        assert_eq!(table.buffer_bytes, Some(cluster.buffer_bytes));
        assert_eq!(table.heartbeat, Some(cluster.heartbeat));
        assert_eq!(table.min_replicas_ack, Some(cluster.min_replicas_ack));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let settings: Settings = toml::from_str(
            "api_key = \"hunter2\"\njwt_secret = \"swordfish\"\n[cluster]\nredis = \"redis://:pw@h\"",
        )
        .unwrap();
        let shown = format!("{settings:?} {:?}", settings.app_config().jwt);
        for secret in ["hunter2", "swordfish", "redis://:pw@h"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert_eq!(settings.api_key.as_deref(), Some("hunter2"));
    }

    #[test]
    fn bad_files_and_values_are_reported() {
        let unknown = scratch_dir("unknown-key").join("clarion.toml");
        std::fs::write(&unknown, "thread = 3\n").unwrap();
        let error = load(&["--config", unknown.to_str().unwrap()], &[]).unwrap_err();
        assert!(error.ends_with("unknown key thread"), "{error}");
        assert!(toml::from_str::<Settings>("close_timeout = \"soon\"").is_err());
        assert_eq!(
            load(&["--threads", "0"], &[]).unwrap_err(),
            "threads must be at least 1"
        );
        let missing = load(&["--config", "/nonexistent.toml"], &[]).unwrap_err();
        assert!(missing.contains("cannot read"), "{missing}");
        assert_eq!(
            load(&["--auth", "jwt"], &[]).unwrap_err(),
            "auth = jwt needs a jwt_secret or a jwt_public_key"
        );
        assert!(toml::from_str::<Settings>("slow_consumer = \"maybe\"").is_err());
    }

    #[test]
    fn cluster_comes_from_the_table_or_the_flag() {
        let file = scratch_dir("cluster").join("clarion.toml");
        std::fs::write(
            &file,
            "[cluster]\nredis = \"redis://10.0.0.1:6379\"\nbuffer_bytes = 1000\nheartbeat = \"2s\"",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let cluster = load(&["--config", file], &[])
            .unwrap()
            .settings
            .app_config()
            .cluster;
        let cluster = cluster.unwrap();
        assert_eq!(
            cluster.upstream,
            Upstream::Redis("redis://10.0.0.1:6379".into())
        );
        assert_eq!(cluster.buffer_bytes, 1000);
        assert_eq!(cluster.heartbeat, Duration::from_secs(2));
        assert_eq!(cluster.min_replicas_ack, 0);
        let flagged = load(
            &["--config", file, "--redis", "redis://127.0.0.1:7000"],
            &[],
        );
        let merged = flagged.unwrap().settings.app_config().cluster.unwrap();
        assert_eq!(
            merged.upstream,
            Upstream::Redis("redis://127.0.0.1:7000".into())
        );
        assert_eq!(merged.buffer_bytes, 1000);
        assert_eq!(Settings::default().app_config().cluster, None);
        assert!(
            load(&["--redis", "http://nope"], &[])
                .unwrap_err()
                .contains("invalid redis URL")
        );
        assert!(toml::from_str::<Settings>("[cluster]\nredos = \"x\"").is_err());
    }

    #[test]
    fn cluster_names_sentinels_or_redis_cluster() {
        let file = scratch_dir("sentinels").join("clarion.toml");
        std::fs::write(
            &file,
            "[cluster]\nsentinels = [\"10.0.0.1:26379\", \"10.0.0.2:26379\"]\n\
             master_name = \"main\"\npassword = \"pw\"\nmin_replicas_ack = 1",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let loaded = load(&["--config", file], &[]).unwrap().settings;
        let cluster = loaded.app_config().cluster.unwrap();
        assert_eq!(
            cluster.upstream,
            Upstream::Sentinel {
                sentinels: vec!["10.0.0.1:26379".into(), "10.0.0.2:26379".into()],
                master_name: "main".into()
            }
        );
        assert_eq!(cluster.auth.password.as_deref(), Some("pw"));
        assert_eq!(cluster.min_replicas_ack, 1);
        assert!(
            !format!("{loaded:?} {cluster:?}").contains("pw"),
            "never shown"
        );
        // From the environment, a list is comma-separated; --redis wins over the table.
        let env = [(
            "CLARION_CLUSTER__REDIS_CLUSTER",
            "10.0.0.1:7000,10.0.0.2:7000",
        )];
        let sharded = load(&[], &env).unwrap().settings.app_config().cluster;
        assert_eq!(
            sharded.unwrap().upstream,
            Upstream::Cluster(vec!["10.0.0.1:7000".into(), "10.0.0.2:7000".into()])
        );
        let flagged = load(&["--config", file, "--redis", "redis://h:1"], &[]).unwrap();
        assert_eq!(
            flagged.settings.app_config().cluster.unwrap().upstream,
            Upstream::Redis("redis://h:1".into())
        );
        for (bad, error) in [
            (
                "sentinels = [\"h:1\"]\nmaster_name = \"m\"\nredis_cluster = [\"h:1\"]",
                "name Redis twice",
            ),
            ("sentinels = [\"h:1\"]", "go together"),
            (
                "redis_cluster = [\"h:1\"]\nmaster_name = \"m\"",
                "go together",
            ),
            (
                "sentinels = [\"h:1\"]\nmaster_name = \"\"",
                "need a master_name",
            ),
            ("redis_cluster = []", "redis_cluster is empty"),
            ("redis_cluster = [\"h:x\"]", "invalid redis_cluster entry"),
            ("redis_cluster = [\"redis://:pw@h:1\"]", "host:port"),
        ] {
            let path = scratch_dir("bad-cluster").join("clarion.toml");
            std::fs::write(&path, format!("[cluster]\n{bad}")).unwrap();
            let message = load(&["--config", path.to_str().unwrap()], &[]).unwrap_err();
            assert!(message.contains(error), "{bad}: {message}");
        }
    }

    #[test]
    fn the_cluster_examples_are_valid() {
        for node in ["a", "b"] {
            let path = example(&format!("cluster-node-{node}.toml"));
            let settings = load(&["--config", &path], &[]).unwrap().settings;
            assert!(settings.app_config().cluster.is_some());
        }
    }

    #[test]
    fn trusted_proxies_and_the_ipv6_prefix_come_from_file_flags_or_environment() {
        let file = scratch_dir("proxies").join("clarion.toml");
        std::fs::write(
            &file,
            "trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nforwarded_header = \"forwarded\"\n\
             ipv6_prefix = 56\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let app = load(&["--config", file], &[])
            .unwrap()
            .settings
            .app_config();
        assert!(app.trusted_proxies.trusts("10.1.2.3".parse().unwrap()));
        assert!(app.trusted_proxies.trusts("::1".parse().unwrap()));
        assert!(!app.trusted_proxies.trusts("192.0.2.1".parse().unwrap()));
        assert_eq!(app.forwarded_header, ForwardedHeader::Forwarded);
        assert_eq!(app.ipv6_prefix, 56);
        let flagged = load(
            &[
                "--config",
                file,
                "--trusted-proxies",
                "192.0.2.0/24,fd00::/8",
            ],
            &[],
        );
        let proxies = flagged.unwrap().settings.app_config().trusted_proxies;
        assert!(proxies.trusts("192.0.2.9".parse().unwrap()));
        assert!(proxies.trusts("fd12::1".parse().unwrap()));
        assert!(
            !proxies.trusts("10.1.2.3".parse().unwrap()),
            "the flag replaces the list"
        );
        let env = [("CLARION_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8")];
        let proxies = load(&[], &env)
            .unwrap()
            .settings
            .app_config()
            .trusted_proxies;
        assert!(proxies.trusts("127.0.0.1".parse().unwrap()));
        assert!(proxies.trusts("10.9.9.9".parse().unwrap()));
        let typo = load(&["--trusted-proxies", "10.1.2.3/8"], &[]).unwrap_err();
        assert!(typo.contains("did you mean 10.0.0.0/8"), "{typo}");
        let typo = toml::from_str::<Settings>("trusted_proxies = [\"10.1.2.3/8\"]");
        assert!(typo.unwrap_err().to_string().contains("host bits"));
        assert!(load(&["--forwarded-header", "x-real-ip"], &[]).is_err());
        assert_eq!(
            load(&["--ipv6-prefix", "0"], &[]).unwrap_err(),
            "ipv6_prefix must be 1 to 128"
        );
        let alone = load(&["--proxy-protocol", "v2"], &[]).unwrap_err();
        assert!(
            alone.starts_with("proxy_protocol needs trusted_proxies"),
            "{alone}"
        );
        let both = load(
            &["--proxy-protocol", "any", "--trusted-proxies", "10.0.0.0/8"],
            &[],
        );
        let engine = both.unwrap().settings.reactor_config();
        assert_eq!(engine.proxy_protocol, clarion_engine::ProxyProtocol::Any);
        assert_eq!(Settings::default().app_config().ipv6_prefix, 64);
        assert!(Settings::default().app_config().trusted_proxies.is_empty());
    }

    #[test]
    fn jwt_and_heartbeat_settings() {
        let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt/es256-public.pem");
        let file = scratch_dir("jwt-settings").join("clarion.toml");
        std::fs::write(
            &file,
            format!(
                "auth = \"jwt\"\njwt_public_key = {key:?}\njwt_audience = [\"a\", \"b\"]\n\
                 jwt_issuer = [\"i\"]\njwt_leeway = \"5s\"\nheartbeat_min = \"2s\"\n\
                 heartbeat_max = \"30s\"\n"
            ),
        )
        .unwrap();
        let app = load(&["--config", file.to_str().unwrap()], &[])
            .unwrap()
            .settings
            .app_config();
        assert_eq!(app.jwt.public_key.as_deref(), Some(key.as_path()));
        assert_eq!(app.jwt.audience, ["a", "b"]);
        assert_eq!(app.jwt.issuer, ["i"]);
        assert_eq!(app.jwt.leeway, Duration::from_secs(5));
        assert_eq!(
            (app.heartbeat(1), app.heartbeat(10), app.heartbeat(999)),
            (2, 10, 30)
        );
        assert_eq!(app.heartbeat(0), 0);
        let env = load(
            &["--auth", "jwt", "--jwt-secret", &"k".repeat(32)],
            &[("CLARION_JWT_AUDIENCE", "x,y"), ("CLARION_JWT_LEEWAY", "0")],
        )
        .unwrap()
        .settings
        .app_config();
        assert_eq!(env.jwt.audience, ["x", "y"]);
        assert_eq!(env.jwt.leeway, Duration::ZERO);
        let short = load(&["--auth", "jwt", "--jwt-secret", "short"], &[]).unwrap_err();
        assert!(
            short.starts_with("jwt_secret must be at least 32 bytes"),
            "{short}"
        );
        for (min, max) in [("0", "10s"), ("10s", "5s"), ("1s", "256s")] {
            let bad = load(&["--heartbeat-min", min, "--heartbeat-max", max], &[]);
            assert!(bad.unwrap_err().starts_with("heartbeat_min"), "{min} {max}");
        }
    }

    #[test]
    fn a_public_listener_with_open_publishing_needs_insecure() {
        let public = ["--listen", "0.0.0.0:9001"];
        let refused = load(&public, &[]).unwrap_err();
        assert!(refused.contains("--insecure"), "{refused}");
        // Behind a key, and clients not publishing: starts.
        assert!(load(&[&public[..], &["--api-key", "k"]].concat(), &[]).is_ok());
        // A key, but any client may publish: still open.
        let all = ["--api-key", "k", "--client-publish", "all"];
        assert!(load(&[&public[..], &all].concat(), &[]).is_err());
        // Said to be meant, or on loopback: starts.
        assert!(load(&[&public[..], &["--insecure"]].concat(), &[]).is_ok());
        assert!(load(&["--listen", "[::1]:9001"], &[]).is_ok());
    }

    #[test]
    fn rates_and_caps_are_checked_and_reach_the_engine() {
        let loaded = load(
            &[
                "--message-rate",
                "5",
                "--message-burst",
                "9",
                "--byte-rate",
                "0",
            ],
            &[("CLARION_WRITE_TIMEOUT", "3s"), ("CLARION_ECHO", "true")],
        )
        .unwrap();
        let config = loaded.settings.reactor_config();
        assert_eq!(
            (config.limits.message_rate, config.limits.message_burst),
            (5, 9)
        );
        assert_eq!(config.limits.byte_rate, 0);
        assert_eq!(config.write_timeout, Duration::from_secs(3));
        assert!(loaded.settings.app_config().echo);
        for (args, error) in [
            (&["--message-burst", "0"][..], "message_burst"),
            (&["--message-burst", "70000"][..], "message_burst"),
            (&["--byte-burst", "1000"][..], "byte_burst"),
            (
                &["--max-handshakes-per-reactor", "0"][..],
                "max_handshakes_per_reactor",
            ),
            (&["--write-timeout", "0"][..], "write_timeout"),
        ] {
            let refused = load(args, &[]).unwrap_err();
            assert!(refused.contains(error), "{args:?}: {refused}");
        }
    }

    #[test]
    fn client_publish_follows_auth_unless_set() {
        let mut settings: Settings = toml::from_str("auth = \"jwt\"\njwt_secret = \"s\"").unwrap();
        assert_eq!(settings.app_config().client_publish, ClientPublish::Token);
        settings.client_publish = Some(ClientPublish::All);
        assert_eq!(settings.app_config().client_publish, ClientPublish::All);
        assert_eq!(
            Settings::default().app_config().client_publish,
            ClientPublish::None,
            "off unless configured"
        );
        assert!(load(&["--client-publish", "token"], &[]).is_err());
    }
}
