//! Hostile clients against the real server (`clarion serve`, production defaults unless a test
//! says otherwise), on the backend `CLARION_TEST_IO` picks: clients that send and never read,
//! floods of commands, huge declared lengths and endless fragments, silent and drip-fed
//! handshakes, thousands of half-open connections, junk topics, resumes that ask for all of
//! history, and publishes too large for any subscriber.
//!
//! Each attack runs while a well-behaved probe (an envelope client that opened before it and
//! sends `ping` every 50 ms) keeps being answered, every ping acknowledged in order (its
//! slowest answer is printed, not asserted: timing on a shared machine proves nothing), and
//! while the server's resident memory, sampled every 20 ms, stays within the test's stated
//! bound above what it held before. The bounds are generous for a shared machine; without the
//! limit it checks, each attack takes the server far past its bound, or one of its assertions
//! fails: `CLARION_TEST_BIN=<another build>` runs these against a server without the limits
//! (settings it does not know are given as `CLARION_*` variables, which it ignores).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Clarion, frame, get, post, read_head, stats, tcp, upgrade_request};
use serde_json::{Value, json};
use tungstenite::Message;

/// The longest a probe's `ping` waits for its ack: a bound for a server that stopped serving
/// others, not a timing assertion.
const PROBE_PATIENCE: Duration = common::PATIENCE;

/// A MiB.
const MIB: u64 = 1 << 20;

/// The server's resident memory in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// A probe and a memory sampler running beside an attack.
struct Watch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    sampler: JoinHandle<()>,
    probe: JoinHandle<Result<(u64, Duration), String>>,
    baseline: u64,
}

impl Watch {
    /// Starts watching `server`: its memory from now, and a probe connected now.
    fn start(server: &Clarion) -> Watch {
        let (pid, addr) = (server.pid(), server.addr);
        std::thread::sleep(Duration::from_millis(200));
        let baseline = rss(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(baseline));
        let (s, p) = (stop.clone(), peak.clone());
        let sampler = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut ws = common::connect(addr, "/ws");
        ws.get_mut().set_read_timeout(Some(PROBE_PATIENCE)).unwrap();
        let s = stop.clone();
        let probe = std::thread::spawn(move || {
            let (mut answered, mut slowest) = (0u64, Duration::ZERO);
            while !s.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let ping = json!({"type": "ping", "id": answered}).to_string();
                ws.send(Message::text(ping)).map_err(|e| e.to_string())?;
                loop {
                    match ws.read().map_err(|e| format!("probe {answered}: {e}"))? {
                        Message::Text(text) => {
                            let reply: Value = serde_json::from_str(&text).unwrap();
                            if reply["type"] == "ack" && reply["id"] == answered {
                                break;
                            }
                        }
                        _ => continue,
                    }
                }
                slowest = slowest.max(sent.elapsed());
                answered += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok((answered, slowest))
        });
        Watch {
            stop,
            peak,
            sampler,
            probe,
            baseline,
        }
    }

    /// Ends the watch: the probe was answered throughout (every ping acknowledged), and the
    /// server's memory grew by at most `bound` bytes.
    fn finish(self, bound: u64, what: &str) {
        self.stop.store(true, Ordering::Relaxed);
        self.sampler.join().unwrap();
        let (answered, slowest) = self.probe.join().unwrap().unwrap_or_else(|e| {
            panic!("{what}: the probe was not answered: {e}");
        });
        let grew = self
            .peak
            .load(Ordering::Relaxed)
            .saturating_sub(self.baseline);
        eprintln!(
            "{what}: RSS grew by {} KiB at most (bound {} KiB); probe answered {answered} \
             pings, the slowest in {slowest:?}",
            grew / 1024,
            bound / 1024
        );
        assert!(answered > 0, "{what}: the probe ran");
        assert!(
            grew <= bound,
            "{what}: the server grew by {} MiB, past {} MiB",
            grew / MIB,
            bound / MIB
        );
    }
}

