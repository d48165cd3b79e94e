//! Model 6: a running watch and the repairs it asks for (K6, K14–K18).
//!
//! One node with a store follows an All-scope watch as the engine's loop
//! does: it opens the watch the cursor names (K16), checks each delivery's
//! gap (K17), confirms a relist's unchecked floor and gives the caught-up
//! verdict at `CaughtUp` and at every later look at retention (K15, K18),
//! and runs the repair a stream end asks for: a relist (K15's floor, K14)
//! or a restore (K6, K10, K14). Writers, an operator's purges of the head
//! (or, on an evicting bucket, ageing out) and an exporter go on
//! throughout; the node crashes and restarts. Every decision is a call into
//! `slipstream_protocol`, with the inputs the engine gives it.
//!
//! Each run starts from a scripted [`Prelude`] (the bucket's history and
//! how far the node had applied it, perhaps then the bucket's recreation),
//! so the bounded exploration is spent on the interleavings around one
//! repair rather than on reaching it.

mod model;
mod node;
mod repair;

use slipstream_protocol::RepairMode;

use crate::bucket::{Bucket, KEYS, WriteOp};

/// A scripted start: the writes made before the model runs, the cursor the
/// node had applied them up to, and the cursor of an artifact an exporter
/// published (a fold of the truth there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prelude {
    /// Writes, in order, from sequence 1.
    pub writes: &'static [(u8, WriteOp)],
    /// The node's committed cursor; its fold is the replay up to there.
    pub applied: u64,
    /// An artifact's cursor, if one was published.
    pub artifact_at: Option<u64>,
    /// If not empty, the bucket was then deleted and recreated with these
    /// writes (R7): fewer than the cursor, so K3 notices.
    pub recreate: &'static [(u8, WriteOp)],
}

/// A reachability goal: a repair path the unmutated model must complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Goal {
    /// The head passed a relist's floor (K15) and the fold converged.
    FloorRepaired,
    /// A gap on a running watch made a repair due (K17) and the fold
    /// converged after it.
    GapRepaired,
    /// A delta watch caught up short of the last sequence (K17) and the
    /// fold converged after the repair.
    ShortRepaired,
    /// The mass-delete guard held a repair (K14), the operator overrode it
    /// and the fold converged.
    HeldThenOverridden,
    /// A restore was refused because its artifact is behind the cursor (K6).
    RestoreRefusedBehind,
    /// A restore repaired a gap and the fold converged.
    RestoreConverges,
    /// A delivery's gap asked for a floor check (K17), the check ended the
    /// watch and the fold converged after the repair.
    FloorCheckRepaired,
    /// K3 found the bucket recreated, a repair of the new incarnation ran,
    /// then a restore, and the fold converged.
    RecreatedRestored,
}

impl Goal {
    const fn name(self) -> &'static str {
        match self {
            Self::FloorRepaired => "a relist floor the head passed is repaired",
            Self::GapRepaired => "a gap on a running watch is repaired",
            Self::ShortRepaired => "a watch caught up short is repaired",
            Self::HeldThenOverridden => "a held mass delete converges after the override",
            Self::RestoreRefusedBehind => "a restore behind the cursor is refused",
            Self::RestoreConverges => "a gap repaired by a restore converges",
            Self::FloorCheckRepaired => "a gap's floor check ends the watch and is repaired",
            Self::RecreatedRestored => "a recreated bucket is repaired, restored and converges",
        }
    }
}

