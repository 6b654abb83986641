//! Metrics: the renderings of `/metrics` (Prometheus text) and `/stats` (JSON) from plain
//! numbers and histograms the caller gathers.
//!
//! One table lists every metric once (name, type, help, where its value comes from); both
//! renderings walk it, so they cannot disagree. Names start with `clarion_`; counters end with
//! `_total`; per-reactor series carry a `reactor` label.

use std::fmt;

pub use clarion_engine::{BUCKETS, Histogram, LatencyHistogram};
use serde_json::{Map, Value, json};

use crate::cluster::ClusterStats;
use clarion_pubsub::HubStats;

/// `Content-Type` of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// One reactor's numbers, gathered by the caller from wherever it keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReactorMetrics {
    /// Open connections (gauge).
    pub connections: u64,
    /// TCP connections accepted.
    pub accepted: u64,
    /// WebSocket handshakes completed.
    pub handshakes: u64,
    /// Plain HTTP requests answered.
    pub http_requests: u64,
    /// WebSocket messages received.
    pub messages_in: u64,
    /// WebSocket messages sent (deliveries, acks, errors).
    pub messages_out: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Bytes written to sockets.
    pub bytes_out: u64,
    /// Messages handed to subscribers by fanout.
    pub deliveries: u64,
    /// Deliveries skipped because a subscriber's queue was full (`drop` policy).
    pub drops: u64,
    /// Subscribers closed for falling behind (`close` policy).
    pub slow_consumer_closes: u64,
    /// Connections closed because their token expired.
    pub token_expired_closes: u64,
    /// Tokens swapped in by `refresh`.
    pub token_refreshes: u64,
    /// Application heartbeats sent on `/ws`.
    pub heartbeats: u64,
    /// Local subscriptions (gauge).
    pub subscriptions: u64,
    /// Requests whose client address a trusted proxy's forwarding header named.
    pub forwarded_requests: u64,
    /// Requests refused for a malformed forwarding header from a trusted proxy.
    pub forwarded_refused: u64,
    /// Connections closed for their PROXY protocol header.
    pub proxy_protocol_refused: u64,
    /// Open connections that negotiated permessage-deflate (gauge).
    pub deflate_connections: u64,
    /// Of those, connections with windows of their own (gauge).
    pub deflate_windows: u64,
    /// Connections given no context takeover because the window cap was reached.
    pub deflate_capped: u64,
    /// Compressed messages received.
    pub deflate_messages_in: u64,
    /// Compressed payload bytes received.
    pub deflate_bytes_in: u64,
    /// Messages sent compressed (replies, echoes and fanout deliveries).
    pub deflate_messages_out: u64,
    /// Compressed payload bytes sent.
    pub deflate_bytes_out: u64,
    /// Connections still sending their request (gauge).
    pub handshaking: u64,
    /// Connections over their write cap, not read until they drain (gauge).
    pub paused: u64,
    /// Bytes held for partial heads, frames and messages (gauge).
    pub partial_bytes: u64,
    /// Bytes waiting in the reactor's inbox (gauge).
    pub inbox_bytes: u64,
    /// Connections closed at accept past `max_connections` (or the reactor's cap).
    pub refused_connections: u64,
    /// Connections closed at accept past `max_handshakes_per_reactor`.
    pub refused_handshakes: u64,
    /// Connections closed for not completing their request in time.
    pub handshake_timeouts: u64,
    /// Connections closed with 1008 "rate limit".
    pub rate_limited: u64,
    /// Connections dropped after `write_timeout` over their write cap.
    pub write_timeouts: u64,
    /// Connections closed with 1013 past `max_partial_bytes_per_reactor`.
    pub partial_budget_closes: u64,
    /// Publishes refused (too large, reactors behind, too many new topics).
    pub publishes_refused: u64,
    /// Resumes replayed in more than one slice.
    pub sliced_replays: u64,
    /// Heartbeats skipped for a connection that was behind.
    pub heartbeats_skipped: u64,
    /// Transient errors of the backend's wait, retried.
    pub wait_retries: u64,
    /// 1 once the reactor stopped on a backend error (gauge).
    pub failed: u64,
    /// TLS connections in the handshake (gauge).
    pub tls_handshaking: u64,
    /// TLS handshakes completed, full and resumed.
    pub tls_handshakes: u64,
    /// Of those, resumed.
    pub tls_resumed: u64,
    /// TLS connections that failed (a refused handshake, a bad record).
    pub tls_failures: u64,
    /// Connections closed at accept for the handshake cap.
    pub tls_refused: u64,
    /// Writes that carried bytes to sockets (`writev` calls, or completed io_uring sends).
    pub socket_writes: u64,
}

