//! The epoll backend, on `mio`: readiness, edge-triggered; reads and writes are plain syscalls.

use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::{Backend, Flushed, IoEvent, Sockets, Wake};
use crate::txqueue::{MAX_IOVECS, TxQueue};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// One reactor's epoll instance and its `SO_REUSEPORT` listener.
pub struct Epoll {
    poll: Poll,
    events: Events,
    listener: Option<TcpListener>,
    waker: Arc<Waker>,
}

impl Epoll {
    /// Watches `listener` (already bound and listening, non-blocking).
    pub fn new(listener: std::net::TcpListener, events_capacity: usize) -> io::Result<Epoll> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Epoll {
            poll,
            events: Events::with_capacity(events_capacity),
            listener: Some(listener),
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

impl Backend for Epoll {
    type Socket = TcpStream;

    const WRITES_NOW: bool = true;

    fn wait(
        &mut self,
        events: &mut Vec<IoEvent<TcpStream>>,
        timeout: Option<Duration>,
        _sockets: &mut dyn Sockets<TcpStream>,
    ) -> io::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            other => other?,
        }
        for event in &self.events {
            match event.token() {
                LISTENER => events.push(IoEvent::Acceptable),
                WAKER => events.push(IoEvent::Woken),
                Token(token) => {
                    // Errors and hang-ups surface as a failed or empty read.
                    let closed = event.is_read_closed() || event.is_error();
                    if event.is_readable() || closed {
                        events.push(IoEvent::Readable { token, closed });
                    }
                    if event.is_writable() {
                        events.push(IoEvent::Writable(token));
                    }
                }
            }
        }
        Ok(())
    }

    fn accept(&mut self) -> io::Result<Option<(TcpStream, Option<SocketAddr>)>> {
        let Some(listener) = &self.listener else {
            return Ok(None);
        };
        match listener.accept() {
            Ok((stream, addr)) => Ok(Some((stream, Some(addr)))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn resume_accepting(&mut self) {
        // Edge-triggered: the reactor calls `accept` again itself after a pause.
    }

    fn stop_accepting(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
    }

    fn register(&mut self, socket: &mut TcpStream, token: usize) -> io::Result<()> {
        // TCP_NODELAY is inherited from the listener. Both interests once, edge-triggered: no
        // epoll_ctl when a write queue fills or drains.
        self.poll.registry().register(
            socket,
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

    fn received(&mut self, _buffer: u16, _len: u32) -> &mut [u8] {
        // Readiness backends never report `Received`.
        &mut []
    }

    fn release_buffer(&mut self, _buffer: u16) {}

    fn write_now(socket: &mut TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        send(socket, bufs)
    }

    fn flush(
        &mut self,
        _token: usize,
        socket: &mut TcpStream,
        queue: &mut TxQueue,
    ) -> io::Result<Flushed> {
        while !queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = queue.slices(&mut slices);
            match send(socket, &slices[..n]) {
                Ok(0) => return Ok(Flushed::Pending),
                Ok(written) => queue.consume(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Pending),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Flushed::Done)
    }

    fn shutdown_write(&mut self, _token: usize, socket: &mut TcpStream) {
        let _ = socket.shutdown(Shutdown::Write);
    }

    fn close(&mut self, _token: usize, _socket: &mut TcpStream) -> bool {
        // Closing the descriptor, when the reactor drops the socket, also removes it from the
        // epoll set: no epoll_ctl needed.
        true
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }
}
