//! The artifact pointer and payload pruning (K12): the published cursor
//! never regresses, and pruning never removes what the pointer may need.

use proptest::prelude::*;
use slipstream_protocol::{PointerState, payload_prunable, pointer_publish_allowed};

// ---------------------------------------------------------------- publish

#[test]
fn first_publish_to_an_absent_pointer_is_allowed() {
    assert!(pointer_publish_allowed(PointerState::Absent, 0));
    assert!(pointer_publish_allowed(PointerState::Absent, 1));
    assert!(pointer_publish_allowed(PointerState::Absent, u64::MAX));
}

#[test]
fn publish_over_an_unparseable_pointer_is_allowed() {
    assert!(pointer_publish_allowed(PointerState::Present(None), 0));
    assert!(pointer_publish_allowed(
        PointerState::Present(None),
        u64::MAX
    ));
}

#[test]
fn republishing_at_the_same_rank_is_allowed() {
    assert!(pointer_publish_allowed(PointerState::Present(Some(0)), 0));
    assert!(pointer_publish_allowed(PointerState::Present(Some(7)), 7));
    assert!(pointer_publish_allowed(
        PointerState::Present(Some(u64::MAX)),
        u64::MAX
    ));
}

#[test]
fn publishing_a_newer_rank_is_allowed() {
    assert!(pointer_publish_allowed(PointerState::Present(Some(0)), 1));
    assert!(pointer_publish_allowed(
        PointerState::Present(Some(u64::MAX - 1)),
        u64::MAX
    ));
}

#[test]
fn publishing_an_older_rank_is_refused() {
    assert!(!pointer_publish_allowed(PointerState::Present(Some(1)), 0));
    assert!(!pointer_publish_allowed(PointerState::Present(Some(7)), 6));
    assert!(!pointer_publish_allowed(
        PointerState::Present(Some(u64::MAX)),
        u64::MAX - 1
    ));
    assert!(!pointer_publish_allowed(
        PointerState::Present(Some(u64::MAX)),
        0
    ));
}

// ---------------------------------------------------------------- prune

#[test]
fn aged_out_payload_older_than_the_pointer_is_prunable() {
    assert!(payload_prunable(Some(0), 1, false, true));
    assert!(payload_prunable(Some(u64::MAX - 1), u64::MAX, false, true));
}

#[test]
fn payload_at_the_pointer_rank_is_never_pruned() {
    assert!(!payload_prunable(Some(0), 0, false, true));
    assert!(!payload_prunable(Some(7), 7, false, true));
    assert!(!payload_prunable(Some(u64::MAX), u64::MAX, false, true));
}

#[test]
fn payload_newer_than_the_pointer_is_never_pruned() {
    // A publisher may have uploaded it and not yet moved the pointer.
    assert!(!payload_prunable(Some(1), 0, false, true));
    assert!(!payload_prunable(Some(u64::MAX), 0, false, true));
}

#[test]
fn pointer_target_is_never_pruned() {
    assert!(!payload_prunable(Some(0), 1, true, true));
    assert!(!payload_prunable(Some(0), u64::MAX, true, true));
}

#[test]
fn payload_not_yet_aged_out_is_never_pruned() {
    assert!(!payload_prunable(Some(0), 1, false, false));
    assert!(!payload_prunable(Some(0), u64::MAX, false, false));
}

#[test]
fn unparseable_payload_is_never_pruned() {
    for target in [false, true] {
        for aged in [false, true] {
            for pointer in [0, 1, u64::MAX] {
                assert!(!payload_prunable(None, pointer, target, aged));
            }
        }
    }
}

fn rank() -> impl Strategy<Value = u64> {
    prop_oneof![0_u64..8, any::<u64>(), (u64::MAX - 3)..=u64::MAX]
}

proptest! {
    /// Publishing is allowed exactly when nothing parseable is there, or the
    /// candidate is at or above the current rank.
    #[test]
    fn publish_allowed_iff_candidate_not_below_a_parseable_pointer(
        current in prop_oneof![
            Just(PointerState::Absent),
            prop::option::of(rank()).prop_map(PointerState::Present),
        ],
        candidate in rank(),
    ) {
        let expected = match current {
            PointerState::Present(Some(r)) => candidate >= r,
            PointerState::Absent | PointerState::Present(None) => true,
        };
        prop_assert_eq!(pointer_publish_allowed(current, candidate), expected);
    }

    /// Pruning never removes the target, an unparseable payload, a payload
    /// still young, or one at or above the pointer; everything else goes.
    #[test]
    fn prune_removes_only_aged_non_target_payloads_below_the_pointer(
        payload in prop::option::of(rank()),
        pointer in rank(),
        target in any::<bool>(),
        aged in any::<bool>(),
    ) {
        let prunable = payload_prunable(payload, pointer, target, aged);
        if target || !aged || payload.is_none_or(|p| p >= pointer) {
            prop_assert!(!prunable);
        } else {
            prop_assert!(prunable);
        }
    }
}

