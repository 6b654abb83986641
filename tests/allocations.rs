//! Fanout allocates per message, never per subscriber: once a reactor has served a message to
//! its subscribers, the next messages reuse the write queues it lent them (counted with a
//! global allocator that ignores the test's own thread).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};

use clarion::server::AppConfig;
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
    const MESSAGES: u64 = 20;
    IGNORED.with(|ignored| ignored.set(true));
    let runtime = start_app(|config| config.threads = 1, AppConfig::default());
    let addr = runtime.local_addr();
    let mut subscribers: Vec<TcpStream> = (0..SUBSCRIBERS)
        .map(|_| subscribe(addr, "/t/alloc"))
        .collect();
    // Warm up: the first message lends a queue to every subscriber.
    publish(addr, "warm");
    expect_message(&mut subscribers, "warm");

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for i in 0..MESSAGES {
        let payload = format!("m{i}");
        publish(addr, &payload);
        expect_message(&mut subscribers, &payload);
    }
    let per_message = (ALLOCATIONS.load(Ordering::Relaxed) - before) / MESSAGES;
    // Each publish is a new HTTP connection, a request and a framed message: some tens of
    // allocations. One per subscriber would be thousands.
    assert!(
        per_message < 100,
        "{per_message} allocations per message to {SUBSCRIBERS} subscribers"
    );
}
