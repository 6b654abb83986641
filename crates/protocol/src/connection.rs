//! One WebSocket connection as a deterministic state machine: bytes and `now` in, events and
//! bytes out (through [`Transmit`]).
//!
//! States: `Handshaking` (server: waiting for the request head) → `Open` → `Closing` (our close
//! frame sent, waiting for the peer's) → `Closed` (the WebSocket is over; closing TCP is the
//! caller's job). A protocol error sends the RFC close code and goes straight to `Closed`.
//! A request answered with a streaming HTTP response (Server-Sent Events, NDJSON) goes from
//! `Handshaking` to `Streaming` instead of `Open`: the caller writes the body's bytes as they
//! come, what the peer sends is discarded, and closing ends it at once (`Closed`).
//!
//! Memory: the struct is a few dozen bytes and owns no buffer. The caller lends `rx`, a buffer
//! used only while a message or frame is incomplete; a complete frame found in the caller's input
//! is unmasked in place and delivered from there, without a copy. After every [`Connection::read`]
//! that returned `None`, `rx` is empty unless a partial frame or message is pending, so the caller
//! can hand it back to a pool.

use std::time::{Duration, Instant};

use super::close::{self, CloseCode};
use super::deflate::{self, Deflater, Inflate, InflateError, Params};
use super::frame::{self, FrameHeader, HeaderError, MAX_HEADER_LEN, OpCode, RSV1};
use super::handshake::{HeadError, Request};
use super::{Transmit, mask, utf8};

/// Limits and timeouts, shared by all connections of a reactor and passed to each call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Largest frame payload accepted (close 1009 above it).
    pub max_frame_size: u64,
    /// Largest message accepted, all fragments together (close 1009 above it).
    pub max_message_size: u64,
    /// Largest HTTP request head (431 above it).
    pub max_head_size: usize,
    /// Most request header lines (431 above it).
    pub max_headers: usize,
    /// Largest plain HTTP request body (413 above it).
    pub max_body_size: usize,
    /// Time from accept (or from the first byte of a request that follows another on a
    /// persistent connection) to a complete request head.
    pub handshake_timeout: Duration,
    /// HTTP keep-alive: after an answer on a persistent connection, how long the client has to
    /// start its next request ([`Connection::next_request`]).
    pub keep_alive_timeout: Duration,
    /// Send a ping after this long without hearing from the peer.
    pub ping_interval: Option<Duration>,
    /// After a ping, how long the peer has to send anything before the connection is dropped.
    pub pong_timeout: Duration,
    /// Close (1001) after this long without hearing from the peer.
    pub idle_timeout: Option<Duration>,
    /// How long to wait for the peer's close frame after sending ours.
    pub close_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            max_head_size: 8 << 10,
            max_headers: 64,
            max_body_size: 1 << 20,
            handshake_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(75),
            ping_interval: Some(Duration::from_secs(30)),
            pong_timeout: Duration::from_secs(15),
            idle_timeout: None,
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// Which end of the connection this is: servers expect masked frames, clients send them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Accepts connections.
    Server,
    /// Opens connections.
    Client,
}

/// Where the connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Server: reading the HTTP request head.
    Handshaking,
    /// Messages flow both ways.
    Open,
    /// Our close frame is sent; waiting for the peer's.
    Closing,
    /// Server: the request was answered with a response whose body is streamed (Server-Sent
    /// Events, NDJSON): the caller sends the body's bytes as they are, without WebSocket
    /// framing; nothing the peer sends is read, and there are no pings or close handshake.
    Streaming,
    /// Nothing more will be sent or delivered.
    Closed,
}

/// The type of a data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// UTF-8 text (validated).
    Text,
    /// Arbitrary bytes.
    Binary,
}

/// What a read produced.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "a request's parsed headers live on the stack for one call; boxing would allocate per handshake"
)]
pub enum Event<'a> {
    /// Server, while handshaking: a complete request head and its body (`Content-Length`
    /// bytes, empty without one). Answer it, then call [`Connection::accept`] (upgrade) or
    /// [`Connection::finish`] (plain HTTP). Boxed: a parsed head is about 3 KiB (its header
    /// array), which every event would otherwise be, and be copied as, once per message.
    Request(Box<Request<'a>>, &'a [u8]),
    /// A complete message.
    Message(MessageKind, &'a [u8]),
    /// A ping; the pong is already sent.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// The peer's close frame (code and reason, if any); ours is already sent.
    Close(Option<(CloseCode, &'a str)>),
    /// The connection failed; the error answer or close frame is already sent.
    Failed(Failure),
}

/// Why a connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A bad request head; answered with this HTTP status.
    Head(HeadError),
    /// A protocol violation; closed with this code.
    Protocol(CloseCode, &'static str),
}

/// What a timeout did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    /// No request head in time: closed.
    Handshake,
    /// A persistent HTTP connection was idle past `keep_alive_timeout`: closed.
    KeepAlive,
    /// The peer was quiet: a ping was sent.
    PingSent,
    /// No answer to our ping: close frame sent, connection closed.
    Pong,
    /// The peer was quiet too long: close handshake started (1001).
    Idle,
    /// The peer never answered our close frame: closed.
    Close,
}

/// Why a message cannot be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// Not open: still handshaking, or a close frame was already sent.
    NotOpen,
    /// A client must mask its frames: use [`Connection::send_in_place`].
    NeedsMask,
    /// A control frame payload over 125 bytes.
    ControlTooLong,
    /// Compression was not negotiated on this connection.
    NoDeflate,
}

bitflags::bitflags! {
    /// A connection's yes/no facts, one bit each in one byte (the struct stays 48 bytes).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Flags: u8 {
        /// Client role: our frames are masked, the peer's must not be. Set once, at creation.
        const CLIENT = 1;
        /// Our close frame is sent: nothing more may be sent, and the peer's close ends it.
        const CLOSE_SENT = 1 << 1;
        /// Our ping is unanswered: the peer must be heard within `pong_timeout`. Anything it
        /// sends clears it, not only a pong.
        const PING_OUT = 1 << 2;
        /// A frame header was read and `remaining` bytes of its payload are still to come.
        const IN_FRAME = 1 << 3;
        /// The frame in progress has FIN set: its end completes the message.
        const FRAME_FIN = 1 << 4;
        /// `100 Continue` was sent for a request body (once per request).
        const CONTINUE_SENT = 1 << 5;
        /// The message being assembled in `rx` is compressed (its first frame had RSV1).
        const COMPRESSED = 1 << 6;
        /// Handshaking, after an answer on a persistent HTTP connection: waiting for the first
        /// byte of the next request (`keep_alive_timeout` from `stamp`).
        const KEPT_ALIVE = 1 << 7;
    }
}

/// What must be removed from `rx` at the start of the next read, because the last event borrowed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cleanup {
    None,
    Message,
    Control,
}

/// One connection's protocol state. See the module docs.
#[derive(Debug)]
pub struct Connection {
    /// Handshaking: when accepted. Open: when the peer was last heard. Closing: when our close left.
    stamp: Instant,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// Leading bytes of the text message in `rx` known to be valid UTF-8.
    utf8_valid: u32,
    /// Mask key of the current frame, rotated to the next payload byte.
    mask: [u8; 4],
    /// Client only: state of the mask key generator.
    mask_seed: u32,
    /// The close code sent or received; 0 while none.
    close_code: u16,
    state: State,
    flags: Flags,
    /// Opcode of the frame whose payload is in progress.
    frame_op: OpCode,
    /// Kind of the message being assembled in `rx`, if any.
    message: Option<MessageKind>,
    /// Header bytes waiting at the end of `rx` for the rest of the header.
    partial_header: u8,
    /// Length of the control frame whose payload sits at the end of `rx`.
    control_len: u8,
    cleanup: Cleanup,
    /// permessage-deflate, when negotiated.
    deflate: Option<deflate::Packed>,
}

impl Connection {
    /// A server connection just accepted, waiting for its request head.
    pub fn server(now: Instant) -> Connection {
        Connection::new(State::Handshaking, Flags::empty(), 0, now)
    }

    /// A client connection whose handshake is done (see [`super::handshake::ClientHandshake`]).
    /// `mask_seed` seeds the masking keys; pass a random value.
    pub fn client(now: Instant, mask_seed: u32) -> Connection {
        Connection::new(State::Open, Flags::CLIENT, mask_seed | 1, now)
    }

