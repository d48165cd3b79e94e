//! Repair planning and restore rules: K6–K11, K14.

use core::time::Duration;

use crate::resume::resume_window_ok;

/// K6: an artifact is worth restoring only if it is ahead of the local fold.
#[must_use]
pub const fn restore_ahead(artifact: u64, local: u64) -> bool {
    artifact > local
}

/// K6: a restore is allowed when the artifact is ahead of the local fold and
/// a delta resume from the artifact's cursor is still inside the log (K1).
#[must_use]
pub const fn restore_allowed(artifact: u64, local: u64, first_sequence: u64) -> bool {
    restore_ahead(artifact, local) && resume_window_ok(artifact, first_sequence)
}

/// What a bucket's configuration lets retention remove (N11, K7's input).
///
/// Per-message TTL is not in the eviction test: a message that carries
/// `Nats-TTL` expires because its writer said so, as a delete would, and the
/// server lists the key as gone afterwards, so the listing stays the truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Eviction {
    /// The bucket has a `max_age`: current values age out.
    pub max_age: bool,
    /// The bucket discards old messages under a message or byte limit.
    pub discard_old_limit: bool,
    /// The bucket allows per-message TTL (`allow_msg_ttl`).
    pub per_message_ttl: bool,
}

impl Eviction {
    /// K7's input: retention can remove a key's latest message behind the
    /// reader's back, so "not listed" no longer means "deleted".
    #[must_use]
    pub const fn evicts_current_values(self) -> bool {
        self.max_age || self.discard_old_limit
    }

    /// K11's input: age is the only way anything the fold holds can leave
    /// the log unseen. A TTL can end a message sooner than `max_age`, so a
    /// bucket allowing it does not qualify.
    #[must_use]
    pub const fn age_is_only_eviction(self) -> bool {
        self.max_age && !self.discard_old_limit && !self.per_message_ttl
    }
}

/// K11 generalised: what a gap (messages that left the log before a reader
/// saw them) asks for, judged from what the bucket can evict now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GapReading {
    /// The bucket evicts nothing current: what left unseen was superseded
    /// (a later message of its key is still to come), expired at its
    /// writer's wish (`Nats-TTL`), or a delete marker a client purged. Only
    /// the last two lose anything, and a repair finds them; it waits until
    /// the bucket is quiet, where the next hot write cannot overrun it, so
    /// hot keys never make it loop.
    RepairWhenQuiet,
    /// Retention may have evicted current values: repair now (K8).
    RepairNow,
}

impl GapReading {
    /// Whether the gap asks for a repair before the watch goes on.
    #[must_use]
    pub const fn repairs_now(self) -> bool {
        matches!(self, Self::RepairNow)
    }
}

/// K11 generalised: read a gap from the bucket's eviction. Per-message TTL
/// does not make a gap urgent: an expiry is the writer's delete, which a
/// repair once the bucket is quiet finds as a relist finds a purged
/// delete.
#[must_use]
pub const fn read_gap(eviction: Eviction) -> GapReading {
    if eviction.evicts_current_values() {
        GapReading::RepairNow
    } else {
        GapReading::RepairWhenQuiet
    }
}

/// When a repair that [`GapReading::RepairWhenQuiet`] made due may run
/// without looping: the bucket is quiet. Neither the frontier nor the last
/// sequence moved since the previous look (`before`, as `(frontier,
/// last)`): no writer is busy and nothing more is arriving, so the repair
/// cannot be overrun by the next gap. A watch that has just caught up
/// (`caught_up_at_head`, not a repair's own state-sync) also counts as
/// quiet when its frontier reached the last sequence: the node is not
/// Ready yet, and should not become Ready with the gap unrepaired. A
/// repair's state-sync that catches up on hot keys always reaches the
/// head for a moment, so there only stillness counts.
#[must_use]
pub const fn quiet_for_repair(
    frontier: u64,
    last: u64,
    before: Option<(u64, u64)>,
    caught_up_at_head: bool,
) -> bool {
    (caught_up_at_head && frontier >= last) || still(frontier, last, before)
}

const fn still(frontier: u64, last: u64, before: Option<(u64, u64)>) -> bool {
    match before {
        Some((f, l)) => f == frontier && l == last,
        None => false,
    }
}

