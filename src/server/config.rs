//! Settings: command-line flags over an optional TOML file over defaults.
//!
//! Every flag of `clarion serve` has a TOML key of the same name (with `_` for `-`); a flag
//! given on the command line wins. Sizes are in bytes, durations are written `500ms`, `10s`,
//! `2m` or `1h`; `0` turns an optional timer off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::protocol;
use crate::reactor;

/// The `--io` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoChoice {
    /// io_uring if available, else epoll.
    Auto,
    /// epoll.
    Epoll,
    /// io_uring; fail if unavailable.
    Uring,
}

/// `clarion serve` flags; each overrides the config file's key of the same name.
#[derive(Args, Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// TOML config file (keys as these flags, with `_` for `-`).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:9001]. Use 0.0.0.0:9001 (or [::]:9001) for
    /// all interfaces.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,

    /// Event-loop backend: io_uring where the kernel allows it (auto), or one of them
    /// [default: auto].
    #[arg(long, value_enum)]
    pub io: Option<IoChoice>,

    /// io_uring: fixed-file slots per reactor, i.e. the most connections one reactor holds
    /// [default: the soft RLIMIT_NOFILE after raising it to the hard limit].
    #[arg(long, value_name = "N")]
    pub uring_files: Option<u32>,

    /// io_uring: provided receive buffers per reactor, a power of two [default: 512].
    #[arg(long, value_name = "N")]
    pub uring_buffers: Option<u16>,

    /// io_uring: bytes per provided receive buffer [default: 16384].
    #[arg(long, value_name = "BYTES")]
    pub uring_buffer_size: Option<u32>,

    /// Reactor threads, one per core [default: available cores]. More than the cores is
    /// allowed (with io_uring each reactor adds a fixed-file table).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Do not pin reactor threads to cores.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub no_pin: Option<bool>,

    /// listen(2) backlog of each reactor's listener [default: 4096].
    #[arg(long, value_name = "N")]
    pub backlog: Option<i32>,

    /// Most connections per reactor; more are refused at accept [default: 1048576].
    #[arg(long, value_name = "N")]
    pub max_connections_per_reactor: Option<usize>,

    /// Largest frame payload in bytes; larger closes with 1009 [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    pub max_frame_size: Option<u64>,

    /// Largest message in bytes, fragments together; larger closes with 1009 [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    pub max_message_size: Option<u64>,

    /// Largest HTTP request head in bytes; larger gets 431 [default: 8192].
    #[arg(long, value_name = "BYTES")]
    pub max_head_size: Option<usize>,

    /// Most HTTP request headers; more gets 431 [default: 64, at most 100].
    #[arg(long, value_name = "N")]
    pub max_headers: Option<usize>,

    /// Largest plain HTTP request body in bytes (the publish API); larger gets 413
    /// [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub max_body_size: Option<usize>,

    /// Time a new connection has to send its request head [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub handshake_timeout: Option<Duration>,

    /// Ping a peer after this long without hearing from it; 0 = never [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub ping_interval: Option<Duration>,

    /// After a ping, time the peer has to answer before the connection is dropped [default: 15s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub pong_timeout: Option<Duration>,

    /// Close (1001) after this long without hearing from the peer; 0 = never [default: 0].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub idle_timeout: Option<Duration>,

    /// Time the peer has to answer our close frame [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub close_timeout: Option<Duration>,

    /// On SIGINT/SIGTERM, time connections get to close before the process exits [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub drain_timeout: Option<Duration>,

    /// Bytes of each reactor's shared read buffer [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub read_buffer_size: Option<usize>,
}

