//! How the event loops of one process are steered, and what they show while they run: a shared
//! block of atomics. Loops report when their ramp is done; the coordinator (this process's main
//! thread, or the parent process through stdin) sets when measuring starts and stops; a signal or
//! a vanished parent aborts. Live counters are stored once per loop turn, never per message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::tally::Tally;

/// Counters one loop publishes for the progress display.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Live {
    established: AtomicU64,
    failed: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
}

impl Live {
    /// Stores the loop's current totals.
    pub fn publish(&self, tally: &Tally) {
        let failed = tally.failures.total() + tally.drops.total();
        self.established.store(tally.established, Ordering::Relaxed);
        self.failed.store(failed, Ordering::Relaxed);
        self.sent.store(tally.messages_sent, Ordering::Relaxed);
        self.received
            .store(tally.messages_received, Ordering::Relaxed);
    }
}

/// Sums of every loop's live counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveTotals {
    /// Connections opened.
    pub established: u64,
    /// Connections failed or dropped.
    pub failed: u64,
    /// Messages sent.
    pub sent: u64,
    /// Messages received.
    pub received: u64,
}

/// The shared steering block.
#[derive(Debug)]
pub struct Control {
    ramped: AtomicUsize,
    go_ns: AtomicU64,
    stop_ns: AtomicU64,
    abort: Arc<AtomicBool>,
    live: Vec<Live>,
}

impl Control {
    /// A block for `loops` event loops.
    pub fn new(loops: usize) -> Control {
        Control {
            ramped: AtomicUsize::new(0),
            go_ns: AtomicU64::new(0),
            stop_ns: AtomicU64::new(u64::MAX),
            abort: Arc::new(AtomicBool::new(false)),
            live: (0..loops).map(|_| Live::default()).collect(),
        }
    }

    /// The flag a signal handler sets.
    pub fn abort_flag(&self) -> Arc<AtomicBool> {
        self.abort.clone()
    }

    /// Stops everything as soon as possible (connections still close cleanly).
    pub fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
    }

    /// Whether the run was aborted.
    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// A loop finished its ramp-up.
    pub fn report_ramped(&self) {
        self.ramped.fetch_add(1, Ordering::SeqCst);
    }

    /// Loops that finished their ramp-up.
    pub fn ramped(&self) -> usize {
        self.ramped.load(Ordering::SeqCst)
    }

    /// Sets the measurement window (the same instants in every process).
    pub fn start(&self, go_ns: u64, stop_ns: u64) {
        self.stop_ns.store(stop_ns, Ordering::SeqCst);
        self.go_ns.store(go_ns.max(1), Ordering::SeqCst);
    }

    /// The measurement window, once set.
    pub fn window(&self) -> Option<(u64, u64)> {
        match self.go_ns.load(Ordering::Acquire) {
            0 => None,
            go => Some((go, self.stop_ns.load(Ordering::Acquire))),
        }
    }

    /// Loop `index`'s live counters.
    pub fn live(&self, index: usize) -> &Live {
        &self.live[index]
    }

    /// Every loop's counters added up.
    pub fn totals(&self) -> LiveTotals {
        self.live
            .iter()
            .fold(LiveTotals::default(), |t, l| LiveTotals {
                established: t.established + l.established.load(Ordering::Relaxed),
                failed: t.failed + l.failed.load(Ordering::Relaxed),
                sent: t.sent + l.sent.load(Ordering::Relaxed),
                received: t.received + l.received.load(Ordering::Relaxed),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_and_totals() {
        let control = Control::new(2);
        assert_eq!(control.window(), None);
        control.start(5, 10);
        assert_eq!(control.window(), Some((5, 10)));
        let mut tally = Tally::new(1, false);
        tally.established = 2;
        tally.messages_received = 7;
        control.live(0).publish(&tally);
        control.live(1).publish(&tally);
        assert_eq!(control.totals().established, 4);
        assert_eq!(control.totals().received, 14);
        control.report_ramped();
        assert_eq!(control.ramped(), 1);
    }
}
