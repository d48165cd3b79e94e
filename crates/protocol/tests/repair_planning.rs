//! Repair planning rules: K6 (restore gate), K7 (listing is the truth), K8
//! (repair plan), K9 (cursorless start), K11 (supersession-only gap) and K14
//! (mass-delete guard).

use core::time::Duration;

use proptest::prelude::*;
use slipstream_protocol::{
    Eviction, GapReading, ListingTruth, MassDeleteLimit, MassDeleteVerdict, RepairMode, RepairPlan,
    cursorless_start_needs_repair, gap_holds_no_eviction, listing_is_truth, listing_truth,
    mass_delete_guard, plan_repair, quiet_for_repair, read_gap, restore_ahead, restore_allowed,
    resume_window_ok,
};

const MODES: [RepairMode; 4] = [
    RepairMode::None,
    RepairMode::Relist,
    RepairMode::Restore,
    RepairMode::Auto,
];
const LISTING: [Option<bool>; 3] = [None, Some(false), Some(true)];

// ---------------------------------------------------------------- K6

#[test]
fn artifact_at_the_same_rank_as_the_fold_is_not_ahead() {
    assert!(!restore_ahead(0, 0));
    assert!(!restore_ahead(1, 1));
    assert!(!restore_ahead(u64::MAX, u64::MAX));
}

#[test]
fn artifact_one_revision_ahead_of_the_fold_is_ahead() {
    assert!(restore_ahead(1, 0));
    assert!(restore_ahead(u64::MAX, u64::MAX - 1));
}

#[test]
fn artifact_behind_the_fold_is_not_ahead() {
    assert!(!restore_ahead(0, 1));
    assert!(!restore_ahead(0, u64::MAX));
}

#[test]
fn restore_of_an_ahead_artifact_inside_the_window_is_allowed() {
    assert!(restore_allowed(41, 10, 42));
    assert!(restore_allowed(1, 0, 0));
    assert!(restore_allowed(u64::MAX, 0, u64::MAX));
}

#[test]
fn restore_of_an_artifact_whose_cursor_fell_off_the_head_is_refused() {
    assert!(!restore_allowed(41, 10, 43));
    assert!(!restore_allowed(1, 0, 3));
}

#[test]
fn restore_of_an_artifact_not_ahead_is_refused_even_inside_the_window() {
    assert!(!restore_allowed(10, 10, 1));
    assert!(!restore_allowed(9, 10, 1));
    assert!(!restore_allowed(u64::MAX, u64::MAX, 0));
}

proptest! {
    /// K6: a restore is allowed exactly when the artifact is strictly ahead
    /// and a resume from it is still inside the log.
    #[test]
    fn restore_allowed_is_ahead_and_inside_the_window(
        artifact in prop_oneof![any::<u64>(), 0_u64..4, (u64::MAX - 3)..=u64::MAX],
        local in prop_oneof![any::<u64>(), 0_u64..4, (u64::MAX - 3)..=u64::MAX],
        first in prop_oneof![any::<u64>(), 0_u64..4, (u64::MAX - 3)..=u64::MAX],
    ) {
        prop_assert_eq!(restore_ahead(artifact, local), artifact > local);
        let inside = u128::from(first) <= u128::from(artifact) + 1;
        prop_assert_eq!(restore_allowed(artifact, local, first), artifact > local && inside);
        prop_assert_eq!(inside, resume_window_ok(artifact, first));
    }
}

// ---------------------------------------------------------------- K7

#[test]
fn listing_is_truth_truth_table() {
    // (evicts_current_values, first_revision, seen_evicting, expected)
    let table = [
        (false, 0, false, true),
        (false, 1, false, true),
        (false, 2, false, true),
        (false, u64::MAX, false, true),
        (true, 0, false, true),
        (true, 1, false, true),
        (true, 2, false, false),
        (true, u64::MAX, false, false),
        (false, 0, true, false),
        (false, 1, true, false),
        (false, 2, true, false),
        (false, u64::MAX, true, false),
        (true, 0, true, false),
        (true, 1, true, false),
        (true, 2, true, false),
        (true, u64::MAX, true, false),
    ];
    for (evicts, first, seen, expected) in table {
        assert_eq!(
            listing_is_truth(evicts, first, seen),
            expected,
            "evicts={evicts} first={first} seen={seen}"
        );
    }
}

#[test]
fn listing_of_an_evicting_bucket_whose_head_moved_is_not_the_truth() {
    assert!(!listing_is_truth(true, 2, false));
}

