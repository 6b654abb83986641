//! The PROXY protocol header reader (`clarion_engine::proxy_protocol`) on arbitrary bytes, in
//! every mode, and on headers written from the input's bytes.
//!
//! Invariants: no panic; a header read is at most the input and at most `MAX_HEADER` long,
//! reads again alone to the same answer, and every shorter prefix of it asks for more; a mode
//! refuses a version only when another mode takes it; `starts_with_header` agrees with the
//! reader; a version 1 or 2 header written for an address reads back as that address.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use clarion_engine::proxy_protocol::{Header, HeaderError, MAX_HEADER, read_header, starts_with_header};
use clarion_engine::ProxyProtocol;
use libfuzzer_sys::fuzz_target;

const MODES: [ProxyProtocol; 3] = [ProxyProtocol::V1, ProxyProtocol::V2, ProxyProtocol::Any];

fuzz_target!(|data: &[u8]| {
    let any = read_header(data, ProxyProtocol::Any);
    match starts_with_header(data) {
        None => assert_eq!(any, Ok(None)),
        Some(false) => assert_eq!(any, Err(HeaderError::Missing)),
        Some(true) => assert_ne!(any, Err(HeaderError::Missing)),
    }
    for mode in MODES {
        let answer = read_header(data, mode);
        match answer {
            Ok(Some((header, len))) => {
                assert!(len <= data.len() && len <= MAX_HEADER);
                assert_eq!(read_header(&data[..len], mode), Ok(Some((header, len))));
                for cut in [0, len / 2, len - 1] {
                    assert_eq!(read_header(&data[..cut], mode), Ok(None), "{cut} of {len}");
                }
                assert_eq!(any, answer, "Any reads what a single version reads");
            }
            Err(HeaderError::Version) => {
                assert!(MODES.iter().any(|&m| read_header(data, m) != Err(HeaderError::Version)));
            }
            Ok(None) | Err(_) => {}
        }
    }
    round_trip(data);
});

/// Writes a header for the address in the input's first bytes, in both versions and both
/// families, followed by the rest of the input, and reads it back.
fn round_trip(data: &[u8]) {
    let Some((address, rest)) = data.split_first_chunk::<18>() else {
        return;
    };
    let port = u16::from_be_bytes([address[16], address[17]]);
    let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(&address[..16]).unwrap());
    let v4 = Ipv4Addr::new(address[0], address[1], address[2], address[3]);
    for ip in [IpAddr::V4(v4), IpAddr::V6(v6)] {
        let source = SocketAddr::new(ip, port);
        for header in [v1(source), v2(source)] {
            let mut bytes = header.clone();
            bytes.extend_from_slice(rest);
            assert_eq!(
                read_header(&bytes, ProxyProtocol::Any),
                Ok(Some((Header::Proxied(source), header.len())))
            );
        }
    }
}

fn v1(source: SocketAddr) -> Vec<u8> {
    let (family, destination) = match source.ip() {
        IpAddr::V4(_) => ("TCP4", "127.0.0.1"),
        IpAddr::V6(_) => ("TCP6", "::1"),
    };
    format!("PROXY {family} {} {destination} {} 443\r\n", source.ip(), source.port()).into_bytes()
}

fn v2(source: SocketAddr) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n\x21".to_vec();
    let addresses = match source.ip() {
        IpAddr::V4(ip) => {
            out.push(0x11);
            [&ip.octets()[..], &[127, 0, 0, 1]].concat()
        }
        IpAddr::V6(ip) => {
            out.push(0x21);
            [&ip.octets()[..], &Ipv6Addr::LOCALHOST.octets()].concat()
        }
    };
    out.extend_from_slice(&((addresses.len() + 4) as u16).to_be_bytes());
    out.extend_from_slice(&addresses);
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&443u16.to_be_bytes());
    out
}
