//! The artifact pointer and payload pruning: K12.

/// What a reader found at the artifact pointer (K12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PointerState {
    /// No pointer has been published yet.
    Absent,
    /// A pointer exists; its rank, or `None` when its payload is unparseable.
    Present(Option<u64>),
}

/// K12: whether publishing a pointer to an artifact at `candidate` is
/// allowed.
///
/// True for an absent or unparseable pointer, or when `candidate` is at or
/// above the current rank: the published cursor never regresses, whatever
/// the interleaving of publishers (each publish is a CAS on this check).
#[must_use]
pub const fn pointer_publish_allowed(current: PointerState, candidate: u64) -> bool {
    match current {
        PointerState::Absent | PointerState::Present(None) => true,
        PointerState::Present(Some(rank)) => candidate >= rank,
    }
}

/// K12: whether an artifact payload may be pruned.
///
/// Only a payload that is not the pointer's target, has aged out, and is
/// strictly older than the pointer. An unparseable payload rank is never
/// pruned (it might be the newest).
#[must_use]
pub const fn payload_prunable(
    payload_rank: Option<u64>,
    pointer_rank: u64,
    is_target: bool,
    aged_out: bool,
) -> bool {
    match payload_rank {
        Some(rank) => !is_target && aged_out && rank < pointer_rank,
        None => false,
    }
}
