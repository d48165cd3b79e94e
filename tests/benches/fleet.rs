//! Fleet artifacts over a live nats-server (T7 in docs/rules.md, issue 19):
//!
//! - T7: a fresh node bootstrapped from an artifact in the NATS object
//!   store (fetch with BLAKE3 checks, verified import, open, then the
//!   delta of 1,000 updates written once after the export), against a relist of
//!   the same bucket into the same kind of fresh store; both timed until
//!   the applied cursor reaches the stream's last sequence. Append-log and
//!   fjall stores.
//! - The longest pause in applied progress while a running mirror exports
//!   its fold (writes going on at full speed), against the longest pause
//!   in an equally long window without an export. Printed, not asserted.
//!
//! `NATS_SERVER_BIN=$(cargo xtask nats-server) cargo bench -p slipstream-it
//! --bench fleet`; `SLIPSTREAM_BENCH_KEYS` sets the bucket size (default
//! 200 000).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::cast_precision_loss,
    missing_docs
)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use futures::StreamExt;
use slipstream_applied::{
    AppliedConfig, AppliedWatch, BatchPolicy, Bootstrap, BootstrapConfig, Exporter, bootstrap,
    export_channel, handlers,
};
use slipstream_fjall::{FjallOptions, FjallStore};
use slipstream_fleet::{
    ArtifactTransport, FleetKey, FleetTimeouts, ObjectStoreConfig, ObjectStoreTransport,
    TransportSource,
};
use slipstream_it::{NatsServer, TempDir, connect, open};
use slipstream_kv::{KvStore, KvUpdate, KvWatcher, KvWriter, StoreConfig, WatchScope};
use slipstream_nats::NatsBucket;
use slipstream_snapshot::{AppendLogOptions, AppendLogStore, Durability, SnapshotStore};
use tokio_util::sync::CancellationToken;

const BUCKET: &str = "bench";
const ARTIFACTS: &str = "bench-artifacts";
/// Updates written after the export, before each bootstrap.
const DELTA: u64 = 1_000;

