//! What every reactor's handler shares: the application settings, the hub, the inboxes, the
//! access rules and the counters. One [`Server`] per process, behind an `Arc`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::auth::{ApiKey, AuthMode, Jwt, Origins};
use super::config::Secret;
use super::forwarded::ForwardedHeader;
use super::metrics::{Histogram, LatencyHistogram, ReactorMetrics, Snapshot};
use crate::cluster::{BufferFull, Cluster, ClusterConfig};
use clarion_engine::{Cidr, CompressionConfig, Mailboxes, Shared, Stats, TrustedProxies};
use clarion_pubsub::{Epoch, Hub, HubConfig, Payload, Post};

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
    /// Close it with 1008 "slow consumer".
    #[default]
    Close,
    /// Skip the messages that do not fit; it sees the gap in `seq`.
    Drop,
}

/// The push server's settings (the engine's are in [`clarion_engine::Config`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppConfig {
    /// Whether `/t/` and `/ws` need a token.
    pub auth: AuthMode,
    /// The HS256 secret (required with [`AuthMode::Jwt`]).
    pub jwt_secret: Option<Secret>,
    /// Bearer key of the HTTP publish API; `None` leaves the API open.
    pub api_key: Option<Secret>,
    /// Allowed `Origin`s of `/t/` and `/ws`; empty allows all.
    pub allowed_origins: Vec<String>,
    /// Who may publish from a WebSocket.
    pub client_publish: ClientPublish,
    /// Most open WebSockets in the process; 0 = no limit.
    pub max_connections: usize,
    /// Most open WebSockets per client address (an IPv4 address, or an IPv6 block of
    /// `ipv6_prefix` bits); 0 = no limit.
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
    /// Bytes that may wait for one subscriber before [`SlowConsumer`] applies.
    pub max_queued_bytes: usize,
    /// What to do with a subscriber that falls behind.
    pub slow_consumer: SlowConsumer,
    /// Topic, history and resume limits.
    pub hub: HubConfig,
    /// The Redis cluster this node joins; `None` for a self-contained node.
    pub cluster: Option<ClusterConfig>,
    /// permessage-deflate, as the engine negotiates it (fanout compresses with the same
    /// level and window).
    pub compression: CompressionConfig,
}

impl Default for AppConfig {
    fn default() -> AppConfig {
        AppConfig {
            auth: AuthMode::None,
            jwt_secret: None,
            api_key: None,
            allowed_origins: Vec::new(),
            client_publish: ClientPublish::All,
            max_connections: 0,
            max_connections_per_ip: 0,
            ipv6_prefix: 64,
            trusted_proxies: TrustedProxies::default(),
            forwarded_header: ForwardedHeader::default(),
            max_topics_per_connection: 100,
            max_topic_length: 256,
            max_queued_bytes: 1 << 20,
            slow_consumer: SlowConsumer::Close,
            hub: HubConfig::default(),
            cluster: None,
            compression: CompressionConfig::default(),
        }
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
        self.messages_out.fetch_add(1, Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Relaxed);
    }
}

/// Why a WebSocket may not open (answered before the upgrade).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// `max_connections` reached: 503.
    Server,
    /// `max_connections_per_ip` reached: 429.
    Ip,
}

/// Why a publish was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishError {
    /// The hub refused (too many topics).
    Hub(clarion_pubsub::Error),
    /// Cluster mode: Redis is behind or down and the publish buffer is full.
    Cluster(BufferFull),
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Hub(e) => e.fmt(f),
            PublishError::Cluster(e) => e.fmt(f),
        }
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
    /// The settings.
    pub config: AppConfig,
    /// Topics, `seq`s and history.
    pub hub: Arc<Hub>,
    /// The reactors' inboxes: where a publish sends its message.
    pub mailboxes: Arc<Mailboxes<Post>>,
    /// The Redis bridge, in cluster mode.
    pub cluster: Option<Cluster>,
    /// The engine's counters, per reactor.
    pub stats: Arc<[Arc<Stats>]>,
    /// The application's counters, per reactor.
    pub counters: Box<[Counters]>,
    /// Token verifier, with `auth = jwt`.
    pub jwt: Option<Jwt>,
    /// HTTP API key, when set.
    pub api_key: Option<ApiKey>,
    /// Origin allowlist.
    pub origins: Origins,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    started: Instant,
    /// Milliseconds since `started` of the next sweep.
    next_sweep: AtomicU64,
}

