//! One reactor: a thread's event loop over its connections, generic over an I/O [`Driver`]
//! (readiness or completion) and the application's [`Handler`].
//!
//! A turn: wait for I/O, let the driver hand what happened to the shared procedures (parse,
//! dispatch, write), drain the inbox (other threads' posts, through `Handler::on_inbox`), fire
//! due timers, then end the turn: every connection that queued bytes during it is moved on
//! once (written, or given one send that goes in with the next wait).

mod bookkeeping;
mod completion;
mod conn;
mod dispatch;
mod driver;
mod lifecycle;
mod local;
mod proxy_header;
mod readiness;
pub(crate) mod tls;
mod write_wait;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub(crate) use completion::CompletionDriver;
pub(crate) use conn::{Conn, ConnFlags, SlabEntry};
pub(crate) use driver::Driver;
pub(crate) use readiness::ReadinessDriver;
pub(crate) use writer::Sink;

use crate::limits::LiveLimits;
#[doc(hidden)]
pub use tls::Pipe;

use crate::mailbox::Mailboxes;
use crate::sys::Reported;
use crate::{Config, Handler, Local, Stats};
use bookkeeping::Core;
use local::LocalConns;
use write_wait::WriteWaits;
use writer::Written;

/// Inbox messages handled per loop turn before connections get a turn.
const MAX_INBOX_PER_TURN: usize = 4096;
/// Connections the end of a turn writes between two looks at what arrived meanwhile
/// ([`Reactor::look_in`]). A fanout to 5,000 takes 10-20 ms to write on one core; a message
/// published meanwhile then joins the queues of those not written yet instead of waiting for
/// the whole list and a write of its own. 512 writes are about 1 ms; a look is one system call.
const WRITES_PER_LOOK: usize = 512;
/// Writes between two reads of the clock for `Stats::write_wait` at the end of a turn on
/// readiness: at 2-4 µs a write, one clock read (about 25 ns) per 64 writes instead of per
/// write, the writes between two reads spread evenly over the time between them. A divisor of
/// [`WRITES_PER_LOOK`]. Completion's sends are timed by the submission that runs them, every
/// [`WRITES_PER_LOOK`] sends and at the turn's end.
const CLOCK_EVERY: usize = 64;
/// Longest pause before waiting again after a transient error of the backend's wait.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// At most one log line per interval for transient wait errors.
const RETRY_LOG_INTERVAL: Duration = Duration::from_secs(5);
/// How far the deadlines may wait behind the clock for a reactor that is not caught up: past
/// it they fire anyway, so a crowd that keeps a reactor busy cannot also keep its handshake
/// slots and dead connections for ever.
const MAX_DEADLINE_LAG: Duration = Duration::from_secs(30);

/// One reactor thread's state.
pub(crate) struct Reactor<D: Driver, H: Handler> {
    driver: D,
    core: Core<D::Socket, H>,
    index: usize,
    mailboxes: Arc<Mailboxes<H::Inbox>>,
    /// The inbox held more than one turn's worth: drain again without waiting.
    inbox_again: bool,
    /// A look during the turn's end listed connections again (bytes queued after their
    /// write): the next turn's end writes them, so the wait before it must not block.
    listed_by_look: bool,
    /// Turns ended so far: where the next turn's end starts writing ([`rotation_start`]).
    turns: u64,
    /// How many connections at the head of the list were listed while the last turn's end
    /// wrote (again, mostly, by its looks' fanouts), in about the order that end wrote them:
    /// the next end writes them first and in that order, so each is written about one list's
    /// writing after its last write.
    carried: usize,
    /// When a wait last reported everything that was ready: deadlines are judged at this time,
    /// not the clock's (see [`Reactor::deadline_horizon`]).
    seen_all_at: Instant,
    /// The shared frames written (or sent) since the clock was last read for `Stats::write_wait`.
    write_waits: WriteWaits,
}

