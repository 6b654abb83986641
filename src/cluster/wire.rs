//! Messages as Redis carries them, back into pubsub [`Message`]s: the live form a `PUBLISH`
//! sends (`<seq>:<format><time>:<payload>`, written by the publish script) and a log entry
//! (id `<seq>-0`, fields `f`, `t`, `d`). A message that its node delivered locally with a
//! provisional `seq` while Redis was down also names its origin (`<seq>/<node>/<provisional>`
//! live, field `o` = `<node>/<provisional>` in the log); decoded by that node, it is marked
//! [`Message::provisional_here`]. Anything malformed is refused, never trusted.
//!
//! The two decoders are public for the fuzz target `cluster_wire`: Redis is as trusted as the
//! network between the nodes, and what comes from it is checked like client input.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Value;

use clarion_pubsub::{Format, Message, Payload};

/// The one-byte name of a format in Redis.
pub(super) fn format_code(format: Format) -> &'static str {
    match format {
        Format::Text => "t",
        Format::Json => "j",
        Format::Binary => "b",
    }
}

fn format_of(code: &[u8]) -> Option<Format> {
    match code {
        b"t" => Some(Format::Text),
        b"j" => Some(Format::Json),
        b"b" => Some(Format::Binary),
        _ => None,
    }
}

/// Microseconds since the Unix epoch now: a publish's time stamp, comparable across nodes as far
/// as their clocks agree.
pub(super) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The `Instant` of a time stamp of [`unix_micros`] (now, if it is in the future).
fn instant_of(micros: u64) -> Instant {
    let now = Instant::now();
    let age = Duration::from_micros(unix_micros().saturating_sub(micros));
    now.checked_sub(age).unwrap_or(now)
}

fn number(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// The provisional `seq` in `origin` (`<node>/<provisional>`) if `node` is the origin's node;
/// `Some(0)` for another node's; `None` if malformed.
fn provisional_for(node: &str, origin: &[u8]) -> Option<u64> {
    let at = origin.iter().rposition(|&b| b == b'/')?;
    let seq = number(&origin[at + 1..]).filter(|&seq| seq > 0)?;
    Some(if &origin[..at] == node.as_bytes() {
        seq
    } else {
        0
    })
}

/// A message of `topic` from its live form, as node `node` sees it.
pub fn decode_live(topic: Arc<str>, body: &[u8], node: &str) -> Option<Message> {
    let (head, rest) = split_at_colon(body)?;
    let (seq, provisional) = match head.iter().position(|&b| b == b'/') {
        Some(at) => (&head[..at], provisional_for(node, &head[at + 1..])?),
        None => (head, 0),
    };
    let (format, data) = split_at_colon(rest)?;
    let (code, time) = format.split_at_checked(1)?;
    let message = message(topic, number(seq)?, format_of(code)?, number(time)?, data)?;
    Some(message.provisional_here(provisional))
}

/// A message of `topic` from a log entry as `XRANGE` returns it (`[id, [field, value, …]]`),
/// as node `node` sees it.
pub fn decode_entry(topic: &Arc<str>, entry: &Value, node: &str) -> Option<Message> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let [Value::BulkString(id), Value::Array(fields)] = parts.as_slice() else {
        return None;
    };
    let seq = number(id.strip_suffix(b"-0")?)?;
    let (mut format, mut time, mut data, mut provisional) = (None, None, None, Some(0));
    for pair in fields.chunks_exact(2) {
        let [Value::BulkString(name), Value::BulkString(value)] = pair else {
            return None;
        };
        match name.as_slice() {
            b"f" => format = format_of(value),
            b"t" => time = number(value),
            b"d" => data = Some(value.as_slice()),
            b"o" => provisional = provisional_for(node, value),
            _ => {}
        }
    }
    let message = message(topic.clone(), seq, format?, time?, data?)?;
    Some(message.provisional_here(provisional?))
}

fn message(topic: Arc<str>, seq: u64, format: Format, time: u64, data: &[u8]) -> Option<Message> {
    // Text is UTF-8 and JSON one value by the publisher's contract; a foreign writer could break
    // either, so check the one that a subscriber would trip on.
    if format != Format::Binary && std::str::from_utf8(data).is_err() {
        return None;
    }
    (seq > 0).then(|| Message::new(topic, seq, instant_of(time), Payload::new(format, data)))
}

