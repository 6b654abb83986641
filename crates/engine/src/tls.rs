//! TLS for a listener's connections (rustls on aws-lc-rs): the settings a reactor takes
//! ([`TlsConfig`]), a certificate that can be replaced while the server runs
//! ([`ReloadableCert`]), and reading one from PEM ([`certified_key`]).
//!
//! The record layer itself lives in the reactor (`reactor/tls.rs`): rustls' unbuffered server
//! connection, with buffers lent from the reactor's pools only while bytes are in them.

use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub use rustls;

/// The record layer of one connection without a reactor, for the fuzz target. Not an API.
#[doc(hidden)]
pub use crate::reactor::Pipe;

/// The protocol a TLS connection agrees on (ALPN): HTTP/1.1, which carries the WebSocket
/// upgrade, the HTTP API and metrics alike.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Default [`TlsConfig::max_handshakes`]: connections of one reactor in the TLS handshake at once.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;

/// TLS on the listener: every connection it accepts speaks TLS, every route behind it.
#[derive(Clone)]
pub struct TlsConfig {
    /// rustls' server settings ([`TlsConfig::new`] makes Clarion's: TLS 1.2 and 1.3, ALPN
    /// `http/1.1`, session tickets).
    pub server: Arc<rustls::ServerConfig>,
    /// Most connections of one reactor in the TLS handshake at once. A connection accepted at
    /// the cap is closed at once (counted in [`crate::Stats::tls_refused`]): a handshake costs
    /// CPU (a signature, a key exchange) and memory (rustls' handshake state, several KB) that a
    /// flood of them must not take from the connections already open.
    pub max_handshakes: usize,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("alpn", &self.server.alpn_protocols)
            .field("max_handshakes", &self.max_handshakes)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Clarion's TLS settings around `cert`: TLS 1.2 and 1.3 with rustls' safe default
    /// suites, ALPN `http/1.1`, session resumption by stateless tickets (TLS 1.3 and 1.2; one
    /// ticket per full handshake, keys rotated every 6 hours) and by session id (a 256-entry
    /// cache), no client certificates, no 0-RTT data.
    pub fn new(cert: Arc<ReloadableCert>) -> Result<TlsConfig, rustls::Error> {
        let provider = provider();
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(cert);
        server.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        server.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        // One ticket is what a client resumes with; rustls' default of two doubles the ticket
        // encryption on every full handshake for a second parallel connection we do not expect.
        server.send_tls13_tickets = 1;
        Ok(TlsConfig {
            server: Arc::new(server),
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
        })
    }
}

/// The crypto provider: aws-lc-rs, rustls' default (see `docs/architecture.md`, "TLS", for the
/// comparison with ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server certificate (chain and key) that can be replaced while connections use it: each
/// new handshake takes the current one, and open connections keep what they agreed on.
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableCert")
            .field("chain_len", &self.get().cert.len())
            .finish()
    }
}

impl ReloadableCert {
    /// Starts with `key`.
    pub fn new(key: CertifiedKey) -> ReloadableCert {
        ReloadableCert {
            current: RwLock::new(Arc::new(key)),
        }
    }

    /// Replaces the certificate for handshakes from now on.
    pub fn replace(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
    }

    /// The certificate new handshakes get.
    pub fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// A certificate chain (PEM, leaf first, intermediates after it) and its private key (PEM:
/// PKCS#8, PKCS#1 RSA or SEC1 EC), checked to belong together.
pub fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if chain.is_empty() {
        return Err("certificate: no CERTIFICATE block in the PEM".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key: {e}"))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("the key does not belong to the certificate: {e}"))?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_that_is_not_a_certificate_or_a_key_is_refused_with_a_reason() {
        let err = certified_key(b"nothing here", b"").unwrap_err();
        assert!(err.contains("no CERTIFICATE"), "{err}");
        let cert = include_bytes!("../tests/tls/cert.pem");
        let err = certified_key(cert, b"-----BEGIN PRIVATE KEY-----\n-----END").unwrap_err();
        assert!(err.starts_with("key:"), "{err}");
        let other_key = include_bytes!("../tests/tls/other-key.pem");
        let err = certified_key(cert, other_key).unwrap_err();
        assert!(err.contains("does not belong"), "{err}");
        let key = include_bytes!("../tests/tls/key.pem");
        let chain = include_bytes!("../tests/tls/chain.pem");
        assert_eq!(certified_key(chain, key).unwrap().cert.len(), 2);
    }
}
