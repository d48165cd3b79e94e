//! The server quirks the simulator reproduces on purpose, and the watch
//! layer that detects what the raw consumer hides.

// Helpers outside #[test] fns are test code too: a panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use slipstream_kv::{
    Connection, ExpiryReason, KvError, KvStore, KvWatcher, KvWriter, StoreConfig, WatchCursor,
    WatchEvent, WatchScope, WatchStart,
};
use slipstream_memory::{DeliverPolicy, MemoryServer, MemoryStore, Operation};

async fn open(server: &MemoryServer, config: StoreConfig) -> MemoryStore {
    let conn = server.connection();
    conn.connect().await.unwrap();
    conn.store_with_config(&config).await.unwrap()
}

async fn put(store: &MemoryStore, key: &str) -> u64 {
    store
        .writer()
        .put(key, Bytes::from_static(b"v"))
        .await
        .unwrap()
}

#[tokio::test]
async fn raw_consumer_clamps_a_start_below_the_floor_while_the_watch_reports_expiry() {
    let server = MemoryServer::new();
    let store = open(&server, StoreConfig::new("b")).await;
    put(&store, "a").await; // 1
    store.writer().delete("a").await.unwrap(); // 2 (evicts 1: history 1)
    put(&store, "b").await; // 3
    put(&store, "c").await; // 4
    let admin = server.bucket("b");
    admin.purge_below(4).unwrap();

    // The raw primitive: no error, it silently starts at the first retained
    // message and the delete at 2 is never seen.
    let mut raw = admin
        .raw_consumer(&WatchScope::All, DeliverPolicy::ByStartSequence(2))
        .unwrap();
    let first = raw.next().await.unwrap().unwrap();
    assert_eq!((first.sequence, first.key.as_str()), (4, "c"));

    // The KV watch on the same cursor detects it (K1).
    let err = store
        .watcher()
        .watch(&WatchScope::All, WatchStart::After(WatchCursor::at(1)))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        KvError::CursorExpired {
            reason: ExpiryReason::BelowFirstSequence {
                revision: 1,
                first_sequence: 4
            }
        }
    );
}

#[tokio::test]
async fn raw_consumer_refuses_start_zero_and_waits_past_the_end() {
    let server = MemoryServer::new();
    let store = open(&server, StoreConfig::new("b")).await;
    put(&store, "a").await;
    let admin = server.bucket("b");
    assert!(matches!(
        admin.raw_consumer(&WatchScope::All, DeliverPolicy::ByStartSequence(0)),
        Err(KvError::Watch(_))
    ));
    let mut raw = admin
        .raw_consumer(&WatchScope::All, DeliverPolicy::ByStartSequence(3))
        .unwrap();
    assert!(
        raw.next().now_or_never().is_none(),
        "start past the end waits"
    );
    put(&store, "b").await; // 2: still below the start
    assert!(raw.next().now_or_never().is_none());
    put(&store, "c").await; // 3
    let m = raw.next().now_or_never().unwrap().unwrap().unwrap();
    assert_eq!((m.sequence, m.key.as_str()), (3, "c"));
}

#[tokio::test]
async fn cursor_beyond_last_of_a_recreated_bucket_is_refused_where_the_raw_consumer_waits() {
    let server = MemoryServer::new();
    let store = open(&server, StoreConfig::new("b")).await;
    for key in ["a", "b", "c"] {
        put(&store, key).await;
    }
    let admin = server.bucket("b");
    admin.delete().unwrap();
    let store = open(&server, StoreConfig::new("b")).await;
    put(&store, "new").await; // 1 of the new incarnation

    let mut raw = admin
        .raw_consumer(&WatchScope::All, DeliverPolicy::ByStartSequence(4))
        .unwrap();
    assert!(
        raw.next().now_or_never().is_none(),
        "the server waits silently for sequences that will carry other data"
    );
    let err = store
        .watcher()
        .watch(&WatchScope::All, WatchStart::After(WatchCursor::at(3)))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        KvError::CursorExpired {
            reason: ExpiryReason::BeyondLastSequence {
                revision: 3,
                last_sequence: 1
            }
        }
    );
}

