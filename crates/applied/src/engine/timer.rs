//! Timers the loop waits on only while they are armed.

use std::pin::Pin;

use slipstream_kv::Timestamp;
use tokio::time::{Instant, Sleep, sleep_until};

use crate::ttl::deadline_for;

/// One reusable sleep, armed or not.
pub(crate) struct Timer {
    sleep: Pin<Box<Sleep>>,
    armed: bool,
}

impl Timer {
    pub(crate) fn new() -> Self {
        Self {
            sleep: Box::pin(sleep_until(Instant::now())),
            armed: false,
        }
    }

    /// Fire at `deadline` (replacing any earlier arming).
    pub(crate) fn arm(&mut self, deadline: Instant) {
        self.sleep.as_mut().reset(deadline);
        self.armed = true;
    }

    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }

    /// Completes when the armed deadline passes, and disarms; pending
    /// forever while disarmed, so a select arm on it is simply idle.
    pub(crate) async fn fired(&mut self) {
        if !self.armed {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.armed = false;
    }
}

/// The timer for the fold's soonest per-message expiry.
pub(crate) struct ExpiryTimer {
    timer: Timer,
    /// The expiry the timer is set for.
    at: Option<Timestamp>,
}

impl ExpiryTimer {
    pub(crate) fn new() -> Self {
        Self {
            timer: Timer::new(),
            at: None,
        }
    }

    /// Point the timer at `next`, the soonest expiry, if it moved; `now`
    /// reads the bucket's clock.
    pub(crate) fn aim(&mut self, next: Option<Timestamp>, now: impl FnOnce() -> Timestamp) {
        if next == self.at {
            return;
        }
        match next {
            Some(at) => self.timer.arm(deadline_for(at, now())),
            None => self.timer.disarm(),
        }
        self.at = next;
    }

    /// Completes when the soonest expiry is due.
    pub(crate) async fn fired(&mut self) {
        self.timer.fired().await;
        self.at = None;
    }
}
