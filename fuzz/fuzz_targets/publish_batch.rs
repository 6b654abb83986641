//! The body of `POST /publish` (a JSON batch) on arbitrary bytes, through `http::parse_batch`,
//! the check the server makes before it publishes any item.
//!
//! Invariants: it never panics; what it accepts is an array of items, each with a valid topic
//! (given back exactly) and its `data`: a string as its text, anything else as JSON, the very
//! bytes the body held, which a strict parser reads back; the batch written back canonically is
//! accepted with the same topics and values; and a JSON array of well-formed items, written
//! canonically, is never refused.
#![no_main]

use std::borrow::Cow;

use clarion::server::http::parse_batch;
use clarion_pubsub::{Format, Payload, validate_topic};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// A small limit, so that the fuzzer reaches it.
const MAX_TOPIC: usize = 16;

fuzz_target!(|data: &[u8]| {
    match parse_batch(data, MAX_TOPIC) {
        Ok(batch) => {
            let raw: Vec<Item> = serde_json::from_slice(data).expect("an accepted batch is items");
            assert_eq!(raw.len(), batch.len());
            let mut canonical = Vec::new();
            for ((topic, payload), item) in batch.iter().zip(&raw) {
                assert_eq!(topic, &item.topic);
                assert_eq!(validate_topic(topic, MAX_TOPIC), Ok(()));
                let value = value_of(payload);
                match payload.format() {
                    Format::Text => {
                        let text: String = serde_json::from_str(item.data.get()).unwrap();
                        assert_eq!(payload.bytes(), text.as_bytes());
                    }
                    Format::Json => {
                        assert_eq!(payload.bytes(), item.data.get().as_bytes());
                        assert!(!value.is_string(), "a string is published as text");
                    }
                    Format::Binary => panic!("a batch item is never binary"),
                }
                canonical.push(json!({ "topic": topic, "data": value }));
            }
            let again = serde_json::to_vec(&canonical).unwrap();
            let batch_again = parse_batch(&again, MAX_TOPIC).expect("the canonical form");
            let values = |batch: &[(Cow<str>, Payload)]| -> Vec<(String, Format, Value)> {
                let each = |(topic, payload): &(Cow<str>, Payload)| {
                    (topic.to_string(), payload.format(), value_of(payload))
                };
                batch.iter().map(each).collect()
            };
            let (before, after) = (values(&batch), values(&batch_again));
            assert!(
                before.len() == after.len()
                    && before
                        .iter()
                        .zip(&after)
                        .all(|((t, f, v), (u, g, w))| { t == u && f == g && same(v, w) }),
                "{before:?} != {after:?}"
            );
        }
        Err(message) => {
            assert!(!message.is_empty());
            // Refused, yet a JSON array of well-formed items: its canonical form (no duplicate
            // keys, no values strict parsers refuse) must be accepted.
            if let Some(items) = well_formed(data) {
                let canonical = serde_json::to_vec(&items).unwrap();
                let accepted = parse_batch(&canonical, MAX_TOPIC);
                assert!(accepted.is_ok(), "{accepted:?} for {}", Value::Array(items));
            }
        }
    }
});

/// An item as the documentation of `POST /publish` states it.
#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// The value a subscriber reads back from a payload: a text payload is a JSON string.
fn value_of(payload: &Payload) -> Value {
    let text = std::str::from_utf8(payload.bytes()).expect("text and JSON are UTF-8");
    match payload.format() {
        Format::Text => Value::String(text.to_owned()),
        _ => serde_json::from_str(text).expect("JSON data reads back"),
    }
}

/// Equal values, but for the last bits of floats: serde_json's float parsing is not correctly
/// rounded (`94e199` reads as 9.400000000000001e200, which writes back as itself and reads as
/// 9.4e200), and the harness, not the server, reads them.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => {
                x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
            }
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// The body's items with just `topic` and `data`, if it is a JSON array of objects that each
/// have a valid topic and some data.
fn well_formed(body: &[u8]) -> Option<Vec<Value>> {
    let Ok(Value::Array(items)) = serde_json::from_slice(body) else {
        return None;
    };
    items
        .iter()
        .map(|item| {
            let topic = item.get("topic")?.as_str()?;
            validate_topic(topic, MAX_TOPIC).ok()?;
            Some(json!({ "topic": topic, "data": item.get("data")? }))
        })
        .collect()
}
