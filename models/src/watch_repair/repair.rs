//! The repairs a stream end asks for, as the engine runs them: K7 and K8
//! plan, a relist leaves K15's floor and asks K14 before its synthetic
//! deletes, a restore asks K6, K10 and K14; a start without a cursor asks
//! K9 first.

use slipstream_protocol::{
    MassDeleteLimit, MassDeleteVerdict, RepairPlan, RestoreAction, cursorless_start_needs_repair,
    listed_put_needed, listing_is_truth, mass_delete_guard, plan_repair, relist_floor,
    restore_ahead, restore_allowed, restore_key, trusted_rank,
};

use super::{
    HELD, NodePhase, REFUSED_BEHIND, REPAIRED_RELIST, REPAIRED_RESTORE, REPLACED, WatchMutation,
    WatchRepairModel, WatchState,
};
use crate::bucket::KEYS;

impl WatchRepairModel {
    /// K7 with the bucket's facts now and R5's memo.
    fn listing_truth(s: &WatchState) -> bool {
        listing_is_truth(s.bucket.evicting(), s.bucket.first(), s.store.seen_evicting)
    }

    /// The engine's `Repair::run` for any trigger: read retention, plan with
    /// K8, carry the plan out. Leaves the node opening its next watch, or
    /// stopped. `replaced`: the cause replaces the bucket (K3, R7).
    pub(super) fn repair(&self, s: &mut WatchState, replaced: bool) {
        if s.trace.unchanged_since_relist {
            s.trace.repeated = true;
        }
        s.trace.unchanged_since_relist = false;
        if replaced {
            s.trace.events |= REPLACED;
        }
        Self::read(s);
        match plan_repair(self.config.mode, Some(Self::listing_truth(s))) {
            RepairPlan::Relist => self.relist(s, replaced),
            RepairPlan::RelistOnly => {
                // Mode None accepts what a listing misses.
                s.store.floor = None;
                Self::place_cursor(s, replaced);
                s.node.relist_next = true;
                Self::finish(s, REPAIRED_RELIST);
            }
            RepairPlan::RefuseRelist => s.phase = NodePhase::Failed,
            RepairPlan::Restore => self.restore(s, replaced),
        }
    }

    /// R6: a start without a cursor repairs first only if K9 says so;
    /// otherwise its state-sync stands for everything below the head.
    pub(super) fn cursorless_start(&self, s: &mut WatchState) {
        let has_data = s.store.fold.iter().any(Option::is_some);
        let truth = Self::listing_truth(s);
        if cursorless_start_needs_repair(self.config.mode, has_data, Some(truth)) {
            self.repair(s, false);
            return;
        }
        Self::floor_cursor(s);
        s.node.listed_through = Some(s.bucket.last());
        s.node.relist_next = true;
        s.phase = NodePhase::Opening;
    }

    /// The repair is done: the loop opens the watch it armed.
    fn finish(s: &mut WatchState, event: u16) {
        s.node.armed = true;
        s.trace.events |= event;
        Self::listed(s);
        s.phase = NodePhase::Opening;
    }

    /// What a listing stands for: the cursor moves up to the position
    /// before the first sequence it was planned on.
    fn floor_cursor(s: &mut WatchState) {
        let floor = s.bucket.first().saturating_sub(1);
        if floor > 0 && s.store.applied.is_none_or(|r| r < floor) {
            Self::commit_applied(s, Some(floor));
        }
    }

    /// After a listing: `floor_cursor`, or on a replaced bucket the
    /// engine's `restart_cursor` (no position in the new incarnation; the
    /// relist's floor, already in its sequences, stays).
    fn place_cursor(s: &mut WatchState, replaced: bool) {
        if replaced {
            s.store.applied = None;
            s.trace.old_cursor = false;
        } else {
            Self::floor_cursor(s);
        }
    }

    /// The trusted rank (K15), or the applied cursor itself under
    /// `TrustAboveFloor`.
    fn trusted(&self, s: &WatchState) -> Option<u64> {
        if self.has(WatchMutation::TrustAboveFloor) {
            trusted_rank(s.store.applied, None)
        } else {
            trusted_rank(s.store.applied, s.store.floor)
        }
    }

    /// K14 with the engine's default limit, or the operator's override.
    /// The ghost records a repair that empties a non-empty fold without
    /// the override, the case the guard exists for.
    fn deletions_allowed(&self, s: &mut WatchState, fold_len: u64, deletions: u64) -> bool {
        let verdict = if self.has(WatchMutation::MassDeleteNeverHolds) {
            MassDeleteVerdict::Proceed
        } else {
            mass_delete_guard(fold_len, deletions, MassDeleteLimit::default())
        };
        if verdict == MassDeleteVerdict::Hold && !s.override_next {
            s.trace.events |= HELD;
            s.phase = NodePhase::Held;
            return false;
        }
        if fold_len > 0 && deletions == fold_len && !s.override_next {
            s.trace.emptied_unconfirmed = true;
        }
        s.override_next = false;
        true
    }