    fn new(state: State, flags: Flags, mask_seed: u32, now: Instant) -> Connection {
        Connection {
            stamp: now,
            remaining: 0,
            utf8_valid: 0,
            mask: [0; 4],
            mask_seed,
            close_code: 0,
            state,
            flags,
            frame_op: OpCode::Continuation,
            message: None,
            partial_header: 0,
            control_len: 0,
            cleanup: Cleanup::None,
            deflate: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The role.
    pub fn role(&self) -> Role {
        if self.flags.contains(Flags::CLIENT) {
            Role::Client
        } else {
            Role::Server
        }
    }

    /// The close code sent or received, once there is one.
    pub fn close_code(&self) -> Option<CloseCode> {
        (self.close_code != 0).then_some(CloseCode(self.close_code))
    }

    /// Whether WebSocket messages can be sent.
    pub fn can_send(&self) -> bool {
        self.state == State::Open
    }

    /// Whether the connection carries a streaming HTTP response (see [`State::Streaming`]):
    /// bytes are sent as they are.
    pub fn is_streaming(&self) -> bool {
        self.state == State::Streaming
    }

    /// The permessage-deflate parameters, when negotiated.
    pub fn deflate(&self) -> Option<Params> {
        self.deflate.map(deflate::Packed::unpack)
    }

    /// Turns permessage-deflate on with the agreed parameters (server: after
    /// [`Connection::accept`]; client: after checking the server's answer). From then on RSV1
    /// marks compressed messages, which [`Connection::read_inflating`] inflates.
    pub fn set_deflate(&mut self, params: Params) {
        self.deflate = Some(params.pack());
    }

    /// Feeds received bytes. Consumes `input` from the front and returns at most one event; call
    /// again (with the rest of `input`, possibly empty) until it returns `None`. An event may
    /// borrow `input` (unmasked in place) or `rx`; both must be left alone until the next call.
    /// For a connection without permessage-deflate; see [`Connection::read_inflating`].
    pub fn read<'x, 'i: 'x, 'r: 'x>(
        &mut self,
        input: &mut &'i mut [u8],
        rx: &'r mut Vec<u8>,
        now: Instant,
        config: &Config,
        out: &mut (impl Transmit + ?Sized),
    ) -> Option<Event<'x>> {
        // A zero-sized value: leaking its box allocates nothing.
        let no_inflate: &'static mut NoInflate = Box::leak(Box::new(NoInflate));
        self.read_inflating(input, rx, no_inflate, now, config, out)
    }

