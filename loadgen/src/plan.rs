//! The checked plan of a run, built from the flags: every limit and combination is validated here,
//! so the rest of the program works on values that make sense. An `Err` is a usage error (exit 2).

use std::path::PathBuf;
use std::time::Duration;

use clarion_protocol::MessageKind;

use crate::cli::{self, Io, ModeArgs, Protocol, PublishVia};
use crate::sources::{Pairs, parse_source_ips};
use crate::stamp::STAMP_LEN;
use crate::url::{self, Target};

/// Largest message a mode will send.
const MAX_MESSAGE: usize = 16 << 20;

/// What the run does.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Open and hold.
    Idle,
    /// Round trips to an echo server.
    Echo(Echo),
    /// Connect, exchange, disconnect at a rate.
    Churn(Churn),
    /// Subscribers and publishers.
    Fanout(Fanout),
}

impl Mode {
    /// The mode's name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Idle => "idle",
            Mode::Echo(_) => "echo",
            Mode::Churn(_) => "churn",
            Mode::Fanout(_) => "fanout",
        }
    }
}

/// `echo` settings.
#[derive(Clone, Debug)]
pub struct Echo {
    /// Bytes per message.
    pub size: usize,
    /// Messages in flight per connection.
    pub window: u32,
    /// Messages per second over all connections, if open loop.
    pub rate: Option<f64>,
    /// Frame type.
    pub kind: MessageKind,
}

/// `churn` settings.
#[derive(Clone, Debug)]
pub struct Churn {
    /// Connections per second over all loops.
    pub rate: f64,
    /// Bytes of the one message.
    pub size: usize,
}

/// `fanout` settings.
#[derive(Clone, Debug)]
pub struct Fanout {
    /// How subscribers subscribe.
    pub protocol: Protocol,
    /// Topic names.
    pub topics: Vec<String>,
    /// Publisher count; publisher j publishes to topic j mod topics.
    pub publishers: usize,
    /// Messages per second over all publishers.
    pub rate: f64,
    /// Bytes per message.
    pub size: usize,
    /// How publishers publish.
    pub publish_via: PublishVia,
    /// Base of the publish API (`POST {path}/{topic}` with a path of `/publish` by default).
    pub publish_target: Target,
    /// Bearer token for the publish API.
    pub publish_token: Option<String>,
    /// The reconnect storm, if any.
    pub storm: Option<Storm>,
}

/// `fanout --storm` settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Storm {
    /// Share of the open subscribers dropped, in (0, 1].
    pub fraction: f64,
    /// Longest the storm may take.
    pub timeout: Duration,
}

/// After the storm breaks, when the publishers send the message the dropped subscribers miss
/// (and get back by resuming).
pub const STORM_MESSAGE_DELAY: Duration = Duration::from_millis(100);
/// How long the dropped subscribers stay away (a network blip) before they all dial again: long
/// enough for that message to be published while they are away.
pub const STORM_BLIP: Duration = Duration::from_millis(200);

impl Fanout {
    /// The topic of subscriber or publisher `index`.
    pub fn topic_of(&self, index: usize) -> usize {
        index % self.topics.len()
    }
}

/// Which worker process this is, when the run is split over `--procs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerId {
    /// This process.
    pub index: usize,
    /// All worker processes.
    pub count: usize,
}

/// Where results go.
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// `--json`.
    pub json: Option<PathBuf>,
    /// `--hdr`.
    pub hdr: Option<PathBuf>,
    /// `--progress`.
    pub force_progress: bool,
    /// `--server-pid`.
    pub server_pid: Option<u32>,
}

/// The connections one event loop owns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shard {
    /// Global index of its first connection (churn: of its first slot).
    pub first: usize,
    /// How many.
    pub count: usize,
    /// Its fraction of the total, to divide rates by.
    pub fraction: f64,
}

