//! The export lease's takeover rule (A5): a live lease is never taken, an
//! expired, absent or corrupt one always may be.

use proptest::prelude::*;
use slipstream_protocol::{LeaseState, lease_takeover_allowed};

#[test]
fn an_absent_lease_may_be_created() {
    assert!(lease_takeover_allowed(0, LeaseState::Absent));
    assert!(lease_takeover_allowed(u64::MAX, LeaseState::Absent));
}

#[test]
fn a_corrupt_lease_may_be_taken_over() {
    assert!(lease_takeover_allowed(0, LeaseState::Present(None)));
    assert!(lease_takeover_allowed(u64::MAX, LeaseState::Present(None)));
}

#[test]
fn a_live_lease_is_never_taken() {
    assert!(!lease_takeover_allowed(0, LeaseState::Present(Some(1))));
    assert!(!lease_takeover_allowed(
        999,
        LeaseState::Present(Some(1000))
    ));
    assert!(!lease_takeover_allowed(
        u64::MAX - 1,
        LeaseState::Present(Some(u64::MAX))
    ));
}

#[test]
fn a_lease_expires_at_its_instant() {
    assert!(lease_takeover_allowed(
        1000,
        LeaseState::Present(Some(1000))
    ));
    assert!(lease_takeover_allowed(
        1001,
        LeaseState::Present(Some(1000))
    ));
    assert!(lease_takeover_allowed(0, LeaseState::Present(Some(0))));
    assert!(lease_takeover_allowed(
        u64::MAX,
        LeaseState::Present(Some(u64::MAX))
    ));
}

proptest! {
    #[test]
    fn takeover_iff_expired(now in any::<u64>(), expires_at in any::<u64>()) {
        prop_assert_eq!(
            lease_takeover_allowed(now, LeaseState::Present(Some(expires_at))),
            expires_at <= now
        );
    }

    #[test]
    fn a_later_clock_never_revokes_a_takeover(now in any::<u64>(), delta in any::<u64>(), expires_at in any::<u64>()) {
        let later = now.saturating_add(delta);
        let lease = LeaseState::Present(Some(expires_at));
        prop_assert!(!lease_takeover_allowed(now, lease) || lease_takeover_allowed(later, lease));
    }
}
