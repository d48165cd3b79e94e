//! Fault injection against a live server: a half-dead connection, healed
//! or not, a server restart mid-watch, and retention overrunning a running
//! watch (N3, N8, R10).

// Test helpers: a failed expectation is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};
use serde_json::json;
use slipstream_it::{Admin, NatsServer, StallProxy, connect_with, open, test_settings};
use slipstream_kv::{
    Connection, ExpiryReason, KvError, KvReader, KvWatcher, KvWriter, StoreConfig, WatchCursor,
    WatchEvent, WatchScope, WatchStart,
};
use slipstream_nats::{NatsConfig, NatsWatch};

async fn next_within(w: &mut NatsWatch, within: Duration) -> Option<Result<WatchEvent, KvError>> {
    tokio::time::timeout(within, w.next())
        .await
        .unwrap_or_else(|_| panic!("watch silent for {within:?}: a stall"))
}

#[tokio::test]
async fn stalled_connection_returns_timeout_from_every_operation_never_hangs() {
    let server = NatsServer::start().await;
    let proxy = StallProxy::start(server.addr()).await;
    let bound = Duration::from_millis(800);
    let settings = test_settings()
        .request_timeout(bound)
        .idle_heartbeat(Duration::from_millis(200))
        .reconnect_budget(Duration::from_secs(2));
    let conn = connect_with(NatsConfig::new(proxy.url()).settings(settings)).await;
    let b = open(&conn, StoreConfig::new("stall")).await;
    let rev = b.put("a", Bytes::from("1")).await.unwrap();
    let mut running = b.watch(&WatchScope::All, WatchStart::Relist).await.unwrap();
    assert!(matches!(
        next_within(&mut running, Duration::from_secs(5)).await,
        Some(Ok(WatchEvent::Update(_)))
    ));
    assert_eq!(
        next_within(&mut running, Duration::from_secs(5)).await,
        Some(Ok(WatchEvent::CaughtUp))
    );

    proxy.stall();
    // Far above the bound: a hang fails here instead of blocking the suite.
    let outer = Duration::from_secs(10);
    macro_rules! times_out {
        ($name:literal, $op:expr) => {{
            let result = tokio::time::timeout(outer, $op)
                .await
                .unwrap_or_else(|_| panic!("{} hung behind a stalled connection", $name));
            assert!(
                matches!(result, Err(KvError::Timeout { .. })),
                "{}: expected Timeout, got {:?}",
                $name,
                result.map(|_| ())
            );
        }};
    }
    times_out!("get", b.get("a"));
    times_out!("entry", b.entry("a"));
    times_out!("put", b.put("a", Bytes::from("2")));
    times_out!("delete", b.delete("a"));
    times_out!("create", b.create("n", Bytes::from("1")));
    times_out!("update", b.update("a", Bytes::from("3"), rev));
    times_out!("keys", b.keys(""));
    times_out!("scan", b.scan(""));
    times_out!("retention", b.retention());
    times_out!(
        "relist watch",
        b.watch(&WatchScope::All, WatchStart::Relist)
    );
    times_out!(
        "delta watch",
        b.watch(&WatchScope::All, WatchStart::After(WatchCursor::at(rev)))
    );
    times_out!(
        "open bucket",
        conn.store_with_config(&StoreConfig::new("other"))
    );

    // The running watch notices the silence and ends with an error once its
    // re-create budget is spent.
    let ended = next_within(&mut running, Duration::from_secs(20)).await;
    assert!(matches!(ended, Some(Err(_))), "{ended:?}");
}