#[test]
fn listing_after_the_memo_saw_eviction_is_never_the_truth() {
    assert!(!listing_is_truth(false, 1, true));
}

#[test]
fn per_message_ttl_alone_keeps_the_listing_the_truth() {
    // nats-py's default bucket: allow_msg_ttl, no max_age, discard new.
    let nats_py = Eviction {
        per_message_ttl: true,
        ..Eviction::default()
    };
    assert!(!nats_py.evicts_current_values());
    assert!(!nats_py.age_is_only_eviction());
    assert_eq!(
        listing_truth(nats_py, 129, false),
        ListingTruth::NothingEvicts
    );
    assert!(listing_truth(nats_py, u64::MAX, false).is_truth());
}

// ---------------------------------------------------------------- K11 generalised

fn eviction(max_age: bool, discard_old_limit: bool, per_message_ttl: bool) -> Eviction {
    Eviction {
        max_age,
        discard_old_limit,
        per_message_ttl,
    }
}

#[test]
fn read_gap_truth_table() {
    for max_age in [false, true] {
        for limit in [false, true] {
            for ttl in [false, true] {
                let e = eviction(max_age, limit, ttl);
                let expected = if max_age || limit {
                    GapReading::RepairNow
                } else {
                    GapReading::RepairWhenQuiet
                };
                assert_eq!(read_gap(e), expected, "{e:?}");
                assert_eq!(read_gap(e).repairs_now(), max_age || limit);
            }
        }
    }
}

#[test]
fn a_gap_on_a_nats_py_bucket_waits_for_quiet_instead_of_repairing_now() {
    // nats-py 2.16: allow_msg_ttl, discard new, no max_age.
    assert_eq!(
        read_gap(eviction(false, false, true)),
        GapReading::RepairWhenQuiet
    );
}

#[test]
fn a_repair_waits_for_a_quiet_bucket() {
    // A watch that just caught up at the head, not a repair's own.
    assert!(quiet_for_repair(10, 10, None, true));
    assert!(quiet_for_repair(11, 10, Some((3, 4)), true));
    assert!(!quiet_for_repair(9, 10, None, true));
    // Live, or a repair's state-sync: reaching the head is not enough.
    assert!(!quiet_for_repair(10, 10, None, false));
    assert!(!quiet_for_repair(10, 10, Some((9, 10)), false));
    // Behind the head and the head moving: writers are busy.
    assert!(!quiet_for_repair(9, 12, Some((9, 10)), false));
    // The head still but the frontier moving: deliveries are arriving.
    assert!(!quiet_for_repair(9, 10, Some((7, 10)), false));
    // Nothing moved since the last look: quiet, at the head or not.
    assert!(quiet_for_repair(9, 10, Some((9, 10)), false));
    assert!(quiet_for_repair(10, 10, Some((10, 10)), false));
}

proptest! {
    #[test]
    fn quiet_needs_stillness_unless_a_first_catch_up_reached_the_head(
        f in any::<u64>(),
        l in any::<u64>(),
        b in proptest::option::of((any::<u64>(), any::<u64>())),
        at_head in any::<bool>(),
    ) {
        if quiet_for_repair(f, l, b, at_head) {
            prop_assert!(b == Some((f, l)) || (at_head && f >= l));
        }
    }
}

#[test]
fn age_or_a_discard_old_limit_evicts_and_says_which() {
    let by_age = Eviction {
        max_age: true,
        ..Eviction::default()
    };
    let by_limit = Eviction {
        discard_old_limit: true,
        per_message_ttl: true,
        ..Eviction::default()
    };
    assert!(by_age.evicts_current_values() && by_age.age_is_only_eviction());
    assert!(by_limit.evicts_current_values() && !by_limit.age_is_only_eviction());
    assert_eq!(listing_truth(by_age, 2, false), ListingTruth::EvictedByAge);
    assert_eq!(
        listing_truth(by_limit, 2, false),
        ListingTruth::EvictedByLimit
    );
    assert_eq!(
        listing_truth(by_age, 1, false),
        ListingTruth::NothingEvictedYet
    );
    assert_eq!(listing_truth(by_age, 1, true), ListingTruth::EvictionSeen);
    // A TTL can end a message before max_age does: K11 may not assume age.
    let age_and_ttl = Eviction {
        max_age: true,
        per_message_ttl: true,
        ..Eviction::default()
    };
    assert!(!age_and_ttl.age_is_only_eviction());
}

