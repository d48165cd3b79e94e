//! E1–E3, E5, E9: batching, cursor authority and status, over the simulator
//! on tokio's paused clock.

// Helpers outside #[test] fns panic on failure too: that is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::node::{bucket, wait_status};
use common::{App, ScriptedWatcher, delete, put, yield_until};
use slipstream_applied::{
    AppliedConfig, AppliedWatch, BatchPolicy, Phase, StopReason, WatchStatus,
};
use slipstream_kv::{KvError, KvStore, KvWriter, WatchCursor, WatchEvent, WatchScope};
use slipstream_memory::MemoryStore;
use tokio_util::sync::CancellationToken;

async fn put_n(store: &MemoryStore, n: usize) {
    for i in 0..n {
        store
            .writer()
            .put(&format!("k{i}"), Bytes::from(format!("v{i}")))
            .await
            .unwrap();
    }
}

fn batch(window_ms: u64, max: usize) -> BatchPolicy {
    BatchPolicy {
        window: Duration::from_millis(window_ms),
        max,
    }
}

#[tokio::test(start_paused = true)]
async fn batch_closes_when_its_window_elapses() {
    let (_server, kv) = bucket().await;
    let app = App::new();
    let token = CancellationToken::new();
    let config = AppliedConfig::new(WatchScope::All)
        .batch(batch(10, 100))
        .shutdown(token.clone());
    let watch = AppliedWatch::new(kv.watcher(), config);
    let mut status = watch.status();
    let task = tokio::spawn(watch.run(app.handlers()));
    wait_status(&mut status, WatchStatus::is_ready).await;

    put_n(&kv, 3).await;
    yield_until(|| app.seen().parsed.len() == 3, 1000, "three parsed").await;
    assert!(
        app.seen().batches.is_empty(),
        "nothing applied before the window"
    );
    tokio::time::advance(Duration::from_millis(9)).await;
    yield_until(|| true, 100, "settle").await;
    assert!(app.seen().batches.is_empty(), "nothing applied at 9 ms");
    tokio::time::advance(Duration::from_millis(1)).await;
    wait_status(&mut status, |s| s.applied == Some(3)).await;
    assert_eq!(app.seen().batches, vec![vec![Some(1), Some(2), Some(3)]]);

    token.cancel();
    let finished = task.await.unwrap();
    assert_eq!(finished.result.unwrap().cursor.revision(), Some(3));
}

#[tokio::test(start_paused = true)]
async fn batch_closes_at_max_and_the_rest_flushes_on_shutdown() {
    let (_server, kv) = bucket().await;
    let app = App::new();
    let token = CancellationToken::new();
    let config = AppliedConfig::new(WatchScope::All)
        .batch(batch(3_600_000, 3))
        .shutdown(token.clone());
    let watch = AppliedWatch::new(kv.watcher(), config);
    let mut status = watch.status();
    let task = tokio::spawn(watch.run(app.handlers()));
    wait_status(&mut status, WatchStatus::is_ready).await;

    put_n(&kv, 5).await;
    yield_until(|| app.seen().parsed.len() == 5, 1000, "five parsed").await;
    assert_eq!(app.seen().batches, vec![vec![Some(1), Some(2), Some(3)]]);
    assert_eq!(status.borrow().applied, Some(3));

    token.cancel();
    let finished = task.await.unwrap();
    let stopped = finished.result.unwrap();
    assert_eq!(stopped.reason, StopReason::Shutdown);
    assert_eq!(stopped.cursor.revision(), Some(5));
    assert_eq!(app.seen().batches[1], vec![Some(4), Some(5)]);
}

#[tokio::test(start_paused = true)]
async fn end_of_stream_flushes_the_pending_batch() {
    let (watcher, tx) = ScriptedWatcher::new();
    let app = App::new();
    let config = AppliedConfig::new(WatchScope::All).batch(batch(3_600_000, 100));
    tx.unbounded_send(put("a", b"1", Some(1))).unwrap();
    tx.unbounded_send(delete("a", 2)).unwrap();
    tx.unbounded_send(put("b", b"2", Some(3))).unwrap();
    drop(tx);
    let finished = AppliedWatch::new(watcher, config).run(app.handlers()).await;
    let stopped = finished.result.unwrap();
    assert_eq!(stopped.reason, StopReason::EndOfStream);
    assert_eq!(stopped.cursor.revision(), Some(3));
    let seen = app.seen();
    assert_eq!(seen.batches, vec![vec![Some(1), Some(2), Some(3)]]);
    assert_eq!(seen.fold.keys().collect::<Vec<_>>(), vec!["b"]);
}

