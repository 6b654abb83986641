//! Parsing costs on the hot paths: the upgrade request (once per connection) and frames
//! (every message), through the same protocol core the server runs.

use std::hint::black_box;
use std::time::Instant;

use clarion_protocol::handshake::Request;
use clarion_protocol::{Config, Connection, MessageKind};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const BROWSER_REQUEST: &[u8] = b"GET /echo HTTP/1.1\r\nHost: localhost:9001\r\nConnection: Upgrade\r\n\
Pragma: no-cache\r\nCache-Control: no-cache\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 \
(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36\r\nUpgrade: websocket\r\nOrigin: http://localhost:9001\r\n\
Sec-WebSocket-Version: 13\r\nAccept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

fn handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse", |b| {
        b.iter(|| {
            Request::parse(black_box(BROWSER_REQUEST), 8192, 64)
                .unwrap()
                .unwrap()
                .1
        })
    });
    group.bench_function("parse+validate+accept", |b| {
        b.iter(|| {
            let (request, _) = Request::parse(black_box(BROWSER_REQUEST), 8192, 64)
                .unwrap()
                .unwrap();
            request.upgrade().unwrap()
        })
    });
    group.finish();
}

/// `count` masked client frames of `size` bytes each, as they arrive on the wire.
fn client_frames(count: usize, size: usize) -> Vec<u8> {
    let mut client = Connection::client(Instant::now(), 12345);
    let mut wire = Vec::new();
    for _ in 0..count {
        let mut payload = vec![b'x'; size];
        client
            .send_in_place(MessageKind::Text, &mut payload, &mut wire)
            .unwrap();
    }
    wire
}

fn frames(c: &mut Criterion) {
    let config = Config::default();
    let mut group = c.benchmark_group("frames");
    for (count, size) in [(1000, 32), (100, 1024), (4, 65536)] {
        let wire = client_frames(count, size);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function(format!("{count}x{size}B"), |b| {
            let now = Instant::now();
            let mut server = Connection::server(now);
            let mut rx = Vec::new();
            server.accept(now, &mut rx);
            let mut buf = wire.clone();
            let mut out = Vec::new();
            b.iter(|| {
                // Masks are XORed in place, so each pass starts from a fresh copy of the wire bytes.
                buf.copy_from_slice(&wire);
                let mut input = &mut buf[..];
                let mut total = 0;
                while let Some(event) = server.read(&mut input, &mut rx, now, &config, &mut out) {
                    if let clarion_protocol::Event::Message(_, payload) = event {
                        total += payload.len();
                    }
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, handshake, frames);
criterion_main!(benches);
