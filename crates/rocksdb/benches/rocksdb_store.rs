//! RocksDB store benchmarks: apply throughput, point and range reads, and at
//! 1 M keys the fold, reopen after a clean close (T4), export and import
//! (T6); the fold's peak memory is printed.
//!
//! `CARGO_TARGET_DIR=/work/target-rocksdb cargo bench -p slipstream-rocksdb --bench rocksdb_store`
#![allow(
    clippy::print_stdout,
    reason = "the peak-memory figure is reported on stdout"
)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use slipstream_kv::{KvEntry, KvUpdate, VersionToken, WatchCursor, WatchScope};
use slipstream_rocksdb::{RocksDbOptions, RocksDbStore};
use slipstream_snapshot::{Durability, SnapshotStore, import};

type Store = RocksDbStore;
const NAME: &str = "rocksdb";
const MILLION: u64 = 1_000_000;

fn options(durability: Durability) -> RocksDbOptions {
    RocksDbOptions::with_durability(durability)
}

fn put(i: u64, rev: u64) -> KvUpdate {
    KvUpdate::Put(KvEntry {
        key: format!("key.{i:07}"),
        value: Bytes::from(vec![(i % 251) as u8; 100]),
        version: VersionToken::from_u64(rev),
        created: None,
        expires: None,
    })
}

fn open(dir: &Path, durability: Durability) -> Store {
    Store::open(dir, &options(durability))
        .map(|(_, s)| s)
        .unwrap_or_else(|e| panic!("open {dir:?}: {e}"))
}

/// Fold `n` distinct keys in batches of 1,000, without fsync.
fn fill(store: &mut Store, n: u64) {
    let mut rev = 0;
    while rev < n {
        let end = (rev + 1_000).min(n);
        let batch: Vec<_> = (rev..end).map(|i| put(i, i + 1)).collect();
        store
            .apply(&batch, &WatchCursor::at(end))
            .unwrap_or_else(|e| panic!("apply: {e}"));
        rev = end;
    }
}

fn apply_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("{NAME}/apply"));
    for durability in [Durability::NoFsync, Durability::FsyncEachCommit] {
        for batch_len in [100u64, 1_000] {
            let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let mut store = open(tmp.path(), durability);
            let rev = std::cell::Cell::new(0u64);
            group.throughput(Throughput::Elements(batch_len));
            let label = match durability {
                Durability::NoFsync => "no_fsync",
                Durability::FsyncEachCommit => "fsync",
            };
            group.bench_function(BenchmarkId::new(label, batch_len), |b| {
                b.iter_batched(
                    || {
                        // A 200 k-key space: inserts first, then overwrites.
                        let at = rev.get();
                        (0..batch_len)
                            .map(|i| put((at + i) % 200_000, at + i + 1))
                            .collect::<Vec<_>>()
                    },
                    |batch| {
                        rev.set(rev.get() + batch_len);
                        store
                            .apply(&batch, &WatchCursor::at(rev.get()))
                            .unwrap_or_else(|e| panic!("apply: {e}"));
                    },
                    criterion::BatchSize::SmallInput,
                );
            });
        }
    }
    group.finish();
}

fn reads(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut store = open(tmp.path(), Durability::NoFsync);
    fill(&mut store, 100_000);
    store.settle().unwrap_or_else(|e| panic!("settle: {e}"));
    let mut group = c.benchmark_group(format!("{NAME}/read"));
    let mut i = 0u64;
    group.throughput(Throughput::Elements(1));
    group.bench_function("get_100k_keys", |b| {
        b.iter(|| {
            i = (i + 7_919) % 100_000;
            black_box(store.get(&format!("key.{i:07}")).ok().flatten());
        });
    });
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
    // "key.00012" covers 100 keys.
    group.throughput(Throughput::Elements(100));
    group.bench_function("range_100_of_100k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % 1_000;
            black_box(store.range(&format!("key.{i:05}")).ok());
        });
    });
    group.finish();
}

/// Time a one-shot operation per iteration (setup and teardown excluded).
fn timed<T, U>(iters: u64, mut setup: impl FnMut() -> T, mut run: impl FnMut(&T) -> U) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let input = setup();
        let start = Instant::now();
        let out = run(&input);
        total += start.elapsed();
        drop(out);
    }
    total
}

/// Resident set size and its peak so far, in MiB (Linux).
fn rss_mib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Fold 1 M keys once and print the process's peak memory during it.
fn report_fold_peak_memory() {
    // Writing 5 resets the peak-RSS counter to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (before, _) = rss_mib();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    let mut store = open(tmp.path(), Durability::NoFsync);
    fill(&mut store, MILLION);
    let folded = start.elapsed();
    store.settle().unwrap_or_else(|e| panic!("settle: {e}"));
    let settled = start.elapsed();
    let stats = store.stats();
    store.close().unwrap_or_else(|e| panic!("close: {e}"));
    let (_, peak) = rss_mib();
    println!(
        "{NAME}: 1 M-key fold {folded:.2?}, settled at {settled:.2?}, RSS before {before} MiB, \
         peak {peak} MiB, live {} MiB, disk {} MiB",
        stats.live_bytes >> 20,
        stats.disk_bytes >> 20
    );
}

fn million(c: &mut Criterion) {
    report_fold_peak_memory();
    let mut group = c.benchmark_group(format!("{NAME}/1m_keys"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(MILLION));
    group.bench_function("fold_no_fsync_batch_1000", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")),
                |tmp| {
                    let mut store = open(tmp.path(), Durability::NoFsync);
                    fill(&mut store, MILLION);
                    store
                },
            )
        });
    });

    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let src = tmp.path().join("src");
    {
        let mut store = open(&src, Durability::NoFsync);
        fill(&mut store, MILLION);
        store.close().unwrap_or_else(|e| panic!("{e}"));
    }
    // The store is dropped outside the timing: this is open to ready.
    group.bench_function("reopen_after_clean_close", |b| {
        b.iter_custom(|iters| timed(iters, || (), |()| open(&src, Durability::NoFsync)));
    });
    group.bench_function("export", |b| {
        let mut store = open(&src, Durability::NoFsync);
        b.iter_custom(|iters| {
            timed(
                iters,
                || tempfile::tempdir_in(tmp.path()).unwrap_or_else(|e| panic!("{e}")),
                |dest| {
                    store
                        .export_to(&dest.path().join("a"), &WatchScope::All)
                        .unwrap_or_else(|e| panic!("export: {e}"))
                },
            )
        });
    });
    let artifact = tmp.path().join("artifact");
    {
        let mut store = open(&src, Durability::NoFsync);
        store
            .export_to(&artifact, &WatchScope::All)
            .unwrap_or_else(|e| panic!("export: {e}"));
    }
    group.bench_function("import", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || tempfile::tempdir_in(tmp.path()).unwrap_or_else(|e| panic!("{e}")),
                |dest| {
                    import::<Store>(
                        &artifact,
                        &dest.path().join("s"),
                        &options(Durability::NoFsync),
                    )
                    .unwrap_or_else(|e| panic!("import: {e}"))
                },
            )
        });
    });
    group.finish();
}

// The 1 M-key group runs first so its peak-memory figure starts from a
// small process.
criterion_group!(benches, million, apply_throughput, reads);
criterion_main!(benches);
