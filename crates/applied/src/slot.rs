//! The engine's view of where the fold goes: a [`SnapshotStore`], or
//! nowhere ([`NoStore`]).

use std::path::Path;

use slipstream_kv::{KvUpdate, WatchCursor, WatchScope};
use slipstream_snapshot::{ArtifactManifest, SnapshotError, SnapshotStore};

/// The place an applied watch commits to: every [`SnapshotStore`], or
/// [`NoStore`]. Every method blocks and is called off the async runtime.
pub trait StoreSlot: Send + 'static {
    /// Whether commits go anywhere (false for [`NoStore`]).
    const DURABLE: bool;

    /// The cursor to resume from; `None` when the slot holds no store.
    fn stored_cursor(&self) -> Option<&WatchCursor>;

    /// Commit `batch` and `cursor` atomically.
    ///
    /// # Errors
    /// The store's error; nothing of the batch is visible then.
    fn commit(&mut self, batch: &[KvUpdate], cursor: &WatchCursor) -> Result<(), SnapshotError>;

    /// Export the last commit to `dest`; `None` when there is no store.
    fn export(
        &mut self,
        dest: &Path,
        scope: &WatchScope,
    ) -> Option<Result<ArtifactManifest, SnapshotError>>;

    /// Close the store cleanly.
    ///
    /// # Errors
    /// The store's error.
    fn close(self) -> Result<(), SnapshotError>;
}

impl<S: SnapshotStore> StoreSlot for S {
    const DURABLE: bool = true;

    fn stored_cursor(&self) -> Option<&WatchCursor> {
        Some(self.cursor())
    }

    fn commit(&mut self, batch: &[KvUpdate], cursor: &WatchCursor) -> Result<(), SnapshotError> {
        self.apply(batch, cursor)
    }

    fn export(
        &mut self,
        dest: &Path,
        scope: &WatchScope,
    ) -> Option<Result<ArtifactManifest, SnapshotError>> {
        Some(self.export_to(dest, scope))
    }

    fn close(self) -> Result<(), SnapshotError> {
        SnapshotStore::close(self)
    }
}

/// No store: the application keeps the fold itself and persists the cursor
/// `on_applied` reports (E6). Exports are refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoStore;

impl StoreSlot for NoStore {
    const DURABLE: bool = false;

    fn stored_cursor(&self) -> Option<&WatchCursor> {
        None
    }

    fn commit(&mut self, _: &[KvUpdate], _: &WatchCursor) -> Result<(), SnapshotError> {
        Ok(())
    }

    fn export(
        &mut self,
        _: &Path,
        _: &WatchScope,
    ) -> Option<Result<ArtifactManifest, SnapshotError>> {
        None
    }

    fn close(self) -> Result<(), SnapshotError> {
        Ok(())
    }
}
