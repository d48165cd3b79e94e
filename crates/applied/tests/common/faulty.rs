//! [`Faulty`]: the fault plan of [`super::FaultStore`] over any snapshot
//! store, so the simulations run on every backend. It also records every
//! committed cursor whole (identity and memo included), for O3 across
//! bucket incarnations.

use std::fmt;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipstream_kv::{KvUpdate, WatchCursor};
use slipstream_snapshot::{
    BackendId, EntryRef, SnapshotError, SnapshotStore, StoreStats, StoredEntry,
};

use super::{DropCounter, FaultPlan, lock};

/// Every cursor a [`Faulty`] committed, in order.
pub type CommitLog = Arc<Mutex<Vec<WatchCursor>>>;

/// Options of a [`Faulty`] store: the inner store's, the plan, and where
/// committed cursors are recorded.
pub struct FaultyOptions<S: SnapshotStore> {
    pub inner: S::Options,
    pub plan: Arc<FaultPlan>,
    pub commits: CommitLog,
}

impl<S: SnapshotStore> Clone for FaultyOptions<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            plan: Arc::clone(&self.plan),
            commits: Arc::clone(&self.commits),
        }
    }
}

impl<S: SnapshotStore> Default for FaultyOptions<S> {
    fn default() -> Self {
        Self {
            inner: S::Options::default(),
            plan: FaultPlan::new(),
            commits: CommitLog::default(),
        }
    }
}

impl<S: SnapshotStore> fmt::Debug for FaultyOptions<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyOptions")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// Any snapshot store failing where its plan says (commit failures only:
/// panics and silent crashes are the append-log wrapper's business).
pub struct Faulty<S: SnapshotStore> {
    inner: S,
    plan: Arc<FaultPlan>,
    commits: CommitLog,
    // Declared after `inner`, so it drops after the store released its lock.
    _dropped: DropCounter,
}

impl<S: SnapshotStore> fmt::Debug for Faulty<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faulty")
            .field("cursor", self.inner.cursor())
            .finish_non_exhaustive()
    }
}

impl<S: SnapshotStore> SnapshotStore for Faulty<S> {
    type Options = FaultyOptions<S>;
    const BACKEND: BackendId = S::BACKEND;

    fn open(dir: &Path, options: &Self::Options) -> Result<(WatchCursor, Self), SnapshotError> {
        let (cursor, inner) = S::open(dir, &options.inner)?;
        Ok((
            cursor,
            Self {
                inner,
                plan: Arc::clone(&options.plan),
                commits: Arc::clone(&options.commits),
                _dropped: DropCounter(Arc::clone(&options.plan)),
            },
        ))
    }

    fn apply(&mut self, batch: &[KvUpdate], cursor: &WatchCursor) -> Result<(), SnapshotError> {
        let fail = {
            let mut s = self.plan.state();
            s.attempts += 1;
            s.fail_all || s.fail_at.contains(&s.attempts)
        };
        if fail {
            return Err(SnapshotError::io(
                "injected commit failure",
                "",
                std::io::Error::other("injected"),
            ));
        }
        self.inner.apply(batch, cursor)?;
        self.plan
            .state()
            .committed
            .push((batch.len(), cursor.revision()));
        lock(&self.commits).push(cursor.clone());
        Ok(())
    }

    fn cursor(&self) -> &WatchCursor {
        self.inner.cursor()
    }

    fn get(&self, key: &str) -> Result<Option<StoredEntry>, SnapshotError> {
        self.inner.get(key)
    }

    fn for_each_in_range(
        &self,
        prefix: &str,
        f: &mut dyn FnMut(&str, EntryRef<'_>) -> ControlFlow<()>,
    ) -> Result<bool, SnapshotError> {
        self.inner.for_each_in_range(prefix, f)
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }

    fn sync(&mut self) -> Result<(), SnapshotError> {
        self.inner.sync()
    }

    fn checkpoint_to(&mut self, data_dir: &Path) -> Result<(), SnapshotError> {
        if self.plan.state().fail_exports {
            return Err(SnapshotError::io(
                "injected export failure",
                data_dir,
                std::io::Error::other("injected"),
            ));
        }
        self.inner.checkpoint_to(data_dir)
    }

    fn close(self) -> Result<(), SnapshotError> {
        self.inner.close()
    }
}

/// Open a [`Faulty`] store, retrying while a dropped handle of an embedded
/// engine still holds the directory's lock (its background work ends on
/// its own); panics past a deadline.
pub fn open_faulty<S: SnapshotStore>(
    dir: &Path,
    options: &FaultyOptions<S>,
) -> (WatchCursor, Faulty<S>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Faulty::open(dir, options) {
            Ok(opened) => return opened,
            Err(SnapshotError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("open store in {}: {e}", dir.display()),
        }
    }
}
