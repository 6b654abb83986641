//! A fanout long enough that the reactor looks at what arrived while it writes it (every 512
//! writes): a message published meanwhile reaches every subscriber at once, in order, those
//! written before the look included, without waiting for something else to wake the reactor
//! (its next sweep is up to a second away); and each write of fanout frames counts its wait in
//! the queue once (`write_wait`).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::thread::sleep;
use std::time::Duration;

use common::*;

/// Seven looks in a fanout on one reactor: those after the one that takes the second message in
/// find nothing new (what woke the reactor for it, already read).
const SUBSCRIBERS: usize = 4_000;
/// Longest wait for one delivery: a delivery left for the reactor's next sweep (one second
/// apart) waits longer than this more often than not.
const PATIENCE_PER_READ: Duration = Duration::from_millis(600);

fn subscribe(addr: SocketAddr) -> TcpStream {
    let mut stream = tcp(addr);
    stream.write_all(&upgrade_request("/t/look")).unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.set_read_timeout(Some(PATIENCE_PER_READ)).unwrap();
    stream
}

/// Sends a publish on the keep-alive connection `publisher`, without reading the answer.
fn publish(publisher: &mut TcpStream, payload: &str) {
    write!(
        publisher,
        "POST /publish/look HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    )
    .unwrap();
}

#[test]
fn a_message_published_while_a_long_fanout_is_written_reaches_every_subscriber_at_once() {
    let runtime = start_app(|config| config.threads = 1, app());
    let addr = runtime.local_addr();
    let mut subscribers: Vec<TcpStream> = (0..SUBSCRIBERS).map(|_| subscribe(addr)).collect();
    let mut publisher = tcp(addr);
    // Gaps that put the second message before, during and after the first one's writing (a
    // few milliseconds to tens, by build and machine), three times over.
    let gaps_us = (0..72).map(|step| step % 24 * 500);
    for (round, gap_us) in gaps_us.enumerate() {
        let sent = [format!("a{round}"), format!("b{round}")];
        publish(&mut publisher, &sent[0]);
        sleep(Duration::from_micros(gap_us));
        publish(&mut publisher, &sent[1]);
        for _ in &sent {
            let answer = read_answer(&mut publisher);
            assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
        }
        for (i, stream) in subscribers.iter_mut().enumerate() {
            for payload in &sent {
                let got = read_frame(stream).map(|(_, _, bytes)| bytes);
                assert!(
                    got.as_ref().is_ok_and(|bytes| bytes == payload.as_bytes()),
                    "subscriber {i}, gap {gap_us} µs: {payload} not delivered in time ({got:?})"
                );
            }
        }
    }
}

/// `write_wait` in `/stats` counts each write of fanout frames once: five messages to 300
/// subscribers, each read by all before the next is published, are 1,500 writes of one frame.
#[test]
fn each_write_of_fanout_frames_counts_its_wait_once() {
    const SMALL: usize = 300;
    let app = clarion::server::AppConfig {
        public_metrics: true,
        ..app()
    };
    let runtime = start_app(|config| config.threads = 1, app);
    let addr = runtime.local_addr();
    let mut subscribers: Vec<TcpStream> = (0..SMALL).map(|_| subscribe(addr)).collect();
    let waits = || stats(addr)["write_wait_us"]["count"].as_u64().unwrap();
    let before = waits();
    let mut publisher = tcp(addr);
    for n in 0..5 {
        let payload = format!("m{n}");
        publish(&mut publisher, &payload);
        let answer = read_answer(&mut publisher);
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
        for stream in &mut subscribers {
            let (_, _, got) = read_frame(stream).unwrap();
            assert_eq!(got, payload.as_bytes());
        }
    }
    assert_eq!(waits() - before, 5 * SMALL as u64);
}