/// One configuration of the watch-and-repair model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WatchRepairConfig {
    /// Name shown in the table.
    pub name: &'static str,
    /// Where the run starts.
    pub prelude: Prelude,
    /// The bucket's values age out (`max_age`); otherwise it evicts nothing
    /// current.
    pub evicting: bool,
    /// The node's repair mode (K8).
    pub mode: RepairMode,
    /// Writes (puts and deletes) after the prelude.
    pub writes: u8,
    /// Head messages leaving: purged by the operator, or aged out on an
    /// evicting bucket.
    pub purges: u8,
    /// Operator purges of every delete marker, wherever it is (NATS
    /// `purge_deletes`), run only while the node is down.
    pub compactions: u8,
    /// Artifacts the exporter may publish (of the truth at the last
    /// sequence).
    pub exports: u8,
    /// Node crashes.
    pub crashes: u8,
    /// The repair paths this configuration must reach.
    pub goals: &'static [Goal],
}

/// A forged kernel input or a replaced verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WatchMutation {
    /// K15: `confirm_floor`'s verdict replaced by `Held`: a floor the head
    /// passed is taken as delivered.
    ConfirmFloorAlwaysHeld,
    /// K15: `relist_floor` fed no highest listed revision: a delete written
    /// after the listing is not watched for.
    FloorOmitsListingEnd,
    /// K15: `listed_put_needed` fed a trusted rank above every revision: no
    /// listed put counts as one the fold may lack.
    ListedPutsTrusted,
    /// K16: `next_start` fed `relist_marked = false`: a relist is followed
    /// by a delta watch from the cursor.
    NextStartIgnoresRelistMarker,
    /// K17: `gap_action`'s verdict replaced by `Nothing`.
    NeverCheckGaps,
    /// K17: `caught_up_short` fed no last sequence at the open.
    CaughtUpShortIgnored,
    /// K18: `caught_up_verdict` replaced by "watch on, nothing due".
    CaughtUpAlwaysWatch,
    /// K6: `restore_allowed` and `restore_ahead` fed a local rank of 0, as
    /// if the fold had no cursor.
    RestoreWhenBehind,
    /// K14: `mass_delete_guard`'s verdict replaced by `Proceed`.
    MassDeleteNeverHolds,
    /// K15: `trusted_rank` fed no unchecked floor: a repair trusts the
    /// fold up to the applied cursor itself.
    TrustAboveFloor,
}

impl WatchMutation {
    /// The mutation's name in the table.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::ConfirmFloorAlwaysHeld => "ConfirmFloorAlwaysHeld",
            Self::FloorOmitsListingEnd => "FloorOmitsListingEnd",
            Self::ListedPutsTrusted => "ListedPutsTrusted",
            Self::NextStartIgnoresRelistMarker => "NextStartIgnoresRelistMarker",
            Self::NeverCheckGaps => "NeverCheckGaps",
            Self::CaughtUpShortIgnored => "CaughtUpShortIgnored",
            Self::CaughtUpAlwaysWatch => "CaughtUpAlwaysWatch",
            Self::RestoreWhenBehind => "RestoreWhenBehind",
            Self::MassDeleteNeverHolds => "MassDeleteNeverHolds",
            Self::TrustAboveFloor => "TrustAboveFloor",
        }
    }
}

/// The watch-and-repair model: a configuration plus at most one mutation.
#[derive(Debug, Clone, Copy)]
pub struct WatchRepairModel {
    /// The configuration.
    pub config: WatchRepairConfig,
    /// The mutation, if any.
    pub mutation: Option<WatchMutation>,
}

/// What the store holds: the fold and the cursor with its memo, committed
/// together (the engine's batching is model 3's subject).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Durable {
    fold: [Option<u64>; KEYS],
    applied: Option<u64>,
    /// A relist's unchecked floor (K15).
    floor: Option<u64>,
    /// A repair is due (K11 generalised).
    repair_due: bool,
    /// Retention was seen evicting current values (R5).
    seen_evicting: bool,
}

/// What the node holds in memory only; a crash loses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Memory {
    /// A repair marked the next watch a state-sync.
    relist_next: bool,
    /// A repair armed the next watch.
    armed: bool,
    /// The last sequence when the latest relist was planned.
    listed_through: Option<u64>,
    /// The last sequence at the latest retention read.
    seen_last: Option<u64>,
    /// A retention read was taken (the gap reading is known).
    read: bool,
}

