//! The epoll backend, on `mio`: readiness, edge-triggered, both interests registered once; reads
//! and writes are plain syscalls.

use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::readiness::{Readiness, Ready};
use super::{Peer, Reported, Wake};

const WAKER: Token = Token(usize::MAX - 1);
/// Listener `i` is watched under `LISTENERS - i`; connection tokens (slab keys) stay far below.
const LISTENERS: usize = usize::MAX - 2;

/// The token of listener `index`.
fn listener_token(index: usize) -> Token {
    Token(LISTENERS - index)
}

/// One reactor's epoll instance and its `SO_REUSEPORT` listeners.
pub(crate) struct Epoll {
    poll: Poll,
    events: Events,
    /// By listener index; empty once accepting stopped.
    listeners: Vec<TcpListener>,
    waker: Arc<Waker>,
}

impl Epoll {
    /// Watches `listeners` (already bound and listening, non-blocking).
    pub(crate) fn new(
        listeners: Vec<std::net::TcpListener>,
        events_capacity: usize,
    ) -> io::Result<Epoll> {
        let poll = Poll::new()?;
        let mut watched = Vec::with_capacity(listeners.len());
        for (index, listener) in listeners.into_iter().enumerate() {
            let mut listener = TcpListener::from_std(listener);
            poll.registry()
                .register(&mut listener, listener_token(index), Interest::READABLE)?;
            watched.push(listener);
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Epoll {
            poll,
            events: Events::with_capacity(events_capacity),
            listeners: watched,
            waker,
        })
    }
}

impl Wake for Waker {
    fn wake(&self) {
        // Fails only if the eventfd is gone, i.e. the reactor has already exited.
        let _ = Waker::wake(self);
    }
}

/// send(2) or sendmsg(2) with `MSG_NOSIGNAL`, through syscall(2): the socket layer directly
/// (no VFS file-position lock, as write and writev take), a reset peer an error rather than a
/// SIGPIPE, and none of the cancellation-point bookkeeping glibc's `send` wraps each call in
/// (enabling and disabling asynchronous cancellation: a tenth of epoll's user time per fanout
/// delivery, measured with perf; the engine never cancels a thread).
#[inline]
fn send(socket: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let fd = socket.as_raw_fd() as libc::c_long;
    let flags = libc::MSG_NOSIGNAL as libc::c_long;
    let sent = match bufs {
        // One slice (a corked turn, one shared frame): send(2) skips sendmsg's copy-in of a
        // message header and an iovec array.
        // SAFETY: the kernel reads at most `one.len()` bytes from `one`, which is borrowed for
        // the call; no address (null, length 0).
        [one] => unsafe {
            libc::syscall(
                libc::SYS_sendto,
                fd,
                one.as_ptr(),
                one.len(),
                flags,
                std::ptr::null::<libc::sockaddr>(),
                0 as libc::c_long,
            )
        },
        _ => {
            // SAFETY: an all-zero msghdr is a valid empty one (null pointers, zero lengths).
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            // IoSlice is ABI-compatible with iovec on Unix (std guarantees it); the kernel only
            // reads through the pointer.
            header.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            header.msg_iovlen = bufs.len();
            // SAFETY: `header` and the slices it points to are borrowed for the call, and the
            // kernel only reads them.
            unsafe { libc::syscall(libc::SYS_sendmsg, fd, &header as *const libc::msghdr, flags) }
        }
    };
    syscall_result(sent)
}

/// What syscall(2) returned as a byte count or the error it set.
#[inline]
fn syscall_result(returned: libc::c_long) -> io::Result<usize> {
    if returned < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(returned as usize)
    }
}

impl Peer for TcpStream {
    fn peer(&self) -> Option<SocketAddr> {
        self.peer_addr().ok()
    }
}

impl Readiness for Epoll {
    type Socket = TcpStream;

    fn wait(&mut self, events: &mut Vec<Ready>, timeout: Option<Duration>) -> io::Result<Reported> {
        match self.poll.poll(&mut self.events, timeout) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Reported::Part),
            other => other?,
        }
        let mut reported = 0;
        for event in &self.events {
            reported += 1;
            match event.token() {
                WAKER => events.push(Ready::Woken),
                Token(token) if token > LISTENERS - crate::MAX_LISTENERS => {
                    events.push(Ready::Acceptable(LISTENERS - token));
                }
                Token(token) => {
                    // Errors and hang-ups surface as a failed or empty read.
                    let closed = event.is_read_closed() || event.is_error();
                    if event.is_readable() || closed {
                        events.push(Ready::Readable { token, closed });
                    }
                    if event.is_writable() {
                        events.push(Ready::Writable(token));
                    }
                }
            }
        }
        // A full batch may have left ready sockets for the next `epoll_wait`.
        Ok(if reported < self.events.capacity() {
            Reported::All
        } else {
            Reported::Part
        })
    }

    fn accept(&mut self, listener: usize) -> io::Result<Option<(TcpStream, Option<SocketAddr>)>> {
        let Some(listener) = self.listeners.get(listener) else {
            return Ok(None);
        };
        match listener.accept() {
            // A std stream: 4 bytes in the connection's entry in every build (mio's own carries a
            // registry check in debug builds).
            Ok((stream, addr)) => Ok(Some((stream.into(), Some(addr)))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn listeners(&self) -> usize {
        self.listeners.len()
    }

    fn stop_accepting(&mut self) {
        for mut listener in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut listener);
        }
    }

    fn register(&mut self, socket: &mut TcpStream, token: usize) -> io::Result<()> {
        // TCP_NODELAY is inherited from the listener. Both interests once, edge-triggered: no
        // epoll_ctl when a write queue fills or drains. The descriptor leaves the epoll set
        // when the socket is dropped (closed): no epoll_ctl at the end either.
        self.poll.registry().register(
            &mut SourceFd(&socket.as_raw_fd()),
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    // Inlinable into the reactor, which is compiled in the embedder's crate (as `send`).
    #[inline]
    fn read(socket: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        // recvfrom(2), not read(2): straight to the socket layer, skipping the VFS
        // file-position lock that read and writev take on every call; through syscall(2), as
        // `send`, without glibc's cancellation bookkeeping.
        // SAFETY: the kernel writes at most buf.len() bytes into buf, which we borrow mutably;
        // no address is asked for (null pointers).
        syscall_result(unsafe {
            libc::syscall(
                libc::SYS_recvfrom,
                socket.as_raw_fd() as libc::c_long,
                buf.as_mut_ptr(),
                buf.len(),
                0 as libc::c_long,
                std::ptr::null_mut::<libc::sockaddr>(),
                std::ptr::null_mut::<libc::socklen_t>(),
            )
        })
    }

    #[inline]
    fn send(socket: &mut TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        send(socket, bufs)
    }

    fn shutdown_write(socket: &mut TcpStream) {
        let _ = socket.shutdown(Shutdown::Write);
    }

    fn waker(&self) -> super::Waker {
        self.waker.clone()
    }
}
