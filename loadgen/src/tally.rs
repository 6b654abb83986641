//! What one event loop (and, merged, a process and the whole run) counted: connections by
//! outcome, messages, fanout accounting (with each message's first and last delivery), the
//! reconnect storm, the close, and latency histograms. Mergeable and serializable, so threads
//! and worker processes add up the same way.

use std::collections::HashMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::failure::Failures;
use crate::hist;
use crate::stamp::Stamp;

/// Length of one `--hdr` interval.
pub const INTERVAL_NS: u64 = 1_000_000_000;
/// Messages whose first and last delivery a loop tracks; later ones are only counted.
const MAX_ROUNDS: usize = 1024;

/// The first and last delivery of one published message (latencies from its intended send time).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Round {
    /// The message's stamp sequence number (publisher and count).
    pub seq: u64,
    /// When it was due to be published ([`crate::clock`] nanoseconds).
    pub sent_ns: u64,
    /// Subscribers it reached.
    pub deliveries: u64,
    /// Latency of its first delivery, ns.
    pub first_ns: u64,
    /// Latency of its last delivery, ns.
    pub last_ns: u64,
}

/// Each message's first and last delivery: a fanout's "time until the first and the last
/// subscriber has it".
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Rounds {
    /// Tracked messages, by send time once merged.
    pub list: Vec<Round>,
    /// Deliveries of messages past the first [`MAX_ROUNDS`] a loop saw.
    pub untracked: u64,
    /// Where each tracked message is in `list`: one lookup per delivery, tracked or not (a scan
    /// of the list was 1,024 comparisons for every delivery of an untracked message, 40% of
    /// the loadgen's CPU at a million deliveries a second).
    #[serde(skip)]
    index: HashMap<u64, usize>,
    /// The round of the last delivery: deliveries of one message come together.
    #[serde(skip)]
    last: usize,
}

impl Rounds {
    /// Records a delivery of the message stamped `stamp`, `latency_ns` after it was due.
    pub fn record(&mut self, stamp: Stamp, latency_ns: u64) {
        let at = match self.list.get(self.last) {
            Some(round) if round.seq == stamp.seq => Some(self.last),
            _ => self.index.get(&stamp.seq).copied(),
        };
        if let Some(at) = at {
            self.last = at;
            let round = &mut self.list[at];
            round.deliveries += 1;
            round.first_ns = round.first_ns.min(latency_ns);
            round.last_ns = round.last_ns.max(latency_ns);
            return;
        }
        if self.list.len() < MAX_ROUNDS {
            self.last = self.list.len();
            self.index.insert(stamp.seq, self.last);
            self.list.push(Round {
                seq: stamp.seq,
                sent_ns: stamp.sent_ns,
                deliveries: 1,
                first_ns: latency_ns,
                last_ns: latency_ns,
            });
        } else {
            self.untracked += 1;
        }
    }

    fn merge(&mut self, other: &Rounds) {
        for theirs in &other.list {
            match self.list.iter_mut().find(|r| r.seq == theirs.seq) {
                Some(round) => {
                    round.deliveries += theirs.deliveries;
                    round.first_ns = round.first_ns.min(theirs.first_ns);
                    round.last_ns = round.last_ns.max(theirs.last_ns);
                }
                None => self.list.push(*theirs),
            }
        }
        self.list.sort_by_key(|r| (r.sent_ns, r.seq));
        self.untracked += other.untracked;
        self.index = self
            .list
            .iter()
            .enumerate()
            .map(|(at, r)| (r.seq, at))
            .collect();
    }
}