#[tokio::test]
async fn identities_differ_even_when_the_clock_stands_still() {
    let server = MemoryServer::new();
    let store = open(&server, StoreConfig::new("b")).await;
    let before = store.watcher().retention().await.unwrap().identity;
    server.bucket("b").delete().unwrap();
    let store = open(&server, StoreConfig::new("b")).await;
    let after = store.watcher().retention().await.unwrap().identity;
    assert_eq!(before.stream, "KV_b");
    assert_eq!(after.stream, before.stream);
    assert!(after.created > before.created);
}

#[tokio::test]
async fn live_watch_overrun_by_head_eviction_ends_with_floor_overrun() {
    let server = MemoryServer::new();
    let store = open(&server, StoreConfig::new("b")).await;
    put(&store, "k").await; // 1
    let mut watch = store
        .watcher()
        .watch(&WatchScope::All, WatchStart::After(WatchCursor::at(1)))
        .await
        .unwrap();
    assert_eq!(watch.next().await, Some(Ok(WatchEvent::CaughtUp)));
    store.writer().delete("k").await.unwrap(); // 2
    put(&store, "x").await; // 3
    server.bucket("b").set_max_msgs(Some(1)).unwrap();
    assert_eq!(
        watch.next().await,
        Some(Err(KvError::CursorExpired {
            reason: ExpiryReason::FloorOverrun {
                frontier: 1,
                first_sequence: 3
            }
        }))
    );
    assert_eq!(watch.next().await, None);
}

/// K11 generalised: on a bucket that evicts nothing current the head
/// passing a running watch is supersession (or a writer's expiry, a purged
/// delete, which the engine repairs once quiet): the watch goes on.
#[tokio::test]
async fn a_head_passing_a_watch_on_a_bucket_that_evicts_nothing_is_not_an_overrun() {
    let server = MemoryServer::new();
    let store = open(&server, StoreConfig::new("b")).await;
    put(&store, "k").await; // 1
    let mut watch = store
        .watcher()
        .watch(&WatchScope::All, WatchStart::After(WatchCursor::at(1)))
        .await
        .unwrap();
    assert_eq!(watch.next().await, Some(Ok(WatchEvent::CaughtUp)));
    store.writer().delete("k").await.unwrap(); // 2
    put(&store, "x").await; // 3
    server.bucket("b").purge_below(3).unwrap();
    match watch.next().await {
        Some(Ok(WatchEvent::Update(update))) => assert_eq!(update.revision(), Some(3)),
        other => panic!("expected the delivery of 3, got {other:?}"),
    }
}

#[tokio::test]
async fn idle_watch_detects_overrun_when_the_clock_moves() {
    let server = MemoryServer::new();
    let config = StoreConfig::new("b").max_age(Duration::from_secs(10));
    let store = open(&server, config).await;
    put(&store, "a").await; // 1
    let mut watch = store
        .watcher()
        .watch(&WatchScope::All, WatchStart::After(WatchCursor::at(1)))
        .await
        .unwrap();
    assert_eq!(watch.next().await, Some(Ok(WatchEvent::CaughtUp)));
    store.writer().delete("a").await.unwrap(); // 2, never delivered
    server.clock().advance(Duration::from_secs(11));
    // Nothing is left to deliver; the backstop sees first = 3 past frontier 1.
    assert_eq!(
        watch.next().now_or_never(),
        Some(Some(Err(KvError::CursorExpired {
            reason: ExpiryReason::FloorOverrun {
                frontier: 1,
                first_sequence: 3
            }
        })))
    );
}