#[tokio::test]
async fn server_restart_mid_watch_resumes_after_the_frontier_and_goes_on_delivering() {
    let mut server = NatsServer::start().await;
    let settings = test_settings().idle_heartbeat(Duration::from_millis(300));
    let conn = connect_with(NatsConfig::new(server.url()).settings(settings)).await;
    let b = open(&conn, StoreConfig::new("restart")).await;
    let r1 = b.put("before", Bytes::from("1")).await.unwrap();
    let mut w = b
        .watch(&WatchScope::All, WatchStart::After(WatchCursor::at(r1 - 1)))
        .await
        .unwrap();
    assert!(matches!(
        next_within(&mut w, Duration::from_secs(5)).await,
        Some(Ok(WatchEvent::Update(_)))
    ));
    assert_eq!(
        next_within(&mut w, Duration::from_secs(5)).await,
        Some(Ok(WatchEvent::CaughtUp))
    );

    server.restart().await;
    let writer = connect_with(NatsConfig::new(server.url()).settings(test_settings())).await;
    let wb = open(&writer, StoreConfig::new("restart")).await;
    let r2 = wb.put("after", Bytes::from("2")).await.unwrap();

    // The watch re-creates its consumer after the frontier once the
    // server is back: the next delivery is the first write after it.
    match next_within(&mut w, Duration::from_secs(40)).await {
        Some(Ok(WatchEvent::Update(u))) => assert_eq!(
            (u.key(), u.revision()),
            ("after", Some(r2)),
            "resumed exactly after the last delivery"
        ),
        other => panic!("the watch did not resume after the restart: {other:?}"),
    }
    let r3 = wb.put("later", Bytes::from("3")).await.unwrap();
    match next_within(&mut w, Duration::from_secs(10)).await {
        Some(Ok(WatchEvent::Update(u))) => assert_eq!((u.key(), u.revision()), ("later", Some(r3))),
        other => panic!("the resumed watch stopped delivering: {other:?}"),
    }
}

/// A mirror (the engine on an append-log store) behind a proxy that stops
/// forwarding for `stall`, with `writes` puts made meanwhile by another
/// client; once the link heals, the mirror resumes from its cursor and its
/// fold equals the bucket, with every revision applied once, in order.
async fn half_open_heals(stall: Duration, writes: u64) -> (u64, usize) {
    use slipstream_applied::{AppliedConfig, AppliedWatch, handlers};
    use slipstream_snapshot::{AppendLogOptions, AppendLogStore, Durability, SnapshotStore};
    use std::sync::{Arc, Mutex};

    let server = NatsServer::start().await;
    let proxy = StallProxy::start(server.addr()).await;
    let conn = connect_with(NatsConfig::new(proxy.url()).settings(test_settings())).await;
    let b = open(&conn, StoreConfig::new("heal")).await;
    let writer = connect_with(NatsConfig::new(server.url()).settings(test_settings())).await;
    let wb = open(&writer, StoreConfig::new("heal")).await;
    for i in 0..20 {
        wb.put(&format!("k{i}"), Bytes::from("0")).await.unwrap();
    }
    let dir = slipstream_it::TempDir::new("heal");
    let (_, store) = AppendLogStore::open(
        dir.path(),
        &AppendLogOptions::with_durability(Durability::NoFsync),
    )
    .unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let config = AppliedConfig::new(WatchScope::All)
        .store(store)
        .shutdown(token.clone());
    let watch = AppliedWatch::new(b.clone(), config);
    let mut status = watch.status();
    let applied = Arc::new(Mutex::new(Vec::<u64>::new()));
    let seen = Arc::clone(&applied);
    let task = tokio::spawn(watch.run(handlers(
        |u: &slipstream_kv::KvUpdate| u.revision(),
        move |batch: std::vec::Drain<'_, u64>| seen.lock().unwrap().extend(batch),
    )));
    let synced = wb.retention().await.unwrap().last_revision;
    let ready = tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| s.is_ready() && s.applied == Some(synced)),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    assert!(ready, "not synced before the stall");

    let before = applied.lock().unwrap().len();
    proxy.stall();
    let started = tokio::time::Instant::now();
    for i in 0..writes {
        wb.put(&format!("k{}", i % 20), Bytes::from(format!("{i}")))
            .await
            .unwrap();
    }
    if let Some(rest) = stall.checked_sub(started.elapsed()) {
        // The fault's length, not a synchronisation: the link stays dead
        // past two of the client's 1 s pings.
        tokio::time::sleep(rest).await;
    }
    proxy.resume();
    let last = wb.put("healed", Bytes::from("1")).await.unwrap();
    let reached = tokio::time::timeout(
        Duration::from_secs(40),
        status.wait_for(|s| s.is_ready() && s.applied == Some(last)),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let now = status.borrow().clone();
    token.cancel();
    let finished = task.await.unwrap();
    assert!(
        reached,
        "did not converge after the link healed: {now:?}; ended with {:?}",
        finished.result.as_ref().err()
    );
    finished.result.unwrap();
    let store = finished.store.unwrap();
    let fold: std::collections::BTreeMap<String, Bytes> = store
        .range("")
        .unwrap()
        .into_iter()
        .map(|(k, e)| (k, e.value))
        .collect();
    let truth: std::collections::BTreeMap<String, Bytes> = wb
        .scan("")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    assert_eq!(fold, truth, "the fold equals the bucket");
    let applied = applied.lock().unwrap();
    assert!(
        applied.windows(2).all(|w| w[0] < w[1]),
        "revisions applied out of order or twice"
    );
    let after = &applied[before..];
    assert!(
        after.iter().all(|r| *r > synced),
        "something at or before the cursor was applied again: {after:?}"
    );
    // History 1 keeps only each key's latest: the delta delivers what is
    // left of the writes, then the write after the heal.
    assert_eq!(
        after.last(),
        Some(&last),
        "the write after the heal applied last"
    );
    (last - synced, after.len())
}

