//! RocksDB store benchmarks: apply throughput, point, batched and range
//! reads, and at 1 M keys the fold, reopen after a clean close (T4), export
//! and import (T6); the fold's peak memory is printed. The cases are the
//! snapshot testkit's, shared with the other stores' benches; `multi_get`
//! is RocksDB's own.
//!
//! `CARGO_TARGET_DIR=/work/target-rocksdb cargo bench -p slipstream-rocksdb --bench rocksdb_store`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use slipstream_rocksdb::{RocksDbOptions, RocksDbStore};
use slipstream_snapshot::testkit::bench::{self, StoreBench};

const BENCH: StoreBench<RocksDbStore> = StoreBench {
    name: "rocksdb",
    options: RocksDbOptions::with_durability,
    settle: Some(RocksDbStore::settle),
    report_fold_memory: true,
    reopen_id: "reopen_after_clean_close",
    times_teardown: false,
};

fn apply_throughput(c: &mut Criterion) {
    bench::apply_throughput(c, &BENCH);
}

fn reads(c: &mut Criterion) {
    bench::reads_with(c, &BENCH, |group, store| {
        let mut i = 0u64;
        group.throughput(Throughput::Elements(100));
        group.bench_function("multi_get_100_of_100k_keys", |b| {
            b.iter(|| {
                let keys: Vec<String> = (0..100u64)
                    .map(|k| format!("key.{:07}", (i + k * 997) % 100_000))
                    .collect();
                i = (i + 7_919) % 100_000;
                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                black_box(store.multi_get(&refs).ok());
            });
        });
    });
}

fn million(c: &mut Criterion) {
    bench::million(c, &BENCH);
}

// The 1 M-key group runs first so its peak-memory figure starts from a
// small process.
criterion_group!(benches, million, apply_throughput, reads);
criterion_main!(benches);
