//! R3, R4, R9 over the simulator: restore from a local directory of
//! artifacts (what it keeps, recovers and deletes: K10), relist refused
//! where restore succeeds on the same gap (K7), and every refusal (no
//! artifact, one not ahead or itself expired: K6; no source), failure of
//! the source or of the import, and held mass delete (K14) stopping the
//! watch with the fold as committed. Starts without a cursor,
//! supersession-only resume, recreated buckets and bootstrap are in
//! `restore_start.rs`.

// Helpers outside #[test] fns panic on failure too: that is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::gaps::{HOUR, aged_out_gap, walk};
use common::node::{
    Tune, bucket_with, export_from, put, restoring, run_to, run_to_error, start, synced,
};
use common::sources::BrokenSource;
use common::{App, FaultStore, fold_of};
use slipstream_applied::{
    AppliedConfig, AppliedError, LocalArtifacts, MassDeletePolicy, OnExpiry, RepairCause,
    RepairMode, RestoreRefusal,
};
use slipstream_kv::{ExpiryReason, KvStore, KvWriter, StoreConfig};
use slipstream_memory::{ManualClock, MemoryServer};
use slipstream_snapshot::{MANIFEST_FILE, SnapshotStore};

#[tokio::test(start_paused = true)]
async fn restore_keeps_an_aged_out_key_recovers_the_gap_write_and_applies_the_real_delete() {
    let work = tempfile::tempdir().unwrap();
    let artifacts = work.path().join("artifacts");
    for mode in [RepairMode::Restore, RepairMode::Auto] {
        let work = tempfile::tempdir().unwrap();
        let s = aged_out_gap(work.path(), &artifacts.join(format!("{mode:?}"))).await;
        let app = App::new();
        app.load(&s.store);
        let run = start(
            s.kv.watcher(),
            s.store,
            &app,
            restoring(mode, &artifacts.join(format!("{mode:?}"))),
        );
        let store = run_to(run, s.last).await;
        let fold = fold_of(&store);
        let mut expected = s.exported.clone();
        expected.insert("h".into(), (Bytes::from_static(b"v1"), Some(6)));
        assert_eq!(
            fold, expected,
            "{mode:?}: the exporter's fold plus the delta"
        );
        assert!(fold.contains_key("a"), "the aged-out key is kept");
        assert!(fold.contains_key("g"), "the gap write is recovered");
        assert!(!fold.contains_key("d"), "the real delete is applied");
        assert_eq!(
            app.seen().fold,
            fold,
            "the application saw the same changes"
        );
        assert!(
            app.seen().violations.is_empty(),
            "{:?}",
            app.seen().violations
        );
        assert_eq!(store.cursor().revision(), Some(6));
        drop(s.server);
    }
}

#[tokio::test(start_paused = true)]
async fn relist_is_refused_where_restore_succeeds_on_the_same_gap() {
    let work = tempfile::tempdir().unwrap();
    let artifacts = work.path().join("artifacts");
    let s = aged_out_gap(work.path(), &artifacts).await;
    let before = fold_of(&s.store);
    let run = start(
        s.kv.watcher(),
        s.store,
        &App::new(),
        Box::new(|c: AppliedConfig<FaultStore>| c.on_expiry(OnExpiry::Repair(RepairMode::Relist))),
    );
    let (error, store) = run_to_error(run).await;
    assert!(
        matches!(error, AppliedError::RelistRefused { .. }),
        "{error}"
    );
    assert_eq!(fold_of(&store), before);
}

