//! A Redis connection for what the server pushes (Pub/Sub messages and confirmations), read
//! without blocking so that one thread can wait on several at once with `poll(2)`. The `redis`
//! crate's sync `PubSub` knows no sharded channels (`SSUBSCRIBE`) and waits on one connection
//! only; this uses its RESP parser and command encoder on a socket of our own.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, Parser, RedisError, RedisResult, Value,
};

use super::super::{CONNECT_TIMEOUT, IO_TIMEOUT};

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A non-blocking connection that reads pushed values one at a time.
pub(super) struct PushConnection {
    stream: Stream,
    /// Keeps a value that arrived in pieces across reads.
    parser: Parser,
}

impl PushConnection {
    /// Connects to `info` (authenticating with its credentials, if any).
    pub fn connect(info: &ConnectionInfo) -> RedisResult<PushConnection> {
        let stream = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Stream::Tcp(tcp(host, *port)?),
            ConnectionAddr::Unix(path) => Stream::Unix(UnixStream::connect(path)?),
            other => {
                return Err(RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "unsupported address",
                    other.to_string(),
                )));
            }
        };
        match &stream {
            Stream::Tcp(s) => s.set_nonblocking(true)?,
            Stream::Unix(s) => s.set_nonblocking(true)?,
        }
        let mut con = PushConnection {
            stream,
            parser: Parser::new(),
        };
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(username) = settings.username() {
                auth.arg(username);
            }
            auth.arg(password);
            con.send(&auth)?;
            if let Value::ServerError(e) = con.read(IO_TIMEOUT)? {
                return Err(e.into());
            }
        }
        Ok(con)
    }

    /// Sends `cmd` (waiting at most [`IO_TIMEOUT`] for room in the socket).
    pub fn send(&mut self, cmd: &Cmd) -> RedisResult<()> {
        let bytes = cmd.get_packed_command();
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut sent = 0;
        while sent < bytes.len() {
            match (&self.stream).write(&bytes[sent..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::from(io::ErrorKind::TimedOut).into());
                    }
                    wait(&mut [(self.fd(), libc::POLLOUT)], left)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The next value if one has arrived whole; `None` if not (yet).
    pub fn try_read(&mut self) -> RedisResult<Option<Value>> {
        match self.parser.parse_value(&self.stream) {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.is_timeout() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The next value, waiting at most `timeout` for it.
    pub fn read(&mut self, timeout: Duration) -> RedisResult<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = self.try_read()? {
                return Ok(value);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::from(io::ErrorKind::TimedOut).into());
            }
            wait(&mut [(self.fd(), libc::POLLIN)], left)?;
        }
    }

    /// The socket, to wait on with [`readable`].
    pub fn fd(&self) -> RawFd {
        self.stream.fd()
    }
}

fn tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = io::Error::from(io::ErrorKind::AddrNotAvailable);
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Waits until one of `fds` has bytes to read (or is closed), or `timeout` passes; returns
/// which are ready.
pub(super) fn readable(fds: &[RawFd], timeout: Duration) -> io::Result<Vec<bool>> {
    let mut polled: Vec<(RawFd, libc::c_short)> =
        fds.iter().map(|&fd| (fd, libc::POLLIN)).collect();
    wait(&mut polled, timeout)?;
    Ok(polled.iter().map(|&(_, events)| events != 0).collect())
}

/// `poll(2)` on `fds` (each with the events it waits for, replaced by those that happened).
fn wait(fds: &mut [(RawFd, libc::c_short)], timeout: Duration) -> io::Result<()> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    // Rounded up, so that a short wait does not spin.
    let millis = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `polled` is a valid, writable array of `polled.len()` pollfd structs for the
    // duration of the call, and poll(2) writes only their `revents`.
    let ready = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, millis) };
    if ready < 0 {
        let error = io::Error::last_os_error();
        // A signal: report nothing ready; the caller waits again.
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    for (entry, result) in fds.iter_mut().zip(&polled) {
        entry.1 = if ready > 0 { result.revents } else { 0 };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (PushConnection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let info = redis::IntoConnectionInfo::into_connection_info(("127.0.0.1", port)).unwrap();
        let con = PushConnection::connect(&info).unwrap();
        let (server, _) = listener.accept().unwrap();
        (con, server)
    }

    #[test]
    fn a_value_split_across_reads_comes_out_whole_and_nothing_blocks() {
        let (mut con, mut server) = pair();
        assert_eq!(con.try_read().unwrap(), None);
        assert!(readable(&[con.fd()], Duration::from_millis(1)).unwrap() == [false]);
        let message = b"*3\r\n$8\r\nsmessage\r\n$11\r\nclarion:{a}\r\n$5\r\nhello\r\n";
        server.write_all(&message[..20]).unwrap();
        assert_eq!(readable(&[con.fd()], IO_TIMEOUT).unwrap(), [true]);
        assert_eq!(con.try_read().unwrap(), None, "half a value");
        // The rest, and a second value in the same read.
        server.write_all(&message[20..]).unwrap();
        server.write_all(b":7\r\n").unwrap();
        let value = con.read(IO_TIMEOUT).unwrap();
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(
            value,
            Value::Array(vec![bulk("smessage"), bulk("clarion:{a}"), bulk("hello")])
        );
        assert_eq!(con.try_read().unwrap(), Some(Value::Int(7)));
        assert_eq!(con.try_read().unwrap(), None);
        // Commands go out encoded.
        con.send(redis::cmd("SSUBSCRIBE").arg("c")).unwrap();
        let mut got = [0u8; 28];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"*2\r\n$10\r\nSSUBSCRIBE\r\n$1\r\nc\r\n");
        // A timeout is an error; a closed peer is one too.
        assert!(con.read(Duration::from_millis(5)).unwrap_err().is_timeout());
        drop(server);
        assert!(con.read(IO_TIMEOUT).is_err());
    }
}
