//! `fanout`, publisher side: one thread per publisher, paced at its share of `--rate`.
//!
//! Message `k` of a publisher is due at `go + k / rate` and carries that intended time in its
//! stamp even when it leaves late (a slow server or publish API shows up in the latencies instead
//! of slowing the schedule). With `--storm`, one more message is due shortly after the storm
//! breaks, while the dropped subscribers are away: they must get it back by resuming. Publishers are few, so each is a plain blocking client: a WebSocket
//! (raw topic socket, or publish commands on the envelope protocol) or keep-alive HTTP
//! `POST {publish-url}/{topic}`. Whatever the server sends a publisher is read and dropped.

use std::io::{self, Read, Write};
use std::sync::Arc;

use crate::tls::Stream;
use std::time::{Duration, Instant};

use clarion_protocol::handshake::ClientHandshake;
use clarion_protocol::{CloseCode, Connection, Event, MessageKind};

use crate::cli::{Protocol, PublishVia};
use crate::clock::{self, ns};
use crate::control::Control;
use crate::failure::Reason;
use crate::hist;
use crate::plan::{Fanout, Plan, STORM_MESSAGE_DELAY};
use crate::stamp::{self, Stamp};
use crate::tally::Tally;
use crate::traffic::envelope::{self, Incoming};
use crate::url::Target;

/// Longest sleep between checks while waiting, so an abort is noticed quickly.
const NAP: Duration = Duration::from_millis(1);