impl<D: Driver, H: Handler> Reactor<D, H> {
    pub(crate) fn new(
        driver: D,
        handler: H,
        config: Arc<Config>,
        stats: Arc<Stats>,
        index: usize,
        mailboxes: Arc<Mailboxes<H::Inbox>>,
        limits: Arc<LiveLimits>,
    ) -> Self {
        Reactor {
            driver,
            core: Core::new(handler, config, stats, limits),
            index,
            mailboxes,
            inbox_again: false,
            listed_by_look: false,
            turns: 0,
            carried: 0,
            seen_all_at: Instant::now(),
            write_waits: WriteWaits::new(WRITES_PER_LOOK),
        }
    }

    /// Up to when deadlines have passed, as far as the peers are concerned: the time of the
    /// last wait that reported everything ready (all of it handled since), at most
    /// [`MAX_DEADLINE_LAG`] behind `now`. A reactor that is itself behind (a fanout to
    /// thousands, a burst of handshakes) has not read what its peers sent meanwhile, a pong or
    /// a request head among it; judged against the clock, they would be blamed for its delay.
    fn deadline_horizon(&self, now: Instant) -> Instant {
        match now.checked_sub(MAX_DEADLINE_LAG) {
            Some(oldest) => self.seen_all_at.max(oldest),
            None => self.seen_all_at,
        }
        .min(now)
    }

    /// Runs until the drain after `shutdown` is done, or the backend fails for good: then the
    /// reactor's `failed` stat is set, an error is logged, and its connections are dropped.
    pub(crate) fn run(mut self, shutdown: &AtomicBool) {
        let mut retry = Retry::default();
        loop {
            let now = Instant::now();
            self.fire_timers(self.deadline_horizon(now), now);
            if shutdown.load(Ordering::Relaxed) && self.core.drain_deadline.is_none() {
                self.begin_drain(now);
            }
            self.end_turn(now);
            // Every event of the last batch is handled: tokens released since can be reused.
            self.core.free_retired();
            if self.core.sweep_due(now) {
                self.sweep(now);
            }
            if let Some(deadline) = self.core.drain_deadline
                && (self.core.conns.is_empty() || now >= deadline)
            {
                break;
            }
            if self
                .core
                .accept_paused_until
                .is_some_and(|until| now >= until)
            {
                self.core.accept_paused_until = None;
                self.driver.resume_accepting();
            }
            self.core.publish_stats(self.driver.socket_writes());
            let timeout = if self.inbox_again || self.listed_by_look {
                Some(Duration::ZERO)
            } else {
                self.core.wait_timeout(now)
            };
            let reported = match self.driver.wait(&mut self.core.conns, timeout) {
                Ok(reported) => reported,
                Err(e) => {
                    if retry.again(&e, &self.core.stats, self.index) {
                        continue;
                    }
                    tracing::error!(
                        reactor = self.index,
                        "reactor stopped: its backend failed ({e}); its connections are dropped"
                    );
                    self.core.stats.failed.store(true, Ordering::Relaxed);
                    break;
                }
            };
            retry.reset();
            let now = Instant::now();
            if reported == Reported::All {
                // Handled by the next turn's deadlines: dispatch comes first.
                self.seen_all_at = now;
            }
            D::dispatch(&mut self, now);
            self.drain_inbox(now);
        }
        let now = Instant::now();
        let tokens: Vec<usize> = self.core.conns.iter().map(|(token, _)| token).collect();
        for token in tokens {
            self.drop_conn(token, now);
        }
        self.core.free_retired();
        // Queues a completion backend may still read from are leaked, not freed under it.
        for conn in self.core.conns.drain() {
            self.core.limits.release();
            std::mem::forget(conn.tx);
        }
        self.core.tls.leak_queues();
        self.core.publish_stats(self.driver.socket_writes());
    }

    /// A step of the periodic walk of the table (see [`Core::sweep`]), then the I/O
    /// bookkeeping of the connections the handler wrote to or closed during it; once the walk
    /// is done, the connections stalled past the write timeout are dropped.
    fn sweep(&mut self, now: Instant) {
        let done = self.core.sweep(self.driver.writing(), now);
        let mut swept = std::mem::take(&mut self.core.swept);
        for &(token, written) in &swept {
            self.after_io(token, written, now);
        }
        swept.clear();
        self.core.swept = swept;
        if done {
            self.stalled_out(now);
        }
    }

