//! Hashed timer wheel for one reactor thread.
//!
//! The reactor uses it for every per-connection deadline: handshake timeouts, ping
//! intervals, pong deadlines, idle timeouts and close-handshake timeouts, for up to
//! hundreds of thousands of connections at once. Those timers are armed and
//! cancelled far more often than they fire, so insert and cancel are O(1) and
//! allocation-free in steady state, and expiry costs O(1) per fired timer plus a
//! bitmap-guided walk of the slots whose tick has passed (which also steps over
//! timers due in a later rotation, once per rotation each).
//!
//! Layout: time is cut into ticks of a fixed resolution; tick `n` hashes to slot
//! `n % slots`. Each slot is an intrusive doubly linked list threaded through nodes
//! that live in one [`Slab`], linked by `u32` indices, so a node costs 16 bytes plus
//! the value, 4-byte aligned (20 bytes for `T = u32`, 24 bytes per slab slot once the slab's tag is
//! added). A timer further out than one rotation stays in its slot and is skipped
//! until its absolute tick, stored in the node, comes round. An occupancy bitmap
//! with one bit per slot lets the wheel jump over empty slots when polling and when
//! computing how long the event loop may sleep. No locks, no threads: the wheel
//! belongs to the reactor thread that owns the connections.

use std::time::{Duration, Instant};

use slab::Slab;

/// End-of-list marker for the intrusive links.
const NIL: u32 = u32::MAX;

/// Handle to a scheduled timer, for cancelling it.
///
/// Keys are reused once their timer has fired or been cancelled, so a caller keeps a
/// key only while its timer is pending.
///
/// Stored inverted (`!index`, never zero since an index is below [`NIL`]), so that
/// `Option<TimerKey>` is 4 bytes: a connection's timer slot costs no tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerKey(std::num::NonZeroU32);

impl TimerKey {
    fn new(index: u32) -> TimerKey {
        TimerKey(std::num::NonZeroU32::new(!index).expect("an index is below NIL"))
    }

    fn index(self) -> u32 {
        !self.0.get()
    }
}

/// One pending timer.
struct Node<T> {
    /// Absolute expiry tick as two `u32` halves (low, high) rather than a `u64`: that
    /// keeps the node 4-byte aligned, so with `T = u32` it is 20 bytes and its slab
    /// slot, tag included, 24 instead of 32.
    expiry: [u32; 2],
    next: u32,
    prev: u32,
    value: T,
}

impl<T> Node<T> {
    fn expiry(&self) -> u64 {
        u64::from(self.expiry[0]) | (u64::from(self.expiry[1]) << 32)
    }
}

/// A hashed timer wheel holding values of type `T` until their deadline passes.
///
/// Time only moves forward through [`poll_expired`](Self::poll_expired): the `now`
/// passed to successive calls must not go backwards (a monotonic clock).
pub(crate) struct TimerWheel<T> {
    start: Instant,
    tick_nanos: u128,
    nodes: Slab<Node<T>>,
    /// List head per slot; the length is a power of two.
    heads: Vec<u32>,
    /// One bit per slot, set while that slot's list is non-empty.
    occupied: Vec<u64>,
    /// Timers found due but not yet handed out by `poll_expired`.
    ready: u32,
    /// First tick not yet swept. Every timer still in a slot expires at or after it.
    cursor: u64,
    /// Latest `now` seen by `poll_expired`: a deadline at or before it is already due.
    polled_until: Instant,
}

impl<T> TimerWheel<T> {
    /// Creates an empty wheel.
    ///
    /// `start` is the wheel's time origin (instants before it count as `start`);
    /// `tick` its resolution; `slots` is rounded up to a power of two. One rotation,
    /// `slots * tick`, should cover the common timeouts, since a timer further out is
    /// stepped over once per rotation.
    ///
    /// # Panics
    ///
    /// If `tick` is zero.
    pub(crate) fn new(start: Instant, tick: Duration, slots: usize) -> Self {
        assert!(!tick.is_zero(), "timer wheel tick must be non-zero");
        let slots = slots.max(1).next_power_of_two();
        TimerWheel {
            start,
            tick_nanos: tick.as_nanos(),
            nodes: Slab::new(),
            heads: vec![NIL; slots],
            occupied: vec![0; slots.div_ceil(64)],
            ready: NIL,
            cursor: 0,
            polled_until: start,
        }
    }

