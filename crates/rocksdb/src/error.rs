//! `RocksDbStoreError`: the backend-specific failures, carried inside
//! [`SnapshotError::Backend`].

use slipstream_snapshot::SnapshotError;

/// The RocksDB store's backend id, as reported in errors.
pub(crate) const BACKEND: &str = "rocksdb";

/// A failure specific to the RocksDB store; it reaches callers as the source
/// of a [`SnapshotError::Backend`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RocksDbStoreError {
    /// RocksDB itself failed (I/O, corruption it detected, a bad option).
    #[error("rocksdb: {0}")]
    Engine(#[from] rocksdb::Error),
    /// A column family this store creates at open is missing.
    #[error("column family {name:?} is missing")]
    MissingColumnFamily {
        /// The column family.
        name: &'static str,
    },
    /// A stored key is not UTF-8: the data column family was written by
    /// something other than this store.
    #[error("stored key is not UTF-8: {key:?}")]
    NonUtf8Key {
        /// The key's bytes (lossily decoded).
        key: String,
    },
}

impl From<RocksDbStoreError> for SnapshotError {
    fn from(e: RocksDbStoreError) -> Self {
        Self::Backend {
            backend: BACKEND,
            source: Box::new(e),
        }
    }
}

/// Wrap a RocksDB error.
pub(crate) fn engine(e: rocksdb::Error) -> SnapshotError {
    RocksDbStoreError::Engine(e).into()
}
