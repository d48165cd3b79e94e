//! Prefix scopes against a live nats-server, on buckets made as nats-py
//! makes them (history 1, per-message TTL allowed) and on a `max_age`
//! bucket: a multi-prefix node resuming from its cursor gets exactly its
//! delta; a rewrite outside the scope that removes the message after the
//! cursor is repaired in scope; a relist and a restore of a prefix, the
//! floor a prefix lost (K1), a relist's floor the head passed before its
//! state-sync (K15), and the mass-delete guard (K14) counting only
//! the fold in scope. A repair of a scope never touches a key outside it:
//! the stores here also hold keys an earlier All-scope node folded.

// Helpers outside #[test] fns panic on failure too: that is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

#[path = "repair_e2e/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use harness::{
    App, Client, Fold, Live, Op, Watched, finish, fold_of, open_store, plain, put_op, repair,
    repair_delete, run_to, start_scoped_node, synced_store, values,
};
use slipstream_applied::{
    AppliedConfig, AppliedError, AppliedWatch, LocalArtifacts, OnExpiry, Phase, RepairMode,
};
use slipstream_it::Admin;
use slipstream_kv::{
    ExpiryReason, KvError, KvStore, KvWatcher, KvWriter, Retention, StoreConfig, WatchScope,
    WatchStart,
};
use slipstream_nats::{NatsBucket, NatsWatch};
use slipstream_snapshot::{AppendLogStore, SnapshotStore};
use tokio_util::sync::CancellationToken;

type Store = AppendLogStore;

fn a_and_b() -> WatchScope {
    WatchScope::Prefixes(vec!["a.".into(), "b.".into()])
}

fn prefix(p: &str) -> WatchScope {
    WatchScope::Prefix(p.into())
}

