//! End to end: the loadgen against the real `clarion serve` (idle, echo, churn, --procs) and
//! against a small fake fanout server (fanout over raw topics, the envelope protocol and HTTP
//! publish), plus the exit statuses. 2,000 connections where it matters; under ~30 s in all.

mod common;

use common::{ClarionServer, assert_keys, describe, free_port, loadgen, run_loadgen};

#[test]
fn idle_and_echo_hold_2000_connections() {
    let server = ClarionServer::start(1);
    let url = format!("ws://{}/echo", server.addr);
    let pid = server.pid().to_string();
    let json = successful_run(&[
        "idle",
        &url,
        "-c",
        "2000",
        "-d",
        "1s",
        "--ping-interval",
        "200ms",
        "--server-pid",
        &pid,
    ]);
    assert_keys(&json);
    assert_eq!(json["mode"], "idle");
    assert_eq!(json["established"], 2000, "{json:#}");
    assert_eq!(json["failed"], 0);
    assert_eq!(json["dropped"], 0);
    assert_eq!(json["closed_clean"], 2000);
    assert_eq!(json["handshake_us"]["count"], 2000);
    assert!(json["server"]["rss_after_kib"].as_u64().unwrap() > 0);

    // The replies read through io_uring.
    let (output, json) = run_loadgen(&[
        "echo",
        &url,
        "-c",
        "2000",
        "-d",
        "2s",
        "--window",
        "2",
        "--server-pid",
        &pid,
        "--io",
        "uring",
    ]);
    let json = json.unwrap_or_else(|| panic!("no JSON\n{}", describe(&output)));
    assert!(output.status.success(), "{}", describe(&output));
    assert_keys(&json);
    assert_eq!(json["established"], 2000, "{json:#}");
    assert_eq!(json["failed"], 0);
    assert_eq!(json["dropped"], 0);
    let received = json["messages_received"].as_u64().unwrap();
    // At least one round trip per connection, even on a loaded machine.
    assert!(received >= 2000, "{json:#}");
    assert_eq!(
        json["messages_sent"], json["messages_received"],
        "replies drained"
    );
    assert!(json["ring_reads"].as_u64().unwrap() >= 2000, "{json:#}");
    assert_eq!(json["latency_us"]["count"].as_u64().unwrap(), received);
    assert!(json["throughput"].as_f64().unwrap() > 0.0);
    assert!(json["loadgen_cpu"]["per_message_us"].as_f64().unwrap() > 0.0);
    // The server echoed every one of those messages inside the window: it spent CPU on them.
    assert!(json["server"]["cpu_per_message_us"].as_f64().unwrap() > 0.0);
    let stdout = String::from_utf8_lossy(&output.stdout);
    for column in [
        "p50",
        "p90",
        "p99",
        "p99.9",
        "p99.99",
        "max",
        "mean",
        "throughput",
    ] {
        assert!(stdout.contains(column), "table lacks {column}:\n{stdout}");
    }
}

#[test]
fn echo_at_a_rate_churn_and_procs() {
    let server = ClarionServer::start(1);
    let url = format!("ws://{}/echo", server.addr);
    let json = successful_run(&[
        "echo", &url, "-c", "50", "-d", "1s", "--rate", "2000", "--window", "4",
    ]);
    let sent = json["messages_sent"].as_u64().unwrap();
    // The schedule is a ceiling (2,000 in the second, plus the window); how close a busy
    // machine comes to it is a benchmark's question, not this test's.
    assert!(
        (1..=2100).contains(&sent),
        "open loop never sends ahead of schedule: {json:#}"
    );

    let json = successful_run(&[
        "churn",
        &url,
        "-d",
        "1s",
        "--rate",
        "300",
        "--concurrency",
        "32",
    ]);
    let cycles = json["cycles"].as_u64().unwrap();
    assert!((1..=301).contains(&cycles), "at most the rate: {json:#}");
    assert_eq!(json["failed"], 0);
    assert_eq!(json["closed_clean"], json["established"]);

    let json = successful_run(&[
        "echo",
        &url,
        "-c",
        "200",
        "-d",
        "1s",
        "--procs",
        "2",
        "--threads",
        "1",
    ]);
    assert_eq!(json["procs"], 2);
    assert_eq!(json["established"], 200, "{json:#}");
    assert!(json["messages_received"].as_u64().unwrap() > 200);

    let hdr = std::env::temp_dir().join(format!("clarion-loadgen-{}.hdr", std::process::id()));
    let json = successful_run(&[
        "echo",
        &url,
        "-c",
        "200",
        "-d",
        "2s",
        "--threads",
        "2",
        "--private-fd-table",
        "--hdr",
        hdr.to_str().unwrap(),
    ]);
    assert_eq!(json["established"], 200, "{json:#}");
    let log = std::fs::read_to_string(&hdr).unwrap();
    let intervals = log
        .lines()
        .filter(|l| l.starts_with("Tag=latency,"))
        .count();
    assert!(intervals >= 2, "{log}");
    let _ = std::fs::remove_file(&hdr);
}

