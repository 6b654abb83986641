//! permessage-deflate in a reactor: the policy that decides what each connection negotiates, and
//! the contexts it lends to the protocol core.
//!
//! Memory is the point. A zlib context is about 256 KiB for deflate and 40 KiB for inflate at
//! 15 bits, so a connection owns one only under [`Policy::PerConnection`], only within
//! [`CompressionConfig::max_windows`] per reactor, only once it sends or receives a compressed
//! message, and only until its WebSocket ends. Every other connection that negotiated
//! compression uses no context takeover in both directions and borrows the reactor's shared
//! contexts, reset after each message: it costs nothing while idle.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

use clarion_protocol::deflate::{
    self, Deflater, Direction, Inflate, InflateError, Inflater, Params,
};
use clarion_protocol::handshake::Request;
use clarion_protocol::{Connection, MessageKind, SendError, Transmit};

use super::Stats;

/// Who gets compression, and at what memory cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Offers are declined.
    #[default]
    Off,
    /// No context takeover either way: every message is compressed on its own with the
    /// reactor's shared contexts. No memory per connection; fanout compresses once.
    Shared,
    /// Context takeover both ways (better ratios for small similar messages) for up to
    /// `max_windows` connections per reactor, each with its own windows; the others get
    /// [`Policy::Shared`].
    PerConnection,
}

/// Compression settings of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompressionConfig {
    /// Who gets compression.
    pub policy: Policy,
    /// zlib level, 0 (store) to 9 (smallest).
    pub level: u32,
    /// The largest window the server compresses with, and asks of clients that let it
    /// (`server_max_window_bits`, `client_max_window_bits`), 8 to 15.
    pub window_bits: u8,
    /// Messages shorter than this are sent uncompressed.
    pub threshold: usize,
    /// [`Policy::PerConnection`]: most connections per reactor with their own windows.
    pub max_windows: usize,
}

impl Default for CompressionConfig {
    fn default() -> CompressionConfig {
        CompressionConfig {
            policy: Policy::Off,
            level: 6,
            window_bits: deflate::MAX_WINDOW_BITS,
            threshold: 128,
            max_windows: 1000,
        }
    }
}

/// Output buffers above this are dropped after use rather than kept for the next message.
const KEEP_BUFFER: usize = 1 << 20;

/// A reactor's compression: the negotiating policy, and the contexts (shared ones, and the
/// windows of connections that own theirs). Three parts, borrowed apart: a message being read
/// borrows the inflate side while its handler sends through the deflate side.
pub(super) struct Compression {
    pub(super) policy: Negotiator,
    /// Receiving: what [`ConnInflate`] lends.
    pub(super) inflating: Inflating,
    /// Sending: what [`super::Ctx::send`] compresses with.
    pub(super) deflating: Deflating,
}

/// Decides what each connection negotiates, and counts who holds windows.
pub(super) struct Negotiator {
    config: CompressionConfig,
    /// Connections that negotiated compression.
    connections: usize,
    /// Of those, the ones holding a window reservation (context takeover).
    windows: usize,
}

/// The receive side.
pub(super) struct Inflating {
    shared: Option<Inflater>,
    own: HashMap<usize, Inflater>,
    out: Vec<u8>,
}

/// The send side.
pub(super) struct Deflating {
    config: CompressionConfig,
    /// Shared compressors, by window bits - 8 (a client may ask for a smaller window).
    shared: [Option<Deflater>; 8],
    own: HashMap<usize, Deflater>,
    scratch: Vec<u8>,
}

impl Compression {
    pub(super) fn new(config: CompressionConfig) -> Compression {
        Compression {
            policy: Negotiator {
                config,
                connections: 0,
                windows: 0,
            },
            inflating: Inflating {
                shared: None,
                own: HashMap::new(),
                out: Vec::new(),
            },
            deflating: Deflating {
                config,
                shared: Default::default(),
                own: HashMap::new(),
                scratch: Vec::new(),
            },
        }
    }

    /// A connection that negotiated `params` is over: its windows are freed, its reservation
    /// given back. Called once per negotiated connection.
    pub(super) fn release(&mut self, token: usize, params: Params) {
        self.policy.connections -= 1;
        if params.has_takeover() {
            self.policy.windows -= 1;
            self.inflating.own.remove(&token);
            self.deflating.own.remove(&token);
        }
    }
}

