//! Server-Sent Events and NDJSON streams for clients that cannot open a WebSocket: what a
//! stream request asks for, and the bytes of its events.
//!
//! - `GET /sse?topic=a&topic=b` (or `/sse/<topic>`): `text/event-stream`. A message is
//!   `event: <topic>`, its payload in `data:` lines (JSON and text as they are, one `data:` line
//!   per line; binary as base64) and `id: <epoch>:<seq>,<seq>,…`, the stream's position in every
//!   topic, in the byte order of the topic names, which a reconnecting `EventSource` sends back
//!   as `Last-Event-ID`. With `format=envelope` each event's `data` is the JSON delivery of the
//!   envelope protocol (`{"type":"message","topic":…,"seq":…,"data":…}`) and no `event:` line.
//!   Control events: `@session` (first: the heartbeat interval and, with tokens, `expires_in`),
//!   `@subscribed`, `@reset` and `@close` (JSON data, named with an `@` no topic has);
//!   heartbeats are comments (`: heartbeat`). `heartbeat=<seconds>` asks for an interval
//!   (within `heartbeat_min` and `heartbeat_max`; `stream_heartbeat` without it).
//! - `GET /stream?topic=…` (or `/stream/<topic>`): `application/x-ndjson`, one envelope per
//!   line: `{"type":"session",…}`, deliveries, `{"type":"subscribed",…}`, `{"type":"reset",…}`,
//!   `{"type":"close",…}` and `{"type":"heartbeat"}`.
//!
//! HTTP/1.1 requests get a chunked body, HTTP/1.0 ones (nginx's default to its upstreams) a
//! body that runs to the connection's end. Positions to resume from: `Last-Event-ID`, or a
//! `since=<epoch>:<seq>` (or `since=<seq>` with an `epoch=<epoch>` parameter) after each topic
//! it belongs to. Everything here is pure: the server's handler (`app/streams.rs`) sends it.

use std::sync::Arc;

use clarion_protocol::handshake::Request;
use clarion_pubsub::{Epoch, Format, Message, Resume};

use super::envelope;

/// What a stream's events look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamFormat {
    /// `text/event-stream`, payloads as they are.
    Sse,
    /// `text/event-stream` whose data are the envelope protocol's JSON messages.
    SseEnvelope,
    /// `application/x-ndjson`, one envelope message per line.
    Ndjson,
}

/// A stream's format and body framing: what its connection keeps (two bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamKind {
    /// The events' format.
    pub format: StreamFormat,
    /// HTTP/1.1: each write is one chunk of a chunked body.
    pub chunked: bool,
}

impl StreamKind {
    /// Index of this kind among the [`KINDS`] (for per-kind tables).
    pub fn index(self) -> usize {
        let format = match self.format {
            StreamFormat::Sse => 0,
            StreamFormat::SseEnvelope => 1,
            StreamFormat::Ndjson => 2,
        };
        format * 2 + usize::from(self.chunked)
    }

    /// Whether events carry ids (SSE).
    pub fn has_ids(self) -> bool {
        self.format != StreamFormat::Ndjson
    }

    /// The path its streams are read at (for logs).
    pub fn path(self) -> &'static str {
        match self.format {
            StreamFormat::Sse | StreamFormat::SseEnvelope => "/sse",
            StreamFormat::Ndjson => "/stream",
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self.format {
            StreamFormat::Sse | StreamFormat::SseEnvelope => "text/event-stream",
            StreamFormat::Ndjson => "application/x-ndjson",
        }
    }
}

/// Every stream kind, in [`StreamKind::index`] order.
pub const KINDS: [StreamKind; 6] = {
    const fn kind(format: StreamFormat, chunked: bool) -> StreamKind {
        StreamKind { format, chunked }
    }
    [
        kind(StreamFormat::Sse, false),
        kind(StreamFormat::Sse, true),
        kind(StreamFormat::SseEnvelope, false),
        kind(StreamFormat::SseEnvelope, true),
        kind(StreamFormat::Ndjson, false),
        kind(StreamFormat::Ndjson, true),
    ]
};

/// Headers of every stream response besides its content type: nothing may cache it, and
/// nginx (and proxies that honour the same header) must pass it on as it comes instead of
/// buffering it.
pub const STREAM_HEADERS: [(&str, &str); 2] =
    [("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")];

