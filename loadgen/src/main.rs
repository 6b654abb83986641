//! `clarion-loadgen`: opens many WebSocket connections to a loopback server and measures it.
//! Modes: `idle`, `echo`, `churn`, `fanout`; see `docs/loadgen.md`.
//!
//! Exit status: 0 on a run where most connections worked, 1 when most failed (with the reason)
//! or the run could not be carried out, 2 on bad flags or URLs.

mod cli;
mod clock;
mod control;
mod engine;
mod failure;
mod hist;
mod plan;
mod procs;
mod progress;
mod publisher;
mod report;
mod run;
mod sequence;
mod server;
mod sources;
mod sse;
mod stamp;
mod sys;
mod tally;
mod tls;
mod traffic;
mod url;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use crate::plan::Plan;
use crate::progress::Progress;
use crate::report::Report;
use crate::run::Steering;
use crate::server::ServerWatch;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let plan = match Plan::from_args(&cli.mode) {
        Ok(plan) => Arc::new(plan),
        Err(message) => {
            eprintln!("clarion-loadgen: {message}");
            return ExitCode::from(2);
        }
    };
    if plan.worker.is_some() {
        return worker(&plan);
    }
    lead(&plan)
}

/// The process the user started: runs (or spawns) the workers and reports.
fn lead(plan: &Arc<Plan>) -> ExitCode {
    let mut server = plan.output.server_pid.map(ServerWatch::start);
    let mut progress = Progress::new(plan.output.force_progress, plan.connections);
    let result = if plan.procs > 1 {
        procs::run_parent(plan, &mut progress, &mut server)
    } else {
        run::run_process(plan, Steering::Local, &mut progress, &mut server)
    };
    progress.finish();
    let result = match result {
        Ok(result) => result,
        Err(message) => {
            eprintln!("clarion-loadgen: {message}");
            return ExitCode::FAILURE;
        }
    };
    let report = Report::new(plan, &result, server.as_ref());
    let urls: Vec<String> = plan.pairs.targets.iter().map(|t| t.url.clone()).collect();
    print!("{}", report.table(&urls));
    let mut status = ExitCode::SUCCESS;
    if let Some(path) = &plan.output.json {
        let written = serde_json::to_vec_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(path, json));
        if let Err(e) = written {
            eprintln!("clarion-loadgen: cannot write {}: {e}", path.display());
            status = ExitCode::FAILURE;
        }
    }
    if let Some(path) = &plan.output.hdr
        && let Err(e) = report::write_hdr_log(path, &result.tally.intervals, result.go_ns)
    {
        eprintln!("clarion-loadgen: cannot write {}: {e}", path.display());
        status = ExitCode::FAILURE;
    }
    if let Err(why) = report.verdict() {
        eprintln!("clarion-loadgen: {why}");
        status = ExitCode::FAILURE;
    }
    status
}

/// A worker process of `--procs`: runs its share and prints its result for the parent.
fn worker(plan: &Arc<Plan>) -> ExitCode {
    match run::run_process(plan, Steering::Parent, &mut Progress::off(), &mut None) {
        Ok(result) => {
            let line = serde_json::to_string(&result).expect("results serialize");
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "result {line}").and_then(|()| stdout.flush());
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("clarion-loadgen worker: {message}");
            ExitCode::FAILURE
        }
    }
}
