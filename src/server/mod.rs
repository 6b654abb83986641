//! The push server: the application on top of the reactors, and its configuration.
//!
//! Only this layer reads the command line, config files and the environment; it turns them into
//! plain values for the layers below.

pub mod app;
pub mod auth;
pub mod config;
pub mod cors;
pub mod dashboard;
pub mod envelope;
pub mod forwarded;
pub mod host;
pub mod http;
pub mod keys;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod refusals;
pub mod reload;
pub mod sources;
pub mod state;
pub mod stream;
pub mod systemd;
pub mod tls;

use std::io;
use std::sync::{Arc, OnceLock};

use clarion_engine::Runtime;
use clarion_pubsub::MAX_REACTORS;
pub use state::AppConfig;

/// The engine's listener that [`AppConfig::admin_listen`] becomes (listener 0 is the public
/// one).
pub const ADMIN_LISTENER: usize = 1;

/// A started server: its reactors, and the state they share (what reloads and the service
/// watchdog reach).
pub struct Running {
    /// The reactors.
    pub runtime: Runtime,
    /// Their shared state.
    pub server: Arc<state::Server>,
}

impl Running {
    /// Where the admin listener listens (with the real port when 0 was asked for), if there is
    /// one.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.runtime.local_addrs().get(ADMIN_LISTENER).copied()
    }
}

/// Starts the server's reactors with the application settings `app` (and the admin listener it
/// names: `runtime.local_addrs()[ADMIN_LISTENER]`).
pub fn start(config: clarion_engine::Config, app: AppConfig) -> io::Result<Runtime> {
    launch(config, app).map(|running| running.runtime)
}

/// [`start`], keeping a handle on the shared state.
pub fn launch(config: clarion_engine::Config, app: AppConfig) -> io::Result<Running> {
    launch_with(config, app, |app| app)
}

/// [`launch`] with each reactor's [`app::App`] handed to `wrap`, whose handler the reactor runs:
/// for a program that puts routes of its own in front of the push server's and passes the rest
/// on (`examples/ticker.rs` serves a page and the client library this way).
pub fn launch_with<H, W>(
    mut config: clarion_engine::Config,
    app: AppConfig,
    wrap: W,
) -> io::Result<Running>
where
    H: clarion_engine::Handler<Inbox = clarion_pubsub::Post> + 'static,
    W: Fn(app::App) -> H + Send + Sync + 'static,
{
    let invalid = |message: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, message));
    if config.threads > MAX_REACTORS {
        return invalid("the push server runs at most 64 reactors");
    }
    if let Err(message) = app.check() {
        return invalid(&message);
    }
    if let Err(message) = app.check_exposure(config.listen) {
        return invalid(&message);
    }
    // The limits that may change at run time are the application's settings.
    config.limits = app.engine_limits();
    if let Some(cluster) = &app.cluster
        && let Err(message) = crate::cluster::check(cluster)
    {
        return invalid(&message);
    }
    // Per-IP caps and trusted proxies need each connection's address, which io_uring's
    // multishot accept lacks (the engine asks for it itself for the PROXY protocol).
    config.uring.peer_addresses |=
        app.max_connections_per_ip != 0 || !app.trusted_proxies.is_empty();
    // The engine believes the same proxies' PROXY protocol headers.
    config.trusted_proxies = app.trusted_proxies.clone();
    // The admin listener is the engine's listener 1, served by every reactor.
    config.also_listen = app.admin_listen.into_iter().collect();
    let admin = app.admin_listen.is_some();
    // The first reactor to start builds the shared state, from the inboxes the runtime made.
    let built = Arc::new(OnceLock::new());
    let server = built.clone();
    let runtime = Runtime::start(config, move |index, shared| {
        // The URL and the token key were checked above: spawning the bridge's threads, or a
        // key file changed since, is what can fail here.
        let server = server.get_or_init(|| state::Server::new(app.clone(), shared).map(Arc::new));
        let server = server
            .as_ref()
            .map_err(|e| io::Error::other(format!("cannot start: {e}")))?;
        // `threads` was checked against the hub's limit above.
        app::App::new(server.clone(), index)
            .map(&wrap)
            .map_err(|e| io::Error::other(e.to_string()))
    })?;
    // Every reactor has started, so the first one built the state.
    let server = built
        .get()
        .and_then(|server| server.as_ref().ok())
        .cloned()
        .ok_or_else(|| io::Error::other("the reactors started without their shared state"))?;
    if admin {
        dashboard::spawn(Arc::downgrade(&server))?;
    }
    Ok(Running { runtime, server })
}
