//! What every reactor's handler shares: the application settings, the hub, the inboxes, the
//! access rules and the counters. One [`Server`] per process, behind an `Arc`.
//!
//! The settings that may change while the server runs (SIGHUP) and the access rules built from
//! them are one [`Live`] value, which each reactor reads through its own cached copy
//! ([`super::live`]); the rest is fixed at start.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::auth::{ApiKey, AuthMode, Grants, Jwt, JwtConfig, Origins};
use super::config::Secret;
use super::envelope::delivery_len;
use super::forwarded::ForwardedHeader;
use super::live::{Cached, Versioned};
use super::metrics::{Latencies, LatencyHistogram, ReactorMetrics, Snapshot};
use super::refusals::RefusalLog;
use crate::cluster::{BufferFull, Cluster, ClusterConfig};
use clarion_engine::{
    Cidr, CompressionConfig, LiveLimits, Mailboxes, Shared, Stats, TrustedProxies,
};
use clarion_pubsub::{Admission, Epoch, Hub, HubConfig, Payload, Post, Reactors};

/// How often, at most, the hub drops idle topics and expired history.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Who may publish by sending on a WebSocket (`/t/<topic>` or an envelope `publish`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClientPublish {
    /// Every client.
    All,
    /// No client: only the HTTP API publishes.
    None,
    /// Clients whose token's `publish` patterns match the topic.
    Token,
}

/// What to do with a subscriber whose queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumer {
    /// Close it with 1013 "slow consumer" (try again later).
    #[default]
    Close,
    /// Skip the messages that do not fit; it sees the gap in `seq`.
    Drop,
}

/// The push server's settings (the engine's are in [`clarion_engine::Config`]; those of its
/// limits that may change at run time are here, [`AppConfig::engine_limits`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppConfig {
    /// Whether `/echo` is served (conformance runs and benchmarks; off in production).
    pub echo: bool,
    /// Start even when listening beyond loopback with a publish API open to anyone.
    pub insecure: bool,
    /// Whether `/t/` and `/ws` need a token.
    pub auth: AuthMode,
    /// How tokens are checked (a key is required with [`AuthMode::Jwt`]).
    pub jwt: JwtConfig,
    /// The shortest heartbeat interval an envelope client may ask for (whole seconds, at
    /// least 1 s); shorter asks get this.
    pub heartbeat_min: Duration,
    /// The longest heartbeat interval (at most 255 s); longer asks get this.
    pub heartbeat_max: Duration,
    /// Bearer key of the HTTP publish API; `None` leaves the API open.
    pub api_key: Option<Secret>,
    /// The admin listener's address (metrics, stats, presence, health, readiness, dashboard);
    /// `None` for none. [`super::launch`] adds it to the engine's listeners.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer key of the admin routes but health and readiness; `None` leaves them open.
    pub admin_key: Option<Secret>,
    /// Also serve metrics, stats, presence and readiness on the public port.
    pub public_metrics: bool,
    /// Allowed `Origin`s of `/t/` and `/ws`; empty allows all.
    pub allowed_origins: Vec<String>,
    /// Who may publish from a WebSocket.
    pub client_publish: ClientPublish,
    /// Most connections in the process, of any kind (handshaking, plain HTTP, WebSocket,
    /// closing); more are closed at accept. 0 = no limit.
    pub max_connections: usize,
    /// Most open WebSockets per client address (an IPv4 address, or an IPv6 block of
    /// `ipv6_prefix` bits); 0 = no limit (both backends).
    pub max_connections_per_ip: usize,
    /// Prefix length of the IPv6 block counted as one client by the per-IP cap (one host often
    /// owns a whole /64).
    pub ipv6_prefix: u8,
    /// Proxies whose forwarding headers (and PROXY protocol headers) are believed.
    pub trusted_proxies: TrustedProxies,
    /// The forwarding header the trusted proxies set.
    pub forwarded_header: ForwardedHeader,
    /// Most topics one connection subscribes to.
    pub max_topics_per_connection: usize,
    /// Longest topic name in bytes.
    pub max_topic_length: usize,
    /// A connection's write cap: bytes that may wait for it (deliveries, replies, replays).
    /// A delivery to a subscriber with this much waiting applies [`SlowConsumer`]; a
    /// connection over it is not read until it drains; a publish whose delivery frame is
    /// larger is refused.
    pub max_queued_bytes: usize,
    /// How often a stream (`/sse`, `/stream`) gets a heartbeat, so that proxies do not time it
    /// out (whole seconds, 1 s to 255 s).
    pub stream_heartbeat: Duration,
    /// What to do with a subscriber that falls behind.
    pub slow_consumer: SlowConsumer,
    /// Messages (data, ping, pong) a client may send per second; 0 = no limit.
    pub message_rate: u32,
    /// Messages a client may send at once.
    pub message_burst: u32,
    /// Bytes a client may send per second once its WebSocket is open; 0 = no limit.
    pub byte_rate: u32,
    /// Bytes a client may send at once.
    pub byte_burst: u32,
    /// Topic, history and resume limits.
    pub hub: HubConfig,
    /// The Redis cluster this node joins; `None` for a self-contained node.
    pub cluster: Option<ClusterConfig>,
    /// permessage-deflate, as the engine negotiates it (fanout compresses with the same
    /// level and window).
    pub compression: CompressionConfig,
}