    /// [`Connection::read`] for a connection that may have negotiated permessage-deflate:
    /// compressed messages are inflated with what `inflate` lends (and may borrow it).
    // `#[inline]` here and on the per-message helpers below: they are called from other crates
    // (the engine), which cannot inline a function of this one otherwise; the crate split cost
    // about 180 user instructions per echoed message without (callgrind, docs/benchmarks.md).
    #[inline]
    pub fn read_inflating<'x, 'i: 'x, 'r: 'x, 'f: 'x>(
        &mut self,
        input: &mut &'i mut [u8],
        rx: &'r mut Vec<u8>,
        inflate: &'f mut (impl Inflate + ?Sized),
        now: Instant,
        config: &Config,
        out: &mut (impl Transmit + ?Sized),
    ) -> Option<Event<'x>> {
        match std::mem::replace(&mut self.cleanup, Cleanup::None) {
            Cleanup::None => {}
            Cleanup::Message => rx.clear(),
            Cleanup::Control => rx.truncate(rx.len() - self.control_len as usize),
        }
        match self.state {
            State::Handshaking => self.read_head(input, rx, now, config, out),
            State::Open | State::Closing => self.read_frames(input, rx, inflate, now, config, out),
            // A streaming response's client has nothing to say: what it sends is dropped
            // unread (its FIN still ends the connection, below this state machine).
            State::Streaming | State::Closed => {
                *input = &mut [];
                None
            }
        }
    }

    fn read_head<'x, 'i: 'x, 'r: 'x>(
        &mut self,
        input: &mut &'i mut [u8],
        rx: &'r mut Vec<u8>,
        now: Instant,
        config: &Config,
        out: &mut (impl Transmit + ?Sized),
    ) -> Option<Event<'x>> {
        if input.is_empty() {
            return None;
        }
        if self.flags.contains(Flags::KEPT_ALIVE) {
            // The next request has begun: it has `handshake_timeout` to complete its head.
            self.flags.remove(Flags::KEPT_ALIVE);
            self.stamp = now;
        }
        if rx.is_empty() {
            // The usual case: the whole request in one read, parsed where it lies.
            match parse_head(input, config).and_then(|parsed| request_len(parsed, config)) {
                Ok(Some((head, total))) if total <= input.len() => {
                    let (request, rest) = std::mem::take(input).split_at_mut(total);
                    *input = rest;
                    let (head, body) = request.split_at(head);
                    let (request, _) = parse_head(head, config).ok()??;
                    return Some(Event::Request(Box::new(request), body));
                }
                Ok(_) => {
                    rx.extend_from_slice(input);
                    *input = &mut [];
                }
                Err(e) => return Some(self.fail_head(e, input, out)),
            }
        } else {
            rx.extend_from_slice(input);
            *input = &mut [];
        }
        match parse_head(rx, config).and_then(|parsed| request_len(parsed, config)) {
            // Bytes after the request stay in rx; `accept` leaves them there as frames to replay.
            Ok(Some((head, total))) if total <= rx.len() => {
                self.remaining = total as u64;
                let rx: &'r Vec<u8> = rx;
                let (head, body) = rx[..total].split_at(head);
                let (request, _) = parse_head(head, config).ok()??;
                Some(Event::Request(Box::new(request), body))
            }
            Ok(Some(_)) => {
                // The head is in, the body is not: tell a client that waits for it to send.
                if !self.flags.contains(Flags::CONTINUE_SENT) {
                    self.flags.insert(Flags::CONTINUE_SENT);
                    let expects = parse_head(rx, config)
                        .ok()
                        .flatten()
                        .is_some_and(|(request, _)| request.has_token("expect", "100-continue"));
                    if expects {
                        out.transmit(b"HTTP/1.1 100 Continue\r\n\r\n", &[]);
                    }
                }
                None
            }
            Ok(None) => None,
            Err(e) => Some(self.fail_head(e, input, out)),
        }
    }

    fn fail_head(
        &mut self,
        error: HeadError,
        input: &mut &mut [u8],
        out: &mut (impl Transmit + ?Sized),
    ) -> Event<'static> {
        let answer: &[u8] = match error {
            HeadError::Malformed => {
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            HeadError::TooLarge | HeadError::TooManyHeaders => {
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            HeadError::BodyTooLarge => {
                b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            HeadError::LengthRequired => {
                b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
        };
        out.transmit(answer, &[]);
        *input = &mut [];
        self.state = State::Closed;
        Event::Failed(Failure::Head(error))
    }

    /// After a `Request` event: the upgrade was accepted (the 101 answer is the caller's to send).
    /// Removes the head from `rx`; whatever stays in `rx` afterwards are frames the client sent
    /// right behind its request, to be fed back through [`Connection::read`] as input.
    pub fn accept(&mut self, now: Instant, rx: &mut Vec<u8>) {
        debug_assert_eq!(self.state, State::Handshaking);
        rx.drain(..(self.remaining as usize).min(rx.len()));
        self.remaining = 0;
        self.state = State::Open;
        self.stamp = now;
    }

    /// After a `Request` event answered with the head of a streaming response (the caller sends
    /// it): the connection carries the response's body from now on ([`State::Streaming`]).
    /// Removes the request from `rx`; anything the client sent behind it is discarded.
    pub fn stream(&mut self, now: Instant, rx: &mut Vec<u8>) {
        debug_assert_eq!(self.state, State::Handshaking);
        rx.clear();
        self.remaining = 0;
        self.state = State::Streaming;
        self.stamp = now;
    }

    /// After a `Request` event answered as plain HTTP on a persistent connection: reads the next
    /// request. Removes the answered request from `rx`; what stays there are requests the client
    /// sent behind it (pipelined), to be fed back through [`Connection::read`] as input, in
    /// order. The client then has `keep_alive_timeout` to start its next request.
    pub fn next_request(&mut self, now: Instant, rx: &mut Vec<u8>) {
        debug_assert_eq!(self.state, State::Handshaking);
        rx.drain(..(self.remaining as usize).min(rx.len()));
        self.remaining = 0;
        self.flags.remove(Flags::CONTINUE_SENT);
        self.flags.insert(Flags::KEPT_ALIVE);
        self.stamp = now;
    }

    /// After a `Request` event answered as plain HTTP, or to drop the connection without a
    /// close handshake: nothing more is read or sent.
    pub fn finish(&mut self) {
        self.state = State::Closed;
    }

    #[inline]
    fn read_frames<'x, 'i: 'x, 'r: 'x, 'f: 'x>(
        &mut self,
        input: &mut &'i mut [u8],
        rx: &'r mut Vec<u8>,
        inflate: &'f mut (impl Inflate + ?Sized),
        now: Instant,
        config: &Config,
        out: &mut (impl Transmit + ?Sized),
    ) -> Option<Event<'x>> {
        if !input.is_empty() && self.state == State::Open {
            self.stamp = now;
            self.flags.remove(Flags::PING_OUT);
        }
        loop {
            if self.flags.contains(Flags::IN_FRAME) {
                let take = self.remaining.min(input.len() as u64) as usize;
                let (chunk, rest) = std::mem::take(input).split_at_mut(take);
                *input = rest;
                self.unmask(chunk);
                self.remaining -= take as u64;
                if self.frame_op.is_control() {
                    rx.extend_from_slice(chunk);
                    if self.remaining > 0 {
                        return None;
                    }
                    self.flags.remove(Flags::IN_FRAME);
                    self.cleanup = Cleanup::Control;
                    let rx: &'r Vec<u8> = rx;
                    let payload = &rx[rx.len() - self.control_len as usize..];
                    return self.on_control(self.frame_op, payload, now, out);
                }
                if self.state != State::Open {
                    // Closing: data is no longer delivered.
                    if self.remaining > 0 {
                        return None;
                    }
                    self.flags.remove(Flags::IN_FRAME);
                    continue;
                }
                rx.extend_from_slice(chunk);
                // Compressed text is validated once inflated.
                if self.message == Some(MessageKind::Text)
                    && !self.flags.contains(Flags::COMPRESSED)
                {
                    let start = self.utf8_valid as usize;
                    match utf8::validate_partial(&rx[start..]) {
                        Some(valid) => self.utf8_valid += valid as u32,
                        None => {
                            return Some(self.fail(
                                CloseCode::INVALID_PAYLOAD,
                                "invalid UTF-8",
                                input,
                                out,
                            ));
                        }
                    }
                }
                if self.remaining > 0 {
                    return None;
                }
                self.flags.remove(Flags::IN_FRAME);
                if !self.flags.contains(Flags::FRAME_FIN) {
                    continue;
                }
                let kind = self.message.take()?;
                self.cleanup = Cleanup::Message;
                if self.flags.contains(Flags::COMPRESSED) {
                    let rx: &'r Vec<u8> = rx;
                    return Some(self.inflated(kind, rx, inflate, config, input, out));
                }
                if kind == MessageKind::Text && self.utf8_valid as usize != rx.len() {
                    return Some(self.fail(
                        CloseCode::INVALID_PAYLOAD,
                        "invalid UTF-8",
                        input,
                        out,
                    ));
                }
                return Some(Event::Message(kind, rx));
            }

            let header = match self.next_header(input, rx) {
                Ok(Some(header)) => header,
                Ok(None) => return None,
                Err(HeaderError::ReservedOpcode(_)) => {
                    return Some(self.fail(
                        CloseCode::PROTOCOL_ERROR,
                        "reserved opcode",
                        input,
                        out,
                    ));
                }
                Err(HeaderError::LengthOverflow) => {
                    return Some(self.fail(
                        CloseCode::PROTOCOL_ERROR,
                        "frame length overflow",
                        input,
                        out,
                    ));
                }
            };
            if let Err((code, why)) = self.check_header(&header, rx.len() as u64, config) {
                return Some(self.fail(code, why, input, out));
            }
            self.mask = header.mask.unwrap_or([0; 4]);
            let len = header.payload_len as usize;
            let whole_in_input = header.payload_len <= input.len() as u64;

            if header.opcode.is_control() {
                if whole_in_input {
                    let (payload, rest) = std::mem::take(input).split_at_mut(len);
                    *input = rest;
                    self.unmask(payload);
                    return self.on_control(header.opcode, payload, now, out);
                }
                self.control_len = len as u8;
            } else if header.opcode != OpCode::Continuation {
                let kind = if header.opcode == OpCode::Text {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                let compressed = header.rsv & RSV1 != 0;
                if header.fin && whole_in_input && self.state == State::Open {
                    // Fast path: a whole message in the input, delivered where it lies.
                    let (payload, rest) = std::mem::take(input).split_at_mut(len);
                    *input = rest;
                    self.unmask(payload);
                    if compressed {
                        return Some(self.inflated(kind, payload, inflate, config, input, out));
                    }
                    if kind == MessageKind::Text && utf8::validate_complete(payload).is_none() {
                        return Some(self.fail(
                            CloseCode::INVALID_PAYLOAD,
                            "invalid UTF-8",
                            input,
                            out,
                        ));
                    }
                    return Some(Event::Message(kind, payload));
                }
                if self.state == State::Open {
                    self.message = Some(kind);
                    self.utf8_valid = 0;
                    self.flags.set(Flags::COMPRESSED, compressed);
                }
            }
            self.frame_op = header.opcode;
            self.remaining = header.payload_len;
            self.flags.insert(Flags::IN_FRAME);
            self.flags.set(Flags::FRAME_FIN, header.fin);
        }
    }

    /// The next frame header: from `input`, or completed from bytes parked at the end of `rx`.
    fn next_header(
        &mut self,
        input: &mut &mut [u8],
        rx: &mut Vec<u8>,
    ) -> Result<Option<FrameHeader>, HeaderError> {
        if self.partial_header == 0 {
            return match frame::decode_header(input)? {
                Some((header, len)) => {
                    *input = &mut std::mem::take(input)[len..];
                    Ok(Some(header))
                }
                None => {
                    // Never more than 13 bytes: a header is at most 14.
                    self.partial_header = input.len() as u8;
                    rx.extend_from_slice(input);
                    *input = &mut [];
                    Ok(None)
                }
            };
        }
        let start = rx.len() - self.partial_header as usize;
        loop {
            let have = rx.len() - start;
            let needed = if have < 2 {
                2
            } else {
                frame::header_len(rx[start + 1])
            };
            let take = (needed - have).min(input.len());
            rx.extend_from_slice(&input[..take]);
            *input = &mut std::mem::take(input)[take..];
            if rx.len() - start < needed {
                self.partial_header = (rx.len() - start) as u8;
                return Ok(None);
            }
            if needed > 2 || frame::header_len(rx[start + 1]) == 2 {
                break;
            }
        }
        let decoded = frame::decode_header(&rx[start..]);
        rx.truncate(start);
        self.partial_header = 0;
        Ok(decoded?.map(|(header, _)| header))
    }

    /// Checks a header against the protocol and the limits; `assembled` is the size of the message
    /// so far.
    fn check_header(
        &self,
        header: &FrameHeader,
        assembled: u64,
        config: &Config,
    ) -> Result<(), (CloseCode, &'static str)> {
        let protocol = |why| Err((CloseCode::PROTOCOL_ERROR, why));
        if header.rsv != 0 {
            // RSV1 marks the first frame of a compressed message, once deflate is negotiated.
            let first_data = matches!(header.opcode, OpCode::Text | OpCode::Binary);
            if header.rsv != RSV1 || self.deflate.is_none() {
                return protocol("reserved bits set");
            }
            if !first_data {
                return protocol("RSV1 on a control or continuation frame");
            }
        }
        if header.mask.is_some() == (self.flags.contains(Flags::CLIENT)) {
            return protocol(if self.flags.contains(Flags::CLIENT) {
                "masked server frame"
            } else {
                "unmasked client frame"
            });
        }
        if header.opcode.is_control() {
            if !header.fin {
                return protocol("fragmented control frame");
            }
            if header.payload_len > 125 {
                return protocol("control frame over 125 bytes");
            }
            return Ok(());
        }
        // While closing no message is assembled, so continuation rules are not checked.
        if self.state == State::Open {
            match (header.opcode, self.message) {
                (OpCode::Continuation, None) => return protocol("continuation without a message"),
                (OpCode::Text | OpCode::Binary, Some(_)) => {
                    return protocol("new message inside a fragmented one");
                }
                _ => {}
            }
        }
        if header.payload_len > config.max_frame_size {
            return Err((CloseCode::MESSAGE_TOO_BIG, "frame too big"));
        }
        if assembled + header.payload_len > config.max_message_size {
            return Err((CloseCode::MESSAGE_TOO_BIG, "message too big"));
        }
        Ok(())
    }

    /// Inflates a whole compressed message and delivers it, or fails the connection (1009 past
    /// the message limit, checked while inflating; 1007 for bad data or bad UTF-8).
    fn inflated<'f>(
        &mut self,
        kind: MessageKind,
        compressed: &[u8],
        inflate: &'f mut (impl Inflate + ?Sized),
        config: &Config,
        input: &mut &mut [u8],
        out: &mut (impl Transmit + ?Sized),
    ) -> Event<'f> {
        let Some(params) = self.deflate() else {
            return self.fail(CloseCode::PROTOCOL_ERROR, "reserved bits set", input, out);
        };
        let peer = match self.role() {
            Role::Server => params.client_to_server(),
            Role::Client => params.server_to_client(),
        };
        let limit = usize::try_from(config.max_message_size).unwrap_or(usize::MAX);
        match inflate.inflate(compressed, limit, peer) {
            Ok(message) => {
                if kind == MessageKind::Text && utf8::validate_complete(message).is_none() {
                    return self.fail(CloseCode::INVALID_PAYLOAD, "invalid UTF-8", input, out);
                }
                Event::Message(kind, message)
            }
            Err(InflateError::TooBig) => {
                self.fail(CloseCode::MESSAGE_TOO_BIG, "message too big", input, out)
            }
            Err(InflateError::Corrupt) => self.fail(
                CloseCode::INVALID_PAYLOAD,
                "invalid compressed data",
                input,
                out,
            ),
        }
    }

    #[inline]
    fn unmask(&mut self, payload: &mut [u8]) {
        if !self.flags.contains(Flags::CLIENT) {
            mask::apply_mask(payload, self.mask, 0);
            self.mask = mask::key_at(self.mask, payload.len());
        }
    }

    fn on_control<'a>(
        &mut self,
        opcode: OpCode,
        payload: &'a [u8],
        now: Instant,
        out: &mut (impl Transmit + ?Sized),
    ) -> Option<Event<'a>> {
        match opcode {
            OpCode::Ping => {
                if self.state == State::Open {
                    self.send_control(OpCode::Pong, payload, out);
                }
                Some(Event::Ping(payload))
            }
            OpCode::Pong => Some(Event::Pong(payload)),
            _ => match close::parse_payload(payload) {
                Err(code) => Some(self.fail(code, "bad close frame", &mut &mut [][..], out)),
                Ok(received) => {
                    if !self.flags.contains(Flags::CLOSE_SENT) {
                        let code = received.map_or(CloseCode::NO_STATUS, |(code, _)| code);
                        self.close_code = code.0;
                        // Echo the code, as RFC 6455 §5.5.1 suggests; an empty close gets an empty one.
                        let mut buf = [0; 2 + close::MAX_REASON_LEN];
                        let len = if received.is_some() {
                            close::encode_payload(&mut buf, code, "")
                        } else {
                            0
                        };
                        self.send_control(OpCode::Close, &buf[..len], out);
                        self.flags.insert(Flags::CLOSE_SENT);
                    }
                    self.state = State::Closed;
                    self.stamp = now;
                    Some(Event::Close(received))
                }
            },
        }
    }

    /// Fails the connection: our close frame (if not sent yet) with `code`, then `Closed`.
    fn fail(
        &mut self,
        code: CloseCode,
        why: &'static str,
        input: &mut &mut [u8],
        out: &mut (impl Transmit + ?Sized),
    ) -> Event<'static> {
        if !self.flags.contains(Flags::CLOSE_SENT) {
            self.send_close(code, why, out);
            self.close_code = code.0;
        }
        *input = &mut [];
        self.state = State::Closed;
        Event::Failed(Failure::Protocol(code, why))
    }

    fn send_close(&mut self, code: CloseCode, reason: &str, out: &mut (impl Transmit + ?Sized)) {
        let mut buf = [0; 2 + close::MAX_REASON_LEN];
        let len = close::encode_payload(&mut buf, code, reason);
        self.send_control(OpCode::Close, &buf[..len], out);
        self.flags.insert(Flags::CLOSE_SENT);
    }

    /// Sends a control frame; its payload is at most 125 bytes (checked by callers).
    fn send_control(&mut self, opcode: OpCode, payload: &[u8], out: &mut (impl Transmit + ?Sized)) {
        let mut copy = [0u8; 125];
        let copy = &mut copy[..payload.len()];
        copy.copy_from_slice(payload);
        self.send_frame(opcode, 0, copy, out);
    }

    /// Frames and sends `payload` with the reserved bits `rsv`, masking it in place for a client.
    fn send_frame(
        &mut self,
        opcode: OpCode,
        rsv: u8,
        payload: &mut [u8],
        out: &mut (impl Transmit + ?Sized),
    ) {
        let mask = (self.flags.contains(Flags::CLIENT)).then(|| self.next_mask_key());
        if let Some(key) = mask {
            mask::apply_mask(payload, key, 0);
        }
        let mut header = [0; MAX_HEADER_LEN];
        let len = frame::encode_header(
            &mut header,
            &FrameHeader {
                fin: true,
                rsv,
                opcode,
                mask,
                payload_len: payload.len() as u64,
            },
        );
        out.transmit(&header[..len], payload);
    }

    fn next_mask_key(&mut self) -> [u8; 4] {
        // xorshift32: masking keys only need to be unpredictable to a proxy, not secret.
        let mut x = self.mask_seed;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_seed = x;
        x.to_ne_bytes()
    }

    /// Server: sends a message (header and payload through `out`, the payload not copied).
    pub fn send(
        &mut self,
        kind: MessageKind,
        payload: &[u8],
        out: &mut (impl Transmit + ?Sized),
    ) -> Result<(), SendError> {
        if self.flags.contains(Flags::CLIENT) {
            return Err(SendError::NeedsMask);
        }
        let header = self.message_header(kind, payload.len())?;
        out.transmit(header.as_slice(), payload);
        Ok(())
    }

    /// The header of a server message of `len` bytes (an unmasked single frame).
    #[inline]
    fn message_header(&self, kind: MessageKind, len: usize) -> Result<HeaderBytes, SendError> {
        if !self.can_send() {
            return Err(SendError::NotOpen);
        }
        let mut header = HeaderBytes([0; MAX_HEADER_LEN], 0);
        header.1 = frame::encode_header(
            &mut header.0,
            &FrameHeader {
                fin: true,
                rsv: 0,
                opcode: kind_opcode(kind),
                mask: None,
                payload_len: len as u64,
            },
        ) as u8;
        Ok(header)
    }

    /// Either role: sends a message, masking `payload` in place for a client.
    pub fn send_in_place(
        &mut self,
        kind: MessageKind,
        payload: &mut [u8],
        out: &mut (impl Transmit + ?Sized),
    ) -> Result<(), SendError> {
        if !self.can_send() {
            return Err(SendError::NotOpen);
        }
        self.send_frame(kind_opcode(kind), 0, payload, out);
        Ok(())
    }

    /// Either role: sends `payload` as one compressed message (RSV1), compressed by `deflater`
    /// into `scratch` (and masked there for a client). The deflater must be this connection's
    /// own when its direction keeps context; a shared one is reset after each message.
    pub fn send_compressed(
        &mut self,
        kind: MessageKind,
        payload: &[u8],
        deflater: &mut Deflater,
        scratch: &mut Vec<u8>,
        out: &mut (impl Transmit + ?Sized),
    ) -> Result<(), SendError> {
        if !self.can_send() {
            return Err(SendError::NotOpen);
        }
        let params = self.deflate().ok_or(SendError::NoDeflate)?;
        let ours = match self.role() {
            Role::Server => params.server_to_client(),
            Role::Client => params.client_to_server(),
        };
        scratch.clear();
        deflater.compress(payload, scratch, ours.takeover);
        self.send_frame(kind_opcode(kind), RSV1, scratch, out);
        Ok(())
    }

    /// Sends a ping.
    pub fn ping(
        &mut self,
        payload: &[u8],
        out: &mut (impl Transmit + ?Sized),
    ) -> Result<(), SendError> {
        if !self.can_send() {
            return Err(SendError::NotOpen);
        }
        if payload.len() > 125 {
            return Err(SendError::ControlTooLong);
        }
        self.send_control(OpCode::Ping, payload, out);
        Ok(())
    }

    /// Starts the close handshake (a close frame with `code` and `reason`, then `Closing`).
    /// Before the handshake is done the connection is simply finished; a streaming response
    /// ends at once (`code` is kept as the close code, nothing is sent: the caller writes the
    /// body's own ending, if it has one, before).
    pub fn close(
        &mut self,
        code: CloseCode,
        reason: &str,
        now: Instant,
        out: &mut (impl Transmit + ?Sized),
    ) {
        match self.state {
            State::Handshaking => self.state = State::Closed,
            State::Streaming => {
                self.close_code = code.0;
                self.state = State::Closed;
            }
            State::Open => {
                self.send_close(code, reason, out);
                self.close_code = code.0;
                self.state = State::Closing;
                self.stamp = now;
            }
            State::Closing | State::Closed => {}
        }
    }

    /// Ends the WebSocket at once for a reason of the caller's (a limit): sends a close frame
    /// with `code` and `reason` if the connection is open and has sent none, and goes straight to
    /// `Closed` without waiting for the peer's close. Whatever frame or message was in progress
    /// is forgotten, so the caller may take back the `rx` it lent. Before the handshake is done
    /// the connection is simply finished.
    pub fn abort(&mut self, code: CloseCode, reason: &str, out: &mut (impl Transmit + ?Sized)) {
        if self.state == State::Open && !self.flags.contains(Flags::CLOSE_SENT) {
            self.send_close(code, reason, out);
            self.close_code = code.0;
        }
        self.state = State::Closed;
        self.remaining = 0;
        self.flags
            .remove(Flags::IN_FRAME | Flags::FRAME_FIN | Flags::COMPRESSED);
        self.message = None;
        self.partial_header = 0;
        self.control_len = 0;
        self.cleanup = Cleanup::None;
    }

    /// Whether the connection is between frames with nothing kept in `rx`: no request head, no
    /// partial frame header, frame or fragmented message. It first gives back what the last event
    /// borrowed from `rx`, so when this is true `rx` is empty and the caller may park bytes of its
    /// own there (received bytes it will feed later, in order).
    pub fn settle(&mut self, rx: &mut Vec<u8>) -> bool {
        match std::mem::replace(&mut self.cleanup, Cleanup::None) {
            Cleanup::None => {}
            Cleanup::Message => rx.clear(),
            Cleanup::Control => rx.truncate(rx.len() - self.control_len as usize),
        }
        matches!(self.state, State::Open | State::Closing)
            && !self.flags.contains(Flags::IN_FRAME)
            && self.partial_header == 0
            && self.message.is_none()
            && rx.is_empty()
    }

    /// When [`Connection::handle_timeout`] next has something to do, if ever.
    #[inline]
    pub fn poll_timeout(&self, config: &Config) -> Option<Instant> {
        match self.state {
            State::Handshaking if self.flags.contains(Flags::KEPT_ALIVE) => {
                Some(self.stamp + config.keep_alive_timeout)
            }
            State::Handshaking => Some(self.stamp + config.handshake_timeout),
            State::Open => {
                let ping = config.ping_interval.map(|interval| {
                    let due = self.stamp + interval;
                    if self.flags.contains(Flags::PING_OUT) {
                        due + config.pong_timeout
                    } else {
                        due
                    }
                });
                let idle = config.idle_timeout.map(|idle| self.stamp + idle);
                match (ping, idle) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            State::Closing => Some(self.stamp + config.close_timeout),
            // A streaming response's liveness is its writes: the caller's heartbeats fail on a
            // dead peer, and its queue cap catches one that stops reading.
            State::Streaming | State::Closed => None,
        }
    }

    /// Acts on whatever timeout has passed by `now` (nothing if none has: timers may fire late or
    /// spuriously, this checks).
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        config: &Config,
        out: &mut (impl Transmit + ?Sized),
    ) -> Option<Timeout> {
        if self.poll_timeout(config)? > now {
            return None;
        }
        match self.state {
            State::Handshaking if self.flags.contains(Flags::KEPT_ALIVE) => {
                self.state = State::Closed;
                Some(Timeout::KeepAlive)
            }
            State::Handshaking => {
                self.state = State::Closed;
                Some(Timeout::Handshake)
            }
            State::Open => {
                if config
                    .idle_timeout
                    .is_some_and(|idle| now >= self.stamp + idle)
                {
                    self.close(CloseCode::GOING_AWAY, "idle timeout", now, out);
                    Some(Timeout::Idle)
                } else if self.flags.contains(Flags::PING_OUT) {
                    self.send_close(CloseCode::GOING_AWAY, "ping timeout", out);
                    self.close_code = CloseCode::GOING_AWAY.0;
                    self.state = State::Closed;
                    Some(Timeout::Pong)
                } else {
                    self.send_control(OpCode::Ping, &[], out);
                    self.flags.insert(Flags::PING_OUT);
                    // The pong deadline counts from now, not from when the ping was due: a
                    // caller that comes late (a reactor busy for seconds with a large fanout)
                    // must not blame the peer for its own delay. `stamp` moves to where the
                    // deadline (`stamp + interval + pong_timeout`) is `now + pong_timeout`; the
                    // idle deadline, counted from the same stamp, moves by as much.
                    if let Some(stamp) = config.ping_interval.and_then(|i| now.checked_sub(i)) {
                        self.stamp = self.stamp.max(stamp);
                    }
                    Some(Timeout::PingSent)
                }
            }
            State::Closing => {
                self.state = State::Closed;
                Some(Timeout::Close)
            }
            State::Streaming | State::Closed => None,
        }
    }
}

