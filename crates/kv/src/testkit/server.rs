//! M1–M3 server behaviours and V8/V9: retention, limits, admin purges,
//! bucket identity, configuration, shutdown.

use std::time::Duration;

use bytes::Bytes;

use super::{
    ConformanceHarness, Fixture, Seen, advance, eventually, expect_expired, put, seen,
    until_caught_up, within,
};
use crate::config::{DiscardPolicy, MessageTtl, StoreConfig};
use crate::cursor::WatchCursor;
use crate::error::{ExpiryReason, KvError};
use crate::scope::{WatchScope, WatchStart};
use crate::traits::{Connection, KvReader, KvStore, KvWatcher, KvWriter};

/// An empty stream reports `first = last + 1`: a new bucket (1, 0), and a
/// bucket whose every message was purged.
pub async fn empty_stream_reports_first_after_last<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "empty-stream", |c| c).await;
    let fresh = fx.retention().await;
    assert_eq!((fresh.first_revision, fresh.last_revision), (1, 0));
    fx.put("a", b"1").await;
    fx.put("b", b"1").await;
    within(h, "purge_below", h.purge_below(&fx.name, 3))
        .await
        .expect("purge");
    let purged = fx.retention().await;
    assert_eq!((purged.first_revision, purged.last_revision), (3, 2));
    // A cursor at the last sequence still resumes: nothing was missed.
    let mut watch = fx
        .watch(&WatchScope::All, WatchStart::After(WatchCursor::at(2)))
        .await
        .expect("resume at last on an empty stream");
    assert!(until_caught_up(h, &mut watch).await.is_empty());
}

/// The per-key history limit evicts a key's older revisions from the
/// interior of the stream; the first sequence does not move.
pub async fn history_limit_evicts_interior_revisions<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "history", |c| c.history(2)).await;
    fx.put("anchor", b"0").await; // 1
    for v in [b"1", b"2", b"3"] {
        fx.put("a", v).await; // 2, 3, 4
    }
    let retention = fx.retention().await;
    assert_eq!((retention.first_revision, retention.last_revision), (1, 4));
    let mut watch = fx
        .watch(&WatchScope::All, WatchStart::After(WatchCursor::at(0)))
        .await
        .expect("watch");
    let got: Vec<Seen> = until_caught_up(h, &mut watch)
        .await
        .iter()
        .map(seen)
        .collect();
    assert_eq!(
        got,
        [put("anchor", 1, b"0"), put("a", 3, b"2"), put("a", 4, b"3")]
    );
}

/// A message cap under discard-old evicts from the head, current values
/// included, and moves the first sequence.
pub async fn max_msgs_evicts_from_the_head<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "max-msgs", |c| c).await;
    for key in ["a", "b", "c", "d"] {
        fx.put(key, b"1").await;
    }
    within(h, "set_max_msgs", h.set_max_msgs(&fx.name, 2))
        .await
        .expect("set_max_msgs");
    let retention = fx.retention().await;
    assert_eq!((retention.first_revision, retention.last_revision), (3, 4));
    assert!(retention.evicts_current_values());
    assert_eq!(fx.get("a").await, None, "a current value was evicted");
    fx.put("e", b"1").await;
    assert_eq!(fx.retention().await.first_revision, 4);
    assert_eq!(
        fx.get("b")
            .await
            .into_iter()
            .chain(fx.get("c").await)
            .count(),
        0
    );
}

/// `max_age` removes messages once they are that old; younger ones stay.
pub async fn max_age_removes_aged_messages<H: ConformanceHarness>(h: &H) {
    let max_age = Duration::from_secs(4);
    let fx = Fixture::new(h, "max-age", |c| c.max_age(max_age)).await;
    fx.put("old", b"1").await;
    advance(h, Duration::from_secs(2)).await;
    fx.put("young", b"1").await;
    advance(h, Duration::from_millis(2_500)).await;
    eventually(h, "the old value ages out", || async {
        fx.get("old").await.is_none()
    })
    .await;
    assert_eq!(fx.get("young").await.as_deref(), Some(&b"1"[..]));
    let retention = fx.retention().await;
    assert_eq!(retention.first_revision, 2);
    assert_eq!(retention.max_age, Some(max_age));
}

