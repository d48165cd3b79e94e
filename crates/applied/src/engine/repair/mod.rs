//! The single place a cursor expiry is handled (R1), and the repairs:
//! relist (R2, R4, R5, R9) in `relist`, restore (R3, R9) in `restore`,
//! expiries a fold lacks in `expiries`.
//!
//! Both entry paths (the watch call refusing the cursor, the floor guard
//! tripping mid-watch) arrive here after everything delivered was flushed.
//! The plan comes from K8 with the retention read now and the cursor's memo
//! (K7). A repair works on a [`Repair`]: the fold, the watcher and what
//! retention reads saw, never the loop; it leaves the next watch's start in
//! the cursor state (K16) for the loop to open.

mod expiries;
mod listing;
mod relist;
mod restore;

use std::vec::Drain;

use slipstream_kv::{ExpiryReason, KvError, KvUpdate, KvWatcher, Retention, WatchCursor};
use slipstream_protocol::{
    MassDeleteVerdict, RepairMode, RepairPlan, cursorless_start_needs_repair,
    gap_holds_no_eviction, listing_is_truth, mass_delete_guard, plan_repair,
};

use super::fold::Fold;
use super::open::is_transient;
use super::retention::{self, Seen};
use crate::config::{MassDeletePolicy, OnExpiry, Settings};
use crate::error::{AppliedError, RepairCause};
use crate::slot::StoreSlot;
use crate::status::Phase;

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

/// What the engine does after an expiry was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterExpiry {
    /// The fold was repaired: watch again (a state-sync).
    Rewatch,
    /// Shutdown came during the repair; nothing half-done was committed.
    Shutdown,
}

/// What a repair works on, borrowed from the engine.
pub(crate) struct Repair<'a, W, S, P, A, O, T> {
    pub(crate) watcher: &'a W,
    pub(crate) config: &'a Settings,
    pub(crate) fold: &'a mut Fold<S, P, A, O, T>,
    pub(crate) seen: &'a mut Seen,
}

/// Whether a repair step that failed with `error` may pass when the whole
/// repair runs again: the server was unreachable or slow, or the listing
/// was overrun (its consumer, re-created after a lost connection, found its
/// frontier below the first sequence; a fresh listing starts over).
fn may_pass_later(error: &KvError) -> bool {
    is_transient(error) || matches!(error, KvError::CursorExpired { .. })
}

