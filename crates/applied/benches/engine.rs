//! Engine throughput over the simulator (context for T1/T2 in docs/rules.md):
//! a state-sync hydration of a pre-filled bucket, drained bare, through the
//! engine without a store, and through the engine into the append-log
//! store (no fsync). `cargo bench -p slipstream-applied --bench engine`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use slipstream_applied::{AppliedConfig, AppliedWatch, BatchPolicy, StoreSlot, handlers};
use slipstream_kv::{
    Connection, KvStore, KvUpdate, KvWatcher, KvWriter, WatchEvent, WatchScope, WatchStart,
};
use slipstream_memory::{MemoryServer, MemoryStore};
use slipstream_snapshot::{AppendLogOptions, AppendLogStore, Durability, SnapshotStore};
use tokio_util::sync::CancellationToken;

const KEYS: u64 = 100_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn filled_bucket(rt: &tokio::runtime::Runtime) -> MemoryStore {
    rt.block_on(async {
        let server = MemoryServer::new();
        let conn = server.connection();
        conn.connect().await.unwrap();
        let kv = conn.store("bench").await.unwrap();
        let value = Bytes::from(vec![b'x'; 100]);
        for i in 0..KEYS {
            kv.writer()
                .put(&format!("key.{i:08}"), value.clone())
                .await
                .unwrap();
        }
        kv
    })
}

async fn bare_drain(kv: &MemoryStore) -> u64 {
    let mut watch = kv
        .watcher()
        .watch(&WatchScope::All, WatchStart::Relist)
        .await
        .unwrap();
    let mut n = 0;
    while let Some(event) = watch.next().await {
        match event.unwrap() {
            WatchEvent::Update(u) => n += u64::from(u.is_live()),
            WatchEvent::CaughtUp => break,
        }
    }
    n
}

async fn engine<S: StoreSlot>(kv: &MemoryStore, config: AppliedConfig<S>) -> u64 {
    let token = CancellationToken::new();
    let config = config.shutdown(token.clone()).batch(BatchPolicy {
        window: Duration::from_millis(10),
        max: 1000,
    });
    let watch = AppliedWatch::new(kv.watcher(), config);
    let mut status = watch.status();
    let mut applied = 0u64;
    let parse = |u: &KvUpdate| u.is_live().then_some(());
    let apply = |batch: std::vec::Drain<'_, ()>| applied += batch.len() as u64;
    let (finished, ()) = tokio::join!(watch.run(handlers(parse, apply)), async {
        status.wait_for(|s| s.is_ready()).await.unwrap();
        token.cancel();
    });
    finished.result.unwrap();
    applied
}

fn hydration(c: &mut Criterion) {
    let rt = runtime();
    let kv = filled_bucket(&rt);
    let mut group = c.benchmark_group("hydrate_100k_simulator");
    group.sample_size(10);
    group.throughput(Throughput::Elements(KEYS));
    group.bench_function("bare_drain", |b| {
        b.iter(|| assert_eq!(rt.block_on(bare_drain(&kv)), KEYS));
    });
    group.bench_function("engine_no_store", |b| {
        b.iter(|| {
            let n = rt.block_on(engine(&kv, AppliedConfig::new(WatchScope::All)));
            assert_eq!(n, KEYS);
        });
    });
    group.bench_function("engine_append_log_nofsync", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().unwrap();
                let options = AppendLogOptions::with_durability(Durability::NoFsync);
                let (_, store) = AppendLogStore::open(dir.path(), &options).unwrap();
                let started = Instant::now();
                let n = rt.block_on(engine(
                    &kv,
                    AppliedConfig::new(WatchScope::All).store(store),
                ));
                total += started.elapsed();
                assert_eq!(n, KEYS);
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, hydration);
criterion_main!(benches);
