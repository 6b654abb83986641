//! The results of a run: the JSON document (`--json`, stable keys), the table on stdout, the
//! `--hdr` interval log, and the verdict (whether most connections failed, and why).

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use serde::Serialize;

use crate::cli::Io;
use crate::clock;
use crate::failure::{Failures, Reason};
use crate::hist::Percentiles;
use crate::plan::{Mode, Plan, STORM_BLIP};
use crate::run::ProcessResult;
use crate::server::ServerWatch;
use crate::stamp::Stamp;
use crate::tally::Interval;

/// Share of its event loops' time the loadgen may use before its results are flagged.
const SATURATED: f64 = 0.9;

/// The loadgen's own CPU use.
#[derive(Clone, Debug, Serialize)]
pub struct CpuReport {
    /// User time during the measurement window, seconds.
    pub user_s: f64,
    /// System time during the measurement window, seconds.
    pub system_s: f64,
    /// User plus system time per message received in the window, microseconds.
    pub per_message_us: Option<f64>,
    /// Cores kept busy on average during the window.
    pub cores: f64,
    /// User plus system time over the whole run (ramp and close included), seconds.
    pub total_s: f64,
    /// Whether the loadgen kept its event loops nearly saturated: then latencies include its
    /// own queueing, and the run measures the loadgen as much as the server.
    pub saturated: bool,
}

/// One message's first and last delivery.
#[derive(Clone, Debug, Serialize)]
pub struct RoundReport {
    /// The publisher that sent it.
    pub publisher: u16,
    /// Its number among that publisher's messages.
    pub count: u64,
    /// When it was due, seconds from the measurement's start (negative: none; after the
    /// window: the storm's message).
    pub at_s: f64,
    /// Subscribers it reached.
    pub deliveries: u64,
    /// From its intended send time to its first delivery, microseconds.
    pub first_us: f64,
    /// ... and to its last.
    pub last_us: f64,
}

/// The reconnect storm.
#[derive(Clone, Debug, Serialize)]
pub struct StormReport {
    /// Connections dropped at once.
    pub dropped: u64,
    /// Back and subscribed again.
    pub rejoined: u64,
    /// Back, but their subscription was not resumed (`recovered` not true).
    pub not_recovered: u64,
    /// Messages the server promised to replay to the resumed ones.
    pub replayed: u64,
    /// Not back (dial failures past the retries, or the storm's timeout).
    pub failed: u64,
    /// `failed` by reason (`timeout`: the storm's timeout, or connect plus upgrade too slow).
    pub failures: Failures,
    /// How long the dropped connections stayed away before dialing again, seconds.
    pub blip_s: f64,
    /// From the end of the blip until the last one was back (or given up), seconds.
    pub seconds: f64,
    /// From the end of the blip until each was back.
    pub rejoin_us: Percentiles,
}

/// The close at the end.
#[derive(Clone, Debug, Serialize)]
pub struct CloseReport {
    /// WebSockets open when closing began.
    pub open: u64,
    /// Of them, closed with a complete close handshake.
    pub clean: u64,
    /// The others (no answer, reset, or still open at `--close-timeout`).
    pub failed: u64,
    /// From the start of closing until the last socket was gone, seconds.
    pub seconds: f64,
}

/// The loadgen's own resident memory (all its processes).
#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    /// Before the first connection, KiB.
    pub before_kib: u64,
    /// With every connection open, KiB.
    pub ramped_kib: u64,
    /// The peak over the run, KiB.
    pub peak_kib: u64,
    /// (ramped − before) / established, bytes: what each connection added.
    pub per_connection_bytes: Option<f64>,
    /// peak / established, bytes: everything, fixed costs included.
    pub peak_per_connection_bytes: Option<f64>,
}