proptest! {
    #[test]
    fn listing_truth_is_k7_with_a_reason(
        max_age: bool,
        discard_old_limit: bool,
        per_message_ttl: bool,
        first: u64,
        seen: bool,
    ) {
        let e = Eviction { max_age, discard_old_limit, per_message_ttl };
        let verdict = listing_truth(e, first, seen);
        prop_assert_eq!(
            verdict.is_truth(),
            listing_is_truth(e.evicts_current_values(), first, seen)
        );
        prop_assert!(!verdict.reason().is_empty());
    }
}

// ---------------------------------------------------------------- K8

#[test]
fn plan_repair_truth_table() {
    use RepairPlan::{RefuseRelist, Relist, RelistOnly, Restore};
    let expected = [
        (RepairMode::None, [RelistOnly, RelistOnly, RelistOnly]),
        (RepairMode::Relist, [RefuseRelist, RefuseRelist, Relist]),
        (RepairMode::Restore, [Restore, Restore, Restore]),
        (RepairMode::Auto, [Restore, Restore, Relist]),
    ];
    for (mode, plans) in expected {
        for (listing, plan) in LISTING.into_iter().zip(plans) {
            assert_eq!(
                plan_repair(mode, listing),
                plan,
                "mode={mode:?} listing={listing:?}"
            );
        }
    }
}

#[test]
fn relist_is_never_planned_unless_the_listing_is_known_to_be_the_truth() {
    for mode in MODES {
        for listing in [None, Some(false)] {
            assert_ne!(plan_repair(mode, listing), RepairPlan::Relist, "{mode:?}");
        }
    }
}

#[test]
fn default_repair_mode_is_auto() {
    assert_eq!(RepairMode::default(), RepairMode::Auto);
}

// ---------------------------------------------------------------- K9

#[test]
fn cursorless_start_truth_table() {
    // (mode, fold_has_data, [listing None, Some(false), Some(true)])
    let table = [
        (RepairMode::None, false, [false, false, false]),
        (RepairMode::None, true, [true, true, true]),
        (RepairMode::Relist, false, [false, false, false]),
        (RepairMode::Relist, true, [true, true, true]),
        (RepairMode::Restore, false, [true, true, false]),
        (RepairMode::Restore, true, [true, true, true]),
        (RepairMode::Auto, false, [true, true, false]),
        (RepairMode::Auto, true, [true, true, true]),
    ];
    for (mode, data, row) in table {
        for (listing, expected) in LISTING.into_iter().zip(row) {
            assert_eq!(
                cursorless_start_needs_repair(mode, data, listing),
                expected,
                "mode={mode:?} data={data} listing={listing:?}"
            );
        }
    }
}

#[test]
fn cursorless_start_over_a_non_empty_fold_always_repairs() {
    for mode in MODES {
        for listing in LISTING {
            assert!(cursorless_start_needs_repair(mode, true, listing));
        }
    }
}

// ---------------------------------------------------------------- K11

const TEN_SECONDS: Duration = Duration::from_secs(10);

#[test]
fn cursor_message_exactly_half_max_age_old_holds_no_eviction() {
    assert!(gap_holds_no_eviction(
        Some(Duration::from_secs(5)),
        Some(TEN_SECONDS),
        true
    ));
}

#[test]
fn cursor_message_one_nanosecond_past_half_max_age_may_hide_eviction() {
    let age = Duration::from_secs(5) + Duration::from_nanos(1);
    assert!(!gap_holds_no_eviction(Some(age), Some(TEN_SECONDS), true));
}

#[test]
fn odd_nanosecond_max_age_rounds_half_down() {
    // Half of 3ns is 1.5ns: 1ns is within it, 2ns is not.
    let max = Some(Duration::from_nanos(3));
    assert!(gap_holds_no_eviction(
        Some(Duration::from_nanos(1)),
        max,
        true
    ));
    assert!(!gap_holds_no_eviction(
        Some(Duration::from_nanos(2)),
        max,
        true
    ));
}

#[test]
fn fresh_cursor_message_holds_no_eviction() {
    assert!(gap_holds_no_eviction(
        Some(Duration::ZERO),
        Some(TEN_SECONDS),
        true
    ));
    assert!(gap_holds_no_eviction(
        Some(Duration::ZERO),
        Some(Duration::from_nanos(1)),
        true
    ));
}

#[test]
fn zero_max_age_never_qualifies() {
    assert!(!gap_holds_no_eviction(
        Some(Duration::ZERO),
        Some(Duration::ZERO),
        true
    ));
}