impl Default for AppConfig {
    /// What a production push server ships: no `/echo`, no publishing from clients, and per
    /// client at most 100 messages a second (200 at once) and 256 KiB a second (1 MiB at
    /// once): far above what a subscriber sends (commands, pings), far below a flood.
    fn default() -> AppConfig {
        AppConfig {
            echo: false,
            insecure: false,
            auth: AuthMode::None,
            jwt: JwtConfig::default(),
            heartbeat_min: Duration::from_secs(5),
            heartbeat_max: Duration::from_secs(120),
            api_key: None,
            admin_listen: None,
            admin_key: None,
            public_metrics: false,
            allowed_origins: Vec::new(),
            client_publish: ClientPublish::None,
            max_connections: 0,
            max_connections_per_ip: 0,
            ipv6_prefix: 64,
            trusted_proxies: TrustedProxies::default(),
            forwarded_header: ForwardedHeader::default(),
            max_topics_per_connection: 100,
            max_topic_length: 256,
            max_queued_bytes: 1 << 20,
            stream_heartbeat: Duration::from_secs(15),
            slow_consumer: SlowConsumer::Close,
            message_rate: 100,
            message_burst: 200,
            byte_rate: 256 << 10,
            byte_burst: 1 << 20,
            hub: HubConfig::default(),
            cluster: None,
            compression: CompressionConfig::default(),
        }
    }
}

/// The longest heartbeat interval a connection can hold (its seconds fit a byte).
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(255);

impl AppConfig {
    /// Why these settings cannot be served, if they cannot (one line for the operator): the
    /// heartbeat range, and with `auth = jwt` the token key (read and parsed here).
    pub fn check(&self) -> Result<(), String> {
        let (min, max) = (self.heartbeat_min, self.heartbeat_max);
        if min < Duration::from_secs(1) || max > MAX_HEARTBEAT || min > max {
            return Err(
                "heartbeat_min and heartbeat_max must be 1s to 255s, heartbeat_min at most \
                 heartbeat_max"
                    .to_owned(),
            );
        }
        if !(Duration::from_secs(1)..=MAX_HEARTBEAT).contains(&self.stream_heartbeat) {
            return Err("stream_heartbeat must be 1s to 255s".to_owned());
        }
        self.verifier().map(drop)
    }

    /// The token verifier `auth` asks for: `None` with `auth = none`.
    pub fn verifier(&self) -> Result<Option<Jwt>, String> {
        match self.auth {
            AuthMode::None => Ok(None),
            AuthMode::Jwt => Jwt::new(&self.jwt).map(Some),
        }
    }

    /// The engine's limits these settings set (what a reload applies to every reactor).
    pub fn engine_limits(&self) -> clarion_engine::Limits {
        clarion_engine::Limits {
            max_connections: self.max_connections,
            max_queued_bytes: self.max_queued_bytes,
            message_rate: self.message_rate,
            message_burst: self.message_burst,
            byte_rate: self.byte_rate,
            byte_burst: self.byte_burst,
        }
    }

    /// Whether anyone who can connect may publish: the HTTP API has no key, or clients may
    /// publish without a token.
    pub fn open_publishing(&self) -> bool {
        self.api_key.is_none()
            || (self.client_publish == ClientPublish::All && self.auth == AuthMode::None)
    }

    /// Refuses a server that would listen on `listen`, beyond loopback, with publishing open to
    /// anyone who can reach it, unless `insecure` says that is meant.
    pub fn check_exposure(&self, listen: std::net::SocketAddr) -> Result<(), String> {
        if listen.ip().is_loopback() || self.insecure || !self.open_publishing() {
            return Ok(());
        }
        Err(format!(
            "listening on {listen}, beyond loopback, with publishing open to anyone who can \
             connect: set api_key (and client_publish to none or token), or pass --insecure \
             (insecure = true) if that is meant"
        ))
    }

    /// A stream's heartbeat interval, in whole seconds (`check` keeps it within 1 to 255).
    pub fn stream_heartbeat_secs(&self) -> u8 {
        self.stream_heartbeat.as_secs().clamp(1, u64::from(u8::MAX)) as u8
    }

    /// The heartbeat interval, in whole seconds, for a client that asked for `seconds`: 0 (off)
    /// stays 0, anything else is brought within `heartbeat_min` to `heartbeat_max`.
    pub fn heartbeat(&self, seconds: u64) -> u8 {
        if seconds == 0 {
            return 0;
        }
        let (min, max) = (self.heartbeat_min.as_secs(), self.heartbeat_max.as_secs());
        // `check` keeps both within 1 to 255.
        seconds.clamp(min, max).min(u64::from(u8::MAX)) as u8
    }
}

