//! The HTTP side of the handshake: plain routes, malformed and refused requests, frames that
//! arrive right behind the request head.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn healthz_and_unknown_routes() {
    let server = start(|_| {});
    let answer = http(
        server.local_addr(),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("ok\n"),
        "{answer}"
    );
    let answer = http(
        server.local_addr(),
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let answer = http(
        server.local_addr(),
        b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(
        answer.starts_with("HTTP/1.1 426"),
        "plain GET on a WebSocket route: {answer}"
    );
    // A method no route takes is 501 (methods are case-sensitive); a known path with a method
    // it does not take is 405 with Allow, on a kept connection.
    let mut stream = tcp(server.local_addr());
    for (request, status, allow) in [
        ("FOO /healthz", "501 Not Implemented", None),
        ("get /healthz", "501", None),
        ("FOO /nowhere", "501", None),
        ("PUT /publish/news", "501", None),
        (
            "GET /publish/news",
            "405 Method Not Allowed",
            Some("POST, OPTIONS"),
        ),
        ("GET /publish", "405", Some("POST, OPTIONS")),
        ("POST /healthz", "405", Some("GET, HEAD")),
        ("POST /nowhere", "404", None),
        ("GET /healthz", "200", None),
    ] {
        let head = format!("{request} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        let answer = read_answer(&mut stream);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{request}: {answer}"
        );
        let allowed = allow.map(|methods| format!("\r\nAllow: {methods}\r\n"));
        assert_eq!(
            allowed.is_some_and(|a| answer.contains(&a)),
            allow.is_some(),
            "{request}: {answer}"
        );
    }
}

#[test]
fn bad_requests_get_4xx() {
    let server = start(|c| {
        c.protocol.max_head_size = 1024;
        c.protocol.max_headers = 8;
    });
    let addr = server.local_addr();
    let upgrade = String::from_utf8(upgrade_request("/echo")).unwrap();
    let cases = [
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls".to_vec(),
            "400",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_vec(),
            "400",
        ),
        (
            format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000)).into_bytes(),
            "431",
        ),
        (
            (0..20)
                .fold("GET / HTTP/1.1\r\n".to_owned(), |s, i| {
                    s + &format!("H{i}: v\r\n")
                })
                .into_bytes(),
            "431",
        ),
        (
            upgrade.replace("Version: 13", "Version: 8").into_bytes(),
            "426",
        ),
        (
            upgrade
                .replace("dGhlIHNhbXBsZSBub25jZQ==", "short")
                .into_bytes(),
            "400",
        ),
        (upgrade.replace("GET", "POST").into_bytes(), "405"),
        // RFC 6455 §11.3.1, §11.3.5: the key and the version appear once.
        (
            upgrade
                .replace(
                    "\r\n\r\n",
                    "\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n",
                )
                .into_bytes(),
            "400",
        ),
        (
            upgrade
                .replace("\r\n\r\n", "\r\nSec-WebSocket-Version: 13\r\n\r\n")
                .into_bytes(),
            "400",
        ),
        // RFC 9112 §3.2: HTTP/1.1 needs exactly one Host.
        (b"GET /healthz HTTP/1.1\r\n\r\n".to_vec(), "400"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
            "400",
        ),
        (
            upgrade
                .replace("\r\n\r\n", "\r\nHost: b\r\n\r\n")
                .into_bytes(),
            "400",
        ),
        // Bodies need one Content-Length; chunked ones are not decoded.
        (
            b"POST /publish/t HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\
              Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            "411",
        ),
    ];
    for (request, status) in cases {
        let answer = http(addr, &request);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{status}: {answer}"
        );
    }
    let answer = http(
        addr,
        &upgrade.replace("Version: 13", "Version: 8").into_bytes(),
    );
    assert!(answer.contains("Sec-WebSocket-Version: 13\r\n"), "{answer}");
    // The server survived all of it.
    let mut ws = connect(addr, "/echo");
    ws.send(tungstenite::Message::text("still here")).unwrap();
    assert_eq!(ws.read().unwrap(), tungstenite::Message::text("still here"));
}

/// Request smuggling (RFC 9112 §6.3): two different `Content-Length`s are refused with 400 and
/// the connection closed, so what one length would call the next request is never answered.
#[test]
fn conflicting_content_lengths_are_refused_and_the_connection_closed() {
    let server = start(|_| {});
    let smuggled = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    for (first, second) in [(0, smuggled.len()), (smuggled.len(), 0)] {
        let mut stream = tcp(server.local_addr());
        let request = format!(
            "POST /publish/t HTTP/1.1\r\nHost: x\r\nContent-Length: {first}\r\n\
             Content-Length: {second}\r\n\r\n{smuggled}"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let answer = read_answer(&mut stream);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
        let mut rest = String::new();
        let _ = stream.read_to_string(&mut rest);
        assert_eq!(rest, "", "nothing after the 400: the connection is closed");
    }
    // The same length twice is one length.
    let (status, _) = post(
        server.local_addr(),
        "/publish/t",
        "Content-Length: 2\r\n",
        b"hi",
    );
    assert_eq!(status, 202);
}

#[test]
fn frames_right_behind_the_head_are_kept() {
    let server = start(|_| {});
    for split in [None, Some(20)] {
        let mut stream = tcp(server.local_addr());
        let mut bytes = upgrade_request("/echo");
        bytes.extend(frame(true, 0x1, b"eager"));
        bytes.extend(frame(true, 0x2, b"client"));
        match split {
            // Everything in one write.
            None => stream.write_all(&bytes).unwrap(),
            // The head in two reads: the frames are parked behind it and replayed.
            Some(at) => {
                stream.write_all(&bytes[..at]).unwrap();
                std::thread::sleep(Duration::from_millis(50));
                stream.write_all(&bytes[at..]).unwrap();
            }
        }
        assert!(read_head(&mut stream).starts_with("HTTP/1.1 101"));
        assert_eq!(
            read_frame(&mut stream).unwrap(),
            (true, 0x1, b"eager".to_vec())
        );
        assert_eq!(
            read_frame(&mut stream).unwrap(),
            (true, 0x2, b"client".to_vec())
        );
    }
}

#[test]
fn a_silent_client_is_dropped_at_the_handshake_timeout() {
    let server = start(|c| c.protocol.handshake_timeout = Duration::from_millis(300));
    let started = Instant::now();
    let answer = http(server.local_addr(), b"GET /echo HTTP/1.1\r\n");
    let waited = started.elapsed();
    assert_eq!(answer, "");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

/// A client that leaves as soon as it has read an answer head makes the server shut down and
/// close in quick succession. On io_uring the shutdown runs in a kernel worker; it must never
/// land on the next connection accepted into the same fixed-file slot (which then got a FIN
/// instead of its answer, a few times in a thousand).
#[test]
fn a_client_leaving_early_never_costs_the_next_connection_its_answer() {
    let server = start(|_| {});
    for i in 0..3000 {
        let path = ["/nowhere", "/echo"][i % 2];
        let mut stream = tcp(server.local_addr());
        stream.write_all(&upgrade_request(path)).unwrap();
        let head = read_head(&mut stream);
        assert!(
            head.starts_with("HTTP/1.1 "),
            "connection {i} ({path}): {head:?}"
        );
    }
}
