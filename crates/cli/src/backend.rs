//! Running a command against whichever backend a store holds: the commands
//! are generic over [`SnapshotStore`], this picks the type.

use std::path::Path;

use slipstream::{AppendLogStore, SnapshotStore};

use crate::error::CliError;
use crate::layout::BackendKind;

/// A command body generic over the store type.
pub(crate) trait WithStore {
    /// What the command produces.
    type Output;

    /// Run with the store type `S`, whose files are (or will be) in `fold`.
    fn run<S: SnapshotStore>(self, fold: &Path) -> Result<Self::Output, CliError>;
}

/// Run `task` with the store type of `backend`.
///
/// # Errors
/// [`CliError::BackendNotBuilt`] for a backend left out of this build, or
/// the task's own error.
pub(crate) fn dispatch<T: WithStore>(
    backend: BackendKind,
    fold: &Path,
    task: T,
) -> Result<T::Output, CliError> {
    match backend {
        BackendKind::AppendLog => task.run::<AppendLogStore>(fold),
        #[cfg(feature = "fjall")]
        BackendKind::Fjall => task.run::<slipstream::FjallStore>(fold),
        #[cfg(not(feature = "fjall"))]
        BackendKind::Fjall => Err(CliError::BackendNotBuilt("fjall")),
        #[cfg(feature = "rocksdb")]
        BackendKind::Rocksdb => task.run::<slipstream::RocksDbStore>(fold),
        #[cfg(not(feature = "rocksdb"))]
        BackendKind::Rocksdb => Err(CliError::BackendNotBuilt("rocksdb")),
    }
}

/// Open the store in `fold` with its default options.
///
/// # Errors
/// The store's error; a lock held by a running mirror is named as such.
pub(crate) fn open_store<S: SnapshotStore>(fold: &Path) -> Result<S, CliError> {
    match S::open(fold, &S::Options::default()) {
        Ok((_, store)) => Ok(store),
        Err(slipstream::SnapshotError::Locked { path }) => Err(CliError::Store {
            path,
            detail: "is in use by another process (a running `slipstream mirror`?)".into(),
        }),
        Err(e) => Err(e.into()),
    }
}
