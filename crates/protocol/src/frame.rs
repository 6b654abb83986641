//! Frame header codec (RFC 6455 §5.2): decoding the 2 to 14 header bytes, encoding them back.
//!
//! Only the header is handled here; payloads stay where they are (unmasked in place by
//! [`super::mask`]) so the connection can deliver them without a copy.

/// Longest possible header: 2 fixed bytes, 8 bytes of extended length, 4 bytes of mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// Frame opcodes defined by RFC 6455; every other value is reserved and fails the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// A further fragment of a message.
    Continuation = 0x0,
    /// The first frame of a text message.
    Text = 0x1,
    /// The first frame of a binary message.
    Binary = 0x2,
    /// Close handshake.
    Close = 0x8,
    /// Keep-alive request.
    Ping = 0x9,
    /// Keep-alive answer.
    Pong = 0xA,
}

impl OpCode {
    /// The opcode for a 4-bit value, or `None` for a reserved one.
    pub fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Control frames (close, ping, pong) are short, never fragmented, and may interleave.
    pub fn is_control(self) -> bool {
        self as u8 & 0x8 != 0
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Last frame of its message.
    pub fin: bool,
    /// The three reserved bits, RSV1 as `0b100`; extensions may claim them.
    pub rsv: u8,
    /// What the frame carries.
    pub opcode: OpCode,
    /// The masking key, present on every client-to-server frame.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
}

/// A header that can never be valid, whatever the connection state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Opcode 3-7 or 0xB-0xF.
    ReservedOpcode(u8),
    /// A 64-bit length with its most significant bit set.
    LengthOverflow,
}

/// Decodes a header from the start of `buf`: `Ok(None)` when more bytes are needed, else the header
/// and how many bytes it took.
pub fn decode_header(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, HeaderError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let needed = header_len(b1);
    if buf.len() < needed {
        return Ok(None);
    }
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(HeaderError::ReservedOpcode(b0 & 0x0F))?;
    let (payload_len, mut at) = match b1 & 0x7F {
        126 => (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4),
        127 => {
            let len = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if len >> 63 != 0 {
                return Err(HeaderError::LengthOverflow);
            }
            (len, 10)
        }
        short => (short as u64, 2),
    };
    let mask = if b1 & 0x80 != 0 {
        let key = buf[at..at + 4].try_into().expect("4 bytes");
        at += 4;
        Some(key)
    } else {
        None
    };
    let header = FrameHeader {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode,
        mask,
        payload_len,
    };
    Ok(Some((header, at)))
}

/// Total header length implied by the second header byte.
pub fn header_len(second_byte: u8) -> usize {
    let ext = match second_byte & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if second_byte & 0x80 != 0 { 4 } else { 0 }
}

/// Encodes a header into `out`, returning its length. Uses the shortest length form.
#[inline]
pub fn encode_header(out: &mut [u8; MAX_HEADER_LEN], header: &FrameHeader) -> usize {
    out[0] = (header.fin as u8) << 7 | (header.rsv & 0x7) << 4 | header.opcode as u8;
    let mask_bit = if header.mask.is_some() { 0x80 } else { 0 };
    let mut at = match header.payload_len {
        len @ 0..=125 => {
            out[1] = mask_bit | len as u8;
            2
        }
        len @ 126..=0xFFFF => {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        len => {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&len.to_be_bytes());
            10
        }
    };
    if let Some(key) = header.mask {
        out[at..at + 4].copy_from_slice(&key);
        at += 4;
    }
    at
}

/// A whole unmasked (server-to-client) frame: header then payload, in one buffer. Servers use it to
/// frame a message once and share the bytes among many connections.
pub fn encode_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    encode_frame_rsv(opcode, 0, payload)
}

/// RSV1: the message is compressed (permessage-deflate, RFC 7692 §6).
pub const RSV1: u8 = 0b100;

/// Like [`encode_frame`], with the reserved bits `rsv` set (e.g. [`RSV1`] for a payload already
/// compressed with permessage-deflate).
pub fn encode_frame_rsv(opcode: OpCode, rsv: u8, payload: &[u8]) -> Vec<u8> {
    let mut header = [0u8; MAX_HEADER_LEN];
    let len = encode_header(
        &mut header,
        &FrameHeader {
            fin: true,
            rsv,
            opcode,
            mask: None,
            payload_len: payload.len() as u64,
        },
    );
    let mut frame = Vec::with_capacity(len + payload.len());
    frame.extend_from_slice(&header[..len]);
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(opcode: OpCode, len: u64, mask: Option<[u8; 4]>) -> FrameHeader {
        FrameHeader {
            fin: true,
            rsv: 0,
            opcode,
            mask,
            payload_len: len,
        }
    }

    #[test]
    fn length_forms_switch_at_126_and_65536() {
        let mut out = [0; MAX_HEADER_LEN];
        assert_eq!(encode_header(&mut out, &header(OpCode::Text, 125, None)), 2);
        assert_eq!(encode_header(&mut out, &header(OpCode::Text, 126, None)), 4);
        assert_eq!(
            encode_header(&mut out, &header(OpCode::Text, 65535, None)),
            4
        );
        assert_eq!(
            encode_header(&mut out, &header(OpCode::Text, 65536, None)),
            10
        );
        assert_eq!(
            encode_header(&mut out, &header(OpCode::Text, 65536, Some([1, 2, 3, 4]))),
            14
        );
    }

    #[test]
    fn incomplete_headers_ask_for_more() {
        let mut out = [0; MAX_HEADER_LEN];
        let n = encode_header(&mut out, &header(OpCode::Binary, 70000, Some([9, 8, 7, 6])));
        for cut in 0..n {
            assert_eq!(decode_header(&out[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(decode_header(&out[..n]).unwrap().is_some());
    }

    #[test]
    fn reserved_opcodes_and_huge_lengths_are_errors() {
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(
                decode_header(&[0x80 | op, 0]),
                Err(HeaderError::ReservedOpcode(op))
            );
        }
        let mut frame = vec![0x82, 127];
        frame.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(decode_header(&frame), Err(HeaderError::LengthOverflow));
    }

    #[test]
    fn rfc_example_single_frame_masked_text() {
        // RFC 6455 §5.7: "Hello", masked.
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, n) = decode_header(&bytes).unwrap().unwrap();
        assert_eq!(n, 6);
        assert_eq!(h, header(OpCode::Text, 5, Some([0x37, 0xfa, 0x21, 0x3d])));
        let mut payload = bytes[n..].to_vec();
        super::super::mask::apply_mask(&mut payload, h.mask.unwrap(), 0);
        assert_eq!(payload, b"Hello");
    }

    proptest! {
        #[test]
        fn header_round_trip(fin: bool, rsv in 0u8..8, op in prop::sample::select(vec![0u8, 1, 2, 8, 9, 10]),
                             len in prop_oneof![0u64..200, 60000u64..70000, 0u64..(1 << 63)],
                             mask: Option<[u8; 4]>) {
            let h = FrameHeader { fin, rsv, opcode: OpCode::from_bits(op).unwrap(), mask, payload_len: len };
            let mut out = [0; MAX_HEADER_LEN];
            let n = encode_header(&mut out, &h);
            prop_assert_eq!(n, header_len(out[1]));
            prop_assert_eq!(decode_header(&out[..n]), Ok(Some((h, n))));
        }
    }
}
