//! R1–R5, R9 over the simulator with an append-log store: relist repair,
//! repair mode None, refusal on an evicting bucket, in-process repair of an
//! overrun watch, the mass-delete guard, and delete-before-put order.

// Helpers outside #[test] fns panic on failure too: that is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{App, DEADLINE, FaultPlan, FaultStore, fold_of, open_store};
use slipstream_applied::{
    AppliedConfig, AppliedError, AppliedWatch, Finished, MassDeletePolicy, OnExpiry, Phase,
    RepairCause, RepairMode, ScratchPolicy, StatusReceiver, Stopped, StoreSlot, WatchStatus,
};
use slipstream_kv::{
    Connection, ExpiryReason, KvError, KvReader, KvStore, KvWatcher, KvWriter, Retention,
    StoreConfig, WatchEvent, WatchScope, WatchStart,
};
use slipstream_memory::{ManualClock, MemoryServer, MemoryStore, MemoryWatch};
use slipstream_snapshot::SnapshotStore;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

type Fold = BTreeMap<String, (Bytes, Option<u64>)>;

async fn bucket_with(server: &MemoryServer, config: StoreConfig) -> MemoryStore {
    let conn = server.connection();
    conn.connect().await.unwrap();
    conn.store_with_config(&config).await.unwrap()
}

async fn bucket() -> (MemoryServer, MemoryStore) {
    let server = MemoryServer::new();
    let kv = bucket_with(&server, StoreConfig::new("cfg")).await;
    (server, kv)
}

async fn put(kv: &MemoryStore, key: &str, value: &str) -> u64 {
    kv.writer()
        .put(key, Bytes::from(value.to_owned()))
        .await
        .unwrap()
}

async fn wait_status(rx: &mut StatusReceiver, f: impl FnMut(&WatchStatus) -> bool) -> WatchStatus {
    timeout(DEADLINE, rx.wait_for(f))
        .await
        .expect("status deadline")
        .expect("status sender alive")
        .clone()
}

/// The bucket's live entries: key -> (value, revision).
async fn truth(kv: &MemoryStore) -> Fold {
    kv.scan("")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key, (e.value, e.version.as_u64())))
        .collect()
}

struct Running {
    task: JoinHandle<Finished<FaultStore>>,
    status: StatusReceiver,
    token: CancellationToken,
}

fn start<W: KvWatcher + 'static>(
    watcher: W,
    store: FaultStore,
    app: &App,
    tune: impl FnOnce(AppliedConfig<FaultStore>) -> AppliedConfig<FaultStore>,
) -> Running {
    let token = CancellationToken::new();
    let config = tune(
        AppliedConfig::new(WatchScope::All)
            .store(store)
            .shutdown(token.clone()),
    );
    let watch = AppliedWatch::new(watcher, config);
    let status = watch.status();
    let task = tokio::spawn(watch.run(app.handlers()));
    Running {
        task,
        status,
        token,
    }
}

fn repair(mode: RepairMode) -> impl FnOnce(AppliedConfig<FaultStore>) -> AppliedConfig<FaultStore> {
    move |c| c.on_expiry(OnExpiry::Repair(mode))
}

/// Sync a fresh node to the bucket, stop it and hand back its store.
async fn synced_store(kv: &MemoryStore, dir: &std::path::Path, app: &App) -> FaultStore {
    let (_, store) = open_store(dir, &FaultPlan::new());
    let mut run = start(kv.watcher(), store, app, |c| c);
    wait_status(&mut run.status, WatchStatus::is_ready).await;
    run.token.cancel();
    run.task.await.unwrap().store.unwrap()
}

/// Run until the status is ready at `revision`, then stop; hand back the
/// store. Fails if the watch ends on its own first.
async fn run_to(mut run: Running, revision: u64) -> FaultStore {
    wait_status(&mut run.status, |s| {
        s.is_ready() && s.applied == Some(revision)
    })
    .await;
    assert!(
        !run.task.is_finished(),
        "the watch goes on after the repair"
    );
    run.token.cancel();
    let finished = run.task.await.unwrap();
    finished.result.expect("clean stop");
    finished.store.unwrap()
}