/// A checked run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The mode and its settings.
    pub mode: Mode,
    /// Sources and targets.
    pub pairs: Pairs,
    /// The `sse` transport (`http://` URLs): subscribers read Server-Sent Events.
    pub sse: bool,
    /// Connections open at once (churn: its concurrency).
    pub connections: usize,
    /// Measurement time.
    pub duration: Duration,
    /// Time the connections are held after the ramp-up, before the warm-up.
    pub hold: Duration,
    /// Keep-alive pings after this much silence.
    pub ping_interval: Option<Duration>,
    /// Traffic before the measurement, not counted.
    pub warmup: Duration,
    /// Receive coalescing period (0: off).
    pub coalesce: Duration,
    /// How open connections are read.
    pub io: Io,
    /// Event loops per process.
    pub threads: usize,
    /// Processes.
    pub procs: usize,
    /// Connections per second while ramping (0: unpaced).
    pub ramp_rate: f64,
    /// Most connections being opened at once over all loops (0: no limit).
    pub max_pending: usize,
    /// Longest ramp.
    pub ramp_timeout: Duration,
    /// Retries after connect errors.
    pub retries: u32,
    /// First retry delay.
    pub backoff: Duration,
    /// Connect plus handshake deadline.
    pub connect_timeout: Duration,
    /// One fd table per event loop.
    pub private_fd_table: bool,
    /// Wait for in-flight replies after the duration.
    pub drain: Duration,
    /// Wait for close answers at the end.
    pub close_timeout: Duration,
    /// Results.
    pub output: Output,
    /// Set when this process is one of several.
    pub worker: Option<WorkerId>,
    /// TLS client settings, when a target (or the publish URL) is `wss://` or `https://`.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Plan {
    /// Checks the flags.
    pub fn from_args(args: &ModeArgs) -> Result<Plan, String> {
        let common = args.common();
        let parsed = common
            .urls
            .iter()
            .map(|u| url::parse_subscriber(u))
            .collect::<Result<Vec<_>, _>>()?;
        let sse = parsed.iter().any(|(_, sse)| *sse);
        if sse && !parsed.iter().all(|(_, sse)| *sse) {
            return Err("the URLs are all ws:// or all http:// (the sse transport)".into());
        }
        let sse_modes = matches!(args, ModeArgs::Idle { .. } | ModeArgs::Fanout { .. });
        if sse && !sse_modes {
            return Err("http:// URLs (the sse transport) are for idle and fanout".into());
        }
        if sse && common.ping_interval.is_some() {
            return Err("--ping-interval is for WebSockets: SSE streams have no pings".into());
        }
        let targets = parsed.into_iter().map(|(target, _)| target).collect();
        let sources = match &common.source_ips {
            Some(spec) => parse_source_ips(spec)?,
            None => Vec::new(),
        };
        let pairs = Pairs::new(sources, targets)?;
        let mode = match args {
            ModeArgs::Idle { .. } => Mode::Idle,
            ModeArgs::Echo { echo, .. } => Mode::Echo(check_echo(echo)?),
            ModeArgs::Churn { churn, .. } => Mode::Churn(check_churn(churn)?),
            ModeArgs::Fanout { fanout, .. } => Mode::Fanout(check_fanout(fanout, &pairs, sse)?),
        };
        let connections = match args {
            ModeArgs::Churn { churn, .. } => churn.concurrency,
            _ => common.connections,
        };
        if connections == 0 || connections > 50_000_000 {
            return Err(format!(
                "--connections (or --concurrency) must be 1..=50000000, not {connections}"
            ));
        }
        pairs.check_capacity(connections, common.max_per_pair)?;
        let procs = common.procs;
        if !(1..=64).contains(&procs) {
            return Err(format!("--procs must be 1..=64, not {procs}"));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = common.threads.unwrap_or((cores / procs).max(1));
        if !(1..=256).contains(&threads) {
            return Err(format!("--threads must be 1..=256, not {threads}"));
        }
        if !(common.ramp_rate.is_finite() && common.ramp_rate >= 0.0) {
            return Err(format!(
                "--ramp-rate must be 0 or more, not {}",
                common.ramp_rate
            ));
        }
        if common.duration.is_zero() {
            return Err("--duration must be more than 0".into());
        }
        if !common.warmup.is_zero() && !matches!(mode, Mode::Echo(_) | Mode::Fanout(_)) {
            return Err("--warmup applies to echo and fanout only".into());
        }
        if common.coalesce > Duration::from_millis(100) {
            return Err("--coalesce must be at most 100ms".into());
        }
        if common.retries > 100 {
            return Err(format!(
                "--retries must be at most 100, not {}",
                common.retries
            ));
        }
        let worker = common.worker.as_deref().map(parse_worker).transpose()?;
        if worker.is_some_and(|w| w.count != procs) {
            return Err("--worker COUNT must match --procs".into());
        }
        let publishes_tls = matches!(&mode, Mode::Fanout(f) if f.publish_target.tls);
        let tls = if pairs.targets.iter().any(|t| t.tls) || publishes_tls {
            Some(crate::tls::client_config(&crate::tls::Options {
                insecure: common.insecure,
                ca: common.ca.clone(),
                no_resume: common.no_resume,
            })?)
        } else {
            None
        };
        Ok(Plan {
            mode,
            pairs,
            sse,
            connections,
            duration: common.duration,
            hold: common.hold,
            ping_interval: common.ping_interval.filter(|d| !d.is_zero()),
            warmup: common.warmup,
            coalesce: common.coalesce,
            io: common.io,
            threads,
            procs,
            ramp_rate: common.ramp_rate,
            max_pending: common.max_pending,
            ramp_timeout: common.ramp_timeout,
            retries: common.retries,
            backoff: common.backoff,
            connect_timeout: common.connect_timeout,
            private_fd_table: common.private_fd_table,
            drain: common.drain,
            close_timeout: common.close_timeout,
            output: Output {
                json: common.json.clone(),
                hdr: common.hdr.clone(),
                force_progress: common.progress,
                server_pid: common.server_pid,
            },
            worker,
            tls,
        })
    }

    /// This process's index among the workers (0 when alone).
    pub fn process_index(&self) -> usize {
        self.worker.map_or(0, |w| w.index)
    }

    /// The connections of event loop `thread` of process `process`: contiguous, near-equal parts.
    pub fn shard(&self, process: usize, thread: usize) -> Shard {
        let loops = self.procs * self.threads;
        let index = process * self.threads + thread;
        let first = self.connections * index / loops;
        let end = self.connections * (index + 1) / loops;
        Shard {
            first,
            count: end - first,
            fraction: (end - first) as f64 / self.connections as f64,
        }
    }
}

