//! fjall store benchmarks: apply throughput, point and range reads, and at
//! 1 M keys the fold, reopen after a clean close (T4), export and import
//! (T6); the fold's peak memory is printed. The cases are the snapshot
//! testkit's, shared with the other stores' benches.
//!
//! `cargo bench -p slipstream-fjall --bench fjall_store`

use criterion::{Criterion, criterion_group, criterion_main};
use slipstream_fjall::{FjallOptions, FjallStore};
use slipstream_snapshot::testkit::bench::{self, StoreBench};

const BENCH: StoreBench<FjallStore> = StoreBench {
    name: "fjall",
    options: FjallOptions::with_durability,
    settle: Some(FjallStore::settle),
    report_fold_memory: true,
    reopen_id: "reopen_after_clean_close",
    times_teardown: false,
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

// The 1 M-key group runs first so its peak-memory figure starts from a
// small process.
criterion_group!(benches, million, apply_throughput, reads);
criterion_main!(benches);
