//! E3–E8 with a store: commits, failures, exports, resume, closing, expiry.

// Helpers outside #[test] fns panic on failure too: that is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::node::{Running, bucket, truth, wait_status};
use common::{App, DEADLINE, FaultPlan, FaultStore, fold_of, open_store, yield_until};
use slipstream_applied::{
    AppliedConfig, AppliedError, AppliedWatch, BatchPolicy, OnExpiry, Phase, Timeouts, WatchStatus,
    export_channel,
};
use slipstream_kv::{
    Connection, ExpiryReason, KvStore, KvWriter, StoreConfig, WatchCursor, WatchScope,
};
use slipstream_memory::{MemoryServer, MemoryStore};
use slipstream_snapshot::SnapshotStore;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

async fn put_n(kv: &MemoryStore, from: usize, n: usize) {
    for i in from..from + n {
        kv.writer()
            .put(&format!("k{}", i % 7), Bytes::from(format!("v{i}")))
            .await
            .unwrap();
    }
}

/// Start a node watching the whole bucket on `store`.
fn start(
    kv: &MemoryStore,
    store: FaultStore,
    app: &App,
    tune: impl FnOnce(AppliedConfig<FaultStore>) -> AppliedConfig<FaultStore> + 'static,
) -> Running {
    common::node::start(kv.watcher(), store, app, tune)
}

#[tokio::test(start_paused = true)]
async fn apply_never_observes_a_published_cursor_covering_its_own_batch() {
    let (_server, kv) = bucket().await;
    put_n(&kv, 0, 20).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let (_, store) = open_store(dir.path(), &plan);
    let app = App::new();
    // `apply` also checks the published status against its batch.
    let (status_tx, status_rx) = tokio::sync::watch::channel(None::<u64>);
    let seen = Arc::clone(&app.seen);
    let violations = Arc::new(std::sync::Mutex::new(Vec::new()));
    let v2 = Arc::clone(&violations);
    let token = CancellationToken::new();
    let config = AppliedConfig::new(WatchScope::All)
        .store(store)
        .batch(BatchPolicy {
            window: Duration::from_millis(10),
            max: 3,
        })
        .shutdown(token.clone());
    let watch = AppliedWatch::new(kv.watcher(), config);
    let mut status = watch.status();
    let published = watch.status();
    let handlers = slipstream_applied::handlers(
        |u: &slipstream_kv::KvUpdate| Some(u.revision()),
        move |batch: std::vec::Drain<'_, Option<u64>>| {
            let low = batch.flatten().min().unwrap_or(u64::MAX);
            let now = published.borrow().applied;
            let committed = *status_rx.borrow();
            if now.is_some_and(|c| c >= low) || committed.is_some_and(|c| c >= low) {
                v2.lock().unwrap().push((low, now, committed));
            }
        },
    )
    .on_applied(move |c: &WatchCursor| {
        let _ = status_tx.send(c.revision());
    });
    drop(seen);
    let task = tokio::spawn(watch.run(handlers));
    wait_status(&mut status, WatchStatus::is_ready).await;
    put_n(&kv, 20, 10).await;
    wait_status(&mut status, |s| s.applied == Some(30)).await;
    token.cancel();
    let finished = task.await.unwrap();
    assert_eq!(finished.result.unwrap().cursor.revision(), Some(30));
    assert!(violations.lock().unwrap().is_empty(), "{violations:?}");
    assert_eq!(finished.store.unwrap().cursor().revision(), Some(30));
}

