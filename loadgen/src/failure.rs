//! Why a connection failed or dropped, counted by reason. Whatever the server or the network does
//! ends up as one of these counts, never as a panic.

use std::collections::BTreeMap;
use std::io;

use clarion_protocol::handshake::ClientError;

/// One reason a connection did not reach, or did not stay in, the open state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The server refused the TCP connection (nothing listening?).
    Refused,
    /// The TCP connection was reset, or the socket broke while writing.
    Reset,
    /// Connect plus handshake took longer than `--connect-timeout`.
    Timeout,
    /// No local port left for this (source, destination) pair.
    AddrUnavailable,
    /// No file descriptor left (`RLIMIT_NOFILE` or the system table).
    FdLimit,
    /// No route to the target.
    Unreachable,
    /// Any other socket error.
    OtherIo,
    /// The server answered the upgrade with a status other than 101.
    HttpStatus,
    /// The upgrade answer was not a valid 101 (malformed, no upgrade headers, wrong accept key).
    BadHandshake,
    /// The server closed the TCP connection without a close frame.
    Eof,
    /// The server closed the WebSocket (close frame) while we still used it.
    ClosedByServer,
    /// The server broke the WebSocket protocol.
    Protocol,
    /// A message that is not what the mode expects (no stamp, bad JSON, wrong echo).
    BadPayload,
    /// The server refused a subscription or publish (envelope error, HTTP error status).
    Rejected,
    /// The server stopped reading: our unsent bytes grew past the limit.
    Stalled,
    /// Not established when the measurement began (`--ramp-timeout`).
    RampTimeout,
    /// The TLS handshake failed (a certificate not trusted, no common version) or a record
    /// could not be read.
    Tls,
}

impl Reason {
    /// Every reason, in report order.
    pub const ALL: [Reason; 17] = [
        Reason::Refused,
        Reason::Reset,
        Reason::Timeout,
        Reason::AddrUnavailable,
        Reason::FdLimit,
        Reason::Unreachable,
        Reason::OtherIo,
        Reason::HttpStatus,
        Reason::BadHandshake,
        Reason::Eof,
        Reason::ClosedByServer,
        Reason::Protocol,
        Reason::BadPayload,
        Reason::Rejected,
        Reason::Stalled,
        Reason::RampTimeout,
        Reason::Tls,
    ];

    /// The key in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Refused => "refused",
            Reason::Reset => "reset",
            Reason::Timeout => "timeout",
            Reason::AddrUnavailable => "addr_unavailable",
            Reason::FdLimit => "fd_limit",
            Reason::Unreachable => "unreachable",
            Reason::OtherIo => "other_io",
            Reason::HttpStatus => "http_status",
            Reason::BadHandshake => "bad_handshake",
            Reason::Eof => "eof",
            Reason::ClosedByServer => "closed_by_server",
            Reason::Protocol => "protocol",
            Reason::BadPayload => "bad_payload",
            Reason::Rejected => "rejected",
            Reason::Stalled => "stalled",
            Reason::RampTimeout => "ramp_timeout",
            Reason::Tls => "tls",
        }
    }

    /// What to check when this reason dominates a run.
    pub fn hint(self) -> &'static str {
        match self {
            Reason::Refused => "is the server running and listening on the target address?",
            Reason::Reset => "the server reset connections: check its connection limits and logs",
            Reason::Timeout => {
                "connects or handshakes timed out: the server may be overloaded, or its listen \
                 backlog (net.core.somaxconn) too small for the ramp rate"
            }
            Reason::AddrUnavailable => {
                "out of local ports: add --source-ips, more target URLs, or widen \
                 net.ipv4.ip_local_port_range"
            }
            Reason::FdLimit => {
                "out of file descriptors (RLIMIT_NOFILE): use --private-fd-table or --procs"
            }
            Reason::Unreachable => "no route to the target address",
            Reason::OtherIo => "socket errors: see the failures table",
            Reason::HttpStatus => {
                "the server answered the upgrade with an HTTP error: check the URL path"
            }
            Reason::BadHandshake => "the server does not speak RFC 6455 at this URL",
            Reason::Eof | Reason::ClosedByServer => {
                "the server closed connections: check its limits and logs"
            }
            Reason::Protocol => "the server broke the WebSocket protocol",
            Reason::BadPayload => "the server sent messages this mode cannot read",
            Reason::Rejected => "the server refused the subscriptions or publishes",
            Reason::Stalled => "the server stopped reading",
            Reason::Tls => "TLS failed: for a self-signed server pass --ca (its CA) or --insecure",
            Reason::RampTimeout => {
                "connections were still opening when the measurement began: lower the \
                 connection count, raise --ramp-rate or --ramp-timeout"
            }
        }
    }

    /// The reason for a socket error.
    pub fn of_io(error: &io::Error) -> Reason {
        match error.raw_os_error() {
            Some(libc::ECONNREFUSED) => Reason::Refused,
            Some(libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED) => Reason::Reset,
            Some(libc::ETIMEDOUT) => Reason::Timeout,
            Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => Reason::AddrUnavailable,
            Some(libc::EMFILE | libc::ENFILE) => Reason::FdLimit,
            Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => Reason::Unreachable,
            _ => Reason::OtherIo,
        }
    }

    /// The reason for a refused upgrade.
    pub fn of_handshake(error: ClientError) -> Reason {
        match error {
            ClientError::Status(_) => Reason::HttpStatus,
            ClientError::Malformed
            | ClientError::MissingUpgrade
            | ClientError::BadAccept
            | ClientError::BadExtension => Reason::BadHandshake,
        }
    }

    /// Whether dialing again may help (connect-phase errors only).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Reason::Refused
                | Reason::Reset
                | Reason::Timeout
                | Reason::AddrUnavailable
                | Reason::FdLimit
                | Reason::Unreachable
                | Reason::OtherIo
        )
    }
}

