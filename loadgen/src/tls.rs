//! TLS for `wss://` and `https://` targets: rustls (aws-lc-rs), certificates checked against the
//! system's roots and any `--ca` given, unless `--insecure`; session resumption on unless
//! `--no-resume` (to measure full handshakes).
//!
//! A connection's TLS state lives beside its slot (`engine::secure`), never in it: plaintext
//! connections pay nothing for it.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Where the system keeps its trusted roots (Debian's ca-certificates).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How the client checks and resumes.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Accept any certificate (self-signed test servers).
    pub insecure: bool,
    /// A CA (PEM) to trust besides the system's.
    pub ca: Option<std::path::PathBuf>,
    /// No session resumption: every handshake is a full one.
    pub no_resume: bool,
}

/// The client settings for `options`.
pub fn client_config(options: &Options) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let mut config = if options.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if Path::new(SYSTEM_ROOTS).exists() {
            add_roots(&mut roots, Path::new(SYSTEM_ROOTS))?;
        }
        if let Some(ca) = &options.ca {
            add_roots(&mut roots, ca)?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if options.no_resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

fn add_roots(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), String> {
    let certs =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("--ca {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("--ca {}: {e}", path.display()))?;
        // The system bundle holds a few roots webpki cannot use; those are skipped.
        let _ = roots.add(cert);
    }
    Ok(())
}

/// `--insecure`: any certificate is accepted; the handshake's signatures are still checked, so
/// the keys are at least the certificate's.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client connection to `name`.
pub fn connect(
    config: &Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<rustls::ClientConnection, rustls::Error> {
    let name = ServerName::try_from(name.to_owned())
        .map_err(|_| rustls::Error::General(format!("bad server name {name:?}")))?;
    rustls::ClientConnection::new(config.clone(), name)
}

/// A blocking client socket, plain or TLS (the publishers').
pub enum Stream {
    /// `ws://`, `http://`.
    Plain(std::net::TcpStream),
    /// `wss://`, `https://`.
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>>),
}

impl Stream {
    /// Connects to `target` (TLS handshake included when it asks for TLS), within `timeout`.
    pub fn connect(
        target: &crate::url::Target,
        config: Option<&Arc<rustls::ClientConfig>>,
        timeout: std::time::Duration,
    ) -> std::io::Result<Stream> {
        let mut tcp = std::net::TcpStream::connect_timeout(&target.addr, timeout)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(timeout))?;
        if !target.tls {
            return Ok(Stream::Plain(tcp));
        }
        let config = config.ok_or_else(|| std::io::Error::other("no TLS settings"))?;
        let mut tls = connect(config, &target.server_name()).map_err(std::io::Error::other)?;
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp)?;
        }
        Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(tls, tcp))))
    }

    /// The TCP socket under it.
    pub fn tcp(&self) -> &std::net::TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref(),
        }
    }
}

impl std::io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl std::io::Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}
