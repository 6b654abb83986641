//! `clarion`: the command line. Parses flags and config, starts the reactors, and turns
//! SIGINT/SIGTERM into a graceful drain.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use clarion::server::{self, config::Settings};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

#[derive(Parser)]
#[command(
    name = "clarion",
    version,
    about = "A WebSocket engine and push server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (WebSocket routes /t/<topic>, /ws, /echo; HTTP /publish, /metrics,
    /// /stats, /healthz).
    Serve(Settings),
}

fn main() -> ExitCode {
    let Command::Serve(flags) = Cli::parse().command;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // A write error would be reported with eprintln!, which panics the logging thread when
        // stderr itself is gone (a closed pipe): lose the log line, keep the thread.
        .log_internal_errors(false)
        .init();
    let fd_limit = match clarion_host::raise_fd_limit() {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!("cannot raise RLIMIT_NOFILE: {e}");
            clarion_host::fd_limit()
        }
    };
    let settings = match Settings::resolve(flags) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("clarion: {message}");
            return ExitCode::from(2);
        }
    };
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("clarion: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = settings.reactor_config();
    let app = settings.app_config();
    let open_api = app.api_key.is_none();
    let max_connections = app.max_connections;
    let runtime = match server::start(config.clone(), app) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("clarion: cannot start on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        "listening on {} with {} reactors ({:?}; RLIMIT_NOFILE {fd_limit})",
        runtime.local_addr(),
        config.threads,
        runtime.io()
    );
    if open_api {
        tracing::warn!("no api_key: the HTTP publish API is open to anyone who can connect");
    }
    for warning in server::host::warnings(
        &config,
        runtime.io(),
        max_connections,
        fd_limit,
        server::host::somaxconn(),
    ) {
        tracing::warn!("{warning}");
    }
    let shutdown = runtime.shutdown_handle();
    std::thread::spawn(move || {
        let mut pending = signals.forever();
        if let Some(signal) = pending.next() {
            shutdown.shutdown();
            tracing::info!(signal, "draining: closing connections with 1001");
        }
        if pending.next().is_some() {
            tracing::warn!("second signal: exiting without waiting");
            std::process::exit(130);
        }
    });
    runtime.join();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
