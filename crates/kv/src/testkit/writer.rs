//! V6: writing and purging a bucket.

use std::time::Duration;

use bytes::Bytes;

use super::{
    ConformanceHarness, Fixture, HarnessStore, Seen, advance, eventually, put, seen,
    until_caught_up, within,
};
use crate::config::MessageTtl;
use crate::cursor::WatchCursor;
use crate::error::KvError;
use crate::scope::{WatchScope, WatchStart};
use crate::traits::{Connection, KvStore, KvTtl, KvWriter};

/// Every write of every key takes the next revision of one sequence.
pub async fn writes_share_one_increasing_revision_sequence<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "revisions", |c| c).await;
    let a = fx.put("a", b"1").await;
    let b = fx.put("b", b"1").await;
    let w = fx.store.writer();
    within(h, "delete", w.delete("a")).await.expect("delete");
    let c = fx.put("c", b"1").await;
    assert_eq!((b, c), (a + 1, a + 3));
    assert_eq!(fx.retention().await.last_revision, c);
}

/// `delete` of a key that was never written reports `true` and still writes
/// a delete marker (state-sync shows it).
pub async fn delete_of_absent_key_reports_true_and_writes_marker<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "delete-absent", |c| c).await;
    fx.delete("ghost").await;
    let mut watch = fx
        .watch(&WatchScope::All, WatchStart::Relist)
        .await
        .expect("watch");
    let got: Vec<Seen> = until_caught_up(h, &mut watch)
        .await
        .iter()
        .map(seen)
        .collect();
    assert_eq!(got, [Seen::Del("ghost".into(), 1)]);
}

/// `create` refuses a live key with `AlreadyExists`, and succeeds over a
/// missing key, a delete marker, a purge marker and an empty-value
/// tombstone.
pub async fn create_refuses_live_key_but_not_marker_or_tombstone<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "create", |c| c).await;
    let w = fx.store.writer();
    let first = within(h, "create", w.create("a", Bytes::from_static(b"1")))
        .await
        .expect("create of a missing key");
    let again = within(h, "create", w.create("a", Bytes::from_static(b"2"))).await;
    assert_eq!(again, Err(KvError::AlreadyExists { key: "a".into() }));
    assert_eq!(
        fx.get("a").await.as_deref(),
        Some(&b"1"[..]),
        "refused create wrote nothing"
    );
    fx.delete("a").await;
    fx.put("p", b"x").await;
    fx.purge("p").await;
    fx.put("t", b"").await;
    for key in ["a", "p", "t"] {
        let rev = within(h, "create", w.create(key, Bytes::from_static(b"new")))
            .await
            .unwrap_or_else(|e| panic!("create over the marker or tombstone of {key}: {e}"));
        assert!(rev > first);
        assert_eq!(fx.get(key).await.as_deref(), Some(&b"new"[..]));
    }
}

/// `update` with the key's latest revision succeeds; with a stale one it is
/// `RevisionMismatch` and writes nothing.
pub async fn update_with_stale_revision_is_revision_mismatch<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "update-cas", |c| c).await;
    let w = fx.store.writer();
    let r1 = fx.put("a", b"1").await;
    let r2 = within(h, "update", w.update("a", Bytes::from_static(b"2"), r1))
        .await
        .expect("update at the latest revision");
    assert!(r2 > r1);
    let stale = within(h, "update", w.update("a", Bytes::from_static(b"3"), r1)).await;
    assert_eq!(
        stale,
        Err(KvError::RevisionMismatch {
            key: "a".into(),
            expected: r1
        })
    );
    assert_eq!(fx.get("a").await.as_deref(), Some(&b"2"[..]));
    assert_eq!(
        fx.retention().await.last_revision,
        r2,
        "a refused CAS stores nothing"
    );
}

