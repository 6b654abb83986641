//! The reconnect-storm benchmark's two roles (`scripts/bench-reconnect.sh` runs them):
//!
//! - `clients`: N clients of this crate, each subscribed to one of T topics. Prints `ready` once
//!   all are subscribed, arms, and from then on records each client's first disconnection (the
//!   cut or restart), its attempts, when it was connected and resubscribed again, whether it
//!   recovered, and whether any delivery broke the sequence. Prints `recovered` once every
//!   client has resubscribed; on SIGINT (or `--max-wait` after arming) writes the records as
//!   JSON to `--out` and exits.
//! - `publish`: one client publishing to the T topics in turn at `--rate` per second; on SIGINT
//!   publishes a final marker on each topic and writes each topic's last acknowledged `seq`.
//!
//! Times are wall-clock nanoseconds, so the script can put them beside the moment it cut.
//! `--url wss://…` with `--ca FILE` (a PEM CA, `scripts/make-cert.sh`'s) runs both over TLS.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clarion_client::{Client, Event, Options};

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

/// `--name value` pairs.
fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

fn number(args: &[String], name: &str, default: u64) -> u64 {
    let value = arg(args, name, &default.to_string());
    value
        .parse()
        .unwrap_or_else(|_| panic!("{name} wants a number, not {value:?}"))
}

/// The client options: the defaults, trusting `--ca` when given.
fn options(args: &[String]) -> Options {
    let mut options = Options::default();
    let ca = arg(args, "--ca", "");
    if !ca.is_empty() {
        options
            .tls
            .add_ca_file(&ca)
            .unwrap_or_else(|e| panic!("--ca: {e}"));
    }
    options
}

/// What one client saw after arming.
#[derive(Default)]
struct Record {
    down_ns: u64,
    /// The backoff's draw for the first attempt after the cut.
    first_delay_ns: u64,
    connected_ns: u64,
    subscribed_ns: u64,
    recovered: Option<bool>,
    attempts: u32,
    violations: u32,
    last_seq: u64,
    topic: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(number(&args, "--threads", 1) as usize)
        .enable_all()
        .build()
        .expect("a runtime");
    match args.first().map(String::as_str) {
        Some("clients") => runtime.block_on(clients(&args)),
        Some("publish") => runtime.block_on(publish(&args)),
        _ => {
            eprintln!(
                "usage: reconnect_storm clients --url URL --clients N --topics T --offset K \
                 --out FILE [--max-wait SECS] [--threads N]\n       \
                 reconnect_storm publish --url URL --topics T --rate R --out FILE"
            );
            std::process::exit(2);
        }
    }
}

