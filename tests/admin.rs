//! The admin listener: monitoring routes and the dashboard apart from the public port, the
//! admin key (reloadable), readiness, the dashboard's WebSocket on the system topic (which the
//! public port cannot reach), and HTTP keep-alive on both ports.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clarion::server::config::Secret;
use clarion::server::dashboard::STATS_TOPIC;
use clarion::server::{AppConfig, Running};
use common::{call, read_answer, split, tcp, upgrade_request};
use serde_json::{Value, json};
use tungstenite::Message;

/// The server with an admin listener on a free port, `app` otherwise.
fn start(app: AppConfig) -> Running {
    let config = clarion_engine::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 2,
        pin_threads: false,
        io: common::io(),
        ..clarion_engine::Config::default()
    };
    let app = AppConfig {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..app
    };
    clarion::server::launch(config, app).expect("server starts")
}

/// `GET path` with extra header lines on a new connection: (status, body).
fn get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
    split(&common::http(addr, request.as_bytes()))
}

fn status(addr: SocketAddr, path: &str) -> u16 {
    get(addr, path, "").0
}

/// The status of a WebSocket upgrade of `path` with extra header lines.
fn upgrade(addr: SocketAddr, path: &str, headers: &str) -> u16 {
    common::upgrade_status(addr, path, headers)
}

