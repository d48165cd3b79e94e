//! The NATS backend against a live server: reads, writes, listings and
//! watches, and the no-leak oracle (O4).

// Test helpers: a failed expectation is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};
use slipstream_it::{Admin, NatsServer, connect, open, wait_until};
use slipstream_kv::{
    Connection, KvError, KvPurge, KvReader, KvUpdate, KvWatcher, KvWriter, StoreConfig,
    WatchCursor, WatchEvent, WatchScope, WatchStart,
};
use slipstream_nats::{NatsBucket, NatsWatch};

const BOUND: Duration = Duration::from_secs(10);

async fn next(w: &mut NatsWatch) -> Result<WatchEvent, KvError> {
    tokio::time::timeout(BOUND, w.next())
        .await
        .expect("watch produced nothing within the bound")
        .expect("watch ended")
}

async fn next_update(w: &mut NatsWatch) -> KvUpdate {
    match next(w).await {
        Ok(WatchEvent::Update(u)) => u,
        other => panic!("expected an update, got {other:?}"),
    }
}

async fn no_consumers_left(admin: &Admin, stream: &str) {
    let gone = wait_until(BOUND, || async {
        admin.consumer_names(stream).await.is_empty()
    })
    .await;
    assert!(
        gone,
        "consumers left behind: {:?}",
        admin.consumer_names(stream).await
    );
}

async fn put(b: &NatsBucket, key: &str, value: &str) -> u64 {
    b.put(key, Bytes::from(value.to_owned()))
        .await
        .expect("put")
}

#[tokio::test]
async fn writes_reads_and_cas_follow_the_kv_contract() {
    let server = NatsServer::start().await;
    let conn = connect(&server.url()).await;
    let b = open(&conn, StoreConfig::new("rw").history(5)).await;

    let r1 = put(&b, "a", "1").await;
    assert_eq!(b.get("a").await.unwrap(), Some(Bytes::from("1")));
    assert_eq!(
        b.entry("a").await.unwrap().unwrap().version.as_u64(),
        Some(r1)
    );
    assert!(b.get("missing").await.unwrap().is_none());

    assert!(matches!(
        b.create("a", Bytes::from("x")).await,
        Err(KvError::AlreadyExists { .. })
    ));
    assert!(matches!(
        b.update("a", Bytes::from("x"), r1 + 100).await,
        Err(KvError::RevisionMismatch { .. })
    ));
    let r2 = b.update("a", Bytes::from("2"), r1).await.unwrap();
    assert!(r2 > r1);

    assert!(b.delete("a").await.unwrap());
    assert!(
        b.delete("never-existed").await.unwrap(),
        "delete reports true for an absent key"
    );
    assert!(b.get("a").await.unwrap().is_none());
    assert!(
        b.entry("a").await.unwrap().is_none(),
        "a delete marker is not an entry"
    );
    let r3 = b
        .create("a", Bytes::from("3"))
        .await
        .expect("create over a delete marker");

    let r4 = b.delete_with_version("a", r3).await.unwrap();
    assert!(
        b.get("a").await.unwrap().is_none(),
        "an empty-value tombstone reads as absent"
    );
    let raw = b
        .entry("a")
        .await
        .unwrap()
        .expect("entry returns the tombstone");
    assert!(raw.value.is_empty());
    assert_eq!(raw.version.as_u64(), Some(r4));

    b.purge("a").await.unwrap();
    b.purge("a").await.expect("purge is idempotent");
    assert!(b.entry("a").await.unwrap().is_none());
    assert!(matches!(
        b.put("bad key", Bytes::new()).await,
        Err(KvError::InvalidKey { .. }) | Err(KvError::OperationFailed(_))
    ));
}

