//! The relist repair (R2, R4, R5, R9): list the bucket's live keys with a
//! state-sync watch read up to its `CaughtUp`, run a synthetic delete
//! through `parse`/`apply`/store for every in-scope fold key the listing
//! lacks, and only then let the loop open a fresh state-sync whose
//! deliveries are folded as normal updates: every re-listed put lands after
//! every delete.
//!
//! Memory: the listing goes through an external sort (`spill`): past
//! `ScratchPolicy::relist_memory` bytes it is written as sorted runs to the
//! repair's own subdirectory of `ScratchPolicy::dir`, removed afterwards.
//! The fold's key-ordered scan is merge-joined with the merged runs on a
//! blocking thread, so memory holds the bounded buffer plus only the keys
//! to delete. Failing to write or read back a run fails the repair (R4).

use std::vec::Drain;

use slipstream_kv::{KvUpdate, KvWatcher, WatchCursor};
use slipstream_protocol::{listed_put_needed, relist_floor};

use super::listing::{Listed, push_listed};
use super::{AfterExpiry, Repair};
use crate::error::{AppliedError, RepairCause};
use crate::slot::StoreSlot;
use crate::spill::KeySorter;

impl<W, S, P, A, O, T> Repair<'_, W, S, P, A, O, T>
where
    W: KvWatcher,
    S: StoreSlot,
    P: FnMut(&KvUpdate) -> Option<T>,
    A: FnMut(Drain<'_, T>),
    O: FnMut(&WatchCursor),
{
    /// R2: delete every in-scope fold key the bucket no longer lists, then
    /// arm a state-sync re-watch.
    pub(super) async fn relist(
        &mut self,
        reason: RepairCause,
    ) -> Result<AfterExpiry, AppliedError> {
        if !S::DURABLE {
            return Err(AppliedError::RepairNeedsStore { reason });
        }
        let Some((listed, floor)) = self.list_live_keys(reason.replaces_bucket()).await? else {
            return Ok(AfterExpiry::Shutdown);
        };
        let (fold_len, vanished) = self.vanished_keys(listed).await?;
        let deletions = u64::try_from(vanished.len()).unwrap_or(u64::MAX);
        self.guard_mass_delete("relist", fold_len, deletions)?;
        tracing::info!(watch = %self.config.name, deletions, fold_len, "relist: deleting vanished keys");
        for key in vanished {
            // Unknown version: the cursor stays where it is.
            if self.fold.intake(KvUpdate::synthetic_delete(key)) {
                self.fold.flush().await?;
            }
        }
        self.fold.flush().await?;
        self.fold.reporter.repair("relist");
        self.fold.cursor.relist_next();
        // The listing covers whatever left the log unseen before it.
        self.fold
            .cursor
            .update(|c| c.with_unchecked_floor(floor).with_repair_due(false));
        Ok(AfterExpiry::Rewatch)
    }

    /// The keys the bucket lists live in scope now, from a state-sync watch
    /// read up to its `CaughtUp`, sorted externally in the repair's scratch
    /// directory; `None` when shutdown came first.
    ///
    /// With them comes the floor the state-sync that follows must still
    /// find (K15): the lowest listed put the fold may lack (above the
    /// trusted cursor, or any when the bucket was `replaced`) or else the
    /// first sequence after the listing. The fold keeps every listed key,
    /// so if the head passes such a put, or a later delete marker, before
    /// the state-sync delivers it, the fold stays stale without that check.
    async fn list_live_keys(
        &mut self,
        replaced: bool,
    ) -> Result<Option<(KeySorter, Option<u64>)>, AppliedError> {
        // Before the watch opens: an unusable scratch directory fails the
        // repair whatever the listing's size.
        let mut listed = KeySorter::new(&self.config.scratch)?;
        let Some(mut stream) = self.open_listing().await? else {
            return Ok(None);
        };
        let trusted = if replaced {
            None
        } else {
            self.fold.cursor.trusted()
        };
        let mut lowest_needed: Option<u64> = None;
        let mut highest: Option<u64> = None;
        loop {
            let update = match self.next_listed(&mut stream).await? {
                Listed::Update(update) => update,
                Listed::CaughtUp => {
                    return Ok(Some((listed, relist_floor(lowest_needed, highest))));
                }
                Listed::Shutdown => return Ok(None),
            };
            // Writes during the listing can deliver a key twice; the sorter
            // keeps the highest revision. Any put, even an empty value, is
            // an entry the fold keeps.
            let revision = update.revision();
            let (key, live) = match update {
                KvUpdate::Put(entry) => (entry.key, true),
                KvUpdate::Delete(marker) | KvUpdate::Purge(marker) => (marker.key, false),
            };
            if let Some(r) = revision {
                highest = highest.max(Some(r));
                if live && listed_put_needed(r, trusted) {
                    lowest_needed = Some(lowest_needed.map_or(r, |l| l.min(r)));
                }
            }
            push_listed(&mut listed, key, revision, live).await?;
        }
    }

    /// Merge-join the fold's in-scope keys (key order) with the sorted
    /// listing on a blocking thread: the in-scope fold size and the keys
    /// that vanished from the bucket. Only those keys are held in memory.
    pub(super) async fn vanished_keys(
        &mut self,
        listed: KeySorter,
    ) -> Result<(u64, Vec<String>), AppliedError> {
        let scope = self.config.scope.clone();
        self.fold
            .with_store("repair scan", move |store| {
                let mut listing = listed.finish()?;
                let mut fold_len = 0u64;
                let mut vanished = Vec::new();
                let mut failed = None;
                let scanned = store.for_each_key(&scope, &mut |key| {
                    fold_len += 1;
                    if failed.is_some() {
                        return;
                    }
                    match listing.contains(key) {
                        Ok(true) => {}
                        Ok(false) => vanished.push(key.to_owned()),
                        Err(e) => failed = Some(e),
                    }
                });
                if let Some(e) = failed {
                    return Err(e);
                }
                scanned.map_err(|source| AppliedError::Store {
                    operation: "repair scan",
                    source,
                })?;
                // Read the rest too: a damaged run fails the repair even
                // past the fold's last key.
                for key in listing {
                    key?;
                }
                Ok((fold_len, vanished))
            })
            .await?
    }
}
