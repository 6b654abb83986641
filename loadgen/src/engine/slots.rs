//! The life of a connection slot: dialing at the pacer's pace, retrying connect errors with
//! backoff, deadlines (connect, close, keep-alive), and counting each connection once, as
//! established, failed or dropped, before its socket is released.

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
            let next = match (&mut self.dials, self.stage) {
                (Dials::Hold(pacer), Stage::Ramp) => {
                    pacer.take(now_ns).map(|(step, due)| (step as usize, due))
                }
                (
                    Dials::Cycle {
                        pacer: Some(pacer),
                        free,
                        ..
                    },
                    Stage::Measure { .. },
                ) if !free.is_empty() => match pacer.take(now_ns) {
                    Some((_, due)) => free.pop().map(|slot| (slot, due)),
                    None => None,
                },
                _ => None,
            };
            let Some((slot, due_ns)) = next else {
                return;
            };
            if !self.is_hold() {
                let conn = &mut self.conns[slot];
                *conn = Conn::new(conn.index);
            }
            self.conns[slot].due_ns = due_ns;
            self.dial(slot, now_ns);
        }
    }

    pub(super) fn dial(&mut self, slot: usize, now_ns: u64) {
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let conn = &mut self.conns[slot];
        conn.attempts += 1;
        conn.generation = generation;
        conn.phase_ns = now_ns;
        let (source, target) = self.plan.pairs.pair(conn.index);
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
                conn.phase = Phase::Connecting;
                self.sockets += 1;
                self.connect_deadlines.push_back((
                    now_ns + ns(self.plan.connect_timeout),
                    slot,
                    generation,
                ));
            }
            Err(e) => {
                if let Dials::Cycle { free, .. } = &mut self.dials {
                    // No socket to release, so give the slot back here.
                    free.push(slot);
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
            self.dial(slot, at.now_ns);
        }
        while let Some(&(deadline, slot, generation)) = self.connect_deadlines.front() {
            if deadline > at.now_ns {
                break;
            }
            self.connect_deadlines.pop_front();
            let conn = &self.conns[slot];
            if conn.generation == generation
                && matches!(
                    conn.phase,
                    Phase::Connecting | Phase::Securing | Phase::Handshaking(_)
                )
            {
                self.fail(slot, Reason::Timeout, at);
            }
        }
        while let Some(&(deadline, slot, generation)) = self.finish_deadlines.front() {
            if deadline > at.now_ns {
                break;
            }
            self.finish_deadlines.pop_front();
            if self.conns[slot].generation == generation {
                self.release(slot);
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
            let conn = &mut self.conns[slot];
            let (Phase::Open(ws), Some(stream)) = (&mut conn.phase, &mut conn.stream) else {
                continue;
            };
            let timeout = ws.handle_timeout(at.instant, &self.ws_config, &mut self.tx);
            let tls = self.secure.get_mut(slot).and_then(|t| t.as_deref_mut());
            let flushed = conn::flush(stream, tls, &mut conn.backlog, &mut self.tx);
            match (timeout, flushed) {
                (Some(Timeout::Pong), _) => self.fail(slot, Reason::Timeout, at),
                (_, Err(reason)) => self.fail(slot, reason, at),
                _ => {}
            }
        }
    }

    /// Counts a failure (or schedules a retry) and frees the slot's socket.
    pub(super) fn fail(&mut self, slot: usize, reason: Reason, at: At) {
        self.release(slot);
        let may_retry = self.is_hold() && self.stage == Stage::Ramp;
        let conn = &mut self.conns[slot];
        match conn.life {
            Life::Pending => {
                let retry =
                    may_retry && reason.is_retryable() && conn.attempts <= self.plan.retries;
                if retry {
                    self.tally.retries += 1;
                    let delay = backoff_ns(
                        ns(self.plan.backoff),
                        conn.attempts,
                        next_random(&mut self.rng),
                    );
                    self.retries.push(Reverse((at.now_ns + delay, slot)));
                } else {
                    self.end_pending(slot, reason);
                }
            }
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

    /// Closes the slot's socket, if it has one, and gives its buffers back.
    pub(super) fn release(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        if conn.stream.take().is_none() {
            return;
        }
        self.sockets -= 1;
        conn.phase = Phase::Idle;
        conn.rx = Vec::new();
        conn.backlog = Vec::new();
        if let Some(tls) = self.secure.get_mut(slot) {
            *tls = None;
        }
        if let Dials::Cycle { free, .. } = &mut self.dials {
            free.push(slot);
        }
    }
}
