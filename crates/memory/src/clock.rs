//! The injectable clock: simulated time only moves when a test moves it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Waker;
use std::time::Duration;

use slipstream_kv::Timestamp;

/// 2026-01-01T00:00:00Z: a fixed, realistic epoch so timestamps look like
/// server times and runs are reproducible.
const DEFAULT_START_NANOS: u64 = 1_767_225_600_000_000_000;

#[derive(Debug, Default)]
struct ClockState {
    now: u64,
    /// Watches parked until time moves (expiry and the floor backstop are
    /// evaluated when they are polled again).
    wakers: BTreeMap<u64, Waker>,
}

/// A clock the test advances by hand. Cloning shares the same time.
///
/// The simulator never reads the wall clock: message timestamps, `max_age`,
/// per-message TTLs and bucket identities all come from this clock.
/// Advancing it wakes every parked watch so that expiry is noticed.
#[derive(Debug, Clone)]
pub struct ManualClock {
    state: Arc<Mutex<ClockState>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::starting_at(Timestamp::from_unix_nanos(DEFAULT_START_NANOS))
    }
}

impl ManualClock {
    /// A clock at 2026-01-01T00:00:00Z.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock at `start`.
    #[must_use]
    pub fn starting_at(start: Timestamp) -> Self {
        Self {
            state: Arc::new(Mutex::new(ClockState {
                now: start.as_unix_nanos(),
                wakers: BTreeMap::new(),
            })),
        }
    }

    /// The current simulated time.
    #[must_use]
    pub fn now(&self) -> Timestamp {
        Timestamp::from_unix_nanos(self.lock().now)
    }

    /// Move time forward by `by` (saturating) and wake every parked watch.
    pub fn advance(&self, by: Duration) {
        let wakers = {
            let mut state = self.lock();
            let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            state.now = state.now.saturating_add(nanos);
            std::mem::take(&mut state.wakers)
        };
        wakers.into_values().for_each(Waker::wake);
    }

    pub(crate) fn register(&self, id: u64, waker: &Waker) {
        let mut state = self.lock();
        match state.wakers.get(&id) {
            Some(w) if w.will_wake(waker) => {}
            _ => {
                state.wakers.insert(id, waker.clone());
            }
        }
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.lock().wakers.remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        // The state is a plain counter and a waker map: always consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_time_and_advance_saturates() {
        let clock = ManualClock::starting_at(Timestamp::from_unix_nanos(10));
        let other = clock.clone();
        clock.advance(Duration::from_nanos(5));
        assert_eq!(other.now(), Timestamp::from_unix_nanos(15));
        other.advance(Duration::MAX);
        assert_eq!(clock.now(), Timestamp::from_unix_nanos(u64::MAX));
    }
}