impl Settings {
    /// The flags, over the config file they name (if any).
    pub fn resolve(flags: Settings) -> Result<Settings, String> {
        let Some(path) = flags.config.clone() else {
            return Self::validated(flags);
        };
        let file = Self::from_file(&path)?;
        Self::validated(flags.over(file))
    }

    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Settings, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))
    }

    /// `self`'s values where set, else `base`'s.
    fn over(self, base: Settings) -> Settings {
        macro_rules! pick {
            ($($field:ident),*) => { Settings { config: self.config, $($field: self.$field.or(base.$field)),* } };
        }
        pick!(
            listen,
            io,
            uring_files,
            uring_buffers,
            uring_buffer_size,
            threads,
            no_pin,
            backlog,
            max_connections_per_reactor,
            max_frame_size,
            max_message_size,
            max_head_size,
            max_headers,
            max_body_size,
            handshake_timeout,
            ping_interval,
            pong_timeout,
            idle_timeout,
            close_timeout,
            drain_timeout,
            read_buffer_size
        )
    }

    fn validated(settings: Settings) -> Result<Settings, String> {
        let config = settings.reactor_config();
        let p = &config.protocol;
        let checks = [
            (config.threads == 0, "threads must be at least 1"),
            (config.threads > 1024, "threads must be at most 1024"),
            (
                config.max_connections_per_reactor == 0,
                "max_connections_per_reactor must be at least 1",
            ),
            (
                p.max_frame_size == 0 || p.max_message_size == 0,
                "max_frame_size and max_message_size must be at least 1",
            ),
            (
                p.max_message_size > u32::MAX as u64,
                "max_message_size must be below 4 GiB",
            ),
            (p.max_head_size < 256, "max_head_size must be at least 256"),
            (
                p.max_headers == 0 || p.max_headers > protocol::handshake::MAX_HEADERS_CAP,
                "max_headers must be 1 to 100",
            ),
            (
                p.handshake_timeout.is_zero()
                    || p.pong_timeout.is_zero()
                    || p.close_timeout.is_zero(),
                "handshake_timeout, pong_timeout and close_timeout must be above 0",
            ),
            (
                config.read_buffer_size < 4096,
                "read_buffer_size must be at least 4096",
            ),
            (config.backlog < 1, "backlog must be at least 1"),
            (
                !config.uring.buffers.is_power_of_two() || config.uring.buffers > 32768,
                "uring_buffers must be a power of two up to 32768",
            ),
            (
                config.uring.buffer_size < 1024,
                "uring_buffer_size must be at least 1024",
            ),
            (config.uring.files == 0, "uring_files must be at least 1"),
        ];
        match checks.iter().find(|(bad, _)| *bad) {
            Some((_, message)) => Err((*message).to_owned()),
            None => Ok(settings),
        }
    }

    /// The engine configuration these settings describe (defaults where unset).
    pub fn reactor_config(&self) -> reactor::Config {
        let d = reactor::Config::default();
        let p = protocol::Config::default();
        let optional = |value: Option<Duration>, default| match value {
            Some(Duration::ZERO) => None,
            Some(v) => Some(v),
            None => default,
        };
        let max_connections_per_reactor = self
            .max_connections_per_reactor
            .unwrap_or(d.max_connections_per_reactor);
        let default_files = fd_limit()
            .min(max_connections_per_reactor as u64)
            .min(u32::MAX as u64) as u32;
        reactor::Config {
            listen: self.listen.unwrap_or(d.listen),
            io: match self.io.unwrap_or(IoChoice::Auto) {
                IoChoice::Auto => reactor::Io::Auto,
                IoChoice::Epoll => reactor::Io::Epoll,
                IoChoice::Uring => reactor::Io::Uring,
            },
            uring: reactor::UringConfig {
                entries: d.uring.entries,
                files: self.uring_files.unwrap_or(default_files),
                buffers: self.uring_buffers.unwrap_or(d.uring.buffers),
                buffer_size: self.uring_buffer_size.unwrap_or(d.uring.buffer_size),
            },
            threads: self.threads.unwrap_or(d.threads),
            pin_threads: !self.no_pin.unwrap_or(false),
            backlog: self.backlog.unwrap_or(d.backlog),
            max_connections_per_reactor: self
                .max_connections_per_reactor
                .unwrap_or(d.max_connections_per_reactor),
            read_buffer_size: self.read_buffer_size.unwrap_or(d.read_buffer_size),
            drain_timeout: self.drain_timeout.unwrap_or(d.drain_timeout),
            protocol: protocol::Config {
                max_frame_size: self.max_frame_size.unwrap_or(p.max_frame_size),
                max_message_size: self.max_message_size.unwrap_or(p.max_message_size),
                max_head_size: self.max_head_size.unwrap_or(p.max_head_size),
                max_headers: self.max_headers.unwrap_or(p.max_headers),
                max_body_size: self.max_body_size.unwrap_or(p.max_body_size),
                handshake_timeout: self.handshake_timeout.unwrap_or(p.handshake_timeout),
                ping_interval: optional(self.ping_interval, p.ping_interval),
                pong_timeout: self.pong_timeout.unwrap_or(p.pong_timeout),
                idle_timeout: optional(self.idle_timeout, p.idle_timeout),
                close_timeout: self.close_timeout.unwrap_or(p.close_timeout),
            },
        }
    }
}

/// The soft `RLIMIT_NOFILE`, which also caps an io_uring fixed-file table.
fn fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (epoll sockets and io_uring tables are
/// both bounded by it); returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    fd_limit()
}

/// Parses `250ms`, `10s`, `2m`, `1h` or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?} (use e.g. 500ms, 10s, 2m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        "" if n == 0 => Ok(Duration::ZERO),
        _ => Err(format!(
            "invalid duration {text:?} (use e.g. 500ms, 10s, 2m)"
        )),
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(de)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1.5s").is_err());
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let file: Settings = toml::from_str(
            "threads = 3\nping_interval = \"0\"\nmax_frame_size = 1000\nlisten = \"0.0.0.0:80\"",
        )
        .unwrap();
        let flags = Settings {
            threads: Some(5),
            ..Settings::default()
        };
        let config = flags.over(file).reactor_config();
        assert_eq!(config.threads, 5);
        assert_eq!(config.listen, "0.0.0.0:80".parse().unwrap());
        assert_eq!(config.protocol.max_frame_size, 1000);
        assert_eq!(config.protocol.ping_interval, None);
        assert_eq!(config.protocol.close_timeout, Duration::from_secs(5));
    }

    #[test]
    fn the_shipped_example_is_valid_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/clarion.toml");
        let example = Settings::resolve(Settings {
            config: Some(path),
            ..Settings::default()
        })
        .unwrap();
        let mut config = example.reactor_config();
        let defaults = reactor::Config::default();
        // Host-dependent defaults: the core count and the fd limit.
        config.threads = defaults.threads;
        config.uring.files = defaults.uring.files;
        assert_eq!(format!("{config:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn bad_files_and_values_are_reported() {
        assert!(
            toml::from_str::<Settings>("thread = 3")
                .unwrap_err()
                .to_string()
                .contains("unknown field")
        );
        assert!(toml::from_str::<Settings>("close_timeout = \"soon\"").is_err());
        let zero = Settings {
            threads: Some(0),
            ..Settings::default()
        };
        assert_eq!(
            Settings::resolve(zero).unwrap_err(),
            "threads must be at least 1"
        );
        let missing = Settings {
            config: Some("/nonexistent.toml".into()),
            ..Settings::default()
        };
        assert!(
            Settings::resolve(missing)
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
