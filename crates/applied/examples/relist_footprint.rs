//! T5 (docs/rules.md): the memory and time of a Relist repair.
//!
//! A simulator bucket holds `KEYS` keys; a fjall fold is synced to it at
//! revision `KEYS`. While the node is "down" every key is rewritten, 1% of
//! the keys are deleted and their subjects purged (markers included), and
//! the superseded head is purged past the fold's cursor, so the cursor
//! expires. The engine then runs a Relist repair (`RepairMode::Relist`)
//! with the given `relist_memory`; the example prints the repair's time
//! (expiry to the re-list watch opening) and the process' peak RSS growth
//! during it, next to the peak RSS growth of a bare state-sync drain of the
//! freshly filled bucket (the simulator's own share of a listing).
//!
//! The simulator keeps the bucket in this process, so absolute RSS says
//! little; the peak is reset (`5` into `/proc/self/clear_refs`) right before
//! each measured step and the growth over the RSS at that moment reported.
//!
//! ```text
//! cargo run --release -p slipstream-applied --example relist_footprint -- [KEYS] [RELIST_MEMORY_BYTES] [FJALL_CACHE_BYTES]
//! ```
//!
//! Defaults: 100000 keys, 4 MiB, 4 MiB. The fold's scan fills fjall's block
//! cache up to its capacity during the repair; a small cache keeps that
//! store-side share out of the listing's figure.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use slipstream_applied::{
    AppliedConfig, AppliedWatch, OnExpiry, RepairMode, ScratchPolicy, StopReason, handlers,
};
use slipstream_fjall::{FjallOptions, FjallStore};
use slipstream_kv::{
    Connection, KvEntry, KvError, KvStore, KvUpdate, KvWatcher, KvWriter, Retention, StoreConfig,
    VersionToken, WatchCursor, WatchEvent, WatchScope, WatchStart,
};
use slipstream_memory::{MemoryServer, MemoryStore, MemoryWatch};
use slipstream_snapshot::{Durability, SnapshotStore};
use tokio_util::sync::CancellationToken;

const BUCKET: &str = "t5";

fn key(i: u64) -> String {
    format!("key.{i:08}")
}

/// (VmRSS, VmHWM) of this process in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .expect("a VmRSS/VmHWM line")
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Reset the peak RSS to the current RSS and return that RSS (KiB).
fn reset_peak() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("write /proc/self/clear_refs");
    rss_kib().0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Ends the measurement when the engine opens its re-list watch: the
/// repair (listing, merge-join, deletes) is over by then.
struct Probe {
    inner: MemoryStore,
    relists: AtomicUsize,
    started: Instant,
    baseline: u64,
    /// (repair time, peak RSS growth in KiB)
    measured: Arc<Mutex<Option<(Duration, u64)>>>,
    token: CancellationToken,
}

impl KvWatcher for Probe {
    type WatchStream = MemoryWatch;

    async fn watch(&self, scope: &WatchScope, start: WatchStart) -> Result<MemoryWatch, KvError> {
        if start == WatchStart::Relist && self.relists.fetch_add(1, Ordering::SeqCst) == 1 {
            let elapsed = self.started.elapsed();
            let (_, peak) = rss_kib();
            *self.measured.lock().unwrap() = Some((elapsed, peak.saturating_sub(self.baseline)));
            self.token.cancel();
        }
        self.inner.watch(scope, start).await
    }

    async fn retention(&self) -> Result<Retention, KvError> {
        self.inner.retention().await
    }
}

async fn put(kv: &MemoryStore, i: u64, value: &Bytes) -> u64 {
    kv.writer().put(&key(i), value.clone()).await.unwrap()
}

/// A fjall fold holding keys `0..keys` at revisions `1..=keys`, cursor at
/// `keys`: what a node synced to the freshly filled bucket holds.
fn synced_fold(dir: &std::path::Path, keys: u64, value: &Bytes, cache_bytes: u64) -> FjallStore {
    let options = FjallOptions {
        cache_bytes,
        ..FjallOptions::with_durability(Durability::NoFsync)
    };
    let (_, mut store) = FjallStore::open(dir, &options).unwrap();
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..keys {
        batch.push(KvUpdate::Put(KvEntry {
            key: key(i),
            value: value.clone(),
            version: VersionToken::from_u64(i + 1),
            created: None,
            expires: None,
        }));
        if batch.len() == batch.capacity() || i + 1 == keys {
            store.apply(&batch, &WatchCursor::at(i + 1)).unwrap();
            batch.clear();
        }
    }
    store.settle().unwrap();
    store
}