/// The last chunk of a chunked body: after it the response is complete.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A topic a stream asks for, and where to resume it from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// The topic (not yet validated).
    pub topic: Box<str>,
    /// The position to resume from, when the client gave one.
    pub resume: Option<Resume>,
}

/// A stream request: its kind and topics (sorted by name, each once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRequest {
    /// Format and framing.
    pub kind: StreamKind,
    /// The topics, in the byte order of their names: the order of positions in ids.
    pub topics: Vec<Wanted>,
    /// The heartbeat interval asked for (`heartbeat=<seconds>`), if any.
    pub heartbeat: Option<u64>,
}

/// Whether a path is a stream route (`/sse`, `/sse/<topic>`, `/stream`, `/stream/<topic>`).
pub fn is_stream_path(path: &str) -> bool {
    ["/sse", "/stream"].iter().any(|route| {
        path.strip_prefix(route)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// Reads a stream request (see the module docs): 400's reason when it is malformed. Topic
/// names are checked by the caller; `max_topics` bounds how many (and so the ids' size).
pub fn parse(request: &Request, max_topics: usize) -> Result<StreamRequest, &'static str> {
    let path = request.path();
    let (sse, rest) = match path.strip_prefix("/sse") {
        Some(rest) => (true, rest),
        None => (false, path.strip_prefix("/stream").unwrap_or_default()),
    };
    let mut format = if sse {
        StreamFormat::Sse
    } else {
        StreamFormat::Ndjson
    };
    // Each `since` belongs to the topic before it.
    let mut topics: Vec<(String, Option<String>)> = Vec::new();
    if let Some(topic) = rest.strip_prefix('/') {
        topics.push((decode(topic)?, None));
    }
    let mut epoch = None;
    let mut heartbeat = None;
    for pair in request.query().unwrap_or_default().split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "topic" => topics.push((decode(value)?, None)),
            "since" => match topics.last_mut() {
                Some((_, since @ None)) => *since = Some(decode(value)?),
                Some(_) => return Err("a topic has two since parameters"),
                None => return Err("since must follow the topic it belongs to"),
            },
            "epoch" => epoch = Some(Epoch::parse(&decode(value)?).ok_or("epoch is not valid")?),
            "heartbeat" => {
                heartbeat = Some(value.parse().map_err(|_| "heartbeat is not a number")?)
            }
            "format" if sse && value == "envelope" => format = StreamFormat::SseEnvelope,
            "format" if sse && value == "raw" => {}
            "format" => return Err("format must be raw or envelope (SSE only)"),
            _ => {}
        }
    }
    if topics.is_empty() {
        return Err("no topic: name one or more with topic=<name>");
    }
    let mut wanted = topics
        .into_iter()
        .map(|(topic, since)| {
            let resume = since.map(|since| resume_from(&since, epoch)).transpose()?;
            Ok(Wanted {
                topic: topic.into(),
                resume,
            })
        })
        .collect::<Result<Vec<_>, &'static str>>()?;
    wanted.sort_by(|a, b| a.topic.cmp(&b.topic));
    wanted.dedup_by(|a, b| a.topic == b.topic);
    if wanted.len() > max_topics {
        return Err("too many topics for one stream");
    }
    if let Some(last) = request.header("last-event-id") {
        apply_last_event_id(&mut wanted, last);
    }
    let kind = StreamKind {
        format,
        chunked: request.minor_version() >= 1,
    };
    Ok(StreamRequest {
        kind,
        topics: wanted,
        heartbeat,
    })
}

/// `<seq>` (with the stream's `epoch`) or `<epoch>:<seq>`.
fn resume_from(since: &str, epoch: Option<Epoch>) -> Result<Resume, &'static str> {
    let (epoch, seq) = match since.split_once(':') {
        Some((epoch, seq)) => (Epoch::parse(epoch), seq),
        None => (epoch, since),
    };
    let since = seq.parse().map_err(|_| "since is not a number")?;
    Ok(Resume { since, epoch })
}