/// A count per reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failures([u64; Reason::ALL.len()]);

impl Failures {
    /// Counts one more.
    pub fn add(&mut self, reason: Reason) {
        self.0[reason as usize] += 1;
    }

    /// All together.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The most frequent reason, if any.
    pub fn dominant(&self) -> Option<Reason> {
        Reason::ALL
            .into_iter()
            .filter(|r| self.0[*r as usize] > 0)
            .max_by_key(|r| self.0[*r as usize])
    }

    /// Adds another count in.
    pub fn merge(&mut self, other: &Failures) {
        self.0.iter_mut().zip(other.0).for_each(|(a, b)| *a += b);
    }

    /// The reasons that occurred, with their counts, in report order.
    pub fn nonzero(&self) -> impl Iterator<Item = (Reason, u64)> + '_ {
        Reason::ALL
            .into_iter()
            .map(|r| (r, self.0[r as usize]))
            .filter(|(_, n)| *n > 0)
    }
}

impl serde::Serialize for Failures {
    /// Every reason as a key, zeros included, so the keys are stable.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let map: BTreeMap<&str, u64> = Reason::ALL
            .into_iter()
            .map(|r| (r.name(), self.0[r as usize]))
            .collect();
        map.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Failures {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, u64>::deserialize(deserializer)?;
        let mut failures = Failures::default();
        for reason in Reason::ALL {
            failures.0[reason as usize] = map.get(reason.name()).copied().unwrap_or(0);
        }
        Ok(failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_errors_map_to_reasons() {
        let of = |errno| Reason::of_io(&io::Error::from_raw_os_error(errno));
        assert_eq!(of(libc::ECONNREFUSED), Reason::Refused);
        assert_eq!(of(libc::EADDRNOTAVAIL), Reason::AddrUnavailable);
        assert_eq!(of(libc::EMFILE), Reason::FdLimit);
        assert_eq!(of(libc::EIO), Reason::OtherIo);
        assert_eq!(
            Reason::of_handshake(ClientError::Status(404)),
            Reason::HttpStatus
        );
    }

    #[test]
    fn counts_merge_and_serialize_with_every_key() {
        let mut a = Failures::default();
        a.add(Reason::Refused);
        let mut b = Failures::default();
        b.add(Reason::Refused);
        b.add(Reason::Eof);
        a.merge(&b);
        assert_eq!(a.total(), 3);
        assert_eq!(a.dominant(), Some(Reason::Refused));
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json.as_object().unwrap().len(), Reason::ALL.len());
        assert_eq!(json["refused"], 2);
        let back: Failures = serde_json::from_value(json).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn names_are_unique_and_indices_match() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i);
        }
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
    }
}