fn in_scope(fold: &Fold, scope: &WatchScope) -> Fold {
    fold.iter()
        .filter(|(k, _)| scope.contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn out_of_scope(fold: &Fold, scope: &WatchScope) -> Fold {
    fold.iter()
        .filter(|(k, _)| !scope.contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The store's fold in scope equals the bucket's listing in scope, and the
/// application's fold equals the store's.
async fn assert_scope_converged(live: &Live, store: &Store, app: &App, scope: &WatchScope) {
    let fold = fold_of(store);
    assert_eq!(
        in_scope(&fold, scope),
        in_scope(&live.listing().await, scope),
        "the fold in scope is the bucket's"
    );
    assert_eq!(app.fold(), values(&fold), "the application's fold too");
}

/// A node watching `a.` and `b.` on a nats-py bucket folds it at 2 (`a.1`,
/// `b.1`; `c.1` at 3 is outside its scope) and goes down; `offline` keys
/// are written (4..), then `b.1` is deleted. Returns the live bucket, the
/// store and the last revision.
async fn offline_under_two_prefixes(label: &str, offline: &[&str]) -> (Live, Store, u64) {
    let live = Live::start_foreign(label, Client::Python).await;
    live.put("a.1", "v1").await; // 1
    live.put("b.1", "v1").await; // 2
    live.put("c.1", "v1").await; // 3
    let (_, store) = open_store::<Store>(&live.fold_dir()).await;
    let node = start_scoped_node(&live, store, &App::default(), a_and_b(), plain);
    let store = run_to(node, 2).await;
    for key in offline {
        live.put(key, "v2").await;
    }
    live.delete("b.1").await;
    let last = live.stream_last().await;
    (live, store, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_prefix_node_on_a_nats_py_bucket_resumes_from_its_cursor_with_only_its_delta() {
    // 4..=7: `a.1` and `b.1` (at 1 and 2) are superseded, `c.1` at 3 is
    // not, so the stream still holds the resume point.
    let offline = ["c.2", "a.1", "b.2", "c.3"];
    let (live, store, last) = offline_under_two_prefixes("scopes-resume", &offline).await;
    assert_eq!(last, 8);
    let app = App::resuming(&store);
    let node = start_scoped_node(&live, store, &app, a_and_b(), plain);
    let log = std::sync::Arc::clone(&node.log);
    let store = run_to(node, last).await;
    assert_eq!(
        *log.lock().unwrap(),
        [Watched::Call {
            after: Some(2),
            phase: Phase::Starting
        }],
        "one delta watch, no repair"
    );
    assert_eq!(
        app.parsed(),
        [
            put_op("a.1", 5),
            put_op("b.2", 6),
            Op::Delete("b.1".into(), Some(8))
        ],
        "the delta in scope after the cursor, nothing else"
    );
    assert!(!fold_of(&store).contains_key("c.2"), "outside the scope");
    assert_scope_converged(&live, &store, &app, &a_and_b()).await;
}

/// K1 cannot tell which scope a removed message was in: rewriting `c.1`
/// (history 1) removes the message right after the cursor, so the resume
/// is refused, and the default repair lists the scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_prefix_node_passed_by_a_rewrite_outside_its_scope_repairs_only_in_scope() {
    let offline = ["c.1", "a.1", "b.2", "c.2"];
    let (live, store, last) = offline_under_two_prefixes("scopes-passed", &offline).await;
    let app = App::resuming(&store);
    let node = start_scoped_node(&live, store, &app, a_and_b(), plain);
    let log = std::sync::Arc::clone(&node.log);
    let store = run_to(node, last).await;
    assert!(
        log.lock()
            .unwrap()
            .contains(&Watched::Refused(ExpiryReason::BelowFirstSequence {
                revision: 2,
                first_sequence: 4
            })),
        "{:?}",
        log.lock().unwrap()
    );
    assert_eq!(
        app.parsed(),
        [
            repair_delete("b.1"),
            put_op("a.1", 5),
            put_op("b.2", 6),
            Op::Delete("b.1".into(), Some(8))
        ],
        "the relist's delete of `b.1`, then the state-sync of the scope"
    );
    assert_scope_converged(&live, &store, &app, &a_and_b()).await;
}

/// An All-scope node folds `a.1`, `a.2`, `c.1`, `c.2` at 4 and goes down.
/// `a.1` and `c.1` are deleted with their markers purged, the rest
/// rewritten, `a.3` and `c.3` created: the head passes the resume point.
async fn offline_purge_under_a_prefix(label: &str) -> (Live, Store, Fold, u64) {
    let live = Live::start_foreign(label, Client::Python).await;
    for key in ["a.1", "a.2", "c.1", "c.2"] {
        live.put(key, "v1").await;
    }
    let store = synced_store::<Store>(&live, 4).await;
    let before = fold_of(&store);
    for key in ["a.1", "c.1"] {
        live.delete(key).await;
        live.purge_marker(key).await;
    }
    for key in ["a.2", "c.2", "a.3", "c.3"] {
        live.put(key, "v2").await;
    }
    let last = live.stream_last().await;
    assert_eq!(live.wait_first_sequence_above(5).await, 7);
    (live, store, before, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_of_a_prefix_deletes_only_in_scope_and_leaves_other_keys_alone() {
    let (live, store, before, last) = offline_purge_under_a_prefix("scopes-relist").await;
    let scope = prefix("a.");
    let app = App::resuming(&store);
    let node = start_scoped_node(
        &live,
        store,
        &app,
        scope.clone(),
        repair(RepairMode::Relist),
    );
    // Ready at the last write in scope (`a.3`, two before the last).
    let store = run_to(node, last - 1).await;
    let fold = fold_of(&store);
    assert!(!fold.contains_key("a.1"), "the vanished key in scope left");
    assert_eq!(
        out_of_scope(&fold, &scope),
        out_of_scope(&before, &scope),
        "keys outside the scope are untouched, `c.1` included, though the bucket deleted it"
    );
    let deletes: Vec<_> = app
        .parsed()
        .into_iter()
        .filter(|op| matches!(op, Op::Delete(_, None)))
        .collect();
    assert_eq!(deletes, [repair_delete("a.1")]);
    assert_scope_converged(&live, &store, &app, &scope).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_node_that_stops_on_expiry_reports_the_floor_it_lost() {
    let (live, store, before, _) = offline_purge_under_a_prefix("scopes-stop").await;
    let app = App::resuming(&store);
    let node = start_scoped_node(&live, store, &app, prefix("a."), |c| {
        c.on_expiry(OnExpiry::Stop)
    });
    let finished = finish(node).await;
    match &finished.result {
        Err(AppliedError::CursorExpired {
            reason:
                ExpiryReason::BelowFirstSequence {
                    revision: 4,
                    first_sequence: 7,
                },
            ..
        }) => {}
        other => panic!("expected an expired cursor below 7, got {other:?}"),
    }
    let store = finished.store.expect("the store is handed back");
    assert_eq!(fold_of(&store), before, "nothing changed");
    assert_eq!(app.parsed(), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mass_delete_guard_counts_only_the_fold_in_scope() {
    let live = Live::start_foreign("scopes-mass", Client::Python).await;
    live.put("a.1", "v1").await; // 1
    for i in 1..=5 {
        live.put(&format!("c.{i}"), "v1").await; // 2..=6
    }
    let store = synced_store::<Store>(&live, 6).await;
    let before = fold_of(&store);
    live.delete("a.1").await; // 7
    live.purge_marker("a.1").await;
    for i in 1..=5 {
        live.put(&format!("c.{i}"), "v2").await; // 8..=12
    }
    assert_eq!(live.wait_first_sequence_above(6).await, 8);

    // In scope the relist would delete `a.1`, the only key the fold holds
    // there, though one of six in the whole fold.
    let app = App::resuming(&store);
    let node = start_scoped_node(&live, store, &app, prefix("a."), repair(RepairMode::Relist));
    let finished = finish(node).await;
    match &finished.result {
        Err(AppliedError::MassDeleteHeld {
            deletions: 1,
            fold_len: 1,
            ..
        }) => {}
        other => panic!("expected the mass-delete guard on 1 of 1, got {other:?}"),
    }
    let store = finished.store.expect("the store is handed back");
    assert_eq!(fold_of(&store), before, "nothing changed");
    assert_eq!(store.cursor().revision(), Some(6));
    assert_eq!(app.parsed(), []);
}

/// A node folds the whole `max_age` bucket at 4 and goes down; under `a.`
/// a gap write (`a.g`) and a real delete (`a.d`) follow, and `c.y` outside
/// it. Another node exports at 7; everything ages out; `a.h` is written.
/// Restarted on `a.`, the node restores the artifact's keys in scope only,
/// then takes the delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_of_a_prefix_on_an_aging_bucket_takes_only_the_artifacts_keys_in_scope() {
    let max_age = Duration::from_secs(3);
    let live = Live::start(
        "scopes-restore",
        StoreConfig::new("scoped").max_age(max_age),
    )
    .await;
    for key in ["a.a", "a.b", "c.x", "a.d"] {
        live.put(key, "v1").await; // 1..=4
    }
    let store = synced_store::<Store>(&live, 4).await;
    let before = fold_of(&store);
    live.put("a.g", "v1").await; // 5: the gap write
    live.delete("a.d").await; // 6: the real delete
    live.put("c.y", "v1").await; // 7: outside the scope

    let exporter_dir = live.dir.path().join("exporter");
    let (_, exporter) = open_store::<Store>(&exporter_dir).await;
    let node = harness::start_node(&live, exporter, &App::default(), plain);
    let mut exporter = run_to(node, 7).await;
    let artifacts = live.dir.path().join("artifacts");
    std::fs::create_dir(&artifacts).unwrap();
    exporter
        .export_to(&artifacts.join("exporter-at-7"), &WatchScope::All)
        .unwrap();
    let exported = fold_of(&exporter);
    drop(exporter);

    assert_eq!(live.wait_first_sequence_above(7).await, 8);
    let last = live.put("a.h", "v1").await; // 8
    assert!(!live.listing().await.contains_key("a.g"), "a.g aged out");

    let scope = prefix("a.");
    let app = App::resuming(&store);
    let source = LocalArtifacts::new(&artifacts);
    let node = start_scoped_node(&live, store, &app, scope.clone(), move |c| {
        c.on_expiry(OnExpiry::Repair(RepairMode::Auto))
            .restore_from(source)
    });
    let store = run_to(node, last).await;
    let fold = fold_of(&store);
    let mut expected = in_scope(&exported, &scope);
    expected.extend(in_scope(&live.listing().await, &scope));
    assert_eq!(
        in_scope(&fold, &scope),
        expected,
        "the artifact's keys in scope, then the delta"
    );
    assert!(fold.contains_key("a.g") && !fold.contains_key("a.d"));
    assert_eq!(
        out_of_scope(&fold, &scope),
        out_of_scope(&before, &scope),
        "`c.y` of the artifact is outside the scope and is not taken"
    );
    assert_eq!(app.fold(), values(&fold), "the application saw the same");
}

/// Before the second state-sync watch (the one after the relist's listing),
/// deletes `a.2`, which the listing saw live and the fold holds, rewrites
/// `a.3`, writes `c.9`, and purges the stream below the rewrite: the
/// state-sync cannot deliver the delete.
#[derive(Clone)]
struct PurgeBeforeStateSync {
    bucket: NatsBucket,
    admin: Admin,
    relists: Arc<AtomicUsize>,
}

impl KvWatcher for PurgeBeforeStateSync {
    type WatchStream = NatsWatch;

    async fn watch(&self, scope: &WatchScope, start: WatchStart) -> Result<NatsWatch, KvError> {
        if start == WatchStart::Relist && self.relists.fetch_add(1, Ordering::SeqCst) == 1 {
            let writer = self.bucket.writer();
            writer.delete("a.2").await.unwrap();
            let first = writer.put("a.3", "v2".into()).await.unwrap();
            writer.put("c.9", "v1".into()).await.unwrap();
            self.admin
                .purge_below(self.bucket.stream_name(), first)
                .await
                .unwrap();
        }
        self.bucket.watch(scope, start).await
    }

    async fn retention(&self) -> Result<Retention, KvError> {
        self.bucket.retention().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_whose_relist_floor_the_head_passed_is_repaired_again() {
    let (live, store, before, _) = offline_purge_under_a_prefix("scopes-floor").await;
    let scope = prefix("a.");
    let watcher = PurgeBeforeStateSync {
        bucket: live.bucket.clone(),
        admin: live.admin.clone(),
        relists: Arc::default(),
    };
    let app = App::resuming(&store);
    let token = CancellationToken::new();
    let config = AppliedConfig::new(scope.clone())
        .store(store)
        .shutdown(token.clone())
        .scratch(live.scratch())
        .on_expiry(OnExpiry::Repair(RepairMode::Relist));
    let watch = AppliedWatch::new(watcher.clone(), config);
    let node = harness::Node {
        status: watch.status(),
        task: tokio::spawn(watch.run(app.handlers())),
        token,
        log: Arc::default(),
    };
    // The hook writes three more (11..=13); the second relist's
    // state-sync delivers the rewritten `a.3` (12).
    let last_in_scope = live.stream_last().await + 2;
    let store = run_to(node, last_in_scope).await;
    assert!(
        watcher.relists.load(Ordering::SeqCst) >= 3,
        "listing, state-sync, then the repair's listing"
    );
    let fold = fold_of(&store);
    assert!(
        !fold.contains_key("a.2"),
        "a prefix cannot wait for quiet: the floor overrun repairs at once: {fold:?}"
    );
    assert_eq!(out_of_scope(&fold, &scope), out_of_scope(&before, &scope));
    let deletes: Vec<_> = app
        .parsed()
        .into_iter()
        .filter(|op| matches!(op, Op::Delete(_, None)))
        .collect();
    assert_eq!(deletes, [repair_delete("a.1"), repair_delete("a.2")]);
    assert_scope_converged(&live, &store, &app, &scope).await;
}