    /// Hands posted messages to the handler; the frames it queues go out at the turn's end.
    fn drain_inbox(&mut self, now: Instant) {
        self.mailboxes.rearm(self.index);
        // The wait's clock, `now`, is older by the dispatch of what it reported.
        let queued_at = Instant::now();
        let mut handled = 0;
        while handled < MAX_INBOX_PER_TURN {
            let Some(message) = self.mailboxes.take(self.index) else {
                break;
            };
            let Core {
                handler,
                conns,
                tx_pool,
                timers,
                dirty,
                limits,
                tls,
                ..
            } = &mut self.core;
            let mut ops = LocalConns {
                conns,
                tx_pool,
                writing: self.driver.writing(),
                timers,
                dirty,
                low_mark: limits.max_queued_bytes() / 2,
                tls,
                queued_at,
            };
            handler.on_inbox(&mut Local { ops: &mut ops, now }, message);
            handled += 1;
        }
        self.inbox_again = handled == MAX_INBOX_PER_TURN;
    }

    /// The turn's end: each connection that queued bytes during the turn is moved on once, so a
    /// subscriber behind on several messages gets them in one write (or one send). The list is
    /// written from a different place each turn, so the same subscribers of a large fanout are
    /// not always the last ones written (those wait the whole list's writing, milliseconds for
    /// thousands); except its head, those the last turn's end listed again while it wrote
    /// (`carried`), which go first and in the order they were written. Under a sustained
    /// fanout, where each end of turn writes everyone, this keeps every subscriber's writes
    /// one list's writing apart: rotated, a subscriber written first in one end and last in
    /// the next would wait two, and a message published just after its write would too.
    fn end_turn(&mut self, now: Instant) {
        // Only those listed before: a handler that asks for `on_writable` again from it, with
        // nothing queued, is told next turn rather than in a loop.
        let listed = self.core.dirty.len();
        let carried = self.carried.min(listed);
        self.listed_by_look = false;
        let start = rotation_start(self.turns, listed - carried);
        self.turns = self.turns.wrapping_add(1);
        // Where the writes since the last close of `write_waits` began (readiness).
        let mut batch = now;
        for next in 0..listed {
            if next > 0 && next % WRITES_PER_LOOK == 0 {
                self.writes_taken(batch);
                self.look_in();
                batch = Instant::now();
            } else if !D::SENDS_AT_SUBMIT && next > 0 && next % CLOCK_EVERY == 0 {
                batch = self.writes_taken(batch);
            }
            let token = self.core.dirty[rotated(next, start, carried, listed)];
            let Some(conn) = self.core.conns.get_mut(token) else {
                continue;
            };
            conn.flags.remove(conn::ConnFlags::DIRTY);
            if let Some(queue) = conn.tx.as_deref_mut()
                && !queue.is_sending()
                && let Some(since) = queue.take_shared_since()
            {
                self.write_waits.made(since);
            }
            self.flush(token, now);
            self.after_io(token, Written::Done, now);
            self.after_flush(token, now);
        }
        self.writes_taken(batch);
        self.core.dirty.drain(..listed);
        self.carried = self.core.dirty.len();
    }

    /// For `Stats::write_wait`: the writes made since `batch` (readiness) are done; the sends
    /// prepared since the last submission (completion) are submitted now, so that the kernel
    /// runs them between two reads of the clock. Returns the time the batch closed.
    fn writes_taken(&mut self, batch: Instant) -> Instant {
        if self.write_waits.is_empty() {
            return batch;
        }
        let start = if D::SENDS_AT_SUBMIT {
            let start = Instant::now();
            // A failed submission is left to the next wait, which meets the same error.
            let _ = self.driver.submit();
            start
        } else {
            batch
        };
        let end = Instant::now();
        let histogram = &self.core.stats.write_wait;
        self.write_waits.taken(start, end, histogram);
        end
    }

