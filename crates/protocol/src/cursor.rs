//! Cursor authority: K5.

/// K5: the high-water revision after receiving `received`.
///
/// Keeps the maximum known revision. An unknown revision (`None`) never sets
/// or lowers it, so a committed cursor never decreases.
#[must_use]
pub const fn next_high_water(current: Option<u64>, received: Option<u64>) -> Option<u64> {
    match (current, received) {
        (Some(c), Some(r)) => Some(if r > c { r } else { c }),
        (None, Some(r)) => Some(r),
        (c, None) => c,
    }
}

/// K5: whether a delivery is a replay of something the fold already holds.
///
/// A consumer recreated after a reconnect can start over; a delivery at or
/// below the applied cursor is dropped before `parse`. Sound because the fold
/// at cursor C already holds every retained message at or below C. A delivery
/// with an unknown revision cannot be placed and is not a replay.
#[must_use]
pub const fn is_replay(applied: Option<u64>, delivered: Option<u64>) -> bool {
    match (applied, delivered) {
        (Some(a), Some(d)) => d <= a,
        _ => false,
    }
}