/// The histograms of one scrape, all reactors merged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latencies {
    /// Publish to a reactor's fanout of the message.
    pub latency: Histogram,
    /// A fanout frame's wait in a connection's queue until its write (`Stats::write_wait`).
    pub write_wait: Histogram,
}

/// Everything one scrape shows.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    /// Per reactor, in reactor order.
    pub reactors: &'a [ReactorMetrics],
    /// The hub's numbers.
    pub hub: HubStats,
    /// The latency histograms, all reactors merged.
    pub latencies: Latencies,
    /// The Redis link, in cluster mode.
    pub cluster: Option<ClusterStats>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric: `key` names it in `/stats`, and as `clarion_<key>[_total]` in `/metrics`.
struct Def<T> {
    key: &'static str,
    kind: Kind,
    help: &'static str,
    value: fn(&T) -> u64,
}

const REACTOR_METRICS: &[Def<ReactorMetrics>] = &[
    Def {
        key: "connections",
        kind: Kind::Gauge,
        help: "Open connections.",
        value: |r| r.connections,
    },
    Def {
        key: "accepted",
        kind: Kind::Counter,
        help: "TCP connections accepted.",
        value: |r| r.accepted,
    },
    Def {
        key: "handshakes",
        kind: Kind::Counter,
        help: "WebSocket handshakes completed.",
        value: |r| r.handshakes,
    },
    Def {
        key: "http_requests",
        kind: Kind::Counter,
        help: "Plain HTTP requests answered.",
        value: |r| r.http_requests,
    },
    Def {
        key: "messages_in",
        kind: Kind::Counter,
        help: "WebSocket messages received.",
        value: |r| r.messages_in,
    },
    Def {
        key: "messages_out",
        kind: Kind::Counter,
        help: "WebSocket messages sent.",
        value: |r| r.messages_out,
    },
    Def {
        key: "bytes_in",
        kind: Kind::Counter,
        help: "Payload bytes received.",
        value: |r| r.bytes_in,
    },
    Def {
        key: "bytes_out",
        kind: Kind::Counter,
        help: "Bytes written to sockets.",
        value: |r| r.bytes_out,
    },
    Def {
        key: "deliveries",
        kind: Kind::Counter,
        help: "Messages handed to subscribers by fanout.",
        value: |r| r.deliveries,
    },
    Def {
        key: "drops",
        kind: Kind::Counter,
        help: "Deliveries skipped because a subscriber's queue was full.",
        value: |r| r.drops,
    },
    Def {
        key: "slow_consumer_closes",
        kind: Kind::Counter,
        help: "Subscribers closed for falling behind.",
        value: |r| r.slow_consumer_closes,
    },
    Def {
        key: "token_expired_closes",
        kind: Kind::Counter,
        help: "Connections closed with 4001 because their token expired.",
        value: |r| r.token_expired_closes,
    },
    Def {
        key: "token_refreshes",
        kind: Kind::Counter,
        help: "Tokens swapped in by the refresh command.",
        value: |r| r.token_refreshes,
    },
    Def {
        key: "heartbeats",
        kind: Kind::Counter,
        help: "Application heartbeats sent to envelope clients that asked for them.",
        value: |r| r.heartbeats,
    },
    Def {
        key: "subscriptions",
        kind: Kind::Gauge,
        help: "Topic subscriptions.",
        value: |r| r.subscriptions,
    },
    Def {
        key: "forwarded_requests",
        kind: Kind::Counter,
        help: "Requests whose client address a trusted proxy's forwarding header named.",
        value: |r| r.forwarded_requests,
    },
    Def {
        key: "forwarded_refused",
        kind: Kind::Counter,
        help: "Requests refused (400) for a trusted proxy's forwarding header that could not be read.",
        value: |r| r.forwarded_refused,
    },
    Def {
        key: "proxy_protocol_refused",
        kind: Kind::Counter,
        help: "Connections closed for their PROXY protocol header: missing or malformed from a trusted proxy, or sent by another peer.",
        value: |r| r.proxy_protocol_refused,
    },
    Def {
        key: "deflate_connections",
        kind: Kind::Gauge,
        help: "Open connections that negotiated permessage-deflate.",
        value: |r| r.deflate_connections,
    },
    Def {
        key: "deflate_windows",
        kind: Kind::Gauge,
        help: "Compressing connections with windows of their own (context takeover).",
        value: |r| r.deflate_windows,
    },
    Def {
        key: "deflate_capped",
        kind: Kind::Counter,
        help: "Connections given no context takeover because compression_max_windows was reached.",
        value: |r| r.deflate_capped,
    },
    Def {
        key: "deflate_messages_in",
        kind: Kind::Counter,
        help: "Compressed messages received.",
        value: |r| r.deflate_messages_in,
    },
    Def {
        key: "deflate_bytes_in",
        kind: Kind::Counter,
        help: "Compressed payload bytes received.",
        value: |r| r.deflate_bytes_in,
    },
    Def {
        key: "deflate_messages_out",
        kind: Kind::Counter,
        help: "Messages sent compressed.",
        value: |r| r.deflate_messages_out,
    },
    Def {
        key: "deflate_bytes_out",
        kind: Kind::Counter,
        help: "Compressed payload bytes sent.",
        value: |r| r.deflate_bytes_out,
    },
    Def {
        key: "handshaking",
        kind: Kind::Gauge,
        help: "Connections still sending their request.",
        value: |r| r.handshaking,
    },
    Def {
        key: "paused",
        kind: Kind::Gauge,
        help: "Connections over their write cap (max_queued_bytes), not read until they drain.",
        value: |r| r.paused,
    },
    Def {
        key: "partial_bytes",
        kind: Kind::Gauge,
        help: "Bytes held for partial request heads, frames and messages.",
        value: |r| r.partial_bytes,
    },
    Def {
        key: "inbox_bytes",
        kind: Kind::Gauge,
        help: "Bytes of messages waiting in the reactor's inbox.",
        value: |r| r.inbox_bytes,
    },
    Def {
        key: "refused_connections",
        kind: Kind::Counter,
        help: "Connections closed at accept past max_connections or max_connections_per_reactor.",
        value: |r| r.refused_connections,
    },
    Def {
        key: "refused_handshakes",
        kind: Kind::Counter,
        help: "Connections closed at accept past max_handshakes_per_reactor.",
        value: |r| r.refused_handshakes,
    },
    Def {
        key: "handshake_timeouts",
        kind: Kind::Counter,
        help: "Connections closed for not completing their request within handshake_timeout.",
        value: |r| r.handshake_timeouts,
    },
    Def {
        key: "rate_limited",
        kind: Kind::Counter,
        help: "Connections closed with 1008 for sending more messages or bytes a second than allowed.",
        value: |r| r.rate_limited,
    },
    Def {
        key: "write_timeouts",
        kind: Kind::Counter,
        help: "Connections dropped for staying over their write cap past write_timeout.",
        value: |r| r.write_timeouts,
    },
    Def {
        key: "partial_budget_closes",
        kind: Kind::Counter,
        help: "Connections closed with 1013 past max_partial_bytes_per_reactor.",
        value: |r| r.partial_budget_closes,
    },
    Def {
        key: "publishes_refused",
        kind: Kind::Counter,
        help: "Client publishes refused: too large for subscribers' queues, reactors behind, or too many new topics.",
        value: |r| r.publishes_refused,
    },
    Def {
        key: "sliced_replays",
        kind: Kind::Counter,
        help: "Resumes whose replay went out in slices as the connection's queue drained.",
        value: |r| r.sliced_replays,
    },
    Def {
        key: "heartbeats_skipped",
        kind: Kind::Counter,
        help: "Application heartbeats skipped for a connection with bytes already waiting.",
        value: |r| r.heartbeats_skipped,
    },
    Def {
        key: "wait_retries",
        kind: Kind::Counter,
        help: "Transient errors of the event loop's wait, retried.",
        value: |r| r.wait_retries,
    },
    Def {
        key: "reactor_failed",
        kind: Kind::Gauge,
        help: "1 once the reactor stopped on an event-loop error it cannot recover from (its connections are gone).",
        value: |r| r.failed,
    },
    Def {
        key: "tls_handshaking",
        kind: Kind::Gauge,
        help: "TLS connections in the handshake.",
        value: |r| r.tls_handshaking,
    },
    Def {
        key: "tls_handshakes",
        kind: Kind::Counter,
        help: "TLS handshakes completed, full and resumed.",
        value: |r| r.tls_handshakes,
    },
    Def {
        key: "tls_resumed",
        kind: Kind::Counter,
        help: "TLS handshakes that resumed a session (ticket or id).",
        value: |r| r.tls_resumed,
    },
    Def {
        key: "tls_failures",
        kind: Kind::Counter,
        help: "TLS connections that failed: a refused handshake, a bad record.",
        value: |r| r.tls_failures,
    },
    Def {
        key: "tls_refused",
        kind: Kind::Counter,
        help: "Connections closed at accept because the reactor had tls max_handshakes in the handshake.",
        value: |r| r.tls_refused,
    },
    Def {
        key: "socket_writes",
        kind: Kind::Counter,
        help: "Writes that carried bytes to sockets (writev calls, or completed io_uring sends).",
        value: |r| r.socket_writes,
    },
];

