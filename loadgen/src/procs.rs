//! `--procs N`: the run split over N worker processes (this executable again, with a hidden
//! `--worker I/N` flag), each with its own descriptor table and limit. The parent waits until
//! every worker reports `ramped`, sends them all the same measurement window, and merges the
//! `result` lines they print at the end. A worker's stdin closing (the parent gone) aborts it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::clock::{self, ns};
use crate::plan::Plan;
use crate::progress::Progress;
use crate::run::{GO_LEAD_NS, OwnMemory, ProcessResult};
use crate::server::{CpuSampler, ServerWatch};

/// What a worker said.
enum Said {
    Ramped,
    Result(Box<ProcessResult>),
    Gone,
}

/// Runs the workers and merges their results.
pub fn run_parent(
    plan: &Plan,
    progress: &mut Progress,
    server: &mut Option<ServerWatch>,
) -> Result<ProcessResult, String> {
    let abort = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, abort.clone())
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    }
    let mut memory = OwnMemory::before();
    let (said_tx, said) = mpsc::channel();
    let mut children: Vec<(Child, Option<ChildStdin>)> = Vec::new();
    for index in 0..plan.procs {
        let mut child = spawn_worker(index, plan.procs)?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let said_tx = said_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let message = if line == "ramped" {
                    Said::Ramped
                } else if let Some(json) = line.strip_prefix("result ") {
                    match serde_json::from_str(json) {
                        Ok(result) => Said::Result(Box::new(result)),
                        Err(_) => break,
                    }
                } else {
                    continue;
                };
                if said_tx.send(message).is_err() {
                    return;
                }
            }
            let _ = said_tx.send(Said::Gone);
        });
        children.push((child, stdin));
    }
    drop(said_tx);

    let mut heard = Heard::default();
    let start_ns = clock::now_ns();
    let ramp_deadline = start_ns + ns(plan.ramp_timeout);
    while heard.ramped + heard.gone < plan.procs
        && !abort.load(Ordering::Relaxed)
        && clock::now_ns() < ramp_deadline
    {
        let stage = format!("ramping: {}/{} workers ready", heard.ramped, plan.procs);
        progress.show(&stage, None);
        if let Ok(message) = said.recv_timeout(Duration::from_millis(50)) {
            heard.note(message);
        }
    }
    let ramp_s = clock::now_ns().saturating_sub(start_ns) as f64 / 1e9;
    if let Some(watch) = server {
        watch.sample_after();
    }
    memory.ramped();
    let mut sampler = None;
    if abort.load(Ordering::Relaxed) || heard.gone > 0 {
        // Closing their stdin aborts the workers; they still report what they counted.
        children
            .iter_mut()
            .for_each(|(_, stdin)| drop(stdin.take()));
    } else {
        let go_ns = clock::now_ns() + 2 * GO_LEAD_NS + ns(plan.hold) + ns(plan.warmup);
        let stop_ns = go_ns + ns(plan.duration);
        sampler = server
            .as_ref()
            .map(|watch| CpuSampler::start(watch.pid, go_ns, stop_ns));
        for (_, stdin) in &mut children {
            if let Some(pipe) = stdin {
                let _ = writeln!(pipe, "go {go_ns} {stop_ns}").and_then(|()| pipe.flush());
            }
        }
    }
    while heard.gone < plan.procs {
        if abort.load(Ordering::Relaxed) {
            children
                .iter_mut()
                .for_each(|(_, stdin)| drop(stdin.take()));
        }
        let stage = format!(
            "running: {}/{} workers reported",
            heard.reported, plan.procs
        );
        progress.show(&stage, None);
        match said.recv_timeout(Duration::from_millis(200)) {
            Ok(message) => heard.note(message),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    for (mut child, stdin) in children {
        drop(stdin);
        let _ = child.wait();
    }
    if let (Some(watch), Some(sampler)) = (server.as_mut(), sampler) {
        watch.finish_window(sampler, abort.load(Ordering::Relaxed));
    }
    let missing = plan.procs - heard.reported;
    memory.finish();
    match heard.total {
        Some(mut total) if missing == 0 => {
            // The parent's own memory is the loadgen's too; its ramp waited for every worker.
            total.memory.add(memory);
            total.ramp_s = ramp_s;
            Ok(total)
        }
        Some(_) | None => Err(format!(
            "{missing} of {} worker processes ended without a result",
            plan.procs
        )),
    }
}

/// What the workers said so far.
#[derive(Default)]
struct Heard {
    ramped: usize,
    gone: usize,
    reported: usize,
    total: Option<ProcessResult>,
}

impl Heard {
    fn note(&mut self, said: Said) {
        match said {
            Said::Ramped => self.ramped += 1,
            Said::Gone => self.gone += 1,
            Said::Result(result) => {
                self.reported += 1;
                match &mut self.total {
                    Some(total) => total.merge(&result),
                    None => self.total = Some(*result),
                }
            }
        }
    }
}

fn spawn_worker(index: usize, count: usize) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    Command::new(exe)
        .args(std::env::args_os().skip(1))
        .arg("--worker")
        .arg(format!("{index}/{count}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start worker process {index}: {e}"))
}