/// The server's memory, with `--server-pid`.
#[derive(Clone, Debug, Serialize)]
pub struct ServerReport {
    /// Its pid.
    pub pid: u32,
    /// VmRSS before the first connection, KiB.
    pub rss_before_kib: Option<u64>,
    /// VmRSS with every connection open, KiB.
    pub rss_after_kib: Option<u64>,
    /// (after − before) / established, bytes.
    pub rss_per_connection_bytes: Option<f64>,
    /// VmRSS at the end of the measurement window, KiB (in `idle` mode: the connections idle,
    /// the ramp's transients settled).
    pub rss_window_end_kib: Option<u64>,
    /// (window end − before) / established, bytes.
    pub rss_per_connection_at_window_end_bytes: Option<f64>,
    /// Its CPU time (user + system) over the measurement window, seconds.
    pub cpu_window_s: Option<f64>,
    /// That CPU time per message received in the window (echo: round trip; fanout: delivery),
    /// microseconds.
    pub cpu_per_message_us: Option<f64>,
    /// Its user-space part, microseconds per message.
    pub cpu_user_per_message_us: Option<f64>,
    /// Its kernel part, microseconds per message.
    pub cpu_system_per_message_us: Option<f64>,
    /// Why a reading is missing.
    pub error: Option<String>,
}

/// Everything a run reports; these keys are stable.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `idle`, `echo`, `churn` or `fanout`.
    pub mode: &'static str,
    /// Connections asked for (churn: the concurrency).
    pub connections: usize,
    /// Connections that opened (churn: handshakes completed).
    pub established: u64,
    /// Connections that never opened.
    pub failed: u64,
    /// Connections that opened and were lost before the end.
    pub dropped: u64,
    /// `failed` by reason.
    pub failures: Failures,
    /// `dropped` by reason.
    pub drops: Failures,
    /// Dials repeated after connect errors.
    pub retries: u64,
    /// `retries` by the reason of the error retried.
    pub retry_reasons: Failures,
    /// Connections that ended with a complete close handshake.
    pub closed_clean: u64,
    /// From the start until every connection was open (or failed), seconds.
    pub ramp_s: f64,
    /// Connections established per second of that (0 for churn).
    pub ramp_rate: f64,
    /// Length of the measurement window, seconds.
    pub duration_s: f64,
    /// Connections held after the ramp-up before the warm-up (`--hold`), seconds.
    pub hold_s: f64,
    /// Traffic before the window, not counted (`--warmup`), seconds.
    pub warmup_s: f64,
    /// Receive coalescing period (`--coalesce`; 0: off), microseconds.
    pub coalesce_us: f64,
    /// How open connections were read (`--io`: `epoll` or `uring`).
    pub io: Io,
    /// Reads done by io_uring's multishot receive (0 with `--io epoll`).
    pub ring_reads: u64,
    /// Messages sent.
    pub messages_sent: u64,
    /// Messages received.
    pub messages_received: u64,
    /// Messages received per second during the window.
    pub throughput: f64,
    /// What `throughput` counts.
    pub throughput_unit: &'static str,
    /// The mode's latency (echo: round trip; churn: dial due to echo received; fanout: intended
    /// publish to receive).
    pub latency_us: Percentiles,
    /// TCP connect times.
    pub connect_us: Percentiles,
    /// TLS handshakes (wss://): TCP connected to TLS established.
    pub tls_us: Percentiles,
    /// Upgrade request to 101.
    pub handshake_us: Percentiles,
    /// Fanout: how late publishes left against their due time.
    pub publish_lag_us: Percentiles,
    /// Churn: cycles completed.
    pub cycles: u64,
    /// Churn: handshakes per second.
    pub handshakes_per_s: f64,
    /// Fanout: messages published.
    pub published: u64,
    /// Fanout: subscribers open when publishing began.
    pub subscribers: u64,
    /// Fanout: distinct deliveries.
    pub delivered: u64,
    /// Fanout: deliveries expected and not received.
    pub missing: u64,
    /// Fanout: repeated deliveries.
    pub duplicates: u64,
    /// Fanout: deliveries behind a later message of the same publisher.
    pub out_of_order: u64,
    /// Fanout: publishes that failed.
    pub publish_errors: u64,
    /// Fanout: each message's first and last delivery (the first 1,024 messages each loop saw).
    pub rounds: Vec<RoundReport>,
    /// Fanout: the reconnect storm (zeros without `--storm`).
    pub storm: StormReport,
    /// The close at the end.
    pub close: CloseReport,
    /// The loadgen's own memory.
    pub loadgen_memory: MemoryReport,
    /// The loadgen's CPU use.
    pub loadgen_cpu: CpuReport,
    /// The server's memory, with `--server-pid`.
    pub server: Option<ServerReport>,
    /// Event-loop threads per process.
    pub threads: usize,
    /// Processes.
    pub procs: usize,
    /// RLIMIT_NOFILE of each process.
    pub fd_limit: u64,
}

