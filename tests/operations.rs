//! Running the real binary as an operator would: settings from the environment and secret
//! files, logs without colour and as JSON, refused clients in the log, reload on SIGHUP with
//! connections kept, and systemd's notifications on a fake notify socket.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;

use common::{Clarion, PATIENCE, eventually, read_head, refused_at_accept, tcp, upgrade_request};
use tungstenite::Message;

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("clarion-ops-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The status of a WebSocket upgrade of `path` with extra header lines `headers`.
fn upgrade_status(addr: SocketAddr, path: &str, headers: &str) -> u16 {
    let request = String::from_utf8(upgrade_request(path)).unwrap();
    let request = request.replacen("\r\n\r\n", &format!("\r\n{headers}\r\n"), 1);
    let mut stream = tcp(addr);
    stream.write_all(request.as_bytes()).unwrap();
    status_of(&read_head(&mut stream))
}

fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The status of `POST /publish/news` with `key` as the bearer key.
fn publish_status(addr: SocketAddr, key: &str) -> u16 {
    let request = format!(
        "POST /publish/news HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: 2\r\n\r\nhi"
    );
    status_of(&common::http(addr, request.as_bytes()))
}

/// A WebSocket on `/echo` that answers.
fn echo(addr: SocketAddr) -> tungstenite::WebSocket<std::net::TcpStream> {
    let mut ws = common::connect(addr, "/echo");
    assert_alive(&mut ws);
    ws
}

/// [`echo`], once the server has room for it: a connection closed a moment ago may still count
/// against `max_connections` until the server has read its end.
fn echo_when_free(addr: SocketAddr) -> tungstenite::WebSocket<std::net::TcpStream> {
    for _ in 0..500 {
        let stream = tcp(addr);
        if let Ok((mut ws, _)) = tungstenite::client(format!("ws://{addr}/echo"), stream) {
            assert_alive(&mut ws);
            return ws;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no room for a connection");
}

fn assert_alive(ws: &mut tungstenite::WebSocket<std::net::TcpStream>) {
    ws.send(Message::text("still here")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("still here"));
}

#[test]
fn the_environment_sets_keys_under_the_flags_and_secrets_come_from_files() {
    let dir = scratch("env");
    let key = dir.join("api_key");
    std::fs::write(&key, "from-a-file\n").unwrap();
    let clarion = Clarion::start(
        &["--max-connections", "2"],
        &[
            ("CLARION_LISTEN", "127.0.0.1:0"),
            ("CLARION_THREADS", "1"),
            ("CLARION_MAX_CONNECTIONS", "1"),
            ("CLARION_API_KEY_FILE", key.to_str().unwrap()),
            ("CLARION_NO_SUCH_SETTING", "1"),
        ],
    );
    let addr = clarion.addr;
    let logged = |needle: &str| clarion.log.iter().any(|l| l.contains(needle));
    assert!(logged("with 1 reactors"), "CLARION_THREADS applies");
    assert!(
        logged("ignoring CLARION_NO_SUCH_SETTING"),
        "{:?}",
        clarion.log
    );
    // The key came from the file, its newline trimmed.
    assert_eq!(publish_status(addr, "from-a-file"), 202);
    assert_eq!(publish_status(addr, "from-a-fil"), 401);
    // The flag's 2 wins over the environment's 1; a third connection is closed at accept.
    let _first = echo_when_free(addr);
    let _second = echo_when_free(addr);
    assert!(eventually(|| refused_at_accept(addr)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unreadable_secret_file_stops_the_start_with_status_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_clarion"))
        .args(["serve", "--listen", "127.0.0.1:0", "--auth", "jwt"])
        .env("CLARION_JWT_SECRET_FILE", "/nonexistent/clarion-jwt")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "CLARION_JWT_SECRET_FILE: cannot read jwt_secret_file /nonexistent/clarion-jwt"
        ),
        "{stderr}"
    );
}

#[test]
fn logs_have_no_colour_off_a_terminal_and_show_connections_at_debug() {
    let mut clarion = Clarion::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--log-level",
            "debug",
        ],
        &[],
    );
    let mut ws = echo(clarion.addr);
    clarion.wait_for("websocket open");
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }))
    .unwrap();
    while ws.read().is_ok() {}
    let closed = clarion.wait_for("websocket closed");
    assert!(closed.contains("code=1000"), "{closed}");
    assert!(closed.contains("reason=\"normal\""), "{closed}");
    for line in &clarion.log {
        assert!(!line.contains('\x1b'), "colour in a pipe: {line:?}");
    }
}

