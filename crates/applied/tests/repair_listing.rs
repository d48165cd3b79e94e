//! R2 over the simulator: races between a relist's listing and its
//! state-sync, and the listing's scratch spill. A key recreated between
//! them ends present (deletes before puts); a key rewritten while the
//! listing runs is listed, not deleted; a purge or a bucket recreation
//! between them (K15, R7) and head eviction passing a listing in progress
//! (K1 at its `CaughtUp`) repair again; a relist spilling past its memory
//! bound deletes exactly the vanished keys and cleans its scratch up, and
//! an unusable scratch directory fails the relist (R4) with the fold as
//! committed.

// Helpers outside #[test] fns panic on failure too: that is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use bytes::Bytes;
use common::gaps::{gap, run_to_without};
use common::node::{
    Fold, bucket, bucket_with, put, repair, run_to, start, synced_store, truth, wait_status,
};
use common::watchers::{Hook, Hooked, PurgeMidListing, ScratchProbe, files_under};
use common::{App, FaultPlan, fold_of, open_store};
use slipstream_applied::{
    AppliedError, MassDeletePolicy, OnExpiry, RepairMode, ScratchPolicy, WatchStatus,
};
use slipstream_kv::{KvStore, KvWriter, StoreConfig};
use slipstream_snapshot::SnapshotStore;

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
        delete: "c",
        rewrite: &["b", "d", "e"],
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
