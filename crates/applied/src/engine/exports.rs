//! Export requests served between flushes (E8, A4): the store is held only
//! to capture the last commit; the artifact is written, verified and hashed
//! on a blocking task while commits go on. One export at a time.

use std::vec::Drain;

use slipstream_kv::{KvUpdate, WatchCursor, WatchScope};
use tokio::task::JoinHandle;

use super::fold::Fold;
use crate::error::AppliedError;
use crate::export::{ExportRequest, ExportRequests};
use crate::slot::StoreSlot;

/// What [`Exports::next`] saw.
pub(crate) enum ExportEvent {
    /// A request, or `None`: the channel closed.
    Requested(Option<ExportRequest>),
    /// The export being written finished.
    Written,
}

pub(crate) struct Exports {
    /// `None` without an export channel, or once it closed.
    requests: Option<ExportRequests>,
    /// The export whose files are being written.
    in_flight: Option<JoinHandle<()>>,
}

impl Exports {
    pub(crate) const fn new(requests: Option<ExportRequests>) -> Self {
        Self {
            requests,
            in_flight: None,
        }
    }

    /// What the loop should take next: the export being written finishing
    /// (its requester has its answer then), else the next request; pending
    /// forever while there is neither.
    pub(crate) async fn next(&mut self) -> ExportEvent {
        if let Some(task) = self.in_flight.as_mut() {
            // A panicked export task has dropped its reply: the requester
            // sees `ExportDropped`.
            let _ = task.await;
            self.in_flight = None;
            return ExportEvent::Written;
        }
        match self.requests.as_mut() {
            Some(requests) => ExportEvent::Requested(requests.rx.recv().await),
            None => std::future::pending().await,
        }
    }

    /// The requester side closed its channel.
    pub(crate) fn closed(&mut self) {
        self.requests = None;
    }

    /// Wait for the export being written, if any.
    pub(crate) async fn settle(&mut self, name: &str) {
        if let Some(task) = self.in_flight.take()
            && task.await.is_err()
        {
            tracing::warn!(watch = %name, "an export task panicked");
        }
    }

    /// Serve one request from `fold` (E8).
    pub(crate) async fn serve<S, P, A, O, T>(
        &mut self,
        request: ExportRequest,
        fold: &mut Fold<S, P, A, O, T>,
        scope: &WatchScope,
        name: &str,
    ) -> Result<(), AppliedError>
    where
        S: StoreSlot,
        P: FnMut(&KvUpdate) -> Option<T>,
        A: FnMut(Drain<'_, T>),
        O: FnMut(&WatchCursor),
    {
        let ExportRequest { dest, reply } = request;
        if !S::DURABLE {
            // The requester may have gone; nothing to do then.
            let _ = reply.send(Err(AppliedError::NoStore));
            return Ok(());
        }
        fold.flush().await?;
        let scope = scope.clone();
        let begun = fold
            .with_store("export", move |store| store.begin_export(&dest, &scope))
            .await?;
        let pending = match begun {
            Some(Ok(pending)) => pending,
            Some(Err(e)) => {
                tracing::warn!(watch = %name, error = %e, "export failed; the watch goes on");
                let _ = reply.send(Err(AppliedError::Export(e)));
                return Ok(());
            }
            None => {
                let _ = reply.send(Err(AppliedError::NoStore));
                return Ok(());
            }
        };
        let name = name.to_owned();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let answer = pending.finish().map_err(|e| {
                tracing::warn!(watch = %name, error = %e, "export failed; the watch goes on");
                AppliedError::Export(e)
            });
            let _ = reply.send(answer);
        }));
        Ok(())
    }
}