#[test]
fn json_logs_are_one_object_a_line() {
    let mut clarion = Clarion::start(
        &["--listen", "127.0.0.1:0", "--threads", "1"],
        &[("CLARION_LOG_FORMAT", "json")],
    );
    let addr = clarion.addr;
    assert_eq!(publish_status(addr, "any"), 202);
    clarion.signal(libc::SIGTERM);
    clarion.wait_for("stopped");
    assert_eq!(clarion.wait().code(), Some(0));
    assert!(clarion.log.len() >= 3, "{:?}", clarion.log);
    for line in &clarion.log {
        let object: serde_json::Value = serde_json::from_str(line).expect(line);
        assert!(object["level"].is_string(), "{line}");
        assert!(object["message"].is_string(), "{line}");
    }
    let listening = &clarion
        .log
        .iter()
        .find(|l| l.contains("listening on"))
        .unwrap();
    let object: serde_json::Value = serde_json::from_str(listening).unwrap();
    assert_eq!(object["level"], "INFO");
}

#[test]
fn refused_clients_are_logged_with_path_peer_reason_and_subject() {
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    let mut clarion = Clarion::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--auth",
            "jwt",
            "--allowed-origins",
            "https://good.example",
            "--api-key",
            "k",
            // io_uring's accepts carry the peer's address only for the per-IP cap.
            "--max-connections-per-ip",
            "100",
        ],
        &[("CLARION_JWT_SECRET", "s3cret, a secret of 32 bytes or more")],
    );
    let addr = clarion.addr;
    let claims = serde_json::json!({
        "exp": get_current_timestamp() + 600,
        "sub": "alice",
        "subscribe": ["weather"],
    });
    let token = encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(b"s3cret, a secret of 32 bytes or more"),
    )
    .unwrap();
    let bearer = format!("Authorization: Bearer {token}\r\n");

    assert_eq!(upgrade_status(addr, "/t/news", &bearer), 403);
    let line = clarion.wait_for("refused a client");
    for part in [
        "path=\"/t/news\"",
        "peer=127.0.0.1:",
        "status=403",
        "reason=\"topic not allowed\"",
        "sub=\"alice\"",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
    let evil = format!("{bearer}Origin: https://evil.example\r\n");
    assert_eq!(upgrade_status(addr, "/t/weather", &evil), 403);
    let line = clarion.wait_for("refused a client");
    assert!(line.contains("reason=\"origin not allowed\""), "{line}");
    // `/ws` opens and closes at once with 4003, which is what the log line says.
    assert_eq!(upgrade_status(addr, "/ws", ""), 101);
    let line = clarion.wait_for("refused a client");
    assert!(line.contains("reason=\"missing token\""), "{line}");
    assert!(line.contains("status=4003"), "{line}");
    assert_eq!(publish_status(addr, "wrong"), 401);
    let line = clarion.wait_for("refused a client");
    assert!(line.contains("path=\"/publish/news\""), "{line}");
    // With JWT on, a bearer that is not the API key is tried as a client's token.
    assert!(
        line.contains("reason=\"not the API key, and a token refused: invalid token\""),
        "{line}"
    );
    // A token in the query is not logged with the path; nor is the secret.
    assert_eq!(
        upgrade_status(addr, &format!("/t/news?token={token}"), ""),
        403
    );
    let line = clarion.wait_for("refused a client");
    assert!(line.contains("sub=\"alice\""), "{line}");
    assert!(
        clarion
            .log
            .iter()
            .all(|l| !l.contains("s3cret, a secret of 32 bytes or more") && !l.contains(&token)),
        "{:#?}",
        clarion.log
    );
}

