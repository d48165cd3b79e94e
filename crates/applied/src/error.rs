//! `AppliedError`: every way an applied watch or one of its requests fails.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use slipstream_kv::{BucketIdentity, ExpiryReason, KvError, WatchCursor, WatchScope};
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
    #[error("relist refused ({reason}): the bucket's listing is not the truth")]
    RelistRefused {
        /// What started the repair.
        reason: RepairCause,
        /// The committed cursor.
        cursor: WatchCursor,
    },
    /// The repair plan needs a restore from an artifact and no
    /// [`RestoreSource`](crate::RestoreSource) is configured, or the watch
    /// has no store to restore into; the fold is left as committed at
    /// `cursor`.
    #[error("repair ({reason}) needs a restore, and no restore source or store is configured")]
    RestoreUnavailable {
        /// What started the repair.
        reason: RepairCause,
        /// The committed cursor.
        cursor: WatchCursor,
    },
    /// A restore was refused before anything was changed (R3, K6): no
    /// usable artifact, or the newest one cannot repair this fold. The
    /// fold is left as committed at `cursor`.
    #[error("restore refused ({reason}): {refusal}")]
    RestoreRefused {
        /// What started the repair.
        reason: RepairCause,
        /// Why the artifact cannot be used.
        refusal: Box<RestoreRefusal>,
        /// The committed cursor.
        cursor: WatchCursor,
    },
    /// Fetching, importing or reading a restore's artifact failed (R4); the
    /// fold is left as committed.
    #[error("restore failed while {stage}: {source}")]
    RestoreFailed {
        /// The step: finding the newest artifact, fetching, importing,
        /// comparing.
        stage: &'static str,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
    #[error("relist repair ({reason}) needs a store")]
    RepairNeedsStore {
        /// What started the repair.
        reason: RepairCause,
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
    /// A relist repair could not create, write or read its scratch files
    /// (R2); the repair failed and the fold is left as committed (R4).
    #[error("relist repair failed {operation} at {path}: {source}", path = path.display())]
    RepairScratchIo {
        /// What was being done.
        operation: &'static str,
        /// The scratch file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A relist repair's scratch run file was truncated or damaged when
    /// read back (R2); the repair failed and the fold is left as committed
    /// (R4).
    #[error("relist repair failed: scratch run {path} is damaged at byte {offset}: {problem}", path = path.display())]
    RepairScratchCorrupt {
        /// The run file.
        path: PathBuf,
        /// Where in the file the damage was noticed.
        offset: u64,
        /// What is wrong.
        problem: &'static str,
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

/// What started a repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepairCause {
    /// The cursor expired: at resume, mid-watch (the floor guard), or
    /// because the bucket was recreated (R1, R7).
    Expired(ExpiryReason),
    /// The watch started without a cursor and K9 asked for a repair before
    /// watching (R6).
    CursorlessStart,
    /// Messages left a bucket that evicts nothing current before the watch
    /// saw them (K11 generalised); repaired once the bucket was quiet.
    LeftUnseen,
}

impl RepairCause {
    /// Whether the bucket was deleted and recreated or rolled back (R7):
    /// the cursor's revisions mean nothing in the bucket as it is now.
    #[must_use]
    pub fn replaces_bucket(&self) -> bool {
        matches!(
            self,
            Self::Expired(
                ExpiryReason::BeyondLastSequence { .. } | ExpiryReason::IdentityChanged { .. }
            )
        )
    }
}

impl fmt::Display for RepairCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Expired(reason) => write!(f, "cursor expired: {reason}"),
            Self::CursorlessStart => f.write_str("start without a cursor"),
            Self::LeftUnseen => f.write_str(
                "messages left the bucket before the watch saw them (a TTL or a purged delete may have removed a key)",
            ),
        }
    }
}

/// Why a restore's artifact cannot repair the fold (R3, K6).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestoreRefusal {
    /// The source holds no artifact.
    NoArtifact,
    /// The artifact was exported by another backend.
    OtherBackend {
        /// The artifact's backend label.
        artifact: String,
        /// This store's backend label.
        store: String,
    },
    /// The artifact's scope does not cover the watch's scope.
    ScopeNotCovered {
        /// The artifact's scope.
        artifact: WatchScope,
        /// The watch's scope.
        watch: WatchScope,
    },
    /// The artifact is not ahead of the fold (K6): restoring it cannot
    /// close the gap.
    NotAhead {
        /// The artifact's cursor revision.
        artifact: u64,
        /// The fold's cursor revision.
        fold: u64,
    },
    /// The artifact's own cursor is below the retention floor (K1): its
    /// gap cannot be closed either.
    ArtifactExpired {
        /// The artifact's cursor revision.
        artifact: u64,
        /// The stream's first retained sequence.
        first_sequence: u64,
    },
    /// The artifact was taken against another incarnation of the bucket.
    OtherIncarnation {
        /// The artifact's bucket identity.
        artifact: BucketIdentity,
        /// The bucket's identity now.
        bucket: BucketIdentity,
    },
}

impl fmt::Display for RestoreRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoArtifact => f.write_str("the restore source holds no artifact"),
            Self::OtherBackend { artifact, store } => {
                write!(
                    f,
                    "the artifact is from backend {artifact}, the store is {store}"
                )
            }
            Self::ScopeNotCovered { artifact, watch } => write!(
                f,
                "the artifact's scope {artifact:?} does not cover the watch's scope {watch:?}"
            ),
            Self::NotAhead { artifact, fold } => write!(
                f,
                "the artifact (revision {artifact}) is not ahead of the fold (revision {fold})"
            ),
            Self::ArtifactExpired {
                artifact,
                first_sequence,
            } => write!(
                f,
                "the artifact's revision {artifact} is itself below the retention floor (first sequence {first_sequence})"
            ),
            Self::OtherIncarnation { artifact, bucket } => write!(
                f,
                "the artifact was taken against bucket {artifact}, the bucket is now {bucket}"
            ),
        }
    }
}
