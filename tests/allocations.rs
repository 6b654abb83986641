//! Fanout allocates per message, never per subscriber: once a reactor has served a message to
//! its subscribers, the next messages reuse the write queues it lent them; and an idle stream
//! subscriber holds no more heap than an idle WebSocket one (counted with a global allocator
//! that ignores the test's own thread).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use common::*;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Bytes allocated and not yet freed by the server's threads.
static LIVE: AtomicI64 = AtomicI64::new(0);

/// The counters are the process's: one test counts at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

thread_local! {
    /// Set on the test's thread: its clients and checks allocate freely.
    static IGNORED: Cell<bool> = const { Cell::new(false) };
}

fn counted() -> bool {
    !IGNORED.try_with(Cell::get).unwrap_or(true)
}

fn count(bytes: isize) {
    if counted() {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(bytes as i64, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on to the system allocator unchanged; counting touches only an
// atomic and a const-initialised thread-local without a destructor, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counted() {
            LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn subscribe(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = tcp(addr);
    stream.write_all(&upgrade_request(path)).unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

fn publish(addr: SocketAddr, payload: &str) {
    let request = format!(
        "POST /publish/alloc HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    let answer = http(addr, request.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
}

fn expect_message(subscribers: &mut [TcpStream], payload: &str) {
    for stream in subscribers {
        let (fin, opcode, bytes) = read_frame(stream).expect("a delivery");
        assert_eq!(
            (fin, opcode, bytes.as_slice()),
            (true, 1, payload.as_bytes())
        );
    }
}

#[test]
fn fanout_reuses_write_queues_instead_of_allocating_per_subscriber() {
    // More subscribers on one reactor than its pool keeps regardless of use (64).
    const SUBSCRIBERS: usize = 3_000;
    const MESSAGES: usize = 21;
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    IGNORED.with(|ignored| ignored.set(true));
    let runtime = start_app(|config| config.threads = 1, app());
    let addr = runtime.local_addr();
    let mut subscribers: Vec<TcpStream> = (0..SUBSCRIBERS)
        .map(|_| subscribe(addr, "/t/alloc"))
        .collect();

    // Warm-up. The first message lends a queue to every subscriber; a message published while
    // the last one is still being written joins the queues of the subscribers not written yet,
    // which then grow room for both (and, on io_uring, a copy buffer). Each queue grows so a
    // few times, once, and the pool keeps it as grown.
    let warm = paced(addr, &mut subscribers[0], "warm", MESSAGES);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let counted = paced(addr, &mut subscribers[0], "counted", MESSAGES);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    // The others read only now, so that both rounds run without a pause: the pool's trim (once
    // a second) then sees a fanout in every period and keeps its queues.
    for payload in warm.iter().chain(&counted) {
        expect_message(&mut subscribers[1..], payload);
    }
    // Once warm, each publish is a new HTTP connection, a request and a framed message: some
    // tens of allocations. A queue still growing its room may add one (measured: 380-1,100 in
    // all, and up to 3,000 on io_uring with both cores busy). A queue per subscriber per
    // message would be over 60,000.
    let allowed = SUBSCRIBERS + MESSAGES * 100;
    assert!(
        allocations < allowed as u64,
        "{allocations} allocations for {MESSAGES} messages to {SUBSCRIBERS} subscribers"
    );
}

/// Publishes `count` messages named `{name}{i}`, each once `first` has the one before: each
/// fanout starts in a reactor turn of its own (one turn's messages would share the queues),
/// though the next may arrive while it is still being written to the others.
fn paced(addr: SocketAddr, first: &mut TcpStream, name: &str, count: usize) -> Vec<String> {
    let payloads: Vec<String> = (0..count).map(|i| format!("{name}{i}")).collect();
    for payload in &payloads {
        publish(addr, payload);
        expect_message(std::slice::from_mut(first), payload);
    }
    payloads
}

/// An SSE stream of `path` whose head and first events (`@session`, `@subscribed`) are read.
fn sse(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = tcp(addr);
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The subscribed event ends with an empty line, then its chunk's CRLF.
    while !(got.windows(11).any(|w| w == b"@subscribed") && got.ends_with(b"\n\n\r\n")) {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    stream
}

/// Heap the server holds per connection after `open` opened `count` idle ones, once nothing
/// is lent any more (the write queues of their answers are back).
fn held_per_connection<T>(
    runtime: &clarion_engine::Runtime,
    count: usize,
    open: impl Fn() -> T,
) -> (Vec<T>, i64) {
    let settled = |connections: u64| {
        eventually(|| {
            total(runtime, |s| &s.connections) == connections
                && total(runtime, |s| &s.tx_queues_lent) == 0
                && total(runtime, |s| &s.rx_buffers_lent) == 0
        })
    };
    let open_before = total(runtime, |s| &s.connections);
    assert!(settled(open_before));
    let before = LIVE.load(Ordering::Relaxed);
    let conns: Vec<T> = (0..count).map(|_| open()).collect();
    assert!(settled(open_before + count as u64));
    let held = LIVE.load(Ordering::Relaxed) - before;
    (conns, held / count as i64)
}

#[test]
fn an_idle_sse_subscriber_holds_no_more_than_an_idle_websocket_subscriber() {
    // Enough that a background allocation of the process (another test's server winding
    // down) weighs little per subscriber; the test's process holds 4 descriptors per pair.
    const IDLE: usize = 3_000;
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    IGNORED.with(|ignored| ignored.set(true));
    let runtime = start_app(|config| config.threads = 1, app());
    let addr = runtime.local_addr();
    // The table, the topics' member lists and the pools grow once, and each route is used
    // once, before either count.
    let warm: Vec<TcpStream> = (0..2 * IDLE)
        .map(|i| match i % 2 {
            0 => subscribe(addr, "/t/warm"),
            _ => sse(addr, "/sse/warm"),
        })
        .collect();
    drop(warm);
    assert!(eventually(|| total(&runtime, |s| &s.connections) == 0));
    let (_ws, ws) = held_per_connection(&runtime, IDLE, || subscribe(addr, "/t/ws"));
    let (_sse, sse) = held_per_connection(&runtime, IDLE, || sse(addr, "/sse/sse"));
    eprintln!("heap held per idle subscriber: /t/ {ws} B, /sse/ {sse} B");
    // Slack for the process's other allocations in the window (measured: up to 5 bytes per
    // subscriber); anything a stream kept (a lent buffer or queue, a boxed list of positions,
    // a side-table entry) is 16 bytes or more.
    assert!(
        sse <= ws + 12,
        "an idle SSE subscriber holds {sse} B, a WebSocket one {ws} B"
    );
}
