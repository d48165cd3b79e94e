//! Cursor authority (K5): the high-water revision and replay detection.

use proptest::prelude::*;
use slipstream_protocol::{is_replay, next_high_water};

#[test]
fn first_known_revision_sets_the_high_water() {
    assert_eq!(next_high_water(None, Some(0)), Some(0));
    assert_eq!(next_high_water(None, Some(1)), Some(1));
    assert_eq!(next_high_water(None, Some(u64::MAX)), Some(u64::MAX));
}

#[test]
fn unknown_revision_never_sets_the_high_water() {
    assert_eq!(next_high_water(None, None), None);
}

#[test]
fn unknown_revision_never_lowers_the_high_water() {
    assert_eq!(next_high_water(Some(0), None), Some(0));
    assert_eq!(next_high_water(Some(7), None), Some(7));
    assert_eq!(next_high_water(Some(u64::MAX), None), Some(u64::MAX));
}

#[test]
fn older_revision_never_lowers_the_high_water() {
    assert_eq!(next_high_water(Some(7), Some(6)), Some(7));
    assert_eq!(next_high_water(Some(1), Some(0)), Some(1));
    assert_eq!(next_high_water(Some(u64::MAX), Some(0)), Some(u64::MAX));
}

#[test]
fn equal_revision_keeps_the_high_water() {
    assert_eq!(next_high_water(Some(0), Some(0)), Some(0));
    assert_eq!(next_high_water(Some(7), Some(7)), Some(7));
    assert_eq!(
        next_high_water(Some(u64::MAX), Some(u64::MAX)),
        Some(u64::MAX)
    );
}

#[test]
fn newer_revision_raises_the_high_water() {
    assert_eq!(next_high_water(Some(0), Some(1)), Some(1));
    assert_eq!(next_high_water(Some(7), Some(8)), Some(8));
    assert_eq!(
        next_high_water(Some(u64::MAX - 1), Some(u64::MAX)),
        Some(u64::MAX)
    );
}

#[test]
fn delivery_at_the_applied_cursor_is_a_replay() {
    assert!(is_replay(Some(0), Some(0)));
    assert!(is_replay(Some(7), Some(7)));
    assert!(is_replay(Some(u64::MAX), Some(u64::MAX)));
}

#[test]
fn delivery_below_the_applied_cursor_is_a_replay() {
    assert!(is_replay(Some(1), Some(0)));
    assert!(is_replay(Some(u64::MAX), Some(0)));
}

#[test]
fn delivery_above_the_applied_cursor_is_not_a_replay() {
    assert!(!is_replay(Some(0), Some(1)));
    assert!(!is_replay(Some(u64::MAX - 1), Some(u64::MAX)));
}

#[test]
fn delivery_without_an_applied_cursor_is_not_a_replay() {
    assert!(!is_replay(None, Some(0)));
    assert!(!is_replay(None, Some(u64::MAX)));
}

#[test]
fn delivery_with_unknown_revision_is_not_a_replay() {
    assert!(!is_replay(Some(0), None));
    assert!(!is_replay(Some(u64::MAX), None));
    assert!(!is_replay(None, None));
}

fn revision() -> impl Strategy<Value = u64> {
    prop_oneof![any::<u64>(), 0_u64..4, (u64::MAX - 3)..=u64::MAX]
}

proptest! {
    /// Folding any sequence of deliveries, the high water never decreases
    /// and always equals the maximum of the known revisions so far.
    #[test]
    fn high_water_is_the_running_maximum_of_known_revisions(
        start in prop::option::of(revision()),
        received in prop::collection::vec(prop::option::of(revision()), 0..64),
    ) {
        let mut high = start;
        let mut known: Vec<u64> = start.into_iter().collect();
        for r in received {
            let next = next_high_water(high, r);
            if let (Some(before), Some(after)) = (high, next) {
                prop_assert!(after >= before, "{} lowered to {}", before, after);
            }
            prop_assert!(high.is_none() || next.is_some(), "a known high water was forgotten");
            known.extend(r);
            prop_assert_eq!(next, known.iter().copied().max());
            high = next;
        }
    }

    /// A delivery is a replay exactly when both revisions are known and the
    /// delivered one is at or below the applied one.
    #[test]
    fn replay_is_exactly_delivered_at_or_below_applied(
        applied in prop::option::of(revision()),
        delivered in prop::option::of(revision()),
    ) {
        let expected = match (applied, delivered) {
            (Some(a), Some(d)) => d <= a,
            _ => false,
        };
        prop_assert_eq!(is_replay(applied, delivered), expected);
    }

    /// Dropping replays and folding the rest into the high water applies
    /// revisions in strictly increasing order (O3), whatever order and
    /// duplication the deliveries come in.
    #[test]
    fn dropping_replays_applies_strictly_increasing_revisions(
        deliveries in prop::collection::vec(0_u64..16, 0..64),
    ) {
        let mut applied: Option<u64> = None;
        let mut order = Vec::new();
        for d in deliveries {
            if is_replay(applied, Some(d)) {
                continue;
            }
            order.push(d);
            applied = next_high_water(applied, Some(d));
        }
        prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "applied out of order: {:?}", order);
    }
}
