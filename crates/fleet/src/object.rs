//! Artifacts in a NATS object store bucket, with the pointer and the lease
//! in a companion KV bucket, so a fleet needs nothing beyond NATS.
//!
//! Objects are named `<prefix>/<payload>/MANIFEST.json` and
//! `<prefix>/<payload>/data/...`, where `<prefix>` is the
//! [`FleetKey::prefix`] and `<payload>` the artifact's rank (zero-padded)
//! and a unique suffix. The KV bucket `<bucket>_meta` holds
//! `<prefix>.pointer` and `<prefix>.lease`; their CAS is the server's
//! expected-last-subject-sequence check.

use async_nats::jetstream::{self, kv, object_store};
use futures::TryStreamExt;
use tokio::io::AsyncRead;

use crate::core::{Backend, Cas, Core, Download, MetaEntry};
use crate::error::{FleetError, bounded};
use crate::naming::FleetKey;
use crate::transport::FleetTimeouts;

/// The NATS object store backing an [`ObjectStoreTransport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStoreConfig {
    bucket: String,
    replicas: usize,
    timeouts: FleetTimeouts,
}

impl ObjectStoreConfig {
    /// The object store bucket `bucket` (created if absent); the pointer
    /// and lease live in the KV bucket `<bucket>_meta`.
    #[must_use]
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            replicas: 1,
            timeouts: FleetTimeouts::default(),
        }
    }

    /// Replicas for buckets this transport creates (default 1).
    #[must_use]
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// Bounds on round trips and transfers.
    #[must_use]
    pub fn timeouts(mut self, timeouts: FleetTimeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// The object store bucket's name.
    #[must_use]
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The companion KV bucket's name.
    #[must_use]
    pub fn meta_bucket(&self) -> String {
        format!("{}_meta", self.bucket)
    }
}

/// The object store and its metadata bucket.
pub(crate) struct NatsObjects {
    objects: object_store::ObjectStore,
    meta: kv::Store,
    bucket: String,
}

impl std::fmt::Debug for NatsObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsObjects")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

fn valid_bucket_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Backend for NatsObjects {
    async fn meta_get(&self, key: &str) -> Result<Option<MetaEntry>, FleetError> {
        let entry = self
            .meta
            .entry(key)
            .await
            .map_err(|e| FleetError::nats(format!("read {key}"), e))?;
        Ok(entry.map(|e| MetaEntry {
            value: match e.operation {
                kv::Operation::Put => Some(e.value.to_vec()),
                kv::Operation::Delete | kv::Operation::Purge => None,
            },
            revision: e.revision,
        }))
    }

    async fn meta_create(&self, key: &str, value: Vec<u8>) -> Result<Cas, FleetError> {
        match self.meta.create(key, value.into()).await {
            Ok(_) => Ok(Cas::Written),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(Cas::Conflict),
            Err(e) => Err(FleetError::nats(format!("create {key}"), e)),
        }
    }

    async fn meta_update(
        &self,
        key: &str,
        value: Vec<u8>,
        revision: u64,
    ) -> Result<Cas, FleetError> {
        match self.meta.update(key, value.into(), revision).await {
            Ok(_) => Ok(Cas::Written),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(Cas::Conflict),
            Err(e) => Err(FleetError::nats(format!("update {key}"), e)),
        }
    }

    async fn meta_delete(&self, key: &str, revision: u64) -> Result<Cas, FleetError> {
        match self.meta.delete_expect_revision(key, Some(revision)).await {
            Ok(()) => Ok(Cas::Written),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(Cas::Conflict),
            Err(e) => Err(FleetError::nats(format!("delete {key}"), e)),
        }
    }

    async fn put_object(
        &self,
        name: &str,
        data: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<(), FleetError> {
        // The client reads one chunk at a time from `data` and publishes it
        // (each publish acknowledged within the context's timeout), so
        // memory holds one chunk, not the object.
        let mut data = data;
        self.objects
            .put(name, &mut data)
            .await
            .map(drop)
            .map_err(|e| FleetError::Transfer {
                object: name.to_owned(),
                reason: e.to_string(),
            })
    }

    async fn get_object(&self, name: &str) -> Result<Option<Download>, FleetError> {
        match self.objects.get(name).await {
            Ok(object) => {
                let size = u64::try_from(object.info().size).unwrap_or(u64::MAX);
                Ok(Some(Download {
                    size,
                    reader: Box::new(object),
                }))
            }
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => Ok(None),
            Err(e) => Err(FleetError::nats(format!("open {name}"), e)),
        }
    }

    async fn list_objects(&self, prefix: &str) -> Result<Vec<String>, FleetError> {
        let list = self
            .objects
            .list()
            .await
            .map_err(|e| FleetError::nats("list objects", e))?;
        list.map_ok(|info| info.name)
            .try_filter(|name| std::future::ready(name.starts_with(prefix)))
            .try_collect()
            .await
            .map_err(|e| FleetError::nats("list objects", e))
    }

    async fn delete_object(&self, name: &str) -> Result<(), FleetError> {
        match self.objects.delete(name).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(FleetError::nats(format!("delete {name}"), e)),
        }
    }
}

