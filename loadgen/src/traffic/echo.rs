//! `echo`: each connection keeps up to `window` stamped messages in flight and measures each
//! round trip from the stamp.
//!
//! Closed loop (no `--rate`): every reply sends the next message, stamped with the actual send
//! time. Open loop (`--rate`): message `k` of slot `c` (of `n`) is due at
//! `go + (k·n + c) / rate`; it is stamped with that intended time even when the window is full
//! and it leaves late, so a slow server shows up in the latencies (no coordinated omission).

use clarion_protocol::MessageKind;

use super::{Link, Traffic, Verdict};
use crate::failure::Reason;
use crate::plan;
use crate::stamp::{self, Stamp};
use crate::tally::Tally;

/// Per-connection state.
#[derive(Debug, Default)]
pub struct EchoConn {
    in_flight: u32,
    /// Messages sent so far: the next one's sequence number.
    sent: u64,
    /// Open loop: messages due but not sent yet (the window was full).
    owed: u64,
}

/// The open-loop schedule of one event loop.
#[derive(Debug)]
struct Schedule {
    go_ns: u64,
    interval_ns: f64,
    /// Steps handed out so far; step `s` belongs to slot `s mod slots`.
    steps: u64,
}

/// Echo traffic of one event loop.
#[derive(Debug)]
pub struct Echo {
    kind: MessageKind,
    window: u32,
    template: Vec<u8>,
    scratch: Vec<u8>,
    slots: u64,
    rate: Option<f64>,
    schedule: Option<Schedule>,
}

impl Echo {
    /// Echo traffic for `slots` connections of a loop that carries `fraction` of the total rate.
    pub fn new(settings: &plan::Echo, slots: usize, fraction: f64) -> Echo {
        Echo {
            kind: settings.kind,
            window: settings.window,
            template: stamp::template(settings.size),
            scratch: Vec::with_capacity(settings.size),
            slots: slots.max(1) as u64,
            rate: settings.rate.map(|r| r * fraction),
            schedule: None,
        }
    }

    fn send(&mut self, conn: &mut EchoConn, link: &mut Link<'_>, sent_ns: u64) {
        let stamp = Stamp {
            sent_ns,
            seq: conn.sent,
        };
        link.send_stamped(self.kind, &self.template, &mut self.scratch, stamp);
        conn.sent += 1;
        conn.in_flight += 1;
    }

    /// Open loop: sends what is owed while the window allows, each with its intended time.
    fn send_owed(&mut self, conn: &mut EchoConn, link: &mut Link<'_>) {
        let Some(schedule) = &self.schedule else {
            return;
        };
        let (go_ns, interval_ns) = (schedule.go_ns, schedule.interval_ns);
        while conn.owed > 0 && conn.in_flight < self.window {
            let step = conn.sent * self.slots + link.slot as u64;
            self.send(conn, link, go_ns + (step as f64 * interval_ns) as u64);
            conn.owed -= 1;
        }
    }
}

impl Traffic for Echo {
    type Conn = EchoConn;

    fn begin(&mut self, go_ns: u64) {
        self.schedule = self.rate.map(|rate| Schedule {
            go_ns,
            interval_ns: 1e9 / rate,
            steps: 0,
        });
    }

    fn started(&mut self, conn: &mut EchoConn, link: &mut Link<'_>) {
        if self.schedule.is_none() {
            for _ in 0..self.window {
                self.send(conn, link, link.now_ns);
            }
        }
    }

    fn message(
        &mut self,
        conn: &mut EchoConn,
        link: &mut Link<'_>,
        _kind: MessageKind,
        payload: &[u8],
    ) -> Verdict {
        let Some(stamp) = Stamp::read(payload) else {
            return Verdict::Fail(Reason::BadPayload);
        };
        if stamp.seq >= conn.sent || conn.in_flight == 0 {
            // Not something this connection sent.
            return Verdict::Fail(Reason::BadPayload);
        }
        conn.in_flight -= 1;
        if link.measured(stamp.sent_ns) {
            link.tally
                .record_latency(link.now_ns.saturating_sub(stamp.sent_ns));
        }
        if link.sending {
            match self.schedule {
                None => self.send(conn, link, link.now_ns),
                Some(_) => self.send_owed(conn, link),
            }
        }
        Verdict::Continue
    }

    fn schedule(&mut self, now_ns: u64, due: &mut Vec<usize>) {
        let Some(schedule) = &mut self.schedule else {
            return;
        };
        let elapsed = now_ns.saturating_sub(schedule.go_ns) as f64;
        let due_steps = (elapsed / schedule.interval_ns) as u64 + 1;
        due.extend((schedule.steps..due_steps).map(|step| (step % self.slots) as usize));
        schedule.steps = due_steps;
    }

    fn next_due_ns(&self) -> Option<u64> {
        let s = self.schedule.as_ref()?;
        Some(s.go_ns + (s.steps as f64 * s.interval_ns) as u64)
    }

    fn send_due(&mut self, conn: &mut EchoConn, link: &mut Link<'_>) {
        conn.owed += 1;
        self.send_owed(conn, link);
    }

    fn drained(&self, tally: &Tally, _: usize) -> bool {
        tally.messages_received >= tally.messages_sent
    }
}
