//! The `SnapshotStore` trait (S1) and the types it speaks.

use core::fmt;
use core::ops::ControlFlow;
use std::path::Path;

use bytes::Bytes;
use slipstream_kv::{KvUpdate, Timestamp, VersionToken, WatchCursor, WatchScope};

use crate::artifact::{self, ArtifactManifest};
use crate::error::SnapshotError;

/// When a commit reaches stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Durability {
    /// Every `apply` is fsynced before it returns: a machine crash loses no
    /// committed batch.
    #[default]
    FsyncEachCommit,
    /// Commits are written to the OS but not fsynced: a process crash loses
    /// nothing, a machine crash may lose the latest commits (the store still
    /// reopens to an earlier committed state, never a mixture).
    NoFsync,
}

/// A backend's identity as recorded in artifacts: its id and the generation
/// of its on-disk format. An artifact opens only on the same pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendId {
    /// Short stable name (`"append-log"`, `"fjall"`, `"rocksdb"`).
    pub name: &'static str,
    /// Bumped whenever the backend's files change incompatibly.
    pub format_generation: u32,
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.name, self.format_generation)
    }
}

/// A stored entry, owned: the value and version of the key's latest put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// The value (may be empty: an empty-value put is stored as it came).
    pub value: Bytes,
    /// The put's version (unknown when the update carried none).
    pub version: VersionToken,
    /// When the entry expires (its per-message TTL), if it does.
    pub expires: Option<Timestamp>,
}

impl StoredEntry {
    /// Whether the entry has expired at `now`: readers never show it.
    #[must_use]
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }
}

/// A stored entry, borrowed from the store during a streaming iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// The value.
    pub value: &'a [u8],
    /// The put's version.
    pub version: VersionToken,
    /// When the entry expires, if it does.
    pub expires: Option<Timestamp>,
}

impl EntryRef<'_> {
    /// Whether the entry has expired at `now`.
    #[must_use]
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }

    /// An owned copy.
    #[must_use]
    pub fn to_owned_entry(&self) -> StoredEntry {
        StoredEntry {
            value: Bytes::copy_from_slice(self.value),
            version: self.version,
            expires: self.expires,
        }
    }
}

/// A store's last commit captured for an export: everything needed to
/// write the artifact's data files without the store (see
/// [`SnapshotStore::capture_for_export`]).
pub trait ExportCapture: Send {
    /// The captured commit's cursor: the artifact's cursor (A4).
    fn cursor(&self) -> &WatchCursor;

    /// Write the backend's files of the captured commit into `data_dir`,
    /// the directory the capture was given.
    ///
    /// # Errors
    /// I/O and backend failures.
    fn write_to(self: Box<Self>, data_dir: &Path) -> Result<(), SnapshotError>;
}

/// A capture whose files were written while it was taken.
#[derive(Debug)]
pub(crate) struct WrittenCapture(pub(crate) WatchCursor);

impl ExportCapture for WrittenCapture {
    fn cursor(&self) -> &WatchCursor {
        &self.0
    }

    fn write_to(self: Box<Self>, _data_dir: &Path) -> Result<(), SnapshotError> {
        Ok(())
    }
}

/// Size figures of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Keys holding an entry.
    pub keys: u64,
    /// Bytes of keys, values and versions held.
    pub live_bytes: u64,
    /// Bytes the store occupies on disk (an estimate for LSM backends).
    pub disk_bytes: u64,
}