/// `delete_with_version` is a compare-and-set to an empty-value tombstone.
pub async fn delete_with_version_is_cas_to_tombstone<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "delete-cas", |c| c).await;
    let w = fx.store.writer();
    let r1 = fx.put("a", b"1").await;
    let r2 = fx.put("a", b"2").await;
    let stale = within(h, "delete_with_version", w.delete_with_version("a", r1)).await;
    assert!(
        matches!(stale, Err(KvError::RevisionMismatch { .. })),
        "{stale:?}"
    );
    assert_eq!(fx.get("a").await.as_deref(), Some(&b"2"[..]));
    let r3 = within(h, "delete_with_version", w.delete_with_version("a", r2))
        .await
        .expect("delete_with_version at the latest revision");
    assert_eq!(fx.get("a").await, None);
    let r = fx.store.reader();
    let entry = within(h, "entry", crate::traits::KvReader::entry(&r, "a"))
        .await
        .expect("entry")
        .expect("the tombstone is an empty-value put");
    assert!(entry.value.is_empty());
    assert_eq!(entry.version.as_u64(), Some(r3));
}

/// `purge` removes the key's older messages and leaves one purge marker.
pub async fn purge_rolls_history_into_one_marker<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "purge-rollup", |c| c.history(10)).await;
    fx.put("keep", b"k").await;
    for v in [b"1", b"2", b"3"] {
        fx.put("a", v).await;
    }
    fx.purge("a").await;
    let mut watch = fx
        .watch(&WatchScope::All, WatchStart::After(WatchCursor::at(0)))
        .await
        .expect("delta watch from the start");
    let got: Vec<Seen> = until_caught_up(h, &mut watch)
        .await
        .iter()
        .map(seen)
        .collect();
    assert_eq!(got, [put("keep", 1, b"k"), Seen::Purge("a".into(), 5)]);
    assert_eq!(fx.retention().await.first_revision, 1);
}

/// Purging twice leaves the key purged and still a single marker.
pub async fn purge_is_idempotent<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "purge-twice", |c| c.history(10)).await;
    fx.put("a", b"1").await;
    fx.purge("a").await;
    fx.purge("a").await;
    assert_eq!(fx.get("a").await, None);
    let mut watch = fx
        .watch(&WatchScope::All, WatchStart::Relist)
        .await
        .expect("watch");
    let got: Vec<Seen> = until_caught_up(h, &mut watch)
        .await
        .iter()
        .map(seen)
        .collect();
    assert_eq!(got, [Seen::Purge("a".into(), 3)]);
}

/// Where the backend advertises per-message TTL, a value written with a TTL
/// disappears after it while other values stay, and the bucket reports
/// that retention evicts current values.
pub async fn put_with_ttl_expires_the_value<H>(h: &H)
where
    H: ConformanceHarness,
    <HarnessStore<H> as KvStore>::Writer: KvTtl,
{
    let fx = Fixture::new(h, "ttl", |c| c.message_ttl(MessageTtl::Enabled)).await;
    let w = fx.store.writer();
    if !fx.conn.capabilities().per_message_ttl {
        // Without the capability a TTL must be refused, never stored as a
        // value that will not expire.
        let refused = within(
            h,
            "put_with_ttl",
            w.put_with_ttl("short", Bytes::from_static(b"v"), Duration::from_secs(1)),
        )
        .await;
        assert!(
            matches!(refused, Err(KvError::Unsupported(_))),
            "put_with_ttl without the capability must be Unsupported, got {refused:?}"
        );
        return;
    }
    within(
        h,
        "put_with_ttl",
        w.put_with_ttl("short", Bytes::from_static(b"v"), Duration::from_secs(1)),
    )
    .await
    .expect("put_with_ttl");
    fx.put("stays", b"v").await;
    // The writer's own TTL is not eviction: the listing stays the truth.
    let retention = fx.retention().await;
    assert!(!retention.evicts_current_values() && retention.eviction.per_message_ttl);
    assert_eq!(fx.get("short").await.as_deref(), Some(&b"v"[..]));
    advance(h, Duration::from_millis(1_500)).await;
    eventually(h, "the TTL'd value expires", || async {
        fx.get("short").await.is_none()
    })
    .await;
    assert_eq!(fx.get("stays").await.as_deref(), Some(&b"v"[..]));
}