/// Runs publisher `id` to the end of the window; returns what it published.
pub fn run(plan: &Plan, fanout: &Fanout, id: usize, control: &Control) -> Tally {
    crate::sys::tighten_timer_slack();
    let mut tally = Tally::new(fanout.topics.len(), false);
    let topic = fanout.topic_of(id);
    let Some((go_ns, stop_ns)) = wait_for_window(control) else {
        return tally;
    };
    let interval_ns = 1e9 * fanout.publishers as f64 / fanout.rate;
    // The warm-up's messages are sent like the others but not counted as published.
    let start_ns = go_ns.saturating_sub(ns(plan.warmup));
    let mut client: Option<Client> = None;
    let template = stamp::template(fanout.size);
    let mut payload = Vec::with_capacity(fanout.size);
    let mut storm_message = fanout
        .storm
        .map(|_| stop_ns + ns(plan.drain) + ns(STORM_MESSAGE_DELAY));
    for count in 0u64.. {
        let mut due_ns = start_ns + (count as f64 * interval_ns) as u64;
        if due_ns >= stop_ns {
            match storm_message.take() {
                Some(at_ns) => due_ns = at_ns,
                None => break,
            }
        }
        if control.aborted() {
            break;
        }
        if client.is_none() {
            client = match Client::connect(plan, fanout, topic) {
                Ok(c) => Some(c),
                Err(_) => {
                    tally.fanout.publish_errors += 1;
                    // Wait a little before dialing again; this message is lost.
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
        }
        let Some(active) = &mut client else { continue };
        let waited = active.wait_until(due_ns, control, &mut tally);
        if due_ns >= go_ns {
            // Late by the scheduler (this thread shares a core with the receiving loops) or by
            // a publish that blocked: the stamp keeps the due time, so deliveries count it.
            hist::record(
                &mut tally.publish_lag,
                clock::now_ns().saturating_sub(due_ns),
            );
        }
        payload.clear();
        payload.extend_from_slice(&template);
        Stamp::published(due_ns, id as u16, count).write(&mut payload);
        match waited.and_then(|()| active.publish(&mut payload)) {
            Ok(()) => {
                tally.messages_sent += 1;
                if due_ns >= go_ns {
                    tally.fanout.published[topic] += 1;
                }
            }
            Err(_) => {
                tally.fanout.publish_errors += 1;
                client = None;
            }
        }
    }
    if let Some(client) = client {
        client.close(&mut tally);
    }
    tally
}

fn wait_for_window(control: &Control) -> Option<(u64, u64)> {
    loop {
        if control.aborted() {
            return None;
        }
        if let Some((go_ns, stop_ns)) = control.window() {
            return Some((go_ns, stop_ns));
        }
        std::thread::sleep(NAP);
    }
}

enum Client {
    Ws(WsPublisher),
    Http(HttpPublisher),
}

impl Client {
    fn connect(plan: &Plan, fanout: &Fanout, topic: usize) -> Result<Client, Reason> {
        let timeout = plan.connect_timeout;
        let topic_name = fanout.topics[topic].clone();
        match fanout.publish_via {
            PublishVia::Ws => {
                let (_, target) = plan.pairs.pair(0);
                let tls = plan.tls.as_ref();
                WsPublisher::connect(target, tls, fanout.protocol, topic_name, timeout)
                    .map(Client::Ws)
            }
            PublishVia::Http => Ok(Client::Http(HttpPublisher {
                target: fanout.publish_target.clone(),
                token: fanout.publish_token.clone(),
                topic: topic_name,
                timeout,
                tls: plan.tls.clone(),
                stream: None,
                buf: Vec::new(),
            })),
        }
    }

    /// Sleeps until `due_ns`, reading (and dropping) what the server sends meanwhile.
    fn wait_until(
        &mut self,
        due_ns: u64,
        control: &Control,
        tally: &mut Tally,
    ) -> Result<(), Reason> {
        loop {
            if let Client::Ws(ws) = self {
                ws.drain(tally)?;
            }
            let now_ns = clock::now_ns();
            if now_ns >= due_ns || control.aborted() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_nanos(due_ns - now_ns).min(NAP));
        }
    }

    fn publish(&mut self, payload: &mut [u8]) -> Result<(), Reason> {
        match self {
            Client::Ws(ws) => ws.publish(payload),
            Client::Http(http) => http.publish(payload),
        }
    }

    fn close(self, tally: &mut Tally) {
        if let Client::Ws(mut ws) = self {
            ws.close(tally);
        }
    }
}

/// A WebSocket publisher on a non-blocking socket.
struct WsPublisher {
    stream: Stream,
    ws: Connection,
    protocol: Protocol,
    topic: String,
    rx: Vec<u8>,
    rbuf: Vec<u8>,
    tx: Vec<u8>,
    command: Vec<u8>,
    config: clarion_protocol::Config,
    timeout: Duration,
}

impl WsPublisher {
    fn connect(
        target: &Target,
        tls: Option<&Arc<rustls::ClientConfig>>,
        protocol: Protocol,
        topic: String,
        timeout: Duration,
    ) -> Result<WsPublisher, Reason> {
        let io = |e: io::Error| Reason::of_io(&e);
        let mut stream = Stream::connect(target, tls, timeout).map_err(io)?;
        let path = match protocol {
            // SSE subscribers publish over HTTP (the plan checks it): a raw socket otherwise.
            Protocol::Raw | Protocol::Sse => {
                format!("{}/{topic}", target.path.trim_end_matches('/'))
            }
            Protocol::Envelope => target.path.clone(),
        };
        let nonce = clock::now_ns().to_ne_bytes();
        let handshake = ClientHandshake::new(
            [nonce, nonce.map(|b| !b)]
                .concat()
                .try_into()
                .expect("16 bytes"),
        );
        let mut request = Vec::new();
        handshake.write_request(&target.host, &path, &[], &mut request);
        stream.write_all(&request).map_err(io)?;
        let mut answer = Vec::new();
        let mut rbuf = vec![0; 16 << 10];
        let head = loop {
            let n = stream.read(&mut rbuf).map_err(io)?;
            if n == 0 {
                return Err(Reason::Eof);
            }
            answer.extend_from_slice(&rbuf[..n]);
            match handshake.read_response(&answer) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(e) => return Err(Reason::of_handshake(e)),
            }
        };
        stream.tcp().set_nonblocking(true).map_err(io)?;
        let mut publisher = WsPublisher {
            stream,
            ws: Connection::client(Instant::now(), clock::now_ns() as u32),
            protocol,
            topic,
            rx: Vec::new(),
            rbuf,
            tx: Vec::new(),
            command: Vec::new(),
            config: clarion_protocol::Config {
                ping_interval: None,
                ..clarion_protocol::Config::default()
            },
            timeout,
        };
        let mut early = answer.split_off(head);
        publisher.feed(&mut early, &mut Tally::new(0, false))?;
        Ok(publisher)
    }

    fn publish(&mut self, payload: &mut [u8]) -> Result<(), Reason> {
        let sent = match self.protocol {
            // Text: the stamp is ASCII, and text reaches envelope subscribers as a string.
            Protocol::Raw | Protocol::Sse => {
                self.ws
                    .send_in_place(MessageKind::Text, payload, &mut self.tx)
            }
            Protocol::Envelope => {
                envelope::publish(&self.topic, payload, &mut self.command);
                self.ws
                    .send_in_place(MessageKind::Text, &mut self.command, &mut self.tx)
            }
        };
        sent.map_err(|_| Reason::ClosedByServer)?;
        self.write_out()
    }

    /// Reads whatever the server sent (deliveries of our own topic, acks, pings) and drops it.
    fn drain(&mut self, tally: &mut Tally) -> Result<(), Reason> {
        let mut rbuf = std::mem::take(&mut self.rbuf);
        let result = loop {
            match self.stream.read(&mut rbuf) {
                Ok(0) => break Err(Reason::Eof),
                Ok(n) => {
                    if let Err(reason) = self.feed(&mut rbuf[..n], tally) {
                        break Err(reason);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(Reason::of_io(&e)),
            }
        };
        self.rbuf = rbuf;
        result
    }

    fn feed(&mut self, input: &mut [u8], tally: &mut Tally) -> Result<(), Reason> {
        let mut input = input;
        let mut result = Ok(());
        while let Some(event) = self.ws.read(
            &mut input,
            &mut self.rx,
            Instant::now(),
            &self.config,
            &mut self.tx,
        ) {
            match event {
                Event::Message(MessageKind::Text, payload)
                    if self.protocol == Protocol::Envelope
                        && envelope::parse(payload) == Some(Incoming::Error) =>
                {
                    tally.fanout.publish_errors += 1;
                }
                Event::Close(_) => result = Err(Reason::ClosedByServer),
                Event::Failed(_) | Event::Request(..) => result = Err(Reason::Protocol),
                _ => {}
            }
        }
        self.write_out()?;
        result
    }

    /// Writes everything queued, waiting (bounded) while the socket is full.
    fn write_out(&mut self) -> Result<(), Reason> {
        let deadline = clock::now_ns() + ns(self.timeout);
        let mut written = 0;
        while written < self.tx.len() {
            match self.stream.write(&self.tx[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if clock::now_ns() > deadline {
                        return Err(Reason::Stalled);
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Reason::of_io(&e)),
            }
        }
        self.tx.clear();
        Ok(())
    }

    /// Closes with the handshake: sends a Close, then reads (and drops) until the server's
    /// answer or the end of the stream, at most `timeout`. Closed at once with deliveries still
    /// unread in it, the socket is reset rather than ended, and the kernel discards whatever it
    /// had not transmitted yet: once in about 450 ramp steps the last publish (the server had
    /// read 4,799 messages of 4,800, so every subscriber missed one).
    fn close(&mut self, tally: &mut Tally) {
        self.ws
            .close(CloseCode::NORMAL, "", Instant::now(), &mut self.tx);
        if self.write_out().is_err() {
            return;
        }
        let deadline = clock::now_ns() + ns(self.timeout);
        while self.drain(tally).is_ok() && clock::now_ns() < deadline {
            std::thread::sleep(NAP);
        }
    }
}

/// Keep-alive HTTP publishes; reconnects when the server closes.
struct HttpPublisher {
    target: Target,
    token: Option<String>,
    topic: String,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    stream: Option<Stream>,
    buf: Vec<u8>,
}

impl HttpPublisher {
    fn publish(&mut self, payload: &[u8]) -> Result<(), Reason> {
        let result = self.exchange(payload);
        if !matches!(result, Ok(true)) {
            self.stream = None;
        }
        result.map(|_| ())
    }

    /// One request and its answer; `Ok(keep_alive)` on a 2xx.
    fn exchange(&mut self, payload: &[u8]) -> Result<bool, Reason> {
        let io = |e: io::Error| Reason::of_io(&e);
        if self.stream.is_none() {
            let stream =
                Stream::connect(&self.target, self.tls.as_ref(), self.timeout).map_err(io)?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected above");
        self.buf.clear();
        write!(
            self.buf,
            "POST {}/{} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
            self.target.path.trim_end_matches('/'),
            self.topic,
            self.target.host,
            payload.len()
        )
        .map_err(io)?;
        if let Some(token) = &self.token {
            write!(self.buf, "Authorization: Bearer {token}\r\n").map_err(io)?;
        }
        self.buf.extend_from_slice(b"\r\n");
        self.buf.extend_from_slice(payload);
        stream.write_all(&self.buf).map_err(io)?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf) {
                Ok(httparse::Status::Complete(head)) => {
                    let header = |name: &str| {
                        response
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .and_then(|h| std::str::from_utf8(h.value).ok())
                    };
                    let body: usize = header("content-length")
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let close =
                        header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                    let status = response.code.unwrap_or(0);
                    if self.buf.len() >= head + body {
                        return if (200..300).contains(&status) {
                            Ok(!close)
                        } else {
                            Err(Reason::Rejected)
                        };
                    }
                }
                Ok(httparse::Status::Partial) if self.buf.len() < 64 << 10 => {}
                _ => return Err(Reason::BadPayload),
            }
            let n = stream.read(&mut chunk).map_err(io)?;
            if n == 0 {
                return Err(Reason::Eof);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