#[tokio::test]
async fn a_healed_half_open_link_resumes_the_mirror_from_its_cursor_when_idle() {
    let (revisions, applied) = half_open_heals(Duration::from_secs(4), 0).await;
    assert_eq!(
        (revisions, applied),
        (1, 1),
        "only the write after the heal"
    );
}

#[tokio::test]
async fn a_healed_half_open_link_resumes_the_mirror_from_its_cursor_under_writes() {
    let (revisions, applied) = half_open_heals(Duration::from_secs(4), 500).await;
    eprintln!("{revisions} revisions written across the stall, {applied} applied after it");
    assert!(
        applied >= 21,
        "the delta carries every key's latest and the heal's write"
    );
}

#[tokio::test]
async fn floor_guard_trips_in_band_when_a_purge_overruns_a_running_all_scope_watch() {
    let server = NatsServer::start().await;
    // The backstop probe is far away: only the in-band check can trip.
    let settings = test_settings()
        .floor_probe_interval(Duration::from_secs(3600))
        .idle_heartbeat(Duration::from_secs(2));
    let conn = connect_with(NatsConfig::new(server.url()).settings(settings)).await;
    // Retention that evicts current values: only there is a floor guarded.
    let b = open(
        &conn,
        StoreConfig::new("floor").max_age(Duration::from_secs(3600)),
    )
    .await;
    let n = 20_000_u64;
    stream::iter(0..n)
        .map(|i| {
            let b = b.clone();
            async move { b.put(&format!("k{i}"), Bytes::from(vec![b'x'; 1024])).await }
        })
        .buffer_unordered(256)
        .for_each(|r| async move {
            r.expect("put");
        })
        .await;

    // Not polled: the watch's buffer fills, flow control holds the server back.
    let mut w = b
        .watch(&WatchScope::All, WatchStart::After(WatchCursor::at(0)))
        .await
        .unwrap();
    let admin = Admin::connect(&server.url()).await;
    let consumer = admin
        .consumer_names("KV_floor")
        .await
        .pop()
        .expect("one consumer");
    let delivered = || async {
        admin
            .api(&format!("CONSUMER.INFO.KV_floor.{consumer}"), json!({}))
            .await
            .map(|v| v["delivered"]["stream_seq"].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    // Stable across two samples: the server is waiting for flow control.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut last = 0;
    let held_back = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = delivered().await;
        if now > 0 && now == last {
            break now;
        }
        last = now;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer kept delivering"
        );
    };
    assert!(
        held_back + 2_000 < n,
        "flow control did not hold the server back (delivered {held_back})"
    );
    let floor = held_back + 1_000;
    admin.purge_below("KV_floor", floor).await.unwrap();

    let mut updates = 0_u64;
    let outcome = loop {
        match next_within(&mut w, Duration::from_secs(20)).await {
            Some(Ok(WatchEvent::Update(_))) => updates += 1,
            Some(Ok(WatchEvent::CaughtUp)) => panic!("caught up across an overrun"),
            Some(Err(e)) => break e,
            None => panic!("watch ended without an error"),
        }
    };
    assert_eq!(
        outcome,
        KvError::CursorExpired {
            reason: ExpiryReason::FloorOverrun {
                frontier: updates,
                first_sequence: floor
            }
        }
    );
    assert!(
        updates >= held_back,
        "everything sent before the purge was passed on first"
    );
    assert!(
        next_within(&mut w, Duration::from_secs(5)).await.is_none(),
        "the stream ends after the error"
    );
}