/// The lengths of a parsed request: its head, and head plus body. A head that breaks HTTP/1.1's
/// message rules (`Host`, the body's framing) is refused here, before anyone routes it.
fn request_len(
    parsed: Option<(Request<'_>, usize)>,
    config: &Config,
) -> Result<Option<(usize, usize)>, HeadError> {
    let Some((request, head)) = parsed else {
        return Ok(None);
    };
    request.check_host()?;
    Ok(Some((head, head + request.body_len(config.max_body_size)?)))
}

fn parse_head<'b>(
    buf: &'b [u8],
    config: &Config,
) -> Result<Option<(Request<'b>, usize)>, HeadError> {
    Request::parse(buf, config.max_head_size, config.max_headers)
}

fn kind_opcode(kind: MessageKind) -> OpCode {
    match kind {
        MessageKind::Text => OpCode::Text,
        MessageKind::Binary => OpCode::Binary,
    }
}

/// What [`Connection::read`] lends: nothing, since RSV1 is refused before any inflating.
struct NoInflate;

impl Inflate for NoInflate {
    fn inflate(
        &mut self,
        _: &[u8],
        _: usize,
        _: deflate::Direction,
    ) -> Result<&[u8], InflateError> {
        Err(InflateError::Corrupt)
    }
}

/// An encoded frame header, up to 14 bytes.
#[derive(Clone, Copy, Debug)]
struct HeaderBytes([u8; MAX_HEADER_LEN], u8);

