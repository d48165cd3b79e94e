//! The single place a cursor expiry is handled (R1), and the relist repair
//! (R2, R4, R5, R9).
//!
//! Both entry paths (the watch call refusing the cursor, the floor guard
//! tripping mid-watch) arrive here after everything delivered was flushed.
//! The plan comes from K8 with the retention read now and the cursor's memo
//! (K7). A relist first lists the bucket's live keys with a state-sync
//! watch read up to its `CaughtUp`, runs a synthetic delete through
//! `parse`/`apply`/store for every in-scope fold key the listing lacks, and
//! only then lets the engine open a fresh state-sync watch whose deliveries
//! are folded as normal updates: every re-list put lands after every
//! delete.
//!
//! Memory: this relist holds the listed keys in memory (one `String` per
//! live key in scope) plus the keys to delete; the external sort that
//! bounds it is not built yet.

use std::collections::BTreeSet;
use std::vec::Drain;

use futures::StreamExt;
use slipstream_kv::{
    ExpiryReason, KvError, KvUpdate, KvWatcher, Retention, WatchCursor, WatchEvent, WatchStart,
};
use slipstream_protocol::{
    MassDeleteVerdict, RepairPlan, listing_is_truth, mass_delete_guard, plan_repair,
};

use crate::config::{MassDeletePolicy, OnExpiry};
use crate::engine::{Engine, Opened};
use crate::error::AppliedError;
use crate::slot::StoreSlot;
use crate::status::Phase;

/// What the engine does after an expiry was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterExpiry {
    /// The fold was repaired: watch again (a state-sync).
    Rewatch,
    /// Shutdown came during the repair; nothing half-done was committed.
    Shutdown,
}

