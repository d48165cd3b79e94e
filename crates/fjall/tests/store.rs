//! fjall-specific behaviour beyond the conformance kit: the cases the LSM
//! stores share (backend markers, the read handle, settle and clean close)
//! from the snapshot testkit, then fold totals at 200 k keys, the journal
//! left by a clean close and an interrupted database creation.

use std::path::Path;

use bytes::Bytes;
use slipstream_fjall::{FjallOptions, FjallReader, FjallStore, SettlePolicy};
use slipstream_kv::{KvEntry, KvMarker, KvUpdate, VersionToken, WatchCursor};
use slipstream_snapshot::{Durability, SnapshotStore};

fn options() -> FjallOptions {
    FjallOptions::with_durability(Durability::NoFsync)
}

fn kit_options(durability: Durability) -> FjallOptions {
    FjallOptions::with_durability(durability)
}

/// Settle compacts every time, so the settle case exercises compaction.
fn settle_options(durability: Durability) -> FjallOptions {
    FjallOptions {
        settle: SettlePolicy::AlwaysCompact,
        ..FjallOptions::with_durability(durability)
    }
}

/// A database holding only a backend `marker`, written the way the store
/// writes its own.
fn write_marker(dir: &Path, marker: &str) {
    let db = fjall::Database::builder(dir)
        .open()
        .unwrap_or_else(|e| panic!("open fjall at {dir:?}: {e}"));
    let meta = db
        .keyspace("meta", fjall::KeyspaceCreateOptions::default)
        .unwrap_or_else(|e| panic!("meta keyspace: {e}"));
    meta.insert("backend", marker)
        .unwrap_or_else(|e| panic!("write marker {marker:?}: {e}"));
    db.persist(fjall::PersistMode::SyncAll)
        .unwrap_or_else(|e| panic!("persist: {e}"));
}

slipstream_snapshot::lsm_store_conformance! {
    store: FjallStore,
    options: kit_options,
    write_marker: write_marker,
    reader: FjallReader = FjallStore::reader,
    settle: FjallStore::settle,
    settle_options: settle_options,
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
