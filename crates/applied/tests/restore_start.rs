//! R6–R8 and R3 over the simulator: starts and recreations. A cursorless
//! start bootstraps from an artifact on an evicting bucket (K9) or deletes
//! what the bucket no longer lists from a fold with data; an expiry by
//! supersession only resumes at the first sequence (K11); a recreated
//! bucket is repaired by relist, or restored only from an artifact of the
//! new incarnation (R7), and an old fold entry never outranks the artifact
//! (K10); a new node's bootstrap (K6) takes only the delta, declines what
//! cannot start its fold and refuses a tampered artifact or a directory
//! holding a store.

// Helpers outside #[test] fns panic on failure too: that is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::path::Path;

use bytes::Bytes;
use common::gaps::{HOUR, MINUTE, aged_out_gap, walk};
use common::node::{
    Fold, Tune, bucket_with, export_from, plain, put, restoring, run_to, run_to_error, start,
    synced, truth, wait_status,
};
use common::{App, FaultPlan, FaultStore, fold_of, open_store};
use slipstream_applied::bootstrap;
use slipstream_applied::{
    AppliedConfig, AppliedError, AppliedWatch, Bootstrap, BootstrapConfig, LocalArtifacts,
    MassDeletePolicy, OnExpiry, RepairMode, RestoreRefusal, WatchStatus,
};
use slipstream_kv::{KvStore, StoreConfig, WatchScope};
use slipstream_memory::{ManualClock, MemoryServer, MemoryStore};
use slipstream_snapshot::{MANIFEST_FILE, SnapshotStore};
use tokio_util::sync::CancellationToken;

/// Auto repair from `artifacts`, mass deletes allowed.
fn restoring_allowing_mass_deletes(artifacts: &Path) -> Tune {
    let source = LocalArtifacts::new(artifacts);
    Box::new(move |c| {
        c.on_expiry(OnExpiry::Repair(RepairMode::Auto))
            .restore_from(source)
            .mass_delete(MassDeletePolicy::Allow)
    })
}

#[tokio::test(start_paused = true)]
async fn a_fresh_node_on_an_evicting_bucket_bootstraps_from_an_artifact_not_a_state_sync() {
    let work = tempfile::tempdir().unwrap();
    let artifacts = work.path().join("artifacts");
    let s = aged_out_gap(work.path(), &artifacts).await;
    // A state-sync would miss `a` (aged out); K9 restores first.
    let (cursor, fresh) = open_store(&work.path().join("fresh"), &FaultPlan::new());
    assert_eq!(cursor.revision(), None);
    let app = App::new();
    let store = run_to(
        start(
            s.kv.watcher(),
            fresh,
            &app,
            restoring(RepairMode::Auto, &artifacts),
        ),
        s.last,
    )
    .await;
    let mut expected = s.exported.clone();
    expected.insert("h".into(), (Bytes::from_static(b"v1"), Some(6)));
    assert_eq!(fold_of(&store), expected);
    assert!(
        app.seen().violations.is_empty(),
        "{:?}",
        app.seen().violations
    );
    // The mutation check for K9: without a restore first, the same start
    // state-syncs and lacks `a`.
    let (_, fresh) = open_store(&work.path().join("fresh-plain"), &FaultPlan::new());
    let store = run_to(start(s.kv.watcher(), fresh, &App::new(), plain()), s.last).await;
    assert!(!fold_of(&store).contains_key("a"));
}