fn check_size(size: usize) -> Result<usize, String> {
    if !(STAMP_LEN..=MAX_MESSAGE).contains(&size) {
        return Err(format!(
            "--size must be {STAMP_LEN}..={MAX_MESSAGE} (messages carry a {STAMP_LEN}-byte stamp), not {size}"
        ));
    }
    Ok(size)
}

fn check_rate(flag: &str, rate: f64) -> Result<f64, String> {
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("{flag} must be more than 0, not {rate}"));
    }
    Ok(rate)
}

fn check_echo(echo: &cli::EchoArgs) -> Result<Echo, String> {
    if !(1..=4096).contains(&echo.window) {
        return Err(format!("--window must be 1..=4096, not {}", echo.window));
    }
    Ok(Echo {
        size: check_size(echo.size)?,
        window: echo.window,
        rate: echo.rate.map(|r| check_rate("--rate", r)).transpose()?,
        kind: if echo.text {
            MessageKind::Text
        } else {
            MessageKind::Binary
        },
    })
}

fn check_churn(churn: &cli::ChurnArgs) -> Result<Churn, String> {
    Ok(Churn {
        rate: check_rate("--rate", churn.rate)?,
        size: check_size(churn.size)?,
    })
}

fn check_fanout(fanout: &cli::FanoutArgs, pairs: &Pairs, sse: bool) -> Result<Fanout, String> {
    let protocol = match (fanout.protocol, sse) {
        (Protocol::Raw | Protocol::Sse, true) => Protocol::Sse,
        (Protocol::Sse, false) => return Err("--protocol sse needs http:// URLs".into()),
        (Protocol::Envelope, true) => {
            return Err(
                "http:// URLs are SSE subscribers: --protocol envelope is for ws://".into(),
            );
        }
        (protocol, false) => protocol,
    };
    if protocol == Protocol::Sse && fanout.publish_via != PublishVia::Http {
        return Err("SSE subscribers need --publish-via http".into());
    }
    if !(1..=100_000).contains(&fanout.topics) {
        return Err(format!(
            "--topics must be 1..=100000, not {}",
            fanout.topics
        ));
    }
    if fanout.publishers < fanout.topics || fanout.publishers > 1024 {
        return Err(format!(
            "--publishers must be at least --topics ({}, every topic needs one) and at most 1024, not {}",
            fanout.topics, fanout.publishers
        ));
    }
    let prefix_ok = fanout
        .topic_prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !prefix_ok || fanout.topic_prefix.len() > 64 {
        return Err(format!(
            "--topic-prefix {:?} must be at most 64 of A-Z a-z 0-9 - _ .",
            fanout.topic_prefix
        ));
    }
    let publish_target = match &fanout.publish_url {
        Some(u) => url::parse_http(u)?,
        None => {
            let first = &pairs.targets[0];
            let scheme = if first.tls { "https" } else { "http" };
            url::parse_http(&format!("{scheme}://{}/publish", first.host))?
        }
    };
    if let Some(token) = &fanout.publish_token
        && !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err("--publish-token must be printable ASCII without spaces".into());
    }
    let storm = match fanout.storm {
        None => None,
        Some(fraction) if !(fraction > 0.0 && fraction <= 1.0) => {
            return Err(format!("--storm must be a share in (0, 1], not {fraction}"));
        }
        Some(_) if protocol != Protocol::Envelope => {
            return Err(
                "--storm needs --protocol envelope: the loadgen's raw topic sockets and SSE streams do not resume".into(),
            );
        }
        Some(fraction) => Some(Storm {
            fraction,
            timeout: fanout.storm_timeout,
        }),
    };
    Ok(Fanout {
        protocol,
        topics: (0..fanout.topics)
            .map(|i| format!("{}{i}", fanout.topic_prefix))
            .collect(),
        publishers: fanout.publishers,
        rate: check_rate("--rate", fanout.rate)?,
        size: check_size(fanout.size)?,
        publish_via: fanout.publish_via,
        publish_target,
        publish_token: fanout.publish_token.clone(),
        storm,
    })
}

