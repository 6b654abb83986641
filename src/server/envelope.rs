//! The JSON envelope protocol of `/ws`: client commands in, acks, errors and deliveries out.
//!
//! Commands (`id` is optional, a JSON number or string, echoed back verbatim):
//! - `{"type":"subscribe","topic":"t","id":1,"since":41,"epoch":"…"}` (`since` and `epoch` ask
//!   for a resume)
//! - `{"type":"unsubscribe","topic":"t","id":2}`
//! - `{"type":"publish","topic":"t","data":<any JSON value>,"id":3}`
//! - `{"type":"hello","heartbeat":25,"id":4}` (session settings: the heartbeat interval)
//! - `{"type":"refresh","token":"<jwt>","id":5}` (the next token, without reconnecting)
//! - `{"type":"ping","id":6}` (answered with an ack at once)
//!
//! Server messages: `{"type":"ack","id":1,…}` (a subscribe ack adds `topic`, `recovered`,
//! `epoch`, `seq`; a publish ack adds `topic`, `seq`; a hello ack `heartbeat` and, with tokens,
//! `expires_in`; a refresh ack `expires_in`), `{"type":"error","id":1,"code":…,"message":…}`,
//! deliveries `{"type":"message","topic":"t","seq":42,"data":…}`, `{"type":"heartbeat"}`, and
//! `{"type":"unsubscribed","topic":"t","code":…,"message":…}` when the server ends a
//! subscription.
//!
//! A delivery's `data` depends on the payload's [`Format`]: JSON goes in as is, other text as a
//! JSON string, binary as a base64 string with `"encoding":"base64"` beside it. An envelope
//! publish of a JSON string is stored as the string's text, so raw topic sockets receive the
//! text itself and envelope subscribers receive the same string back.
//!
//! Parsing borrows from the frame and never panics; rendering appends to a caller's buffer.

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use clarion_protocol::{CloseCode, MessageKind};
use clarion_pubsub::{Epoch, Format, Message, Payload, Resume, shared_frame};

/// Close code of a connection whose token expired (at the upgrade on `/ws`, or during any
/// pubsub connection once `exp` plus the leeway has passed): get a new token and reconnect.
pub const TOKEN_EXPIRED: CloseCode = CloseCode(4001);

/// Close code of a `/ws` upgrade whose token was refused (missing, malformed, badly signed, not
/// yet valid, not for this server): do not retry with the same token.
pub const TOKEN_REFUSED: CloseCode = CloseCode(4003);

/// A request id exactly as the client wrote it: the JSON text of a number or a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Id<'a>(&'a str);

impl<'a> Id<'a> {
    /// The id's JSON text (a number, or a string with its quotes).
    pub fn as_json(&self) -> &'a str {
        self.0
    }

    /// An id kept as the text [`Id::as_json`] gave (to answer a command later).
    pub(crate) fn verbatim(json: &'a str) -> Id<'a> {
        Id(json)
    }
}

/// A client command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// Subscribe to `topic`, replaying what was missed after `resume.since` when given.
    Subscribe {
        /// Request id.
        id: Option<Id<'a>>,
        /// Topic name (not yet validated).
        topic: Cow<'a, str>,
        /// `since` and `epoch`; an `epoch` that is absent or unreadable is `None` there.
        resume: Option<Resume>,
    },
    /// Unsubscribe from `topic`.
    Unsubscribe {
        /// Request id.
        id: Option<Id<'a>>,
        /// Topic name (not yet validated).
        topic: Cow<'a, str>,
    },
    /// Publish `data` to `topic`.
    Publish {
        /// Request id.
        id: Option<Id<'a>>,
        /// Topic name (not yet validated).
        topic: Cow<'a, str>,
        /// [`Format::Json`] for any JSON value but a string, [`Format::Text`] for a string.
        format: Format,
        /// The JSON text of the value, or the string's text.
        data: Cow<'a, [u8]>,
    },
    /// Session settings.
    Hello {
        /// Request id.
        id: Option<Id<'a>>,
        /// The heartbeat interval asked for, in seconds; 0 (or absent) for none.
        heartbeat: u64,
    },
    /// Swap in the next token.
    Refresh {
        /// Request id.
        id: Option<Id<'a>>,
        /// The token (not yet verified).
        token: Cow<'a, str>,
    },
    /// A liveness probe, acknowledged at once.
    Ping {
        /// Request id.
        id: Option<Id<'a>>,
    },
}

