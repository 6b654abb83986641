//! The event loop of one thread: a mio poll over the connections of one shard.
//!
//! Each loop owns its sockets, one read buffer and one write buffer for all of them; a
//! connection borrows a receive or backlog buffer ([`lent`]) only while it has a partial frame or
//! unsent bytes, so an idle connection is its slot and nothing more. Per turn: advance the stage,
//! dial what the pacer releases, expire deadlines, send what the mode's schedule has due, wait for
//! readiness (or, with `--coalesce`, sleep and poll), then for each ready socket read until it is
//! drained, hand the frames to the mode and write everything it queued with one `write`. With
//! `--io uring` the wait is on the loop's io_uring ([`ring`]) instead: open plaintext
//! connections are read by multishot receives, and epoll's events are taken when the ring says
//! it has some.
//!
//! Stages: ramp (dial every slot at the ramp rate, retry connect errors with backoff; the
//! connections are then held through `--hold`) → measure (from the warm-up's start, the
//! coordinator's go instant less `--warmup`, to its stop instant; what is stamped before go is
//! checked but not counted) → drain (wait for replies in flight) → with `--storm`, the reconnect
//! storm at the stop instant plus `--drain` (drop a share of the open connections at once, dial
//! them again and resume their subscriptions, bounded by `--storm-timeout`) and a second drain
//! → closing (close handshakes, bounded by `--close-timeout`) → done. Churn skips the ramp and
//! dials during the measurement instead.

mod alarm;
mod coalesce;
mod conn;
mod events;
mod lent;
mod pace;
mod ring;
mod slots;
mod socket;
mod storm;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use crate::cli::Io;
use crate::clock::{self, ns};
use crate::control::Control;
use crate::failure::Reason;
use crate::plan::{Mode, Plan, Shard};
use crate::tally::Tally;
use crate::traffic::{self, Traffic, Verdict};
use alarm::Alarm;
use coalesce::Coalesce;
use conn::{Conn, Life, Phase};
use lent::Lender;
use pace::Pacer;
use ring::{Completion, Ring};
use storm::Storm;

/// The one read buffer of a loop.
const READ_BUFFER: usize = 64 << 10;
/// How often a loop looks at the coordinator's instructions when nothing else wakes it.
const CONTROL_POLL_NS: u64 = 20_000_000;
/// How often keep-alive timeouts are checked when pings are on.
const SWEEP_NS: u64 = 250_000_000;
/// Waits shorter than this use the precise [`Alarm`]; longer ones epoll's millisecond timeout.
const PRECISE_BELOW_NS: u64 = 2_000_000;
/// The alarm's token (connection slots count up from 0).
const ALARM: Token = Token(usize::MAX);

