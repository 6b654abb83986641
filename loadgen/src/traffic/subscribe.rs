//! `fanout`, subscriber side: each connection subscribes to one topic (raw topic socket, a
//! subscribe command on the envelope protocol, or a Server-Sent Events stream) and checks every
//! delivery's stamp: latency from the publisher's intended send time, and sequence bookkeeping
//! per publisher.

use std::borrow::Cow;

use clarion_protocol::MessageKind;

use super::envelope::{self, Incoming};
use super::{Link, Traffic, Verdict};
use crate::cli::Protocol;
use crate::failure::Reason;
use crate::plan::Fanout;
use crate::sequence::{Arrival, Tracker};
use crate::stamp::Stamp;
use crate::tally::Tally;
use crate::url::Target;

/// Per-subscriber state.
#[derive(Debug, Default)]
pub struct SubscriberConn {
    topic: usize,
    subscribed: bool,
    /// One per publisher of the topic.
    trackers: Vec<Tracker>,
}

/// Subscriber traffic of one event loop.
#[derive(Debug)]
pub struct Subscribe {
    settings: Fanout,
    scratch: Vec<u8>,
}

impl Subscribe {
    /// Subscribers for a fanout plan.
    pub fn new(settings: &Fanout) -> Subscribe {
        Subscribe {
            settings: settings.clone(),
            scratch: Vec::new(),
        }
    }

    fn deliver(&self, conn: &mut SubscriberConn, link: &mut Link<'_>, stamp: Stamp) -> Verdict {
        let Some(tracker) = conn
            .trackers
            .iter_mut()
            .find(|t| t.publisher == stamp.publisher())
        else {
            // A message from a publisher of another topic.
            return Verdict::Fail(Reason::BadPayload);
        };
        let measured = link.measured(stamp.sent_ns);
        let fanout = &mut link.tally.fanout;
        match tracker.arrive(stamp.count()) {
            Arrival::Duplicate => {
                fanout.duplicates += 1;
                return Verdict::Continue;
            }
            Arrival::OutOfOrder => fanout.out_of_order += 1,
            Arrival::InOrder => {}
        }
        if measured {
            fanout.delivered[conn.topic] += 1;
            link.tally
                .record_latency(link.now_ns.saturating_sub(stamp.sent_ns));
        }
        Verdict::Continue
    }
}

impl Traffic for Subscribe {
    type Conn = SubscriberConn;

    fn path<'t>(&self, index: usize, target: &'t Target) -> Cow<'t, str> {
        match self.settings.protocol {
            Protocol::Raw | Protocol::Sse => {
                let topic = &self.settings.topics[self.settings.topic_of(index)];
                Cow::Owned(format!("{}/{topic}", target.path.trim_end_matches('/')))
            }
            Protocol::Envelope => Cow::Borrowed(&target.path),
        }
    }

    fn opened(&mut self, index: usize, conn: &mut SubscriberConn, link: &mut Link<'_>) -> Verdict {
        conn.topic = self.settings.topic_of(index);
        conn.trackers = (0..self.settings.publishers)
            .filter(|p| self.settings.topic_of(*p) == conn.topic)
            .map(|p| Tracker::new(p as u16))
            .collect();
        match self.settings.protocol {
            Protocol::Raw => conn.subscribed = true,
            // Subscribed by the request; ready at its `subscribed` event.
            Protocol::Sse => {}
            Protocol::Envelope => {
                envelope::subscribe(&self.settings.topics[conn.topic], 1, &mut self.scratch);
                // A command, not a measured message: not counted as sent.
                let _ = link
                    .ws
                    .send_in_place(MessageKind::Text, &mut self.scratch, link.tx);
            }
        }
        Verdict::Continue
    }

    fn ready(&self, conn: &SubscriberConn) -> bool {
        conn.subscribed
    }

    fn started(&mut self, conn: &mut SubscriberConn, link: &mut Link<'_>) {
        link.tally.fanout.subscribers[conn.topic] += 1;
    }

    fn message(
        &mut self,
        conn: &mut SubscriberConn,
        link: &mut Link<'_>,
        _kind: MessageKind,
        payload: &[u8],
    ) -> Verdict {
        let stamp = match self.settings.protocol {
            Protocol::Raw => Stamp::read(payload),
            // An event's data: a stamped payload, or a control event's JSON.
            Protocol::Sse if payload.starts_with(br#"{"type":"subscribed""#) => {
                conn.subscribed = true;
                return Verdict::Continue;
            }
            Protocol::Sse if payload.starts_with(br#"{"type":"close""#) => {
                return Verdict::Fail(Reason::ClosedByServer);
            }
            Protocol::Sse => Stamp::read(payload),
            Protocol::Envelope => match envelope::parse(payload) {
                Some(Incoming::Delivery(data)) => Stamp::read(data.as_bytes()),
                Some(Incoming::Ack) => {
                    conn.subscribed = true;
                    return Verdict::Continue;
                }
                Some(Incoming::Other) => return Verdict::Continue,
                Some(Incoming::Error) => return Verdict::Fail(Reason::Rejected),
                None => None,
            },
        };
        match stamp {
            Some(stamp) => self.deliver(conn, link, stamp),
            None => Verdict::Fail(Reason::BadPayload),
        }
    }

    fn drained(&self, _: &Tally, _: usize) -> bool {
        false
    }
}
