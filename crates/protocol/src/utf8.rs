//! UTF-8 validation for text messages, streaming across fragments and reads so an invalid
//! sequence fails the connection (close 1007) as soon as it arrives, not when the message ends.

/// Validates a complete byte string.
pub(crate) fn validate_complete(bytes: &[u8]) -> Option<&str> {
    simdutf8::basic::from_utf8(bytes).ok()
}

/// Validates a prefix of a message that may continue: returns how many leading bytes are
/// complete valid characters, or `None` if the bytes can never become valid. Up to 3 trailing
/// bytes may be an unfinished character; the caller checks them again when more arrive.
pub(crate) fn validate_partial(bytes: &[u8]) -> Option<usize> {
    match simdutf8::compat::from_utf8(bytes) {
        Ok(_) => Some(bytes.len()),
        Err(e) if e.error_len().is_none() => Some(e.valid_up_to()),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_characters_wait_for_the_rest() {
        let text = "κόσμε".as_bytes();
        assert_eq!(validate_partial(&text[..1]), Some(0));
        assert_eq!(validate_partial(&text[..3]), Some(2));
        assert_eq!(validate_partial(text), Some(text.len()));
        assert!(validate_complete(&text[..3]).is_none());
    }

    #[test]
    fn impossible_sequences_fail_at_once() {
        // 0xF4 0x90 starts a code point above U+10FFFF: no continuation can fix it.
        assert_eq!(validate_partial(&[b'a', 0xF4, 0x90]), None);
        assert_eq!(validate_partial(&[0xC0, 0x80]), None); // overlong
        assert_eq!(validate_partial(&[0xED, 0xA0, 0x80]), None); // surrogate
        assert_eq!(validate_partial(&[0xFF]), None);
    }
}