// ------------------------------------------------- concurrent publishers

/// The shared pointer: a revision counter for compare-and-swap plus what a
/// reader would parse.
#[derive(Debug, Clone, Copy)]
struct Pointer {
    version: u64,
    state: PointerState,
}

impl Pointer {
    /// Writes `rank` if nobody wrote since `seen`; false on conflict.
    fn compare_and_swap(&mut self, seen: u64, rank: u64) -> bool {
        if self.version != seen {
            return false;
        }
        self.version += 1;
        self.state = PointerState::Present(Some(rank));
        true
    }
}

/// One publisher: the candidate ranks it still wants to publish, and the
/// pointer it last read for the current candidate.
#[derive(Debug, Clone)]
struct Publisher {
    candidates: Vec<u64>,
    read: Option<Pointer>,
}

impl Publisher {
    fn done(&self) -> bool {
        self.candidates.is_empty()
    }

    /// One atomic step: read the pointer, or check what was read and CAS.
    /// Returns the rank it published, if this step published.
    fn step(&mut self, pointer: &mut Pointer) -> Option<u64> {
        let candidate = *self.candidates.last()?;
        let Some(seen) = self.read.take() else {
            self.read = Some(*pointer);
            return None;
        };
        if !pointer_publish_allowed(seen.state, candidate) {
            // Someone published something newer: this candidate is obsolete.
            self.candidates.pop();
            return None;
        }
        if pointer.compare_and_swap(seen.version, candidate) {
            self.candidates.pop();
            Some(candidate)
        } else {
            // Lost the race: re-read on the next step.
            None
        }
    }
}

/// Runs the publishers in the order `schedule` picks, then round-robin to
/// completion. Returns the ranks in publish order and the final pointer.
fn run(mut publishers: Vec<Publisher>, schedule: &[usize]) -> (Vec<u64>, Pointer) {
    let mut pointer = Pointer {
        version: 0,
        state: PointerState::Absent,
    };
    let mut published = Vec::new();
    let count = publishers.len();
    let rest = (0..count).cycle();
    for i in schedule.iter().map(|i| i % count).chain(rest) {
        if publishers.iter().all(Publisher::done) {
            break;
        }
        published.extend(publishers[i].step(&mut pointer));
    }
    (published, pointer)
}

proptest! {
    /// K12 under any interleaving of read-check-CAS publishers: the sequence
    /// of published ranks never decreases, and the pointer ends at the
    /// highest candidate anyone wanted to publish.
    #[test]
    fn pointer_never_regresses_under_concurrent_publishers(
        candidates in prop::collection::vec(
            prop::collection::vec(prop_oneof![0_u64..12, (u64::MAX - 2)..=u64::MAX], 1..4),
            1..5,
        ),
        schedule in prop::collection::vec(any::<usize>(), 0..200),
    ) {
        let highest = candidates.iter().flatten().copied().max();
        let publishers = candidates
            .into_iter()
            .map(|c| Publisher { candidates: c, read: None })
            .collect();
        let (published, pointer) = run(publishers, &schedule);
        prop_assert!(
            published.windows(2).all(|w| w[0] <= w[1]),
            "pointer regressed: {:?}", published
        );
        prop_assert_eq!(pointer.state, PointerState::Present(highest));
        prop_assert_eq!(published.last().copied(), highest);
    }
}

#[test]
fn stale_check_without_cas_would_regress_the_pointer() {
    // Witness that the CAS is load-bearing: two publishers both read an
    // absent pointer; the newer one publishes first. A blind write by the
    // older one would regress the pointer; the CAS refuses it, and on
    // re-reading the check refuses it too.
    let mut pointer = Pointer {
        version: 0,
        state: PointerState::Absent,
    };
    let seen_by_old = pointer;
    let seen_by_new = pointer;
    assert!(pointer_publish_allowed(seen_by_new.state, 9));
    assert!(pointer.compare_and_swap(seen_by_new.version, 9));
    assert!(pointer_publish_allowed(seen_by_old.state, 3));
    assert!(!pointer.compare_and_swap(seen_by_old.version, 3));
    assert!(!pointer_publish_allowed(pointer.state, 3));
    assert_eq!(pointer.state, PointerState::Present(Some(9)));
}
