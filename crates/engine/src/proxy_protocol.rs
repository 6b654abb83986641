//! The PROXY protocol header (HAProxy's specification, versions 1 and 2), sans-IO: the bytes a
//! proxy sends at the start of a connection, before anything of the client's, to say whom it
//! is forwarding. Bytes in, the client's address and the header's length out; no socket, no
//! clock, no allocation.
//!
//! Version 1 is one text line of at most 107 bytes (`PROXY TCP4 192.0.2.1 198.51.100.1 56324
//! 443\r\n`); version 2 is binary: a 12-byte signature, a version and command byte, an address
//! family byte, a 16-bit length, the addresses, then optional TLVs (skipped here). A header
//! longer than [`MAX_HEADER`] is refused, so what waits for one is bounded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Which PROXY protocol versions a listener takes from its trusted proxies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// None: connections are read as they come, nothing is looked for.
    #[default]
    Off,
    /// Version 1 (text) only.
    V1,
    /// Version 2 (binary) only.
    V2,
    /// Either version.
    Any,
}

impl ProxyProtocol {
    fn takes(self, version: u8) -> bool {
        matches!(
            (self, version),
            (ProxyProtocol::Any, _) | (ProxyProtocol::V1, 1) | (ProxyProtocol::V2, 2)
        )
    }
}

/// The longest header taken, in bytes: version 2's 16 fixed bytes, its largest address block
/// (two Unix paths, 216 bytes) and room for the TLVs proxies add (TLS details, a unique ID,
/// a cloud endpoint ID); version 1 lines are at most 107.
pub const MAX_HEADER: usize = 1024;

/// Longest version 1 line, `\r\n` included (the specification's limit).
const MAX_V1: usize = 107;

/// The version 2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// What a complete header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// The proxy forwards a client from this address.
    Proxied(SocketAddr),
    /// The proxy speaks for itself (version 2 `LOCAL`, a health check) or gives no address it
    /// can express (version 1 `UNKNOWN`, a Unix socket, an unspecified family): the peer is
    /// the client.
    Local,
}

/// Why the start of a connection is not an acceptable header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// No header where one is required: the bytes are something else (a client speaking
    /// straight to us, or a proxy not configured to send one).
    Missing,
    /// A header of a version this listener does not take.
    Version,
    /// A header that breaks the specification (or is longer than [`MAX_HEADER`]).
    Malformed(&'static str),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Missing => f.write_str("no PROXY protocol header"),
            HeaderError::Version => f.write_str("a PROXY protocol version not accepted here"),
            HeaderError::Malformed(why) => write!(f, "malformed PROXY protocol header: {why}"),
        }
    }
}

impl std::error::Error for HeaderError {}

/// Reads the header a trusted proxy must send at the start of `buf`, in a version `accept`
/// takes (not [`ProxyProtocol::Off`]). `Ok(None)`: incomplete, read more. `Ok(Some)`: the
/// header and its length; the client's bytes follow it.
pub fn read_header(
    buf: &[u8],
    accept: ProxyProtocol,
) -> Result<Option<(Header, usize)>, HeaderError> {
    let version = match signature(buf) {
        None => return Ok(None),
        Some(None) => return Err(HeaderError::Missing),
        Some(Some(version)) => version,
    };
    if !accept.takes(version) {
        return Err(HeaderError::Version);
    }
    match version {
        1 => read_v1(buf),
        _ => read_v2(buf),
    }
}

/// Whether `buf` starts with a PROXY protocol header of either version: `None` while it is too
/// short to tell. For peers that may not send one: a header from them is refused.
pub fn starts_with_header(buf: &[u8]) -> Option<bool> {
    signature(buf).map(|version| version.is_some())
}

/// The version whose signature `buf` starts with: `Some(None)` for neither, `None` while `buf`
/// is a strict prefix of one.
fn signature(buf: &[u8]) -> Option<Option<u8>> {
    const V1: &[u8] = b"PROXY ";
    for (version, signature) in [(1, V1), (2, &V2_SIGNATURE[..])] {
        let n = buf.len().min(signature.len());
        if buf[..n] == signature[..n] {
            return (n == signature.len()).then_some(Some(version));
        }
    }
    Some(None)
}