/// A reconnecting `EventSource`'s `Last-Event-ID` (an id this server sent: `<epoch>:<seq>,…`,
/// one position per topic, in name order, empty where the stream had none) wins over the URL's
/// positions, being newer. An id that does not fit the topics (they changed, or it is not
/// ours) cannot be trusted: every topic is then resumed from nowhere, which answers
/// `recovered:false` for each.
fn apply_last_event_id(wanted: &mut [Wanted], header: &[u8]) {
    let parsed = std::str::from_utf8(header)
        .ok()
        .and_then(|id| id.trim().split_once(':'))
        .and_then(|(epoch, list)| {
            let epoch = Epoch::parse(epoch)?;
            let positions: Vec<Option<u64>> = list
                .split(',')
                .map(|p| {
                    if p.is_empty() {
                        Ok(None)
                    } else {
                        p.parse().map(Some)
                    }
                })
                .collect::<Result<_, _>>()
                .ok()?;
            (positions.len() == wanted.len()).then_some((epoch, positions))
        });
    match parsed {
        Some((epoch, positions)) => {
            for (want, position) in wanted.iter_mut().zip(positions) {
                want.resume = position.map(|since| Resume {
                    since,
                    epoch: Some(epoch),
                });
            }
        }
        None => {
            for want in wanted {
                want.resume = Some(Resume {
                    since: 0,
                    epoch: None,
                });
            }
        }
    }
}

/// A query value with its `%XX` escapes decoded (browsers escape `:` and `/`); `+` stays.
fn decode(value: &str) -> Result<String, &'static str> {
    if !value.contains('%') {
        return Ok(value.to_owned());
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or("a bad % escape")?;
            let hex = std::str::from_utf8(hex).map_err(|_| "a bad % escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "a bad % escape")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a query value is not UTF-8")
}

/// Writes `<epoch>:<seq>,<seq>,…` (an empty place for a topic without a position).
pub fn write_id(out: &mut Vec<u8>, epoch: Epoch, positions: impl IntoIterator<Item = Option<u64>>) {
    out.extend_from_slice(format!("{epoch}:").as_bytes());
    for (i, position) in positions.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if let Some(seq) = position {
            out.extend_from_slice(seq.to_string().as_bytes());
        }
    }
}

/// Builds a stream's bytes in a reused buffer: events go in through the methods, and
/// [`Writer::finish`] frames what was written as one chunk (chunked streams) and hands it out.
pub struct Writer<'b> {
    kind: StreamKind,
    out: &'b mut Vec<u8>,
}