/// The reconnect storm (`--storm`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StormTally {
    /// Connections dropped on purpose.
    pub dropped: u64,
    /// Of them, back and subscribed again.
    pub rejoined: u64,
    /// Back, but the server could not resume their subscription (`recovered` not true).
    pub not_recovered: u64,
    /// Messages the server promised to replay to the resumed ones (their acks' `seq` less the
    /// `since` they asked from).
    pub replayed: u64,
    /// Not back by the storm's timeout, or failed dialing again.
    pub failed: u64,
    /// Why they did not come back (`timeout` for the storm's timeout too).
    pub failures: Failures,
    /// From the end of the blip until the last one was back or given up, ns (the longest
    /// loop's).
    pub ns: u64,
    /// From the end of the blip until each was back.
    #[serde(with = "hist::as_hex")]
    pub rejoin: Histogram<u64>,
}

impl StormTally {
    fn new() -> StormTally {
        StormTally {
            dropped: 0,
            rejoined: 0,
            not_recovered: 0,
            replayed: 0,
            failed: 0,
            failures: Failures::default(),
            ns: 0,
            rejoin: hist::new(),
        }
    }

    fn merge(&mut self, other: &StormTally) {
        self.dropped += other.dropped;
        self.rejoined += other.rejoined;
        self.not_recovered += other.not_recovered;
        self.replayed += other.replayed;
        self.failed += other.failed;
        self.failures.merge(&other.failures);
        self.ns = self.ns.max(other.ns);
        hist::merge(&mut self.rejoin, &other.rejoin);
    }
}

/// The close at the end.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CloseTally {
    /// WebSockets open when closing began.
    pub open: u64,
    /// From then until the last socket was gone (or the close timeout), ns (the longest loop's).
    pub ns: u64,
}

/// Fanout accounting, per topic where it matters.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FanoutTally {
    /// Messages published per topic.
    pub published: Vec<u64>,
    /// Subscribers open when publishing began, per topic.
    pub subscribers: Vec<u64>,
    /// Distinct messages delivered, per topic, over all its subscribers.
    pub delivered: Vec<u64>,
    /// Deliveries of a message the subscriber already had.
    pub duplicates: u64,
    /// Deliveries that arrived after a later message of the same publisher.
    pub out_of_order: u64,
    /// Publishes that failed (HTTP error, envelope error, socket error).
    pub publish_errors: u64,
}

impl FanoutTally {
    /// An empty tally for `topics` topics.
    pub fn new(topics: usize) -> FanoutTally {
        FanoutTally {
            published: vec![0; topics],
            subscribers: vec![0; topics],
            delivered: vec![0; topics],
            ..FanoutTally::default()
        }
    }

    /// Deliveries that should have happened and did not.
    pub fn missing(&self) -> u64 {
        let expected: u64 = self
            .published
            .iter()
            .zip(&self.subscribers)
            .map(|(p, s)| p * s)
            .sum();
        expected.saturating_sub(self.delivered.iter().sum())
    }

    fn merge(&mut self, other: &FanoutTally) {
        add_each(&mut self.published, &other.published);
        add_each(&mut self.subscribers, &other.subscribers);
        add_each(&mut self.delivered, &other.delivered);
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.publish_errors += other.publish_errors;
    }
}

fn add_each(into: &mut Vec<u64>, from: &[u64]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0);
    }
    into.iter_mut().zip(from).for_each(|(a, b)| *a += b);
}

/// One interval of the `--hdr` log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Interval {
    /// Seconds since the measurement began.
    pub index: u32,
    /// The latencies recorded in it.
    #[serde(with = "hist::as_hex")]
    pub histogram: Histogram<u64>,
}