impl<W, S, P, A, O, T> Engine<W, S, P, A, O, T>
where
    W: KvWatcher,
    S: StoreSlot,
    P: FnMut(&KvUpdate) -> Option<T>,
    A: FnMut(Drain<'_, T>),
    O: FnMut(&WatchCursor),
{
    /// Handle an expired cursor, whether the watch call refused it or a
    /// running watch was overrun. Everything delivered has been flushed by
    /// then. Every error leaves the fold as committed (R4).
    pub(crate) async fn on_expiry(
        &mut self,
        reason: ExpiryReason,
    ) -> Result<AfterExpiry, AppliedError> {
        if matches!(reason, ExpiryReason::FloorOverrun { .. }) {
            self.reporter().guard_trip();
        }
        let OnExpiry::Repair(mode) = self.config.on_expiry else {
            tracing::error!(%reason, cursor = ?self.applied, "cursor expired");
            return Err(AppliedError::CursorExpired {
                reason,
                cursor: self.applied.clone(),
            });
        };
        if matches!(
            reason,
            ExpiryReason::BeyondLastSequence { .. } | ExpiryReason::IdentityChanged { .. }
        ) {
            // A new incarnation's revisions restart below the cursor: a
            // state-sync would drop them all as replays.
            self.reporter().repair("bucket_replaced");
            return Err(AppliedError::BucketReplaced {
                reason,
                cursor: self.applied.clone(),
            });
        }
        self.reporter().phase(Phase::Repairing);
        let retention = self.read_retention().await?;
        // K7 with the memo as it was before this read: the memo records
        // eviction seen earlier, retention covers what is visible now.
        let truth = listing_is_truth(
            retention.evicts_current_values,
            retention.first_revision,
            self.applied.seen_evicting(),
        );
        self.note_eviction(&retention).await?;
        let plan = plan_repair(mode, Some(truth));
        tracing::warn!(
            watch = %self.config.name,
            %reason,
            cursor = ?self.applied.revision(),
            ?plan,
            "cursor expired; repairing",
        );
        match plan {
            RepairPlan::RelistOnly => {
                tracing::warn!(
                    watch = %self.config.name,
                    "repair mode None: re-listing without deletes; keys deleted in the gap may persist",
                );
                self.reporter().repair("relist_only");
                self.relist_next = true;
                Ok(AfterExpiry::Rewatch)
            }
            RepairPlan::RefuseRelist => {
                self.reporter().repair("refused");
                Err(AppliedError::RelistRefused {
                    reason,
                    cursor: self.applied.clone(),
                })
            }
            RepairPlan::Restore => {
                self.reporter().repair("restore_unavailable");
                Err(AppliedError::RestoreUnavailable {
                    reason,
                    cursor: self.applied.clone(),
                })
            }
            RepairPlan::Relist => self.relist(reason).await,
        }
    }

    /// Retention as the server reports it now; failing to read it fails
    /// the repair.
    async fn read_retention(&mut self) -> Result<Retention, AppliedError> {
        let bound = self.config.timeouts.retention;
        match tokio::time::timeout(bound, self.watcher.retention()).await {
            Ok(Ok(retention)) => Ok(retention),
            Ok(Err(source)) => Err(AppliedError::RepairFailed {
                stage: "reading retention",
                source,
            }),
            Err(_) => Err(AppliedError::RepairFailed {
                stage: "reading retention",
                source: KvError::Timeout {
                    operation: "retention".into(),
                    after: bound,
                },
            }),
        }
    }

    /// R2: delete every in-scope fold key the bucket no longer lists, then
    /// arm a state-sync re-watch.
    async fn relist(&mut self, reason: ExpiryReason) -> Result<AfterExpiry, AppliedError> {
        if !S::DURABLE {
            return Err(AppliedError::RepairNeedsStore { reason });
        }
        let Some(listed) = self.list_live_keys().await? else {
            return Ok(AfterExpiry::Shutdown);
        };
        let (fold_len, vanished) = self.vanished_keys(listed).await?;
        let deletions = u64::try_from(vanished.len()).unwrap_or(u64::MAX);
        if let MassDeletePolicy::Hold(limit) = self.config.mass_delete
            && mass_delete_guard(fold_len, deletions, limit) == MassDeleteVerdict::Hold
        {
            self.reporter().repair("held");
            tracing::error!(
                watch = %self.config.name,
                deletions,
                fold_len,
                "relist repair held by the mass-delete guard",
            );
            return Err(AppliedError::MassDeleteHeld {
                deletions,
                fold_len,
                cursor: self.applied.clone(),
            });
        }
        tracing::info!(watch = %self.config.name, deletions, fold_len, "relist: deleting vanished keys");
        for key in vanished {
            // Unknown version: the cursor stays where it is.
            if self.receive(KvUpdate::synthetic_delete(key)) {
                self.flush().await?;
            }
        }
        self.flush().await?;
        self.reporter().repair("relist");
        self.relist_next = true;
        Ok(AfterExpiry::Rewatch)
    }

    /// The keys the bucket lists live in scope now, from a state-sync watch
    /// read up to its `CaughtUp`; `None` when shutdown came first.
    async fn list_live_keys(&mut self) -> Result<Option<BTreeSet<String>>, AppliedError> {
        let shutdown = self.config.shutdown.clone();
        let failed = |source| AppliedError::RepairFailed {
            stage: "listing",
            source,
        };
        let mut stream = match self.open_watch(&shutdown, WatchStart::Relist).await {
            Ok(Opened::Stream(s)) => s,
            Ok(Opened::Shutdown) => return Ok(None),
            Ok(Opened::Expired(reason)) => return Err(failed(KvError::CursorExpired { reason })),
            Ok(Opened::Failed(e)) | Err(AppliedError::Kv(e)) => return Err(failed(e)),
            Err(other) => return Err(other),
        };
        let bound = self.config.timeouts.watch_setup;
        let mut listed = BTreeSet::new();
        loop {
            let next = tokio::time::timeout(bound, stream.next());
            let item = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(None),
                r = next => r,
            };
            match item {
                Err(_) => {
                    return Err(failed(KvError::Timeout {
                        operation: "listing".into(),
                        after: bound,
                    }));
                }
                Ok(Some(Ok(WatchEvent::CaughtUp))) => return Ok(Some(listed)),
                // Any put, even an empty value, is an entry the fold keeps.
                Ok(Some(Ok(WatchEvent::Update(KvUpdate::Put(entry))))) => {
                    listed.insert(entry.key);
                }
                Ok(Some(Ok(WatchEvent::Update(marker)))) => {
                    listed.remove(marker.key());
                }
                Ok(Some(Err(e))) => return Err(failed(e)),
                Ok(None) => {
                    return Err(failed(KvError::Watch(
                        "the listing ended before it caught up".into(),
                    )));
                }
            }
        }
    }

    /// Scan the fold's in-scope keys in key order against `listed`: the
    /// in-scope fold size and the keys that vanished from the bucket.
    async fn vanished_keys(
        &mut self,
        listed: BTreeSet<String>,
    ) -> Result<(u64, Vec<String>), AppliedError> {
        let store = self.store.take().ok_or(AppliedError::StorePanicked {
            operation: "repair scan",
        })?;
        let scope = self.config.scope.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut fold_len = 0u64;
            let mut vanished = Vec::new();
            let scanned = store.for_each_key(&scope, &mut |key| {
                fold_len += 1;
                if !listed.contains(key) {
                    vanished.push(key.to_owned());
                }
            });
            (store, scanned.map(|()| (fold_len, vanished)))
        })
        .await;
        let Ok((store, scanned)) = joined else {
            return Err(AppliedError::StorePanicked {
                operation: "repair scan",
            });
        };
        self.store = Some(store);
        scanned.map_err(|source| AppliedError::Store {
            operation: "repair scan",
            source,
        })
    }
}