/// Artifacts in a NATS object store bucket (A5); see the module docs for
/// the naming.
#[derive(Debug)]
pub struct ObjectStoreTransport {
    pub(crate) core: Core<NatsObjects>,
}

impl ObjectStoreTransport {
    /// Open (creating if absent) the buckets `config` names over `client`,
    /// for artifacts of `key`.
    ///
    /// # Errors
    /// [`FleetError::InvalidName`] for a bucket name NATS does not accept;
    /// [`FleetError::Nats`] or [`FleetError::Timeout`] when the buckets
    /// cannot be opened or created.
    pub async fn open(
        client: async_nats::Client,
        config: ObjectStoreConfig,
        key: FleetKey,
    ) -> Result<Self, FleetError> {
        if !valid_bucket_name(&config.bucket) {
            return Err(FleetError::InvalidName(config.bucket.clone()));
        }
        let timeouts = config.timeouts;
        let js = jetstream::ContextBuilder::new()
            .timeout(timeouts.request)
            .build(client);
        let objects = bounded("open the object store", timeouts.request, async {
            match js.get_object_store(&config.bucket).await {
                Ok(store) => Ok(store),
                Err(_) => js
                    .create_object_store(object_store::Config {
                        bucket: config.bucket.clone(),
                        description: Some("slipstream artifacts".into()),
                        num_replicas: config.replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| {
                        FleetError::nats(format!("create object store {}", config.bucket), e)
                    }),
            }
        })
        .await?;
        let meta_bucket = config.meta_bucket();
        let meta = bounded(
            "open the artifact metadata bucket",
            timeouts.request,
            async {
                match js.get_key_value(&meta_bucket).await {
                    Ok(store) => Ok(store),
                    Err(_) => {
                        js.create_key_value(kv::Config {
                            bucket: meta_bucket.clone(),
                            description: "slipstream artifact pointers and export leases".into(),
                            history: 1,
                            num_replicas: config.replicas,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| FleetError::nats(format!("create KV bucket {meta_bucket}"), e))
                    }
                }
            },
        )
        .await?;
        Ok(Self {
            core: Core::new(
                NatsObjects {
                    objects,
                    meta,
                    bucket: config.bucket,
                },
                key,
                timeouts,
            ),
        })
    }

    /// The object name of `path` (`MANIFEST.json` or `data/...`) in payload
    /// `payload`, for operators and tests.
    #[must_use]
    pub fn object_name(&self, payload: &str, path: &str) -> String {
        self.core.object_name(payload, path)
    }

    /// The KV key of this transport's pointer in the metadata bucket.
    #[must_use]
    pub fn pointer_key(&self) -> String {
        self.core.pointer_key()
    }

    /// The KV key of this transport's export lease in the metadata bucket.
    #[must_use]
    pub fn lease_key(&self) -> String {
        self.core.lease_key()
    }
}

crate::transport::delegate_transport!(ObjectStoreTransport);