impl<W, S, P, A, O, T> Repair<'_, W, S, P, A, O, T>
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
    pub(crate) async fn run(
        &mut self,
        trigger: RepairTrigger,
    ) -> Result<AfterExpiry, AppliedError> {
        if matches!(
            trigger,
            RepairTrigger::Expiry(ExpiryReason::FloorOverrun { .. })
        ) {
            self.fold.reporter.guard_trip();
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
            self.fold.reporter.repair("retried");
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
        let OnExpiry::Repair(mode) = self.config.on_expiry_for(S::DURABLE) else {
            tracing::error!(%reason, cursor = ?self.fold.applied(), "cursor expired");
            return Err(AppliedError::CursorExpired {
                reason,
                cursor: self.fold.committed().clone(),
            });
        };
        self.fold.reporter.phase(Phase::Repairing);
        let retention = self.read_retention().await?;
        if matches!(
            reason,
            ExpiryReason::BelowFirstSequence { .. } | ExpiryReason::FloorOverrun { .. }
        ) {
            let age = self
                .fold
                .applied()
                .message_time()
                .map(|t| t.age_at(retention.observed_at));
            if gap_holds_no_eviction(age, retention.max_age, retention.age_is_only_eviction()) {
                // R8: nothing the fold lacks can have aged out, so the gap
                // holds only superseded revisions.
                self.fold.note_eviction(&retention).await?;
                let from = retention.first_revision.saturating_sub(1);
                tracing::info!(
                    watch = %self.config.name,
                    %reason,
                    from,
                    "cursor expired by supersession only; resuming at the first retained sequence",
                );
                self.fold.reporter.repair("supersession");
                // Whatever a relist's state-sync missed was superseded by
                // entries this resume delivers.
                self.fold.cursor.update(|c| c.with_unchecked_floor(None));
                self.fold.cursor.resume_after(from);
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
        let OnExpiry::Repair(mode) = self.config.on_expiry_for(S::DURABLE) else {
            let reason = self.left_unseen().await;
            return self.on_expiry(reason).await;
        };
        self.fold.reporter.phase(Phase::Repairing);
        let retention = self.read_retention().await?;
        self.plan_and_repair(mode, RepairCause::LeftUnseen, &retention)
            .await
    }

    /// The expiry a node that does not repair reports for messages that
    /// left unseen: the frontier against the first sequence now.
    async fn left_unseen(&mut self) -> ExpiryReason {
        let frontier = self.fold.applied().rank();
        let first_sequence =
            match retention::read(self.watcher, self.config.timeouts.retention, self.seen).await {
                Ok(retention) => retention.first_revision,
                Err(_) => frontier.saturating_add(1),
            };
        ExpiryReason::FloorOverrun {
            frontier,
            first_sequence,
        }
    }

    /// R6: a start without a cursor asks K9 whether to repair before
    /// watching; `Rewatch` means "go on and watch".
    async fn cursorless_start(&mut self) -> Result<AfterExpiry, AppliedError> {
        let OnExpiry::Repair(mode) = self.config.on_expiry_for(S::DURABLE) else {
            // Nothing to plan, but the floor still applies; without a
            // retention read the state-sync starts from nothing, as before.
            if let Ok(retention) =
                retention::read(self.watcher, self.config.timeouts.retention, self.seen).await
            {
                self.floor_cursor(&retention);
                self.fold.cursor.relist_next();
            }
            return Ok(AfterExpiry::Rewatch);
        };
        let retention = self.read_retention().await?;
        let truth = listing_is_truth(
            retention.evicts_current_values(),
            retention.first_revision,
            self.fold.applied().seen_evicting(),
        );
        let has_data = self.fold.has_data(&self.config.scope).await?;
        if !cursorless_start_needs_repair(mode, has_data, Some(truth)) {
            // The empty fold's state-sync stands for everything below the
            // head, as a relist's does.
            self.floor_cursor(&retention);
            self.fold.cursor.listed(retention.last_revision);
            self.fold.cursor.relist_next();
            return Ok(AfterExpiry::Rewatch);
        }
        self.fold.reporter.phase(Phase::Repairing);
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
        self.fold.commit_all().await?;
        // K7 with the memo as it was before this read: the memo records
        // eviction seen earlier, retention covers what is visible now.
        let truth = listing_is_truth(
            retention.evicts_current_values(),
            retention.first_revision,
            self.fold.applied().seen_evicting(),
        );
        self.fold.note_eviction(retention).await?;
        let plan = plan_repair(mode, Some(truth));
        self.fold.cursor.arm_by_repair();
        tracing::warn!(
            watch = %self.config.name,
            %cause,
            cursor = ?self.fold.applied().revision(),
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
                self.fold.reporter.repair("relist_only");
                // Mode None accepts what a listing misses.
                self.fold.cursor.update(|c| c.with_unchecked_floor(None));
                if replaced {
                    self.restart_cursor(retention).await?;
                } else {
                    self.floor_cursor(retention);
                }
                self.fold.cursor.relist_next();
                Ok(AfterExpiry::Rewatch)
            }
            RepairPlan::RefuseRelist => {
                self.fold.reporter.repair("refused");
                Err(AppliedError::RelistRefused {
                    reason: cause,
                    cursor: self.fold.committed().clone(),
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
                    self.fold.cursor.listed(retention.last_revision);
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
        if floor > 0 && self.fold.applied().revision().is_none_or(|r| r < floor) {
            // A position in the bucket as it is now, whatever incarnation a
            // revisionless cursor last named.
            let identity = retention.identity.clone();
            self.fold
                .cursor
                .update(|c| c.advanced(floor, None).with_identity(identity));
        }
    }

    /// R7: a recreated bucket's revisions restart, so the old cursor means
    /// nothing there. Start over from no position in the new incarnation,
    /// keeping the eviction memo (R5 never forgets).
    async fn restart_cursor(&mut self, retention: &Retention) -> Result<(), AppliedError> {
        // A relist's floor is already in the new incarnation's sequences.
        let mut fresh = WatchCursor::none()
            .with_identity(retention.identity.clone())
            .with_unchecked_floor(self.fold.applied().unchecked_floor());
        if self.fold.applied().seen_evicting() {
            fresh = fresh.with_seen_evicting();
        }
        self.fold.cursor.set(fresh);
        self.fold.commit_all().await
    }

    /// Retention as the server reports it now; failing to read it fails
    /// the repair.
    async fn read_retention(&mut self) -> Result<Retention, AppliedError> {
        retention::read(self.watcher, self.config.timeouts.retention, self.seen)
            .await
            .map_err(|source| AppliedError::RepairFailed {
                stage: "reading retention",
                source,
            })
    }

    /// K14 (R9): a repair that would delete too much of the in-scope fold
    /// is held for an explicit override, with nothing changed.
    fn guard_mass_delete(
        &self,
        kind: &'static str,
        fold_len: u64,
        deletions: u64,
    ) -> Result<(), AppliedError> {
        let MassDeletePolicy::Hold(limit) = self.config.mass_delete else {
            return Ok(());
        };
        if mass_delete_guard(fold_len, deletions, limit) == MassDeleteVerdict::Proceed {
            return Ok(());
        }
        self.fold.reporter.repair("held");
        tracing::error!(
            watch = %self.config.name,
            repair = kind,
            deletions,
            fold_len,
            "repair held by the mass-delete guard",
        );
        Err(AppliedError::MassDeleteHeld {
            deletions,
            fold_len,
            cursor: self.fold.committed().clone(),
        })
    }
}
