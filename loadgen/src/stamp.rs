//! The stamp every measured payload starts with: when the message was meant to be sent and its
//! sequence number, as 32 lowercase hex digits. Text, so the same stamp works in binary frames,
//! text frames, JSON strings and HTTP bodies; fixed width, so writing and reading it allocate
//! nothing.

/// Bytes a stamp takes at the start of a payload; payloads are at least this long.
pub const STAMP_LEN: usize = 32;

/// Bits of a sequence number that carry the publisher's id (the top ones); the rest count.
const PUBLISHER_SHIFT: u32 = 48;

/// What a payload says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// When the message was due to be sent (the intended time, not the actual one, so that a
    /// stalled sender does not hide its own delay), in [`crate::clock`] nanoseconds.
    pub sent_ns: u64,
    /// Sequence number: publisher id in the top 16 bits, count in the rest.
    pub seq: u64,
}

impl Stamp {
    /// The stamp of message `count` from publisher `publisher`.
    pub fn published(sent_ns: u64, publisher: u16, count: u64) -> Stamp {
        Stamp {
            sent_ns,
            seq: (publisher as u64) << PUBLISHER_SHIFT | (count & ((1 << PUBLISHER_SHIFT) - 1)),
        }
    }

    /// The publisher that sent it.
    pub fn publisher(&self) -> u16 {
        (self.seq >> PUBLISHER_SHIFT) as u16
    }

    /// The publisher's count.
    pub fn count(&self) -> u64 {
        self.seq & ((1 << PUBLISHER_SHIFT) - 1)
    }

    /// Writes the stamp over the first [`STAMP_LEN`] bytes of `payload`.
    pub fn write(&self, payload: &mut [u8]) {
        write_hex(self.sent_ns, &mut payload[..16]);
        write_hex(self.seq, &mut payload[16..STAMP_LEN]);
    }

    /// Reads the stamp at the start of `payload`; `None` if it is not one.
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let stamp = payload.get(..STAMP_LEN)?;
        Some(Stamp {
            sent_ns: read_hex(&stamp[..16])?,
            seq: read_hex(&stamp[16..])?,
        })
    }
}

/// A payload template of `size` bytes: room for the stamp, then printable filler (valid UTF-8, so
/// it can travel in text frames and JSON strings unescaped).
pub fn template(size: usize) -> Vec<u8> {
    let mut payload = vec![b'0'; STAMP_LEN];
    payload.extend((0..size.saturating_sub(STAMP_LEN)).map(|i| b'a' + (i % 26) as u8));
    payload
}

fn write_hex(value: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = DIGITS[(value >> (60 - 4 * i) & 0xF) as usize];
    }
}

fn read_hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &digit| {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | nibble as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_the_start_of_a_payload() {
        let mut payload = template(40);
        assert_eq!(payload.len(), 40);
        let stamp = Stamp::published(0x0123_4567_89ab_cdef, 7, 42);
        stamp.write(&mut payload);
        assert!(std::str::from_utf8(&payload).is_ok());
        assert_eq!(Stamp::read(&payload), Some(stamp));
        assert_eq!((stamp.publisher(), stamp.count()), (7, 42));
    }

    #[test]
    fn garbage_is_not_a_stamp() {
        assert_eq!(Stamp::read(b"short"), None);
        assert_eq!(Stamp::read(&[0xFF; 32]), None);
        assert_eq!(Stamp::read(&[b'A'; 32]), None);
    }

    #[test]
    fn template_is_never_shorter_than_a_stamp() {
        assert_eq!(template(0).len(), STAMP_LEN);
    }
}