const HUB_METRICS: &[Def<HubStats>] = &[
    Def {
        key: "topics",
        kind: Kind::Gauge,
        help: "Topics alive.",
        value: |h| h.topics,
    },
    Def {
        key: "published",
        kind: Kind::Counter,
        help: "Messages published.",
        value: |h| h.published,
    },
    Def {
        key: "history_messages",
        kind: Kind::Gauge,
        help: "Messages retained in history.",
        value: |h| h.history_messages,
    },
    Def {
        key: "history_bytes",
        kind: Kind::Gauge,
        help: "Bytes of memory retained in history (messages as they take memory).",
        value: |h| h.history_bytes,
    },
    Def {
        key: "history_evicted",
        kind: Kind::Counter,
        help: "Messages evicted from history.",
        value: |h| h.history_evicted,
    },
    Def {
        key: "topics_with_history",
        kind: Kind::Gauge,
        help: "Topics with history, as of the last sweep (what a topic's fair share divides by).",
        value: |h| h.topics_with_history,
    },
    Def {
        key: "topics_refused",
        kind: Kind::Counter,
        help: "New topics refused to clients past client_topic_rate.",
        value: |h| h.topics_refused,
    },
];

const CLUSTER_METRICS: &[Def<ClusterStats>] = &[
    Def {
        key: "cluster_up",
        kind: Kind::Gauge,
        help: "1 while both connections to Redis are up.",
        value: |c| u64::from(c.up),
    },
    Def {
        key: "cluster_buffered",
        kind: Kind::Gauge,
        help: "Publishes waiting for Redis.",
        value: |c| c.buffered,
    },
    Def {
        key: "cluster_buffered_bytes",
        kind: Kind::Gauge,
        help: "Bytes (as they take memory) of the publishes waiting for Redis.",
        value: |c| c.buffered_bytes,
    },
    Def {
        key: "cluster_dropped",
        kind: Kind::Counter,
        help: "Publishes dropped: buffer full, refused by Redis, or unsent at shutdown.",
        value: |c| c.dropped,
    },
    Def {
        key: "cluster_reconnects",
        kind: Kind::Counter,
        help: "Connections to Redis re-established after a loss.",
        value: |c| c.reconnects,
    },
    Def {
        key: "cluster_published",
        kind: Kind::Counter,
        help: "Publishes Redis took from this node.",
        value: |c| c.published,
    },
    Def {
        key: "cluster_received",
        kind: Kind::Counter,
        help: "Messages received from Redis.",
        value: |c| c.received,
    },
    Def {
        key: "cluster_provisional",
        kind: Kind::Counter,
        help: "Local publishes delivered here with a provisional seq while Redis was down.",
        value: |c| c.provisional,
    },
    Def {
        key: "cluster_resets",
        kind: Kind::Counter,
        help: "Topics renumbered by Redis under their local subscribers (provisional seqs taken by other nodes, Redis lost its data, or a failover lost messages).",
        value: |c| c.resets,
    },
    Def {
        key: "cluster_replica_timeouts",
        kind: Kind::Counter,
        help: "Batches of publishes whose WAIT found fewer replicas than min_replicas_ack (kept and sent again).",
        value: |c| c.replica_timeouts,
    },
    Def {
        key: "cluster_redirects",
        kind: Kind::Counter,
        help: "Redis Cluster redirections (MOVED, ASK) followed.",
        value: |c| c.redirects,
    },
];

