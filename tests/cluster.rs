//! Two Clarion nodes and a real Redis: one topic space across nodes, on one Redis server, on a
//! master that Redis Sentinel names (through a failover), and on a Redis Cluster (through a slot
//! migration). Each test starts its own Redis servers on free ports and its own `clarion`
//! processes, and stops them all.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::time::{Duration, Instant};

use common::redis::{MASTER_NAME, Redis, RedisCluster, Sentinels};
use serde_json::{Value, json};
use tungstenite::{Message as WsMessage, WebSocket};

/// A `clarion serve` process, killed on drop.
struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Node {
    fn start(redis: &str, extra: &[&str]) -> Node {
        let mut args = vec!["--listen", "127.0.0.1:0", "--threads", "2", "--no-pin"];
        // The tests read /stats and /topics/ on the public port.
        args.push("--public-metrics");
        args.extend(["--io", io_flag(), "--redis", redis]);
        args.extend(extra);
        let (child, addr) = common::spawn_clarion(&args);
        let node = Node { child, addr };
        assert!(
            wait_for(Duration::from_secs(10), || node
                .health()
                .contains("cluster: up")),
            "node did not reach Redis"
        );
        assert_eq!(body(&get(node.addr, "/readyz")), "ready\n");
        node
    }

    /// A node with the `[cluster]` table `cluster` (TOML lines) in its config file, linked.
    fn configured(cluster: &str, extra: &[&str]) -> Node {
        let (child, addr) = spawn_configured(cluster, extra);
        let node = Node { child, addr };
        assert!(
            wait_for(Duration::from_secs(20), || node
                .health()
                .contains("cluster: up")),
            "node did not reach Redis"
        );
        node
    }

    /// Two nodes on `redis`, both linked.
    fn pair(redis: &Redis) -> (Node, Node) {
        (
            Node::start(&redis.url(), &[]),
            Node::start(&redis.url(), &[]),
        )
    }

    fn health(&self) -> String {
        get(self.addr, "/healthz")
    }

    fn stats(&self) -> Value {
        serde_json::from_str(body(&get(self.addr, "/stats"))).unwrap()
    }

    fn presence(&self, topic: &str) -> (u64, u64) {
        let answer: Value =
            serde_json::from_str(body(&get(self.addr, &format!("/topics/{topic}")))).unwrap();
        let n = |key: &str| answer[key].as_u64().unwrap();
        (n("subscribers"), n("local"))
    }

    fn publish(&self, topic: &str, body: &str) -> u16 {
        publish(self.addr, topic, body)
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `clarion serve` (one reactor) whose config file has the `[cluster]` table `cluster`.
fn spawn_configured(cluster: &str, extra: &[&str]) -> (Child, SocketAddr) {
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("clarion-node-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, format!("[cluster]\n{cluster}\n")).unwrap();
    let mut args = vec!["--listen", "127.0.0.1:0", "--threads", "1", "--no-pin"];
    // The tests read /stats, /metrics and /readyz on the public port.
    args.push("--public-metrics");
    args.extend(["--io", io_flag(), "--config", path.to_str().unwrap()]);
    args.extend(extra);
    // The file is read before the node listens.
    let spawned = common::spawn_clarion(&args);
    let _ = std::fs::remove_file(&path);
    spawned
}

/// `--io` for the backend under test.
fn io_flag() -> &'static str {
    match common::io() {
        clarion_engine::Io::Epoll => "epoll",
        clarion_engine::Io::Uring => "uring",
        clarion_engine::Io::Auto => "auto",
    }
}

/// `POST /publish/<topic>`; returns the status code.
fn publish(addr: SocketAddr, topic: &str, body: &str) -> u16 {
    let request = format!(
        "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = common::http(addr, request.as_bytes());
    answer[9..12].parse().unwrap()
}

fn get(addr: SocketAddr, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

fn body(answer: &str) -> &str {
    answer.split("\r\n\r\n").nth(1).unwrap_or_default()
}

fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

type Ws = WebSocket<TcpStream>;

fn send(ws: &mut Ws, command: Value) {
    ws.send(WsMessage::text(command.to_string())).unwrap();
}

/// The next JSON text message.
fn next(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("a message") {
            WsMessage::Text(text) => return serde_json::from_str(&text).unwrap(),
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// An envelope subscriber of `topic` on `addr`, after its ack (which is returned).
fn subscriber(addr: SocketAddr, topic: &str, resume: Option<(u64, &str)>) -> (Ws, Value) {
    let mut ws = common::connect(addr, "/ws");
    let mut command = json!({"type": "subscribe", "topic": topic, "id": 1});
    if let Some((since, epoch)) = resume {
        command["since"] = since.into();
        command["epoch"] = epoch.into();
    }
    send(&mut ws, command);
    let ack = next(&mut ws);
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["id"], 1);
    (ws, ack)
}

/// The next `count` deliveries: (seq, data).
fn deliveries(ws: &mut Ws, count: usize) -> Vec<(u64, String)> {
    (0..count)
        .map(|_| {
            let message = next(ws);
            assert_eq!(message["type"], "message", "{message}");
            let seq = message["seq"].as_u64().unwrap();
            (seq, message["data"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// The next text message of a raw socket.
fn raw_text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("a message") {
            WsMessage::Text(text) => return text.as_str().to_owned(),
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Nothing more arrives within `quiet`.
fn assert_silent(ws: &mut Ws, quiet: Duration) {
    ws.get_mut().set_read_timeout(Some(quiet)).unwrap();
    match ws.read() {
        Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {}
        other => panic!("expected silence, got {other:?}"),
    }
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
}

#[test]
fn messages_published_on_one_node_reach_the_other_in_order_exactly_once() {
    let redis = Redis::start();
    let (a, b) = Node::pair(&redis);
    let (mut on_a, ack) = subscriber(a.addr, "room", None);
    assert_eq!(
        (ack["seq"].as_u64(), ack["recovered"].as_bool()),
        (Some(0), Some(false))
    );
    let (mut also_on_a, _) = subscriber(a.addr, "room", None);
    let (mut on_b, _) = subscriber(b.addr, "room", None);
    let mut raw_on_a = common::connect(a.addr, "/t/room");
    // The raw socket's subscribe is on its own connection: see it counted before publishing.
    assert!(wait_for(Duration::from_secs(5), || a.presence("room").1 == 3));

    // Publishers: HTTP on B, WebSocket on B, and HTTP on A (the origin also gets its own).
    let mut publisher = common::connect(b.addr, "/ws");
    let mut expected = Vec::new();
    for i in 0..30 {
        let body = format!("http-b-{i}");
        assert_eq!(b.publish("room", &body), 202);
        expected.push(body);
        let body = format!("ws-b-{i}");
        send(
            &mut publisher,
            json!({"type": "publish", "topic": "room", "data": body, "id": i}),
        );
        let ack = next(&mut publisher);
        assert_eq!(ack, json!({"type": "ack", "id": i, "topic": "room"}));
        expected.push(body);
        let body = format!("http-a-{i}");
        assert_eq!(a.publish("room", &body), 202);
        expected.push(body);
    }
    let total = expected.len();
    let got = deliveries(&mut on_a, total);
    let seqs: Vec<u64> = got.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "one sequence, no gap"
    );
    let mut bodies: Vec<String> = got.iter().map(|(_, body)| body.clone()).collect();
    // Each publisher's messages keep their order within Redis's order.
    for prefix in ["http-b-", "ws-b-", "http-a-"] {
        let mine: Vec<&String> = bodies.iter().filter(|b| b.starts_with(prefix)).collect();
        let sent: Vec<&String> = expected.iter().filter(|b| b.starts_with(prefix)).collect();
        assert_eq!(mine, sent, "{prefix} in publish order");
    }
    // Every node and every subscriber sees the same messages under the same numbers.
    assert_eq!(deliveries(&mut also_on_a, total), got);
    assert_eq!(deliveries(&mut on_b, total), got);
    for (_, body) in &got {
        match raw_on_a.read().unwrap() {
            WsMessage::Text(text) => assert_eq!(text.as_str(), body),
            other => panic!("unexpected {other:?}"),
        }
    }
    bodies.sort();
    expected.sort();
    assert_eq!(bodies, expected, "exactly the published messages");
    assert_silent(&mut on_a, Duration::from_millis(300));
    assert_silent(&mut on_b, Duration::from_millis(100));
    let stats = a.stats();
    assert_eq!(stats["cluster"]["up"], 1);
    assert_eq!(stats["cluster"]["dropped"], 0);
}

#[test]
fn a_client_resumes_on_another_node_without_gap_or_duplicate() {
    let redis = Redis::start();
    let (a, b) = Node::pair(&redis);
    let (mut first, ack) = subscriber(a.addr, "feed", None);
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    for i in 1..=5 {
        assert_eq!(a.publish("feed", &format!("m{i}")), 202);
    }
    let seen = deliveries(&mut first, 3);
    assert_eq!(seen.last().unwrap().0, 3);
    drop(first); // it leaves A having seen 1..=3

    // Publishing goes on, on A, while the client comes back on B (which has no subscriber of
    // the topic yet, so B fetches it from Redis): the replay and the live messages must join.
    let addr = a.addr;
    let publishing = std::thread::spawn(move || {
        for i in 6..=200 {
            assert_eq!(publish(addr, "feed", &format!("m{i}")), 202);
            std::thread::sleep(Duration::from_micros(500));
        }
    });
    std::thread::sleep(Duration::from_millis(20));
    let (mut back, ack) = subscriber(b.addr, "feed", Some((3, &epoch)));
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(ack["epoch"].as_str(), Some(epoch.as_str()));
    // 202 means queued for Redis: at least what the first client saw is there.
    let upto = ack["seq"].as_u64().unwrap();
    assert!(upto >= 3);
    publishing.join().unwrap();
    let got = deliveries(&mut back, 197);
    let expected: Vec<(u64, String)> = (4..=200).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(got, expected, "replay 4..={upto}, then live, contiguous");
    assert_silent(&mut back, Duration::from_millis(200));

    // A resume from before what the nodes keep is not recovered, on either node.
    let (_, ack) = subscriber(a.addr, "feed", Some((1, &epoch)));
    assert_eq!(
        (ack["recovered"].as_bool(), ack["seq"].as_u64()),
        (Some(false), Some(200))
    );
    let (_, ack) = subscriber(b.addr, "feed", Some((150, &epoch)));
    assert_eq!(ack["recovered"], true);
}

#[test]
fn a_message_missed_on_pub_sub_is_fetched_from_the_log_before_the_next() {
    let redis = Redis::start();
    let node = Node::start(&redis.url(), &[]);
    let (mut ws, _) = subscriber(node.addr, "g", None);
    assert_eq!(node.publish("g", "first"), 202);
    assert_eq!(deliveries(&mut ws, 1), [(1, "first".to_owned())]);
    // Another writer numbers and logs a message but its PUBLISH never reaches this node (as
    // when Redis drops a subscriber's backlog): only the log has seq 2.
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let seq: u64 = redis::cmd("INCR")
        .arg("clarion:{g}:seq")
        .query(&mut con)
        .unwrap();
    assert_eq!(seq, 2);
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
        .to_string();
    let _: String = redis::cmd("XADD")
        .arg("clarion:{g}:log")
        .arg("2-0")
        .arg(&["f", "t", "t", &time, "d", "missed"])
        .query(&mut con)
        .unwrap();
    // Seq 3 arrives live: the node sees the gap and reads seq 2 from the log first.
    assert_eq!(node.publish("g", "third"), 202);
    let expected = [(2, "missed"), (3, "third")].map(|(seq, d)| (seq, d.to_owned()));
    assert_eq!(deliveries(&mut ws, 2), expected);
    assert_silent(&mut ws, Duration::from_millis(200));
}

#[test]
fn a_trimmed_log_is_not_recovered() {
    let redis = Redis::start();
    let short = ["--history-size", "3"];
    let (a, b) = (
        Node::start(&redis.url(), &short),
        Node::start(&redis.url(), &short),
    );
    let (_keep, ack) = subscriber(a.addr, "t", None);
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    for i in 1..=10 {
        assert_eq!(a.publish("t", &format!("m{i}")), 202);
    }
    assert!(wait_for(
        Duration::from_secs(5),
        || a.stats()["hub"]["published"] == 10
    ));
    let (_, ack) = subscriber(b.addr, "t", Some((2, &epoch)));
    assert_eq!(
        (ack["recovered"].as_bool(), ack["seq"].as_u64()),
        (Some(false), Some(10))
    );
    let (mut ws, ack) = subscriber(b.addr, "t", Some((7, &epoch)));
    assert_eq!(ack["recovered"], true);
    let got = deliveries(&mut ws, 3);
    assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [8, 9, 10]);
    // Another epoch (another cluster, or a Redis that lost its data) never recovers.
    let (_, ack) = subscriber(b.addr, "t", Some((9, "0000000000000001")));
    assert_eq!(ack["recovered"], false);
}

#[test]
fn presence_counts_subscribers_across_nodes_and_forgets_a_dead_node() {
    let redis = Redis::start();
    let (a, b) = Node::pair(&redis);
    let _on_a: Vec<Ws> = (0..2)
        .map(|_| common::connect(a.addr, "/t/lobby"))
        .collect();
    let _on_b: Vec<Ws> = (0..3)
        .map(|_| subscriber(b.addr, "lobby", None).0)
        .collect();
    assert!(
        wait_for(Duration::from_secs(5), || a.presence("lobby") == (5, 2)),
        "{:?}",
        a.presence("lobby")
    );
    assert!(wait_for(Duration::from_secs(5), || b.presence("lobby") == (5, 3)));
    assert_eq!(a.presence("elsewhere"), (0, 0));
    b.kill();
    // B's counts expire three heartbeats (3 s) after its last one.
    assert!(
        wait_for(Duration::from_secs(8), || a.presence("lobby") == (2, 2)),
        "{:?}",
        a.presence("lobby")
    );
}

#[test]
fn a_single_node_answers_presence_with_its_own_counts() {
    let server = common::start(|_| {});
    let addr = server.local_addr();
    let _subs: Vec<Ws> = (0..2).map(|_| common::connect(addr, "/t/solo")).collect();
    assert!(wait_for(Duration::from_secs(5), || {
        body(&get(addr, "/topics/solo")) == r#"{"local":2,"subscribers":2,"topic":"solo"}"#
    }));
    assert!(get(addr, "/topics/bad%20name").starts_with("HTTP/1.1 400"));
    assert_eq!(body(&get(addr, "/healthz")), "ok\n");
}

#[test]
fn both_nodes_ride_out_a_redis_restart_and_resume_fills_the_gap() {
    let mut redis = Redis::persistent();
    let (a, b) = Node::pair(&redis);
    let (mut leaver, ack) = subscriber(a.addr, "r", None);
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    let (mut stayer, _) = subscriber(b.addr, "r", None);
    for i in 1..=5 {
        assert_eq!(b.publish("r", &format!("m{i}")), 202);
    }
    assert_eq!(deliveries(&mut leaver, 5).last().unwrap().0, 5);
    assert_eq!(deliveries(&mut stayer, 5).last().unwrap().0, 5);
    drop(leaver);

    redis.kill();
    for node in [&a, &b] {
        assert!(wait_for(Duration::from_secs(10), || node
            .health()
            .contains("cluster: down")));
    }
    // While Redis is down publishes are buffered for the other nodes, and delivered here at
    // once, numbered provisionally: to envelope subscribers and raw sockets alike.
    let mut raw = common::connect(b.addr, "/t/r");
    assert!(wait_for(Duration::from_secs(5), || b.presence("r").1 == 2));
    for i in 6..=8 {
        assert_eq!(b.publish("r", &format!("m{i}")), 202);
    }
    let outage: Vec<(u64, String)> = (6..=8).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(deliveries(&mut stayer, 3), outage, "local delivery goes on");
    for i in 6..=8 {
        assert_eq!(raw_text(&mut raw), format!("m{i}"));
    }
    let cluster = &b.stats()["cluster"];
    assert_eq!(cluster["buffered"], 3, "{cluster}");
    assert_eq!(cluster["provisional"], 3, "{cluster}");

    redis.restart();
    for node in [&a, &b] {
        assert!(wait_for(Duration::from_secs(10), || node
            .health()
            .contains("cluster: up")));
    }
    // B's buffer reaches Redis before anything published later, on any node; nobody else
    // published meanwhile, so Redis numbers them as B did, and B does not deliver them again.
    assert!(wait_for(
        Duration::from_secs(10),
        || b.stats()["cluster"]["buffered"] == 0
    ));
    for i in 9..=10 {
        assert_eq!(a.publish("r", &format!("m{i}")), 202);
    }
    let expected: Vec<(u64, String)> = (6..=10).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(
        deliveries(&mut stayer, 2),
        expected[3..],
        "then the new ones, without a duplicate"
    );
    for i in 9..=10 {
        assert_eq!(raw_text(&mut raw), format!("m{i}"));
    }
    assert_eq!(b.stats()["cluster"]["resets"], 0);
    // The client that left during the outage comes back on the other node and gets the gap.
    let (mut back, ack) = subscriber(b.addr, "r", Some((5, &epoch)));
    assert_eq!(
        (ack["recovered"].as_bool(), ack["seq"].as_u64()),
        (Some(true), Some(10))
    );
    assert_eq!(deliveries(&mut back, 5), expected);
    // And a new subscriber on A, whose hub went through the restart, is live.
    let (mut fresh, _) = subscriber(a.addr, "r", None);
    assert_eq!(b.publish("r", "m11"), 202);
    assert_eq!(deliveries(&mut fresh, 1), [(11, "m11".to_owned())]);
    assert_eq!(deliveries(&mut stayer, 1), [(11, "m11".to_owned())]);
    for node in [&a, &b] {
        let cluster = &node.stats()["cluster"];
        assert!(cluster["reconnects"].as_u64().unwrap() >= 1, "{cluster}");
        assert_eq!(cluster["buffered"], 0);
        assert_eq!(cluster["dropped"], 0);
    }
}

/// An envelope subscriber's view after reading until it matches `want` (or 10 s pass): `view`
/// (what it had) and its deliveries, less those a `reset` voided; and how many resets it got.
fn settle(
    ws: &mut Ws,
    mut view: Vec<(u64, String)>,
    want: &[(u64, String)],
) -> (Vec<(u64, String)>, usize) {
    let mut resets = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while view != want && Instant::now() < deadline {
        let message = match ws.read() {
            Ok(WsMessage::Text(text)) => serde_json::from_str::<Value>(&text).unwrap(),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        let seq = message["seq"].as_u64().unwrap();
        match message["type"].as_str() {
            Some("message") => {
                let data = message["data"].as_str().unwrap().to_owned();
                assert!(
                    view.last().is_none_or(|(last, _)| *last < seq),
                    "{view:?} {message}"
                );
                view.push((seq, data));
            }
            Some("reset") => {
                view.retain(|(s, _)| *s <= seq);
                resets += 1;
            }
            _ => panic!("unexpected {message}"),
        }
    }
    (view, resets)
}

#[test]
fn nodes_that_both_published_during_an_outage_converge_on_redis_numbering() {
    let mut redis = Redis::persistent();
    let (a, b) = Node::pair(&redis);
    let (mut on_a, ack) = subscriber(a.addr, "c", None);
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    let (mut on_b, _) = subscriber(b.addr, "c", None);
    let mut raws = [
        common::connect(a.addr, "/t/c"),
        common::connect(b.addr, "/t/c"),
    ];
    for node in [&a, &b] {
        assert!(wait_for(Duration::from_secs(5), || node.presence("c").1 == 2));
    }
    redis.kill();
    for node in [&a, &b] {
        assert!(wait_for(Duration::from_secs(10), || node
            .health()
            .contains("cluster: down")));
    }
    // Both nodes number their own publishes 1, 2, …: at most one of them can keep its numbers.
    for (node, names) in [(&a, ["a1", "a2"].as_slice()), (&b, &["b1", "b2", "b3"])] {
        for name in names {
            assert_eq!(node.publish("c", name), 202);
        }
    }
    let (had_a, had_b) = (deliveries(&mut on_a, 2), deliveries(&mut on_b, 3));
    let names = |view: &[(u64, String)]| view.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>();
    assert_eq!(names(&had_a), ["a1", "a2"]);
    assert_eq!(names(&had_b), ["b1", "b2", "b3"]);

    redis.restart();
    for node in [&a, &b] {
        assert!(wait_for(Duration::from_secs(10), || node
            .health()
            .contains("cluster: up")
            && node.stats()["cluster"]["buffered"] == 0));
    }
    // Redis's order, as a client resuming from the start on either node sees it.
    let (mut reader, ack) = subscriber(a.addr, "c", Some((0, &epoch)));
    assert_eq!(ack["recovered"], true, "{ack}");
    let order = deliveries(&mut reader, 5);
    let mut names: Vec<&str> = order.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(
        order.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    names.sort();
    assert_eq!(names, ["a1", "a2", "b1", "b2", "b3"]);

    // Each envelope subscriber, applying its resets, holds exactly Redis's sequence.
    let (view_a, resets_a) = settle(&mut on_a, had_a, &order);
    let (view_b, resets_b) = settle(&mut on_b, had_b, &order);
    assert_eq!(view_a, order);
    assert_eq!(view_b, order);
    assert!(resets_a + resets_b >= 1, "both nodes cannot keep seq 1");
    let counted: u64 = [&a, &b]
        .iter()
        .map(|node| node.stats()["cluster"]["resets"].as_u64().unwrap())
        .sum();
    assert_eq!(counted as usize, resets_a + resets_b);
    // Raw sockets have no seq: each gets every message exactly once.
    for raw in &mut raws {
        let mut got: Vec<String> = (0..5).map(|_| raw_text(raw)).collect();
        got.sort();
        assert_eq!(got, ["a1", "a2", "b1", "b2", "b3"]);
        assert_silent(raw, Duration::from_millis(300));
    }
    assert_silent(&mut on_a, Duration::from_millis(100));
    assert_silent(&mut on_b, Duration::from_millis(100));
}

#[test]
fn without_redis_publishes_fill_the_buffer_then_are_refused_and_counted() {
    // Nothing listens on this Redis port: the link is down from the start.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (child, addr) = spawn_configured(
        &format!("redis = \"redis://127.0.0.1:{port}\"\nbuffer_bytes = 100"),
        &[],
    );
    let node = Node { child, addr };
    assert_eq!(body(&node.health()), "ok\ncluster: down\n");
    // Alive, but not to be sent new clients while its link is down.
    let ready = get(node.addr, "/readyz");
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert_eq!(body(&ready), "not ready: cluster link down\n");
    let sixty = "x".repeat(60);
    assert_eq!(node.publish("t", &sixty), 202);
    assert_eq!(node.publish("t", &sixty), 503);
    let mut ws = common::connect(addr, "/ws");
    send(
        &mut ws,
        json!({"type": "publish", "topic": "t", "data": sixty, "id": 1}),
    );
    let error = next(&mut ws);
    assert_eq!(error["code"], "unavailable", "{error}");
    // A raw socket has no reply to carry the refusal: it is closed with 1013.
    let mut raw = common::connect(addr, "/t/t");
    raw.send(tungstenite::Message::text(sixty.clone())).unwrap();
    let code = loop {
        match raw.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(code, Some(1013));
    let cluster = &node.stats()["cluster"];
    assert_eq!(
        (cluster["buffered"].as_u64(), cluster["dropped"].as_u64()),
        (Some(1), Some(3))
    );
    let metrics = get(addr, "/metrics");
    assert!(
        metrics.contains("clarion_cluster_dropped_total 3"),
        "{metrics}"
    );
    assert!(metrics.contains("clarion_cluster_up 0"));
}

/// A topic's log as Redis holds it: (seq, data) in order.
fn log_of(redis: &Redis, topic: &str) -> Vec<(u64, String)> {
    let entries: Vec<(String, HashMap<String, String>)> =
        redis.query(&["XRANGE", &format!("clarion:{{{topic}}}:log"), "-", "+"]);
    entries
        .into_iter()
        .map(|(id, fields)| {
            let seq = id.strip_suffix("-0").unwrap().parse().unwrap();
            (seq, fields["d"].clone())
        })
        .collect()
}

#[test]
fn subscribers_on_two_nodes_ride_out_a_sentinel_failover_and_resume_across_it() {
    let mut redis = Sentinels::start();
    // Servers and sentinels ask for passwords (each their own).
    let sentinels = redis.config();
    let config = |acks: u32| format!("{sentinels}\nmin_replicas_ack = {acks}");
    // Node A lets go of a publish once the replica has it too; node B once the master has it.
    let history = ["--history-size", "1000"];
    let a = Node::configured(&config(1), &history);
    let b = Node::configured(&config(0), &history);
    let (mut on_a, ack) = subscriber(a.addr, "f", None);
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    let (mut on_b, _) = subscriber(b.addr, "f", None);
    let (mut leaver, _) = subscriber(a.addr, "f", None);
    // Presence through Sentinel's master.
    assert!(wait_for(Duration::from_secs(10), || a.presence("f") == (3, 2)));
    assert!(wait_for(Duration::from_secs(10), || b.presence("f") == (3, 1)));

    let (addr_a, addr_b) = (a.addr, b.addr);
    let publishing = std::thread::spawn(move || {
        let mut accepted = Vec::new();
        for i in 1..=120 {
            for (addr, name) in [(addr_a, format!("a{i}")), (addr_b, format!("b{i}"))] {
                assert_eq!(publish(addr, "f", &name), 202, "{name}");
                accepted.push(name);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        accepted
    });
    // A client leaves after a few messages; the replica surely has what it saw (a write of our
    // own, then WAIT for it) before the master dies, mid-stream.
    let seen = deliveries(&mut leaver, 10);
    drop(leaver);
    let since = seen.last().unwrap().0;
    let mut direct = redis.master.connection();
    let _: () = redis::cmd("SET")
        .arg("test-mark")
        .arg(1)
        .query(&mut direct)
        .unwrap();
    assert!(wait_for(Duration::from_secs(30), || {
        let replicated: u64 = redis::cmd("WAIT")
            .arg(1)
            .arg(1000)
            .query(&mut direct)
            .unwrap();
        replicated == 1
    }));
    redis.master.kill();
    let promoted = redis.replica.port();
    assert!(
        wait_for(Duration::from_secs(30), || redis.named_master()
            == Some(promoted)),
        "the sentinels did not promote the replica"
    );
    // The old master comes back as the new one's replica, so that WAIT can be met again.
    redis.master.restart_as_replica_of(promoted);
    let mut accepted = publishing.join().unwrap();
    // Traffic after the failover, on both nodes.
    for i in 121..=130 {
        for (node, name) in [(&a, format!("a{i}")), (&b, format!("b{i}"))] {
            assert_eq!(node.publish("f", &name), 202);
            accepted.push(name);
        }
    }
    for node in [&a, &b] {
        assert!(
            wait_for(Duration::from_secs(30), || {
                let cluster = &node.stats()["cluster"];
                cluster["up"] == 1 && cluster["buffered"] == 0
            }),
            "{}",
            node.stats()["cluster"]
        );
    }

    // The new master's log is the truth: one contiguous numbering, each message once.
    let order = log_of(&redis.replica, "f");
    let seqs: Vec<u64> = order.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=order.len() as u64).collect::<Vec<_>>());
    let mut names: Vec<&str> = order.iter().map(|(_, d)| d.as_str()).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "no message twice");
    assert!(names.iter().all(|n| accepted.iter().any(|a| a == n)));
    // What may be lost: with min_replicas_ack = 1 (node A) nothing accepted, as a publish stays
    // in the node's buffer until the replica has it, and is sent again to the promoted one.
    // With 0 (node B), what the old master took but had not yet sent to its replica when it
    // died: a window of microseconds on loopback (often nothing), of the replication lag in
    // general. Here it is counted, not required.
    let missing: Vec<&String> = accepted
        .iter()
        .filter(|name| names.binary_search(&name.as_str()).is_err())
        .collect();
    assert!(
        missing.iter().all(|name| name.starts_with('b')),
        "node A (min_replicas_ack = 1) lost {missing:?}"
    );
    eprintln!(
        "failover: {} of {} publishes accepted by node B (min_replicas_ack = 0) lost",
        missing.len(),
        accepted.len() / 2
    );

    // Subscribers on both nodes kept receiving: applying the resets they were sent, each holds
    // exactly the new master's sequence.
    let (view_a, _) = settle(&mut on_a, Vec::new(), &order);
    assert_eq!(view_a, order);
    let (view_b, _) = settle(&mut on_b, Vec::new(), &order);
    assert_eq!(view_b, order);
    // The client that left before the failover resumes on the other node after it.
    let (mut back, ack) = subscriber(b.addr, "f", Some((since, &epoch)));
    assert_eq!(ack["recovered"], true, "{ack}");
    let rest = deliveries(&mut back, order.len() - since as usize);
    assert_eq!(rest, order[since as usize..]);
    for node in [&a, &b] {
        let cluster = &node.stats()["cluster"];
        assert!(cluster["reconnects"].as_u64().unwrap() >= 1, "{cluster}");
        assert_eq!(cluster["dropped"], 0);
    }
}

#[test]
fn a_redis_cluster_carries_each_topic_on_its_own_master_through_a_slot_migration() {
    let redis = RedisCluster::start(3);
    // One topic on each master.
    let mut topics: Vec<String> = vec![String::new(); 3];
    for i in 0.. {
        let topic = format!("spread-{i}");
        let owner = redis.owner(redis.slot(&topic));
        if topics[owner].is_empty() {
            topics[owner] = topic;
        }
        if topics.iter().all(|t| !t.is_empty()) {
            break;
        }
    }
    // The masters ask for a password: the nodes' command and push connections authenticate.
    let config = redis.config();
    // The log covers what is published while the slot migrates (see below).
    let history = ["--history-size", "1000"];
    let (a, b) = (
        Node::configured(&config, &history),
        Node::configured(&config, &history),
    );
    let mut subscribers: Vec<Ws> = topics
        .iter()
        .map(|topic| subscriber(a.addr, topic, None).0)
        .collect();
    // Presence across nodes, each node's counts on some master.
    for topic in &topics {
        assert!(wait_for(Duration::from_secs(10), || b.presence(topic) == (1, 0)));
    }
    // Publishers on B, subscribers on A.
    for i in 1..=20 {
        for topic in &topics {
            assert_eq!(b.publish(topic, &format!("{topic}/{i}")), 202);
        }
    }
    for (ws, topic) in subscribers.iter_mut().zip(&topics) {
        let expected: Vec<(u64, String)> = (1..=20).map(|i| (i, format!("{topic}/{i}"))).collect();
        assert_eq!(deliveries(ws, 20), expected);
    }
    // Each master carries its own topic's channel, and only that one; messages went out with
    // SPUBLISH (plain PUBLISH would reach every master over the cluster bus).
    for (master, topic) in redis.masters.iter().zip(&topics) {
        let channels: Vec<String> = master.query(&["PUBSUB", "SHARDCHANNELS"]);
        assert_eq!(channels, [format!("clarion:{{{topic}}}")]);
        let stats: String = master.query(&["INFO", "commandstats"]);
        assert!(stats.contains("cmdstat_spublish:"), "{stats}");
        assert!(!stats.contains("cmdstat_publish:"), "{stats}");
    }

    // The first topic's slot moves to another master while B publishes to it. While its keys
    // move, B's publishes are redirected (TRYAGAIN, then ASK) and published on the new master,
    // where A does not listen yet; when the slot is handed over, A subscribes there and fills
    // the pause from the log.
    let moving = topics[0].clone();
    let slot = redis.slot(&moving);
    let addr_b = b.addr;
    let topic = moving.clone();
    let (started, publishing_started) = std::sync::mpsc::channel();
    let publishing = std::thread::spawn(move || {
        for i in 21..=220 {
            assert_eq!(publish(addr_b, &topic, &format!("{topic}/{i}")), 202);
            if i == 60 {
                started.send(()).unwrap();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    publishing_started.recv().unwrap();
    redis.migrate(slot, 0, 1, Duration::from_millis(100));
    assert_eq!(redis.owner(slot), 1);
    publishing.join().unwrap();
    // And after it, when B's map is surely stale.
    for i in 221..=230 {
        assert_eq!(b.publish(&moving, &format!("{moving}/{i}")), 202);
    }
    let expected: Vec<(u64, String)> = (21..=230).map(|i| (i, format!("{moving}/{i}"))).collect();
    assert_eq!(
        deliveries(&mut subscribers[0], expected.len()),
        expected,
        "in order, exactly once, across the migration"
    );
    assert_silent(&mut subscribers[0], Duration::from_millis(200));
    let channels = |master: usize| -> Vec<String> {
        redis.masters[master].query(&["PUBSUB", "SHARDCHANNELS"])
    };
    assert!(!channels(0).contains(&format!("clarion:{{{moving}}}")));
    assert!(channels(1).contains(&format!("clarion:{{{moving}}}")));
    // The other topics never stopped.
    for (ws, topic) in subscribers[1..].iter_mut().zip(&topics[1..]) {
        assert_eq!(b.publish(topic, "after"), 202);
        assert_eq!(deliveries(ws, 1), [(21, "after".to_owned())]);
    }
    let published = &b.stats()["cluster"];
    assert!(published["redirects"].as_u64().unwrap() >= 1, "{published}");
    assert_eq!(published["dropped"], 0);
    assert_eq!(a.stats()["cluster"]["up"], 1);
}

#[test]
fn nodes_follow_a_failover_whose_old_master_lives_on() {
    let redis = Sentinels::start();
    let config = redis.config();
    let (a, b) = (
        Node::configured(&config, &[]),
        Node::configured(&config, &[]),
    );
    let (mut on_a, _) = subscriber(a.addr, "s", None);
    let (mut on_b, _) = subscriber(b.addr, "s", None);
    for i in 1..=5 {
        assert_eq!(b.publish("s", &format!("m{i}")), 202);
    }
    let first: Vec<(u64, String)> = (1..=5).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(deliveries(&mut on_a, 5), first);
    assert_eq!(deliveries(&mut on_b, 5), first);
    // An operator's failover: the old master is demoted, not killed. The sentinels announce
    // it on +switch-master; both nodes leave the old master for the new one.
    let _: () = redis.sentinels[0].query(&["SENTINEL", "FAILOVER", MASTER_NAME]);
    let promoted = redis.replica.port();
    assert!(wait_for(Duration::from_secs(30), || redis.named_master()
        == Some(promoted)));
    let following = || {
        let (_, count): (String, u64) = redis.replica.query(&["PUBSUB", "NUMSUB", "clarion:{s}"]);
        count == 2
    };
    assert!(
        wait_for(Duration::from_secs(30), following),
        "both nodes subscribe on the new master"
    );
    for i in 6..=10 {
        assert_eq!(a.publish("s", &format!("m{i}")), 202);
    }
    let then: Vec<(u64, String)> = (6..=10).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(deliveries(&mut on_a, 5), then);
    assert_eq!(deliveries(&mut on_b, 5), then);
    let demoted = || {
        let role: redis::RedisResult<Vec<redis::Value>> = redis.master.try_query(&["ROLE"]);
        role.is_ok_and(|role| role[0] == redis::Value::BulkString(b"slave".to_vec()))
    };
    assert!(wait_for(Duration::from_secs(30), demoted));
    for node in [&a, &b] {
        assert_eq!(node.stats()["cluster"]["dropped"], 0);
    }
}
