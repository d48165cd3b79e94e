//! The node's steps, as the engine takes them: start, open the watch the
//! cursor names (K16, the backend's K1 and K3), deliveries with their gap
//! check (K17, K5), `CaughtUp` (K17's short check) and looks at retention
//! (K15's confirmation, K18).

use slipstream_protocol::{
    CaughtUpAction, CaughtUpVerdict, CaughtUpView, FloorConfirmation, FloorVerdict, GapAction,
    GapView, NextStart, caught_up_short, caught_up_verdict, confirm_floor, cursor_beyond_log,
    floor_verdict, gap_action, gap_needs_floor_check, is_replay, listing_is_truth, next_high_water,
    next_start, read_gap, resume_start_sequence, resume_window_ok,
};

use super::{
    FLOOR_CHECKED, FLOOR_PASSED, GAP_DUE, HEAD_PASSED, KEYS, Memory, NodePhase, SHORT_DUE, Watch,
    WatchAction, WatchMutation, WatchRepairModel, WatchState,
};

/// Why a watch stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The cursor expired (K1, a floor overrun).
    Expired,
    /// The cursor is beyond the log (K3): the bucket was replaced (R7).
    Replaced,
    /// A due repair may run: the bucket is quiet.
    RepairDue,
}

impl WatchRepairModel {
    /// A node step; `None` when it is not enabled or changes nothing.
    pub(super) fn node_step(&self, s: &WatchState, action: WatchAction) -> Option<WatchState> {
        let mut n = s.clone();
        let enabled = match action {
            WatchAction::Start if n.phase == NodePhase::Down => {
                self.start(&mut n);
                true
            }
            WatchAction::Open => self.open(&mut n),
            WatchAction::Deliver => self.deliver(&mut n),
            WatchAction::CaughtUp => self.caught_up(&mut n),
            WatchAction::Look => self.look(&mut n),
            WatchAction::Crash
                if n.crashes < self.config.crashes
                    && matches!(n.phase, NodePhase::Opening | NodePhase::Watching(_)) =>
            {
                n.crashes += 1;
                n.phase = NodePhase::Down;
                n.node = Memory::default();
                n.trace.unchanged_since_relist = false;
                true
            }
            WatchAction::Override if n.phase == NodePhase::Held => {
                n.phase = NodePhase::Down;
                n.override_next = true;
                n.trace.unchanged_since_relist = false;
                true
            }
            _ => false,
        };
        (enabled && n != *s).then_some(n)
    }

    /// A retention read: what the node has seen of the bucket, and R5's
    /// memo once retention is seen evicting current values.
    pub(super) fn read(s: &mut WatchState) {
        s.node.seen_last = Some(s.bucket.last());
        s.node.read = true;
        if !listing_is_truth(s.bucket.evicting(), s.bucket.first(), false) {
            s.store.seen_evicting = true;
        }
    }

    /// The store's cursor moves to `to`; the ghost notes a regression.
    pub(super) fn commit_applied(s: &mut WatchState, to: Option<u64>) {
        if let (Some(from), Some(to)) = (s.store.applied, to)
            && to < from
        {
            s.trace.cursor_regressed = true;
        }
        s.store.applied = to;
    }

    fn start(&self, s: &mut WatchState) {
        Self::read(s);
        if s.store.applied.is_none() {
            self.cursorless_start(s);
        } else {
            s.phase = NodePhase::Opening;
        }
    }

    /// The engine's loop opens the watch `next_start` names; a delta watch
    /// is refused by the backend's K3 and K1.
    fn open(&self, s: &mut WatchState) -> bool {
        if s.phase != NodePhase::Opening {
            return false;
        }
        let marked = s.node.relist_next && !self.has(WatchMutation::NextStartIgnoresRelistMarker);
        match next_start(false, s.store.applied, marked) {
            NextStart::AfterApplied => {
                let rank = s.store.applied.unwrap_or(0);
                let (first, last) = (s.bucket.first(), s.bucket.last());
                let replaced = cursor_beyond_log(rank, last);
                if replaced || !resume_window_ok(rank, first) {
                    self.repair(s, replaced);
                    return true;
                }
                match resume_start_sequence(rank) {
                    Some(next) => Self::watch(s, true, next),
                    None => s.phase = NodePhase::Failed,
                }
            }
            NextStart::StateSync | NextStart::ResumePoint => Self::watch(s, false, 1),
        }
        true
    }

    fn watch(s: &mut WatchState, delta: bool, next: u64) {
        if !delta {
            Self::listed(s);
        }
        let after_repair = s.node.armed;
        s.node.armed = false;
        s.node.relist_next = false;
        s.phase = NodePhase::Watching(Watch {
            delta,
            after_repair,
            last_at_open: s.node.seen_last,
            next,
            open_last: s.bucket.last(),
            ready: false,
            look: None,
        });
    }

    /// A listing (a state-sync opening or catching up, or a repair's)
    /// stands for the bucket as it is: O1 lets the fold lack a value that
    /// left before it.
    pub(super) fn listed(s: &mut WatchState) {
        s.trace.left_unrepaired = [false; KEYS];
    }

    /// What K17 knows of the watch.
    fn gap_view(s: &WatchState, w: &Watch) -> GapView {
        GapView {
            all_scope: true,
            delta: w.delta,
            ready: w.ready,
            repair_due: s.store.repair_due,
            // A store that repairs on expiry.
            repairs_gaps: true,
            seen_evicting: s.store.seen_evicting,
            reading: s.node.read.then(|| read_gap(s.bucket.eviction)),
        }
    }

    fn make_due(s: &mut WatchState, event: u16) {
        s.store.repair_due = true;
        s.trace.events |= event;
    }

