//! The sans-IO `Connection` in the server role, driven as the reactor drives it, on arbitrary
//! bytes cut into arbitrary reads, with small limits, with and without permessage-deflate.
//!
//! Input: three option bytes, then the byte stream from the peer.
//! - byte 0: bit 0 starts the connection open (skipping the handshake, so frames are reached
//!   at once); bit 1 turns compression on (open: the parameters below; handshaking: negotiated
//!   from the request's offers, bit 2 choosing the shared policy over per-connection windows);
//!   bits 2 and 3 (open) server and client no context takeover; bit 4 echoes compressed;
//!   bits 5 to 7 the message limit, 64 << n bytes.
//! - byte 1 (open with compression): server window bits (low nibble) and client window bits.
//! - byte 2: how the stream is cut into reads.
//!
//! Every request is answered (an upgrade when it asks for one and is valid, else a plain 404),
//! every message echoed. Invariants: no panic; no message above the limit, text always UTF-8;
//! the lent buffer never holds more than the limits allow; and what the server sent, read by a
//! client connection with the same parameters, is valid: no failure, the echoed messages exactly.
#![no_main]

use std::time::{Duration, Instant};

use clarion_protocol::deflate::{self, Deflater, MIN_WINDOW_BITS, MessageInflater, Params, Wants};
use clarion_protocol::frame::MAX_HEADER_LEN;
use clarion_protocol::handshake::write_response;
use clarion_protocol::{Config, Connection, Event, MessageKind, State};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [options, windows, cuts, stream @ ..] = data else {
        return;
    };
    let mut server = Server::new(*options, *windows);
    for chunk in Cuts::new(stream, *cuts) {
        server.feed(&mut chunk.to_vec());
    }
    server.finish();
});

/// The option bits of byte 0.
const OPEN: u8 = 1;
const DEFLATE: u8 = 2;
const SERVER_NO_TAKEOVER: u8 = 4;
const CLIENT_NO_TAKEOVER: u8 = 8;
const ECHO_COMPRESSED: u8 = 16;

struct Server {
    conn: Connection,
    config: Config,
    now: Instant,
    rx: Vec<u8>,
    out: Vec<u8>,
    inflate: MessageInflater,
    options: u8,
    /// Where frames start in `out`, once upgraded (before: HTTP answers).
    frames_start: Option<usize>,
    /// What the server echoed, in order.
    echoed: Vec<(MessageKind, Vec<u8>)>,
    deflater: Option<Deflater>,
    scratch: Vec<u8>,
}

impl Server {
    fn new(options: u8, windows: u8) -> Server {
        let now = Instant::now();
        let max_message = 64u64 << (options >> 5);
        let config = Config {
            max_frame_size: max_message / 2,
            max_message_size: max_message,
            max_head_size: 1024,
            max_headers: 16,
            max_body_size: 64,
            ..Config::default()
        };
        let mut server = Server {
            conn: Connection::server(now),
            config,
            now,
            rx: Vec::new(),
            out: Vec::new(),
            inflate: MessageInflater::default(),
            options,
            frames_start: None,
            echoed: Vec::new(),
            deflater: None,
            scratch: Vec::new(),
        };
        if options & OPEN != 0 {
            server.conn.accept(now, &mut server.rx);
            server.frames_start = Some(0);
            if options & DEFLATE != 0 {
                server.set_deflate(Params {
                    server_no_context_takeover: options & SERVER_NO_TAKEOVER != 0,
                    client_no_context_takeover: options & CLIENT_NO_TAKEOVER != 0,
                    server_max_window_bits: MIN_WINDOW_BITS + (windows & 7),
                    client_max_window_bits: MIN_WINDOW_BITS + (windows >> 4 & 7),
                });
            }
        }
        server
    }

    fn set_deflate(&mut self, params: Params) {
        self.conn.set_deflate(params);
        let level = u32::from(self.options >> 5);
        self.deflater = Some(Deflater::new(level, params.server_max_window_bits));
    }

