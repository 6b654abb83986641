//! The push server's JSON envelope commands (`/ws`) on arbitrary bytes, followed through to
//! what the server answers and delivers.
//!
//! Invariants: parsing never panics; an error renders as a JSON error reply that echoes the id;
//! a command's acks render as JSON with its id and topic; a published `data` comes back in the
//! delivery as the same JSON value (or the same string), whatever the topic holds.
#![no_main]

use std::sync::Arc;
use std::time::Instant;

use clarion_protocol::MessageKind;
use clarion_pubsub::{Epoch, Format, Message, Payload, validate_topic};
use clarion::server::envelope::{
    Command, Id, format_of, parse_command, render_ack, render_delivery, render_published,
    render_session, render_subscribed,
};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    assert_eq!(format_of(MessageKind::Binary, data), Format::Binary);
    let _ = format_of(MessageKind::Text, data);
    let mut out = Vec::new();
    let command = match parse_command(data) {
        Ok(command) => command,
        Err(error) => {
            error.render(&mut out);
            let reply = json(&out);
            assert_eq!(reply["type"], "error");
            assert_eq!(reply["code"], error.code.as_str());
            assert_id(&reply, error.id);
            return;
        }
    };
    // Commands without a topic (hello, refresh, ping) exercise the renderers with "".
    let (id, topic) = (command.id(), command.topic().unwrap_or_default());
    render_ack(&mut out, id);
    assert_id(&json(&out), id);
    out.clear();
    render_session(&mut out, id, Some(u8::MAX), Some(u64::MAX));
    assert_id(&json(&out), id);
    out.clear();
    if let Command::Refresh { token, .. } = &command {
        // A token is any string; it is verified, never echoed.
        assert!(token.len() <= data.len());
    }
    render_published(&mut out, id, topic, Some(u64::MAX));
    let ack = json(&out);
    assert_id(&ack, id);
    assert_eq!(ack["topic"], topic);
    out.clear();
    render_subscribed(&mut out, id, topic, true, Epoch::new(u64::MAX), 0);
    assert_eq!(json(&out)["topic"], topic);
    let _ = validate_topic(topic, 256);
    if let Command::Publish { format, data, .. } = &command {
        let message = Message::new(
            Arc::from(topic),
            1,
            Instant::now(),
            Payload::new(*format, data),
        );
        out.clear();
        render_delivery(&mut out, &message);
        let delivery = json(&out);
        assert_eq!(delivery["topic"], topic);
        match format {
            Format::Json => {
                let value: Value = serde_json::from_slice(data).expect("JSON data is JSON");
                assert_eq!(delivery["data"], value);
            }
            Format::Text => {
                let text = std::str::from_utf8(data).expect("text data is UTF-8");
                assert_eq!(delivery["data"], text);
            }
            Format::Binary => panic!("an envelope publish is never binary"),
        }
    }
});

/// Parses a reply, however deep: a delivery nests `data` one level deeper than the command did,
/// past serde_json's default limit, which is this parser's limit and not the protocol's.
fn json(bytes: &[u8]) -> Value {
    let mut parser = serde_json::Deserializer::from_slice(bytes);
    parser.disable_recursion_limit();
    Value::deserialize(&mut parser)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(bytes)))
}

fn assert_id(reply: &Value, id: Option<Id<'_>>) {
    match id {
        Some(id) => {
            let value: Value = serde_json::from_str(id.as_json()).expect("an id is JSON");
            assert!(value.is_number() || value.is_string(), "{value}");
            assert_eq!(reply["id"], value);
        }
        None => assert!(reply.get("id").is_none()),
    }
}
