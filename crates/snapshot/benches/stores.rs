//! Append-log store benchmarks: apply throughput, point and range reads,
//! the 1 M-key fold (T3), reopen, and export/import of 1 M keys (T6).
//!
//! `cargo bench -p slipstream-snapshot --features testkit --bench stores`

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use slipstream_kv::{KvEntry, KvUpdate, VersionToken, WatchCursor, WatchScope};
use slipstream_snapshot::{AppendLogOptions, AppendLogStore, Durability, SnapshotStore, import};

const MILLION: u64 = 1_000_000;

fn put(i: u64, rev: u64) -> KvUpdate {
    KvUpdate::Put(KvEntry {
        key: format!("key.{i:07}"),
        value: Bytes::from(vec![(i % 251) as u8; 100]),
        version: VersionToken::from_u64(rev),
        created: None,
        expires: None,
    })
}

fn open(dir: &Path, durability: Durability) -> AppendLogStore {
    AppendLogStore::open(dir, &AppendLogOptions::with_durability(durability))
        .map(|(_, s)| s)
        .unwrap_or_else(|e| panic!("open {dir:?}: {e}"))
}

/// Fold `n` distinct keys in batches of 1,000, without fsync.
fn fill(store: &mut AppendLogStore, n: u64) {
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
    let mut group = c.benchmark_group("append_log/apply");
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
                        // A 200 k-key space: overwrites make compaction part of the cost.
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
    let mut group = c.benchmark_group("append_log/read");
    let mut i = 0u64;
    group.throughput(Throughput::Elements(1));
    group.bench_function("get_100k_keys", |b| {
        b.iter(|| {
            i = (i + 7_919) % 100_000;
            black_box(store.get(&format!("key.{i:07}")).ok().flatten());
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

/// Time a one-shot operation per iteration (setup excluded).
fn timed<T>(iters: u64, mut setup: impl FnMut() -> T, mut run: impl FnMut(T)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let input = setup();
        let start = Instant::now();
        run(input);
        total += start.elapsed();
    }
    total
}

fn million(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_log/1m_keys");
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
    group.bench_function("reopen", |b| {
        b.iter(|| black_box(open(&src, Durability::NoFsync).len()));
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
                        .unwrap_or_else(|e| panic!("export: {e}"));
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
                    import::<AppendLogStore>(
                        &artifact,
                        &dest.path().join("s"),
                        &AppendLogOptions::default(),
                    )
                    .unwrap_or_else(|e| panic!("import: {e}"));
                },
            )
        });
    });
    group.finish();
}

criterion_group!(benches, apply_throughput, reads, million);
criterion_main!(benches);
