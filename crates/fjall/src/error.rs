//! `FjallStoreError`: the backend-specific failures, carried inside
//! [`SnapshotError::Backend`].

use slipstream_snapshot::SnapshotError;

/// The fjall store's backend id, as reported in errors.
pub(crate) const BACKEND: &str = "fjall";

/// A failure specific to the fjall store; it reaches callers as the source
/// of a [`SnapshotError::Backend`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FjallStoreError {
    /// fjall itself failed (I/O, journal recovery, a poisoned database).
    #[error("fjall: {0}")]
    Engine(#[from] fjall::Error),
    /// A stored key is not UTF-8: the data keyspace was written by something
    /// other than this store.
    #[error("stored key is not UTF-8: {key:?}")]
    NonUtf8Key {
        /// The key's bytes (lossily decoded).
        key: String,
    },
}

impl From<FjallStoreError> for SnapshotError {
    fn from(e: FjallStoreError) -> Self {
        Self::Backend {
            backend: BACKEND,
            source: Box::new(e),
        }
    }
}

/// Wrap a fjall error.
pub(crate) fn engine(e: fjall::Error) -> SnapshotError {
    FjallStoreError::Engine(e).into()
}
