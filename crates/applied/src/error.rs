//! `AppliedError`: every way an applied watch or one of its requests fails.

use std::time::Duration;

use slipstream_kv::{ExpiryReason, KvError, WatchCursor};
use slipstream_snapshot::SnapshotError;

/// Why an applied watch stopped with an error, or why an export request
/// failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppliedError {
    /// The cursor is outside the bucket's log (at resume, or a running watch
    /// was overrun by retention). The fold is left as committed at `cursor`.
    #[error("cursor expired at {cursor:?}: {reason}")]
    CursorExpired {
        /// Why the cursor is outside the log.
        reason: ExpiryReason,
        /// The applied cursor when the expiry was handled.
        cursor: WatchCursor,
    },
    /// A relist repair was configured but the bucket's listing is not the
    /// truth (retention evicts current values, K7); the fold is left as
    /// committed at `cursor`.
    #[error("relist refused after cursor expiry ({reason}): the bucket's listing is not the truth")]
    RelistRefused {
        /// Why the cursor expired.
        reason: ExpiryReason,
        /// The committed cursor.
        cursor: WatchCursor,
    },
    /// The repair plan needs a restore from an artifact, which this engine
    /// cannot do yet; the fold is left as committed at `cursor`.
    #[error("repair after cursor expiry ({reason}) needs a restore, which is not available yet")]
    RestoreUnavailable {
        /// Why the cursor expired.
        reason: ExpiryReason,
        /// The committed cursor.
        cursor: WatchCursor,
    },
    /// The bucket was recreated or rolled back (its identity changed or
    /// the cursor is past its log); repairing that is not available yet.
    /// The fold is left as committed at `cursor`.
    #[error(
        "cursor expired because the bucket was recreated or rolled back ({reason}); not repaired"
    )]
    BucketReplaced {
        /// Why the cursor expired.
        reason: ExpiryReason,
        /// The committed cursor.
        cursor: WatchCursor,
    },
    /// A repair would delete `deletions` of the `fold_len` in-scope keys,
    /// more than the mass-delete guard allows (K14); it is held until
    /// overridden with [`MassDeletePolicy::Allow`]. The fold is left as
    /// committed at `cursor`.
    ///
    /// [`MassDeletePolicy::Allow`]: crate::MassDeletePolicy::Allow
    #[error("repair held by the mass-delete guard: it would delete {deletions} of {fold_len} keys")]
    MassDeleteHeld {
        /// Keys the repair would delete.
        deletions: u64,
        /// In-scope keys of the fold.
        fold_len: u64,
        /// The committed cursor.
        cursor: WatchCursor,
    },
    /// A relist repair needs a store to compare the listing with; a watch
    /// without one cannot delete what it never sees.
    #[error("relist repair after cursor expiry ({reason}) needs a store")]
    RepairNeedsStore {
        /// Why the cursor expired.
        reason: ExpiryReason,
    },
    /// A repair step failed (R4); the fold is left as committed.
    #[error("repair failed while {stage}: {source}")]
    RepairFailed {
        /// The step: reading retention, listing.
        stage: &'static str,
        /// The backend's error.
        #[source]
        source: KvError,
    },
    /// The store failed to commit this many times in a row; the watch
    /// stopped. The store still holds its last committed (data, cursor).
    #[error("store commit failed {attempts} times in a row; last error: {last}")]
    StoreFailed {
        /// Consecutive failed commits.
        attempts: u32,
        /// The last commit's error.
        #[source]
        last: SnapshotError,
    },
    /// A store operation failed where no retry applies (the final flush at
    /// shutdown, a close).
    #[error("store {operation} failed: {source}")]
    Store {
        /// What was being done.
        operation: &'static str,
        /// The store's error.
        #[source]
        source: SnapshotError,
    },
    /// A blocking store task panicked; the store it held is gone.
    #[error("store {operation} panicked; the store is lost")]
    StorePanicked {
        /// What was being done.
        operation: &'static str,
    },
    /// Closing the store did not finish within the bound; it goes on in the
    /// background on its own thread.
    #[error("closing the store did not finish within {after:?}")]
    CloseTimedOut {
        /// The bound that elapsed.
        after: Duration,
    },
    /// An export was requested from a watch without a store.
    #[error("this watch has no store to export")]
    NoStore,
    /// An export failed; the watch goes on.
    #[error("export failed: {0}")]
    Export(#[source] SnapshotError),
    /// The watch stopped before answering the export request.
    #[error("the watch stopped before handling the export request")]
    ExportDropped,
    /// The KV backend failed in a way the engine does not retry.
    #[error("kv backend: {0}")]
    Kv(#[from] KvError),
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}
