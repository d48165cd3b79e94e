//! Append-log store benchmarks: apply throughput, point and range reads,
//! the 1 M-key fold (T3), reopen, and export/import of 1 M keys (T6); the
//! cases are the testkit's, shared with the fjall and RocksDB benches.
//!
//! `cargo bench -p slipstream-snapshot --features bench --bench stores`

use criterion::{Criterion, criterion_group, criterion_main};
use slipstream_snapshot::testkit::bench::{self, StoreBench};
use slipstream_snapshot::{AppendLogOptions, AppendLogStore};

const BENCH: StoreBench<AppendLogStore> = StoreBench {
    name: "append_log",
    options: AppendLogOptions::with_durability,
    settle: None,
    report_fold_memory: false,
    reopen_id: "reopen",
    times_teardown: true,
};

fn apply_throughput(c: &mut Criterion) {
    bench::apply_throughput(c, &BENCH);
}

fn reads(c: &mut Criterion) {
    bench::reads(c, &BENCH);
}

fn million(c: &mut Criterion) {
    bench::million(c, &BENCH);
}

criterion_group!(benches, apply_throughput, reads, million);
criterion_main!(benches);
