//! The live dashboard: its page, one self-contained HTML file embedded in the binary (no
//! CDN, nothing built at run time), and the stats publisher that feeds it.
//!
//! Once a second the publisher thread samples the server's numbers and, while a dashboard is
//! open, publishes one JSON snapshot to the node-local system topic [`STATS_TOPIC`]. The page's
//! WebSocket (`/dashboard/ws` on the admin listener) is a subscriber of that topic like any
//! other: the snapshot is framed once and shared by reference with every open dashboard, by
//! the fanout that serves the application's topics. The topic's name starts with `$`, which no
//! public route accepts, so clients can neither subscribe nor publish to it from the public
//! port; it lives in the server's system hub, which is never bridged to Redis.
//!
//! A snapshot (rates per second over the interval since the previous sample):
//! `connections`, per reactor `reactors[i].connections` and `accepted_per_s`, `accepted_per_s`,
//! `messages_in_per_s`, `messages_out_per_s`, `deliveries_per_s`, `drops` and
//! `slow_consumer_closes` (totals and `_per_s`), `latency_us` (publish-to-write percentiles of
//! the interval), `write_wait_us` (the same for the write wait: a fanout frame queued for a
//! subscriber until the write that carries it), `topics`, `subscriptions`, `top_subscribers` and `top_rate` (`[topic, n]`),
//! `memory` (`rss`; `per_connection`, the growth of RSS since the first sample divided by the
//! open connections; `entry`, a connection's table entry; in bytes), `cluster` (`null` on one
//! node).
//! Finding the top topics walks the topic table once a second, only while a dashboard is open.
//! A snapshot's delivery counts among the deliveries it reports, like any message.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::metrics::{Latencies, ReactorMetrics, quantiles_json};
use super::state::Server;
use clarion_pubsub::{Format, Payload};

/// The system topic the stats publisher feeds.
pub const STATS_TOPIC: &str = "$clarion/stats";

/// The dashboard page (`GET /dashboard` on the admin listener).
pub const PAGE: &str = include_str!("dashboard.html");

/// How often a snapshot is published.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Topics shown in each top list.
const TOP: usize = 5;

/// Starts the stats publisher: a thread that ends once `server` is gone.
pub fn spawn(server: Weak<Server>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("dashboard".to_owned())
        .spawn(move || {
            let mut sampler = Sampler::default();
            let mut next = Instant::now() + INTERVAL;
            loop {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                next += INTERVAL;
                let Some(server) = server.upgrade() else {
                    return;
                };
                let watched = server.system.subscribers(STATS_TOPIC) > 0;
                if let Some(snapshot) = sampler.sample(&server, watched) {
                    let payload = Payload::new(Format::Json, snapshot.to_string().as_bytes());
                    if let Err(e) = server.publish_system(STATS_TOPIC, payload) {
                        tracing::debug!("dashboard snapshot not published: {e}");
                    }
                }
            }
        })
        .map(drop)
}

/// The numbers of one sample, kept for the rates of the next.
struct Sample {
    at: Instant,
    reactors: Vec<ReactorMetrics>,
    latencies: Latencies,
    /// Per topic, its `seq` (only while watched).
    seqs: HashMap<Arc<str>, u64>,
    cluster_received: u64,
}

/// Turns successive samples into snapshots.
#[derive(Default)]
pub struct Sampler {
    previous: Option<Sample>,
    /// The resident memory at the first sample (the server just started, before clients):
    /// the growth since, per connection, is what a connection costs.
    baseline_rss: Option<u64>,
}