/// A durable local fold of a bucket: key -> latest entry, plus the cursor
/// the fold is exact at (S1).
///
/// The fold is a pure function of the updates applied: `Put` inserts
/// `(key, value, version)`, `Delete` and `Purge` remove the key, whatever the
/// batching. `apply` commits a batch and its cursor atomically: after any
/// crash the store reopens to some earlier committed (data, cursor) pair,
/// never a mixture (S2).
///
/// Blocking: the engine calls every method from a blocking thread, hence
/// `Send + 'static`.
pub trait SnapshotStore: Sized + Send + 'static {
    /// How to open the store (durability and backend tuning). `Default`
    /// must give a store that opens any directory of this backend.
    type Options: Clone + Default + fmt::Debug + Send + Sync + 'static;

    /// The backend's identity, recorded in and checked against artifacts.
    const BACKEND: BackendId;

    /// Open (creating it when absent) the store in directory `dir` and
    /// return the cursor to resume from with it. A fresh store's cursor is
    /// [`WatchCursor::none`].
    ///
    /// # Errors
    /// I/O failures, [`SnapshotError::Corrupted`] for damage recovery must not
    /// hide, [`SnapshotError::Locked`] when another handle holds it,
    /// [`SnapshotError::WrongBackend`] for another backend's directory.
    fn open(dir: &Path, options: &Self::Options) -> Result<(WatchCursor, Self), SnapshotError>;

    /// Check that `dir` holds a complete store of this backend and return
    /// its cursor, without keeping it open. Export and import call this on
    /// their staged copies. The default opens and closes the store; a
    /// backend may check without building its fold (to keep memory flat).
    ///
    /// # Errors
    /// As [`SnapshotStore::open`].
    fn verify_dir(dir: &Path, options: &Self::Options) -> Result<WatchCursor, SnapshotError> {
        let (cursor, store) = Self::open(dir, options)?;
        store.close()?;
        Ok(cursor)
    }

    /// Fold `batch` into the store and set the cursor to `cursor`, in one
    /// atomic commit. The batch may be empty (a cursor-only commit) and may
    /// hold synthetic deletes with unknown versions.
    ///
    /// # Errors
    /// I/O failures (nothing of the batch is visible then, on disk or in
    /// reads), [`SnapshotError::InvalidUpdate`], [`SnapshotError::Poisoned`].
    fn apply(&mut self, batch: &[KvUpdate], cursor: &WatchCursor) -> Result<(), SnapshotError>;

    /// The cursor of the last commit.
    fn cursor(&self) -> &WatchCursor;

    /// The entry under `key`, if any.
    ///
    /// # Errors
    /// Backend read failures.
    fn get(&self, key: &str) -> Result<Option<StoredEntry>, SnapshotError>;

    /// Call `f` for every key starting with `prefix`, in ascending key
    /// (byte) order, without materializing the listing; stops early when `f`
    /// breaks. Returns whether the iteration ran to the end.
    ///
    /// # Errors
    /// Backend read failures.
    fn for_each_in_range(
        &self,
        prefix: &str,
        f: &mut dyn FnMut(&str, EntryRef<'_>) -> ControlFlow<()>,
    ) -> Result<bool, SnapshotError>;

    /// Every `(key, entry)` with a key starting with `prefix`, in key order.
    ///
    /// # Errors
    /// Backend read failures.
    fn range(&self, prefix: &str) -> Result<Vec<(String, StoredEntry)>, SnapshotError> {
        let mut out = Vec::new();
        self.for_each_in_range(prefix, &mut |k, e| {
            out.push((k.to_owned(), e.to_owned_entry()));
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// Keys holding an entry.
    fn len(&self) -> u64;

    /// Whether no key holds an entry.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size figures.
    fn stats(&self) -> StoreStats;

    /// The backend's identity.
    fn backend_id(&self) -> BackendId {
        Self::BACKEND
    }

    /// Force every commit so far to stable storage (meaningful under
    /// [`Durability::NoFsync`]).
    ///
    /// # Errors
    /// I/O failures.
    fn sync(&mut self) -> Result<(), SnapshotError>;

    /// Write a consistent, openable copy of the last commit into `data_dir`,
    /// an existing empty directory on the destination's file system.
    /// Immutable files may be hard-linked; mutable ones must be copied or
    /// written afresh. This is the backend half of an export; use
    /// [`SnapshotStore::export_to`].
    ///
    /// # Errors
    /// I/O and backend failures.
    fn checkpoint_to(&mut self, data_dir: &Path) -> Result<(), SnapshotError>;

    /// Capture the last commit for an export (A4) so that the artifact's
    /// files can be written while the store goes on committing: the store
    /// is needed only for the capture; [`ExportCapture::write_to`] runs
    /// without it. `data_dir` is where the files will go (an existing empty
    /// directory); a backend may write them there at once. The default
    /// writes the whole checkpoint during the capture.
    ///
    /// # Errors
    /// I/O and backend failures.
    fn capture_for_export(
        &mut self,
        data_dir: &Path,
    ) -> Result<Box<dyn ExportCapture>, SnapshotError> {
        self.checkpoint_to(data_dir)?;
        Ok(Box::new(WrittenCapture(self.cursor().clone())))
    }

    /// Export the last commit as an artifact at `dest` (A1, A2): staged next
    /// to `dest`, hashed, verified by reopening, then renamed into place.
    /// `scope` is the watch scope the fold was built under.
    ///
    /// # Errors
    /// [`SnapshotError::DestinationNotEmpty`], I/O failures,
    /// [`SnapshotError::ExportVerification`].
    fn export_to(
        &mut self,
        dest: &Path,
        scope: &WatchScope,
    ) -> Result<ArtifactManifest, SnapshotError> {
        artifact::export(self, dest, scope)
    }

    /// Close the store cleanly, leaving as little as possible to do at the
    /// next open. May block; call it off the async runtime.
    ///
    /// # Errors
    /// I/O and backend failures.
    fn close(mut self) -> Result<(), SnapshotError> {
        self.sync()
    }
}