impl<'a> Command<'a> {
    /// The request id, to echo in the answer.
    pub fn id(&self) -> Option<Id<'a>> {
        match self {
            Command::Subscribe { id, .. }
            | Command::Unsubscribe { id, .. }
            | Command::Publish { id, .. }
            | Command::Hello { id, .. }
            | Command::Refresh { id, .. }
            | Command::Ping { id } => *id,
        }
    }

    /// The command's `type`, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Subscribe { .. } => "subscribe",
            Command::Unsubscribe { .. } => "unsubscribe",
            Command::Publish { .. } => "publish",
            Command::Hello { .. } => "hello",
            Command::Refresh { .. } => "refresh",
            Command::Ping { .. } => "ping",
        }
    }

    /// The topic the command is about, for the commands that have one.
    pub fn topic(&self) -> Option<&str> {
        match self {
            Command::Subscribe { topic, .. }
            | Command::Unsubscribe { topic, .. }
            | Command::Publish { topic, .. } => Some(topic),
            Command::Hello { .. } | Command::Refresh { .. } | Command::Ping { .. } => None,
        }
    }
}

/// The `code` of an error reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed JSON, a missing field or a field of the wrong type.
    BadRequest,
    /// The connection's grants do not cover the topic.
    Forbidden,
    /// The connection is at its maximum of topics (or the server at its own).
    TooManyTopics,
    /// The topic name is not valid.
    InvalidTopic,
    /// The `type` is none of the known commands.
    UnknownType,
    /// Cluster mode: the publish could not be queued for Redis (link down, buffer full).
    Unavailable,
    /// A `refresh` token was refused (missing, malformed, badly signed, expired, not for this
    /// server, or for another subject), or tokens are not in use.
    Unauthorized,
    /// A publish whose delivery frame (envelope and base64 included) is above the server's
    /// `max_queued_bytes`: no subscriber's queue could take it.
    TooLarge,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManyTopics => "too_many_topics",
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TooLarge => "too_large",
        }
    }
}

/// A command that could not be parsed, ready to be answered with [`EnvelopeError::render`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvelopeError<'a> {
    /// The request id, when it could be read.
    pub id: Option<Id<'a>>,
    /// What went wrong.
    pub code: ErrorCode,
    /// Why, for a person.
    pub message: &'static str,
}

impl EnvelopeError<'_> {
    /// Appends the error reply to `out`.
    pub fn render(&self, out: &mut Vec<u8>) {
        render_error(out, self.id, self.code, self.message);
    }
}

/// The fields of a command, each kept as raw JSON so one of the wrong type is reported by name
/// and does not hide the `id`.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "present")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    topic: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    since: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    epoch: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    heartbeat: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    token: Option<&'a RawValue>,
}

/// `Some` for a field that is there, even as `null` (plain `Option` would read `null` as absent,
/// and `"data":null` is a value to publish).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// Any JSON value that strict parsers read back. Skipping a value (`IgnoredAny`, `RawValue`)
/// accepts numbers beyond f64 (`1e999`) and lone surrogates (`"\ud800"`), which serde_json and
/// others refuse when they read the value, so whatever is echoed verbatim is visited with this.
struct Strict;

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Strict, D::Error> {
        deserializer.deserialize_any(Strict)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_str<E>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        while map.next_entry::<Strict, Strict>()?.is_some() {}
        Ok(Strict)
    }
}

/// Whether `text` is one JSON value that strict parsers read back.
fn is_strict_json(text: &[u8]) -> bool {
    serde_json::from_slice::<Strict>(text).is_ok()
}

/// Whether `text` (JSON) is an object, by its first byte after whitespace: serde's derived
/// structs also read an array as the fields in order, which the protocol does not allow.
pub(crate) fn is_object(text: &[u8]) -> bool {
    text.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|&b| b == b'{')
}

/// A JSON string's text, borrowed unless it has escapes.
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<&str>(raw.get())
        .map(Cow::Borrowed)
        .or_else(|_| serde_json::from_str::<String>(raw.get()).map(Cow::Owned))
        .ok()
}

