//! Per-message TTL in the fold (issue 18, item 1): an entry whose put
//! carried a TTL leaves the fold when it expires, through `parse`/`apply`
//! and a commit like any delete, whether it expires while the node runs or
//! while it is down; a fold written before expiries were recorded takes
//! them from the bucket.

// Helpers outside #[test] fns panic on failure too: that is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::node::{Running, wait_status};
use common::{App, DEADLINE, FaultPlan, FaultStore, open_store};
use slipstream_applied::WatchStatus;
use slipstream_kv::{
    Connection, KvEntry, KvStore, KvTtl, KvUpdate, KvWriter, MessageTtl, StoreConfig, VersionToken,
    WatchCursor,
};
use slipstream_memory::{MemoryServer, MemoryStore};
use slipstream_snapshot::SnapshotStore;

const TTL: Duration = Duration::from_secs(10);

async fn ttl_bucket() -> (MemoryServer, MemoryStore) {
    let server = MemoryServer::new();
    let conn = server.connection();
    conn.connect().await.unwrap();
    let config = StoreConfig::new("cfg").message_ttl(MessageTtl::Enabled);
    let kv = conn.store_with_config(&config).await.unwrap();
    (server, kv)
}

/// A lease that expires after [`TTL`] and a route that never does; the
/// lease's revision.
async fn lease_and_route(kv: &MemoryStore) -> u64 {
    let rev = kv
        .put_with_ttl("lease", Bytes::from_static(b"node-1"), TTL)
        .await
        .unwrap();
    kv.writer()
        .put("route", Bytes::from_static(b"10.0.0.1"))
        .await
        .unwrap();
    rev
}

/// A node on `store` reporting its status every 50 ms.
fn start(kv: &MemoryStore, store: FaultStore, app: &App) -> Running {
    common::node::start(kv.watcher(), store, app, |c| {
        c.status_interval(Duration::from_millis(50))
    })
}

/// Wait, against a deadline, until the application's fold satisfies `f`.
async fn until_app(app: &App, what: &str, f: impl Fn(&App) -> bool) {
    let deadline = std::time::Instant::now() + DEADLINE;
    while !f(app) {
        assert!(std::time::Instant::now() < deadline, "deadline: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn app_has(app: &App, key: &str) -> bool {
    app.seen().fold.contains_key(key)
}

#[tokio::test]
async fn an_entry_leaves_the_fold_through_apply_when_its_ttl_passes_while_running() {
    let (server, kv) = ttl_bucket().await;
    lease_and_route(&kv).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let (_, store) = open_store(dir.path(), &plan);
    let app = App::new();
    let mut run = start(&kv, store, &app);
    wait_status(&mut run.status, WatchStatus::is_ready).await;
    assert!(app_has(&app, "lease") && app_has(&app, "route"));

    // The bucket expires the message unmarked: nothing reaches the watch.
    server.clock().advance(TTL + Duration::from_secs(1));
    until_app(&app, "the expired entry left the application's fold", |a| {
        !app_has(a, "lease")
    })
    .await;
    let status = wait_status(&mut run.status, |s| s.expired == 1).await;
    assert!(app_has(&app, "route"), "an entry without a TTL stays");
    assert_eq!(status.applied, Some(2), "an expiry moves no cursor");
    let store = run.stop().await;
    assert_eq!(store.get("lease").unwrap(), None, "committed like a delete");
    assert!(store.get("route").unwrap().is_some());
    assert!(
        app.seen().violations.is_empty(),
        "{:?}",
        app.seen().violations
    );
}

#[tokio::test]
async fn a_rewrite_without_a_ttl_cancels_the_expiry() {
    let (server, kv) = ttl_bucket().await;
    kv.put_with_ttl("k", Bytes::from_static(b"short"), TTL)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let (_, store) = open_store(dir.path(), &plan);
    let app = App::new();
    let mut run = start(&kv, store, &app);
    wait_status(&mut run.status, WatchStatus::is_ready).await;
    kv.writer()
        .put("k", Bytes::from_static(b"forever"))
        .await
        .unwrap();
    // A witness that does expire shows when the engine has looked.
    kv.put_with_ttl("witness", Bytes::from_static(b"w"), TTL)
        .await
        .unwrap();
    wait_status(&mut run.status, |s| s.applied == Some(3)).await;
    server.clock().advance(TTL * 2);
    until_app(&app, "the witness expired", |a| !app_has(a, "witness")).await;
    assert!(app_has(&app, "k"));
    assert_eq!(run.status.borrow().expired, 1);
    let store = run.stop().await;
    let entry = store.get("k").unwrap().unwrap();
    assert_eq!((&entry.value[..], entry.expires), (&b"forever"[..], None));
}

#[tokio::test]
async fn an_entry_whose_ttl_passed_while_the_node_was_down_leaves_at_the_restart() {
    let (server, kv) = ttl_bucket().await;
    lease_and_route(&kv).await;
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let (_, store) = open_store(dir.path(), &plan);
    let app = App::new();
    let mut run = start(&kv, store, &app);
    wait_status(&mut run.status, WatchStatus::is_ready).await;
    let store = run.stop().await;
    let stored = store.get("lease").unwrap().unwrap();
    assert!(stored.expires.is_some(), "the store records the expiry");
    assert!(store.cursor().holds_expiring());
    drop(store);

    server.clock().advance(TTL + Duration::from_secs(1));
    // No message arrives after the restart: the expiry comes from the fold.
    let (_, store) = open_store(dir.path(), &plan);
    let app = App::new();
    app.load(&store);
    assert!(app_has(&app, "lease"));
    let mut run = start(&kv, store, &app);
    wait_status(&mut run.status, |s| s.is_ready() && s.expired == 1).await;
    until_app(&app, "the expired entry left at the restart", |a| {
        !app_has(a, "lease")
    })
    .await;
    let store = run.stop().await;
    assert_eq!(store.get("lease").unwrap(), None);
    assert!(
        !store.cursor().holds_expiring(),
        "nothing left expires, so the next start reads nothing"
    );
}

#[tokio::test]
async fn a_fold_written_before_expiries_takes_them_from_the_bucket() {
    let (server, kv) = ttl_bucket().await;
    let rev = lease_and_route(&kv).await;
    // What an older build left: the same entries without their expiry,
    // and a cursor that reads as such.
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let (_, mut store) = open_store(dir.path(), &plan);
    let old = |key: &str, value: &'static [u8], rev: u64| {
        KvUpdate::Put(KvEntry {
            key: key.into(),
            value: Bytes::from_static(value),
            version: VersionToken::from_u64(rev),
            created: None,
            expires: None,
        })
    };
    let legacy = WatchCursor::at(2).with_expiries_unrecorded(true);
    store
        .apply(
            &[old("lease", b"node-1", rev), old("route", b"10.0.0.1", 2)],
            &legacy,
        )
        .unwrap();
    let app = App::new();
    app.load(&store);
    let mut run = start(&kv, store, &app);
    wait_status(&mut run.status, WatchStatus::is_ready).await;
    let batches_before = app.seen().batches.len();
    assert_eq!(
        batches_before, 0,
        "recording an expiry is nothing the application sees"
    );

    server.clock().advance(TTL + Duration::from_secs(1));
    until_app(&app, "the migrated expiry removed the entry", |a| {
        !app_has(a, "lease")
    })
    .await;
    let store = run.stop().await;
    assert!(!store.cursor().expiries_unrecorded());
    assert_eq!(store.get("lease").unwrap(), None);
    assert!(store.get("route").unwrap().is_some());
}
