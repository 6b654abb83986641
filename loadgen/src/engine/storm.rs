//! The reconnect storm (`fanout --storm FRACTION`): at one instant, the same in every loop and
//! process (the stop instant plus `--drain`), each loop drops that share of its open connections
//! at once, as a network blip would (an abortive close: the server sees a reset). The blip lasts
//! [`STORM_BLIP`], long enough for the publishers' storm message to be published while they are
//! away; then all of them dial again as fast as the loop can (at most 256 dials a turn and, with
//! `--max-pending`, below that many in flight; connect errors retried with backoff). Each returns by resuming its subscription from the last `seq` it
//! had, so the server replays what it missed; the storm ends when every dropped connection is
//! back and acknowledged, or failed, or at `--storm-timeout`. Counted: how many were dropped,
//! came back, came back without their history (`recovered:false`) or not at all, the messages
//! the server promised to replay, and the time from the end of the blip until the last was back.

use socket2::SockRef;

use super::conn::Life;
use super::{At, Stage, Worker};
use crate::clock::ns;
use crate::failure::Reason;
use crate::hist;
use crate::plan::{self, STORM_BLIP};
use crate::traffic::Traffic;

/// One loop's storm.
#[derive(Debug)]
pub struct Storm {
    settings: plan::Storm,
    /// When it breaks, once the measurement window is known.
    at_ns: Option<u64>,
    /// When the dropped connections dial again.
    redial_ns: u64,
    started: bool,
    /// Dropped slots not yet back or failed.
    pending: usize,
    /// Dropped slots waiting for their dial.
    queue: Vec<u32>,
}

impl Storm {
    /// A storm to come.
    pub fn new(settings: plan::Storm) -> Storm {
        Storm {
            settings,
            at_ns: None,
            redial_ns: u64::MAX,
            started: false,
            pending: 0,
            queue: Vec::new(),
        }
    }

    /// Sets when it breaks.
    pub fn plan_at(&mut self, at_ns: u64) {
        self.at_ns = Some(at_ns);
    }

    /// When it breaks, while it has not yet.
    pub fn due_at(&self) -> Option<u64> {
        self.at_ns.filter(|_| !self.started)
    }

    /// Dropped connections not back yet.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// The next dropped slot to dial, once the blip is over.
    pub fn next_dial(&mut self, now_ns: u64) -> Option<usize> {
        if now_ns < self.redial_ns {
            return None;
        }
        self.queue.pop().map(|slot| slot as usize)
    }

    /// Dialed and not back yet.
    pub fn in_flight(&self) -> usize {
        self.pending - self.queue.len()
    }

    /// When dials are waiting, when they are due.
    pub fn dials_due(&self) -> Option<u64> {
        (!self.queue.is_empty()).then_some(self.redial_ns)
    }
}

/// Whether the `seen`-th open connection (from 0) is among the `fraction` dropped: spreads the
/// drops evenly over the slots, so over sources, targets and the server's reactors, and drops
/// `floor(open · fraction)` of `open` connections exactly.
fn picked(seen: u64, fraction: f64) -> bool {
    ((seen + 1) as f64 * fraction).floor() > (seen as f64 * fraction).floor()
}

impl<T: Traffic> Worker<'_, T> {
    /// Drops the storm's share of the open connections and queues their dials.
    pub(super) fn begin_storm(&mut self, at: At) {
        let Some(storm) = &mut self.storm else {
            return;
        };
        storm.started = true;
        storm.redial_ns = at.now_ns + ns(STORM_BLIP);
        let (fraction, timeout) = (storm.settings.fraction, storm.settings.timeout);
        self.stage = Stage::Storm {
            until_ns: storm.redial_ns + ns(timeout),
        };
        let mut seen = 0;
        let mut dropped = Vec::new();
        for (slot, conn) in self.conns.iter().enumerate() {
            if conn.life != Life::Open || conn.stream.is_none() {
                continue;
            }
            if picked(seen, fraction) {
                dropped.push(slot as u32);
            }
            seen += 1;
        }
        for &slot in &dropped {
            let conn = &mut self.conns[slot as usize];
            if let Some(stream) = &conn.stream {
                // A reset, as after a network blip, rather than a close handshake; it also keeps
                // TIME_WAIT off both ends.
                let _ = SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
            }
            self.release(slot as usize);
            let conn = &mut self.conns[slot as usize];
            conn.life = Life::Rejoining;
            conn.attempts = 0;
        }
        self.tally.storm.dropped += dropped.len() as u64;
        if let Some(storm) = &mut self.storm {
            storm.pending = dropped.len();
            dropped.reverse();
            storm.queue = dropped;
        }
    }

    /// A dropped connection is back (`Ok`) or given up; the storm's time runs to the last one.
    pub(super) fn rejoined(&mut self, slot: usize, outcome: Result<(), Reason>, at: At) {
        let Some(storm) = &mut self.storm else {
            return;
        };
        let since_ns = at.now_ns.saturating_sub(storm.redial_ns);
        storm.pending = storm.pending.saturating_sub(1);
        let conn = &mut self.conns[slot];
        let tally = &mut self.tally.storm;
        match outcome {
            Ok(()) => {
                conn.life = Life::Open;
                tally.rejoined += 1;
                hist::record(&mut tally.rejoin, since_ns);
            }
            Err(reason) => {
                conn.life = Life::Ended;
                tally.failed += 1;
                tally.failures.add(reason);
            }
        }
        tally.ns = tally.ns.max(since_ns);
    }

    /// Gives up on what has not come back, then drains what the resumed subscriptions replay.
    pub(super) fn end_storm(&mut self, at: At) {
        for slot in 0..self.conns.len() {
            if self.conns[slot].life == Life::Rejoining {
                self.release(slot);
                self.rejoined(slot, Err(Reason::Timeout), at);
            }
        }
        if let Some(storm) = &mut self.storm {
            storm.queue.clear();
        }
        self.retries.clear();
        self.stage = Stage::Drain {
            until_ns: at.now_ns + ns(self.plan.drain),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_share_evenly() {
        let picks: Vec<u64> = (0..30).filter(|&i| picked(i, 0.1)).collect();
        assert_eq!(picks, [9, 19, 29]);
        assert_eq!((0..1_000).filter(|&i| picked(i, 0.1)).count(), 100);
        assert_eq!((0..7).filter(|&i| picked(i, 1.0)).count(), 7);
        assert_eq!((0..7).filter(|&i| picked(i, 0.01)).count(), 0);
    }
}
