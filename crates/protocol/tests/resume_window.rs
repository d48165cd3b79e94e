//! Resume and live-watch window rules: K1 (resume window), K2 (resume start
//! never wraps), K3 (cursor beyond the log), K4 (live floor guard) and K13
//! (projection start).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use slipstream_protocol::{
    FloorVerdict, StreamStart, cursor_beyond_log, floor_verdict, gap_needs_floor_check,
    resume_start_sequence, resume_window_ok, stream_start,
};

// ---------------------------------------------------------------- K1 edges

#[test]
fn resume_at_first_sequence_minus_one_is_inside_the_window() {
    assert!(resume_window_ok(41, 42));
    assert!(resume_window_ok(0, 1));
}

#[test]
fn resume_below_first_sequence_is_expired() {
    assert!(!resume_window_ok(41, 43));
    assert!(!resume_window_ok(0, 2));
    assert!(!resume_window_ok(1, 3));
}

#[test]
fn resume_with_cursor_equal_to_first_sequence_is_inside_the_window() {
    assert!(resume_window_ok(42, 42));
    assert!(resume_window_ok(1, 1));
    assert!(resume_window_ok(0, 0));
}

#[test]
fn resume_from_zero_on_a_never_evicted_stream_is_inside_the_window() {
    // A stream that never evicted reports first sequence 1 (or 0 when empty).
    assert!(resume_window_ok(0, 0));
    assert!(resume_window_ok(0, 1));
}

#[test]
fn resume_with_cursor_ahead_of_first_sequence_is_inside_the_window() {
    assert!(resume_window_ok(1_000, 1));
    assert!(resume_window_ok(u64::MAX, 0));
}

#[test]
fn resume_at_u64_max_does_not_overflow_and_needs_nothing() {
    // Nothing exists above u64::MAX, so nothing needed can have been evicted.
    assert!(resume_window_ok(u64::MAX, u64::MAX));
    assert!(resume_window_ok(u64::MAX, 1));
    assert!(resume_window_ok(u64::MAX - 1, u64::MAX));
    assert!(!resume_window_ok(u64::MAX - 2, u64::MAX));
}

#[test]
fn resume_after_zero_against_a_fully_evicted_head_is_expired() {
    assert!(!resume_window_ok(0, u64::MAX));
}

// ---------------------------------------------------------------- K2 edges

#[test]
fn resume_start_is_the_sequence_after_the_cursor() {
    assert_eq!(resume_start_sequence(0), Some(1));
    assert_eq!(resume_start_sequence(1), Some(2));
    assert_eq!(resume_start_sequence(41), Some(42));
}

#[test]
fn resume_start_after_u64_max_is_none_instead_of_wrapping_to_zero() {
    assert_eq!(resume_start_sequence(u64::MAX), None);
    assert_eq!(resume_start_sequence(u64::MAX - 1), Some(u64::MAX));
}

// ---------------------------------------------------------------- K3 edges

#[test]
fn cursor_equal_to_last_sequence_is_not_beyond_the_log() {
    assert!(!cursor_beyond_log(0, 0));
    assert!(!cursor_beyond_log(1, 1));
    assert!(!cursor_beyond_log(u64::MAX, u64::MAX));
}

#[test]
fn cursor_one_past_last_sequence_is_beyond_the_log() {
    assert!(cursor_beyond_log(1, 0));
    assert!(cursor_beyond_log(42, 41));
    assert!(cursor_beyond_log(u64::MAX, u64::MAX - 1));
}

#[test]
fn cursor_behind_last_sequence_is_not_beyond_the_log() {
    assert!(!cursor_beyond_log(0, 1));
    assert!(!cursor_beyond_log(0, u64::MAX));
}

#[test]
fn cursor_into_a_recreated_empty_bucket_is_beyond_the_log() {
    // A bucket recreated empty reports last sequence 0.
    assert!(cursor_beyond_log(1, 0));
    assert!(cursor_beyond_log(u64::MAX, 0));
}

// ---------------------------------------------------------------- K4 edges

#[test]
fn dense_delivery_needs_no_floor_check() {
    assert!(!gap_needs_floor_check(0, 1));
    assert!(!gap_needs_floor_check(41, 42));
    assert!(!gap_needs_floor_check(u64::MAX - 1, u64::MAX));
}

#[test]
fn delivery_skipping_one_sequence_needs_a_floor_check() {
    assert!(gap_needs_floor_check(0, 2));
    assert!(gap_needs_floor_check(41, 43));
    assert!(gap_needs_floor_check(0, u64::MAX));
}

#[test]
fn replayed_or_equal_delivery_needs_no_floor_check() {
    assert!(!gap_needs_floor_check(5, 5));
    assert!(!gap_needs_floor_check(5, 0));
    assert!(!gap_needs_floor_check(0, 0));
}

#[test]
fn frontier_at_u64_max_never_needs_a_floor_check() {
    assert!(!gap_needs_floor_check(u64::MAX, u64::MAX));
    assert!(!gap_needs_floor_check(u64::MAX, 0));
}

