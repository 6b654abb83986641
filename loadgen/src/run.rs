//! One process's part of a run: start the event loops (and, in the first process of a fanout,
//! the publishers), wait for the ramp-up, agree on the measurement window (after `--hold`),
//! sample CPU time at its edges and the process's own memory around the ramp-up, and add up what
//! every loop counted.
//!
//! The window comes from this process itself when it runs alone, or from the parent process
//! through stdin (`go GO_NS STOP_NS`) when it is one of `--procs` workers; then it reports
//! `ramped` on stdout and, at the end, `result JSON`. A closed stdin aborts the worker.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::clock::{self, ns};
use crate::control::Control;
use crate::plan::{Mode, Plan};
use crate::progress::Progress;
use crate::server::{CpuSampler, ServerWatch};
use crate::sys::{self, CpuTime};
use crate::tally::Tally;
use crate::{engine, publisher};

/// How often the coordinator looks at the loops.
const TICK: Duration = Duration::from_millis(20);
/// Lead time between agreeing on the window and its start, so every loop sees it in time.
pub const GO_LEAD_NS: u64 = 50_000_000;

/// Who sets the measurement window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steering {
    /// This process.
    Local,
    /// The parent process, through stdin.
    Parent,
}

/// The loadgen's own resident memory (KiB; summed over processes).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OwnMemory {
    /// Before the first event loop started.
    pub before_kib: u64,
    /// With every connection open (after the ramp-up).
    pub ramped_kib: u64,
    /// The peak over the whole run (`VmHWM`).
    pub peak_kib: u64,
}

impl OwnMemory {
    /// The "before" reading of this process.
    pub fn before() -> OwnMemory {
        OwnMemory {
            before_kib: sys::own_rss_kib().0,
            ..OwnMemory::default()
        }
    }

    /// Takes the "ramped" reading.
    pub fn ramped(&mut self) {
        self.ramped_kib = sys::own_rss_kib().0;
    }

    /// Takes the peak reading, at the end.
    pub fn finish(&mut self) {
        self.peak_kib = sys::own_rss_kib().1;
    }

    /// Adds another process's readings.
    pub fn add(&mut self, other: OwnMemory) {
        self.before_kib += other.before_kib;
        self.ramped_kib += other.ramped_kib;
        self.peak_kib += other.peak_kib;
    }
}

/// What one process measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessResult {
    /// Everything its loops and publishers counted.
    pub tally: Tally,
    /// Its CPU time during the measurement window.
    pub cpu_window: CpuTime,
    /// Its CPU time over the whole run.
    pub cpu_total: CpuTime,
    /// Its `RLIMIT_NOFILE`.
    pub fd_limit: u64,
    /// When the window began ([`clock`] nanoseconds; 0 if it never did).
    pub go_ns: u64,
    /// How long the window lasted (shorter than planned when aborted), seconds.
    pub window_s: f64,
    /// Its own memory.
    pub memory: OwnMemory,
    /// From its start until every connection was open (or failed), seconds.
    pub ramp_s: f64,
}

impl ProcessResult {
    /// Adds another process's result in.
    pub fn merge(&mut self, other: &ProcessResult) {
        self.tally.merge(&other.tally);
        self.cpu_window.add(other.cpu_window);
        self.cpu_total.add(other.cpu_total);
        self.fd_limit = self.fd_limit.min(other.fd_limit);
        if self.go_ns == 0 {
            self.go_ns = other.go_ns;
        }
        self.window_s = self.window_s.max(other.window_s);
        self.memory.add(other.memory);
        self.ramp_s = self.ramp_s.max(other.ramp_s);
    }
}

