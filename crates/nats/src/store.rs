//! A bucket handle: reads and writes over async-nats (N10).

use core::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::{self};
use bytes::Bytes;
use slipstream_kv::{
    KvEntry, KvError, KvPurge, KvReader, KvStore, KvTtl, KvWriter, Timestamp, VersionToken,
    validate_key,
};

use crate::api::ConnShared;
use crate::decode::KV_OPERATION;
use crate::error::NatsError;
use crate::jetstream::bounded;

pub(crate) struct BucketInner {
    pub(crate) conn: Arc<ConnShared>,
    pub(crate) js: jetstream::Context,
    pub(crate) kv: kv::Store,
    pub(crate) name: String,
    pub(crate) stream: String,
    /// `$KV.<bucket>.`: a key's subject is this plus the key.
    pub(crate) keyspace: String,
}

/// One bucket on a NATS server. Reader, writer, watcher and purge handle in
/// one cheap clone.
#[derive(Clone)]
pub struct NatsBucket {
    pub(crate) inner: Arc<BucketInner>,
}

impl fmt::Debug for NatsBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBucket")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

/// Why a publish did not store the message.
enum PublishFailure {
    WrongLastSequence,
    Other(KvError),
}

impl NatsBucket {
    pub(crate) fn new(conn: Arc<ConnShared>, kv: kv::Store, name: &str) -> Self {
        let mut js = jetstream::new(conn.client.clone());
        js.set_timeout(conn.settings.request_timeout);
        Self {
            inner: Arc::new(BucketInner {
                conn,
                js,
                kv,
                name: name.to_owned(),
                stream: format!("KV_{name}"),
                keyspace: format!("$KV.{name}."),
            }),
        }
    }

    /// The name of the bucket's stream (`KV_<bucket>`).
    #[must_use]
    pub fn stream_name(&self) -> &str {
        &self.inner.stream
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.inner.conn.settings.request_timeout
    }

    async fn publish(
        &self,
        operation: &str,
        key: &str,
        headers: HeaderMap,
        value: Bytes,
    ) -> Result<u64, PublishFailure> {
        validate_key(key).map_err(PublishFailure::Other)?;
        self.inner
            .conn
            .ensure_open()
            .map_err(|e| PublishFailure::Other(e.into()))?;
        let subject = format!("{}{key}", self.inner.keyspace);
        let result = bounded(operation, self.timeout(), async {
            let ack = self
                .inner
                .js
                .publish_with_headers(subject, headers, value)
                .await
                .map_err(|e| NatsError::Request {
                    operation: operation.to_owned(),
                    reason: e.to_string(),
                })?;
            Ok::<_, NatsError>(ack.await)
        })
        .await
        .map_err(|e| PublishFailure::Other(e.into()))?;
        match result {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                Err(PublishFailure::WrongLastSequence)
            }
            Err(e) if e.kind() == PublishErrorKind::TimedOut => {
                Err(PublishFailure::Other(KvError::Timeout {
                    operation: operation.to_owned(),
                    after: self.timeout(),
                }))
            }
            Err(e) => Err(PublishFailure::Other(
                NatsError::Request {
                    operation: operation.to_owned(),
                    reason: e.to_string(),
                }
                .into(),
            )),
        }
    }

    /// The latest message of `key`, markers included.
    async fn raw_entry(&self, key: &str) -> Result<Option<kv::Entry>, KvError> {
        validate_key(key)?;
        self.inner.conn.ensure_open()?;
        let kv = &self.inner.kv;
        let after = self.timeout();
        let entry = bounded("get", after, async {
            kv.entry(key).await.map_err(|e| match e.kind() {
                kv::EntryErrorKind::TimedOut => NatsError::Timeout {
                    operation: "get".to_owned(),
                    after,
                },
                _ => NatsError::Request {
                    operation: "get".to_owned(),
                    reason: e.to_string(),
                },
            })
        })
        .await?;
        Ok(entry)
    }

    async fn cas(&self, key: &str, value: Bytes, expected: u64) -> Result<u64, KvError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected.to_string().as_str(),
        );
        match self.publish("update", key, headers, value).await {
            Ok(rev) => Ok(rev),
            Err(PublishFailure::WrongLastSequence) => Err(KvError::RevisionMismatch {
                key: key.to_owned(),
                expected,
            }),
            Err(PublishFailure::Other(e)) => Err(e),
        }
    }
}

fn failure(e: PublishFailure, key: &str) -> KvError {
    match e {
        PublishFailure::WrongLastSequence => {
            KvError::OperationFailed(format!("unexpected revision conflict writing {key:?}"))
        }
        PublishFailure::Other(e) => e,
    }
}