#[test]
fn fanout_delivers_every_message_once_to_2000_subscribers() {
    let server = ClarionServer::start(2);
    let url = format!("ws://{}/t/", server.addr);
    // Each topic's messages reach its 1,000 subscribers, read through epoll or io_uring.
    for io in ["epoll", "uring"] {
        let args = [
            "fanout",
            &url,
            "-c",
            "2000",
            "-d",
            "2s",
            "--rate",
            "20",
            "--topics",
            "2",
            "--publishers",
            "2",
            "--io",
            io,
        ];
        let json = complete_fanout(&args, 1000, 38, io);
        assert_keys(&json);
        assert_eq!(json["established"], 2000, "{json:#}");
        assert_eq!(json["subscribers"], 2000);
        assert_eq!(json["closed_clean"], 2000, "{io}: {json:#}");
        let published = json["published"].as_u64().unwrap();
        assert_eq!(
            json["latency_us"]["count"].as_u64().unwrap(),
            published * 1000
        );
        assert_eq!(json["io"], io);
        // Through the ring every delivery and close frame was read by it (a read carries
        // one or more); through epoll, none.
        let reads = json["ring_reads"].as_u64().unwrap();
        let received = json["messages_received"].as_u64().unwrap();
        match io {
            "uring" => assert!(reads > 0 && reads <= received + 2000, "{json:#}"),
            _ => assert_eq!(reads, 0),
        }
    }

    // Subscribers in two processes, publishers in the first: counts merge across them. With a
    // warm-up, its messages are sent, delivered and checked, but neither timed nor counted as
    // published or delivered (in one process and across two, the first with receive
    // coalescing, which must not lose or reorder anything either).
    for (procs, warmup, coalesce) in [("2", "0s", "0s"), ("1", "1s", "200us"), ("2", "1s", "0s")] {
        let args = [
            "fanout",
            &url,
            "-c",
            "400",
            "-d",
            "1s",
            "--warmup",
            warmup,
            "--rate",
            "20",
            "--procs",
            procs,
            "--threads",
            "1",
            "--coalesce",
            coalesce,
        ];
        let what = format!("{procs} process(es), warm-up {warmup}, coalescing {coalesce}");
        let json = complete_fanout(&args, 400, 18, &what);
        assert_eq!(json["subscribers"], 400, "{what}");
        let published = json["published"].as_u64().unwrap();
        assert!(published <= 21, "{what}: only the window's: {json:#}");
        let sent = json["messages_sent"].as_u64().unwrap();
        if warmup != "0s" {
            assert!(sent >= published + 18, "{what}: warm-up sent too: {json:#}");
        }
        assert_eq!(
            json["messages_received"].as_u64().unwrap(),
            sent * 400,
            "{what}"
        );
        assert_eq!(
            json["latency_us"]["count"].as_u64().unwrap(),
            published * 400,
            "{what}"
        );
        let warmup_s = if warmup == "0s" { 0.0 } else { 1.0 };
        assert_eq!(json["warmup_s"], warmup_s, "{what}");
        let coalesce_us = if coalesce == "0s" { 0.0 } else { 200.0 };
        assert_eq!(json["coalesce_us"], coalesce_us, "{what}");
    }
}

