//! The gaps the repair and restore tests open in a node's watch: an
//! offline gap on a plain bucket whose delete marker was purged, and an
//! offline gap on a `max_age` bucket that aged out past an artifact.

use std::path::{Path, PathBuf};
use std::time::Duration;

use slipstream_kv::{KvStore, KvWriter, StoreConfig};
use slipstream_memory::{ManualClock, MemoryServer, MemoryStore};
use slipstream_snapshot::SnapshotStore;

use super::node::{
    Fold, Running, bucket, bucket_with, export_from, put, run_to, synced, synced_store, truth,
    wait_status,
};
use super::{App, FaultStore};

pub const HOUR: Duration = Duration::from_secs(3600);
pub const MINUTE: Duration = Duration::from_secs(60);

/// As [`run_to`], once `key` has also left what the application saw: a
/// repair that a gap on a bucket evicting nothing made due runs once the
/// bucket is quiet, after the node was first Ready at `revision`.
pub async fn run_to_without(run: Running, revision: u64, app: &App, key: &str) -> FaultStore {
    let mut status = run.status.clone();
    wait_status(&mut status, |s| {
        s.is_ready() && s.applied == Some(revision) && !app.seen().fold.contains_key(key)
    })
    .await;
    run_to(run, revision).await
}

/// A node synced at revision 4 (`a`..`d`); while it is down, `a` is deleted
/// and its subject purged (the marker is gone), `b`, `c`, `d` are rewritten,
/// `e` is created, and the head is purged past the node's cursor. Returns
/// the bucket's last revision.
pub async fn offline_gap_with_a_purged_delete(
    server: &MemoryServer,
    kv: &MemoryStore,
    dir: &Path,
    app: &App,
) -> (FaultStore, u64) {
    for key in ["a", "b", "c", "d"] {
        put(kv, key, "v1").await;
    }
    let store = synced_store(kv, dir, app).await;
    assert_eq!(store.cursor().revision(), Some(4));

    put(kv, "b", "v2").await; // 5
    put(kv, "b", "v3").await; // 6
    put(kv, "c", "v2").await; // 7
    put(kv, "d", "v2").await; // 8
    kv.writer().delete("a").await.unwrap(); // 9
    server.bucket("cfg").purge_subject("a").unwrap();
    let last = put(kv, "e", "v1").await; // 10
    // Only superseded messages go: the head passes the cursor's resume point.
    server.bucket("cfg").purge_below(6).unwrap();
    (store, last)
}

/// What a test of [`offline_gap_with_a_purged_delete`] keeps alive: the
/// server and the store's directory.
pub struct Keep {
    pub server: MemoryServer,
    pub dir: tempfile::TempDir,
}

/// A node's store after [`offline_gap_with_a_purged_delete`], with the
/// bucket, the application and the bucket's last revision.
pub async fn gap() -> (Keep, MemoryStore, App, FaultStore, u64) {
    let (server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let app = App::new();
    let (store, last) = offline_gap_with_a_purged_delete(&server, &kv, dir.path(), &app).await;
    (Keep { server, dir }, kv, app, store, last)
}

/// The max_age scenario, over the simulated clock: a node folds
/// `a`, `b`, `d` (revisions 1..=3) and goes down; a gap write `g` and a
/// real delete of `d` follow; another node exports at 5; then everything
/// up to 5 ages out and `h` (6) is written. Returns the bucket, the down
/// node's store, the exporter's fold and the last revision.
pub struct AgedOut {
    pub server: MemoryServer,
    pub kv: MemoryStore,
    pub store: FaultStore,
    pub exported: Fold,
    pub last: u64,
}

/// Open the [`AgedOut`] gap: the nodes' stores under `work`, the artifact
/// in `artifacts`.
pub async fn aged_out_gap(work: &Path, artifacts: &Path) -> AgedOut {
    let server = MemoryServer::with_clock(ManualClock::new());
    let kv = bucket_with(&server, StoreConfig::new("cfg").max_age(HOUR)).await;
    put(&kv, "a", "v1").await; // 1
    put(&kv, "b", "v1").await; // 2
    put(&kv, "d", "v1").await; // 3
    let store = synced(&kv, &work.join("node"), &App::new(), 3).await;
    server.clock().advance(10 * MINUTE);
    put(&kv, "g", "v1").await; // 4: the gap write
    kv.writer().delete("d").await.unwrap(); // 5: the real delete
    let exported = export_from(&kv, work, artifacts, "at-5", 5).await;
    server.clock().advance(HOUR);
    let last = put(&kv, "h", "v1").await; // 6
    let listed = truth(&kv).await;
    assert!(
        !listed.contains_key("a") && !listed.contains_key("g"),
        "a and the gap write aged out"
    );
    AgedOut {
        server,
        kv,
        store,
        exported,
        last,
    }
}

/// Every non-empty file under `dir`, at any depth, sorted.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if std::fs::metadata(&path).unwrap().len() > 0 {
            files.push(path);
        }
    }
    files.sort();
    files
}
