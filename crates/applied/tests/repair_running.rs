//! R1, K4, K11 generalised, K17 and K18 over the simulator: running
//! All-scope watches overrun. An overrun mid-watch is repaired in process;
//! a purge passing a caught-up state-sync of a plain bucket makes a repair
//! due, run once the bucket is quiet; retention passing a caught-up
//! state-sync, or a fresh node's first delivery, trips the floor guard
//! (the Relist it then needs refused); and a hot bucket outrunning a node
//! by supersession alone is relisted by default, or just followed by
//! nodes that stop on expiry.

// Helpers outside #[test] fns panic on failure too: that is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use bytes::Bytes;
use common::gaps::run_to_without;
use common::node::{
    Fold, Running, bucket, put, repair, run_to, start, synced_store, truth, wait_status,
};
use common::{App, DEADLINE, FaultPlan, fold_of, open_store};
use slipstream_applied::{
    AppliedConfig, AppliedError, AppliedWatch, OnExpiry, RepairCause, RepairMode, StatusReceiver,
    Stopped, StoreSlot, WatchStatus,
};
use slipstream_kv::{ExpiryReason, KvStore, KvWriter, WatchScope};
use slipstream_memory::{MemoryServer, MemoryStore};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

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
