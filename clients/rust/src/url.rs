//! The server's URL: `ws://HOST[:PORT][/PATH][?QUERY]`, read into what the upgrade needs.

use std::fmt;

/// Where the client connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// Host name or IP address to connect to (an IPv6 address without brackets).
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The `Host` header: the authority as given.
    pub(crate) authority: String,
    /// Path and query for the request line.
    pub(crate) path: String,
}

/// A URL the client cannot connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlError(String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UrlError {}

pub(crate) fn parse(url: &str) -> Result<Endpoint, UrlError> {
    let bad = |why: &str| UrlError(format!("{url:?}: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected ws://HOST[:PORT]/PATH"))?;
    if scheme.eq_ignore_ascii_case("wss") {
        return Err(bad(
            "wss: is not supported yet (no TLS in this client): terminate TLS in front of it or \
             connect with ws:",
        ));
    }
    if !scheme.eq_ignore_ascii_case("ws") {
        return Err(bad("the scheme must be ws:"));
    }
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
        None => 80,
    };
    if path.contains(char::is_whitespace) {
        return Err(bad("whitespace in the path"));
    }
    Ok(Endpoint {
        host: host.to_owned(),
        port,
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
        for bad in [
            "http://h/ws",
            "wss://h/ws",
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