#[tokio::test]
async fn scans_and_key_listings_of_5000_keys_are_complete_and_leave_no_consumer() {
    let server = NatsServer::start().await;
    let conn = connect(&server.url()).await;
    let b = open(&conn, StoreConfig::new("big")).await;
    let n = 5_200;
    stream::iter(0..n)
        .map(|i| {
            let b = b.clone();
            async move {
                b.put(&format!("k.{i:05}"), Bytes::from(format!("value-{i}")))
                    .await
            }
        })
        .buffer_unordered(256)
        .for_each(|r| async move {
            r.expect("put");
        })
        .await;
    // Markers and tombstones are not live keys.
    b.delete("k.00000").await.unwrap();
    let rev = b
        .entry("k.00001")
        .await
        .unwrap()
        .unwrap()
        .version
        .as_u64()
        .unwrap();
    b.delete_with_version("k.00001", rev).await.unwrap();
    b.purge("k.00002").await.unwrap();
    put(&b, "other", "x").await;

    let keys = b.keys("k.").await.unwrap();
    assert_eq!(keys.len(), n - 3);
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys are sorted");
    assert_eq!(keys.first().map(String::as_str), Some("k.00003"));

    let entries = b.scan("k.").await.unwrap();
    assert_eq!(entries.len(), n - 3);
    assert!(
        entries
            .iter()
            .all(|e| e.value == format!("value-{}", e.key[2..].parse::<usize>().unwrap()))
    );

    let mut seen = 0;
    let visited = b.for_each_key("", |_| seen += 1).await.unwrap();
    assert_eq!((visited, seen), (n as u64 - 2, n - 2));

    let admin = Admin::connect(&server.url()).await;
    no_consumers_left(&admin, b.stream_name()).await;
}

#[tokio::test]
async fn relist_watch_delivers_state_markers_included_then_caught_up_then_live() {
    let server = NatsServer::start().await;
    let conn = connect(&server.url()).await;
    let b = open(&conn, StoreConfig::new("relist").history(3)).await;
    put(&b, "a", "1").await;
    put(&b, "a", "2").await;
    put(&b, "b", "1").await;
    b.delete("b").await.unwrap();

    let mut w = b.watcher_watch(&WatchScope::All, WatchStart::Relist).await;
    let first = next_update(&mut w).await;
    assert!(
        matches!(&first, KvUpdate::Put(e) if e.key == "a" && e.value == "2"),
        "{first:?}"
    );
    assert!(matches!(next_update(&mut w).await, KvUpdate::Delete(m) if m.key == "b"));
    assert_eq!(next(&mut w).await.unwrap(), WatchEvent::CaughtUp);
    let live = put(&b, "c", "1").await;
    let u = next_update(&mut w).await;
    assert_eq!((u.key(), u.revision()), ("c", Some(live)));
}

trait WatchExt {
    async fn watcher_watch(&self, scope: &WatchScope, start: WatchStart) -> NatsWatch;
}

impl WatchExt for NatsBucket {
    async fn watcher_watch(&self, scope: &WatchScope, start: WatchStart) -> NatsWatch {
        tokio::time::timeout(BOUND, self.watch(scope, start))
            .await
            .expect("watch setup bounded")
            .expect("watch setup")
    }
}

#[tokio::test]
async fn delta_watch_delivers_only_what_follows_the_cursor_in_revision_order() {
    let server = NatsServer::start().await;
    let conn = connect(&server.url()).await;
    let b = open(&conn, StoreConfig::new("delta").history(10)).await;
    let r1 = put(&b, "a", "1").await;
    let r2 = put(&b, "b", "1").await;
    let r3 = put(&b, "a", "2").await;
    let mut w = b
        .watcher_watch(&WatchScope::All, WatchStart::After(WatchCursor::at(r1)))
        .await;
    assert_eq!(next_update(&mut w).await.revision(), Some(r2));
    assert_eq!(next_update(&mut w).await.revision(), Some(r3));
    assert_eq!(next(&mut w).await.unwrap(), WatchEvent::CaughtUp);

    let mut at_end = b
        .watcher_watch(&WatchScope::All, WatchStart::After(WatchCursor::at(r3)))
        .await;
    assert_eq!(
        next(&mut at_end).await.unwrap(),
        WatchEvent::CaughtUp,
        "nothing pending: caught up at once"
    );
}

