//! `churn`: each connection sends one stamped message, waits for its echo, then closes. The cycle
//! is measured from when its dial was due, so dials that start late (all slots busy) count their
//! wait.

use clarion_protocol::MessageKind;

use super::{Link, Traffic, Verdict};
use crate::failure::Reason;
use crate::plan;
use crate::stamp::{self, Stamp};
use crate::tally::Tally;

/// Churn traffic of one event loop.
#[derive(Debug)]
pub struct Churn {
    template: Vec<u8>,
    scratch: Vec<u8>,
}

impl Churn {
    /// Churn traffic with messages of the planned size.
    pub fn new(settings: &plan::Churn) -> Churn {
        Churn {
            template: stamp::template(settings.size),
            scratch: Vec::with_capacity(settings.size),
        }
    }
}

/// A cycle's connection: when its dial was due.
#[derive(Debug, Default)]
pub struct CycleConn {
    due_ns: u64,
}

impl Traffic for Churn {
    type Conn = CycleConn;

    fn dialed(&mut self, conn: &mut CycleConn, due_ns: u64) {
        conn.due_ns = due_ns;
    }

    fn opened(&mut self, conn: &mut CycleConn, link: &mut Link<'_>) -> Verdict {
        let stamp = Stamp {
            sent_ns: conn.due_ns,
            seq: 0,
        };
        link.send_stamped(
            MessageKind::Binary,
            &self.template,
            &mut self.scratch,
            stamp,
        );
        Verdict::Continue
    }

    fn message(
        &mut self,
        conn: &mut CycleConn,
        link: &mut Link<'_>,
        _: MessageKind,
        payload: &[u8],
    ) -> Verdict {
        match Stamp::read(payload) {
            Some(stamp) if stamp.sent_ns == conn.due_ns => {
                link.tally
                    .record_latency(link.now_ns.saturating_sub(conn.due_ns));
                link.tally.cycles += 1;
                Verdict::Finish
            }
            _ => Verdict::Fail(Reason::BadPayload),
        }
    }

    fn drained(&self, _: &Tally, sockets: usize) -> bool {
        sockets == 0
    }
}
