//! Messages as Redis carries them between nodes (`cluster::wire`) on arbitrary bytes: the live
//! form a `PUBLISH` delivers (`<seq>[/<node>/<provisional>]:<format><time>:<payload>`), a log
//! entry as `XRANGE` returns it, and replies of any shape in its place.
//!
//! Invariants: decoding never panics; a decoded message has a `seq` above 0 and the topic it was
//! decoded for, its payload is the tail of the live form, text and JSON are UTF-8, and the
//! message written back in the live form (as the publish script writes it) decodes to the same
//! message; a log entry and the live form built from the same fields (`seq`, format, time,
//! origin and payload, split at NUL bytes) decode alike, both refused or to the same message,
//! whatever the order of the entry's fields; a reply of another shape is refused.
#![no_main]

use std::sync::Arc;

use clarion::cluster::wire::{decode_entry, decode_live};
use clarion_pubsub::{Format, Message};
use libfuzzer_sys::fuzz_target;
use redis::Value;

/// This node's id; the seeds name it in some origins, so that both kinds of origin are reached.
const NODE: &str = "00000000000000aa";

fuzz_target!(|data: &[u8]| {
    let topic: Arc<str> = Arc::from("t");
    if let Some(message) = decode_live(topic.clone(), data, NODE) {
        check(&message, &topic);
        assert!(data.ends_with(message.payload().bytes()));
        let again = live(
            &message.seq().to_string(),
            code(message.payload().format()),
            b"0",
            origin(&message).as_deref(),
            message.payload().bytes(),
        );
        let decoded = decode_live(topic.clone(), &again, NODE).expect("written back, it decodes");
        assert_eq!(summary(&decoded), summary(&message));
    }
    check_entry_against_live(&topic, data);
    let mut bytes = data.iter().copied();
    let reply = reply(&mut bytes, 0);
    if let Some(message) = decode_entry(&topic, &reply, NODE) {
        check(&message, &topic);
        assert!(
            matches!(&reply, Value::Array(parts) if matches!(parts.as_slice(),
                [Value::BulkString(id), Value::Array(_)] if id.ends_with(b"-0"))),
            "decoded a reply of another shape: {reply:?}"
        );
    }
});

fn check(message: &Message, topic: &Arc<str>) {
    assert!(message.seq() > 0);
    assert_eq!(message.topic(), topic);
    if message.payload().format() != Format::Binary {
        assert!(std::str::from_utf8(message.payload().bytes()).is_ok());
    }
}

/// What identifies a decoded message (its time stamp is turned into an `Instant`).
fn summary(message: &Message) -> (u64, Format, Vec<u8>, u64) {
    let payload = message.payload();
    (
        message.seq(),
        payload.format(),
        payload.bytes().to_vec(),
        message.provisional(),
    )
}

fn code(format: Format) -> &'static [u8] {
    match format {
        Format::Text => b"t",
        Format::Json => b"j",
        Format::Binary => b"b",
    }
}

/// The origin the publish script writes for a message: this node's, when it is its own.
fn origin(message: &Message) -> Option<Vec<u8>> {
    (message.provisional() > 0).then(|| format!("{NODE}/{}", message.provisional()).into_bytes())
}

/// The live form, as the publish script writes it.
fn live(seq: &str, code: &[u8], time: &[u8], origin: Option<&[u8]>, payload: &[u8]) -> Vec<u8> {
    let mut out = seq.as_bytes().to_vec();
    if let Some(origin) = origin {
        out.push(b'/');
        out.extend_from_slice(origin);
    }
    out.push(b':');
    out.extend_from_slice(code);
    out.extend_from_slice(time);
    out.push(b':');
    out.extend_from_slice(payload);
    out
}

/// Splits the input at NUL bytes into `seq`, format code, time, origin (none if empty) and
/// payload (the rest), builds both forms from them and compares what they decode to.
fn check_entry_against_live(topic: &Arc<str>, data: &[u8]) {
    let mut fields = data.splitn(5, |&b| b == 0);
    let (Some(seq), Some(code), Some(time), Some(origin), Some(payload)) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return;
    };
    let origin = (!origin.is_empty()).then_some(origin);
    let bulk = |bytes: &[u8]| Value::BulkString(bytes.to_vec());
    let mut pairs = vec![(b"f", code), (b"t", time), (b"d", payload)];
    pairs.extend(origin.map(|origin| (b"o", origin)));
    let entry = |pairs: &[(&[u8; 1], &[u8])]| {
        let fields = pairs
            .iter()
            .flat_map(|(name, value)| [bulk(*name), bulk(value)]);
        Value::Array(vec![
            bulk(&[seq, b"-0"].concat()),
            Value::Array(fields.collect()),
        ])
    };
    let from_entry = decode_entry(topic, &entry(&pairs), NODE);
    pairs.reverse();
    let reordered = decode_entry(topic, &entry(&pairs), NODE);
    assert_eq!(
        from_entry.as_ref().map(summary),
        reordered.as_ref().map(summary)
    );

    // The live form cannot carry every field: `:` ends the head and the time, `/` the `seq`,
    // and the format code is one byte.
    let Ok(seq) = std::str::from_utf8(seq) else {
        return;
    };
    let unambiguous = !seq.contains([':', '/'])
        && code.len() == 1
        && !time.contains(&b':')
        && !origin.is_some_and(|origin| origin.contains(&b':'));
    if unambiguous {
        let from_live = decode_live(topic.clone(), &live(seq, code, time, origin, payload), NODE);
        assert_eq!(
            from_entry.as_ref().map(summary),
            from_live.as_ref().map(summary),
            "log entry and live form disagree"
        );
    }
}

/// A reply of any shape, from the input: mostly the shapes `XRANGE` answers with, so that the
/// decoder's checks are reached.
fn reply(bytes: &mut impl Iterator<Item = u8>, depth: usize) -> Value {
    let Some(kind) = bytes.next() else {
        return Value::Nil;
    };
    let text = |bytes: &mut dyn Iterator<Item = u8>| -> Vec<u8> {
        let len = bytes.next().unwrap_or(0) % 24;
        bytes.take(usize::from(len)).collect()
    };
    match kind % 8 {
        0..=3 => Value::BulkString(text(bytes)),
        4..=5 if depth < 4 => {
            let len = bytes.next().unwrap_or(0) % 12;
            Value::Array((0..len).map(|_| reply(bytes, depth + 1)).collect())
        }
        6 => Value::Int(i64::from(kind)),
        7 => Value::SimpleString(String::from_utf8_lossy(&text(bytes)).into_owned()),
        _ => Value::Nil,
    }
}
