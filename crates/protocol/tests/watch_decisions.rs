//! Decisions of a running watch: K15 (a relist's unchecked floor), K16 (the
//! next watch's start), K17 (what a gap asks for) and K18 (the caught-up
//! verdict).

use proptest::prelude::*;
use slipstream_protocol::{
    CaughtUpAction, CaughtUpVerdict, CaughtUpView, FloorConfirmation, GapAction, GapReading,
    GapView, NextStart, caught_up_short, caught_up_verdict, checks_gaps, confirm_floor, gap_action,
    listed_put_needed, next_start, quiet_for_repair, relist_floor, resume_window_ok, trusted_rank,
};

const READINGS: [GapReading; 2] = [GapReading::RepairWhenQuiet, GapReading::RepairNow];

// ---------------------------------------------------------------- K15

#[test]
fn a_cursor_at_or_above_the_floor_is_trusted_only_below_it() {
    assert_eq!(trusted_rank(Some(10), Some(10)), Some(9));
    assert_eq!(trusted_rank(Some(12), Some(10)), Some(9));
    assert_eq!(trusted_rank(Some(9), Some(10)), Some(9));
    assert_eq!(trusted_rank(Some(10), None), Some(10));
    assert_eq!(trusted_rank(None, Some(10)), None);
    // A floor of 0 cannot go below 0.
    assert_eq!(trusted_rank(Some(0), Some(0)), Some(0));
}

#[test]
fn only_puts_above_the_trusted_rank_are_needed() {
    assert!(!listed_put_needed(9, Some(9)));
    assert!(listed_put_needed(10, Some(9)));
    assert!(listed_put_needed(0, None));
}

#[test]
fn the_floor_is_the_lowest_needed_put_or_the_sequence_after_the_listing() {
    assert_eq!(relist_floor(Some(5), Some(9)), Some(5));
    assert_eq!(relist_floor(None, Some(9)), Some(10));
    assert_eq!(relist_floor(Some(5), None), Some(5));
    assert_eq!(relist_floor(None, None), None);
    assert_eq!(relist_floor(None, Some(u64::MAX)), Some(u64::MAX));
}

#[test]
fn a_floor_the_log_still_reaches_holds() {
    for reading in READINGS {
        for all in [false, true] {
            assert_eq!(confirm_floor(10, 10, reading, all), FloorConfirmation::Held);
            assert_eq!(confirm_floor(10, 1, reading, all), FloorConfirmation::Held);
        }
    }
}

#[test]
fn a_passed_floor_waits_for_quiet_only_on_an_all_scope_watch_of_a_bucket_that_evicts_nothing() {
    assert_eq!(
        confirm_floor(10, 11, GapReading::RepairWhenQuiet, true),
        FloorConfirmation::RepairWhenQuiet
    );
    assert_eq!(
        confirm_floor(10, 11, GapReading::RepairWhenQuiet, false),
        FloorConfirmation::Overrun
    );
    assert_eq!(
        confirm_floor(10, 11, GapReading::RepairNow, true),
        FloorConfirmation::Overrun
    );
}

// ---------------------------------------------------------------- K16

#[test]
fn a_resume_point_wins_then_the_applied_cursor_then_a_state_sync() {
    for applied in [None, Some(0), Some(7)] {
        for relist in [false, true] {
            assert_eq!(next_start(true, applied, relist), NextStart::ResumePoint);
        }
    }
    assert_eq!(next_start(false, Some(7), false), NextStart::AfterApplied);
    assert_eq!(next_start(false, Some(0), false), NextStart::AfterApplied);
    assert_eq!(next_start(false, Some(7), true), NextStart::StateSync);
    assert_eq!(next_start(false, None, false), NextStart::StateSync);
}

// ---------------------------------------------------------------- K17

fn view() -> GapView {
    GapView {
        all_scope: true,
        delta: true,
        ready: true,
        repair_due: false,
        repairs_gaps: true,
        seen_evicting: false,
        reading: Some(GapReading::RepairWhenQuiet),
    }
}

#[test]
fn a_dense_delivery_or_a_filtered_scope_asks_nothing() {
    assert_eq!(gap_action(4, 5, view()), GapAction::Nothing);
    assert_eq!(gap_action(4, 4, view()), GapAction::Nothing);
    let prefix = GapView {
        all_scope: false,
        ..view()
    };
    assert_eq!(gap_action(4, 9, prefix), GapAction::Nothing);
}

#[test]
fn a_gap_on_a_bucket_that_evicts_nothing_makes_a_repair_due_once() {
    assert_eq!(gap_action(4, 9, view()), GapAction::RepairWhenQuiet);
    let due = GapView {
        repair_due: true,
        ..view()
    };
    assert_eq!(gap_action(4, 9, due), GapAction::Nothing);
    let stops = GapView {
        repairs_gaps: false,
        ..view()
    };
    assert_eq!(gap_action(4, 9, stops), GapAction::Nothing);
    // A state-sync skips by design until it catches up.
    let syncing = GapView {
        delta: false,
        ready: false,
        ..view()
    };
    assert_eq!(gap_action(4, 9, syncing), GapAction::Nothing);
    let live_sync = GapView {
        delta: false,
        ..view()
    };
    assert_eq!(gap_action(4, 9, live_sync), GapAction::RepairWhenQuiet);
}

