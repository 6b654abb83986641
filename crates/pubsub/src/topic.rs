//! Topic names: what a valid one looks like.
//!
//! A topic name is 1 to `max_len` bytes of `A-Z a-z 0-9 . _ : - /`. The set is small on purpose:
//! a name can stand in a URL path (`/t/<topic>`) and a JSON string without escaping, and it has
//! no room for the `*` wildcard that access patterns use. `.` and `/` separate the segments that
//! patterns match (the server's `auth` module).

/// Why a topic name was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicError {
    /// The name is empty.
    Empty,
    /// The name is longer than allowed.
    TooLong,
    /// The name has a character outside `A-Z a-z 0-9 . _ : - /`.
    BadChar,
}

impl std::fmt::Display for TopicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TopicError::Empty => "topic name is empty",
            TopicError::TooLong => "topic name is too long",
            TopicError::BadChar => "topic name may only use A-Z a-z 0-9 . _ : - /",
        })
    }
}

impl std::error::Error for TopicError {}

/// Checks a topic name: 1 to `max_len` bytes of `A-Z a-z 0-9 . _ : - /`.
pub fn validate_topic(name: &str, max_len: usize) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > max_len {
        return Err(TopicError::TooLong);
    }
    let allowed =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-' | b'/');
    if name.bytes().all(allowed) {
        Ok(())
    } else {
        Err(TopicError::BadChar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_set() {
        assert_eq!(validate_topic("chat.room-1/users:42_x", 64), Ok(()));
        assert_eq!(validate_topic("a", 1), Ok(()));
    }

    #[test]
    fn refuses_empty_long_and_foreign_characters() {
        assert_eq!(validate_topic("", 64), Err(TopicError::Empty));
        assert_eq!(validate_topic("ab", 1), Err(TopicError::TooLong));
        for bad in ["a b", "a*", "a?b", "a#", "é", "a\"b", "a\\b", "a\0", "a%20"] {
            assert_eq!(validate_topic(bad, 64), Err(TopicError::BadChar), "{bad:?}");
        }
    }
}