impl<'b> Writer<'b> {
    /// A writer for `kind` into `out` (cleared).
    pub fn new(kind: StreamKind, out: &'b mut Vec<u8>) -> Writer<'b> {
        out.clear();
        Writer { kind, out }
    }

    /// SSE only: how long a native `EventSource` waits before reconnecting, in ms.
    pub fn retry(&mut self, millis: u64) -> &mut Self {
        if self.kind.has_ids() {
            self.out
                .extend_from_slice(format!("retry: {millis}\n\n").as_bytes());
        }
        self
    }

    /// A delivery. `id`: the stream's positions with this message counted (SSE).
    pub fn message(&mut self, message: &Message, id: Option<&[u8]>) -> &mut Self {
        match self.kind.format {
            StreamFormat::Sse => {
                self.out.extend_from_slice(b"event: ");
                self.out.extend_from_slice(message.topic().as_bytes());
                self.out.push(b'\n');
                let payload = message.payload();
                match payload.format() {
                    Format::Json | Format::Text => data_lines(self.out, payload.bytes()),
                    Format::Binary => {
                        self.out.extend_from_slice(b"data: ");
                        envelope::push_base64(self.out, payload.bytes());
                        self.out.push(b'\n');
                    }
                }
                self.end_event(id);
            }
            StreamFormat::SseEnvelope | StreamFormat::Ndjson => {
                let start = self.out.len();
                envelope::render_delivery(self.out, message);
                self.envelope_json(start, id);
            }
        }
        self
    }

    /// A control event: `name` (`subscribed`, `reset`, `close`) with `json` (an envelope-style
    /// object whose `type` is `name`), and the positions it leaves the stream at (SSE).
    pub fn control(&mut self, name: &str, json: &[u8], id: Option<&[u8]>) -> &mut Self {
        match self.kind.format {
            StreamFormat::Sse => {
                self.out.extend_from_slice(b"event: @");
                self.out.extend_from_slice(name.as_bytes());
                self.out.push(b'\n');
                data_lines(self.out, json);
                self.end_event(id);
            }
            StreamFormat::SseEnvelope | StreamFormat::Ndjson => {
                let start = self.out.len();
                self.out.extend_from_slice(json);
                self.envelope_json(start, id);
            }
        }
        self
    }

    /// A heartbeat: an SSE comment, or an NDJSON `{"type":"heartbeat"}` line.
    pub fn heartbeat(&mut self) -> &mut Self {
        match self.kind.format {
            StreamFormat::Sse | StreamFormat::SseEnvelope => {
                self.out.extend_from_slice(b": heartbeat\n\n")
            }
            StreamFormat::Ndjson => {
                self.out.extend_from_slice(envelope::HEARTBEAT);
                self.out.push(b'\n');
            }
        }
        self
    }

    /// The JSON written since `start`, as one line: its line breaks (JSON whitespace: a valid
    /// JSON text has none inside its strings) become spaces; then SSE's `data:` and id.
    fn envelope_json(&mut self, start: usize, id: Option<&[u8]>) {
        for byte in &mut self.out[start..] {
            if matches!(*byte, b'\n' | b'\r') {
                *byte = b' ';
            }
        }
        if self.kind.has_ids() {
            self.out.splice(start..start, *b"data: ");
            self.out.push(b'\n');
            self.end_event(id);
        } else {
            self.out.push(b'\n');
        }
    }

    fn end_event(&mut self, id: Option<&[u8]>) {
        if let Some(id) = id {
            self.out.extend_from_slice(b"id: ");
            self.out.extend_from_slice(id);
            self.out.push(b'\n');
        }
        self.out.push(b'\n');
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// What was written, framed as one chunk when the body is chunked; empty stays empty.
    /// Call it once, at the end.
    pub fn finish(&mut self) -> &[u8] {
        if self.kind.chunked && !self.out.is_empty() {
            let head = format!("{:x}\r\n", self.out.len());
            self.out.splice(0..0, head.into_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        self.out
    }

    /// [`Writer::finish`], then the body's end: a chunked body's last chunk (`0\r\n\r\n`), so
    /// a client sees the response complete rather than cut; a body that runs to the
    /// connection's end has nothing more. The last bytes of a stream: close it after them.
    pub fn end(&mut self) -> &[u8] {
        self.finish();
        if self.kind.chunked {
            self.out.extend_from_slice(LAST_CHUNK);
        }
        self.out
    }

    /// [`Writer::finish`] in a shared buffer.
    pub fn shared(&mut self) -> Arc<[u8]> {
        Arc::from(self.finish())
    }
}

/// `data:` lines of `text`, one per line (a receiver joins them with `\n`; CR and CRLF line
/// ends arrive as LF).
fn data_lines(out: &mut Vec<u8>, text: &[u8]) {
    let mut rest = text;
    loop {
        let end = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&rest[..end]);
        out.push(b'\n');
        if end == rest.len() {
            return;
        }
        let skip = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
}

/// The JSON of a control event: `{"type":"subscribed","topic":…,"recovered":…,"epoch":…,"seq":…}`.
pub fn subscribed_json(out: &mut Vec<u8>, topic: &str, recovered: bool, epoch: Epoch, seq: u64) {
    out.clear();
    envelope::render_subscribed(out, None, topic, recovered, epoch, seq);
    // The envelope's subscribe ack without a command id: the same fields, its own type.
    let ack = br#"{"type":"ack""#;
    out.splice(..ack.len(), *br#"{"type":"subscribed""#);
}

/// `{"type":"session","heartbeat":…}` (and `expires_in`, seconds until a token ends the stream):
/// what a `hello` ack says on `/ws`.
pub fn session_json(out: &mut Vec<u8>, heartbeat: u8, expires_in: Option<u64>) {
    out.clear();
    envelope::render_session(out, None, Some(heartbeat), expires_in);
    let ack = br#"{"type":"ack""#;
    out.splice(..ack.len(), *br#"{"type":"session""#);
}

/// `{"type":"close","code":…,"reason":…}`: why the server ends the stream, as a WebSocket
/// would say it with a close code.
pub fn close_json(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.clear();
    out.extend_from_slice(br#"{"type":"close","code":"#);
    out.extend_from_slice(code.to_string().as_bytes());
    out.extend_from_slice(br#","reason":"#);
    envelope::push_json_str(out, reason);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use clarion_pubsub::Payload;
    use std::time::Instant;

    fn request(head: &str) -> Result<StreamRequest, &'static str> {
        let (request, _) = Request::parse(head.as_bytes(), 8192, 64).unwrap().unwrap();
        parse(&request, 4)
    }

    #[test]
    fn topics_are_sorted_once_each_with_their_own_positions() {
        let wanted = request(
            "GET /sse/c?since=3&topic=a%3Ab&since=0123456789abcdef:7&topic=c&epoch=00000000000000ff \
             HTTP/1.1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            wanted.kind,
            StreamKind {
                format: StreamFormat::Sse,
                chunked: true
            }
        );
        let epoch = |text| Epoch::parse(text);
        assert_eq!(
            wanted.topics,
            [
                Wanted {
                    topic: "a:b".into(),
                    resume: Some(Resume {
                        since: 7,
                        epoch: epoch("0123456789abcdef")
                    })
                },
                Wanted {
                    topic: "c".into(),
                    resume: Some(Resume {
                        since: 3,
                        epoch: epoch("00000000000000ff")
                    })
                },
            ]
        );
        let nd = request("GET /stream?topic=x HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(
            (nd.kind.format, nd.kind.chunked),
            (StreamFormat::Ndjson, false)
        );
        for bad in [
            "GET /sse HTTP/1.1\r\n\r\n",
            "GET /sse?topic=a&topic=b&topic=c&topic=d&topic=e HTTP/1.1\r\n\r\n",
            "GET /sse/a?since=1&since=2 HTTP/1.1\r\n\r\n",
            "GET /stream/a?format=envelope HTTP/1.1\r\n\r\n",
            "GET /sse/a%zz HTTP/1.1\r\n\r\n",
            "GET /sse/a%ff HTTP/1.1\r\n\r\n",
        ] {
            assert!(request(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn last_event_id_wins_and_one_that_does_not_fit_recovers_nothing() {
        let head = |id: &str| {
            format!("GET /sse?topic=b&topic=a&since=9 HTTP/1.1\r\nLast-Event-ID: {id}\r\n\r\n")
        };
        let got = request(&head("00000000000000ff:4,")).unwrap();
        let epoch = Epoch::parse("00000000000000ff");
        assert_eq!(got.topics[0].resume, Some(Resume { since: 4, epoch }));
        assert_eq!(got.topics[1].resume, None, "an empty place: no position");
        for junk in [
            "00000000000000ff:4",
            "00000000000000ff:1,x",
            "garbage",
            "zz:2,3",
        ] {
            let got = request(&head(junk)).unwrap();
            let nowhere = Some(Resume {
                since: 0,
                epoch: None,
            });
            assert!(got.topics.iter().all(|t| t.resume == nowhere), "{junk}");
        }
    }

    #[test]
    fn events_are_framed_per_kind_and_chunked_once() {
        let message = Message::new(
            Arc::from("t"),
            5,
            Instant::now(),
            Payload::new(Format::Text, b"a\r\nb\rc\n"),
        );
        let mut out = Vec::new();
        let sse = StreamKind {
            format: StreamFormat::Sse,
            chunked: false,
        };
        let bytes = Writer::new(sse, &mut out)
            .message(&message, Some(b"e:5"))
            .shared();
        assert_eq!(
            &bytes[..],
            b"event: t\ndata: a\ndata: b\ndata: c\ndata: \nid: e:5\n\n"
        );
        let nd = StreamKind {
            format: StreamFormat::Ndjson,
            chunked: true,
        };
        let json = Message::new(
            Arc::from("t"),
            6,
            Instant::now(),
            Payload::new(Format::Json, b"{\n\"k\": 1\r\n}"),
        );
        let bytes = Writer::new(nd, &mut out).message(&json, None).shared();
        let line = br#"{"type":"message","topic":"t","seq":6,"data":{ "k": 1  }}"#;
        let mut want = format!("{:x}\r\n", line.len() + 1).into_bytes();
        want.extend_from_slice(line);
        want.extend_from_slice(b"\n\r\n");
        assert_eq!(&bytes[..], &want[..]);
        let mut writer = Writer::new(nd, &mut out);
        assert!(writer.is_empty());
        assert!(
            writer.finish().is_empty(),
            "nothing is no chunk (a 0 chunk would end it)"
        );
    }
}
