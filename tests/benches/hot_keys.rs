//! Issue 18's hot-key target, against a live nats-server: `KEYS` keys all
//! rewritten by four writers as fast as the server takes it for
//! `SLIPSTREAM_BENCH_HOT_SECS` seconds (default 20), on a bucket made as
//! nats-py makes it and as nats.go makes it, into every store. A node
//! follows from a synced fold the whole time. Reported per run: writes,
//! repairs (a relist opens a listing and a state-sync), the time from the
//! writers stopping to the node being Ready at the stream's last sequence,
//! and whether the fold then equals the bucket.
//!
//! A scenario, not a statistical benchmark: one run per row, printed as a
//! table. `NATS_SERVER_BIN=$(cargo xtask nats-server) cargo bench -p
//! slipstream-it --bench hot_keys`; `cargo xtask bench` runs it too.
//! Arguments after `--` (criterion's) are ignored.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use slipstream_applied::{AppliedConfig, AppliedWatch, StatusReceiver, StoreSlot, handlers};
use slipstream_fjall::FjallStore;
use slipstream_it::{Admin, KvClient, NatsServer, TempDir, connect, live_values, open};
use slipstream_kv::{
    KvError, KvStore, KvUpdate, KvWatcher, KvWriter, Retention, StoreConfig, WatchScope, WatchStart,
};
use slipstream_nats::{NatsBucket, NatsWatch};
use slipstream_rocksdb::RocksDbStore;
use slipstream_snapshot::{AppendLogStore, SnapshotStore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const KEYS: u64 = 7;
const WRITERS: u64 = 4;
const BUCKET: &str = "hot";
/// Bounds every wait on the node, generously: this is a report, not a test.
const BOUND: Duration = Duration::from_secs(60);

fn hot_for() -> Duration {
    let secs = std::env::var("SLIPSTREAM_BENCH_HOT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}

/// The bucket's watcher, counting the state-sync watches the engine opens.
#[derive(Clone)]
struct Counting {
    bucket: NatsBucket,
    state_syncs: Arc<AtomicU64>,
}

impl KvWatcher for Counting {
    type WatchStream = NatsWatch;

    async fn watch(&self, scope: &WatchScope, start: WatchStart) -> Result<NatsWatch, KvError> {
        if matches!(start, WatchStart::Relist) {
            self.state_syncs.fetch_add(1, Ordering::SeqCst);
            if std::env::var_os("SLIPSTREAM_BENCH_TRACE").is_some() {
                eprintln!("state-sync at {:?}", std::time::SystemTime::now());
            }
        }
        self.bucket.watch(scope, start).await
    }

    async fn retention(&self) -> Result<Retention, KvError> {
        self.bucket.retention().await
    }
}

/// Wait until the node is Ready with its cursor at `revision`.
async fn ready_at(status: &mut StatusReceiver, revision: u64) {
    tokio::time::timeout(
        BOUND,
        status.wait_for(|s| s.is_ready() && s.applied == Some(revision)),
    )
    .await
    .unwrap()
    .unwrap();
}

struct Outcome {
    writes: u64,
    repairs: u64,
    ready_after: Duration,
    equal: bool,
}

async fn run<S: SnapshotStore + StoreSlot>(client: KvClient) -> Outcome {
    let server = NatsServer::start().await;
    let admin = Admin::connect(&server.url()).await;
    admin
        .api(
            &format!("STREAM.CREATE.KV_{BUCKET}"),
            client.stream_config(BUCKET),
        )
        .await
        .unwrap();
    let conn = connect(&server.url()).await;
    let bucket = open(&conn, StoreConfig::new(BUCKET)).await;
    for k in 0..KEYS {
        bucket
            .writer()
            .put(&format!("k{k}"), Bytes::from_static(b"v"))
            .await
            .unwrap();
    }
    let dir = TempDir::new("hot-keys");
    let store = S::open(dir.path(), &S::Options::default()).unwrap().1;
    let state_syncs = Arc::new(AtomicU64::new(0));
    let watcher = Counting {
        bucket: bucket.clone(),
        state_syncs: Arc::clone(&state_syncs),
    };
    let token = CancellationToken::new();
    let config = AppliedConfig::new(WatchScope::All)
        .store(store)
        .shutdown(token.clone());
    let watch = AppliedWatch::new(watcher, config);
    let mut status = watch.status();
    let fold = Arc::new(Mutex::new(BTreeMap::<String, Bytes>::new()));
    let into = Arc::clone(&fold);
    let parse = |u: &KvUpdate| Some(u.clone());
    let apply = move |batch: std::vec::Drain<'_, KvUpdate>| {
        let mut fold = into.lock().unwrap();
        for u in batch {
            match u {
                KvUpdate::Put(e) if !e.value.is_empty() => {
                    fold.insert(e.key, e.value);
                }
                other => {
                    fold.remove(other.key());
                }
            }
        }
    };
    let node = tokio::spawn(watch.run(handlers(parse, apply)));
    ready_at(&mut status, KEYS).await;
    let before = state_syncs.load(Ordering::SeqCst);

    let until = Instant::now() + hot_for();
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let w = bucket.writer();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    let key = format!("k{}", (n * 3 + writer) % KEYS);
                    w.put(&key, Bytes::from(n.to_string())).await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut writes = 0;
    for w in writers {
        writes += w.await.unwrap();
    }
    let stopped = Instant::now();
    if std::env::var_os("SLIPSTREAM_BENCH_TRACE").is_some() {
        eprintln!("writers stopped at {:?}", std::time::SystemTime::now());
    }
    let last = bucket.watcher().retention().await.unwrap().last_revision;
    ready_at(&mut status, last).await;
    let ready_after = stopped.elapsed();
    // Let a due repair run (it waits for 300 ms of stillness).
    tokio::time::sleep(Duration::from_secs(1)).await;
    ready_at(&mut status, last).await;
    let repairs = (state_syncs.load(Ordering::SeqCst) - before) / 2;
    let listing = live_values(&bucket).await;
    let equal = *fold.lock().unwrap() == listing;
    token.cancel();
    let finished = tokio::time::timeout(BOUND, node).await.unwrap().unwrap();
    finished.result.unwrap();
    Outcome {
        writes,
        repairs,
        ready_after,
        equal,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "hot keys: {KEYS} keys, {WRITERS} writers, {:?} of writes per run",
        hot_for()
    );
    println!("| bucket | store | writes | repairs | Ready after writes stop | fold = bucket |");
    println!("| --- | --- | ---: | ---: | ---: | --- |");
    for (client, label) in [(KvClient::Python, "nats-py"), (KvClient::Go, "nats.go")] {
        for (store, outcome) in [
            ("append-log", rt.block_on(run::<AppendLogStore>(client))),
            ("fjall", rt.block_on(run::<FjallStore>(client))),
            ("rocksdb", rt.block_on(run::<RocksDbStore>(client))),
        ] {
            println!(
                "| {label} | {store} | {} | {} | {:.1} ms | {} |",
                outcome.writes,
                outcome.repairs,
                outcome.ready_after.as_secs_f64() * 1e3,
                if outcome.equal { "yes" } else { "NO" }
            );
        }
    }
}