fn keys() -> u64 {
    std::env::var("SLIPSTREAM_BENCH_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn batch() -> BatchPolicy {
    BatchPolicy {
        window: Duration::from_millis(10),
        max: 1000,
    }
}

/// Write `n` updates to keys `key.{from}`..., 256 in flight; the highest
/// revision written.
async fn write(bucket: &NatsBucket, from: u64, n: u64, total_keys: u64) -> u64 {
    let w = bucket.writer();
    let value = Bytes::from(vec![b'x'; 100]);
    futures::stream::iter(from..from + n)
        .map(|i| {
            let w = w.clone();
            let value = value.clone();
            async move {
                w.put(&format!("key.{:08}", i % total_keys), value)
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(256)
        .fold(0, |high, rev| async move { high.max(rev) })
        .await
}

/// A store kind the benchmarks run on.
trait Kind: SnapshotStore {
    const LABEL: &'static str;
    fn options() -> Self::Options;
}

impl Kind for AppendLogStore {
    const LABEL: &'static str = "append_log";
    fn options() -> AppendLogOptions {
        AppendLogOptions::with_durability(Durability::NoFsync)
    }
}

impl Kind for FjallStore {
    const LABEL: &'static str = "fjall";
    fn options() -> FjallOptions {
        FjallOptions::with_durability(Durability::NoFsync)
    }
}

/// Run an engine on `store` until its applied cursor reaches `last`, then
/// shut it down and hand the store back. The time to `last` comes back
/// too (from `started`).
async fn run_until<S: SnapshotStore>(
    bucket: &NatsBucket,
    store: S,
    last: u64,
    started: Instant,
) -> (Duration, S) {
    let token = CancellationToken::new();
    let config = AppliedConfig::new(WatchScope::All)
        .store(store)
        .batch(batch())
        .shutdown(token.clone());
    let watch = AppliedWatch::new(bucket.watcher(), config);
    let mut status = watch.status();
    let parse = |u: &KvUpdate| u.is_live().then_some(());
    let apply = |_: std::vec::Drain<'_, ()>| {};
    let (finished, took) = tokio::join!(watch.run(handlers(parse, apply)), async {
        status.wait_for(|s| s.applied >= Some(last)).await.unwrap();
        let took = started.elapsed();
        token.cancel();
        took
    });
    finished.result.unwrap();
    (took, finished.store.unwrap())
}

#[derive(Default)]
struct Samples(RefCell<BTreeMap<String, Vec<Duration>>>);

impl Samples {
    fn record(&self, name: &str, took: Duration) {
        self.0
            .borrow_mut()
            .entry(name.to_owned())
            .or_default()
            .push(took);
    }

    fn median(&self, name: &str) -> Option<Duration> {
        let mut all = self.0.borrow().get(name)?.clone();
        all.sort_unstable();
        all.get(all.len() / 2).copied()
    }
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    server: NatsServer,
    bucket: NatsBucket,
    n: u64,
    written: RefCell<u64>,
}

impl Fixture {
    /// Write `DELTA` more updates; the last revision.
    fn write_delta(&self) -> u64 {
        let from = *self.written.borrow();
        let last = self.rt.block_on(write(&self.bucket, from, DELTA, self.n));
        *self.written.borrow_mut() += DELTA;
        last
    }

    fn transport<S: SnapshotStore>(&self) -> Arc<dyn ArtifactTransport> {
        self.rt.block_on(async {
            let client = connect(&self.server.url()).await.client().unwrap();
            let timeouts = FleetTimeouts {
                transfer: Duration::from_secs(600),
                ..FleetTimeouts::default()
            };
            let config = ObjectStoreConfig::new(ARTIFACTS).timeouts(timeouts);
            let key = FleetKey::new(BUCKET, WatchScope::All, S::BACKEND);
            let transport: Arc<dyn ArtifactTransport> = Arc::new(
                ObjectStoreTransport::open(client, config, key)
                    .await
                    .unwrap(),
            );
            transport
        })
    }
}

/// T7 for one store kind.
fn t7<S: Kind>(c: &mut Criterion, fx: &Fixture, samples: &Samples) {
    let (rt, bucket, n) = (&fx.rt, &fx.bucket, fx.n);
    let label = S::LABEL;
    // The exporter: a node hydrated from the bucket, exported, published.
    let work = TempDir::new("bench-t7");
    let last = rt
        .block_on(bucket.watcher().retention())
        .unwrap()
        .last_revision;
    let (_, store) = S::open(&work.path().join("exporter"), &S::options()).unwrap();
    let (_, mut store) = rt.block_on(run_until(bucket, store, last, Instant::now()));
    let artifact = work.path().join("artifact");
    let exported = Instant::now();
    store.export_to(&artifact, &WatchScope::All).unwrap();
    let export_took = exported.elapsed();
    store.close().unwrap();
    let transport = fx.transport::<S>();
    let uploaded = Instant::now();
    let published = rt.block_on(transport.publish(&artifact)).unwrap();
    assert!(published.moved());
    let artifact_bytes = dir_bytes(&artifact);
    eprintln!(
        "{label}: exported {n} keys in {export_took:?}, {:.1} MB, uploaded in {:?}",
        artifact_bytes as f64 / 1e6,
        uploaded.elapsed()
    );
    // Where a bootstrap's time goes: the download (checked as it streams),
    // the verified import that opens the store, and for comparison a plain
    // import and an open; the fastest of three rounds of each.
    {
        let mut best = [Duration::MAX; 4];
        for round in 0..3 {
            let scratch = TempDir::new("bench-t7-parts");
            let mut step = |i: usize, started: Instant| {
                best[i] = best[i].min(started.elapsed());
            };
            let started = Instant::now();
            let newest = rt.block_on(transport.newest()).unwrap().unwrap();
            let fetched = rt
                .block_on(transport.fetch(&newest, scratch.path()))
                .unwrap();
            step(0, started);
            let started = Instant::now();
            let (_, store) = slipstream_snapshot::import_open::<S>(
                &fetched,
                &scratch.path().join("fold"),
                &S::options(),
            )
            .unwrap();
            step(1, started);
            store.close().unwrap();
            let plain = scratch.path().join(format!("plain-{round}"));
            let started = Instant::now();
            slipstream_snapshot::import::<S>(&fetched, &plain, &S::options()).unwrap();
            step(2, started);
            let started = Instant::now();
            let (_, store) = S::open(&plain, &S::options()).unwrap();
            step(3, started);
            store.close().unwrap();
        }
        eprintln!(
            "{label}: fetch {:?}, import and open {:?} (a plain import {:?}, an open {:?})",
            best[0], best[1], best[2], best[3]
        );
    }
    let last = fx.write_delta();
    let mut group = c.benchmark_group(format!("t7_{n}_{label}"));
    group.sample_size(10);
    let mut parts = String::new();
    group.bench_function("bootstrap_from_object_store", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let fresh = TempDir::new("bench-t7-boot");
                let fold = fresh.path().join("fold");
                let source = TransportSource::new(Arc::clone(&transport));
                let config = BootstrapConfig::new(WatchScope::All).scratch(fresh.path());
                let started = Instant::now();
                let outcome = rt
                    .block_on(bootstrap::<S, _>(
                        &bucket.watcher(),
                        &source,
                        &fold,
                        &S::options(),
                        &config,
                    ))
                    .unwrap();
                let Bootstrap::Imported { store, .. } = outcome else {
                    panic!("{:?}", outcome.declined());
                };
                let imported = started.elapsed();
                let (took, store) = rt.block_on(run_until(bucket, store, last, started));
                parts = format!(
                    "fetch + import + open {imported:?}, delta {:?}",
                    took - imported
                );
                store.close().unwrap();
                samples.record(&format!("{label}_bootstrap"), took);
                total += took;
            }
            total
        });
    });
    eprintln!("{label}: last bootstrap: {parts}");
    group.bench_function("relist_into_a_fresh_store", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let fresh = TempDir::new("bench-t7-relist");
                let started = Instant::now();
                let (_, store) = S::open(fresh.path(), &S::options()).unwrap();
                let (took, store) = rt.block_on(run_until(bucket, store, last, started));
                store.close().unwrap();
                samples.record(&format!("{label}_relist"), took);
                total += took;
            }
            total
        });
    });
    group.finish();
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                dir_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