#[test]
fn sighup_applies_limits_and_keys_keeps_connections_and_refuses_a_broken_file() {
    let dir = scratch("reload");
    let file = dir.join("clarion.toml");
    let key = dir.join("api_key");
    std::fs::write(&key, "first").unwrap();
    let base = format!(
        "listen = \"127.0.0.1:0\"\nthreads = 1\napi_key_file = {:?}\n",
        key.to_str().unwrap()
    );
    std::fs::write(&file, format!("{base}max_connections = 2\n")).unwrap();
    let mut clarion = Clarion::start(&["--config", file.to_str().unwrap()], &[]);
    let addr = clarion.addr;
    let mut kept = echo(addr);
    assert_eq!(publish_status(addr, "first"), 202);
    // Connections of every kind count: with two held, a third is closed at accept.
    let blocker = echo_when_free(addr);
    assert!(eventually(|| refused_at_accept(addr)));
    drop(blocker);

    // A new limit, a new key in the secret file, debug logs, and a key that needs a restart.
    std::fs::write(&key, "second\n").unwrap();
    std::fs::write(
        &file,
        format!("{base}max_connections = 4\nlog_level = \"debug\"\nbacklog = 100\n"),
    )
    .unwrap();
    clarion.signal(libc::SIGHUP);
    let applied = clarion.wait_for("reloaded");
    for key in ["api_key", "log_level", "max_connections"] {
        assert!(applied.contains(key), "{key} in {applied}");
    }
    let restart = clarion.wait_for("applied only after a restart");
    assert!(restart.contains("backlog"), "{restart}");
    assert_alive(&mut kept);
    let mut second = echo_when_free(addr);
    clarion.wait_for("websocket open");
    assert_eq!(publish_status(addr, "first"), 401);
    assert_eq!(publish_status(addr, "second"), 202);

    // A broken file is refused whole; the running config stays.
    std::fs::write(&file, format!("{base}max_connections = \"lots\"\n")).unwrap();
    clarion.signal(libc::SIGHUP);
    let refused = clarion.wait_for("reload refused");
    assert!(refused.contains("invalid max_connections"), "{refused}");
    std::fs::write(&file, "threads = \n").unwrap();
    clarion.signal(libc::SIGHUP);
    clarion.wait_for("reload refused");
    std::fs::write(&file, format!("{base}max_connections = 4\n")).unwrap();
    std::fs::remove_file(&key).unwrap();
    clarion.signal(libc::SIGHUP);
    let refused = clarion.wait_for("reload refused");
    assert!(refused.contains("cannot read"), "{refused}");
    assert_alive(&mut kept);
    assert_alive(&mut second);
    // The reloaded limit of 4 holds.
    let _third = echo_when_free(addr);
    let fourth = echo_when_free(addr);
    assert!(eventually(|| refused_at_accept(addr)));
    drop(fourth);
    assert!(eventually(|| publish_status(addr, "second") == 202));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Notifications received on a fake systemd notify socket.
struct FakeSystemd {
    socket: UnixDatagram,
    dir: PathBuf,
}

impl FakeSystemd {
    fn new() -> FakeSystemd {
        let dir = scratch("notify");
        let socket = UnixDatagram::bind(dir.join("notify")).unwrap();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        FakeSystemd { socket, dir }
    }

    fn path(&self) -> String {
        self.dir.join("notify").to_str().unwrap().to_owned()
    }

    /// The next notification that starts with `prefix` (watchdog pings in between skipped).
    fn expect(&self, prefix: &str) -> String {
        let mut buffer = [0u8; 4096];
        loop {
            let n = self.socket.recv(&mut buffer).expect("a notification");
            let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
            if text.starts_with(prefix) {
                return text;
            }
            assert_eq!(text, "WATCHDOG=1", "looking for {prefix}");
        }
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn systemd_hears_ready_reloading_watchdog_and_stopping() {
    let systemd = FakeSystemd::new();
    let path = systemd.path();
    let mut clarion = Clarion::start(
        &["--listen", "127.0.0.1:0", "--threads", "2"],
        // Half of it, 100 ms, between watchdog rounds.
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "200000")],
    );
    let ready = systemd.expect("READY=1");
    assert!(ready.contains("STATUS=listening on 127.0.0.1:"), "{ready}");
    // Each ping after the first needs both reactors to have answered the round before.
    for _ in 0..3 {
        systemd.expect("WATCHDOG=1");
    }
    let mut ws = echo(clarion.addr);
    clarion.signal(libc::SIGHUP);
    let reloading = systemd.expect("RELOADING=1");
    assert!(reloading.contains("\nMONOTONIC_USEC="), "{reloading}");
    systemd.expect("READY=1");
    clarion.signal(libc::SIGTERM);
    systemd.expect("STOPPING=1");
    while ws.read().is_ok() {}
    clarion.wait_for("stopped");
    assert_eq!(clarion.wait().code(), Some(0));
}

#[test]
fn a_second_process_on_the_same_ports_is_warned_about() {
    let mut first = Clarion::start(&["--listen", "127.0.0.1:0", "--threads", "1"], &[]);
    let (addr, admin) = (first.addr.to_string(), first.admin.unwrap().to_string());
    // SO_REUSEPORT lets it bind both; the kernel would split their connections.
    let mut second = Clarion::start(
        &["--listen", &addr, "--threads", "1"],
        &[("CLARION_ADMIN_LISTEN", &admin)],
    );
    second.wait_for(&format!("another process listens on {addr} too"));
    second.wait_for(&format!("another process listens on {admin} too"));
    // The first found both ports free.
    first.signal(libc::SIGTERM);
    first.wait_for("stopped");
    assert!(
        !first
            .log
            .iter()
            .any(|line| line.contains("another process")),
        "{:#?}",
        first.log
    );
}
