//! Fault hooks (M4), connection state and wake-ups.

// Helpers outside #[test] fns are test code too: a panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Context;

use bytes::Bytes;
use futures::task::{ArcWake, waker};
use futures::{FutureExt, StreamExt};
use slipstream_kv::{
    Connection, KvError, KvReader, KvStore, KvWatcher, KvWriter, StoreConfig, WatchEvent,
    WatchScope, WatchStart,
};
use slipstream_memory::{MemoryServer, MemoryStore};

async fn open(server: &MemoryServer) -> MemoryStore {
    let conn = server.connection();
    conn.connect().await.unwrap();
    conn.store_with_config(&StoreConfig::new("b"))
        .await
        .unwrap()
}

#[tokio::test]
async fn fail_next_fails_exactly_that_many_operations() {
    let server = MemoryServer::new();
    let store = open(&server).await;
    server.faults().fail_next(2);
    let injected = KvError::OperationFailed("injected fault".into());
    assert_eq!(store.reader().get("a").await, Err(injected.clone()));
    assert_eq!(
        store.writer().put("a", Bytes::from_static(b"v")).await,
        Err(injected)
    );
    assert_eq!(
        store.writer().put("a", Bytes::from_static(b"v")).await,
        Ok(1)
    );
    assert_eq!(
        server.bucket("b").info().unwrap().last_sequence,
        1,
        "failed writes store nothing"
    );
}

#[tokio::test]
async fn end_watches_ends_existing_watches_once_with_the_error() {
    let server = MemoryServer::new();
    let store = open(&server).await;
    let mut old = store
        .watcher()
        .watch(&WatchScope::All, WatchStart::Relist)
        .await
        .unwrap();
    assert_eq!(old.next().await, Some(Ok(WatchEvent::CaughtUp)));
    server
        .faults()
        .end_watches(KvError::Watch("server restarted".into()));
    let mut young = store
        .watcher()
        .watch(&WatchScope::All, WatchStart::Relist)
        .await
        .unwrap();
    assert_eq!(
        old.next().await,
        Some(Err(KvError::Watch("server restarted".into())))
    );
    assert_eq!(old.next().await, None);
    assert_eq!(young.next().await, Some(Ok(WatchEvent::CaughtUp)));
}

#[tokio::test]
async fn stalled_watches_deliver_in_order_after_release() {
    let server = MemoryServer::new();
    let store = open(&server).await;
    let mut watch = store
        .watcher()
        .watch(&WatchScope::All, WatchStart::Relist)
        .await
        .unwrap();
    server.faults().stall_watches();
    for key in ["a", "b", "c"] {
        store
            .writer()
            .put(key, Bytes::from_static(b"v"))
            .await
            .unwrap();
    }
    assert!(
        watch.next().now_or_never().is_none(),
        "a stalled watch is pending"
    );
    server.faults().release_watches();
    assert_eq!(watch.next().await, Some(Ok(WatchEvent::CaughtUp)));
    let mut revs = Vec::new();
    for _ in 0..3 {
        match watch.next().await {
            Some(Ok(WatchEvent::Update(u))) => revs.push(u.revision().unwrap()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(revs, [1, 2, 3]);
}

#[tokio::test]
async fn shutdown_ends_watches_with_not_connected_and_reconnect_works() {
    let server = MemoryServer::new();
    let conn = server.connection();
    assert_eq!(conn.store("b").await.err(), Some(KvError::NotConnected));
    conn.connect().await.unwrap();
    let store = conn.store("b").await.unwrap();
    let mut watch = store
        .watcher()
        .watch(&WatchScope::All, WatchStart::Relist)
        .await
        .unwrap();
    assert_eq!(watch.next().await, Some(Ok(WatchEvent::CaughtUp)));
    conn.shutdown().await.unwrap();
    assert_eq!(watch.next().await, Some(Err(KvError::NotConnected)));
    assert_eq!(watch.next().await, None);
    conn.connect().await.unwrap();
    assert_eq!(
        store.writer().put("a", Bytes::from_static(b"v")).await,
        Ok(1)
    );
}

#[tokio::test]
async fn deleting_the_bucket_ends_its_watches() {
    let server = MemoryServer::new();
    let store = open(&server).await;
    let mut watch = store
        .watcher()
        .watch(&WatchScope::All, WatchStart::Relist)
        .await
        .unwrap();
    assert_eq!(watch.next().await, Some(Ok(WatchEvent::CaughtUp)));
    server.bucket("b").delete().unwrap();
    assert!(matches!(watch.next().await, Some(Err(KvError::Watch(_)))));
    assert_eq!(watch.next().await, None);
    assert!(matches!(
        store.reader().get("a").await,
        Err(KvError::BucketNotFound { .. })
    ));
}

struct Counter(AtomicUsize);

impl ArcWake for Counter {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn parked_watches_are_woken_by_writes_and_by_the_clock() {
    let server = MemoryServer::new();
    let store = open(&server).await;
    let mut watch = store
        .watcher()
        .watch(&WatchScope::All, WatchStart::Relist)
        .await
        .unwrap();
    assert_eq!(watch.next().await, Some(Ok(WatchEvent::CaughtUp)));
    let counter = Arc::new(Counter(AtomicUsize::new(0)));
    let w = waker(Arc::clone(&counter));
    let mut cx = Context::from_waker(&w);
    assert!(watch.poll_next_unpin(&mut cx).is_pending());
    store
        .writer()
        .put("a", Bytes::from_static(b"v"))
        .await
        .unwrap();
    assert_eq!(counter.0.load(Ordering::SeqCst), 1, "a write wakes");
    assert!(watch.poll_next_unpin(&mut cx).is_ready());
    assert!(watch.poll_next_unpin(&mut cx).is_pending());
    server.clock().advance(std::time::Duration::from_secs(1));
    assert!(counter.0.load(Ordering::SeqCst) >= 2, "the clock wakes");
}

#[tokio::test]
async fn one_injected_fault_fails_a_whole_listing_once() {
    let server = MemoryServer::new();
    let store = open(&server).await;
    for i in 0..600 {
        store
            .writer()
            .put(&format!("k{i:03}"), Bytes::from_static(b"v"))
            .await
            .unwrap();
    }
    server.faults().fail_next(1);
    assert!(matches!(
        store.reader().keys("").await,
        Err(KvError::OperationFailed(_))
    ));
    assert_eq!(store.reader().keys("").await.unwrap().len(), 600);
}