/// Discard-new with a byte cap refuses writes at the limit and evicts
/// nothing.
pub async fn discard_new_refuses_writes_at_the_byte_limit<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "discard-new", |c| {
        c.max_bytes(2_048).discard(DiscardPolicy::New)
    })
    .await;
    let w = fx.store.writer();
    let value = Bytes::from(vec![b'v'; 100]);
    let mut refused = None;
    for i in 0..100 {
        let key = format!("k{i:03}");
        if let Err(e) = within(h, "put", w.put(&key, value.clone())).await {
            refused = Some(e);
            break;
        }
    }
    assert!(refused.is_some(), "a write past max_bytes is refused");
    let retention = fx.retention().await;
    assert_eq!(retention.first_revision, 1, "nothing was evicted");
    assert!(!retention.evicts_current_values());
    assert_eq!(fx.get("k000").await, Some(value));
}

/// Discard-old with a byte cap evicts the oldest messages.
pub async fn discard_old_byte_limit_evicts_from_the_head<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "discard-old", |c| c.max_bytes(2_048)).await;
    let value = vec![b'v'; 100];
    for i in 0..100 {
        fx.put(&format!("k{i:03}"), &value).await;
    }
    let retention = fx.retention().await;
    assert!(retention.first_revision > 1);
    assert_eq!(retention.last_revision, 100);
    assert!(retention.evicts_current_values());
    assert_eq!(fx.get("k000").await, None);
    assert_eq!(fx.get("k099").await.as_deref(), Some(&value[..]));
}

/// Purging a key's subject removes every message of the key, markers
/// included: state-sync no longer mentions it.
pub async fn subject_purge_removes_key_and_its_markers<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "subject-purge", |c| c.history(5)).await;
    fx.put("a", b"1").await;
    fx.put("b", b"1").await;
    fx.delete("a").await;
    within(h, "purge_subject", h.purge_subject(&fx.name, "a"))
        .await
        .expect("purge subject");
    let mut watch = fx
        .watch(&WatchScope::All, WatchStart::Relist)
        .await
        .expect("watch");
    let got: Vec<Seen> = until_caught_up(h, &mut watch)
        .await
        .iter()
        .map(seen)
        .collect();
    assert_eq!(got, [put("b", 2, b"1")]);
}

/// V8: `retention()` reports whether retention evicts current values, and
/// whether age is the only way it does, from the bucket's configuration.
pub async fn retention_reports_limits_truthfully<H: ConformanceHarness>(h: &H) {
    type Configure = fn(StoreConfig) -> StoreConfig;
    let cases: [(&str, Configure, bool, bool); 6] = [
        ("ret-plain", |c| c.history(5), false, false),
        (
            "ret-age",
            |c| c.max_age(Duration::from_secs(3_600)),
            true,
            true,
        ),
        ("ret-old", |c| c.max_bytes(1 << 20), true, false),
        (
            "ret-new",
            |c| c.max_bytes(1 << 20).discard(DiscardPolicy::New),
            false,
            false,
        ),
        (
            "ret-ttl",
            |c| c.message_ttl(MessageTtl::Enabled),
            false,
            false,
        ),
        (
            "ret-age-ttl",
            |c| {
                c.message_ttl(MessageTtl::Enabled)
                    .max_age(Duration::from_secs(3_600))
            },
            true,
            false,
        ),
    ];
    for (case, config, evicts, age_only) in cases {
        let fx = Fixture::new(h, case, config).await;
        if case.ends_with("ttl") && !fx.conn.capabilities().per_message_ttl {
            // The server cannot enable per-message TTL (NATS before 2.11).
            continue;
        }
        let r = fx.retention().await;
        assert_eq!(
            (r.evicts_current_values(), r.age_is_only_eviction()),
            (evicts, age_only),
            "{case}"
        );
        assert_eq!(r.identity.stream, format!("KV_{}", fx.name));
        assert!(r.observed_at.as_unix_nanos() > 0);
    }
}

/// Deleting and recreating a bucket gives it a new identity (same stream
/// name, different creation time).
pub async fn identity_changes_when_bucket_is_recreated<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "identity", |c| c).await;
    let before = fx.retention().await.identity;
    within(h, "delete_bucket", h.delete_bucket(&fx.name))
        .await
        .expect("delete");
    let store = fx.reopen(StoreConfig::new(&fx.name)).await;
    let after = within(h, "retention", store.watcher().retention())
        .await
        .expect("retention");
    assert_eq!(after.identity.stream, before.stream);
    assert_ne!(after.identity, before);
}

