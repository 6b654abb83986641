//! The JSON envelope protocol on `/ws`, as far as the loadgen speaks it.
//!
//! Commands sent: `{"type":"subscribe","topic":T,"id":N}` (with `"since":S,"epoch":E` to resume
//! after a reconnection) and `{"type":"publish","topic":T,"data":D}`. Frames read: a delivery is
//! any object with a string `data` (it also carries `topic` and `seq`); an error has
//! `"type":"error"` or an `error` field; anything else with an `id` is an acknowledgement (a
//! subscribe's carries the topic's `seq`, the server's `epoch` and, for a resume, `recovered`);
//! other objects are ignored. Topic names, epochs and stamped payloads are plain ASCII (checked
//! by the plan, or by the parse), so commands need no escaping.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;

/// A frame from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A published message and its `seq`, if it had one.
    Delivery(Cow<'a, str>, Option<u64>),
    /// A command succeeded.
    Ack(Ack<'a>),
    /// A command failed.
    Error,
    /// Something else (ignored).
    Other,
}

/// What an acknowledgement says beside success.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ack<'a> {
    /// The topic's last `seq` when a subscription took effect (or a publish's `seq`).
    pub seq: Option<u64>,
    /// The server run's epoch (hex digits), for a later resume.
    pub epoch: Option<Cow<'a, str>>,
    /// For a resume: whether every message after `since` follows.
    pub recovered: Option<bool>,
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
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    epoch: Option<Cow<'a, str>>,
    #[serde(default)]
    recovered: Option<bool>,
}

/// Reads a server frame; `None` if it is not a JSON object of the expected shape.
pub fn parse(payload: &[u8]) -> Option<Incoming<'_>> {
    let frame: Frame<'_> = serde_json::from_slice(payload).ok()?;
    Some(
        if frame.kind.as_deref() == Some("error") || frame.error.is_some() {
            Incoming::Error
        } else if let Some(data) = frame.data {
            Incoming::Delivery(data, frame.seq)
        } else if frame.kind.as_deref() == Some("ack") || frame.id.is_some() {
            Incoming::Ack(Ack {
                seq: frame.seq,
                epoch: frame
                    .epoch
                    .filter(|e| e.bytes().all(|b| b.is_ascii_alphanumeric())),
                recovered: frame.recovered,
            })
        } else {
            Incoming::Other
        },
    )
}

/// Writes a subscribe command; `resume` is the last `seq` received and the epoch it belongs to
/// (alphanumeric, as [`parse`] keeps it).
pub fn subscribe(topic: &str, id: u64, resume: Option<(u64, &str)>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"{\"type\":\"subscribe\",\"topic\":\"");
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(b"\",\"id\":");
    out.extend_from_slice(id.to_string().as_bytes());
    if let Some((since, epoch)) = resume {
        out.extend_from_slice(b",\"since\":");
        out.extend_from_slice(since.to_string().as_bytes());
        out.extend_from_slice(b",\"epoch\":\"");
        out.extend_from_slice(epoch.as_bytes());
        out.push(b'"');
    }
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
            Some(Incoming::Delivery("xyz".into(), Some(3)))
        );
        assert_eq!(
            parse(br#"{"type":"ack","id":1}"#),
            Some(Incoming::Ack(Ack::default()))
        );
        assert_eq!(
            parse(br#"{"id":1,"ok":true}"#),
            Some(Incoming::Ack(Ack::default()))
        );
        assert_eq!(
            parse(br#"{"type":"ack","id":7,"topic":"t","recovered":true,"epoch":"9f3c","seq":41}"#),
            Some(Incoming::Ack(Ack {
                seq: Some(41),
                epoch: Some("9f3c".into()),
                recovered: Some(true)
            }))
        );
        // An epoch that would need escaping is not kept (it could not be sent back as is).
        assert_eq!(
            parse(br#"{"type":"ack","id":7,"epoch":"a\"b"}"#),
            Some(Incoming::Ack(Ack::default()))
        );
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
        subscribe("news", 7, None, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "subscribe");
        assert_eq!(v["topic"], "news");
        assert_eq!(v["id"], 7);
        assert!(v.get("since").is_none());
        subscribe("news", 8, Some((41, "9f3c")), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["since"].as_u64(), v["epoch"].as_str()),
            (Some(41), Some("9f3c"))
        );
        publish("news", b"00ff", &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["data"].as_str()),
            (Some("publish"), Some("00ff"))
        );
    }
}