impl HeaderBytes {
    /// The header's bytes.
    #[inline]
    fn as_slice(&self) -> &[u8] {
        &self.0[..self.1 as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::ClientHandshake;
    use proptest::prelude::*;

    /// An owned copy of an event, to compare.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Ev {
        Request(String),
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
        Failed(Failure),
    }

    fn own(event: Event<'_>) -> Ev {
        match event {
            Event::Request(r, body) => {
                Ev::Request(format!("{} {}", r.target(), String::from_utf8_lossy(body)))
            }
            Event::Message(MessageKind::Text, p) => {
                Ev::Text(String::from_utf8(p.to_vec()).unwrap())
            }
            Event::Message(MessageKind::Binary, p) => Ev::Binary(p.to_vec()),
            Event::Ping(p) => Ev::Ping(p.to_vec()),
            Event::Pong(p) => Ev::Pong(p.to_vec()),
            Event::Close(c) => Ev::Close(c.map(|(code, r)| (code.0, r.to_owned()))),
            Event::Failed(f) => Ev::Failed(f),
        }
    }

    /// A server connection already open, with its lent buffer and what it sent.
    struct Server {
        conn: Connection,
        rx: Vec<u8>,
        inflate: deflate::MessageInflater,
        sent: Vec<u8>,
        config: Config,
        now: Instant,
    }

    impl Server {
        fn open() -> Server {
            let now = Instant::now();
            let mut conn = Connection::server(now);
            let mut rx = Vec::new();
            conn.accept(now, &mut rx);
            Server {
                conn,
                rx,
                inflate: deflate::MessageInflater::default(),
                sent: Vec::new(),
                config: Config::default(),
                now,
            }
        }

        fn feed(&mut self, bytes: &[u8]) -> Vec<Ev> {
            let mut owned = bytes.to_vec();
            let mut input = &mut owned[..];
            let mut events = Vec::new();
            while let Some(ev) = self.conn.read_inflating(
                &mut input,
                &mut self.rx,
                &mut self.inflate,
                self.now,
                &self.config,
                &mut self.sent,
            ) {
                events.push(own(ev));
            }
            assert!(input.is_empty(), "read returned None with input left");
            events
        }

        /// What the server sent, decoded by a client connection.
        fn sent_frames(&mut self) -> Vec<Ev> {
            let mut client = Connection::client(self.now, 7);
            let (mut rx, mut out) = (Vec::new(), Vec::new());
            let mut bytes = std::mem::take(&mut self.sent);
            let mut input = &mut bytes[..];
            let mut events = Vec::new();
            while let Some(ev) =
                client.read(&mut input, &mut rx, self.now, &Config::default(), &mut out)
            {
                events.push(own(ev));
            }
            events
        }
    }

    #[test]
    fn a_streaming_response_discards_input_sends_nothing_of_its_own_and_closes_at_once() {
        let now = Instant::now();
        let config = Config::default();
        let mut conn = Connection::server(now);
        let (mut rx, mut sent) = (Vec::new(), Vec::new());
        // The head arrives in two reads (so it is gathered in `rx`), with bytes behind it.
        let mut first = b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n".to_vec();
        let mut input = &mut first[..];
        assert!(
            conn.read(&mut input, &mut rx, now, &config, &mut sent)
                .is_none()
        );
        let mut rest = b"\r\nstray bytes".to_vec();
        let mut input = &mut rest[..];
        let event = conn.read(&mut input, &mut rx, now, &config, &mut sent);
        assert_eq!(event.map(own), Some(Ev::Request("/sse?topic=a ".into())));
        conn.stream(now, &mut rx);
        assert!(rx.is_empty(), "the request and what followed it are gone");
        assert_eq!(conn.state(), State::Streaming);
        assert!(conn.is_streaming() && !conn.can_send());
        assert_eq!(
            conn.send(MessageKind::Text, b"x", &mut sent),
            Err(SendError::NotOpen),
            "no WebSocket frames on a stream"
        );
        // What the client sends is dropped unread, whatever it is.
        let mut noise = frame(true, 0x1, b"hello");
        noise.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let mut input = &mut noise[..];
        assert!(
            conn.read(&mut input, &mut rx, now, &config, &mut sent)
                .is_none()
        );
        assert!(input.is_empty() && rx.is_empty());
        // No timer of its own: no pings, no idle timeout.
        let quiet = Config {
            idle_timeout: Some(Duration::from_secs(1)),
            ..Config::default()
        };
        assert_eq!(conn.poll_timeout(&quiet), None);
        let later = now + Duration::from_secs(3600);
        assert_eq!(conn.handle_timeout(later, &quiet, &mut sent), None);
        assert!(sent.is_empty(), "nothing was sent by the state machine");
        // Closing ends it at once, keeping the code, sending nothing.
        conn.close(CloseCode::GOING_AWAY, "server shutdown", later, &mut sent);
        assert_eq!(conn.state(), State::Closed);
        assert_eq!(conn.close_code(), Some(CloseCode::GOING_AWAY));
        assert!(sent.is_empty());
    }

    /// Client-side frame builder: masked frames with explicit flags.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x12, 0x34, 0x56, 0x78];
        let mut header = [0; MAX_HEADER_LEN];
        let mut h = FrameHeader {
            fin,
            rsv: 0,
            opcode: OpCode::Text,
            mask: Some(key),
            payload_len: payload.len() as u64,
        };
        let n = frame::encode_header(&mut header, &h);
        h.opcode = OpCode::Binary;
        let _ = h;
        header[0] = (header[0] & 0xF0) | opcode;
        let mut out = header[..n].to_vec();
        let mut body = payload.to_vec();
        mask::apply_mask(&mut body, key, 0);
        out.extend_from_slice(&body);
        out
    }

