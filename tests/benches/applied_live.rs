//! T1 over a live nats-server: a state-sync hydration of the same bucket,
//! drained bare by async-nats (`watch_with_history`), drained bare by the
//! slipstream NATS watch, and through the applied-watch engine without a
//! store and into fjall (no fsync). `NATS_SERVER_BIN=... cargo bench -p
//! slipstream-it --bench applied_live`; `SLIPSTREAM_BENCH_KEYS` sets the
//! bucket size (default 200 000).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use slipstream_applied::{AppliedConfig, AppliedWatch, BatchPolicy, StoreSlot, handlers};
use slipstream_fjall::{FjallOptions, FjallStore};
use slipstream_it::{NatsServer, TempDir, connect, open};
use slipstream_kv::{
    KvStore, KvUpdate, KvWatcher, KvWriter, StoreConfig, WatchEvent, WatchScope, WatchStart,
};
use slipstream_nats::NatsBucket;
use slipstream_snapshot::{Durability, SnapshotStore};
use tokio_util::sync::CancellationToken;

const BUCKET: &str = "bench";

fn keys() -> u64 {
    std::env::var("SLIPSTREAM_BENCH_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000)
}

async fn fill(bucket: &NatsBucket, n: u64) {
    let w = bucket.writer();
    let value = Bytes::from(vec![b'x'; 100]);
    futures::stream::iter(0..n)
        .map(|i| {
            let w = w.clone();
            let value = value.clone();
            async move { w.put(&format!("key.{i:08}"), value).await.unwrap() }
        })
        .buffer_unordered(256)
        .for_each(|_| async {})
        .await;
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

async fn engine<S: StoreSlot>(bucket: &NatsBucket, config: AppliedConfig<S>, n: u64) {
    let token = CancellationToken::new();
    let config = config.shutdown(token.clone()).batch(BatchPolicy {
        window: Duration::from_millis(10),
        max: 1000,
    });
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
}

fn hydration(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let n = keys();
    let (server, bucket) = rt.block_on(async {
        let server = NatsServer::start().await;
        let conn = connect(&server.url()).await;
        let bucket = open(&conn, StoreConfig::new(BUCKET)).await;
        fill(&bucket, n).await;
        (server, bucket)
    });
    let url = server.url();
    let mut group = c.benchmark_group(format!("hydrate_{n}_live"));
    group.sample_size(10);
    group.throughput(Throughput::Elements(n));
    group.bench_function("bare_async_nats", |b| {
        b.iter(|| rt.block_on(bare_async_nats(&url, n)));
    });
    group.bench_function("bare_slipstream_watch", |b| {
        b.iter(|| rt.block_on(bare_slipstream(&bucket, n)));
    });
    group.bench_function("engine_no_store", |b| {
        b.iter(|| rt.block_on(engine(&bucket, AppliedConfig::new(WatchScope::All), n)));
    });
    group.bench_function("engine_fjall_nofsync", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = TempDir::new("bench-fjall");
                let options = FjallOptions::with_durability(Durability::NoFsync);
                let (_, store) = FjallStore::open(dir.path(), &options).unwrap();
                let started = Instant::now();
                let config = AppliedConfig::new(WatchScope::All).store(store);
                rt.block_on(engine(&bucket, config, n));
                total += started.elapsed();
            }
            total
        });
    });
    group.finish();
    drop(server);
}

criterion_group!(benches, hydration);
criterion_main!(benches);