/// K7's verdict with its reason, so a refusal or a status line can say why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListingTruth {
    /// Nothing but supersession, deletes and the writers' own TTLs removes
    /// messages: a key that is not listed was deleted.
    NothingEvicts,
    /// The bucket may evict, but its head never moved (first revision <= 1).
    NothingEvictedYet,
    /// The cursor's memo saw retention evict current values earlier.
    EvictionSeen,
    /// `max_age` removed messages from the head.
    EvictedByAge,
    /// A discard-old limit removed messages from the head.
    EvictedByLimit,
}

impl ListingTruth {
    /// Whether a key the listing lacks was really deleted.
    #[must_use]
    pub const fn is_truth(self) -> bool {
        matches!(self, Self::NothingEvicts | Self::NothingEvictedYet)
    }

    /// The reason in a few words, for logs and `status`.
    #[must_use]
    pub const fn reason(self) -> &'static str {
        match self {
            Self::NothingEvicts => {
                "no max_age and no discard-old limit: only supersession, deletes and per-message TTLs remove messages"
            }
            Self::NothingEvictedYet => "retention may evict, but nothing has left the head yet",
            Self::EvictionSeen => "this fold's memo saw retention evict current values",
            Self::EvictedByAge => "max_age has evicted messages from the head",
            Self::EvictedByLimit => "a discard-old limit has evicted messages from the head",
        }
    }
}

/// K7 with its reason: [`listing_is_truth`] on an [`Eviction`].
#[must_use]
pub const fn listing_truth(
    eviction: Eviction,
    first_revision: u64,
    seen_evicting: bool,
) -> ListingTruth {
    if seen_evicting {
        ListingTruth::EvictionSeen
    } else if !eviction.evicts_current_values() {
        ListingTruth::NothingEvicts
    } else if first_revision <= 1 {
        ListingTruth::NothingEvictedYet
    } else if eviction.max_age {
        ListingTruth::EvictedByAge
    } else {
        ListingTruth::EvictedByLimit
    }
}

/// K7: whether the bucket's key listing is the truth, i.e. a key that is not
/// listed was really deleted.
///
/// False once the cursor's memo has seen retention evict current values
/// (`seen_evicting`), and false on a bucket that evicts current values unless
/// nothing was ever evicted from its head (`first_revision <= 1`).
#[must_use]
pub const fn listing_is_truth(
    evicts_current_values: bool,
    first_revision: u64,
    seen_evicting: bool,
) -> bool {
    !seen_evicting && (!evicts_current_values || first_revision <= 1)
}

/// How the engine repairs an expired cursor, as configured by the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RepairMode {
    /// Re-list without deleting: deletes lost in the gap may persist.
    None,
    /// Re-list the bucket and delete fold keys it no longer lists; refuse
    /// when the listing is not the truth.
    Relist,
    /// Restore from a snapshot artifact.
    Restore,
    /// Re-list when the listing is the truth, restore otherwise.
    #[default]
    Auto,
}

/// K8's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RepairPlan {
    /// State-sync without synthetic deletes (mode `None`): deletes lost in
    /// the gap may persist; the engine warns.
    RelistOnly,
    /// State-sync, deleting fold keys the listing lacks.
    Relist,
    /// A relist was asked for but the listing is not the truth: stop.
    RefuseRelist,
    /// Restore from an artifact, then resume from its cursor.
    Restore,
}

/// K8: plan a repair from the mode and whether the listing is the truth
/// (`None` when unknown).
#[must_use]
pub const fn plan_repair(mode: RepairMode, listing_truth: Option<bool>) -> RepairPlan {
    let truth = matches!(listing_truth, Some(true));
    match mode {
        RepairMode::None => RepairPlan::RelistOnly,
        RepairMode::Relist if truth => RepairPlan::Relist,
        RepairMode::Relist => RepairPlan::RefuseRelist,
        RepairMode::Restore => RepairPlan::Restore,
        RepairMode::Auto if truth => RepairPlan::Relist,
        RepairMode::Auto => RepairPlan::Restore,
    }
}

/// K9: whether a start without a cursor must repair before watching.
///
/// Yes when the fold already holds data (a re-list never removes what it
/// does not deliver), or when a restore is armed and the listing is not
/// known to be the truth (a state-sync would miss aged-out keys).
#[must_use]
pub const fn cursorless_start_needs_repair(
    mode: RepairMode,
    fold_has_data: bool,
    listing_truth: Option<bool>,
) -> bool {
    let restore_armed = matches!(mode, RepairMode::Restore | RepairMode::Auto);
    fold_has_data || (restore_armed && !matches!(listing_truth, Some(true)))
}