#[test]
fn unknown_cursor_message_age_never_qualifies() {
    assert!(!gap_holds_no_eviction(None, Some(TEN_SECONDS), true));
    assert!(!gap_holds_no_eviction(None, Some(Duration::MAX), true));
}

#[test]
fn unknown_max_age_never_qualifies() {
    assert!(!gap_holds_no_eviction(Some(Duration::ZERO), None, true));
}

#[test]
fn bucket_with_other_eviction_than_age_never_qualifies() {
    assert!(!gap_holds_no_eviction(
        Some(Duration::ZERO),
        Some(TEN_SECONDS),
        false
    ));
}

#[test]
fn largest_max_age_does_not_overflow() {
    let half = Duration::MAX / 2;
    assert!(gap_holds_no_eviction(Some(half), Some(Duration::MAX), true));
    assert!(!gap_holds_no_eviction(
        Some(half + Duration::from_nanos(1)),
        Some(Duration::MAX),
        true
    ));
    assert!(!gap_holds_no_eviction(
        Some(Duration::MAX),
        Some(Duration::MAX),
        true
    ));
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0_u64..64).prop_map(Duration::from_nanos),
        (any::<u64>(), 0_u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        Just(Duration::MAX),
    ]
}

proptest! {
    /// K11: qualifies exactly when age is the only eviction, both ages are
    /// known, `max_age` is non-zero and `2 * age <= max_age` (in exact
    /// nanoseconds).
    #[test]
    fn supersession_only_gap_is_exactly_at_most_half_max_age(
        age in prop::option::of(duration()),
        max in prop::option::of(duration()),
        only_age in any::<bool>(),
    ) {
        let expected = match (age, max) {
            (Some(a), Some(m)) => only_age && !m.is_zero() && 2 * a.as_nanos() <= m.as_nanos(),
            _ => false,
        };
        prop_assert_eq!(gap_holds_no_eviction(age, max, only_age), expected);
    }
}

// ---------------------------------------------------------------- K14

const HALF: MassDeleteLimit = MassDeleteLimit::from_parts_per_million(500_000);

#[test]
fn deleting_exactly_the_limit_proceeds() {
    assert_eq!(mass_delete_guard(10, 5, HALF), MassDeleteVerdict::Proceed);
    assert_eq!(
        mass_delete_guard(1_000_000, 1, MassDeleteLimit::from_parts_per_million(1)),
        MassDeleteVerdict::Proceed
    );
}

#[test]
fn deleting_one_more_than_the_limit_holds() {
    assert_eq!(mass_delete_guard(10, 6, HALF), MassDeleteVerdict::Hold);
    assert_eq!(
        mass_delete_guard(1_000_000, 2, MassDeleteLimit::from_parts_per_million(1)),
        MassDeleteVerdict::Hold
    );
}

#[test]
fn deleting_everything_from_a_non_empty_fold_holds_even_at_the_whole_limit() {
    let whole = MassDeleteLimit::from_percent(100);
    assert_eq!(mass_delete_guard(1, 1, whole), MassDeleteVerdict::Hold);
    assert_eq!(mass_delete_guard(10, 10, whole), MassDeleteVerdict::Hold);
    assert_eq!(
        mass_delete_guard(u64::MAX, u64::MAX, whole),
        MassDeleteVerdict::Hold
    );
}

#[test]
fn deleting_all_but_one_key_proceeds_at_the_whole_limit() {
    let whole = MassDeleteLimit::from_percent(100);
    assert_eq!(mass_delete_guard(10, 9, whole), MassDeleteVerdict::Proceed);
    assert_eq!(
        mass_delete_guard(u64::MAX, u64::MAX - 1, whole),
        MassDeleteVerdict::Proceed
    );
}

#[test]
fn deleting_more_keys_than_the_fold_holds() {
    let whole = MassDeleteLimit::from_percent(100);
    assert_eq!(mass_delete_guard(10, 11, whole), MassDeleteVerdict::Hold);
    assert_eq!(mass_delete_guard(0, 1, whole), MassDeleteVerdict::Hold);
    assert_eq!(
        mass_delete_guard(0, u64::MAX, whole),
        MassDeleteVerdict::Hold
    );
}

#[test]
fn zero_deletions_always_proceed() {
    let zero = MassDeleteLimit::from_parts_per_million(0);
    for fold in [0, 1, 10, u64::MAX] {
        for limit in [zero, HALF, MassDeleteLimit::from_percent(100)] {
            assert_eq!(
                mass_delete_guard(fold, 0, limit),
                MassDeleteVerdict::Proceed
            );
        }
    }
}

