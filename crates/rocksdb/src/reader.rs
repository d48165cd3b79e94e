//! Reads shared by the store and its cloneable read handle.

use core::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rocksdb::{ColumnFamily, DB};
use slipstream_kv::{Timestamp, WatchCursor};
use slipstream_snapshot::{EntryRef, SnapshotError, StoredEntry, decode_value_record};

use crate::error::{RocksDbStoreError, engine};

pub(crate) const DATA_CF: &str = "data";
pub(crate) const META_CF: &str = "meta";
/// Meta key of the committed cursor (`WatchCursor::to_bytes`).
pub(crate) const CURSOR_KEY: &[u8] = b"cursor";

/// A cloneable, `Send + Sync` read handle on a
/// [`RocksDbStore`](crate::RocksDbStore)'s fold, for readers on other
/// threads while the store applies; point reads of many keys go through
/// RocksDB's batched `multi_get`.
///
/// An entry whose per-message expiry (`Nats-TTL`) has passed by the wall
/// clock is not shown: the engine removes it, and until it has (or while
/// the node is stopped) the handle hides it.
///
/// Each call sees some committed state (a range iteration sees one
/// consistent state throughout). A handle keeps the database open: its
/// files stay locked until the store and every handle are dropped.
#[derive(Clone)]
pub struct RocksDbReader {
    pub(crate) db: Arc<DB>,
    pub(crate) dir: Arc<Path>,
}

impl core::fmt::Debug for RocksDbReader {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RocksDbReader")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl RocksDbReader {
    /// The entry under `key`, if any.
    ///
    /// # Errors
    /// RocksDB read failures, [`SnapshotError::Corrupted`] for an undecodable
    /// record.
    pub fn get(&self, key: &str) -> Result<Option<StoredEntry>, SnapshotError> {
        let now = Timestamp::now();
        Ok(get(&self.db, &self.dir, key)?.filter(|e| !e.is_expired_at(now)))
    }

    /// The entries under `keys`, in the same order, read in one batched
    /// lookup.
    ///
    /// # Errors
    /// As [`RocksDbReader::get`].
    pub fn multi_get(&self, keys: &[&str]) -> Result<Vec<Option<StoredEntry>>, SnapshotError> {
        let now = Timestamp::now();
        let mut found = multi_get(&self.db, &self.dir, keys)?;
        for entry in &mut found {
            if entry.as_ref().is_some_and(|e| e.is_expired_at(now)) {
                *entry = None;
            }
        }
        Ok(found)
    }

    /// Call `f` for every key starting with `prefix`, in key order, until it
    /// breaks; returns whether the iteration ran to the end.
    ///
    /// # Errors
    /// RocksDB read failures, [`SnapshotError::Corrupted`] for an undecodable
    /// record.
    pub fn for_each_in_range(
        &self,
        prefix: &str,
        f: &mut dyn FnMut(&str, EntryRef<'_>) -> ControlFlow<()>,
    ) -> Result<bool, SnapshotError> {
        let now = Timestamp::now();
        for_each_in_range(&self.db, &self.dir, prefix, &mut |key, entry| {
            if entry.is_expired_at(now) {
                ControlFlow::Continue(())
            } else {
                f(key, entry)
            }
        })
    }

    /// Every `(key, entry)` with a key starting with `prefix`, in key order.
    ///
    /// # Errors
    /// As [`RocksDbReader::for_each_in_range`].
    pub fn range(&self, prefix: &str) -> Result<Vec<(String, StoredEntry)>, SnapshotError> {
        let mut out = Vec::new();
        self.for_each_in_range(prefix, &mut |k, e| {
            out.push((k.to_owned(), e.to_owned_entry()));
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// The cursor of the latest commit.
    ///
    /// # Errors
    /// RocksDB read failures, [`SnapshotError::Corrupted`] for an
    /// undecodable cursor.
    pub fn cursor(&self) -> Result<WatchCursor, SnapshotError> {
        read_cursor(&self.db, &self.dir)
    }
}

pub(crate) fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a ColumnFamily, SnapshotError> {
    db.cf_handle(name)
        .ok_or_else(|| RocksDbStoreError::MissingColumnFamily { name }.into())
}

pub(crate) fn corrupted(dir: &Path, detail: String) -> SnapshotError {
    SnapshotError::Corrupted {
        path: dir.to_path_buf(),
        offset: 0,
        detail,
    }
}

fn decode(dir: &Path, key: &str, record: &[u8]) -> Result<StoredEntry, SnapshotError> {
    let entry = decode_value_record(record)
        .ok_or_else(|| corrupted(dir, format!("undecodable value record under key {key:?}")))?;
    Ok(StoredEntry {
        value: Bytes::copy_from_slice(entry.value),
        version: entry.version,
        expires: entry.expires,
    })
}

pub(crate) fn get(db: &DB, dir: &Path, key: &str) -> Result<Option<StoredEntry>, SnapshotError> {
    let data = cf(db, DATA_CF)?;
    match db.get_pinned_cf(data, key).map_err(engine)? {
        None => Ok(None),
        Some(record) => decode(dir, key, &record).map(Some),
    }
}

pub(crate) fn multi_get(
    db: &DB,
    dir: &Path,
    keys: &[&str],
) -> Result<Vec<Option<StoredEntry>>, SnapshotError> {
    let data = cf(db, DATA_CF)?;
    db.batched_multi_get_cf(data, keys, false)
        .into_iter()
        .zip(keys)
        .map(|(found, key)| match found.map_err(engine)? {
            None => Ok(None),
            Some(record) => decode(dir, key, &record).map(Some),
        })
        .collect()
}

pub(crate) fn for_each_in_range(
    db: &DB,
    dir: &Path,
    prefix: &str,
    f: &mut dyn FnMut(&str, EntryRef<'_>) -> ControlFlow<()>,
) -> Result<bool, SnapshotError> {
    let data = cf(db, DATA_CF)?;
    let mut it = db.raw_iterator_cf(data);
    it.seek(prefix);
    while let (Some(key), Some(record)) = (it.key(), it.value()) {
        if !key.starts_with(prefix.as_bytes()) {
            break;
        }
        let key = core::str::from_utf8(key).map_err(|_| RocksDbStoreError::NonUtf8Key {
            key: String::from_utf8_lossy(key).into_owned(),
        })?;
        let entry = decode_value_record(record)
            .ok_or_else(|| corrupted(dir, format!("undecodable value record under key {key:?}")))?;
        if f(key, entry).is_break() {
            return Ok(false);
        }
        it.next();
    }
    it.status().map_err(engine)?;
    Ok(true)
}

pub(crate) fn read_cursor(db: &DB, dir: &Path) -> Result<WatchCursor, SnapshotError> {
    let meta = cf(db, META_CF)?;
    match db.get_pinned_cf(meta, CURSOR_KEY).map_err(engine)? {
        None => Ok(WatchCursor::none()),
        Some(bytes) => WatchCursor::from_bytes(&bytes)
            .map_err(|e| corrupted(dir, format!("undecodable cursor: {e}"))),
    }
}
