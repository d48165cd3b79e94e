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
//! Memory: the listing goes through an external sort (`spill`): past
//! `ScratchPolicy::relist_memory` bytes it is written as sorted runs to the
//! repair's own subdirectory of `ScratchPolicy::dir`, removed afterwards.
//! The fold's key-ordered scan is merge-joined with the merged runs on a
//! blocking thread, so memory holds the bounded buffer plus only the keys
//! to delete. Failing to write or read back a run fails the repair (R4).

use std::ops::ControlFlow;
use std::vec::Drain;

use futures::StreamExt;
use slipstream_kv::{
    ExpiryReason, KvError, KvUpdate, KvWatcher, Retention, WatchCursor, WatchEvent, WatchStart,
};
use slipstream_protocol::{
    MassDeleteVerdict, RepairMode, RepairPlan, cursorless_start_needs_repair,
    gap_holds_no_eviction, listing_is_truth, mass_delete_guard, plan_repair,
};

use crate::config::{MassDeletePolicy, OnExpiry};
use crate::engine::{Engine, Opened, is_transient};
use crate::error::{AppliedError, RepairCause};
use crate::slot::StoreSlot;
use crate::spill::KeySorter;
use crate::status::Phase;

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

/// What a repair answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RepairTrigger {
    /// The cursor expired (at the watch call, or the floor guard tripped).
    Expiry(ExpiryReason),
    /// Messages left unseen and the bucket is quiet now.
    Quiet,
    /// A start without a cursor (R6).
    CursorlessStart,
}

/// Whether a repair step that failed with `error` may pass when the whole
/// repair runs again: the server was unreachable or slow, or the listing
/// was overrun (its consumer, re-created after a lost connection, found its
/// frontier below the first sequence; a fresh listing starts over).
fn may_pass_later(error: &KvError) -> bool {
    is_transient(error) || matches!(error, KvError::CursorExpired { .. })
}

/// What the engine does after an expiry was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterExpiry {
    /// The fold was repaired: watch again (a state-sync).
    Rewatch,
    /// Shutdown came during the repair; nothing half-done was committed.
    Shutdown,
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

