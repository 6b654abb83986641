//! The Redis bridge: one topic space across Clarion nodes.
//!
//! In cluster mode every publish, on any node and by any route, goes to Redis first: a Lua
//! script gives it the topic's next `seq` (`INCR`), appends it to the topic's capped Stream (the
//! history every node resumes from) and `PUBLISH`es it on the topic's channel. Each node
//! subscribes to the channels of the topics its clients subscribe to and delivers what comes
//! back, the origin included, so every node sees a topic in Redis's order, and each message is
//! framed once per node.
//!
//! Redis is one server, the master Redis Sentinel names, or a Redis Cluster ([`servers`]): a
//! topic's keys and channel share one hash slot, so that each topic lives on one master and its
//! messages travel on sharded channels (`SPUBLISH`, `SSUBSCRIBE`) of that master only.
//!
//! Threads: the reactors never wait on Redis. A publish is queued to the *publisher* thread
//! ([`publisher`]), which pipelines it to Redis; the first subscribe of a topic on a node is
//! answered once the *feed* thread ([`feed`]) has subscribed to the channel and synced the
//! topic from its Stream, and the feed thread delivers every message into the hub, which posts
//! it to the reactors' inboxes like a local publish. With Sentinel a third thread listens for
//! failovers ([`servers::watch_sentinels`]).
//!
//! While the link is down a local publish is also delivered to this node's subscribers at once,
//! with a provisional `seq` ([`Hub::publish_provisional`]); the hub confirms it when Redis numbers
//! it the same, or resets the topic to Redis's numbering. See `docs/architecture.md` for what
//! holds while Redis is down.

mod feed;
mod keys;
mod link;
mod presence;
mod publisher;
mod servers;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use clarion_engine::Mailboxes;
use clarion_pubsub::{Epoch, Hub, HubConfig, Interest, Payload, Post};
pub use link::ClusterStats;
use link::Link;
use presence::Presence;
use publisher::{Outgoing, Publisher};
use servers::Servers;
pub use servers::{Auth, Upstream};

/// Longest wait to connect to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a Redis reply; past it the connection counts as lost.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// A node's cluster settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Where Redis is.
    pub upstream: Upstream,
    /// Credentials for the Redis servers found through Sentinel or Redis Cluster.
    pub auth: Auth,
    /// Bytes of publishes that may wait for Redis (while it is slow or down), as they take
    /// memory (an empty payload is not free); past it publishes are refused and counted as
    /// dropped.
    pub buffer_bytes: usize,
    /// How often the node writes its subscriber counts; they expire after three.
    pub heartbeat: Duration,
    /// Replicas that must have a publish (Redis `WAIT`) before the node lets go of it; until
    /// then it stays in the buffer and is sent again after a failover. 0: the master's word.
    pub min_replicas_ack: u32,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            upstream: Upstream::default(),
            auth: Auth::default(),
            buffer_bytes: 16 << 20,
            heartbeat: Duration::from_secs(1),
            min_replicas_ack: 0,
        }
    }
}

/// Checks that the settings name Redis in a form the client accepts (it does not connect).
pub fn check(config: &ClusterConfig) -> Result<(), String> {
    Servers::new(&config.upstream, &config.auth).map(drop)
}

/// Why a publish was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferFull;

impl std::fmt::Display for BufferFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the cluster link is behind and its publish buffer is full")
    }
}

impl std::error::Error for BufferFull {}

/// A running bridge; dropping it stops its threads (call [`Cluster::finish`] first to send
/// what waits for Redis).
pub struct Cluster {
    link: Arc<Link>,
    servers: Arc<Servers>,
    hub: Arc<Hub>,
    mailboxes: Arc<Mailboxes<Post>>,
    outgoing: Sender<Outgoing>,
    presence: Arc<Presence>,
    buffer_bytes: u64,
    publisher: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Cluster {
    /// A fed hub for a cluster node, and the receiver of its interest for [`Cluster::start`].
    pub fn hub(config: HubConfig) -> (Hub, Receiver<Interest>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Hub::fed(config, tx), rx)
    }