    /// A compressed message from a client: RSV1 on the first of `pieces` frames.
    fn compressed(opcode: u8, payload: &[u8], pieces: usize, deflater: &mut Deflater) -> Vec<u8> {
        let mut wire = Vec::new();
        deflater.compress(payload, &mut wire, true);
        let step = wire.len().div_ceil(pieces).max(1);
        let mut bytes = Vec::new();
        let chunks: Vec<&[u8]> = wire.chunks(step).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut f = frame(
                i + 1 == chunks.len(),
                if i == 0 { opcode } else { 0 },
                chunk,
            );
            if i == 0 {
                f[0] |= 0x40;
            }
            bytes.extend(f);
        }
        bytes
    }

    fn with_deflate(params: Params) -> Server {
        let mut s = Server::open();
        s.conn.set_deflate(params);
        s
    }

    #[test]
    fn compressed_messages_both_ways_with_and_without_context_takeover() {
        for takeover in [false, true] {
            let params = Params {
                server_no_context_takeover: !takeover,
                client_no_context_takeover: !takeover,
                ..Params::default()
            };
            let mut s = with_deflate(params);
            let mut client = Connection::client(s.now, 5);
            client.set_deflate(params);
            let (mut client_deflater, mut server_deflater) =
                (Deflater::new(6, 15), Deflater::new(6, 15));
            let (mut scratch, mut sizes) = (Vec::new(), Vec::new());
            let mut client_inflate = deflate::MessageInflater::default();
            for round in 0..3 {
                let text = format!("{{\"round\":{round},\"text\":\"{}\"}}", "hello ".repeat(40));
                let mut wire = Vec::new();
                client
                    .send_compressed(
                        MessageKind::Text,
                        text.as_bytes(),
                        &mut client_deflater,
                        &mut scratch,
                        &mut wire,
                    )
                    .unwrap();
                assert_eq!(wire[0], 0xC1, "FIN, RSV1, text");
                sizes.push(wire.len());
                assert_eq!(s.feed(&wire), [Ev::Text(text.clone())]);
                s.conn
                    .send_compressed(
                        MessageKind::Text,
                        text.as_bytes(),
                        &mut server_deflater,
                        &mut scratch,
                        &mut s.sent,
                    )
                    .unwrap();
                let mut sent = std::mem::take(&mut s.sent);
                let mut input = &mut sent[..];
                let (mut rx, mut out) = (Vec::new(), Vec::new());
                let ev = client
                    .read_inflating(
                        &mut input,
                        &mut rx,
                        &mut client_inflate,
                        s.now,
                        &s.config,
                        &mut out,
                    )
                    .map(own);
                assert_eq!(ev, Some(Ev::Text(text)));
            }
            // With context takeover the repeats shrink to a few references.
            assert_eq!(sizes[2] < sizes[0] / 2, takeover, "{sizes:?}");
        }
    }

    #[test]
    fn compressed_fragments_across_reads_with_a_ping_between() {
        let mut s = with_deflate(Params::default());
        let mut d = Deflater::new(6, 15);
        let text = "fragmented and compressed ".repeat(50);
        let mut bytes = compressed(0x1, text.as_bytes(), 3, &mut d);
        let ping = frame(true, 0x9, b"p");
        let first_end = {
            let (h, n) = frame::decode_header(&bytes).unwrap().unwrap();
            n + h.payload_len as usize
        };
        bytes.splice(first_end..first_end, ping);
        let mut events = Vec::new();
        for chunk in bytes.chunks(7) {
            events.extend(s.feed(chunk));
        }
        assert_eq!(events, [Ev::Ping(b"p".to_vec()), Ev::Text(text.clone())]);
        // The context is kept: the same text again is a reference or two.
        let again = compressed(0x1, text.as_bytes(), 1, &mut d);
        assert!(again.len() < 40, "{}", again.len());
        assert_eq!(s.feed(&again), [Ev::Text(text)]);
        assert!(s.rx.is_empty());
    }

    #[test]
    fn rsv1_rules() {
        let mut d = Deflater::new(6, 15);
        let rsv1 = |mut f: Vec<u8>| {
            f[0] |= 0x40;
            f
        };
        // Without negotiation RSV1 is a reserved bit.
        let mut s = Server::open();
        assert!(
            s.feed(&compressed(0x1, b"hi", 1, &mut d))
                .last()
                .is_some_and(failed(CloseCode::PROTOCOL_ERROR))
        );
        let cases = [
            rsv1(frame(true, 0x9, b"")), // control
            [frame(false, 0x1, b"a"), rsv1(frame(true, 0x0, b"b"))].concat(), // continuation
            {
                let mut f = frame(true, 0x1, b"x");
                f[0] |= 0x20; // RSV2
                f
            },
        ];
        for bytes in cases {
            let mut s = with_deflate(Params::default());
            let events = s.feed(&bytes);
            assert!(
                events.last().is_some_and(failed(CloseCode::PROTOCOL_ERROR)),
                "{bytes:x?}: {events:?}"
            );
        }
        // An uncompressed message on a deflate connection is fine.
        let mut s = with_deflate(Params::default());
        assert_eq!(
            s.feed(&frame(true, 0x2, b"plain")),
            [Ev::Binary(b"plain".to_vec())]
        );
    }

    #[test]
    fn a_compression_bomb_closes_1009_before_inflating_it_all() {
        let mut d = Deflater::new(9, 15);
        let bomb = compressed(0x2, &vec![0; 32 << 20], 1, &mut d);
        assert!(bomb.len() < 64 << 10);
        for pieces in [1, 4] {
            let mut s = with_deflate(Params::default());
            s.config.max_message_size = 1 << 20;
            let mut d = Deflater::new(9, 15);
            let bytes = compressed(0x2, &vec![0; 32 << 20], pieces, &mut d);
            let events = s.feed(&bytes);
            assert!(
                events
                    .last()
                    .is_some_and(failed(CloseCode::MESSAGE_TOO_BIG)),
                "{events:?}"
            );
        }
    }

    #[test]
    fn compressed_text_is_validated_and_garbage_is_refused() {
        let mut d = Deflater::new(6, 15);
        let mut s = with_deflate(Params::default());
        let events = s.feed(&compressed(0x1, &[b'a', 0xFF], 1, &mut d));
        assert!(
            events
                .last()
                .is_some_and(failed(CloseCode::INVALID_PAYLOAD)),
            "{events:?}"
        );
        let mut s = with_deflate(Params::default());
        let mut garbage = frame(true, 0x2, &[0xFF; 20]);
        garbage[0] |= 0x40;
        assert!(
            s.feed(&garbage)
                .last()
                .is_some_and(failed(CloseCode::INVALID_PAYLOAD))
        );
    }

    fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        frame(true, 0x8, &payload)
    }

    fn failed(code: CloseCode) -> impl Fn(&Ev) -> bool {
        move |ev| matches!(ev, Ev::Failed(Failure::Protocol(c, _)) if *c == code)
    }

    #[test]
    fn handshake_then_early_frames_are_kept() {
        let now = Instant::now();
        let mut conn = Connection::server(now);
        let (mut rx, mut sent) = (Vec::new(), Vec::new());
        let mut request = Vec::new();
        ClientHandshake::new([1; 16]).write_request("h", "/echo", &[], &mut request);
        request.extend_from_slice(&frame(true, 0x1, b"early"));
        let config = Config::default();
        // The head arrives in two reads, so it is assembled in rx with the frame behind it.
        let (first, second) = request.split_at_mut(10);
        let mut input = &mut first[..];
        assert!(
            conn.read(&mut input, &mut rx, now, &config, &mut sent)
                .is_none()
        );
        let mut input = &mut second[..];
        match conn.read(&mut input, &mut rx, now, &config, &mut sent) {
            Some(Event::Request(r, body)) => assert_eq!((r.path(), body), ("/echo", &b""[..])),
            other => panic!("{other:?}"),
        }
        conn.accept(now, &mut rx);
        let mut early = std::mem::take(&mut rx);
        let mut input = &mut early[..];
        let ev = conn
            .read(&mut input, &mut rx, now, &config, &mut sent)
            .map(own);
        assert_eq!(ev, Some(Ev::Text("early".into())));
    }

    #[test]
    fn bad_heads_get_http_errors() {
        let now = Instant::now();
        for (bytes, status) in [
            (&b"\x16\x03\x01garbage\r\n\r\n"[..], "400"),
            (&[b'a'; 9000][..], "431"),
            // Request smuggling (RFC 9112 §6.3): never framed by either length.
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 4\r\n\r\nGET /",
                "400",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                "411",
            ),
            // RFC 9112 §3.2: HTTP/1.1 without Host, or two of them.
            (b"GET / HTTP/1.1\r\n\r\n", "400"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
        ] {
            let mut conn = Connection::server(now);
            let (mut rx, mut sent) = (Vec::new(), Vec::new());
            let mut owned = bytes.to_vec();
            let mut input = &mut owned[..];
            let ev = conn.read(&mut input, &mut rx, now, &Config::default(), &mut sent);
            assert!(
                matches!(ev, Some(Event::Failed(Failure::Head(_)))),
                "{ev:?}"
            );
            assert!(String::from_utf8_lossy(&sent).starts_with(&format!("HTTP/1.1 {status}")));
            assert_eq!(conn.state(), State::Closed);
        }
    }

    #[test]
    fn a_kept_connection_reads_pipelined_requests_and_times_out_when_idle() {
        let start = Instant::now();
        let config = Config {
            keep_alive_timeout: Duration::from_secs(3),
            ..Config::default()
        };
        let mut conn = Connection::server(start);
        let (mut rx, mut sent) = (Vec::new(), Vec::new());
        // Two requests, the first split so that it completes in `rx` with the second behind it.
        let mut first = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nh".to_vec();
        let mut input = &mut first[..];
        assert!(
            conn.read(&mut input, &mut rx, start, &config, &mut sent)
                .is_none()
        );
        let mut rest = b"iGET /b HTTP/1.1\r\nHost: h\r\n\r\n".to_vec();
        let mut input = &mut rest[..];
        let ev = conn.read(&mut input, &mut rx, start, &config, &mut sent);
        assert_eq!(ev.map(own), Some(Ev::Request("/a hi".into())));
        let answered = start + Duration::from_secs(1);
        conn.next_request(answered, &mut rx);
        assert_eq!(conn.state(), State::Handshaking);
        assert_eq!(
            conn.poll_timeout(&config),
            Some(answered + config.keep_alive_timeout),
            "idle between requests: keep_alive_timeout"
        );
        // What stayed in rx is the pipelined request, fed back as input.
        let mut early = std::mem::take(&mut rx);
        let mut input = &mut early[..];
        let ev = conn.read(&mut input, &mut rx, answered, &config, &mut sent);
        assert_eq!(ev.map(own), Some(Ev::Request("/b ".into())));
        conn.next_request(answered, &mut rx);
        assert!(rx.is_empty());
        // The first byte of the next request starts the head's own timeout.
        let typing = answered + Duration::from_secs(2);
        let mut partial = b"GET /c HT".to_vec();
        let mut input = &mut partial[..];
        assert!(
            conn.read(&mut input, &mut rx, typing, &config, &mut sent)
                .is_none()
        );
        assert_eq!(
            conn.poll_timeout(&config),
            Some(typing + config.handshake_timeout)
        );
        // Quiet past keep_alive_timeout: closed.
        let mut idle = Connection::server(start);
        idle.next_request(start, &mut Vec::new());
        let late = start + config.keep_alive_timeout;
        assert_eq!(
            idle.handle_timeout(late, &config, &mut sent),
            Some(Timeout::KeepAlive)
        );
        assert_eq!(idle.state(), State::Closed);
        assert!(
            sent.is_empty(),
            "nothing is sent to an idle HTTP connection"
        );
    }

    #[test]
    fn fragmented_message_with_interleaved_ping() {
        let mut s = Server::open();
        let mut bytes = frame(false, 0x1, b"Hel");
        bytes.extend(frame(true, 0x9, b"p"));
        bytes.extend(frame(false, 0x0, b"lo "));
        bytes.extend(frame(true, 0x0, "wörld".as_bytes()));
        assert_eq!(
            s.feed(&bytes),
            [Ev::Ping(b"p".to_vec()), Ev::Text("Hello wörld".into())]
        );
        assert_eq!(s.sent_frames(), [Ev::Pong(b"p".to_vec())]);
        s.feed(&[]);
        assert!(
            s.rx.is_empty(),
            "rx must be empty once the message is delivered"
        );
    }

    #[test]
    fn protocol_violations_close_with_1002() {
        let cases: Vec<Vec<u8>> = vec![
            {
                let mut f = frame(true, 0x1, b"x");
                f[0] |= 0x40;
                f
            }, // RSV1
            frame(true, 0x3, b""),       // reserved opcode
            frame(false, 0x9, b""),      // fragmented ping
            frame(true, 0x9, &[0; 126]), // long ping
            frame(true, 0x0, b"x"),      // stray continuation
            [frame(false, 0x1, b"a"), frame(true, 0x1, b"b")].concat(), // nested message
            vec![0x81, 0x01, b'x'],      // unmasked
            close_frame(999, b""),       // invalid close code
            frame(true, 0x8, &[3]),      // 1-byte close payload
        ];
        for bytes in cases {
            let mut s = Server::open();
            let events = s.feed(&bytes);
            assert!(
                events.last().is_some_and(failed(CloseCode::PROTOCOL_ERROR)),
                "{bytes:x?}: {events:?}"
            );
            assert_eq!(s.conn.state(), State::Closed);
            assert_eq!(
                s.sent_frames(),
                [Ev::Close(Some((1002, String::new())))].map(|e| match e {
                    Ev::Close(Some((c, _))) => Ev::Close(Some((c, s_reason(&bytes)))),
                    e => e,
                })
            );
        }
    }

    /// The reason our close frame carries for a violation (what `fail` was given).
    fn s_reason(bytes: &[u8]) -> String {
        let mut s = Server::open();
        match s.feed(bytes).pop() {
            Some(Ev::Failed(Failure::Protocol(_, why))) => why.to_owned(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_utf8_fails_fast_with_1007() {
        let mut s = Server::open();
        assert_eq!(s.feed(&frame(false, 0x1, b"valid")), []);
        // 0xF4 0x90 can never start a valid character: fail before the message ends.
        let events = s.feed(&frame(false, 0x0, &[0xF4, 0x90]));
        assert!(
            events
                .last()
                .is_some_and(failed(CloseCode::INVALID_PAYLOAD)),
            "{events:?}"
        );
        // Within one frame that arrives in pieces, too.
        let mut s = Server::open();
        let f = frame(true, 0x1, &[b'a', b'b', 0xFF, b'c']);
        assert_eq!(s.feed(&f[..7]), []);
        assert!(
            s.feed(&f[7..9])
                .last()
                .is_some_and(failed(CloseCode::INVALID_PAYLOAD))
        );
        // A message that ends inside a character.
        let mut s = Server::open();
        assert!(
            s.feed(&frame(true, 0x1, &[b'a', 0xCE]))
                .last()
                .is_some_and(failed(CloseCode::INVALID_PAYLOAD))
        );
        // A close reason.
        let mut s = Server::open();
        assert!(
            s.feed(&close_frame(1000, &[0xFF]))
                .last()
                .is_some_and(failed(CloseCode::INVALID_PAYLOAD))
        );
    }

    #[test]
    fn limits_close_with_1009() {
        let mut s = Server::open();
        s.config.max_frame_size = 10;
        assert!(
            s.feed(&frame(true, 0x2, &[0; 11]))
                .last()
                .is_some_and(failed(CloseCode::MESSAGE_TOO_BIG))
        );
        let mut s = Server::open();
        s.config.max_message_size = 10;
        assert_eq!(s.feed(&frame(false, 0x2, &[0; 6])), []);
        assert!(
            s.feed(&frame(true, 0x0, &[0; 5]))
                .last()
                .is_some_and(failed(CloseCode::MESSAGE_TOO_BIG))
        );
        // Checked on the header, before any payload is buffered.
        let mut s = Server::open();
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert!(
            s.feed(&huge)
                .last()
                .is_some_and(failed(CloseCode::MESSAGE_TOO_BIG))
        );
        assert!(s.rx.capacity() < 1024);
    }

    #[test]
    fn close_handshake_echoes_and_ends() {
        let mut s = Server::open();
        assert_eq!(
            s.feed(&close_frame(4000, b"bye")),
            [Ev::Close(Some((4000, "bye".into())))]
        );
        assert_eq!(s.conn.state(), State::Closed);
        assert_eq!(s.sent_frames(), [Ev::Close(Some((4000, String::new())))]);
        let mut s = Server::open();
        assert_eq!(s.feed(&frame(true, 0x8, b"")), [Ev::Close(None)]);
        assert_eq!(s.sent_frames(), [Ev::Close(None)]);
        assert_eq!(s.conn.close_code(), Some(CloseCode::NO_STATUS));
    }

    #[test]
    fn after_our_close_data_is_dropped_until_the_peers_close() {
        let mut s = Server::open();
        s.conn
            .close(CloseCode::GOING_AWAY, "shutdown", s.now, &mut s.sent);
        assert_eq!(s.conn.state(), State::Closing);
        assert_eq!(
            s.conn.send(MessageKind::Text, b"x", &mut s.sent),
            Err(SendError::NotOpen)
        );
        let mut bytes = frame(true, 0x1, b"ignored");
        bytes.extend(frame(true, 0x9, b""));
        bytes.extend(close_frame(1000, b""));
        assert_eq!(
            s.feed(&bytes),
            [Ev::Ping(vec![]), Ev::Close(Some((1000, String::new())))]
        );
        // Our close went out once, no pong after it.
        assert_eq!(
            s.sent_frames(),
            [Ev::Close(Some((1001, "shutdown".into())))]
        );
        assert_eq!(s.conn.close_code(), Some(CloseCode::GOING_AWAY));
    }

    #[test]
    fn timeouts_on_virtual_time() {
        let config = Config {
            ping_interval: Some(Duration::from_secs(30)),
            pong_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(100)),
            ..Config::default()
        };
        let t0 = Instant::now();
        let secs = |s| t0 + Duration::from_secs(s);
        let mut out = Vec::new();

        let mut conn = Connection::server(t0);
        assert_eq!(conn.poll_timeout(&config), Some(secs(10)));
        assert_eq!(conn.handle_timeout(secs(9), &config, &mut out), None);
        assert_eq!(
            conn.handle_timeout(secs(10), &config, &mut out),
            Some(Timeout::Handshake)
        );
        assert_eq!(conn.state(), State::Closed);

        let mut s = Server::open();
        s.config = config.clone();
        assert_eq!(
            s.conn.poll_timeout(&config),
            Some(s.now + Duration::from_secs(30))
        );
        let t = s.now;
        assert_eq!(
            s.conn
                .handle_timeout(t + Duration::from_secs(30), &config, &mut s.sent),
            Some(Timeout::PingSent)
        );
        assert_eq!(s.sent_frames(), [Ev::Ping(vec![])]);
        assert_eq!(
            s.conn.poll_timeout(&config),
            Some(t + Duration::from_secs(40))
        );
        // Any frame from the peer proves it alive.
        s.now = t + Duration::from_secs(35);
        s.feed(&frame(true, 0xA, b""));
        assert_eq!(
            s.conn.poll_timeout(&config),
            Some(t + Duration::from_secs(65))
        );
        s.conn
            .handle_timeout(t + Duration::from_secs(65), &config, &mut s.sent);
        assert_eq!(
            s.conn
                .handle_timeout(t + Duration::from_secs(75), &config, &mut s.sent),
            Some(Timeout::Pong)
        );
        assert_eq!(s.conn.state(), State::Closed);

        // A ping sent late (the caller was busy past its due time) gets its whole pong timeout
        // from when it is sent.
        let mut s = Server::open();
        let t = s.now;
        assert_eq!(
            s.conn
                .handle_timeout(t + Duration::from_secs(50), &config, &mut s.sent),
            Some(Timeout::PingSent)
        );
        assert_eq!(
            s.conn.poll_timeout(&config),
            Some(t + Duration::from_secs(60))
        );
        assert_eq!(
            s.conn
                .handle_timeout(t + Duration::from_secs(59), &config, &mut s.sent),
            None
        );
        s.now = t + Duration::from_secs(59);
        s.feed(&frame(true, 0xA, b""));
        assert_eq!(s.conn.state(), State::Open);

        let idle_only = Config {
            ping_interval: None,
            ..config.clone()
        };
        let mut s = Server::open();
        let t = s.now;
        assert_eq!(
            s.conn
                .handle_timeout(t + Duration::from_secs(100), &idle_only, &mut s.sent),
            Some(Timeout::Idle)
        );
        assert_eq!(s.conn.state(), State::Closing);
        assert_eq!(
            s.conn.poll_timeout(&idle_only),
            Some(t + Duration::from_secs(105))
        );
        assert_eq!(
            s.conn
                .handle_timeout(t + Duration::from_secs(105), &idle_only, &mut s.sent),
            Some(Timeout::Close)
        );
        assert_eq!(s.conn.state(), State::Closed);
    }

    #[test]
    fn client_and_server_exchange_messages() {
        let mut s = Server::open();
        let mut client = Connection::client(s.now, 99);
        let mut wire = Vec::new();
        let mut payload = b"hello".to_vec();
        client
            .send_in_place(MessageKind::Binary, &mut payload, &mut wire)
            .unwrap();
        assert_eq!(s.feed(&wire), [Ev::Binary(b"hello".to_vec())]);
        s.conn
            .send(MessageKind::Text, "é".as_bytes(), &mut s.sent)
            .unwrap();
        assert_eq!(s.sent_frames(), [Ev::Text("é".into())]);
        assert_eq!(
            client.send(MessageKind::Text, b"x", &mut wire),
            Err(SendError::NeedsMask)
        );
    }

    /// Every connection of a reactor holds one: its bytes are per-connection memory at C1M.
    #[test]
    fn connection_is_48_bytes_and_its_flags_one() {
        assert_eq!(std::mem::size_of::<Connection>(), 48);
        // Returned once per message: a head inline made it 3 KiB and a memcpy each time.
        assert_eq!(std::mem::size_of::<Option<Event<'_>>>(), 32);
        assert_eq!(std::mem::size_of::<Flags>(), 1);
    }

    fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
        let message = (
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 0..300),
            1usize..4,
            any::<bool>(),
        );
        prop::collection::vec(message, 1..6).prop_map(|messages| {
            let mut bytes = Vec::new();
            for (text, data, pieces, ping) in messages {
                let data = if text {
                    String::from_utf8_lossy(&data).into_owned().into_bytes()
                } else {
                    data
                };
                let step = data.len().div_ceil(pieces).max(1);
                let chunks: Vec<&[u8]> = if data.is_empty() {
                    vec![&[]]
                } else {
                    data.chunks(step).collect()
                };
                for (i, chunk) in chunks.iter().enumerate() {
                    let op = if i > 0 {
                        0x0
                    } else if text {
                        0x1
                    } else {
                        0x2
                    };
                    bytes.extend(frame(i + 1 == chunks.len(), op, chunk));
                    if ping && i == 0 {
                        bytes.extend(frame(true, 0x9, b"ka"));
                    }
                }
            }
            bytes.extend(close_frame(1000, b""));
            bytes
        })
    }

    #[test]
    fn settle_says_when_rx_is_free_and_abort_forgets_the_frame_in_progress() {
        let mut s = Server::open();
        assert!(
            s.conn.settle(&mut s.rx),
            "a fresh connection is between frames"
        );
        // A fragmented message in progress, and a partial frame header: not between frames.
        s.feed(&frame(false, 0x1, b"frag"));
        assert!(!s.conn.settle(&mut s.rx));
        s.feed(&frame(true, 0x0, b"ment")[..3]);
        assert!(!s.conn.settle(&mut s.rx));
        assert!(!s.rx.is_empty());
        // The message completes (delivered from rx): settling gives rx back, empty.
        let rest = frame(true, 0x0, b"ment");
        assert_eq!(s.feed(&rest[3..]), [Ev::Text("fragment".into())]);
        assert!(s.conn.settle(&mut s.rx));
        assert!(s.rx.is_empty());
        // Abort in the middle of a frame: a close goes out, nothing more is read, and the
        // buffer may be taken back at once.
        s.feed(&frame(true, 0x2, &[7; 100])[..50]);
        s.sent.clear();
        s.conn
            .abort(CloseCode::POLICY_VIOLATION, "rate limit", &mut s.sent);
        assert_eq!(s.conn.state(), State::Closed);
        assert_eq!(s.conn.close_code(), Some(CloseCode::POLICY_VIOLATION));
        assert_eq!(
            s.sent_frames(),
            [Ev::Close(Some((1008, "rate limit".into())))]
        );
        s.rx = Vec::new();
        assert!(s.feed(&[0x82; 64]).is_empty());
        assert_eq!(s.conn.poll_timeout(&s.config), None);
    }

    /// A client reads a server's frames the same however they are cut into reads: pings between
    /// messages, short and 16-bit lengths, every one and two cuts.
    #[test]
    fn a_client_reads_server_frames_cut_anywhere() {
        let now = Instant::now();
        let config = Config::default();
        let text = |n: usize| frame::encode_frame(OpCode::Text, &vec![b'a' + (n % 26) as u8; n]);
        let ping = frame::encode_frame(OpCode::Ping, b"");
        let stream: Vec<u8> = [
            ping.clone(),
            text(300),
            text(64),
            ping.clone(),
            text(200),
            text(126),
            ping,
            text(125),
        ]
        .concat();
        let feed = |cuts: &[usize]| {
            let mut client = Connection::client(now, 7);
            let (mut rx, mut sent, mut events) = (Vec::new(), Vec::new(), Vec::new());
            let mut start = 0;
            for &end in cuts.iter().chain([&stream.len()]) {
                let mut owned = stream[start..end].to_vec();
                let mut input = &mut owned[..];
                while let Some(ev) = client.read(&mut input, &mut rx, now, &config, &mut sent) {
                    events.push(own(ev));
                }
                start = end;
            }
            events
        };
        let whole = feed(&[]);
        assert_eq!(whole.len(), 8, "{whole:?}");
        for a in 0..=stream.len() {
            assert_eq!(feed(&[a]), whole, "cut at {a}");
            for b in (a..=stream.len()).step_by(7) {
                assert_eq!(feed(&[a, b]), whole, "cuts at {a} and {b}");
            }
        }
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_events(stream in arb_stream(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8)) {
            let whole = Server::open().feed(&stream);
            prop_assert!(matches!(whole.last(), Some(Ev::Close(_))));
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            points.sort_unstable();
            let mut s = Server::open();
            let mut events = Vec::new();
            let mut start = 0;
            for point in points.into_iter().chain([stream.len()]) {
                events.extend(s.feed(&stream[start..point]));
                start = point;
            }
            prop_assert_eq!(events, whole);
        }

        #[test]
        fn parking_input_between_frames_and_feeding_it_later_gives_the_same_events(stream in arb_stream(), cut in any::<prop::sample::Index>()) {
            let whole = Server::open().feed(&stream);
            // Fed in two reads; after every event of each, the rest of the read is parked in
            // rx whenever the connection is between frames (as a reactor does for a connection
            // over its write cap), and fed again from there.
            let at = cut.index(stream.len() + 1);
            let mut s = Server::open();
            let mut events = Vec::new();
            let mut parked = 0;
            for part in [&stream[..at], &stream[at..]] {
                let mut owned = part.to_vec();
                loop {
                    let mut input = &mut owned[..];
                    let mut stopped = false;
                    while let Some(ev) = s.conn.read_inflating(&mut input, &mut s.rx, &mut s.inflate, s.now, &s.config, &mut s.sent) {
                        events.push(own(ev));
                        if !input.is_empty() && s.conn.settle(&mut s.rx) {
                            s.rx.extend_from_slice(input);
                            stopped = true;
                            break;
                        }
                    }
                    if !stopped {
                        break;
                    }
                    parked += 1;
                    owned = std::mem::take(&mut s.rx);
                }
            }
            // The close frame follows the last message: the reads stopped at least once, unless
            // the cut fell right before it.
            let last_is_message = matches!(whole.get(whole.len().wrapping_sub(2)), Some(Ev::Text(_) | Ev::Binary(_)));
            prop_assert!(parked > 0 || !last_is_message || at + 8 >= stream.len());
            prop_assert_eq!(events, whole);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), split in any::<prop::sample::Index>()) {
            let mut s = Server::open();
            let at = split.index(bytes.len() + 1);
            s.feed(&bytes[..at]);
            s.feed(&bytes[at..]);
            // The same bytes on a deflate connection: compressed frames are inflated (or fail).
            let mut s = with_deflate(Params::default());
            s.feed(&bytes[..at]);
            s.feed(&bytes[at..]);
            let mut fresh = Connection::server(s.now);
            let (mut rx, mut out) = (Vec::new(), Vec::new());
            let mut owned = bytes.clone();
            let mut input = &mut owned[..];
            while fresh.read(&mut input, &mut rx, s.now, &Config::default(), &mut out).is_some() {}
        }
    }
}
