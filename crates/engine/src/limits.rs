//! What clients may make the reactors hold and do, for the limits that may change while the
//! server runs: the values ([`Limits`]), the copy every reactor reads ([`LiveLimits`], atomics:
//! one relaxed load per check, none per byte), and each connection's allowance of messages and
//! bytes per second ([`Allowance`], a token bucket in 6 bytes of its entry, refilled by the
//! reactor's once-a-second sweep, so an idle connection gains no timer).

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// The limits an application may change while the reactors run ([`LiveLimits::store`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most connections in the process, of every kind: handshaking, plain HTTP, open
    /// WebSockets and closing ones. Further connections are closed at accept. 0: no limit
    /// (each reactor still holds at most [`crate::Config::max_connections_per_reactor`]).
    pub max_connections: usize,
    /// A connection's write cap: bytes that may wait to be written to it (fanout, echo, replies,
    /// pongs, replays alike). Past it the connection is not read (its peer's sends back up in
    /// TCP) until its queue drains to half of this; [`crate::Local::send_shared`] takes a frame
    /// only while less than this waits.
    pub max_queued_bytes: usize,
    /// Messages (data, ping and pong frames) a connection may send per second; 0: no limit.
    pub message_rate: u32,
    /// Messages it may send at once after a quiet spell (the bucket's size, at most 65,535).
    pub message_burst: u32,
    /// Bytes a connection may send per second once open; 0: no limit.
    pub byte_rate: u32,
    /// Bytes it may send at once after a quiet spell.
    pub byte_burst: u32,
}

impl Default for Limits {
    /// A library's defaults: every queue capped, no connection count and no rates (the push
    /// server sets its own).
    fn default() -> Limits {
        Limits {
            max_connections: 0,
            max_queued_bytes: 1 << 20,
            message_rate: 0,
            message_burst: 0,
            byte_rate: 0,
            byte_burst: 0,
        }
    }
}

/// The most messages a connection's bucket holds: its count is 16 bits.
pub const MAX_MESSAGE_BURST: u32 = u16::MAX as u32;

/// The limits in force, shared by every reactor of a runtime, and the process's count of
/// connections that `max_connections` is checked against.
#[derive(Debug, Default)]
pub struct LiveLimits {
    max_connections: AtomicUsize,
    max_queued_bytes: AtomicUsize,
    message_rate: AtomicU32,
    message_burst: AtomicU32,
    byte_rate: AtomicU32,
    byte_burst: AtomicU32,
    /// Connections in every reactor's table.
    connections: AtomicUsize,
}

impl LiveLimits {
    /// Limits in force from the start.
    pub fn new(limits: Limits) -> LiveLimits {
        let live = LiveLimits::default();
        live.store(&limits);
        live
    }

    /// Puts new limits in force: each reactor applies them at its next check (a connection's
    /// bucket is brought within a smaller burst at the next sweep).
    pub fn store(&self, limits: &Limits) {
        self.max_connections.store(limits.max_connections, Relaxed);
        self.max_queued_bytes
            .store(limits.max_queued_bytes.max(1), Relaxed);
        self.message_rate.store(limits.message_rate, Relaxed);
        self.message_burst
            .store(limits.message_burst.min(MAX_MESSAGE_BURST), Relaxed);
        self.byte_rate.store(limits.byte_rate, Relaxed);
        self.byte_burst.store(limits.byte_burst, Relaxed);
    }

    /// The limits in force.
    pub fn load(&self) -> Limits {
        Limits {
            max_connections: self.max_connections.load(Relaxed),
            max_queued_bytes: self.max_queued_bytes(),
            message_rate: self.message_rate.load(Relaxed),
            message_burst: self.message_burst.load(Relaxed),
            byte_rate: self.byte_rate.load(Relaxed),
            byte_burst: self.byte_burst.load(Relaxed),
        }
    }

    /// A connection's write cap.
    #[inline]
    pub fn max_queued_bytes(&self) -> usize {
        self.max_queued_bytes.load(Relaxed)
    }

    /// Connections in the process (all reactors' tables).
    pub fn connections(&self) -> usize {
        self.connections.load(Relaxed)
    }