    /// Starts the bridge threads for `hub` (made by [`Cluster::hub`]), delivering to the
    /// reactors through `mailboxes`. They connect (and reconnect) in the background.
    pub fn start(
        config: &ClusterConfig,
        hub: Arc<Hub>,
        interest: Receiver<Interest>,
        mailboxes: Arc<Mailboxes<Post>>,
    ) -> Result<Cluster, String> {
        let servers = Arc::new(Servers::new(&config.upstream, &config.auth)?);
        let link = Arc::new(Link::default());
        let presence = Arc::new(Presence::default());
        // Unique among the nodes sharing the Redis: random, like an epoch.
        let node: Arc<str> = Arc::from(Epoch::random().to_string());
        let hub_config = hub.config().clone();
        let (outgoing, incoming) = crossbeam_channel::unbounded();
        let publisher = Publisher {
            servers: servers.clone(),
            link: link.clone(),
            node: node.clone(),
            log_length: hub_config.history_size,
            log_ttl: hub_config.history_max_age,
            replicas: config.min_replicas_ack,
        };
        let feed = feed::Feed {
            servers: servers.clone(),
            hub: hub.clone(),
            interest,
            mailboxes: mailboxes.clone(),
            link: link.clone(),
            presence: presence.clone(),
            node,
            history: hub_config.history_size,
            heartbeat: config.heartbeat,
        };
        let spawn = |name: &str| std::thread::Builder::new().name(name.to_owned());
        let publisher = spawn("clarion-publish")
            .spawn(move || publisher.run(incoming))
            .map_err(|e| e.to_string())?;
        let watching = (servers.clone(), link.clone());
        let mut started = spawn("clarion-feed").spawn(move || feed.run()).map(drop);
        if started.is_ok() && servers.sentinels() {
            started = spawn("clarion-sentinel")
                .spawn(move || {
                    let (servers, link) = watching;
                    servers::watch_sentinels(&servers, || link.stopping());
                })
                .map(drop);
        }
        if let Err(e) = started {
            link.stop.store(true, Relaxed);
            return Err(e.to_string());
        }
        Ok(Cluster {
            link,
            servers,
            hub,
            mailboxes,
            outgoing,
            presence,
            buffer_bytes: config.buffer_bytes as u64,
            publisher: std::sync::Mutex::new(Some(publisher)),
        })
    }

    /// Shutdown: sends the publishes still waiting for Redis until `deadline` (reconnecting if
    /// it must), then stops the bridge. What could not be sent is counted in
    /// `clarion_cluster_dropped_total` and logged as an error; the count is returned.
    pub fn finish(&self, deadline: Instant) -> u64 {
        let _ = self.link.flush_until.set(deadline);
        self.link.stop.store(true, Relaxed);
        let publisher = self
            .publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(publisher) = publisher {
            let _ = publisher.join();
        }
        let lost = self.link.lost_at_exit.load(Relaxed);
        if lost == 0 {
            tracing::info!("cluster: every acknowledged publish was sent to Redis");
        }
        lost
    }

    /// Queues a publish for Redis, or refuses it (counted as dropped) when `buffer_bytes` are
    /// already waiting. Never blocks. While the link is down the publish is also delivered at
    /// once to this node's subscribers, numbered provisionally ([`Hub::publish_provisional`]).
    pub fn publish(&self, topic: &str, payload: Payload) -> Result<(), BufferFull> {
        let size = Outgoing::memory(topic, &payload) as u64;
        let before = self.link.buffered_bytes.fetch_add(size, Relaxed);
        if before + size > self.buffer_bytes && before > 0 {
            self.link.buffered_bytes.fetch_sub(size, Relaxed);
            self.link.dropped.fetch_add(1, Relaxed);
            return Err(BufferFull);
        }
        self.link.buffered.fetch_add(1, Relaxed);
        let time = wire::unix_micros();
        let queue = |payload: Payload, provisional: u64| {
            let outgoing = Outgoing {
                topic: Arc::from(topic),
                payload,
                time,
                provisional,
            };
            // The publisher thread lives as long as `self`.
            let _ = self.outgoing.send(outgoing);
        };
        if self.link.up() {
            queue(payload, 0);
            return Ok(());
        }
        // Numbered and queued under the topic's lock, so that Redis gets this node's
        // provisional messages in their provisional order.
        let now = Instant::now();
        self.hub
            .publish_provisional(topic, payload.clone(), now, |message, reactors| {
                let Some(message) = message else {
                    return queue(payload, 0);
                };
                self.link.provisional.fetch_add(1, Relaxed);
                let weight = message.memory();
                for reactor in reactors.iter() {
                    let post = Post::Message(message.clone());
                    self.mailboxes.post_weighed(reactor, post, weight);
                }
                queue(payload, message.seq());
            });
        Ok(())
    }

    /// Subscribers of `topic` on the other nodes, as of the last heartbeat.
    pub fn elsewhere(&self, topic: &str) -> u64 {
        self.presence.elsewhere(topic)
    }

    /// The link's state and counters.
    pub fn stats(&self) -> ClusterStats {
        ClusterStats {
            redirects: self.servers.redirects(),
            ..self.link.stats()
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.link.stop.store(true, Relaxed);
    }
}
