//! RocksDB-specific behaviour beyond the conformance kit: the cases the LSM
//! stores share (backend markers, the read handle, settle and clean close)
//! from the snapshot testkit, then `multi_get`.

use std::path::Path;

use bytes::Bytes;
use slipstream_kv::{KvEntry, KvUpdate, VersionToken, WatchCursor};
use slipstream_rocksdb::{RocksDbOptions, RocksDbReader, RocksDbStore};
use slipstream_snapshot::{Durability, SnapshotStore};

fn options(durability: Durability) -> RocksDbOptions {
    RocksDbOptions::with_durability(durability)
}

/// A database holding only a backend `marker`, written the way the store
/// writes its own.
fn write_marker(dir: &Path, marker: &str) {
    let mut o = rocksdb::Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    let db = rocksdb::DB::open_cf(&o, dir, ["data", "meta"])
        .unwrap_or_else(|e| panic!("open rocksdb at {dir:?}: {e}"));
    let meta = db
        .cf_handle("meta")
        .unwrap_or_else(|| panic!("no meta column family in {dir:?}"));
    db.put_cf(meta, "backend", marker)
        .unwrap_or_else(|e| panic!("write marker {marker:?}: {e}"));
}

slipstream_snapshot::lsm_store_conformance! {
    store: RocksDbStore,
    options: options,
    write_marker: write_marker,
    reader: RocksDbReader = RocksDbStore::reader,
    settle: RocksDbStore::settle,
    settle_options: options,
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

#[test]
fn multi_get_returns_entries_in_key_order_of_the_request() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut store) = RocksDbStore::open(tmp.path(), &options(Durability::NoFsync)).unwrap();
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
