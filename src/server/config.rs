//! Settings: command-line flags over an optional TOML file over defaults.
//!
//! Every flag of `clarion serve` has a TOML key of the same name (with `_` for `-`), except
//! `--redis`, which is `redis` in the `[cluster]` table; a flag given on the command line wins. Sizes are in bytes, durations are written `500ms`, `10s`,
//! `2m` or `1h`; `0` turns an optional timer off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use clarion_host::parse_duration;
use serde::Deserialize;

use super::auth::AuthMode;
use super::forwarded::ForwardedHeader;
use super::state::{AppConfig, ClientPublish, SlowConsumer};
use crate::cluster::{self, ClusterConfig};

use clarion_engine::{Cidr, TrustedProxies};
use clarion_pubsub::{HubConfig, MAX_REACTORS};

/// A configured secret (JWT key, API key): used as a `str`, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

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

/// `clarion serve` flags; each overrides the config file's key of the same name.
#[derive(Args, Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// TOML config file (keys as these flags, with `_` for `-`).
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

    /// Most connections per reactor; more are refused at accept [default: 1048576].
    #[arg(long, value_name = "N")]
    pub max_connections_per_reactor: Option<usize>,

    /// Largest frame payload in bytes; larger closes with 1009 [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    pub max_frame_size: Option<u64>,

    /// Largest message in bytes, fragments together; larger closes with 1009 [default: 16777216].
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

    /// Bytes of each reactor's shared read buffer [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub read_buffer_size: Option<usize>,

    /// Whether /t/ and /ws need an HS256 JWT (in ?token= or Authorization: Bearer)
    /// [default: none].
    #[arg(long, value_enum)]
    pub auth: Option<AuthMode>,

    /// The HS256 secret of `auth = jwt` (prefer the config file: flags show in `ps`).
    #[arg(long, value_name = "SECRET")]
    pub jwt_secret: Option<Secret>,

    /// Bearer key of the HTTP publish API; unset leaves the API open (a warning is logged).
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<Secret>,

    /// Origins allowed to open /t/ and /ws, comma-separated `scheme://host[:port]`; requests
    /// without an Origin header always pass [default: any].
    #[arg(long, value_name = "ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,

    /// Who may publish by sending on a WebSocket [default: all with auth = none, token with
    /// auth = jwt].
    #[arg(long, value_enum)]
    pub client_publish: Option<ClientPublish>,

    /// Most open WebSockets in the process, refused with 503 beyond; 0 = no limit [default: 0].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Most open WebSockets per client address, refused with 429 beyond; 0 = no limit
    /// [default: 0]. An IPv6 client is its block of `ipv6_prefix` bits.
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

    /// Most topics one connection subscribes to [default: 100].
    #[arg(long, value_name = "N")]
    pub max_topics_per_connection: Option<usize>,

    /// Longest topic name in bytes [default: 256].
    #[arg(long, value_name = "BYTES")]
    pub max_topic_length: Option<usize>,

    /// Most topics alive at once [default: 100000].
    #[arg(long, value_name = "N")]
    pub max_topics: Option<usize>,

    /// Bytes that may wait for one subscriber before `slow_consumer` applies [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub max_queued_bytes: Option<usize>,

    /// What happens to a subscriber past `max_queued_bytes`: close it with 1008, or drop
    /// messages (it sees a gap in `seq`) [default: close].
    #[arg(long, value_enum)]
    pub slow_consumer: Option<SlowConsumer>,

    /// Messages kept per topic for resume; 0 = no history [default: 100].
    #[arg(long, value_name = "N")]
    pub history_size: Option<usize>,

    /// Payload bytes kept per topic [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub history_max_bytes: Option<usize>,

    /// Age after which a message leaves history; 0 = no age limit [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub history_max_age: Option<Duration>,

    /// Payload bytes kept in history across all topics [default: 268435456].
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
    /// file: `redis` in the `[cluster]` table.
    #[arg(long, value_name = "URL")]
    #[serde(skip)]
    pub redis: Option<String>,

    /// The config file's `[cluster]` table.
    #[arg(skip)]
    pub cluster: Option<ClusterSettings>,
}