impl Sampler {
    /// Samples `server`; the snapshot when `watched` and a previous sample gives the rates.
    pub fn sample(&mut self, server: &Server, watched: bool) -> Option<Value> {
        let at = Instant::now();
        let (reactors, latencies) = server.metrics();
        let counts = if watched {
            server.hub.topic_counts()
        } else {
            Vec::new()
        };
        let cluster = server.cluster.as_ref().map(|c| c.stats());
        let current = Sample {
            at,
            reactors,
            latencies,
            seqs: counts.iter().map(|c| (c.name.clone(), c.seq)).collect(),
            cluster_received: cluster.map_or(0, |c| c.received),
        };
        if self.baseline_rss.is_none() {
            self.baseline_rss = resident_bytes();
        }
        let previous = self.previous.replace(current);
        let (previous, current) = (previous?, self.previous.as_ref()?);
        if !watched {
            return None;
        }
        let seconds = current
            .at
            .duration_since(previous.at)
            .as_secs_f64()
            .max(1e-3);
        let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / seconds;
        let total = |sample: &Sample, field: fn(&ReactorMetrics) -> u64| -> u64 {
            sample.reactors.iter().map(field).sum()
        };
        let per_s = |field: fn(&ReactorMetrics) -> u64| {
            rate(total(current, field), total(&previous, field))
        };
        let reactors: Vec<Value> = current
            .reactors
            .iter()
            .zip(&previous.reactors)
            .map(|(now, then)| {
                json!({
                    "connections": now.connections,
                    "accepted_per_s": rate(now.accepted, then.accepted),
                })
            })
            .collect();
        let latency = current.latencies.latency.since(&previous.latencies.latency);
        let write_wait = (current.latencies.write_wait).since(&previous.latencies.write_wait);
        let mut by_subscribers: Vec<(&Arc<str>, u64)> = counts
            .iter()
            .filter(|c| c.subscribers > 0)
            .map(|c| (&c.name, c.subscribers))
            .collect();
        by_subscribers.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let mut by_rate: Vec<(&Arc<str>, f64)> = counts
            .iter()
            .filter_map(|c| {
                let then = *previous.seqs.get(&c.name)?;
                (c.seq > then).then(|| (&c.name, rate(c.seq, then)))
            })
            .collect();
        by_rate.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let connections = total(current, |r| r.connections);
        let rss = resident_bytes();
        let baseline = self.baseline_rss.unwrap_or(0);
        let per_connection = rss
            .filter(|_| connections > 0)
            .map(|rss| rss.saturating_sub(baseline) / connections);
        Some(json!({
            "time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            "interval_s": seconds,
            "reactors": reactors,
            "connections": connections,
            "accepted_per_s": per_s(|r| r.accepted),
            "messages_in_per_s": per_s(|r| r.messages_in),
            "messages_out_per_s": per_s(|r| r.messages_out),
            "deliveries_per_s": per_s(|r| r.deliveries),
            "http_requests_per_s": per_s(|r| r.http_requests),
            "drops": total(current, |r| r.drops),
            "drops_per_s": per_s(|r| r.drops),
            "slow_consumer_closes": total(current, |r| r.slow_consumer_closes),
            "slow_consumer_closes_per_s": per_s(|r| r.slow_consumer_closes),
            "latency_us": quantiles_json(&latency),
            "write_wait_us": quantiles_json(&write_wait),
            "topics": server.hub.stats().topics,
            "subscriptions": total(current, |r| r.subscriptions),
            "top_subscribers": by_subscribers.iter().take(TOP).map(|(t, n)| json!([&***t, n])).collect::<Vec<_>>(),
            "top_rate": by_rate.iter().take(TOP).map(|(t, n)| json!([&***t, n])).collect::<Vec<_>>(),
            "memory": {
                "rss": rss,
                "per_connection": per_connection,
                "entry": clarion_engine::connection_size::<super::app::Conn>(),
            },
            "cluster": cluster.map(|c| json!({
                "up": c.up,
                "buffered": c.buffered,
                "dropped": c.dropped,
                "reconnects": c.reconnects,
                "received_per_s": rate(current.cluster_received, previous.cluster_received),
            })),
        }))
    }
}

/// The process's resident memory, from `/proc/self/statm` (its second field, in pages).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::AppConfig;
    use crate::server::state::Origin;
    use clarion_engine::{LiveLimits, Mailboxes, Shared, Stats};
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn a_snapshot_gives_rates_since_the_last_sample_and_the_top_topics() {
        let shared = Shared {
            mailboxes: Arc::new(Mailboxes::new(2)),
            stats: (0..2).map(|_| Arc::new(Stats::default())).collect(),
            limits: Arc::new(LiveLimits::default()),
        };
        let server = Server::new(AppConfig::default(), &shared).unwrap();
        // Four messages to "busy", one to "quiet".
        let publish_round = || {
            for topic in ["busy", "busy", "busy", "busy", "quiet"] {
                let payload = Payload::new(Format::Text, b"x");
                server
                    .publish(topic, payload, Origin::Api, usize::MAX)
                    .unwrap();
            }
        };
        let mut sampler = Sampler::default();
        assert!(
            sampler.sample(&server, true).is_none(),
            "no rates from one sample"
        );
        shared.stats[1].accepted.fetch_add(10, Relaxed);
        shared.stats[0].connections.store(3, Relaxed);
        publish_round();
        let first = sampler.sample(&server, true).unwrap();
        assert_eq!(first["connections"], 3);
        assert_eq!(first["reactors"][0]["connections"], 3);
        assert!(first["reactors"][1]["accepted_per_s"].as_f64().unwrap() > 0.0);
        assert_eq!(
            first["top_rate"],
            json!([]),
            "rates need a topic seen before"
        );
        publish_round();
        // Two writes of queued frames, 3 ms and 40 ms after they were queued.
        for waited in [3, 40] {
            (shared.stats[0].write_wait).record(Duration::from_millis(waited));
        }
        let second = sampler.sample(&server, true).unwrap();
        assert_eq!(first["write_wait_us"]["count"], 0);
        let wait = &second["write_wait_us"];
        assert_eq!(wait["count"], 2, "only this interval's: {wait}");
        let (p50, p99) = (wait["p50"].as_u64().unwrap(), wait["p99"].as_u64().unwrap());
        assert!((3_000..40_000).contains(&p50) && p99 >= 40_000, "{wait}");
        let top = second["top_rate"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(
            (top[0][0].as_str(), top[1][0].as_str()),
            (Some("busy"), Some("quiet"))
        );
        assert!(top[0][1].as_f64() > top[1][1].as_f64());
        assert_eq!(second["memory"]["entry"], 104);
        assert!(second["memory"]["rss"].as_u64().unwrap() > 0);
        assert!(second["cluster"].is_null());
        assert!(
            sampler.sample(&server, false).is_none(),
            "nothing while nobody watches"
        );
    }

    #[test]
    fn the_stats_topic_is_refused_by_every_public_route() {
        assert!(clarion_pubsub::validate_topic(STATS_TOPIC, 256).is_err());
    }
}