/// Runs this process's part.
pub fn run_process(
    plan: &Arc<Plan>,
    steering: Steering,
    progress: &mut Progress,
    server: &mut Option<ServerWatch>,
) -> Result<ProcessResult, String> {
    let fd_limit =
        clarion_host::raise_fd_limit().map_err(|e| format!("cannot set RLIMIT_NOFILE: {e}"))?;
    let control = Arc::new(Control::new(plan.threads));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, control.abort_flag())
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    }
    if steering == Steering::Parent {
        listen_to_parent(control.clone());
    }
    let mut memory = OwnMemory::before();
    let cpu_start = CpuTime::of_self();
    let start_ns = clock::now_ns();
    let process = plan.process_index();
    let loops = (0..plan.threads)
        .map(|i| {
            let (plan, control) = (plan.clone(), control.clone());
            std::thread::Builder::new()
                .name(format!("loop-{i}"))
                .spawn(move || engine::run(&plan, &control, i, plan.shard(process, i)))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot start event-loop threads: {e}"))?;
    let publishers = spawn_publishers(plan, &control)?;

    let ramp_deadline = start_ns + ns(plan.ramp_timeout);
    while control.ramped() < plan.threads
        && control.window().is_none()
        && !control.aborted()
        && clock::now_ns() < ramp_deadline
        && !loops.iter().any(JoinHandle::is_finished)
    {
        progress.show("ramping", Some(control.totals()));
        std::thread::sleep(TICK);
    }
    if loops.iter().any(JoinHandle::is_finished) {
        // A loop could not start: stop the others, then report its error below.
        control.abort();
    }
    let ramp_s = clock::now_ns().saturating_sub(start_ns) as f64 / 1e9;
    if let Some(watch) = server {
        watch.sample_after();
    }
    memory.ramped();
    let mut sampler = None;
    match steering {
        Steering::Local if !control.aborted() => {
            let go_ns = clock::now_ns() + GO_LEAD_NS + ns(plan.hold) + ns(plan.warmup);
            let stop_ns = go_ns + ns(plan.duration);
            control.start(go_ns, stop_ns);
            sampler = server
                .as_ref()
                .map(|watch| CpuSampler::start(watch.pid, go_ns, stop_ns));
        }
        Steering::Local => {}
        Steering::Parent => {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "ramped").and_then(|()| stdout.flush());
        }
    }

    let window = measure(&control, progress);
    if let (Some(watch), Some(sampler)) = (server.as_mut(), sampler) {
        watch.finish_window(sampler, control.aborted());
    }
    progress.show("closing", Some(control.totals()));
    let mut tally = Tally::new(topic_count(plan), false);
    let mut errors = Vec::new();
    for handle in loops.into_iter().chain(publishers) {
        match handle.join() {
            Ok(Ok(loop_tally)) => tally.merge(&loop_tally),
            Ok(Err(e)) => errors.push(format!("an event loop could not start: {e}")),
            Err(_) => errors.push("an event loop panicked".to_owned()),
        }
    }
    if let Some(first) = errors.into_iter().next() {
        return Err(first);
    }
    memory.finish();
    Ok(ProcessResult {
        tally,
        cpu_window: window.cpu,
        cpu_total: CpuTime::of_self().since(cpu_start),
        fd_limit,
        go_ns: window.go_ns,
        window_s: window.seconds,
        memory,
        ramp_s,
    })
}

/// The measurement window as it happened.
#[derive(Default)]
struct Window {
    cpu: CpuTime,
    go_ns: u64,
    seconds: f64,
}

/// Waits through the measurement window.
fn measure(control: &Control, progress: &mut Progress) -> Window {
    let (go_ns, stop_ns) = loop {
        if control.aborted() {
            return Window::default();
        }
        if let Some(window) = control.window() {
            break window;
        }
        progress.show("waiting for the other workers", Some(control.totals()));
        std::thread::sleep(TICK);
    };
    sleep_until(go_ns, control);
    let cpu_go = CpuTime::of_self();
    while clock::now_ns() < stop_ns && !control.aborted() {
        progress.show("measuring", Some(control.totals()));
        let left = stop_ns.saturating_sub(clock::now_ns());
        std::thread::sleep(Duration::from_nanos(left).min(10 * TICK));
    }
    let end_ns = clock::now_ns().min(stop_ns);
    Window {
        cpu: CpuTime::of_self().since(cpu_go),
        go_ns,
        seconds: end_ns.saturating_sub(go_ns) as f64 / 1e9,
    }
}

fn sleep_until(at_ns: u64, control: &Control) {
    while !control.aborted() {
        let now_ns = clock::now_ns();
        if now_ns >= at_ns {
            return;
        }
        std::thread::sleep(Duration::from_nanos(at_ns - now_ns).min(TICK));
    }
}

type LoopHandle = JoinHandle<std::io::Result<Tally>>;

/// The first process of a fanout runs the publishers.
fn spawn_publishers(plan: &Arc<Plan>, control: &Arc<Control>) -> Result<Vec<LoopHandle>, String> {
    let Mode::Fanout(fanout) = &plan.mode else {
        return Ok(Vec::new());
    };
    if plan.process_index() != 0 {
        return Ok(Vec::new());
    }
    (0..fanout.publishers)
        .map(|id| {
            let (plan, control) = (plan.clone(), control.clone());
            std::thread::Builder::new()
                .name(format!("publisher-{id}"))
                .spawn(move || {
                    let Mode::Fanout(fanout) = &plan.mode else {
                        unreachable!("checked above")
                    };
                    Ok(publisher::run(&plan, fanout, id, &control))
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot start publisher threads: {e}"))
}

fn topic_count(plan: &Plan) -> usize {
    match &plan.mode {
        Mode::Fanout(fanout) => fanout.topics.len(),
        _ => 0,
    }
}

/// Worker processes: the parent's `go GO_NS STOP_NS` sets the window; a closed stdin aborts.
fn listen_to_parent(control: Arc<Control>) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let mut words = line.split_whitespace();
            if words.next() == Some("go") {
                let go = words.next().and_then(|w| w.parse().ok());
                let stop = words.next().and_then(|w| w.parse().ok());
                if let (Some(go), Some(stop)) = (go, stop) {
                    control.start(go, stop);
                    continue;
                }
            }
            break;
        }
        control.abort();
    });
}
