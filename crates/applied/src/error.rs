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