/// As [`run_to`], once `key` has also left what the application saw: a
/// repair that a gap on a bucket evicting nothing made due runs once the
/// bucket is quiet, after the node was first Ready at `revision`.
async fn run_to_without(run: Running, revision: u64, app: &App, key: &str) -> FaultStore {
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
async fn offline_gap_with_a_purged_delete(
    server: &MemoryServer,
    kv: &MemoryStore,
    dir: &std::path::Path,
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
struct Keep {
    server: MemoryServer,
    dir: tempfile::TempDir,
}

/// A node's store after [`offline_gap_with_a_purged_delete`], with the
/// bucket, the application and the bucket's last revision.
async fn gap() -> (Keep, MemoryStore, App, FaultStore, u64) {
    let (server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let app = App::new();
    let (store, last) = offline_gap_with_a_purged_delete(&server, &kv, dir.path(), &app).await;
    (Keep { server, dir }, kv, app, store, last)
}

#[tokio::test(start_paused = true)]
async fn a_purged_delete_in_an_offline_gap_leaves_the_fold_with_relist() {
    let (_keep, kv, app, store, last) = gap().await;

    let watcher = Hooked::new(&kv, Hook::Observe);
    let (status, phases) = (Arc::clone(&watcher.status), Arc::clone(&watcher.phases));
    let run = start(watcher, store, &app, repair(RepairMode::Relist));
    *status.lock().unwrap() = Some(run.status.clone());
    let store = run_to(run, last).await;
    assert_eq!(
        *phases.lock().unwrap(),
        [Phase::Repairing, Phase::Repairing],
        "the listing and the re-list open while the status says Repairing"
    );
    let fold = fold_of(&store);
    assert!(!fold.contains_key("a"), "the vanished key left the fold");
    assert_eq!(fold, truth(&kv).await, "the fold equals the bucket");
    assert_eq!(app.seen().fold, fold, "the application saw the same fold");
    assert!(
        app.seen().violations.is_empty(),
        "{:?}",
        app.seen().violations
    );
}

#[tokio::test(start_paused = true)]
async fn repair_mode_none_keeps_a_key_whose_delete_was_purged_in_the_gap() {
    let (_keep, kv, app, store, last) = gap().await;

    let run = start(kv.watcher(), store, &app, repair(RepairMode::None));
    let store = run_to(run, last).await;
    let fold = fold_of(&store);
    // The pinned divergence: without deletes the purged key persists.
    assert_eq!(fold.get("a"), Some(&(Bytes::from_static(b"v1"), Some(1))));
    let mut expected = truth(&kv).await;
    expected.insert("a".into(), (Bytes::from_static(b"v1"), Some(1)));
    assert_eq!(fold, expected, "everything else is re-listed");
}

#[tokio::test(start_paused = true)]
async fn relist_is_refused_on_a_bucket_where_a_key_aged_out_and_the_fold_is_unchanged() {
    let server = MemoryServer::with_clock(ManualClock::new());
    let hour = Duration::from_secs(3600);
    let kv = bucket_with(&server, StoreConfig::new("cfg").max_age(hour)).await;
    let dir = tempfile::tempdir().unwrap();
    let app = App::new();
    put(&kv, "a", "v1").await; // 1
    put(&kv, "b", "v1").await; // 2
    let store = synced_store(&kv, dir.path(), &app).await;
    let before = fold_of(&store);

    server.clock().advance(Duration::from_secs(10 * 60));
    put(&kv, "b", "v2").await; // 3
    server.clock().advance(Duration::from_secs(40 * 60));
    put(&kv, "b", "v3").await; // 4
    put(&kv, "c", "v1").await; // 5
    // 1..=3 age out: `a`'s only value is gone, the head passes the cursor.
    server.clock().advance(Duration::from_secs(25 * 60));
    assert!(!truth(&kv).await.contains_key("a"), "a aged out");

    let run = start(kv.watcher(), store, &app, repair(RepairMode::Relist));
    let finished = run.task.await.unwrap();
    match &finished.result {
        Err(AppliedError::RelistRefused {
            reason: RepairCause::Expired(ExpiryReason::BelowFirstSequence { revision: 2, .. }),
            cursor,
        }) => assert_eq!(cursor.revision(), Some(2)),
        other => panic!("expected RelistRefused, got {other:?}"),
    }
    let store = finished.store.unwrap();
    assert_eq!(fold_of(&store), before, "the fold stays as committed");
    assert_eq!(store.cursor().revision(), Some(2));
    assert!(
        store.cursor().seen_evicting(),
        "the eviction memo is committed with the fold (R5)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_running_all_scope_watch_overrun_mid_watch_is_repaired_in_process() {
    let (server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let app = App::new();
    for key in ["a", "b", "c", "d"] {
        put(&kv, key, "v1").await;
    }
    let store = synced_store(&kv, dir.path(), &app).await;
    // Resume as a delta watch (guarded), then overrun it.
    let mut run = start(kv.watcher(), store, &app, repair(RepairMode::Relist));
    wait_status(&mut run.status, WatchStatus::is_ready).await;
    server.faults().stall_watches();
    put(&kv, "b", "v2").await; // 5
    put(&kv, "b", "v3").await; // 6
    put(&kv, "c", "v2").await; // 7
    kv.writer().delete("a").await.unwrap(); // 8
    server.bucket("cfg").purge_subject("a").unwrap();
    let last = put(&kv, "e", "v1").await; // 9
    server.bucket("cfg").purge_below(6).unwrap();
    server.faults().release_watches();

    // Only a repair removes `a`: its delete marker was purged.
    let store = run_to_without(run, last, &app, "a").await;
    let fold = fold_of(&store);
    assert!(!fold.contains_key("a"));
    assert_eq!(fold, truth(&kv).await);
    assert_eq!(app.seen().fold, fold);
}

/// A node synced at revision 4 (`a`..`d`); while it is down `a`, `b`, `c`
/// are deleted with their subjects purged and the head passes the cursor.
async fn offline_gap_deleting_most_of_the_fold(
    server: &MemoryServer,
    kv: &MemoryStore,
    dir: &std::path::Path,
    app: &App,
) -> (FaultStore, u64) {
    for key in ["a", "b", "c", "d"] {
        put(kv, key, "v1").await;
    }
    let store = synced_store(kv, dir, app).await;
    for key in ["a", "b", "c"] {
        kv.writer().delete(key).await.unwrap();
        server.bucket("cfg").purge_subject(key).unwrap();
    }
    put(kv, "d", "v2").await; // 8
    let last = put(kv, "d", "v3").await; // 9
    server.bucket("cfg").purge_below(9).unwrap();
    (store, last)
}

#[tokio::test(start_paused = true)]
async fn a_repair_that_would_delete_most_of_the_fold_is_held() {
    let (server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let app = App::new();
    let (store, _) = offline_gap_deleting_most_of_the_fold(&server, &kv, dir.path(), &app).await;
    let before = fold_of(&store);

    let run = start(kv.watcher(), store, &app, repair(RepairMode::Relist));
    let finished = run.task.await.unwrap();
    match &finished.result {
        Err(AppliedError::MassDeleteHeld {
            deletions: 3,
            fold_len: 4,
            cursor,
        }) => assert_eq!(cursor.revision(), Some(4)),
        other => panic!("expected MassDeleteHeld, got {other:?}"),
    }
    let store = finished.store.unwrap();
    assert_eq!(fold_of(&store), before, "nothing was deleted");
    assert_eq!(store.cursor().revision(), Some(4));
}

#[tokio::test(start_paused = true)]
async fn a_held_mass_delete_proceeds_with_the_explicit_override() {
    let (server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let app = App::new();
    let (store, last) = offline_gap_deleting_most_of_the_fold(&server, &kv, dir.path(), &app).await;

    let run = start(kv.watcher(), store, &app, |c| {
        repair(RepairMode::Relist)(c).mass_delete(MassDeletePolicy::Allow)
    });
    let store = run_to(run, last).await;
    let fold = fold_of(&store);
    assert_eq!(fold.keys().collect::<Vec<_>>(), ["d"]);
    assert_eq!(fold, truth(&kv).await);
}

/// What a [`Hooked`] watcher does besides watching the bucket.
enum Hook {
    /// Write `key` right before the `n`th state-sync watch opens: a key
    /// recreated between the listing and the re-list.
    RecreateBeforeRelist { n: usize, key: &'static str },
    /// Delete the bucket, create it again and write `key` in it right
    /// before the `n`th state-sync watch opens.
    RecreateBucketBeforeRelist {
        n: usize,
        server: MemoryServer,
        key: &'static str,
    },
    /// Right before the `n`th state-sync watch opens, delete `c`, rewrite
    /// `b`, `d` and `e`, and purge the stream up to the first rewrite: the
    /// delete marker goes, and so does every put a listing saw.
    PurgeBeforeRelist { n: usize, server: MemoryServer },
    /// Rewrite `key` right after the `n`th state-sync watch opened: the
    /// message of `key` it was created over goes before it is delivered.
    RewriteAfterOpen { n: usize, key: &'static str },
    /// Every state-sync watch (the listing) fails to open: the bucket is
    /// gone.
    FailListing,
    /// Every retention read fails: the bucket is gone.
    FailRetention,
    /// The first `n` state-sync watches time out, as a listing's consumer
    /// create does while the server it asks is restarting.
    FlakyListing { n: usize },
    /// The first `n` state-sync watches fail as a listing overrun by
    /// retention does (its re-created consumer's frontier is below the
    /// first sequence).
    OverrunListing { n: usize },
    /// The first `n` retention reads made while the status says
    /// `Repairing` find the server unreachable.
    FlakyRetention { n: usize },
    /// Nothing besides recording the phase.
    Observe,
}

struct Hooked {
    inner: MemoryStore,
    relists: AtomicUsize,
    retention_failures: AtomicUsize,
    hook: Hook,
    /// The engine's status, once started, and its phase at each state-sync
    /// watch call.
    status: Arc<Mutex<Option<StatusReceiver>>>,
    phases: Arc<Mutex<Vec<Phase>>>,
}

impl Hooked {
    fn new(inner: &MemoryStore, hook: Hook) -> Self {
        Self {
            inner: inner.clone(),
            relists: AtomicUsize::new(0),
            retention_failures: AtomicUsize::new(0),
            hook,
            status: Arc::default(),
            phases: Arc::default(),
        }
    }
}

impl KvWatcher for Hooked {
    type WatchStream = MemoryWatch;

    async fn watch(&self, scope: &WatchScope, start: WatchStart) -> Result<MemoryWatch, KvError> {
        if start == WatchStart::Relist {
            let nth = self.relists.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(rx) = self.status.lock().unwrap().as_ref() {
                let phase = rx.borrow().phase;
                self.phases.lock().unwrap().push(phase);
            }
            match self.hook {
                Hook::RecreateBeforeRelist { n, key } if n == nth => {
                    put(&self.inner, key, "again").await;
                }
                Hook::RecreateBucketBeforeRelist { n, ref server, key } if n == nth => {
                    server.bucket("cfg").delete().unwrap();
                    let kv = bucket_with(server, StoreConfig::new("cfg")).await;
                    put(&kv, key, "third").await;
                }
                Hook::PurgeBeforeRelist { n, ref server } if n == nth => {
                    self.inner.writer().delete("c").await.unwrap();
                    let first = put(&self.inner, "b", "v4").await;
                    put(&self.inner, "d", "v3").await;
                    put(&self.inner, "e", "v2").await;
                    server.bucket("cfg").purge_below(first).unwrap();
                }
                Hook::FailListing => {
                    return Err(KvError::BucketNotFound {
                        bucket: "cfg".into(),
                    });
                }
                Hook::OverrunListing { n } if nth <= n => {
                    return Err(KvError::CursorExpired {
                        reason: ExpiryReason::BelowFirstSequence {
                            revision: 2,
                            first_sequence: 5,
                        },
                    });
                }
                Hook::FlakyListing { n } if nth <= n => {
                    return Err(KvError::Timeout {
                        operation: "consumer create".into(),
                        after: Duration::from_secs(5),
                    });
                }
                _ => {}
            }
        }
        let relist = start == WatchStart::Relist;
        let watch = self.inner.watch(scope, start).await?;
        if let Hook::RewriteAfterOpen { n, key } = self.hook
            && relist
            && self.relists.load(Ordering::SeqCst) == n
        {
            put(&self.inner, key, "rewritten").await;
        }
        Ok(watch)
    }

    async fn retention(&self) -> Result<Retention, KvError> {
        if matches!(self.hook, Hook::FailRetention) {
            return Err(KvError::BucketNotFound {
                bucket: "cfg".into(),
            });
        }
        if let Hook::FlakyRetention { n } = self.hook {
            let repairing = self
                .status
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|rx| rx.borrow().phase == Phase::Repairing);
            if repairing && self.retention_failures.fetch_add(1, Ordering::SeqCst) < n {
                return Err(KvError::NotConnected);
            }
        }
        self.inner.retention().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_key_deleted_and_recreated_in_the_gap_ends_present_because_deletes_come_first() {
    let (_keep, kv, app, store, last) = gap().await;

    // Relist 1 lists (`a` absent), relist 2 is the state-sync: `a` is
    // recreated in between, so the synthetic delete of `a` and the re-list
    // put of `a` both happen; only delete-then-put leaves it present.
    let watcher = Hooked::new(&kv, Hook::RecreateBeforeRelist { n: 2, key: "a" });
    let run = start(watcher, store, &app, repair(RepairMode::Relist));
    let store = run_to(run, last + 1).await;
    let fold = fold_of(&store);
    assert_eq!(
        fold.get("a"),
        Some(&(Bytes::from_static(b"again"), Some(last + 1)))
    );
    // Both happened: the synthetic delete (no revision) was parsed before
    // the re-list's put of `a`.
    let parsed = app.seen().parsed.clone();
    let delete_at = parsed
        .iter()
        .position(Option::is_none)
        .expect("a synthetic delete");
    let put_at = parsed
        .iter()
        .position(|r| *r == Some(last + 1))
        .expect("the re-list put");
    assert!(delete_at < put_at, "{parsed:?}");
    assert_eq!(fold, truth(&kv).await);
    assert_eq!(app.seen().fold, fold);
}

/// A key rewritten right after the listing opened: its message in the
/// listing's snapshot goes before delivery, so it shows up only after the
/// rest of the snapshot. The listing is complete only with it; a listing
/// taken as caught up without it deletes a live key (and here, where that
/// is half the fold, stops at the mass-delete guard).
#[tokio::test(start_paused = true)]
async fn a_key_rewritten_while_the_listing_runs_is_listed_not_deleted() {
    let (_keep, kv, app, store, last) = gap().await;
    let hook = Hook::RewriteAfterOpen { n: 1, key: "b" };
    let run = start(Hooked::new(&kv, hook), store, &app, |c| c);
    let store = run_to(run, last + 1).await;
    let synthetic = app.seen().parsed.iter().filter(|r| r.is_none()).count();
    assert_eq!(synthetic, 1, "only `a` is deleted: {:?}", app.seen().parsed);
    assert_eq!(fold_of(&store), truth(&kv).await);
}

/// Between the relist's listing (which saw `c` live) and its state-sync,
/// `c` is deleted and the stream purged past its marker and past every put
/// the listing saw. The state-sync cannot deliver the delete, so at its
/// `CaughtUp` the head having passed what the listing saw makes another
/// relist due, which deletes `c` once the bucket is quiet.
#[tokio::test(start_paused = true)]
async fn a_purge_between_a_relist_listing_and_its_state_sync_is_repaired_again() {
    let (keep, kv, app, store, last) = gap().await;
    let hook = Hook::PurgeBeforeRelist {
        n: 2,
        server: keep.server.clone(),
    };
    let run = start(Hooked::new(&kv, hook), store, &app, |c| c);
    // The hook's four writes follow `last`.
    let store = run_to_without(run, last + 4, &app, "c").await;
    let fold = fold_of(&store);
    assert!(!fold.contains_key("c"), "{fold:?}");
    assert_eq!(fold, truth(&kv).await);
}

/// The bucket is recreated while the node is down, and again between the
/// relist's listing and its state-sync: the fold was compared with the
/// second bucket, so the third one is repaired too, not taken as is.
#[tokio::test(start_paused = true)]
async fn a_bucket_recreated_between_a_relist_listing_and_its_state_sync_is_repaired_again() {
    let (server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let app = App::new();
    put(&kv, "a", "first").await;
    put(&kv, "b", "first").await;
    let store = synced_store(&kv, dir.path(), &app).await;
    server.bucket("cfg").delete().unwrap();
    let kv = bucket_with(&server, StoreConfig::new("cfg")).await;
    put(&kv, "a", "second").await;

    let hook = Hook::RecreateBucketBeforeRelist {
        n: 2,
        server: server.clone(),
        key: "c",
    };
    let run = start(Hooked::new(&kv, hook), store, &app, |c| {
        repair(RepairMode::Relist)(c).mass_delete(MassDeletePolicy::Allow)
    });
    let store = run_to(run, 1).await;
    let third = bucket_with(&server, StoreConfig::new("cfg")).await;
    let expected: Fold = [("c".to_owned(), (Bytes::from_static(b"third"), Some(1)))].into();
    assert_eq!(truth(&third).await, expected);
    assert_eq!(
        fold_of(&store),
        expected,
        "nothing of the first bucket stays"
    );
}

#[tokio::test(start_paused = true)]
async fn the_default_relists_where_the_listing_is_the_truth() {
    let (_keep, kv, app, store, last) = gap().await;
    let run = start(kv.watcher(), store, &app, |c| c);
    let store = run_to(run, last).await;
    assert_eq!(fold_of(&store), truth(&kv).await);
}

#[tokio::test(start_paused = true)]
async fn stop_ends_an_expired_watch_with_cursor_expired_and_the_fold_as_committed() {
    let (_keep, kv, app, store, _) = gap().await;
    let before = fold_of(&store);
    let run = start(kv.watcher(), store, &app, |c| c.on_expiry(OnExpiry::Stop));
    let finished = run.task.await.unwrap();
    assert!(
        matches!(finished.result, Err(AppliedError::CursorExpired { .. })),
        "{:?}",
        finished.result
    );
    assert_eq!(fold_of(&finished.store.unwrap()), before);
}

#[tokio::test(start_paused = true)]
async fn repair_modes_needing_a_restore_stop_with_restore_unavailable() {
    let (_keep, kv, app, store, _) = gap().await;
    let before = fold_of(&store);
    let run = start(kv.watcher(), store, &app, repair(RepairMode::Restore));
    let finished = run.task.await.unwrap();
    assert!(
        matches!(
            finished.result,
            Err(AppliedError::RestoreUnavailable { .. })
        ),
        "{:?}",
        finished.result
    );
    assert_eq!(fold_of(&finished.store.unwrap()), before);
}

#[tokio::test(start_paused = true)]
async fn auto_relists_when_the_listing_is_the_truth() {
    let (_keep, kv, app, store, last) = gap().await;
    let run = start(kv.watcher(), store, &app, repair(RepairMode::Auto));
    let store = run_to(run, last).await;
    assert_eq!(fold_of(&store), truth(&kv).await);
}

#[tokio::test(start_paused = true)]
async fn a_relist_without_a_store_stops_with_repair_needs_store() {
    let (_keep, kv, app, store, _) = gap().await;
    let config = AppliedConfig::new(WatchScope::All)
        .resume_from(store.cursor().clone())
        .on_expiry(OnExpiry::Repair(RepairMode::Relist));
    let finished = AppliedWatch::new(kv.watcher(), config)
        .run(app.handlers())
        .await;
    assert!(
        matches!(
            finished.result,
            Err(AppliedError::RepairNeedsStore {
                reason: RepairCause::Expired(ExpiryReason::BelowFirstSequence { revision: 4, .. })
            })
        ),
        "{:?}",
        finished.result
    );
    assert_eq!(finished.cursor.revision(), Some(4));
}

#[tokio::test(start_paused = true)]
async fn a_failing_listing_or_retention_read_stops_the_repair_with_the_fold_unchanged() {
    for (hook, stage) in [
        (Hook::FailListing, "listing"),
        (Hook::FailRetention, "reading retention"),
    ] {
        let (_keep, kv, app, store, _) = gap().await;
        let before = fold_of(&store);
        let run = start(
            Hooked::new(&kv, hook),
            store,
            &app,
            repair(RepairMode::Relist),
        );
        let finished = run.task.await.unwrap();
        match &finished.result {
            Err(AppliedError::RepairFailed { stage: s, .. }) => assert_eq!(*s, stage),
            other => panic!("expected RepairFailed while {stage}, got {other:?}"),
        }
        let store = finished.store.unwrap();
        assert_eq!(fold_of(&store), before, "the fold stays as committed");
        assert_eq!(store.cursor().revision(), Some(4));
    }
}

#[tokio::test(start_paused = true)]
async fn a_repair_whose_listing_or_retention_read_fails_transiently_or_is_overrun_runs_again_and_converges()
 {
    for (hook, what) in [
        (Hook::FlakyListing { n: 3 }, "listing"),
        (Hook::FlakyRetention { n: 3 }, "retention"),
        (Hook::OverrunListing { n: 2 }, "overrun listing"),
    ] {
        let (_keep, kv, app, store, last) = gap().await;
        let watcher = Hooked::new(&kv, hook);
        let status = Arc::clone(&watcher.status);
        let run = start(watcher, store, &app, repair(RepairMode::Relist));
        *status.lock().unwrap() = Some(run.status.clone());
        let store = run_to(run, last).await;
        let fold = fold_of(&store);
        assert!(
            !fold.contains_key("a"),
            "{what}: the vanished key left the fold"
        );
        assert_eq!(fold, truth(&kv).await, "{what}: the fold equals the bucket");
        assert_eq!(
            app.seen().fold,
            fold,
            "{what}: the application saw the same fold"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_a_failed_repair_waits_to_run_again_stops_with_the_fold_unchanged() {
    let (_keep, kv, app, store, _) = gap().await;
    let before = fold_of(&store);
    let watcher = Hooked::new(&kv, Hook::FlakyListing { n: usize::MAX });
    let mut run = start(watcher, store, &app, repair(RepairMode::Relist));
    wait_status(&mut run.status, |s| s.phase == Phase::Repairing).await;
    // Long enough for several attempts at the default backoff.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        !run.task.is_finished(),
        "a transient failure does not end the watch"
    );
    run.token.cancel();
    let finished = run.task.await.unwrap();
    assert!(
        matches!(finished.result, Ok(ref s) if s.reason == slipstream_applied::StopReason::Shutdown),
        "{:?}",
        finished.result
    );
    let store = finished.store.unwrap();
    assert_eq!(fold_of(&store), before, "the fold stays as committed");
    assert_eq!(store.cursor().revision(), Some(4));
}

/// Every file under `dir`, at any depth.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// A watcher that looks into the scratch directory: how many run files
/// it holds when the listing (the first state-sync) reaches `CaughtUp`,
/// and whether it is empty when the re-list (the second) opens.
struct ScratchProbe {
    inner: MemoryStore,
    scratch: std::path::PathBuf,
    relists: AtomicUsize,
    runs_at_caught_up: Arc<Mutex<Option<usize>>>,
    empty_at_relist: Arc<Mutex<Option<bool>>>,
}

impl KvWatcher for ScratchProbe {
    type WatchStream = futures::stream::BoxStream<'static, Result<WatchEvent, KvError>>;

    async fn watch(
        &self,
        scope: &WatchScope,
        start: WatchStart,
    ) -> Result<Self::WatchStream, KvError> {
        use futures::StreamExt;
        let stream = self.inner.watch(scope, start.clone()).await?;
        if start != WatchStart::Relist {
            return Ok(stream.boxed());
        }
        match self.relists.fetch_add(1, Ordering::SeqCst) {
            0 => {
                let (scratch, runs) = (self.scratch.clone(), Arc::clone(&self.runs_at_caught_up));
                Ok(stream
                    .inspect(move |item| {
                        if matches!(item, Ok(WatchEvent::CaughtUp)) {
                            *runs.lock().unwrap() = Some(files_under(&scratch).len());
                        }
                    })
                    .boxed())
            }
            1 => {
                *self.empty_at_relist.lock().unwrap() =
                    Some(std::fs::read_dir(&self.scratch).unwrap().next().is_none());
                Ok(stream.boxed())
            }
            _ => Ok(stream.boxed()),
        }
    }

    async fn retention(&self) -> Result<Retention, KvError> {
        self.inner.retention().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_relist_spilling_to_scratch_deletes_exactly_the_vanished_keys_and_cleans_up() {
    let (server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let app = App::new();
    for i in 0..300 {
        put(&kv, &format!("k.{i:03}"), "v1").await;
    }
    let store = synced_store(&kv, dir.path(), &app).await;
    let synced = store.cursor().revision().unwrap();
    // Offline: every key is rewritten (so the head can pass the cursor
    // dropping only superseded messages), every tenth key is then deleted
    // and its subject purged, some keys are rewritten twice more, new keys
    // appear, and the head passes the cursor.
    for i in 0..300 {
        put(&kv, &format!("k.{i:03}"), "v2").await;
    }
    let mut vanished = Vec::new();
    for i in (0..300).step_by(10) {
        let key = format!("k.{i:03}");
        kv.writer().delete(&key).await.unwrap();
        server.bucket("cfg").purge_subject(&key).unwrap();
        vanished.push(key);
    }
    for i in (5..300).step_by(20) {
        put(&kv, &format!("k.{i:03}"), "v3").await;
        put(&kv, &format!("k.{i:03}"), "v4").await;
    }
    let mut last = 0;
    for i in 300..320 {
        last = put(&kv, &format!("k.{i:03}"), "v1").await;
    }
    server.bucket("cfg").purge_below(synced + 2).unwrap();
    assert_eq!(
        truth(&kv).await.len(),
        290,
        "only the vanished keys left the bucket"
    );
    let before = fold_of(&store);

    let probe = ScratchProbe {
        inner: kv.clone(),
        scratch: scratch.path().to_owned(),
        relists: AtomicUsize::new(0),
        runs_at_caught_up: Arc::default(),
        empty_at_relist: Arc::default(),
    };
    let (runs, empty) = (
        Arc::clone(&probe.runs_at_caught_up),
        Arc::clone(&probe.empty_at_relist),
    );
    let scratch_policy = ScratchPolicy {
        dir: scratch.path().to_owned(),
        relist_memory: 256,
    };
    let run = start(probe, store, &app, |c| {
        repair(RepairMode::Relist)(c).scratch(scratch_policy)
    });
    let store = run_to(run, last).await;

    let runs = runs.lock().unwrap().expect("the listing caught up");
    assert!(runs > 16, "the listing spilled to many runs, got {runs}");
    assert_eq!(
        *empty.lock().unwrap(),
        Some(true),
        "the scratch subdirectory is gone before the re-list opens"
    );
    assert!(files_under(scratch.path()).is_empty());
    let fold = fold_of(&store);
    let removed: Vec<&String> = before.keys().filter(|k| !fold.contains_key(*k)).collect();
    assert_eq!(
        removed,
        vanished.iter().collect::<Vec<_>>(),
        "exactly the vanished keys went"
    );
    assert_eq!(fold, truth(&kv).await, "the fold equals the bucket");
    assert_eq!(app.seen().fold, fold);
    assert!(
        app.seen().violations.is_empty(),
        "{:?}",
        app.seen().violations
    );
}

#[tokio::test(start_paused = true)]
async fn an_unusable_scratch_dir_fails_the_relist_with_its_path_and_leaves_the_fold() {
    let (keep, kv, app, store, _) = gap().await;
    let before = fold_of(&store);
    // A regular file where the scratch directory should be: nothing can be
    // created under it, even as root.
    let not_a_dir = keep.dir.path().join("scratch-is-a-file");
    std::fs::write(&not_a_dir, b"").unwrap();
    let scratch_policy = ScratchPolicy {
        dir: not_a_dir.clone(),
        relist_memory: 1,
    };
    let run = start(kv.watcher(), store, &app, |c| {
        repair(RepairMode::Relist)(c).scratch(scratch_policy)
    });
    let finished = run.task.await.unwrap();
    match &finished.result {
        Err(AppliedError::RepairScratchIo { path, .. }) => assert!(path.starts_with(&not_a_dir)),
        other => panic!("expected RepairScratchIo, got {other:?}"),
    }
    let message = finished.result.as_ref().unwrap_err().to_string();
    assert!(
        message.contains("scratch"),
        "the reason names the scratch dir: {message}"
    );
    let store = finished.store.unwrap();
    assert_eq!(fold_of(&store), before, "the fold stays as committed");
    assert_eq!(store.cursor().revision(), Some(4));
}

/// Purges the whole stream right after the first state-sync's first
/// delivery, as head eviction passing a listing in progress would.
struct PurgeMidListing {
    inner: MemoryStore,
    server: MemoryServer,
    below: u64,
    armed: Arc<std::sync::atomic::AtomicBool>,
    listings: AtomicUsize,
}

impl KvWatcher for PurgeMidListing {
    type WatchStream = futures::stream::BoxStream<'static, Result<WatchEvent, KvError>>;

    async fn watch(
        &self,
        scope: &WatchScope,
        start: WatchStart,
    ) -> Result<Self::WatchStream, KvError> {
        use futures::StreamExt;
        let relist = start == WatchStart::Relist;
        if relist {
            let listings = self.listings.fetch_add(1, Ordering::SeqCst) + 1;
            assert!(listings <= 4, "a repair loop: {listings} listings");
        }
        let stream = self.inner.watch(scope, start.clone()).await?;
        let (server, below, armed) = (self.server.clone(), self.below, Arc::clone(&self.armed));
        Ok(stream
            .inspect(move |item| {
                if relist
                    && matches!(item, Ok(WatchEvent::Update(_)))
                    && armed.swap(false, Ordering::SeqCst)
                {
                    server.bucket("cfg").purge_below(below).unwrap();
                }
            })
            .boxed())
    }

    async fn retention(&self) -> Result<Retention, KvError> {
        self.inner.retention().await
    }
}

#[tokio::test(start_paused = true)]
async fn head_eviction_passing_a_listing_in_progress_is_repaired_at_its_caught_up() {
    let work = tempfile::tempdir().unwrap();
    let (server, kv) = bucket().await;
    put(&kv, "a", "v1").await; // 1
    put(&kv, "b", "v1").await; // 2
    let last = put(&kv, "c", "v1").await; // 3
    let watcher = PurgeMidListing {
        inner: kv.clone(),
        server: server.clone(),
        below: last + 1,
        armed: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        listings: AtomicUsize::new(0),
    };
    let (_, store) = open_store(&work.path().join("node"), &FaultPlan::new());
    // The fresh node's listing delivers `a`, then the head passes `b` and
    // `c`: the watch catches up at 1 with the stream empty from 4 on. K1 at
    // its `CaughtUp` sends it to a relist, which leaves the cursor at the
    // head it was planned on: no repair loop on the empty stream.
    let app = App::new();
    let mut run = start(watcher, store, &app, |c| {
        c.on_expiry(OnExpiry::Repair(RepairMode::Relist))
            .mass_delete(MassDeletePolicy::Allow)
    });
    let ready = wait_status(&mut run.status, WatchStatus::is_ready).await;
    assert_eq!(ready.applied, Some(last), "ready only at the head");
    assert_eq!(truth(&kv).await, Fold::new(), "the bucket lists nothing");
    let d = put(&kv, "d", "v1").await; // 4
    let store = run_to(run, d).await;
    let mut expected = Fold::new();
    expected.insert("d".into(), (Bytes::from_static(b"v1"), Some(d)));
    assert_eq!(fold_of(&store), expected, "`a` is gone, the delta follows");
}

/// A bucket that discards its oldest message past `max_msgs`.
async fn evicting_bucket(max_msgs: u64) -> (MemoryServer, MemoryStore) {
    let (server, kv) = bucket().await;
    let admin = server.bucket("cfg");
    admin
        .set_discard(slipstream_kv::DiscardPolicy::Old)
        .unwrap();
    admin.set_max_msgs(Some(max_msgs)).unwrap();
    (server, kv)
}

/// The watch stops because its floor guard tripped at `frontier` and the
/// Relist it then needs is refused; the fold is `before`, nothing past the
/// gap.
async fn stops_refusing_a_relist_after_an_overrun_at(run: Running, frontier: u64, before: &Fold) {
    let finished = timeout(DEADLINE, run.task).await.unwrap().unwrap();
    let error = finished.result.expect_err("the watch stops");
    assert!(
        matches!(
            &error,
            AppliedError::RelistRefused {
                reason: RepairCause::Expired(ExpiryReason::FloorOverrun { frontier: f, .. }),
                ..
            } if *f == frontier
        ),
        "{error:?}"
    );
    assert_eq!(
        &fold_of(&finished.store.unwrap()),
        before,
        "nothing past the gap"
    );
}

#[tokio::test(start_paused = true)]
async fn retention_passing_a_caught_up_state_sync_is_caught_at_the_next_delivery() {
    let work = tempfile::tempdir().unwrap();
    let (_server, kv) = evicting_bucket(3).await;
    put(&kv, "a", "v1").await; // 1
    put(&kv, "b", "v1").await; // 2
    put(&kv, "c", "v1").await; // 3
    let (_, store) = open_store(&work.path().join("node"), &FaultPlan::new());
    let app = App::new();
    let mut run = start(kv.watcher(), store, &app, repair(RepairMode::Relist));
    // A fresh node: its state-sync catches up at 3 and goes on live.
    wait_status(&mut run.status, |s| s.is_ready() && s.applied == Some(3)).await;
    let before = {
        let mut f = Fold::new();
        for (k, r) in [("a", 1), ("b", 2), ("c", 3)] {
            f.insert(k.into(), (Bytes::from_static(b"v1"), Some(r)));
        }
        f
    };
    // Before the node sees them, `a` is deleted (4) and three more writes
    // push the delete out of the bucket: the next delivery (5) leaves a gap
    // only the head explains. Folding on would keep `a` for good.
    kv.writer().delete("a").await.unwrap(); // 4
    for key in ["d", "e", "f"] {
        put(&kv, key, "v1").await; // 5..=7
    }
    stops_refusing_a_relist_after_an_overrun_at(run, 3, &before).await;
}

/// A fresh node caught up on an empty evicting bucket has no position yet;
/// a first delivery past evicted writes is a gap from position 0.
#[tokio::test(start_paused = true)]
async fn eviction_before_a_fresh_nodes_first_delivery_is_caught() {
    let work = tempfile::tempdir().unwrap();
    let (_server, kv) = evicting_bucket(2).await;
    let (_, store) = open_store(&work.path().join("node"), &FaultPlan::new());
    let app = App::new();
    let mut run = start(kv.watcher(), store, &app, repair(RepairMode::Relist));
    wait_status(&mut run.status, |s| s.is_ready() && s.applied.is_none()).await;
    // Before the node sees them, three writes: `a` (1) is evicted.
    for key in ["a", "b", "c"] {
        put(&kv, key, "v1").await;
    }
    stops_refusing_a_relist_after_an_overrun_at(run, 0, &Fold::new()).await;
}

/// A small bucket (history 1) written faster than the node reads:
/// supersession alone moves the first sequence past the node's frontier,
/// which the floor guard cannot tell from eviction. With the default
/// configuration the node relists (the listing is the truth there) and
/// goes on, rather than stopping.
#[tokio::test(start_paused = true)]
async fn a_hot_bucket_outrunning_a_default_node_is_relisted_not_stopped() {
    let (_server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let app = App::new();
    for key in ["a", "b", "c"] {
        put(&kv, key, "v0").await; // 1..=3
    }
    let store = synced_store(&kv, dir.path(), &app).await;
    // Resumed as a delta watch at 3.
    let mut run = start(kv.watcher(), store, &app, |c| c);
    wait_status(&mut run.status, |s| s.is_ready() && s.applied == Some(3)).await;
    // Before the node sees them, three rounds of rewrites (4..=12): every
    // message up to 9 is superseded, so the next delivery is 10.
    let mut last = 0;
    for round in 1..=3 {
        for key in ["a", "b", "c"] {
            last = put(&kv, key, &format!("v{round}")).await;
        }
    }
    let store = run_to(run, last).await;
    assert_eq!(fold_of(&store), truth(&kv).await);
}

/// Run a node on `config` for `app`: its status, and its result.
fn spawn_node<S: StoreSlot + 'static>(
    watcher: MemoryStore,
    config: AppliedConfig<S>,
    app: &App,
) -> (StatusReceiver, JoinHandle<Result<Stopped, AppliedError>>) {
    let watch = AppliedWatch::new(watcher, config);
    let status = watch.status();
    let task = tokio::spawn(watch.run(app.handlers()));
    (
        status,
        tokio::spawn(async move { task.await.unwrap().result }),
    )
}

/// Nodes whose answer to an expiry is to stop (no store, or `Stop`), on a
/// small bucket evicting nothing, written faster than they read: after
/// their state-sync caught up, supersession moves the first sequence past
/// their frontier. No repair would answer a check there, so none is made;
/// they go on (a backend's guard of delta watches is not involved).
#[tokio::test(start_paused = true)]
async fn nodes_that_stop_on_expiry_outrun_on_a_plain_bucket_go_on() {
    for with_store in [false, true] {
        let (_server, kv) = bucket().await;
        let dir = tempfile::tempdir().unwrap();
        let app = App::new();
        for key in ["a", "b", "c"] {
            put(&kv, key, "v0").await; // 1..=3
        }
        let token = CancellationToken::new();
        let config = AppliedConfig::new(WatchScope::All).shutdown(token.clone());
        let (mut status, task) = if with_store {
            let (_, store) = open_store(dir.path(), &FaultPlan::new());
            let config = config.store(store).on_expiry(OnExpiry::Stop);
            spawn_node(kv.watcher(), config, &app)
        } else {
            spawn_node(kv.watcher(), config, &app)
        };
        wait_status(&mut status, |s| s.is_ready() && s.applied == Some(3)).await;
        // Before the node sees them, three rounds of rewrites (4..=12):
        // the next delivery is 10, and the first sequence is 10.
        let mut last = 0;
        for round in 1..=3 {
            for key in ["a", "b", "c"] {
                last = put(&kv, key, &format!("v{round}")).await;
            }
        }
        // Not the `Ref` itself: it holds the status lock the engine sends on.
        let reached = timeout(DEADLINE, status.wait_for(|s| s.applied == Some(last)))
            .await
            .map(|r| r.is_ok());
        assert!(
            matches!(reached, Ok(true)),
            "with_store {with_store}: the node went on, not {:?}",
            timeout(DEADLINE, task).await
        );
        assert!(!task.is_finished(), "with_store {with_store}");
        let truth = truth(&kv).await;
        assert_eq!(app.seen().fold, truth, "with_store {with_store}");
        token.cancel();
        timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
    }
}

/// An operator's purge passing a fresh node's caught-up state-sync of a
/// bucket that evicts nothing takes a delete marker the node has not seen.
/// The gap at the next delivery makes a repair due (K11 generalised), and
/// the relist, once the bucket is quiet, deletes the key.
#[tokio::test(start_paused = true)]
async fn a_purge_passing_a_caught_up_state_sync_of_a_plain_bucket_is_repaired() {
    let (server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let app = App::new();
    for key in ["a", "b", "c"] {
        put(&kv, key, "v1").await; // 1..=3
    }
    let (_, store) = open_store(dir.path(), &FaultPlan::new());
    let mut run = start(kv.watcher(), store, &app, |c| c);
    wait_status(&mut run.status, |s| s.is_ready() && s.applied == Some(3)).await;
    kv.writer().delete("a").await.unwrap(); // 4
    put(&kv, "b", "v2").await; // 5
    let last = put(&kv, "c", "v2").await; // 6
    // Only superseded messages and the marker go.
    server.bucket("cfg").purge_below(5).unwrap();
    let store = run_to_without(run, last, &app, "a").await;
    let fold = fold_of(&store);
    assert!(!fold.contains_key("a"), "the purged delete still applies");
    assert_eq!(fold, truth(&kv).await);
}