const LATENCY: &str = "clarion_publish_to_write_seconds";
const WRITE_WAIT: &str = "clarion_write_wait_seconds";

impl<T> Def<T> {
    /// `clarion_<key>`, with `_total` for a counter.
    fn name(&self) -> impl fmt::Display + '_ {
        struct Name<'d>(&'d str, Kind);
        impl fmt::Display for Name<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let suffix = if self.1 == Kind::Counter {
                    "_total"
                } else {
                    ""
                };
                write!(f, "clarion_{}{suffix}", self.0)
            }
        }
        Name(self.key, self.kind)
    }

    fn write_header(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        writeln!(f, "# HELP {} {}", self.name(), self.help)?;
        writeln!(f, "# TYPE {} {kind}", self.name())
    }
}

/// A microsecond count as decimal seconds, exactly.
struct Seconds(u64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// The Prometheus text of a snapshot: `Prometheus(&snapshot).to_string()`.
pub struct Prometheus<'a>(pub &'a Snapshot<'a>);

impl fmt::Display for Prometheus<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.0;
        for def in REACTOR_METRICS {
            def.write_header(f)?;
            for (index, reactor) in snapshot.reactors.iter().enumerate() {
                let value = (def.value)(reactor);
                writeln!(f, "{}{{reactor=\"{index}\"}} {value}", def.name())?;
            }
        }
        for def in HUB_METRICS {
            def.write_header(f)?;
            writeln!(f, "{} {}", def.name(), (def.value)(&snapshot.hub))?;
        }
        for def in CLUSTER_METRICS
            .iter()
            .filter(|_| snapshot.cluster.is_some())
        {
            def.write_header(f)?;
            let value = snapshot.cluster.as_ref().map_or(0, def.value);
            writeln!(f, "{} {value}", def.name())?;
        }
        write_histogram(
            f,
            LATENCY,
            "Time from publish to a reactor's fanout of the message (its frames queued).",
            &snapshot.latencies.latency,
        )?;
        write_histogram(
            f,
            WRITE_WAIT,
            "Time a fanout frame waited in a connection's queue until its write was made (epoll) or its send prepared (io_uring).",
            &snapshot.latencies.write_wait,
        )
    }
}