impl Negotiator {
    /// Negotiates for an upgrade request: the agreed parameters and the header value to answer,
    /// or `None` (no acceptable offer, or compression off). The connection is counted until
    /// [`Compression::release`]; past the window cap it is given no context takeover.
    pub(super) fn negotiate(
        &mut self,
        request: &Request<'_>,
        stats: &Stats,
    ) -> Option<(Params, String)> {
        let bits = self.config.window_bits;
        let shared = deflate::Wants {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: bits,
            client_max_window_bits: bits,
        };
        let capped = match self.config.policy {
            Policy::Off => return None,
            Policy::Shared => false,
            Policy::PerConnection => self.windows >= self.config.max_windows,
        };
        let wants = if self.config.policy == Policy::Shared || capped {
            shared
        } else {
            deflate::Wants {
                server_no_context_takeover: false,
                client_no_context_takeover: false,
                ..shared
            }
        };
        let offers = request
            .headers()
            .filter(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-extensions"))
            .map(|(_, value)| value);
        let (params, answer) = deflate::negotiate(offers, &wants)?;
        if capped {
            stats.deflate_capped.fetch_add(1, Relaxed);
        }
        self.connections += 1;
        if params.has_takeover() {
            self.windows += 1;
        }
        Some((params, answer))
    }

    pub(super) fn publish(&self, stats: &Stats) {
        Stats::set(&stats.deflate_connections, self.connections);
        Stats::set(&stats.deflate_windows, self.windows);
    }
}

/// What a connection's read borrows to inflate: its own window, or the shared one.
pub(super) struct ConnInflate<'a> {
    pub(super) inflating: &'a mut Inflating,
    pub(super) token: usize,
    pub(super) stats: &'a Stats,
}

impl Inflate for ConnInflate<'_> {
    fn inflate(
        &mut self,
        compressed: &[u8],
        limit: usize,
        peer: Direction,
    ) -> Result<&[u8], InflateError> {
        let Inflating { shared, own, out } = &mut *self.inflating;
        let inflater = if peer.takeover {
            own.entry(self.token)
                .or_insert_with(|| Inflater::new(peer.window_bits))
        } else {
            shared.get_or_insert_with(|| Inflater::new(deflate::MAX_WINDOW_BITS))
        };
        if out.capacity() > KEEP_BUFFER {
            *out = Vec::new();
        }
        out.clear();
        inflater.inflate(compressed, out, limit, peer.takeover)?;
        self.stats.deflate_messages_in.fetch_add(1, Relaxed);
        self.stats
            .deflate_bytes_in
            .fetch_add(compressed.len() as u64, Relaxed);
        Ok(out)
    }
}

impl Deflating {
    /// Sends a message on `ws`: compressed if it negotiated compression and the payload is at
    /// least the threshold, as is otherwise.
    pub(super) fn send(
        &mut self,
        token: usize,
        ws: &mut Connection,
        kind: MessageKind,
        payload: &[u8],
        out: &mut (impl Transmit + ?Sized),
        stats: &Stats,
    ) -> Result<(), SendError> {
        let Some(params) = ws
            .deflate()
            .filter(|_| payload.len() >= self.config.threshold)
        else {
            return ws.send(kind, payload, out);
        };
        let ours = params.server_to_client();
        let level = self.config.level;
        let deflater = if ours.takeover {
            self.own
                .entry(token)
                .or_insert_with(|| Deflater::new(level, ours.window_bits))
        } else {
            let slot = (ours.window_bits - deflate::MIN_WINDOW_BITS) as usize & 7;
            self.shared[slot].get_or_insert_with(|| Deflater::new(level, ours.window_bits))
        };
        if self.scratch.capacity() > KEEP_BUFFER {
            self.scratch = Vec::new();
        }
        ws.send_compressed(kind, payload, deflater, &mut self.scratch, out)?;
        stats.deflate_messages_out.fetch_add(1, Relaxed);
        stats
            .deflate_bytes_out
            .fetch_add(self.scratch.len() as u64, Relaxed);
        Ok(())
    }
}