#[test]
fn a_gap_on_an_evicting_or_unknown_bucket_checks_the_floor_once_ready() {
    let evicting = GapView {
        reading: Some(GapReading::RepairNow),
        repairs_gaps: false,
        ..view()
    };
    assert_eq!(gap_action(4, 9, evicting), GapAction::CheckFloor);
    let not_ready = GapView {
        ready: false,
        ..evicting
    };
    assert_eq!(gap_action(4, 9, not_ready), GapAction::Nothing);
    // Without a retention read only a repairing node (or the memo) checks.
    let unknown = GapView {
        reading: None,
        ..view()
    };
    assert_eq!(gap_action(4, 9, unknown), GapAction::CheckFloor);
    let unknown_stops = GapView {
        repairs_gaps: false,
        ..unknown
    };
    assert_eq!(gap_action(4, 9, unknown_stops), GapAction::Nothing);
    let memo = GapView {
        seen_evicting: true,
        ..unknown_stops
    };
    assert_eq!(gap_action(4, 9, memo), GapAction::CheckFloor);
}

#[test]
fn gaps_are_checked_on_evicting_buckets_and_by_repairing_nodes() {
    assert!(checks_gaps(true, false));
    assert!(checks_gaps(false, true));
    assert!(!checks_gaps(false, false));
}

#[test]
fn a_delta_catching_up_short_of_the_last_sequence_left_messages_unseen() {
    assert!(caught_up_short(7, Some(9), view()));
    assert!(!caught_up_short(9, Some(9), view()));
    assert!(!caught_up_short(7, None, view()));
    let sync = GapView {
        delta: false,
        ..view()
    };
    assert!(!caught_up_short(7, Some(9), sync));
    let evicting = GapView {
        reading: Some(GapReading::RepairNow),
        ..view()
    };
    assert!(!caught_up_short(7, Some(9), evicting));
    let due = GapView {
        repair_due: true,
        ..view()
    };
    assert!(!caught_up_short(7, Some(9), due));
}

// ---------------------------------------------------------------- K18

fn caught_up() -> CaughtUpView {
    CaughtUpView {
        frontier: 10,
        first_sequence: 5,
        last_sequence: 10,
        listed_through: 0,
        still_since: None,
        at_catch_up: false,
        reading: GapReading::RepairWhenQuiet,
        repair_due: false,
        repairs_gaps: true,
    }
}

const WATCH: CaughtUpVerdict = CaughtUpVerdict {
    mark_due: false,
    action: CaughtUpAction::Watch,
};

#[test]
fn an_evicting_bucket_past_the_frontier_is_an_expiry() {
    let evicting = CaughtUpView {
        reading: GapReading::RepairNow,
        first_sequence: 12,
        ..caught_up()
    };
    assert_eq!(caught_up_verdict(evicting).action, CaughtUpAction::Overrun);
    let inside = CaughtUpView {
        first_sequence: 11,
        ..evicting
    };
    assert_eq!(caught_up_verdict(inside), WATCH);
    // Even a node that does not repair stops there.
    let stops = CaughtUpView {
        repairs_gaps: false,
        ..evicting
    };
    assert_eq!(caught_up_verdict(stops).action, CaughtUpAction::Overrun);
}

#[test]
fn a_due_repair_runs_at_once_when_the_bucket_starts_evicting() {
    let due = CaughtUpView {
        reading: GapReading::RepairNow,
        repair_due: true,
        ..caught_up()
    };
    assert_eq!(caught_up_verdict(due).action, CaughtUpAction::Repair);
}

#[test]
fn a_passed_frontier_makes_a_repair_due_and_it_waits_for_quiet() {
    let passed = CaughtUpView {
        first_sequence: 12,
        last_sequence: 14,
        ..caught_up()
    };
    assert_eq!(
        caught_up_verdict(passed),
        CaughtUpVerdict {
            mark_due: true,
            action: CaughtUpAction::Watch
        }
    );
    let still = CaughtUpView {
        still_since: Some((10, 14)),
        ..passed
    };
    assert_eq!(
        caught_up_verdict(still),
        CaughtUpVerdict {
            mark_due: true,
            action: CaughtUpAction::Repair
        }
    );
    // Once due, it is not marked again.
    let due = CaughtUpView {
        repair_due: true,
        ..still
    };
    assert_eq!(
        caught_up_verdict(due),
        CaughtUpVerdict {
            mark_due: false,
            action: CaughtUpAction::Repair
        }
    );
    // A node that does not repair only watches.
    let stops = CaughtUpView {
        repairs_gaps: false,
        ..due
    };
    assert_eq!(caught_up_verdict(stops), WATCH);
}