#[tokio::test]
async fn empty_prefixes_watch_nothing_and_create_no_consumer() {
    let server = NatsServer::start().await;
    let conn = connect(&server.url()).await;
    let b = open(&conn, StoreConfig::new("empty")).await;
    put(&b, "a", "1").await;
    let mut w = b
        .watcher_watch(&WatchScope::Prefixes(vec![]), WatchStart::Relist)
        .await;
    assert_eq!(next(&mut w).await.unwrap(), WatchEvent::CaughtUp);
    put(&b, "b", "1").await;
    let quiet = tokio::time::timeout(Duration::from_millis(300), w.next()).await;
    assert!(quiet.is_err(), "a watch of nothing delivered {quiet:?}");
    let admin = Admin::connect(&server.url()).await;
    assert!(admin.consumer_names(b.stream_name()).await.is_empty());
}

#[tokio::test]
async fn prefixes_watch_creates_exactly_one_consumer_and_sees_only_its_keys() {
    let server = NatsServer::start().await;
    let conn = connect(&server.url()).await;
    let b = open(&conn, StoreConfig::new("prefixes")).await;
    put(&b, "a.1", "x").await;
    put(&b, "b.1", "x").await;
    put(&b, "c.1", "x").await;
    let scope = WatchScope::Prefixes(vec!["a.".into(), "b.".into()]);
    let mut w = b.watcher_watch(&scope, WatchStart::Relist).await;
    let admin = Admin::connect(&server.url()).await;
    assert_eq!(admin.consumer_names(b.stream_name()).await.len(), 1);
    let mut keys = vec![
        next_update(&mut w).await.key().to_owned(),
        next_update(&mut w).await.key().to_owned(),
    ];
    keys.sort();
    assert_eq!(keys, ["a.1", "b.1"]);
    assert_eq!(next(&mut w).await.unwrap(), WatchEvent::CaughtUp);
    put(&b, "c.2", "x").await;
    put(&b, "b.2", "x").await;
    assert_eq!(next_update(&mut w).await.key(), "b.2");
}

#[tokio::test]
async fn dropped_watches_leave_no_consumer_behind() {
    let server = NatsServer::start().await;
    let conn = connect(&server.url()).await;
    let b = open(&conn, StoreConfig::new("drop")).await;
    let r = put(&b, "a", "1").await;
    let admin = Admin::connect(&server.url()).await;
    let w1 = b.watcher_watch(&WatchScope::All, WatchStart::Relist).await;
    let w2 = b
        .watcher_watch(
            &WatchScope::Prefix("a.".into()),
            WatchStart::After(WatchCursor::at(r)),
        )
        .await;
    assert_eq!(admin.consumer_names(b.stream_name()).await.len(), 2);
    drop((w1, w2));
    no_consumers_left(&admin, b.stream_name()).await;
}

#[tokio::test]
async fn retention_reads_the_live_stream() {
    let server = NatsServer::start().await;
    let conn = connect(&server.url()).await;
    let b = open(
        &conn,
        StoreConfig::new("ret").max_age(Duration::from_secs(3600)),
    )
    .await;
    let empty = b.retention().await.unwrap();
    assert_eq!(
        (empty.first_revision, empty.last_revision),
        (1, 0),
        "empty stream: first = last + 1"
    );
    assert!(empty.evicts_current_values() && empty.age_is_only_eviction());
    assert_eq!(empty.identity.stream, "KV_ret");
    put(&b, "a", "1").await;
    let r = b.retention().await.unwrap();
    assert_eq!((r.first_revision, r.last_revision), (1, 1));
    let plain = open(&conn, StoreConfig::new("plain"))
        .await
        .retention()
        .await
        .unwrap();
    assert!(!plain.evicts_current_values());
    assert_ne!(plain.identity, r.identity);
    assert!(conn.capabilities().multi_filter_watch);
}
