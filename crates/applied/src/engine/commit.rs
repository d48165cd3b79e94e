//! The store and the commit running on a blocking thread (E3, E4): at most
//! one commit in flight, and one way for any other blocking store task to
//! take the store and put it back.

use std::time::{Duration, Instant};

use slipstream_kv::{KvUpdate, WatchCursor};
use slipstream_snapshot::SnapshotError;
use tokio::task::{JoinError, JoinHandle};

use crate::error::AppliedError;
use crate::slot::StoreSlot;

/// What a commit task hands back: the store, the raw updates it was given,
/// the cursor it committed with them, the outcome and how long it took.
type CommitOutput<S> = (
    S,
    Vec<KvUpdate>,
    WatchCursor,
    Result<(), SnapshotError>,
    Duration,
);

/// A finished commit, with the store back in place.
pub(crate) enum Settled {
    /// The updates and `cursor` are durable.
    Committed { cursor: WatchCursor, took: Duration },
    /// The commit failed: its updates go back in front of newer ones.
    Failed {
        raw: Vec<KvUpdate>,
        error: SnapshotError,
        failures: u32,
    },
}

pub(crate) struct Commits<S> {
    /// `None` while a commit or another blocking task holds it, or after
    /// such a task panicked with it.
    store: Option<S>,
    in_flight: Option<JoinHandle<CommitOutput<S>>>,
    /// An emptied raw buffer handed back by the last successful commit, so
    /// the two buffers alternate instead of being reallocated.
    spare: Vec<KvUpdate>,
    /// Consecutive failed commits.
    failures: u32,
}

impl<S: StoreSlot> Commits<S> {
    pub(crate) fn new(store: S) -> Self {
        Self {
            store: Some(store),
            in_flight: None,
            spare: Vec::new(),
            failures: 0,
        }
    }

    /// Consecutive failed commits.
    pub(crate) const fn failures(&self) -> u32 {
        self.failures
    }

    /// The emptied buffer the next commit's successor fills.
    pub(crate) fn spare(&mut self) -> Vec<KvUpdate> {
        std::mem::take(&mut self.spare)
    }

    /// Start committing `raw` and `cursor` atomically on a blocking thread.
    /// The caller settled the previous commit first.
    pub(crate) fn start(
        &mut self,
        mut raw: Vec<KvUpdate>,
        cursor: WatchCursor,
    ) -> Result<(), AppliedError> {
        debug_assert!(self.in_flight.is_none(), "one commit at a time");
        let mut store = self.take("commit")?;
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = store.commit(&raw, &cursor);
            let took = started.elapsed();
            if result.is_ok() {
                // Freeing a committed batch is work the engine's thread
                // need not do.
                raw.clear();
            }
            (store, raw, cursor, result, took)
        }));
        Ok(())
    }

    /// The commit in flight's end, its store back in place; pending forever
    /// when none runs (a select arm on it is idle then).
    pub(crate) async fn finished(&mut self) -> Result<Settled, AppliedError> {
        let Some(task) = self.in_flight.as_mut() else {
            return std::future::pending().await;
        };
        let joined = task.await;
        self.in_flight = None;
        self.take_output(joined)
    }

    /// Wait for the commit in flight, if any.
    pub(crate) async fn settle(&mut self) -> Option<Result<Settled, AppliedError>> {
        self.in_flight.as_ref()?;
        Some(self.finished().await)
    }

    fn take_output(
        &mut self,
        joined: Result<CommitOutput<S>, JoinError>,
    ) -> Result<Settled, AppliedError> {
        let Ok((store, raw, cursor, result, took)) = joined else {
            return Err(AppliedError::StorePanicked {
                operation: "commit",
            });
        };
        self.store = Some(store);
        match result {
            Ok(()) => {
                debug_assert!(raw.is_empty(), "the commit task empties it");
                self.spare = raw;
                self.failures = 0;
                Ok(Settled::Committed { cursor, took })
            }
            Err(error) => {
                self.failures += 1;
                Ok(Settled::Failed {
                    raw,
                    error,
                    failures: self.failures,
                })
            }
        }
    }

    /// Run `task` with the store on a blocking thread and put the store
    /// back. The caller settled the commit in flight first, so its failure
    /// counted (and re-queued) as any other.
    pub(crate) async fn with_store<R, F>(
        &mut self,
        operation: &'static str,
        task: F,
    ) -> Result<R, AppliedError>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        let mut store = self.take(operation)?;
        let joined = tokio::task::spawn_blocking(move || {
            let result = task(&mut store);
            (store, result)
        })
        .await;
        let Ok((store, result)) = joined else {
            return Err(AppliedError::StorePanicked { operation });
        };
        self.store = Some(store);
        Ok(result)
    }

    /// The store, for the caller to keep (the engine has finished).
    pub(crate) fn into_store(mut self) -> Option<S> {
        debug_assert!(self.in_flight.is_none(), "run settles every commit");
        self.store.take()
    }

    fn take(&mut self, operation: &'static str) -> Result<S, AppliedError> {
        self.store
            .take()
            .ok_or(AppliedError::StorePanicked { operation })
    }
}