/// Each refusal happens before anything changes: the fold and cursor are
/// as committed.
#[tokio::test(start_paused = true)]
async fn every_restore_refusal_and_failure_stops_the_watch_and_leaves_the_fold_unchanged() {
    type Setup = fn(&Path, &Path);
    let no_artifacts: Setup = |_, arts| std::fs::create_dir_all(arts).unwrap();
    let tamper: Setup = |_, arts| {
        // Flip a byte of the artifact's data: the import's checksum fails.
        let data = arts.join("at-5").join("data");
        let file = walk(&data).into_iter().next().expect("a data file");
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
    };
    let garbage_manifest_only: Setup = |_, arts| {
        std::fs::remove_dir_all(arts.join("at-5")).unwrap();
        std::fs::create_dir_all(arts.join("bad")).unwrap();
        std::fs::write(arts.join("bad").join(MANIFEST_FILE), b"{not json").unwrap();
    };
    type Expect = fn(&AppliedError) -> bool;
    let cases: [(&str, Setup, Expect); 3] = [
        (
            "an empty artifact directory",
            no_artifacts,
            |e| matches!(e, AppliedError::RestoreRefused { refusal, .. } if **refusal == RestoreRefusal::NoArtifact),
        ),
        ("a tampered artifact", tamper, |e| {
            matches!(
                e,
                AppliedError::RestoreFailed {
                    stage: "importing the artifact",
                    ..
                }
            )
        }),
        (
            "only an unreadable manifest",
            garbage_manifest_only,
            |e| matches!(e, AppliedError::RestoreRefused { refusal, .. } if **refusal == RestoreRefusal::NoArtifact),
        ),
    ];
    for (what, setup, expected) in cases {
        let work = tempfile::tempdir().unwrap();
        let artifacts = work.path().join("artifacts");
        let s = if what == "an empty artifact directory" {
            aged_out_gap(work.path(), &work.path().join("elsewhere")).await
        } else {
            aged_out_gap(work.path(), &artifacts).await
        };
        setup(work.path(), &artifacts);
        let before = (fold_of(&s.store), s.store.cursor().revision());
        let run = start(
            s.kv.watcher(),
            s.store,
            &App::new(),
            restoring(RepairMode::Restore, &artifacts),
        );
        let (error, store) = run_to_error(run).await;
        assert!(expected(&error), "{what}: got {error}");
        assert!(
            matches!(
                &error,
                AppliedError::RestoreRefused {
                    reason: RepairCause::Expired(ExpiryReason::BelowFirstSequence { .. }),
                    ..
                } | AppliedError::RestoreFailed { .. }
            ),
            "{what}: {error:?}"
        );
        assert_eq!(
            (fold_of(&store), store.cursor().revision()),
            before,
            "{what}: fold unchanged"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_artifact_that_is_not_ahead_or_itself_expired_is_refused_before_fetching() {
    // Not ahead: the only artifact is older than the node's cursor.
    let work = tempfile::tempdir().unwrap();
    let artifacts = work.path().join("artifacts");
    let server = MemoryServer::with_clock(ManualClock::new());
    let kv = bucket_with(&server, StoreConfig::new("cfg").max_age(HOUR)).await;
    put(&kv, "a", "v1").await; // 1
    export_from(&kv, work.path(), &artifacts, "at-1", 1).await;
    put(&kv, "b", "v1").await; // 2
    let store = synced(&kv, &work.path().join("node"), &App::new(), 2).await;
    put(&kv, "c", "v1").await; // 3
    server.clock().advance(2 * HOUR);
    put(&kv, "d", "v1").await; // 4: first sequence is now 4
    let before = fold_of(&store);
    let run = start(
        kv.watcher(),
        store,
        &App::new(),
        restoring(RepairMode::Restore, &artifacts),
    );
    let (error, store) = run_to_error(run).await;
    assert!(
        matches!(
            &error,
            AppliedError::RestoreRefused { refusal, .. }
                if **refusal == RestoreRefusal::NotAhead { artifact: 1, fold: 2 }
        ),
        "{error}"
    );
    assert_eq!(fold_of(&store), before);

    // Itself expired: the artifact is ahead of the node but below the floor.
    let work = tempfile::tempdir().unwrap();
    let artifacts = work.path().join("artifacts");
    let server = MemoryServer::with_clock(ManualClock::new());
    let kv = bucket_with(&server, StoreConfig::new("cfg").max_age(HOUR)).await;
    put(&kv, "a", "v1").await; // 1
    let store = synced(&kv, &work.path().join("node"), &App::new(), 1).await;
    put(&kv, "b", "v1").await; // 2
    export_from(&kv, work.path(), &artifacts, "at-2", 2).await;
    put(&kv, "c", "v1").await; // 3
    server.clock().advance(2 * HOUR);
    put(&kv, "d", "v1").await; // 4: first sequence is now 4
    let run = start(
        kv.watcher(),
        store,
        &App::new(),
        restoring(RepairMode::Restore, &artifacts),
    );
    let (error, _) = run_to_error(run).await;
    assert!(
        matches!(
            &error,
            AppliedError::RestoreRefused { refusal, .. }
                if **refusal == RestoreRefusal::ArtifactExpired { artifact: 2, first_sequence: 4 }
        ),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn restore_without_a_source_is_unavailable_and_changes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let s = aged_out_gap(work.path(), &work.path().join("artifacts")).await;
    let before = fold_of(&s.store);
    let run = start(
        s.kv.watcher(),
        s.store,
        &App::new(),
        Box::new(|c: AppliedConfig<FaultStore>| c.on_expiry(OnExpiry::Repair(RepairMode::Restore))),
    );
    let (error, store) = run_to_error(run).await;
    assert!(
        matches!(error, AppliedError::RestoreUnavailable { .. }),
        "{error}"
    );
    assert_eq!(fold_of(&store), before);
}

#[tokio::test(start_paused = true)]
async fn a_restore_that_would_delete_most_of_the_fold_is_held_until_allowed() {
    let work = tempfile::tempdir().unwrap();
    let artifacts = work.path().join("artifacts");
    let server = MemoryServer::with_clock(ManualClock::new());
    let kv = bucket_with(&server, StoreConfig::new("cfg").max_age(HOUR)).await;
    for key in ["a", "b", "c", "d"] {
        put(&kv, key, "v1").await; // 1..=4
    }
    let store = synced(&kv, &work.path().join("node"), &App::new(), 4).await;
    for key in ["a", "b", "c"] {
        kv.writer().delete(key).await.unwrap(); // 5..=7
    }
    export_from(&kv, work.path(), &artifacts, "at-7", 7).await;
    server.clock().advance(2 * HOUR);
    let last = put(&kv, "e", "v1").await; // 8
    let before = fold_of(&store);
    let run = start(
        kv.watcher(),
        store,
        &App::new(),
        restoring(RepairMode::Restore, &artifacts),
    );
    let (error, store) = run_to_error(run).await;
    assert!(
        matches!(
            error,
            AppliedError::MassDeleteHeld {
                deletions: 3,
                fold_len: 4,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(fold_of(&store), before, "held: nothing deleted");

    let source = LocalArtifacts::new(&artifacts);
    let allow: Tune = Box::new(move |c| {
        c.on_expiry(OnExpiry::Repair(RepairMode::Restore))
            .restore_from(source)
            .mass_delete(MassDeletePolicy::Allow)
    });
    let store = run_to(start(kv.watcher(), store, &App::new(), allow), last).await;
    let fold = fold_of(&store);
    assert_eq!(
        fold.keys().map(String::as_str).collect::<Vec<_>>(),
        ["d", "e"],
        "the override deletes what the artifact says is gone"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_or_hanging_restore_source_stops_the_watch_with_the_stage_and_changes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let artifacts = work.path().join("artifacts");
    let s = aged_out_gap(work.path(), &artifacts).await;
    let manifest = slipstream_snapshot::ArtifactManifest::from_json(
        &std::fs::read(artifacts.join("at-5").join(MANIFEST_FILE)).unwrap(),
    )
    .unwrap();
    let before = (fold_of(&s.store), s.store.cursor().revision());
    let mut store = s.store;
    for (source, stage) in [
        (BrokenSource::Fails, "finding the newest artifact"),
        (BrokenSource::Hangs, "finding the newest artifact"),
        (BrokenSource::FetchFails(manifest), "fetching the artifact"),
    ] {
        let what = format!("{source:?}");
        let tune: Tune = Box::new(move |c| {
            c.on_expiry(OnExpiry::Repair(RepairMode::Restore))
                .restore_from(source)
                .timeouts(slipstream_applied::Timeouts {
                    restore: Duration::from_secs(5),
                    ..slipstream_applied::Timeouts::default()
                })
        });
        let (error, back) = run_to_error(start(s.kv.watcher(), store, &App::new(), tune)).await;
        match &error {
            AppliedError::RestoreFailed { stage: got, .. } => {
                assert_eq!(*got, stage, "{what}: {error}");
            }
            other => panic!("{what}: expected RestoreFailed, got {other:?}"),
        }
        assert_eq!(
            (fold_of(&back), back.cursor().revision()),
            before,
            "{what}: fold unchanged"
        );
        store = back;
    }
}
