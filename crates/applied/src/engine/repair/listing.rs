//! A repair's listing: a state-sync watch read up to its `CaughtUp`, each
//! wait bounded; its keys go through an external sort (`spill`).

use std::vec::Drain;

use futures::StreamExt;
use slipstream_kv::{KvError, KvUpdate, KvWatcher, WatchCursor, WatchEvent, WatchStart};

use super::Repair;
use crate::engine::open::{Opened, open_watch};
use crate::error::AppliedError;
use crate::slot::StoreSlot;
use crate::spill::KeySorter;

/// One item of a repair's listing.
pub(crate) enum Listed {
    Update(KvUpdate),
    CaughtUp,
    Shutdown,
}

fn listing_failed(source: KvError) -> AppliedError {
    AppliedError::RepairFailed {
        stage: "listing",
        source,
    }
}

/// Take a listed key into the sorter, writing out a full run off the
/// runtime.
pub(crate) async fn push_listed(
    listed: &mut KeySorter,
    key: String,
    revision: Option<u64>,
    live: bool,
) -> Result<(), AppliedError> {
    if let Some(run) = listed.push(key, revision, live) {
        let path = run.path().to_owned();
        let written = tokio::task::spawn_blocking(move || run.write()).await;
        written.map_err(|_| AppliedError::RepairScratchIo {
            operation: "writing a run",
            path,
            source: std::io::Error::other("the writing task panicked"),
        })??;
    }
    Ok(())
}

impl<W, S, P, A, O, T> Repair<'_, W, S, P, A, O, T>
where
    W: KvWatcher,
    S: StoreSlot,
    P: FnMut(&KvUpdate) -> Option<T>,
    A: FnMut(Drain<'_, T>),
    O: FnMut(&WatchCursor),
{
    /// Open a state-sync watch for a repair's listing; `None` when shutdown
    /// came first. Every failure fails the repair (R4).
    pub(crate) async fn open_listing(&mut self) -> Result<Option<W::WatchStream>, AppliedError> {
        let shutdown = self.config.shutdown.clone();
        match open_watch(self.watcher, self.config, &shutdown, WatchStart::Relist).await {
            Ok(Opened::Stream(s)) => Ok(Some(s)),
            Ok(Opened::Shutdown) => Ok(None),
            Ok(Opened::Expired(reason)) => Err(listing_failed(KvError::CursorExpired { reason })),
            Ok(Opened::Failed(e)) | Err(AppliedError::Kv(e)) => Err(listing_failed(e)),
            Err(other) => Err(other),
        }
    }

    /// The listing's next item, each wait bounded by the watch-setup
    /// timeout; a listing that ends or fails before it caught up fails the
    /// repair.
    pub(crate) async fn next_listed(
        &mut self,
        stream: &mut W::WatchStream,
    ) -> Result<Listed, AppliedError> {
        let bound = self.config.timeouts.watch_setup;
        let next = tokio::time::timeout(bound, stream.next());
        let item = tokio::select! {
            biased;
            () = self.config.shutdown.cancelled() => return Ok(Listed::Shutdown),
            r = next => r,
        };
        match item {
            Err(_) => Err(listing_failed(KvError::Timeout {
                operation: "listing".into(),
                after: bound,
            })),
            Ok(Some(Ok(WatchEvent::CaughtUp))) => Ok(Listed::CaughtUp),
            Ok(Some(Ok(WatchEvent::Update(update)))) => Ok(Listed::Update(update)),
            Ok(Some(Err(e))) => Err(listing_failed(e)),
            Ok(None) => Err(listing_failed(KvError::Watch(
                "the listing ended before it caught up".into(),
            ))),
        }
    }
}
