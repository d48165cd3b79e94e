//! The store benchmarks every backend runs (criterion): apply throughput,
//! point and range reads of 100 k keys, and at 1 M keys the fold, reopen
//! after a clean close (T4), export and import (T6). A bench target names
//! its store in a [`StoreBench`] and calls [`apply_throughput`], [`reads`]
//! (or [`reads_with`] for backend-only read benches) and [`million`].
//!
//! Benchmark ids are `<name>/apply/<no_fsync|fsync>/<batch>`,
//! `<name>/read/get_100k_keys`, `<name>/read/range_100_of_100k_keys` and
//! `<name>/1m_keys/{fold_no_fsync_batch_1000, <reopen id>, export, import}`;
//! docs/benchmarks.md and `cargo xtask bench` report them by these ids.
//!
//! Workload: keys `key.0000000`..., 100-byte values, 8-byte versions.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use slipstream_kv::{KvEntry, KvUpdate, VersionToken, WatchCursor, WatchScope};

use super::{OptionsFor, Settle};
use crate::artifact::import;
use crate::store::{Durability, SnapshotStore};

const MILLION: u64 = 1_000_000;

/// What the shared benchmarks need to know of a store.
#[derive(Debug)]
pub struct StoreBench<S: SnapshotStore> {
    /// First part of every benchmark id (`"append_log"`, `"fjall"`, ...).
    pub name: &'static str,
    /// The store's options per durability.
    pub options: OptionsFor<S>,
    /// Run on a filled store before the reads and the memory report, for
    /// stores that have a steady state to reach (the LSM stores' settle).
    pub settle: Option<Settle<S>>,
    /// Print the single-shot time and peak memory of a 1 M-key fold before
    /// the 1 M-key group.
    pub report_fold_memory: bool,
    /// Id of the reopen benchmark in the 1 M-key group.
    pub reopen_id: &'static str,
    /// Whether the 1 M-key one-shot timings include dropping what the
    /// operation leaves (the store, the directory written). The append-log
    /// figures were always taken that way; keeping it keeps them
    /// comparable. Otherwise only the operation is timed.
    pub times_teardown: bool,
}

impl<S: SnapshotStore> StoreBench<S> {
    fn open(&self, dir: &Path, durability: Durability) -> S {
        S::open(dir, &(self.options)(durability))
            .map(|(_, s)| s)
            .unwrap_or_else(|e| panic!("open {dir:?}: {e}"))
    }

    fn settle(&self, store: &mut S) {
        if let Some(settle) = self.settle {
            settle(store).unwrap_or_else(|e| panic!("settle: {e}"));
        }
    }
}

/// The put of key `key.<i, 7 digits>` at revision `rev`: a 100-byte value.
#[must_use]
pub fn put(i: u64, rev: u64) -> KvUpdate {
    KvUpdate::Put(KvEntry {
        key: format!("key.{i:07}"),
        value: Bytes::from(vec![(i % 251) as u8; 100]),
        version: VersionToken::from_u64(rev),
        created: None,
        expires: None,
    })
}

