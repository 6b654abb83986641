//! A small fanout server for tests, until Clarion's push server serves these routes: raw topic
//! sockets (`/t/<topic>`: every message is published to the topic), the JSON envelope protocol
//! on `/ws` (subscribe, publish, acks, deliveries) and `POST /publish/<topic>` (202, keep-alive).
//! One mio thread on the protocol core's server role; stops when dropped.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clarion::protocol::frame::encode_frame;
use clarion::protocol::handshake::Accept;
use clarion::protocol::{Config, Connection, Event, MessageKind, OpCode, State};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);

/// The running fake server.
pub struct FakeFanout {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeFanout {
    /// Starts it on a free loopback port.
    pub fn start() -> FakeFanout {
        let mut listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let poll = Poll::new().unwrap();
            poll.registry()
                .register(&mut listener, LISTENER, Interest::READABLE)
                .unwrap();
            Server::default().run(poll, listener, &flag);
        });
        FakeFanout {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeFanout {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

enum Role {
    Head,
    Raw(String),
    Envelope(Vec<String>),
}

struct Client {
    stream: TcpStream,
    role: Role,
    ws: Option<Connection>,
    inbuf: Vec<u8>,
    rx: Vec<u8>,
    out: Vec<u8>,
}

#[derive(Default)]
struct Server {
    clients: HashMap<usize, Client>,
    next: usize,
    seq: u64,
}

/// What a client asked for, acted on once its borrow is over.
enum Action {
    Publish(String, MessageKind, Vec<u8>),
    Subscribe(String, String),
    Close,
}

impl Server {
    fn run(&mut self, mut poll: Poll, listener: TcpListener, stop: &AtomicBool) {
        let mut events = Events::with_capacity(1024);
        while !stop.load(Ordering::SeqCst) {
            let _ = poll.poll(&mut events, Some(Duration::from_millis(10)));
            for event in events.iter() {
                if event.token() == LISTENER {
                    while let Ok((mut stream, _)) = listener.accept() {
                        let token = self.next;
                        self.next += 1;
                        poll.registry()
                            .register(
                                &mut stream,
                                Token(token),
                                Interest::READABLE | Interest::WRITABLE,
                            )
                            .unwrap();
                        let _ = stream.set_nodelay(true);
                        self.clients.insert(
                            token,
                            Client {
                                stream,
                                role: Role::Head,
                                ws: None,
                                inbuf: Vec::new(),
                                rx: Vec::new(),
                                out: Vec::new(),
                            },
                        );
                    }
                } else {
                    self.serve(event.token().0);
                }
            }
        }
    }

    fn serve(&mut self, token: usize) {
        let mut actions = Vec::new();
        if let Some(client) = self.clients.get_mut(&token) {
            let mut buf = [0u8; 64 << 10];
            loop {
                match client.stream.read(&mut buf) {
                    Ok(0) => {
                        actions.push(Action::Close);
                        break;
                    }
                    Ok(n) => client.inbuf.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        actions.push(Action::Close);
                        break;
                    }
                }
            }
            client.handle(&mut actions);
            flush(client);
        }
        for action in actions {
            match action {
                Action::Close => {
                    self.clients.remove(&token);
                }
                Action::Subscribe(topic, id) => {
                    let client = self.clients.get_mut(&token).unwrap();
                    if let Role::Envelope(topics) = &mut client.role {
                        topics.push(topic);
                    }
                    let ack = format!(r#"{{"type":"ack","id":{id}}}"#);
                    client
                        .out
                        .extend(encode_frame(OpCode::Text, ack.as_bytes()));
                    flush(client);
                }
                Action::Publish(topic, kind, data) => self.publish(&topic, kind, &data),
            }
        }
    }

    /// Raw subscribers get the payload as it came; envelope ones a delivery with it as a string.
    fn publish(&mut self, topic: &str, kind: MessageKind, data: &[u8]) {
        self.seq += 1;
        let opcode = match kind {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
        };
        let raw = encode_frame(opcode, data);
        let envelope = encode_frame(
            OpCode::Text,
            format!(
                r#"{{"type":"message","topic":"{topic}","seq":{},"data":"{}"}}"#,
                self.seq,
                String::from_utf8_lossy(data)
            )
            .as_bytes(),
        );
        for client in self.clients.values_mut() {
            let frame = match &client.role {
                Role::Raw(t) if t == topic => &raw,
                Role::Envelope(topics) if topics.iter().any(|t| t == topic) => &envelope,
                _ => continue,
            };
            client.out.extend_from_slice(frame);
            flush(client);
        }
    }
}

impl Client {
    fn handle(&mut self, actions: &mut Vec<Action>) {
        loop {
            if self.ws.is_some() {
                return self.frames(actions);
            }
            let Some(head_len) = find_head(&self.inbuf) else {
                return;
            };
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            if request.parse(&self.inbuf[..head_len]).is_err() {
                actions.push(Action::Close);
                return;
            }
            let path = request.path.unwrap_or("").to_owned();
            let header = |name: &str| {
                request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| h.value.to_vec())
            };
            if request.method == Some("POST") {
                let body_len: usize = header("content-length")
                    .and_then(|v| String::from_utf8(v).ok()?.trim().parse().ok())
                    .unwrap_or(0);
                if self.inbuf.len() < head_len + body_len {
                    return;
                }
                let body = self.inbuf[head_len..head_len + body_len].to_vec();
                self.inbuf.drain(..head_len + body_len);
                match path.strip_prefix("/publish/") {
                    Some(topic) => {
                        actions.push(Action::Publish(topic.to_owned(), MessageKind::Text, body));
                        self.out.extend_from_slice(
                            b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
                        );
                    }
                    None => self
                        .out
                        .extend_from_slice(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
                }
                continue;
            }
            let Some(key) = header("sec-websocket-key") else {
                actions.push(Action::Close);
                return;
            };
            self.role = match path.strip_prefix("/t/") {
                Some(topic) => Role::Raw(topic.to_owned()),
                None if path == "/ws" => Role::Envelope(Vec::new()),
                None => {
                    self.out
                        .extend_from_slice(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    actions.push(Action::Close);
                    return;
                }
            };
            Accept::for_key(key.trim_ascii()).write_response(None, None, &mut self.out);
            self.inbuf.drain(..head_len);
            let now = Instant::now();
            let mut ws = Connection::server(now);
            ws.accept(now, &mut Vec::new());
            self.ws = Some(ws);
        }
    }

    fn frames(&mut self, actions: &mut Vec<Action>) {
        let ws = self.ws.as_mut().unwrap();
        let mut input_buf = std::mem::take(&mut self.inbuf);
        let mut input = &mut input_buf[..];
        while let Some(event) = ws.read(
            &mut input,
            &mut self.rx,
            Instant::now(),
            &Config::default(),
            &mut self.out,
        ) {
            let Event::Message(kind, payload) = event else {
                continue;
            };
            match &self.role {
                Role::Raw(topic) => {
                    actions.push(Action::Publish(topic.clone(), kind, payload.to_vec()));
                }
                Role::Envelope(_) => {
                    let Ok(command) = serde_json::from_slice::<serde_json::Value>(payload) else {
                        continue;
                    };
                    let topic = command["topic"].as_str().unwrap_or("").to_owned();
                    match command["type"].as_str() {
                        Some("subscribe") => {
                            actions.push(Action::Subscribe(topic, command["id"].to_string()))
                        }
                        Some("publish") => {
                            let data = command["data"].as_str().unwrap_or("");
                            let data = data.as_bytes().to_vec();
                            actions.push(Action::Publish(topic, MessageKind::Text, data));
                        }
                        _ => {}
                    }
                }
                Role::Head => {}
            }
        }
        if ws.state() == State::Closed {
            // The close handshake is over: the server hangs up first, as RFC 6455 asks.
            flush(self);
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
    }
}

fn find_head(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

fn flush(client: &mut Client) {
    while !client.out.is_empty() {
        match client.stream.write(&client.out) {
            Ok(n) => {
                client.out.drain(..n);
            }
            Err(_) => return,
        }
    }
}
