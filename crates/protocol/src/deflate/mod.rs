//! permessage-deflate (RFC 7692): what was agreed, how it is negotiated, and the codec.
//!
//! - `negotiate.rs`: parsing `Sec-WebSocket-Extensions` offers, the server's choice and answer
//!   ([`negotiate()`]), the client's offer and its check of the answer ([`ClientOffer`]).
//! - `codec.rs`: [`Deflater`] and [`Inflater`] (raw deflate through `flate2` on zlib-rs), with the
//!   `00 00 ff ff` tail of RFC 7692 §7.2.1 removed on send and put back on receive.
//!
//! The connection keeps the agreed [`Params`] in two bytes; the compression contexts are lent by
//! the caller (see [`Inflate`]), so a reactor decides which connections own a window and which
//! share one.

mod codec;
mod negotiate;

use std::num::NonZeroU16;

pub use codec::{Deflater, Inflate, InflateError, Inflater, MessageInflater};
pub use negotiate::{BadAnswer, ClientOffer, Wants, negotiate};

/// The largest LZ77 window (32 KiB), and the default of both window parameters.
pub const MAX_WINDOW_BITS: u8 = 15;
/// The smallest window RFC 7692 allows.
pub const MIN_WINDOW_BITS: u8 = 8;

/// The parameters both ends agreed on (RFC 7692 §7.1), named as in the RFC: `server_*` limit
/// what the server sends, `client_*` what the client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// The server starts every message with an empty window.
    pub server_no_context_takeover: bool,
    /// The client starts every message with an empty window.
    pub client_no_context_takeover: bool,
    /// The server compresses with at most 2^n bytes of window (8..=15).
    pub server_max_window_bits: u8,
    /// The client compresses with at most 2^n bytes of window (8..=15).
    pub client_max_window_bits: u8,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: MAX_WINDOW_BITS,
            client_max_window_bits: MAX_WINDOW_BITS,
        }
    }
}

/// The two directions of a connection, seen from one end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Direction {
    /// The sender keeps its window from one message to the next.
    pub takeover: bool,
    /// The sender's window, 2^n bytes.
    pub window_bits: u8,
}

impl Params {
    /// What the server sends.
    pub fn server_to_client(&self) -> Direction {
        Direction {
            takeover: !self.server_no_context_takeover,
            window_bits: self.server_max_window_bits,
        }
    }

    /// What the client sends.
    pub fn client_to_server(&self) -> Direction {
        Direction {
            takeover: !self.client_no_context_takeover,
            window_bits: self.client_max_window_bits,
        }
    }

    /// Whether a message compressed on its own (no context) with a `window_bits` window may be
    /// sent from the server as is: the client must not expect context takeover, and every LZ77
    /// distance must fit the client's window. Distances never exceed the message, so any message
    /// of at most 2^n bytes fits an n-bit window whatever window compressed it.
    pub fn accepts_shared(&self, window_bits: u8, payload_len: usize) -> bool {
        self.server_no_context_takeover
            && (window_bits <= self.server_max_window_bits
                || payload_len <= 1 << self.server_max_window_bits)
    }

    /// Whether either direction keeps a window between messages.
    pub fn has_takeover(&self) -> bool {
        !self.server_no_context_takeover || !self.client_no_context_takeover
    }

    /// Packs the parameters into two bytes (never zero), for [`super::Connection`].
    pub(crate) fn pack(self) -> Packed {
        let bits = 1 << 15
            | (self.server_no_context_takeover as u16)
            | (self.client_no_context_takeover as u16) << 1
            | ((self.server_max_window_bits & 0xF) as u16) << 4
            | ((self.client_max_window_bits & 0xF) as u16) << 8;
        Packed(NonZeroU16::new(bits).expect("bit 15 is set"))
    }
}

/// [`Params`] in two bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Packed(NonZeroU16);

impl Packed {
    pub(crate) fn unpack(self) -> Params {
        let bits = self.0.get();
        Params {
            server_no_context_takeover: bits & 1 != 0,
            client_no_context_takeover: bits & 2 != 0,
            server_max_window_bits: ((bits >> 4) & 0xF) as u8,
            client_max_window_bits: ((bits >> 8) & 0xF) as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_pack_into_two_bytes() {
        for snct in [false, true] {
            for cnct in [false, true] {
                for s in MIN_WINDOW_BITS..=MAX_WINDOW_BITS {
                    for c in MIN_WINDOW_BITS..=MAX_WINDOW_BITS {
                        let p = Params {
                            server_no_context_takeover: snct,
                            client_no_context_takeover: cnct,
                            server_max_window_bits: s,
                            client_max_window_bits: c,
                        };
                        assert_eq!(p.pack().unpack(), p);
                    }
                }
            }
        }
        assert_eq!(size_of::<Option<Packed>>(), 2);
    }

    #[test]
    fn a_shared_frame_fits_by_window_or_by_length() {
        let p = Params {
            server_no_context_takeover: true,
            server_max_window_bits: 10,
            ..Params::default()
        };
        assert!(p.accepts_shared(10, 100_000));
        assert!(!p.accepts_shared(15, 1025));
        assert!(p.accepts_shared(15, 1024));
        let takeover = Params::default();
        assert!(!takeover.accepts_shared(9, 10));
    }
}
