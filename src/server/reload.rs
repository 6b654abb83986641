//! Reload on SIGHUP: the config file, the environment and the secret files are read again with
//! the flags of the command line, checked whole, and what may change while the server runs is
//! applied without dropping a connection: the keys of [`RELOADABLE`], `log_level`, and the TLS
//! certificate (read again from its files at every reload, for new handshakes; open connections
//! keep theirs). A changed key that needs a restart is named, not applied; a config that does
//! not load or validate, or a certificate that does not load, is refused whole and the running
//! one stays.
//!
//! The reactors pick the new settings up through their cached copies ([`super::live`]).

use std::ffi::OsString;
use std::sync::Arc;

use clarion_engine::tls::ReloadableCert;

use super::config::{Settings, keys};
use super::logging::Logging;
use super::sources::{Layer, Sources, changed};
use super::state::{RELOADABLE, Server};

/// The key that sets the log filter (applied by the reloader, not the server).
const LOG_LEVEL: &str = "log_level";
/// The per-IP cap: live only while it stays on (see [`RELOADABLE`]).
const PER_IP: &str = "max_connections_per_ip";
/// The TLS certificate's files: live while TLS is on (turning it on or off needs a restart).
const TLS_FILES: [&str; 2] = ["tls.cert", "tls.key"];

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Keys whose new values are in force.
    pub applied: Vec<String>,
    /// Keys whose new values differ from the running ones and need a restart.
    pub restart: Vec<String>,
}

/// Whether `key` applies at run time.
pub fn is_live(key: &str) -> bool {
    key == LOG_LEVEL || RELOADABLE.contains(&key) || TLS_FILES.contains(&key)
}

/// Splits the changed keys: `since_applied` (against the last applied keys) for what to apply,
/// `since_start` (against the keys the process started with) for what needs a restart, which
/// is named at every reload until the process restarts. `per_ip_counted`: the per-IP cap
/// was on at start; `per_ip_on`: the new settings set one; `tls`: TLS was on at start and the
/// new settings keep it on.
fn plan(
    since_applied: Vec<String>,
    since_start: Vec<String>,
    per_ip_counted: bool,
    per_ip_on: bool,
    tls: bool,
) -> Outcome {
    let per_ip_live = per_ip_counted || !per_ip_on;
    let live = |key: &String| {
        is_live(key)
            && (key != PER_IP || per_ip_live)
            && (!TLS_FILES.contains(&key.as_str()) || tls)
    };
    let applied = since_applied.into_iter().filter(live).collect();
    let restart = since_start.into_iter().filter(|key| !live(key)).collect();
    Outcome { applied, restart }
}

/// Reloads the running server's settings.
pub struct Reloader {
    sources: Sources,
    /// The keys the process started with.
    started: Layer,
    /// The keys last applied.
    applied: Layer,
    server: Arc<Server>,
    logging: Option<Logging>,
    /// The listener's certificate, when it serves TLS.
    tls: Option<Arc<ReloadableCert>>,
}

impl Reloader {
    /// A reloader for `server`, which started with `layer` read from `sources`; `logging`, if
    /// given, gets the new log level; `tls`, if the listener serves TLS, the certificate read
    /// again.
    pub fn new(
        sources: Sources,
        layer: Layer,
        server: Arc<Server>,
        logging: Option<Logging>,
        tls: Option<Arc<ReloadableCert>>,
    ) -> Reloader {
        Reloader {
            sources,
            started: layer.clone(),
            applied: layer,
            server,
            logging,
            tls,
        }
    }

    /// Reads the sources again with the environment `vars` and applies what may change at run
    /// time. On an error nothing is applied.
    pub fn reload(
        &mut self,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Outcome, String> {
        let loaded = Settings::load(&self.sources, vars)?;
        let since_applied = changed(keys(), self.applied.table(), loaded.layer.table());
        let since_start = changed(keys(), self.started.table(), loaded.layer.table());
        let app = loaded.settings.app_config();
        // The certificate is read first: one that does not load refuses the reload whole.
        let certificate = match (&self.tls, loaded.settings.tls_files()?) {
            (Some(_), Some((cert, key))) => Some(super::tls::load(&cert, &key)?),
            _ => None,
        };
        let outcome = plan(
            since_applied,
            since_start,
            self.server.counts_ips(),
            app.max_connections_per_ip != 0,
            certificate.is_some(),
        );
        // Then the rest that can fail, as it reads the token key again: if that fails, nothing
        // is applied.
        self.server.reload(&app)?;
        if let (Some(tls), Some(certificate)) = (&self.tls, certificate) {
            tls.replace(certificate);
            tracing::info!("TLS certificate read again: new handshakes use it");
        }
        if outcome.applied.iter().any(|key| key == LOG_LEVEL)
            && let Some(logging) = &self.logging
        {
            // Validated with the settings: this cannot fail.
            logging.set_level(&loaded.settings.log_level())?;
        }
        self.applied = loaded.layer;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn live_keys_apply_and_the_rest_wait_for_a_restart() {
        let outcome = plan(
            keys(&["api_key", "log_level", "max_connections"]),
            keys(&[
                "api_key",
                "listen",
                "log_level",
                "max_connections",
                "threads",
            ]),
            false,
            false,
            false,
        );
        assert_eq!(outcome.applied, ["api_key", "log_level", "max_connections"]);
        assert_eq!(outcome.restart, ["listen", "threads"]);
        // The admin key and where monitoring is served change live; the admin port does not.
        let admin = || keys(&["admin_key", "admin_listen", "public_metrics"]);
        let outcome = plan(admin(), admin(), false, false, false);
        assert_eq!(outcome.applied, ["admin_key", "public_metrics"]);
        assert_eq!(outcome.restart, ["admin_listen"]);
    }

    #[test]
    fn the_per_ip_cap_is_live_only_while_it_was_on_from_the_start() {
        let changed = || keys(&["max_connections_per_ip"]);
        // Counted from the start: any new value applies.
        assert_eq!(
            plan(changed(), changed(), true, true, false).applied,
            changed()
        );
        assert_eq!(
            plan(changed(), changed(), true, false, false).applied,
            changed()
        );
        // Not counted: turning it on needs a restart.
        let on = plan(changed(), changed(), false, true, false);
        assert!(on.applied.is_empty());
        assert_eq!(on.restart, changed());
    }

    #[test]
    fn new_certificate_files_apply_only_while_tls_stays_on() {
        let changed = || keys(&["tls.cert", "tls.key"]);
        assert_eq!(
            plan(changed(), changed(), false, false, true).applied,
            changed()
        );
        let off = plan(changed(), changed(), false, false, false);
        assert!(off.applied.is_empty());
        assert_eq!(off.restart, changed());
    }

    #[test]
    fn every_live_key_is_a_key() {
        for key in RELOADABLE.iter().chain([&LOG_LEVEL]) {
            assert!(
                super::keys().iter().any(|k| k.path == *key),
                "{key} is not a config key"
            );
        }
    }
}