/// One reactor's application counters (the engine's are in [`Stats`]).
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages sent to clients: deliveries, replays, acks and errors.
    pub messages_out: AtomicU64,
    /// Payload bytes received in WebSocket messages and publish bodies.
    pub bytes_in: AtomicU64,
    /// Frame bytes queued for clients.
    pub bytes_out: AtomicU64,
    /// Messages queued to subscribers by fanout.
    pub deliveries: AtomicU64,
    /// Of those, deliveries of a shared compressed frame.
    pub deflate_deliveries: AtomicU64,
    /// Compressed payload bytes of those deliveries.
    pub deflate_delivery_bytes: AtomicU64,
    /// Deliveries skipped for a full queue (`drop`).
    pub drops: AtomicU64,
    /// Subscribers closed for a full queue (`close`).
    pub slow_consumer_closes: AtomicU64,
    /// Connections closed because their token expired (4001).
    pub token_expired_closes: AtomicU64,
    /// Tokens swapped in by `refresh`.
    pub token_refreshes: AtomicU64,
    /// Application heartbeats sent.
    pub heartbeats: AtomicU64,
    /// Application heartbeats skipped: the connection's queue was over its low mark.
    pub heartbeats_skipped: AtomicU64,
    /// Publishes refused: too large for subscribers' queues, reactors behind, or too many
    /// new topics from clients.
    pub publishes_refused: AtomicU64,
    /// Resumes whose replay went out in more than one slice.
    pub sliced_replays: AtomicU64,
    /// Requests whose client address a trusted proxy's forwarding header named.
    pub forwarded_requests: AtomicU64,
    /// Requests refused (400) for a trusted proxy's forwarding header that could not be read.
    pub forwarded_refused: AtomicU64,
    /// Local subscriptions (gauge).
    pub subscriptions: AtomicU64,
    /// Publish to queued-for-write, once per message per reactor.
    pub latency: LatencyHistogram,
}

impl Counters {
    /// Counts one message of `bytes` frame bytes sent to a client.
    pub fn sent(&self, bytes: usize) {
        self.sent_many(1, bytes);
    }

    /// Counts `messages` sent to a client in `bytes` (a stream's events written together).
    pub fn sent_many(&self, messages: usize, bytes: usize) {
        self.messages_out.fetch_add(messages as u64, Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Relaxed);
    }
}

/// Why a WebSocket may not open (answered before the upgrade): `max_connections_per_ip`
/// reached, 429. (`max_connections` counts every connection and is the engine's, at accept.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// Who publishes: a client may create topics only within the hub's `client_topic_rate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The HTTP API (behind its key).
    Api,
    /// A WebSocket client.
    Client,
}

/// Why a publish was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishError {
    /// The hub refused: too many topics, too many new topics from clients, or the reactors
    /// that would deliver it are behind ([`clarion_pubsub::Error::Busy`]).
    Hub(clarion_pubsub::Error),
    /// Cluster mode: Redis is behind or down and the publish buffer is full.
    Cluster(BufferFull),
    /// Its largest delivery frame (envelope and base64 included) is above `max_queued_bytes`:
    /// no subscriber could take it.
    TooLarge {
        /// That frame's size in bytes.
        size: usize,
        /// `max_queued_bytes`.
        max: usize,
    },
}

impl PublishError {
    /// Worth trying again later (the server is behind), rather than never.
    pub fn is_transient(&self) -> bool {
        match self {
            PublishError::Cluster(_) => true,
            PublishError::Hub(e) => e.is_transient(),
            _ => false,
        }
    }
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Hub(e) => e.fmt(f),
            PublishError::Cluster(e) => e.fmt(f),
            PublishError::TooLarge { size, max } => write!(
                f,
                "message too large: its delivery frame is {size} bytes, above max_queued_bytes \
                 ({max})"
            ),
        }
    }
}

/// The config keys a reload applies while the server runs ([`Server::reload`]); a change to
/// any other key is logged as needing a restart. `max_connections_per_ip` applies between
/// non-zero values: turning the cap on needs a restart (connections open before it were not
/// counted, and io_uring accepts then start to carry addresses). Every reload reads the
/// `jwt_public_key` file again, so a rotated key is picked up even under the same path.
pub const RELOADABLE: &[&str] = &[
    "echo",
    "auth",
    "jwt_secret",
    "jwt_public_key",
    "jwt_audience",
    "jwt_issuer",
    "jwt_leeway",
    "heartbeat_min",
    "heartbeat_max",
    "api_key",
    "admin_key",
    "public_metrics",
    "allowed_origins",
    "client_publish",
    "max_connections",
    "max_connections_per_ip",
    "max_topics_per_connection",
    "max_topic_length",
    "max_queued_bytes",
    "slow_consumer",
    "message_rate",
    "message_burst",
    "byte_rate",
    "byte_burst",
];

/// The settings in force and the access rules built from them: replaced whole by a reload.
pub struct Live {
    /// The settings (those not in [`RELOADABLE`] as at start).
    pub config: AppConfig,
    /// Token verifier, with `auth = jwt`.
    pub jwt: Option<Jwt>,
    /// HTTP API key, when set.
    pub api_key: Option<ApiKey>,
    /// Admin key, when set.
    pub admin_key: Option<ApiKey>,
    /// Origin allowlist.
    pub origins: Origins,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The rest is built from the config, secrets included.
        f.debug_struct("Live")
            .field("config", &self.config)
            .finish()
    }
}

impl Live {
    /// Whether a client holding `grants` (its token's, with `auth = jwt`) may subscribe to
    /// `topic`: anyone may without tokens.
    pub fn can_subscribe(&self, grants: Option<&Grants>, topic: &str) -> bool {
        self.jwt.is_none() || grants.is_some_and(|g| g.can_subscribe(topic))
    }

