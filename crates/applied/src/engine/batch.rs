//! The open batch: parsed items for `apply`, raw updates for the store
//! (failed commits' first, E4), and the window that closes it (E2).

use std::mem;
use std::time::Duration;
use std::vec::Drain;

use slipstream_kv::{KvUpdate, Timestamp};
use tokio::time::Instant;

use super::timer::Timer;

/// What closing the batch handed over.
pub(crate) struct Closed {
    /// Updates received into it, parsed or rejected.
    pub(crate) size: usize,
    /// Its highest delivered revision and that message's time.
    pub(crate) high: Option<(u64, Option<Timestamp>)>,
}

pub(crate) struct Batch<T> {
    parsed: Vec<T>,
    /// Raw updates for the store: re-queued ones first, then the open
    /// batch's. Always empty without a store.
    raw: Vec<KvUpdate>,
    count: usize,
    high: Option<(u64, Option<Timestamp>)>,
    /// Closes the batch `window` after its first update.
    pub(super) window: Timer,
    window_len: Duration,
    max: usize,
    keeps_raw: bool,
}

impl<T> Batch<T> {
    /// A batch of at most `max` updates open for `window_len`; `keeps_raw`
    /// when a store takes the raw updates.
    pub(crate) fn new(max: usize, window_len: Duration, keeps_raw: bool) -> Self {
        Self {
            parsed: Vec::with_capacity(max.min(4096)),
            raw: Vec::new(),
            count: 0,
            high: None,
            window: Timer::new(),
            window_len,
            max,
            keeps_raw,
        }
    }

    /// Whether the batch holds a received update.
    pub(crate) const fn is_open(&self) -> bool {
        self.count > 0
    }

    /// The highest delivered revision in the batch.
    pub(crate) fn high(&self) -> Option<u64> {
        self.high.map(|(revision, _)| revision)
    }

    /// Whether raw updates wait for a commit (re-queued or new).
    pub(crate) fn has_raw(&self) -> bool {
        !self.raw.is_empty()
    }

    /// Take `update` (and what `parse` made of it) into the batch, opening
    /// its window if it was empty; true when the batch is full.
    pub(crate) fn add(&mut self, update: KvUpdate, item: Option<T>) -> bool {
        if self.count == 0 {
            self.window.arm(Instant::now() + self.window_len);
        }
        self.count += 1;
        if let Some(item) = item {
            self.parsed.push(item);
        }
        if self.keeps_raw {
            self.raw.push(update);
        }
        self.count >= self.max
    }

    /// A delivery at `revision` is in the batch: the cursor moves there when
    /// it closes.
    pub(crate) fn raise_high(&mut self, revision: u64, time: Option<Timestamp>) {
        if self.high.is_none_or(|(h, _)| revision > h) {
            self.high = Some((revision, time));
        }
    }

    /// Take an update for the store alone: `apply` never sees it.
    pub(crate) fn add_store_only(&mut self, update: KvUpdate) {
        if self.keeps_raw {
            self.raw.push(update);
        }
    }

    /// Close the batch; its parsed items are drained by [`Batch::parsed`].
    pub(crate) fn close(&mut self) -> Closed {
        self.window.disarm();
        Closed {
            size: mem::take(&mut self.count),
            high: self.high.take(),
        }
    }

    /// The parsed items for `apply`; `None` when there are none.
    pub(crate) fn parsed(&mut self) -> Option<Drain<'_, T>> {
        (!self.parsed.is_empty()).then(|| self.parsed.drain(..))
    }

    /// Hand the raw updates to a commit, leaving `spare` (an emptied
    /// buffer) in their place.
    pub(crate) fn take_raw(&mut self, spare: Vec<KvUpdate>) -> Vec<KvUpdate> {
        mem::replace(&mut self.raw, spare)
    }

    /// A failed commit's updates go back in front of those received while
    /// it ran (E4).
    pub(crate) fn requeue(&mut self, mut failed: Vec<KvUpdate>) {
        failed.append(&mut self.raw);
        self.raw = failed;
    }
}