    /// The engine's `on_update`: K17 on the gap before the delivery is
    /// taken, then K5's replay filter and the commit. On an evicting bucket
    /// the backend's floor guard (K4) ends a delta watch first.
    fn deliver(&self, s: &mut WatchState) -> bool {
        let NodePhase::Watching(mut w) = s.phase else {
            return false;
        };
        let Some((seq, msg)) = s.bucket.next_retained(w.next) else {
            return false;
        };
        if seq > w.open_last && !w.ready {
            // `CaughtUp` comes first.
            return false;
        }
        let frontier = s.store.applied.unwrap_or(0);
        if w.delta
            && s.bucket.evicting()
            && gap_needs_floor_check(frontier, seq)
            && floor_verdict(frontier, s.bucket.first()) == FloorVerdict::Overrun
        {
            self.repair(s, false);
            return true;
        }
        let action = if self.has(WatchMutation::NeverCheckGaps) {
            GapAction::Nothing
        } else {
            gap_action(frontier, seq, Self::gap_view(s, &w))
        };
        match action {
            GapAction::Nothing => {}
            GapAction::RepairWhenQuiet => Self::make_due(s, GAP_DUE),
            GapAction::CheckFloor => {
                Self::read(s);
                if let Some(end) = self.check(s, &mut w, false) {
                    s.trace.events |= FLOOR_CHECKED;
                    self.end(s, end);
                    return true;
                }
            }
        }
        if !is_replay(s.store.applied, Some(seq)) {
            s.store.fold[msg.key as usize] = msg.op.is_put().then_some(seq);
            Self::commit_applied(s, next_high_water(s.store.applied, Some(seq)));
        }
        w.next = seq + 1;
        s.phase = NodePhase::Watching(w);
        true
    }

    /// The engine's handling of `CaughtUp`: K17's short check, then a
    /// retention read checked at once.
    fn caught_up(&self, s: &mut WatchState) -> bool {
        let NodePhase::Watching(mut w) = s.phase else {
            return false;
        };
        let pending = s
            .bucket
            .next_retained(w.next)
            .is_some_and(|(seq, _)| seq <= w.open_last);
        if w.ready || pending {
            return false;
        }
        if !w.delta {
            Self::listed(s);
        }
        let frontier = s.store.applied.unwrap_or(0);
        let last_at_open = if self.has(WatchMutation::CaughtUpShortIgnored) {
            None
        } else {
            w.last_at_open
        };
        if caught_up_short(frontier, last_at_open, Self::gap_view(s, &w)) {
            Self::make_due(s, SHORT_DUE);
        }
        Self::read(s);
        if let Some(end) = self.check(s, &mut w, true) {
            self.end(s, end);
            return true;
        }
        w.ready = true;
        s.phase = NodePhase::Watching(w);
        true
    }

    /// The periodic retention read; checked against the cursor only once
    /// the watch is caught up.
    fn look(&self, s: &mut WatchState) -> bool {
        let NodePhase::Watching(mut w) = s.phase else {
            return false;
        };
        Self::read(s);
        if w.ready
            && let Some(end) = self.check(s, &mut w, false)
        {
            self.end(s, end);
            return true;
        }
        s.phase = NodePhase::Watching(w);
        true
    }

    /// The engine's `Follow::check` on a retention read just taken: K3,
    /// K15's confirmation of an unchecked floor, then K18.
    fn check(&self, s: &mut WatchState, w: &mut Watch, catching_up: bool) -> Option<End> {
        let (first, last) = (s.bucket.first(), s.bucket.last());
        if s.store.applied.is_some_and(|r| cursor_beyond_log(r, last)) {
            return Some(End::Replaced);
        }
        let reading = read_gap(s.bucket.eviction);
        if let Some(floor) = s.store.floor {
            let confirmation = if self.has(WatchMutation::ConfirmFloorAlwaysHeld) {
                FloorConfirmation::Held
            } else {
                confirm_floor(floor, first, reading, true)
            };
            match confirmation {
                FloorConfirmation::Held => {}
                FloorConfirmation::RepairWhenQuiet => Self::make_due(s, FLOOR_PASSED),
                FloorConfirmation::Overrun => return Some(End::Expired),
            }
            s.store.floor = None;
        }
        let frontier = s.store.applied.unwrap_or(0);
        let listed_through = s.node.listed_through.unwrap_or(0);
        let still_since = if reading.repairs_now() {
            None
        } else {
            w.still_since(frontier.max(listed_through), last)
        };
        let verdict = if self.has(WatchMutation::CaughtUpAlwaysWatch) {
            CaughtUpVerdict {
                mark_due: false,
                action: CaughtUpAction::Watch,
            }
        } else {
            caught_up_verdict(CaughtUpView {
                frontier,
                first_sequence: first,
                last_sequence: last,
                listed_through,
                still_since,
                at_catch_up: catching_up && !w.after_repair,
                reading,
                repair_due: s.store.repair_due,
                repairs_gaps: true,
            })
        };
        if verdict.mark_due {
            Self::make_due(s, HEAD_PASSED);
        }
        match verdict.action {
            CaughtUpAction::Watch => None,
            CaughtUpAction::Repair => Some(End::RepairDue),
            CaughtUpAction::Overrun => Some(End::Expired),
        }
    }

    /// The stream ends and the repair it asks for runs (everything
    /// delivered is committed already). Both ends plan alike here: the
    /// engine's one difference, R8's supersession-only resume after an
    /// expiry, needs message ages the model does not have.
    fn end(&self, s: &mut WatchState, end: End) {
        match end {
            End::Expired | End::RepairDue => self.repair(s, false),
            End::Replaced => self.repair(s, true),
        }
    }
}
