//! V5: reading a bucket.

use std::time::Duration;

use super::{ConformanceHarness, Fixture, advance, until_caught_up, within};
use crate::error::KvError;
use crate::scope::{WatchScope, WatchStart};
use crate::traits::{KvReader, KvStore};

/// `get` of a key never written is `None`.
pub async fn get_of_missing_key_is_none<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "get-missing", |c| c).await;
    assert_eq!(fx.get("never.written").await, None);
    let r = fx.store.reader();
    let entry = within(h, "entry", r.entry("never.written"))
        .await
        .expect("entry");
    assert_eq!(entry, None);
}

/// `get` returns the latest value; `entry` carries its revision and key.
pub async fn get_returns_latest_value_and_entry_its_revision<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "get-latest", |c| c.history(5)).await;
    fx.put("a", b"one").await;
    let rev = fx.put("a", b"two").await;
    assert_eq!(fx.get("a").await.as_deref(), Some(&b"two"[..]));
    let r = fx.store.reader();
    let entry = within(h, "entry", r.entry("a"))
        .await
        .expect("entry")
        .expect("a has an entry");
    assert_eq!(entry.key, "a");
    assert_eq!(&entry.value[..], b"two");
    assert_eq!(entry.version.as_u64(), Some(rev));
}

/// `get` is `None` for a delete marker, a purge marker and an empty-value
/// tombstone; `entry` returns the empty-value put with its version and is
/// `None` for markers.
pub async fn get_hides_markers_and_tombstones_entry_keeps_empty_puts<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "get-markers", |c| c).await;
    fx.put("deleted", b"x").await;
    fx.delete("deleted").await;
    fx.put("purged", b"x").await;
    fx.purge("purged").await;
    let tomb = fx.put("tomb", b"").await;
    for key in ["deleted", "purged", "tomb"] {
        assert_eq!(fx.get(key).await, None, "get {key}");
    }
    let r = fx.store.reader();
    for key in ["deleted", "purged"] {
        let entry = within(h, "entry", r.entry(key)).await.expect("entry");
        assert_eq!(entry, None, "entry of marker {key}");
    }
    let entry = within(h, "entry", r.entry("tomb"))
        .await
        .expect("entry")
        .expect("an empty-value put is an entry");
    assert!(entry.value.is_empty());
    assert_eq!(entry.version.as_u64(), Some(tomb));
}

/// `keys` and `scan` skip delete markers, purge markers and tombstones, and
/// return keys sorted; `for_each_key` visits the same keys.
pub async fn keys_and_scan_skip_markers_and_tombstones_in_key_order<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "keys-skip", |c| c).await;
    for key in ["c", "a", "e", "b", "d", "f"] {
        fx.put(key, key.as_bytes()).await;
    }
    fx.delete("b").await;
    fx.purge("d").await;
    fx.put("f", b"").await;
    let r = fx.store.reader();
    let keys = within(h, "keys", r.keys("")).await.expect("keys");
    assert_eq!(keys, ["a", "c", "e"]);
    let scan = within(h, "scan", r.scan("")).await.expect("scan");
    let scanned: Vec<(&str, &[u8])> = scan
        .iter()
        .map(|e| (e.key.as_str(), &e.value[..]))
        .collect();
    assert_eq!(scanned, [("a", &b"a"[..]), ("c", b"c"), ("e", b"e")]);
    assert!(scan.iter().all(|e| e.version.as_u64().is_some()));
    let mut visited = Vec::new();
    let n = within(
        h,
        "for_each_key",
        r.for_each_key("", |k| visited.push(k.to_owned())),
    )
    .await
    .expect("for_each_key");
    visited.sort();
    assert_eq!(visited, ["a", "c", "e"]);
    assert_eq!(n, 3);
}