    /// Schedules `value` to fire at `deadline`.
    ///
    /// It never fires earlier. The deadline is rounded up to a tick, except that a
    /// deadline at or before the latest `now` already polled (or before the wheel's
    /// start) is due at once and fires at the next poll.
    ///
    /// # Panics
    ///
    /// If more than `u32::MAX - 1` timers are pending at once.
    pub(crate) fn insert(&mut self, deadline: Instant, value: T) -> TimerKey {
        let tick = self.tick_ceil(deadline);
        let entry = self.nodes.vacant_entry();
        let key = match u32::try_from(entry.key()) {
            Ok(key) if key != NIL => key,
            _ => panic!("timer wheel is full"),
        };
        entry.insert(Node {
            // Truncation is the point: the halves are reassembled by `Node::expiry`.
            expiry: [tick as u32, (tick >> 32) as u32],
            next: NIL,
            prev: NIL,
            value,
        });
        if deadline <= self.polled_until {
            // Its tick may already have been swept; the ready list is checked first.
            self.push_ready(key);
        } else {
            let slot = self.slot_of(tick);
            let head = self.heads[slot];
            self.nodes[key as usize].next = head;
            if head != NIL {
                self.nodes[head as usize].prev = key;
            }
            self.heads[slot] = key;
            self.occupied[slot / 64] |= 1 << (slot % 64);
        }
        TimerKey::new(key)
    }

