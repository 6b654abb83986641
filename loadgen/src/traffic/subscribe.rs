//! `fanout`, subscriber side: each connection subscribes to one topic (raw topic socket, or a
//! subscribe command on the envelope protocol) and checks every delivery's stamp: latency from
//! the publisher's intended send time, sequence bookkeeping per publisher, and the time of each
//! message's first and last delivery. Over the envelope protocol a subscriber keeps the last
//! `seq` it had, so after the reconnect storm it resumes from there.
//!
//! Memory: a subscriber's slot state is 16 bytes; its per-publisher trackers live in one table
//! of the loop (16 bytes per subscriber and publisher of its topic), allocated at start.

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
    /// Envelope: the topic's last `seq` this subscriber had (its subscribe ack's, then each
    /// delivery's): where a resume starts.
    last_seq: u64,
    /// Deliveries may come (raw: open; envelope: acknowledged).
    subscribed: bool,
    /// Envelope: acknowledged once, so a later subscribe is a resume.
    acked: bool,
}

/// Subscriber traffic of one event loop.
#[derive(Debug)]
pub struct Subscribe {
    settings: Fanout,
    scratch: Vec<u8>,
    /// The most publishers any topic has: trackers per subscriber.
    stride: usize,
    /// Slot `s`'s tracker of its topic's `k`-th publisher is at `s * stride + k`.
    trackers: Vec<Tracker>,
    /// Envelope: the server's epoch, from the acks.
    epoch: Option<String>,
}

impl Subscribe {
    /// Subscribers for a fanout plan, `slots` of them in this loop.
    pub fn new(settings: &Fanout, slots: usize) -> Subscribe {
        let stride = settings.publishers.div_ceil(settings.topics.len());
        Subscribe {
            settings: settings.clone(),
            scratch: Vec::new(),
            stride,
            trackers: vec![Tracker::default(); slots * stride],
            epoch: None,
        }
    }

    fn deliver(&mut self, link: &mut Link<'_>, stamp: Stamp) -> Verdict {
        let topics = self.settings.topics.len();
        let topic = self.settings.topic_of(link.index);
        let publisher = stamp.publisher() as usize;
        if publisher >= self.settings.publishers || publisher % topics != topic {
            // A message from no publisher, or one of another topic.
            return Verdict::Fail(Reason::BadPayload);
        }
        let tracker = &mut self.trackers[link.slot * self.stride + publisher / topics];
        let counted = link.measured(stamp.sent_ns);
        let fanout = &mut link.tally.fanout;
        match tracker.arrive(stamp.count()) {
            Arrival::Duplicate => {
                fanout.duplicates += 1;
                return Verdict::Continue;
            }
            Arrival::OutOfOrder => fanout.out_of_order += 1,
            Arrival::InOrder => {}
        }
        // Not warm-up: counted, and timed unless it is the storm's message (due after the
        // window, while some subscribers are away on purpose).
        if counted {
            fanout.delivered[topic] += 1;
            let latency_ns = link.now_ns.saturating_sub(stamp.sent_ns);
            link.tally.rounds.record(stamp, latency_ns);
            if stamp.sent_ns < link.stop_ns {
                link.tally.record_latency(latency_ns);
            }
        }
        Verdict::Continue
    }

    /// An envelope acknowledgement: the subscription holds (again).
    fn acked(&mut self, conn: &mut SubscriberConn, link: &mut Link<'_>, ack: envelope::Ack<'_>) {
        let resumed = conn.acked;
        if resumed {
            match (ack.recovered, ack.seq) {
                (Some(true), Some(seq)) => {
                    link.tally.storm.replayed += seq.saturating_sub(conn.last_seq);
                }
                _ => link.tally.storm.not_recovered += 1,
            }
        }
        if !resumed || ack.recovered != Some(true) {
            // Live from the ack's seq on; a recovered resume replays from `last_seq` instead.
            conn.last_seq = ack.seq.unwrap_or(conn.last_seq);
        }
        if let Some(epoch) = ack.epoch
            && self.epoch.as_deref() != Some(&epoch)
        {
            self.epoch = Some(epoch.into_owned());
        }
        conn.acked = true;
        conn.subscribed = true;
    }
}

impl Traffic for Subscribe {
    type Conn = SubscriberConn;

    fn path<'t>(&self, index: usize, target: &'t Target) -> Cow<'t, str> {
        match self.settings.protocol {
            Protocol::Raw => {
                let topic = &self.settings.topics[self.settings.topic_of(index)];
                Cow::Owned(format!("{}/{topic}", target.path.trim_end_matches('/')))
            }
            Protocol::Envelope => Cow::Borrowed(&target.path),
        }
    }

    fn opened(&mut self, conn: &mut SubscriberConn, link: &mut Link<'_>) -> Verdict {
        match self.settings.protocol {
            Protocol::Raw => conn.subscribed = true,
            Protocol::Envelope => {
                let topic = &self.settings.topics[self.settings.topic_of(link.index)];
                let resume = match &self.epoch {
                    Some(epoch) if conn.acked => Some((conn.last_seq, epoch.as_str())),
                    _ => None,
                };
                conn.subscribed = false;
                envelope::subscribe(topic, 1, resume, &mut self.scratch);
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

    fn started(&mut self, _conn: &mut SubscriberConn, link: &mut Link<'_>) {
        link.tally.fanout.subscribers[self.settings.topic_of(link.index)] += 1;
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
            Protocol::Envelope => match envelope::parse(payload) {
                Some(Incoming::Delivery(data, seq)) => {
                    conn.last_seq = seq.unwrap_or(conn.last_seq);
                    Stamp::read(data.as_bytes())
                }
                Some(Incoming::Ack(ack)) => {
                    self.acked(conn, link, ack);
                    return Verdict::Continue;
                }
                Some(Incoming::Other) => return Verdict::Continue,
                Some(Incoming::Error) => return Verdict::Fail(Reason::Rejected),
                None => None,
            },
        };
        match stamp {
            Some(stamp) => self.deliver(link, stamp),
            None => Verdict::Fail(Reason::BadPayload),
        }
    }

    fn drained(&self, _: &Tally, _: usize) -> bool {
        false
    }
}
