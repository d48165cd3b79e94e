//! Resume and live-watch window rules: K1, K2, K3, K4, K13.

/// K1: whether a delta resume after `revision` still sees every message it
/// needs.
///
/// A resume reads `revision + 1` onward. True iff
/// `first_sequence <= revision + 1` (saturating). Interior eviction inside the
/// gap is harmless for a last-write-wins fold: an evicted revision of a key
/// implies a later revision of that key that will be delivered. Lost deletes
/// come only from head eviction, which is what this detects.
#[must_use]
pub const fn resume_window_ok(revision: u64, first_sequence: u64) -> bool {
    first_sequence <= revision.saturating_add(1)
}

/// K2: the first stream sequence a delta resume after `revision` reads.
///
/// `None` at `u64::MAX`: the next sequence does not exist, and wrapping to 0
/// would ask the server to deliver everything (or be rejected). Callers turn
/// `None` into a typed error.
#[must_use]
pub const fn resume_start_sequence(revision: u64) -> Option<u64> {
    revision.checked_add(1)
}

/// K3: the cursor names a revision the stream has never reached.
///
/// A cursor past the stream's end means the bucket was recreated or rolled
/// back; the server would silently wait for sequences that will carry
/// different data. Treated as expiry.
#[must_use]
pub const fn cursor_beyond_log(revision: u64, last_sequence: u64) -> bool {
    revision > last_sequence
}

/// K4, first half: whether a delivery leaves a gap after the frontier that
/// needs a floor check. The dense case (`delivered == frontier + 1`) costs
/// nothing.
#[must_use]
pub const fn gap_needs_floor_check(frontier: u64, delivered: u64) -> bool {
    delivered > frontier.saturating_add(1)
}

/// Outcome of the live floor check (K4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloorVerdict {
    /// The gap is interior eviction or filtered subjects: nothing was lost.
    Benign,
    /// Head eviction passed the frontier: the watch would skip history.
    Overrun,
}

/// K4, second half: given the frontier (highest revision delivered so far)
/// and the stream's current first sequence, decide whether a gap is benign.
///
/// Sound only on an unfiltered (All-scope) watch, where every retained
/// message is delivered.
#[must_use]
pub const fn floor_verdict(frontier: u64, first_sequence: u64) -> FloorVerdict {
    if resume_window_ok(frontier, first_sequence) {
        FloorVerdict::Benign
    } else {
        FloorVerdict::Overrun
    }
}

/// Where a projection of a plain stream starts reading (K13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamStart {
    /// Everything retained.
    All,
    /// From this stream sequence on.
    ByStart(u64),
}

/// K13: the start of a stream projection. `None` (no `since`) reads all
/// retained messages; `Some(n)` reads from `n + 1`. Returns `None` when
/// `n + 1` does not exist (K2's no-wrap rule).
#[must_use]
pub const fn stream_start(since: Option<u64>) -> Option<StreamStart> {
    match since {
        None => Some(StreamStart::All),
        Some(n) => match resume_start_sequence(n) {
            Some(start) => Some(StreamStart::ByStart(start)),
            None => None,
        },
    }
}