    /// R2 with K15: list the bucket (its retained message per key), delete
    /// the fold keys it lacks, and leave the floor the state-sync after it
    /// must reach.
    fn relist(&self, s: &mut WatchState, replaced: bool) {
        let trusted = if self.has(WatchMutation::ListedPutsTrusted) {
            Some(u64::MAX)
        } else if replaced {
            None
        } else {
            self.trusted(s)
        };
        let mut lowest_needed: Option<u64> = None;
        let mut highest: Option<u64> = None;
        for key in 0..KEYS as u8 {
            if let Some((seq, msg)) = s.bucket.latest_retained(key) {
                highest = highest.max(Some(seq));
                if msg.op.is_put() && listed_put_needed(seq, trusted) {
                    lowest_needed = Some(lowest_needed.map_or(seq, |l| l.min(seq)));
                }
            }
        }
        if self.has(WatchMutation::FloorOmitsListingEnd) {
            highest = None;
        }
        let floor = relist_floor(lowest_needed, highest);
        let vanished: [bool; KEYS] =
            core::array::from_fn(|k| s.store.fold[k].is_some() && !s.bucket.listed_live(k as u8));
        let fold_len = s.store.fold.iter().filter(|v| v.is_some()).count() as u64;
        let deletions = vanished.iter().filter(|v| **v).count() as u64;
        if !self.deletions_allowed(s, fold_len, deletions) {
            return;
        }
        for (entry, gone) in s.store.fold.iter_mut().zip(vanished) {
            if gone {
                *entry = None;
            }
        }
        s.node.relist_next = true;
        s.store.floor = floor;
        s.store.repair_due = false;
        Self::place_cursor(s, replaced);
        s.node.listed_through = Some(s.bucket.last());
        Self::finish(s, REPAIRED_RELIST);
        // Its state-sync delivers the listing again; nothing it finds there
        // may call for another repair.
        s.trace.unchanged_since_relist = true;
    }

    /// R3: K6 on the artifact against the applied cursor, then K10 per key
    /// (a fold entry ranks by its revision only up to the trusted rank),
    /// K14 on the deletions; the cursor moves to the artifact's, with an
    /// empty memo, and the next watch is a delta.
    fn restore(&self, s: &mut WatchState, replaced: bool) {
        let Some(artifact) = s.artifact else {
            s.phase = NodePhase::Failed;
            return;
        };
        // A recreated bucket's revisions restart: every artifact key is
        // newer than the fold's.
        let local = if self.has(WatchMutation::RestoreWhenBehind) || replaced {
            0
        } else {
            s.store.applied.unwrap_or(0)
        };
        if !restore_allowed(artifact.cursor, local, s.bucket.first()) {
            // The refusal's reason, as `artifact_refusal` gives it.
            if !restore_ahead(artifact.cursor, local) {
                s.trace.events |= REFUSED_BEHIND;
            }
            s.phase = NodePhase::Failed;
            return;
        }
        // A fold without a revision may hold another incarnation's entries.
        let trusted = if replaced || s.store.applied.is_none() {
            None
        } else {
            self.trusted(s)
        };
        let mut next = s.store.fold;
        let mut deletions = 0u64;
        for (k, entry) in next.iter_mut().enumerate() {
            let rank = entry.map(|r| match trusted {
                Some(t) if r <= t => r,
                _ => 0,
            });
            let theirs = artifact.fold[k];
            let identical = entry.is_some() && *entry == theirs;
            let listed = theirs.is_some() || s.bucket.listed_live(k as u8);
            match restore_key(rank, theirs, identical, listed) {
                RestoreAction::Keep => {}
                RestoreAction::Take => *entry = theirs,
                RestoreAction::Delete => {
                    *entry = None;
                    deletions += 1;
                }
            }
        }
        let fold_len = s.store.fold.iter().filter(|v| v.is_some()).count() as u64;
        if !self.deletions_allowed(s, fold_len, deletions) {
            return;
        }
        s.store.fold = next;
        if replaced {
            // A position in the new incarnation: no regression of the old.
            s.store.applied = None;
            s.trace.old_cursor = false;
        }
        Self::commit_applied(s, Some(artifact.cursor));
        s.store.floor = None;
        s.store.repair_due = false;
        s.node.relist_next = false;
        Self::finish(s, REPAIRED_RESTORE);
    }
}
