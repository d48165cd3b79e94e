//! RocksDB-specific behaviour beyond the conformance kit: backend markers,
//! locking, the read handle, fold totals, settle and clean close.

use std::ops::ControlFlow;

use bytes::Bytes;
use slipstream_kv::{KvEntry, KvMarker, KvUpdate, VersionToken, WatchCursor};
use slipstream_rocksdb::{RocksDbOptions, RocksDbStore};
use slipstream_snapshot::{
    AppendLogOptions, AppendLogStore, Durability, MAX_VALUE_LEN, SnapshotError, SnapshotStore,
};

fn options() -> RocksDbOptions {
    RocksDbOptions::with_durability(Durability::NoFsync)
}

fn put(key: &str, value: &'static [u8], rev: u64) -> KvUpdate {
    KvUpdate::Put(KvEntry {
        key: key.into(),
        value: Bytes::from_static(value),
        version: VersionToken::from_u64(rev),
        created: None,
        expires: None,
    })
}

fn delete(key: &str, rev: u64) -> KvUpdate {
    KvUpdate::Delete(KvMarker {
        key: key.into(),
        version: VersionToken::from_u64(rev),
        created: None,
    })
}

#[test]
fn opening_an_append_log_directory_is_wrong_backend_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, store) = AppendLogStore::open(tmp.path(), &AppendLogOptions::default()).unwrap();
    store.close().unwrap();
    let before: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();

    let err = RocksDbStore::open(tmp.path(), &options()).unwrap_err();
    assert!(
        matches!(&err, SnapshotError::WrongBackend { found, .. } if found == "append-log"),
        "{err}"
    );
    let after: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after);
}

#[test]
fn foreign_marker_is_wrong_backend_and_newer_generation_is_unsupported() {
    for (marker, want_unsupported) in [("fjall/1", false), ("rocksdb/9", true)] {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut o = rocksdb::Options::default();
            o.create_if_missing(true);
            o.create_missing_column_families(true);
            let db = rocksdb::DB::open_cf(&o, tmp.path(), ["data", "meta"]).unwrap();
            let meta = db.cf_handle("meta").unwrap();
            db.put_cf(meta, "backend", marker).unwrap();
        }
        let err = RocksDbStore::open(tmp.path(), &options()).unwrap_err();
        if want_unsupported {
            assert!(
                matches!(
                    err,
                    SnapshotError::UnsupportedFormat {
                        found: 9,
                        supported: 1,
                        ..
                    }
                ),
                "{err}"
            );
        } else {
            assert!(
                matches!(&err, SnapshotError::WrongBackend { found, .. } if found == marker),
                "{err}"
            );
        }
    }
}

#[test]
fn second_open_of_a_held_store_is_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, _held) = RocksDbStore::open(tmp.path(), &options()).unwrap();
    let err = RocksDbStore::open(tmp.path(), &options()).unwrap_err();
    assert!(matches!(err, SnapshotError::Locked { .. }), "{err}");
}

#[test]
fn read_handle_on_another_thread_sees_each_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut store) = RocksDbStore::open(tmp.path(), &options()).unwrap();
    let reader = store.reader();
    store
        .apply(&[put("a.1", b"x", 1)], &WatchCursor::at(1))
        .unwrap();
    let seen = {
        let reader = reader.clone();
        std::thread::spawn(move || (reader.get("a.1").unwrap(), reader.cursor().unwrap()))
            .join()
            .unwrap()
    };
    assert_eq!(seen.0.map(|e| e.value), Some(Bytes::from_static(b"x")));
    assert_eq!(seen.1, WatchCursor::at(1));

    store
        .apply(
            &[put("a.2", b"y", 2), delete("a.1", 3)],
            &WatchCursor::at(3),
        )
        .unwrap();
    let keys: Vec<String> = reader
        .range("a.")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["a.2"]);
    let mut first = None;
    let finished = reader
        .for_each_in_range("", &mut |k, _| {
            first = Some(k.to_owned());
            ControlFlow::Break(())
        })
        .unwrap();
    assert!(!finished);
    assert_eq!(first.as_deref(), Some("a.2"));
}

