//! Source addresses (`--source-ips`) and how connections spread over (source, target) pairs.
//!
//! The kernel picks a local port per (source address, destination) pair, so each pair holds at
//! most one ephemeral range of connections, and its port search slows sharply as the range
//! fills. Rotating over several loopback source addresses (bound with `IP_BIND_ADDRESS_NO_PORT`,
//! which defers the port choice to `connect` so the range is per destination) and several targets
//! multiplies the room.

use std::net::{IpAddr, Ipv4Addr};

use crate::url::Target;

/// Most addresses a `--source-ips` list may name.
const MAX_SOURCES: usize = 1 << 16;

/// Parses `A-B[,C[,D-E]]` (IPv4, loopback only) into the list of addresses.
pub fn parse_source_ips(spec: &str) -> Result<Vec<IpAddr>, String> {
    let mut ips = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let parse = |s: &str| {
            s.trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("bad --source-ips {spec:?}: {s:?} is not an IPv4 address"))
        };
        let (first, last) = (u32::from(parse(first)?), u32::from(parse(last)?));
        if first > last {
            return Err(format!(
                "bad --source-ips {spec:?}: {part} is an empty range"
            ));
        }
        if (last - first) as usize >= MAX_SOURCES
            || ips.len() + (last - first) as usize >= MAX_SOURCES
        {
            return Err(format!(
                "bad --source-ips {spec:?}: more than {MAX_SOURCES} addresses"
            ));
        }
        for ip in first..=last {
            let ip = Ipv4Addr::from(ip);
            if !ip.is_loopback() {
                return Err(format!(
                    "bad --source-ips {spec:?}: {ip} is not a loopback address (127.0.0.0/8)"
                ));
            }
            ips.push(IpAddr::V4(ip));
        }
    }
    if ips.is_empty() {
        return Err(format!("bad --source-ips {spec:?}: no address"));
    }
    Ok(ips)
}

/// The (source, target) pairs connections rotate over.
#[derive(Clone, Debug)]
pub struct Pairs {
    /// Source addresses; empty when the kernel picks (then one "source" per target).
    pub sources: Vec<IpAddr>,
    /// Targets.
    pub targets: Vec<Target>,
}

impl Pairs {
    /// Checks that the sources can reach the targets (IPv4 sources cannot reach `::1`).
    pub fn new(sources: Vec<IpAddr>, targets: Vec<Target>) -> Result<Pairs, String> {
        if !sources.is_empty()
            && let Some(v6) = targets.iter().find(|t| t.addr.is_ipv6())
        {
            return Err(format!(
                "--source-ips are IPv4 but {} is IPv6: use IPv4 targets with --source-ips",
                v6.url
            ));
        }
        Ok(Pairs { sources, targets })
    }

    /// How many pairs there are.
    pub fn len(&self) -> usize {
        self.sources.len().max(1) * self.targets.len()
    }

    /// The pair of connection `index`: round robin, so every pair gets its share.
    pub fn pair(&self, index: usize) -> (Option<IpAddr>, &Target) {
        let pair = index % self.len();
        let sources = self.sources.len().max(1);
        let source = self.sources.get(pair % sources).copied();
        (source, &self.targets[pair / sources])
    }

    /// Checks that `concurrent` connections put at most `limit` on any pair.
    pub fn check_capacity(&self, concurrent: usize, limit: usize) -> Result<(), String> {
        let busiest = concurrent.div_ceil(self.len());
        if busiest > limit {
            return Err(format!(
                "{concurrent} connections over {} (source, target) pairs puts {busiest} on one \
                 pair, over the limit of {limit} (--max-per-pair): add --source-ips addresses or \
                 target URLs",
                self.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::url::parse_ws;

    #[test]
    fn parses_ranges_and_lists() {
        let ips = parse_source_ips("127.0.0.2-127.0.0.4, 127.0.1.1").unwrap();
        let want: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.1.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(ips, want);
        for bad in [
            "",
            "127.0.0.5-127.0.0.2",
            "10.0.0.1",
            "127.0.0.1-128.0.0.1",
            "x",
            "::1",
        ] {
            assert!(parse_source_ips(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pairs_rotate_and_cap() {
        let targets = vec![
            parse_ws("ws://127.0.0.1:1/").unwrap(),
            parse_ws("ws://127.0.0.1:2/").unwrap(),
        ];
        let sources = parse_source_ips("127.0.0.2-127.0.0.4").unwrap();
        let pairs = Pairs::new(sources.clone(), targets.clone()).unwrap();
        assert_eq!(pairs.len(), 6);
        let seen: std::collections::HashSet<_> = (0..6)
            .map(|i| {
                let (s, t) = pairs.pair(i);
                (s, t.addr)
            })
            .collect();
        assert_eq!(seen.len(), 6);
        assert!(pairs.check_capacity(150_000, 25_000).is_ok());
        assert!(pairs.check_capacity(150_001, 25_000).is_err());
        let plain = Pairs::new(Vec::new(), targets).unwrap();
        assert_eq!(plain.pair(3).0, None);
        assert_eq!(plain.pair(3).1.addr.port(), 2);
        let v6 = vec![parse_ws("ws://[::1]:1/").unwrap()];
        assert!(Pairs::new(sources, v6).is_err());
    }
}