/// Listings with a prefix return only keys under it.
pub async fn listing_respects_prefix<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "keys-prefix", |c| c).await;
    for key in ["app.a", "app.b", "apple", "other.a", "app.sub.c"] {
        fx.put(key, b"v").await;
    }
    let r = fx.store.reader();
    let keys = within(h, "keys", r.keys("app.")).await.expect("keys");
    assert_eq!(keys, ["app.a", "app.b", "app.sub.c"]);
    let scan = within(h, "scan", r.scan("app.sub.")).await.expect("scan");
    assert_eq!(scan.len(), 1);
    assert_eq!(scan[0].key, "app.sub.c");
    let mut n = 0;
    within(
        h,
        "for_each_key",
        r.for_each_key("other.", |k| {
            assert_eq!(k, "other.a");
            n += 1;
        }),
    )
    .await
    .expect("for_each_key");
    assert_eq!(n, 1);
}

/// A 5,000-key bucket lists every key, through `keys`, `scan` and
/// `for_each_key` (no truncation at a consumer's pending limit).
pub async fn listing_of_5000_keys_is_complete<H: ConformanceHarness>(h: &H) {
    const N: usize = 5_000;
    let fx = Fixture::new(h, "keys-5000", |c| c).await;
    let key = |i: usize| format!("k.{i:05}");
    for i in 0..N {
        fx.put(&key(i), b"v").await;
    }
    let r = fx.store.reader();
    let keys = within(h, "keys", r.keys("")).await.expect("keys");
    let expected: Vec<String> = (0..N).map(key).collect();
    assert_eq!(keys, expected);
    let scan = within(h, "scan", r.scan("k.")).await.expect("scan");
    assert_eq!(scan.len(), N);
    let mut count = 0_usize;
    let visited = within(h, "for_each_key", r.for_each_key("", |_| count += 1))
        .await
        .expect("for_each_key");
    assert_eq!((count, visited), (N, N as u64));
    let mut watch = fx
        .watch(&WatchScope::All, WatchStart::Relist)
        .await
        .expect("watch");
    let synced = until_caught_up(h, &mut watch).await;
    assert_eq!(synced.len(), N, "state-sync delivers every key");
}

/// Entries and markers carry the server time they were stored at: never
/// decreasing along revisions, and not after the time retention reports.
pub async fn updates_carry_server_timestamps<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "timestamps", |c| c).await;
    fx.put("a", b"1").await;
    advance(h, Duration::from_millis(50)).await;
    fx.delete("b").await;
    fx.purge("c").await;
    let r = fx.store.reader();
    let entry = within(h, "entry", r.entry("a"))
        .await
        .expect("entry")
        .expect("a is live");
    let mut watch = fx
        .watch(&WatchScope::All, WatchStart::Relist)
        .await
        .expect("watch");
    let updates = until_caught_up(h, &mut watch).await;
    let times: Vec<_> = updates
        .iter()
        .map(|u| u.created().expect("a stored message has a server time"))
        .collect();
    assert_eq!(times.len(), 3);
    assert_eq!(Some(times[0]), entry.created);
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(
        times[0] < times[1],
        "time passed between the put and the delete"
    );
    assert!(times[2] <= fx.retention().await.observed_at);
}

/// Invalid keys and prefixes are refused with `InvalidKey`, on reads and
/// writes.
pub async fn invalid_keys_and_prefixes_are_refused<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "invalid-keys", |c| c).await;
    let r = fx.store.reader();
    let w = fx.store.writer();
    for bad in ["", "a b", "a*", "a.>", ".a", "a.", "a..b"] {
        let got = within(h, "get", r.get(bad)).await;
        assert!(
            matches!(got, Err(KvError::InvalidKey { .. })),
            "get {bad:?}: {got:?}"
        );
        let put = within(h, "put", crate::traits::KvWriter::put(&w, bad, "v".into())).await;
        assert!(
            matches!(put, Err(KvError::InvalidKey { .. })),
            "put {bad:?}: {put:?}"
        );
    }
    for bad in ["a", "a*.", "a..", "."] {
        let got = within(h, "keys", r.keys(bad)).await;
        assert!(
            matches!(got, Err(KvError::InvalidKey { .. })),
            "keys {bad:?}: {got:?}"
        );
    }
}