/// Drain a bare state-sync of the bucket; the peak RSS growth (KiB).
async fn bare_listing_growth(kv: &MemoryStore) -> (u64, Duration) {
    let baseline = reset_peak();
    let started = Instant::now();
    let mut watch = kv
        .watch(&WatchScope::All, WatchStart::Relist)
        .await
        .unwrap();
    let mut live = 0u64;
    while let Some(event) = watch.next().await {
        match event.unwrap() {
            WatchEvent::Update(u) => live += u64::from(u.is_live()),
            WatchEvent::CaughtUp => break,
        }
    }
    let took = started.elapsed();
    drop(watch);
    assert!(live > 0);
    (rss_kib().1.saturating_sub(baseline), took)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args.next().map_or(100_000, |a| a.parse().expect("KEYS"));
    let relist_memory: usize = args
        .next()
        .map_or(4 << 20, |a| a.parse().expect("RELIST_MEMORY_BYTES"));
    let cache_bytes: u64 = args
        .next()
        .map_or(4 << 20, |a| a.parse().expect("FJALL_CACHE_BYTES"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let value = Bytes::from(vec![b'v'; 16]);
    let deleted = keys / 100;

    let setup = Instant::now();
    let (server, kv) = rt.block_on(async {
        let server = MemoryServer::new();
        let conn = server.connection();
        conn.connect().await.unwrap();
        let kv = conn
            .store_with_config(&StoreConfig::new(BUCKET))
            .await
            .unwrap();
        for i in 0..keys {
            put(&kv, i, &value).await;
        }
        (server, kv)
    });
    // Before the gap's purge frees memory the allocator could hand back.
    let (bare, bare_took) = rt.block_on(bare_listing_growth(&kv));
    let store = synced_fold(&tmp.path().join("fold"), keys, &value, cache_bytes);
    rt.block_on(async {
        // Offline: every key rewritten, every 100th deleted and purged.
        for i in 0..keys {
            put(&kv, i, &value).await;
        }
        for i in (0..keys).step_by(100) {
            kv.writer().delete(&key(i)).await.unwrap();
            server.bucket(BUCKET).purge_subject(&key(i)).unwrap();
        }
        // Only superseded messages go; the head passes the fold's cursor.
        server.bucket(BUCKET).purge_below(keys + 2).unwrap();
    });
    println!(
        "setup: {keys} keys, {deleted} deleted in the gap, {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let token = CancellationToken::new();
    let measured = Arc::default();
    let baseline = reset_peak();
    let probe = Probe {
        inner: kv.clone(),
        relists: AtomicUsize::new(0),
        started: Instant::now(),
        baseline,
        measured: Arc::clone(&measured),
        token: token.clone(),
    };
    let config = AppliedConfig::new(WatchScope::All)
        .store(store)
        .shutdown(token)
        .on_expiry(OnExpiry::Repair(RepairMode::Relist))
        .scratch(ScratchPolicy {
            dir: scratch.clone(),
            relist_memory,
        });
    let parse = |u: &KvUpdate| Some(u.is_live());
    let apply = |_: std::vec::Drain<'_, bool>| {};
    let finished = rt.block_on(async {
        let watch = AppliedWatch::new(probe, config);
        tokio::spawn(watch.run(handlers(parse, apply)))
            .await
            .unwrap()
    });
    let stopped = finished.result.expect("the repair succeeds");
    assert_eq!(stopped.reason, StopReason::Shutdown);
    let (took, growth) = measured
        .lock()
        .unwrap()
        .take()
        .expect("the repair reached the re-list");
    let store = finished.store.unwrap();
    assert_eq!(
        store.len(),
        keys - deleted,
        "exactly the vanished keys went"
    );
    assert!(std::fs::read_dir(&scratch).unwrap().next().is_none());
    store.close().unwrap();

    println!(
        "bare state-sync drain of the bucket: {:.2} s, peak RSS growth {:.1} MiB",
        bare_took.as_secs_f64(),
        mib(bare)
    );
    println!(
        "relist repair, relist_memory {relist_memory} B, fjall cache {cache_bytes} B: {:.2} s, peak RSS growth {:.1} MiB",
        took.as_secs_f64(),
        mib(growth)
    );
}