impl<W, S, P, A, O, T> Engine<W, S, P, A, O, T>
where
    W: KvWatcher,
    S: StoreSlot,
    P: FnMut(&KvUpdate) -> Option<T>,
    A: FnMut(Drain<'_, T>),
    O: FnMut(&WatchCursor),
{
    /// Run the repair `trigger` calls for. A step that failed only because
    /// the server was unreachable or slow, or because retention overran the
    /// listing ([`may_pass_later`]), runs the whole repair again after the
    /// watch's backoff, with retention read afresh: nothing half-done was
    /// committed (R4), so the retry starts where a restarted node would.
    /// Every other failure stops the watch.
    pub(crate) async fn repair(
        &mut self,
        trigger: RepairTrigger,
    ) -> Result<AfterExpiry, AppliedError> {
        if matches!(
            trigger,
            RepairTrigger::Expiry(ExpiryReason::FloorOverrun { .. })
        ) {
            self.reporter().guard_trip();
        }
        let shutdown = self.config.shutdown.clone();
        let mut attempt = 0u32;
        loop {
            let outcome = match &trigger {
                RepairTrigger::Expiry(reason) => self.on_expiry(reason.clone()).await,
                RepairTrigger::Quiet => self.repair_when_quiet().await,
                RepairTrigger::CursorlessStart => self.cursorless_start().await,
            };
            let (stage, error) = match outcome {
                Err(AppliedError::RepairFailed { stage, source }) if may_pass_later(&source) => {
                    (stage, source)
                }
                other => return other,
            };
            attempt = attempt.saturating_add(1);
            let pause = self.config.retry.backoff(attempt);
            tracing::warn!(
                watch = %self.config.name,
                stage,
                %error,
                ?pause,
                attempt,
                "repair failed; running it again",
            );
            self.reporter().repair("retried");
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(AfterExpiry::Shutdown),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Handle an expired cursor, whether the watch call refused it or a
    /// running watch was overrun. Everything delivered has been flushed by
    /// then. Every error leaves the fold as committed (R4).
    async fn on_expiry(&mut self, reason: ExpiryReason) -> Result<AfterExpiry, AppliedError> {
        let OnExpiry::Repair(mode) = self.on_expiry_policy() else {
            tracing::error!(%reason, cursor = ?self.applied, "cursor expired");
            return Err(AppliedError::CursorExpired {
                reason,
                cursor: self.committed().clone(),
            });
        };
        self.reporter().phase(Phase::Repairing);
        let retention = self.read_retention().await?;
        if matches!(
            reason,
            ExpiryReason::BelowFirstSequence { .. } | ExpiryReason::FloorOverrun { .. }
        ) {
            let age = self
                .applied
                .message_time()
                .map(|t| t.age_at(retention.observed_at));
            if gap_holds_no_eviction(age, retention.max_age, retention.age_is_only_eviction()) {
                // R8: nothing the fold lacks can have aged out, so the gap
                // holds only superseded revisions.
                self.note_eviction(&retention).await?;
                let from = retention.first_revision.saturating_sub(1);
                tracing::info!(
                    watch = %self.config.name,
                    %reason,
                    from,
                    "cursor expired by supersession only; resuming at the first retained sequence",
                );
                self.reporter().repair("supersession");
                // Whatever a relist's state-sync missed was superseded by
                // entries this resume delivers.
                self.applied = self.applied.clone().with_unchecked_floor(None);
                self.resume_at = Some(self.applied.advanced(from, None));
                return Ok(AfterExpiry::Rewatch);
            }
        }
        self.plan_and_repair(mode, RepairCause::Expired(reason), &retention)
            .await
    }

    /// K11 generalised: messages left a bucket that evicts nothing current
    /// before the fold saw them, and the bucket is now quiet. K8 plans the
    /// repair as for an expiry (a relist where the listing is the truth);
    /// run now, it cannot be overrun by the next hot write. A node
    /// configured to stop on expiry stops instead.
    async fn repair_when_quiet(&mut self) -> Result<AfterExpiry, AppliedError> {
        let OnExpiry::Repair(mode) = self.on_expiry_policy() else {
            let reason = self.left_unseen().await;
            return self.on_expiry(reason).await;
        };
        self.reporter().phase(Phase::Repairing);
        let retention = self.read_retention().await?;
        self.plan_and_repair(mode, RepairCause::LeftUnseen, &retention)
            .await
    }

    /// The expiry a node that does not repair reports for messages that
    /// left unseen: the frontier against the first sequence now.
    async fn left_unseen(&mut self) -> ExpiryReason {
        let frontier = self.applied.rank();
        let first_sequence = match self.retention_now().await {
            Ok(retention) => retention.first_revision,
            Err(_) => frontier.saturating_add(1),
        };
        ExpiryReason::FloorOverrun {
            frontier,
            first_sequence,
        }
    }

    /// The configured answer to an expiry, or the default for this store.
    pub(crate) fn on_expiry_policy(&self) -> OnExpiry {
        self.config
            .on_expiry
            .unwrap_or(OnExpiry::default_for(S::DURABLE))
    }

    /// R6: a start without a cursor asks K9 whether to repair before
    /// watching; `Rewatch` means "go on and watch".
    async fn cursorless_start(&mut self) -> Result<AfterExpiry, AppliedError> {
        let OnExpiry::Repair(mode) = self.on_expiry_policy() else {
            // Nothing to plan, but the floor still applies; without a
            // retention read the state-sync starts from nothing, as before.
            if let Ok(retention) = self.retention_now().await {
                self.floor_cursor(&retention);
                self.relist_next = true;
            }
            return Ok(AfterExpiry::Rewatch);
        };
        let retention = self.read_retention().await?;
        let truth = listing_is_truth(
            retention.evicts_current_values(),
            retention.first_revision,
            self.applied.seen_evicting(),
        );
        let has_data = self.fold_has_data().await?;
        if !cursorless_start_needs_repair(mode, has_data, Some(truth)) {
            // The empty fold's state-sync stands for everything below the
            // head, as a relist's does.
            self.floor_cursor(&retention);
            self.listed_through = Some(retention.last_revision);
            self.relist_next = true;
            return Ok(AfterExpiry::Rewatch);
        }
        self.reporter().phase(Phase::Repairing);
        self.plan_and_repair(mode, RepairCause::CursorlessStart, &retention)
            .await
    }

    /// Plan with K8 from the retention read for this repair and the
    /// cursor's memo (K7), then carry the plan out.
    async fn plan_and_repair(
        &mut self,
        mode: RepairMode,
        cause: RepairCause,
        retention: &Retention,
    ) -> Result<AfterExpiry, AppliedError> {
        // A failed commit's updates wait in memory: the repair compares the
        // bucket with the store, so they must be in it first.
        self.commit_all().await?;
        // K7 with the memo as it was before this read: the memo records
        // eviction seen earlier, retention covers what is visible now.
        let truth = listing_is_truth(
            retention.evicts_current_values(),
            retention.first_revision,
            self.applied.seen_evicting(),
        );
        self.note_eviction(retention).await?;
        let plan = plan_repair(mode, Some(truth));
        self.rewatch_after_repair = true;
        tracing::warn!(
            watch = %self.config.name,
            %cause,
            cursor = ?self.applied.revision(),
            ?plan,
            "repairing the fold",
        );
        let replaced = cause.replaces_bucket();
        match plan {
            RepairPlan::RelistOnly => {
                tracing::warn!(
                    watch = %self.config.name,
                    "repair mode None: re-listing without deletes; keys deleted in the gap may persist",
                );
                self.reporter().repair("relist_only");
                // Mode None accepts what a listing misses.
                self.applied = self.applied.clone().with_unchecked_floor(None);
                if replaced {
                    self.restart_cursor(retention).await?;
                } else {
                    self.floor_cursor(retention);
                }
                self.relist_next = true;
                Ok(AfterExpiry::Rewatch)
            }
            RepairPlan::RefuseRelist => {
                self.reporter().repair("refused");
                Err(AppliedError::RelistRefused {
                    reason: cause,
                    cursor: self.committed().clone(),
                })
            }
            RepairPlan::Restore => self.restore(cause, retention).await,
            RepairPlan::Relist => {
                let after = self.relist(cause).await?;
                if after == AfterExpiry::Rewatch {
                    if replaced {
                        self.restart_cursor(retention).await?;
                    } else {
                        self.floor_cursor(retention);
                    }
                    self.listed_through = Some(retention.last_revision);
                }
                Ok(after)
            }
        }
    }

    /// A relist (or a fresh node's state-sync) stands for everything below
    /// the head it was planned on (`retention` is read before its listing
    /// opens): what left the log
    /// before that is what the listing no longer shows. Without this, the
    /// listing of an emptied stream delivers nothing, the cursor stays
    /// behind the head, and K1 fails again at the state-sync's `CaughtUp`.
    /// Every later delivery is at or past that head, so none is taken for
    /// a replay (K5).
    fn floor_cursor(&mut self, retention: &Retention) {
        let floor = retention.first_revision.saturating_sub(1);
        if floor > 0 && self.applied.revision().is_none_or(|r| r < floor) {
            // A position in the bucket as it is now, whatever incarnation a
            // revisionless cursor last named.
            self.applied = self
                .applied
                .advanced(floor, None)
                .with_identity(retention.identity.clone());
        }
    }

    /// R7: a recreated bucket's revisions restart, so the old cursor means
    /// nothing there. Start over from no position in the new incarnation,
    /// keeping the eviction memo (R5 never forgets).
    async fn restart_cursor(&mut self, retention: &Retention) -> Result<(), AppliedError> {
        // A relist's floor is already in the new incarnation's sequences.
        let mut fresh = WatchCursor::none()
            .with_identity(retention.identity.clone())
            .with_unchecked_floor(self.applied.unchecked_floor());
        if self.applied.seen_evicting() {
            fresh = fresh.with_seen_evicting();
        }
        self.applied = fresh;
        self.commit_all().await
    }

    /// Whether the fold holds any key in scope.
    pub(crate) async fn fold_has_data(&mut self) -> Result<bool, AppliedError> {
        if !S::DURABLE {
            return Ok(false);
        }
        let store = self.take_store("repair scan").await?;
        let scope = self.config.scope.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut any = false;
            let scanned = store.for_each_entry(&scope, &mut |_, _| {
                any = true;
                ControlFlow::Break(())
            });
            (store, scanned.map(|()| any))
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

    /// Retention as the server reports it now; failing to read it fails
    /// the repair.
    async fn read_retention(&mut self) -> Result<Retention, AppliedError> {
        self.retention_now()
            .await
            .map_err(|source| AppliedError::RepairFailed {
                stage: "reading retention",
                source,
            })
    }

    /// R2: delete every in-scope fold key the bucket no longer lists, then
    /// arm a state-sync re-watch.
    async fn relist(&mut self, reason: RepairCause) -> Result<AfterExpiry, AppliedError> {
        if !S::DURABLE {
            return Err(AppliedError::RepairNeedsStore { reason });
        }
        let Some((listed, floor)) = self.list_live_keys(reason.replaces_bucket()).await? else {
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
                cursor: self.committed().clone(),
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
        // The listing covers whatever left the log unseen before it.
        self.applied = self
            .applied
            .clone()
            .with_unchecked_floor(floor)
            .with_repair_due(false);
        Ok(AfterExpiry::Rewatch)
    }

    /// The keys the bucket lists live in scope now, from a state-sync watch
    /// read up to its `CaughtUp`, sorted externally in the repair's scratch
    /// directory; `None` when shutdown came first.
    ///
    /// With them comes the floor the state-sync that follows must still
    /// find: the lowest listed put the fold may lack (above the fold's
    /// cursor, or any when the bucket was `replaced`) and the first
    /// sequence after the listing. The fold keeps every listed key, so if
    /// the head passes such a put, or a later delete marker, before the
    /// state-sync delivers it, the fold stays stale without that check.
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
        // Above an unchecked floor the fold may lack retained entries.
        let held = if replaced {
            None
        } else {
            self.trusted_cursor().revision()
        };
        let mut lowest_needed: Option<u64> = None;
        let mut highest: Option<u64> = None;
        loop {
            let update = match self.next_listed(&mut stream).await? {
                Listed::Update(update) => update,
                Listed::CaughtUp => {
                    let after = highest.map(|h| h.saturating_add(1));
                    let floor = lowest_needed.into_iter().chain(after).min();
                    return Ok(Some((listed, floor)));
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
                if live && held.is_none_or(|c| r > c) {
                    lowest_needed = Some(lowest_needed.map_or(r, |l| l.min(r)));
                }
            }
            push_listed(&mut listed, key, revision, live).await?;
        }
    }

    /// Open a state-sync watch for a repair's listing; `None` when shutdown
    /// came first. Every failure fails the repair (R4).
    pub(crate) async fn open_listing(&mut self) -> Result<Option<W::WatchStream>, AppliedError> {
        let shutdown = self.config.shutdown.clone();
        match self.open_watch(&shutdown, WatchStart::Relist).await {
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

    /// Merge-join the fold's in-scope keys (key order) with the sorted
    /// listing on a blocking thread: the in-scope fold size and the keys
    /// that vanished from the bucket. Only those keys are held in memory.
    pub(crate) async fn vanished_keys(
        &mut self,
        listed: KeySorter,
    ) -> Result<(u64, Vec<String>), AppliedError> {
        let store = self.take_store("repair scan").await?;
        let scope = self.config.scope.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let scan = |store: &S| {
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
            };
            let result = scan(&store);
            (store, result)
        })
        .await;
        let Ok((store, scanned)) = joined else {
            return Err(AppliedError::StorePanicked {
                operation: "repair scan",
            });
        };
        self.store = Some(store);
        scanned
    }
}