/// A raw connection upgraded on `path`, its 101 head consumed.
fn upgraded(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = tcp(addr);
    stream.write_all(&upgrade_request(path)).unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{path}: {head}");
    stream
}

/// Writes `bytes` over and over without reading, until `limit` bytes went out or the socket
/// took nothing for two seconds (TCP pushed back) or the server closed it; the bytes taken.
fn send_without_reading(stream: &TcpStream, bytes: &[u8], limit: usize) -> usize {
    let mut stream = stream.try_clone().unwrap();
    stream.set_nonblocking(true).unwrap();
    let (mut sent, mut offset) = (0, 0);
    let mut progress = Instant::now();
    while sent < limit && progress.elapsed() < Duration::from_secs(2) {
        match stream.write(&bytes[offset..]) {
            Ok(n) => {
                sent += n;
                offset = (offset + n) % bytes.len();
                progress = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => break,
        }
    }
    stream.set_nonblocking(false).unwrap();
    sent
}

/// Reads server frames until the close frame; its code (`None` if the connection ended
/// without one).
fn close_code(stream: &mut TcpStream) -> Option<u16> {
    loop {
        let (_, opcode, payload) = common::read_frame(stream).ok()?;
        if opcode == 0x8 {
            return Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
}

/// Whether the server closed `stream` (read hits the end, or a reset) before the stream's read
/// timeout.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn total(addr: SocketAddr, key: &str) -> u64 {
    stats(addr)["totals"][key].as_u64().unwrap_or(0)
}

#[test]
fn clients_that_send_and_never_read_hold_no_more_than_their_write_cap() {
    // The write cap itself: no rate to close them first.
    let server = Clarion::production(
        &["--listen", "127.0.0.1:0", "--threads", "2"],
        &[
            ("CLARION_ECHO", "true"),
            ("CLARION_MESSAGE_RATE", "0"),
            ("CLARION_BYTE_RATE", "0"),
        ],
    );
    let watch = Watch::start(&server);
    // 16 clients offer 32 MiB of echoes each: 512 MiB that a server reading on would queue.
    let message = frame(true, 0x2, &[7u8; 60_000]);
    let flooders: Vec<_> = (0..16)
        .map(|_| {
            let addr = server.addr;
            let message = message.clone();
            std::thread::spawn(move || {
                let stream = upgraded(addr, "/echo");
                let sent = send_without_reading(&stream, &message, 32 << 20);
                (stream, sent)
            })
        })
        .collect();
    let held: Vec<(TcpStream, usize)> = flooders.into_iter().map(|t| t.join().unwrap()).collect();
    let sent: usize = held.iter().map(|(_, n)| n).sum();
    assert!(
        sent < 256 << 20,
        "the server stopped reading them: {} MiB taken of 512",
        sent >> 20
    );
    // Paused, and not read since (dropped once past write_timeout, on a very slow machine).
    let paused_or_dropped = || {
        total(server.admin.expect("an admin listener"), "paused")
            + total(server.admin.expect("an admin listener"), "write_timeouts")
    };
    assert!(
        common::eventually(|| paused_or_dropped() == 16),
        "{} paused or dropped of 16",
        paused_or_dropped()
    );
    // 16 x (1 MiB cap and the echoes of one read), and room for the allocator.
    watch.finish(96 * MIB, "send without reading");
}

#[test]
fn floods_of_commands_and_pings_are_closed_for_their_rate() {
    let server = Clarion::production(&["--listen", "127.0.0.1:0", "--threads", "2"], &[]);
    let watch = Watch::start(&server);
    let mut flooders = Vec::new();
    for (n, command) in [
        json!({"type": "ping"}),
        json!({"type": "hello", "heartbeat": 5}),
        json!({"type": "refresh", "token": "x"}),
        json!({"type": "subscribe", "topic": "t"}),
    ]
    .iter()
    .cycle()
    .take(16)
    .enumerate()
    {
        let addr = server.addr;
        let command = frame(true, 0x1, command.to_string().as_bytes());
        flooders.push(std::thread::spawn(move || {
            let mut stream = upgraded(addr, "/ws");
            // WebSocket pings on half of them, commands on the others, as fast as the socket
            // takes them, while the answers are read (until the server's close).
            let unit = if n % 2 == 0 {
                frame(true, 0x9, b"")
            } else {
                command
            };
            let mut writer = stream.try_clone().unwrap();
            std::thread::spawn(move || {
                let burst = unit.repeat(1000);
                for _ in 0..1000 {
                    if writer.write_all(&burst).is_err() {
                        break;
                    }
                }
            });
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            close_code(&mut stream)
        }));
    }
    for flooder in flooders {
        assert_eq!(flooder.join().unwrap(), Some(1008), "closed: rate limit");
    }
    assert_eq!(
        total(server.admin.expect("an admin listener"), "rate_limited"),
        16
    );
    watch.finish(48 * MIB, "command floods");
}

#[test]
fn huge_declared_lengths_and_endless_fragments_stay_within_the_partial_budget() {
    // Messages of up to 1 MiB, 8 MiB of partial messages per reactor: 100 connections each
    // holding a partial megabyte would be 100 MiB.
    let server = Clarion::production(
        &[
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--max-message-size",
            "1048576",
            "--max-frame-size",
            "1048576",
        ],
        &[
            ("CLARION_ECHO", "true"),
            ("CLARION_MAX_PARTIAL_BYTES_PER_REACTOR", "8388608"),
            ("CLARION_BYTE_BURST", "4194304"),
        ],
    );
    let addr = server.addr;
    let watch = Watch::start(&server);
    // Frames that declare 2^62 bytes: refused on their header.
    for _ in 0..32 {
        let mut stream = upgraded(addr, "/echo");
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
        huge.extend_from_slice(&[1, 2, 3, 4, 0, 0]);
        stream.write_all(&huge).unwrap();
        assert_eq!(close_code(&mut stream), Some(1009));
    }
    // Frames that declare a megabyte and send most of it, and messages of endless small
    // fragments: each within the message limit, together past the budget.
    let mut held = Vec::new();
    let mut budget_closes = 0;
    for n in 0..100 {
        let mut stream = upgraded(addr, "/echo");
        let bytes = if n % 2 == 0 {
            let mut declared = frame(false, 0x2, &vec![5u8; 1_000_000]);
            declared.truncate(900_000);
            declared
        } else {
            (0..9000)
                .flat_map(|i| frame(false, if i == 0 { 0x2 } else { 0x0 }, &[9u8; 100]))
                .collect()
        };
        if stream.write_all(&bytes).is_err() {
            budget_closes += 1;
            continue;
        }
        held.push(stream);
    }
    std::thread::sleep(Duration::from_millis(500));
    let partial = total(server.admin.expect("an admin listener"), "partial_bytes");
    assert!(partial <= 2 * 8 * MIB + 2 * 65536, "{partial} bytes held");
    assert!(
        total(
            server.admin.expect("an admin listener"),
            "partial_budget_closes"
        ) > 0
            || budget_closes > 0,
        "the budget closed some"
    );
    watch.finish(64 * MIB, "huge lengths and fragments");
    drop(held);
}

#[test]
fn silent_and_drip_fed_handshakes_are_capped_and_closed_at_the_deadline() {
    let server = Clarion::production(
        &[
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--handshake-timeout",
            "2s",
        ],
        &[("CLARION_MAX_HANDSHAKES_PER_REACTOR", "64")],
    );
    let addr = server.addr;
    let watch = Watch::start(&server);
    let attackers: Vec<_> = (0..400)
        .map(|n| {
            std::thread::spawn(move || {
                let Ok(mut stream) = TcpStream::connect(addr) else {
                    return true;
                };
                stream
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .unwrap();
                if n % 2 == 0 {
                    // One header byte every 200 ms: a request that never completes in time.
                    let mut drip = stream.try_clone().unwrap();
                    std::thread::spawn(move || {
                        for byte in b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Slow: 0123456789\r\n" {
                            if drip.write_all(&[*byte]).is_err() {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    });
                }
                closed_by_server(&mut stream)
            })
        })
        .collect();
    // Each closed by the server (at accept, or at the deadline), none left open by it.
    for attacker in attackers {
        assert!(attacker.join().unwrap(), "the server closed it");
    }
    assert!(
        total(
            server.admin.expect("an admin listener"),
            "refused_handshakes"
        ) > 0,
        "past the cap: closed at accept"
    );
    assert!(
        total(
            server.admin.expect("an admin listener"),
            "handshake_timeouts"
        ) > 0
    );
    // (The request asking counts itself while it is answered.)
    assert!(total(server.admin.expect("an admin listener"), "handshaking") <= 1);
    // Slots are free again.
    let _fresh = upgraded(addr, "/ws");
    watch.finish(32 * MIB, "drip-fed handshakes");
}

#[test]
fn huge_request_heads_are_answered_431_at_the_head_limit() {
    let server = Clarion::production(&["--listen", "127.0.0.1:0", "--threads", "2"], &[]);
    let addr = server.addr;
    let watch = Watch::start(&server);
    // 32 clients offer a megabyte of request head each: one header line that never ends, or
    // ten thousand short headers (the defaults: 8 KiB, 64 headers).
    let attackers: Vec<_> = (0..32)
        .map(|n| {
            std::thread::spawn(move || {
                let mut head = b"GET /ws HTTP/1.1\r\nHost: x\r\n".to_vec();
                if n % 2 == 0 {
                    head.extend_from_slice(b"X-Big: ");
                    head.resize(1 << 20, b'a');
                } else {
                    for i in 0..10_000 {
                        head.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
                    }
                }
                let mut stream = tcp(addr);
                stream.set_read_timeout(Some(common::PATIENCE)).unwrap();
                let mut writer = stream.try_clone().unwrap();
                // Written whole (the server reads on and drops the rest while it closes), or
                // until the server hangs up.
                let sender = std::thread::spawn(move || {
                    let _ = writer.write_all(&head);
                });
                let mut answer = Vec::new();
                // A reset after the answer keeps what was read.
                let _ = stream.read_to_end(&mut answer);
                sender.join().unwrap();
                String::from_utf8_lossy(&answer).into_owned()
            })
        })
        .collect();
    for attacker in attackers {
        let answer = attacker.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    }
    // Nothing of them is held, and a well-formed request goes through.
    assert!(common::eventually(|| total(
        server.admin.expect("an admin listener"),
        "handshaking"
    ) <= 1));
    let _fresh = upgraded(addr, "/ws");
    watch.finish(32 * MIB, "huge request heads");
}

#[test]
fn thousands_of_half_open_connections_count_against_max_connections() {
    let server = Clarion::production(
        &[
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--handshake-timeout",
            "3s",
            "--max-connections",
            "1000",
        ],
        &[],
    );
    let addr = server.addr;
    let watch = Watch::start(&server);
    let most = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (m, s) = (most.clone(), stop.clone());
    let counter = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            // Asking is a connection too: refused while the server is full.
            let answer = common::http(addr, b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n");
            if let Some(body) = answer.split("\r\n\r\n").nth(1)
                && let Ok(stats) = serde_json::from_str::<Value>(body)
            {
                let held = stats["totals"]["connections"].as_u64().unwrap_or(0);
                m.fetch_max(held, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // Connected, a partial request head each, never finished, never closed by the client.
    let held: Vec<TcpStream> = (0..3000)
        .filter_map(|_| {
            let mut stream = TcpStream::connect(addr).ok()?;
            let _ = stream.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n");
            Some(stream)
        })
        .collect();
    assert!(held.len() > 2000);
    for mut stream in held {
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        assert!(closed_by_server(&mut stream));
    }
    stop.store(true, Ordering::Relaxed);
    counter.join().unwrap();
    // Past the cap they were closed at accept: the server never held more (the gauge is each
    // reactor's last count, so a few more may show).
    assert!(
        total(
            server.admin.expect("an admin listener"),
            "refused_connections"
        ) > 1000
    );
    let most = most.load(Ordering::Relaxed);
    assert!(most <= 1000 + 16, "{most} connections held");
    // (The request asking counts itself while it is answered.)
    assert!(common::eventually(|| total(
        server.admin.expect("an admin listener"),
        "handshaking"
    ) <= 1));
    watch.finish(48 * MIB, "half-open connections");
}

#[test]
fn junk_topics_cannot_flush_other_topics_history_or_grow_without_end() {
    let server = Clarion::production(
        &[
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--client-publish",
            "all",
            "--history-total-bytes",
            "4194304",
        ],
        &[
            ("CLARION_CLIENT_TOPIC_RATE", "50"),
            ("CLARION_MESSAGE_RATE", "0"),
            ("CLARION_BYTE_RATE", "0"),
        ],
    );
    let addr = server.addr;
    let (status, body) = post(addr, "/publish/news", "", b"first");
    assert_eq!(status, 202, "{body}");
    let epoch = serde_json::from_str::<Value>(&body).unwrap()["epoch"].clone();
    for n in 2..=10 {
        assert_eq!(
            post(addr, "/publish/news", "", format!("m{n}").as_bytes()).0,
            202
        );
    }
    let watch = Watch::start(&server);
    // Clients publish 8 KiB to thousands of new topics, and floods of empty messages.
    let junk: Vec<_> = (0..8)
        .map(|c| {
            std::thread::spawn(move || {
                let mut ws = common::connect(addr, "/ws");
                let data = "x".repeat(8 << 10);
                let (mut refused, mut taken) = (0, 0);
                for n in 0..1500 {
                    let topic = format!("junk.{c}.{n}");
                    let data = if n % 3 == 0 { "" } else { data.as_str() };
                    let reply = common::call(
                        &mut ws,
                        json!({"type": "publish", "topic": topic, "data": data, "id": n}),
                    );
                    if reply["type"] == "error" {
                        assert_eq!(reply["code"], "too_many_topics", "{reply}");
                        refused += 1;
                    } else {
                        taken += 1;
                    }
                }
                (refused, taken)
            })
        })
        .collect();
    let (mut refused, mut taken) = (0, 0);
    for client in junk {
        let (r, t) = client.join().unwrap();
        refused += r;
        taken += t;
    }
    assert!(refused > 0 && taken > 0, "{refused} refused, {taken} taken");
    assert!(
        stats(server.admin.expect("an admin listener"))["hub"]["topics_refused"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
    // The legitimate topic goes on publishing under the junk's pressure, and its history is
    // whole.
    for n in 11..=15 {
        assert_eq!(
            post(addr, "/publish/news", "", format!("m{n}").as_bytes()).0,
            202
        );
    }
    let mut reader = common::connect(addr, "/ws");
    let ack = common::call(
        &mut reader,
        json!({"type": "subscribe", "topic": "news", "since": 0, "epoch": epoch}),
    );
    assert_eq!(ack["recovered"], true, "{ack}");
    for n in 1..=15 {
        assert_eq!(common::next(&mut reader)["seq"], n);
    }
    let history = stats(server.admin.expect("an admin listener"))["hub"]["history_bytes"]
        .as_u64()
        .unwrap();
    assert!(history <= 2 * 4 * MIB, "{history}");
    watch.finish(64 * MIB, "junk topics");
}

#[test]
fn resumes_that_ask_for_all_of_history_are_replayed_in_slices() {
    let server = Clarion::production(&["--listen", "127.0.0.1:0", "--threads", "2"], &[]);
    let addr = server.addr;
    // Ten topics with about a megabyte of history each (90 messages of 10 KiB: within
    // history_max_bytes, counted in memory).
    let mut epoch = Value::Null;
    for topic in 0..10 {
        for n in 0..90 {
            let body = format!("{n:0>10240}");
            let (status, answer) = post(addr, &format!("/publish/h{topic}"), "", body.as_bytes());
            assert_eq!(status, 202, "{answer}");
            epoch = serde_json::from_str::<Value>(&answer).unwrap()["epoch"].clone();
        }
    }
    let watch = Watch::start(&server);
    // 32 clients ask each topic for everything since 0, in ten small commands, and never read:
    // 9 MiB of replay each, 290 MiB if queued at once.
    let attackers: Vec<TcpStream> = (0..32)
        .map(|_| {
            let mut stream = upgraded(addr, "/ws");
            let commands: Vec<u8> = (0..10)
                .flat_map(|topic| {
                    let command = json!({"type": "subscribe", "topic": format!("h{topic}"),
                        "since": 0, "epoch": epoch});
                    frame(true, 0x1, command.to_string().as_bytes())
                })
                .collect();
            stream.write_all(&commands).unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    // One of them reads after all: everything, in order, topic by topic.
    let mut reader = attackers.into_iter().next().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut seen = 0;
    while seen < 10 * 90 {
        let (_, opcode, payload) = common::read_frame(&mut reader).unwrap();
        let message: Value = serde_json::from_slice(&payload).unwrap();
        if opcode == 0x1 && message["type"] == "message" {
            seen += 1;
        }
    }
    watch.finish(96 * MIB, "replay amplification");
    assert!(total(server.admin.expect("an admin listener"), "sliced_replays") >= 32);
}

#[test]
fn a_publish_too_large_for_subscribers_is_refused_and_evicts_nobody() {
    let server = Clarion::production(
        &[
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--client-publish",
            "all",
            "--max-queued-bytes",
            "32768",
        ],
        &[],
    );
    let addr = server.addr;
    let watch = Watch::start(&server);
    let mut raw: Vec<_> = (0..20).map(|_| common::connect(addr, "/t/big")).collect();
    let mut envelope: Vec<_> = (0..20)
        .map(|_| {
            let mut ws = common::connect(addr, "/ws");
            common::call(&mut ws, json!({"type": "subscribe", "topic": "big"}));
            ws
        })
        .collect();
    // The body is within max_body_size, but its delivery frame (base64 in an envelope) is not
    // within any subscriber's queue: refused before it is numbered.
    let binary = "Content-Type: application/octet-stream\r\n";
    let (status, body) = post(addr, "/publish/big", binary, &vec![1u8; 200_000]);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("max_queued_bytes"), "{body}");
    // An envelope publish within max_message_size whose delivery is not within the cap.
    let reply = common::call(
        &mut envelope[0],
        json!({"type": "publish", "topic": "big", "data": "a".repeat(40_000)}),
    );
    assert_eq!(reply["code"], "too_large", "{reply}");
    // A raw socket's binary publish, larger once in base64: closed with 1009.
    let mut publisher = upgraded(addr, "/t/big");
    publisher
        .write_all(&frame(true, 0x2, &[0u8; 30_000]))
        .unwrap();
    publisher
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(close_code(&mut publisher), Some(1009));
    // One that fits is delivered to every subscriber, none taken for slow.
    let fits = vec![b'a'; 20_000];
    assert_eq!(post(addr, "/publish/big", "", &fits).0, 202);
    for ws in &mut raw {
        assert_eq!(
            ws.read().unwrap(),
            Message::text(String::from_utf8(fits.clone()).unwrap())
        );
    }
    for ws in &mut envelope {
        let delivery = common::next(ws);
        assert_eq!(delivery["data"].as_str().unwrap().len(), fits.len());
    }
    assert_eq!(
        total(
            server.admin.expect("an admin listener"),
            "slow_consumer_closes"
        ),
        0
    );
    let (status, _) = get(addr, "/healthz");
    assert_eq!(status, 200);
    watch.finish(32 * MIB, "oversized publishes");
}
