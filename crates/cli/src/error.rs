//! `CliError`: every way a command fails, each shown as one line.

use std::path::PathBuf;

use slipstream::{AppliedError, KvError, SnapshotError};

/// Every failure of a `slipstream` command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CliError {
    /// A store, export or import failed.
    #[error("{0}")]
    Snapshot(#[from] SnapshotError),
    /// Talking to the NATS server failed.
    #[error("{0}")]
    Kv(#[from] KvError),
    /// An artifact transport failed, or refused what it found.
    #[error("artifacts: {0}")]
    Fleet(#[from] slipstream::fleet::FleetError),
    /// The mirror's engine stopped with an error.
    #[error("{0}")]
    Applied(AppliedError),
    /// The fold needs a repair the mirror could not do with its flags; `fix`
    /// names the flag that would let it go on.
    #[error("{source}; {fix} (the fold is left as committed)")]
    RepairBlocked {
        /// The engine's refusal.
        source: AppliedError,
        /// What the operator can pass to let the repair go on.
        fix: String,
    },
    /// The mirror's cursor is outside the bucket's retained history and the
    /// chosen repair mode cannot repair it in this build.
    #[error(
        "cursor expired at revision {revision}: {reason}; {advice} (the fold is left as committed)"
    )]
    CursorExpired {
        /// The applied revision, or `none`.
        revision: String,
        /// Why the cursor is outside the log.
        reason: String,
        /// What the operator can do.
        advice: String,
    },
    /// A file of the CLI's own could not be read or written.
    #[error("{operation} {path:?}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The store directory does not hold what the command needs.
    #[error("store {path:?}: {detail}")]
    Store {
        /// The store directory.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The path given as an artifact is not a usable one.
    #[error("artifact {path:?}: {detail}")]
    Artifact {
        /// The artifact directory.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The store holds another backend than the one asked for (C2).
    #[error(
        "store {path:?} holds the {found} backend, not {requested} (omit --backend, or use a new --store)"
    )]
    WrongBackend {
        /// The store directory.
        path: PathBuf,
        /// The backend asked for.
        requested: String,
        /// The backend the store holds.
        found: String,
    },
    /// The backend exists but this binary was built without it.
    // Unused in a build with every backend.
    #[cfg_attr(all(feature = "fjall", feature = "rocksdb"), allow(dead_code))]
    #[error(
        "this build of slipstream has no {0} backend (rebuild slipstream-cli with --features {0})"
    )]
    BackendNotBuilt(&'static str),
    /// A command-line value is unusable in a way clap cannot check.
    #[error("{0}")]
    Usage(String),
    /// A key the command needed does not exist.
    #[error("key {0:?} not found")]
    KeyNotFound(String),
    /// The metrics endpoint could not be served.
    #[error("metrics: {0}")]
    Metrics(String),
    /// Writing the command's output failed.
    #[error("writing output: {0}")]
    Output(#[source] std::io::Error),
}

impl CliError {
    /// An [`CliError::Io`] for `operation` on `path`.
    pub(crate) fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            operation,
            path: path.into(),
            source,
        }
    }

    /// The process exit code: 3 when the fold needs a repair that was not
    /// done (mode `none`, refused, held, or no artifact to restore from), 2
    /// for usage errors (as clap), 1 otherwise.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::CursorExpired { .. }
            | Self::RepairBlocked { .. }
            | Self::Applied(
                AppliedError::RelistRefused { .. }
                | AppliedError::RestoreUnavailable { .. }
                | AppliedError::RestoreRefused { .. }
                | AppliedError::MassDeleteHeld { .. },
            ) => 3,
            Self::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl From<AppliedError> for CliError {
    fn from(e: AppliedError) -> Self {
        match e {
            AppliedError::Kv(kv) => Self::Kv(kv),
            other => Self::Applied(other),
        }
    }
}