    /// In the middle of a long end of turn: what arrived since the turn's wait, handled as a
    /// turn would (on io_uring this also submits the sends queued so far). What it queues for a
    /// connection listed but not written yet goes out with that connection's write; for one
    /// already written, it is listed again, for the next turn. A failed look is left to the
    /// next wait, which meets the same error and decides. Those listed again make the next
    /// wait a look too (`listed_by_look`): a message published during the last fanout of a
    /// burst must not wait in their queues for whatever wakes the reactor next.
    fn look_in(&mut self) {
        if self
            .driver
            .wait(&mut self.core.conns, Some(Duration::ZERO))
            .is_err()
        {
            return;
        }
        let before = self.core.dirty.len();
        let now = Instant::now();
        D::dispatch(self, now);
        self.drain_inbox(now);
        self.listed_by_look |= self.core.dirty.len() > before;
    }
}

/// Retries of the backend's wait after transient errors (interrupted, busy, out of memory or
/// buffers for now), with a growing pause; any other error stops the reactor.
#[derive(Debug, Default)]
struct Retry {
    pause: Duration,
    logged_at: Option<Instant>,
}

impl Retry {
    /// Whether `error` is worth waiting again for (after a pause); counted in `wait_retries`.
    fn again(&mut self, error: &std::io::Error, stats: &Stats, reactor: usize) -> bool {
        if !is_transient(error) {
            return false;
        }
        Stats::bump(&stats.wait_retries);
        let now = Instant::now();
        if self
            .logged_at
            .is_none_or(|at| now >= at + RETRY_LOG_INTERVAL)
        {
            tracing::warn!(reactor, "reactor wait failed, retrying: {error}");
            self.logged_at = Some(now);
        }
        self.pause = (self.pause * 2).clamp(Duration::from_millis(1), MAX_RETRY_PAUSE);
        std::thread::sleep(self.pause);
        true
    }

    fn reset(&mut self) {
        self.pause = Duration::ZERO;
    }
}

/// Errors a wait (or the submission that goes with it) may meet and get past by trying again.
fn is_transient(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY | libc::ENOMEM | libc::ENOBUFS | libc::ETIME)
    )
}

/// Where the end of turn `turn` starts in its list of `len` connections: the fractional part
/// of `turn` times the golden ratio, scaled to `len`, which spreads the starts evenly over the
/// list for any length (each place equally often over many turns, never two turns in a row
/// close together).
fn rotation_start(turn: u64, len: usize) -> usize {
    // 2^64 / golden ratio: the top 32 bits of the product are frac(turn × φ) in 32-bit fixed point.
    let fraction = turn.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    ((fraction * len as u64) >> 32) as usize
}