/// The engine's test certificates (for localhost and 127.0.0.1, signed by `ca.pem`).
fn test_cert(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../crates/engine/tests/tls/").to_owned() + name
}

#[test]
fn every_mode_over_wss_times_the_tls_handshake_apart() {
    let (chain, key, ca) = (
        test_cert("chain.pem"),
        test_cert("key.pem"),
        test_cert("ca.pem"),
    );
    let server = ClarionServer::start_with(2, &["--tls-cert", &chain, "--tls-key", &key]);
    let echo = format!("wss://localhost:{}/echo", server.addr.port());

    let json = successful_run(&["echo", &echo, "-c", "50", "-d", "1s", "--ca", &ca]);
    assert_eq!(json["established"], 50, "{json:#}");
    assert_eq!(json["failed"], 0, "{json:#}");
    assert_eq!(json["tls_us"]["count"], 50, "one TLS handshake each");
    assert_eq!(json["connect_us"]["count"], 50);
    assert_eq!(json["handshake_us"]["count"], 50, "the upgrade, over TLS");
    assert!(
        json["messages_received"].as_u64().unwrap() >= 50,
        "{json:#}"
    );
    assert_eq!(json["messages_sent"], json["messages_received"]);

    // Full handshakes and resumed ones; both complete cycles without a failure.
    for resume in [true, false] {
        let mut args = vec![
            "churn",
            &echo,
            "--concurrency",
            "4",
            "-d",
            "1s",
            "--ca",
            &ca,
        ];
        if !resume {
            args.push("--no-resume");
        }
        let json = successful_run(&args);
        assert!(json["cycles"].as_u64().unwrap() > 0, "{json:#}");
        assert_eq!(json["failed"], 0, "resume {resume}: {json:#}");
    }

    // Raw topic subscribers over wss, messages published over https.
    let topics = format!("wss://localhost:{}/t/", server.addr.port());
    let publish = format!("https://localhost:{}/publish", server.addr.port());
    let args = [
        "fanout",
        &topics,
        "-c",
        "200",
        "-d",
        "1s",
        "--rate",
        "20",
        "--publish-via",
        "http",
        "--publish-url",
        &publish,
        "--ca",
        &ca,
    ];
    let json = complete_fanout(&args, 200, 15, "wss");
    assert_eq!(json["publish_errors"], 0, "{json:#}");
    assert_eq!(json["tls_us"]["count"], 200);

    // The certificate is checked: without the CA every connection fails as `tls`; with
    // --insecure any certificate goes.
    let (output, json) = run_loadgen(&["idle", &echo, "-c", "5", "-d", "100ms", "--retries", "0"]);
    let json = json.unwrap_or_else(|| panic!("no JSON\n{}", describe(&output)));
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert_eq!(json["failures"]["tls"], 5, "{json:#}");
    let json = successful_run(&["idle", &echo, "-c", "5", "-d", "100ms", "--insecure"]);
    assert_eq!(json["established"], 5, "{json:#}");
}

#[test]
fn fanout_over_the_envelope_protocol_and_http_publish() {
    let server = ClarionServer::start(2);
    let ws = format!("ws://{}/ws", server.addr);
    let publish = format!("http://{}/publish", server.addr);
    for via in ["ws", "http"] {
        let args = [
            "fanout",
            &ws,
            "--protocol",
            "envelope",
            "--publish-via",
            via,
            "--publish-url",
            &publish,
            "-c",
            "200",
            "-d",
            "1s",
            "--rate",
            "20",
        ];
        let json = complete_fanout(&args, 200, 15, via);
        assert_eq!(json["publish_errors"], 0, "{via}");
    }
}

