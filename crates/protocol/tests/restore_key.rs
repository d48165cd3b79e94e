//! Per-key restore reconciliation (K10): never move a key backward, never
//! delete a key the bucket lists live.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use slipstream_protocol::{RestoreAction, restore_key};

const RANKS: [Option<u64>; 5] = [None, Some(0), Some(1), Some(2), Some(u64::MAX)];

#[test]
fn artifact_entry_newer_than_local_is_taken() {
    assert_eq!(
        restore_key(Some(0), Some(1), false, true),
        RestoreAction::Take
    );
    assert_eq!(
        restore_key(Some(u64::MAX - 1), Some(u64::MAX), false, false),
        RestoreAction::Take
    );
}

#[test]
fn local_entry_newer_than_artifact_is_kept() {
    assert_eq!(
        restore_key(Some(1), Some(0), false, true),
        RestoreAction::Keep
    );
    assert_eq!(
        restore_key(Some(u64::MAX), Some(0), false, false),
        RestoreAction::Keep
    );
}

#[test]
fn differing_entries_at_equal_rank_take_the_artifact() {
    assert_eq!(
        restore_key(Some(0), Some(0), false, true),
        RestoreAction::Take
    );
    assert_eq!(
        restore_key(Some(u64::MAX), Some(u64::MAX), false, false),
        RestoreAction::Take
    );
}

#[test]
fn identical_entries_are_kept() {
    for listed in [false, true] {
        assert_eq!(
            restore_key(Some(0), Some(0), true, listed),
            RestoreAction::Keep
        );
        assert_eq!(
            restore_key(Some(5), Some(5), true, listed),
            RestoreAction::Keep
        );
        assert_eq!(
            restore_key(Some(u64::MAX), Some(u64::MAX), true, listed),
            RestoreAction::Keep
        );
    }
}

#[test]
fn key_only_in_the_artifact_is_taken() {
    for listed in [false, true] {
        assert_eq!(
            restore_key(None, Some(0), false, listed),
            RestoreAction::Take
        );
        assert_eq!(
            restore_key(None, Some(u64::MAX), false, listed),
            RestoreAction::Take
        );
    }
}

#[test]
fn key_only_in_the_artifact_is_taken_even_if_flagged_identical() {
    // There is no local entry to be identical to; keeping the absence would
    // drop the artifact's entry.
    assert_eq!(restore_key(None, Some(3), true, false), RestoreAction::Take);
    assert_eq!(restore_key(None, Some(3), true, true), RestoreAction::Take);
}

#[test]
fn local_key_missing_from_artifact_and_not_listed_is_deleted() {
    assert_eq!(
        restore_key(Some(0), None, false, false),
        RestoreAction::Delete
    );
    assert_eq!(
        restore_key(Some(u64::MAX), None, false, false),
        RestoreAction::Delete
    );
}

#[test]
fn local_key_missing_from_artifact_but_listed_live_is_kept() {
    assert_eq!(restore_key(Some(0), None, false, true), RestoreAction::Keep);
    assert_eq!(
        restore_key(Some(u64::MAX), None, false, true),
        RestoreAction::Keep
    );
}

#[test]
fn key_absent_on_both_sides_is_left_alone() {
    for identical in [false, true] {
        for listed in [false, true] {
            assert_eq!(
                restore_key(None, None, identical, listed),
                RestoreAction::Keep
            );
        }
    }
}

#[test]
fn restore_key_truth_table_never_moves_backward_or_deletes_listed_keys() {
    for local in RANKS {
        for artifact in RANKS {
            for identical in [false, true] {
                for listed in [false, true] {
                    let action = restore_key(local, artifact, identical, listed);
                    let case = format!("{local:?} {artifact:?} {identical} {listed} -> {action:?}");
                    match action {
                        RestoreAction::Take => {
                            let a = artifact.expect(&case);
                            assert!(local.is_none_or(|l| a >= l), "{case}");
                        }
                        RestoreAction::Delete => {
                            assert!(local.is_some() && artifact.is_none() && !listed, "{case}");
                        }
                        RestoreAction::Keep => {
                            // Keeping is wrong only when the artifact is
                            // strictly newer, or present against an absent
                            // local, and the entries differ.
                            let artifact_wins = match (local, artifact) {
                                (Some(l), Some(a)) => a > l && !identical,
                                (None, Some(_)) => true,
                                _ => false,
                            };
                            assert!(!artifact_wins, "{case}");
                            if local.is_some() && artifact.is_none() {
                                assert!(listed, "{case}");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A key's entry: its rank and an opaque value.
type Entry = (u64, u8);

fn entries() -> impl Strategy<Value = BTreeMap<u8, Entry>> {
    prop::collection::btree_map(
        0_u8..24,
        (prop_oneof![0_u64..6, (u64::MAX - 2)..=u64::MAX], 0_u8..2),
        0..16,
    )
}

proptest! {
    /// Restoring a random artifact over a random fold: every key ends at a
    /// rank at least as new as it had locally and at least the artifact's;
    /// no key the bucket lists live is deleted; a key is deleted only when
    /// the artifact lacks it.
    #[test]
    fn restore_over_a_fold_never_regresses_a_key_or_deletes_a_live_one(
        local in entries(),
        artifact in entries(),
        listed in prop::collection::btree_set(0_u8..24, 0..24),
    ) {
        let keys: BTreeSet<u8> = local.keys().chain(artifact.keys()).copied().collect();
        let mut fold = local.clone();
        for key in &keys {
            let (l, a) = (local.get(key), artifact.get(key));
            let identical = l.is_some() && l == a;
            match restore_key(l.map(|e| e.0), a.map(|e| e.0), identical, listed.contains(key)) {
                RestoreAction::Keep => {}
                RestoreAction::Take => {
                    let entry = *a.expect("Take needs an artifact entry");
                    fold.insert(*key, entry);
                }
                RestoreAction::Delete => {
                    fold.remove(key);
                }
            }
        }
        for (key, (rank, _)) in &local {
            match fold.get(key) {
                Some((now, _)) => prop_assert!(now >= rank, "key {} moved back", key),
                None => {
                    prop_assert!(!listed.contains(key), "listed key {} deleted", key);
                    prop_assert!(!artifact.contains_key(key), "key {} deleted despite artifact", key);
                }
            }
        }
        for (key, (rank, _)) in &artifact {
            let now = fold.get(key).map(|e| e.0);
            prop_assert!(now.is_some_and(|n| n >= *rank), "artifact key {} not restored", key);
            let newest = local.get(key).map_or(*rank, |l| l.0.max(*rank));
            prop_assert_eq!(now, Some(newest));
        }
        for key in fold.keys() {
            prop_assert!(keys.contains(key), "key {} appeared from nowhere", key);
        }
    }
}
