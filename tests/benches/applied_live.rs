//! The applied-watch engine over a live nats-server (docs/rules.md T1,
//! T2, T4), all against one bucket filled once per run:
//!
//! - T1: a state-sync hydration drained bare by async-nats
//!   (`watch_with_history`), drained bare by the slipstream NATS watch, and
//!   through the engine without a store;
//! - T2: the same hydration through the engine into fjall (no fsync);
//! - T4: restart to ready. A fjall store hydrated once and closed cleanly;
//!   before each iteration 1,000 updates are written while no node runs;
//!   the iteration spawns a fresh process (this binary, in probe mode) that
//!   opens the store, connects, resumes, and prints `ready` once the
//!   applied cursor reaches the stream's last sequence. The time runs from
//!   the spawn to that line. The same probe on an empty store directory
//!   (a full relist of the bucket) is the comparison.
//!
//! At the end the medians of one run and their ratios are printed.
//! `NATS_SERVER_BIN=$(cargo xtask nats-server) cargo bench -p slipstream-it
//! --bench applied_live`; `SLIPSTREAM_BENCH_KEYS` sets the bucket size
//! (default 200 000).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::cast_precision_loss,
    missing_docs
)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use futures::StreamExt;
use slipstream_applied::{AppliedConfig, AppliedWatch, BatchPolicy, StoreSlot, Timeouts, handlers};
use slipstream_fjall::{FjallOptions, FjallStore};
use slipstream_it::{NatsServer, TempDir, connect, open};
use slipstream_kv::{
    KvStore, KvUpdate, KvWatcher, KvWriter, StoreConfig, WatchEvent, WatchScope, WatchStart,
};
use slipstream_nats::NatsBucket;
use slipstream_snapshot::{Durability, SnapshotStore};
use tokio_util::sync::CancellationToken;

const BUCKET: &str = "bench";
/// Set in the environment of a T4 child: `<url> <store dir> <last sequence>`.
const PROBE_ENV: &str = "SLIPSTREAM_BENCH_RESTART_PROBE";
/// Updates written while the node is down, before each T4 iteration.
const OFFLINE_UPDATES: u64 = 1_000;

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

