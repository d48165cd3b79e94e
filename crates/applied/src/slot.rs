//! The engine's view of where the fold goes: a [`SnapshotStore`], or
//! nowhere ([`NoStore`]).

use std::ops::ControlFlow;
use std::path::Path;

use slipstream_kv::{KvUpdate, WatchCursor, WatchScope};
use slipstream_snapshot::{
    BackendId, EntryRef, PendingExport, SnapshotError, SnapshotStore, StoredEntry, import,
};

/// The place an applied watch commits to: every [`SnapshotStore`], or
/// [`NoStore`]. Every method blocks and is called off the async runtime.
pub trait StoreSlot: Send + 'static {
    /// Whether commits go anywhere (false for [`NoStore`]).
    const DURABLE: bool;

    /// The backend whose artifacts this slot imports; `None` without a
    /// store.
    const BACKEND: Option<BackendId>;

    /// The cursor to resume from; `None` when the slot holds no store.
    fn stored_cursor(&self) -> Option<&WatchCursor>;

    /// Commit `batch` and `cursor` atomically.
    ///
    /// # Errors
    /// The store's error; nothing of the batch is visible then.
    fn commit(&mut self, batch: &[KvUpdate], cursor: &WatchCursor) -> Result<(), SnapshotError>;

    /// Call `f` for every key of the fold inside `scope`, once each, in
    /// ascending key order. [`NoStore`] holds no keys.
    ///
    /// # Errors
    /// The store's read error.
    fn for_each_key(
        &self,
        scope: &WatchScope,
        f: &mut dyn FnMut(&str),
    ) -> Result<(), SnapshotError>;

    /// Call `f` for every entry of the fold inside `scope`, in ascending
    /// key order, until it breaks.
    ///
    /// # Errors
    /// The store's read error.
    fn for_each_entry(
        &self,
        scope: &WatchScope,
        f: &mut dyn FnMut(&str, EntryRef<'_>) -> ControlFlow<()>,
    ) -> Result<(), SnapshotError>;

    /// The fold's entry for `key`.
    ///
    /// # Errors
    /// The store's read error.
    fn get_entry(&self, key: &str) -> Result<Option<StoredEntry>, SnapshotError>;

    /// Import the artifact at `artifact` into `dir` (a scratch directory)
    /// and open it as a fold of the same backend, with default options
    /// (R3's temporary fold).
    ///
    /// # Errors
    /// The artifact is invalid, hostile or of another backend, or the
    /// store cannot be opened.
    fn import_scratch(artifact: &Path, dir: &Path) -> Result<(WatchCursor, Self), SnapshotError>
    where
        Self: Sized;

    /// Capture the last commit for an export to `dest`; the returned
    /// export finishes without the store. `None` when there is no store.
    fn begin_export(
        &mut self,
        dest: &Path,
        scope: &WatchScope,
    ) -> Option<Result<PendingExport, SnapshotError>>;

    /// Close the store cleanly.
    ///
    /// # Errors
    /// The store's error.
    fn close(self) -> Result<(), SnapshotError>;
}

impl<S: SnapshotStore> StoreSlot for S {
    const DURABLE: bool = true;
    const BACKEND: Option<BackendId> = Some(<S as SnapshotStore>::BACKEND);

    fn stored_cursor(&self) -> Option<&WatchCursor> {
        Some(self.cursor())
    }

    fn commit(&mut self, batch: &[KvUpdate], cursor: &WatchCursor) -> Result<(), SnapshotError> {
        self.apply(batch, cursor)
    }

    fn for_each_key(
        &self,
        scope: &WatchScope,
        f: &mut dyn FnMut(&str),
    ) -> Result<(), SnapshotError> {
        for prefix in disjoint_prefixes(scope) {
            self.for_each_in_range(prefix, &mut |key, _| {
                f(key);
                ControlFlow::Continue(())
            })?;
        }
        Ok(())
    }

    fn for_each_entry(
        &self,
        scope: &WatchScope,
        f: &mut dyn FnMut(&str, EntryRef<'_>) -> ControlFlow<()>,
    ) -> Result<(), SnapshotError> {
        let mut stopped = false;
        for prefix in disjoint_prefixes(scope) {
            self.for_each_in_range(prefix, &mut |key, entry| {
                let flow = f(key, entry);
                stopped = flow.is_break();
                flow
            })?;
            if stopped {
                break;
            }
        }
        Ok(())
    }

    fn get_entry(&self, key: &str) -> Result<Option<StoredEntry>, SnapshotError> {
        self.get(key)
    }

    fn import_scratch(artifact: &Path, dir: &Path) -> Result<(WatchCursor, Self), SnapshotError> {
        let options = S::Options::default();
        import::<S>(artifact, dir, &options)?;
        S::open(dir, &options)
    }

    fn begin_export(
        &mut self,
        dest: &Path,
        scope: &WatchScope,
    ) -> Option<Result<PendingExport, SnapshotError>> {
        Some(slipstream_snapshot::begin_export(self, dest, scope))
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
    const BACKEND: Option<BackendId> = None;

    fn stored_cursor(&self) -> Option<&WatchCursor> {
        None
    }

    fn commit(&mut self, _: &[KvUpdate], _: &WatchCursor) -> Result<(), SnapshotError> {
        Ok(())
    }

    fn for_each_key(&self, _: &WatchScope, _: &mut dyn FnMut(&str)) -> Result<(), SnapshotError> {
        Ok(())
    }

    fn for_each_entry(
        &self,
        _: &WatchScope,
        _: &mut dyn FnMut(&str, EntryRef<'_>) -> ControlFlow<()>,
    ) -> Result<(), SnapshotError> {
        Ok(())
    }

    fn get_entry(&self, _: &str) -> Result<Option<StoredEntry>, SnapshotError> {
        Ok(None)
    }

    /// Never called: repairs that need a store refuse before importing.
    fn import_scratch(_: &Path, _: &Path) -> Result<(WatchCursor, Self), SnapshotError> {
        Ok((WatchCursor::none(), Self))
    }

    fn begin_export(
        &mut self,
        _: &Path,
        _: &WatchScope,
    ) -> Option<Result<PendingExport, SnapshotError>> {
        None
    }

    fn close(self) -> Result<(), SnapshotError> {
        Ok(())
    }
}

/// The scope's prefixes sorted, without any that another one covers, so
/// their ranges are disjoint and visited in key order.
fn disjoint_prefixes(scope: &WatchScope) -> Vec<&str> {
    let mut prefixes: Vec<&str> = match scope {
        WatchScope::All => vec![""],
        WatchScope::Prefix(p) => vec![p.as_str()],
        WatchScope::Prefixes(ps) => ps.iter().map(String::as_str).collect(),
    };
    prefixes.sort_unstable();
    let mut kept: Vec<&str> = Vec::with_capacity(prefixes.len());
    for p in prefixes {
        // Sorted order puts a covering prefix first, and everything between
        // it and `p` also starts with it: checking the last kept suffices.
        if !kept.last().is_some_and(|q| p.starts_with(q)) {
            kept.push(p);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_scope_prefixes_are_scanned_once_in_key_order() {
        let scope = WatchScope::Prefixes(vec!["b.".into(), "a".into(), "ab".into(), "b.".into()]);
        assert_eq!(disjoint_prefixes(&scope), ["a", "b."]);
        assert_eq!(disjoint_prefixes(&WatchScope::All), [""]);
        assert_eq!(disjoint_prefixes(&WatchScope::Prefix("x.".into())), ["x."]);
    }
}
