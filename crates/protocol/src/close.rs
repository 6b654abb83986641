//! Close codes (RFC 6455 §7.4) and the close frame payload: a 2-byte code and a UTF-8 reason.

use super::utf8;

/// A close status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// Normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// The endpoint is going away (server shutdown, idle timeout).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// A message type this endpoint does not accept.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// No code was present (never sent on the wire).
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// The connection dropped without a close frame (never sent on the wire).
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// Text that is not UTF-8.
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// A policy was violated (slow consumer, forbidden topic).
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// A frame or message above the configured limit.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// The server hit an unexpected condition.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// Refused for now (IANA-registered after RFC 6455): e.g. a slow consumer, or a publish
    /// the cluster link cannot take.
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);

    /// Whether a peer may send this code in a close frame: the codes RFC 6455 defines
    /// (1000-1003, 1007-1011), those IANA registered since (1012 service restart, 1013 try
    /// again later, 1014 bad gateway), and the registered (3000-3999) and private (4000-4999)
    /// ranges. 1004-1006 and 1015 are reserved, the rest of 1000-2999 is unassigned.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// The longest reason that fits a control frame beside the 2-byte code.
pub const MAX_REASON_LEN: usize = 123;

/// Parses a received close payload: `Ok(None)` when empty, else the code and reason; the error
/// is the code to fail the connection with.
pub(crate) fn parse_payload(payload: &[u8]) -> Result<Option<(CloseCode, &str)>, CloseCode> {
    match payload {
        [] => Ok(None),
        [_] => Err(CloseCode::PROTOCOL_ERROR),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_valid_on_wire() {
                return Err(CloseCode::PROTOCOL_ERROR);
            }
            let reason = utf8::validate_complete(reason).ok_or(CloseCode::INVALID_PAYLOAD)?;
            Ok(Some((code, reason)))
        }
    }
}

/// Writes a close payload into `out` and returns its length; the reason is cut at a character
/// boundary so the payload stays within a control frame.
pub(crate) fn encode_payload(
    out: &mut [u8; 2 + MAX_REASON_LEN],
    code: CloseCode,
    reason: &str,
) -> usize {
    let mut cut = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    out[..2].copy_from_slice(&code.0.to_be_bytes());
    out[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
    2 + cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_validity_follows_rfc_ranges() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            assert!(CloseCode(code).is_valid_on_wire(), "{code}");
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!CloseCode(code).is_valid_on_wire(), "{code}");
        }
    }

    #[test]
    fn payload_parsing() {
        assert_eq!(parse_payload(&[]), Ok(None));
        assert_eq!(parse_payload(&[3]), Err(CloseCode::PROTOCOL_ERROR));
        assert_eq!(
            parse_payload(&[0x03, 0xE8]),
            Ok(Some((CloseCode::NORMAL, "")))
        );
        assert_eq!(
            parse_payload(b"\x03\xe8bye"),
            Ok(Some((CloseCode::NORMAL, "bye")))
        );
        assert_eq!(
            parse_payload(b"\x03\xe8\xff"),
            Err(CloseCode::INVALID_PAYLOAD)
        );
        assert_eq!(parse_payload(&[0x03, 0xED]), Err(CloseCode::PROTOCOL_ERROR)); // 1005
    }

    #[test]
    fn long_reasons_are_cut_at_a_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let mut out = [0; 2 + MAX_REASON_LEN];
        let n = encode_payload(&mut out, CloseCode::GOING_AWAY, &reason);
        assert!(n <= 125);
        assert!(parse_payload(&out[..n]).is_ok());
    }
}