#[tokio::test]
async fn prefix_watch_is_not_floor_guarded() {
    let server = MemoryServer::new();
    let store = open(&server, StoreConfig::new("b")).await;
    put(&store, "a.1").await; // 1
    let scope = WatchScope::Prefix("a.".into());
    let mut watch = store
        .watcher()
        .watch(&scope, WatchStart::After(WatchCursor::at(1)))
        .await
        .unwrap();
    assert_eq!(watch.next().await, Some(Ok(WatchEvent::CaughtUp)));
    put(&store, "b.1").await; // 2
    put(&store, "a.2").await; // 3
    server.bucket("b").purge_below(3).unwrap();
    // A filtered watch cannot tell eviction from filtering: it delivers.
    let next = watch.next().await.unwrap().unwrap();
    assert!(matches!(next, WatchEvent::Update(u) if u.revision() == Some(3)));
}

#[tokio::test]
async fn purge_below_past_the_end_moves_last_and_empty_stream_is_first_after_last() {
    let server = MemoryServer::new();
    let store = open(&server, StoreConfig::new("b")).await;
    put(&store, "a").await;
    let info = server.bucket("b").info().unwrap();
    assert_eq!(
        (info.first_sequence, info.last_sequence, info.messages),
        (1, 1, 1)
    );
    server.bucket("b").purge_below(10).unwrap();
    let info = server.bucket("b").info().unwrap();
    assert_eq!(
        (info.first_sequence, info.last_sequence, info.messages),
        (10, 9, 0)
    );
    assert_eq!(put(&store, "b").await, 10);
}

#[tokio::test]
async fn state_sync_snapshot_skips_messages_removed_before_delivery() {
    let server = MemoryServer::new();
    let store = open(&server, StoreConfig::new("b")).await;
    put(&store, "a").await;
    put(&store, "b").await;
    let mut watch = store
        .watcher()
        .watch(&WatchScope::All, WatchStart::Relist)
        .await
        .unwrap();
    server.bucket("b").purge_subject("a").unwrap();
    let first = watch.next().await.unwrap().unwrap();
    assert!(matches!(first, WatchEvent::Update(u) if u.key() == "b"));
    assert_eq!(watch.next().await, Some(Ok(WatchEvent::CaughtUp)));
    let messages = server.bucket("b").messages().unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].operation, Operation::Put);
}

#[tokio::test]
async fn put_with_ttl_needs_the_bucket_to_allow_it() {
    use slipstream_kv::KvTtl;
    let server = MemoryServer::new();
    let store = open(&server, StoreConfig::new("b")).await;
    let err = store
        .writer()
        .put_with_ttl("a", Bytes::from_static(b"v"), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, KvError::OperationFailed(_)), "{err}");
    assert!(store.watcher().retention().await.unwrap().last_revision == 0);
}

#[tokio::test]
async fn raw_deliver_policies_all_last_per_subject_and_new() {
    let server = MemoryServer::new();
    let store = open(&server, StoreConfig::new("b").history(5)).await;
    put(&store, "a").await; // 1
    put(&store, "a").await; // 2
    put(&store, "b").await; // 3
    put(&store, "c").await; // 4
    let admin = server.bucket("b");
    admin.purge_below(2).unwrap();
    let seqs = |policy| {
        let mut raw = admin.raw_consumer(&WatchScope::All, policy).unwrap();
        let mut out = Vec::new();
        while let Some(Some(m)) = raw.next().now_or_never() {
            out.push(m.unwrap().sequence);
        }
        out
    };
    assert_eq!(
        seqs(DeliverPolicy::All),
        [2, 3, 4],
        "All starts at the first retained"
    );
    assert_eq!(seqs(DeliverPolicy::LastPerSubject), [2, 3, 4]);
    put(&store, "a").await; // 5
    assert_eq!(seqs(DeliverPolicy::LastPerSubject), [3, 4, 5]);
    assert!(seqs(DeliverPolicy::New).is_empty());
}
