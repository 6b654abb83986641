//! The epoll backend, on `mio`: readiness, edge-triggered; reads and writes are plain syscalls.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::{Backend, IoEvent, LISTENER, WAKER, Wake};

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
            .register(&mut listener, Token(LISTENER), Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), Token(WAKER))?);
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

impl Backend for Epoll {
    type Socket = TcpStream;

    fn wait(&mut self, events: &mut Vec<IoEvent>, timeout: Option<Duration>) -> io::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            other => other?,
        }
        for event in &self.events {
            let token = event.token().0;
            // Errors and hang-ups surface as a failed or empty read.
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                events.push(IoEvent::Readable(token));
            }
            if event.is_writable() && token != LISTENER && token != WAKER {
                events.push(IoEvent::Writable(token));
            }
        }
        Ok(())
    }

    fn accept(&mut self) -> io::Result<Option<(TcpStream, SocketAddr)>> {
        let Some(listener) = &self.listener else {
            return Ok(None);
        };
        match listener.accept() {
            Ok((stream, addr)) => {
                stream.set_nodelay(true)?;
                Ok(Some((stream, addr)))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn stop_accepting(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
    }

    fn register(&mut self, socket: &mut TcpStream, token: usize) -> io::Result<()> {
        // Both interests once, edge-triggered: no epoll_ctl when a write queue fills or drains.
        self.poll.registry().register(
            socket,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    fn read(&mut self, socket: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        socket.read(buf)
    }

    fn write(&mut self, socket: &mut TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        socket.write_vectored(bufs)
    }

    fn shutdown_write(&mut self, socket: &mut TcpStream) {
        let _ = socket.shutdown(Shutdown::Write);
    }

    fn close(&mut self, mut socket: TcpStream) {
        let _ = self.poll.registry().deregister(&mut socket);
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }
}
