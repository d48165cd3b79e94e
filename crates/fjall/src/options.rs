//! `FjallOptions`: how a fjall store is opened.

use slipstream_snapshot::Durability;

/// How to open a [`FjallStore`](crate::FjallStore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FjallOptions {
    /// Whether each commit is fsynced (default: fsync each commit).
    pub durability: Durability,
    /// Block cache capacity in bytes (default 64 MiB).
    pub cache_bytes: u64,
    /// Background flush and compaction threads (default 2; 0 counts as 1).
    pub worker_threads: usize,
    /// When [`FjallStore::settle`](crate::FjallStore::settle) compacts the
    /// data keyspace in the foreground.
    pub settle: SettlePolicy,
}

impl Default for FjallOptions {
    fn default() -> Self {
        Self {
            durability: Durability::default(),
            cache_bytes: 64 << 20,
            worker_threads: 2,
            settle: SettlePolicy::default(),
        }
    }
}

impl FjallOptions {
    /// The defaults with `durability`.
    #[must_use]
    pub fn with_durability(durability: Durability) -> Self {
        Self {
            durability,
            ..Self::default()
        }
    }
}

/// How much compaction debt [`FjallStore::settle`](crate::FjallStore::settle)
/// pays off before it returns. Memtables are always flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettlePolicy {
    /// Compact everything into one sorted run once level 0 holds more than
    /// this many tables (a hydration leaves many).
    CompactAboveL0Tables(usize),
    /// Always compact everything into one sorted run.
    AlwaysCompact,
    /// Only flush memtables; leave compaction to the background.
    FlushOnly,
}

impl Default for SettlePolicy {
    fn default() -> Self {
        Self::CompactAboveL0Tables(4)
    }
}