/// The `[cluster]` table of the config file.
#[derive(Debug, Default, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// The Redis URL (the `--redis` flag wins over it).
    pub redis: Option<String>,
    /// Payload bytes of publishes that may wait for Redis while it is slow or down; past it
    /// publishes are refused [default: 16777216].
    pub buffer_bytes: Option<usize>,
    /// How often the node writes its subscriber counts to Redis; they expire after three
    /// [default: 1s].
    #[serde(default, deserialize_with = "de_duration")]
    pub heartbeat: Option<Duration>,
}

impl Settings {
    /// The flags, over the config file they name (if any).
    pub fn resolve(flags: Settings) -> Result<Settings, String> {
        let Some(path) = flags.config.clone() else {
            return Self::validated(flags);
        };
        let file = Self::from_file(&path)?;
        Self::validated(flags.over(file))
    }

    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Settings, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))
    }

    /// `self`'s values where set, else `base`'s.
    fn over(self, base: Settings) -> Settings {
        macro_rules! pick {
            ($($field:ident),*) => { Settings { config: self.config, $($field: self.$field.or(base.$field)),* } };
        }
        pick!(
            listen,
            io,
            uring_files,
            uring_buffers,
            uring_buffer_size,
            threads,
            no_pin,
            private_fd_table,
            backlog,
            max_connections_per_reactor,
            max_frame_size,
            max_message_size,
            max_head_size,
            max_headers,
            max_body_size,
            handshake_timeout,
            ping_interval,
            pong_timeout,
            idle_timeout,
            close_timeout,
            drain_timeout,
            read_buffer_size,
            auth,
            jwt_secret,
            api_key,
            allowed_origins,
            client_publish,
            max_connections,
            max_connections_per_ip,
            ipv6_prefix,
            trusted_proxies,
            forwarded_header,
            max_topics_per_connection,
            max_topic_length,
            max_topics,
            max_queued_bytes,
            slow_consumer,
            history_size,
            history_max_bytes,
            history_max_age,
            history_total_bytes,
            redis,
            cluster,
            compression,
            compression_level,
            compression_window_bits,
            compression_threshold,
            compression_max_windows
        )
    }

    fn validated(settings: Settings) -> Result<Settings, String> {
        let config = settings.reactor_config();
        let p = &config.protocol;
        let app = settings.app_config();
        let checks = [
            (config.threads == 0, "threads must be at least 1"),
            (config.threads > MAX_REACTORS, "threads must be at most 64"),
            (
                app.auth == AuthMode::Jwt && app.jwt_secret.as_deref().is_none_or(str::is_empty),
                "auth = jwt needs a jwt_secret",
            ),
            (
                app.auth == AuthMode::None && app.client_publish == ClientPublish::Token,
                "client_publish = token needs auth = jwt",
            ),
            (
                settings.api_key.as_deref() == Some(""),
                "api_key must not be empty",
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
                    || p.close_timeout.is_zero(),
                "handshake_timeout, pong_timeout and close_timeout must be above 0",
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
                config.compression.level > 9,
                "compression_level must be 0 to 9",
            ),
            (
                !(8..=15).contains(&config.compression.window_bits),
                "compression_window_bits must be 8 to 15",
            ),
        ];
        if let Some((_, message)) = checks.iter().find(|(bad, _)| *bad) {
            return Err((*message).to_owned());
        }
        if let Some(cluster) = &app.cluster {
            cluster::check_url(&cluster.redis)?;
        }
        Ok(settings)
    }

    /// The push server's configuration these settings describe (defaults where unset).
    pub fn app_config(&self) -> AppConfig {
        let d = AppConfig::default();
        let h = HubConfig::default();
        let auth = self.auth.unwrap_or(d.auth);
        AppConfig {
            auth,
            jwt_secret: self.jwt_secret.clone(),
            api_key: self.api_key.clone(),
            allowed_origins: self.allowed_origins.clone().unwrap_or_default(),
            client_publish: self.client_publish.unwrap_or(match auth {
                AuthMode::None => ClientPublish::All,
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
            slow_consumer: self.slow_consumer.unwrap_or(d.slow_consumer),
            hub: HubConfig {
                history_size: self.history_size.unwrap_or(h.history_size),
                history_max_bytes: self.history_max_bytes.unwrap_or(h.history_max_bytes),
                history_max_age: self.history_max_age.unwrap_or(h.history_max_age),
                history_total_bytes: self.history_total_bytes.unwrap_or(h.history_total_bytes),
                max_topics: self.max_topics.unwrap_or(h.max_topics),
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

    /// The cluster this node joins, if a Redis URL is set (flag or `[cluster] redis`).
    fn cluster_config(&self) -> Option<ClusterConfig> {
        let table = self.cluster.clone().unwrap_or_default();
        let redis = self.redis.clone().or(table.redis)?;
        let d = ClusterConfig::default();
        Some(ClusterConfig {
            redis,
            buffer_bytes: table.buffer_bytes.unwrap_or(d.buffer_bytes),
            heartbeat: table.heartbeat.unwrap_or(d.heartbeat),
        })
    }

    /// The engine configuration these settings describe (defaults where unset).
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
            read_buffer_size: self.read_buffer_size.unwrap_or(d.read_buffer_size),
            drain_timeout: self.drain_timeout.unwrap_or(d.drain_timeout),
            protocol: clarion_protocol::Config {
                max_frame_size: self.max_frame_size.unwrap_or(p.max_frame_size),
                max_message_size: self.max_message_size.unwrap_or(p.max_message_size),
                max_head_size: self.max_head_size.unwrap_or(p.max_head_size),
                max_headers: self.max_headers.unwrap_or(p.max_headers),
                max_body_size: self.max_body_size.unwrap_or(p.max_body_size),
                handshake_timeout: self.handshake_timeout.unwrap_or(p.handshake_timeout),
                ping_interval: optional(self.ping_interval, p.ping_interval),
                pong_timeout: self.pong_timeout.unwrap_or(p.pong_timeout),
                idle_timeout: optional(self.idle_timeout, p.idle_timeout),
                close_timeout: self.close_timeout.unwrap_or(p.close_timeout),
            },
            compression: self.compression_config(),
        }
    }
}

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

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let file: Settings = toml::from_str(
            "threads = 3\nping_interval = \"0\"\nmax_frame_size = 1000\nlisten = \"0.0.0.0:80\"",
        )
        .unwrap();
        let flags = Settings {
            threads: Some(5),
            ..Settings::default()
        };
        let config = flags.over(file).reactor_config();
        assert_eq!(config.threads, 5);
        assert_eq!(config.listen, "0.0.0.0:80".parse().unwrap());
        assert_eq!(config.protocol.max_frame_size, 1000);
        assert_eq!(config.protocol.ping_interval, None);
        assert_eq!(config.protocol.close_timeout, Duration::from_secs(5));
    }

    #[test]
    fn the_shipped_example_is_valid_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/clarion.toml");
        let example = Settings::resolve(Settings {
            config: Some(path),
            ..Settings::default()
        })
        .unwrap();
        let mut config = example.reactor_config();
        let defaults = clarion_engine::Config::default();
        // Host-dependent defaults: the core count and the fd limit.
        config.threads = defaults.threads;
        config.uring.files = defaults.uring.files;
        assert_eq!(format!("{config:?}"), format!("{defaults:?}"));
        assert_eq!(example.app_config(), AppConfig::default());
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let settings: Settings =
            toml::from_str("api_key = \"hunter2\"\njwt_secret = \"swordfish\"").unwrap();
        let shown = format!("{settings:?} {:?}", settings.app_config());
        assert!(
            !shown.contains("hunter2") && !shown.contains("swordfish"),
            "{shown}"
        );
        assert_eq!(settings.api_key.as_deref(), Some("hunter2"));
    }

    #[test]
    fn bad_files_and_values_are_reported() {
        assert!(
            toml::from_str::<Settings>("thread = 3")
                .unwrap_err()
                .to_string()
                .contains("unknown field")
        );
        assert!(toml::from_str::<Settings>("close_timeout = \"soon\"").is_err());
        let zero = Settings {
            threads: Some(0),
            ..Settings::default()
        };
        assert_eq!(
            Settings::resolve(zero).unwrap_err(),
            "threads must be at least 1"
        );
        let missing = Settings {
            config: Some("/nonexistent.toml".into()),
            ..Settings::default()
        };
        assert!(
            Settings::resolve(missing)
                .unwrap_err()
                .contains("cannot read")
        );
        let jwt = Settings {
            auth: Some(AuthMode::Jwt),
            ..Settings::default()
        };
        assert_eq!(
            Settings::resolve(jwt).unwrap_err(),
            "auth = jwt needs a jwt_secret"
        );
        assert!(toml::from_str::<Settings>("slow_consumer = \"maybe\"").is_err());
    }

    #[test]
    fn cluster_comes_from_the_table_or_the_flag() {
        let file: Settings = toml::from_str(
            "[cluster]\nredis = \"redis://10.0.0.1:6379\"\nbuffer_bytes = 1000\nheartbeat = \"2s\"",
        )
        .unwrap();
        let cluster = file.app_config().cluster.unwrap();
        assert_eq!(cluster.redis, "redis://10.0.0.1:6379");
        assert_eq!(cluster.buffer_bytes, 1000);
        assert_eq!(cluster.heartbeat, Duration::from_secs(2));
        let flags = Settings {
            redis: Some("redis://127.0.0.1:7000".into()),
            ..Settings::default()
        };
        let merged = flags.over(file).app_config().cluster.unwrap();
        assert_eq!(merged.redis, "redis://127.0.0.1:7000");
        assert_eq!(merged.buffer_bytes, 1000);
        assert_eq!(Settings::default().app_config().cluster, None);
        let bad = Settings {
            redis: Some("http://nope".into()),
            ..Settings::default()
        };
        assert!(
            Settings::resolve(bad)
                .unwrap_err()
                .contains("invalid redis URL")
        );
        assert!(toml::from_str::<Settings>("[cluster]\nredos = \"x\"").is_err());
    }

    #[test]
    fn the_cluster_examples_are_valid() {
        for node in ["a", "b"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("config/cluster-node-{node}.toml"));
            let settings = Settings::resolve(Settings {
                config: Some(path),
                ..Settings::default()
            })
            .unwrap();
            assert!(settings.app_config().cluster.is_some());
        }
    }

    #[test]
    fn trusted_proxies_and_the_ipv6_prefix_come_from_file_or_flags() {
        let file: Settings = toml::from_str(
            "trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nforwarded_header = \"forwarded\"\nipv6_prefix = 56",
        )
        .unwrap();
        let app = file.app_config();
        assert!(app.trusted_proxies.trusts("10.1.2.3".parse().unwrap()));
        assert!(app.trusted_proxies.trusts("::1".parse().unwrap()));
        assert!(!app.trusted_proxies.trusts("192.0.2.1".parse().unwrap()));
        assert_eq!(app.forwarded_header, ForwardedHeader::Forwarded);
        assert_eq!(app.ipv6_prefix, 56);
        let flags = Settings {
            trusted_proxies: Some(vec!["192.0.2.0/24".parse().unwrap()]),
            ..Settings::default()
        };
        let merged = flags.over(file).app_config();
        assert!(merged.trusted_proxies.trusts("192.0.2.9".parse().unwrap()));
        assert!(!merged.trusted_proxies.trusts("10.1.2.3".parse().unwrap()));
        let typo = toml::from_str::<Settings>("trusted_proxies = [\"10.1.2.3/8\"]");
        assert!(typo.unwrap_err().to_string().contains("host bits"));
        assert!(toml::from_str::<Settings>("forwarded_header = \"x-real-ip\"").is_err());
        let zero = Settings {
            ipv6_prefix: Some(0),
            ..Settings::default()
        };
        assert_eq!(
            Settings::resolve(zero).unwrap_err(),
            "ipv6_prefix must be 1 to 128"
        );
    }

    #[test]
    fn client_publish_follows_auth_unless_set() {
        let mut settings: Settings = toml::from_str("auth = \"jwt\"\njwt_secret = \"s\"").unwrap();
        assert_eq!(settings.app_config().client_publish, ClientPublish::Token);
        settings.client_publish = Some(ClientPublish::All);
        assert_eq!(settings.app_config().client_publish, ClientPublish::All);
        assert_eq!(
            Settings::default().app_config().client_publish,
            ClientPublish::All
        );
        let token_without_auth = Settings {
            client_publish: Some(ClientPublish::Token),
            ..Settings::default()
        };
        assert!(Settings::resolve(token_without_auth).is_err());
    }
}
