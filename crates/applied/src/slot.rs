//! The engine's view of where the fold goes: a [`SnapshotStore`], or
//! nowhere ([`NoStore`]).

use std::ops::ControlFlow;
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

    fn for_each_key(&self, _: &WatchScope, _: &mut dyn FnMut(&str)) -> Result<(), SnapshotError> {
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
