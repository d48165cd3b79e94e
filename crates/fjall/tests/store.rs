//! fjall-specific behaviour beyond the conformance kit: backend markers,
//! locking, the read handle, fold totals, settle and clean close.

use std::ops::ControlFlow;

use bytes::Bytes;
use slipstream_fjall::{FjallOptions, FjallStore, SettlePolicy};
use slipstream_kv::{KvEntry, KvMarker, KvUpdate, VersionToken, WatchCursor};
use slipstream_snapshot::{
    AppendLogOptions, AppendLogStore, Durability, MAX_VALUE_LEN, SnapshotError, SnapshotStore,
};

fn options() -> FjallOptions {
    FjallOptions::with_durability(Durability::NoFsync)
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

    let err = FjallStore::open(tmp.path(), &options()).unwrap_err();
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
    for (marker, want_unsupported) in [("rocksdb/1", false), ("fjall/9", true)] {
        let tmp = tempfile::tempdir().unwrap();
        {
            let db = fjall::Database::builder(tmp.path()).open().unwrap();
            let meta = db
                .keyspace("meta", fjall::KeyspaceCreateOptions::default)
                .unwrap();
            meta.insert("backend", marker).unwrap();
            db.persist(fjall::PersistMode::SyncAll).unwrap();
        }
        let err = FjallStore::open(tmp.path(), &options()).unwrap_err();
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
    let (_, _held) = FjallStore::open(tmp.path(), &options()).unwrap();
    let err = FjallStore::open(tmp.path(), &options()).unwrap_err();
    assert!(matches!(err, SnapshotError::Locked { .. }), "{err}");
}

#[test]
fn read_handle_on_another_thread_sees_each_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut store) = FjallStore::open(tmp.path(), &options()).unwrap();
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
    let (_, mut store) = FjallStore::open(tmp.path(), &options()).unwrap();
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

    let (cursor, mut store) = FjallStore::open(tmp.path(), &options()).unwrap();
    assert_eq!(cursor, WatchCursor::at(7));
    assert_eq!(store.len(), 1);
    assert_eq!(store.stats().live_bytes, expect(&[("k1", 6)]));
    // Keys written before the reopen still count when rewritten.
    store
        .apply(
            &[put("k1", b"e", 8), put("k3", b"ff", 9)],
            &WatchCursor::at(9),
        )
        .unwrap();
    assert_eq!(store.len(), 2);
    assert_eq!(store.stats().live_bytes, expect(&[("k1", 1), ("k3", 2)]));
}

/// Totals stay exact when a store filled batch by batch rewrites and
/// deletes keys written in earlier batches.
#[test]
fn totals_stay_exact_when_a_filled_store_rewrites_and_deletes_its_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut store) = FjallStore::open(tmp.path(), &options()).unwrap();
    let n = 200_000_u64;
    let value = |i: u64| -> &'static [u8] {
        let v: &'static [u8] = b"vvvvvv";
        &v[..(i % 7) as usize]
    };
    for start in (0..n).step_by(1000) {
        let batch: Vec<_> = (start..start + 1000)
            .map(|i| put(&format!("key.{i:08}"), value(i), i + 1))
            .collect();
        store.apply(&batch, &WatchCursor::at(start + 1000)).unwrap();
    }
    let live = |keys: &mut dyn Iterator<Item = (u64, usize)>| -> u64 {
        keys.map(|(i, len)| (format!("key.{i:08}").len() + 8 + len) as u64)
            .sum()
    };
    assert_eq!(store.len(), n);
    assert_eq!(
        store.stats().live_bytes,
        live(&mut (0..n).map(|i| (i, value(i).len())))
    );
    // Rewrite every tenth key, delete every tenth key (offset by five), and
    // delete then re-create one.
    let mut batch = Vec::new();
    for i in (0..n).step_by(10) {
        batch.push(put(&format!("key.{i:08}"), b"0123456789", n + i + 1));
        batch.push(delete(&format!("key.{:08}", i + 5), n + i + 2));
    }
    batch.push(delete("key.00000003", 3 * n));
    batch.push(put("key.00000003", b"x", 3 * n + 1));
    store.apply(&batch, &WatchCursor::at(3 * n + 1)).unwrap();
    let expected = |i: u64| match i {
        3 => Some(1),
        i if i % 10 == 0 => Some(10),
        i if i % 10 == 5 => None,
        i => Some(value(i).len()),
    };
    let survivors = || (0..n).filter_map(|i| expected(i).map(|len| (i, len)));
    assert_eq!(store.len(), survivors().count() as u64);
    assert_eq!(store.stats().live_bytes, live(&mut survivors()));
}

#[test]
fn oversized_value_is_invalid_and_commits_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut store) = FjallStore::open(tmp.path(), &options()).unwrap();
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
    let opts = FjallOptions {
        settle: SettlePolicy::AlwaysCompact,
        ..options()
    };
    let (_, mut store) = FjallStore::open(tmp.path(), &opts).unwrap();
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

    let (cursor, store) = FjallStore::open(tmp.path(), &opts).unwrap();
    assert_eq!(cursor, WatchCursor::at(1000));
    assert_eq!(slipstream_snapshot::testkit::dump(&store), before);
    assert_eq!(store.len(), 200);
}

/// Bytes the journal files hold (fjall preallocates them sparsely).
fn journal_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("list {dir:?}: {e}"));
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".jnl"))
        .map(|e| e.metadata().map_or(0, |m| m.blocks() * 512))
        .sum()
}

#[test]
fn clean_close_leaves_no_large_journal_to_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut store) = FjallStore::open(tmp.path(), &options()).unwrap();
    let value = Bytes::from(vec![7u8; 100]);
    for round in 0..40u64 {
        let batch: Vec<_> = (0..1_000u64)
            .map(|i| {
                let rev = round * 1_000 + i + 1;
                KvUpdate::Put(KvEntry {
                    key: format!("key.{rev:07}"),
                    value: value.clone(),
                    version: VersionToken::from_u64(rev),
                    created: None,
                    expires: None,
                })
            })
            .collect();
        store
            .apply(&batch, &WatchCursor::at((round + 1) * 1_000))
            .unwrap();
    }
    store.close().unwrap();
    // 40,000 entries of over 100 bytes were journaled; what is left to
    // replay is a fresh journal.
    let left = journal_bytes(tmp.path());
    assert!(left < 1 << 20, "{left} journal bytes left to replay");
    let (cursor, store) = FjallStore::open(tmp.path(), &options()).unwrap();
    assert_eq!((cursor, store.len()), (WatchCursor::at(40_000), 40_000));
}

#[test]
fn a_database_creation_killed_before_its_version_marker_opens_fresh() {
    let tmp = tempfile::tempdir().unwrap();
    // What fjall leaves when killed between creating its first journal and
    // writing its version marker.
    std::fs::write(tmp.path().join("lock"), b"").unwrap();
    std::fs::create_dir(tmp.path().join("keyspaces")).unwrap();
    std::fs::write(tmp.path().join("0.jnl"), vec![0u8; 4096]).unwrap();
    let (cursor, mut store) = FjallStore::open(tmp.path(), &options()).unwrap();
    assert_eq!(cursor, WatchCursor::none());
    store
        .apply(&[put("k", b"v", 1)], &WatchCursor::at(1))
        .unwrap();
    assert_eq!(store.len(), 1);
}
