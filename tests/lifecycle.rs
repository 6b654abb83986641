//! Timers and shutdown: idle timeout, keep-alive pings, graceful drain, and the `clarion`
//! binary's signals and exit codes.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn idle_connections_are_closed_with_1001() {
    let server = start(|c| {
        c.protocol.ping_interval = None;
        c.protocol.idle_timeout = Some(Duration::from_millis(300));
    });
    let mut stream = raw_ws(server.local_addr());
    let started = Instant::now();
    assert_eq!(read_close_code(&mut stream), 1001);
    assert!(started.elapsed() >= Duration::from_millis(290));
    // Anything from the client resets the idle clock.
    let mut stream = raw_ws(server.local_addr());
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(150));
        stream.write_all(&frame(true, 0x1, b"x")).unwrap();
        assert_eq!(read_frame(&mut stream).unwrap(), (true, 0x1, b"x".to_vec()));
    }
    assert_eq!(read_close_code(&mut stream), 1001);
}

#[test]
fn quiet_peers_are_pinged_and_dropped_when_they_do_not_answer() {
    let server = start(|c| {
        c.protocol.ping_interval = Some(Duration::from_millis(200));
        c.protocol.pong_timeout = Duration::from_millis(200);
    });
    let mut stream = raw_ws(server.local_addr());
    assert_eq!(read_frame(&mut stream).unwrap(), (true, 0x9, vec![]));
    stream.write_all(&frame(true, 0xA, b"")).unwrap();
    assert_eq!(
        read_frame(&mut stream).unwrap(),
        (true, 0x9, vec![]),
        "pinged again after the pong"
    );
    // No answer this time.
    assert_eq!(read_close_code(&mut stream), 1001);
    assert!(eventually(|| total(&server, |s| &s.connections) == 0));
}

#[test]
fn shutdown_closes_every_connection_with_1001_and_stops() {
    let server = start(|c| {
        c.drain_timeout = Duration::from_secs(5);
        c.protocol.close_timeout = Duration::from_secs(1);
    });
    let addr = server.local_addr();
    let mut clients: Vec<_> = (0..20).map(|_| raw_ws(addr)).collect();
    let mut ws = connect(addr, "/echo");
    server.shutdown();
    for stream in &mut clients {
        assert_eq!(read_close_code(stream), 1001);
    }
    // A conforming client answers the close; the server then hangs up.
    match ws.read() {
        Ok(tungstenite::Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("{other:?}"),
    }
    // The raw clients never answer: their close handshakes time out, then the reactors exit.
    let started = Instant::now();
    server.join();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no longer accepting"
    );
}

fn clarion() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clarion"))
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let (mut child, addr) = spawn_clarion(&["--listen", "127.0.0.1:0", "--threads", "1"]);
    let mut stream = raw_ws(addr);
    // SAFETY: kill(2) on the child we spawned, by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(read_close_code(&mut stream), 1001);
    stream
        .write_all(&frame(true, 0x8, &1001u16.to_be_bytes()))
        .unwrap();
    drop(stream);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn bad_flags_and_config_exit_with_status_2() {
    let dir = std::env::temp_dir().join(format!("clarion-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_file = dir.join("bad.toml");
    std::fs::File::create(&bad_file)
        .unwrap()
        .write_all(b"threds = 2\n")
        .unwrap();
    let cases: Vec<Vec<String>> = vec![
        vec!["serve".into(), "--threads".into(), "0".into()],
        vec!["serve".into(), "--bogus".into()],
        vec!["serve".into(), "--listen".into(), "nowhere".into()],
        vec!["serve".into(), "--idle-timeout".into(), "soon".into()],
        vec![
            "serve".into(),
            "--config".into(),
            bad_file.display().to_string(),
        ],
    ];
    for args in cases {
        let out = clarion().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?} explains itself");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigterm_still_drains_when_stderr_is_gone() {
    use std::io::BufRead;
    let mut child = clarion()
        .args(["serve", "--listen", "127.0.0.1:0", "--threads", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    log.read_line(&mut line).unwrap();
    // Whoever read the log went away: every later log line fails to write.
    drop(log);
    // SAFETY: kill(2) on the child we spawned, by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(5) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit 0 within 5 s of SIGTERM"
    );
}

#[test]
fn deadlines_beyond_a_sweep_fire_and_idle_connections_hold_no_timer() {
    let server = start(|c| {
        c.protocol.ping_interval = Some(Duration::from_secs(30));
        c.protocol.idle_timeout = None;
    });
    let clients: Vec<_> = (0..200).map(|_| raw_ws(server.local_addr())).collect();
    std::thread::sleep(Duration::from_millis(1500));
    // Their next deadline (a ping in 30 s) is beyond the next sweep: no wheel node each.
    assert_eq!(total(&server, |s| &s.timers), 0);
    drop(clients);

    // A 1.5 s idle timeout is armed by a sweep, not at open, and still fires on time.
    let server = start(|c| {
        c.protocol.ping_interval = None;
        c.protocol.idle_timeout = Some(Duration::from_millis(1500));
    });
    let mut stream = raw_ws(server.local_addr());
    let started = Instant::now();
    assert_eq!(read_close_code(&mut stream), 1001);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1490) && waited < Duration::from_millis(2500),
        "{waited:?}"
    );
}