/// Parses one command from a text frame. Unknown fields are ignored.
pub fn parse_command(input: &[u8]) -> Result<Command<'_>, EnvelopeError<'_>> {
    let not_an_object = EnvelopeError {
        id: None,
        code: ErrorCode::BadRequest,
        message: "a command is a JSON object with each field at most once",
    };
    let fields: Fields = match serde_json::from_slice(input) {
        Ok(fields) if is_object(input) => fields,
        Ok(_) => return Err(not_an_object),
        Err(error) if error.is_data() => return Err(not_an_object),
        Err(_) => {
            return Err(EnvelopeError {
                message: "malformed JSON",
                ..not_an_object
            });
        }
    };
    let bad = |id, message| EnvelopeError {
        id,
        code: ErrorCode::BadRequest,
        message,
    };
    let id = match fields.id {
        None => None,
        Some(raw)
            if matches!(
                raw.get().as_bytes().first(),
                Some(b'"' | b'-' | b'0'..=b'9')
            ) && is_strict_json(raw.get().as_bytes()) =>
        {
            Some(Id(raw.get()))
        }
        Some(_) => return Err(bad(None, "\"id\" must be a number or a string")),
    };
    let kind = fields.kind.ok_or(bad(id, "missing \"type\""))?;
    let kind = string(kind).ok_or(bad(id, "\"type\" must be a string"))?;
    let topic = || match fields.topic {
        None => Err(bad(id, "missing \"topic\"")),
        Some(raw) => string(raw).ok_or(bad(id, "\"topic\" must be a string")),
    };
    match &*kind {
        "subscribe" => {
            let topic = topic()?;
            let epoch = match fields.epoch {
                None => None,
                Some(raw) => {
                    let text = string(raw).ok_or(bad(id, "\"epoch\" must be a string"))?;
                    Epoch::parse(&text)
                }
            };
            let resume = match fields.since {
                None => None,
                Some(raw) => Some(Resume {
                    since: serde_json::from_str(raw.get())
                        .map_err(|_| bad(id, "\"since\" must be an integer from 0 to 2^64-1"))?,
                    epoch,
                }),
            };
            Ok(Command::Subscribe { id, topic, resume })
        }
        "unsubscribe" => Ok(Command::Unsubscribe {
            id,
            topic: topic()?,
        }),
        "publish" => {
            let topic = topic()?;
            let raw = fields.data.ok_or(bad(id, "missing \"data\""))?;
            let (format, data) = match string(raw) {
                Some(Cow::Borrowed(text)) => (Format::Text, Cow::Borrowed(text.as_bytes())),
                Some(Cow::Owned(text)) => (Format::Text, Cow::Owned(text.into_bytes())),
                None if is_strict_json(raw.get().as_bytes()) => {
                    (Format::Json, Cow::Borrowed(raw.get().as_bytes()))
                }
                None => {
                    return Err(bad(
                        id,
                        "\"data\" has a number beyond 64-bit floats or a lone surrogate",
                    ));
                }
            };
            Ok(Command::Publish {
                id,
                topic,
                format,
                data,
            })
        }
        "hello" => {
            let heartbeat = match fields.heartbeat {
                None => 0,
                Some(raw) => serde_json::from_str(raw.get()).map_err(|_| {
                    bad(
                        id,
                        "\"heartbeat\" must be a whole number of seconds, 0 or more",
                    )
                })?,
            };
            Ok(Command::Hello { id, heartbeat })
        }
        "refresh" => {
            let raw = fields.token.ok_or(bad(id, "missing \"token\""))?;
            let token = string(raw).ok_or(bad(id, "\"token\" must be a string"))?;
            Ok(Command::Refresh { id, token })
        }
        "ping" => Ok(Command::Ping { id }),
        _ => Err(EnvelopeError {
            id,
            code: ErrorCode::UnknownType,
            message: "\"type\" must be subscribe, unsubscribe, publish, hello, refresh or ping",
        }),
    }
}

/// The format of a payload that came as a raw WebSocket message or an HTTP body: binary stays
/// binary, text holding one JSON value is JSON, other UTF-8 is text, and bytes that are not
/// UTF-8 are binary whatever they came as.
pub fn format_of(kind: MessageKind, payload: &[u8]) -> Format {
    if kind == MessageKind::Binary || simdutf8::basic::from_utf8(payload).is_err() {
        Format::Binary
    } else if is_strict_json(payload) {
        Format::Json
    } else {
        Format::Text
    }
}

/// Appends `{"type":"ack","id":…}` (no `id` field without an id).
pub fn render_ack(out: &mut Vec<u8>, id: Option<Id>) {
    open(out, "ack", id);
    out.push(b'}');
}

/// Appends a subscribe ack: `{"type":"ack","id":…,"topic":…,"recovered":…,"epoch":…,"seq":…}`,
/// `seq` being the topic's `seq` when the subscription took effect.
pub fn render_subscribed(
    out: &mut Vec<u8>,
    id: Option<Id>,
    topic: &str,
    recovered: bool,
    epoch: Epoch,
    seq: u64,
) {
    open(out, "ack", id);
    str_field(out, "topic", topic);
    out.extend_from_slice(if recovered {
        b",\"recovered\":true"
    } else {
        b",\"recovered\":false"
    });
    epoch_field(out, epoch);
    u64_field(out, "seq", seq);
    out.push(b'}');
}

/// Appends `{"type":"reset","topic":…,"epoch":…,"seq":…}`: in a cluster, the deliveries of
/// `topic` above `seq` were provisional (numbered by this node while Redis was down) or from an
/// older epoch, and the cluster numbered them otherwise; what follows is the cluster's numbering.
pub fn render_reset(out: &mut Vec<u8>, topic: &str, epoch: Epoch, seq: u64) {
    open(out, "reset", None);
    str_field(out, "topic", topic);
    epoch_field(out, epoch);
    u64_field(out, "seq", seq);
    out.push(b'}');
}