#[tokio::test(start_paused = true)]
async fn a_cursorless_start_on_a_fold_with_data_deletes_what_the_bucket_no_longer_lists() {
    let work = tempfile::tempdir().unwrap();
    let server = MemoryServer::new();
    let kv = bucket_with(&server, StoreConfig::new("cfg")).await;
    put(&kv, "a", "v1").await; // 1
    let last = put(&kv, "b", "v1").await; // 2
    // A fold holding a key the bucket never had, with no cursor.
    let (_, mut store) = open_store(&work.path().join("node"), &FaultPlan::new());
    let stale = slipstream_kv::KvUpdate::Put(slipstream_kv::KvEntry {
        key: "stale".into(),
        value: Bytes::from_static(b"old"),
        version: slipstream_kv::VersionToken::from_u64(1),
        created: None,
        expires: None,
    });
    store
        .apply(&[stale], &slipstream_kv::WatchCursor::none())
        .unwrap();
    let tune: Tune = Box::new(|c| {
        c.on_expiry(OnExpiry::Repair(RepairMode::Relist))
            .mass_delete(MassDeletePolicy::Allow)
    });
    let store = run_to(start(kv.watcher(), store, &App::new(), tune), last).await;
    assert_eq!(fold_of(&store), truth(&kv).await, "the stale key is gone");
}

