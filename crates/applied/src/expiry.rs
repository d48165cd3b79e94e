//! The single place a cursor expiry is handled (R1's seam).

use std::vec::Drain;

use slipstream_kv::{ExpiryReason, KvUpdate, KvWatcher, WatchCursor};

use crate::engine::Engine;
use crate::error::AppliedError;
use crate::slot::StoreSlot;

impl<W, S, P, A, O, T> Engine<W, S, P, A, O, T>
where
    W: KvWatcher,
    S: StoreSlot,
    P: FnMut(&KvUpdate) -> Option<T>,
    A: FnMut(Drain<'_, T>),
    O: FnMut(&WatchCursor),
{
    /// Handle an expired cursor, whether the watch call refused it or a
    /// running watch was overrun. Everything delivered has been flushed by
    /// then. `Ok(())` means the fold was repaired and the engine re-watches
    /// from the applied cursor; until repair exists, an expiry ends the
    /// watch with [`AppliedError::CursorExpired`] and the fold stays as
    /// committed.
    pub(crate) async fn on_expiry(&mut self, reason: ExpiryReason) -> Result<(), AppliedError> {
        if matches!(reason, ExpiryReason::FloorOverrun { .. }) {
            self.reporter().guard_trip();
        }
        tracing::error!(%reason, cursor = ?self.applied, "cursor expired");
        Err(AppliedError::CursorExpired {
            reason,
            cursor: self.applied.clone(),
        })
    }
}
