//! Fault injection against a live server: a half-dead connection, a server
//! restart mid-watch, and retention overrunning a running watch (N3, N8).

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
async fn server_restart_mid_watch_resumes_or_surfaces_an_error_never_stalls() {
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

    match next_within(&mut w, Duration::from_secs(40)).await {
        Some(Ok(WatchEvent::Update(u))) => {
            assert_eq!(
                (u.key(), u.revision()),
                ("after", Some(r2)),
                "resumed exactly after the last delivery"
            );
        }
        Some(Err(e)) => eprintln!("watch surfaced an error after the restart: {e}"),
        other => panic!("unexpected {other:?}"),
    }
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