/// K10's decision for one key during a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestoreAction {
    /// Leave the local entry (or absence) as it is.
    Keep,
    /// Take the artifact's entry.
    Take,
    /// Delete the local entry.
    Delete,
}

/// K10: reconcile one key between the local fold and an artifact.
///
/// `local` and `artifact` are the key's ranks on each side (`None` when the
/// side lacks the key), `identical` says both sides hold the same entry, and
/// `listed_live` says the bucket currently lists the key as live. Takes the
/// artifact's entry unless the local one is newer (never moves a key
/// backward); deletes a local key the artifact lacks only if the bucket does
/// not list it live (never a phantom delete).
#[must_use]
pub const fn restore_key(
    local: Option<u64>,
    artifact: Option<u64>,
    identical: bool,
    listed_live: bool,
) -> RestoreAction {
    match (local, artifact) {
        // `identical` only means something when both sides hold the key; a
        // missing local entry always takes the artifact's.
        (Some(_), Some(_)) if identical => RestoreAction::Keep,
        (Some(l), Some(a)) => {
            if a >= l {
                RestoreAction::Take
            } else {
                RestoreAction::Keep
            }
        }
        (None, Some(_)) => RestoreAction::Take,
        (Some(_), None) => {
            if listed_live {
                RestoreAction::Keep
            } else {
                RestoreAction::Delete
            }
        }
        (None, None) => RestoreAction::Keep,
    }
}

/// K11: whether an apparent expiry is only supersession.
///
/// True iff age is the bucket's only way to evict current values and the
/// message at the cursor is at most half of `max_age` old: then nothing the
/// fold holds can have aged out unseen, and the resume may start at the first
/// retained sequence. Unknown ages never qualify.
#[must_use]
pub fn gap_holds_no_eviction(
    cursor_msg_age: Option<Duration>,
    max_age: Option<Duration>,
    age_is_only_eviction: bool,
) -> bool {
    match (cursor_msg_age, max_age) {
        (Some(age), Some(max)) if age_is_only_eviction && !max.is_zero() => age <= max / 2,
        _ => false,
    }
}

/// The fraction of the in-scope fold a repair may delete without an explicit
/// override (K14), in parts per million so the check is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MassDeleteLimit {
    parts_per_million: u32,
}

impl MassDeleteLimit {
    /// One million parts: the whole fold.
    pub const WHOLE: u32 = 1_000_000;

    /// A limit of `parts_per_million` / 1,000,000 of the fold (clamped to the
    /// whole fold).
    #[must_use]
    pub const fn from_parts_per_million(parts_per_million: u32) -> Self {
        let clamped = if parts_per_million > Self::WHOLE {
            Self::WHOLE
        } else {
            parts_per_million
        };
        Self {
            parts_per_million: clamped,
        }
    }

    /// A limit in percent (clamped to 100).
    #[must_use]
    pub const fn from_percent(percent: u32) -> Self {
        Self::from_parts_per_million(percent.saturating_mul(10_000))
    }

    /// The limit in parts per million.
    #[must_use]
    pub const fn parts_per_million(self) -> u32 {
        self.parts_per_million
    }
}

impl Default for MassDeleteLimit {
    /// Half of the fold.
    fn default() -> Self {
        Self::from_percent(50)
    }
}

/// K14's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MassDeleteVerdict {
    /// The repair may delete this many keys.
    Proceed,
    /// Too many deletions: hold the repair until explicitly overridden.
    Hold,
}

/// K14: hold a repair that would delete more than `limit` of the in-scope
/// fold, or every key of a non-empty fold.
#[must_use]
pub const fn mass_delete_guard(
    fold_len: u64,
    deletions: u64,
    limit: MassDeleteLimit,
) -> MassDeleteVerdict {
    if deletions == 0 {
        return MassDeleteVerdict::Proceed;
    }
    if fold_len > 0 && deletions >= fold_len {
        return MassDeleteVerdict::Hold;
    }
    // deletions / fold_len > ppm / 1e6, exact in u128.
    let lhs = deletions as u128 * MassDeleteLimit::WHOLE as u128;
    let rhs = limit.parts_per_million as u128 * fold_len as u128;
    if lhs > rhs {
        MassDeleteVerdict::Hold
    } else {
        MassDeleteVerdict::Proceed
    }
}
