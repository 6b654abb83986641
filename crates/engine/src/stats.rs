//! Each reactor's counters, written by its thread and read by metrics and tests from others.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one reactor, read by metrics and tests from other threads.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections in the table (any state).
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// WebSocket handshakes completed.
    pub upgrades: AtomicU64,
    /// Plain HTTP requests answered.
    pub http_requests: AtomicU64,
    /// Messages received.
    pub messages_in: AtomicU64,
    /// Receive buffers currently lent to connections.
    pub rx_buffers_lent: AtomicU64,
    /// Write queues currently lent to connections.
    pub tx_queues_lent: AtomicU64,
    /// Pending timers.
    pub timers: AtomicU64,
    /// Open connections that negotiated permessage-deflate.
    pub deflate_connections: AtomicU64,
    /// Of those, connections holding their own windows (context takeover).
    pub deflate_windows: AtomicU64,
    /// Connections given no context takeover because `max_windows` was reached.
    pub deflate_capped: AtomicU64,
    /// Compressed messages received.
    pub deflate_messages_in: AtomicU64,
    /// Compressed payload bytes received (as sent, before inflating).
    pub deflate_bytes_in: AtomicU64,
    /// Messages sent compressed through [`crate::Ctx::send`].
    pub deflate_messages_out: AtomicU64,
    /// Compressed payload bytes sent through [`crate::Ctx::send`].
    pub deflate_bytes_out: AtomicU64,
    /// Connections closed for their PROXY protocol header: missing, malformed or of a version
    /// not taken from a trusted proxy, or sent by a peer that is not one.
    pub proxy_refused: AtomicU64,
}

impl Stats {
    pub(crate) fn set(gauge: &AtomicU64, value: usize) {
        gauge.store(value as u64, Ordering::Relaxed);
    }
}
