//! `clarion`: the command line. Reads the settings (flags, environment, config file), starts the
//! reactors, tells systemd, reloads on SIGHUP and turns SIGINT/SIGTERM into a graceful drain.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser, Subcommand};
use clarion::server::config::{self, Settings};
use clarion::server::logging::Logging;
use clarion::server::reload::Reloader;
use clarion::server::sources::Sources;
use clarion::server::systemd::{self, Notifier, Watchdog};
use clarion::server::{self, state::Server};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
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
    /// Run the server (WebSocket routes /t/<topic>, /ws, /echo; HTTP /publish, /healthz; on the
    /// admin listener /metrics, /stats, /topics/<topic>, /healthz, /readyz, /dashboard).
    Serve(Settings),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let Some(("serve", flags)) = matches.subcommand() else {
        unreachable!("clap requires the one subcommand");
    };
    // First, so that no signal finds its default action (SIGHUP's kills): one that comes
    // while the server starts is handled once it runs.
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("clarion: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let fd_limit = clarion_host::raise_fd_limit();
    let loaded = Sources::new(config::keys(), flags, std::env::vars_os()).and_then(|sources| {
        Settings::load(&sources, std::env::vars_os()).map(|loaded| (sources, loaded))
    });
    let (sources, loaded) = match loaded {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("clarion: {message}");
            return ExitCode::from(2);
        }
    };
    let settings = &loaded.settings;
    let format = settings.log_format.unwrap_or_default();
    let logging = match Logging::init(format, &settings.log_level()) {
        Ok(logging) => logging,
        Err(message) => {
            eprintln!("clarion: cannot set up logging: {message}");
            return ExitCode::FAILURE;
        }
    };
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let fd_limit = fd_limit.unwrap_or_else(|e| {
        tracing::warn!("cannot raise RLIMIT_NOFILE: {e}");
        clarion_host::fd_limit()
    });
    let notifier = Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!("cannot use NOTIFY_SOCKET: {e}");
        None
    });
    let mut config = settings.reactor_config();
    let tls = match settings.tls_config() {
        Ok(tls) => tls,
        Err(message) => {
            eprintln!("clarion: {message}");
            return ExitCode::from(2);
        }
    };
    let certificate = tls.as_ref().map(|(_, cert)| cert.clone());
    config.tls = tls.map(|(tls, _)| tls);
    let app = settings.app_config();
    let open_publishing = app.open_publishing();
    let open_admin = app.admin_key.is_none();
    let max_connections = app.max_connections;
    // Before the reactors bind these addresses themselves.
    let taken: Vec<_> = [Some(config.listen), app.admin_listen]
        .into_iter()
        .flatten()
        .filter(|&addr| server::host::port_taken(addr))
        .collect();
    let running = match server::launch(config.clone(), app) {
        Ok(running) => running,
        Err(e) => {
            eprintln!("clarion: cannot start on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let admin = running.admin_addr();
    let runtime = running.runtime;
    let listening = format!(
        "listening on {}{} with {} reactors ({:?}; RLIMIT_NOFILE {fd_limit})",
        runtime.local_addr(),
        if certificate.is_some() { " (TLS)" } else { "" },
        config.threads,
        runtime.io()
    );
    tracing::info!("{listening}");
    if let Some(admin) = admin {
        tracing::info!(
            "admin listener on {admin}: /metrics, /stats, /topics/<topic>, /healthz, /readyz; \
             dashboard at http://{admin}/dashboard"
        );
        if open_admin && !admin.ip().is_loopback() {
            tracing::warn!(
                "no admin_key: the admin routes on {admin} are open to anyone who can connect"
            );
        }
    }
    if open_publishing {
        // Beyond loopback this needed --insecure (or the start was refused).
        tracing::warn!(
            "publishing is open to anyone who can connect (no api_key, or client_publish = all \
             without auth)"
        );
    }
    for addr in taken {
        tracing::warn!(
            "another process listens on {addr} too: the kernel splits its connections between \
             the two (SO_REUSEPORT); give each process its own port"
        );
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
    let notifier = notifier.map(Arc::new);
    notify(&notifier, |n| n.ready(&listening));
    let draining = Arc::new(AtomicBool::new(false));
    spawn_housekeeping(running.server.clone(), notifier.clone(), draining.clone());
    let server = running.server.clone();
    let drain_server = running.server.clone();
    let drain_started = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let mut reloader = Reloader::new(
        sources,
        loaded.layer,
        running.server,
        Some(logging),
        certificate,
    );
    let shutdown = runtime.shutdown_handle();
    let drain_clock = drain_started.clone();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal == SIGHUP && draining.load(Ordering::SeqCst) {
                tracing::info!("draining: SIGHUP ignored");
            } else if signal == SIGHUP {
                notify(&notifier, |n| n.reloading());
                reload(&mut reloader);
                notify(&notifier, |n| n.ready(&listening));
            } else if !draining.swap(true, Ordering::SeqCst) {
                notify(&notifier, |n| n.stopping());
                *drain_clock.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                drain_server.set_draining();
                shutdown.shutdown();
                tracing::info!(signal, "draining: closing connections with 1001");
            } else {
                tracing::warn!("second signal: exiting without waiting");
                std::process::exit(130);
            }
        }
    });
    runtime.join();
    // Publishes acknowledged to clients but not yet taken by Redis: sent within what is left
    // of the drain timeout, the rest counted and logged.
    let started = *drain_started.lock().unwrap_or_else(|e| e.into_inner());
    let deadline = started.unwrap_or_else(Instant::now) + config.drain_timeout;
    server.finish(deadline);
    let failed = runtime.failed();
    if failed > 0 {
        tracing::error!("stopped: {failed} reactor(s) had failed");
        return ExitCode::FAILURE;
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// SIGHUP: applies what may change at run time and says what needs a restart.
fn reload(reloader: &mut Reloader) {
    match reloader.reload(std::env::vars_os()) {
        Err(message) => tracing::error!("reload refused, the running config stays: {message}"),
        Ok(outcome) => {
            if outcome.applied.is_empty() {
                tracing::info!("reloaded: nothing to apply");
            } else {
                tracing::info!("reloaded: applied {}", outcome.applied.join(", "));
            }
            if !outcome.restart.is_empty() {
                tracing::warn!(
                    "reload: changed but applied only after a restart: {}",
                    outcome.restart.join(", ")
                );
            }
        }
    }
}

/// Sends a notification to systemd, if it listens; a failure is logged, never fatal.
fn notify(notifier: &Option<Arc<Notifier>>, send: impl FnOnce(&Notifier) -> std::io::Result<()>) {
    if let Some(notifier) = notifier
        && let Err(e) = send(notifier)
    {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// Once a second (more often under a short systemd watchdog), the count of refusals not
/// logged; every half of `WATCHDOG_USEC`, the watchdog's round (retried each tick while a
/// reactor has not answered).
fn spawn_housekeeping(
    server: Arc<Server>,
    notifier: Option<Arc<Notifier>>,
    draining: Arc<AtomicBool>,
) {
    let interval = systemd::watchdog_interval(
        std::env::var_os("WATCHDOG_USEC").as_deref(),
        std::env::var_os("WATCHDOG_PID").as_deref(),
    )
    .filter(|_| notifier.is_some());
    let tick = interval.map_or(Duration::from_secs(1), |i| i.min(Duration::from_secs(1)));
    let mut watchdog = Watchdog::default();
    let mut next_ping = Instant::now();
    let spawned = std::thread::Builder::new()
        .name("housekeeping".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                server.refusals.flush();
                if let Some(interval) = interval
                    && Instant::now() >= next_ping
                    && watchdog.tick(&server, draining.load(Ordering::SeqCst))
                {
                    notify(&notifier, |n| n.watchdog());
                    next_ping = Instant::now() + interval;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(
            "cannot start the housekeeping thread (no watchdog, no refusal counts): {e}"
        );
    }
}
