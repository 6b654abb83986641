//! `wss:` connections: which certificates the client trusts ([`Tls`]), the rustls settings one
//! client keeps for its whole life (so that a reconnection resumes its TLS session), and the
//! non-blocking reads and writes that carry TLS records over a tokio `TcpStream`.
//!
//! Certificates are always checked: against the platform's roots (`rustls-native-certs`: the
//! operating system's store, `SSL_CERT_FILE` / `SSL_CERT_DIR` honoured) plus any CA the
//! application adds. There is no switch that turns checking off; for a development server,
//! trust its CA (`scripts/make-cert.sh` makes one) with [`Tls::add_ca_pem`].

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use tokio::net::TcpStream;

use crate::url::ConnectError;

/// Which certificates a `wss:` connection accepts (ignored for `ws:`). By default the
/// platform's trusted roots; add a private CA with [`Tls::add_ca_pem`] or [`Tls::add_ca_file`].
///
/// ```no_run
/// let mut options = clarion_client::Options::default();
/// options.tls.add_ca_file("cert/ca.pem")?; // made by scripts/make-cert.sh
/// # Ok::<(), clarion_client::ConnectError>(())
/// ```
#[derive(Clone)]
pub struct Tls {
    /// Trust the platform's roots too (default `true`). Turn it off to accept only servers
    /// whose certificate chains to a CA added here (a private deployment).
    pub platform_roots: bool,
    /// CAs added by the application.
    extra: Vec<CertificateDer<'static>>,
}

impl Default for Tls {
    fn default() -> Tls {
        Tls {
            platform_roots: true,
            extra: Vec::new(),
        }
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("platform_roots", &self.platform_roots)
            .field("added_cas", &self.extra.len())
            .finish()
    }
}

impl Tls {
    /// Trusts every certificate in `pem` (one or more `-----BEGIN CERTIFICATE-----` blocks) as a
    /// root, besides the others. Fails for PEM that holds no certificate or a broken one.
    pub fn add_ca_pem(&mut self, pem: &[u8]) -> Result<(), ConnectError> {
        let bad = |why: String| ConnectError(format!("CA certificate: {why}"));
        let mut added = Vec::new();
        for cert in CertificateDer::pem_slice_iter(pem) {
            added.push(cert.map_err(|e| bad(e.to_string()))?);
        }
        if added.is_empty() {
            return Err(bad("no PEM certificate found".to_owned()));
        }
        // Checked now, so that a certificate webpki cannot use fails here, not at connect.
        let mut check = RootCertStore::empty();
        for cert in &added {
            check.add(cert.clone()).map_err(|e| bad(e.to_string()))?;
        }
        self.extra.extend(added);
        Ok(())
    }

    /// [`Tls::add_ca_pem`] with the contents of `path`.
    pub fn add_ca_file(&mut self, path: impl AsRef<Path>) -> Result<(), ConnectError> {
        let path = path.as_ref();
        let pem = std::fs::read(path)
            .map_err(|e| ConnectError(format!("CA file {}: {e}", path.display())))?;
        self.add_ca_pem(&pem)
            .map_err(|e| ConnectError(format!("CA file {}: {}", path.display(), e.0)))
    }

    /// The rustls settings of one client: its roots, ALPN `http/1.1`, and a session cache of
    /// its own (one server's worth), kept across its reconnections so that each resumes.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, ConnectError> {
        let mut roots = RootCertStore::empty();
        if self.platform_roots {
            match platform_roots() {
                Ok(platform) => roots.roots.extend(platform.roots.iter().cloned()),
                // Not fatal when the application brought its own CA.
                Err(_) if !self.extra.is_empty() => {}
                Err(why) => return Err(ConnectError(why.clone())),
            }
        }
        for cert in &self.extra {
            roots
                .add(cert.clone())
                .map_err(|e| ConnectError(format!("CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ConnectError(
                "no trusted root certificate: platform_roots is off and no CA was added".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnectError(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // rustls keeps up to 8 TLS 1.3 tickets per server; 8 sessions is one server's room
        // (the default, 256, would reserve room for 32 servers in every client).
        config.resumption = Resumption::in_memory_sessions(8);
        Ok(Arc::new(config))
    }
}

/// The platform's roots, read once per process (the system bundle is ~150 certificates; a
/// process with thousands of clients parses it once).
fn platform_roots() -> &'static Result<RootCertStore, String> {
    static ROOTS: OnceLock<Result<RootCertStore, String>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        // The store may hold a few roots webpki cannot use: those are skipped.
        let (_added, _skipped) = roots.add_parsable_certificates(found.certs);
        if roots.is_empty() {
            let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
            return Err(format!(
                "no trusted root certificate found on this platform (install ca-certificates, \
                 set SSL_CERT_FILE, or add a CA with Tls::add_ca_pem){}",
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(": {}", errors.join("; "))
                }
            ));
        }
        Ok(roots)
    })
}

/// The name the server's certificate must carry: the URL's host (a DNS name or an IP address).
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, ConnectError> {
    ServerName::try_from(host.to_owned())
        .map_err(|_| ConnectError(format!("{host:?} is not a valid TLS server name")))
}

/// A new TLS session with the client's settings.
pub(crate) fn connection(
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
) -> io::Result<ClientConnection> {
    ClientConnection::new(config.clone(), name.clone()).map_err(io::Error::other)
}

/// Whether a TLS failure will repeat on every attempt until someone changes the server's
/// certificate or the client's trust: a certificate the client refuses, or no version or
/// cipher suite in common. Those stop the client (close code 1015); others (a reset, a
/// truncated record) are a failed attempt like any other.
pub(crate) fn is_permanent(error: &rustls::Error) -> bool {
    matches!(
        error,
        rustls::Error::InvalidCertificate(_) | rustls::Error::PeerIncompatible(_)
    )
}

/// The socket as `io::Read` and `io::Write` that never wait (`WouldBlock` when not ready, which
/// also clears tokio's readiness), for rustls' `read_tls` and `write_tls`.
pub(crate) struct Nonblocking<'a>(pub(crate) &'a TcpStream);

impl io::Read for Nonblocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl io::Write for Nonblocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOT_PEM: &[u8] = b"not a certificate";

    #[test]
    fn a_ca_must_be_a_certificate() {
        let mut tls = Tls::default();
        let error = tls.add_ca_pem(NOT_PEM).unwrap_err();
        assert!(error.0.contains("no PEM certificate"), "{error}");
        let error = tls.add_ca_file("/nonexistent/ca.pem").unwrap_err();
        assert!(error.0.contains("/nonexistent/ca.pem"), "{error}");
        let broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(tls.add_ca_pem(broken).is_err());
        assert!(tls.extra.is_empty());
    }

    #[test]
    fn without_any_root_there_is_no_config() {
        let tls = Tls {
            platform_roots: false,
            ..Tls::default()
        };
        let error = tls.client_config().unwrap_err();
        assert!(error.0.contains("no trusted root"), "{error}");
    }

    #[test]
    fn server_names_are_dns_names_or_addresses() {
        assert!(server_name("push.example.com").is_ok());
        assert!(matches!(
            server_name("::1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(server_name("bad name").is_err());
    }
}