#[test]
fn gap_with_first_sequence_right_after_frontier_is_benign() {
    assert_eq!(floor_verdict(41, 42), FloorVerdict::Benign);
    assert_eq!(floor_verdict(0, 1), FloorVerdict::Benign);
    assert_eq!(floor_verdict(u64::MAX, u64::MAX), FloorVerdict::Benign);
}

#[test]
fn head_eviction_past_the_frontier_is_an_overrun() {
    assert_eq!(floor_verdict(41, 43), FloorVerdict::Overrun);
    assert_eq!(floor_verdict(0, 2), FloorVerdict::Overrun);
    assert_eq!(floor_verdict(0, u64::MAX), FloorVerdict::Overrun);
}

// ---------------------------------------------------------------- K13 edges

#[test]
fn projection_without_since_reads_everything_retained() {
    assert_eq!(stream_start(None), Some(StreamStart::All));
}

#[test]
fn projection_since_n_starts_at_n_plus_one() {
    assert_eq!(stream_start(Some(0)), Some(StreamStart::ByStart(1)));
    assert_eq!(stream_start(Some(1)), Some(StreamStart::ByStart(2)));
    assert_eq!(
        stream_start(Some(u64::MAX - 1)),
        Some(StreamStart::ByStart(u64::MAX))
    );
}

#[test]
fn projection_since_u64_max_has_no_start_instead_of_wrapping() {
    assert_eq!(stream_start(Some(u64::MAX)), None);
}

// ---------------------------------------------------------------- properties

/// A small stream: sequences `1..=last` were written and `retained` is
/// what retention still holds (head and interior eviction mixed).
#[derive(Debug, Clone)]
struct SmallStream {
    last: u64,
    retained: BTreeSet<u64>,
}

impl SmallStream {
    /// The first sequence the server reports: the lowest retained one, or
    /// `last + 1` when nothing is retained.
    fn first_sequence(&self) -> u64 {
        self.retained.first().copied().unwrap_or(self.last + 1)
    }
}

fn small_stream() -> impl Strategy<Value = SmallStream> {
    (
        0_u64..40,
        0_u64..41,
        prop::collection::vec(any::<bool>(), 40),
    )
        .prop_map(|(last, head, holes)| {
            let retained = (1..=last)
                .filter(|s| *s > head && !holes[usize::try_from(*s - 1).unwrap_or(0)])
                .collect();
            SmallStream { last, retained }
        })
}

proptest! {
    /// K1 against a set model: the resume after `rev` needs every written
    /// sequence above `rev`. A missing sequence with something retained below
    /// it is an interior hole (a superseded revision, harmless); one with
    /// nothing retained below it fell off the head and is lost.
    #[test]
    fn resume_window_ok_iff_no_needed_sequence_was_head_evicted(
        stream in small_stream(),
        rev in 0_u64..50,
    ) {
        let needed = (1..=stream.last).filter(|s| *s > rev);
        let head_evicted = |s: u64| {
            !stream.retained.contains(&s) && stream.retained.range(..s).next().is_none()
        };
        let lost: BTreeSet<u64> = needed.filter(|s| head_evicted(*s)).collect();
        prop_assert_eq!(
            resume_window_ok(rev, stream.first_sequence()),
            lost.is_empty(),
            "lost {:?}", lost
        );
    }

    /// K1 near u64::MAX, where `revision + 1` would overflow: compare with a
    /// 128-bit formulation of "the first needed sequence is still retained".
    #[test]
    fn resume_window_ok_matches_wide_arithmetic_everywhere(
        rev in prop_oneof![any::<u64>(), (u64::MAX - 4)..=u64::MAX, 0_u64..4],
        first in prop_oneof![any::<u64>(), (u64::MAX - 4)..=u64::MAX, 0_u64..4],
    ) {
        let first_needed = u128::from(rev) + 1;
        prop_assert_eq!(resume_window_ok(rev, first), u128::from(first) <= first_needed);
    }

    /// K2: never wraps; `None` only at u64::MAX, otherwise `rev + 1`.
    #[test]
    fn resume_start_never_wraps(rev in prop_oneof![any::<u64>(), (u64::MAX - 2)..=u64::MAX]) {
        match resume_start_sequence(rev) {
            None => prop_assert_eq!(rev, u64::MAX),
            Some(start) => {
                prop_assert_ne!(rev, u64::MAX);
                prop_assert_eq!(u128::from(start), u128::from(rev) + 1);
            }
        }
    }

    /// K3: exactly `revision > last_sequence`, also near the ends.
    #[test]
    fn cursor_beyond_log_is_exactly_revision_above_last(
        rev in prop_oneof![any::<u64>(), 0_u64..4, (u64::MAX - 4)..=u64::MAX],
        last in prop_oneof![any::<u64>(), 0_u64..4, (u64::MAX - 4)..=u64::MAX],
    ) {
        prop_assert_eq!(cursor_beyond_log(rev, last), rev > last);
    }

    /// K4: a watch delivering every sequence in order never triggers a floor
    /// check.
    #[test]
    fn dense_deliveries_never_need_a_floor_check(start in any::<u64>(), len in 0_u64..64) {
        let mut frontier = start;
        for _ in 0..len {
            let Some(next) = frontier.checked_add(1) else { break };
            prop_assert!(!gap_needs_floor_check(frontier, next));
            frontier = next;
        }
    }

    /// K4: a floor check triggers exactly when at least one sequence was
    /// skipped, and its verdict agrees with K1 for the frontier.
    #[test]
    fn floor_verdict_is_k1_applied_to_the_frontier(
        frontier in prop_oneof![any::<u64>(), 0_u64..4, (u64::MAX - 4)..=u64::MAX],
        delivered in prop_oneof![any::<u64>(), 0_u64..4, (u64::MAX - 4)..=u64::MAX],
        first in prop_oneof![any::<u64>(), 0_u64..4, (u64::MAX - 4)..=u64::MAX],
    ) {
        let skipped = u128::from(delivered) > u128::from(frontier) + 1;
        prop_assert_eq!(gap_needs_floor_check(frontier, delivered), skipped);
        let expected = if resume_window_ok(frontier, first) {
            FloorVerdict::Benign
        } else {
            FloorVerdict::Overrun
        };
        prop_assert_eq!(floor_verdict(frontier, first), expected);
    }

    /// K13: the projection start is K2's start wrapped in `ByStart`, `All`
    /// without a `since`, and nothing when K2 has no next sequence.
    #[test]
    fn stream_start_follows_the_no_wrap_rule(
        since in prop::option::of(prop_oneof![any::<u64>(), (u64::MAX - 2)..=u64::MAX]),
    ) {
        let expected = match since {
            None => Some(StreamStart::All),
            Some(n) => resume_start_sequence(n).map(StreamStart::ByStart),
        };
        prop_assert_eq!(stream_start(since), expected);
        if let Some(StreamStart::ByStart(start)) = stream_start(since) {
            prop_assert!(start > since.unwrap_or(0));
        }
    }
}