#[test]
fn zero_limit_holds_any_deletion() {
    let zero = MassDeleteLimit::from_parts_per_million(0);
    assert_eq!(mass_delete_guard(10, 1, zero), MassDeleteVerdict::Hold);
    assert_eq!(
        mass_delete_guard(u64::MAX, 1, zero),
        MassDeleteVerdict::Hold
    );
}

#[test]
fn mass_delete_guard_near_u64_max_does_not_overflow() {
    // u64::MAX is odd: (MAX - 1) / 2 is just under half, one more just over.
    let under = u64::MAX / 2;
    assert_eq!(
        mass_delete_guard(u64::MAX, under, HALF),
        MassDeleteVerdict::Proceed
    );
    assert_eq!(
        mass_delete_guard(u64::MAX, under + 1, HALF),
        MassDeleteVerdict::Hold
    );
    // u64::MAX - 1 is even: exactly half proceeds.
    assert_eq!(
        mass_delete_guard(u64::MAX - 1, (u64::MAX - 1) / 2, HALF),
        MassDeleteVerdict::Proceed
    );
    assert_eq!(
        mass_delete_guard(u64::MAX - 1, (u64::MAX - 1) / 2 + 1, HALF),
        MassDeleteVerdict::Hold
    );
}

#[test]
fn mass_delete_limit_is_clamped_to_the_whole_fold() {
    let whole = MassDeleteLimit::WHOLE;
    assert_eq!(
        MassDeleteLimit::from_percent(100).parts_per_million(),
        whole
    );
    assert_eq!(
        MassDeleteLimit::from_percent(101).parts_per_million(),
        whole
    );
    assert_eq!(
        MassDeleteLimit::from_percent(u32::MAX).parts_per_million(),
        whole
    );
    assert_eq!(
        MassDeleteLimit::from_parts_per_million(whole + 1).parts_per_million(),
        whole
    );
    assert_eq!(
        MassDeleteLimit::from_parts_per_million(u32::MAX).parts_per_million(),
        whole
    );
    assert_eq!(MassDeleteLimit::from_percent(0).parts_per_million(), 0);
    assert_eq!(MassDeleteLimit::from_percent(1).parts_per_million(), 10_000);
}

#[test]
fn default_mass_delete_limit_is_half_the_fold() {
    assert_eq!(MassDeleteLimit::default(), HALF);
}

fn count() -> impl Strategy<Value = u64> {
    prop_oneof![0_u64..32, any::<u64>(), (u64::MAX - 3)..=u64::MAX]
}

proptest! {
    /// K14 against a count formulation: the most keys a repair may delete is
    /// `floor(fold_len * limit)`, and never all of a non-empty fold.
    #[test]
    fn mass_delete_guard_proceeds_iff_within_the_allowed_count(
        fold in count(),
        deletions in count(),
        ppm in prop_oneof![0_u32..=1_000_000, Just(500_000), Just(1_000_000)],
    ) {
        let limit = MassDeleteLimit::from_parts_per_million(ppm);
        let allowed = u128::from(fold) * u128::from(ppm) / 1_000_000;
        let d = u128::from(deletions);
        let proceed = deletions == 0 || (d <= allowed && deletions < fold);
        let expected = if proceed { MassDeleteVerdict::Proceed } else { MassDeleteVerdict::Hold };
        prop_assert_eq!(mass_delete_guard(fold, deletions, limit), expected);
    }

    /// K14 is monotone: deleting more never turns a hold into proceed, and a
    /// larger limit never turns proceed into a hold.
    #[test]
    fn mass_delete_guard_is_monotone(
        fold in count(),
        a in count(),
        b in count(),
        p in 0_u32..=1_000_000,
        q in 0_u32..=1_000_000,
    ) {
        let (fewer, more) = (a.min(b), a.max(b));
        let (small, large) = (
            MassDeleteLimit::from_parts_per_million(p.min(q)),
            MassDeleteLimit::from_parts_per_million(p.max(q)),
        );
        if mass_delete_guard(fold, fewer, small) == MassDeleteVerdict::Hold {
            prop_assert_eq!(mass_delete_guard(fold, more, small), MassDeleteVerdict::Hold);
        }
        if mass_delete_guard(fold, fewer, small) == MassDeleteVerdict::Proceed {
            prop_assert_eq!(mass_delete_guard(fold, fewer, large), MassDeleteVerdict::Proceed);
        }
    }
}
