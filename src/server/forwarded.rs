//! The client's address behind trusted proxies, from `X-Forwarded-For` or `Forwarded`
//! (RFC 7239), read right to left.
//!
//! Each proxy appends the address it received the request from, so the list ends with the hops
//! nearest to us. Starting from the peer, each hop is believed only if the hop after it (the one
//! that wrote it) is a trusted proxy: the client is the right-most address that is not a
//! trusted proxy. What lies to its left was written by the client or by proxies we do not know,
//! and is never read, so a client cannot choose its address by sending the header itself.
//!
//! When a trusted hop reports the client as unknown (`unknown`, an obfuscated `_name`, or a
//! `Forwarded` element without `for`), the client is that trusted hop: the nearest address
//! known. A header that cannot be parsed where it must be read is [`Malformed`], answered with
//! 400: a trusted proxy wrote it, so guessing would either believe what the client wrote or
//! count every client behind the proxy as the proxy. Only the request that carried it fails.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use clarion_engine::TrustedProxies;
use clarion_protocol::handshake::Request;
use serde::Deserialize;

/// Which header the trusted proxies set. Only one is read: a proxy that sets one usually passes
/// the other through from the client untouched, and reading it would let the client choose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx's `$proxy_add_x_forwarded_for`,
    /// HAProxy's `option forwardfor`, most cloud load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239; HAProxy's `option forwarded`).
    Forwarded,
}

impl ForwardedHeader {
    /// The header's name, lower-case.
    pub fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        }
    }
}

/// A forwarding header that cannot be read where it must be (answered with 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// One hop of the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hop {
    /// An address, with port 0 when the proxy gave none.
    Address(SocketAddr),
    /// The proxy did not know or would not say.
    Unknown,
}

/// The client of a request that came from `peer`: `Some` when trusted proxies named it in
/// `header`, `None` when the peer is the client (an untrusted peer, no header, or a trusted
/// proxy that did not know). The port is 0 when the proxy gave none.
pub fn client(
    request: &Request<'_>,
    peer: SocketAddr,
    trusted: &TrustedProxies,
    header: ForwardedHeader,
) -> Result<Option<SocketAddr>, Malformed> {
    if !trusted.trusts(peer.ip()) {
        return Ok(None);
    }
    let values = request
        .headers()
        .filter(|(name, _)| name.eq_ignore_ascii_case(header.name()));
    let mut elements = Vec::new();
    for (_, value) in values {
        let value = std::str::from_utf8(value).map_err(|_| Malformed("not UTF-8"))?;
        match header {
            ForwardedHeader::XForwardedFor => elements.extend(value.split(',')),
            ForwardedHeader::Forwarded => split_elements(value, &mut elements)?,
        }
    }
    let mut client = None;
    for element in elements.iter().rev().map(|e| e.trim()) {
        // An empty list element is allowed (RFC 9110 §5.6.1) and says nothing.
        if element.is_empty() {
            continue;
        }
        let hop = match header {
            ForwardedHeader::XForwardedFor => x_forwarded_for_hop(element)?,
            ForwardedHeader::Forwarded => forwarded_hop(element)?,
        };
        match hop {
            Hop::Unknown => break,
            Hop::Address(address) => {
                client = Some(address);
                if !trusted.trusts(address.ip()) {
                    break;
                }
            }
        }
    }
    Ok(client.map(|c| SocketAddr::new(c.ip().to_canonical(), c.port())))
}

/// One `X-Forwarded-For` element: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]:4711` or `unknown`.
fn x_forwarded_for_hop(element: &str) -> Result<Hop, Malformed> {
    if element.eq_ignore_ascii_case("unknown") {
        return Ok(Hop::Unknown);
    }
    node(element)
        .map(Hop::Address)
        .ok_or(Malformed("bad X-Forwarded-For address"))
}

/// The `for` of one `Forwarded` element (`for=192.0.2.1;proto=https`): its node, or unknown
/// without one.
fn forwarded_hop(element: &str) -> Result<Hop, Malformed> {
    let mut found = None;
    for pair in element.split(';').map(str::trim) {
        let (name, value) = pair
            .split_once('=')
            .ok_or(Malformed("Forwarded pair without '='"))?;
        if !name.eq_ignore_ascii_case("for") {
            continue;
        }
        if found.is_some() {
            return Err(Malformed("Forwarded element with two 'for'"));
        }
        found = Some(unquote(value)?);
    }
    let Some(value) = found else {
        return Ok(Hop::Unknown);
    };
    // RFC 7239 §6: `unknown`, or an obfuscated identifier `_[A-Za-z0-9._-]+`.
    if value.eq_ignore_ascii_case("unknown") || value.starts_with('_') {
        return Ok(Hop::Unknown);
    }
    node(value)
        .map(Hop::Address)
        .ok_or(Malformed("bad Forwarded 'for' address"))
}

