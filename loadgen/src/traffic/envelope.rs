//! The JSON envelope protocol on `/ws`, as far as the loadgen speaks it.
//!
//! Commands sent: `{"type":"subscribe","topic":T,"id":N}` and
//! `{"type":"publish","topic":T,"data":D}`. Frames read: a delivery is any object with a string
//! `data` (it also carries `topic` and `seq`); an error has `"type":"error"` or an `error` field;
//! anything else with an `id` is an acknowledgement; other objects are ignored. Topic names and
//! stamped payloads are plain ASCII (checked by the plan), so commands need no escaping.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;

/// A frame from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A published message.
    Delivery(Cow<'a, str>),
    /// A command succeeded.
    Ack,
    /// A command failed.
    Error,
    /// Something else (ignored).
    Other,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    data: Option<Cow<'a, str>>,
    #[serde(default)]
    error: Option<IgnoredAny>,
    #[serde(default)]
    id: Option<IgnoredAny>,
}

/// Reads a server frame; `None` if it is not a JSON object of the expected shape.
pub fn parse(payload: &[u8]) -> Option<Incoming<'_>> {
    let frame: Frame<'_> = serde_json::from_slice(payload).ok()?;
    Some(
        if frame.kind.as_deref() == Some("error") || frame.error.is_some() {
            Incoming::Error
        } else if let Some(data) = frame.data {
            Incoming::Delivery(data)
        } else if frame.kind.as_deref() == Some("ack") || frame.id.is_some() {
            Incoming::Ack
        } else {
            Incoming::Other
        },
    )
}

/// Writes a subscribe command.
pub fn subscribe(topic: &str, id: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"{\"type\":\"subscribe\",\"topic\":\"");
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(b"\",\"id\":");
    out.extend_from_slice(id.to_string().as_bytes());
    out.push(b'}');
}

/// Writes a publish command carrying `data` (ASCII without quotes or backslashes).
pub fn publish(topic: &str, data: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"{\"type\":\"publish\",\"topic\":\"");
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(b"\",\"data\":\"");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\"}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_server_frames() {
        assert_eq!(
            parse(br#"{"type":"message","topic":"a","seq":3,"data":"xyz"}"#),
            Some(Incoming::Delivery("xyz".into()))
        );
        assert_eq!(parse(br#"{"type":"ack","id":1}"#), Some(Incoming::Ack));
        assert_eq!(parse(br#"{"id":1,"ok":true}"#), Some(Incoming::Ack));
        assert_eq!(
            parse(br#"{"type":"error","id":1,"code":403,"message":"no"}"#),
            Some(Incoming::Error)
        );
        assert_eq!(parse(br#"{"error":{"code":1}}"#), Some(Incoming::Error));
        assert_eq!(parse(br#"{"hello":1}"#), Some(Incoming::Other));
        assert_eq!(parse(b"not json"), None);
        assert_eq!(parse(br#"{"data":5}"#), None);
    }

    #[test]
    fn writes_commands_that_parse_back() {
        let mut out = Vec::new();
        subscribe("news", 7, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "subscribe");
        assert_eq!(v["topic"], "news");
        assert_eq!(v["id"], 7);
        publish("news", b"00ff", &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["data"].as_str()),
            (Some("publish"), Some("00ff"))
        );
    }
}
