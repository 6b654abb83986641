//! Behind a proxy: the client's address from trusted proxies' forwarding headers and PROXY
//! protocol headers (per-IP caps counted on it, IPv6 clients counted per /64), then real nginx
//! and HAProxy in front with TLS, from the configs in `deploy/`, in HTTP mode (X-Forwarded-For)
//! and in TCP mode (PROXY protocol versions 1 and 2): WebSocket upgrades, the publish API, the
//! per-IP cap on the client's address, and idle connections kept alive through the proxy's
//! timeout by the server's pings.
//!
//! Needs `nginx` (with its stream module), `haproxy`, `openssl`, `curl` and `python3` with
//! `websockets` (scripts/test.sh installs them).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use clarion::server::AppConfig;
use clarion::server::forwarded::ForwardedHeader;
use clarion_engine::{ProxyProtocol, Runtime, TrustedProxies};
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
            ..app()
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

/// A counter of `/metrics`, summed over reactors, asked from 127.0.0.9: neither a trusted proxy
/// (which would have to send a PROXY header) nor a client the tests count.
fn metric(addr: SocketAddr, name: &str) -> u64 {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 9], 0)).into())
        .unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream = TcpStream::from(socket);
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
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
/// whose read timeout is 10 s (and taking the PROXY protocol version it sends, if any). The
/// timeout is short to keep the tests short, and long beside a second so that a loaded machine
/// stalling the pings, or a client's TLS handshake, for several seconds does not fail them (in
/// TCP mode the timeout covers the handshake too).
fn behind(kind: Kind, ping: Option<Duration>) -> (Runtime, Proxy) {
    let runtime = server(ForwardedHeader::XForwardedFor, |config| {
        config.protocol.ping_interval = ping;
        config.proxy_protocol = match kind {
            Kind::Nginx | Kind::Haproxy => ProxyProtocol::Off,
            Kind::NginxStream => ProxyProtocol::V1,
            Kind::HaproxyTcp => ProxyProtocol::V2,
        };
    });
    let proxy = Proxy::start(kind, runtime.local_addr(), "10s");
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
    // Silent for more than twice the proxy's 10 s read timeout: the server's pings (every
    // second) and the client's pongs keep the proxy from dropping it.
    assert_eq!(clients.run("idle 21"), "ok");
    assert_eq!(clients.run("echo a still here"), "still here");
    assert_eq!(clients.run("echo d still here"), "still here");
    // Four upgrades (the refused one included) and the publish, each with its client named: by
    // X-Forwarded-For, or by the PROXY header (and then no forwarding header is believed).
    let addr = runtime.local_addr();
    let (forwarded, refused) = match kind {
        Kind::Nginx | Kind::Haproxy => (5, 0),
        Kind::NginxStream | Kind::HaproxyTcp => (0, 0),
    };
    assert_eq!(metric(addr, "forwarded_requests_total"), forwarded);
    assert_eq!(metric(addr, "proxy_protocol_refused_total"), refused);
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
fn nginx_stream_in_front_with_proxy_protocol_v1() {
    through(Kind::NginxStream);
}

#[test]
fn nginx_stream_drops_an_idle_connection_without_pings() {
    dropped_without_pings(Kind::NginxStream);
}

#[test]
fn haproxy_tcp_in_front_with_proxy_protocol_v2() {
    through(Kind::HaproxyTcp);
}

#[test]
fn haproxy_tcp_drops_an_idle_connection_without_pings() {
    dropped_without_pings(Kind::HaproxyTcp);
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

/// A PROXY protocol version 1 line for a client at `source`.
fn v1(source: &str) -> Vec<u8> {
    let source: SocketAddr = source.parse().unwrap();
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    let to = if source.is_ipv4() { "127.0.0.1" } else { "::1" };
    let (ip, port) = (source.ip(), source.port());
    format!("PROXY {family} {ip} {to} {port} 9001\r\n").into_bytes()
}

/// A PROXY protocol version 2 header for an IPv4 client at `source`, with a TLV after the
/// addresses.
fn v2(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x13".to_vec();
    header.extend_from_slice(&source);
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&port.to_be_bytes());
    header.extend_from_slice(&9001u16.to_be_bytes());
    header.extend_from_slice(&[0x04, 0x00, 0x04, 0, 0, 0, 0]);
    header
}

/// Opens a connection from `source`, writes `parts` in turn (a pause between them, so they
/// tend to arrive in separate reads), then an upgrade of `/echo`: its status, or `None` if the
/// server closed the connection without an answer.
fn upgrade_behind(addr: SocketAddr, source: [u8; 4], parts: &[&[u8]]) -> (Option<u16>, TcpStream) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.set_tcp_nodelay(true).unwrap();
    let mut stream = TcpStream::from(socket);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for part in parts {
        stream.write_all(part).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    // A refused connection may be closed before the request is written: a reset is no answer.
    let _ = stream.write_all(&upgrade_request("/echo"));
    let head = read_head(&mut stream);
    (head.get(9..12).and_then(|s| s.parse().ok()), stream)
}

/// A server taking the PROXY protocol in `mode` from 127.0.0.1, two WebSockets per client.
fn proxy_protocol_server(mode: ProxyProtocol) -> Runtime {
    server(ForwardedHeader::XForwardedFor, |config| {
        config.proxy_protocol = mode
    })
}

#[test]
fn a_proxy_protocol_header_names_the_client_the_cap_counts() {
    let runtime = proxy_protocol_server(ProxyProtocol::Any);
    let addr = runtime.local_addr();
    let from_proxy = |parts: &[&[u8]]| upgrade_behind(addr, [127, 0, 0, 1], parts);
    let (a, _a) = from_proxy(&[&v1("198.51.100.7:5000")]);
    let (b, _b) = from_proxy(&[&v2([198, 51, 100, 7], 5001)]);
    assert_eq!((a, b), (Some(101), Some(101)));
    assert_eq!(from_proxy(&[&v1("198.51.100.7:5002")]).0, Some(429));
    // Another client; its header cut into three writes.
    let header = v1("[2001:db8::1]:4711");
    let (first, rest) = header.split_at(5);
    let (second, third) = rest.split_at(20);
    assert_eq!(from_proxy(&[first, second, third]).0, Some(101));
    // A health check from the proxy itself (version 2 LOCAL): the proxy is the client.
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    assert_eq!(from_proxy(&[local]).0, Some(101));
    assert_eq!(metric(addr, "proxy_protocol_refused_total"), 0);
}

#[test]
fn the_proxy_protocol_refuses_a_missing_header_a_foreign_one_and_a_version_not_taken() {
    let runtime = proxy_protocol_server(ProxyProtocol::V2);
    let addr = runtime.local_addr();
    // The trusted proxy without a header, and with a version 1 one: closed without an answer.
    assert_eq!(upgrade_behind(addr, [127, 0, 0, 1], &[]).0, None);
    assert_eq!(
        upgrade_behind(addr, [127, 0, 0, 1], &[&v1("198.51.100.7:1")]).0,
        None
    );
    // A client may not name itself, in either version.
    assert_eq!(
        upgrade_behind(addr, [127, 0, 0, 2], &[&v2([1, 2, 3, 4], 1)]).0,
        None
    );
    assert_eq!(
        upgrade_behind(addr, [127, 0, 0, 2], &[&v1("1.2.3.4:1")]).0,
        None
    );
    eventually(|| metric(addr, "proxy_protocol_refused_total") == 4);
    assert_eq!(metric(addr, "proxy_protocol_refused_total"), 4);
    // Without one it is served as usual, as itself (two per client).
    let (a, _a) = upgrade_behind(addr, [127, 0, 0, 2], &[]);
    let (b, _b) = upgrade_behind(addr, [127, 0, 0, 2], &[]);
    assert_eq!((a, b), (Some(101), Some(101)));
    assert_eq!(upgrade_behind(addr, [127, 0, 0, 2], &[]).0, Some(429));
}