#[test]
fn the_sse_transport_holds_streams_and_fans_out_to_them() {
    let server = ClarionServer::start(2);
    let idle = format!("http://{}/sse/news", server.addr);
    let json = successful_run(&["idle", &idle, "-c", "500", "-d", "1s"]);
    assert_eq!(json["established"], 500, "{json:#}");
    assert_eq!(json["closed_clean"], 500, "{json:#}");
    assert_eq!(
        json["messages_received"], 1000,
        "`session` and `subscribed` each: {json:#}"
    );
    let sse = format!("http://{}/sse/", server.addr);
    let args = [
        "fanout",
        &sse,
        "--publish-via",
        "http",
        "--topics",
        "2",
        "--publishers",
        "2",
        "-c",
        "300",
        "-d",
        "1s",
        "--rate",
        "20",
    ];
    let json = complete_fanout(&args, 150, 15, "sse");
    assert_eq!(json["publish_errors"], 0);
    // A WebSocket publisher cannot go with SSE subscribers, nor http:// with echo.
    for args in [
        &["fanout", &sse][..],
        &["echo", &sse],
        &["idle", &idle, "--ping-interval", "1s"],
    ] {
        let output = loadgen().args(args).output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            describe(&output)
        );
    }
}

#[test]
fn a_held_fanout_survives_a_reconnect_storm_by_resuming() {
    let server = ClarionServer::start(2);
    let ws = format!("ws://{}/ws", server.addr);
    // Two processes: the storm's instant and its message line up across them. Read through
    // io_uring: the dropped connections' receives are cancelled, the new ones armed.
    let args = [
        "fanout",
        &ws,
        "--protocol",
        "envelope",
        "-c",
        "300",
        "-d",
        "1s",
        "--rate",
        "5",
        "--hold",
        "1s",
        "--storm",
        "0.5",
        "--procs",
        "2",
        "--threads",
        "2",
        "--max-pending",
        "50",
        "--io",
        "uring",
    ];
    // The window's 5 messages and the one published while half the subscribers are away: all
    // delivered once each (the absent ones get theirs by resuming).
    let json = complete_fanout(&args, 300, 6, "storm");
    assert_keys(&json);
    assert_eq!(json["hold_s"], 1.0);
    assert!(json["ramp_s"].as_f64().unwrap() > 0.0, "{json:#}");
    // Each of the 4 loops drops half of its 75 connections, rounded down.
    let storm = &json["storm"];
    assert_eq!(storm["dropped"], 148, "{json:#}");
    assert_eq!(storm["rejoined"], 148, "{json:#}");
    for key in ["failed", "not_recovered"] {
        assert_eq!(storm[key], 0, "{key}: {json:#}");
    }
    // Every resumed subscriber is owed at least the message published while it was away.
    assert!(storm["replayed"].as_u64().unwrap() >= 148, "{json:#}");
    assert_eq!(storm["rejoin_us"]["count"], 148);
    // Each message's first and last delivery, the storm's one after the window.
    let rounds = json["rounds"].as_array().unwrap();
    assert_eq!(rounds.len() as u64, json["published"].as_u64().unwrap());
    for round in rounds {
        assert_eq!(round["deliveries"], 300, "{round}");
        assert!(
            round["first_us"].as_f64() <= round["last_us"].as_f64(),
            "{round}"
        );
    }
    assert!(rounds.last().unwrap()["at_s"].as_f64().unwrap() >= 1.0);
    // Timed are only the window's messages.
    let published = json["published"].as_u64().unwrap();
    assert_eq!(json["latency_us"]["count"], (published - 1) * 300);
    let close = &json["close"];
    assert_eq!(
        (close["open"].as_u64(), close["failed"].as_u64()),
        (Some(300), Some(0))
    );
    let memory = &json["loadgen_memory"];
    assert!(memory["peak_kib"].as_u64().unwrap() >= memory["ramped_kib"].as_u64().unwrap());
}

/// Runs the loadgen, which must succeed and write its JSON report; returns the report.
fn successful_run(args: &[&str]) -> serde_json::Value {
    let (output, json) = run_loadgen(args);
    let json = json.unwrap_or_else(|| panic!("no JSON\n{}", describe(&output)));
    assert!(output.status.success(), "{}", describe(&output));
    json
}