#[test]
fn monitoring_lives_on_the_admin_listener_and_the_public_port_keeps_healthz() {
    let running = start(AppConfig::default());
    let (public, admin) = (running.runtime.local_addr(), running.admin_addr().unwrap());
    assert_ne!(public, admin);
    assert_eq!(get(public, "/healthz", ""), (200, "ok\n".to_owned()));
    for path in [
        "/metrics",
        "/stats",
        "/topics/news",
        "/readyz",
        "/dashboard",
    ] {
        assert_eq!(status(public, path), 404, "{path} on the public port");
    }
    // On the admin listener, all of them over one kept connection (HTTP keep-alive).
    let mut stream = tcp(admin);
    let mut ask = |path: &str| {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        split(&read_answer(&mut stream))
    };
    let (code, metrics) = ask("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("clarion_connections{reactor=\"1\"}"),
        "{metrics}"
    );
    let (code, stats) = ask("/stats");
    assert_eq!(code, 200);
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert!(stats["totals"]["http_requests"].as_u64().unwrap() >= 2);
    assert_eq!(
        ask("/topics/news"),
        (
            200,
            json!({"topic":"news","subscribers":0,"local":0}).to_string()
        )
    );
    assert_eq!(ask("/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(ask("/readyz"), (200, "ready\n".to_owned()));
    let (code, page) = ask("/dashboard");
    assert_eq!(code, 200);
    assert!(
        page.contains("<canvas") && page.contains("/dashboard/ws"),
        "the page"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "nothing from elsewhere"
    );
    // The publish API and the WebSocket routes are the public port's.
    assert_eq!(ask("/publish/news").0, 404);
    assert_eq!(upgrade(admin, "/ws", ""), 404);
    assert_eq!(upgrade(admin, "/t/news", ""), 404);
    // Draining: not ready.
    running.server.set_draining();
    assert_eq!(
        get(admin, "/readyz", ""),
        (503, "not ready: draining\n".to_owned())
    );
    assert_eq!(status(admin, "/healthz"), 200, "alive all the same");
}

#[test]
fn the_admin_key_guards_all_but_health_and_readiness_and_is_reloaded() {
    let app = AppConfig {
        admin_key: Some(Secret::from("first")),
        ..AppConfig::default()
    };
    let running = start(app.clone());
    let admin = running.admin_addr().unwrap();
    for path in ["/metrics", "/stats", "/topics/news", "/dashboard"] {
        let (code, body) = get(admin, path, "");
        assert_eq!(code, 401, "{path}");
        assert_eq!(
            body,
            json!({"error": "missing or wrong admin key"}).to_string()
        );
        assert_eq!(
            get(admin, path, "Authorization: Bearer first\r\n").0,
            200,
            "{path}"
        );
        assert_eq!(status(admin, &format!("{path}?key=first")), 200, "{path}");
        assert_eq!(status(admin, &format!("{path}?key=second")), 401, "{path}");
    }
    assert_eq!(status(admin, "/healthz"), 200);
    assert_eq!(status(admin, "/readyz"), 200);
    assert_eq!(upgrade(admin, "/dashboard/ws", ""), 401);
    assert_eq!(upgrade(admin, "/dashboard/ws?key=first", ""), 101);
    // SIGHUP's path: the new key applies to the next request.
    let next = AppConfig {
        admin_key: Some(Secret::from("second")),
        ..app
    };
    running.server.reload(&next).unwrap();
    assert_eq!(status(admin, "/metrics?key=first"), 401);
    assert_eq!(status(admin, "/metrics?key=second"), 200);
}

#[test]
fn public_metrics_serves_monitoring_on_the_public_port_with_the_key() {
    let running = start(AppConfig {
        public_metrics: true,
        admin_key: Some(Secret::from("k")),
        ..AppConfig::default()
    });
    let public = running.runtime.local_addr();
    assert_eq!(status(public, "/metrics"), 401);
    assert_eq!(
        get(public, "/metrics", "Authorization: Bearer k\r\n").0,
        200
    );
    assert_eq!(status(public, "/stats?key=k"), 200);
    assert_eq!(status(public, "/readyz"), 200);
    assert_eq!(
        status(public, "/dashboard?key=k"),
        404,
        "the dashboard stays on the admin port"
    );
    // Off again by a reload.
    running.server.reload(&AppConfig::default()).unwrap();
    assert_eq!(status(public, "/metrics"), 404);
}

#[test]
fn the_dashboard_socket_gets_snapshots_and_the_public_port_cannot_reach_its_topic() {
    let running = start(AppConfig::default());
    let (public, admin) = (running.runtime.local_addr(), running.admin_addr().unwrap());
    // Another site's page in an operator's browser cannot open it.
    assert_eq!(
        upgrade(admin, "/dashboard/ws", "Origin: http://evil.example\r\n"),
        403
    );
    let same = "Origin: http://localhost\r\n";
    assert_eq!(
        upgrade(admin, "/dashboard/ws", same),
        101,
        "Host is localhost"
    );
    let mut dashboard = common::connect(admin, "/dashboard/ws");
    dashboard
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _subscriber = common::connect(public, "/t/news");
    let snapshot = |ws: &mut common::Ws| -> Value {
        match ws.read().expect("a snapshot each second") {
            Message::Text(text) => serde_json::from_str(&text).unwrap(),
            other => panic!("{other:?}"),
        }
    };
    // The first snapshots may predate the subscriber; it shows within a few.
    let shown = (0..10).map(|_| snapshot(&mut dashboard)).find(|s| {
        s["top_subscribers"]
            .as_array()
            .is_some_and(|top| top.iter().any(|t| t[0] == "news"))
    });
    let shown = shown.expect("the subscriber's topic among the top topics");
    assert!(shown["connections"].as_u64().unwrap() >= 2);
    assert_eq!(shown["reactors"].as_array().unwrap().len(), 2);
    assert_eq!(shown["memory"]["entry"], 104);
    assert!(shown["cluster"].is_null());
    // A topic published to shows among the busiest.
    let rated = (0..10).find_map(|_| {
        let (code, _) = common::post(public, "/publish/news", "", b"x");
        assert_eq!(code, 202);
        let shown = snapshot(&mut dashboard);
        let top = shown["top_rate"].as_array()?;
        top.iter().any(|t| t[0] == "news").then_some(shown)
    });
    assert!(rated.is_some(), "the published topic among the top rates");
    // What a client sends on it is ignored; it goes on getting snapshots.
    dashboard.send(Message::text("hello")).unwrap();
    snapshot(&mut dashboard);
    // The system topic is refused by every public route.
    let encoded = STATS_TOPIC.replace('$', "%24");
    for path in [format!("/t/{STATS_TOPIC}"), format!("/t/{encoded}")] {
        assert_eq!(upgrade(public, &path, ""), 400, "{path}");
    }
    let mut ws = common::connect(public, "/ws");
    let answer = call(
        &mut ws,
        json!({"type":"subscribe","topic":STATS_TOPIC,"id":1}),
    );
    assert_eq!(answer["type"], "error", "{answer}");
    let answer = call(
        &mut ws,
        json!({"type":"publish","topic":STATS_TOPIC,"data":"x","id":2}),
    );
    assert_eq!(answer["type"], "error", "{answer}");
    let (code, _) = common::post(public, &format!("/publish/{STATS_TOPIC}"), "", b"x");
    assert_eq!(code, 400);
    assert_eq!(
        running.server.hub.stats().topics,
        1,
        "only `news`: the system hub is apart"
    );
}

#[test]
fn no_admin_listener_when_it_is_off() {
    let config = clarion_engine::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        pin_threads: false,
        io: common::io(),
        ..clarion_engine::Config::default()
    };
    let running = clarion::server::launch(config, AppConfig::default()).unwrap();
    assert_eq!(running.admin_addr(), None);
    assert_eq!(running.runtime.local_addrs().len(), 1);
    let mut stream = tcp(running.runtime.local_addr());
    stream.write_all(&upgrade_request("/dashboard/ws")).unwrap();
    assert!(common::read_head(&mut stream).starts_with("HTTP/1.1 404"));
}

#[test]
fn the_admin_listener_takes_plain_connections_when_the_public_port_speaks_proxy_protocol() {
    let config = clarion_engine::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        pin_threads: false,
        io: common::io(),
        proxy_protocol: clarion_engine::ProxyProtocol::V1,
        ..clarion_engine::Config::default()
    };
    let app = AppConfig {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        trusted_proxies: clarion_engine::TrustedProxies::new(vec!["127.0.0.1".parse().unwrap()]),
        ..AppConfig::default()
    };
    let running = clarion::server::launch(config, app).expect("server starts");
    let public = running.runtime.local_addr();
    // From a trusted peer, the public port wants the header first: a bare request is refused.
    let bare = common::http(public, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!bare.starts_with("HTTP/1.1 200"), "{bare}");
    let proxied = common::http(
        public,
        b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 80\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(proxied.starts_with("HTTP/1.1 200"), "{proxied}");
    // The admin listener is scraped directly.
    let admin = running.admin_addr().unwrap();
    assert_eq!(status(admin, "/readyz"), 200);
    assert_eq!(status(admin, "/metrics"), 200);
}