/// The longest gap between consecutive applied-cursor advances with their
/// instants inside `[from, to]`.
fn longest_gap(marks: &[Instant], from: Instant, to: Instant) -> Duration {
    let inside: Vec<Instant> = marks
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect();
    let mut longest = inside.first().map_or(to - from, |first| *first - from);
    for pair in inside.windows(2) {
        longest = longest.max(pair[1] - pair[0]);
    }
    if let Some(end) = inside.last() {
        longest = longest.max(to - *end);
    }
    longest
}

/// A running mirror of the filled bucket with writes going on; three
/// exports, each against a quiet window of the same length before it.
fn export_pause<S: Kind>(fx: &Fixture) -> String {
    let (rt, bucket, n) = (&fx.rt, &fx.bucket, fx.n);
    let work = TempDir::new("bench-pause");
    let last = rt
        .block_on(bucket.watcher().retention())
        .unwrap()
        .last_revision;
    let (_, store) = S::open(&work.path().join("fold"), &S::options()).unwrap();
    let (_, store) = rt.block_on(run_until(bucket, store, last, Instant::now()));
    let marks = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let token = CancellationToken::new();
    let (exporter, requests): (Exporter, _) = export_channel(1);
    let config = AppliedConfig::new(WatchScope::All)
        .store(store)
        .batch(batch())
        .exports(requests)
        .shutdown(token.clone());
    let watch = AppliedWatch::new(bucket.watcher(), config);
    let mut status = watch.status();
    let recorded = Arc::clone(&marks);
    let handlers = handlers(
        |u: &KvUpdate| u.is_live().then_some(()),
        |_: std::vec::Drain<'_, ()>| {},
    )
    .on_applied(move |_| recorded.lock().unwrap().push(Instant::now()));
    let mut report = Vec::new();
    rt.block_on(async {
        let engine = tokio::spawn(watch.run(handlers));
        status.wait_for(|s| s.is_ready()).await.unwrap();
        // Writes at full speed until the measurements end.
        let writing = CancellationToken::new();
        let writer = {
            let bucket = bucket.clone();
            let writing = writing.clone();
            let mut from = *fx.written.borrow();
            tokio::spawn(async move {
                while !writing.is_cancelled() {
                    write(&bucket, from, 500, n).await;
                    from += 500;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        for round in 0..3 {
            let dest = work.path().join(format!("export-{round}"));
            let quiet_from = Instant::now();
            // The quiet window lasts as long as the previous export did
            // (at least a second).
            let window = report
                .last()
                .map_or(Duration::from_secs(1), |(_, _, took): &(_, _, Duration)| {
                    (*took).max(Duration::from_secs(1))
                });
            tokio::time::sleep(window).await;
            let quiet = longest_gap(&marks.lock().unwrap(), quiet_from, Instant::now());
            let started = Instant::now();
            exporter.export(&dest).await.unwrap();
            let ended = Instant::now();
            let during = longest_gap(&marks.lock().unwrap(), started, ended);
            report.push((quiet, during, ended - started));
        }
        writing.cancel();
        writer.await.unwrap();
        token.cancel();
        engine.await.unwrap().result.unwrap();
    });
    let commits = marks.lock().unwrap().len();
    let lines: Vec<String> = report
        .iter()
        .map(|(quiet, during, took)| {
            format!("export {took:?}: longest pause {during:?} (without an export: {quiet:?})")
        })
        .collect();
    format!(
        "{}: {n} keys, {commits} commits observed\n    {}",
        S::LABEL,
        lines.join("\n    ")
    )
}

fn summary(samples: &Samples, n: u64, pauses: &[String]) {
    let ms = |name: &str| samples.median(name).map(|d| d.as_secs_f64() * 1000.0);
    eprintln!("\nsummary ({n} keys; medians of this run):");
    for label in [AppendLogStore::LABEL, FjallStore::LABEL] {
        if let (Some(b), Some(r)) = (
            ms(&format!("{label}_bootstrap")),
            ms(&format!("{label}_relist")),
        ) {
            eprintln!(
                "  T7 {label}: bootstrap from the object store {b:.0} ms; relist {r:.0} ms; relist / bootstrap = {:.1}x",
                r / b
            );
        }
    }
    eprintln!("  applied progress during exports:");
    for p in pauses {
        eprintln!("  {p}");
    }
}

fn main() {
    let rt = runtime();
    let n = keys();
    let (server, bucket) = rt.block_on(async {
        let server = NatsServer::start().await;
        let conn = connect(&server.url()).await;
        let bucket = open(&conn, StoreConfig::new(BUCKET)).await;
        let filled = Instant::now();
        write(&bucket, 0, n, n).await;
        eprintln!("filled {n} keys in {:?}", filled.elapsed());
        (server, bucket)
    });
    let fx = Fixture {
        rt,
        server,
        bucket,
        n,
        written: RefCell::new(n),
    };
    let samples = Samples::default();
    let mut c = Criterion::default().configure_from_args();
    t7::<AppendLogStore>(&mut c, &fx, &samples);
    t7::<FjallStore>(&mut c, &fx, &samples);
    let pauses = vec![
        export_pause::<AppendLogStore>(&fx),
        export_pause::<FjallStore>(&fx),
    ];
    summary(&samples, n, &pauses);
    c.final_summary();
}
