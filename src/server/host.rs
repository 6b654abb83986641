//! Start-up check of the host against the configuration: warns, with the fix, when the fd
//! limit cannot hold the configured connections, `net.core.somaxconn` caps the backlog or
//! another process listens on a port already. (`scripts/tune-linux.sh check` goes through
//! every setting.)

use std::net::SocketAddr;

use clarion_engine::Io;

/// Whether another process listens on `addr` already (port 0 never is). The reactors bind
/// with `SO_REUSEPORT`, so a second process of the same user on the port would not fail: the
/// kernel would split the port's connections between the two, silently. Probed before the
/// reactors bind, by binding without `SO_REUSEPORT`, which fails while anyone listens there.
pub fn port_taken(addr: SocketAddr) -> bool {
    addr.port() != 0
        && std::net::TcpListener::bind(addr)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
}

/// The warnings for `config` running on `io` with `max_connections` (0 = unlimited) under an
/// fd limit of `fd_limit` and, if known, `somaxconn`.
pub fn warnings(
    config: &clarion_engine::Config,
    io: Io,
    max_connections: usize,
    fd_limit: u64,
    somaxconn: Option<u64>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    // A few descriptors go to listeners, epoll and eventfds.
    let per_table = fd_limit.saturating_sub(16);
    let threads = config.threads as u64;
    let (capacity, fix) = match io {
        Io::Uring => (
            threads * per_table.min(config.uring.files as u64),
            "raise the limit (ulimit -n, LimitNOFILE=) or add reactors (--threads; each holds one fixed-file table)",
        ),
        _ if config.private_fd_table => (
            threads * per_table,
            "raise the limit (ulimit -n, LimitNOFILE=) or add reactors (--threads)",
        ),
        _ => (
            per_table,
            "raise the limit (ulimit -n, LimitNOFILE=), use --private-fd-table, or --io uring",
        ),
    };
    if max_connections as u64 > capacity {
        warnings.push(format!(
            "max_connections {max_connections} exceeds the {capacity} connections RLIMIT_NOFILE {fd_limit} allows on {io:?}: {fix}"
        ));
    }
    if let Some(somaxconn) = somaxconn
        && (config.backlog as u64) > somaxconn
    {
        warnings.push(format!(
            "backlog {} is capped by net.core.somaxconn {somaxconn}: sysctl -w net.core.somaxconn={}",
            config.backlog, config.backlog
        ));
    }
    warnings
}

/// `net.core.somaxconn`, when readable.
pub fn somaxconn() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(threads: usize, private_fd_table: bool, backlog: i32) -> clarion_engine::Config {
        clarion_engine::Config {
            threads,
            private_fd_table,
            backlog,
            ..clarion_engine::Config::default()
        }
    }

    #[test]
    fn a_port_another_socket_listens_on_is_taken() {
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = other.local_addr().unwrap();
        assert!(port_taken(addr));
        assert!(
            !port_taken("127.0.0.1:0".parse().unwrap()),
            "port 0 is never taken"
        );
    }

    #[test]
    fn the_fd_limit_is_per_process_or_per_reactor() {
        let epoll = config(4, false, 128);
        assert!(
            warnings(&epoll, Io::Epoll, 0, 1024, None).is_empty(),
            "no limit configured"
        );
        assert!(warnings(&epoll, Io::Epoll, 1000, 1024, None).is_empty());
        let shared = warnings(&epoll, Io::Epoll, 50_000, 20_000, None);
        assert!(
            shared.len() == 1 && shared[0].contains("--private-fd-table"),
            "{shared:?}"
        );
        // A private table per reactor, or a fixed-file table per ring, multiplies it.
        assert!(warnings(&config(4, true, 128), Io::Epoll, 50_000, 20_000, None).is_empty());
        assert!(warnings(&epoll, Io::Uring, 50_000, 20_000, None).is_empty());
        assert_eq!(warnings(&epoll, Io::Uring, 100_000, 20_000, None).len(), 1);
    }

    #[test]
    fn a_backlog_above_somaxconn_is_reported() {
        assert!(warnings(&config(1, false, 4096), Io::Epoll, 0, 1024, Some(4096)).is_empty());
        let capped = warnings(&config(1, false, 4096), Io::Epoll, 0, 1024, Some(128));
        assert!(
            capped.len() == 1 && capped[0].contains("somaxconn=4096"),
            "{capped:?}"
        );
    }
}