    /// Whether a client holding `grants` may publish to `topic`, per `client_publish`.
    pub fn can_publish(&self, grants: Option<&Grants>, topic: &str) -> bool {
        match self.config.client_publish {
            ClientPublish::All => true,
            ClientPublish::None => false,
            ClientPublish::Token => grants.is_some_and(|g| g.can_publish(topic)),
        }
    }

    /// Fails only if `auth = jwt` has no usable key (settings are checked before they get
    /// here, but a key file can change in between): never a server without its verifier.
    fn new(config: AppConfig) -> Result<Live, String> {
        Ok(Live {
            jwt: config.verifier()?,
            api_key: config
                .api_key
                .as_deref()
                .and_then(|k| ApiKey::new(k.as_bytes())),
            admin_key: config
                .admin_key
                .as_deref()
                .and_then(|k| ApiKey::new(k.as_bytes())),
            origins: Origins::new(&config.allowed_origins),
            config,
        })
    }
}

/// What the per-IP cap counts a client address under: an IPv4 address (IPv4-mapped IPv6
/// included), or the IPv6 block of `ipv6_prefix` bits that holds it, since one host (one home
/// router, one VM) is usually given a whole /64.
pub fn client_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    let ip = ip.to_canonical();
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(_) => Cidr::containing(ip, ipv6_prefix).network(),
    }
}

/// State shared by every reactor's handler.
pub struct Server {
    /// The settings in force and the access rules: read through [`Server::cached`].
    live: Versioned<Live>,
    /// Topics, `seq`s and history.
    pub hub: Arc<Hub>,
    /// The node's own system topics (the dashboard's stats): a local hub of their own, never
    /// bridged to Redis nor counted among the application's topics. Their names start with
    /// `$`, which no public route accepts.
    pub system: Arc<Hub>,
    /// The reactors' inboxes: where a publish sends its message.
    pub mailboxes: Arc<Mailboxes<Post>>,
    /// The Redis bridge, in cluster mode.
    pub cluster: Option<Cluster>,
    /// The engine's counters, per reactor.
    pub stats: Arc<[Arc<Stats>]>,
    /// The engine's limits in force, which a reload changes.
    pub limits: Arc<LiveLimits>,
    /// The application's counters, per reactor.
    pub counters: Box<[Counters]>,
    /// Refused clients, logged at a bounded rate.
    pub refusals: RefusalLog,
    /// Per reactor, the last liveness probe it answered ([`Server::probe`]).
    probes_answered: Box<[AtomicU64]>,
    /// Whether open connections are counted per IP: fixed at start by the per-IP cap.
    counts_ips: bool,
    /// `ipv6_prefix`, fixed at start: the keys of `per_ip` must not change under it.
    ipv6_prefix: u8,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    started: Instant,
    /// Milliseconds since `started` of the next sweep.
    next_sweep: AtomicU64,
    /// SIGTERM or SIGINT began the drain: not ready any more.
    draining: std::sync::atomic::AtomicBool,
}

impl Server {
    /// The shared state for reactors reached through `shared`.
    ///
    /// In cluster mode this starts the bridge threads; it fails only if they cannot be spawned
    /// (the Redis URL was checked by [`super::start`]) or the token key cannot be used.
    pub fn new(config: AppConfig, shared: &Shared<Post>) -> Result<Server, String> {
        let reactors = shared.mailboxes.len();
        let live = Live::new(config)?;
        let config = &live.config;
        let (hub, cluster) = match &config.cluster {
            None => (
                Arc::new(Hub::new(config.hub.clone(), Epoch::random())),
                None,
            ),
            Some(cluster) => {
                let (hub, interest) = Cluster::hub(config.hub.clone());
                let hub = Arc::new(hub);
                let mailboxes = shared.mailboxes.clone();
                let bridge = Cluster::start(cluster, hub.clone(), interest, mailboxes)?;
                (hub, Some(bridge))
            }
        };
        // No history (a dashboard starts from the next snapshot), a handful of topics.
        let system = HubConfig {
            history_size: 0,
            max_topics: 16,
            ..HubConfig::default()
        };
        Ok(Server {
            hub,
            system: Arc::new(Hub::new(system, Epoch::random())),
            cluster,
            mailboxes: shared.mailboxes.clone(),
            stats: shared.stats.clone(),
            limits: shared.limits.clone(),
            counters: (0..reactors).map(|_| Counters::default()).collect(),
            refusals: RefusalLog::default(),
            probes_answered: (0..reactors).map(|_| AtomicU64::new(0)).collect(),
            counts_ips: config.max_connections_per_ip != 0,
            ipv6_prefix: config.ipv6_prefix,
            per_ip: Mutex::new(HashMap::new()),
            started: Instant::now(),
            next_sweep: AtomicU64::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
            live: Versioned::new(live),
        })
    }