impl Report {
    /// Builds the report of a finished run.
    pub fn new(plan: &Plan, result: &ProcessResult, server: Option<&ServerWatch>) -> Report {
        let tally = &result.tally;
        // The window as it happened (shorter when aborted); never 0, rates divide by it.
        let duration_s = result.window_s.max(1e-9);
        let window_cpu = result.cpu_window.total_s();
        let fanout = &tally.fanout;
        let per_message = |s: f64| {
            (tally.received_in_window > 0).then(|| s * 1e6 / tally.received_in_window as f64)
        };
        let per_connection = |kib: u64| {
            (tally.established > 0).then(|| kib as f64 * 1024.0 / tally.established as f64)
        };
        let memory = &result.memory;
        Report {
            mode: plan.mode.name(),
            connections: plan.connections,
            established: tally.established,
            failed: tally.failures.total(),
            dropped: tally.drops.total(),
            failures: tally.failures.clone(),
            drops: tally.drops.clone(),
            retries: tally.retries,
            retry_reasons: tally.retried.clone(),
            closed_clean: tally.closed_clean,
            ramp_s: result.ramp_s,
            ramp_rate: match plan.mode {
                // Churn has no ramp-up: its connections come and go in the window.
                Mode::Churn(_) => 0.0,
                _ => tally.established as f64 / result.ramp_s.max(1e-9),
            },
            duration_s,
            hold_s: plan.hold.as_secs_f64(),
            warmup_s: plan.warmup.as_secs_f64(),
            coalesce_us: plan.coalesce.as_secs_f64() * 1e6,
            io: plan.io,
            ring_reads: tally.ring_reads,
            messages_sent: tally.messages_sent,
            messages_received: tally.messages_received,
            throughput: tally.received_in_window as f64 / duration_s,
            throughput_unit: match plan.mode {
                Mode::Fanout(_) => "deliveries/s",
                Mode::Churn(_) => "cycles/s",
                Mode::Idle | Mode::Echo(_) => "msgs/s",
            },
            latency_us: Percentiles::of(&tally.latency),
            connect_us: Percentiles::of(&tally.connect),
            tls_us: Percentiles::of(&tally.tls),
            handshake_us: Percentiles::of(&tally.handshake),
            publish_lag_us: Percentiles::of(&tally.publish_lag),
            cycles: tally.cycles,
            handshakes_per_s: match plan.mode {
                Mode::Churn(_) => tally.established as f64 / duration_s,
                _ => 0.0,
            },
            published: fanout.published.iter().sum(),
            subscribers: fanout.subscribers.iter().sum(),
            delivered: fanout.delivered.iter().sum(),
            missing: fanout.missing(),
            duplicates: fanout.duplicates,
            out_of_order: fanout.out_of_order,
            publish_errors: fanout.publish_errors,
            rounds: tally
                .rounds
                .list
                .iter()
                .map(|round| {
                    let stamp = Stamp {
                        sent_ns: round.sent_ns,
                        seq: round.seq,
                    };
                    RoundReport {
                        publisher: stamp.publisher(),
                        count: stamp.count(),
                        at_s: (round.sent_ns as f64 - result.go_ns as f64) / 1e9,
                        deliveries: round.deliveries,
                        first_us: round.first_ns as f64 / 1e3,
                        last_us: round.last_ns as f64 / 1e3,
                    }
                })
                .collect(),
            storm: StormReport {
                dropped: tally.storm.dropped,
                rejoined: tally.storm.rejoined,
                not_recovered: tally.storm.not_recovered,
                replayed: tally.storm.replayed,
                blip_s: STORM_BLIP.as_secs_f64(),
                failed: tally.storm.failed,
                failures: tally.storm.failures.clone(),
                seconds: tally.storm.ns as f64 / 1e9,
                rejoin_us: Percentiles::of(&tally.storm.rejoin),
            },
            close: CloseReport {
                open: tally.close.open,
                clean: tally.closed_clean.min(tally.close.open),
                failed: tally.close.open.saturating_sub(tally.closed_clean),
                seconds: tally.close.ns as f64 / 1e9,
            },
            loadgen_memory: MemoryReport {
                before_kib: memory.before_kib,
                ramped_kib: memory.ramped_kib,
                peak_kib: memory.peak_kib,
                per_connection_bytes: per_connection(
                    memory.ramped_kib.saturating_sub(memory.before_kib),
                ),
                peak_per_connection_bytes: per_connection(memory.peak_kib),
            },
            loadgen_cpu: CpuReport {
                user_s: result.cpu_window.user_s,
                system_s: result.cpu_window.system_s,
                per_message_us: per_message(window_cpu),
                cores: window_cpu / duration_s,
                total_s: result.cpu_total.total_s(),
                saturated: window_cpu / duration_s
                    >= SATURATED * (plan.threads * plan.procs) as f64,
            },
            server: server.map(|watch| ServerReport {
                pid: watch.pid,
                rss_before_kib: watch.rss_before_kib,
                rss_after_kib: watch.rss_after_kib,
                rss_per_connection_bytes: watch.bytes_per_connection(tally.established),
                rss_window_end_kib: watch.rss_window_end_kib,
                rss_per_connection_at_window_end_bytes: watch
                    .bytes_per_connection_at_window_end(tally.established),
                cpu_window_s: watch.cpu_window.map(|cpu| cpu.total_s()),
                cpu_per_message_us: watch.cpu_window.and_then(|cpu| per_message(cpu.total_s())),
                cpu_user_per_message_us: watch.cpu_window.and_then(|cpu| per_message(cpu.user_s)),
                cpu_system_per_message_us: watch
                    .cpu_window
                    .and_then(|cpu| per_message(cpu.system_s)),
                error: watch.error.clone(),
            }),
            threads: plan.threads,
            procs: plan.procs,
            fd_limit: result.fd_limit,
        }
    }

