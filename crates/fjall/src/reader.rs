//! Reads shared by the store and its cloneable read handle.

use core::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use fjall::Keyspace;
use slipstream_kv::{Timestamp, WatchCursor};
use slipstream_snapshot::{EntryRef, SnapshotError, StoredEntry, decode_value_record};

use crate::error::{FjallStoreError, engine};
use crate::store::CURSOR_KEY;

/// A cloneable, `Send + Sync` read handle on a [`FjallStore`](crate::FjallStore)'s
/// fold, for readers on other threads while the store applies.
///
/// An entry whose per-message expiry (`Nats-TTL`) has passed by the wall
/// clock is not shown: the engine removes it, and until it has (or while
/// the node is stopped) the handle hides it.
///
/// Each call sees some committed state (a range iteration sees one
/// consistent state throughout). A handle keeps the database open: the
/// engine's files stay locked until the store and every handle are dropped.
#[derive(Clone)]
pub struct FjallReader {
    pub(crate) data: Keyspace,
    pub(crate) meta: Keyspace,
    pub(crate) dir: Arc<Path>,
}

impl core::fmt::Debug for FjallReader {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FjallReader")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl FjallReader {
    /// The entry under `key`, if any.
    ///
    /// # Errors
    /// fjall read failures, [`SnapshotError::Corrupted`] for an undecodable
    /// record.
    pub fn get(&self, key: &str) -> Result<Option<StoredEntry>, SnapshotError> {
        let now = Timestamp::now();
        Ok(get(&self.data, &self.dir, key)?.filter(|e| !e.is_expired_at(now)))
    }

    /// Call `f` for every key starting with `prefix`, in key order, until it
    /// breaks; returns whether the iteration ran to the end.
    ///
    /// # Errors
    /// fjall read failures, [`SnapshotError::Corrupted`] for an undecodable
    /// record.
    pub fn for_each_in_range(
        &self,
        prefix: &str,
        f: &mut dyn FnMut(&str, EntryRef<'_>) -> ControlFlow<()>,
    ) -> Result<bool, SnapshotError> {
        let now = Timestamp::now();
        for_each_in_range(&self.data, &self.dir, prefix, &mut |key, entry| {
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
    /// As [`FjallReader::for_each_in_range`].
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
    /// fjall read failures, [`SnapshotError::Corrupted`] for an undecodable
    /// cursor.
    pub fn cursor(&self) -> Result<WatchCursor, SnapshotError> {
        read_cursor(&self.meta, &self.dir)
    }
}

pub(crate) fn corrupted(dir: &Path, detail: String) -> SnapshotError {
    SnapshotError::Corrupted {
        path: dir.to_path_buf(),
        offset: 0,
        detail,
    }
}

pub(crate) fn get(
    data: &Keyspace,
    dir: &Path,
    key: &str,
) -> Result<Option<StoredEntry>, SnapshotError> {
    let Some(record) = data.get(key).map_err(engine)? else {
        return Ok(None);
    };
    let entry = decode_value_record(&record)
        .ok_or_else(|| corrupted(dir, format!("undecodable value record under key {key:?}")))?;
    Ok(Some(StoredEntry {
        value: Bytes::copy_from_slice(entry.value),
        version: entry.version,
        expires: entry.expires,
    }))
}

pub(crate) fn for_each_in_range(
    data: &Keyspace,
    dir: &Path,
    prefix: &str,
    f: &mut dyn FnMut(&str, EntryRef<'_>) -> ControlFlow<()>,
) -> Result<bool, SnapshotError> {
    for guard in data.prefix(prefix) {
        let (key, record) = guard.into_inner().map_err(engine)?;
        let key = core::str::from_utf8(&key).map_err(|_| FjallStoreError::NonUtf8Key {
            key: String::from_utf8_lossy(&key).into_owned(),
        })?;
        let entry = decode_value_record(&record)
            .ok_or_else(|| corrupted(dir, format!("undecodable value record under key {key:?}")))?;
        if f(key, entry).is_break() {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(crate) fn read_cursor(meta: &Keyspace, dir: &Path) -> Result<WatchCursor, SnapshotError> {
    match meta.get(CURSOR_KEY).map_err(engine)? {
        None => Ok(WatchCursor::none()),
        Some(bytes) => WatchCursor::from_bytes(&bytes)
            .map_err(|e| corrupted(dir, format!("undecodable cursor: {e}"))),
    }
}
