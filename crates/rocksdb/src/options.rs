//! `RocksDbOptions`: how a RocksDB store is opened.

use slipstream_snapshot::Durability;

/// How to open a [`RocksDbStore`](crate::RocksDbStore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RocksDbOptions {
    /// Whether each commit's WAL write is fsynced (default: fsync each
    /// commit). The WAL is always on.
    pub durability: Durability,
    /// Block cache capacity in bytes (default 64 MiB).
    pub block_cache_bytes: usize,
    /// Background flush and compaction jobs (default 2; 0 counts as 1).
    pub background_jobs: u16,
    /// Compression of the data column family's blocks.
    pub compression: Compression,
}

impl Default for RocksDbOptions {
    fn default() -> Self {
        Self {
            durability: Durability::default(),
            block_cache_bytes: 64 << 20,
            background_jobs: 2,
            compression: Compression::default(),
        }
    }
}

impl RocksDbOptions {
    /// The defaults with `durability`.
    #[must_use]
    pub fn with_durability(durability: Durability) -> Self {
        Self {
            durability,
            ..Self::default()
        }
    }
}

/// Block compression of the data column family. Only LZ4 is built in (the
/// other libraries lengthen RocksDB's build for little gain on small
/// values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// LZ4.
    #[default]
    Lz4,
    /// Uncompressed blocks.
    None,
}