    /// `Err` with the reason when most connections failed (or dropped).
    pub fn verdict(&self) -> Result<(), String> {
        let attempted = self.established + self.failed;
        let lost = self.failed + self.dropped;
        if attempted == 0 {
            return Err("no connection was attempted".into());
        }
        if lost * 2 <= attempted {
            return Ok(());
        }
        let mut all = self.failures.clone();
        all.merge(&self.drops);
        let reason = all.dominant().unwrap_or(Reason::OtherIo);
        Err(format!(
            "most connections failed ({lost} of {attempted}), mostly {}: {}",
            reason.name(),
            reason.hint()
        ))
    }

    /// The table printed at the end.
    pub fn table(&self, targets: &[String]) -> String {
        let mut out = String::new();
        let mut before = Vec::new();
        if self.hold_s > 0.0 {
            before.push(format!("{:.1} s held", self.hold_s));
        }
        if self.warmup_s > 0.0 {
            before.push(format!("{:.1} s of warm-up", self.warmup_s));
        }
        let _ = writeln!(
            out,
            "clarion-loadgen {}: {} connections, {} thread(s) x {} process(es), {:.1} s measured{}{}{}, to {}",
            self.mode,
            self.connections,
            self.threads,
            self.procs,
            self.duration_s,
            if before.is_empty() {
                String::new()
            } else {
                format!(" after {}", before.join(" and "))
            },
            if self.coalesce_us > 0.0 {
                format!(" (receive coalescing {:.0} µs)", self.coalesce_us)
            } else {
                String::new()
            },
            if self.io == Io::Uring {
                format!(" (read through io_uring: {} reads)", self.ring_reads)
            } else {
                String::new()
            },
            targets.join(" ")
        );
        let _ = writeln!(
            out,
            "connections  established {}  failed {}  dropped {}  closed cleanly {}  retries {}  (ramp-up {:.1} s, {:.0}/s)",
            self.established,
            self.failed,
            self.dropped,
            self.closed_clean,
            self.retries,
            self.ramp_s,
            self.ramp_rate
        );
        for (label, failures) in [
            ("failed", &self.failures),
            ("dropped", &self.drops),
            ("retried", &self.retry_reasons),
            ("not back after the storm", &self.storm.failures),
        ] {
            let reasons: Vec<String> = failures
                .nonzero()
                .map(|(r, n)| format!("{} {n}", r.name()))
                .collect();
            if !reasons.is_empty() {
                let _ = writeln!(out, "  {label} by reason: {}", reasons.join(", "));
            }
        }
        let _ = writeln!(
            out,
            "messages     sent {}  received {}  throughput {:.1} {}",
            self.messages_sent, self.messages_received, self.throughput, self.throughput_unit
        );
        if self.mode == "churn" {
            let _ = writeln!(
                out,
                "churn        cycles {}  handshakes {:.1}/s",
                self.cycles, self.handshakes_per_s
            );
        }
        if self.mode == "fanout" {
            let _ = writeln!(
                out,
                "fanout       published {}  subscribers {}  delivered {}  missing {}  duplicates {}  out of order {}  publish errors {}",
                self.published,
                self.subscribers,
                self.delivered,
                self.missing,
                self.duplicates,
                self.out_of_order,
                self.publish_errors
            );
        }
        let _ = writeln!(
            out,
            "latency (us)  {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "count", "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean"
        );
        let main = match self.mode {
            "echo" => "round trip",
            "churn" => "cycle",
            "fanout" => "delivery",
            _ => "",
        };
        for (label, p) in [
            (main, &self.latency_us),
            ("connect", &self.connect_us),
            ("tls", &self.tls_us),
            ("handshake", &self.handshake_us),
            ("publish lag", &self.publish_lag_us),
        ] {
            if p.count > 0 {
                let _ = writeln!(
                    out,
                    "  {label:<11} {:>10} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                    p.count, p.p50, p.p90, p.p99, p.p99_9, p.p99_99, p.max, p.mean
                );
            }
        }
        if let Some(rounds) = self.rounds_summary() {
            let _ = writeln!(out, "{rounds}");
        }
        let storm = &self.storm;
        if storm.dropped > 0 {
            let _ = writeln!(
                out,
                "storm        dropped {}, away {:.1} s, back {} in {:.2} s (p50 {:.1} ms, p99 {:.1} ms), {} messages replayed  not resumed {}  failed {}",
                storm.dropped,
                storm.blip_s,
                storm.rejoined,
                storm.seconds,
                storm.rejoin_us.p50 / 1e3,
                storm.rejoin_us.p99 / 1e3,
                storm.replayed,
                storm.not_recovered,
                storm.failed
            );
        }
        let close = &self.close;
        let _ = writeln!(
            out,
            "close        {} open: {} cleanly, {} not, in {:.2} s",
            close.open, close.clean, close.failed, close.seconds
        );
        let memory = &self.loadgen_memory;
        let _ = writeln!(
            out,
            "loadgen RSS  {} KiB before, {} KiB with the connections open ({:.0} bytes each), peak {} KiB ({:.0} bytes per connection)",
            memory.before_kib,
            memory.ramped_kib,
            memory.per_connection_bytes.unwrap_or(0.0),
            memory.peak_kib,
            memory.peak_per_connection_bytes.unwrap_or(0.0)
        );
        let cpu = &self.loadgen_cpu;
        let per_message = cpu
            .per_message_us
            .map_or(String::new(), |us| format!(", {us:.2} us per message"));
        let _ = writeln!(
            out,
            "loadgen CPU  user {:.2} s  system {:.2} s in the window ({:.2} cores{per_message}); {:.2} s in all",
            cpu.user_s, cpu.system_s, cpu.cores, cpu.total_s
        );
        if cpu.saturated {
            let _ = writeln!(
                out,
                "  warning: the loadgen's event loops were saturated; latencies include its own \
                 queueing (add --threads or --procs, or use --rate)"
            );
        }
        if let Some(server) = &self.server {
            match (server.rss_before_kib, server.rss_after_kib) {
                (Some(before), Some(after)) => {
                    let _ = writeln!(
                        out,
                        "server RSS   pid {}: {before} KiB before, {after} KiB with the connections open = {:.0} bytes per connection",
                        server.pid,
                        server.rss_per_connection_bytes.unwrap_or(0.0)
                    );
                    if let (Some(end), Some(per)) = (
                        server.rss_window_end_kib,
                        server.rss_per_connection_at_window_end_bytes,
                    ) {
                        let _ = writeln!(
                            out,
                            "             {end} KiB at the end of the window = {per:.0} bytes per connection"
                        );
                    }
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "server RSS   pid {}: {}",
                        server.pid,
                        server.error.as_deref().unwrap_or("not read")
                    );
                }
            }
            if let Some(cpu_s) = server.cpu_window_s {
                let per_message = match (
                    server.cpu_per_message_us,
                    server.cpu_user_per_message_us,
                    server.cpu_system_per_message_us,
                ) {
                    (Some(all), Some(user), Some(system)) => {
                        format!(", {all:.2} us per message: {user:.3} user, {system:.3} system")
                    }
                    _ => String::new(),
                };
                let _ = writeln!(
                    out,
                    "server CPU   {cpu_s:.2} s in the window ({:.2} cores{per_message})",
                    cpu_s / self.duration_s
                );
            }
        }
        out
    }
}

