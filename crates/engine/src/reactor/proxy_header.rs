//! The PROXY protocol header at the start of a connection, read before anything else of it
//! (the request head now, TLS records later): a transport layer that lasts one header.
//!
//! A connection accepted while the listener takes headers carries [`ConnFlags::PROXY_HEADER`]
//! until its first bytes are decided. From a trusted proxy they must be a header of a version
//! taken ([`crate::proxy_protocol::read_header`]); its source address replaces the peer in the
//! side table, so the handler's `RequestInfo::peer` is the client. From anyone else they must
//! not be one ([`crate::proxy_protocol::starts_with_header`]): a client cannot name itself. A
//! refusal closes the connection without a word, counted in `Stats::proxy_refused`. A header
//! cut across reads waits in the connection's receive buffer (at most
//! [`crate::proxy_protocol::MAX_HEADER`] bytes, and the handshake timeout bounds the wait).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use super::conn::ConnFlags;
use crate::proxy_protocol::{Header, read_header, starts_with_header};
use crate::{Config, Stats};

/// What to do with a connection's bytes once the header layer has looked at them.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Not decided yet: the bytes wait in `rx`.
    Wait,
    /// Close the connection.
    Refuse,
    /// The header (if any) is read: the protocol gets the bytes from `from` on, of `rx` when
    /// `held` (the header was cut across reads), else of the input.
    Feed { from: usize, held: bool },
}

/// Looks at `input`, the bytes just received on `token`, after what `rx` holds from earlier
/// reads; clears the flag once decided either way (what a refused connection still sends goes
/// to its closed protocol state, which drops it).
pub(super) fn step(
    config: &Config,
    peer: &mut Option<SocketAddr>,
    stats: &Stats,
    token: usize,
    flags: &mut ConnFlags,
    input: &[u8],
    rx: &mut Vec<u8>,
) -> Step {
    let held = !rx.is_empty();
    if held {
        rx.extend_from_slice(input);
    }
    let bytes: &[u8] = if held { rx } else { input };
    let trusted = peer.is_some_and(|p| config.trusted_proxies.trusts(p.ip()));
    let decided = if trusted {
        read_header(bytes, config.proxy_protocol)
            .map_err(|e| e.to_string())
            .map(|read| {
                read.map(|(header, len)| {
                    if let Header::Proxied(source) = header {
                        *peer = Some(source);
                    }
                    len
                })
            })
    } else {
        match starts_with_header(bytes) {
            Some(true) => Err("a PROXY protocol header from a peer not trusted to send one".into()),
            Some(false) => Ok(Some(0)),
            None => Ok(None),
        }
    };
    if !matches!(decided, Ok(None)) {
        flags.remove(ConnFlags::PROXY_HEADER);
    }
    match decided {
        Ok(None) => {
            if !held {
                rx.extend_from_slice(input);
            }
            Step::Wait
        }
        Ok(Some(from)) => Step::Feed { from, held },
        Err(why) => {
            stats.proxy_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(token, ?peer, "connection refused: {why}");
            Step::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ProxyProtocol, TrustedProxies};

    const V1: &[u8] = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\nGET";

    struct Layer {
        config: Config,
        peer: Option<SocketAddr>,
        stats: Stats,
        flags: ConnFlags,
        rx: Vec<u8>,
    }

    impl Layer {
        /// A connection from `peer` on a listener taking version 1 from 127.0.0.1.
        fn new(peer: &str) -> Layer {
            let config = Config {
                proxy_protocol: ProxyProtocol::V1,
                trusted_proxies: TrustedProxies::new(vec!["127.0.0.1".parse().unwrap()]),
                ..Config::default()
            };
            Layer {
                config,
                peer: Some(peer.parse().unwrap()),
                stats: Stats::default(),
                flags: ConnFlags::PROXY_HEADER,
                rx: Vec::new(),
            }
        }

        fn feed(&mut self, input: &[u8]) -> Step {
            let Layer {
                config,
                peer,
                stats,
                flags,
                rx,
            } = self;
            step(config, peer, stats, 7, flags, input, rx)
        }

        fn refused(&self) -> u64 {
            self.stats.proxy_refused.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn a_trusted_proxys_header_names_the_peer_and_the_rest_is_fed() {
        let mut layer = Layer::new("127.0.0.1:40000");
        assert_eq!(
            layer.feed(V1),
            Step::Feed {
                from: V1.len() - 3,
                held: false
            }
        );
        assert_eq!(layer.peer.unwrap(), "192.0.2.1:56324".parse().unwrap());
        assert!(!layer.flags.contains(ConnFlags::PROXY_HEADER));
        assert!(layer.rx.is_empty());
    }

    #[test]
    fn a_header_cut_across_reads_waits_in_the_buffer() {
        let mut layer = Layer::new("127.0.0.1:40000");
        assert_eq!(layer.feed(&V1[..10]), Step::Wait);
        assert_eq!(layer.feed(&V1[10..20]), Step::Wait);
        assert_eq!(
            layer.feed(&V1[20..]),
            Step::Feed {
                from: V1.len() - 3,
                held: true
            }
        );
        assert_eq!(&layer.rx[V1.len() - 3..], b"GET");
        assert_eq!(layer.peer.unwrap(), "192.0.2.1:56324".parse().unwrap());
    }

    #[test]
    fn a_trusted_proxy_without_a_header_is_refused() {
        let mut layer = Layer::new("127.0.0.1:40000");
        assert_eq!(layer.feed(b"GET / HTTP/1.1\r\n"), Step::Refuse);
        assert_eq!(layer.refused(), 1);
        assert!(
            !layer.flags.contains(ConnFlags::PROXY_HEADER),
            "decided once"
        );
        let mut version_2 = Layer::new("127.0.0.1:40000");
        assert_eq!(
            version_2.feed(b"\r\n\r\n\0\r\nQUIT\n\x20\0\0\0"),
            Step::Refuse
        );
    }

    #[test]
    fn anyone_else_may_not_send_one_and_is_otherwise_left_alone() {
        let mut client = Layer::new("192.0.2.9:5000");
        assert_eq!(client.feed(b"PRO"), Step::Wait, "PROPFIND or PROXY?");
        assert_eq!(client.feed(b"XY TCP4"), Step::Refuse);
        assert_eq!(client.refused(), 1);
        let mut plain = Layer::new("192.0.2.9:5000");
        assert_eq!(
            plain.feed(b"GET / HTTP/1.1\r\n"),
            Step::Feed {
                from: 0,
                held: false
            }
        );
        assert_eq!(
            plain.peer.unwrap(),
            "192.0.2.9:5000".parse().unwrap(),
            "unchanged"
        );
        // No address known: not trusted.
        let mut unknown = Layer::new("192.0.2.9:5000");
        unknown.peer = None;
        assert_eq!(unknown.feed(V1), Step::Refuse);
    }
}
