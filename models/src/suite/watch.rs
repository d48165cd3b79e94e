//! The watch-and-repair configurations: each starts from a scripted
//! prelude that reaches one repair, with bounds for what may happen around
//! it.

use slipstream_protocol::RepairMode;

use super::Depth;
use crate::bucket::WriteOp;
use crate::watch_repair::{Goal, Prelude, WatchMutation, WatchRepairConfig};

const PUT_A: (u8, WriteOp) = (0, WriteOp::Put);
const PUT_B: (u8, WriteOp) = (1, WriteOp::Put);

/// The node applied `a` (1) and `b` (2); then `b` (3), `a` (4), `b` (5) and
/// `b` (6) superseded them, so the stream starts at 4 and the cursor has
/// expired: the relist lists `a` at 4 and `b` at 6, both puts the fold
/// lacks, and floors the cursor at 3, below the superseded 5.
const EXPIRED: Prelude = Prelude {
    writes: &[PUT_A, PUT_B, PUT_B, PUT_A, PUT_B, PUT_B],
    applied: 2,
    artifact_at: None,
    recreate: &[],
};

/// The node applied `a` (1) and `b` (2); `a` (3), `b` (4) and `b` (5)
/// followed, so its delta watch skips the superseded 4 and a repair falls
/// due while its cursor is inside the log.
const GAP: Prelude = Prelude {
    writes: &[PUT_A, PUT_B, PUT_A, PUT_B, PUT_B],
    applied: 2,
    artifact_at: None,
    recreate: &[],
};

/// The node applied `b` (1) and `a` (2) and is down.
const DOWN: Prelude = Prelude {
    writes: &[PUT_B, PUT_A],
    applied: 2,
    artifact_at: None,
    recreate: &[],
};

/// An artifact was published at 1 (`a`); the node applied 1, and `b` (2)
/// and `b` (3) followed: the gap at 2 makes a repair due with the cursor
/// about to pass the artifact.
const BEHIND: Prelude = Prelude {
    writes: &[PUT_A, PUT_B, PUT_B],
    applied: 1,
    artifact_at: Some(1),
    recreate: &[],
};

/// A fresh node (no cursor) and a bucket holding `a` (1): its state-sync
/// goes on live, where only the engine's K17 checks its gaps.
const FRESH: Prelude = Prelude {
    writes: &[PUT_A],
    applied: 0,
    artifact_at: None,
    recreate: &[],
};

/// The node applied `a` (2) and `b` (3); the bucket was then recreated
/// with `a` (1) and `b` (2), behind the cursor, so K3 notices: the relist
/// (the new bucket has aged nothing out yet) keeps the fold's `a` at 2 from
/// the old incarnation, since the new bucket lists `a`, and leaves the
/// floor 1 in a cursor with no position (`restart_cursor`). If `a` at 1
/// ages out before the state-sync delivers it, the state-sync's `b` at 2
/// puts the cursor at the old entry's revision, above the floor; the floor
/// overrun at `CaughtUp` restores, and only the trusted rank (0, below the
/// floor) lets the artifact's `a` at 1 replace the old `a` at 2.
const RECREATED: Prelude = Prelude {
    writes: &[PUT_B, PUT_A, PUT_B],
    applied: 3,
    artifact_at: None,
    recreate: &[PUT_A, PUT_B],
};

/// The bounds of one watch-and-repair configuration: writes, head
/// removals (purges, or ageing out), marker compactions, exports.
type Bounds = (u8, u8, u8, u8);

/// Per depth: crashes, then the bounds of `relist-expired`, `relist-gap`,
/// `purged-while-down`, `restore-behind`, `evicting-state-sync` and
/// `recreated-evicting`.
const fn watch_bounds(depth: Depth) -> (u8, [Bounds; 6]) {
    match depth {
        Depth::Tiny => (
            0,
            [
                (0, 2, 0, 0),
                (2, 1, 0, 0),
                (1, 0, 1, 0),
                (1, 0, 0, 1),
                (2, 2, 0, 1),
                (1, 1, 0, 1),
            ],
        ),
        Depth::Default => (
            1,
            [
                (2, 2, 0, 0),
                (3, 1, 0, 0),
                (2, 0, 2, 0),
                (2, 1, 0, 2),
                (2, 2, 0, 1),
                (2, 1, 0, 1),
            ],
        ),
        Depth::Deep => (
            1,
            [
                (3, 2, 0, 0),
                (3, 2, 0, 0),
                (3, 0, 2, 0),
                (3, 2, 0, 2),
                (3, 2, 0, 1),
                (2, 2, 0, 2),
            ],
        ),
    }
}