    /// The settings in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live.load()
    }

    /// A reactor's copy of the settings, refreshed with [`Server::refresh`].
    pub fn cached(&self) -> Cached<Live> {
        self.live.cached()
    }

    /// Brings a reactor's copy up to date: one atomic load unless a reload happened.
    pub fn refresh(&self, cached: &mut Cached<Live>) {
        cached.refresh(&self.live);
    }

    /// Applies `next`'s [`RELOADABLE`] settings; every other setting keeps its value from the
    /// start. Open connections are kept: a new secret, key, origin list or limit applies to
    /// requests and commands from now on (a token already accepted keeps its grants, and its
    /// expiry is checked with the new leeway). Nothing changes if the token key cannot be
    /// used.
    pub fn reload(&self, next: &AppConfig) -> Result<(), String> {
        let mut config = self.live().config.clone();
        config.echo = next.echo;
        config.auth = next.auth;
        config.jwt = next.jwt.clone();
        config.heartbeat_min = next.heartbeat_min;
        config.heartbeat_max = next.heartbeat_max;
        config.api_key = next.api_key.clone();
        config.admin_key = next.admin_key.clone();
        config.public_metrics = next.public_metrics;
        config.allowed_origins = next.allowed_origins.clone();
        config.client_publish = next.client_publish;
        config.max_connections = next.max_connections;
        if self.counts_ips {
            config.max_connections_per_ip = next.max_connections_per_ip;
        }
        config.max_topics_per_connection = next.max_topics_per_connection;
        config.max_topic_length = next.max_topic_length;
        config.max_queued_bytes = next.max_queued_bytes;
        config.slow_consumer = next.slow_consumer;
        config.message_rate = next.message_rate;
        config.message_burst = next.message_burst;
        config.byte_rate = next.byte_rate;
        config.byte_burst = next.byte_burst;
        let live = Live::new(config)?;
        self.limits.store(&live.config.engine_limits());
        self.live.store(live);
        Ok(())
    }

    /// Asks every reactor to answer liveness probe `round` (a number above the last one).
    pub fn probe(&self, round: u64) {
        for reactor in 0..self.mailboxes.len() {
            self.mailboxes.post(reactor, Post::Probe(round));
        }
    }

    /// Reactor `index` answered probe `round`.
    pub fn answered(&self, index: usize, round: u64) {
        self.probes_answered[index].fetch_max(round, Relaxed);
    }

    /// Whether every reactor has answered probe `round`.
    pub fn all_answered(&self, round: u64) -> bool {
        self.probes_answered
            .iter()
            .all(|answered| answered.load(Relaxed) >= round)
    }

    /// Publishes `payload` to `topic` for `origin`. A self-contained node numbers it and posts
    /// it to every reactor with subscribers, and returns its `seq`; a cluster node queues it
    /// for Redis, which numbers it later, and returns `None`.
    ///
    /// Refused before anything is published: a message whose delivery frame could not fit a
    /// subscriber's queue (`max_queued_bytes`); on one node, a message whose reactors' inboxes
    /// are full ([`clarion_pubsub::Error::Busy`]) or, from a client, one that would create a
    /// topic past `client_topic_rate`.
    pub fn publish(
        &self,
        topic: &str,
        payload: Payload,
        origin: Origin,
        max_queued_bytes: usize,
    ) -> Result<Option<u64>, PublishError> {
        tracing::trace!(topic, bytes = payload.bytes().len(), "publish");
        let size = delivery_len(topic, &payload);
        if size > max_queued_bytes {
            return Err(PublishError::TooLarge {
                size,
                max: max_queued_bytes,
            });
        }
        if let Some(cluster) = &self.cluster {
            return cluster
                .publish(topic, payload)
                .map(|()| None)
                .map_err(PublishError::Cluster);
        }
        let mailboxes = &self.mailboxes;
        let room = |reactors: Reactors| reactors.iter().all(|r| mailboxes.has_room(r));
        let admission = Admission {
            client: origin == Origin::Client,
            room: &room,
        };
        // The reactor's wake-up time can be a whole batch old; latency starts at the publish.
        self.hub
            .publish_admitted(
                topic,
                payload,
                Instant::now(),
                &admission,
                |message, reactors| {
                    let weight = message.memory();
                    for reactor in reactors.iter() {
                        mailboxes.post_weighed(reactor, Post::Message(message.clone()), weight);
                    }
                    Some(message.seq())
                },
            )
            .map_err(PublishError::Hub)
    }

    /// At the end of the process: in cluster mode, sends the publishes still waiting for Redis
    /// until `deadline`, and counts and logs those that could not be sent.
    pub fn finish(&self, deadline: Instant) {
        if let Some(cluster) = &self.cluster {
            cluster.finish(deadline);
        }
    }

    /// Whether every reactor serves (none stopped on a backend error).
    pub fn healthy(&self) -> bool {
        self.failed_reactors().is_empty()
    }

    /// The reactors that stopped on a backend error.
    pub fn failed_reactors(&self) -> Vec<usize> {
        (0..self.stats.len())
            .filter(|&i| self.stats[i].failed.load(Relaxed))
            .collect()
    }

    /// Publishes `payload` to the node-local system topic `topic` (see [`Server::system`]): to
    /// this node's subscribers only, whatever the cluster.
    pub fn publish_system(
        &self,
        topic: &str,
        payload: Payload,
    ) -> Result<u64, clarion_pubsub::Error> {
        self.system
            .publish_with(topic, payload, Instant::now(), |message, reactors| {
                for reactor in reactors.iter() {
                    self.mailboxes.post(reactor, Post::Message(message.clone()));
                }
                message.seq()
            })
    }

    /// The drain began: readiness turns false for good.
    pub fn set_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    /// Whether the node should be sent new clients (`/readyz`): not while draining, nor in a
    /// cluster while the link to Redis is down (publishes would only be buffered, new topics
    /// could not be followed). The reason when not.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.draining.load(Relaxed) {
            return Err("draining");
        }
        if self.cluster.as_ref().is_some_and(|c| !c.stats().up) {
            return Err("cluster link down");
        }
        Ok(())
    }

    /// Subscribers of `topic`: (on this node, on the others as of the last heartbeat).
    pub fn presence(&self, topic: &str) -> (u64, u64) {
        let local = self.hub.subscribers(topic);
        let elsewhere = self.cluster.as_ref().map_or(0, |c| c.elsewhere(topic));
        (local, elsewhere)
    }

    /// Whether one more WebSocket from `ip` may open (checked before the upgrade; counted in
    /// [`Server::opened`], so concurrent handshakes can overshoot by a few).
    pub fn admit(&self, config: &AppConfig, ip: Option<IpAddr>) -> Result<(), Full> {
        let per_ip = config.max_connections_per_ip;
        if let Some(ip) = ip.filter(|_| per_ip != 0)
            && self.ips().get(&ip).is_some_and(|&n| n >= per_ip)
        {
            return Err(Full);
        }
        Ok(())
    }

    /// Counts an opened WebSocket's IP, when per-IP caps are on and it is known.
    pub fn opened(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            *self.ips().entry(ip).or_default() += 1;
        }
    }

    /// Counts a closed WebSocket's IP.
    pub fn closed(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            let mut ips = self.ips();
            if let Some(n) = ips.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    ips.remove(&ip);
                }
            }
        }
    }

    /// Whether per-IP counting is on.
    pub fn counts_ips(&self) -> bool {
        self.counts_ips
    }

    /// What the per-IP cap counts `ip` under ([`client_key`] with `ipv6_prefix`).
    pub fn client_key(&self, ip: IpAddr) -> IpAddr {
        client_key(ip, self.ipv6_prefix)
    }

    fn ips(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_ip.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sweeps the hub if no reactor did in the last second; cheap otherwise.
    pub fn maybe_sweep(&self, now: Instant) {
        let at = now.saturating_duration_since(self.started).as_millis() as u64;
        let due = self.next_sweep.load(Relaxed);
        let next = at + SWEEP_INTERVAL.as_millis() as u64;
        if at >= due
            && self
                .next_sweep
                .compare_exchange(due, next, Relaxed, Relaxed)
                .is_ok()
        {
            self.hub.sweep(now);
        }
    }

    /// Every reactor's numbers, for `/metrics` and `/stats`.
    pub fn metrics(&self) -> (Vec<ReactorMetrics>, Latencies) {
        let mut latencies = Latencies::default();
        let reactors = self
            .stats
            .iter()
            .zip(self.counters.iter())
            .enumerate()
            .map(|(i, (s, c))| {
                latencies.latency.merge(&c.latency.snapshot());
                latencies.write_wait.merge(&s.write_wait.snapshot());
                ReactorMetrics {
                    connections: s.connections.load(Relaxed),
                    accepted: s.accepted.load(Relaxed),
                    handshakes: s.upgrades.load(Relaxed),
                    http_requests: s.http_requests.load(Relaxed),
                    messages_in: s.messages_in.load(Relaxed),
                    messages_out: c.messages_out.load(Relaxed),
                    bytes_in: c.bytes_in.load(Relaxed),
                    bytes_out: c.bytes_out.load(Relaxed),
                    deliveries: c.deliveries.load(Relaxed),
                    drops: c.drops.load(Relaxed),
                    slow_consumer_closes: c.slow_consumer_closes.load(Relaxed),
                    token_expired_closes: c.token_expired_closes.load(Relaxed),
                    token_refreshes: c.token_refreshes.load(Relaxed),
                    heartbeats: c.heartbeats.load(Relaxed),
                    forwarded_requests: c.forwarded_requests.load(Relaxed),
                    forwarded_refused: c.forwarded_refused.load(Relaxed),
                    proxy_protocol_refused: s.proxy_refused.load(Relaxed),
                    subscriptions: c.subscriptions.load(Relaxed),
                    deflate_connections: s.deflate_connections.load(Relaxed),
                    deflate_windows: s.deflate_windows.load(Relaxed),
                    deflate_capped: s.deflate_capped.load(Relaxed),
                    deflate_messages_in: s.deflate_messages_in.load(Relaxed),
                    deflate_bytes_in: s.deflate_bytes_in.load(Relaxed),
                    deflate_messages_out: s.deflate_messages_out.load(Relaxed)
                        + c.deflate_deliveries.load(Relaxed),
                    deflate_bytes_out: s.deflate_bytes_out.load(Relaxed)
                        + c.deflate_delivery_bytes.load(Relaxed),
                    handshaking: s.handshaking.load(Relaxed),
                    paused: s.paused.load(Relaxed),
                    partial_bytes: s.partial_bytes.load(Relaxed),
                    inbox_bytes: self.mailboxes.queued_bytes(i) as u64,
                    refused_connections: s.refused_connections.load(Relaxed),
                    refused_handshakes: s.refused_handshakes.load(Relaxed),
                    handshake_timeouts: s.handshake_timeouts.load(Relaxed),
                    rate_limited: s.rate_limited.load(Relaxed),
                    write_timeouts: s.write_timeouts.load(Relaxed),
                    partial_budget_closes: s.partial_budget_closes.load(Relaxed),
                    publishes_refused: c.publishes_refused.load(Relaxed),
                    sliced_replays: c.sliced_replays.load(Relaxed),
                    heartbeats_skipped: c.heartbeats_skipped.load(Relaxed),
                    wait_retries: s.wait_retries.load(Relaxed),
                    failed: u64::from(s.failed.load(Relaxed)),
                    tls_handshaking: s.tls_handshaking.load(Relaxed),
                    tls_handshakes: s.tls_handshakes.load(Relaxed),
                    tls_resumed: s.tls_resumed.load(Relaxed),
                    tls_failures: s.tls_failures.load(Relaxed),
                    tls_refused: s.tls_refused.load(Relaxed),
                    socket_writes: s.socket_writes.load(Relaxed),
                }
            })
            .collect();
        (reactors, latencies)
    }

    /// A snapshot over `reactors` and `latencies` from [`Server::metrics`].
    pub fn snapshot<'a>(
        &self,
        reactors: &'a [ReactorMetrics],
        latencies: Latencies,
    ) -> Snapshot<'a> {
        Snapshot {
            reactors,
            hub: self.hub.stats(),
            latencies,
            cluster: self.cluster.as_ref().map(Cluster::stats),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::systemd::Watchdog;
    use clarion_engine::Policy;

    fn shared(reactors: usize) -> Shared<Post> {
        Shared {
            mailboxes: Arc::new(Mailboxes::new(reactors)),
            stats: (0..reactors).map(|_| Arc::new(Stats::default())).collect(),
            limits: Arc::new(LiveLimits::default()),
        }
    }

    fn server(config: AppConfig, reactors: usize) -> Server {
        Server::new(config, &shared(reactors)).unwrap()
    }

    /// The field of [`AppConfig`] a key sets, shown.
    type Field = fn(&AppConfig) -> String;

    /// Each reloadable key and its field.
    fn reloadable_fields() -> Vec<(&'static str, Field)> {
        vec![
            ("echo", |c| c.echo.to_string()),
            ("auth", |c| format!("{:?}", c.auth)),
            ("jwt_secret", |c| format!("{:?}", c.jwt.secret.as_deref())),
            ("jwt_public_key", |c| format!("{:?}", c.jwt.public_key)),
            ("jwt_audience", |c| format!("{:?}", c.jwt.audience)),
            ("jwt_issuer", |c| format!("{:?}", c.jwt.issuer)),
            ("jwt_leeway", |c| format!("{:?}", c.jwt.leeway)),
            ("heartbeat_min", |c| format!("{:?}", c.heartbeat_min)),
            ("heartbeat_max", |c| format!("{:?}", c.heartbeat_max)),
            ("api_key", |c| format!("{:?}", c.api_key.as_deref())),
            ("admin_key", |c| format!("{:?}", c.admin_key.as_deref())),
            ("public_metrics", |c| c.public_metrics.to_string()),
            ("allowed_origins", |c| format!("{:?}", c.allowed_origins)),
            ("client_publish", |c| format!("{:?}", c.client_publish)),
            ("max_connections", |c| c.max_connections.to_string()),
            ("max_connections_per_ip", |c| {
                c.max_connections_per_ip.to_string()
            }),
            ("max_topics_per_connection", |c| {
                c.max_topics_per_connection.to_string()
            }),
            ("max_topic_length", |c| c.max_topic_length.to_string()),
            ("max_queued_bytes", |c| c.max_queued_bytes.to_string()),
            ("slow_consumer", |c| format!("{:?}", c.slow_consumer)),
            ("message_rate", |c| c.message_rate.to_string()),
            ("message_burst", |c| c.message_burst.to_string()),
            ("byte_rate", |c| c.byte_rate.to_string()),
            ("byte_burst", |c| c.byte_burst.to_string()),
        ]
    }

    #[test]
    fn a_reload_applies_the_reloadable_settings_and_keeps_the_rest() {
        let fields = reloadable_fields();
        let keys: Vec<_> = fields.iter().map(|(key, _)| *key).collect();
        assert_eq!(keys, RELOADABLE, "every reloadable key is checked here");
        let start = AppConfig {
            max_connections_per_ip: 5,
            ..AppConfig::default()
        };
        let server = server(start.clone(), 1);
        let next = AppConfig {
            auth: AuthMode::Jwt,
            // The fields of one key each; `jwt_secret` and `jwt_public_key` are checked below,
            // as a verifier cannot have both.
            jwt: JwtConfig {
                secret: Some("a new secret of thirty-two bytes!".into()),
                public_key: None,
                audience: vec!["aud".into()],
                issuer: vec!["iss".into()],
                leeway: Duration::from_secs(7),
            },
            heartbeat_min: Duration::from_secs(2),
            heartbeat_max: Duration::from_secs(3),
            api_key: Some("new key".into()),
            admin_listen: None,
            admin_key: Some("new admin key".into()),
            public_metrics: true,
            allowed_origins: vec!["https://a.example".into()],
            client_publish: ClientPublish::Token,
            max_connections: 7,
            max_connections_per_ip: 6,
            ipv6_prefix: 48,
            trusted_proxies: TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]),
            forwarded_header: ForwardedHeader::Forwarded,
            max_topics_per_connection: 8,
            max_topic_length: 9,
            max_queued_bytes: 4096,
            stream_heartbeat: Duration::from_secs(5),
            slow_consumer: SlowConsumer::Drop,
            message_rate: 7,
            message_burst: 8,
            byte_rate: 9,
            byte_burst: 10,
            echo: true,
            insecure: true,
            hub: HubConfig {
                history_size: 1,
                ..HubConfig::default()
            },
            compression: CompressionConfig {
                policy: Policy::Shared,
                ..CompressionConfig::default()
            },
            cluster: None,
        };
        server.reload(&next).unwrap();
        let live = server.live();
        for (key, field) in &fields {
            if *key != "jwt_public_key" {
                assert_ne!(field(&start), field(&next), "{key} changes in this test");
            }
            assert_eq!(field(&live.config), field(&next), "{key} is applied");
        }
        assert_eq!(live.config.hub, start.hub, "history needs a restart");
        assert_eq!(live.config.stream_heartbeat, start.stream_heartbeat);
        assert_eq!(
            live.config.ipv6_prefix, 64,
            "the per-IP keys need a restart"
        );
        assert!(live.config.trusted_proxies.is_empty(), "so do the proxies");
        assert_eq!(live.config.forwarded_header, ForwardedHeader::XForwardedFor);
        assert_eq!(live.config.compression, start.compression);
        assert!(!live.config.insecure, "insecure needs a restart");
        assert_eq!(
            server.limits.load(),
            next.engine_limits(),
            "the engine's limits follow"
        );
        assert!(live.jwt.is_some() && live.api_key.is_some() && live.admin_key.is_some());

        // Per-IP caps turned on later are not applied: nothing was counted.
        let uncounted = self::server(AppConfig::default(), 1);
        uncounted.reload(&next).unwrap();
        assert_eq!(uncounted.live().config.max_connections_per_ip, 0);
        assert!(!uncounted.counts_ips());
    }

    #[test]
    fn a_reload_reads_the_public_key_again_and_refuses_an_unusable_one() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt");
        let with_key = |file: &str| AppConfig {
            auth: AuthMode::Jwt,
            jwt: JwtConfig {
                public_key: Some(fixtures.join(file)),
                ..JwtConfig::default()
            },
            ..AppConfig::default()
        };
        let server = server(with_key("es256-public.pem"), 1);
        let algorithm = |server: &Server| server.live().jwt.as_ref().map(Jwt::algorithm);
        assert_eq!(algorithm(&server), Some(jsonwebtoken::Algorithm::ES256));
        server.reload(&with_key("rs256-public.pem")).unwrap();
        assert_eq!(algorithm(&server), Some(jsonwebtoken::Algorithm::RS256));
        let refused = server.reload(&with_key("rsa1024-public.pem")).unwrap_err();
        assert!(refused.contains("2048"), "{refused}");
        assert_eq!(algorithm(&server), Some(jsonwebtoken::Algorithm::RS256));
        let short = AppConfig {
            auth: AuthMode::Jwt,
            jwt: JwtConfig {
                secret: Some("short".into()),
                ..JwtConfig::default()
            },
            ..AppConfig::default()
        };
        assert!(server.reload(&short).is_err());
        assert!(Server::new(short, &shared(1)).is_err());
    }

    #[test]
    fn reactors_pick_up_a_reload_through_their_copy() {
        let server = server(AppConfig::default(), 1);
        let mut cached = server.cached();
        server
            .reload(&AppConfig {
                max_connections: 3,
                ..AppConfig::default()
            })
            .unwrap();
        assert_eq!(cached.get().config.max_connections, 0);
        server.refresh(&mut cached);
        assert_eq!(cached.get().config.max_connections, 3);
    }

    #[test]
    fn the_watchdog_pings_only_when_every_reactor_answered() {
        let server = server(AppConfig::default(), 2);
        let mut watchdog = Watchdog::default();
        assert!(
            watchdog.tick(&server, false),
            "nothing asked yet: probe 1 goes out"
        );
        assert!(!watchdog.tick(&server, false));
        server.answered(0, 1);
        assert!(!watchdog.tick(&server, false), "reactor 1 has not answered");
        assert!(
            watchdog.tick(&server, true),
            "the drain has its own timeout"
        );
        server.answered(1, 1);
        assert!(
            watchdog.tick(&server, false),
            "both answered: probe 2 goes out"
        );
        assert!(!server.all_answered(2));
    }

    fn key(ip: &str, prefix: u8) -> IpAddr {
        client_key(ip.parse().unwrap(), prefix)
    }

    #[test]
    fn an_ipv6_block_is_one_client_and_ipv4_keeps_every_bit() {
        assert_eq!(
            key("2001:db8:1:2:aaaa::1", 64),
            key("2001:db8:1:2:bbbb::9", 64)
        );
        assert_ne!(key("2001:db8:1:2::1", 64), key("2001:db8:1:3::1", 64));
        assert_eq!(key("2001:db8:1:2::1", 48), key("2001:db8:1:3::1", 48));
        assert_ne!(key("2001:db8::1", 128), key("2001:db8::2", 128));
        assert_eq!(key("::ffff:198.51.100.7", 64), key("198.51.100.7", 64));
        assert_ne!(key("198.51.100.7", 64), key("198.51.100.8", 64));
    }
}
