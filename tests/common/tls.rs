//! A TLS client for the end-to-end tests: rustls trusting the engine's test CA
//! (`crates/engine/tests/tls/`), under tungstenite for WebSockets and by hand for HTTP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clarion_engine::tls::rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tungstenite::WebSocket;

/// A TLS stream to the server.
pub type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A fixture of the engine's TLS tests: `ca.pem`, `chain.pem`, `key.pem`, `cert2.pem`, ...
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/engine/tests/tls")
        .join(name)
}

/// A client that trusts the test CA, with a session cache of its own.
pub fn client() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(fixture("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(clarion_engine::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS connection to `addr` for `localhost`, handshake done.
pub fn connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Tls {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    rustls::StreamOwned::new(conn, tcp)
}

/// A WebSocket over TLS to `path`.
pub fn websocket(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    path: &str,
) -> WebSocket<Tls> {
    let (ws, _) = tungstenite::client(format!("wss://localhost{path}"), connect(addr, config))
        .expect("wss upgrade");
    ws
}

/// An HTTP request over TLS; the whole answer, to the server's close_notify.
pub fn http(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, request: &str) -> String {
    let mut stream = connect(addr, config);
    // One request a connection: the answer is read to the connection's end, so the server is
    // asked to close it (HTTP/1.1 keeps it by default).
    let request = request.replacen("\r\n", "\r\nConnection: close\r\n", 1);
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// The leaf certificate the server showed on `ws`.
pub fn leaf(ws: &WebSocket<Tls>) -> Vec<u8> {
    ws.get_ref().conn.peer_certificates().unwrap()[0].to_vec()
}

/// The first certificate in a PEM file.
pub fn first_cert(path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}
