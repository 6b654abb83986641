//! Behind a proxy: the client's address from trusted proxies' forwarding headers (per-IP caps
//! counted on it, IPv6 clients counted per /64), then real nginx and HAProxy in front with TLS,
//! from the configs in `deploy/`: WebSocket upgrades, the publish API, the per-IP cap on the
//! client's address, and idle connections kept alive through the proxy's read timeout by the
//! server's pings.
//!
//! Needs `nginx`, `haproxy`, `openssl` and `python3` with `websockets` (scripts/test.sh
//! installs them).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use clarion::server::AppConfig;
use clarion::server::forwarded::ForwardedHeader;
use clarion_engine::{Runtime, TrustedProxies};
use common::proxy::{Kind, Proxy};
use common::*;

/// A server that trusts 127.0.0.1 and allows two WebSockets per client.
fn server(header: ForwardedHeader, adjust: impl FnOnce(&mut clarion_engine::Config)) -> Runtime {
    start_app(
        adjust,
        AppConfig {
            max_connections_per_ip: 2,
            trusted_proxies: TrustedProxies::new(vec!["127.0.0.1".parse().unwrap()]),
            forwarded_header: header,
            ..AppConfig::default()
        },
    )
}

/// Upgrades `/echo` from `source` with extra header lines; the status, and the stream to hold.
fn upgrade(addr: SocketAddr, source: [u8; 4], headers: &str) -> (u16, TcpStream) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream = TcpStream::from(socket);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = String::from_utf8(upgrade_request("/echo")).unwrap();
    let request = request.replacen("\r\n\r\n", &format!("\r\n{headers}\r\n"), 1);
    stream.write_all(request.as_bytes()).unwrap();
    let head = read_head(&mut stream);
    let status = head.get(9..12).and_then(|s| s.parse().ok());
    (
        status.unwrap_or_else(|| panic!("no status in {head:?}")),
        stream,
    )
}

/// Upgrades from the trusted 127.0.0.1 on behalf of `client` (an X-Forwarded-For value).
fn forwarded(addr: SocketAddr, client: &str) -> (u16, TcpStream) {
    upgrade(
        addr,
        [127, 0, 0, 1],
        &format!("X-Forwarded-For: {client}\r\n"),
    )
}