/// `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` or `PROXY UNKNOWN ...\r\n`.
fn read_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, HeaderError> {
    let window = &buf[..buf.len().min(MAX_V1)];
    let Some(end) = window.windows(2).position(|pair| pair == b"\r\n") else {
        return match buf.len() >= MAX_V1 {
            true => Err(HeaderError::Malformed(
                "a version 1 line longer than 107 bytes",
            )),
            false => Ok(None),
        };
    };
    let len = end + 2;
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| HeaderError::Malformed("not text"))?;
    let mut fields = line.split(' ').skip(1);
    let header = match fields.next() {
        Some("UNKNOWN") => Header::Local,
        Some(family @ ("TCP4" | "TCP6")) => {
            let address = |text: &str| -> Result<IpAddr, HeaderError> {
                let bad = HeaderError::Malformed("a bad address");
                match family {
                    "TCP4" => text.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| bad),
                    _ => text.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| bad),
                }
            };
            let mut next = || {
                fields
                    .next()
                    .ok_or(HeaderError::Malformed("a field missing"))
            };
            let source = address(next()?)?;
            address(next()?)?;
            let source_port = port(next()?)?;
            port(next()?)?;
            if fields.next().is_some() {
                return Err(HeaderError::Malformed("a field too many"));
            }
            Header::Proxied(SocketAddr::new(source, source_port))
        }
        _ => return Err(HeaderError::Malformed("an unknown protocol family")),
    };
    Ok(Some((header, len)))
}

/// A version 1 port: 0 to 65535 in decimal, no sign, no leading zero.
fn port(text: &str) -> Result<u16, HeaderError> {
    let bad = HeaderError::Malformed("a bad port");
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return Err(bad);
    }
    text.parse().map_err(|_| bad)
}

