//! One server process holds more WebSocket connections than RLIMIT_NOFILE allows (io_uring
//! direct descriptors, or epoll with a private file table per reactor), each proven open by an
//! echo, then closes them all cleanly.
//!
//! `thirty_thousand` runs in CI. `hundred_thousand` is the C100K run on this kind of host
//! (fd hard limit 20,000): `scripts/c100k.sh` runs it.
//!
//! The client side is this test process: its worker threads each take a private file table
//! (`unshare(CLONE_FILES)`), so each can hold up to RLIMIT_NOFILE sockets, and they rotate
//! source addresses (127.0.0.2, .3, ...) to stay far below the ephemeral port range per
//! (source, destination) pair.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::process::Child;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// Connections per client thread (each thread has its own file table).
const PER_THREAD: usize = 10_000;
/// Connections per source address.
const PER_SOURCE: usize = 20_000;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child we spawned, by its PID.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn start_server(io: &str, reactors: usize) -> (Server, SocketAddr) {
    let threads = reactors.to_string();
    let (child, addr) = common::spawn_clarion(&[
        "--io",
        io,
        "--listen",
        "127.0.0.1:0",
        "--no-pin",
        "--private-fd-table",
        "--threads",
        &threads,
        "--ping-interval",
        "0",
        // Each client thread sends 10,000 upgrade requests before it reads an answer; on a
        // busy machine a debug server may take longer than the default 10 s to answer the
        // last of them. This test is about holding connections, not about that deadline.
        "--handshake-timeout",
        "600s",
    ]);
    (Server(child), addr)
}

fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct they are given.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// Opens `count` upgraded connections from source addresses starting at `first`, proves each
/// with an echo, holds them until `release` is closed, then closes each with a close frame and
/// checks the server's answer.
fn client_thread(
    server: SocketAddr,
    first: usize,
    count: usize,
    ready: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
) {
    // SAFETY: unshare(CLONE_FILES) gives this thread its own copy of the file table; this
    // thread closes every socket it opens, and opens nothing the rest of the process uses.
    assert_eq!(
        unsafe { libc::unshare(libc::CLONE_FILES) },
        0,
        "unshare(CLONE_FILES)"
    );
    let request = common::upgrade_request("/echo");
    let mut sockets = Vec::with_capacity(count);
    for i in first..first + count {
        let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (i / PER_SOURCE) as u8);
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        // Let the kernel pick the port at connect time, per destination.
        // SAFETY: setsockopt with a valid int option value.
        unsafe {
            let one: libc::c_int = 1;
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                4,
            );
        }
        socket.bind(&SocketAddrV4::new(source, 0).into()).unwrap();
        socket
            .connect(&server.into())
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        let mut stream: TcpStream = socket.into();
        stream.write_all(&request).unwrap();
        sockets.push(stream);
    }
    let mut buf = [0u8; 512];
    for (i, stream) in sockets.iter_mut().enumerate() {
        stream
            .set_read_timeout(Some(Duration::from_secs(300)))
            .unwrap();
        let head = common::read_head(stream);
        assert!(head.starts_with("HTTP/1.1 101"), "connection {i}: {head:?}");
        let payload = (first + i).to_string();
        stream
            .write_all(&common::frame(true, 0x1, payload.as_bytes()))
            .unwrap();
    }
    for (i, stream) in sockets.iter_mut().enumerate() {
        let (_, opcode, echoed) = common::read_frame(stream).unwrap();
        assert_eq!(
            (opcode, echoed),
            (0x1, (first + i).to_string().into_bytes())
        );
    }
    ready.send(()).unwrap();
    let _ = release.recv();
    for stream in &mut sockets {
        stream
            .write_all(&common::frame(true, 0x8, &1000u16.to_be_bytes()))
            .unwrap();
    }
    for stream in &mut sockets {
        assert_eq!(common::read_close_code(stream), 1000);
        // The server hangs up after the close handshake.
        assert_eq!(stream.read(&mut buf).unwrap_or(0), 0);
    }
}

fn hold(io: &str, connections: usize, reactors: usize) {
    raise_fd_limit();
    let (server, addr) = start_server(io, reactors);
    let started = Instant::now();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let mut releases = Vec::new();
    let mut threads = Vec::new();
    for first in (0..connections).step_by(PER_THREAD) {
        let count = PER_THREAD.min(connections - first);
        let (release_tx, release) = std::sync::mpsc::channel();
        releases.push(release_tx);
        let ready_tx = ready_tx.clone();
        threads.push(std::thread::spawn(move || {
            client_thread(addr, first, count, ready_tx, release)
        }));
    }
    for _ in 0..threads.len() {
        ready
            .recv_timeout(Duration::from_secs(300))
            .expect("every client thread connects and echoes");
    }
    let held = started.elapsed();
    let rss = std::fs::read_to_string(format!("/proc/{}/status", server.0.id())).unwrap();
    let rss = rss
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap_or("VmRSS: ?")
        .to_owned();
    eprintln!("{connections} connections open and echoed in {held:?}; server {rss}");
    drop(releases);
    for thread in threads {
        thread.join().expect("client thread");
    }
    eprintln!("all closed cleanly after {:?}", started.elapsed());
}

#[test]
fn thirty_thousand() {
    hold("uring", 30_000, 3);
}

/// epoll sockets are process descriptors: each reactor thread's private file table holds its
/// share (`--private-fd-table`).
#[test]
fn thirty_thousand_on_epoll_with_private_fd_tables() {
    hold("epoll", 30_000, 3);
}

#[test]
#[ignore = "C100K: run by scripts/c100k.sh"]
fn hundred_thousand() {
    hold("uring", 100_000, 7);
}
