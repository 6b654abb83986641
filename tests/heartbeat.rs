//! The application heartbeat of `/ws` over real sockets: sent when a client asks in `hello`
//! (bounded to the configured range), never otherwise, and stopped by `hello` with 0.
//!
//! Absence is shown without timing: the clients share one reactor, so once a client that asked
//! for a heartbeat every second has seen several, every sweep that would have sent one to the
//! others has run; a `ping` then shows what came before its ack.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use clarion::server::AppConfig;
use clarion_engine::Runtime;
use common::*;
use serde_json::{Value, json};

fn server() -> (Runtime, SocketAddr) {
    let runtime = start_app(
        |config| config.threads = 1,
        AppConfig {
            heartbeat_min: Duration::from_secs(1),
            heartbeat_max: Duration::from_secs(30),
            ..app()
        },
    );
    let addr = runtime.local_addr();
    (runtime, addr)
}

/// A `/ws` client whose reads wait up to a minute (sweeps are a second apart; a loaded machine
/// stretches them).
fn client(addr: SocketAddr) -> Ws {
    let ws = connect(addr, "/ws");
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    ws
}

fn is_heartbeat(message: &Value) -> bool {
    *message == json!({"type": "heartbeat"})
}

/// Waits for `count` heartbeats on `ws`, which receives nothing else meanwhile.
fn heartbeats(ws: &mut Ws, count: usize) {
    for _ in 0..count {
        let message = next(ws);
        assert!(is_heartbeat(&message), "{message}");
    }
}

/// The answer to `command`, past any heartbeats.
fn answer(ws: &mut Ws, command: Value) -> Value {
    send(ws, command);
    loop {
        let message = next(ws);
        if !is_heartbeat(&message) {
            return message;
        }
    }
}

/// What `ws` received before the ack of a `ping`.
fn before_a_ping(ws: &mut Ws) -> Vec<Value> {
    send(ws, json!({"type": "ping", "id": "probe"}));
    let mut seen = Vec::new();
    loop {
        let message = next(ws);
        if message == json!({"type": "ack", "id": "probe"}) {
            return seen;
        }
        seen.push(message);
    }
}

#[test]
fn heartbeats_arrive_when_asked_and_not_otherwise() {
    let (_server, addr) = server();
    let mut quiet = client(addr);
    let mut declined = client(addr);
    let mut beating = client(addr);
    let hello = |ws: &mut Ws, heartbeat: Value| {
        call(
            ws,
            json!({"type": "hello", "id": 1, "heartbeat": heartbeat}),
        )
    };
    assert_eq!(
        hello(&mut declined, json!(0)),
        json!({"type": "ack", "id": 1, "heartbeat": 0})
    );
    assert_eq!(hello(&mut beating, json!(1))["heartbeat"], 1);
    heartbeats(&mut beating, 3);
    assert_eq!(before_a_ping(&mut quiet), Vec::<Value>::new());
    assert_eq!(before_a_ping(&mut declined), Vec::<Value>::new());
    assert!(total_stat(addr, "heartbeats") >= 3);

    // `hello` again with 0 turns them off: whatever was sent before its ack, nothing after.
    send(
        &mut beating,
        json!({"type": "hello", "id": 2, "heartbeat": 0}),
    );
    loop {
        let message = next(&mut beating);
        if message["id"] == 2 {
            assert_eq!(message["heartbeat"], 0);
            break;
        }
        assert!(is_heartbeat(&message), "{message}");
    }
    let mut witness = client(addr);
    assert_eq!(hello(&mut witness, json!(1))["heartbeat"], 1);
    heartbeats(&mut witness, 3);
    assert_eq!(before_a_ping(&mut beating), Vec::<Value>::new());
}

#[test]
fn the_interval_asked_for_is_brought_within_the_configured_range() {
    let (_server, addr) = server();
    let mut ws = client(addr);
    let ack = call(
        &mut ws,
        json!({"type": "subscribe", "topic": "t", "id": 10}),
    );
    assert_eq!(ack["id"], 10);
    let bad = call(&mut ws, json!({"type": "hello", "heartbeat": -5, "id": 9}));
    assert_eq!(bad["code"], "bad_request");
    // Each of these turns heartbeats on, and one may come before the next answer.
    for (asked, granted) in [(999_999, 30), (30, 30), (7, 7), (1, 1)] {
        let ack = answer(
            &mut ws,
            json!({"type": "hello", "heartbeat": asked, "id": asked}),
        );
        assert_eq!(
            ack,
            json!({"type": "ack", "id": asked, "heartbeat": granted})
        );
    }
    // At 1 s now: heartbeats come, among other traffic.
    assert_eq!(post(addr, "/publish/t", "", b"1").0, 202);
    let mut seen = (0, 0);
    while seen.0 < 2 || seen.1 < 1 {
        let message = next(&mut ws);
        if is_heartbeat(&message) {
            seen.0 += 1;
        } else {
            assert_eq!(message["topic"], "t", "{message}");
            seen.1 += 1;
        }
    }
}