/// The index of the `i`th connection to write in a list of which the first `listed` are
/// written thus: the first `head` in order, then the rest from `head + start` on, wrapping
/// around to `head`; any added while writing come after, in order.
fn rotated(i: usize, start: usize, head: usize, listed: usize) -> usize {
    // A wrap by subtraction, not a division per connection written (head + start < listed).
    match i < listed {
        true if i < head => i,
        true if start + i >= listed => start + i - (listed - head),
        true => start + i,
        false => i,
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::net::TcpStream;
    use std::sync::atomic::AtomicUsize;

    use clarion_protocol::MessageKind;
    use clarion_protocol::handshake::Request;

    use super::*;
    use crate::sys::{Flushed, Wake, Waker};
    use crate::txqueue::TxQueue;
    use crate::{Answer, Ctx, LiveLimits, RequestInfo};

    /// A backend whose waits fail as scripted, whose next dispatch lists `lists` (as a
    /// fanout would), and that has nothing else to do.
    struct Scripted {
        waits: Vec<io::Result<()>>,
        called: Arc<AtomicUsize>,
        writing: writer::Queued,
        lists: Vec<usize>,
    }

    struct NoWake;

    impl Wake for NoWake {
        fn wake(&self) {}
    }

    impl Driver for Scripted {
        type Socket = TcpStream;
        type Writing = writer::Queued;
        const SENDS_AT_SUBMIT: bool = true;

        fn writing(&mut self) -> &mut writer::Queued {
            &mut self.writing
        }

        fn wait(
            &mut self,
            _sockets: &mut impl crate::sys::completion::Sockets<TcpStream>,
            _timeout: Option<Duration>,
        ) -> std::io::Result<Reported> {
            self.called.fetch_add(1, Ordering::Relaxed);
            if self.waits.is_empty() {
                Ok(Reported::All)
            } else {
                self.waits.remove(0).map(|()| Reported::All)
            }
        }

        fn dispatch<H: Handler>(reactor: &mut Reactor<Self, H>, _now: Instant) {
            let lists = std::mem::take(&mut reactor.driver.lists);
            reactor.core.dirty.extend(lists);
        }

        fn register(&mut self, _socket: &mut TcpStream, _token: usize) -> io::Result<()> {
            Ok(())
        }

        fn refuse(&mut self, _socket: TcpStream) {}

        fn submit(&mut self) -> io::Result<()> {
            Ok(())
        }

        fn flush(
            &mut self,
            _token: usize,
            _socket: &mut TcpStream,
            _queue: &mut TxQueue,
        ) -> io::Result<Flushed> {
            Ok(Flushed::Done)
        }

        fn shutdown_write(&mut self, _token: usize, _socket: &mut TcpStream) {}

        fn pause_reading(&mut self, _token: usize, _socket: &mut TcpStream) {}

        fn resume_reading(&mut self, _token: usize, _socket: &mut TcpStream) {}

        fn close(&mut self, _token: usize, _socket: &mut TcpStream) -> bool {
            true
        }

        fn resume_accepting(&mut self) {}

        fn stop_accepting(&mut self) {}

        fn waker(&self) -> Waker {
            Arc::new(NoWake)
        }

        fn socket_writes(&self) -> u64 {
            0
        }
    }

    struct Nothing;

    impl Handler for Nothing {
        type Conn = ();
        type Inbox = ();

        fn on_request<'r>(
            &mut self,
            _request: &Request<'r>,
            _body: &[u8],
            _info: &RequestInfo,
        ) -> Answer<'r, ()> {
            unreachable!("no connection is ever accepted")
        }

        fn on_message(&mut self, _ctx: &mut Ctx<'_, ()>, _kind: MessageKind, _payload: &[u8]) {}
    }

    fn errno(code: i32) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(code))
    }

    #[test]
    fn transient_wait_errors_are_retried_and_a_lasting_one_stops_the_reactor_marked_failed() {
        let called = Arc::new(AtomicUsize::new(0));
        let driver = Scripted {
            waits: vec![
                errno(libc::EINTR),
                errno(libc::ENOMEM),
                errno(libc::EBUSY),
                Ok(()),
                errno(libc::EBADF),
                Ok(()),
            ],
            called: called.clone(),
            writing: writer::Queued,
            lists: Vec::new(),
        };
        let stats = Arc::new(Stats::default());
        let reactor = Reactor::new(
            driver,
            Nothing,
            Arc::new(Config::default()),
            stats.clone(),
            0,
            Arc::new(Mailboxes::new(1)),
            Arc::new(LiveLimits::default()),
        );
        // Returns (rather than waiting forever for a shutdown) once the wait fails for good.
        reactor.run(&AtomicBool::new(false));
        assert_eq!(
            called.load(Ordering::Relaxed),
            5,
            "the lasting error ends it"
        );
        assert_eq!(stats.wait_retries.load(Ordering::Relaxed), 3);
        assert!(stats.failed.load(Ordering::Relaxed));
    }

    #[test]
    fn a_long_end_of_turn_looks_in_every_512_writes_and_carries_what_the_looks_listed() {
        let called = Arc::new(AtomicUsize::new(0));
        let driver = Scripted {
            waits: Vec::new(),
            called: called.clone(),
            writing: writer::Queued,
            lists: Vec::new(),
        };
        let mut reactor = Reactor::new(
            driver,
            Nothing,
            Arc::new(Config::default()),
            Arc::new(Stats::default()),
            0,
            Arc::new(Mailboxes::new(1)),
            Arc::new(LiveLimits::default()),
        );
        // Listed tokens without a connection: skipped, but each is a place in the list.
        reactor.core.dirty.extend(0..WRITES_PER_LOOK);
        reactor.end_turn(Instant::now());
        assert_eq!(called.load(Ordering::Relaxed), 0, "one look's worth: none");
        // A look lists three again (a fanout to some already written): carried to the next
        // turn's end, at the head of its list.
        reactor.driver.lists = vec![9000, 9001, 9002];
        reactor.core.dirty.extend(0..2 * WRITES_PER_LOOK + 1);
        reactor.end_turn(Instant::now());
        assert_eq!(called.load(Ordering::Relaxed), 2, "after 512 and 1,024");
        assert_eq!(reactor.core.dirty, [9000, 9001, 9002]);
        assert_eq!(reactor.carried, 3);
        assert!(reactor.listed_by_look);
        reactor.core.dirty.extend(0..5);
        reactor.end_turn(Instant::now());
        assert!(reactor.core.dirty.is_empty());
        assert_eq!(reactor.carried, 0, "nothing listed while writing");
    }

    #[test]
    fn what_a_wait_may_get_past() {
        for code in [
            libc::EINTR,
            libc::EAGAIN,
            libc::EBUSY,
            libc::ENOMEM,
            libc::ENOBUFS,
        ] {
            assert!(is_transient(&io::Error::from_raw_os_error(code)), "{code}");
        }
        for code in [libc::EBADF, libc::EINVAL, libc::EFAULT, libc::ENXIO] {
            assert!(!is_transient(&io::Error::from_raw_os_error(code)), "{code}");
        }
        assert!(!is_transient(&io::Error::other("no errno")));
    }

    #[test]
    fn a_rotated_list_visits_its_head_in_order_then_the_rest_once_then_what_was_added() {
        for listed in [1_usize, 2, 7, 64] {
            for head in [0, 1, listed / 2, listed - 1, listed] {
                let rest = listed - head;
                for start in [0, 1, rest / 2, rest.saturating_sub(1)]
                    .into_iter()
                    .filter(|&s| s < rest.max(1))
                {
                    let order: Vec<usize> = (0..listed + 3)
                        .map(|i| rotated(i, start, head, listed))
                        .collect();
                    let case = format!("{listed} from {start} after {head}");
                    assert_eq!(order[..head], (0..head).collect::<Vec<_>>(), "{case}");
                    if head < listed {
                        assert_eq!(order[head], head + start, "{case}");
                    }
                    let mut seen = order[..listed].to_vec();
                    seen.sort_unstable();
                    assert_eq!(seen, (0..listed).collect::<Vec<_>>(), "{case}");
                    assert_eq!(order[listed..], [listed, listed + 1, listed + 2]);
                }
            }
        }
    }

    #[test]
    fn the_start_moves_every_turn_and_covers_the_list_evenly() {
        // 5,000 subscribers over 1,000 turns: a different last one every turn.
        let last: std::collections::HashSet<usize> = (0..1000)
            .map(|turn| (rotation_start(turn, 5000) + 4999) % 5000)
            .collect();
        assert_eq!(last.len(), 1000);
        // Ten places over 1,000 turns: each the start 100 ± 1 times.
        let mut starts = [0; 10];
        for turn in 0..1000 {
            starts[rotation_start(turn, 10)] += 1;
        }
        assert!(
            starts.iter().all(|&n| (99..=101).contains(&n)),
            "{starts:?}"
        );
        assert_eq!(rotation_start(12345, 0), 0, "an empty list");
        assert!((0..1000).all(|turn| rotation_start(turn, 3) < 3));
    }
}
