//! Decisions of a running watch and of the watch that follows a repair:
//! K15 (a relist's unchecked floor), K16 (where the next watch starts), K17
//! (what a gap asks of a running watch) and K18 (the caught-up verdict).

use crate::repair::{GapReading, quiet_for_repair};
use crate::resume::resume_window_ok;

/// K15: the highest revision a repair may take the fold as complete up
/// to. A relist's listing saw puts above this rank that only the
/// state-sync after it delivers, from the relist's `unchecked_floor` on:
/// until a look at retention confirms the floor (`confirm_floor`), the fold
/// is trusted only below it.
#[must_use]
pub const fn trusted_rank(applied: Option<u64>, unchecked_floor: Option<u64>) -> Option<u64> {
    match (applied, unchecked_floor) {
        (Some(revision), Some(floor)) if revision >= floor => Some(floor.saturating_sub(1)),
        _ => applied,
    }
}

/// K15: whether a listed put at `revision` is one the fold may lack, so
/// the state-sync after the listing must still find it. With no trusted
/// rank (a replaced bucket, a fold without a revision) every put is.
#[must_use]
pub const fn listed_put_needed(revision: u64, trusted: Option<u64>) -> bool {
    match trusted {
        Some(rank) => revision > rank,
        None => true,
    }
}

/// K15: the floor a relist leaves for its state-sync to confirm: the lowest
/// listed put the fold may lack, or else the first sequence after the
/// listing (a delete marker written after it must still be delivered).
/// `None` when the listing held nothing with a revision.
#[must_use]
pub const fn relist_floor(lowest_needed: Option<u64>, highest_listed: Option<u64>) -> Option<u64> {
    let after = match highest_listed {
        Some(h) => Some(h.saturating_add(1)),
        None => None,
    };
    match (lowest_needed, after) {
        (Some(l), Some(a)) => Some(if l < a { l } else { a }),
        (Some(l), None) => Some(l),
        (None, a) => a,
    }
}

/// What a look at retention says of a relist's unchecked floor (K15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloorConfirmation {
    /// The log still reaches the floor: the state-sync delivered what the
    /// listing promised, and the floor is dropped.
    Held,
    /// The head passed the floor on a bucket that evicts nothing current
    /// (an operator's purge): another repair is due once the bucket is
    /// quiet.
    RepairWhenQuiet,
    /// The head passed the floor and only an expiry answers it: a
    /// prefix-scoped watch cannot tell when the bucket is quiet, and an
    /// evicting bucket may have taken current values.
    Overrun,
}

/// K15: confirm a relist's unchecked floor against the first sequence now,
/// read at the state-sync's `CaughtUp` or later.
#[must_use]
pub const fn confirm_floor(
    floor: u64,
    first_sequence: u64,
    reading: GapReading,
    all_scope: bool,
) -> FloorConfirmation {
    if first_sequence <= floor {
        FloorConfirmation::Held
    } else if all_scope && matches!(reading, GapReading::RepairWhenQuiet) {
        FloorConfirmation::RepairWhenQuiet
    } else {
        FloorConfirmation::Overrun
    }
}

/// Where the next watch starts (K16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NextStart {
    /// A delta watch after the resume point a supersession-only repair set
    /// (R8).
    ResumePoint,
    /// A delta watch after the applied cursor.
    AfterApplied,
    /// A state-sync: no position yet, or a repair's listing must be
    /// delivered again (a delta from the cursor could be refused by K1
    /// again under hot writes, and the repair would loop).
    StateSync,
}

/// K16: the next watch's start, from the resume point (R8), whether the
/// applied cursor has a revision, and whether a repair marked a re-list.
#[must_use]
pub const fn next_start(
    resume_point: bool,
    applied: Option<u64>,
    relist_marked: bool,
) -> NextStart {
    if resume_point {
        NextStart::ResumePoint
    } else if applied.is_some() && !relist_marked {
        NextStart::AfterApplied
    } else {
        NextStart::StateSync
    }
}

/// K17: whether a caught-up All-scope watch takes a first sequence past
/// its frontier as an expiry. On a bucket that may evict current values
/// (`evicting`) it always does. Otherwise only a node that answers a gap
/// with a repair (`repairs_gaps`) checks: for any other node the check
/// could only stop it on supersession, so the backend's guard of delta
/// watches is left to decide.
#[must_use]
pub const fn checks_gaps(evicting: bool, repairs_gaps: bool) -> bool {
    evicting || repairs_gaps
}

/// K17's input: what the engine knows about its watch when a delivery
/// leaves a gap after the frontier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GapView {
    /// The watch covers the whole bucket (K4 is sound only there).
    pub all_scope: bool,
    /// The watch is a delta watch: it skips nothing by design (a
    /// state-sync skips superseded messages).
    pub delta: bool,
    /// The watch has caught up (a live state-sync skips nothing either).
    pub ready: bool,
    /// A repair is already due.
    pub repair_due: bool,
    /// A repair answers a gap on this node (a store, `OnExpiry::Repair`).
    pub repairs_gaps: bool,
    /// The cursor's memo says retention evicted current values (R5).
    pub seen_evicting: bool,
    /// K11 generalised, from the last retention read; `None` before any.
    pub reading: Option<GapReading>,
}