#[tokio::test(start_paused = true)]
async fn a_transient_store_failure_requeues_and_the_reopened_store_is_self_consistent() {
    let (_server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    plan.state().fail_at.extend([2, 3]);
    let (_, store) = open_store(dir.path(), &plan);
    let app = App::new();
    let mut run = start(&kv, store, &app, |c| {
        c.batch(BatchPolicy {
            window: Duration::from_millis(10),
            max: 2,
        })
    });
    wait_status(&mut run.status, WatchStatus::is_ready).await;
    put_n(&kv, 0, 6).await;
    wait_status(&mut run.status, |s| s.applied == Some(6)).await;
    run.token.cancel();
    let finished = run.task.await.unwrap();
    assert_eq!(finished.result.unwrap().cursor.revision(), Some(6));
    let committed = plan.state().committed.clone();
    // Commit 1 was the empty-bucket CaughtUp (nothing), so the first batch
    // failed twice and then went out together with the newer updates.
    assert_eq!(plan.state().attempts, committed.len() as u64 + 2);
    assert!(
        committed.iter().any(|(len, _)| *len > 2),
        "a cumulative commit: {committed:?}"
    );
    let revs: Vec<_> = committed.iter().map(|(_, r)| *r).collect();
    assert!(
        revs.windows(2).all(|w| w[0] <= w[1]),
        "cursors never decrease: {revs:?}"
    );
    drop(finished.store);

    let (cursor, reopened) = open_store(dir.path(), &plan);
    assert_eq!(cursor.revision(), Some(6));
    assert_eq!(fold_of(&reopened), truth(&kv).await);
    assert!(
        app.seen().violations.is_empty(),
        "{:?}",
        app.seen().violations
    );
}

#[tokio::test(start_paused = true)]
async fn sixteen_consecutive_store_failures_stop_the_watch() {
    let (_server, kv) = bucket().await;
    put_n(&kv, 0, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    plan.state().fail_all = true;
    let (_, store) = open_store(dir.path(), &plan);
    let app = App::new();
    let run = start(&kv, store, &app, |c| c);
    let finished = timeout(DEADLINE * 10, run.task).await.unwrap().unwrap();
    match finished.result {
        Err(AppliedError::StoreFailed { attempts, .. }) => assert_eq!(attempts, 16),
        other => panic!("expected StoreFailed, got {other:?}"),
    }
    assert_eq!(plan.state().attempts, 16);
    assert_eq!(run.status.borrow().phase, Phase::Failed);
    let store = finished.store.expect("the store is handed back");
    assert_eq!(store.cursor(), &WatchCursor::none());
    assert_eq!(finished.cursor, WatchCursor::none());
}

#[tokio::test(start_paused = true)]
async fn a_panicked_commit_is_fatal_and_the_store_is_lost() {
    let (_server, kv) = bucket().await;
    put_n(&kv, 0, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    plan.state().panic_at = Some(1);
    let (_, store) = open_store(dir.path(), &plan);
    let run = start(&kv, store, &App::new(), |c| c);
    let finished = run.task.await.unwrap();
    assert!(matches!(
        finished.result,
        Err(AppliedError::StorePanicked {
            operation: "commit"
        })
    ));
    assert!(finished.store.is_none());
}

#[tokio::test(start_paused = true)]
async fn an_export_flushes_first_and_carries_the_applied_cursor() {
    let (_server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let (_, store) = open_store(&dir.path().join("fold"), &plan);
    let app = App::new();
    let (exporter, requests) = export_channel(4);
    let mut run = start(&kv, store, &app, |c| {
        c.exports(requests).batch(BatchPolicy {
            window: Duration::from_secs(3600),
            max: 1000,
        })
    });
    wait_status(&mut run.status, WatchStatus::is_ready).await;
    put_n(&kv, 0, 5).await;
    yield_until(|| app.seen().parsed.len() == 5, 1000, "five parsed").await;
    assert!(app.seen().batches.is_empty(), "the batch is still open");

    let manifest = exporter.export(dir.path().join("artifact")).await.unwrap();
    assert_eq!(manifest.cursor.revision(), Some(5));
    assert_eq!(
        app.seen().batches.len(),
        1,
        "the pending batch was applied first"
    );
    assert_eq!(run.status.borrow().applied, Some(5));

    let restored = dir.path().join("restored");
    slipstream_snapshot::import::<FaultStore>(
        &dir.path().join("artifact"),
        &restored,
        &Default::default(),
    )
    .unwrap();
    let (cursor, copy) = open_store(&restored, &FaultPlan::new());
    assert_eq!(cursor.revision(), Some(5));
    assert_eq!(fold_of(&copy), truth(&kv).await);
    run.token.cancel();
    run.task.await.unwrap().result.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failed_export_keeps_the_watch_alive() {
    let (_server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let (_, store) = open_store(&dir.path().join("fold"), &plan);
    let app = App::new();
    let (exporter, requests) = export_channel(1);
    let mut run = start(&kv, store, &app, |c| c.exports(requests));
    wait_status(&mut run.status, WatchStatus::is_ready).await;
    put_n(&kv, 0, 2).await;

    let occupied = dir.path().join("occupied");
    std::fs::create_dir_all(&occupied).unwrap();
    std::fs::write(occupied.join("x"), b"x").unwrap();
    let refused = exporter.export(&occupied).await;
    assert!(
        matches!(refused, Err(AppliedError::Export(_))),
        "{refused:?}"
    );
    plan.state().fail_exports = true;
    let failed = exporter.export(dir.path().join("a1")).await;
    assert!(matches!(failed, Err(AppliedError::Export(_))), "{failed:?}");
    plan.state().fail_exports = false;

    put_n(&kv, 2, 2).await;
    wait_status(&mut run.status, |s| s.applied == Some(4)).await;
    let manifest = exporter.export(dir.path().join("a2")).await.unwrap();
    assert_eq!(manifest.cursor.revision(), Some(4));
    run.token.cancel();
    run.task.await.unwrap().result.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_export_without_a_store_is_refused_and_a_closed_channel_is_ignored() {
    let (_server, kv) = bucket().await;
    let (exporter, requests) = export_channel(1);
    let token = CancellationToken::new();
    let config = AppliedConfig::new(WatchScope::All)
        .exports(requests)
        .shutdown(token.clone());
    let watch = AppliedWatch::new(kv.watcher(), config);
    let mut status = watch.status();
    let task = tokio::spawn(watch.run(App::new().handlers()));
    wait_status(&mut status, WatchStatus::is_ready).await;
    let refused = exporter.export("/nonexistent/never-written").await;
    assert!(matches!(refused, Err(AppliedError::NoStore)), "{refused:?}");
    drop(exporter);
    put_n(&kv, 0, 3).await;
    wait_status(&mut status, |s| s.applied == Some(3)).await;
    token.cancel();
    task.await.unwrap().result.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_owned_variant_resumes_in_process_with_nothing_reapplied_out_of_order() {
    let (_server, kv) = bucket().await;
    put_n(&kv, 0, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let (_, store) = open_store(dir.path(), &plan);
    let app = App::new();
    let mut run = start(&kv, store, &app, |c| c);
    wait_status(&mut run.status, WatchStatus::is_ready).await;
    run.token.cancel();
    let first = run.task.await.unwrap();
    let cursor = first.result.unwrap().cursor;
    assert_eq!(cursor.revision(), Some(10));
    let store = first.store.unwrap();
    assert_eq!(store.cursor(), &cursor);
    let parsed_before = app.seen().parsed.len();

    put_n(&kv, 10, 5).await;
    let mut again = start(&kv, store, &app, |c| c);
    wait_status(&mut again.status, |s| s.is_ready() && s.applied == Some(15)).await;
    again.token.cancel();
    let second = again.task.await.unwrap();
    assert_eq!(second.result.unwrap().cursor.revision(), Some(15));
    let truth = truth(&kv).await;
    let seen = app.seen();
    let resumed: Vec<_> = seen.parsed[parsed_before..]
        .iter()
        .flatten()
        .copied()
        .collect();
    assert_eq!(
        resumed,
        vec![11, 12, 13, 14, 15],
        "only the delta, in order"
    );
    assert!(seen.violations.is_empty(), "{:?}", seen.violations);
    assert_eq!(fold_of(second.store.as_ref().unwrap()), truth);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_store_whose_close_blocks_cannot_freeze_the_runtime() {
    let (_server, kv) = bucket().await;
    put_n(&kv, 0, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    plan.block_close();
    let (_, store) = open_store(dir.path(), &plan);
    let token = CancellationToken::new();
    let config = AppliedConfig::new(WatchScope::All)
        .store(store)
        .shutdown(token.clone())
        .timeouts(Timeouts {
            close: Duration::from_secs(2),
            ..Timeouts::default()
        });
    let watch = AppliedWatch::new(kv.watcher(), config);
    let mut status = watch.status();
    let app = App::new();
    let run = tokio::spawn(watch.run_and_close(app.handlers()));
    // Another task on the same single-threaded runtime keeps running.
    let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t2 = Arc::clone(&ticks);
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            t2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    wait_status(&mut status, WatchStatus::is_ready).await;
    token.cancel();
    let result = timeout(DEADLINE, run).await.unwrap().unwrap();
    assert!(
        matches!(result, Err(AppliedError::CloseTimedOut { .. })),
        "{result:?}"
    );
    assert!(ticks.load(std::sync::atomic::Ordering::Relaxed) >= 10);
    ticker.abort();
    plan.release_close();
    // The close finishes on its thread and releases the store.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while plan.state().drops == 0 {
        assert!(std::time::Instant::now() < deadline, "close never finished");
        std::thread::yield_now();
    }
    let (cursor, _) = open_store(dir.path(), &plan);
    assert_eq!(cursor.revision(), Some(3));
}

#[tokio::test(start_paused = true)]
async fn with_stop_an_expired_cursor_at_resume_ends_the_watch_with_cursor_expired() {
    let (server, kv) = bucket().await;
    put_n(&kv, 0, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let (_, store) = open_store(dir.path(), &plan);
    let app = App::new();
    let mut run = start(&kv, store, &app, |c| c);
    wait_status(&mut run.status, WatchStatus::is_ready).await;
    run.token.cancel();
    let store = run.task.await.unwrap().store.unwrap();
    let before = fold_of(&store);

    put_n(&kv, 3, 4).await;
    server.bucket("cfg").purge_below(6).unwrap();
    let run = start(&kv, store, &app, |c| c.on_expiry(OnExpiry::Stop));
    let finished = run.task.await.unwrap();
    match finished.result {
        Err(AppliedError::CursorExpired {
            reason:
                ExpiryReason::BelowFirstSequence {
                    revision: 3,
                    first_sequence: 6,
                },
            cursor,
        }) => assert_eq!(cursor.revision(), Some(3)),
        other => panic!("expected CursorExpired, got {other:?}"),
    }
    assert_eq!(
        fold_of(&finished.store.unwrap()),
        before,
        "the fold stays as committed"
    );
}

#[tokio::test(start_paused = true)]
async fn with_stop_a_running_watch_overrun_by_retention_ends_with_cursor_expired() {
    // A bucket whose retention can evict current values: on one that
    // evicts nothing a gap is supersession, and such a node goes on.
    let server = MemoryServer::new();
    let conn = server.connection();
    conn.connect().await.unwrap();
    let config = StoreConfig::new("cfg").max_age(Duration::from_secs(3600));
    let kv = conn.store_with_config(&config).await.unwrap();
    put_n(&kv, 0, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = open_store(dir.path(), &FaultPlan::new());
    let app = App::new();
    let mut run = start(&kv, store, &app, |c| c);
    wait_status(&mut run.status, WatchStatus::is_ready).await;
    run.token.cancel();
    let store = run.task.await.unwrap().store.unwrap();

    // Resume as a delta watch, then let retention pass its frontier.
    let mut run = start(&kv, store, &app, |c| c.on_expiry(OnExpiry::Stop));
    wait_status(&mut run.status, WatchStatus::is_ready).await;
    server.faults().stall_watches();
    put_n(&kv, 2, 4).await;
    server.bucket("cfg").purge_below(5).unwrap();
    server.faults().release_watches();
    let finished = timeout(DEADLINE, run.task)
        .await
        .expect("the watch ends")
        .unwrap();
    assert!(
        matches!(
            finished.result,
            Err(AppliedError::CursorExpired {
                reason: ExpiryReason::FloorOverrun { .. },
                ..
            })
        ),
        "{:?}",
        finished.result
    );
    assert_eq!(finished.store.unwrap().cursor().revision(), Some(2));
}

#[tokio::test(start_paused = true)]
async fn shutdown_retries_a_failing_final_commit() {
    let (_server, kv) = bucket().await;
    put_n(&kv, 0, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    plan.state().fail_at.extend([1, 2, 3]);
    let (_, store) = open_store(dir.path(), &plan);
    let mut run = start(&kv, store, &App::new(), |c| c);
    wait_status(&mut run.status, WatchStatus::is_ready).await;
    run.token.cancel();
    let finished = run.task.await.unwrap();
    assert_eq!(finished.result.unwrap().cursor.revision(), Some(3));
    assert_eq!(plan.state().attempts, 4);
    assert_eq!(plan.state().committed, vec![(3, Some(3))]);
}

#[tokio::test(start_paused = true)]
async fn a_firehose_of_updates_cannot_starve_an_export() {
    let (watcher, tx) = common::ScriptedWatcher::new();
    const BACKLOG: u64 = 20_000;
    for rev in 1..=BACKLOG {
        tx.unbounded_send(common::put("k", b"v", Some(rev)))
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = open_store(&dir.path().join("fold"), &FaultPlan::new());
    let (exporter, requests) = export_channel(1);
    let token = CancellationToken::new();
    let config = AppliedConfig::new(WatchScope::All)
        .store(store)
        .exports(requests)
        .shutdown(token.clone());
    let app = App::new();
    let task = tokio::spawn(AppliedWatch::new(watcher, config).run(app.handlers()));
    yield_until(|| !app.seen().parsed.is_empty(), 1000, "first delivery").await;
    let manifest = exporter.export(dir.path().join("artifact")).await.unwrap();
    let at = manifest.cursor.revision().unwrap_or(0);
    assert!(at < BACKLOG / 2, "the export waited for the backlog: {at}");
    token.cancel();
    let stopped = task.await.unwrap().result.unwrap();
    assert!(stopped.cursor.revision() >= Some(at));
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn a_store_that_stopped_committing_resumes_from_its_last_real_commit() {
    let (_server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let (_, store) = open_store(dir.path(), &plan);
    let app = App::new();
    let mut run = start(&kv, store, &app, |c| {
        c.batch(BatchPolicy {
            window: Duration::from_millis(10),
            max: 2,
        })
    });
    wait_status(&mut run.status, WatchStatus::is_ready).await;
    put_n(&kv, 0, 2).await;
    wait_status(&mut run.status, |s| s.applied == Some(2)).await;
    // From the next commit on, the store "crashes": it stops writing.
    {
        let mut state = plan.state();
        state.crash_at = Some(state.attempts + 1);
    }
    put_n(&kv, 2, 2).await;
    // The engine believes revision 4 is committed; the "crashed" store
    // never wrote it.
    wait_status(&mut run.status, |s| s.applied == Some(4)).await;
    run.task.abort();
    assert!(run.task.await.is_err_and(|e| e.is_cancelled()));
    yield_until(|| plan.state().drops == 1, 1000, "store released").await;

    plan.state().crash_at = None;
    let (cursor, store) = open_store(dir.path(), &plan);
    assert_eq!(cursor.revision(), Some(2));
    let restarted = App::new();
    restarted.load(&store);
    let mut run = start(&kv, store, &restarted, |c| c);
    wait_status(&mut run.status, |s| s.is_ready() && s.applied == Some(4)).await;
    run.token.cancel();
    let finished = run.task.await.unwrap();
    assert_eq!(finished.result.unwrap().cursor.revision(), Some(4));
    assert_eq!(restarted.seen().parsed, vec![Some(3), Some(4)]);
    let truth = truth(&kv).await;
    assert_eq!(fold_of(&finished.store.unwrap()), truth);
}

/// `Ready` says the caught-up cursor is in the store: a commit that fails
/// at the `CaughtUp` is retried before the phase changes, not after.
#[tokio::test(start_paused = true)]
async fn ready_comes_with_the_caught_up_cursor_committed_even_after_a_failed_commit() {
    let (_server, kv) = bucket().await;
    put_n(&kv, 0, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    plan.state().fail_at.extend([1, 2]);
    let (_, store) = open_store(dir.path(), &plan);
    let mut run = start(&kv, store, &App::new(), |c| c);
    let ready = wait_status(&mut run.status, WatchStatus::is_ready).await;
    assert_eq!(ready.applied, Some(3), "{ready:?}");
    let committed = plan.state().committed.last().map(|&(_, revision)| revision);
    assert_eq!(
        committed,
        Some(Some(3)),
        "the store holds the cursor Ready names"
    );
    run.token.cancel();
    run.task.await.unwrap().result.unwrap();
}

#[tokio::test]
async fn commits_go_on_while_an_export_writes_its_files() {
    let (_server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let (_, store) = open_store(&dir.path().join("fold"), &plan);
    let app = App::new();
    let (exporter, requests) = export_channel(1);
    let mut run = start(&kv, store, &app, |c| c.exports(requests));
    wait_status(&mut run.status, WatchStatus::is_ready).await;
    put_n(&kv, 0, 5).await;
    wait_status(&mut run.status, |s| s.applied == Some(5)).await;

    plan.block_export_writes();
    let dest = dir.path().join("artifact");
    let export = tokio::spawn(async move { exporter.export(dest).await });
    yield_until(
        || plan.captures.load(std::sync::atomic::Ordering::SeqCst) == 1,
        100_000,
        "the export captured its commit",
    )
    .await;
    // The export's files are not written yet; the engine still commits.
    put_n(&kv, 5, 5).await;
    wait_status(&mut run.status, |s| s.applied == Some(10)).await;
    assert!(!export.is_finished());
    plan.release_export_writes();
    let manifest = timeout(DEADLINE, export).await.unwrap().unwrap().unwrap();
    assert_eq!(
        manifest.cursor.revision(),
        Some(5),
        "A4: the artifact carries the cursor of the commit it captured"
    );
    run.token.cancel();
    timeout(DEADLINE, run.task)
        .await
        .unwrap()
        .unwrap()
        .result
        .unwrap();
}
