//! The push server over TLS, end to end with the real binary: `--tls-cert` / `--tls-key` and
//! the `[tls]` table, every route on the TLS listener (WebSocket echo and topics, the publish
//! API, health; metrics from the plaintext admin listener), plaintext refused, and the certificate read again on SIGHUP: a good one serves
//! new connections while open ones stay up, a bad one is refused and the old one stays.
//! `CLARION_TEST_IO=epoll|uring` picks the backend.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use common::Clarion;
use common::tls::{client, first_cert, fixture, http, leaf, websocket};
use tungstenite::Message;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("clarion-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn every_route_is_served_over_tls_and_plaintext_is_refused() {
    let (chain, key) = (fixture("chain.pem"), fixture("key.pem"));
    let clarion = Clarion::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            path(&chain),
            "--tls-key",
            path(&key),
        ],
        &[],
    );
    assert!(
        clarion
            .log
            .iter()
            .any(|l| l.contains("listening on") && l.contains("(TLS)")),
        "{:?}",
        clarion.log
    );
    let addr = clarion.addr;
    let config = client();

    let mut echo = websocket(addr, &config, "/echo");
    echo.send(Message::text("over tls")).unwrap();
    assert_eq!(echo.read().unwrap(), Message::text("over tls"));

    // A topic subscriber gets what the publish API, also over TLS, sends.
    // Subscribed once the 101 is in: the server answers after `on_open` has run.
    let mut subscriber = websocket(addr, &config, "/t/news");
    let answer = http(
        addr,
        &config,
        "POST /publish/news HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(subscriber.read().unwrap(), Message::text("hello"));

    let health = http(addr, &config, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // The metrics are on the admin listener, which stays plaintext (loopback by default).
    let admin = clarion.admin.expect("an admin listener");
    let metrics = common::http(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let handshakes = metrics
        .lines()
        .filter(|l| l.starts_with("clarion_tls_handshakes"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum::<u64>();
    assert!(handshakes >= 4, "{metrics}");

    // Plain HTTP on the TLS port gets no answer but, at most, a TLS alert.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(answer.is_empty() || answer[0] == 21, "{answer:?}");

    echo.send(Message::text("still")).unwrap();
    assert_eq!(echo.read().unwrap(), Message::text("still"));
}

#[test]
fn sighup_reads_the_certificate_again_and_a_bad_one_is_refused() {
    let dir = scratch("reload");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(fixture("chain.pem"), &cert).unwrap();
    std::fs::copy(fixture("key.pem"), &key).unwrap();
    let file = dir.join("clarion.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\n[tls]\ncert = {:?}\nkey = {:?}\n",
            path(&cert),
            path(&key)
        ),
    )
    .unwrap();
    let mut clarion = Clarion::start(&["--config", path(&file)], &[]);
    let addr = clarion.addr;
    let mut before = websocket(addr, &client(), "/echo");
    assert_eq!(leaf(&before), first_cert(&fixture("cert.pem")));

    // Renewed in place (as certbot does), then SIGHUP: new connections get the new one.
    std::fs::copy(fixture("cert2.pem"), &cert).unwrap();
    std::fs::copy(fixture("key2.pem"), &key).unwrap();
    clarion.signal(libc::SIGHUP);
    clarion.wait_for("TLS certificate read again");
    let mut after = websocket(addr, &client(), "/echo");
    assert_eq!(leaf(&after), first_cert(&fixture("cert2.pem")));

    // A key that does not match, then a file that is not PEM: refused, the last good one stays.
    std::fs::copy(fixture("other-key.pem"), &key).unwrap();
    clarion.signal(libc::SIGHUP);
    let refused = clarion.wait_for("reload refused");
    assert!(refused.contains("does not belong"), "{refused}");
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::copy(fixture("key2.pem"), &key).unwrap();
    clarion.signal(libc::SIGHUP);
    let refused = clarion.wait_for("reload refused");
    assert!(refused.contains("cert.pem"), "{refused}");
    let mut last = websocket(addr, &client(), "/echo");
    assert_eq!(leaf(&last), first_cert(&fixture("cert2.pem")));

    for ws in [&mut before, &mut after, &mut last] {
        ws.send(Message::text("still here")).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text("still here"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_certificate_without_its_key_or_one_that_does_not_load_stops_the_start() {
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_clarion"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("CLARION_TEST_IO")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let chain = fixture("chain.pem");
    let (code, stderr) = run(&["--tls-cert", path(&chain)]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("both a certificate and its key"),
        "{stderr}"
    );
    let other = fixture("other-key.pem");
    let (code, stderr) = run(&["--tls-cert", path(&chain), "--tls-key", path(&other)]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("does not belong"), "{stderr}");
}

/// The push server in this process with TLS from the test fixtures.
fn tls_server() -> clarion_engine::Runtime {
    let key = clarion::server::tls::load(&fixture("chain.pem"), &fixture("key.pem")).unwrap();
    let cert = std::sync::Arc::new(clarion_engine::tls::ReloadableCert::new(key));
    let tls = clarion_engine::TlsConfig::new(cert).unwrap();
    common::start(|config| config.tls = Some(tls))
}

#[test]
fn python_websockets_with_an_ssl_context_echoes_and_receives_fanout_over_wss() {
    let runtime = tls_server();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/websockets_client.py"
    );
    let ca = fixture("ca.pem");
    let output = std::process::Command::new("python3")
        .args([script, &runtime.local_addr().to_string(), path(&ca)])
        .output()
        .expect("python3 runs (pip install websockets; scripts/test.sh does)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.matches("\"ok\": true").count(), 2, "{stdout}");
    let handshakes: u64 = runtime
        .stats()
        .iter()
        .map(|s| s.tls_handshakes.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert!(handshakes >= 6, "{handshakes}");
}

#[test]
fn chromium_echoes_and_receives_fanout_over_wss() {
    let runtime = tls_server();
    let result = common::run_page(runtime.local_addr(), "tls", "wss");
    for check in ["echoText", "echoBinary", "subscribed", "topic", "envelope"] {
        assert_eq!(result[check], true, "{check}: {result}");
    }
}