/// What a gap asks of a running watch (K17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GapAction {
    /// Nothing: a dense delivery, a filtered scope, a state-sync's skip, or
    /// a node no repair would help.
    Nothing,
    /// Messages left unseen on a bucket that evicts nothing current: make
    /// a repair due, run once the bucket is quiet.
    RepairWhenQuiet,
    /// Read retention now and check the frontier against the first
    /// sequence (K18).
    CheckFloor,
}

/// K17: what the delivery of `delivered` after `frontier` asks for.
#[must_use]
pub const fn gap_action(frontier: u64, delivered: u64, view: GapView) -> GapAction {
    if !view.all_scope || delivered <= frontier.saturating_add(1) {
        return GapAction::Nothing;
    }
    match view.reading {
        Some(GapReading::RepairWhenQuiet) => {
            if (view.delta || view.ready) && !view.repair_due && view.repairs_gaps {
                GapAction::RepairWhenQuiet
            } else {
                GapAction::Nothing
            }
        }
        reading => {
            let evicting = reading.is_some() || view.seen_evicting;
            if view.ready && checks_gaps(evicting, view.repairs_gaps) {
                GapAction::CheckFloor
            } else {
                GapAction::Nothing
            }
        }
    }
}

/// K17 at a delta watch's `CaughtUp`: it delivered every message in scope
/// that existed when it opened, so on an All-scope watch of a bucket that
/// evicts nothing current, a frontier short of the last sequence seen
/// before the open (`last_at_open`) means the messages after it left
/// unseen (a TTL that expired while the node was down, a purged delete).
#[must_use]
pub const fn caught_up_short(frontier: u64, last_at_open: Option<u64>, view: GapView) -> bool {
    let short = match last_at_open {
        Some(last) => frontier < last,
        None => false,
    };
    short
        && view.delta
        && view.all_scope
        && matches!(view.reading, Some(GapReading::RepairWhenQuiet))
        && view.repairs_gaps
        && !view.repair_due
}

/// K18's input: a retention read taken while an All-scope watch is caught
/// up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaughtUpView {
    /// The highest revision received (applied or in the open batch); 0
    /// without a position.
    pub frontier: u64,
    /// The stream's first sequence now.
    pub first_sequence: u64,
    /// The stream's last sequence now.
    pub last_sequence: u64,
    /// The last sequence when the latest relist (or a fresh node's
    /// state-sync) was planned: its listing stands for everything up to
    /// there.
    pub listed_through: u64,
    /// `(frontier, last)` of a look long enough ago if neither moved since
    /// (`quiet_for_repair`'s `before`).
    pub still_since: Option<(u64, u64)>,
    /// The watch is handling its `CaughtUp`, and it is not a repair's own
    /// state-sync (`quiet_for_repair`'s `caught_up_at_head`).
    pub at_catch_up: bool,
    /// What the bucket can evict now (K11 generalised).
    pub reading: GapReading,
    /// A repair is already due.
    pub repair_due: bool,
    /// A repair answers a gap on this node.
    pub repairs_gaps: bool,
}

/// What a caught-up watch does next (K18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaughtUpAction {
    /// Go on watching (Ready).
    Watch,
    /// End the watch and run the due repair.
    Repair,
    /// The head passed the frontier: the cursor expired (R1).
    Overrun,
}

/// K18's verdict: whether a repair becomes due (recorded in the cursor's
/// memo first, so a restart finds it) and what the watch does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaughtUpVerdict {
    /// The head passed the frontier on a bucket that evicts nothing
    /// current: a repair becomes due.
    pub mark_due: bool,
    /// What the watch does now.
    pub action: CaughtUpAction,
}

impl CaughtUpVerdict {
    const WATCH: Self = Self {
        mark_due: false,
        action: CaughtUpAction::Watch,
    };
}

/// K18: the caught-up verdict. On a bucket that may evict current values,
/// a due repair runs now and a frontier the head passed is an expiry (K1).
/// On one that evicts nothing current, the head passing the frontier is
/// supersession, or an expiry or purge only a repair finds: the repair is
/// made due and runs once the bucket is quiet (`quiet_for_repair`), where
/// the next hot write cannot overrun it.
#[must_use]
pub const fn caught_up_verdict(view: CaughtUpView) -> CaughtUpVerdict {
    let window_ok = resume_window_ok(view.frontier, view.first_sequence);
    if view.reading.repairs_now() {
        let action = if view.repair_due && view.repairs_gaps {
            // Made due while the bucket evicted nothing; it evicts now, so
            // waiting for quiet protects nothing.
            CaughtUpAction::Repair
        } else if window_ok {
            CaughtUpAction::Watch
        } else {
            CaughtUpAction::Overrun
        };
        return CaughtUpVerdict {
            mark_due: false,
            action,
        };
    }
    if !view.repairs_gaps {
        return CaughtUpVerdict::WATCH;
    }
    let mark_due = !window_ok && !view.repair_due;
    let frontier = if view.listed_through > view.frontier {
        view.listed_through
    } else {
        view.frontier
    };
    let quiet = quiet_for_repair(
        frontier,
        view.last_sequence,
        view.still_since,
        view.at_catch_up,
    );
    let action = if (view.repair_due || mark_due) && quiet {
        CaughtUpAction::Repair
    } else {
        CaughtUpAction::Watch
    };
    CaughtUpVerdict { mark_due, action }
}
