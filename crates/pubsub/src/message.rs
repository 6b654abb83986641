//! A published message: its payload framed once as a WebSocket frame, shared by every reactor,
//! subscriber and history slot that holds it; and, for subscribers that negotiated
//! permessage-deflate without context takeover, compressed once into a second shared frame.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use clarion_protocol::MessageKind;
use clarion_protocol::frame::{self, OpCode, RSV1};

/// What a payload is: decides the WebSocket opcode raw subscribers get and how the JSON envelope
/// embeds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// UTF-8 text that is not to be read as JSON (embedded as a JSON string).
    Text,
    /// UTF-8 text holding one valid JSON value (embedded as is).
    Json,
    /// Arbitrary bytes (embedded as base64).
    Binary,
}

impl Format {
    /// The kind of WebSocket message that carries this payload.
    pub fn kind(self) -> MessageKind {
        match self {
            Format::Text | Format::Json => MessageKind::Text,
            Format::Binary => MessageKind::Binary,
        }
    }
}

/// A whole unmasked, unfragmented frame in one shared buffer.
pub fn shared_frame(kind: MessageKind, payload: &[u8]) -> Arc<[u8]> {
    // Building a Vec and moving it into the `Arc` is two memcpys, about 10x faster at 4 KiB
    // than collecting an iterator into the `Arc` (which copies byte by byte).
    Arc::from(frame::encode_frame(opcode(kind), payload))
}

/// A whole frame of a message compressed with permessage-deflate (RSV1 set), in one shared
/// buffer; `compressed` is the payload as the compressor left it (tail removed).
pub fn shared_compressed_frame(kind: MessageKind, compressed: &[u8]) -> Arc<[u8]> {
    Arc::from(frame::encode_frame_rsv(opcode(kind), RSV1, compressed))
}

fn opcode(kind: MessageKind) -> OpCode {
    match kind {
        MessageKind::Text => OpCode::Text,
        MessageKind::Binary => OpCode::Binary,
    }
}

/// The payload of a whole frame (what follows its header).
pub fn frame_payload(frame: &[u8]) -> &[u8] {
    let header = frame.get(1).map_or(0, |&b| frame::header_len(b));
    frame.get(header..).unwrap_or_default()
}

/// A payload ready to publish: framed once, before any lock is taken, because the raw frame does
/// not depend on the `seq` the hub assigns.
#[derive(Clone, Debug)]
pub struct Payload {
    format: Format,
    frame: Arc<[u8]>,
}

impl Payload {
    /// Frames `bytes` as a message of `format`. The caller vouches for the format: `Text` and
    /// `Json` must be UTF-8, `Json` must also be one JSON value.
    pub fn new(format: Format, bytes: &[u8]) -> Payload {
        Payload {
            format,
            frame: shared_frame(format.kind(), bytes),
        }
    }

    /// What the payload is.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The payload bytes (the frame without its header).
    pub fn bytes(&self) -> &[u8] {
        frame_payload(&self.frame)
    }

    /// The whole frame, as raw topic subscribers receive it.
    pub fn frame(&self) -> &Arc<[u8]> {
        &self.frame
    }

    /// Bytes the payload takes in memory: its frame and the frame's reference counts. An empty
    /// payload is not free: its frame header and counts are 18 bytes.
    pub fn memory(&self) -> usize {
        ARC_COUNTS + self.frame.len()
    }
}

/// An `Arc`'s two reference counts, allocated with what it holds.
const ARC_COUNTS: usize = 2 * size_of::<usize>();

/// A message the hub numbered: what reactors fan out and what history replays.
#[derive(Debug)]
pub struct Message {
    pub(super) topic: Arc<str>,
    pub(super) seq: u64,
    pub(super) published_at: Instant,
    pub(super) payload: Payload,
    /// The compressed frame, made by the first reactor that needs it.
    pub(super) compressed: OnceLock<Arc<[u8]>>,
    /// Fed hub: the `seq` this node gave the message itself, when it is this node's own publish
    /// that it delivered locally while the upstream was unreachable; 0 otherwise.
    pub(super) provisional: u64,
}

impl Message {
    /// A message numbered elsewhere (by a cluster's upstream), for [`super::Hub::deliver`].
    pub fn new(topic: Arc<str>, seq: u64, published_at: Instant, payload: Payload) -> Message {
        Message {
            topic,
            seq,
            published_at,
            payload,
            compressed: OnceLock::new(),
            provisional: 0,
        }
    }

