//! systemd service notifications (`Type=notify`), sent as datagrams to `$NOTIFY_SOCKET` on a
//! plain Unix socket (the protocol of `sd_notify(3)`; no libsystemd): `READY=1` once the
//! listeners are bound, `RELOADING=1` and `READY=1` around a reload, `STOPPING=1` when the
//! drain begins, and `WATCHDOG=1` while every reactor answers its liveness probes (see
//! [`Watchdog`]). Without `$NOTIFY_SOCKET` (not started by systemd) there is nothing to do.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use super::state::Server;

/// The socket systemd listens on, from `$NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: SocketAddr,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` names (a path, or `@name` for an abstract socket), if set.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(path) if !path.is_empty() => Notifier::new(&path).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier that sends to the socket at `path` (`@name`: abstract).
    pub fn new(path: &OsStr) -> io::Result<Notifier> {
        let target = match path.as_bytes().strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(path)?,
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            target,
        })
    }

    /// Sends `state`: newline-separated `KEY=value` assignments.
    pub fn send(&self, state: &str) -> io::Result<()> {
        self.socket
            .send_to_addr(state.as_bytes(), &self.target)
            .map(drop)
    }

    /// The service is up; `status` is shown by `systemctl status`.
    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.send(&format!("READY=1\nSTATUS={status}"))
    }

    /// A reload begins (finish it with [`Notifier::ready`]). The monotonic time lets
    /// `Type=notify-reload` match the notification to its signal.
    pub fn reloading(&self) -> io::Result<()> {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
    }

    /// The drain begins.
    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1\nSTATUS=draining")
    }

    /// The service is alive.
    pub fn watchdog(&self) -> io::Result<()> {
        self.send("WATCHDOG=1")
    }
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares with.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, as `sd_watchdog_enabled(3)`
/// advises, if it is set and `$WATCHDOG_PID` (when set) is this process.
pub fn watchdog_interval(usec: Option<&OsStr>, pid: Option<&OsStr>) -> Option<Duration> {
    let for_us = pid.is_none_or(|pid| pid.to_str() == Some(&std::process::id().to_string()));
    let usec: u64 = usec?.to_str()?.parse().ok()?;
    (for_us && usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// The service watchdog, wired to the reactors: every interval it posts a numbered probe to
/// each reactor's inbox, and it sends `WATCHDOG=1` only once every reactor has answered the
/// previous probe. So a reactor stuck in a callback, deadlocked or spinning without reaching
/// its inbox stops the notifications, and systemd restarts the service after `WatchdogSec`.
/// It does not prove that the listeners accept or that the cluster link is up.
#[derive(Debug, Default)]
pub struct Watchdog {
    round: u64,
    /// Whether the missing answer was logged already.
    warned: bool,
}

impl Watchdog {
    /// One tick: `true` if every reactor answered the last probe (then a new one is posted).
    /// While draining (`draining`), reactors exit, and the drain has its own timeout: always
    /// `true`.
    pub fn tick(&mut self, server: &Server, draining: bool) -> bool {
        if draining {
            return true;
        }
        if !server.all_answered(self.round) {
            if !self.warned {
                tracing::warn!(
                    round = self.round,
                    "a reactor has not answered the watchdog's probe: not notifying systemd"
                );
                self.warned = true;
            }
            return false;
        }
        if self.warned {
            tracing::info!("every reactor answers the watchdog's probes again");
            self.warned = false;
        }
        self.round += 1;
        server.probe(self.round);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket() {
        let dir = std::env::temp_dir().join(format!("clarion-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let systemd = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(path.as_os_str()).unwrap();
        let mut buffer = [0u8; 256];
        let mut received = || {
            let n = systemd.recv(&mut buffer).unwrap();
            String::from_utf8_lossy(&buffer[..n]).into_owned()
        };
        notifier.ready("listening").unwrap();
        assert_eq!(received(), "READY=1\nSTATUS=listening");
        notifier.reloading().unwrap();
        let reloading = received();
        let usec = reloading
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap();
        assert!(usec.parse::<u64>().unwrap() > 0);
        notifier.watchdog().unwrap();
        assert_eq!(received(), "WATCHDOG=1");
        notifier.stopping().unwrap();
        assert_eq!(received(), "STOPPING=1\nSTATUS=draining");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn abstract_sockets_are_named_with_an_at() {
        let name = format!("clarion-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier::new(OsStr::new(&format!("@{name}"))).unwrap();
        notifier.watchdog().unwrap();
        let mut buffer = [0u8; 64];
        let n = systemd.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"WATCHDOG=1");
    }

    #[test]
    fn the_watchdog_interval_is_half_of_watchdog_usec_for_this_process() {
        let usec = Some(OsStr::new("10000000"));
        let half = Some(Duration::from_secs(5));
        assert_eq!(watchdog_interval(usec, None), half);
        let me = std::process::id().to_string();
        assert_eq!(watchdog_interval(usec, Some(OsStr::new(&me))), half);
        assert_eq!(watchdog_interval(usec, Some(OsStr::new("1"))), None);
        assert_eq!(watchdog_interval(None, None), None);
        assert_eq!(watchdog_interval(Some(OsStr::new("x")), None), None);
        assert_eq!(watchdog_interval(Some(OsStr::new("0")), None), None);
    }
}
