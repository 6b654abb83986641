//! The TLS-to-WebSocket plumbing: the engine's TLS record layer (rustls' unbuffered server, the
//! engine's lent buffers, records gathered from queued plaintext) under the sans-IO WebSocket
//! server, fed arbitrary bytes, as the reactor runs them.
//!
//! Input: three option bytes, then the stream.
//! - byte 0: bit 0 puts a real rustls client in front (the handshake completes in memory, then
//!   the stream is the *plaintext* the client sends: a request head and frames the fuzzer makes
//!   up); without it the stream is raw ciphertext from the peer. Bit 1 asks the client for TLS
//!   1.2 instead of 1.3. Bit 2 flips one byte of the client's ciphertext, at the offset of
//!   byte 2.
//! - byte 1: how the bytes are cut into reads (1 to 256 bytes each).
//!
//! Every request is answered (an upgrade when valid, else a 404), every message echoed.
//! Invariants: no panic; a connection that failed decrypts nothing more; with a real client and
//! no flipped byte, the handshake completes and the client reads everything the server sends
//! (101, echoes, close_notify) without a TLS error; every lent buffer comes back.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use clarion_engine::TlsConfig;
use clarion_engine::tls::rustls::pki_types::pem::PemObject;
use clarion_engine::tls::rustls::pki_types::{CertificateDer, ServerName};
use clarion_engine::tls::{Pipe, ReloadableCert, certified_key, provider, rustls};
use clarion_protocol::handshake::write_response;
use clarion_protocol::{Config, Connection, Event};
use libfuzzer_sys::fuzz_target;

const CLIENT: u8 = 1;
const TLS12: u8 = 2;
const FLIP: u8 = 4;

static SERVER: LazyLock<TlsConfig> = LazyLock::new(|| {
    let key = certified_key(
        include_bytes!("../../crates/engine/tests/tls/chain.pem"),
        include_bytes!("../../crates/engine/tests/tls/key.pem"),
    )
    .unwrap();
    TlsConfig::new(Arc::new(ReloadableCert::new(key))).unwrap()
});

static CLIENTS: LazyLock<[Arc<rustls::ClientConfig>; 2]> = LazyLock::new(|| {
    let mut roots = rustls::RootCertStore::empty();
    let ca = include_bytes!("../../crates/engine/tests/tls/ca.pem");
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    [&rustls::version::TLS13, &rustls::version::TLS12].map(|version| {
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
        )
    })
});

fuzz_target!(|data: &[u8]| {
    let [options, cuts, flip_at, stream @ ..] = data else {
        return;
    };
    let mut server = Server::new();
    if options & CLIENT == 0 {
        for chunk in stream.chunks(usize::from(*cuts) + 1) {
            server.receive(&mut chunk.to_vec());
        }
        server.finish(None);
        return;
    }
    let config = CLIENTS[usize::from(options & TLS12 != 0)].clone();
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = rustls::ClientConnection::new(config, name).unwrap();
    let flip = (options & FLIP != 0).then_some(usize::from(*flip_at));
    let mut link = Link { sent: 0, flip };
    // The handshake, in memory: each side's flight to the other until both are done.
    for _ in 0..8 {
        let mut to_server = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut to_server).unwrap();
        }
        link.deliver(&mut server, &mut to_server, *cuts);
        let answer = server.flush();
        if client_reads(&mut client, &answer).is_err() {
            assert!(flip.is_some(), "the client refused the server's handshake");
            return server.finish(None);
        }
        if !client.is_handshaking() && !client.wants_write() {
            break;
        }
    }
    if flip.is_none() {
        assert!(!client.is_handshaking(), "the handshake did not complete");
    }
    // The fuzzer's plaintext, encrypted by the client.
    use std::io::Write;
    let _ = client.writer().write_all(stream);
    let mut to_server = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut to_server).unwrap();
    }
    link.deliver(&mut server, &mut to_server, *cuts);
    let mut answer = server.flush();
    answer.extend(server.close());
    let read = client_reads(&mut client, &answer);
    if flip.is_none() && !server.failed {
        assert!(read.is_ok(), "the client cannot read the server: {read:?}");
    }
    server.finish(flip.is_none().then_some(&mut client));
});

