//! The applied cursor and what decides the next watch's start (K16): the
//! resume point a supersession-only repair sets (R8), the marker a repair
//! leaves for a state-sync, and what the latest listing stands for.

use std::mem;

use slipstream_kv::{Timestamp, WatchCursor, WatchStart};
use slipstream_protocol::{NextStart, next_start, trusted_rank};

/// The engine's position in the bucket and how the next watch opens.
pub(crate) struct CursorState {
    /// `apply` has returned for every update at or below this cursor.
    applied: WatchCursor,
    /// The next watch resumes after this position instead of the applied
    /// cursor (R8: a gap of supersession only).
    resume_at: Option<WatchCursor>,
    /// The next watch is a state-sync (after a repair), whatever the cursor.
    relist_next: bool,
    /// A repair armed the next watch (its state-sync or delta resume).
    armed_by_repair: bool,
    /// The last sequence when the latest relist (or a fresh node's
    /// state-sync) was planned: its listing stands for everything up to
    /// there, so a frontier short of it does not mean writers are busy.
    listed_through: Option<u64>,
}

impl CursorState {
    pub(crate) const fn new(applied: WatchCursor) -> Self {
        Self {
            applied,
            resume_at: None,
            relist_next: false,
            armed_by_repair: false,
            listed_through: None,
        }
    }

    /// The applied cursor.
    pub(crate) const fn applied(&self) -> &WatchCursor {
        &self.applied
    }

    /// Replace the applied cursor (a repair's final cursor, a restart in a
    /// new incarnation).
    pub(crate) fn set(&mut self, cursor: WatchCursor) {
        self.applied = cursor;
    }

    /// Change the applied cursor's memo or position in place.
    pub(crate) fn update(&mut self, change: impl FnOnce(WatchCursor) -> WatchCursor) {
        let current = mem::replace(&mut self.applied, WatchCursor::none());
        self.applied = change(current);
    }

    /// Move the applied cursor to `revision`, when that is forward.
    pub(crate) fn advance(&mut self, revision: u64, time: Option<Timestamp>) {
        self.applied = self.applied.advanced(revision, time);
    }

    /// The applied revision held below a relist's unchecked floor (K15):
    /// above it, the fold may lack retained entries, so repairs trust it
    /// only this far.
    pub(crate) fn trusted(&self) -> Option<u64> {
        trusted_rank(self.applied.revision(), self.applied.unchecked_floor())
    }

    /// Where the next watch starts (K16).
    pub(crate) fn next_start(&self) -> WatchStart {
        let choice = next_start(
            self.resume_at.is_some(),
            self.applied.revision(),
            self.relist_next,
        );
        match (choice, &self.resume_at) {
            (NextStart::ResumePoint, Some(at)) => WatchStart::After(at.clone()),
            (NextStart::AfterApplied, _) => WatchStart::After(self.applied.clone()),
            _ => WatchStart::Relist,
        }
    }

    /// A watch opened from [`CursorState::next_start`]: the start's
    /// markers are used up. Whether a repair armed it.
    pub(crate) fn opened(&mut self) -> bool {
        self.relist_next = false;
        self.resume_at = None;
        mem::take(&mut self.armed_by_repair)
    }

    /// The next watch is a state-sync.
    pub(crate) fn relist_next(&mut self) {
        self.relist_next = true;
    }

    /// The next watch is a delta from the applied cursor (a restore moved
    /// it to the artifact's).
    pub(crate) fn delta_next(&mut self) {
        self.relist_next = false;
    }

    /// R8: the next watch resumes after `from`, the position before the
    /// first retained sequence.
    pub(crate) fn resume_after(&mut self, from: u64) {
        self.resume_at = Some(self.applied.advanced(from, None));
    }

    /// A repair runs: the watch after it is the repair's own.
    pub(crate) fn arm_by_repair(&mut self) {
        self.armed_by_repair = true;
    }

    /// The last sequence the latest listing stands for.
    pub(crate) const fn listed_through(&self) -> Option<u64> {
        self.listed_through
    }

    /// A listing (a relist's, or a fresh node's state-sync) was planned at
    /// last sequence `last`.
    pub(crate) fn listed(&mut self, last: u64) {
        self.listed_through = Some(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(revision: u64) -> WatchCursor {
        WatchCursor::none().advanced(revision, None)
    }

    #[test]
    fn the_resume_point_wins_then_the_cursor_then_a_state_sync() {
        let mut state = CursorState::new(WatchCursor::none());
        assert_eq!(state.next_start(), WatchStart::Relist);
        state.set(at(9));
        assert_eq!(state.next_start(), WatchStart::After(at(9)));
        state.relist_next();
        assert_eq!(state.next_start(), WatchStart::Relist);
        state.resume_after(4);
        assert_eq!(state.next_start(), WatchStart::After(at(4)));
        assert!(!state.opened());
        assert_eq!(state.next_start(), WatchStart::After(at(9)));
    }

    #[test]
    fn a_repair_arms_only_the_next_watch() {
        let mut state = CursorState::new(at(3));
        state.arm_by_repair();
        assert!(state.opened());
        assert!(!state.opened());
    }

    #[test]
    fn an_unchecked_floor_holds_trust_below_it() {
        let mut state = CursorState::new(at(10));
        assert_eq!(state.trusted(), Some(10));
        state.update(|c| c.with_unchecked_floor(Some(7)));
        assert_eq!(state.trusted(), Some(6));
        state.update(|c| c.with_unchecked_floor(Some(11)));
        assert_eq!(state.trusted(), Some(10));
    }
}