fn split_at_colon(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == b':')?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "00000000000000aa";

    fn bulk(bytes: &[u8]) -> Value {
        Value::BulkString(bytes.to_vec())
    }

    #[test]
    fn live_form_round_trips_binary_payloads_with_colons() {
        let topic: Arc<str> = Arc::from("t");
        let now = unix_micros();
        let body = [format!("42:b{now}:").as_bytes(), b"a:\xff\x00:"].concat();
        let message = decode_live(topic.clone(), &body, NODE).unwrap();
        assert_eq!(message.seq(), 42);
        assert_eq!(message.payload().format(), Format::Binary);
        assert_eq!(message.payload().bytes(), b"a:\xff\x00:");
        assert!(message.published_at() <= Instant::now());
        let json = decode_live(topic.clone(), b"1:j5:{\"a\":1}", NODE).unwrap();
        assert_eq!(json.payload().format(), Format::Json);
        assert_eq!(json.provisional(), 0);
    }

    #[test]
    fn a_provisional_origin_marks_only_its_own_node_s_messages() {
        let topic: Arc<str> = Arc::from("t");
        let body = format!("12/{NODE}/11:t5:hi");
        let own = decode_live(topic.clone(), body.as_bytes(), NODE).unwrap();
        assert_eq!(
            (own.seq(), own.provisional(), own.payload().bytes()),
            (12, 11, &b"hi"[..])
        );
        let theirs = decode_live(topic.clone(), body.as_bytes(), "00000000000000bb").unwrap();
        assert_eq!((theirs.seq(), theirs.provisional()), (12, 0));
        for bad in [
            "12/:t5:hi",
            "12/aa/0:t5:hi",
            "12/aa/x:t5:hi",
            "12/aa:t5:hi",
            "/aa/1:t5:x",
        ] {
            assert!(
                decode_live(topic.clone(), bad.as_bytes(), NODE).is_none(),
                "{bad}"
            );
        }
        let entry = |origin: &[u8]| {
            let fields = [&b"f"[..], b"t", b"t", b"7", b"d", b"hi", b"o", origin];
            Value::Array(vec![
                bulk(b"12-0"),
                Value::Array(fields.iter().map(|f| bulk(f)).collect()),
            ])
        };
        let own = decode_entry(&topic, &entry(format!("{NODE}/11").as_bytes()), NODE).unwrap();
        assert_eq!(own.provisional(), 11);
        let theirs = decode_entry(&topic, &entry(b"00000000000000bb/11"), NODE).unwrap();
        assert_eq!(theirs.provisional(), 0);
        assert!(decode_entry(&topic, &entry(b"11"), NODE).is_none());
    }

    #[test]
    fn malformed_live_forms_are_refused() {
        let topic: Arc<str> = Arc::from("t");
        for bad in [
            &b""[..],
            b"1",
            b"1:t5",
            b"x:t5:a",
            b"0:t5:a",
            b"1:q5:a",
            b"1:t:a",
            b"1:tx:a",
            b"1:t5:\xff",
            b"-1:t5:a",
        ] {
            assert!(decode_live(topic.clone(), bad, NODE).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn log_entries_decode_and_bad_ones_are_refused() {
        let topic: Arc<str> = Arc::from("t");
        let fields = |f: &[u8]| {
            Value::Array(vec![
                bulk(b"f"),
                bulk(f),
                bulk(b"t"),
                bulk(b"7"),
                bulk(b"d"),
                bulk(b"hi"),
            ])
        };
        let entry = Value::Array(vec![bulk(b"9-0"), fields(b"t")]);
        let message = decode_entry(&topic, &entry, NODE).unwrap();
        assert_eq!((message.seq(), message.payload().bytes()), (9, &b"hi"[..]));
        assert_eq!(message.payload().format(), Format::Text);
        for bad in [
            Value::Nil,
            Value::Array(vec![bulk(b"9-1"), fields(b"t")]),
            Value::Array(vec![bulk(b"9-0"), fields(b"z")]),
            Value::Array(vec![bulk(b"9-0")]),
            Value::Array(vec![bulk(b"9-0"), Value::Array(vec![bulk(b"f")])]),
        ] {
            assert!(decode_entry(&topic, &bad, NODE).is_none(), "{bad:?}");
        }
    }
}