/// Delivers client ciphertext to the server in cuts, flipping one byte if asked.
struct Link {
    sent: usize,
    flip: Option<usize>,
}

impl Link {
    fn deliver(&mut self, server: &mut Server, bytes: &mut [u8], cuts: u8) {
        if let Some(at) = self.flip
            && at >= self.sent
            && at < self.sent + bytes.len()
        {
            bytes[at - self.sent] ^= 0x55;
        }
        self.sent += bytes.len();
        for chunk in bytes.chunks(usize::from(cuts) + 1) {
            server.receive(&mut chunk.to_vec());
        }
    }
}

/// The client reads the server's bytes; its first error, if any.
fn client_reads(client: &mut rustls::ClientConnection, mut bytes: &[u8]) -> Result<(), rustls::Error> {
    while !bytes.is_empty() {
        if client.read_tls(&mut bytes).unwrap_or(0) == 0 {
            break;
        }
        client.process_new_packets()?;
        // Drain what was decrypted so the client keeps reading.
        let mut sink = [0; 4096];
        use std::io::Read;
        while client.reader().read(&mut sink).is_ok_and(|n| n > 0) {}
    }
    Ok(())
}

/// The TLS layer and the WebSocket server above it.
struct Server {
    pipe: Pipe,
    conn: Connection,
    config: Config,
    now: Instant,
    rx: Vec<u8>,
    failed: bool,
}

impl Server {
    fn new() -> Server {
        let now = Instant::now();
        Server {
            pipe: Pipe::new(&SERVER),
            conn: Connection::server(now),
            config: Config {
                max_frame_size: 4096,
                max_message_size: 8192,
                max_head_size: 1024,
                max_headers: 16,
                max_body_size: 64,
                ..Config::default()
            },
            now,
            rx: Vec::new(),
            failed: false,
        }
    }

    /// One read of ciphertext: decrypted, read by the WebSocket server, answered.
    fn receive(&mut self, bytes: &mut [u8]) {
        let Some(plain) = self.pipe.receive(bytes) else {
            self.failed = true;
            return;
        };
        if self.failed {
            assert!(plain.is_empty(), "a failed connection decrypted more");
            return;
        }
        let mut plain = plain.to_vec();
        let mut input = &mut plain[..];
        let mut out = Vec::new();
        while let Some(event) =
            self.conn
                .read(&mut input, &mut self.rx, self.now, &self.config, &mut out)
        {
            match event {
                Event::Request(request, _) => {
                    match request.upgrade().ok().filter(|_| request.wants_websocket()) {
                        Some(accept) => {
                            accept.write_response(None, None, &mut out);
                            self.conn.accept(self.now, &mut self.rx);
                        }
                        None => {
                            write_response(&mut out, 404, &[], "text/plain", b"no");
                            self.conn.finish();
                        }
                    }
                }
                Event::Message(kind, payload) => {
                    let payload = payload.to_vec();
                    let _ = self.conn.send(kind, &payload, &mut out);
                }
                _ => {}
            }
        }
        self.pipe.send(&out);
    }

    fn flush(&mut self) -> Vec<u8> {
        self.pipe.flush().unwrap_or_default()
    }

    fn close(&mut self) -> Vec<u8> {
        self.pipe.close()
    }

    /// Ends the connection: every buffer it borrowed is back.
    fn finish(mut self, client: Option<&mut rustls::ClientConnection>) {
        let mut last = self.flush();
        last.extend(self.close());
        if let Some(client) = client
            && !self.failed
        {
            assert!(client_reads(client, &last).is_ok());
        }
        assert_eq!(self.pipe.finish(), (0, 0), "buffers still lent");
    }
}
