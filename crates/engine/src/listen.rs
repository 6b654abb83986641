//! Listening sockets (one per reactor, sharing a port through `SO_REUSEPORT`) and core pinning.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Socket, Type};

/// Binds `count` listeners to `addr` with `SO_REUSEPORT`, so the kernel spreads incoming
/// connections over them. With port 0 the first picks a port and the rest share it.
pub(crate) fn bind_reuseport(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
) -> io::Result<Vec<TcpListener>> {
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(backlog)?;
        let listener: TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Pins the calling thread to core `index % cores` (best effort: a failure only costs locality).
pub(crate) fn pin_to_core(index: usize) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: cpu_set_t is plain data, zeroed is its empty set; CPU_SET stays within it because
    // the core number is below the machine's core count; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(index % cores, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::debug!(
                index,
                "could not pin reactor to a core: {}",
                io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_share_one_port() {
        let listeners = bind_reuseport("127.0.0.1:0".parse().unwrap(), 3, 16).unwrap();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        assert!(
            ports[0] != 0 && ports.iter().all(|&p| p == ports[0]),
            "{ports:?}"
        );
    }

    #[test]
    fn pinning_sets_the_affinity() {
        std::thread::spawn(|| {
            pin_to_core(0);
            // SAFETY: as above; sched_getaffinity writes into the zeroed set.
            let on_core_0 = unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
                libc::CPU_ISSET(0, &set) && libc::CPU_COUNT(&set) == 1
            };
            assert!(on_core_0);
        })
        .join()
        .unwrap();
    }
}