fn epoch_field(out: &mut Vec<u8>, epoch: Epoch) {
    // The same 16 hex digits as `Epoch`'s `Display`, without formatting machinery.
    out.extend_from_slice(b",\"epoch\":\"");
    let value = epoch.value();
    out.extend(
        (0..16)
            .rev()
            .map(|nibble| HEX[(value >> (nibble * 4)) as usize & 0xf]),
    );
    out.push(b'"');
}

/// Appends a publish ack: `{"type":"ack","id":…,"topic":…,"seq":…}` with the assigned `seq`
/// (none in a cluster, where Redis assigns it after the ack).
pub fn render_published(out: &mut Vec<u8>, id: Option<Id>, topic: &str, seq: Option<u64>) {
    open(out, "ack", id);
    str_field(out, "topic", topic);
    if let Some(seq) = seq {
        u64_field(out, "seq", seq);
    }
    out.push(b'}');
}

/// Appends the ack of a `hello` or a `refresh`: `{"type":"ack","id":…}` with `heartbeat` (the
/// interval in effect, 0 for none) when given, and `expires_in` (seconds until the token's
/// expiry ends the connection) when given.
pub fn render_session(
    out: &mut Vec<u8>,
    id: Option<Id>,
    heartbeat: Option<u8>,
    expires_in: Option<u64>,
) {
    open(out, "ack", id);
    if let Some(heartbeat) = heartbeat {
        u64_field(out, "heartbeat", heartbeat.into());
    }
    if let Some(seconds) = expires_in {
        u64_field(out, "expires_in", seconds);
    }
    out.push(b'}');
}

/// The application heartbeat, sent every `heartbeat` seconds to a client that asked.
pub const HEARTBEAT: &[u8] = br#"{"type":"heartbeat"}"#;

/// Appends `{"type":"unsubscribed","topic":…,"code":…,"message":…}`: the server ended the
/// subscription (the client did not ask).
pub fn render_unsubscribed(out: &mut Vec<u8>, topic: &str, code: ErrorCode, message: &str) {
    open(out, "unsubscribed", None);
    str_field(out, "topic", topic);
    str_field(out, "code", code.as_str());
    str_field(out, "message", message);
    out.push(b'}');
}

/// Appends `{"type":"error","id":…,"code":…,"message":…}`.
pub fn render_error(out: &mut Vec<u8>, id: Option<Id>, code: ErrorCode, message: &str) {
    open(out, "error", id);
    str_field(out, "code", code.as_str());
    str_field(out, "message", message);
    out.push(b'}');
}

/// Appends the delivery of `message`: `{"type":"message","topic":…,"seq":…,"data":…}`.
pub fn render_delivery(out: &mut Vec<u8>, message: &Message) {
    let payload = message.payload();
    let bytes = payload.bytes();
    open(out, "message", None);
    str_field(out, "topic", message.topic());
    u64_field(out, "seq", message.seq());
    out.extend_from_slice(b",\"data\":");
    match payload.format() {
        Format::Json => out.extend_from_slice(bytes),
        // Text payloads are UTF-8 by contract; a broken one still renders, repaired.
        Format::Text => push_json_str(out, &String::from_utf8_lossy(bytes)),
        Format::Binary => {
            out.push(b'"');
            push_base64(out, bytes);
            out.push(b'"');
            out.extend_from_slice(ENCODING_FIELD);
        }
    }
    out.push(b'}');
}

/// The delivery of `message` as a whole text frame, identical for every envelope subscriber:
/// build it once per message (per reactor) and send the shared bytes. `scratch` is a reusable
/// buffer, so only the frame itself is allocated.
pub fn delivery_frame(message: &Message, scratch: &mut Vec<u8>) -> Arc<[u8]> {
    scratch.clear();
    render_delivery(scratch, message);
    shared_frame(MessageKind::Text, scratch)
}

/// The size of the largest frame a publish of `payload` to `topic` is delivered in: its
/// envelope delivery (with the longest `seq`, base64 and escapes included) or its raw frame,
/// header and all. What must fit a subscriber's queue (`max_queued_bytes`).
pub fn delivery_len(topic: &str, payload: &Payload) -> usize {
    let bytes = payload.bytes();
    let data = match payload.format() {
        Format::Json => bytes.len(),
        Format::Text => json_str_len(bytes),
        Format::Binary => {
            let encoded = base64::encoded_len(bytes.len(), true).unwrap_or(usize::MAX);
            encoded.saturating_add(ENCODING_FIELD.len() + 2)
        }
    };
    // {"type":"message","topic":…,"seq":<20 digits>,"data":…}
    let json =
        r#"{"type":"message","topic":,"seq":,"data":}"#.len() + json_str_len(topic.as_bytes()) + 20;
    let envelope = json.saturating_add(data);
    let header = match envelope {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    };
    (envelope + header).max(payload.frame().len())
}

