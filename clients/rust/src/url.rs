//! The server's URL: `ws://` or `wss://HOST[:PORT][/PATH][?QUERY]`, read into what the
//! connection and the upgrade need.

use std::fmt;

/// Where the client connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// Host name or IP address to connect to (an IPv6 address without brackets).
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `wss:`: TLS, the server's certificate checked for `host`.
    pub(crate) tls: bool,
    /// The `Host` header: the authority as given.
    pub(crate) authority: String,
    /// Path and query for the request line.
    pub(crate) path: String,
}

/// A URL or TLS setting the client cannot connect with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectError(pub(crate) String);

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectError {}

pub(crate) fn parse(url: &str) -> Result<Endpoint, ConnectError> {
    let bad = |why: &str| ConnectError(format!("{url:?}: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected ws:// or wss://HOST[:PORT]/PATH"))?;
    let tls = if scheme.eq_ignore_ascii_case("wss") {
        true
    } else if scheme.eq_ignore_ascii_case("ws") {
        false
    } else {
        return Err(bad("the scheme must be ws: or wss:"));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) if rest.as_bytes()[at] == b'?' => (&rest[..at], format!("/{}", &rest[at..])),
        Some(at) => (&rest[..at], rest[at..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    if authority.contains('@') {
        return Err(bad(
            "credentials in the URL are not supported (use a token)",
        ));
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(after.strip_prefix(':').ok_or_else(|| bad("bad port"))?),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(port) => port.parse::<u16>().map_err(|_| bad("bad port"))?,
        None if tls => 443,
        None => 80,
    };
    if path.contains(char::is_whitespace) {
        return Err(bad("whitespace in the path"));
    }
    Ok(Endpoint {
        host: host.to_owned(),
        port,
        tls,
        authority: authority.to_owned(),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = parse("ws://127.0.0.1:9001/ws").unwrap();
        assert_eq!(
            (
                e.host.as_str(),
                e.port,
                e.authority.as_str(),
                e.path.as_str()
            ),
            ("127.0.0.1", 9001, "127.0.0.1:9001", "/ws")
        );
        let e = parse("WS://push.example.com?x=1").unwrap();
        assert_eq!((e.port, e.path.as_str()), (80, "/?x=1"));
        let e = parse("ws://[::1]:9/ws").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.authority.as_str()),
            ("::1", 9, "[::1]:9")
        );
        assert_eq!(parse("ws://[::1]").unwrap().port, 80);
        assert!(!parse("ws://h/ws").unwrap().tls);
        let e = parse("WSS://push.example.com/ws").unwrap();
        assert_eq!(
            (e.tls, e.port, e.host.as_str()),
            (true, 443, "push.example.com")
        );
        let e = parse("wss://localhost:9443/ws").unwrap();
        assert_eq!((e.tls, e.port), (true, 9443));
        for bad in [
            "http://h/ws",
            "https://h/ws",
            "h/ws",
            "ws://:9/ws",
            "ws://h:x/ws",
            "ws://u:p@h/ws",
            "ws://[::1/ws",
            "ws://h/a b",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
