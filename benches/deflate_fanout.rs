//! Fanout of one published message to 1,000 subscribers that negotiated permessage-deflate:
//! compressed once into a shared frame (what the push server does for subscribers without
//! context takeover) against compressed for each subscriber, with the plain shared frame as the
//! baseline. "Delivering" is what the reactor does per subscriber: one `Arc` clone into its
//! queue. Payloads are JSON of 1 KiB and 16 KiB.

use std::hint::black_box;
use std::sync::Arc;

use clarion_protocol::MessageKind;
use clarion_protocol::deflate::Deflater;
use clarion_pubsub::{shared_compressed_frame, shared_frame};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SUBSCRIBERS: usize = 1000;
const LEVEL: u32 = 6;

/// A JSON message of about `size` bytes, with the repetition real feeds have.
fn message(size: usize) -> Vec<u8> {
    let mut out = String::from("[");
    let mut i = 0u64;
    while out.len() < size {
        out.push_str(&format!(
            r#"{{"id":{i},"symbol":"SYM{}","price":{}.{:02},"volume":{},"side":"{}"}},"#,
            i % 37,
            100 + i * 7 % 900,
            i * 13 % 100,
            i * 101 % 10000,
            if i.is_multiple_of(2) { "buy" } else { "sell" }
        ));
        i += 1;
    }
    out.pop();
    out.push(']');
    out.into_bytes()
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate_fanout_1000");
    group.sample_size(20);
    for size in [1024usize, 16384] {
        let payload = message(size);
        group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
        let mut queues: Vec<Arc<[u8]>> = Vec::with_capacity(SUBSCRIBERS);
        let mut deflater = Deflater::new(LEVEL, 15);

        group.bench_function(BenchmarkId::new("plain_shared_frame", size), |b| {
            b.iter(|| {
                queues.clear();
                let frame = shared_frame(MessageKind::Text, black_box(&payload));
                queues.extend((0..SUBSCRIBERS).map(|_| frame.clone()));
            });
        });

        group.bench_function(BenchmarkId::new("compress_once", size), |b| {
            let mut compressed = Vec::new();
            b.iter(|| {
                queues.clear();
                compressed.clear();
                deflater.compress(black_box(&payload), &mut compressed, false);
                let frame = shared_compressed_frame(MessageKind::Text, &compressed);
                queues.extend((0..SUBSCRIBERS).map(|_| frame.clone()));
            });
        });

        group.bench_function(BenchmarkId::new("compress_per_subscriber", size), |b| {
            let mut compressed = Vec::new();
            b.iter(|| {
                queues.clear();
                for _ in 0..SUBSCRIBERS {
                    compressed.clear();
                    deflater.compress(black_box(&payload), &mut compressed, false);
                    queues.push(shared_compressed_frame(MessageKind::Text, &compressed));
                }
            });
        });

        let mut compressed = Vec::new();
        deflater.compress(&payload, &mut compressed, false);
        eprintln!(
            "deflate_fanout: {} byte message compresses to {} bytes at level {LEVEL}",
            payload.len(),
            compressed.len()
        );
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