#[test]
fn totals_follow_overwrites_deletes_and_duplicates_within_a_batch_across_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut store) = RocksDbStore::open(tmp.path(), &options()).unwrap();
    store
        .apply(
            &[
                put("k1", b"aaaa", 1),
                put("k1", b"bb", 2),
                put("k2", b"c", 3),
                delete("nope", 4),
            ],
            &WatchCursor::at(4),
        )
        .unwrap();
    // Live bytes of an entry: key + 8-byte version + value.
    let expect = |entries: &[(&str, usize)]| -> u64 {
        entries.iter().map(|(k, v)| (k.len() + 8 + v) as u64).sum()
    };
    assert_eq!(store.len(), 2);
    assert_eq!(store.stats().live_bytes, expect(&[("k1", 2), ("k2", 1)]));
    store
        .apply(
            &[delete("k1", 5), put("k1", b"dddddd", 6), delete("k2", 7)],
            &WatchCursor::at(7),
        )
        .unwrap();
    assert_eq!(store.len(), 1);
    assert_eq!(store.stats().live_bytes, expect(&[("k1", 6)]));
    drop(store);

    let (cursor, store) = RocksDbStore::open(tmp.path(), &options()).unwrap();
    assert_eq!(cursor, WatchCursor::at(7));
    assert_eq!(store.len(), 1);
    assert_eq!(store.stats().live_bytes, expect(&[("k1", 6)]));
}

#[test]
fn multi_get_returns_entries_in_key_order_of_the_request() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut store) = RocksDbStore::open(tmp.path(), &options()).unwrap();
    store
        .apply(&[put("b", b"2", 1), put("a", b"1", 2)], &WatchCursor::at(2))
        .unwrap();
    let got = store.multi_get(&["b", "missing", "a", "b"]).unwrap();
    let values: Vec<_> = got.into_iter().map(|e| e.map(|e| e.value)).collect();
    assert_eq!(
        values,
        [
            Some(Bytes::from_static(b"2")),
            None,
            Some(Bytes::from_static(b"1")),
            Some(Bytes::from_static(b"2"))
        ]
    );
}

#[test]
fn oversized_value_is_invalid_and_commits_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut store) = RocksDbStore::open(tmp.path(), &options()).unwrap();
    let big = KvUpdate::Put(KvEntry {
        key: "big".into(),
        value: Bytes::from(vec![0; MAX_VALUE_LEN + 1]),
        version: VersionToken::from_u64(2),
        created: None,
        expires: None,
    });
    let err = store
        .apply(&[put("small", b"s", 1), big], &WatchCursor::at(2))
        .unwrap_err();
    assert!(
        matches!(err, SnapshotError::InvalidUpdate { ref key, .. } if key == "big"),
        "{err}"
    );
    assert_eq!(store.cursor(), &WatchCursor::none());
    assert!(store.get("small").unwrap().is_none());
}

#[test]
fn settle_then_clean_close_reopens_to_the_same_fold_and_cursor() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = options();
    let (_, mut store) = RocksDbStore::open(tmp.path(), &opts).unwrap();
    for round in 0..5u64 {
        let batch: Vec<_> = (0..200u64)
            .map(|i| put(&format!("key.{i:04}"), b"value", round * 200 + i + 1))
            .collect();
        store
            .apply(&batch, &WatchCursor::at((round + 1) * 200))
            .unwrap();
    }
    store.settle().unwrap();
    let before = slipstream_snapshot::testkit::dump(&store);
    store.close().unwrap();

    let (cursor, store) = RocksDbStore::open(tmp.path(), &opts).unwrap();
    assert_eq!(cursor, WatchCursor::at(1000));
    assert_eq!(slipstream_snapshot::testkit::dump(&store), before);
    assert_eq!(store.len(), 200);
}
