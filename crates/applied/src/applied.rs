//! The public entry point: [`AppliedWatch`] and how it ends (E5, E7).

use std::time::Duration;
use std::vec::Drain;

use slipstream_kv::{KvUpdate, KvWatcher, WatchCursor};
use tokio::sync::{oneshot, watch};

use crate::config::AppliedConfig;
use crate::engine::Engine;
use crate::error::AppliedError;
use crate::handlers::Handlers;
use crate::outcome::{Finished, Stopped};
use crate::slot::{NoStore, StoreSlot};
use crate::status::{StatusReceiver, WatchStatus};

/// The applied-watch engine: folds a bucket's watch through the
/// application's `parse` and `apply` into a store, one batch at a time, and
/// moves the cursor only past what `apply` has returned for and the store
/// has committed (E1–E10).
///
/// Construct it with the watcher and an [`AppliedConfig`], take
/// [`AppliedWatch::status`] receivers, then drive it with
/// [`AppliedWatch::run`] (hands the store back) or
/// [`AppliedWatch::run_and_close`] (closes the store off the runtime).
#[derive(Debug)]
pub struct AppliedWatch<W, S = NoStore> {
    watcher: W,
    config: AppliedConfig<S>,
    status: watch::Sender<WatchStatus>,
}

impl<W: KvWatcher, S: StoreSlot> AppliedWatch<W, S> {
    /// An engine for `watcher`, configured by `config`.
    pub fn new(watcher: W, config: AppliedConfig<S>) -> Self {
        let (status, _) = watch::channel(WatchStatus::starting());
        Self {
            watcher,
            config,
            status,
        }
    }

    /// A receiver of the watch's status (E9). Readiness re-arms: the phase
    /// leaves `Ready` while a re-watch or a repair is syncing.
    #[must_use]
    pub fn status(&self) -> StatusReceiver {
        self.status.subscribe()
    }

    /// Run until shutdown, the end of the stream, or a failure; hand the
    /// store back on every exit (E7).
    ///
    /// # Panics
    /// Propagates a panic of `parse`, `apply` or `on_applied` (E10).
    pub async fn run<T, P, A, O>(self, handlers: Handlers<P, A, O>) -> Finished<S>
    where
        P: FnMut(&KvUpdate) -> Option<T>,
        A: FnMut(Drain<'_, T>),
        O: FnMut(&WatchCursor),
    {
        let mut engine = Engine::new(self.watcher, self.config, self.status, handlers);
        let result = engine.run().await;
        engine.finish(result)
    }

    /// Run like [`AppliedWatch::run`], then close the store on a dedicated
    /// thread, waiting at most `timeouts.close`: a store whose destructor
    /// blocks can never freeze the async runtime (E7). A close that takes
    /// longer goes on in the background.
    ///
    /// # Errors
    /// The watch's error; otherwise [`AppliedError::CloseTimedOut`] or the
    /// close's own failure.
    ///
    /// # Panics
    /// Propagates a panic of `parse`, `apply` or `on_applied` (E10).
    pub async fn run_and_close<T, P, A, O>(
        self,
        handlers: Handlers<P, A, O>,
    ) -> Result<Stopped, AppliedError>
    where
        P: FnMut(&KvUpdate) -> Option<T>,
        A: FnMut(Drain<'_, T>),
        O: FnMut(&WatchCursor),
    {
        let bound = self.config.settings.timeouts.close;
        let finished = self.run(handlers).await;
        let closed = match finished.store {
            Some(store) if S::DURABLE => close_off_runtime(store, bound).await,
            _ => Ok(()),
        };
        let stopped = finished.result?;
        closed.map(|()| stopped)
    }
}

/// Close `store` on its own thread and wait at most `bound` for it.
async fn close_off_runtime<S: StoreSlot>(store: S, bound: Duration) -> Result<(), AppliedError> {
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("slipstream-close".into())
        .spawn(move || {
            // The receiver may have given up waiting; the close still ran.
            let _ = tx.send(store.close());
        });
    if let Err(e) = spawned {
        return Err(AppliedError::Store {
            operation: "close",
            source: slipstream_snapshot::SnapshotError::io("spawn a close thread", "", e),
        });
    }
    match tokio::time::timeout(bound, rx).await {
        Err(_) => {
            tracing::warn!(?bound, "store close still running in the background");
            Err(AppliedError::CloseTimedOut { after: bound })
        }
        Ok(Err(_)) => Err(AppliedError::StorePanicked { operation: "close" }),
        Ok(Ok(result)) => result.map_err(|source| AppliedError::Store {
            operation: "close",
            source,
        }),
    }
}