/// The binary header: signature, version and command, family and transport, length, addresses,
/// TLVs.
fn read_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, HeaderError> {
    let Some(fixed) = buf.get(..16) else {
        return Ok(None);
    };
    let len = 16 + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_HEADER {
        return Err(HeaderError::Malformed(
            "longer than the largest header taken",
        ));
    }
    let Some(header) = buf.get(..len) else {
        return Ok(None);
    };
    let (version, command) = (fixed[12] >> 4, fixed[12] & 0x0F);
    if version != 2 {
        return Err(HeaderError::Malformed(
            "a version other than 2 after the signature",
        ));
    }
    let addresses = &header[16..];
    let header = match command {
        0x0 => Header::Local,
        0x1 => match fixed[13] >> 4 {
            0x1 => {
                let block = addresses
                    .get(..12)
                    .ok_or(HeaderError::Malformed("an IPv4 address block cut short"))?;
                let ip = Ipv4Addr::from(<[u8; 4]>::try_from(&block[..4]).expect("4 bytes"));
                let port = u16::from_be_bytes([block[8], block[9]]);
                Header::Proxied(SocketAddr::new(IpAddr::V4(ip), port))
            }
            0x2 => {
                let block = addresses
                    .get(..36)
                    .ok_or(HeaderError::Malformed("an IPv6 address block cut short"))?;
                let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&block[..16]).expect("16 bytes"));
                let port = u16::from_be_bytes([block[32], block[33]]);
                Header::Proxied(SocketAddr::new(IpAddr::V6(ip), port))
            }
            // Unspecified, or a Unix socket: nothing an address of ours can hold.
            0x0 | 0x3 => Header::Local,
            _ => return Err(HeaderError::Malformed("an unknown address family")),
        },
        _ => return Err(HeaderError::Malformed("an unknown command")),
    };
    Ok(Some((header, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        out.extend_from_slice(addresses);
        out
    }

    fn ipv4_block() -> Vec<u8> {
        let mut block = vec![192, 0, 2, 1, 198, 51, 100, 1];
        block.extend_from_slice(&56324u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        block
    }

    fn proxied(text: &str) -> Header {
        Header::Proxied(text.parse().unwrap())
    }

    #[test]
    fn version_1_lines_give_the_source() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n";
        let (header, len) = read_header(line, ProxyProtocol::V1).unwrap().unwrap();
        assert_eq!(header, proxied("192.0.2.1:56324"));
        assert_eq!(&line[len..len + 3], b"GET");
        let six = b"PROXY TCP6 2001:db8::1 2001:db8::2 4711 443\r\n";
        let (header, len) = read_header(six, ProxyProtocol::Any).unwrap().unwrap();
        assert_eq!((header, len), (proxied("[2001:db8::1]:4711"), six.len()));
        let unknown = b"PROXY UNKNOWN whatever follows\r\n";
        assert_eq!(
            read_header(unknown, ProxyProtocol::V1),
            Ok(Some((Header::Local, unknown.len())))
        );
        // The longest lines the specification allows: 104 bytes for TCP6, 107 for UNKNOWN.
        let ffff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        for family in ["TCP6", "UNKNOWN"] {
            let line = format!("PROXY {family} {ffff} {ffff} 65535 65535\r\n");
            assert!(line.len() <= MAX_V1);
            assert!(
                read_header(line.as_bytes(), ProxyProtocol::V1)
                    .unwrap()
                    .is_some()
            );
        }
    }

    #[test]
    fn version_2_headers_give_the_source_and_skip_tlvs() {
        let header = v2(1, 0x11, &ipv4_block());
        assert_eq!(
            read_header(&header, ProxyProtocol::V2),
            Ok(Some((proxied("192.0.2.1:56324"), 28)))
        );
        let mut six = vec![0x20, 0x01, 0x0d, 0xb8];
        six.extend_from_slice(&[0; 11]);
        six.push(7);
        six.extend_from_slice(&[0; 16]);
        six.extend_from_slice(&4711u16.to_be_bytes());
        six.extend_from_slice(&443u16.to_be_bytes());
        // A TLV (type 0x04, NOOP, 3 bytes) after the addresses.
        six.extend_from_slice(&[0x04, 0, 3, 1, 2, 3]);
        let header = v2(1, 0x21, &six);
        assert_eq!(
            read_header(&header, ProxyProtocol::Any),
            Ok(Some((proxied("[2001:db8::7]:4711"), header.len())))
        );
        // A health check from the proxy itself, and families with no address of ours.
        assert_eq!(
            read_header(&v2(0, 0x00, &[]), ProxyProtocol::V2),
            Ok(Some((Header::Local, 16)))
        );
        let unix = v2(1, 0x31, &[0; 216]);
        assert_eq!(
            read_header(&unix, ProxyProtocol::V2).unwrap().unwrap().0,
            Header::Local
        );
    }

    #[test]
    fn every_prefix_of_a_header_asks_for_more() {
        let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n".to_vec();
        let v2 = v2(1, 0x11, &ipv4_block());
        for header in [v1, v2] {
            for cut in 0..header.len() {
                assert_eq!(
                    read_header(&header[..cut], ProxyProtocol::Any),
                    Ok(None),
                    "{cut}"
                );
            }
            assert!(starts_with_header(&header).unwrap());
        }
    }

    #[test]
    fn anything_else_is_missing_and_a_version_not_taken_is_refused() {
        let get = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(
            read_header(get, ProxyProtocol::Any),
            Err(HeaderError::Missing)
        );
        assert_eq!(starts_with_header(get), Some(false));
        // "PRO" could still be "PROXY " or "PROPFIND": undecided.
        assert_eq!(starts_with_header(b"PRO"), None);
        assert_eq!(starts_with_header(b"PROPFIND"), Some(false));
        let v1 = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            read_header(v1, ProxyProtocol::V2),
            Err(HeaderError::Version)
        );
        let v2 = v2(0, 0, &[]);
        assert_eq!(
            read_header(&v2, ProxyProtocol::V1),
            Err(HeaderError::Version)
        );
    }

    #[test]
    fn broken_headers_are_malformed() {
        for line in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.1 56324\r\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443 9\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 2001:db8::1 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 65536 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 0443 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 +1 443\r\n",
            b"PROXY TCP4  192.0.2.1 198.51.100.1 1 443\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.1 1 443\r\n",
            b"PROXY \xff\r\n",
        ] {
            let answer = read_header(line, ProxyProtocol::V1);
            assert!(
                matches!(answer, Err(HeaderError::Malformed(_))),
                "{line:?}: {answer:?}"
            );
        }
        let endless = [b"PROXY ".as_slice(), &[b'x'; 200]].concat();
        assert!(matches!(
            read_header(&endless, ProxyProtocol::V1),
            Err(HeaderError::Malformed(_))
        ));
        let short = v2(1, 0x11, &[0; 11]);
        assert!(matches!(
            read_header(&short, ProxyProtocol::V2),
            Err(HeaderError::Malformed(_))
        ));
        let mut long = v2(0, 0, &[]);
        long[14..16].copy_from_slice(&(MAX_HEADER as u16).to_be_bytes());
        assert!(matches!(
            read_header(&long, ProxyProtocol::V2),
            Err(HeaderError::Malformed(_))
        ));
        let mut version_3 = v2(0, 0, &[]);
        version_3[12] = 0x30;
        assert!(matches!(
            read_header(&version_3, ProxyProtocol::V2),
            Err(HeaderError::Malformed(_))
        ));
        let mut command_2 = v2(0, 0, &[]);
        command_2[12] = 0x22;
        assert!(matches!(
            read_header(&command_2, ProxyProtocol::V2),
            Err(HeaderError::Malformed(_))
        ));
        let family_4 = v2(1, 0x41, &[0; 12]);
        assert!(matches!(
            read_header(&family_4, ProxyProtocol::V2),
            Err(HeaderError::Malformed(_))
        ));
    }
}
