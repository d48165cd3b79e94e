//! R3, R6–R9 over the simulator: restore from a local directory of
//! artifacts (what it keeps, recovers and deletes, and every refusal
//! leaving the fold as committed), cursorless bootstrap from an artifact
//! (K9), supersession-only resume (K11), and a recreated bucket repaired
//! rather than waited on (R7).

// Helpers outside #[test] fns panic on failure too: that is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::{App, DEADLINE, FaultPlan, FaultStore, fold_of, open_store};
use slipstream_applied::bootstrap;
use slipstream_applied::{
    AppliedConfig, AppliedError, AppliedWatch, Bootstrap, BootstrapConfig, Finished,
    LocalArtifacts, MassDeletePolicy, OnExpiry, RepairCause, RepairMode, RestoreRefusal,
    StatusReceiver, WatchStatus,
};
use slipstream_kv::{
    Connection, ExpiryReason, KvReader, KvStore, KvWatcher, KvWriter, StoreConfig, WatchScope,
};
use slipstream_memory::{ManualClock, MemoryServer, MemoryStore};
use slipstream_snapshot::{MANIFEST_FILE, SnapshotStore};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

type Fold = BTreeMap<String, (Bytes, Option<u64>)>;

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

async fn bucket_with(server: &MemoryServer, config: StoreConfig) -> MemoryStore {
    let conn = server.connection();
    conn.connect().await.unwrap();
    conn.store_with_config(&config).await.unwrap()
}

async fn put(kv: &MemoryStore, key: &str, value: &str) -> u64 {
    kv.writer()
        .put(key, Bytes::from(value.to_owned()))
        .await
        .unwrap()
}

async fn truth(kv: &MemoryStore) -> Fold {
    kv.scan("")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key, (e.value, e.version.as_u64())))
        .collect()
}

async fn wait_status(rx: &mut StatusReceiver, f: impl FnMut(&WatchStatus) -> bool) -> WatchStatus {
    timeout(DEADLINE, rx.wait_for(f))
        .await
        .expect("status deadline")
        .expect("status sender alive")
        .clone()
}

struct Running {
    task: JoinHandle<Finished<FaultStore>>,
    status: StatusReceiver,
    token: CancellationToken,
}

type Tune = Box<dyn FnOnce(AppliedConfig<FaultStore>) -> AppliedConfig<FaultStore>>;

fn start<W: KvWatcher + 'static>(watcher: W, store: FaultStore, app: &App, tune: Tune) -> Running {
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

fn plain() -> Tune {
    Box::new(|c| c)
}

fn restoring(mode: RepairMode, artifacts: &Path) -> Tune {
    let source = LocalArtifacts::new(artifacts);
    Box::new(move |c| c.on_expiry(OnExpiry::Repair(mode)).restore_from(source))
}

/// Auto repair from `artifacts`, mass deletes allowed.
fn restoring_allowing_mass_deletes(artifacts: &Path) -> Tune {
    let source = LocalArtifacts::new(artifacts);
    Box::new(move |c| {
        c.on_expiry(OnExpiry::Repair(RepairMode::Auto))
            .restore_from(source)
            .mass_delete(MassDeletePolicy::Allow)
    })
}

/// Run a node until it is ready at `revision`, then stop it cleanly.
async fn run_to(mut run: Running, revision: u64) -> FaultStore {
    wait_status(&mut run.status, |s| {
        s.is_ready() && s.applied == Some(revision)
    })
    .await;
    assert!(!run.task.is_finished(), "the watch goes on");
    run.token.cancel();
    let finished = run.task.await.unwrap();
    finished.result.expect("clean stop");
    finished.store.unwrap()
}

/// The watch must end on its own with an error; hands back the outcome.
async fn run_to_error(run: Running) -> (AppliedError, FaultStore) {
    let finished = timeout(DEADLINE, run.task)
        .await
        .expect("the watch ends")
        .unwrap();
    let store = finished.store.unwrap();
    (finished.result.expect_err("the watch fails"), store)
}

/// Sync a node on `dir` until ready at `revision`; hand back its store.
async fn synced(kv: &MemoryStore, dir: &Path, app: &App, revision: u64) -> FaultStore {
    let (_, store) = open_store(dir, &FaultPlan::new());
    run_to(start(kv.watcher(), store, app, plain()), revision).await
}

/// An exporter node's artifact of its fold at `revision`, written to
/// `artifacts/<name>`; also returns the exporter's fold.
async fn export_from(
    kv: &MemoryStore,
    work: &Path,
    artifacts: &Path,
    name: &str,
    revision: u64,
) -> Fold {
    let app = App::new();
    let mut store = synced(kv, &work.join(format!("exporter-{name}")), &app, revision).await;
    std::fs::create_dir_all(artifacts).unwrap();
    let manifest = store
        .export_to(&artifacts.join(name), &WatchScope::All)
        .unwrap();
    assert_eq!(manifest.cursor.revision(), Some(revision));
    fold_of(&store)
}

/// The max_age scenario, over the simulated clock: a node folds
/// `a`, `b`, `d` (revisions 1..=3) and goes down; a gap write `g` and a
/// real delete of `d` follow; another node exports at 5; then everything
/// up to 5 ages out and `h` (6) is written. Returns the bucket, the down
/// node's store, the exporter's fold and the last revision.
struct AgedOut {
    server: MemoryServer,
    kv: MemoryStore,
    store: FaultStore,
    exported: Fold,
    last: u64,
}

async fn aged_out_gap(work: &Path, artifacts: &Path) -> AgedOut {
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
        Box::new(|c| c.on_expiry(OnExpiry::Repair(RepairMode::Relist))),
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

fn walk(dir: &Path) -> Vec<PathBuf> {
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
        Box::new(|c| c.on_expiry(OnExpiry::Repair(RepairMode::Restore))),
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

/// A source whose every answer fails, or never comes.
#[derive(Debug)]
enum BrokenSource {
    Fails,
    Hangs,
    /// Lists an artifact, then fails to fetch it.
    FetchFails(slipstream_snapshot::ArtifactManifest),
}

impl slipstream_applied::RestoreSource for BrokenSource {
    fn newest(
        &self,
    ) -> futures::future::BoxFuture<
        '_,
        Result<Option<slipstream_snapshot::ArtifactManifest>, slipstream_applied::SourceError>,
    > {
        Box::pin(async move {
            match self {
                Self::Fails => Err("object store unreachable".into()),
                Self::Hangs => std::future::pending().await,
                Self::FetchFails(m) => Ok(Some(m.clone())),
            }
        })
    }

    fn fetch<'a>(
        &'a self,
        _: &'a slipstream_snapshot::ArtifactManifest,
        _: &'a Path,
    ) -> futures::future::BoxFuture<'a, Result<PathBuf, slipstream_applied::SourceError>> {
        Box::pin(async { Err("download interrupted".into()) })
    }
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
