//! The crate's one error type.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use slipstream_applied::AppliedError;
use slipstream_snapshot::SnapshotError;

/// Why a downloaded artifact, or a stored one about to be downloaded, was
/// refused. A refusal is decided before anything is imported: the scratch
/// copy is removed and the engine never sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// An object the manifest or pointer names is not in the store.
    MissingObject,
    /// The store announces a size other than the manifest's.
    SizeMismatch {
        /// The manifest's size.
        expected: u64,
        /// The store's announced size.
        announced: u64,
    },
    /// The object ended before the manifest's size.
    Truncated {
        /// The manifest's size.
        expected: u64,
        /// Bytes received.
        received: u64,
    },
    /// The object runs past the manifest's size.
    Oversize {
        /// The manifest's size.
        expected: u64,
    },
    /// The bytes' BLAKE3 digest is not the manifest's (or, for a manifest,
    /// not the one the pointer recorded).
    DigestMismatch,
    /// The manifest is larger than
    /// [`MAX_MANIFEST_BYTES`](slipstream_snapshot::MAX_MANIFEST_BYTES).
    ManifestTooLarge,
    /// The manifest's cursor rank is not the rank the pointer recorded.
    RankMismatch {
        /// The pointer's rank.
        pointer: u64,
        /// The manifest's rank.
        manifest: u64,
    },
    /// A path escapes the artifact (absolute, `..`, empty segment) or is
    /// listed twice.
    HostilePath,
}

/// What can go wrong in fleet artifact handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// A local file operation failed.
    #[error("{operation} {}: {source}", path.display())]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A server round trip (or a transfer stalled for longer than its
    /// bound) exceeded its bound.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        operation: String,
        /// The bound.
        after: Duration,
    },
    /// The NATS server or client reported a failure.
    #[error("{operation}: {reason}")]
    Nats {
        /// What was being done.
        operation: String,
        /// The client's description.
        reason: String,
    },
    /// Reading or writing a stored object failed midway (connection lost,
    /// object deleted while being read).
    #[error("transferring {object}: {reason}")]
    Transfer {
        /// The object's name.
        object: String,
        /// The description.
        reason: String,
    },
    /// A bucket, object or key name this crate would build is not valid.
    #[error("invalid name {0:?}")]
    InvalidName(String),
    /// A local artifact (one to publish) or a stored manifest is invalid
    /// (A3: unparseable manifest, unsupported schema, path traversal, ...).
    #[error("artifact: {0}")]
    Artifact(#[from] SnapshotError),
    /// The artifact is not of the scope and backend this transport serves.
    #[error("artifact is for {found}, this transport serves {expected}")]
    WrongArtifact {
        /// What the transport serves.
        expected: String,
        /// What the artifact is.
        found: String,
    },
    /// A local artifact's file changed or vanished while it was being
    /// published: its size or digest is not its manifest's. Nothing was
    /// pointed at it.
    #[error("{path} does not match its manifest while being published")]
    SourceChanged {
        /// The manifest path of the file.
        path: String,
    },
    /// A stored object was refused (hostile, truncated or tampered).
    #[error("refused stored object {object}: {reason:?}")]
    Refused {
        /// The object's name.
        object: String,
        /// Why.
        reason: Refusal,
    },
    /// The pointer's value is unreadable, so there is no newest artifact to
    /// trust. The next publish replaces it (K12).
    #[error("the artifact pointer {key} is unreadable: {detail}")]
    PointerCorrupt {
        /// The pointer's key.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A compare-and-set kept losing to concurrent writers.
    #[error("{operation}: lost {attempts} compare-and-set races in a row")]
    Contended {
        /// What was being done.
        operation: &'static str,
        /// How many attempts were made.
        attempts: u32,
    },
    /// A payload handed to `fetch` did not come from this transport's
    /// `newest`.
    #[error("payload {0:?} is not one this transport listed")]
    UnknownPayload(String),
    /// The running engine's export failed or the engine has stopped.
    #[error("export: {0}")]
    Export(#[from] AppliedError),
    /// A blocking task panicked or was cancelled.
    #[error("{0} did not finish: it panicked or was cancelled")]
    TaskFailed(&'static str),
}

impl FleetError {
    pub(crate) fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            operation,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn refused(object: impl Into<String>, reason: Refusal) -> Self {
        Self::Refused {
            object: object.into(),
            reason,
        }
    }

    pub(crate) fn nats(operation: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Nats {
            operation: operation.into(),
            reason: reason.to_string(),
        }
    }

    /// Whether this is a refusal of a stored object.
    #[must_use]
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }
}

/// Run `fut`, failing with [`FleetError::Timeout`] after `after`.
pub(crate) async fn bounded<T, F>(operation: &str, after: Duration, fut: F) -> Result<T, FleetError>
where
    F: Future<Output = Result<T, FleetError>>,
{
    match tokio::time::timeout(after, fut).await {
        Ok(result) => result,
        Err(_) => Err(FleetError::Timeout {
            operation: operation.to_owned(),
            after,
        }),
    }
}