/// Runs a fanout that must succeed with at least `at_least` messages published, each delivered
/// to `per_message` subscribers exactly once and in order; returns its JSON report.
fn complete_fanout(
    args: &[&str],
    per_message: u64,
    at_least: u64,
    what: &str,
) -> serde_json::Value {
    let json = successful_run(args);
    let published = json["published"].as_u64().unwrap();
    assert!(published >= at_least, "{what}: {json:#}");
    assert_eq!(
        json["delivered"].as_u64().unwrap(),
        published * per_message,
        "{what}: {json:#}"
    );
    for key in ["missing", "duplicates", "out_of_order"] {
        assert_eq!(json[key], 0, "{what}: {key}: {json:#}");
    }
    json
}

#[test]
fn usage_errors_exit_2_and_failed_runs_exit_1_with_a_reason() {
    for args in [
        &["echo"][..],
        &["echo", "ws://10.1.2.3:80/"],
        &["echo", "http://127.0.0.1:1/"],
        &["echo", "ws://127.0.0.1:1/", "--size", "4"],
        &["fanout", "ws://127.0.0.1:1/t/", "--topics", "3"],
        &["idle", "ws://127.0.0.1:1/", "--source-ips", "10.0.0.1"],
        &["idle", "ws://127.0.0.1:1/", "--warmup", "1s"],
        &["echo", "ws://127.0.0.1:1/", "--coalesce", "1s"],
    ] {
        let output = loadgen().args(args).output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            describe(&output)
        );
        assert!(!output.stderr.is_empty());
    }
    let nobody = free_port();
    let url = format!("ws://{nobody}/");
    let (output, json) = run_loadgen(&[
        "echo",
        &url,
        "-c",
        "20",
        "-d",
        "1s",
        "--retries",
        "1",
        "--backoff",
        "10ms",
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refused"), "{stderr}");
    let json = json.unwrap();
    assert_eq!(json["failures"]["refused"], 20);
    assert_eq!(json["retries"], 20);
}

#[test]
fn a_server_that_answers_garbage_is_counted_not_fatal() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let garbage = std::thread::spawn(move || {
        for (i, stream) in listener.incoming().take(10).enumerate() {
            let mut stream = stream.unwrap();
            let mut request = [0u8; 1024];
            let _ = std::io::Read::read(&mut stream, &mut request);
            let answer: &[u8] = if i % 2 == 0 {
                b"\x00\x01garbage\r\n\r\n"
            } else {
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: wrong\r\n\r\n"
            };
            let _ = std::io::Write::write_all(&mut stream, answer);
        }
    });
    let url = format!("ws://{addr}/");
    let (output, json) = run_loadgen(&["idle", &url, "-c", "10", "-d", "1s", "--retries", "0"]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let json = json.unwrap();
    assert_eq!(json["failures"]["bad_handshake"], 10, "{json:#}");
    garbage.join().unwrap();
}

#[test]
fn a_server_that_hangs_up_after_the_upgrade_counts_as_dropped() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let rude = std::thread::spawn(move || {
        for stream in listener.incoming().take(10) {
            let mut stream = stream.unwrap();
            let mut request = vec![0u8; 4096];
            let n = std::io::Read::read(&mut stream, &mut request).unwrap();
            let text = String::from_utf8_lossy(&request[..n]).into_owned();
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap()
                .trim()
                .to_owned();
            let mut answer = Vec::new();
            clarion_protocol::handshake::Accept::for_key(key.as_bytes()).write_response(
                None,
                None,
                &mut answer,
            );
            let _ = std::io::Write::write_all(&mut stream, &answer);
            // Dropped here: the FIN follows the 101 at once.
        }
    });
    let url = format!("ws://{addr}/");
    let (output, json) = run_loadgen(&["idle", &url, "-c", "10", "-d", "1s"]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let json = json.unwrap();
    assert_eq!(json["established"], 10, "{json:#}");
    assert_eq!(json["drops"]["eof"], 10, "{json:#}");
    rude.join().unwrap();
}
