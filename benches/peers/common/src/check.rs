//! The end-to-end check each peer server's tests run against it, with a real client
//! (tokio-tungstenite): `/echo` echoes text and binary messages, `/t/<topic>` delivers what one
//! subscriber publishes to every subscriber of that topic and to no other, and other paths are
//! refused; over `ws://` or, with a tokio-rustls client trusting a test CA, over `wss://`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{WebSocketStream, client_async, connect_async};

async fn next<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Message {
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a message within 5 s")
        .expect("the socket stays open")
        .expect("a valid message")
}

/// Checks every route of the plaintext server at `addr`; panics with what went wrong.
pub async fn endpoints(addr: SocketAddr) {
    routes(|path| async move {
        connect_async(format!("ws://{addr}{path}"))
            .await
            .map(|(ws, _)| ws)
    })
    .await;
}

/// A TLS listener on a free loopback port with a fresh certificate for `localhost` from the
/// repository's `scripts/make-cert.sh` (which needs `openssl`), its address, and the path of
/// the CA that signed the certificate.
pub async fn tls_listener() -> (crate::Listener, SocketAddr, PathBuf) {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "peers-check-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../scripts/make-cert.sh");
    let made = std::process::Command::new("bash")
        .arg(script)
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("bash runs scripts/make-cert.sh");
    assert!(made.success(), "scripts/make-cert.sh failed");
    let tls = crate::tls::acceptor(&dir.join("chain.pem"), &dir.join("key.pem")).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = crate::Listener {
        tcp,
        tls: Some(tls),
    };
    (listener, addr, dir.join("ca.pem"))
}

/// Checks every route of the TLS server at `addr` (its certificate for `localhost`, signed by
/// the CA in the PEM file `ca`); panics with what went wrong.
pub async fn endpoints_tls(addr: SocketAddr, ca: &Path) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("the CA's PEM") {
        roots.add(cert.expect("a CA certificate")).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    routes(|path| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from("localhost").unwrap();
            let tls = connector.connect(name, tcp).await?;
            client_async(format!("wss://localhost{path}"), tls)
                .await
                .map(|(ws, _)| ws)
        }
    })
    .await;
}

/// Checks every route, each socket from `open(path)`.
async fn routes<S, F, Fut>(open: F)
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = Result<WebSocketStream<S>, Error>>,
{
    let mut echo = open("/echo").await.expect("/echo opens");
    for message in [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text("x".repeat(70_000)),
    ] {
        echo.send(message.clone()).await.unwrap();
        assert_eq!(next(&mut echo).await, message);
    }
    echo.close(None).await.unwrap();

    let mut a = open("/t/news").await.expect("/t/news opens");
    let mut b = open("/t/news").await.expect("/t/news opens");
    let mut other = open("/t/sport").await.expect("/t/sport opens");
    // Subscriptions start with the socket, so whatever follows reaches all of them.
    a.send(Message::text("first")).await.unwrap();
    assert_eq!(next(&mut a).await, Message::text("first"));
    assert_eq!(next(&mut b).await, Message::text("first"));
    other.send(Message::binary(vec![9u8])).await.unwrap();
    assert_eq!(next(&mut other).await, Message::binary(vec![9u8]));
    b.send(Message::text("second")).await.unwrap();
    assert_eq!(next(&mut a).await, Message::text("second"));
    assert_eq!(next(&mut b).await, Message::text("second"));

    match open("/nowhere").await {
        Err(Error::Http(response)) => assert_eq!(response.status(), 404),
        other => panic!("/nowhere: {:?}", other.map(|_| "opened")),
    }
}
