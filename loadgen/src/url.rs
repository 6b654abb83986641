//! Target URLs: `ws://` or `wss://HOST[:PORT]/PATH` for WebSockets and `http://` or
//! `https://HOST[:PORT]/PATH` for the publish API. Hosts are IP literals or `localhost`, and must be loopback: this tool only loads
//! servers on the same machine.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Where connections go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The `Host` header value.
    pub host: String,
    /// Path and query, as sent in the request line.
    pub path: String,
    /// Over TLS (`wss://`, `https://`).
    pub tls: bool,
}

impl Target {
    /// The name the server's certificate must carry: the host without its port or brackets.
    pub fn server_name(&self) -> String {
        split_host_port(&self.host)
            .map_or(self.host.as_str(), |(host, _)| host)
            .to_owned()
    }
}

/// Parses a `ws://` or `wss://` URL.
pub fn parse_ws(url: &str) -> Result<Target, String> {
    parse(url, ["ws", "wss"])
}

/// Parses a subscriber's URL: `ws://` (WebSocket), or `http://` for the `sse` transport
/// (Server-Sent Events, plaintext only here); true for the latter.
pub fn parse_subscriber(url: &str) -> Result<(Target, bool), String> {
    if url
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
    {
        parse_http(url).map(|target| (target, true))
    } else {
        parse_ws(url).map(|target| (target, false))
    }
}

/// Parses an `http://` or `https://` URL.
pub fn parse_http(url: &str) -> Result<Target, String> {
    parse(url, ["http", "https"])
}

/// `schemes`: the plaintext one, then the TLS one.
fn parse(url: &str, [plain, secure]: [&str; 2]) -> Result<Target, String> {
    let bad = |why: &str| format!("bad URL {url:?}: {why}");
    let (given_scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad(&format!("expected {plain}://HOST:PORT/PATH")))?;
    let tls = if given_scheme.eq_ignore_ascii_case(secure) {
        true
    } else if given_scheme.eq_ignore_ascii_case(plain) {
        false
    } else {
        return Err(bad(&format!(
            "scheme {given_scheme:?} is not supported here, use {plain}:// or {secure}://"
        )));
    };
    let default_port = if tls { 443 } else { 80 };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) if rest.as_bytes()[at] == b'?' => (&rest[..at], format!("/{}", &rest[at..])),
        Some(at) => (&rest[..at], rest[at..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    if authority.contains('@') {
        return Err(bad("credentials in URLs are not supported"));
    }
    let (host, port) = split_host_port(authority).ok_or_else(|| bad("cannot read host:port"))?;
    let port = match port {
        Some(port) => port.parse::<u16>().map_err(|_| bad("bad port"))?,
        None => default_port,
    };
    let ip = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse::<IpAddr>()
            .map_err(|_| bad("the host must be an IP address or localhost"))?
    };
    if !ip.is_loopback() {
        return Err(bad(
            "only loopback targets are allowed (127.0.0.0/8, ::1, localhost)",
        ));
    }
    if port == 0 {
        return Err(bad("port 0"));
    }
    Ok(Target {
        url: url.to_owned(),
        addr: SocketAddr::new(ip, port),
        host: authority.to_owned(),
        path,
        tls,
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    match authority.split_once(':') {
        Some((host, port)) => Some((host, Some(port))),
        None if authority.is_empty() => None,
        None => Some((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loopback_urls() {
        let t = parse_ws("ws://127.0.0.1:9001/echo").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(
            (t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:9001", "/echo")
        );
        let t = parse_ws("WS://localhost").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/"));
        let t = parse_ws("ws://[::1]:8080?x=1").unwrap();
        assert_eq!(t.addr, "[::1]:8080".parse().unwrap());
        assert_eq!(t.path, "/?x=1");
        let t = parse_http("http://127.0.0.9:1/publish").unwrap();
        assert_eq!(t.path, "/publish");
        assert!(!t.tls);
        let t = parse_ws("wss://localhost:9443/t/a").unwrap();
        assert!(t.tls);
        assert_eq!(
            (t.addr.port(), t.server_name().as_str()),
            (9443, "localhost")
        );
        assert_eq!(parse_ws("wss://[::1]/").unwrap().addr.port(), 443);
        assert_eq!(parse_ws("wss://[::1]/").unwrap().server_name(), "::1");
        assert!(parse_http("https://127.0.0.1/publish").unwrap().tls);
    }

    #[test]
    fn refuses_what_it_cannot_or_must_not_load() {
        for url in [
            "127.0.0.1:9001",
            "ftp://127.0.0.1/",
            "ws://10.0.0.1:80/",
            "ws://192.168.1.1/",
            "ws://example.com/",
            "ws://[2001:db8::1]:80/",
            "ws://127.0.0.1:99999/",
            "ws://127.0.0.1:0/",
            "ws://user@127.0.0.1/",
            "ws://[::1/",
            "ws:///path",
        ] {
            assert!(parse_ws(url).is_err(), "{url}");
        }
        assert!(parse_http("ws://127.0.0.1/").is_err());
    }
}