impl Report {
    /// Fanout: each message's first and last delivery, summed up over the messages.
    fn rounds_summary(&self) -> Option<String> {
        let mut firsts: Vec<f64> = self.rounds.iter().map(|r| r.first_us).collect();
        let mut lasts: Vec<f64> = self.rounds.iter().map(|r| r.last_us).collect();
        if firsts.is_empty() {
            return None;
        }
        firsts.sort_by(f64::total_cmp);
        lasts.sort_by(f64::total_cmp);
        let median = |v: &[f64]| v[v.len() / 2] / 1e3;
        let max = |v: &[f64]| v[v.len() - 1] / 1e3;
        Some(format!(
            "per message  {} messages: first subscriber median {:.1} ms, max {:.1} ms; last subscriber median {:.1} ms, max {:.1} ms",
            firsts.len(),
            median(&firsts),
            max(&firsts),
            median(&lasts),
            max(&lasts)
        ))
    }
}

/// Writes the `--hdr` interval log of the mode's latency (values in nanoseconds; the log's max
/// column in microseconds).
pub fn write_hdr_log(path: &Path, intervals: &[Interval], go_ns: u64) -> io::Result<()> {
    let since_go = Duration::from_nanos(clock::now_ns().saturating_sub(go_ns));
    let start = SystemTime::now()
        .checked_sub(since_go)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut file = io::BufWriter::new(std::fs::File::create(path)?);
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment("clarion-loadgen latency, values in nanoseconds")
        .with_start_time(start)
        .with_base_time(start)
        .with_max_value_divisor(1000.0)
        .begin_log_with(&mut file, &mut serializer)?;
    let tag = Tag::new("latency");
    for interval in intervals {
        log.write_histogram(
            &interval.histogram,
            Duration::from_secs(interval.index as u64),
            Duration::from_secs(1),
            tag,
        )
        .map_err(|e| io::Error::other(format!("{e:?}")))?;
    }
    drop(log);
    io::Write::flush(&mut file)
}
