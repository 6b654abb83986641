//! The command line: one subcommand per mode, each with the common flags. Clap's own usage errors
//! exit with status 2; [`crate::plan`] turns the flags into a checked plan.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clarion_host::parse_duration;

/// Load generator for WebSocket servers (RFC 6455), loopback targets only.
#[derive(Parser, Debug)]
#[command(name = "clarion-loadgen", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub mode: ModeArgs,
}

/// The modes.
#[derive(Subcommand, Debug)]
pub enum ModeArgs {
    /// Open N connections and hold them for the duration.
    Idle {
        #[command(flatten)]
        common: Common,
    },
    /// N connections each keep a window of messages in flight to an echo server.
    Echo {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        echo: EchoArgs,
    },
    /// Connect, exchange one message, disconnect, at a rate.
    Churn {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        churn: ChurnArgs,
    },
    /// N subscribers on topics; publishers send stamped messages at a rate.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        fanout: FanoutArgs,
    },
}

impl ModeArgs {
    /// The common flags of any mode.
    pub fn common(&self) -> &Common {
        match self {
            ModeArgs::Idle { common, .. }
            | ModeArgs::Echo { common, .. }
            | ModeArgs::Churn { common, .. }
            | ModeArgs::Fanout { common, .. } => common,
        }
    }
}

/// Flags every mode takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Target URLs (ws:// or wss://HOST:PORT/PATH, loopback only); connections rotate over
    /// them.
    #[arg(required = true, value_name = "URL")]
    pub urls: Vec<String>,
    /// wss:// and https://: accept any server certificate (self-signed test servers). Without
    /// it certificates are checked against the system's roots and --ca.
    #[arg(long)]
    pub insecure: bool,
    /// wss:// and https://: trust this CA (PEM) too, e.g. scripts/make-cert.sh's ca.pem.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
    /// wss:// and https://: no TLS session resumption, every handshake a full one (churn
    /// measures full handshakes with it, resumed ones without).
    #[arg(long)]
    pub no_resume: bool,
    /// Connections to open (churn: see --concurrency).
    #[arg(short = 'c', long, default_value_t = 100)]
    pub connections: usize,
    /// How long to measure once every connection is open (e.g. 10s, 500ms, 2m).
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// After the ramp-up, hold every connection this long before the warm-up and the
    /// measurement begin (idle but for keep-alive pings), e.g. to show they stay up.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Ping each connection after this long without hearing from the server (a quiet
    /// server that does not answer within 15 s drops the connection as a timeout).
    #[arg(long, value_parser = parse_duration)]
    pub ping_interval: Option<Duration>,
    /// Traffic before the measurement (echo, fanout): sent and checked for order and
    /// duplicates, but neither timed nor counted, so that fresh connections' first messages
    /// (TCP quick-ACK mode, cold caches) do not weigh on the steady-state figures.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Receive coalescing, like a network card's interrupt moderation: while traffic flows,
    /// each loop polls its sockets once per this period instead of sleeping on them, so senders
    /// on loopback stop paying for waking it (adds up to one period of latency; 0 = off).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub coalesce: Duration,
    /// How open plaintext WebSockets are read: `epoll` (readiness, then one `recv` per ready
    /// socket) or `uring` (one multishot receive per socket on an io_uring with provided
    /// buffers: no readiness events and no system call per read; Linux 6.0+). Connecting, the
    /// handshakes, TLS and event streams go through epoll either way.
    #[arg(long, value_enum, default_value_t = Io::Epoll)]
    pub io: Io,
    /// Event-loop threads per process [default: available cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Worker processes, each with --threads loops; their results are merged.
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// New connections per second while ramping up, over all threads; 0 = no pacing.
    #[arg(long, default_value_t = 10_000.0)]
    pub ramp_rate: f64,
    /// Most connections being opened at once during the ramp-up (dialed, not yet open and
    /// ready), over all threads; the ramp waits below it, so a server that falls behind slows
    /// the ramp instead of timing out a growing queue of handshakes. 0 = no limit.
    #[arg(long, default_value_t = 0)]
    pub max_pending: usize,
    /// Longest the ramp-up may take; connections not open by then count as failed.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub ramp_timeout: Duration,
    /// Retries per connection after a connect error.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// First retry delay; it doubles per retry (with jitter), up to 5 s.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub backoff: Duration,
    /// Longest a connection may take from connect to an open WebSocket.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Source addresses to rotate over, e.g. 127.0.0.2-127.0.0.60 (loopback IPv4).
    #[arg(long, value_name = "A-B[,C]")]
    pub source_ips: Option<String>,
    /// Most connections per (source address, target) pair.
    #[arg(long, default_value_t = 25_000)]
    pub max_per_pair: usize,
    /// Give each event-loop thread its own file-descriptor table (unshare(CLONE_FILES)), so each
    /// may hold RLIMIT_NOFILE sockets.
    #[arg(long)]
    pub private_fd_table: bool,
    /// After the duration: how long to wait for replies still in flight.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub drain: Duration,
    /// At the end: how long the server has to answer our close frames (and hang up).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub close_timeout: Duration,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the main latency histogram as an HdrHistogram interval log (1 s intervals).
    #[arg(long, value_name = "FILE")]
    pub hdr: Option<PathBuf>,
    /// Show live progress on stderr even when it is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Report this server process's resident memory before and after opening the connections.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Internal: run as worker INDEX of COUNT processes, driven through stdin and stdout.
    #[arg(long, hide = true, value_name = "INDEX/COUNT")]
    pub worker: Option<String>,
}

