//! The backend traits (V5–V9).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

use crate::config::{ConnectionCapabilities, StoreConfig};
use crate::cursor::Timestamp;
use crate::entry::{KvEntry, WatchEvent};
use crate::error::KvError;
use crate::scope::{Retention, WatchScope, WatchStart};

/// Reading a bucket (V5).
pub trait KvReader: Send + Sync {
    /// The key's value; `None` for a missing key, a delete or purge marker,
    /// and an empty-value tombstone.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Bytes>, KvError>> + Send;

    /// The key's raw latest entry: empty-value puts are returned with their
    /// version; `None` for a missing key or a marker.
    fn entry(&self, key: &str) -> impl Future<Output = Result<Option<KvEntry>, KvError>> + Send;

    /// Live keys starting with `prefix`, sorted. Markers and empty-value
    /// tombstones are skipped.
    fn keys(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, KvError>> + Send;

    /// Live entries starting with `prefix`, sorted by key. Markers and
    /// empty-value tombstones are skipped.
    fn scan(&self, prefix: &str) -> impl Future<Output = Result<Vec<KvEntry>, KvError>> + Send;

    /// Call `f` with each live key starting with `prefix`, in the server's
    /// order, without holding the whole listing in memory. Returns how many
    /// keys were visited.
    fn for_each_key<F>(
        &self,
        prefix: &str,
        f: F,
    ) -> impl Future<Output = Result<u64, KvError>> + Send
    where
        F: FnMut(&str) + Send;
}

/// Writing a bucket (V6). Every write returns the new revision.
pub trait KvWriter: Send + Sync {
    /// Store a value.
    fn put(&self, key: &str, value: Bytes) -> impl Future<Output = Result<u64, KvError>> + Send;

    /// Write a delete marker. Reports `true` even if the key was absent.
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool, KvError>> + Send;

    /// Store a value only if the key has no live value
    /// ([`KvError::AlreadyExists`] otherwise).
    fn create(&self, key: &str, value: Bytes) -> impl Future<Output = Result<u64, KvError>> + Send;

    /// Store a value only if the key's latest revision is `expected`
    /// ([`KvError::RevisionMismatch`] otherwise).
    fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: u64,
    ) -> impl Future<Output = Result<u64, KvError>> + Send;

    /// Compare-and-set the key to an empty-value tombstone.
    fn delete_with_version(
        &self,
        key: &str,
        expected: u64,
    ) -> impl Future<Output = Result<u64, KvError>> + Send;
}

/// Purging a key (V6).
pub trait KvPurge: Send + Sync {
    /// Roll the key's history up into one purge marker, reclaiming the
    /// bytes. Idempotent.
    fn purge(&self, key: &str) -> impl Future<Output = Result<(), KvError>> + Send;
}

/// Per-message TTL (V6), where the backend supports it.
pub trait KvTtl: Send + Sync {
    /// Store a value that the server removes after `ttl`.
    fn put_with_ttl(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<u64, KvError>> + Send;
}

/// Watching a bucket (V7, V8).
pub trait KvWatcher: Send + Sync {
    /// The stream a watch yields.
    type WatchStream: Stream<Item = Result<WatchEvent, KvError>> + Send + Unpin + 'static;

    /// Start a watch. A setup-time expiry is `Err(CursorExpired)` from this
    /// call; a mid-stream expiry (the floor guard) is an `Err(CursorExpired)`
    /// item, after which the stream ends.
    fn watch(
        &self,
        scope: &WatchScope,
        start: WatchStart,
    ) -> impl Future<Output = Result<Self::WatchStream, KvError>> + Send;

    /// The bucket's retention, read live from the server.
    fn retention(&self) -> impl Future<Output = Result<Retention, KvError>> + Send;

    /// The clock the bucket's message times and per-message expiries are
    /// measured against: the wall clock, unless the backend simulates
    /// time.
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// One bucket, and handles to read, write, watch and purge it (V9).
pub trait KvStore: Clone + Send + Sync + 'static {
    /// The reader handle.
    type Reader: KvReader + Clone + 'static;
    /// The writer handle.
    type Writer: KvWriter + Clone + 'static;
    /// The watcher handle.
    type Watcher: KvWatcher + Clone + 'static;
    /// The purge handle.
    type PurgeWriter: KvPurge + Clone + 'static;

    /// The bucket's name.
    fn name(&self) -> &str;
    /// A reader.
    fn reader(&self) -> Self::Reader;
    /// A writer.
    fn writer(&self) -> Self::Writer;
    /// A watcher.
    fn watcher(&self) -> Self::Watcher;
    /// A purge handle.
    fn purge_writer(&self) -> Self::PurgeWriter;
}

/// A connection to a server (V9).
pub trait Connection: Send + Sync {
    /// The bucket type.
    type Store: KvStore;

    /// Connect (idempotent; concurrent calls install one client).
    fn connect(&self) -> impl Future<Output = Result<(), KvError>> + Send;

    /// Close the connection.
    fn shutdown(&self) -> impl Future<Output = Result<(), KvError>> + Send;

    /// Whether the connection is up right now.
    fn is_healthy(&self) -> bool;

    /// Open an existing bucket, or create it with default settings.
    fn store(&self, name: &str) -> impl Future<Output = Result<Self::Store, KvError>> + Send;

    /// Open a bucket, creating it with `config` if it does not exist. An
    /// existing bucket is used as it is.
    fn store_with_config(
        &self,
        config: &StoreConfig,
    ) -> impl Future<Output = Result<Self::Store, KvError>> + Send;

    /// What this backend can do.
    fn capabilities(&self) -> ConnectionCapabilities;
}
