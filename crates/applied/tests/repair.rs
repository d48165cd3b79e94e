//! R1, R2, R4, R5, R9 over the simulator with an append-log store: an
//! offline gap whose delete marker was purged, repaired by relist (deletes
//! before puts, the status Repairing while it lists); what each repair mode
//! (K8) and `Stop` do there; relist refused on an evicting bucket (K7, the
//! memo committed with the fold); the mass-delete guard (K14) and its
//! override; and a listing or retention read that fails, for good or
//! transiently (run again after the backoff), or meets a shutdown.
//! Races between a listing and its state-sync are in `repair_listing.rs`,
//! running watches overrun in `repair_running.rs`.

// Helpers outside #[test] fns panic on failure too: that is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::gaps::gap;
use common::node::{
    bucket, bucket_with, put, repair, run_to, start, synced_store, truth, wait_status,
};
use common::watchers::{Hook, Hooked};
use common::{App, FaultStore, fold_of};
use slipstream_applied::{
    AppliedConfig, AppliedError, AppliedWatch, MassDeletePolicy, OnExpiry, Phase, RepairCause,
    RepairMode,
};
use slipstream_kv::{ExpiryReason, KvStore, KvWriter, StoreConfig, WatchScope};
use slipstream_memory::{ManualClock, MemoryServer, MemoryStore};
use slipstream_snapshot::SnapshotStore;

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