#[tokio::test(start_paused = true)]
async fn an_expiry_by_supersession_only_resumes_at_the_first_sequence_without_repair() {
    let work = tempfile::tempdir().unwrap();
    let server = MemoryServer::with_clock(ManualClock::new());
    let kv = bucket_with(&server, StoreConfig::new("cfg").max_age(HOUR).history(1)).await;
    put(&kv, "a", "v1").await; // 1
    put(&kv, "b", "v1").await; // 2
    let store = synced(&kv, &work.path().join("node"), &App::new(), 2).await;
    server.clock().advance(5 * MINUTE);
    put(&kv, "a", "v2").await; // 3: 1 goes
    put(&kv, "b", "v2").await; // 4: 2 goes
    let last = put(&kv, "a", "v3").await; // 5: 3 goes, first is 4
    let app = App::new();
    app.load(&store);
    // Relist would be refused here (the bucket evicts by age): the only
    // way this resumes is K11.
    let tune: Tune = Box::new(|c| c.on_expiry(OnExpiry::Repair(RepairMode::Relist)));
    let store = run_to(start(kv.watcher(), store, &app, tune), last).await;
    assert_eq!(fold_of(&store), truth(&kv).await);
    assert_eq!(
        app.seen().parsed,
        [Some(4), Some(5)],
        "only the retained delta was delivered"
    );

    // Past half of max_age the same gap is not trusted.
    let work = tempfile::tempdir().unwrap();
    let server = MemoryServer::with_clock(ManualClock::new());
    let kv = bucket_with(&server, StoreConfig::new("cfg").max_age(HOUR).history(1)).await;
    put(&kv, "a", "v1").await;
    put(&kv, "b", "v1").await;
    let store = synced(&kv, &work.path().join("node"), &App::new(), 2).await;
    server.clock().advance(40 * MINUTE);
    put(&kv, "a", "v2").await;
    put(&kv, "b", "v2").await;
    put(&kv, "a", "v3").await;
    let tune: Tune = Box::new(|c| c.on_expiry(OnExpiry::Repair(RepairMode::Relist)));
    let (error, _) = run_to_error(start(kv.watcher(), store, &App::new(), tune)).await;
    assert!(
        matches!(error, AppliedError::RelistRefused { .. }),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_recreated_bucket_is_repaired_by_relist_not_waited_on() {
    let work = tempfile::tempdir().unwrap();
    let server = MemoryServer::new();
    let kv = bucket_with(&server, StoreConfig::new("cfg")).await;
    for key in ["a", "b", "c", "d", "e"] {
        put(&kv, key, "old").await; // 1..=5
    }
    let store = synced(&kv, &work.path().join("node"), &App::new(), 5).await;
    let old_identity = store.cursor().identity().cloned();
    assert!(old_identity.is_some(), "the cursor remembers the bucket");
    server.bucket("cfg").delete().unwrap();
    let kv = bucket_with(&server, StoreConfig::new("cfg")).await;
    put(&kv, "a", "new").await; // 1
    put(&kv, "b", "new").await; // 2
    let last = put(&kv, "x", "new").await; // 3
    let app = App::new();
    app.load(&store);
    let tune: Tune = Box::new(|c| {
        c.on_expiry(OnExpiry::Repair(RepairMode::Relist))
            .mass_delete(MassDeletePolicy::Allow)
    });
    let store = run_to(start(kv.watcher(), store, &app, tune), last).await;
    let listed = truth(&kv).await;
    assert_eq!(fold_of(&store), listed, "the fold is the new bucket");
    assert_eq!(app.seen().fold, listed, "and so is the application's");
    assert_ne!(store.cursor().identity().cloned(), old_identity);
}

#[tokio::test(start_paused = true)]
async fn a_recreated_evicting_bucket_restores_only_from_an_artifact_of_the_new_incarnation() {
    let work = tempfile::tempdir().unwrap();
    let old_artifacts = work.path().join("old");
    let new_artifacts = work.path().join("new");
    let server = MemoryServer::with_clock(ManualClock::new());
    let config = StoreConfig::new("cfg").max_age(HOUR);
    let kv = bucket_with(&server, config.clone()).await;
    for key in ["a", "b", "c"] {
        put(&kv, key, "old").await; // 1..=3
    }
    let store = synced(&kv, &work.path().join("node"), &App::new(), 3).await;
    put(&kv, "d", "old").await; // 4
    export_from(&kv, work.path(), &old_artifacts, "old-at-4", 4).await;

    server.clock().advance(MINUTE);
    server.bucket("cfg").delete().unwrap();
    let kv = bucket_with(&server, config).await;
    put(&kv, "a", "new").await; // 1
    put(&kv, "x", "new").await; // 2
    let exported = export_from(&kv, work.path(), &new_artifacts, "new-at-2", 2).await;
    // The new bucket evicts too, so its listing is not the truth: only a
    // restore can repair.
    server.clock().advance(2 * HOUR);
    let last = put(&kv, "y", "new").await; // 3

    // An artifact of the deleted bucket is refused.
    let before = fold_of(&store);
    let run = start(
        kv.watcher(),
        store,
        &App::new(),
        restoring(RepairMode::Auto, &old_artifacts),
    );
    let (error, store) = run_to_error(run).await;
    assert!(
        matches!(
            &error,
            AppliedError::RestoreRefused { reason, refusal, .. }
                if reason.replaces_bucket()
                    && matches!(**refusal, RestoreRefusal::OtherIncarnation { .. })
        ),
        "{error:?}"
    );
    assert_eq!(fold_of(&store), before);

    // One of the new incarnation repairs it: the old-only keys go, every
    // key takes the new bucket's entry, the delta follows.
    let allow = restoring_allowing_mass_deletes(&new_artifacts);
    let store = run_to(start(kv.watcher(), store, &App::new(), allow), last).await;
    let mut expected = exported;
    expected.insert("y".into(), (Bytes::from_static(b"new"), Some(3)));
    assert_eq!(fold_of(&store), expected);
}

/// A `max_age` bucket whose first two writes aged out after an export at 2,
/// and a node whose fold holds `old` entries (value `old`, at the given
/// revisions) under `cursor`: restore it and return the fold it ends with
/// and the one expected (the export plus the write at 3).
async fn restore_over_old_entries(
    old: &[(&str, u64)],
    cursor: slipstream_kv::WatchCursor,
) -> (Fold, Fold) {
    let work = tempfile::tempdir().unwrap();
    let artifacts = work.path().join("artifacts");
    let server = MemoryServer::with_clock(ManualClock::new());
    let kv = bucket_with(&server, StoreConfig::new("cfg").max_age(HOUR)).await;
    put(&kv, "a", "new").await; // 1
    put(&kv, "b", "new").await; // 2
    let exported = export_from(&kv, work.path(), &artifacts, "at-2", 2).await;
    server.clock().advance(2 * HOUR);
    let last = put(&kv, "c", "new").await; // 3
    let (_, mut store) = open_store(&work.path().join("node"), &FaultPlan::new());
    let old: Vec<_> = old
        .iter()
        .map(|(key, revision)| {
            slipstream_kv::KvUpdate::Put(slipstream_kv::KvEntry {
                key: (*key).into(),
                value: Bytes::from_static(b"old"),
                version: slipstream_kv::VersionToken::from_u64(*revision),
                created: None,
                expires: None,
            })
        })
        .collect();
    store.apply(&old, &cursor).unwrap();
    let allow = restoring_allowing_mass_deletes(&artifacts);
    let store = run_to(start(kv.watcher(), store, &App::new(), allow), last).await;
    let mut expected = exported;
    expected.insert("c".into(), (Bytes::from_static(b"new"), Some(3)));
    (fold_of(&store), expected)
}

/// What a restore from a deleted incarnation's artifact leaves when the
/// node crashes before its last commit: the chunks, and no revision. Their
/// revisions are higher than the new bucket's.
#[tokio::test(start_paused = true)]
async fn a_cursorless_fold_left_by_an_interrupted_restore_takes_the_artifact_whatever_its_revisions()
 {
    let old = [("a", 7), ("b", 8), ("gone", 9)];
    let (fold, expected) = restore_over_old_entries(&old, slipstream_kv::WatchCursor::none()).await;
    assert_eq!(fold, expected, "no old entry outranks the artifact");
}

/// A fold entry newer than the fold's own cursor cannot come from this
/// bucket's history as the fold knows it: a restore after a recreation
/// keeps a key the new bucket lists live with the old incarnation's
/// entry. Its revision is not comparable, so the artifact's entry wins.
#[tokio::test(start_paused = true)]
async fn a_fold_entry_newer_than_its_cursor_does_not_outrank_the_artifact() {
    let (fold, expected) =
        restore_over_old_entries(&[("a", 7)], slipstream_kv::WatchCursor::at(1)).await;
    assert_eq!(fold, expected, "the entry at 7 under cursor 1 lost");
}

/// Bootstrap `dir` from `artifacts` against `kv` (append-log options as
/// [`open_store`] uses them).
async fn bootstrap_into(
    kv: &MemoryStore,
    artifacts: &Path,
    dir: &Path,
    scope: WatchScope,
) -> Result<Bootstrap<FaultStore>, AppliedError> {
    let source = LocalArtifacts::new(artifacts);
    let config = BootstrapConfig::new(scope).scratch(dir.parent().unwrap());
    bootstrap::<FaultStore, _>(
        &kv.watcher(),
        &source,
        dir,
        &common::FaultOptions::default(),
        &config,
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn a_new_node_bootstrapped_from_an_artifact_keeps_aged_out_keys_and_takes_only_the_delta() {
    let work = tempfile::tempdir().unwrap();
    let artifacts = work.path().join("artifacts");
    let s = aged_out_gap(work.path(), &artifacts).await;
    let dir = work.path().join("fresh");
    let outcome = bootstrap_into(&s.kv, &artifacts, &dir, WatchScope::All)
        .await
        .unwrap();
    let Bootstrap::Imported { manifest, store } = outcome else {
        panic!("expected an import, got {:?}", outcome.declined());
    };
    assert_eq!(manifest.cursor.revision(), Some(5));
    assert_eq!(
        store.cursor().revision(),
        Some(5),
        "the store opens at the artifact"
    );
    let app = App::new();
    let store = run_to(start(s.kv.watcher(), store, &app, plain()), s.last).await;
    let mut expected = s.exported.clone();
    expected.insert("h".into(), (Bytes::from_static(b"v1"), Some(6)));
    assert_eq!(fold_of(&store), expected, "a aged out and is kept");
    assert_eq!(
        app.seen().parsed,
        vec![Some(6)],
        "only the delta goes through parse"
    );
    // The source keeps its artifact: the import copied it (a moving
    // import would leave its files missing), so another node can take it.
    let again = bootstrap_into(
        &s.kv,
        &artifacts,
        &work.path().join("second"),
        WatchScope::All,
    )
    .await
    .unwrap();
    assert!(
        matches!(again, Bootstrap::Imported { .. }),
        "the local artifact is gone: {:?}",
        again.declined()
    );
}

#[tokio::test(start_paused = true)]
async fn a_bootstrap_declines_what_cannot_start_the_fold_and_leaves_the_directory_empty() {
    let work = tempfile::tempdir().unwrap();
    let server = MemoryServer::with_clock(ManualClock::new());
    let kv = bucket_with(&server, StoreConfig::new("cfg").max_age(HOUR)).await;
    put(&kv, "a.x", "v1").await; // 1
    put(&kv, "b.x", "v1").await; // 2
    let dir = work.path().join("fresh");
    let empty = work.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_eq!(
        bootstrap_into(&kv, &empty, &dir, WatchScope::All)
            .await
            .unwrap()
            .declined(),
        Some(&RestoreRefusal::NoArtifact)
    );
    // An artifact of `a.` alone cannot start a fold of the whole bucket.
    let narrow = work.path().join("narrow");
    std::fs::create_dir_all(&narrow).unwrap();
    {
        let (_, mut store) = open_store(&work.path().join("narrow-node"), &FaultPlan::new());
        let token = CancellationToken::new();
        let config = AppliedConfig::new(WatchScope::Prefix("a.".into()))
            .store(store)
            .shutdown(token.clone());
        let watch = AppliedWatch::new(kv.watcher(), config);
        let mut status = watch.status();
        let task = tokio::spawn(watch.run(App::new().handlers()));
        wait_status(&mut status, WatchStatus::is_ready).await;
        token.cancel();
        store = task.await.unwrap().store.unwrap();
        store
            .export_to(&narrow.join("a-only"), &WatchScope::Prefix("a.".into()))
            .unwrap();
    }
    let declined = bootstrap_into(&kv, &narrow, &dir, WatchScope::All)
        .await
        .unwrap();
    assert!(
        matches!(
            declined.declined(),
            Some(RestoreRefusal::ScopeNotCovered { .. })
        ),
        "{declined:?}"
    );
    // Below the floor: the artifact at 2 aged out of a log that starts at 4.
    let artifacts = work.path().join("artifacts");
    export_from(&kv, work.path(), &artifacts, "at-2", 2).await;
    put(&kv, "c.x", "v1").await; // 3
    server.clock().advance(2 * HOUR);
    put(&kv, "d.x", "v1").await; // 4
    assert_eq!(
        bootstrap_into(&kv, &artifacts, &dir, WatchScope::All)
            .await
            .unwrap()
            .declined(),
        Some(&RestoreRefusal::ArtifactExpired {
            artifact: 2,
            first_sequence: 4
        })
    );
    assert!(
        !dir.exists(),
        "nothing was written for a declined bootstrap"
    );
}

#[tokio::test(start_paused = true)]
async fn a_bootstrap_refuses_a_tampered_artifact_and_a_directory_that_holds_a_store() {
    let work = tempfile::tempdir().unwrap();
    let server = MemoryServer::new();
    let kv = bucket_with(&server, StoreConfig::new("cfg")).await;
    put(&kv, "a", "v1").await;
    let artifacts = work.path().join("artifacts");
    export_from(&kv, work.path(), &artifacts, "at-1", 1).await;
    // Flip one byte of the log the artifact carries.
    let data = walk(&artifacts.join("at-1"))
        .into_iter()
        .find(|p| p.is_file() && p.file_name().is_some_and(|n| n != MANIFEST_FILE))
        .unwrap();
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let dir = work.path().join("fresh");
    let error = bootstrap_into(&kv, &artifacts, &dir, WatchScope::All)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            AppliedError::Store {
                source: slipstream_snapshot::SnapshotError::ArtifactInvalid { .. },
                ..
            }
        ),
        "{error}"
    );
    assert!(
        !dir.exists() || std::fs::read_dir(&dir).unwrap().next().is_none(),
        "a refused import leaves nothing"
    );
    // A directory that already holds a fold is never overwritten.
    let node = work.path().join("exporter-at-1");
    let error = bootstrap_into(&kv, &artifacts, &node, WatchScope::All)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            AppliedError::Store {
                source: slipstream_snapshot::SnapshotError::DestinationNotEmpty { .. },
                ..
            }
        ),
        "{error}"
    );
}