fn fjall_options() -> FjallOptions {
    FjallOptions::with_durability(Durability::NoFsync)
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

async fn bare_async_nats(url: &str, n: u64) {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let kv = js.get_key_value(BUCKET).await.unwrap();
    let mut watch = kv.watch_with_history(">").await.unwrap();
    let mut seen = 0;
    while seen < n {
        watch.next().await.unwrap().unwrap();
        seen += 1;
    }
}

async fn bare_slipstream(bucket: &NatsBucket, n: u64) {
    let mut watch = bucket
        .watcher()
        .watch(&WatchScope::All, WatchStart::Relist)
        .await
        .unwrap();
    let mut seen = 0;
    while let Some(event) = watch.next().await {
        match event.unwrap() {
            WatchEvent::Update(_) => seen += 1,
            WatchEvent::CaughtUp => break,
        }
    }
    assert_eq!(seen, n);
}

fn batch() -> BatchPolicy {
    BatchPolicy {
        window: Duration::from_millis(10),
        max: 1000,
    }
}

/// Hydrate through the engine until `Ready`, then shut down (the shutdown
/// flush and the last commit included); the store back.
async fn engine<S: StoreSlot>(bucket: &NatsBucket, config: AppliedConfig<S>, n: u64) -> S {
    let token = CancellationToken::new();
    let config = config.shutdown(token.clone()).batch(batch());
    let watch = AppliedWatch::new(bucket.watcher(), config);
    let mut status = watch.status();
    let mut applied = 0u64;
    let parse = |u: &KvUpdate| u.is_live().then_some(());
    let apply = |batch: std::vec::Drain<'_, ()>| applied += batch.len() as u64;
    let (finished, ()) = tokio::join!(watch.run(handlers(parse, apply)), async {
        status.wait_for(|s| s.is_ready()).await.unwrap();
        token.cancel();
    });
    finished.result.unwrap();
    assert_eq!(applied, n);
    finished.store.unwrap()
}

/// Per-iteration times of one run, by benchmark, for the closing summary.
#[derive(Default)]
struct Samples(RefCell<BTreeMap<&'static str, Vec<Duration>>>);

impl Samples {
    fn record(&self, name: &'static str, took: Duration) {
        self.0.borrow_mut().entry(name).or_default().push(took);
    }

    fn median(&self, name: &str) -> Option<Duration> {
        let mut all = self.0.borrow().get(name)?.clone();
        all.sort_unstable();
        all.get(all.len() / 2).copied()
    }
}

/// Time `iters` runs of `f`, recording each.
fn timed(samples: &Samples, name: &'static str, iters: u64, mut f: impl FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let started = Instant::now();
        f();
        let took = started.elapsed();
        samples.record(name, took);
        total += took;
    }
    total
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    server: NatsServer,
    bucket: NatsBucket,
    n: u64,
}

fn hydration(c: &mut Criterion, fx: &Fixture, samples: &Samples) {
    let Fixture { rt, bucket, n, .. } = fx;
    let (url, n) = (fx.server.url(), *n);
    let mut group = c.benchmark_group(format!("hydrate_{n}_live"));
    group.sample_size(10);
    group.throughput(Throughput::Elements(n));
    group.bench_function("bare_async_nats", |b| {
        b.iter_custom(|iters| {
            timed(samples, "bare_async_nats", iters, || {
                rt.block_on(bare_async_nats(&url, n));
            })
        });
    });
    group.bench_function("bare_slipstream_watch", |b| {
        b.iter_custom(|iters| {
            timed(samples, "bare_slipstream_watch", iters, || {
                rt.block_on(bare_slipstream(bucket, n));
            })
        });
    });
    group.bench_function("engine_no_store", |b| {
        b.iter_custom(|iters| {
            timed(samples, "engine_no_store", iters, || {
                rt.block_on(engine(bucket, AppliedConfig::new(WatchScope::All), n));
            })
        });
    });
    group.bench_function("engine_fjall_nofsync", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = TempDir::new("bench-fjall");
                let (_, store) = FjallStore::open(dir.path(), &fjall_options()).unwrap();
                let mut store = Some(store);
                total += timed(samples, "engine_fjall_nofsync", 1, || {
                    let config = AppliedConfig::new(WatchScope::All).store(store.take().unwrap());
                    rt.block_on(engine(bucket, config, n));
                });
            }
            total
        });
    });
    group.finish();
}

/// Spawn a probe on `dir` and time it from the spawn to its `ready` line;
/// its own report of where the time went, too.
fn probe(url: &str, dir: &Path, last: u64) -> (Duration, String) {
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut child = Command::new(exe)
        .env(PROBE_ENV, format!("{url} {} {last}", dir.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let took = started.elapsed();
    assert!(child.wait().unwrap().success(), "the probe failed");
    assert!(line.starts_with("ready"), "probe said {line:?}");
    (took, line.trim().to_owned())
}

fn restart(c: &mut Criterion, fx: &Fixture, samples: &Samples) {
    let Fixture { rt, bucket, n, .. } = fx;
    let (url, n) = (fx.server.url(), *n);
    // One node's store, hydrated and closed cleanly like a node shut down.
    let dir = TempDir::new("bench-restart");
    let (_, store) = FjallStore::open(dir.path(), &fjall_options()).unwrap();
    let config = AppliedConfig::new(WatchScope::All).store(store);
    SnapshotStore::close(rt.block_on(engine(bucket, config, n))).unwrap();
    let mut written = 0u64;
    let mut last = rt
        .block_on(bucket.watcher().retention())
        .unwrap()
        .last_revision;
    let mut report = String::new();
    let mut group = c.benchmark_group(format!("restart_{n}_fjall"));
    group.sample_size(10);
    group.bench_function("resume_after_1000_offline_updates", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                last = rt.block_on(write(bucket, written, OFFLINE_UPDATES, n));
                written += OFFLINE_UPDATES;
                let (took, said) = probe(&url, dir.path(), last);
                samples.record("restart_resume", took);
                report = said;
                total += took;
            }
            total
        });
    });
    eprintln!("last resume probe: {report}");
    group.bench_function("full_relist_into_a_fresh_store", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let fresh = TempDir::new("bench-relist");
                let (took, said) = probe(&url, fresh.path(), last);
                samples.record("restart_relist", took);
                report = said;
                total += took;
            }
            total
        });
    });
    eprintln!("last relist probe: {report}");
    group.finish();
}