fn parse_worker(text: &str) -> Result<WorkerId, String> {
    let parsed = text
        .split_once('/')
        .and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)));
    match parsed {
        Some((index, count)) if index < count => Ok(WorkerId { index, count }),
        _ => Err(format!("bad --worker {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn plan(args: &[&str]) -> Result<Plan, String> {
        let mut argv = vec!["clarion-loadgen"];
        argv.extend_from_slice(args);
        Plan::from_args(&cli::Cli::try_parse_from(argv).unwrap().mode)
    }

    #[test]
    fn shards_cover_every_connection_once() {
        let p = plan(&[
            "idle",
            "ws://127.0.0.1:1/",
            "-c",
            "10",
            "--threads",
            "3",
            "--procs",
            "2",
        ])
        .unwrap();
        let shards: Vec<Shard> = (0..2)
            .flat_map(|proc| (0..3).map(move |t| (proc, t)))
            .map(|(proc, t)| p.shard(proc, t))
            .collect();
        let mut next = 0;
        for s in &shards {
            assert_eq!(s.first, next);
            next += s.count;
        }
        assert_eq!(next, 10);
        let total: f64 = shards.iter().map(|s| s.fraction).sum();
        assert!((total - 1.0).abs() < 1e-9);
    }

    #[test]
    fn bad_combinations_are_usage_errors() {
        for args in [
            &["echo", "ws://127.0.0.1:1/", "--size", "8"][..],
            &["echo", "ws://127.0.0.1:1/", "--window", "0"],
            &["echo", "ws://127.0.0.1:1/", "--rate", "0"],
            &["idle", "ws://127.0.0.1:1/", "-c", "0"],
            &["idle", "ws://127.0.0.1:1/", "-c", "30000"],
            &["idle", "ws://10.1.1.1:1/"],
            &["idle", "ws://127.0.0.1:1/", "--procs", "0"],
            &["idle", "ws://127.0.0.1:1/", "--duration", "0s"],
            &["fanout", "ws://127.0.0.1:1/t/", "--topics", "2"],
            &["fanout", "ws://127.0.0.1:1/t/", "--topic-prefix", "a/b"],
            &["fanout", "ws://127.0.0.1:1/t/", "--storm", "0.1"],
            &[
                "fanout",
                "ws://127.0.0.1:1/ws",
                "--protocol",
                "envelope",
                "--storm",
                "1.5",
            ],
            &[
                "fanout",
                "ws://127.0.0.1:1/t/",
                "--publish-url",
                "http://8.8.8.8/",
            ],
        ] {
            assert!(plan(args).is_err(), "{args:?}");
        }
        assert!(
            plan(&[
                "idle",
                "ws://127.0.0.1:1/",
                "-c",
                "30000",
                "--source-ips",
                "127.0.0.2-127.0.0.3"
            ])
            .is_ok()
        );
    }

    #[test]
    fn fanout_defaults() {
        let p = plan(&[
            "fanout",
            "ws://127.0.0.1:7/t/",
            "--topics",
            "2",
            "--publishers",
            "3",
        ])
        .unwrap();
        let Mode::Fanout(f) = p.mode else { panic!() };
        assert_eq!(f.topics, ["loadgen-0", "loadgen-1"]);
        assert_eq!(f.publish_target.addr.port(), 7);
        assert_eq!(f.publish_target.path, "/publish");
        assert_eq!(f.topic_of(3), 1);
    }
}
