//! A WebSocket client on the protocol crate's client role over a plain `std::net::TcpStream`:
//! the handshake, masking and framing are Clarion's own sans-IO code, with no other WebSocket
//! library. Sends each line of standard input as a text message and prints every message it
//! receives; at the end of input it closes and prints what still arrives until the server's
//! close.
//!
//! ```text
//! echo hello | cargo run --example client -- ws://127.0.0.1:9001/
//! ```

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{self, TryRecvError};
use std::time::{Duration, Instant};

use clarion_protocol::handshake::ClientHandshake;
use clarion_protocol::{CloseCode, Connection, Event, MessageKind};

/// One client connection.
pub struct Client {
    stream: TcpStream,
    ws: Connection,
    config: clarion_protocol::Config,
    /// Bytes read and not parsed yet (a read may bring several frames), from `parsed` on.
    input: Vec<u8>,
    parsed: usize,
    /// A message arriving in pieces, lent to the protocol core.
    rx: Vec<u8>,
    /// Frames for the server (messages, pongs, the close), written after each step.
    out: Vec<u8>,
}

/// What one parsing step found.
enum Step {
    Message(MessageKind, Vec<u8>),
    Closed,
    Other,
    NeedBytes,
}

impl Client {
    /// Connects to a `ws://host:port/path` URL and completes the opening handshake.
    pub fn connect(url: &str) -> io::Result<Client> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| invalid(format!("{url}: only ws:// URLs")))?;
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let mut stream = TcpStream::connect(host)?;
        stream.set_nodelay(true)?;
        let mut random = [0u8; 20];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
        let handshake = ClientHandshake::new(random[..16].try_into().expect("16 bytes"));
        let mut request = Vec::new();
        let path = if path.is_empty() { "/" } else { path };
        handshake.write_request(host, path, &[], &mut request);
        stream.write_all(&request)?;
        let mut input = Vec::new();
        let head = loop {
            let mut buf = [0u8; 4096];
            match stream.read(&mut buf)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => input.extend_from_slice(&buf[..n]),
            }
            match handshake.read_response(&input) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(e) => return Err(io::Error::other(format!("handshake refused: {e:?}"))),
            }
        };
        let seed = u32::from_ne_bytes(random[16..].try_into().expect("4 bytes"));
        Ok(Client {
            stream,
            ws: Connection::client(Instant::now(), seed),
            config: clarion_protocol::Config::default(),
            input,
            parsed: head,
            rx: Vec::new(),
            out: Vec::new(),
        })
    }

    /// How long [`Client::recv`] waits for bytes before it fails with `WouldBlock`.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }

    /// Sends a message (masked, as a client must).
    pub fn send(&mut self, kind: MessageKind, payload: &[u8]) -> io::Result<()> {
        self.ws
            .send_in_place(kind, &mut payload.to_vec(), &mut self.out)
            .map_err(|e| io::Error::other(format!("cannot send: {e:?}")))?;
        self.write_out()
    }

    /// Starts the close handshake; [`Client::recv`] returns `None` once the server answers.
    pub fn close(&mut self) -> io::Result<()> {
        self.ws
            .close(CloseCode::NORMAL, "", Instant::now(), &mut self.out);
        self.write_out()
    }

    /// The next message, or `None` once the connection is closed.
    pub fn recv(&mut self) -> io::Result<Option<(MessageKind, Vec<u8>)>> {
        loop {
            let mut input = &mut self.input[self.parsed..];
            let before = input.len();
            let now = Instant::now();
            let step =
                match self
                    .ws
                    .read(&mut input, &mut self.rx, now, &self.config, &mut self.out)
                {
                    Some(Event::Message(kind, payload)) => Step::Message(kind, payload.to_vec()),
                    Some(Event::Close(_) | Event::Failed(_)) => Step::Closed,
                    Some(_) => Step::Other, // a ping (already answered) or a pong
                    None => Step::NeedBytes,
                };
            self.parsed += before - input.len();
            self.write_out()?;
            match step {
                Step::Message(kind, payload) => return Ok(Some((kind, payload))),
                Step::Closed => return Ok(None),
                Step::Other => {}
                Step::NeedBytes => {
                    self.input.drain(..self.parsed);
                    self.parsed = 0;
                    let mut buf = [0u8; 16 << 10];
                    match self.stream.read(&mut buf)? {
                        0 => return Ok(None),
                        n => self.input.extend_from_slice(&buf[..n]),
                    }
                }
            }
        }
    }

    fn write_out(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }
}

fn main() -> io::Result<()> {
    let url = std::env::args().nth(1);
    let mut client = Client::connect(url.as_deref().unwrap_or("ws://127.0.0.1:9001/"))?;
    client.set_read_timeout(Some(Duration::from_millis(50)))?;
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in io::stdin().lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut closing = false;
    loop {
        match lines.try_recv() {
            Ok(line) => client.send(MessageKind::Text, line.as_bytes())?,
            Err(TryRecvError::Disconnected) if !closing => {
                closing = true;
                client.close()?;
            }
            Err(_) => {}
        }
        match client.recv() {
            Ok(Some((_, payload))) => println!("{}", String::from_utf8_lossy(&payload)),
            Ok(None) => return Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
}