#[test]
fn a_listing_stands_for_what_it_was_planned_on() {
    // The frontier is short of the last sequence, but a relist's listing
    // covered up to it: catching up there counts as at the head.
    let due = CaughtUpView {
        repair_due: true,
        frontier: 8,
        first_sequence: 1,
        last_sequence: 10,
        listed_through: 10,
        at_catch_up: true,
        ..caught_up()
    };
    assert_eq!(caught_up_verdict(due).action, CaughtUpAction::Repair);
    let unlisted = CaughtUpView {
        listed_through: 0,
        ..due
    };
    assert_eq!(caught_up_verdict(unlisted).action, CaughtUpAction::Watch);
}

fn any_reading() -> impl Strategy<Value = GapReading> {
    prop_oneof![
        Just(GapReading::RepairWhenQuiet),
        Just(GapReading::RepairNow)
    ]
}

prop_compose! {
    fn any_view()(
        frontier in 0u64..64,
        first_sequence in 0u64..64,
        last_sequence in 0u64..64,
        listed_through in 0u64..64,
        still in proptest::option::of((0u64..64, 0u64..64)),
        at_catch_up: bool,
        reading in any_reading(),
        repair_due: bool,
        repairs_gaps: bool,
    ) -> CaughtUpView {
        CaughtUpView {
            frontier,
            first_sequence,
            last_sequence,
            listed_through,
            still_since: still,
            at_catch_up,
            reading,
            repair_due,
            repairs_gaps,
        }
    }
}

proptest! {
    #[test]
    fn trusted_rank_never_exceeds_the_applied_cursor_nor_reaches_the_floor(
        applied in proptest::option::of(0u64..1000),
        floor in proptest::option::of(1u64..1000),
    ) {
        let trusted = trusted_rank(applied, floor);
        prop_assert!(trusted <= applied);
        prop_assert_eq!(trusted.is_some(), applied.is_some());
        if let (Some(t), Some(f)) = (trusted, floor) {
            prop_assert!(t < f);
        }
    }

    #[test]
    fn the_floor_is_never_above_a_needed_put(
        lowest in proptest::option::of(0u64..1000),
        highest in proptest::option::of(0u64..1000),
    ) {
        let floor = relist_floor(lowest, highest);
        prop_assert_eq!(floor.is_some(), lowest.is_some() || highest.is_some());
        if let (Some(f), Some(l)) = (floor, lowest) {
            prop_assert!(f <= l);
        }
        if let (Some(f), Some(h)) = (floor, highest) {
            prop_assert!(f <= h + 1);
        }
    }

    #[test]
    fn a_floor_is_held_iff_the_log_still_reaches_it(
        floor in 0u64..100,
        first in 0u64..100,
        reading in any_reading(),
        all: bool,
    ) {
        let held = confirm_floor(floor, first, reading, all) == FloorConfirmation::Held;
        prop_assert_eq!(held, first <= floor);
    }

    #[test]
    fn a_repair_runs_only_when_due_or_made_due(view in any_view()) {
        let verdict = caught_up_verdict(view);
        if verdict.action == CaughtUpAction::Repair {
            prop_assert!(view.repairs_gaps);
            prop_assert!(view.repair_due || verdict.mark_due);
        }
        // Marking happens only where the head passed the frontier.
        if verdict.mark_due {
            prop_assert!(!resume_window_ok(view.frontier, view.first_sequence));
            prop_assert!(!view.repair_due);
        }
    }

    #[test]
    fn an_overrun_is_only_ever_read_on_an_evicting_bucket_past_the_frontier(view in any_view()) {
        if caught_up_verdict(view).action == CaughtUpAction::Overrun {
            prop_assert_eq!(view.reading, GapReading::RepairNow);
            prop_assert!(!resume_window_ok(view.frontier, view.first_sequence));
        }
    }

    #[test]
    fn on_a_bucket_that_evicts_nothing_a_due_repair_runs_iff_quiet(view in any_view()) {
        prop_assume!(view.reading == GapReading::RepairWhenQuiet && view.repairs_gaps);
        let verdict = caught_up_verdict(view);
        let frontier = view.frontier.max(view.listed_through);
        let quiet = quiet_for_repair(frontier, view.last_sequence, view.still_since, view.at_catch_up);
        let due = view.repair_due || verdict.mark_due;
        prop_assert_eq!(verdict.action == CaughtUpAction::Repair, due && quiet);
    }

    #[test]
    fn a_gap_action_needs_a_gap_on_an_all_scope_watch(
        frontier in 0u64..100,
        delivered in 0u64..100,
        all_scope: bool,
        delta: bool,
        ready: bool,
        repair_due: bool,
        repairs_gaps: bool,
        seen_evicting: bool,
        reading in proptest::option::of(any_reading()),
    ) {
        let view = GapView { all_scope, delta, ready, repair_due, repairs_gaps, seen_evicting, reading };
        let action = gap_action(frontier, delivered, view);
        if action != GapAction::Nothing {
            prop_assert!(all_scope && delivered > frontier + 1);
        }
        if action == GapAction::RepairWhenQuiet {
            prop_assert!(repairs_gaps && !repair_due);
        }
        if action == GapAction::CheckFloor {
            prop_assert!(ready);
        }
    }
}
