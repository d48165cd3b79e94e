//! The applied-watch engine against a live nats-server: a node folds a
//! bucket into a store, is killed (its engine dropped mid-flight, no
//! graceful shutdown) and restarted, and receives only the delta. Counting
//! deliveries is the point: a full replay would also converge.

// Test helpers: a failed expectation is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use slipstream_applied::{AppliedConfig, AppliedWatch, Finished, handlers};
use slipstream_fjall::FjallStore;
use slipstream_it::{NatsServer, TempDir, connect, open};
use slipstream_kv::{KvStore, KvUpdate, KvWriter, StoreConfig, WatchCursor, WatchScope};
use slipstream_nats::NatsBucket;
use slipstream_snapshot::{AppendLogStore, SnapshotError, SnapshotStore};
use tokio_util::sync::CancellationToken;

const BOUND: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Node {
    parsed: Vec<u64>,
    fold: BTreeMap<String, Bytes>,
}

/// Open `dir`, waiting while a killed node's store handle is still being
/// released by its blocking thread.
async fn open_store<S: SnapshotStore>(dir: &Path) -> (WatchCursor, S) {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match S::open(dir, &S::Options::default()) {
            Ok(opened) => return opened,
            Err(SnapshotError::Locked { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("open store: {e}"),
        }
    }
}

/// Start a node on `store`; returns the task, its token and the shared
/// record of what it parsed and applied.
fn start<S: SnapshotStore>(
    bucket: &NatsBucket,
    store: S,
    node: &Arc<Mutex<Node>>,
) -> (
    tokio::task::JoinHandle<Finished<S>>,
    CancellationToken,
    slipstream_applied::StatusReceiver,
) {
    let token = CancellationToken::new();
    let config = AppliedConfig::new(WatchScope::All)
        .store(store)
        .shutdown(token.clone());
    let watch = AppliedWatch::new(bucket.watcher(), config);
    let status = watch.status();
    let n1 = Arc::clone(node);
    let n2 = Arc::clone(node);
    let parse = move |u: &KvUpdate| {
        n1.lock().unwrap().parsed.push(u.revision().unwrap_or(0));
        Some(match u {
            KvUpdate::Put(e) => (e.key.clone(), Some(e.value.clone())),
            other => (other.key().to_owned(), None),
        })
    };
    let apply = move |batch: std::vec::Drain<'_, (String, Option<Bytes>)>| {
        let mut n = n2.lock().unwrap();
        for (key, value) in batch {
            match value {
                Some(v) => n.fold.insert(key, v),
                None => n.fold.remove(&key),
            };
        }
    };
    let task = tokio::spawn(watch.run(handlers(parse, apply)));
    (task, token, status)
}

async fn wait_applied(status: &mut slipstream_applied::StatusReceiver, last: u64) {
    tokio::time::timeout(
        BOUND,
        status.wait_for(|s| s.is_ready() && s.applied == Some(last)),
    )
    .await
    .expect("node never caught up")
    .expect("node stopped");
}

async fn kill_restart_receives_only_the_delta<S: SnapshotStore>(label: &str) {
    let server = NatsServer::start().await;
    let conn = connect(&server.url()).await;
    let bucket = open(&conn, StoreConfig::new(format!("e2e_{label}"))).await;
    let w = bucket.writer();
    let mut last = 0;
    for i in 0..300 {
        last = w
            .put(&format!("k{}", i % 120), Bytes::from(format!("v{i}")))
            .await
            .unwrap();
    }
    w.delete("k7").await.unwrap();
    let dir = TempDir::new(label);
    let fold_dir = dir.path().join("fold");

    // First life: hydrate, then die without a graceful shutdown.
    let node = Arc::new(Mutex::new(Node::default()));
    let (_, store) = open_store::<S>(&fold_dir).await;
    let (task, _token, mut status) = start(&bucket, store, &node);
    last += 1;
    wait_applied(&mut status, last).await;
    task.abort();
    assert!(task.await.is_err_and(|e| e.is_cancelled()));
    let first_deliveries = node.lock().unwrap().parsed.len();
    assert_eq!(first_deliveries, 120, "state-sync: one message per key");

    // While it is down: 40 changes.
    for i in 0..40 {
        last = w
            .put(&format!("k{}", i * 3), Bytes::from(format!("new{i}")))
            .await
            .unwrap();
    }
    w.delete("k1").await.unwrap();
    last += 1;

    // Second life: resume from the store's own cursor.
    let (cursor, store) = open_store::<S>(&fold_dir).await;
    assert_eq!(
        cursor.revision(),
        Some(301),
        "the killed node committed its fold"
    );
    let restarted = Arc::new(Mutex::new(Node::default()));
    restarted.lock().unwrap().fold = store
        .range("")
        .unwrap()
        .into_iter()
        .map(|(k, e)| (k, e.value))
        .collect();
    let (task, token, mut status) = start(&bucket, store, &restarted);
    wait_applied(&mut status, last).await;
    token.cancel();
    let finished = task.await.unwrap();
    assert_eq!(finished.result.unwrap().cursor.revision(), Some(last));

    let truth = slipstream_it::live_values(&bucket).await;
    let seen = restarted.lock().unwrap();
    let expected: Vec<u64> = (302..=last).collect();
    assert_eq!(seen.parsed, expected, "only the delta, in order");
    assert_eq!(seen.fold, truth, "the application's fold converged");
    let stored: BTreeMap<String, Bytes> = finished
        .store
        .unwrap()
        .range("")
        .unwrap()
        .into_iter()
        .map(|(k, e)| (k, e.value))
        .collect();
    assert_eq!(stored, truth, "the store's fold converged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_append_log_node_restarts_with_only_the_delta() {
    kill_restart_receives_only_the_delta::<AppendLogStore>("applog").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_fjall_node_restarts_with_only_the_delta() {
    kill_restart_receives_only_the_delta::<FjallStore>("fjall").await;
}
