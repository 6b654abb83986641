//! The `/ws` envelope protocol on the wire (`docs/protocol.md`): the commands the client writes
//! and the server messages it reads.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use crate::event::{Data, Position};

/// A JSON string literal.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serializes")
}

pub(crate) fn hello(id: u64, heartbeat_secs: u64) -> String {
    format!(r#"{{"type":"hello","heartbeat":{heartbeat_secs},"id":{id}}}"#)
}

pub(crate) fn subscribe(id: u64, topic: &str, from: Option<&Position>) -> String {
    let topic = quoted(topic);
    match from {
        Some(at) => format!(
            r#"{{"type":"subscribe","topic":{topic},"since":{},"epoch":{},"id":{id}}}"#,
            at.seq,
            quoted(&at.epoch)
        ),
        None => format!(r#"{{"type":"subscribe","topic":{topic},"id":{id}}}"#),
    }
}

pub(crate) fn unsubscribe(id: u64, topic: &str) -> String {
    format!(
        r#"{{"type":"unsubscribe","topic":{},"id":{id}}}"#,
        quoted(topic)
    )
}

/// The publish command without its `id`, which is given when it is sent: `{…,"id":` + id + `}`.
pub(crate) fn publish_prefix(topic: &str, data: &Value) -> String {
    format!(
        r#"{{"type":"publish","topic":{},"data":{data},"id":"#,
        quoted(topic)
    )
}

pub(crate) fn refresh(id: u64, token: &str) -> String {
    format!(
        r#"{{"type":"refresh","token":{},"id":{id}}}"#,
        quoted(token)
    )
}

pub(crate) fn ping(id: u64) -> String {
    format!(r#"{{"type":"ping","id":{id}}}"#)
}

/// Every field any server message has; unknown fields are ignored.
#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: String,
    id: Option<Value>,
    topic: Option<String>,
    seq: Option<u64>,
    epoch: Option<String>,
    recovered: Option<bool>,
    heartbeat: Option<u64>,
    expires_in: Option<u64>,
    code: Option<String>,
    message: Option<String>,
    data: Option<Value>,
    encoding: Option<String>,
}

/// The fields of an `ack` the client uses (which ones are there depends on the command).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Ack {
    pub(crate) topic: Option<String>,
    pub(crate) seq: Option<u64>,
    pub(crate) epoch: Option<String>,
    pub(crate) recovered: Option<bool>,
    pub(crate) heartbeat: Option<u64>,
    pub(crate) expires_in: Option<u64>,
}

/// A server message.
#[derive(Debug, PartialEq)]
pub(crate) enum Incoming {
    /// The command `id` succeeded.
    Ack(Option<u64>, Ack),
    /// The command `id` failed (no `id`: the server could not read a command).
    Error {
        id: Option<u64>,
        code: String,
        message: String,
    },
    Message {
        topic: String,
        seq: u64,
        data: Data,
    },
    Reset {
        topic: String,
        epoch: String,
        seq: u64,
    },
    Unsubscribed {
        topic: String,
        code: String,
        message: String,
    },
    Heartbeat,
    /// A `type` this client does not know: ignored.
    Unknown,
}

/// Reads one text message; `Err` says why it is not a server message this client can use.
pub(crate) fn decode(text: &str) -> Result<Incoming, String> {
    let raw: Raw = serde_json::from_str(text).map_err(|e| format!("unreadable message: {e}"))?;
    // Ids the client sent are integers; any other id is not an answer to this client.
    let id = raw.id.as_ref().and_then(Value::as_u64);
    let missing = |field: &str| format!("a {} without {field}", raw.kind);
    Ok(match raw.kind.as_str() {
        "ack" => Incoming::Ack(
            id,
            Ack {
                topic: raw.topic,
                seq: raw.seq,
                epoch: raw.epoch,
                recovered: raw.recovered,
                heartbeat: raw.heartbeat,
                expires_in: raw.expires_in,
            },
        ),
        "error" => Incoming::Error {
            id,
            code: raw.code.unwrap_or_default(),
            message: raw.message.unwrap_or_default(),
        },
        "message" => {
            let data = raw.data.ok_or_else(|| missing("data"))?;
            let data = match (raw.encoding.as_deref(), data) {
                (Some("base64"), Value::String(encoded)) => Data::Binary(
                    base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .map_err(|e| format!("bad base64 data: {e}"))?,
                ),
                (Some(other), _) => return Err(format!("unknown encoding {other:?}")),
                (None, value) => Data::Json(value),
            };
            Incoming::Message {
                topic: raw.topic.ok_or_else(|| missing("topic"))?,
                seq: raw.seq.ok_or_else(|| missing("seq"))?,
                data,
            }
        }
        "reset" => Incoming::Reset {
            topic: raw.topic.ok_or_else(|| missing("topic"))?,
            epoch: raw.epoch.ok_or_else(|| missing("epoch"))?,
            seq: raw.seq.ok_or_else(|| missing("seq"))?,
        },
        "unsubscribed" => Incoming::Unsubscribed {
            topic: raw.topic.ok_or_else(|| missing("topic"))?,
            code: raw.code.unwrap_or_default(),
            message: raw.message.unwrap_or_default(),
        },
        "heartbeat" => Incoming::Heartbeat,
        _ => Incoming::Unknown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands_are_the_documented_json() {
        let parse = |text: String| serde_json::from_str::<Value>(&text).unwrap();
        assert_eq!(
            parse(hello(1, 20)),
            json!({"type":"hello","heartbeat":20,"id":1})
        );
        assert_eq!(
            parse(subscribe(2, "chat.\"lobby\"", None)),
            json!({"type":"subscribe","topic":"chat.\"lobby\"","id":2})
        );
        let at = Position {
            seq: 43,
            epoch: "9f3c".into(),
        };
        assert_eq!(
            parse(subscribe(3, "a", Some(&at))),
            json!({"type":"subscribe","topic":"a","since":43,"epoch":"9f3c","id":3})
        );
        assert_eq!(
            parse(unsubscribe(4, "a")),
            json!({"type":"unsubscribe","topic":"a","id":4})
        );
        assert_eq!(
            parse(publish_prefix("a", &json!({"text":"hi"})) + "5}"),
            json!({"type":"publish","topic":"a","data":{"text":"hi"},"id":5})
        );
        assert_eq!(
            parse(refresh(6, "eyJ")),
            json!({"type":"refresh","token":"eyJ","id":6})
        );
        assert_eq!(parse(ping(7)), json!({"type":"ping","id":7}));
    }

    #[test]
    fn server_messages_decode() {
        assert_eq!(
            decode(
                r#"{"type":"ack","id":2,"topic":"t","recovered":true,"epoch":"e","seq":4,"extra":1}"#
            ),
            Ok(Incoming::Ack(
                Some(2),
                Ack {
                    topic: Some("t".into()),
                    seq: Some(4),
                    epoch: Some("e".into()),
                    recovered: Some(true),
                    ..Ack::default()
                }
            ))
        );
        assert_eq!(
            decode(r#"{"type":"message","topic":"t","seq":5,"data":"aGk=","encoding":"base64"}"#),
            Ok(Incoming::Message {
                topic: "t".into(),
                seq: 5,
                data: Data::Binary(b"hi".to_vec())
            })
        );
        assert_eq!(
            decode(r#"{"type":"message","topic":"t","seq":5,"data":{"n":1}}"#),
            Ok(Incoming::Message {
                topic: "t".into(),
                seq: 5,
                data: Data::Json(json!({"n":1}))
            })
        );
        assert_eq!(
            decode(r#"{"type":"error","code":"bad_request","message":"m"}"#),
            Ok(Incoming::Error {
                id: None,
                code: "bad_request".into(),
                message: "m".into()
            })
        );
        assert_eq!(
            decode(r#"{"type":"reset","topic":"t","epoch":"e","seq":4}"#),
            Ok(Incoming::Reset {
                topic: "t".into(),
                epoch: "e".into(),
                seq: 4
            })
        );
        assert_eq!(decode(r#"{"type":"heartbeat"}"#), Ok(Incoming::Heartbeat));
        assert_eq!(decode(r#"{"type":"news","x":1}"#), Ok(Incoming::Unknown));
    }

    #[test]
    fn unreadable_messages_are_errors() {
        for text in [
            "[1,2]",
            "not json",
            r#"{"no":"type"}"#,
            r#"{"type":"message","topic":"t","data":1}"#,
            r#"{"type":"message","topic":"t","seq":1,"data":"!","encoding":"base64"}"#,
            r#"{"type":"message","topic":"t","seq":1,"data":"x","encoding":"zstd"}"#,
            r#"{"type":"reset","topic":"t","seq":1}"#,
        ] {
            assert!(decode(text).is_err(), "{text}");
        }
    }
}
