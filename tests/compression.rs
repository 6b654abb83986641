//! permessage-deflate end to end with real clients: the Python `websockets` library and headless
//! Chromium, under both policies and on the backend under test. Besides what the clients see,
//! the server's own counters must show compressed frames in and out (including shared fanout
//! frames), so a silent fallback to uncompressed traffic fails.
//!
//! Needs `python3` with `websockets` and `chromium` (scripts/test.sh installs both).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;

use clarion::server::AppConfig;
use clarion_engine::{CompressionConfig, Policy, Runtime};
use common::*;

fn server(policy: Policy) -> Runtime {
    let compression = CompressionConfig {
        policy,
        ..CompressionConfig::default()
    };
    start_app(
        |config| config.compression = compression,
        AppConfig {
            compression,
            ..app()
        },
    )
}

/// A counter of `/metrics`, summed over reactors.
fn metric(addr: SocketAddr, name: &str) -> u64 {
    let answer = http(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    answer
        .lines()
        .filter(|line| line.starts_with(&format!("clarion_{name}{{")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// At least `inbound` compressed messages received and `outbound` sent, then every window and
/// compressing connection given back once the clients are gone.
fn assert_compressed(addr: SocketAddr, policy: Policy, inbound: u64, outbound: u64) {
    let at_least = (inbound, outbound);
    let seen = (
        metric(addr, "deflate_messages_in_total"),
        metric(addr, "deflate_messages_out_total"),
    );
    assert!(
        seen.0 >= at_least.0 && seen.1 >= at_least.1,
        "{policy:?}: compressed messages (in, out) {seen:?}, expected at least {at_least:?}"
    );
    if policy == Policy::PerConnection {
        // Context-takeover connections held windows; they are all given back once closed.
        assert!(eventually(|| metric(addr, "deflate_windows") == 0));
    }
    assert!(eventually(|| metric(addr, "deflate_connections") == 0));
}

#[test]
fn python_websockets_negotiates_and_exchanges_compressed_messages() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/websockets_client.py"
    );
    for policy in [Policy::Shared, Policy::PerConnection] {
        let runtime = server(policy);
        let addr = runtime.local_addr();
        let output = Command::new("python3")
            .args([script, &addr.to_string()])
            .output()
            .expect("python3 runs (pip install websockets; scripts/test.sh does)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{policy:?}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let answers: Vec<serde_json::Value> = stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let echo = |offer: &str| {
            answers
                .iter()
                .find(|a| a["offer"] == offer && a["path"] == "/echo")
                .and_then(|a| a["answer"].as_str())
                .unwrap_or_else(|| panic!("no answer for {offer}: {stdout}"))
                .to_owned()
        };
        let no_takeover = "server_no_context_takeover; client_no_context_takeover";
        match policy {
            Policy::Shared => assert!(echo("default").contains(no_takeover), "{stdout}"),
            _ => assert!(!echo("default").contains("no_context_takeover"), "{stdout}"),
        }
        assert!(
            echo("small-windows").contains("server_max_window_bits=10; client_max_window_bits=9"),
            "{stdout}"
        );
        assert_eq!(answers.iter().filter(|a| a["ok"] == true).count(), 2);
        // Echoes: 12 each way. Under shared, the two deliveries (raw and envelope) of the
        // default offer's topic message are shared compressed frames too. Not those of the
        // small-windows offer: the shared frame was compressed with a 32 KiB window and the
        // message is larger than its 1 KiB one. Context-takeover subscribers get plain frames.
        let fanout = if policy == Policy::Shared { 2 } else { 0 };
        assert_compressed(addr, policy, 12, 12 + fanout);
    }
}

#[test]
fn chromium_negotiates_and_exchanges_compressed_messages() {
    for policy in [Policy::Shared, Policy::PerConnection] {
        let runtime = server(policy);
        let addr = runtime.local_addr();
        let result = run_page(addr, &format!("{policy:?}"), "ws");
        let extensions = result["extensions"].as_str().unwrap_or_default();
        assert!(
            extensions.starts_with("permessage-deflate"),
            "{policy:?}: {result}"
        );
        for check in ["echoText", "echoBinary", "subscribed", "topic", "envelope"] {
            assert_eq!(result[check], true, "{policy:?} {check}: {result}");
        }
        // Chromium compresses every message it sends; echoes come back compressed, and under
        // shared the raw and envelope deliveries too.
        let fanout = if policy == Policy::Shared { 2 } else { 0 };
        assert_compressed(addr, policy, 4, 2 + fanout);
    }
}

/// The answer to an upgrade of `/echo` offering `offer`, and the open connection.
fn offer(addr: SocketAddr, offer: &str) -> (String, std::net::TcpStream) {
    let request = String::from_utf8(upgrade_request("/echo"))
        .unwrap()
        .replacen(
            "\r\n\r\n",
            &format!("\r\nSec-WebSocket-Extensions: {offer}\r\n\r\n"),
            1,
        );
    let mut stream = tcp(addr);
    stream.write_all(request.as_bytes()).unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let answer = head
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Extensions: "))
        .unwrap_or_default()
        .to_owned();
    (answer, stream)
}

#[test]
fn windows_past_the_cap_fall_back_to_no_context_takeover_and_come_back_when_freed() {
    let compression = CompressionConfig {
        policy: Policy::PerConnection,
        max_windows: 1,
        ..CompressionConfig::default()
    };
    // One reactor, so the cap (per reactor) is the server's.
    let runtime = start_app(
        |config| {
            config.threads = 1;
            config.compression = compression;
        },
        AppConfig {
            compression,
            ..app()
        },
    );
    let addr = runtime.local_addr();
    let (first, first_stream) = offer(addr, "permessage-deflate; client_max_window_bits");
    assert_eq!(first, "permessage-deflate; client_max_window_bits=15");
    assert!(eventually(|| metric(addr, "deflate_windows") == 1));
    // Past the cap: compressed all the same, without windows.
    let (second, _second_stream) = offer(addr, "permessage-deflate");
    assert_eq!(
        second,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    assert_eq!(metric(addr, "deflate_capped_total"), 1);
    // A client that asks for no context takeover itself holds no window either.
    let (third, _third_stream) = offer(
        addr,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    );
    assert_eq!(
        third,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    assert_eq!(metric(addr, "deflate_connections"), 3);
    // Closing the first gives its place back.
    drop(first_stream);
    assert!(eventually(|| metric(addr, "deflate_windows") == 0));
    let (again, _again_stream) = offer(addr, "permessage-deflate");
    assert_eq!(again, "permessage-deflate");
    // Invalid offers are declined, not refused.
    let (declined, _) = offer(addr, "permessage-deflate; server_max_window_bits=16");
    assert_eq!(declined, "");
}