/// Runs the loop of `shard` to the end and returns what it counted.
pub fn run(plan: &Plan, control: &Control, loop_index: usize, shard: Shard) -> io::Result<Tally> {
    if plan.private_fd_table {
        clarion_host::unshare_fd_table()?;
    }
    Ok(match &plan.mode {
        Mode::Idle => Worker::new(plan, control, loop_index, shard, traffic::idle::Idle)?.run(),
        Mode::Echo(echo) => {
            let traffic = traffic::echo::Echo::new(echo, shard.count, shard.fraction);
            Worker::new(plan, control, loop_index, shard, traffic)?.run()
        }
        Mode::Churn(churn) => {
            let traffic = traffic::churn::Churn::new(churn);
            Worker::new(plan, control, loop_index, shard, traffic)?.run()
        }
        Mode::Fanout(fanout) => {
            let traffic = traffic::subscribe::Subscribe::new(fanout, shard.count);
            Worker::new(plan, control, loop_index, shard, traffic)?.run()
        }
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Ramp,
    Measure { stop_ns: u64 },
    Drain { until_ns: u64 },
    Storm { until_ns: u64 },
    Closing { since_ns: u64, until_ns: u64 },
}

/// How slots get dialed.
enum Dials {
    /// Every slot once, at the ramp rate (idle, echo, fanout).
    Hold(Pacer),
    /// Cycles at the churn rate during the measurement, each taking a free slot.
    Cycle {
        rate: f64,
        pacer: Option<Pacer>,
        free: Vec<u32>,
    },
}

/// What a socket is ready for.
#[derive(Clone, Copy)]
struct Readiness {
    readable: bool,
    writable: bool,
    /// The server's FIN (or an error) is queued.
    hangup: bool,
}

/// When an event was read.
#[derive(Clone, Copy)]
struct At {
    now_ns: u64,
    instant: Instant,
}

struct Worker<'a, T: Traffic> {
    plan: &'a Plan,
    control: &'a Control,
    loop_index: usize,
    traffic: T,
    poll: Poll,
    /// `--io uring`: the ring the loop waits on and reads open connections with.
    ring: Option<Ring>,
    alarm: Alarm,
    /// Global index of slot 0.
    first: usize,
    conns: Vec<Conn<T::Conn>>,
    /// TLS connections' state by slot, beside the slots (plaintext ones pay nothing): boxed,
    /// filled from the TCP connect to the release.
    secure: Vec<Option<Box<rustls::ClientConnection>>>,
    lender: Lender,
    /// An empty receive buffer (with capacity) for reads by connections that borrow none.
    spare: Vec<u8>,
    rbuf: Vec<u8>,
    tx: Vec<u8>,
    /// Multi-line SSE data, joined.
    scratch: Vec<u8>,
    due: Vec<usize>,
    ws_config: clarion_protocol::Config,
    tally: Tally,
    stage: Stage,
    dials: Dials,
    storm: Option<Storm>,
    /// When the measurement stops (0 before it starts).
    stop_ns: u64,
    retries: BinaryHeap<Reverse<(u64, u32)>>,
    connect_deadlines: VecDeque<(u64, u32, u32)>,
    finish_deadlines: VecDeque<(u64, u32, u32)>,
    /// Slots not yet settled (open and ready, or ended): the ramp is done at zero.
    unsettled: usize,
    /// Slots the ramp has dialed.
    dialed: usize,
    /// Most slots dialed and not settled at once (`--max-pending`, this loop's share).
    max_pending: usize,
    ramp_reported: bool,
    sockets: usize,
    go_ns: u64,
    generation: u32,
    rng: u64,
    next_sweep_ns: u64,
}

impl<'a, T: Traffic> Worker<'a, T> {
    fn new(
        plan: &'a Plan,
        control: &'a Control,
        loop_index: usize,
        shard: Shard,
        traffic: T,
    ) -> io::Result<Worker<'a, T>> {
        let start_ns = clock::now_ns();
        let dials = match &plan.mode {
            Mode::Churn(churn) => Dials::Cycle {
                rate: churn.rate * shard.fraction,
                pacer: None,
                free: (0..shard.count as u32).rev().collect(),
            },
            _ => Dials::Hold(Pacer::new(
                start_ns,
                plan.ramp_rate * shard.fraction,
                shard.count as u64,
            )),
        };
        let topics = match &plan.mode {
            Mode::Fanout(fanout) => fanout.topics.len(),
            _ => 0,
        };
        let storm = match &plan.mode {
            Mode::Fanout(fanout) => fanout.storm.map(Storm::new),
            _ => None,
        };
        let ws_config = clarion_protocol::Config {
            ping_interval: plan.ping_interval,
            idle_timeout: None,
            close_timeout: plan.close_timeout,
            ..clarion_protocol::Config::default()
        };
        let poll = Poll::new()?;
        let alarm = Alarm::new(poll.registry(), ALARM)?;
        let ring = match plan.io {
            Io::Epoll => None,
            Io::Uring => Some(Ring::new()?),
        };
        Ok(Worker {
            plan,
            control,
            loop_index,
            traffic,
            poll,
            ring,
            alarm,
            first: shard.first,
            conns: (0..shard.count).map(|_| Conn::new()).collect(),
            secure: Vec::new(),
            lender: Lender::default(),
            spare: Vec::new(),
            rbuf: vec![0; READ_BUFFER],
            tx: Vec::with_capacity(READ_BUFFER),
            scratch: Vec::new(),
            due: Vec::new(),
            ws_config,
            tally: Tally::new(topics, plan.output.hdr.is_some()),
            stage: Stage::Ramp,
            dials,
            storm,
            stop_ns: 0,
            retries: BinaryHeap::new(),
            connect_deadlines: VecDeque::new(),
            finish_deadlines: VecDeque::new(),
            unsettled: shard.count,
            dialed: 0,
            max_pending: match plan.max_pending {
                0 => usize::MAX,
                all => ((all as f64 * shard.fraction).ceil() as usize).max(1),
            },
            ramp_reported: false,
            sockets: 0,
            go_ns: 0,
            generation: 0,
            rng: start_ns ^ (loop_index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            next_sweep_ns: start_ns + SWEEP_NS,
        })
    }

    fn run(mut self) -> Tally {
        let mut events = Events::with_capacity(1024);
        let mut coalesce = Coalesce::new(ns(self.plan.coalesce));
        if !self.plan.coalesce.is_zero() {
            crate::sys::tighten_timer_slack();
        }
        loop {
            let now_ns = clock::now_ns();
            let at = At {
                now_ns,
                instant: Instant::now(),
            };
            if !self.advance(at) {
                break;
            }
            self.dial_due(now_ns);
            self.expire(at);
            if matches!(self.stage, Stage::Measure { .. }) {
                self.send_scheduled(at);
            }
            self.control.live(self.loop_index).publish(&self.tally);
            let mut before_poll_ns = clock::now_ns();
            let next = coalesce.next(before_poll_ns, self.wait_ns(before_poll_ns));
            if let Some(until_ns) = next.sleep_until_ns {
                std::thread::sleep(Duration::from_nanos(until_ns - before_poll_ns));
                before_poll_ns = clock::now_ns();
            }
            let wait = next.timeout_ns;
            if wait > 0 && wait < PRECISE_BELOW_NS {
                self.alarm.arm(before_poll_ns + wait);
            }
            let timeout = Duration::from_nanos(wait);
            let polled = match &mut self.ring {
                None => self.poll.poll(&mut events, Some(timeout)),
                Some(ring) => ring.wait(self.poll.as_raw_fd(), timeout),
            };
            let woken = match &mut self.ring {
                None => !events.is_empty(),
                Some(ring) => ring.has_completed(),
            };
            coalesce.polled(before_poll_ns, woken);
            if let Err(e) = polled
                && e.kind() != io::ErrorKind::Interrupted
            {
                // The poll itself broke: nothing can be served any more; end cleanly.
                self.control.abort();
            }
            let at = At {
                now_ns: clock::now_ns(),
                instant: Instant::now(),
            };
            if self.stage == Stage::Ramp && !self.control.aborted() {
                // The window may have opened while the loop slept: what woke it may be the
                // first message, which must be judged against the window.
                self.begin_when_due(at);
            }
            match self.ring.as_mut().map(Ring::take_completed) {
                None => self.on_events(&events, at),
                Some(completed) => {
                    for &completion in &completed {
                        match completion {
                            Completion::Epoll => self.take_epoll_events(&mut events, at),
                            Completion::Read {
                                slot,
                                generation,
                                result,
                                buffer,
                                more,
                            } => self.on_ring_read(
                                slot as usize,
                                generation,
                                result,
                                buffer,
                                more,
                                at,
                            ),
                        }
                    }
                    if let Some(ring) = &mut self.ring {
                        ring.put_completed(completed);
                    }
                }
            }
        }
        for slot in 0..self.conns.len() {
            self.release(slot);
        }
        self.tally.finish_intervals();
        self.control.live(self.loop_index).publish(&self.tally);
        self.tally
    }

    fn on_events(&mut self, events: &Events, at: At) {
        for event in events.iter() {
            if event.token() == ALARM {
                self.alarm.clear();
                continue;
            }
            let hangup = event.is_read_closed() || event.is_error();
            let readiness = Readiness {
                readable: event.is_readable() || hangup,
                writable: event.is_writable() || event.is_error(),
                hangup,
            };
            self.on_event(event.token().0, readiness, at);
        }
    }

    /// `--io uring`: the ring saw epoll's descriptor ready; take its events without blocking,
    /// all of them (a full list may leave more ready, which wake the ring no further).
    fn take_epoll_events(&mut self, events: &mut Events, at: At) {
        loop {
            match self.poll.poll(events, Some(Duration::ZERO)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.control.abort(),
            }
            self.on_events(events, at);
            if events.iter().count() < events.capacity() {
                return;
            }
        }
    }

    fn sending(&self) -> bool {
        matches!(self.stage, Stage::Measure { .. })
    }

    fn is_hold(&self) -> bool {
        matches!(self.dials, Dials::Hold(_))
    }

    /// Ramp: slots dialed and not yet settled (connecting, upgrading, subscribing, retrying).
    fn pending(&self) -> usize {
        self.dialed - (self.conns.len() - self.unsettled)
    }

    /// Moves through the stages; `false` once the loop is done.
    fn advance(&mut self, at: At) -> bool {
        let aborted = self.control.aborted();
        match self.stage {
            Stage::Ramp => {
                if !self.ramp_reported && (self.unsettled == 0 || !self.is_hold()) {
                    self.ramp_reported = true;
                    self.control.report_ramped();
                }
                if aborted {
                    self.enter_closing(at);
                } else {
                    self.begin_when_due(at);
                }
            }
            Stage::Measure { stop_ns } => {
                self.tally.roll_interval(at.now_ns, self.go_ns);
                if aborted {
                    self.enter_closing(at);
                } else if at.now_ns >= stop_ns {
                    self.stage = Stage::Drain {
                        until_ns: at.now_ns + ns(self.plan.drain),
                    };
                }
            }
            Stage::Drain { until_ns } => {
                self.tally.roll_interval(at.now_ns, self.go_ns);
                let storm_at = self.storm.as_ref().and_then(Storm::due_at);
                if aborted {
                    self.enter_closing(at);
                } else if let Some(storm_at) = storm_at {
                    if at.now_ns >= storm_at {
                        self.begin_storm(at);
                    }
                } else if at.now_ns >= until_ns || self.traffic.drained(&self.tally, self.sockets) {
                    self.enter_closing(at);
                }
            }
            Stage::Storm { until_ns } => {
                let settled = self.storm.as_ref().is_none_or(|s| s.pending() == 0);
                if aborted || settled || at.now_ns >= until_ns {
                    self.end_storm(at);
                }
            }
            Stage::Closing { since_ns, until_ns } => {
                let done = self.sockets == 0 || at.now_ns >= until_ns;
                if done {
                    self.tally.close.ns = at.now_ns.min(until_ns) - since_ns;
                }
                return !done;
            }
        }
        true
    }

    /// Starts the traffic once the window is set and its warm-up (`go_ns` less `--warmup`) has
    /// begun.
    fn begin_when_due(&mut self, at: At) {
        if let Some((go_ns, stop_ns)) = self.control.window()
            && at.now_ns >= go_ns.saturating_sub(ns(self.plan.warmup))
        {
            self.begin_measure(go_ns, stop_ns, at);
        }
    }

    /// Starts the traffic: at the warm-up's start (what arrives stamped before `go_ns` is not
    /// counted).
    fn begin_measure(&mut self, go_ns: u64, stop_ns: u64, at: At) {
        self.go_ns = go_ns;
        self.stop_ns = stop_ns;
        let start_ns = go_ns.saturating_sub(ns(self.plan.warmup));
        self.stage = Stage::Measure { stop_ns };
        if let Some(storm) = &mut self.storm {
            storm.plan_at(stop_ns + ns(self.plan.drain));
        }
        self.retries.clear();
        for slot in 0..self.conns.len() {
            if self.conns[slot].life == Life::Pending && self.is_hold() {
                self.release(slot);
                self.end_pending(slot, Reason::RampTimeout);
            }
        }
        self.traffic.begin(start_ns);
        for slot in 0..self.conns.len() {
            self.with_link(slot, at, |traffic, state, link| {
                traffic.started(state, link);
                Verdict::Continue
            });
        }
        if let Dials::Cycle { rate, pacer, .. } = &mut self.dials {
            *pacer = Some(Pacer::new(start_ns, *rate, u64::MAX));
        }
    }

    fn enter_closing(&mut self, at: At) {
        self.stage = Stage::Closing {
            since_ns: at.now_ns,
            until_ns: at.now_ns + ns(self.plan.close_timeout),
        };
        self.retries.clear();
        for slot in 0..self.conns.len() {
            if self.conns[slot].life == Life::Rejoining {
                // Aborted during the storm before it came back.
                self.release(slot);
                self.rejoined(slot, Err(Reason::Timeout), at);
            }
            match self.conns[slot].phase {
                Phase::Open(_) | Phase::Stream(_) => {
                    self.tally.close.open += 1;
                    self.begin_close(slot, at);
                }
                Phase::Connecting { .. } | Phase::Securing { .. } | Phase::Handshaking { .. } => {
                    self.fail(slot, Reason::Timeout, at);
                }
                // Aborted during the ramp: never dialed, or waiting to retry.
                Phase::Idle if self.conns[slot].life == Life::Pending && self.is_hold() => {
                    self.end_pending(slot, Reason::RampTimeout);
                }
                Phase::Idle | Phase::Finishing => {}
            }
        }
    }

    /// Nanoseconds until the loop has something to do, whatever the sockets do.
    fn wait_ns(&self, now_ns: u64) -> u64 {
        let mut next = now_ns
            + if self.stage == Stage::Ramp {
                CONTROL_POLL_NS
            } else {
                5 * CONTROL_POLL_NS
            };
        let mut consider = |at: Option<u64>| {
            if let Some(at) = at {
                next = next.min(at);
            }
        };
        match (&self.dials, self.stage) {
            (Dials::Hold(pacer), Stage::Ramp) if self.pending() < self.max_pending => {
                consider(pacer.next_due());
            }
            (
                Dials::Cycle {
                    pacer: Some(pacer),
                    free,
                    ..
                },
                Stage::Measure { .. },
            ) if !free.is_empty() => consider(pacer.next_due()),
            _ => {}
        }
        consider(self.retries.peek().map(|r| r.0.0));
        consider(self.connect_deadlines.front().map(|d| d.0));
        consider(self.finish_deadlines.front().map(|d| d.0));
        match self.stage {
            Stage::Ramp => {}
            Stage::Measure { stop_ns } => {
                consider(Some(stop_ns));
                consider(self.traffic.next_due_ns());
            }
            Stage::Drain { until_ns } | Stage::Closing { until_ns, .. } => {
                consider(Some(until_ns));
                consider(self.storm.as_ref().and_then(Storm::due_at));
            }
            Stage::Storm { until_ns } => {
                consider(Some(until_ns));
                // After the blip, and straight back while more are queued than a turn takes.
                consider(self.storm.as_ref().and_then(Storm::dials_due));
            }
        }
        if self.ws_config.ping_interval.is_some() {
            consider(Some(self.next_sweep_ns));
        }
        next.saturating_sub(now_ns)
    }
}

/// xorshift64*: nonces and masking seeds only need to differ, not to be secret.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}