/// One histogram in the exposition format: cumulative buckets in seconds, sum, count.
fn write_histogram(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    help: &str,
    histogram: &Histogram,
) -> fmt::Result {
    writeln!(f, "# HELP {name} {help}")?;
    writeln!(f, "# TYPE {name} histogram")?;
    let mut cumulative = 0u64;
    for (bucket, &count) in histogram.counts().iter().enumerate() {
        cumulative = cumulative.wrapping_add(count);
        if bucket < BUCKETS {
            let le = Seconds(1 << bucket);
            writeln!(f, "{name}_bucket{{le=\"{le}\"}} {cumulative}")?;
        } else {
            writeln!(f, "{name}_bucket{{le=\"+Inf\"}} {cumulative}")?;
        }
    }
    writeln!(f, "{name}_sum {}", Seconds(histogram.sum_micros()))?;
    writeln!(f, "{name}_count {}", histogram.count())
}

/// Count, sum and quantiles (µs, bucket bounds) of a histogram, for `/stats` and the
/// dashboard's snapshots.
pub(crate) fn quantiles_json(histogram: &Histogram) -> Value {
    json!({
        "count": histogram.count(),
        "sum": histogram.sum_micros(),
        "p50": histogram.quantile_micros(0.5),
        "p90": histogram.quantile_micros(0.9),
        "p99": histogram.quantile_micros(0.99),
        "p999": histogram.quantile_micros(0.999),
    })
}