/// One open watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Watch {
    /// A delta watch (not a state-sync).
    delta: bool,
    /// A repair's own watch.
    after_repair: bool,
    /// The last sequence the node had seen before the open.
    last_at_open: Option<u64>,
    /// The next sequence the watch reads.
    next: u64,
    /// The last sequence when it opened: `CaughtUp` comes once every
    /// message up to it was delivered or left the log.
    open_last: u64,
    /// Its `CaughtUp` was handled.
    ready: bool,
    /// `(frontier, last)` at the previous look: the same values at the next
    /// look mean the bucket is quiet.
    look: Option<(u64, u64)>,
}

impl Watch {
    /// The engine's `Looks::still_since`, the time between looks abstracted
    /// to "another look".
    fn still_since(&mut self, frontier: u64, last: u64) -> Option<(u64, u64)> {
        if self.look == Some((frontier, last)) {
            self.look
        } else {
            self.look = Some((frontier, last));
            None
        }
    }
}

/// What the node is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodePhase {
    /// Not running (before the first start or after a crash).
    Down,
    /// About to open the watch the cursor names.
    Opening,
    /// Following a watch.
    Watching(Watch),
    /// Stopped loudly (a refused restore, no artifact).
    Failed,
    /// Stopped by the mass-delete guard, nothing changed (K14).
    Held,
}

/// A published artifact: the truth's fold at `cursor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Snapshot {
    fold: [Option<u64>; KEYS],
    cursor: u64,
}

const REPAIRED_RELIST: u16 = 1;
const REPAIRED_RESTORE: u16 = 2;
const FLOOR_PASSED: u16 = 4;
const GAP_DUE: u16 = 8;
const SHORT_DUE: u16 = 16;
const HELD: u16 = 32;
const REFUSED_BEHIND: u16 = 64;
const FLOOR_CHECKED: u16 = 128;
const HEAD_PASSED: u16 = 256;
const REPLACED: u16 = 512;

/// Model-only bookkeeping the properties read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Trace {
    events: u16,
    cursor_regressed: bool,
    /// A repair deleted every key of a non-empty fold without an override.
    emptied_unconfirmed: bool,
    /// A relist completed and neither the bucket nor the node changed since.
    unchanged_since_relist: bool,
    /// A repair started while `unchanged_since_relist` held.
    repeated: bool,
    /// Per key: its value left the bucket and no listing stood for the
    /// bucket since (a repair, a state-sync opening or catching up).
    left_unrepaired: [bool; KEYS],
    /// The committed cursor names the bucket's old incarnation.
    old_cursor: bool,
}

/// A state of the watch-and-repair model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WatchState {
    bucket: Bucket,
    writes: u8,
    purges: u8,
    compactions: u8,
    exports: u8,
    crashes: u8,
    artifact: Option<Snapshot>,
    store: Durable,
    node: Memory,
    phase: NodePhase,
    /// The operator restarted the node with the guard's override: the next
    /// repair may delete whatever it found.
    override_next: bool,
    trace: Trace,
}

/// A step of the environment or the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WatchAction {
    /// A client writes to a key.
    Write(u8, WriteOp),
    /// The operator purges the head message.
    PurgeHead,
    /// The head message ages out (an evicting bucket).
    AgeOut,
    /// The operator purges every delete marker (the node is down).
    CompactMarkers,
    /// The exporter publishes an artifact of the truth.
    Export,
    /// The node starts from its store.
    Start,
    /// The node opens the watch its cursor names.
    Open,
    /// The watch delivers its next message.
    Deliver,
    /// The watch reports `CaughtUp`.
    CaughtUp,
    /// The periodic look at retention.
    Look,
    /// The node crashes.
    Crash,
    /// The operator restarts a held node with the guard's override.
    Override,
}
