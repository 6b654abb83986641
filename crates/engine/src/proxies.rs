//! Trusted proxies: the address blocks whose word about a client's address is believed, in a
//! PROXY protocol header or in a forwarding HTTP header.
//!
//! Addresses are compared in canonical form: an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`,
//! what a dual-stack `[::]` listener reports for an IPv4 client) is the IPv4 address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A block of addresses: a network address and a prefix length (`10.0.0.0/8`, `2001:db8::/32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The block of the first `prefix` bits of `ip` (canonical; `prefix` capped at 32 for IPv4
    /// and 128 for IPv6).
    pub fn containing(ip: IpAddr, prefix: u8) -> Cidr {
        let ip = ip.to_canonical();
        let prefix = prefix.min(width(ip));
        Cidr {
            network: mask(ip, prefix),
            prefix,
        }
    }

    /// The block's first address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` (canonical) lies in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix) == self.network
    }
}

/// Why a text is not a [`Cidr`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrError(String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CidrError {}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `ADDRESS/PREFIX`, or a bare address (a block of one). Host bits must be zero, so a typo
    /// such as `10.1.2.3/8` is caught rather than silently trusting all of `10.0.0.0/8`.
    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let bad = |why: &str| CidrError(format!("{text:?} is not an address or CIDR block: {why}"));
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let ip: IpAddr = address.parse().map_err(|_| bad("bad address"))?;
        let prefix = match prefix {
            None => width(ip),
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width(ip))
                .ok_or_else(|| bad("bad prefix length"))?,
        };
        // `::ffff:10.0.0.0/104` is `10.0.0.0/8`.
        let (ip, prefix) = match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() && prefix >= 96 => {
                (ip.to_canonical(), prefix - 96)
            }
            _ => (ip, prefix),
        };
        let cidr = Cidr::containing(ip, prefix);
        if cidr.network != ip {
            return Err(CidrError(format!(
                "{text:?} has host bits set (did you mean {cidr}?)"
            )));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The proxies whose reports of a client's address are believed. Empty (the default): none,
/// so every forwarding header is ignored and every peer is the client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    blocks: Vec<Cidr>,
}

impl TrustedProxies {
    /// Trusts the peers in `blocks`.
    pub fn new(blocks: Vec<Cidr>) -> TrustedProxies {
        TrustedProxies { blocks }
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Whether `ip` is a trusted proxy: one comparison per block (lists are a few entries).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.blocks.iter().any(|block| block.contains(ip))
    }

    /// The blocks, as configured.
    pub fn blocks(&self) -> &[Cidr] {
        &self.blocks
    }
}

/// Bits in `ip`'s family.
fn width(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// `ip` with all but its first `prefix` bits cleared (`prefix` at most the family's width).
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from_bits(v4.to_bits() & keep))
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & keep))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_parse_and_hold_their_addresses() {
        let private = cidr("10.0.0.0/8");
        assert!(private.contains(ip("10.255.1.2")));
        assert!(!private.contains(ip("11.0.0.0")));
        let one = cidr("192.0.2.7");
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = cidr("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!cidr("0.0.0.0/0").contains(ip("::1")), "families never mix");
        assert!(cidr("::/0").contains(ip("::1")));
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        assert!(cidr("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        assert_eq!(cidr("::ffff:10.0.0.0/104"), cidr("10.0.0.0/8"));
        assert_eq!(cidr("::ffff:10.1.2.3"), cidr("10.1.2.3/32"));
        assert_eq!(
            Cidr::containing(ip("::ffff:198.51.100.7"), 64).network(),
            ip("198.51.100.7"),
            "an IPv4 address keeps all its 32 bits"
        );
    }

    #[test]
    fn containing_clears_the_host_bits() {
        let block = Cidr::containing(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), 64);
        assert_eq!(block.network(), ip("2001:db8:1:2::"));
        assert_eq!(block.prefix(), 64);
        assert_eq!(Cidr::containing(ip("10.9.8.7"), 0).network(), ip("0.0.0.0"));
        assert_eq!(
            Cidr::containing(ip("::1"), 128),
            cidr("::1/128"),
            "a full prefix keeps every bit"
        );
    }

    #[test]
    fn bad_blocks_are_refused_with_the_reason() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "localhost",
            "1/x",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let typo = "10.1.2.3/8".parse::<Cidr>().unwrap_err().to_string();
        assert!(typo.contains("did you mean 10.0.0.0/8"), "{typo}");
    }

    #[test]
    fn an_empty_list_trusts_nobody() {
        let none = TrustedProxies::default();
        assert!(none.is_empty() && !none.trusts(ip("127.0.0.1")));
        let some = TrustedProxies::new(vec![cidr("127.0.0.1"), cidr("fd00::/8")]);
        assert!(some.trusts(ip("127.0.0.1")) && some.trusts(ip("fd12::1")));
        assert!(!some.trusts(ip("127.0.0.2")) && !some.trusts(ip("fe80::1")));
    }
}