/// The T4 child: open the store, connect, resume; say `ready` on stdout
/// when the applied cursor reaches `last`, then shut down cleanly.
fn run_probe(spec: &str) {
    let started = Instant::now();
    let mut words = spec.split(' ');
    let (url, dir, last) = (
        words.next().unwrap(),
        words.next().unwrap(),
        words.next().unwrap().parse::<u64>().unwrap(),
    );
    let (_, store) = FjallStore::open(Path::new(dir), &fjall_options()).unwrap();
    let opened = started.elapsed();
    let rt = runtime();
    rt.block_on(async {
        let conn = connect(url).await;
        let bucket = open(&conn, StoreConfig::new(BUCKET)).await;
        let connected = started.elapsed();
        let token = CancellationToken::new();
        let config = AppliedConfig::new(WatchScope::All)
            .store(store)
            .batch(batch())
            .timeouts(Timeouts {
                close: Duration::from_secs(60),
                ..Timeouts::default()
            })
            .shutdown(token.clone());
        let watch = AppliedWatch::new(bucket.watcher(), config);
        let mut status = watch.status();
        let parse = |u: &KvUpdate| u.is_live().then_some(());
        let apply = |_: std::vec::Drain<'_, ()>| {};
        let (closed, ()) = tokio::join!(watch.run_and_close(handlers(parse, apply)), async {
            status
                .wait_for(|s| s.applied >= Some(last))
                .await
                .unwrap();
            let ready = started.elapsed();
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "ready: store open {opened:?}, connected {connected:?}, applied {last} at {ready:?} (from main)"
            )
            .unwrap();
            out.flush().unwrap();
            token.cancel();
        });
        closed.unwrap();
    });
}

fn summary(samples: &Samples, n: u64) {
    let rate = |name: &str| {
        samples
            .median(name)
            .map(|d| n as f64 / d.as_secs_f64() / 1000.0)
    };
    let ms = |name: &str| samples.median(name).map(|d| d.as_secs_f64() * 1000.0);
    eprintln!("\nsummary ({n} keys; medians of this run):");
    for name in [
        "bare_async_nats",
        "bare_slipstream_watch",
        "engine_no_store",
        "engine_fjall_nofsync",
    ] {
        if let Some(r) = rate(name) {
            eprintln!("  {name:<24} {r:>8.0} k/s");
        }
    }
    if let (Some(e), Some(b)) = (rate("engine_no_store"), rate("bare_async_nats")) {
        eprintln!("  T1 engine_no_store / bare_async_nats = {:.2}x", e / b);
    }
    if let (Some(e), Some(b)) = (rate("engine_no_store"), rate("bare_slipstream_watch")) {
        eprintln!("  engine_no_store / bare_slipstream_watch = {:.2}x", e / b);
    }
    if let (Some(r), Some(f)) = (ms("restart_resume"), ms("restart_relist")) {
        eprintln!(
            "  T4 restart to ready {r:.1} ms; full relist {f:.0} ms; relist / restart = {:.1}x",
            f / r
        );
    }
}

fn main() {
    if let Ok(spec) = std::env::var(PROBE_ENV) {
        run_probe(&spec);
        return;
    }
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
    };
    let samples = Samples::default();
    let mut c = Criterion::default().configure_from_args();
    hydration(&mut c, &fx, &samples);
    restart(&mut c, &fx, &samples);
    summary(&samples, n);
    c.final_summary();
}