    /// Marks a message from the upstream as this node's own publish, which the node delivered
    /// locally as `seq` while the upstream was unreachable (see [`super::Hub::publish_provisional`]).
    pub fn provisional_here(mut self, seq: u64) -> Message {
        self.provisional = seq;
        self
    }

    /// The `seq` this node gave the message while the upstream was unreachable, when it is this
    /// node's own publish coming back from the upstream; 0 otherwise.
    pub fn provisional(&self) -> u64 {
        self.provisional
    }

    /// The topic it was published to.
    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    /// Its number in the topic, from 1 up, without gaps.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// When it was published (for age limits and publish-to-write latency).
    pub fn published_at(&self) -> Instant {
        self.published_at
    }

    /// Its payload.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// Bytes the message takes where history or an inbox holds it: the message itself with its
    /// reference counts, its payload ([`Payload::memory`]), and the pointer that holds it. What
    /// history limits and inboxes count, so that empty messages cost what they really do (about
    /// 150 bytes). The compressed copy, made later and only with compression on, is left out:
    /// it is at most about the plain frame's size.
    pub fn memory(&self) -> usize {
        ARC_COUNTS + size_of::<Message>() + self.payload.memory() + size_of::<Arc<Message>>()
    }

    /// The frame compressed once (no context takeover) for every subscriber it fits, made by
    /// `compress` (the payload in, the compressed payload out) on first use; callers must
    /// compress alike (same window), since whoever comes first makes it for all.
    pub fn compressed_frame(&self, compress: impl FnOnce(&[u8]) -> Vec<u8>) -> &Arc<[u8]> {
        self.compressed.get_or_init(|| {
            let kind = self.payload.format.kind();
            shared_compressed_frame(kind, &compress(self.payload.bytes()))
        })
    }
}

/// What a reactor's inbox carries from the hub's side.
#[derive(Clone, Debug)]
pub enum Post {
    /// A message for the reactor's subscribers of its topic.
    Message(Arc<Message>),
    /// A fed hub's topic that a subscribe here waited for is live: subscribe again.
    Ready(Arc<str>),
    /// A fed hub's topic was renumbered by the upstream above `seq`: the deliveries above it
    /// were provisional (or from an older epoch), and what follows is the upstream's numbering.
    Reset {
        /// The topic.
        topic: Arc<str>,
        /// The last `seq` that still holds.
        seq: u64,
    },
    /// A liveness probe with its round number, from the server's service watchdog: the
    /// reactor notes that it reached its inbox. The hub never sends one.
    Probe(u64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clarion_protocol::frame::decode_header;

    #[test]
    fn payload_frames_once_and_gives_the_bytes_back() {
        for len in [0usize, 5, 125, 126, 65535, 65536] {
            let bytes = vec![7u8; len];
            let payload = Payload::new(Format::Binary, &bytes);
            assert_eq!(payload.bytes(), &bytes[..]);
            let (header, at) = decode_header(payload.frame()).unwrap().unwrap();
            assert_eq!(header.opcode, OpCode::Binary);
            assert!(header.fin && header.mask.is_none());
            assert_eq!(header.payload_len as usize, len);
            assert_eq!(payload.frame().len(), at + len);
        }
    }

    #[test]
    fn a_message_counts_its_real_memory() {
        let empty = Payload::new(Format::Binary, b"");
        assert_eq!(empty.memory(), 16 + 2, "counts and a 2-byte header");
        let message = Message::new(Arc::from("t"), 1, Instant::now(), empty);
        let overhead = message.memory();
        assert!((100..250).contains(&overhead), "{overhead}");
        let kib = Message::new(
            Arc::from("t"),
            2,
            Instant::now(),
            Payload::new(Format::Binary, &[0; 1024]),
        );
        assert_eq!(kib.memory(), overhead - 2 + 4 + 1024, "a 4-byte header");
    }

    #[test]
    fn text_and_json_go_out_as_text_frames() {
        for format in [Format::Text, Format::Json] {
            let payload = Payload::new(format, b"{}");
            assert_eq!(payload.frame()[0], 0x81);
            assert_eq!(payload.format(), format);
        }
        assert_eq!(Payload::new(Format::Binary, b"").frame()[..], [0x82, 0]);
    }
}