/// `{key: value}` for each metric of a table.
fn object<T>(defs: &[Def<T>], source: &T) -> Map<String, Value> {
    defs.iter()
        .map(|def| (def.key.to_owned(), Value::from((def.value)(source))))
        .collect()
}

/// The `/stats` JSON of a snapshot: per reactor, totals, hub, and latency quantiles in µs.
pub fn stats_json(snapshot: &Snapshot) -> String {
    let totals: Map<String, Value> = REACTOR_METRICS
        .iter()
        .map(|def| {
            let sum = snapshot
                .reactors
                .iter()
                .fold(0u64, |sum, r| sum.wrapping_add((def.value)(r)));
            (def.key.to_owned(), Value::from(sum))
        })
        .collect();
    json!({
        "reactors": snapshot.reactors.iter().map(|r| object(REACTOR_METRICS, r)).collect::<Vec<_>>(),
        "totals": totals,
        "hub": object(HUB_METRICS, &snapshot.hub),
        // `{"up":…,"dropped":…}`: the table's keys without their `cluster_` prefix.
        "cluster": snapshot.cluster.as_ref().map(|c| {
            object(CLUSTER_METRICS, c)
                .into_iter()
                .map(|(key, value)| (key.trim_start_matches("cluster_").to_owned(), value))
                .collect::<Map<String, Value>>()
        }),
        "latency_us": quantiles_json(&snapshot.latencies.latency),
        "write_wait_us": quantiles_json(&snapshot.latencies.write_wait),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    fn micros(us: u64) -> Duration {
        Duration::from_micros(us)
    }

    fn sample_reactors() -> Vec<ReactorMetrics> {
        vec![
            ReactorMetrics {
                connections: 3,
                deliveries: 10,
                ..ReactorMetrics::default()
            },
            ReactorMetrics {
                connections: 4,
                deliveries: 5,
                drops: 1,
                ..ReactorMetrics::default()
            },
        ]
    }

    fn sample(reactors: &[ReactorMetrics]) -> Snapshot<'_> {
        let histogram = LatencyHistogram::new();
        histogram.record(micros(3));
        histogram.record(micros(1_500_000));
        let write_wait = LatencyHistogram::new();
        write_wait.record(micros(700));
        Snapshot {
            reactors,
            hub: HubStats {
                topics: 2,
                published: 7,
                ..HubStats::default()
            },
            latencies: Latencies {
                latency: histogram.snapshot(),
                write_wait: write_wait.snapshot(),
            },
            cluster: None,
        }
    }

    /// Parses exposition text back: every sample belongs to a declared family and has a
    /// numeric value. Returns the samples by `name{labels}`.
    fn parse_back(text: &str) -> HashMap<String, f64> {
        let mut families: HashMap<String, String> = HashMap::new();
        let mut samples = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(families.insert(name.to_owned(), kind.to_owned()).is_none());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(name.starts_with("clarion_"), "{line}");
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| families.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(name);
            let kind = families
                .get(family)
                .unwrap_or_else(|| panic!("undeclared: {line}"));
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            let value: f64 = value.parse().unwrap();
            assert!(samples.insert(series.to_owned(), value).is_none(), "{line}");
        }
        samples
    }

    #[test]
    fn prometheus_text_parses_back() {
        let reactors = sample_reactors();
        let snapshot = sample(&reactors);
        let text = Prometheus(&snapshot).to_string();
        let samples = parse_back(&text);
        assert_eq!(samples["clarion_connections{reactor=\"0\"}"], 3.0);
        assert_eq!(samples["clarion_connections{reactor=\"1\"}"], 4.0);
        assert_eq!(samples["clarion_deliveries_total{reactor=\"1\"}"], 5.0);
        assert_eq!(samples["clarion_drops_total{reactor=\"1\"}"], 1.0);
        assert_eq!(samples["clarion_published_total"], 7.0);
        assert_eq!(samples["clarion_topics"], 2.0);
        let bucket = |le: &str| samples[&format!("{LATENCY}_bucket{{le=\"{le}\"}}")];
        assert_eq!(bucket("0.000002"), 0.0);
        assert_eq!(bucket("0.000004"), 1.0);
        assert_eq!(bucket("1.048576"), 1.0);
        assert_eq!(bucket("2.097152"), 2.0);
        assert_eq!(bucket("+Inf"), 2.0);
        assert_eq!(samples[&format!("{LATENCY}_count")], 2.0);
        assert_eq!(samples[&format!("{LATENCY}_sum")], 1.500003);
        let buckets: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{LATENCY}_bucket")))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
            .collect();
        assert_eq!(buckets.len(), BUCKETS + 1);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "cumulative");
        let per_reactor = REACTOR_METRICS.len() * 2;
        assert_eq!(
            samples[&format!("{WRITE_WAIT}_bucket{{le=\"0.000512\"}}")],
            0.0
        );
        assert_eq!(
            samples[&format!("{WRITE_WAIT}_bucket{{le=\"0.001024\"}}")],
            1.0
        );
        assert_eq!(samples[&format!("{WRITE_WAIT}_sum")], 0.0007);
        let total = per_reactor + HUB_METRICS.len() + 2 * (BUCKETS + 3);
        assert_eq!(samples.len(), total);
    }

    #[test]
    fn no_reactors_still_renders_valid_text_and_cluster_numbers_show_when_clustered() {
        let mut snapshot = Snapshot {
            reactors: &[],
            hub: HubStats::default(),
            latencies: Latencies::default(),
            cluster: None,
        };
        let samples = parse_back(&Prometheus(&snapshot).to_string());
        assert_eq!(samples[&format!("{LATENCY}_count")], 0.0);
        assert!(!samples.contains_key("clarion_cluster_up"));
        snapshot.cluster = Some(ClusterStats {
            up: true,
            dropped: 3,
            ..ClusterStats::default()
        });
        let samples = parse_back(&Prometheus(&snapshot).to_string());
        assert_eq!(samples["clarion_cluster_up"], 1.0);
        assert_eq!(samples["clarion_cluster_dropped_total"], 3.0);
        let stats: Value = serde_json::from_str(&stats_json(&snapshot)).unwrap();
        assert_eq!(stats["cluster"]["dropped"], 3);
    }

    #[test]
    fn stats_json_has_the_same_numbers() {
        let reactors = sample_reactors();
        let snapshot = sample(&reactors);
        let stats: Value = serde_json::from_str(&stats_json(&snapshot)).unwrap();
        assert_eq!(stats["reactors"][1]["connections"], 4);
        assert_eq!(stats["totals"]["connections"], 7);
        assert_eq!(stats["totals"]["deliveries"], 15);
        assert_eq!(stats["hub"]["published"], 7);
        assert!(stats["cluster"].is_null());
        assert_eq!(stats["latency_us"]["count"], 2);
        assert_eq!(stats["latency_us"]["p50"], 4);
        assert_eq!(stats["latency_us"]["p99"], 2_097_152);
        assert_eq!(stats["write_wait_us"]["count"], 1);
        assert_eq!(stats["write_wait_us"]["sum"], 700);
        assert_eq!(stats["write_wait_us"]["p99"], 1024);
        let keys = stats["reactors"][0].as_object().unwrap().len();
        assert_eq!(keys, REACTOR_METRICS.len());
    }
}