/// Everything counted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tally {
    /// Connections that reached an open WebSocket (churn: handshakes completed).
    pub established: u64,
    /// Connections that never opened, by their last reason.
    pub failures: Failures,
    /// Connections that opened and were lost before the end, by reason.
    pub drops: Failures,
    /// Dials repeated after a connect error.
    pub retries: u64,
    /// The errors that were retried, by reason.
    pub retried: Failures,
    /// Connections that ended with a complete close handshake.
    pub closed_clean: u64,
    /// Messages sent (echo requests, churn messages, publishes).
    pub messages_sent: u64,
    /// Messages received.
    pub messages_received: u64,
    /// Messages received while the measurement ran (for throughput).
    pub received_in_window: u64,
    /// Churn: connect-exchange-close cycles completed.
    pub cycles: u64,
    /// Reads done by io_uring's multishot receive (`--io uring`), one per completion.
    pub ring_reads: u64,
    /// Fanout accounting.
    pub fanout: FanoutTally,
    /// Fanout: each message's first and last delivery.
    pub rounds: Rounds,
    /// The reconnect storm.
    pub storm: StormTally,
    /// The close at the end.
    pub close: CloseTally,
    /// TCP connect times.
    #[serde(with = "hist::as_hex")]
    pub connect: Histogram<u64>,
    /// TLS handshake times (connected to handshake done), `wss://` only.
    #[serde(with = "hist::as_hex")]
    pub tls: Histogram<u64>,
    /// Upgrade request to 101 times.
    #[serde(with = "hist::as_hex")]
    pub handshake: Histogram<u64>,
    /// Fanout: how late each publish left against the time it was due (and stamped with), so
    /// the loadgen's own delay in publishing, which the delivery latencies include, is seen.
    #[serde(with = "hist::as_hex")]
    pub publish_lag: Histogram<u64>,
    /// The mode's latency: echo round trip, churn cycle, publish-to-receive.
    #[serde(with = "hist::as_hex")]
    pub latency: Histogram<u64>,
    /// `--hdr`: finished intervals of `latency`.
    pub intervals: Vec<Interval>,
    /// `--hdr`: the interval being recorded, and its index.
    #[serde(skip)]
    current: Option<(u32, Histogram<u64>)>,
}

impl Tally {
    /// An empty tally; `intervals` keeps the per-second log for `--hdr`.
    pub fn new(topics: usize, intervals: bool) -> Tally {
        Tally {
            established: 0,
            failures: Failures::default(),
            drops: Failures::default(),
            retries: 0,
            retried: Failures::default(),
            closed_clean: 0,
            messages_sent: 0,
            messages_received: 0,
            received_in_window: 0,
            cycles: 0,
            ring_reads: 0,
            fanout: FanoutTally::new(topics),
            rounds: Rounds::default(),
            storm: StormTally::new(),
            close: CloseTally::default(),
            connect: hist::new(),
            tls: hist::new(),
            handshake: hist::new(),
            publish_lag: hist::new(),
            latency: hist::new(),
            intervals: Vec::new(),
            current: intervals.then(|| (0, hist::new())),
        }
    }

    /// Records one latency of the mode.
    pub fn record_latency(&mut self, latency_ns: u64) {
        hist::record(&mut self.latency, latency_ns);
        if let Some((_, interval)) = &mut self.current {
            hist::record(interval, latency_ns);
        }
    }

    /// Closes the current `--hdr` interval if `now_ns` is past it (measured from `go_ns`).
    pub fn roll_interval(&mut self, now_ns: u64, go_ns: u64) {
        let Some((index, interval)) = &mut self.current else {
            return;
        };
        let now_index = (now_ns.saturating_sub(go_ns) / INTERVAL_NS) as u32;
        if now_index > *index {
            if !interval.is_empty() {
                self.intervals.push(Interval {
                    index: *index,
                    histogram: interval.clone(),
                });
                interval.reset();
            }
            *index = now_index;
        }
    }

    /// Closes the last `--hdr` interval.
    pub fn finish_intervals(&mut self) {
        if let Some((index, interval)) = self.current.take()
            && !interval.is_empty()
        {
            self.intervals.push(Interval {
                index,
                histogram: interval,
            });
        }
    }

