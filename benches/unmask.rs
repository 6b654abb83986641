//! Throughput of each unmasking path at typical WebSocket payload sizes:
//! a small message, one TCP segment, a socket read, and a large frame.

use std::hint::black_box;

use clarion_protocol::mask::{apply_mask_with, available_paths};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SIZES: [usize; 4] = [64, 1460, 16384, 1 << 20];
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    for size in SIZES {
        let mut buf = vec![0x5a_u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        for path in available_paths() {
            group.bench_function(BenchmarkId::new(path.name(), size), |b| {
                b.iter(|| apply_mask_with(path, black_box(&mut buf), black_box(KEY), 0));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, unmask);
criterion_main!(benches);