#[tokio::test(start_paused = true)]
async fn rejected_updates_still_advance_the_cursor() {
    let (watcher, tx) = ScriptedWatcher::new();
    let app = App {
        reject: Some("skip.".into()),
        ..App::new()
    };
    tx.unbounded_send(put("keep", b"1", Some(1))).unwrap();
    tx.unbounded_send(put("skip.a", b"x", Some(2))).unwrap();
    tx.unbounded_send(Ok(WatchEvent::CaughtUp)).unwrap();
    tx.unbounded_send(put("skip.b", b"y", Some(3))).unwrap();
    drop(tx);
    let finished = AppliedWatch::new(watcher, AppliedConfig::new(WatchScope::All))
        .run(app.handlers())
        .await;
    assert_eq!(finished.result.unwrap().cursor.revision(), Some(3));
    let seen = app.seen();
    // The last batch held only a rejected update: apply was skipped, the
    // cursor still moved.
    assert_eq!(seen.batches, vec![vec![Some(1)]]);
    let reported: Vec<_> = seen.reported.iter().map(WatchCursor::revision).collect();
    assert_eq!(reported, vec![Some(2), Some(3)]);
    assert!(seen.violations.is_empty(), "{:?}", seen.violations);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_version_never_moves_the_cursor() {
    let (watcher, tx) = ScriptedWatcher::new();
    let app = App::new();
    tx.unbounded_send(put("a", b"1", None)).unwrap();
    tx.unbounded_send(Ok(WatchEvent::CaughtUp)).unwrap();
    tx.unbounded_send(put("b", b"1", Some(7))).unwrap();
    tx.unbounded_send(Ok(WatchEvent::CaughtUp)).unwrap();
    tx.unbounded_send(put("c", b"1", None)).unwrap();
    drop(tx);
    let finished = AppliedWatch::new(watcher, AppliedConfig::new(WatchScope::All))
        .run(app.handlers())
        .await;
    assert_eq!(finished.result.unwrap().cursor.revision(), Some(7));
    let seen = app.seen();
    assert_eq!(seen.batches, vec![vec![None], vec![Some(7)], vec![None]]);
    let reported: Vec<_> = seen.reported.iter().map(WatchCursor::revision).collect();
    assert_eq!(reported, vec![None, Some(7), Some(7)]);
}

#[tokio::test(start_paused = true)]
async fn replays_are_dropped_before_parse_and_counted() {
    let (watcher, tx) = ScriptedWatcher::new();
    let app = App::new();
    let watch = AppliedWatch::new(watcher, AppliedConfig::new(WatchScope::All));
    let status = watch.status();
    for event in [
        put("a", b"1", Some(1)),
        put("b", b"1", Some(2)),
        Ok(WatchEvent::CaughtUp),
        // A consumer restarted from the beginning re-delivers 1 and 2.
        put("a", b"0", Some(1)),
        put("b", b"0", Some(2)),
        put("c", b"1", Some(3)),
        put("c", b"0", Some(3)),
    ] {
        tx.unbounded_send(event).unwrap();
    }
    drop(tx);
    let finished = watch.run(app.handlers()).await;
    assert_eq!(finished.result.unwrap().cursor.revision(), Some(3));
    assert_eq!(app.seen().parsed, vec![Some(1), Some(2), Some(3)]);
    assert_eq!(app.seen().fold["a"].0, Bytes::from_static(b"1"));
    assert_eq!(status.borrow().replays_dropped, 3);
}

#[tokio::test(start_paused = true)]
async fn readiness_follows_caught_up_and_re_arms_after_a_rewatch() {
    let (server, kv) = bucket().await;
    put_n(&kv, 4).await;
    let app = App::new();
    let token = CancellationToken::new();
    let config = AppliedConfig::new(WatchScope::All).shutdown(token.clone());
    let watch = AppliedWatch::new(kv.watcher(), config);
    let mut status = watch.status();
    assert_eq!(status.borrow().phase, Phase::Starting);
    let task = tokio::spawn(watch.run(app.handlers()));
    let ready = wait_status(&mut status, WatchStatus::is_ready).await;
    assert_eq!(
        (ready.applied, ready.stream_last, ready.lag),
        (Some(4), Some(4), Some(0))
    );

    server
        .faults()
        .end_watches(KvError::Watch("connection reset".into()));
    wait_status(&mut status, |s| s.phase == Phase::Syncing).await;
    put_n(&kv, 2).await;
    let again = wait_status(&mut status, |s| s.is_ready() && s.applied == Some(6)).await;
    assert_eq!(again.lag, Some(0));

    token.cancel();
    task.await.unwrap().result.unwrap();
    let seen = app.seen();
    let parsed: Vec<_> = seen.parsed.iter().flatten().copied().collect();
    assert_eq!(
        parsed,
        vec![1, 2, 3, 4, 5, 6],
        "the re-watch resumed after the cursor"
    );
    assert!(seen.violations.is_empty(), "{:?}", seen.violations);
}

#[tokio::test(start_paused = true)]
async fn resume_without_a_store_starts_after_the_callers_cursor() {
    let (_server, kv) = bucket().await;
    put_n(&kv, 5).await;
    let app = App::new();
    let token = CancellationToken::new();
    let config = AppliedConfig::new(WatchScope::All)
        .resume_from(WatchCursor::at(3))
        .shutdown(token.clone());
    let watch = AppliedWatch::new(kv.watcher(), config);
    let mut status = watch.status();
    let task = tokio::spawn(watch.run(app.handlers()));
    wait_status(&mut status, WatchStatus::is_ready).await;
    token.cancel();
    let stopped = task.await.unwrap().result.unwrap();
    assert_eq!(stopped.cursor.revision(), Some(5));
    assert_eq!(app.seen().parsed, vec![Some(4), Some(5)]);
    assert!(
        stopped.cursor.identity().is_some(),
        "the cursor carries the bucket identity"
    );
    assert!(
        stopped.cursor.message_time().is_some(),
        "and its message's time"
    );
}

#[tokio::test(start_paused = true)]
async fn a_zero_batch_max_is_refused() {
    let (_server, kv) = bucket().await;
    let config = AppliedConfig::new(WatchScope::All).batch(batch(10, 0));
    let finished = AppliedWatch::new(kv.watcher(), config)
        .run(App::new().handlers())
        .await;
    assert!(matches!(
        finished.result,
        Err(slipstream_applied::AppliedError::InvalidConfig(_))
    ));
}