    /// One read's worth of bytes, fed until the connection has nothing more to say.
    fn feed(&mut self, bytes: &mut [u8]) {
        let mut input = bytes;
        let mut replay = None;
        loop {
            let event = if self.conn.deflate().is_some() {
                self.conn.read_inflating(
                    &mut input,
                    &mut self.rx,
                    &mut self.inflate,
                    self.now,
                    &self.config,
                    &mut self.out,
                )
            } else {
                self.conn.read(
                    &mut input,
                    &mut self.rx,
                    self.now,
                    &self.config,
                    &mut self.out,
                )
            };
            let Some(event) = event else { break };
            match event {
                Event::Request(request, body) => {
                    assert!(body.len() <= self.config.max_body_size);
                    let accept = request.upgrade().ok().filter(|_| request.wants_websocket());
                    let Some(accept) = accept else {
                        write_response(&mut self.out, 404, &[], "text/plain", b"no");
                        self.conn.finish();
                        continue;
                    };
                    let negotiated = (self.options & DEFLATE != 0)
                        .then(|| {
                            let offers = request
                                .headers()
                                .filter(|(name, _)| {
                                    name.eq_ignore_ascii_case("sec-websocket-extensions")
                                })
                                .map(|(_, value)| value);
                            deflate::negotiate(offers, &wants(self.options))
                        })
                        .flatten();
                    let answer = negotiated.as_ref().map(|(_, answer)| answer.as_str());
                    accept.write_response(None, answer, &mut self.out);
                    self.conn.accept(self.now, &mut self.rx);
                    if let Some((params, _)) = negotiated {
                        self.set_deflate(params);
                    }
                    self.frames_start = Some(self.out.len());
                    if !self.rx.is_empty() {
                        // Frames that came behind the request, fed again as the reactor does.
                        assert!(input.is_empty(), "bytes both in rx and in the input");
                        replay = Some(std::mem::take(&mut self.rx));
                        break;
                    }
                }
                Event::Message(kind, payload) => {
                    assert!(payload.len() as u64 <= self.config.max_message_size);
                    if kind == MessageKind::Text {
                        assert!(std::str::from_utf8(payload).is_ok(), "text is UTF-8");
                    }
                    let sent = match &mut self.deflater {
                        Some(deflater) if self.options & ECHO_COMPRESSED != 0 => {
                            self.conn.send_compressed(
                                kind,
                                payload,
                                deflater,
                                &mut self.scratch,
                                &mut self.out,
                            )
                        }
                        _ => self.conn.send(kind, payload, &mut self.out),
                    };
                    if sent.is_ok() {
                        self.echoed.push((kind, payload.to_vec()));
                    }
                }
                Event::Ping(payload) | Event::Pong(payload) => assert!(payload.len() <= 125),
                Event::Close(_) | Event::Failed(_) => {}
            }
        }
        assert!(input.is_empty(), "read returned None with input left");
        if let Some(mut replay) = replay {
            self.feed(&mut replay);
        }
        self.check_buffer();
    }

    /// The lent buffer holds at most a request head and body while handshaking, and at most a
    /// message, a parked control frame and a partial header once open.
    fn check_buffer(&self) {
        let held = self.rx.len() as u64;
        let most = match self.conn.state() {
            State::Handshaking => (self.config.max_head_size + self.config.max_body_size) as u64,
            State::Open | State::Closing => {
                self.config.max_message_size + 125 + MAX_HEADER_LEN as u64
            }
            // Never reached here (the target never answers with a stream); nothing is kept.
            State::Streaming => 0,
            State::Closed => return,
        };
        assert!(held <= most, "rx holds {held} bytes, more than {most}");
    }

    /// Lets every timer fire, then reads what the server sent with a client connection.
    fn finish(mut self) {
        let later = self.now + Duration::from_secs(3600);
        let _ = self.conn.handle_timeout(later, &self.config, &mut self.out);
        let Some(start) = self.frames_start else {
            return;
        };
        let mut client = Connection::client(self.now, 0x9e37_79b9);
        if let Some(params) = self.conn.deflate() {
            client.set_deflate(params);
        }
        let (mut rx, mut out) = (Vec::new(), Vec::new());
        let mut inflate = MessageInflater::default();
        let mut bytes = self.out.split_off(start);
        let mut input = &mut bytes[..];
        let mut messages = Vec::new();
        let config = Config::default();
        while let Some(event) = client.read_inflating(
            &mut input,
            &mut rx,
            &mut inflate,
            self.now,
            &config,
            &mut out,
        ) {
            match event {
                Event::Message(kind, payload) => messages.push((kind, payload.to_vec())),
                Event::Failed(failure) => panic!("the server sent something invalid: {failure:?}"),
                _ => {}
            }
        }
        assert_eq!(messages, self.echoed, "the client reads what was echoed");
        assert!(rx.is_empty(), "the server sent a partial frame");
    }
}

/// What the reactor wants under each policy (see `clarion_engine::compression`).
fn wants(options: u8) -> Wants {
    let shared = options & SERVER_NO_TAKEOVER != 0;
    Wants {
        server_no_context_takeover: shared,
        client_no_context_takeover: shared,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    }
}

/// The stream cut into reads: lengths from a generator seeded by `seed`, capped by a size that
/// `seed` picks (from one byte at a time to the whole stream at once).
struct Cuts<'a> {
    rest: &'a [u8],
    state: u32,
    cap: usize,
}

impl<'a> Cuts<'a> {
    fn new(stream: &'a [u8], seed: u8) -> Cuts<'a> {
        let cap = [1, 2, 3, 7, 16, 64, 512, usize::MAX][usize::from(seed & 7)];
        Cuts {
            rest: stream,
            state: u32::from(seed) << 8 | 0x5bd1,
            cap,
        }
    }
}

impl<'a> Iterator for Cuts<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        // xorshift32
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        let len = if self.cap == usize::MAX {
            self.rest.len()
        } else {
            1 + self.state as usize % self.cap
        };
        let (chunk, rest) = self.rest.split_at(len.min(self.rest.len()));
        self.rest = rest;
        Some(chunk)
    }
}