    /// Removes a pending timer and returns its value.
    ///
    /// Returns `None` if it already fired or was cancelled (keys may be reused after
    /// that, so callers keep a key only while it is pending).
    pub(crate) fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let key = key.index();
        let node = self.nodes.try_remove(key as usize)?;
        if node.prev != NIL {
            self.nodes[node.prev as usize].next = node.next;
        } else if self.ready == key {
            self.ready = node.next;
        } else {
            let slot = self.slot_of(node.expiry());
            self.heads[slot] = node.next;
            if node.next == NIL {
                self.occupied[slot / 64] &= !(1 << (slot % 64));
            }
        }
        if node.next != NIL {
            self.nodes[node.next as usize].prev = node.prev;
        }
        Some(node.value)
    }

    /// Pops one timer whose deadline is `<= now`, or `None`. Call in a loop until `None`.
    ///
    /// Ticks are swept in order, so earlier ticks normally come out first; the order
    /// is unspecified within a tick, after a jump of more than one rotation, and for
    /// timers that were inserted already due.
    pub(crate) fn poll_expired(&mut self, now: Instant) -> Option<T> {
        self.polled_until = self.polled_until.max(now);
        let now_tick = self.tick_floor(now);
        while self.ready == NIL && self.cursor <= now_tick {
            let behind = now_tick - self.cursor;
            if behind >= self.heads.len() as u64 {
                // A rotation or more has passed: visiting every slot once moves every
                // due timer, so a long sleep costs one rotation, not millions of ticks.
                self.sweep_all(now_tick);
                self.cursor = now_tick + 1;
            } else {
                match self.distance_to_occupied(self.cursor) {
                    Some(ahead) if ahead <= behind => {
                        let tick = self.cursor + ahead;
                        // Less than a rotation is being swept, so the slot's due timers
                        // are exactly those of `tick`; later rotations stay put.
                        self.sweep(self.slot_of(tick), now_tick);
                        self.cursor = tick + 1;
                    }
                    _ => self.cursor = now_tick + 1,
                }
            }
        }
        self.pop_ready()
    }

    /// How long the event loop may sleep before [`poll_expired`](Self::poll_expired)
    /// can return something.
    ///
    /// `None` if the wheel is empty, else the time until the earliest occupied tick
    /// (`Duration::ZERO` if something is already due). It may be earlier than the true
    /// deadline (a slot holding only timers of later rotations counts as occupied),
    /// never later. Costs one scan of the occupancy bitmap, at most `slots / 64` words.
    pub(crate) fn next_wakeup(&self, now: Instant) -> Option<Duration> {
        if self.nodes.is_empty() {
            return None;
        }
        if self.ready != NIL {
            return Some(Duration::ZERO);
        }
        // Every slotted timer expires at or after the cursor, and its slot lies at most
        // that many ticks ahead of it, so the first occupied slot bounds the earliest.
        let tick = self.cursor + self.distance_to_occupied(self.cursor)?;
        let due_nanos = u64::try_from(u128::from(tick) * self.tick_nanos).unwrap_or(u64::MAX);
        let elapsed = now.saturating_duration_since(self.start);
        Some(Duration::from_nanos(due_nanos).saturating_sub(elapsed))
    }

    /// Number of pending timers.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no timer is pending.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The last tick that has fully started at `t`.
    fn tick_floor(&self, t: Instant) -> u64 {
        let nanos = t.saturating_duration_since(self.start).as_nanos();
        u64::try_from(nanos / self.tick_nanos).unwrap_or(u64::MAX)
    }

    /// The first tick starting at or after `t`.
    fn tick_ceil(&self, t: Instant) -> u64 {
        let nanos = t.saturating_duration_since(self.start).as_nanos();
        u64::try_from(nanos.div_ceil(self.tick_nanos)).unwrap_or(u64::MAX)
    }

    fn slot_of(&self, tick: u64) -> usize {
        // The slot count is a power of two, so masking is `tick % slots`.
        (tick & (self.heads.len() as u64 - 1)) as usize
    }

    /// Ticks from `from` to the first occupied slot, wrapping round the wheel once;
    /// `None` if every slot is empty.
    fn distance_to_occupied(&self, from: u64) -> Option<u64> {
        let origin = self.slot_of(from);
        let words = self.occupied.len();
        let mut word = origin / 64;
        let mut bits = self.occupied[word] & (u64::MAX << (origin % 64));
        // The origin word is read twice: first its bits from the origin up, last
        // (after wrapping) the bits below the origin, which are the farthest ahead.
        for _ in 0..=words {
            if bits != 0 {
                let slot = word * 64 + bits.trailing_zeros() as usize;
                return Some((slot.wrapping_sub(origin) & (self.heads.len() - 1)) as u64);
            }
            word = (word + 1) % words;
            bits = self.occupied[word];
        }
        None
    }

    fn sweep_all(&mut self, now_tick: u64) {
        for word in 0..self.occupied.len() {
            // A copy: sweeping clears bits of the live word.
            let mut bits = self.occupied[word];
            while bits != 0 {
                self.sweep(word * 64 + bits.trailing_zeros() as usize, now_tick);
                bits &= bits - 1;
            }
        }
    }

    /// Moves the timers of `slot` that expire at or before `now_tick` to the ready list.
    fn sweep(&mut self, slot: usize, now_tick: u64) {
        let mut key = self.heads[slot];
        while key != NIL {
            let node = &self.nodes[key as usize];
            let (next, prev) = (node.next, node.prev);
            if node.expiry() <= now_tick {
                if prev == NIL {
                    self.heads[slot] = next;
                } else {
                    self.nodes[prev as usize].next = next;
                }
                if next != NIL {
                    self.nodes[next as usize].prev = prev;
                }
                self.push_ready(key);
            }
            key = next;
        }
        if self.heads[slot] == NIL {
            self.occupied[slot / 64] &= !(1 << (slot % 64));
        }
    }

    fn push_ready(&mut self, key: u32) {
        let head = self.ready;
        let node = &mut self.nodes[key as usize];
        node.prev = NIL;
        node.next = head;
        if head != NIL {
            self.nodes[head as usize].prev = key;
        }
        self.ready = key;
    }

    fn pop_ready(&mut self) -> Option<T> {
        if self.ready == NIL {
            return None;
        }
        let node = self.nodes.remove(self.ready as usize);
        self.ready = node.next;
        if node.next != NIL {
            self.nodes[node.next as usize].prev = NIL;
        }
        Some(node.value)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    const TICK: Duration = Duration::from_millis(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn drain<T>(wheel: &mut TimerWheel<T>, now: Instant) -> Vec<T> {
        std::iter::from_fn(|| wheel.poll_expired(now)).collect()
    }

    fn sorted(mut v: Vec<u32>) -> Vec<u32> {
        v.sort_unstable();
        v
    }

    #[test]
    fn node_is_small() {
        assert_eq!(size_of::<Node<u32>>(), 20);
        assert!(size_of::<Node<u64>>() <= 24);
        // Same shape as slab's private entry type: what one timer really occupies.
        #[allow(dead_code)]
        enum SlabEntry<T> {
            Vacant(usize),
            Occupied(T),
        }
        assert_eq!(size_of::<SlabEntry<Node<u32>>>(), 24);
    }

    #[test]
    fn insert_cancel_expire() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0, TICK, 64);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_wakeup(t0), None);
        let a = wheel.insert(t0 + ms(30), 1);
        let b = wheel.insert(t0 + ms(30), 2);
        wheel.insert(t0 + ms(50), 3);
        assert_eq!(wheel.len(), 3);
        assert_eq!(wheel.cancel(b), Some(2));
        assert_eq!(wheel.cancel(b), None);
        assert_eq!(wheel.len(), 2);
        assert_eq!(drain(&mut wheel, t0 + ms(29)), Vec::<u32>::new());
        assert_eq!(drain(&mut wheel, t0 + ms(30)), vec![1]);
        assert_eq!(wheel.cancel(a), None, "cancel after fire");
        assert_eq!(drain(&mut wheel, t0 + ms(45)), Vec::<u32>::new());
        assert_eq!(drain(&mut wheel, t0 + ms(60)), vec![3]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_wakeup(t0 + ms(60)), None);
    }

    #[test]
    fn cancel_each_list_position() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0, TICK, 8);
        // Same slot (ticks 3, 11, 19), so cancels hit head, middle and tail.
        let keys: Vec<_> = (0..5u32)
            .map(|i| wheel.insert(t0 + ms(30 + 80 * u64::from(i % 3)), i))
            .collect();
        assert_eq!(wheel.cancel(keys[4]), Some(4)); // head
        assert_eq!(wheel.cancel(keys[2]), Some(2)); // middle
        assert_eq!(wheel.cancel(keys[0]), Some(0)); // tail
        assert_eq!(drain(&mut wheel, t0 + ms(30)), vec![3]);
        assert_eq!(drain(&mut wheel, t0 + ms(110)), vec![1]);
        assert_eq!(drain(&mut wheel, t0 + ms(190)), Vec::<u32>::new());
        assert!(wheel.is_empty());
    }

    #[test]
    fn cancel_while_ready() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0, TICK, 8);
        let keys: Vec<_> = (0..3u32).map(|i| wheel.insert(t0 + ms(10), i)).collect();
        let first = wheel.poll_expired(t0 + ms(10)).unwrap();
        let rest: Vec<_> = (0..3u32).filter(|&i| i != first).collect();
        // The others sit in the ready list now; cancelling one must unlink it there.
        assert_eq!(wheel.cancel(keys[rest[0] as usize]), Some(rest[0]));
        assert_eq!(drain(&mut wheel, t0 + ms(10)), vec![rest[1]]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn never_early_and_on_the_first_poll_after_the_rounded_deadline() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0, TICK, 16);
        let deadlines: Vec<Duration> = (0..300u64)
            .map(|i| Duration::from_micros(i * 1_373))
            .collect();
        for (i, &d) in deadlines.iter().enumerate() {
            wheel.insert(t0 + d, i as u32);
        }
        let mut fired = vec![false; deadlines.len()];
        // Poll every 0.7 ms, so polls land at many offsets within each tick.
        for step in 0..=700u64 {
            let now = Duration::from_micros(step * 700);
            while let Some(i) = wheel.poll_expired(t0 + now) {
                let i = i as usize;
                assert!(deadlines[i] <= now, "timer {i} fired early at {now:?}");
                fired[i] = true;
            }
            for (i, &d) in deadlines.iter().enumerate() {
                let rounded = TICK * d.as_nanos().div_ceil(TICK.as_nanos()) as u32;
                assert_eq!(
                    fired[i],
                    rounded <= now,
                    "timer {i} (deadline {d:?}) at {now:?}"
                );
            }
        }
        assert!(wheel.is_empty());
    }

    #[test]
    fn far_future_timers_wait_out_whole_rotations() {
        let t0 = Instant::now();
        // One rotation is 80 ms; these are 12.5 and 37 rotations out.
        let mut wheel = TimerWheel::new(t0, TICK, 8);
        wheel.insert(t0 + ms(1_000), 1);
        wheel.insert(t0 + ms(2_960), 2);
        wheel.insert(t0 + ms(40), 3);
        let mut log = Vec::new();
        for step in 0..=400u64 {
            let now = ms(step * 10);
            for v in drain(&mut wheel, t0 + now) {
                log.push((v, now));
            }
        }
        assert_eq!(log, vec![(3, ms(40)), (1, ms(1_000)), (2, ms(2_960))]);
    }

    #[test]
    fn past_deadlines_fire_at_the_next_poll() {
        let t0 = Instant::now();
        let start = t0 + ms(100);
        let mut wheel = TimerWheel::new(start, TICK, 8);
        wheel.insert(t0, 1); // before the wheel's start
        assert_eq!(wheel.next_wakeup(t0), Some(Duration::ZERO));
        assert_eq!(drain(&mut wheel, t0), vec![1]);
        let now = start + ms(55);
        assert!(drain(&mut wheel, now).is_empty());
        // Inside the current, already swept tick, and in an earlier one.
        wheel.insert(start + ms(52), 2);
        wheel.insert(start + ms(20), 3);
        assert_eq!(wheel.next_wakeup(now), Some(Duration::ZERO));
        assert_eq!(sorted(drain(&mut wheel, now)), vec![2, 3]);
        // Just after the latest poll, it waits for its tick as usual.
        wheel.insert(start + ms(56), 4);
        assert!(drain(&mut wheel, now).is_empty());
        assert!(drain(&mut wheel, start + ms(59)).is_empty());
        assert_eq!(drain(&mut wheel, start + ms(60)), vec![4]);
    }

    #[test]
    fn large_time_jumps() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0, TICK, 64);
        // Spread over an hour: about 560 rotations of 640 ms.
        for i in 0..3_600u32 {
            wheel.insert(t0 + ms(u64::from(i) * 1_000 + 5), i);
        }
        // Jump half way: exactly the first 1800 fire, nothing later.
        let fired = sorted(drain(&mut wheel, t0 + ms(1_800_000)));
        assert_eq!(fired, (0..1_800).collect::<Vec<_>>());
        // Normal ticking afterwards still works, at the exact tick.
        assert!(drain(&mut wheel, t0 + ms(1_800_009)).is_empty());
        assert_eq!(drain(&mut wheel, t0 + ms(1_800_010)), vec![1_800]);
        // A jump far past everything, and a timer armed after it.
        let end = t0 + Duration::from_secs(1_000_000);
        assert_eq!(drain(&mut wheel, end).len(), 1_799);
        assert!(wheel.is_empty());
        wheel.insert(end + ms(25), 7);
        assert_eq!(wheel.next_wakeup(end), Some(ms(30)));
        assert!(drain(&mut wheel, end + ms(29)).is_empty());
        assert_eq!(drain(&mut wheel, end + ms(30)), vec![7]);
    }

    #[test]
    fn partial_polls_resume_in_tick_order() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0, TICK, 64);
        for i in 0..5u32 {
            wheel.insert(t0 + ms(10 * u64::from(i) + 1), i);
        }
        // The loop may stop popping early; the rest stays due.
        assert_eq!(wheel.poll_expired(t0 + ms(100)), Some(0));
        assert_eq!(wheel.poll_expired(t0 + ms(100)), Some(1));
        assert_eq!(drain(&mut wheel, t0 + ms(100)), vec![2, 3, 4]);
    }

    #[test]
    fn next_wakeup_bounds_the_earliest_deadline() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0, TICK, 16);
        wheel.insert(t0 + ms(1_234), 1);
        let now = t0 + ms(3);
        // Its tick is 124, in slot 124 % 16 = 12: the wakeup is conservative, tick 12.
        assert_eq!(wheel.next_wakeup(now), Some(ms(117)));
        wheel.insert(t0 + ms(25), 2);
        assert_eq!(wheel.next_wakeup(now), Some(ms(27)));
        assert_eq!(wheel.next_wakeup(t0 + ms(40)), Some(Duration::ZERO));
        assert_eq!(drain(&mut wheel, t0 + ms(40)), vec![2]);
        // Following the wakeups never overshoots and eventually lands on the deadline.
        let mut now = t0 + ms(40);
        let mut wakeups = 0;
        loop {
            let wait = wheel.next_wakeup(now).unwrap();
            assert!(now + wait <= t0 + ms(1_240));
            now += wait;
            wakeups += 1;
            if let Some(v) = wheel.poll_expired(now) {
                assert_eq!((v, now), (1, t0 + ms(1_240)));
                break;
            }
        }
        // About one wakeup per 160 ms rotation.
        assert!(wakeups <= 10, "{wakeups} wakeups");
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Arm a timer this many µs from the current virtual time (may be negative).
        Insert(i64),
        /// Cancel the key handed out by the n-th insert (modulo their count).
        Cancel(usize),
        /// Advance the virtual clock by this many µs, then pop at most `limit` timers.
        Advance { micros: u64, limit: Option<usize> },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (-30_000i64..3_000_000).prop_map(Op::Insert),
            // Exactly the current time, which the last poll may have reached.
            1 => Just(Op::Insert(0)),
            2 => any::<usize>().prop_map(Op::Cancel),
            3 => (0u64..25_000, proptest::option::weighted(0.2, 1usize..3))
                .prop_map(|(micros, limit)| Op::Advance { micros, limit }),
            1 => (0u64..20_000_000).prop_map(|micros| Op::Advance { micros, limit: None }),
        ]
    }

    /// What the model knows of a pending timer.
    struct Pending {
        id: u32,
        deadline: Instant,
        /// Earliest `now` at which it must have fired.
        due: Instant,
    }

    /// Runs `ops` against the wheel and a naive model of it, in virtual time.
    fn check_against_model(
        tick: Duration,
        slots: usize,
        ops: Vec<Op>,
    ) -> Result<(), TestCaseError> {
        let base = Instant::now();
        // Virtual time begins before the wheel's start, to cover early instants.
        let start = base + ms(20);
        let mut wheel = TimerWheel::new(start, tick, slots);
        let mut now = base;
        let mut polled_until = start;
        let mut keys = Vec::new();
        // Pending timers by key.
        let mut model: HashMap<u32, Pending> = HashMap::new();
        for (id, op) in (0u32..).zip(ops) {
            match op {
                Op::Insert(offset) => {
                    let deadline = if offset < 0 {
                        let back = Duration::from_micros(offset.unsigned_abs());
                        now.checked_sub(back).unwrap_or(base)
                    } else {
                        now + Duration::from_micros(offset.unsigned_abs())
                    };
                    let due = if deadline <= polled_until {
                        base
                    } else {
                        let since_start = deadline.duration_since(start).as_nanos();
                        let ticks = since_start.div_ceil(tick.as_nanos());
                        start + tick * u32::try_from(ticks).unwrap()
                    };
                    let key = wheel.insert(deadline, id);
                    let previous = model.insert(key.index(), Pending { id, deadline, due });
                    prop_assert!(previous.is_none(), "key {} handed out twice", key.index());
                    keys.push(key);
                }
                Op::Cancel(n) => {
                    if keys.is_empty() {
                        continue;
                    }
                    // Possibly a stale key, fired, cancelled or reused since.
                    let key = keys[n % keys.len()];
                    let expected = model.remove(&key.index()).map(|p| p.id);
                    prop_assert_eq!(wheel.cancel(key), expected);
                }
                Op::Advance { micros, limit } => {
                    let earliest = model.values().map(|p| p.due).min();
                    match (wheel.next_wakeup(now), earliest) {
                        (None, None) => {}
                        (Some(wait), Some(due)) => {
                            prop_assert!(now + wait <= due.max(now), "wakeup later than {due:?}");
                        }
                        (wakeup, due) => prop_assert!(false, "wakeup {wakeup:?} vs due {due:?}"),
                    }
                    now += Duration::from_micros(micros);
                    polled_until = polled_until.max(now);
                    let mut popped = 0;
                    while limit.is_none_or(|l| popped < l) {
                        let Some(id) = wheel.poll_expired(now) else {
                            break;
                        };
                        popped += 1;
                        let key = model.iter().find_map(|(k, p)| (p.id == id).then_some(*k));
                        let p = model.remove(&key.unwrap()).unwrap();
                        // Instants before the wheel's start count as the start.
                        prop_assert!(p.deadline.max(start) <= now.max(start), "{id} fired early");
                    }
                    if limit.is_none_or(|l| popped < l) {
                        let missed: Vec<u32> = model
                            .values()
                            .filter(|p| p.due <= now)
                            .map(|p| p.id)
                            .collect();
                        prop_assert!(missed.is_empty(), "due but not fired: {missed:?}");
                    }
                }
            }
            prop_assert_eq!(wheel.len(), model.len());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn matches_naive_model(
            tick_us in prop_oneof![Just(1_000u64), Just(10_000), 1u64..20_000],
            slots in 1usize..300,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            check_against_model(Duration::from_micros(tick_us), slots, ops)?;
        }
    }
}