/// A cursor carrying the old incarnation's identity is refused with
/// `IdentityChanged`, even where its revision fits the new log.
pub async fn cursor_with_old_identity_is_refused_after_recreate<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "identity-cursor", |c| c).await;
    fx.put("a", b"1").await;
    let old = fx.retention().await.identity;
    let cursor = WatchCursor::at(1).with_identity(old.clone());
    within(h, "delete_bucket", h.delete_bucket(&fx.name))
        .await
        .expect("delete");
    let store = fx.reopen(StoreConfig::new(&fx.name)).await;
    within(h, "put", store.writer().put("b", Bytes::from_static(b"1")))
        .await
        .expect("put");
    within(h, "put", store.writer().put("c", Bytes::from_static(b"1")))
        .await
        .expect("put");
    let result = within(
        h,
        "watch",
        store
            .watcher()
            .watch(&WatchScope::All, WatchStart::After(cursor)),
    )
    .await;
    match expect_expired(result, "old identity") {
        ExpiryReason::IdentityChanged { expected, found } => {
            assert_eq!(expected, old);
            assert_ne!(found, old);
        }
        other => panic!("expected IdentityChanged, got {other:?}"),
    }
}

/// K3 after a recreate: a plain cursor past the new incarnation's last
/// sequence is refused, not left waiting for different data.
pub async fn cursor_beyond_last_of_recreated_bucket_is_refused<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "recreated-beyond", |c| c).await;
    for key in ["a", "b", "c", "d", "e"] {
        fx.put(key, b"1").await;
    }
    within(h, "delete_bucket", h.delete_bucket(&fx.name))
        .await
        .expect("delete");
    let store = fx.reopen(StoreConfig::new(&fx.name)).await;
    within(h, "put", store.writer().put("z", Bytes::from_static(b"1")))
        .await
        .expect("put");
    let result = within(
        h,
        "watch",
        store
            .watcher()
            .watch(&WatchScope::All, WatchStart::After(WatchCursor::at(5))),
    )
    .await;
    assert_eq!(
        expect_expired(result, "cursor of the old incarnation"),
        ExpiryReason::BeyondLastSequence {
            revision: 5,
            last_sequence: 1
        }
    );
}

/// V9: opening an existing bucket with another configuration uses it as it
/// is.
pub async fn existing_bucket_is_used_as_is<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "existing", |c| c.history(5)).await;
    for v in [b"1", b"2", b"3"] {
        fx.put("a", v).await;
    }
    let store = fx
        .reopen(
            StoreConfig::new(&fx.name)
                .history(1)
                .max_age(Duration::from_secs(1)),
        )
        .await;
    within(h, "put", store.writer().put("a", Bytes::from_static(b"4")))
        .await
        .expect("put");
    let retention = within(h, "retention", store.watcher().retention())
        .await
        .expect("retention");
    assert_eq!(retention.first_revision, 1, "history 5 still holds");
    assert_eq!(retention.max_age, None);
    assert_eq!(store.name(), fx.name);
}

/// V9: after `shutdown`, the connection is unhealthy and every operation
/// fails with `NotConnected`.
pub async fn shutdown_makes_operations_not_connected<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "shutdown", |c| c).await;
    fx.put("a", b"1").await;
    assert!(fx.conn.is_healthy());
    within(h, "shutdown", fx.conn.shutdown())
        .await
        .expect("shutdown");
    assert!(!fx.conn.is_healthy());
    let get = within(h, "get", fx.store.reader().get("a")).await;
    assert_eq!(get, Err(KvError::NotConnected));
    let put = within(
        h,
        "put",
        fx.store.writer().put("a", Bytes::from_static(b"2")),
    )
    .await;
    assert_eq!(put, Err(KvError::NotConnected));
    let watch = fx.watch(&WatchScope::All, WatchStart::Relist).await;
    assert!(
        matches!(watch, Err(KvError::NotConnected)),
        "watch after shutdown"
    );
    let open = within(h, "store", fx.conn.store(&fx.name)).await;
    assert!(
        matches!(open, Err(KvError::NotConnected)),
        "store after shutdown"
    );
}
