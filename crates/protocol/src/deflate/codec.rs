//! Raw deflate for WebSocket messages (RFC 7692 §7.2), on `flate2` with the zlib-rs backend.
//!
//! A message is compressed with a sync flush and sent without the `00 00 ff ff` that ends it;
//! the receiver appends those four bytes before inflating. Inflating stops as soon as the output
//! passes the limit, so a tiny payload that would inflate to gigabytes costs at most the limit.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::{MAX_WINDOW_BITS, MIN_WINDOW_BITS};

/// What a sync flush ends with, and what RFC 7692 §7.2.1 strips from every message.
pub(crate) const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// zlib's raw deflate cannot use a 256-byte window. A 512-byte one is used instead, which is
/// still within the peer's limit: zlib never emits a distance above 2^bits - 262, so at 9 bits
/// no distance exceeds 250 and an 8-bit inflater reads it.
fn zlib_bits(bits: u8) -> u8 {
    bits.clamp(MIN_WINDOW_BITS + 1, MAX_WINDOW_BITS)
}

/// One compression context (about 256 KiB at 15 bits with zlib's default memory level).
pub struct Deflater {
    compress: Compress,
    window_bits: u8,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("window_bits", &self.window_bits)
            .finish()
    }
}

impl Deflater {
    /// A context at `level` (0-9) whose window never exceeds 2^`window_bits` bytes (8..=15).
    pub fn new(level: u32, window_bits: u8) -> Deflater {
        Deflater {
            compress: Compress::new_with_window_bits(
                Compression::new(level.min(9)),
                false,
                zlib_bits(window_bits),
            ),
            window_bits,
        }
    }

    /// The window limit it was made with.
    pub fn window_bits(&self) -> u8 {
        self.window_bits
    }

    /// Appends `payload` compressed as one message to `out`, tail removed. `takeover`: keep
    /// the window for the next message; otherwise the next message starts afresh.
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>, takeover: bool) {
        let start = out.len();
        // Deflate's worst case is a few bytes per 16 KiB block over the input.
        out.reserve(payload.len() + payload.len() / 1024 + 64);
        let mut input = payload;
        loop {
            let before = self.compress.total_in();
            // Only fails on a stream error, which a well-formed context never has.
            let _ = self.compress.compress_vec(input, out, FlushCompress::Sync);
            input = &input[(self.compress.total_in() - before) as usize..];
            // Done once the input is in and the flush had room to finish.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if out.len() == start {
            // Nothing to flush (an empty message right after a flush, with the window kept):
            // zlib writes nothing, and the receiver's `00 00 ff ff` alone is not deflate data.
            // A single 0x00 makes it an empty stored block (RFC 7692 §7.2.3.6).
            out.push(0x00);
        }
        if !takeover {
            self.compress.reset();
        }
    }
}

/// Why a compressed message could not be inflated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit (close 1009).
    TooBig,
    /// Not valid deflate data (close 1007).
    Corrupt,
}

/// One decompression context: a few KiB of state, plus the window (2^bits bytes) once used.
pub struct Inflater {
    decompress: Decompress,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inflater")
    }
}

impl Inflater {
    /// A context for a peer whose window is at most 2^`window_bits` bytes.
    pub fn new(window_bits: u8) -> Inflater {
        Inflater {
            decompress: Decompress::new_with_window_bits(false, zlib_bits(window_bits)),
        }
    }

    /// Inflates one whole message (its frames' payloads, joined) and appends it to `out`,
    /// failing as soon as the message grows past `limit` bytes (on an error `out` is left as
    /// it was). `takeover`: the peer keeps its window, so this one is kept too; otherwise (and
    /// after any error) the context is reset.
    pub fn inflate(
        &mut self,
        compressed: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
        takeover: bool,
    ) -> Result<(), InflateError> {
        if compressed.is_empty() {
            // Not deflate data even with the tail (a sender that flushed nothing for an empty
            // message); read as the empty message it stands for, leaving the context as it
            // was, which is where such a sender's context is too.
            return Ok(());
        }
        let start = out.len();
        let result = self.run(compressed, out, limit);
        if result.is_err() {
            out.truncate(start);
        }
        if result.is_err() || !takeover || result == Ok(Status::StreamEnd) {
            // A final block ends the stream: the next message needs a fresh one.
            self.decompress.reset(false);
        }
        result.map(drop)
    }