fn to_entry(e: kv::Entry) -> Option<KvEntry> {
    if e.operation != Operation::Put {
        return None;
    }
    let nanos = u64::try_from(e.created.unix_timestamp_nanos()).unwrap_or(0);
    Some(KvEntry {
        key: e.key,
        value: e.value,
        version: VersionToken::from_u64(e.revision),
        created: Some(Timestamp::from_unix_nanos(nanos)),
        expires: None,
    })
}

impl KvReader for NatsBucket {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        Ok(self
            .entry(key)
            .await?
            .map(|e| e.value)
            .filter(|v| !v.is_empty()))
    }

    async fn entry(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        Ok(self.raw_entry(key).await?.and_then(to_entry))
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, KvError> {
        let entries = self.live_entries(prefix, true).await?;
        Ok(entries.into_iter().map(|e| e.key).collect())
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<KvEntry>, KvError> {
        self.live_entries(prefix, false).await
    }

    /// Streams without holding the listing: a key rewritten while the
    /// listing runs may be visited twice, and one deleted meanwhile may
    /// still be visited. `keys` and `scan` resolve both.
    async fn for_each_key<F>(&self, prefix: &str, mut f: F) -> Result<u64, KvError>
    where
        F: FnMut(&str) + Send,
    {
        let mut visited = 0;
        self.drain_listing(prefix, true, |update, live| {
            if live {
                visited += 1;
                f(update.key());
            }
        })
        .await?;
        Ok(visited)
    }
}

impl KvWriter for NatsBucket {
    async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        self.publish("put", key, HeaderMap::new(), value)
            .await
            .map_err(|e| failure(e, key))
    }

    async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let mut headers = HeaderMap::new();
        headers.insert(KV_OPERATION, "DEL");
        self.publish("delete", key, headers, Bytes::new())
            .await
            .map_err(|e| failure(e, key))?;
        Ok(true)
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        let exists = || KvError::AlreadyExists {
            key: key.to_owned(),
        };
        match self.cas(key, value.clone(), 0).await {
            Err(KvError::RevisionMismatch { .. }) => {}
            other => return other,
        }
        // The key has history: creating is allowed over a marker or an
        // empty-value tombstone, at that exact revision.
        let Some(latest) = self.raw_entry(key).await? else {
            return Err(exists());
        };
        if latest.operation == Operation::Put && !latest.value.is_empty() {
            return Err(exists());
        }
        self.cas(key, value, latest.revision)
            .await
            .map_err(|e| match e {
                KvError::RevisionMismatch { .. } => exists(),
                other => other,
            })
    }

    async fn update(&self, key: &str, value: Bytes, expected: u64) -> Result<u64, KvError> {
        self.cas(key, value, expected).await
    }

    async fn delete_with_version(&self, key: &str, expected: u64) -> Result<u64, KvError> {
        self.cas(key, Bytes::new(), expected).await
    }
}

impl KvPurge for NatsBucket {
    async fn purge(&self, key: &str) -> Result<(), KvError> {
        let mut headers = HeaderMap::new();
        headers.insert(KV_OPERATION, "PURGE");
        headers.insert("Nats-Rollup", "sub");
        self.publish("purge", key, headers, Bytes::new())
            .await
            .map_err(|e| failure(e, key))?;
        Ok(())
    }
}

impl KvTtl for NatsBucket {
    async fn put_with_ttl(&self, key: &str, value: Bytes, ttl: Duration) -> Result<u64, KvError> {
        // Older servers ignore the TTL header: the value would never expire.
        if !self.inner.conn.server_at_least(2, 11) {
            return Err(KvError::Unsupported(
                "per-message TTL needs nats-server 2.11+".to_owned(),
            ));
        }
        // The server counts TTLs in whole seconds, at least one.
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-TTL", format!("{}s", secs.max(1)).as_str());
        match self.publish("put with ttl", key, headers, value).await {
            Ok(rev) => Ok(rev),
            Err(PublishFailure::Other(KvError::OperationFailed(reason)))
                if reason.to_ascii_lowercase().contains("ttl") =>
            {
                Err(KvError::Unsupported(format!(
                    "per-message TTL on this bucket (needs server 2.11+ and a bucket created with MessageTtl::Enabled): {reason}"
                )))
            }
            Err(e) => Err(failure(e, key)),
        }
    }
}

impl KvStore for NatsBucket {
    type Reader = Self;
    type Writer = Self;
    type Watcher = Self;
    type PurgeWriter = Self;

    fn name(&self) -> &str {
        &self.inner.name
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