const fn watch_config(
    name: &'static str,
    prelude: Prelude,
    (writes, purges, compactions, exports): Bounds,
    crashes: u8,
    goals: &'static [Goal],
) -> WatchRepairConfig {
    WatchRepairConfig {
        name,
        prelude,
        evicting: false,
        mode: RepairMode::Relist,
        writes,
        purges,
        compactions,
        exports,
        crashes,
        goals,
    }
}

/// A fresh node on an evicting bucket (mode `Auto`). Without crashes: a
/// crash inside its state-sync is [`watch_repair_known_gap`].
fn evicting_state_sync(depth: Depth) -> WatchRepairConfig {
    let (_, bounds) = watch_bounds(depth);
    WatchRepairConfig {
        evicting: true,
        mode: RepairMode::Auto,
        ..watch_config(
            "evicting-state-sync",
            FRESH,
            bounds[4],
            0,
            &[Goal::FloorCheckRepaired],
        )
    }
}

/// The watch-and-repair configurations and the mutations each must catch.
#[must_use]
pub fn watch_repair_configs(depth: Depth) -> Vec<(WatchRepairConfig, Vec<WatchMutation>)> {
    let (crashes, [expired, gap, down, behind, _, recreated]) = watch_bounds(depth);
    vec![
        (
            watch_config(
                "relist-expired",
                EXPIRED,
                expired,
                crashes,
                &[Goal::FloorRepaired, Goal::HeldThenOverridden],
            ),
            vec![
                WatchMutation::ConfirmFloorAlwaysHeld,
                WatchMutation::ListedPutsTrusted,
                WatchMutation::NextStartIgnoresRelistMarker,
                WatchMutation::CaughtUpAlwaysWatch,
                WatchMutation::MassDeleteNeverHolds,
            ],
        ),
        (
            watch_config(
                "relist-gap",
                GAP,
                gap,
                crashes,
                &[Goal::GapRepaired, Goal::FloorRepaired],
            ),
            vec![
                WatchMutation::FloorOmitsListingEnd,
                WatchMutation::NeverCheckGaps,
            ],
        ),
        (
            watch_config(
                "purged-while-down",
                DOWN,
                down,
                crashes,
                &[Goal::ShortRepaired],
            ),
            vec![WatchMutation::CaughtUpShortIgnored],
        ),
        (
            WatchRepairConfig {
                mode: RepairMode::Restore,
                ..watch_config(
                    "restore-behind",
                    BEHIND,
                    behind,
                    crashes,
                    &[Goal::RestoreRefusedBehind, Goal::RestoreConverges],
                )
            },
            vec![WatchMutation::RestoreWhenBehind],
        ),
        (
            evicting_state_sync(depth),
            vec![WatchMutation::NeverCheckGaps],
        ),
        (
            WatchRepairConfig {
                evicting: true,
                mode: RepairMode::Auto,
                ..watch_config(
                    "recreated-evicting",
                    RECREATED,
                    recreated,
                    crashes,
                    &[Goal::RecreatedRestored],
                )
            },
            vec![WatchMutation::TrustAboveFloor],
        ),
    ]
}

/// The watch-and-repair configuration the engine does not cover yet: a
/// fresh node's state-sync leaves no unchecked floor (a relist's does,
/// K15), so if the node crashes after committing part of it, a value that
/// left the bucket before the state-sync delivered it is never looked for:
/// the restarted delta watch starts above it. Its row must show a
/// counterexample.
#[must_use]
pub fn watch_repair_known_gap(depth: Depth) -> WatchRepairConfig {
    WatchRepairConfig {
        name: "fresh-sync-crashes",
        crashes: 1,
        goals: &[],
        ..evicting_state_sync(depth)
    }
}