    fn run(
        &mut self,
        compressed: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<Status, InflateError> {
        let limit = out.len().saturating_add(limit);
        let (mut input, mut tail) = (compressed, &TAIL[..]);
        loop {
            if out.len() == out.capacity() {
                if out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                // Grow geometrically, never past one byte over the limit.
                let room = out.len().max(1024).min(limit + 1 - out.len());
                out.reserve_exact(room);
            }
            let source = if input.is_empty() {
                &mut tail
            } else {
                &mut input
            };
            let (before_in, before_out) = (self.decompress.total_in(), out.len());
            let status = self
                .decompress
                .decompress_vec(source, out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            *source = &source[(self.decompress.total_in() - before_in) as usize..];
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            let room_left = out.len() < out.capacity();
            if status == Status::StreamEnd {
                // A final block ends the message; what follows it (padding, the tail) is moot.
                return Ok(status);
            }
            if input.is_empty() && tail.is_empty() && room_left {
                return Ok(status);
            }
            let progress = self.decompress.total_in() != before_in || out.len() != before_out;
            if !progress && room_left {
                return Err(InflateError::Corrupt);
            }
        }
    }
}

/// What a connection that negotiated permessage-deflate borrows to read a compressed message;
/// lent by the caller like the receive buffer, so the caller decides whether the context is
/// the connection's own or shared (a shared one only serves peers without context takeover).
pub trait Inflate {
    /// Inflates one whole message into a buffer this lends, failing past `limit` bytes.
    /// `peer` is what the peer's compressor does (its window, whether it keeps it).
    fn inflate(
        &mut self,
        compressed: &[u8],
        limit: usize,
        peer: super::Direction,
    ) -> Result<&[u8], InflateError>;
}

/// A connection's own inflate context and output buffer, made on first use: for clients and
/// tests, which do not share.
#[derive(Debug, Default)]
pub struct MessageInflater {
    inflater: Option<Inflater>,
    out: Vec<u8>,
}

impl Inflate for MessageInflater {
    fn inflate(
        &mut self,
        compressed: &[u8],
        limit: usize,
        peer: super::Direction,
    ) -> Result<&[u8], InflateError> {
        self.out.clear();
        self.inflater
            .get_or_insert_with(|| Inflater::new(peer.window_bits))
            .inflate(compressed, &mut self.out, limit, peer.takeover)?;
        Ok(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Letters that do not repeat within a message, so only context takeover finds repeats.
    fn text(n: usize) -> Vec<u8> {
        let mut x = 12345u32;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b'a' + (x >> 16) as u8 % 26
            })
            .collect()
    }

    #[test]
    fn rfc_7692_example_hello() {
        // §7.2.3.1: "Hello" compressed without context takeover.
        let mut out = Vec::new();
        Deflater::new(6, 15).compress(b"Hello", &mut out, false);
        let mut inflated = Vec::new();
        Inflater::new(15)
            .inflate(&out, &mut inflated, 100, false)
            .unwrap();
        assert_eq!(inflated, b"Hello");
        let mut inflated = Vec::new();
        let rfc = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        Inflater::new(15)
            .inflate(&rfc, &mut inflated, 100, false)
            .unwrap();
        assert_eq!(inflated, b"Hello");
        // §7.2.3.6: an empty message may be a single 0x00.
        let mut empty = Vec::new();
        Inflater::new(15)
            .inflate(&[0x00], &mut empty, 100, false)
            .unwrap();
        assert!(empty.is_empty());
        // §7.2.3.4: a final block with BFINAL set.
        let mut inflated = Vec::new();
        let fin = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        Inflater::new(15)
            .inflate(&fin, &mut inflated, 100, true)
            .unwrap();
        assert_eq!(inflated, b"Hello");
    }

    #[test]
    fn context_takeover_shrinks_repeats_and_round_trips() {
        for takeover in [false, true] {
            for bits in [8u8, 9, 12, 15] {
                let (mut d, mut i) = (Deflater::new(6, bits), Inflater::new(bits));
                let mut sizes = Vec::new();
                for round in 0..3 {
                    let message = text(300 + round);
                    let mut wire = Vec::new();
                    d.compress(&message, &mut wire, takeover);
                    sizes.push(wire.len());
                    let mut back = Vec::new();
                    i.inflate(&wire, &mut back, 1 << 20, takeover).unwrap();
                    assert_eq!(back, message, "takeover {takeover} bits {bits}");
                }
                // With the window kept (and wide enough to reach back over a whole message), a
                // repeat compresses to a reference or two.
                if bits >= 10 {
                    assert_eq!(sizes[2] < sizes[0] / 2, takeover, "{bits} {sizes:?}");
                }
            }
        }
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let mut bomb = Vec::new();
        Deflater::new(9, 15).compress(&vec![0u8; 10 << 20], &mut bomb, false);
        assert!(bomb.len() < 20 << 10, "{}", bomb.len());
        let mut out = Vec::new();
        let mut inflater = Inflater::new(15);
        assert_eq!(
            inflater.inflate(&bomb, &mut out, 64 << 10, false),
            Err(InflateError::TooBig)
        );
        // Never more than the limit and a byte was held.
        assert!(out.capacity() <= (64 << 10) + 1, "{}", out.capacity());
        // The context is usable again afterwards.
        let mut wire = Vec::new();
        Deflater::new(6, 15).compress(b"ok", &mut wire, false);
        out.clear();
        inflater.inflate(&wire, &mut out, 10, false).unwrap();
        assert_eq!(out, b"ok");
        // Exactly at the limit is fine.
        let mut exact = Vec::new();
        Deflater::new(6, 15).compress(&[7; 5000], &mut exact, false);
        let mut out = Vec::new();
        Inflater::new(15)
            .inflate(&exact, &mut out, 5000, false)
            .unwrap();
        assert_eq!(out.len(), 5000);
    }

    #[test]
    fn empty_messages_keep_both_windows_in_step() {
        // The regression (found by fuzz/connection_server): with context takeover, an empty
        // message right after another compressed to nothing, and the next message then failed
        // to inflate on the other end.
        for bits in [8u8, 15] {
            let (mut d, mut i) = (Deflater::new(6, bits), Inflater::new(bits));
            for message in [&b"a"[..], b"", b"", b"b", b"", b"c"] {
                let mut wire = Vec::new();
                d.compress(message, &mut wire, true);
                assert!(!wire.is_empty());
                let mut back = Vec::new();
                i.inflate(&wire, &mut back, 10, true).unwrap();
                assert_eq!(back, message, "bits {bits}");
            }
        }
        // A peer that does send an empty payload for an empty message stays in step too.
        let (mut d, mut i) = (Deflater::new(6, 15), Inflater::new(15));
        for message in [&b"x"[..], b"", b"y"] {
            let mut wire = Vec::new();
            if !message.is_empty() {
                d.compress(message, &mut wire, true);
            }
            let mut back = Vec::new();
            i.inflate(&wire, &mut back, 10, true).unwrap();
            assert_eq!(back, message);
        }
    }

    #[test]
    fn garbage_is_corrupt() {
        let mut out = Vec::new();
        assert_eq!(
            Inflater::new(15).inflate(&[0xff; 16], &mut out, 1000, false),
            Err(InflateError::Corrupt)
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000), limit in 0usize..5000) {
            let mut out = Vec::new();
            let mut inflater = Inflater::new(15);
            // Whether it fails or not, never more than the limit (the regression: one byte past
            // it was left behind on `TooBig`).
            let _ = inflater.inflate(&bytes, &mut out, limit, true);
            prop_assert!(out.len() <= limit);
            let _ = inflater.inflate(&bytes, &mut out, limit, false);
        }

        #[test]
        fn any_payload_round_trips(payload in prop::collection::vec(any::<u8>(), 0..5000), level in 0u32..10) {
            let mut wire = Vec::new();
            Deflater::new(level, 15).compress(&payload, &mut wire, false);
            let mut back = Vec::new();
            Inflater::new(15).inflate(&wire, &mut back, payload.len(), false).unwrap();
            prop_assert_eq!(back, payload);
        }
    }
}
