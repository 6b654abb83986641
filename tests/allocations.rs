//! Fanout allocates per message, never per subscriber: once a reactor has served a message to
//! its subscribers, the next messages reuse the write queues it lent them (counted with a
//! global allocator that ignores the test's own thread).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the test's thread: its clients and checks allocate freely.
    static IGNORED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if !IGNORED.try_with(Cell::get).unwrap_or(true) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on to the system allocator unchanged; counting touches only an
// atomic and a const-initialised thread-local without a destructor, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
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
    // More subscribers on one reactor than its pool keeps regardless of use (1,024).
    const SUBSCRIBERS: usize = 3_000;
    const MESSAGES: usize = 21;
    IGNORED.with(|ignored| ignored.set(true));
    let runtime = start_app(|config| config.threads = 1, app());
    let addr = runtime.local_addr();
    let mut subscribers: Vec<TcpStream> = (0..SUBSCRIBERS)
        .map(|_| subscribe(addr, "/t/alloc"))
        .collect();

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let payloads: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    for payload in &payloads {
        publish(addr, payload);
        // One subscriber has it: its fanout ran in a reactor turn of its own, before the next
        // publish arrives (one turn's messages would share the queues).
        expect_message(&mut subscribers[..1], payload);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    for payload in &payloads {
        expect_message(&mut subscribers[1..], payload);
    }
    // The first message lends a queue to every subscriber (up to 2 allocations each), and the
    // pool may give the spare ones back if a second passes between two messages (a loaded
    // machine): allow that twice over. Each publish is also a new HTTP connection, a request
    // and a framed message: some tens of allocations. A queue per subscriber per message would
    // be over 80,000.
    let allowed = 3 * 2 * SUBSCRIBERS + MESSAGES * 100;
    assert!(
        allocations < allowed as u64,
        "{allocations} allocations for {MESSAGES} messages to {SUBSCRIBERS} subscribers"
    );
}
