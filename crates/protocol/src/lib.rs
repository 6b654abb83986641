//! The sans-IO WebSocket protocol core (RFC 6455, with permessage-deflate of RFC 7692), both
//! roles.
//!
//! Bytes in, events and bytes out: nothing here owns a socket, reads a clock, spawns a thread or
//! allocates per message on the happy path. Time is passed in (`now`), buffers are lent by the
//! caller, outgoing bytes leave through [`Transmit`]. The server, the load generator and the tests
//! all drive this same code.
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