/// Fold `n` distinct keys in batches of 1,000.
///
/// # Panics
/// When an apply fails.
pub fn fill<S: SnapshotStore>(store: &mut S, n: u64) {
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

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

fn temp_in(dir: &Path) -> tempfile::TempDir {
    tempfile::tempdir_in(dir).unwrap_or_else(|e| panic!("tempdir in {dir:?}: {e}"))
}

/// `<name>/apply`: batches of 100 and 1,000 puts, with and without fsync,
/// cycling through a 200 k-key space (inserts first, then overwrites).
///
/// # Panics
/// When the store fails.
pub fn apply_throughput<S: SnapshotStore>(c: &mut Criterion, bench: &StoreBench<S>) {
    let mut group = c.benchmark_group(format!("{}/apply", bench.name));
    for durability in [Durability::NoFsync, Durability::FsyncEachCommit] {
        for batch_len in [100u64, 1_000] {
            let tmp = temp();
            let mut store = bench.open(tmp.path(), durability);
            let rev = std::cell::Cell::new(0u64);
            group.throughput(Throughput::Elements(batch_len));
            let label = match durability {
                Durability::NoFsync => "no_fsync",
                Durability::FsyncEachCommit => "fsync",
            };
            group.bench_function(BenchmarkId::new(label, batch_len), |b| {
                b.iter_batched(
                    || {
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

/// `<name>/read`: `get` and a 100-key `range` on a settled 100 k-key store.
///
/// # Panics
/// When the store fails.
pub fn reads<S: SnapshotStore>(c: &mut Criterion, bench: &StoreBench<S>) {
    reads_with(c, bench, |_, _| {});
}

/// [`reads`], plus backend-only benchmarks that `extra` adds to the same
/// group on the same store (they run after `get`).
///
/// # Panics
/// When the store fails.
pub fn reads_with<S: SnapshotStore>(
    c: &mut Criterion,
    bench: &StoreBench<S>,
    extra: impl FnOnce(&mut BenchmarkGroup<'_, WallTime>, &S),
) {
    let tmp = temp();
    let mut store = bench.open(tmp.path(), Durability::NoFsync);
    fill(&mut store, 100_000);
    bench.settle(&mut store);
    let mut group = c.benchmark_group(format!("{}/read", bench.name));
    let mut i = 0u64;
    group.throughput(Throughput::Elements(1));
    group.bench_function("get_100k_keys", |b| {
        b.iter(|| {
            i = (i + 7_919) % 100_000;
            black_box(store.get(&format!("key.{i:07}")).ok().flatten());
        });
    });
    extra(&mut group, &store);
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

/// Time a one-shot operation per iteration; setup is excluded, and
/// teardown (dropping the input and the output) unless `teardown`.
fn timed<T, U>(
    iters: u64,
    teardown: bool,
    mut setup: impl FnMut() -> T,
    mut run: impl FnMut(&T) -> U,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let input = setup();
        let start = Instant::now();
        let out = run(&input);
        if teardown {
            drop(out);
            drop(input);
            total += start.elapsed();
        } else {
            total += start.elapsed();
            drop(out);
        }
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
#[allow(
    clippy::print_stdout,
    reason = "the peak-memory figure is reported on stdout"
)]
fn report_fold_peak_memory<S: SnapshotStore>(bench: &StoreBench<S>) {
    // Writing 5 resets the peak-RSS counter to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (before, _) = rss_mib();
    let tmp = temp();
    let start = Instant::now();
    let mut store = bench.open(tmp.path(), Durability::NoFsync);
    fill(&mut store, MILLION);
    let folded = start.elapsed();
    bench.settle(&mut store);
    let settled = start.elapsed();
    let stats = store.stats();
    store.close().unwrap_or_else(|e| panic!("close: {e}"));
    let (_, peak) = rss_mib();
    println!(
        "{}: 1 M-key fold {folded:.2?}, settled at {settled:.2?}, RSS before {before} MiB, \
         peak {peak} MiB, live {} MiB, disk {} MiB",
        bench.name,
        stats.live_bytes >> 20,
        stats.disk_bytes >> 20
    );
}

/// `<name>/1m_keys`: fold 1 M keys without fsync in batches of 1,000,
/// reopen the folded store after a clean close (open to ready), export it,
/// import its artifact. With [`StoreBench::report_fold_memory`], a
/// single-shot fold's peak memory is printed first.
///
/// # Panics
/// When the store, the export or the import fails.
pub fn million<S: SnapshotStore>(c: &mut Criterion, bench: &StoreBench<S>) {
    if bench.report_fold_memory {
        report_fold_peak_memory(bench);
    }
    let teardown = bench.times_teardown;
    let mut group = c.benchmark_group(format!("{}/1m_keys", bench.name));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(MILLION));
    group.bench_function("fold_no_fsync_batch_1000", |b| {
        b.iter_custom(|iters| {
            timed(iters, teardown, temp, |tmp| {
                let mut store = bench.open(tmp.path(), Durability::NoFsync);
                fill(&mut store, MILLION);
                store
            })
        });
    });

    let tmp = temp();
    let src = tmp.path().join("src");
    {
        let mut store = bench.open(&src, Durability::NoFsync);
        fill(&mut store, MILLION);
        store.close().unwrap_or_else(|e| panic!("close: {e}"));
    }
    group.bench_function(bench.reopen_id, |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                teardown,
                || (),
                |()| bench.open(&src, Durability::NoFsync),
            )
        });
    });
    group.bench_function("export", |b| {
        let mut store = bench.open(&src, Durability::NoFsync);
        b.iter_custom(|iters| {
            timed(
                iters,
                teardown,
                || temp_in(tmp.path()),
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
        let mut store = bench.open(&src, Durability::NoFsync);
        store
            .export_to(&artifact, &WatchScope::All)
            .unwrap_or_else(|e| panic!("export: {e}"));
    }
    let options = (bench.options)(Durability::NoFsync);
    group.bench_function("import", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                teardown,
                || temp_in(tmp.path()),
                |dest| {
                    import::<S>(&artifact, &dest.path().join("s"), &options)
                        .unwrap_or_else(|e| panic!("import: {e}"))
                },
            )
        });
    });
    group.finish();
}