async fn clients(args: &[String]) {
    let url = arg(args, "--url", "ws://127.0.0.1:9001/ws");
    let count = number(args, "--clients", 1000) as usize;
    let options = options(args);
    let topics = number(args, "--topics", 100) as usize;
    let offset = number(args, "--offset", 0) as usize;
    let max_wait = Duration::from_secs(number(args, "--max-wait", 180));
    let out = arg(args, "--out", "storm-clients.json");
    let armed = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicUsize::new(0));
    let resubscribed = Arc::new(AtomicUsize::new(0));
    let records: Arc<Vec<Mutex<Record>>> =
        Arc::new((0..count).map(|_| Mutex::new(Record::default())).collect());
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        let topic = (offset + i) % topics;
        let client = Client::connect(&url, options.clone()).expect("a ws: or wss: URL");
        let mut events = client.events();
        client.subscribe(&format!("storm-{topic}"), None);
        handles.push(client);
        let (armed, ready, resubscribed, records) = (
            armed.clone(),
            ready.clone(),
            resubscribed.clone(),
            records.clone(),
        );
        tokio::spawn(async move {
            let mut first = true;
            while let Some(event) = events.next().await {
                let now = wall_ns();
                let mut r = records[i].lock().unwrap();
                r.topic = topic;
                match event {
                    Event::Subscribed { recovered, seq, .. } => {
                        if first {
                            first = false;
                            ready.fetch_add(1, Ordering::Relaxed);
                            r.last_seq = seq;
                        } else if r.down_ns != 0 && r.subscribed_ns == 0 {
                            r.subscribed_ns = now;
                            r.recovered = Some(recovered);
                            resubscribed.fetch_add(1, Ordering::Relaxed);
                        }
                        if !recovered {
                            r.last_seq = seq;
                        }
                    }
                    Event::Message { seq, .. } => {
                        if seq != r.last_seq + 1 {
                            r.violations += 1;
                        }
                        r.last_seq = seq;
                    }
                    Event::Disconnected { retry_in, .. } if armed.load(Ordering::Relaxed) => {
                        if r.down_ns == 0 {
                            r.down_ns = now;
                            r.first_delay_ns = retry_in.unwrap_or_default().as_nanos() as u64;
                        }
                        if r.subscribed_ns == 0 {
                            r.attempts += 1;
                        }
                    }
                    Event::Connected { .. } if r.down_ns != 0 && r.connected_ns == 0 => {
                        r.connected_ns = now;
                    }
                    _ => {}
                }
            }
        });
        // A gentle ramp: the first attempt of a client is not jittered (1,000 a batch).
        if i % 1000 == 999 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    while ready.load(Ordering::Relaxed) < count {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    armed.store(true, Ordering::Relaxed);
    println!("ready {count}");
    let deadline = tokio::time::Instant::now() + max_wait;
    let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
    let mut told = false;
    loop {
        tokio::select! {
            _ = &mut interrupt => break,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if !told && resubscribed.load(Ordering::Relaxed) == count {
                    println!("recovered {count}");
                    told = true;
                }
            }
        }
    }
    let mut json = String::from("[");
    for (i, record) in records.iter().enumerate() {
        let r = record.lock().unwrap();
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            "[{},{},{},{},{},{},{},{},{},{}]",
            r.down_ns,
            r.connected_ns,
            r.subscribed_ns,
            match r.recovered {
                Some(true) => 1,
                Some(false) => 0,
                None => -1,
            },
            r.attempts,
            r.violations,
            r.last_seq,
            r.topic,
            handles[i].state() as u8,
            r.first_delay_ns,
        ));
    }
    json.push(']');
    std::fs::write(&out, json).expect("the results file");
    std::process::exit(0);
}

async fn publish(args: &[String]) {
    let url = arg(args, "--url", "ws://127.0.0.1:9001/ws");
    let topics = number(args, "--topics", 100) as usize;
    let rate = number(args, "--rate", 200).max(1);
    let out = arg(args, "--out", "storm-publisher.json");
    let client = Client::connect(&url, options(args)).expect("a ws: or wss: URL");
    let last = Arc::new(Mutex::new(vec![0u64; topics]));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate as u32);
    let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
    let mut n = 0usize;
    loop {
        tokio::select! {
            _ = &mut interrupt => break,
            _ = tick.tick() => {
                let topic = n % topics;
                n += 1;
                let ack = client.publish(&format!("storm-{topic}"), n.into());
                let (last, failed) = (last.clone(), failed.clone());
                tokio::spawn(async move {
                    match ack.await {
                        Ok(ack) => {
                            let mut last = last.lock().unwrap();
                            last[topic] = last[topic].max(ack.seq.unwrap_or(0));
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        }
    }
    // A final marker per topic: its ack is the topic's last seq.
    let markers: Vec<_> = (0..topics)
        .map(|topic| client.publish(&format!("storm-{topic}"), "end".into()))
        .collect();
    let mut finals = Vec::with_capacity(topics);
    for marker in markers {
        finals.push(marker.await.ok().and_then(|ack| ack.seq).unwrap_or(0));
    }
    let json = format!(
        "{{\"published\":{n},\"failed\":{},\"last_seq\":{:?}}}",
        failed.load(Ordering::Relaxed),
        finals
    );
    std::fs::write(&out, json).expect("the results file");
    client.close().await;
}
