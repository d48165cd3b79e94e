//! The client side: connection, bucket handle, and the KV trait impls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use slipstream_kv::{
    Connection, ConnectionCapabilities, ExpiryReason, KvEntry, KvError, KvPurge, KvReader, KvStore,
    KvTtl, KvWatcher, KvWriter, MessageTtl, Retention, StoreConfig, Timestamp, VersionToken,
    WatchCursor, WatchScope, WatchStart, validate_key, validate_prefix,
};
use slipstream_protocol::{cursor_beyond_log, resume_start_sequence, resume_window_ok};

use crate::bucket::{Bucket, Operation};
use crate::consumer::{MemoryWatch, WatchPlan};
use crate::server::Shared;

/// How many keys `for_each_key` copies out per lock.
const KEY_CHUNK: usize = 256;

/// A client connection to a [`crate::MemoryServer`].
///
/// Starts disconnected; [`Connection::connect`] is idempotent and may be
/// called again after [`Connection::shutdown`]. Every operation of a
/// disconnected connection (and of the buckets and watches opened through
/// it) fails with [`KvError::NotConnected`].
#[derive(Debug, Clone)]
pub struct MemoryConnection {
    shared: Arc<Shared>,
    connected: Arc<AtomicBool>,
}

impl MemoryConnection {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            connected: Arc::new(AtomicBool::new(false)),
        }
    }

    fn check(&self) -> Result<(), KvError> {
        if self.connected.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(KvError::NotConnected)
        }
    }
}

fn validate_bucket_name(config: &StoreConfig) -> Result<(), KvError> {
    slipstream_kv::validate_bucket_name(&config.name)?;
    if !(1..=64).contains(&config.history) {
        return Err(KvError::InvalidConfig("history must be 1-64".into()));
    }
    if !(1..=5).contains(&config.replicas) {
        return Err(KvError::InvalidConfig("replicas must be 1-5".into()));
    }
    Ok(())
}

impl Connection for MemoryConnection {
    type Store = MemoryStore;

    async fn connect(&self) -> Result<(), KvError> {
        self.connected.store(true, Ordering::Release);
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), KvError> {
        self.connected.store(false, Ordering::Release);
        // Watches notice on their next poll.
        self.shared.wake_all();
        Ok(())
    }

    fn is_healthy(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    async fn store(&self, name: &str) -> Result<MemoryStore, KvError> {
        self.store_with_config(&StoreConfig::new(name)).await
    }

    async fn store_with_config(&self, config: &StoreConfig) -> Result<MemoryStore, KvError> {
        self.check()?;
        validate_bucket_name(config)?;
        self.shared.client(|state, now| {
            if !state.has_bucket(&config.name) {
                state.create_bucket(config, now);
            }
            Ok(())
        })?;
        Ok(MemoryStore {
            conn: self.clone(),
            name: Arc::from(config.name.as_str()),
        })
    }

    fn capabilities(&self) -> ConnectionCapabilities {
        ConnectionCapabilities {
            multi_filter_watch: true,
            per_message_ttl: true,
            purge: true,
            // Listings read the index, never the values.
            headers_only_listing: true,
        }
    }
}

/// A bucket opened through a [`MemoryConnection`]; it is also its own
/// reader, writer, watcher and purge handle.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    conn: MemoryConnection,
    name: Arc<str>,
}

impl MemoryStore {
    /// Run a client operation on the bucket.
    fn with<R>(
        &self,
        f: impl FnOnce(&mut Bucket, Timestamp) -> Result<R, KvError>,
    ) -> Result<R, KvError> {
        self.conn.check()?;
        self.conn
            .shared
            .client(|state, now| f(state.bucket(&self.name, now)?, now))
    }

    /// Run a client write; it wakes watches.
    fn write<R>(
        &self,
        key: &str,
        f: impl FnOnce(&mut Bucket, Timestamp) -> Result<R, KvError>,
    ) -> Result<R, KvError> {
        validate_key(key)?;
        self.conn.check()?;
        self.conn.shared.client(|state, now| {
            let out = f(state.bucket(&self.name, now)?, now);
            state.mark_changed();
            out
        })
    }

    fn cas(&self, key: &str, value: Bytes, expected: u64) -> Result<u64, KvError> {
        self.write(key, |b, now| {
            if b.last_subject_seq(key) != expected {
                return Err(KvError::RevisionMismatch {
                    key: key.to_owned(),
                    expected,
                });
            }
            b.append(key, Operation::Put, value, now, None)
        })
    }
}

impl KvStore for MemoryStore {
    type Reader = Self;
    type Writer = Self;
    type Watcher = Self;
    type PurgeWriter = Self;

    fn name(&self) -> &str {
        &self.name
    }

    fn reader(&self) -> Self {
        self.clone()
    }

    fn writer(&self) -> Self {
        self.clone()
    }

    fn watcher(&self) -> Self {
        self.clone()
    }

    fn purge_writer(&self) -> Self {
        self.clone()
    }
}