/// Flags of `echo`.
#[derive(Args, Debug, Clone)]
pub struct EchoArgs {
    /// Message size in bytes (at least 32: the stamp).
    #[arg(short = 's', long, default_value_t = 32)]
    pub size: usize,
    /// Messages in flight per connection.
    #[arg(short = 'w', long, default_value_t = 1)]
    pub window: u32,
    /// Messages per second over all connections (open loop, latency measured from the intended
    /// send time); without it each reply triggers the next message.
    #[arg(short = 'r', long)]
    pub rate: Option<f64>,
    /// Send text frames instead of binary.
    #[arg(long)]
    pub text: bool,
}

/// Flags of `churn`.
#[derive(Args, Debug, Clone)]
pub struct ChurnArgs {
    /// New connections per second.
    #[arg(short = 'r', long, default_value_t = 100.0)]
    pub rate: f64,
    /// Most connections open at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Size of the one message each connection exchanges (at least 32).
    #[arg(short = 's', long, default_value_t = 32)]
    pub size: usize,
}

/// How subscribers subscribe.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Raw topic sockets: the URL path plus the topic name (ws://host/t/ + news).
    Raw,
    /// The JSON envelope protocol on the URL (ws://host/ws): subscribe commands, deliveries with
    /// topic, seq and data.
    Envelope,
    /// Server-Sent Events, taken when the URLs are http:// (http://host/sse/ + news): needs
    /// --publish-via http.
    Sse,
}

/// How publishers publish.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishVia {
    /// A WebSocket per publisher (raw topic socket, or envelope publish commands).
    Ws,
    /// `POST /publish/<topic>` over keep-alive HTTP/1.1.
    Http,
}

/// Flags of `fanout`.
#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Subscription protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Raw)]
    pub protocol: Protocol,
    /// Topics; subscriber i takes topic i mod TOPICS.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Topic names are this prefix plus a number.
    #[arg(long, default_value = "loadgen-")]
    pub topic_prefix: String,
    /// Publishers; publisher j publishes to topic j mod TOPICS.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Messages per second over all publishers.
    #[arg(short = 'r', long, default_value_t = 10.0)]
    pub rate: f64,
    /// Message size in bytes (at least 32: the stamp).
    #[arg(short = 's', long, default_value_t = 64)]
    pub size: usize,
    /// How publishers publish.
    #[arg(long, value_enum, default_value_t = PublishVia::Ws)]
    pub publish_via: PublishVia,
    /// Base URL of the publish API [default: http:// and the first target's host].
    #[arg(long, value_name = "URL")]
    pub publish_url: Option<String>,
    /// Bearer token for the publish API.
    #[arg(long, value_name = "TOKEN")]
    pub publish_token: Option<String>,
    /// Reconnect storm (envelope protocol): at the stop instant plus --drain, drop this share
    /// of the subscribers at once (0.1 = 10%), dial them again and resume their subscriptions
    /// from the last seq they had; one more message is published while they are away.
    #[arg(long, value_name = "FRACTION")]
    pub storm: Option<f64>,
    /// Longest the storm may take; dropped subscribers not back by then count as failed.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub storm_timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "clarion-loadgen",
            "echo",
            "ws://127.0.0.1:9001/echo",
            "-c",
            "10",
            "--window",
            "4",
            "--worker",
            "0/2",
        ])
        .unwrap();
        let ModeArgs::Echo { common, echo } = cli.mode else {
            panic!("not echo")
        };
        assert_eq!((common.connections, echo.window), (10, 4));
        assert_eq!(common.worker.as_deref(), Some("0/2"));
        assert!(Cli::try_parse_from(["clarion-loadgen", "echo"]).is_err());
    }
}

/// How a loop reads its open connections (`--io`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Io {
    /// Readiness from epoll, then `recv` on each ready socket.
    Epoll,
    /// A multishot receive per connection on the loop's io_uring.
    Uring,
}
