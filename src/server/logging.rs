//! Logging to stderr: plain text (in colour only on a terminal, and not with `NO_COLOR` set) or
//! one JSON object per line, through a level filter that SIGHUP can replace while the server
//! runs.
//!
//! What costs nothing when it is off: a disabled `debug!` or `trace!` is a callsite the filter
//! answered "never" for once, so it neither formats nor takes a lock; the filter is asked again
//! only after a reload.

use std::io::IsTerminal;

use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-01-01T00:00:00.000000Z  INFO clarion: listening on …`.
    #[default]
    Text,
    /// `{"timestamp":…,"level":"INFO","message":…,"target":…}` and the event's fields.
    Json,
}

/// The filter `directives` describe: a level (`info`) or `tracing` directives
/// (`warn,clarion::server=debug`).
pub fn filter(directives: &str) -> Result<EnvFilter, String> {
    if directives.trim().is_empty() {
        return Err("empty log filter".to_owned());
    }
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| e.to_string())
}

/// The installed logger: the way to change its level.
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
}

impl Logging {
    /// Installs the process's logger. `level` must be valid ([`filter`]); fails if a logger is
    /// installed already.
    pub fn init(format: LogFormat, level: &str) -> Result<Logging, String> {
        let (filter, handle) = reload::Layer::new(filter(level)?);
        let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        // A write error would be reported with eprintln!, which panics the logging thread when
        // stderr itself is gone (a closed pipe): lose the log line, keep the thread.
        let text = (format == LogFormat::Text).then(|| {
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .log_internal_errors(false)
        });
        let json = (format == LogFormat::Json).then(|| {
            fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(std::io::stderr)
                .log_internal_errors(false)
        });
        tracing_subscriber::registry()
            .with(filter)
            .with(text)
            .with(json)
            .try_init()
            .map_err(|e| e.to_string())?;
        Ok(Logging { filter: handle })
    }

    /// Replaces the level filter.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        self.filter
            .reload(filter(level)?)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_checked() {
        assert!(filter("info").is_ok());
        assert!(filter("warn,clarion::server=debug").is_ok());
        assert!(filter("").is_err());
        assert!(filter("clarion=loud").is_err());
    }
}
