//! The sans-IO WebSocket protocol core (RFC 6455, with permessage-deflate of RFC 7692), both
//! roles: the ground floor of Clarion, which the engine, the push server, the load generator and
//! the tests all drive.
//!
//! # Bytes in, events and bytes out
//!
//! Nothing here owns a socket, reads a clock, spawns a thread or allocates per message on the
//! happy path. One [`Connection`] (48 bytes) is one WebSocket's state machine, in either role:
//!
//! - **Bytes in**: you read from your socket however you like and hand the bytes to
//!   [`Connection::read`], which returns at most one [`Event`] per call (a request head, a
//!   message, a ping, a pong, the peer's close, or a failure); call it again until it returns
//!   `None`. A frame found whole in your bytes is unmasked in place and delivered as a slice of
//!   them: the common case copies nothing.
//! - **Bytes out**: what the connection has to say (pongs, close frames, your messages) leaves
//!   through [`Transmit`] as a frame header and a payload, kept apart so a writer can `writev`
//!   them without copying the payload. A `Vec<u8>` is a `Transmit`.
//! - **Time in**: every call that can start a timer takes `now`; [`Connection::poll_timeout`]
//!   says when the next deadline falls (handshake, ping, pong, idle, close) and
//!   [`Connection::handle_timeout`] acts on it. Nothing is stored per timer.
//! - **Buffers lent**: `rx`, a `Vec<u8>` the caller lends to each call, holds only what is
//!   incomplete (a frame split across reads, a fragmented message); it is empty again after a
//!   `None` unless something is pending, so a server can pool it. Compression contexts are lent
//!   the same way ([`deflate::Inflate`], [`deflate::Deflater`]).
//!
//! # The modules
//!
//! [`handshake`] (the HTTP/1.1 opening handshake, server and client side), [`frame`] (header
//! codec), [`mask`] (SIMD unmasking, chosen at run time), [`close`] (close codes), [`deflate`]
//! (permessage-deflate negotiation and codec), and [`connection`], which puts them together.
//!
//! # First use: a client and a server in memory
//!
//! No sockets: the "wire" is a `Vec<u8>` each way.
//!
//! ```
//! use std::time::Instant;
//!
//! use clarion_protocol::handshake::ClientHandshake;
//! use clarion_protocol::{CloseCode, Config, Connection, Event, MessageKind, State};
//!
//! let (config, now) = (Config::default(), Instant::now());
//!
//! // The client's opening handshake is bytes to send (pick a random nonce per connection).
//! let handshake = ClientHandshake::new([7; 16]);
//! let mut to_server = Vec::new();
//! handshake.write_request("example.com", "/chat", &[], &mut to_server);
//!
//! // The server reads them as any input: a complete request head is an event to answer.
//! let mut server = Connection::server(now);
//! let (mut server_rx, mut to_client) = (Vec::new(), Vec::new());
//! let mut input = &mut to_server[..];
//! match server.read(&mut input, &mut server_rx, now, &config, &mut to_client) {
//!     Some(Event::Request(request, _body)) => {
//!         assert_eq!(request.path(), "/chat");
//!         let accept = request.upgrade().expect("a valid WebSocket upgrade");
//!         accept.write_response(None, None, &mut to_client);
//!     }
//!     other => panic!("expected the request head, got {other:?}"),
//! }
//! server.accept(now, &mut server_rx);
//! to_server.clear(); // read consumed it: `input` moved past the head
//!
//! // The client checks the answer (what follows its head would already be frames).
//! let head = handshake.read_response(&to_client).unwrap().expect("a complete answer");
//! assert_eq!(head, to_client.len());
//! to_client.clear();
//! let mut client = Connection::client(now, 0x5eed);
//!
//! // Client to server: a client masks its frames, in place.
//! let mut text = b"hello".to_vec();
//! client.send_in_place(MessageKind::Text, &mut text, &mut to_server).unwrap();
//! let mut input = &mut to_server[..];
//! match server.read(&mut input, &mut server_rx, now, &config, &mut to_client) {
//!     Some(Event::Message(MessageKind::Text, payload)) => assert_eq!(payload, b"hello"),
//!     other => panic!("expected the message, got {other:?}"),
//! }
//! assert!(server.read(&mut input, &mut server_rx, now, &config, &mut to_client).is_none());
//! to_server.clear();
//!
//! // Server to client: a message, then the close handshake.
//! server.send(MessageKind::Text, b"hi", &mut to_client).unwrap();
//! server.close(CloseCode::NORMAL, "bye", now, &mut to_client);
//! let mut client_rx = Vec::new();
//! let mut input = &mut to_client[..];
//! match client.read(&mut input, &mut client_rx, now, &config, &mut to_server) {
//!     Some(Event::Message(MessageKind::Text, payload)) => assert_eq!(payload, b"hi"),
//!     other => panic!("expected the message, got {other:?}"),
//! }
//! match client.read(&mut input, &mut client_rx, now, &config, &mut to_server) {
//!     Some(Event::Close(Some((code, reason)))) => {
//!         assert_eq!((code, reason), (CloseCode::NORMAL, "bye"));
//!     }
//!     other => panic!("expected the close, got {other:?}"),
//! }
//! assert_eq!(client.state(), State::Closed);
//!
//! // The client answered with its own close frame, which ends the server's side too.
//! let mut input = &mut to_server[..];
//! let event = server.read(&mut input, &mut server_rx, now, &config, &mut to_client);
//! assert!(matches!(event, Some(Event::Close(Some((CloseCode::NORMAL, _))))));
//! assert_eq!(server.state(), State::Closed);
//! ```
//!
//! A real server does the same with bytes from a socket; `clarion-engine` is that server for
//! many connections per thread, and the load generator (`clarion-loadgen`) is a client built on
//! this crate alone.
#![deny(missing_docs)]

pub mod close;
pub mod connection;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod mask;
mod utf8;

pub use close::CloseCode;
pub use connection::{Config, Connection, Event, MessageKind, Role, SendError, State, Timeout};
pub use frame::OpCode;

/// Where the protocol core puts bytes for the peer: a frame header and its payload, kept apart so
/// a writer can send both with one `writev` and without copying the payload.
pub trait Transmit {
    /// Queues `header` followed by `payload` for the peer, in order with everything before.
    fn transmit(&mut self, header: &[u8], payload: &[u8]);
}

impl Transmit for Vec<u8> {
    fn transmit(&mut self, header: &[u8], payload: &[u8]) {
        self.extend_from_slice(header);
        self.extend_from_slice(payload);
    }
}
