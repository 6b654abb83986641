//! Tokens over real sockets: expiry during a connection (close 4001), `refresh` (a later expiry,
//! grants checked again), refusals at the `/ws` upgrade as close codes, `aud` and `iss`, RS256 and
//! ES256 with public keys, and the settings the server refuses to start with.
//!
//! Tokens live a few seconds here, with no leeway; the assertions bound the close from below by
//! the token's `exp` (the server must not be early) and from above only by a generous timeout.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use clarion::server::AppConfig;
use clarion::server::auth::{AuthMode, JwtConfig};
use clarion_engine::Runtime;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tungstenite::Message;

const SECRET: &str = "an end-to-end secret, 32 bytes or more";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn sign(claims: &Value) -> String {
    sign_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

fn sign_with(algorithm: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    encode(&Header::new(algorithm), claims, key).unwrap()
}

/// The DER inside a PEM fixture (jsonwebtoken signs with DER keys without its PEM feature).
fn pem_der(name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn jwt_server(jwt: JwtConfig) -> (Runtime, SocketAddr) {
    let runtime = start_app(
        |_| {},
        AppConfig {
            auth: AuthMode::Jwt,
            jwt,
            ..app()
        },
    );
    let addr = runtime.local_addr();
    (runtime, addr)
}

/// HS256 with [`SECRET`] and no leeway.
fn hs256_server() -> (Runtime, SocketAddr) {
    jwt_server(JwtConfig {
        secret: Some(SECRET.into()),
        leeway: Duration::ZERO,
        ..JwtConfig::default()
    })
}

/// A client on `path` whose reads give up after `timeout`.
fn connect_for(addr: SocketAddr, path: &str, timeout: Duration) -> Ws {
    let ws = connect(addr, path);
    ws.get_ref().set_read_timeout(Some(timeout)).unwrap();
    ws
}

/// Reads until the server's close frame: (code, reason). Text before it is returned too.
fn read_until_close(ws: &mut Ws) -> ((u16, String), Vec<Value>) {
    let mut texts = Vec::new();
    loop {
        match ws.read().expect("a close frame before the timeout") {
            Message::Text(text) => texts.push(serde_json::from_str(&text).unwrap()),
            Message::Close(Some(frame)) => {
                return ((u16::from(frame.code), frame.reason.to_string()), texts);
            }
            Message::Close(None) => panic!("a close frame without a code"),
            _ => {}
        }
    }
}

#[test]
fn an_expired_token_closes_its_connections_with_4001() {
    let (_server, addr) = hs256_server();
    let exp = unix_now() + 2;
    let token = sign(&json!({"exp": exp, "subscribe": ["news"]}));
    let mut ws = connect_for(addr, &format!("/ws?token={token}"), Duration::from_secs(60));
    let hello = call(&mut ws, json!({"type": "hello", "id": 1}));
    assert_eq!(hello["heartbeat"], 0);
    assert!(hello["expires_in"].as_u64().unwrap() <= 2, "{hello}");
    let mut raw = connect_for(
        addr,
        &format!("/t/news?token={token}"),
        Duration::from_secs(60),
    );
    for client in [&mut ws, &mut raw] {
        let (close, _) = read_until_close(client);
        assert_eq!(close, (4001, "token expired".to_owned()));
        assert!(unix_now() >= exp, "not before exp");
    }
    assert!(eventually(|| total_stat(addr, "token_expired_closes") == 2));
}

#[test]
fn refresh_moves_the_expiry_and_checks_the_grants_again() {
    let (_server, addr) = hs256_server();
    let exp = unix_now() + 3;
    let first = sign(&json!({"exp": exp, "sub": "ada", "subscribe": ["news", "room.*"]}));
    let mut ws = connect_for(addr, &format!("/ws?token={first}"), Duration::from_secs(60));
    for (id, topic) in [(1, "news"), (2, "room.1")] {
        let ack = call(
            &mut ws,
            json!({"type": "subscribe", "topic": topic, "id": id}),
        );
        assert_eq!(ack["id"], id, "{ack}");
    }
    // Refused tokens change nothing.
    let later = unix_now() + 3600;
    let refusals = [
        ("garbage".to_owned(), "invalid token"),
        (
            sign(&json!({"exp": unix_now() - 10, "sub": "ada"})),
            "token expired",
        ),
        (
            sign(&json!({"exp": later, "sub": "eve", "subscribe": ["**"]})),
            "the token is for another subject",
        ),
        (
            sign(&json!({"exp": later})),
            "the token is for another subject",
        ),
    ];
    for (token, message) in refusals {
        let reply = call(&mut ws, json!({"type": "refresh", "token": token, "id": 3}));
        assert_eq!(
            reply,
            json!({"type": "error", "id": 3, "code": "unauthorized", "message": message})
        );
    }
    // The next token drops `room.*`: that subscription ends before the ack.
    let second = sign(&json!({"exp": later, "sub": "ada", "subscribe": ["news"]}));
    send(
        &mut ws,
        json!({"type": "refresh", "token": second, "id": 4}),
    );
    assert_eq!(
        next(&mut ws),
        json!({"type": "unsubscribed", "topic": "room.1", "code": "forbidden",
               "message": "the refreshed token does not grant this topic"})
    );
    let ack = next(&mut ws);
    assert_eq!(ack["id"], 4);
    assert!(ack["expires_in"].as_u64().unwrap() > 3000, "{ack}");
    let reply = call(
        &mut ws,
        json!({"type": "subscribe", "topic": "room.2", "id": 5}),
    );
    assert_eq!(reply["code"], "forbidden");
    // Past the first token's expiry the connection is still open and subscribed to `news` only.
    while unix_now() <= exp + 2 {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(post(addr, "/publish/room.1", "", b"1").0, 202);
    assert_eq!(post(addr, "/publish/news", "", b"2").0, 202);
    let delivery = next(&mut ws);
    assert_eq!(
        (&delivery["topic"], &delivery["data"]),
        (&json!("news"), &json!(2))
    );
    assert_eq!(
        call(&mut ws, json!({"type": "ping", "id": 6})),
        json!({"type": "ack", "id": 6})
    );
    assert_eq!(total_stat(addr, "token_refreshes"), 1);
    assert_eq!(total_stat(addr, "token_expired_closes"), 0);
}

#[test]
fn refresh_without_tokens_in_use_is_an_error() {
    let runtime = start_app(|_| {}, app());
    let mut ws = connect(runtime.local_addr(), "/ws");
    let reply = call(&mut ws, json!({"type": "refresh", "token": "x", "id": 1}));
    assert_eq!(reply["code"], "unauthorized");
    let hello = call(&mut ws, json!({"type": "hello", "id": 2}));
    assert_eq!(hello, json!({"type": "ack", "id": 2, "heartbeat": 0}));
}

#[test]
fn a_refused_ws_token_is_told_with_a_close_code_a_browser_can_read() {
    let (_server, addr) = hs256_server();
    let expired = sign(&json!({"exp": unix_now() - 10, "subscribe": ["news"]}));
    let not_yet = sign(&json!({"exp": unix_now() + 600, "nbf": unix_now() + 300}));
    let cases = [
        ("/ws".to_owned(), (4003, "missing token")),
        ("/ws?token=garbage".to_owned(), (4003, "invalid token")),
        (format!("/ws?token={not_yet}"), (4003, "invalid token")),
        (format!("/ws?token={expired}"), (4001, "token expired")),
    ];
    for (path, (code, reason)) in cases {
        let mut ws = connect_for(addr, &path, Duration::from_secs(10));
        // Anything sent behind the upgrade is not read.
        let _ = ws.send(Message::text(
            json!({"type": "publish", "topic": "news", "data": 1}).to_string(),
        ));
        let (close, texts) = read_until_close(&mut ws);
        assert_eq!(close, (code, reason.to_owned()), "{path}");
        assert!(texts.is_empty(), "{texts:?}");
    }
    // Raw topic sockets keep the HTTP answer.
    assert_eq!(upgrade_status(addr, "/t/news", ""), 401);
    let expired = format!("/t/news?token={expired}");
    assert_eq!(upgrade_status(addr, &expired, ""), 401);
}

#[test]
fn audience_and_issuer_are_checked_when_configured() {
    let (_server, addr) = jwt_server(JwtConfig {
        secret: Some(SECRET.into()),
        audience: vec!["clarion".into()],
        issuer: vec!["https://auth.example".into()],
        ..JwtConfig::default()
    });
    let exp = unix_now() + 600;
    let iss = "https://auth.example";
    let good = sign(&json!({"exp": exp, "aud": "clarion", "iss": iss, "subscribe": ["a"]}));
    let mut ws = connect(addr, &format!("/ws?token={good}"));
    let ack = call(&mut ws, json!({"type": "subscribe", "topic": "a", "id": 1}));
    assert_eq!(ack["recovered"], false, "{ack}");
    for claims in [
        json!({"exp": exp, "aud": "other", "iss": iss, "subscribe": ["a"]}),
        json!({"exp": exp, "aud": "clarion", "iss": "https://evil.example", "subscribe": ["a"]}),
        json!({"exp": exp, "subscribe": ["a"]}),
    ] {
        let token = sign(&claims);
        let mut ws = connect_for(addr, &format!("/ws?token={token}"), Duration::from_secs(10));
        let (close, _) = read_until_close(&mut ws);
        let reason = "token not meant for this server (aud or iss)";
        assert_eq!(close, (4003, reason.to_owned()), "{claims}");
        assert_eq!(
            upgrade_status(addr, &format!("/t/a?token={token}"), ""),
            401
        );
        // Nor can it be swapped in later.
        let reply = call(
            &mut ws_refresh(addr, &good),
            json!({"type": "refresh", "token": token}),
        );
        assert_eq!(reply["message"], reason);
    }
}

/// A fresh `/ws` connection with `token`, for a refresh.
fn ws_refresh(addr: SocketAddr, token: &str) -> Ws {
    connect(addr, &format!("/ws?token={token}"))
}

#[test]
fn rs256_and_es256_tokens_are_checked_with_the_signers_public_key() {
    let claims = json!({"exp": unix_now() + 600, "subscribe": ["k"]});
    let rsa = EncodingKey::from_rsa_der(&pem_der("rs256-private.pem"));
    let ec = EncodingKey::from_ec_der(&pem_der("es256-private.pem"));
    let rs256 = sign_with(Algorithm::RS256, &rsa, &claims);
    let es256 = sign_with(Algorithm::ES256, &ec, &claims);
    // HS256 signed with the public key file's bytes: the algorithm-confusion attack.
    let public = std::fs::read(fixture("rs256-public.pem")).unwrap();
    let confused = sign_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public),
        &claims,
    );
    for (file, good, bad) in [
        ("rs256-public.pem", &rs256, vec![&es256, &confused]),
        ("es256-public.pem", &es256, vec![&rs256, &confused]),
    ] {
        let (_server, addr) = jwt_server(JwtConfig {
            public_key: Some(fixture(file)),
            ..JwtConfig::default()
        });
        let mut ws = connect(addr, &format!("/ws?token={good}"));
        let ack = call(&mut ws, json!({"type": "subscribe", "topic": "k", "id": 1}));
        assert_eq!(ack["topic"], "k", "{file}: {ack}");
        assert_eq!(upgrade_status(addr, &format!("/t/k?token={good}"), ""), 101);
        for token in bad {
            assert_eq!(
                upgrade_status(addr, &format!("/t/k?token={token}"), ""),
                401
            );
            let mut ws = connect_for(addr, &format!("/ws?token={token}"), Duration::from_secs(10));
            assert_eq!(read_until_close(&mut ws).0.0, 4003, "{file}");
        }
    }
}

/// Runs `clarion serve` with `args` until it exits (it should refuse to start): (status,
/// stderr).
fn refused_start(args: &[&str]) -> (Option<i32>, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_clarion"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--threads", "1"])
        .args(args)
        .output()
        .expect("clarion runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_server_refuses_to_start_with_an_unusable_token_setup() {
    let key = |name: &str| fixture(name).display().to_string();
    let (rsa1024, p384, private) = (
        key("rsa1024-public.pem"),
        key("p384-public.pem"),
        key("rs256-private.pem"),
    );
    let cases: [(Vec<&str>, &str); 6] = [
        (
            vec![
                "--auth",
                "jwt",
                "--jwt-secret",
                "thirty-one bytes is too short!!",
            ],
            "clarion: jwt_secret must be at least 32 bytes",
        ),
        (
            vec!["--auth", "jwt"],
            "clarion: auth = jwt needs a jwt_secret or",
        ),
        (
            vec!["--auth", "jwt", "--jwt-public-key", &rsa1024],
            "bits; RS256 needs at least 2048",
        ),
        (
            vec!["--auth", "jwt", "--jwt-public-key", &p384],
            "not a public key in PEM",
        ),
        (
            vec!["--auth", "jwt", "--jwt-public-key", &private],
            "not a public key in PEM",
        ),
        (
            vec!["--heartbeat-min", "10s", "--heartbeat-max", "5s"],
            "clarion: heartbeat_min and heartbeat_max",
        ),
    ];
    for (args, expected) in cases {
        let (status, stderr) = refused_start(&args);
        assert_eq!(status, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    }
    // The library refuses the same settings.
    let short = AppConfig {
        auth: AuthMode::Jwt,
        jwt: JwtConfig {
            secret: Some("short".into()),
            ..JwtConfig::default()
        },
        ..app()
    };
    let config = clarion_engine::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        ..clarion_engine::Config::default()
    };
    let error = clarion::server::start(config, short)
        .err()
        .expect("refused");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}