/// The `encoding` field of a binary delivery.
const ENCODING_FIELD: &[u8] = b",\"encoding\":\"base64\"";

/// The length of `bytes` (UTF-8) as [`push_json_str`] writes it, quotes included.
fn json_str_len(bytes: &[u8]) -> usize {
    2 + bytes
        .iter()
        .map(|&b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

fn open(out: &mut Vec<u8>, kind: &str, id: Option<Id>) {
    out.extend_from_slice(b"{\"type\":");
    push_json_str(out, kind);
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        out.extend_from_slice(id.0.as_bytes());
    }
}

fn str_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b',');
    push_json_str(out, name);
    out.push(b':');
    push_json_str(out, value);
}

fn u64_field(out: &mut Vec<u8>, name: &str, value: u64) {
    out.push(b',');
    push_json_str(out, name);
    out.push(b':');
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a JSON string, escaping what JSON requires and nothing else.
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.push(b'"');
    let mut clean = 0;
    for (at, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[clean..at]);
        out.extend_from_slice(escape);
        clean = at + 1;
    }
    out.extend_from_slice(&bytes[clean..]);
    out.push(b'"');
}

/// Appends standard, padded base64 of `bytes`, encoded in place.
pub(crate) fn push_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    // The length only overflows for inputs larger than memory; then nothing is written.
    let len = base64::encoded_len(bytes.len(), true).unwrap_or(0);
    out.resize(start + len, 0);
    let written = BASE64.encode_slice(bytes, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clarion_pubsub::{Hub, HubConfig, Payload};
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use std::time::Instant;

    fn parse(input: &str) -> Result<Command<'_>, EnvelopeError<'_>> {
        parse_command(input.as_bytes())
    }

    fn error_of(input: &str) -> (Option<&str>, ErrorCode) {
        let error = parse(input).unwrap_err();
        (error.id.map(|id| id.as_json()), error.code)
    }

    fn json_of(out: &[u8]) -> Value {
        serde_json::from_slice(out).unwrap()
    }

    #[test]
    fn a_command_is_an_object_never_an_array_of_its_fields() {
        for input in [
            r#"["subscribe",1,"t"]"#,
            r#" ["publish",null,"t",null,null,1]"#,
            "[]",
            "1",
            r#""subscribe""#,
        ] {
            let error = parse(input).unwrap_err();
            assert_eq!(error.code, ErrorCode::BadRequest, "{input}");
            assert!(
                error.message.contains("JSON object"),
                "{input}: {}",
                error.message
            );
        }
        assert_eq!(parse("[").unwrap_err().message, "malformed JSON");
        assert!(is_object(b" \r\n\t{}"));
    }

    #[test]
    fn parses_every_command() {
        let sub = parse(r#"{"type":"subscribe","topic":"t","id":1,"since":41,"epoch":"00ff"}"#);
        assert_eq!(
            sub,
            Ok(Command::Subscribe {
                id: Some(Id("1")),
                topic: "t".into(),
                resume: Some(Resume {
                    since: 41,
                    epoch: Some(Epoch::new(255)),
                }),
            })
        );
        let plain = parse(r#" { "topic" : "a.b", "type" : "subscribe" } "#).unwrap();
        assert_eq!(plain.topic(), Some("a.b"));
        assert!(matches!(
            plain,
            Command::Subscribe {
                id: None,
                resume: None,
                ..
            }
        ));
        let unsub = parse(r#"{"type":"unsubscribe","topic":"t","id":"x-2"}"#).unwrap();
        assert_eq!(unsub.id(), Some(Id("\"x-2\"")));
        assert!(matches!(unsub, Command::Unsubscribe { .. }));
        let publish = parse(r#"{"type":"publish","topic":"t","data":{"a":[1, 2]},"id":3}"#);
        assert_eq!(
            publish,
            Ok(Command::Publish {
                id: Some(Id("3")),
                topic: "t".into(),
                format: Format::Json,
                data: Cow::Borrowed(br#"{"a":[1, 2]}"#),
            })
        );
    }

    #[test]
    fn parses_session_commands() {
        assert_eq!(
            parse(r#"{"type":"hello","heartbeat":25,"id":1}"#),
            Ok(Command::Hello {
                id: Some(Id("1")),
                heartbeat: 25
            })
        );
        assert_eq!(
            parse(r#"{"type":"hello"}"#),
            Ok(Command::Hello {
                id: None,
                heartbeat: 0
            })
        );
        let refresh = parse(r#"{"type":"refresh","token":"a.b\/c","id":"r"}"#).unwrap();
        assert_eq!(
            refresh,
            Command::Refresh {
                id: Some(Id("\"r\"")),
                token: "a.b/c".into()
            }
        );
        assert_eq!(refresh.topic(), None);
        assert_eq!(
            parse(r#"{"type":"ping","id":9,"topic":"ignored"}"#),
            Ok(Command::Ping { id: Some(Id("9")) })
        );
        for bad in [
            r#"{"type":"hello","heartbeat":-1,"id":1}"#,
            r#"{"type":"hello","heartbeat":2.5,"id":1}"#,
            r#"{"type":"hello","heartbeat":"25","id":1}"#,
            r#"{"type":"hello","heartbeat":null,"id":1}"#,
            r#"{"type":"refresh","id":1}"#,
            r#"{"type":"refresh","token":7,"id":1}"#,
        ] {
            assert_eq!(error_of(bad), (Some("1"), ErrorCode::BadRequest), "{bad}");
        }
    }

    fn published(input: &str) -> (Format, Vec<u8>) {
        match parse(input) {
            Ok(Command::Publish { format, data, .. }) => (format, data.into_owned()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn publish_data_of_every_kind() {
        let with = |value: &str| format!(r#"{{"type":"publish","topic":"t","data":{value}}}"#);
        assert_eq!(published(&with("null")), (Format::Json, b"null".to_vec()));
        assert_eq!(
            published(&with("12.5e3")),
            (Format::Json, b"12.5e3".to_vec())
        );
        assert_eq!(published(&with(r#""hi""#)), (Format::Text, b"hi".to_vec()));
        assert_eq!(
            published(&with(r#""a\"b\u00e9\n""#)),
            (Format::Text, "a\"bé\n".as_bytes().to_vec())
        );
        assert_eq!(
            error_of(r#"{"type":"publish","topic":"t"}"#),
            (None, ErrorCode::BadRequest)
        );
        for unreadable in [
            "[1e999]",
            r#"{"a":"\udc00"}"#,
            r#"{"\ud800":1}"#,
            r#""\ud800""#,
        ] {
            let input = with(unreadable);
            assert_eq!(error_of(&input).1, ErrorCode::BadRequest, "{input}");
        }
    }

    #[test]
    fn ids_are_echoed_verbatim_even_when_other_fields_are_wrong() {
        assert_eq!(
            error_of(r#"{"type":"subscribe","id":18446744073709551616000,"topic":5}"#),
            (Some("18446744073709551616000"), ErrorCode::BadRequest)
        );
        assert_eq!(
            error_of(r#"{"type":"nope","id":"q\"1"}"#),
            (Some(r#""q\"1""#), ErrorCode::UnknownType)
        );
        assert_eq!(
            error_of(r#"{"id":-1.5e99}"#),
            (Some("-1.5e99"), ErrorCode::BadRequest)
        );
        for bad_id in [
            "null",
            "true",
            "[1]",
            "{}",
            "1e999",
            "-1.5e999",
            r#""\ud800""#,
        ] {
            let input = format!(r#"{{"type":"subscribe","topic":"t","id":{bad_id}}}"#);
            assert_eq!(error_of(&input), (None, ErrorCode::BadRequest), "{input}");
        }
    }

    #[test]
    fn hostile_inputs_are_errors() {
        let cases = [
            "",
            "{",
            r#"{"type":"subscribe","topic":"t""#,
            "[]",
            "null",
            "\"subscribe\"",
            r#"{"type":"subscribe","topic":"t"} trailing"#,
            r#"{"type":"subscribe","type":"publish","topic":"t"}"#,
            r#"{"type":1,"topic":"t"}"#,
            r#"{"type":null,"topic":"t"}"#,
            r#"{"topic":"t"}"#,
            r#"{"type":"subscribe"}"#,
            r#"{"type":"subscribe","topic":["t"]}"#,
            r#"{"type":"subscribe","topic":"t","since":-1}"#,
            r#"{"type":"subscribe","topic":"t","since":1.0}"#,
            r#"{"type":"subscribe","topic":"t","since":18446744073709551616}"#,
            r#"{"type":"subscribe","topic":"t","since":"1"}"#,
            r#"{"type":"subscribe","topic":"t","since":1,"epoch":7}"#,
            "{\"type\":\"subscribe\",\"topic\":\"\\ud800\"}",
            "{\"type\":\"sub\u{0}scribe\",\"topic\":\"t\"}",
        ];
        for input in cases {
            let error = parse(input).unwrap_err();
            assert_eq!(error.code, ErrorCode::BadRequest, "{input:?}");
        }
        assert_eq!(
            error_of(r#"{"type":"SUBSCRIBE"}"#).1,
            ErrorCode::UnknownType
        );
        let deep = "[".repeat(100_000);
        assert!(parse(&format!(r#"{{"type":"publish","topic":"t","data":{deep}"#)).is_err());
        assert!(parse_command(b"{\"type\":\"\xff\"}").is_err());
    }

    #[test]
    fn resume_without_a_readable_epoch_has_none() {
        for epoch in ["", r#","epoch":"zz""#, r#","epoch":"+1""#] {
            let input = format!(r#"{{"type":"subscribe","topic":"t","since":5{epoch}}}"#);
            let Ok(Command::Subscribe { resume, .. }) = parse(&input) else {
                panic!("{input}");
            };
            assert_eq!(
                resume,
                Some(Resume {
                    since: 5,
                    epoch: None
                })
            );
        }
    }

    #[test]
    fn replies_render_as_expected() {
        let mut out = Vec::new();
        render_ack(&mut out, Some(Id("7")));
        assert_eq!(out, br#"{"type":"ack","id":7}"#);
        out.clear();
        render_ack(&mut out, None);
        assert_eq!(out, br#"{"type":"ack"}"#);
        out.clear();
        render_subscribed(&mut out, Some(Id("\"a\"")), "t", true, Epoch::new(1), 41);
        assert_eq!(
            json_of(&out),
            json!({"type":"ack","id":"a","topic":"t","recovered":true,
                   "epoch":"0000000000000001","seq":41})
        );
        out.clear();
        render_reset(&mut out, "t", Epoch::new(0xab), 9);
        assert_eq!(
            out,
            br#"{"type":"reset","topic":"t","epoch":"00000000000000ab","seq":9}"#
        );
        out.clear();
        render_published(&mut out, None, "t", Some(u64::MAX));
        assert_eq!(
            out,
            format!(r#"{{"type":"ack","topic":"t","seq":{}}}"#, u64::MAX).as_bytes()
        );
        out.clear();
        render_published(&mut out, None, "t", None);
        assert_eq!(out, br#"{"type":"ack","topic":"t"}"#);
        out.clear();
        let error = parse(r#"{"type":"x","id":2}"#).unwrap_err();
        error.render(&mut out);
        assert_eq!(
            json_of(&out),
            json!({"type":"error","id":2,"code":"unknown_type","message":error.message})
        );
        out.clear();
        render_session(&mut out, Some(Id("3")), Some(25), Some(3540));
        assert_eq!(
            out,
            br#"{"type":"ack","id":3,"heartbeat":25,"expires_in":3540}"#
        );
        out.clear();
        render_session(&mut out, None, Some(0), None);
        assert_eq!(out, br#"{"type":"ack","heartbeat":0}"#);
        out.clear();
        render_session(&mut out, Some(Id("4")), None, Some(0));
        assert_eq!(out, br#"{"type":"ack","id":4,"expires_in":0}"#);
        out.clear();
        render_unsubscribed(&mut out, "a.b", ErrorCode::Forbidden, "no \"grant\"");
        assert_eq!(
            json_of(&out),
            json!({"type":"unsubscribed","topic":"a.b","code":"forbidden",
                   "message":"no \"grant\""})
        );
        assert_eq!(json_of(HEARTBEAT), json!({"type":"heartbeat"}));
        assert_eq!(ErrorCode::Unauthorized.as_str(), "unauthorized");
        out.clear();
        render_error(&mut out, None, ErrorCode::BadRequest, "a\"\\\n\u{1}é");
        assert_eq!(json_of(&out)["message"], "a\"\\\n\u{1}é");
        assert_eq!(json_of(&out)["code"], "bad_request");
    }

    fn message(format: Format, bytes: &[u8]) -> Arc<Message> {
        let hub = Hub::new(HubConfig::default(), Epoch::new(1));
        let payload = Payload::new(format, bytes);
        hub.publish_with("t.x", payload, Instant::now(), |m, _| m.clone())
            .unwrap()
    }

    #[test]
    fn deliveries_embed_json_text_and_binary() {
        let mut out = Vec::new();
        render_delivery(&mut out, &message(Format::Json, br#"{"a": [1]}"#));
        assert_eq!(
            json_of(&out),
            json!({"type":"message","topic":"t.x","seq":1,"data":{"a":[1]}})
        );
        out.clear();
        render_delivery(&mut out, &message(Format::Text, "hé \"x\"".as_bytes()));
        assert_eq!(json_of(&out)["data"], "hé \"x\"");
        out.clear();
        render_delivery(&mut out, &message(Format::Binary, &[0, 255, 1]));
        assert_eq!(
            json_of(&out),
            json!({"type":"message","topic":"t.x","seq":1,"data":"AP8B","encoding":"base64"})
        );
        out.clear();
        render_delivery(&mut out, &message(Format::Text, b"\xff"));
        assert_eq!(json_of(&out)["data"], "\u{fffd}");
    }

    #[test]
    fn delivery_frame_is_one_text_frame() {
        let msg = message(Format::Json, b"[1,2,3]");
        let mut scratch = b"leftover".to_vec();
        let frame = delivery_frame(&msg, &mut scratch);
        assert_eq!(frame[0], 0x81);
        assert_eq!(frame[1] as usize, frame.len() - 2);
        assert_eq!(&frame[2..], &scratch[..]);
        assert_eq!(json_of(&frame[2..])["data"], json!([1, 2, 3]));
    }

    #[test]
    fn formats_of_raw_payloads() {
        assert_eq!(format_of(MessageKind::Text, b" {\"a\":1} "), Format::Json);
        assert_eq!(format_of(MessageKind::Text, b"42"), Format::Json);
        assert_eq!(format_of(MessageKind::Text, b"hello"), Format::Text);
        assert_eq!(format_of(MessageKind::Text, b""), Format::Text);
        assert_eq!(format_of(MessageKind::Text, b"\"\xff\""), Format::Binary);
        assert_eq!(format_of(MessageKind::Text, b"1e999"), Format::Text);
        assert_eq!(format_of(MessageKind::Text, br#"["\ud800"]"#), Format::Text);
        assert_eq!(format_of(MessageKind::Text, b"[1.5e308, -0]"), Format::Json);
        assert_eq!(format_of(MessageKind::Binary, b"{}"), Format::Binary);
        let deep = "[".repeat(100_000);
        assert_eq!(format_of(MessageKind::Text, deep.as_bytes()), Format::Text);
    }

    /// Inputs near valid commands, where the interesting bugs are.
    fn near_command() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            Just("null".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| f.to_string()),
            "[a-z\\\\\"]{0,8}".prop_map(|s| format!("\"{s}\"")),
            Just("{\"a\":[{}]}".to_string()),
            Just("1e999999".to_string()),
        ];
        let key = prop_oneof![
            Just("type"),
            Just("topic"),
            Just("id"),
            Just("since"),
            Just("epoch"),
            Just("data"),
            Just("heartbeat"),
            Just("token"),
            Just("x"),
        ];
        let kind = prop_oneof![
            Just("\"subscribe\""),
            Just("\"unsubscribe\""),
            Just("\"publish\""),
            Just("\"hello\""),
            Just("\"refresh\""),
            Just("\"ping\""),
        ];
        (
            kind,
            proptest::collection::vec((key, value), 0..6),
            0usize..64,
        )
            .prop_map(|(kind, fields, cut)| {
                let mut text = format!("{{\"type\":{kind}");
                for (key, value) in fields {
                    text += &format!(",\"{key}\":{value}");
                }
                text.push('}');
                // Sometimes truncated.
                if cut < 8 {
                    let at = text.len().saturating_sub(cut);
                    text.truncate(at);
                }
                text
            })
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_errors_render_as_json(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Err(error) = parse_command(&bytes) {
                let mut out = Vec::new();
                error.render(&mut out);
                json_of(&out);
            }
        }

        #[test]
        fn near_commands_parse_or_fail_cleanly(text in near_command()) {
            let mut out = Vec::new();
            match parse(&text) {
                Ok(command) => render_ack(&mut out, command.id()),
                Err(error) => error.render(&mut out),
            }
            json_of(&out);
        }

        #[test]
        fn the_delivery_bound_covers_both_frames_at_any_seq(bytes in proptest::collection::vec(any::<u8>(), 0..300), text in "[\\PC\u{0}-\u{1f}\"\\\\]{0,200}", seq in any::<u64>(), long in any::<bool>()) {
            let topic = if long { "t".repeat(200) } else { "t.x".to_owned() };
            for payload in [
                Payload::new(Format::Binary, &bytes),
                Payload::new(Format::Text, text.as_bytes()),
                Payload::new(Format::Json, b"{\"k\": [1, 2]}"),
            ] {
                let bound = delivery_len(&topic, &payload);
                let message = Message::new(Arc::from(topic.as_str()), seq, std::time::Instant::now(), payload.clone());
                let frame = delivery_frame(&message, &mut Vec::new());
                prop_assert!(frame.len() <= bound, "{} > {bound}", frame.len());
                prop_assert!(payload.frame().len() <= bound);
                // Exact but for the seq's digits, and the header's size step they may cross.
                prop_assert!(bound - frame.len() <= 20 + 6, "{bound} vs {}", frame.len());
            }
        }

        #[test]
        fn deliveries_are_always_json(bytes in proptest::collection::vec(any::<u8>(), 0..64), text in "\\PC{0,16}") {
            let mut out = Vec::new();
            for (format, payload) in [
                (Format::Binary, &bytes[..]),
                (Format::Text, text.as_bytes()),
                (format_of(MessageKind::Text, text.as_bytes()), text.as_bytes()),
            ] {
                out.clear();
                render_delivery(&mut out, &message(format, payload));
                let value = json_of(&out);
                if format == Format::Text {
                    prop_assert_eq!(value["data"].as_str(), Some(text.as_str()));
                }
            }
        }
    }
}