    /// Counts a connection in, unless the process holds `max_connections` already.
    pub(crate) fn admit(&self) -> bool {
        let max = self.max_connections.load(Relaxed);
        let before = self.connections.fetch_add(1, Relaxed);
        if max != 0 && before >= max {
            self.connections.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    /// Counts a connection out.
    pub(crate) fn release(&self) {
        self.connections.fetch_sub(1, Relaxed);
    }

    /// The rates a reactor applies until its next sweep.
    pub(crate) fn rates(&self) -> Rates {
        Rates {
            message_rate: self.message_rate.load(Relaxed),
            message_burst: self.message_burst.load(Relaxed),
            byte_rate: self.byte_rate.load(Relaxed),
            byte_burst: self.byte_burst.load(Relaxed),
        }
    }
}

/// A snapshot of the rate limits, as a reactor applies them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rates {
    message_rate: u32,
    message_burst: u32,
    byte_rate: u32,
    byte_burst: u32,
}

impl Rates {
    /// Whether any rate is limited.
    pub(crate) fn any(&self) -> bool {
        self.message_rate != 0 || self.byte_rate != 0
    }
}

/// A connection's allowance: the messages and bytes it may still send now. 6 bytes of its entry
/// (a 16-bit count of messages, a 32-bit count of bytes), full at accept, spent as it sends,
/// and refilled at each sweep by the rate times the time since the last one. No timestamp is
/// kept: the sweep visits every connection once a second anyway, and refilling there is exact
/// on average (the refill follows the real time between sweeps).
///
/// Packed to 2-byte alignment so that, beside the entry's 16-bit flags, it fills 8 bytes that
/// were padding and a shrunken timer slot (fields are only ever copied, never borrowed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed(2))]
pub(crate) struct Allowance {
    bytes: u32,
    messages: u16,
}

impl Allowance {
    /// A full bucket.
    pub(crate) fn full(rates: &Rates) -> Allowance {
        Allowance {
            messages: rates.message_burst.min(MAX_MESSAGE_BURST) as u16,
            bytes: rates.byte_burst,
        }
    }

    /// Takes `messages` messages; false (and nothing taken) when the connection is over its
    /// message rate.
    pub(crate) fn take_messages(&mut self, rates: &Rates, messages: u16) -> bool {
        if rates.message_rate == 0 {
            return true;
        }
        match self.messages.checked_sub(messages) {
            Some(left) => {
                self.messages = left;
                true
            }
            None => false,
        }
    }

    /// Takes `bytes` bytes; false (and nothing taken) when the connection is over its byte
    /// rate.
    pub(crate) fn take_bytes(&mut self, rates: &Rates, bytes: usize) -> bool {
        if rates.byte_rate == 0 {
            return true;
        }
        match u32::try_from(bytes)
            .ok()
            .and_then(|b| self.bytes.checked_sub(b))
        {
            Some(left) => {
                self.bytes = left;
                true
            }
            None => false,
        }
    }

    /// Adds what `elapsed` earns at the rates, up to the bursts (and brings a bucket down to a
    /// burst made smaller since).
    pub(crate) fn refill(&mut self, rates: &Rates, elapsed: Duration) {
        let earned = |rate: u32| (u128::from(rate) * elapsed.as_millis() / 1000) as u64;
        let messages = (u64::from(self.messages) + earned(rates.message_rate))
            .min(u64::from(rates.message_burst.min(MAX_MESSAGE_BURST)));
        self.messages = messages as u16;
        let bytes =
            (u64::from(self.bytes) + earned(rates.byte_rate)).min(u64::from(rates.byte_burst));
        self.bytes = bytes as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(message_rate: u32, message_burst: u32, byte_rate: u32, byte_burst: u32) -> Rates {
        Rates {
            message_rate,
            message_burst,
            byte_rate,
            byte_burst,
        }
    }

    #[test]
    fn a_bucket_spends_its_burst_then_refills_at_the_rate() {
        let r = rates(10, 20, 1000, 3000);
        let mut a = Allowance::full(&r);
        for _ in 0..20 {
            assert!(a.take_messages(&r, 1));
        }
        assert!(!a.take_messages(&r, 1), "the burst is spent");
        assert!(a.take_bytes(&r, 3000));
        assert!(!a.take_bytes(&r, 1));
        // Half a second earns 5 messages and 500 bytes.
        a.refill(&r, Duration::from_millis(500));
        for _ in 0..5 {
            assert!(a.take_messages(&r, 1));
        }
        assert!(!a.take_messages(&r, 1));
        assert!(!a.take_bytes(&r, 501) && a.take_bytes(&r, 500));
        // A long quiet spell refills to the burst, no further.
        a.refill(&r, Duration::from_secs(3600));
        assert_eq!(a, Allowance::full(&r));
        // A smaller burst applies at the next refill.
        let smaller = rates(10, 2, 1000, 10);
        a.refill(&smaller, Duration::ZERO);
        assert_eq!(a, Allowance::full(&smaller));
    }

    #[test]
    fn no_rate_means_no_limit() {
        let r = Rates::default();
        let mut a = Allowance::full(&r);
        assert!(!r.any());
        assert!(a.take_messages(&r, u16::MAX) && a.take_bytes(&r, usize::MAX));
        assert_eq!(size_of::<Allowance>(), 6);
        assert_eq!(align_of::<Allowance>(), 2);
    }

    #[test]
    fn the_process_count_is_capped_and_live() {
        let live = LiveLimits::new(Limits {
            max_connections: 2,
            ..Limits::default()
        });
        assert!(live.admit() && live.admit());
        assert!(!live.admit(), "the third is refused");
        assert_eq!(live.connections(), 2);
        live.release();
        assert!(live.admit());
        live.store(&Limits::default());
        assert!(live.admit(), "0: no limit");
        assert_eq!(live.load(), Limits::default());
    }
}
