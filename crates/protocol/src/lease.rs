//! The export lease (A5): when an exporter may take the lease over.

/// What an exporter found at the export lease key (A5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseState {
    /// No lease is held (never created, or released).
    Absent,
    /// A lease exists; its expiry (a wall-clock instant in milliseconds
    /// since the Unix epoch), or `None` when its value is unparseable.
    Present(Option<u64>),
}

/// A5: whether an exporter that does not hold the lease may take it at
/// `now` (milliseconds since the Unix epoch).
///
/// True for an absent lease (a create-only write), an unparseable one (a
/// corrupt lease would otherwise block every exporter forever) and one whose
/// expiry is at or before `now`. A live lease held by another exporter is
/// never taken. Each takeover is a CAS at the revision the reader saw, so two
/// exporters deciding at once cannot both win.
#[must_use]
pub const fn lease_takeover_allowed(now: u64, lease: LeaseState) -> bool {
    match lease {
        LeaseState::Absent | LeaseState::Present(None) => true,
        LeaseState::Present(Some(expires_at)) => expires_at <= now,
    }
}