#[tokio::test]
async fn floor_guard_lets_a_benign_interior_gap_through() {
    let server = NatsServer::start().await;
    let conn = connect_with(NatsConfig::new(server.url()).settings(test_settings())).await;
    // History 1: rewriting a key evicts its older revision from the interior.
    let b = open(&conn, StoreConfig::new("interior")).await;
    let ra = b.put("a", Bytes::from("1")).await.unwrap();
    let rb1 = b.put("b", Bytes::from("1")).await.unwrap();
    let rb2 = b.put("b", Bytes::from("2")).await.unwrap();
    assert_eq!(
        b.retention().await.unwrap().first_revision,
        ra,
        "the head is intact"
    );

    let mut w = b
        .watch(&WatchScope::All, WatchStart::After(WatchCursor::at(ra)))
        .await
        .unwrap();
    match next_within(&mut w, Duration::from_secs(5)).await {
        Some(Ok(WatchEvent::Update(u))) => {
            assert_eq!(
                u.revision(),
                Some(rb2),
                "revision {rb1} was evicted from the interior"
            );
        }
        other => panic!("expected the update after the gap, got {other:?}"),
    }
    assert_eq!(
        next_within(&mut w, Duration::from_secs(5)).await,
        Some(Ok(WatchEvent::CaughtUp))
    );
}

#[tokio::test]
async fn floor_probe_trips_when_retention_passes_a_watch_that_receives_nothing() {
    let server = NatsServer::start().await;
    // Heartbeats are far apart, so only the probe can notice.
    let settings = test_settings()
        .idle_heartbeat(Duration::from_secs(30))
        .floor_probe_interval(Duration::from_millis(300));
    let conn = connect_with(NatsConfig::new(server.url()).settings(settings)).await;
    let b = open(
        &conn,
        StoreConfig::new("probe").max_age(Duration::from_secs(3600)),
    )
    .await;
    let frontier = b.put("a", Bytes::from("1")).await.unwrap();
    let mut w = b
        .watch(
            &WatchScope::All,
            WatchStart::After(WatchCursor::at(frontier)),
        )
        .await
        .unwrap();
    assert_eq!(
        next_within(&mut w, Duration::from_secs(5)).await,
        Some(Ok(WatchEvent::CaughtUp))
    );
    // The consumer vanishes server-side; what follows is never delivered.
    let admin = Admin::connect(&server.url()).await;
    let consumer = admin.consumer_names("KV_probe").await.pop().unwrap();
    admin
        .api(&format!("CONSUMER.DELETE.KV_probe.{consumer}"), json!({}))
        .await
        .unwrap();
    let writer = connect_with(NatsConfig::new(server.url()).settings(test_settings())).await;
    let wb = open(
        &writer,
        StoreConfig::new("probe").max_age(Duration::from_secs(3600)),
    )
    .await;
    let mut last = 0;
    for i in 0..5 {
        last = wb.put(&format!("k{i}"), Bytes::from("v")).await.unwrap();
    }
    admin.purge_below("KV_probe", last + 1).await.unwrap();

    let ended = next_within(&mut w, Duration::from_secs(10)).await;
    assert_eq!(
        ended,
        Some(Err(KvError::CursorExpired {
            reason: ExpiryReason::FloorOverrun {
                frontier,
                first_sequence: last + 1
            }
        }))
    );
}