impl KvReader for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        Ok(self
            .entry(key)
            .await?
            .map(|e| e.value)
            .filter(|v| !v.is_empty()))
    }

    async fn entry(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        validate_key(key)?;
        self.with(|b, _| {
            Ok(b.latest(key)
                .filter(|m| m.operation == Operation::Put)
                .map(|m| KvEntry {
                    key: m.key.clone(),
                    value: m.value.clone(),
                    version: VersionToken::from_u64(m.sequence),
                    created: Some(m.created),
                    expires: m.expires,
                }))
        })
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, KvError> {
        let mut keys = Vec::new();
        self.for_each_key(prefix, |k| keys.push(k.to_owned()))
            .await?;
        Ok(keys)
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<KvEntry>, KvError> {
        validate_prefix(prefix)?;
        self.with(|b, _| {
            Ok(b.live_after(prefix, None, usize::MAX)
                .into_iter()
                .map(|m| KvEntry {
                    key: m.key.clone(),
                    value: m.value.clone(),
                    version: VersionToken::from_u64(m.sequence),
                    created: Some(m.created),
                    expires: m.expires,
                })
                .collect())
        })
    }

    async fn for_each_key<F>(&self, prefix: &str, mut f: F) -> Result<u64, KvError>
    where
        F: FnMut(&str) + Send,
    {
        validate_prefix(prefix)?;
        let mut visited = 0;
        let mut last: Option<String> = None;
        loop {
            // The callback runs outside the lock, a chunk at a time.
            let read = |b: &mut Bucket, _| {
                Ok(b.live_after(prefix, last.as_deref(), KEY_CHUNK)
                    .into_iter()
                    .map(|m| m.key.clone())
                    .collect())
            };
            // One listing is one operation: only its first chunk can be
            // failed by an injected fault.
            let chunk: Vec<String> = if last.is_none() {
                self.with(read)?
            } else {
                self.conn.check()?;
                self.conn
                    .shared
                    .admin(|state, now| read(state.bucket(&self.name, now)?, now))?
            };
            chunk.iter().for_each(|k| f(k));
            visited += chunk.len() as u64;
            if chunk.len() < KEY_CHUNK {
                return Ok(visited);
            }
            last = chunk.into_iter().last();
        }
    }
}

impl KvWriter for MemoryStore {
    async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        self.write(key, |b, now| {
            b.append(key, Operation::Put, value, now, None)
        })
    }

    async fn delete(&self, key: &str) -> Result<bool, KvError> {
        self.write(key, |b, now| {
            b.append(key, Operation::Delete, Bytes::new(), now, None)
                .map(|_| true)
        })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        self.write(key, |b, now| {
            let live = b
                .latest(key)
                .is_some_and(|m| m.operation == Operation::Put && !m.value.is_empty());
            if live {
                return Err(KvError::AlreadyExists {
                    key: key.to_owned(),
                });
            }
            b.append(key, Operation::Put, value, now, None)
        })
    }

    async fn update(&self, key: &str, value: Bytes, expected: u64) -> Result<u64, KvError> {
        self.cas(key, value, expected)
    }

    async fn delete_with_version(&self, key: &str, expected: u64) -> Result<u64, KvError> {
        self.cas(key, Bytes::new(), expected)
    }
}

impl KvPurge for MemoryStore {
    async fn purge(&self, key: &str) -> Result<(), KvError> {
        self.write(key, |b, now| {
            b.append(key, Operation::Purge, Bytes::new(), now, None)
                .map(|_| ())
        })
    }
}

impl KvTtl for MemoryStore {
    async fn put_with_ttl(&self, key: &str, value: Bytes, ttl: Duration) -> Result<u64, KvError> {
        if ttl.is_zero() {
            return Err(KvError::InvalidConfig(
                "a message TTL must be positive".into(),
            ));
        }
        self.write(key, |b, now| {
            if b.limits.message_ttl != MessageTtl::Enabled {
                return Err(KvError::OperationFailed(
                    "per-message TTL is disabled on this bucket".into(),
                ));
            }
            b.append(key, Operation::Put, value, now, Some(ttl))
        })
    }
}

/// K2, then identity, K3 and K1 against the bucket as it is now. The
/// simulator's consumer would clamp silently; this is where expiry is
/// detected, as the NATS backend does it.
fn plan_delta(
    cursor: &WatchCursor,
    bucket: &Bucket,
    scope: &WatchScope,
) -> Result<WatchPlan, KvError> {
    let expired = |reason| Err(KvError::CursorExpired { reason });
    let revision = cursor.rank();
    let Some(start) = resume_start_sequence(revision) else {
        return expired(ExpiryReason::NoNextSequence);
    };
    if let Some(expected) = cursor.identity()
        && *expected != bucket.identity
    {
        return expired(ExpiryReason::IdentityChanged {
            expected: expected.clone(),
            found: bucket.identity.clone(),
        });
    }
    let last_sequence = bucket.last_seq();
    if cursor_beyond_log(revision, last_sequence) {
        return expired(ExpiryReason::BeyondLastSequence {
            revision,
            last_sequence,
        });
    }
    let first_sequence = bucket.first_seq();
    if !resume_window_ok(revision, first_sequence) {
        return expired(ExpiryReason::BelowFirstSequence {
            revision,
            first_sequence,
        });
    }
    Ok(WatchPlan::Delta {
        start,
        guard_from: scope.is_all().then_some(revision),
    })
}

impl KvWatcher for MemoryStore {
    type WatchStream = MemoryWatch;

    fn now(&self) -> Timestamp {
        self.conn.shared.clock.now()
    }

    async fn watch(&self, scope: &WatchScope, start: WatchStart) -> Result<MemoryWatch, KvError> {
        scope.validate()?;
        self.conn.check()?;
        let shared = Arc::clone(&self.conn.shared);
        let connected = Arc::clone(&self.conn.connected);
        self.conn.shared.client(|state, now| {
            let plan = match &start {
                WatchStart::Relist => WatchPlan::StateSync,
                WatchStart::After(cursor) => {
                    plan_delta(cursor, state.bucket(&self.name, now)?, scope)?
                }
            };
            MemoryWatch::create(
                shared,
                state,
                now,
                &self.name,
                scope.clone(),
                plan,
                connected,
            )
        })
    }

    async fn retention(&self) -> Result<Retention, KvError> {
        self.with(|b, now| Ok(b.retention(now)))
    }
}
