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

/// send(2) or sendmsg(2) with `MSG_NOSIGNAL`: the socket layer directly (no VFS file-position
/// lock, as write and writev take), and a reset peer is an error rather than a SIGPIPE.
fn send(socket: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let socket = socket2::SockRef::from(socket);
    match bufs {
        // One slice (a corked turn, one shared frame): send(2) skips sendmsg's copy-in of a
        // message header and an iovec array.
        [one] => socket.send_with_flags(one, libc::MSG_NOSIGNAL),
        _ => socket.send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL),
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

    fn read(socket: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        // recv(2), not read(2): straight to the socket layer, skipping the VFS file-position
        // lock that read and writev take on every call.
        // SAFETY: the kernel writes at most buf.len() bytes into buf, which we borrow mutably.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

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