// ------------------------------------------- K1 soundness on a key-value log

/// One message of a modelled KV stream: a key and its new value (`None` is
/// a delete marker).
type Message = (u8, Option<u8>);

/// Replays `messages` (sequence = index + 1) whose sequence satisfies
/// `keep` into a last-write-wins fold.
fn replay(fold: &mut BTreeMap<u8, u8>, messages: &[Message], keep: impl Fn(u64) -> bool) {
    for (seq, (key, value)) in (1_u64..).zip(messages) {
        if !keep(seq) {
            continue;
        }
        match value {
            Some(v) => fold.insert(*key, *v),
            None => fold.remove(key),
        };
    }
}

proptest! {
    /// K1 soundness: when the window check passes, folding the log up to the
    /// cursor and then applying what retention still holds above it yields
    /// the bucket's truth, even with interior eviction of superseded
    /// revisions.
    #[test]
    fn resume_inside_window_converges_to_the_truth(
        messages in prop::collection::vec((0_u8..4, prop::option::of(0_u8..3)), 0..30),
        head_evicted in 0_usize..31,
        interior in prop::collection::vec(any::<bool>(), 30),
        cursor in 0_u64..32,
    ) {
        let last = messages.len() as u64;
        let cursor = cursor.min(last);
        let first = (head_evicted.min(messages.len()) as u64) + 1;
        // Interior eviction may drop only a revision a later message of the
        // same key supersedes (per-key history limit).
        let superseded = |seq: u64| {
            let idx = usize::try_from(seq - 1).unwrap_or(usize::MAX);
            messages[idx + 1..].iter().any(|(k, _)| *k == messages[idx].0)
        };
        let retained = |seq: u64| {
            let idx = usize::try_from(seq - 1).unwrap_or(usize::MAX);
            seq >= first && !(interior[idx] && superseded(seq))
        };

        let mut truth = BTreeMap::new();
        replay(&mut truth, &messages, |_| true);

        let mut resumed = BTreeMap::new();
        replay(&mut resumed, &messages, |seq| seq <= cursor);
        replay(&mut resumed, &messages, |seq| seq > cursor && retained(seq));

        if resume_window_ok(cursor, first) {
            prop_assert_eq!(resumed, truth);
        }
    }
}

#[test]
fn resume_outside_window_loses_a_delete() {
    // Witness that K1 guards something real: key 0 is written (seq 1) and
    // deleted (seq 2), key 1 written (seq 3). The fold applied seq 1; the
    // head then evicted seqs 1 and 2, so a resume after 1 never sees the
    // delete and the window check must refuse it.
    let messages: [Message; 3] = [(0, Some(1)), (0, None), (1, Some(1))];
    let (cursor, first) = (1, 3);
    let mut resumed = BTreeMap::new();
    replay(&mut resumed, &messages, |seq| seq <= cursor);
    replay(&mut resumed, &messages, |seq| seq > cursor && seq >= first);
    let mut truth = BTreeMap::new();
    replay(&mut truth, &messages, |_| true);
    assert_ne!(resumed, truth);
    assert!(!resume_window_ok(cursor, first));
}
