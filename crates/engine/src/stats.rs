//! Each reactor's counters, written by its thread and read by metrics and tests from others.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::LatencyHistogram;

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
    /// TLS connections in the handshake now.
    pub tls_handshaking: AtomicU64,
    /// TLS handshakes completed since start (full and resumed).
    pub tls_handshakes: AtomicU64,
    /// Of those, resumed from a session ticket or id.
    pub tls_resumed: AtomicU64,
    /// TLS connections that failed: a refused handshake, a bad record.
    pub tls_failures: AtomicU64,
    /// Connections refused at accept because the reactor had
    /// [`crate::TlsConfig::max_handshakes`] in the TLS handshake.
    pub tls_refused: AtomicU64,
    /// Writes that carried bytes to sockets: `writev` calls that wrote (epoll), sends that
    /// completed having written (io_uring). Bytes out over this is the bytes per write.
    pub socket_writes: AtomicU64,
    /// Connections closed for their PROXY protocol header: missing, malformed or of a version
    /// not taken from a trusted proxy, or sent by a peer that is not one.
    pub proxy_refused: AtomicU64,
    /// Connections still sending their request head or body (gauge).
    pub handshaking: AtomicU64,
    /// Connections over their write cap, not read until their queue drains (gauge).
    pub paused: AtomicU64,
    /// Bytes held in connections' receive buffers: partial heads, frames and messages (gauge).
    pub partial_bytes: AtomicU64,
    /// Connections closed at accept: `max_connections` or `max_connections_per_reactor`.
    pub refused_connections: AtomicU64,
    /// Connections closed at accept: `max_handshakes_per_reactor`.
    pub refused_handshakes: AtomicU64,
    /// Connections closed for not completing their request within `handshake_timeout`.
    pub handshake_timeouts: AtomicU64,
    /// Connections closed with 1008 "rate limit".
    pub rate_limited: AtomicU64,
    /// Connections dropped for staying over their write cap past `write_timeout`.
    pub write_timeouts: AtomicU64,
    /// Connections closed because their receive buffer would take the reactor past
    /// `max_partial_bytes_per_reactor`.
    pub partial_budget_closes: AtomicU64,
    /// Transient errors of the backend's wait (retried).
    pub wait_retries: AtomicU64,
    /// How long each shared frame (a fanout delivery, [`crate::Local::send_shared`]) waited in
    /// its connection's queue until the kernel took the write carrying it: the reactor's own
    /// share of a delivery's latency. Recorded once per write for the oldest frame it carries.
    /// The clock is read around each batch of writes (every 64 writes on epoll; on io_uring
    /// around the submission that runs up to 512 prepared sends), and the batch's writes are
    /// spread evenly over that time. A socket whose buffer is full adds its own wait after
    /// that, not counted here.
    pub write_wait: LatencyHistogram,
    /// The reactor stopped on an error it cannot recover from: its connections are gone.
    pub failed: AtomicBool,
}

impl Stats {
    /// Counts one.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Stats {
    pub(crate) fn set(gauge: &AtomicU64, value: usize) {
        gauge.store(value as u64, Ordering::Relaxed);
    }
}