/// An address with an optional port: `v4`, `v4:port`, `[v6]`, `[v6]:port`, or bare `v6`. An
/// obfuscated port (`_name`) is no port.
fn node(text: &str) -> Option<SocketAddr> {
    let port = |p: &str| match p.strip_prefix('_') {
        Some(_) => Some(0),
        None => p.parse::<u16>().ok(),
    };
    if let Some(rest) = text.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = ip.parse().ok()?;
        let port = match after {
            "" => 0,
            _ => port(after.strip_prefix(':')?)?,
        };
        return Some(SocketAddr::new(IpAddr::V6(ip), port));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 0));
    }
    let (ip, p) = text.rsplit_once(':')?;
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    Some(SocketAddr::new(IpAddr::V4(ip), port(p)?))
}

/// A `token` or a `"quoted-string"` value. A node never needs an escape, so a quoted value with
/// one is not a node; it is returned as is and fails to parse as an address.
fn unquote(value: &str) -> Result<&str, Malformed> {
    match value.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .ok_or(Malformed("Forwarded value with an unclosed quote")),
        None => Ok(value),
    }
}

/// Splits a `Forwarded` value on the commas outside quoted strings (which may hold commas and
/// `\`-escapes), appending each element to `out`.
fn split_elements<'a>(value: &'a str, out: &mut Vec<&'a str>) -> Result<(), Malformed> {
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, byte) in value.bytes().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err(Malformed("Forwarded value with an unclosed quote"));
    }
    out.push(&value[start..]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clarion_engine::Cidr;

    fn trusted(blocks: &[&str]) -> TrustedProxies {
        TrustedProxies::new(blocks.iter().map(|b| b.parse::<Cidr>().unwrap()).collect())
    }

    /// The client of a request with `headers` from `peer`, with 10.0.0.0/8 trusted.
    fn resolve(
        peer: &str,
        header: ForwardedHeader,
        headers: &str,
    ) -> Result<Option<SocketAddr>, Malformed> {
        let head = format!("GET / HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        let (request, _) = Request::parse(head.as_bytes(), 8192, 64).unwrap().unwrap();
        let peer = SocketAddr::new(peer.parse().unwrap(), 5000);
        client(&request, peer, &trusted(&["10.0.0.0/8"]), header)
    }

    fn xff(peer: &str, headers: &str) -> Result<Option<SocketAddr>, Malformed> {
        resolve(peer, ForwardedHeader::XForwardedFor, headers)
    }

    fn fwd(peer: &str, headers: &str) -> Result<Option<SocketAddr>, Malformed> {
        resolve(peer, ForwardedHeader::Forwarded, headers)
    }

    fn at(text: &str) -> Result<Option<SocketAddr>, Malformed> {
        Ok(Some(text.parse().unwrap()))
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        assert_eq!(
            xff("192.0.2.1", "X-Forwarded-For: 198.51.100.7\r\n"),
            Ok(None)
        );
        assert_eq!(
            xff("192.0.2.1", "X-Forwarded-For: ][ garbage\r\n"),
            Ok(None)
        );
        assert_eq!(fwd("192.0.2.1", "Forwarded: for=\"\r\n"), Ok(None));
    }

    #[test]
    fn the_client_is_the_right_most_untrusted_hop() {
        // A client that wrote its own header: what the trusted proxy appended wins.
        let spoofed = "X-Forwarded-For: 1.1.1.1, 198.51.100.7\r\n";
        assert_eq!(xff("10.0.0.1", spoofed), at("198.51.100.7:0"));
        // Two trusted proxies in a row.
        let chain = "X-Forwarded-For: 1.1.1.1, 198.51.100.7, 10.0.0.2\r\n";
        assert_eq!(xff("10.0.0.1", chain), at("198.51.100.7:0"));
        // Several header lines are one list, in order.
        let lines = "X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 198.51.100.7, 10.0.0.2\r\n";
        assert_eq!(xff("10.0.0.1", lines), at("198.51.100.7:0"));
        // Only trusted hops: the left-most of them.
        assert_eq!(
            xff("10.0.0.1", "X-Forwarded-For: 10.0.0.3, 10.0.0.2\r\n"),
            at("10.0.0.3:0")
        );
        // No header: the proxy itself.
        assert_eq!(xff("10.0.0.1", ""), Ok(None));
    }

    #[test]
    fn addresses_come_in_every_form() {
        for (element, expected) in [
            ("198.51.100.7:4711", "198.51.100.7:4711"),
            ("2001:db8::7", "[2001:db8::7]:0"),
            ("[2001:db8::7]", "[2001:db8::7]:0"),
            ("[2001:db8::7]:4711", "[2001:db8::7]:4711"),
            ("::ffff:198.51.100.7", "198.51.100.7:0"),
        ] {
            let header = format!("X-Forwarded-For: {element}\r\n");
            assert_eq!(xff("10.0.0.1", &header), at(expected), "{element}");
        }
        // The peer may be IPv4-mapped too (a dual-stack listener).
        assert_eq!(
            xff("::ffff:10.0.0.1", "X-Forwarded-For: 198.51.100.7\r\n"),
            at("198.51.100.7:0")
        );
    }

    #[test]
    fn an_unknown_hop_leaves_the_nearest_known_address() {
        assert_eq!(
            xff("10.0.0.1", "X-Forwarded-For: 1.1.1.1, unknown\r\n"),
            Ok(None)
        );
        let behind = "X-Forwarded-For: unknown, 10.0.0.2\r\n";
        assert_eq!(xff("10.0.0.1", behind), at("10.0.0.2:0"));
        assert_eq!(fwd("10.0.0.1", "Forwarded: for=_hidden\r\n"), Ok(None));
        assert_eq!(fwd("10.0.0.1", "Forwarded: proto=https\r\n"), Ok(None));
    }

    #[test]
    fn malformed_headers_are_refused_only_where_they_are_read() {
        assert!(xff("10.0.0.1", "X-Forwarded-For: 198.51.100.7, nonsense\r\n").is_err());
        assert!(xff("10.0.0.1", "X-Forwarded-For: 300.1.1.1\r\n").is_err());
        assert!(xff("10.0.0.1", "X-Forwarded-For: [::1\r\n").is_err());
        assert!(xff("10.0.0.1", "X-Forwarded-For: 1.2.3.4:99999\r\n").is_err());
        // Left of the client: never read.
        let junk_left = "X-Forwarded-For: nonsense, 198.51.100.7\r\n";
        assert_eq!(xff("10.0.0.1", junk_left), at("198.51.100.7:0"));
        // Empty elements say nothing.
        let empty = "X-Forwarded-For: ,198.51.100.7,, \r\n";
        assert_eq!(xff("10.0.0.1", empty), at("198.51.100.7:0"));
    }

    #[test]
    fn forwarded_follows_rfc_7239() {
        let example = "Forwarded: for=192.0.2.43, for=\"[2001:db8:cafe::17]:4711\"\r\n";
        assert_eq!(fwd("10.0.0.1", example), at("[2001:db8:cafe::17]:4711"));
        let params = "Forwarded: For=\"198.51.100.7:80\";proto=https;by=10.0.0.1\r\n";
        assert_eq!(fwd("10.0.0.1", params), at("198.51.100.7:80"));
        let obfuscated_port = "Forwarded: for=\"198.51.100.7:_p1\"\r\n";
        assert_eq!(fwd("10.0.0.1", obfuscated_port), at("198.51.100.7:0"));
        // A quoted comma is not a separator.
        let quoted = "Forwarded: for=1.1.1.1;ext=\"a, \\\"b\", for=198.51.100.7\r\n";
        assert_eq!(fwd("10.0.0.1", quoted), at("198.51.100.7:0"));
        // X-Forwarded-For is not read when Forwarded is the configured header.
        let other = "X-Forwarded-For: 198.51.100.7\r\n";
        assert_eq!(fwd("10.0.0.1", other), Ok(None));
        for bad in [
            "Forwarded: for=\"198.51.100.7\r\n",
            "Forwarded: for=1.1.1.1;for=2.2.2.2\r\n",
            "Forwarded: for\r\n",
            "Forwarded: for=2001:db8::1:80:x\r\n",
        ] {
            assert!(fwd("10.0.0.1", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_are_malformed() {
        let head = b"GET / HTTP/1.1\r\nX-Forwarded-For: \xff\r\n\r\n";
        let (request, _) = Request::parse(head, 8192, 64).unwrap().unwrap();
        let peer = "10.0.0.1:1".parse().unwrap();
        let all = trusted(&["10.0.0.0/8"]);
        assert!(client(&request, peer, &all, ForwardedHeader::XForwardedFor).is_err());
    }
}