/// A counter of `/metrics`, summed over reactors.
fn metric(addr: SocketAddr, name: &str) -> u64 {
    let answer = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    answer
        .lines()
        .filter(|line| line.starts_with(&format!("clarion_{name}{{")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn the_cap_counts_the_client_a_trusted_proxy_names() {
    let runtime = server(ForwardedHeader::XForwardedFor, |_| {});
    let addr = runtime.local_addr();
    let (a, _a) = forwarded(addr, "198.51.100.7");
    // The client wrote its own header; the proxy appended what it saw: the right-most counts.
    let (b, _b) = forwarded(addr, "203.0.113.1, 198.51.100.7");
    assert_eq!((a, b), (101, 101));
    assert_eq!(forwarded(addr, "198.51.100.7").0, 429);
    assert_eq!(forwarded(addr, "198.51.100.8").0, 101);
    // The proxy itself (no header) is a client of its own.
    assert_eq!(upgrade(addr, [127, 0, 0, 1], "").0, 101);
    assert_eq!(metric(addr, "forwarded_requests_total"), 4);
}

#[test]
fn an_untrusted_peer_cannot_choose_its_address() {
    let runtime = server(ForwardedHeader::XForwardedFor, |_| {});
    let addr = runtime.local_addr();
    let spoof = |n: u8| format!("X-Forwarded-For: 198.51.100.{n}\r\n");
    let (a, _a) = upgrade(addr, [127, 0, 0, 2], &spoof(1));
    let (b, _b) = upgrade(addr, [127, 0, 0, 2], &spoof(2));
    assert_eq!((a, b), (101, 101));
    assert_eq!(upgrade(addr, [127, 0, 0, 2], &spoof(3)).0, 429);
    assert_eq!(metric(addr, "forwarded_requests_total"), 0);
}

#[test]
fn an_ipv6_client_is_its_slash_64_and_a_mapped_ipv4_client_is_ipv4() {
    let runtime = server(ForwardedHeader::XForwardedFor, |_| {});
    let addr = runtime.local_addr();
    let (a, _a) = forwarded(addr, "2001:db8:1:2::1");
    let (b, _b) = forwarded(addr, "[2001:db8:1:2:ffff::9]:4711");
    assert_eq!((a, b), (101, 101));
    assert_eq!(forwarded(addr, "2001:db8:1:2::3").0, 429, "same /64");
    assert_eq!(forwarded(addr, "2001:db8:1:3::1").0, 101, "next /64");
    let (c, _c) = forwarded(addr, "::ffff:198.51.100.20");
    let (d, _d) = forwarded(addr, "198.51.100.20");
    assert_eq!((c, d), (101, 101));
    assert_eq!(forwarded(addr, "198.51.100.20").0, 429, "one IPv4 client");
}

#[test]
fn the_forwarded_header_is_read_when_configured_and_x_forwarded_for_is_not() {
    let runtime = server(ForwardedHeader::Forwarded, |_| {});
    let addr = runtime.local_addr();
    let header = "Forwarded: for=\"[2001:db8::7]:4711\";proto=https\r\n";
    let (a, _a) = upgrade(addr, [127, 0, 0, 1], header);
    let (b, _b) = upgrade(addr, [127, 0, 0, 1], header);
    assert_eq!((a, b), (101, 101));
    assert_eq!(upgrade(addr, [127, 0, 0, 1], header).0, 429);
    // X-Forwarded-For is ignored: these count as the proxy, which has room for two.
    let (c, _c) = forwarded(addr, "198.51.100.1");
    let (d, _d) = forwarded(addr, "198.51.100.2");
    assert_eq!((c, d), (101, 101));
    assert_eq!(forwarded(addr, "198.51.100.3").0, 429);
}

#[test]
fn a_malformed_header_from_a_trusted_proxy_is_refused_with_400() {
    let runtime = server(ForwardedHeader::XForwardedFor, |_| {});
    let addr = runtime.local_addr();
    for bad in [
        "198.51.100.7, not-an-address",
        "[2001:db8::1",
        "198.51.100.7:99999",
    ] {
        assert_eq!(forwarded(addr, bad).0, 400, "{bad}");
    }
    let answer = http(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: \xff\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(metric(addr, "forwarded_refused_total"), 4);
    // From an untrusted peer the same header is never read.
    assert_eq!(
        upgrade(addr, [127, 0, 0, 2], "X-Forwarded-For: [2001:db8::1\r\n").0,
        101
    );
}

/// Clarion with pings every second (or none) and two WebSockets per client, behind `kind`
/// whose read timeout is 3 s.
fn behind(kind: Kind, ping: Option<Duration>) -> (Runtime, Proxy) {
    let runtime = server(ForwardedHeader::XForwardedFor, |config| {
        config.protocol.ping_interval = ping;
    });
    let proxy = Proxy::start(kind, runtime.local_addr(), "3s");
    (runtime, proxy)
}

/// Through the proxy, over TLS: echo, a topic delivery published through the proxy too, the
/// per-IP cap on each client's own address (whatever it claims), and an idle connection that
/// outlives the proxy's read timeout several times over thanks to the server's pings.
fn through(kind: Kind) {
    let (runtime, proxy) = behind(kind, Some(Duration::from_secs(1)));
    let mut clients = proxy.clients();
    assert_eq!(
        clients.open("a", "127.0.0.2", "/echo"),
        "101",
        "{}",
        proxy.log()
    );
    assert_eq!(clients.run("echo a hello"), "hello");
    // The client's own X-Forwarded-For is not believed: the proxy's entry is right of it.
    let spoof = "open b 127.0.0.2 /t/news X-Forwarded-For=203.0.113.9";
    assert_eq!(clients.run(spoof), "101");
    assert_eq!(clients.open("c", "127.0.0.2", "/echo"), "429");
    assert_eq!(clients.open("d", "127.0.0.3", "/echo"), "101");
    // The publish API through the proxy, and the delivery to the topic socket.
    let published = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(proxy.ca())
        .args([
            "--data",
            "hi",
            &format!("https://localhost:{}/publish/news", proxy.addr.port()),
        ])
        .output()
        .expect("curl runs");
    assert!(published.status.success(), "{published:?}");
    assert_eq!(clients.run("recv b"), "hi");
    // Silent for more than twice the proxy's 3 s read timeout: the server's pings (every
    // second) and the client's pongs keep the proxy from dropping it.
    assert_eq!(clients.run("idle 7"), "ok");
    assert_eq!(clients.run("echo a still here"), "still here");
    assert_eq!(clients.run("echo d still here"), "still here");
    // Four upgrades (the refused one included) and the publish, each with its client named.
    assert_eq!(metric(runtime.local_addr(), "forwarded_requests_total"), 5);
}

/// The control: with the server's pings off, the same idle connection is dropped by the proxy,
/// so the test above shows the pings at work rather than a lenient proxy.
fn dropped_without_pings(kind: Kind) {
    let (_runtime, proxy) = behind(kind, None);
    let mut clients = proxy.clients();
    assert_eq!(
        clients.open("a", "127.0.0.2", "/echo"),
        "101",
        "{}",
        proxy.log()
    );
    assert_eq!(clients.run("closed a"), "closed");
}

#[test]
fn nginx_in_front() {
    through(Kind::Nginx);
}

#[test]
fn nginx_drops_an_idle_connection_without_pings() {
    dropped_without_pings(Kind::Nginx);
}

#[test]
fn haproxy_in_front() {
    through(Kind::Haproxy);
}

#[test]
fn haproxy_drops_an_idle_connection_without_pings() {
    dropped_without_pings(Kind::Haproxy);
}

#[test]
fn refusals_are_logged_with_the_client_a_trusted_proxy_named() {
    let mut clarion = Clarion::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--trusted-proxies",
            "127.0.0.1",
            "--max-connections-per-ip",
            "1",
        ],
        &[],
    );
    let addr = clarion.addr;
    let (first, _held) = forwarded(addr, "[2001:db8::7]:4711");
    assert_eq!(first, 101);
    assert_eq!(forwarded(addr, "2001:db8::8").0, 429, "the same /64");
    let line = clarion.wait_for("refused a client");
    assert!(line.contains("peer=[2001:db8::8]:0"), "{line}");
    assert!(line.contains("status=429"), "{line}");
    // A malformed header: the proxy is named, since the client could not be read.
    assert_eq!(forwarded(addr, "2001:db8::zz").0, 400);
    let line = clarion.wait_for("refused a client");
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    assert!(line.contains("malformed forwarding header"), "{line}");
}
