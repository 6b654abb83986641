//! The life of a connection slot: dialing at the pacer's pace, retrying connect errors with
//! backoff, deadlines (connect, close, keep-alive), counting each connection once, as
//! established, failed or dropped, before its socket is released, and lending and taking back
//! its buffers.

use std::cmp::Reverse;
use std::time::Instant;

use clarion_protocol::Timeout;
use mio::{Interest, Token};

use super::conn::{self, Conn, Life, Phase};
use super::pace::backoff_ns;
use super::{At, Dials, SWEEP_NS, Stage, Worker, next_random, socket};
use crate::clock::ns;
use crate::failure::Reason;
use crate::traffic::Traffic;

/// Dials started per turn at most, so a burst does not starve the sockets already open.
const MAX_DIALS_PER_TURN: usize = 256;

impl<T: Traffic> Worker<'_, T> {
    pub(super) fn dial_due(&mut self, now_ns: u64) {
        for _ in 0..MAX_DIALS_PER_TURN {
            let room = self.pending() < self.max_pending;
            let next = match (&mut self.dials, self.stage) {
                (Dials::Hold(pacer), Stage::Ramp) if room => {
                    let step = pacer.take(now_ns).map(|(step, due)| (step as usize, due));
                    self.dialed += step.is_some() as usize;
                    step
                }
                (Dials::Hold(_), Stage::Storm { .. }) => self
                    .storm
                    .as_mut()
                    .filter(|storm| storm.in_flight() < self.max_pending)
                    .and_then(|storm| storm.next_dial(now_ns))
                    .map(|slot| (slot, now_ns)),
                (
                    Dials::Cycle {
                        pacer: Some(pacer),
                        free,
                        ..
                    },
                    Stage::Measure { .. },
                ) if !free.is_empty() => match pacer.take(now_ns) {
                    Some((_, due)) => free.pop().map(|slot| (slot as usize, due)),
                    None => None,
                },
                _ => None,
            };
            let Some((slot, due_ns)) = next else {
                return;
            };
            if !self.is_hold() {
                self.conns[slot] = Conn::new();
            }
            self.traffic.dialed(&mut self.conns[slot].state, due_ns);
            self.dial(slot, now_ns);
        }
    }

    pub(super) fn dial(&mut self, slot: usize, now_ns: u64) {
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let conn = &mut self.conns[slot];
        conn.attempts = conn.attempts.saturating_add(1);
        conn.generation = generation;
        let (source, target) = self.plan.pairs.pair(self.first + slot);
        let registered = socket::dial(source, target.addr).and_then(|mut stream| {
            self.poll.registry().register(
                &mut stream,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match registered {
            Ok(stream) => {
                conn.stream = Some(stream);
                conn.phase = Phase::Connecting { since_ns: now_ns };
                self.sockets += 1;
                self.connect_deadlines.push_back((
                    now_ns + ns(self.plan.connect_timeout),
                    slot as u32,
                    generation,
                ));
            }
            Err(e) => {
                if let Dials::Cycle { free, .. } = &mut self.dials {
                    // No socket to release, so give the slot back here.
                    free.push(slot as u32);
                }
                let at = At {
                    now_ns,
                    instant: Instant::now(),
                };
                self.fail(slot, Reason::of_io(&e), at);
            }
        }
    }

    pub(super) fn expire(&mut self, at: At) {
        while let Some(&Reverse((due_ns, slot))) = self.retries.peek() {
            if due_ns > at.now_ns {
                break;
            }
            self.retries.pop();
            self.dial(slot as usize, at.now_ns);
        }
        while let Some(&(deadline, slot, generation)) = self.connect_deadlines.front() {
            if deadline > at.now_ns {
                break;
            }
            self.connect_deadlines.pop_front();
            let conn = &self.conns[slot as usize];
            if conn.generation == generation
                && matches!(
                    conn.phase,
                    Phase::Connecting { .. } | Phase::Securing { .. } | Phase::Handshaking { .. }
                )
            {
                self.fail(slot as usize, Reason::Timeout, at);
            }
        }
        while let Some(&(deadline, slot, generation)) = self.finish_deadlines.front() {
            if deadline > at.now_ns {
                break;
            }
            self.finish_deadlines.pop_front();
            if self.conns[slot as usize].generation == generation {
                self.release(slot as usize);
            }
        }
        if self.ws_config.ping_interval.is_some() && at.now_ns >= self.next_sweep_ns {
            self.next_sweep_ns = at.now_ns + SWEEP_NS;
            self.sweep_keepalive(at);
        }
    }

    /// Pings quiet servers and drops those that do not answer.
    pub(super) fn sweep_keepalive(&mut self, at: At) {
        for slot in 0..self.conns.len() {
            let Phase::Open(ws) = &mut self.conns[slot].phase else {
                continue;
            };
            let timeout = ws.handle_timeout(at.instant, &self.ws_config, &mut self.tx);
            if let Some(Timeout::Pong) = timeout {
                self.fail(slot, Reason::Timeout, at);
            } else {
                self.flush(slot, at);
            }
        }
    }

    /// Counts a failure (or schedules a retry) and frees the slot's socket.
    pub(super) fn fail(&mut self, slot: usize, reason: Reason, at: At) {
        self.release(slot);
        let may_retry = self.is_hold() && matches!(self.stage, Stage::Ramp | Stage::Storm { .. });
        let conn = &mut self.conns[slot];
        let retry = may_retry && reason.is_retryable() && conn.attempts as u32 <= self.plan.retries;
        match conn.life {
            Life::Pending | Life::Rejoining if retry => {
                self.tally.retries += 1;
                self.tally.retried.add(reason);
                let delay = backoff_ns(
                    ns(self.plan.backoff),
                    conn.attempts as u32,
                    next_random(&mut self.rng),
                );
                self.retries.push(Reverse((at.now_ns + delay, slot as u32)));
            }
            Life::Pending => self.end_pending(slot, reason),
            Life::Rejoining => self.rejoined(slot, Err(reason), at),
            Life::Open => {
                self.tally.drops.add(reason);
                conn.life = Life::Ended;
                self.settle(slot);
            }
            Life::Ended => {}
        }
    }

    pub(super) fn end_pending(&mut self, slot: usize, reason: Reason) {
        self.tally.failures.add(reason);
        self.conns[slot].life = Life::Ended;
        self.settle(slot);
    }

    /// Counts the slot as ramped up (hold modes only: churn has no ramp).
    pub(super) fn settle(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        if !conn.settled && matches!(self.dials, Dials::Hold(_)) {
            conn.settled = true;
            self.unsettled -= 1;
        }
    }

    /// Closes the slot's socket, if it has one, and takes its buffers back.
    pub(super) fn release(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        if conn.stream.take().is_none() {
            return;
        }
        self.sockets -= 1;
        conn.phase = Phase::Idle;
        if let Some(ring) = &mut self.ring {
            ring.cancel(slot, conn.generation);
        }
        if let Some(id) = conn.lent.take() {
            self.lender.give_back(id);
        }
        if let Some(tls) = self.secure.get_mut(slot) {
            *tls = None;
        }
        if let Dials::Cycle { free, .. } = &mut self.dials {
            free.push(slot as u32);
        }
    }

    /// The slot's receive buffer, taken out for a read: its lent one, else the loop's spare
    /// (empty). Put it back with [`Worker::put_rx`].
    pub(super) fn take_rx(&mut self, slot: usize) -> Vec<u8> {
        match self.conns[slot].lent {
            Some(id) => std::mem::take(&mut self.lender.get(id).rx),
            None => std::mem::take(&mut self.spare),
        }
    }

    /// Puts back what [`Worker::take_rx`] gave: a partial frame keeps (or gets) a lent entry;
    /// an empty buffer goes back to the spare, and the entry too once it holds nothing.
    pub(super) fn put_rx(&mut self, slot: usize, mut rx: Vec<u8>) {
        let conn = &mut self.conns[slot];
        let id = match conn.lent {
            Some(id) => id,
            None if rx.is_empty() => {
                self.spare = rx;
                return;
            }
            None => *conn.lent.insert(self.lender.lend()),
        };
        let lent = self.lender.get(id);
        std::mem::swap(&mut lent.rx, &mut rx);
        if self.spare.capacity() == 0 {
            // The entry's old (empty) buffer becomes the spare.
            self.spare = rx;
        }
        if lent.is_empty() {
            conn.lent = None;
            self.lender.give_back(id);
        }
    }

    /// Writes what the loop queued in `tx` for the slot (after its backlog, if it has one);
    /// what the socket does not take goes to a lent backlog (with TLS: stays in rustls).
    pub(super) fn flush(&mut self, slot: usize, at: At) {
        let conn = &mut self.conns[slot];
        let Some(stream) = &mut conn.stream else {
            self.tx.clear();
            return;
        };
        let tls = self.secure.get_mut(slot).and_then(|t| t.as_deref_mut());
        let result = match (tls, conn.lent) {
            (Some(tls), _) => conn::flush_tls(stream, tls, &mut self.tx),
            (None, Some(id)) => {
                let lent = self.lender.get(id);
                let result = conn::flush(stream, &mut lent.backlog, &mut self.tx);
                if lent.is_empty() {
                    conn.lent = None;
                    self.lender.give_back(id);
                }
                result
            }
            (None, None) if self.tx.is_empty() => return,
            (None, None) => {
                let mut backlog = Vec::new();
                let result = conn::flush(stream, &mut backlog, &mut self.tx);
                if !backlog.is_empty() {
                    let id = *conn.lent.insert(self.lender.lend());
                    self.lender.get(id).backlog = backlog;
                }
                result
            }
        };
        if let Err(reason) = result {
            self.fail(slot, reason, at);
        }
    }
}