    /// Adds another tally in.
    pub fn merge(&mut self, other: &Tally) {
        self.established += other.established;
        self.failures.merge(&other.failures);
        self.drops.merge(&other.drops);
        self.retries += other.retries;
        self.retried.merge(&other.retried);
        self.closed_clean += other.closed_clean;
        self.messages_sent += other.messages_sent;
        self.messages_received += other.messages_received;
        self.received_in_window += other.received_in_window;
        self.cycles += other.cycles;
        self.ring_reads += other.ring_reads;
        self.fanout.merge(&other.fanout);
        self.rounds.merge(&other.rounds);
        self.storm.merge(&other.storm);
        self.close.open += other.close.open;
        self.close.ns = self.close.ns.max(other.close.ns);
        hist::merge(&mut self.connect, &other.connect);
        hist::merge(&mut self.tls, &other.tls);
        hist::merge(&mut self.handshake, &other.handshake);
        hist::merge(&mut self.publish_lag, &other.publish_lag);
        hist::merge(&mut self.latency, &other.latency);
        for interval in &other.intervals {
            match self
                .intervals
                .iter_mut()
                .find(|i| i.index == interval.index)
            {
                Some(mine) => hist::merge(&mut mine.histogram, &interval.histogram),
                None => self.intervals.push(interval.clone()),
            }
        }
        self.intervals.sort_by_key(|i| i.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::Reason;

    #[test]
    fn merges_and_survives_json() {
        let mut a = Tally::new(2, true);
        a.established = 3;
        a.failures.add(Reason::Refused);
        a.record_latency(1_000);
        a.roll_interval(2 * INTERVAL_NS + 5, 0);
        a.record_latency(2_000);
        a.finish_intervals();
        a.fanout.published[1] = 10;
        a.fanout.subscribers[1] = 2;
        a.fanout.delivered[1] = 19;
        a.rounds.record(Stamp::published(500, 0, 1), 30);
        a.rounds.record(Stamp::published(100, 0, 0), 20);
        a.rounds.record(Stamp::published(500, 0, 1), 10);
        a.storm.dropped = 4;
        a.storm.ns = 7;
        a.close.ns = 3;
        let json = serde_json::to_string(&a).unwrap();
        let b: Tally = serde_json::from_str(&json).unwrap();
        let mut total = Tally::new(2, false);
        total.merge(&a);
        total.merge(&b);
        assert_eq!(total.established, 6);
        assert_eq!(total.failures.total(), 2);
        assert_eq!(total.latency.len(), 4);
        assert_eq!(
            total
                .intervals
                .iter()
                .map(|i| (i.index, i.histogram.len()))
                .collect::<Vec<_>>(),
            [(0, 2), (2, 2)]
        );
        assert_eq!(a.fanout.missing(), 1);
        // Merged: 20 published to each of 4 subscribers, 38 delivered.
        assert_eq!(total.fanout.missing(), 42);
        let first = Round {
            seq: Stamp::published(100, 0, 0).seq,
            sent_ns: 100,
            deliveries: 2,
            first_ns: 20,
            last_ns: 20,
        };
        let second = Round {
            seq: Stamp::published(500, 0, 1).seq,
            sent_ns: 500,
            deliveries: 4,
            first_ns: 10,
            last_ns: 30,
        };
        assert_eq!(
            total.rounds.list,
            [first, second],
            "merged and in send order"
        );
        assert_eq!((total.storm.dropped, total.storm.ns), (8, 7));
        assert_eq!(total.close.ns, 3);
    }

    #[test]
    fn rounds_are_bounded() {
        let mut rounds = Rounds::default();
        for count in 0..MAX_ROUNDS as u64 + 5 {
            rounds.record(Stamp::published(count, 1, count), 1);
        }
        rounds.record(Stamp::published(0, 1, 0), 9);
        assert_eq!(rounds.list.len(), MAX_ROUNDS);
        assert_eq!(rounds.untracked, 5);
        assert_eq!((rounds.list[0].deliveries, rounds.list[0].last_ns), (2, 9));
    }
}