impl Server {
    /// The shared state for reactors reached through `shared`.
    ///
    /// In cluster mode this starts the bridge threads; it fails only if they cannot be spawned
    /// (the Redis URL was checked by [`super::start`]).
    pub fn new(config: AppConfig, shared: &Shared<Post>) -> Result<Server, String> {
        let reactors = shared.mailboxes.len();
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
        Ok(Server {
            hub,
            cluster,
            mailboxes: shared.mailboxes.clone(),
            stats: shared.stats.clone(),
            counters: (0..reactors).map(|_| Counters::default()).collect(),
            jwt: match config.auth {
                AuthMode::Jwt => config
                    .jwt_secret
                    .as_deref()
                    .and_then(|s| Jwt::new(s.as_bytes())),
                AuthMode::None => None,
            },
            api_key: config
                .api_key
                .as_deref()
                .and_then(|k| ApiKey::new(k.as_bytes())),
            origins: Origins::new(&config.allowed_origins),
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            started: Instant::now(),
            next_sweep: AtomicU64::new(0),
            config,
        })
    }

    /// Publishes `payload` to `topic`. A self-contained node numbers it and posts it to every
    /// reactor with subscribers, and returns its `seq`; a cluster node queues it for Redis,
    /// which numbers it later, and returns `None`.
    pub fn publish(&self, topic: &str, payload: Payload) -> Result<Option<u64>, PublishError> {
        if let Some(cluster) = &self.cluster {
            return cluster
                .publish(topic, payload)
                .map(|()| None)
                .map_err(PublishError::Cluster);
        }
        // The reactor's wake-up time can be a whole batch old; latency starts at the publish.
        self.hub
            .publish_with(topic, payload, Instant::now(), |message, reactors| {
                for reactor in reactors.iter() {
                    self.mailboxes.post(reactor, Post::Message(message.clone()));
                }
                Some(message.seq())
            })
            .map_err(PublishError::Hub)
    }

    /// Subscribers of `topic`: (on this node, on the others as of the last heartbeat).
    pub fn presence(&self, topic: &str) -> (u64, u64) {
        let local = self.hub.subscribers(topic);
        let elsewhere = self.cluster.as_ref().map_or(0, |c| c.elsewhere(topic));
        (local, elsewhere)
    }

    /// Whether one more WebSocket from `ip` may open (checked before the upgrade; counted in
    /// [`Server::opened`], so concurrent handshakes can overshoot by a few).
    pub fn admit(&self, ip: Option<IpAddr>) -> Result<(), Full> {
        let max = self.config.max_connections;
        if max != 0 && self.open.load(Relaxed) >= max {
            return Err(Full::Server);
        }
        let per_ip = self.config.max_connections_per_ip;
        if let Some(ip) = ip.filter(|_| per_ip != 0)
            && self.ips().get(&ip).is_some_and(|&n| n >= per_ip)
        {
            return Err(Full::Ip);
        }
        Ok(())
    }

    /// Counts an opened WebSocket (and its IP, when per-IP caps are on and it is known).
    pub fn opened(&self, ip: Option<IpAddr>) {
        self.open.fetch_add(1, Relaxed);
        if let Some(ip) = ip {
            *self.ips().entry(ip).or_default() += 1;
        }
    }

    /// Counts a closed WebSocket.
    pub fn closed(&self, ip: Option<IpAddr>) {
        self.open.fetch_sub(1, Relaxed);
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
        self.config.max_connections_per_ip != 0
    }

    /// What the per-IP cap counts `ip` under ([`client_key`] with `ipv6_prefix`).
    pub fn client_key(&self, ip: IpAddr) -> IpAddr {
        client_key(ip, self.config.ipv6_prefix)
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
    pub fn metrics(&self) -> (Vec<ReactorMetrics>, Histogram) {
        let mut latency = Histogram::default();
        let reactors = self
            .stats
            .iter()
            .zip(self.counters.iter())
            .map(|(s, c)| {
                latency.merge(&c.latency.snapshot());
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
                    forwarded_requests: c.forwarded_requests.load(Relaxed),
                    forwarded_refused: c.forwarded_refused.load(Relaxed),
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
                }
            })
            .collect();
        (reactors, latency)
    }

    /// A snapshot over `reactors` and `latency` from [`Server::metrics`].
    pub fn snapshot<'a>(&self, reactors: &'a [ReactorMetrics], latency: Histogram) -> Snapshot<'a> {
        Snapshot {
            reactors,
            hub: self.hub.stats(),
            latency,
            cluster: self.cluster.as_ref().map(Cluster::stats),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
