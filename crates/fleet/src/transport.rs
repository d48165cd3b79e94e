//! The transport trait, what its operations report, and the adapter that
//! lets the engine's restore (R3) pull from any transport.

use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use slipstream_applied::{RestoreSource, SourceError};
use slipstream_protocol::PointerState;
use slipstream_snapshot::ArtifactManifest;

use crate::error::FleetError;
use crate::naming::FleetKey;

/// Bounds on a transport's server round trips and transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetTimeouts {
    /// One request/response round trip: a pointer or lease read or write,
    /// an object's metadata, a delete, a listing. Default 10 s.
    pub request: Duration,
    /// How long a download may go without receiving a byte. Default 30 s.
    pub stall: Duration,
    /// One object's whole upload or download. Default 10 min.
    pub transfer: Duration,
}

impl Default for FleetTimeouts {
    fn default() -> Self {
        Self {
            request: Duration::from_secs(10),
            stall: Duration::from_secs(30),
            transfer: Duration::from_secs(600),
        }
    }
}

/// What the pointer says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointerReading {
    /// No artifact was ever published (or the pointer was deleted).
    Absent,
    /// The pointer's value is unreadable; the next publish replaces it.
    Corrupt,
    /// The pointer names `payload`, an artifact at `rank`.
    At {
        /// The payload's id.
        payload: String,
        /// Its cursor's rank.
        rank: u64,
    },
}

impl PointerReading {
    /// The K12 view of this reading.
    #[must_use]
    pub fn state(&self) -> PointerState {
        match self {
            Self::Absent => PointerState::Absent,
            Self::Corrupt => PointerState::Present(None),
            Self::At { rank, .. } => PointerState::Present(Some(*rank)),
        }
    }

    /// The rank pointed at, when the pointer is readable.
    #[must_use]
    pub fn rank(&self) -> Option<u64> {
        match self {
            Self::At { rank, .. } => Some(*rank),
            Self::Absent | Self::Corrupt => None,
        }
    }
}

/// The newest artifact as the pointer names it, with its manifest (read
/// and checked against the pointer's digest, not yet its files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadRef {
    /// The payload's id in the store.
    pub id: String,
    /// Its cursor's rank.
    pub rank: u64,
    /// When the pointer was moved to it, by the publisher's clock.
    pub published_at: Option<SystemTime>,
    /// Its manifest.
    pub manifest: ArtifactManifest,
    /// The manifest's exact bytes, written as is into a fetched copy.
    pub(crate) manifest_json: Vec<u8>,
}

/// How a publish ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// The payload is uploaded and the pointer names it.
    Moved {
        /// The payload's id.
        payload: String,
        /// The rank the pointer held before, when it was readable.
        previous_rank: Option<u64>,
    },
    /// The pointer is at a higher rank than this artifact, so it was not
    /// moved (K12). `uploaded` names the payload when the pointer overtook
    /// it during the upload; it is unreferenced and a later prune removes
    /// it.
    Stale {
        /// The pointer's rank.
        pointer_rank: u64,
        /// The uploaded but unreferenced payload, if any was uploaded.
        uploaded: Option<String>,
    },
}

/// What [`ArtifactTransport::publish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The artifact's cursor rank.
    pub rank: u64,
    /// Whether the pointer moved.
    pub outcome: PublishOutcome,
}

impl Published {
    /// Whether the pointer now names this artifact.
    #[must_use]
    pub fn moved(&self) -> bool {
        matches!(self.outcome, PublishOutcome::Moved { .. })
    }
}

/// What [`ArtifactTransport::prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// The pointer's target, never pruned.
    pub target: Option<String>,
    /// Payloads kept.
    pub kept: Vec<String>,
    /// Payloads removed.
    pub pruned: Vec<String>,
}

/// The answer to [`ArtifactTransport::acquire_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseGrant {
    /// There was no lease; it is now ours.
    Acquired {
        /// Its expiry, ms since the Unix epoch.
        expires_at_unix_ms: u64,
    },
    /// It was already ours; its expiry moved.
    Renewed {
        /// Its new expiry.
        expires_at_unix_ms: u64,
    },
    /// Another holder's lease had expired (or was unreadable) and is now
    /// ours.
    TakenOver {
        /// The previous holder, when the lease was readable.
        from: Option<String>,
        /// Its expiry.
        expires_at_unix_ms: u64,
    },
    /// Another exporter holds a live lease.
    HeldElsewhere {
        /// Who.
        holder: String,
        /// Until when.
        expires_at_unix_ms: u64,
    },
}

impl LeaseGrant {
    /// Whether the caller holds the lease now.
    #[must_use]
    pub fn is_held(&self) -> bool {
        !matches!(self, Self::HeldElsewhere { .. })
    }
}

/// A place artifacts of one [`FleetKey`] are published to and fetched from,
/// with a pointer to the newest that only moves forward (K12 with CAS),
/// pruning that never removes the pointed-to artifact, and an export lease.
///
/// Every operation bounds its server round trips ([`FleetTimeouts`]).
pub trait ArtifactTransport: fmt::Debug + Send + Sync + 'static {
    /// The (bucket, scope, backend) this transport serves.
    fn key(&self) -> &FleetKey;

    /// Read the pointer.
    fn pointer(&self) -> BoxFuture<'_, Result<PointerReading, FleetError>>;

    /// Upload the local artifact directory `artifact` (an export's output)
    /// as a new payload, then move the pointer to it with a CAS guarded by
    /// K12. The pointer is only written after every object is uploaded and
    /// checked against the manifest, so an upload that fails or is dropped
    /// midway leaves the pointer where it was. A pointer already past this
    /// artifact's rank is not moved (and nothing is uploaded when that is
    /// known up front): [`PublishOutcome::Stale`], not an error.
    fn publish<'a>(&'a self, artifact: &'a Path) -> BoxFuture<'a, Result<Published, FleetError>>;

    /// The payload the pointer names, with its manifest; `None` when no
    /// artifact was published.
    fn newest(&self) -> BoxFuture<'_, Result<Option<PayloadRef>, FleetError>>;

    /// Download `payload` into a fresh directory under `scratch` and return
    /// it. Every file is checked against the manifest while it streams in
    /// (announced size, length, BLAKE3); any defect is a
    /// [`FleetError::Refused`] and the partial copy is removed.
    fn fetch<'a>(
        &'a self,
        payload: &'a PayloadRef,
        scratch: &'a Path,
    ) -> BoxFuture<'a, Result<PathBuf, FleetError>>;

    /// Remove payloads beyond the newest `keep_last`, guarded by K12: never
    /// the pointer's target, never one at or above its rank, never one
    /// whose id does not parse; nothing at all without a readable pointer.
    fn prune(&self, keep_last: NonZeroUsize) -> BoxFuture<'_, Result<PruneReport, FleetError>>;

    /// Acquire or renew the export lease for `holder` until now + `ttl`
    /// (A5): a create-only write when there is none, a CAS renewal when it
    /// is ours, a CAS takeover when it expired or is unreadable.
    fn acquire_lease<'a>(
        &'a self,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<LeaseGrant, FleetError>>;

    /// Release the lease if `holder` holds it (a CAS delete; a lease taken
    /// over meanwhile is left alone).
    fn release_lease<'a>(&'a self, holder: &'a str) -> BoxFuture<'a, Result<(), FleetError>>;
}

/// Any transport as the engine's [`RestoreSource`] (R3): `newest` follows
/// the pointer, `fetch` downloads and verifies before the engine imports
/// (which verifies again, A3).
#[derive(Debug)]
pub struct TransportSource {
    transport: Arc<dyn ArtifactTransport>,
    listed: Mutex<Option<PayloadRef>>,
}

impl TransportSource {
    /// A restore source over `transport`.
    #[must_use]
    pub fn new(transport: Arc<dyn ArtifactTransport>) -> Self {
        Self {
            transport,
            listed: Mutex::new(None),
        }
    }
}

impl RestoreSource for TransportSource {
    fn newest(&self) -> BoxFuture<'_, Result<Option<ArtifactManifest>, SourceError>> {
        Box::pin(async move {
            let newest = self.transport.newest().await?;
            let manifest = newest.as_ref().map(|p| p.manifest.clone());
            *self.listed.lock().unwrap_or_else(PoisonError::into_inner) = newest;
            Ok(manifest)
        })
    }

    fn fetch<'a>(
        &'a self,
        manifest: &'a ArtifactManifest,
        scratch: &'a Path,
    ) -> BoxFuture<'a, Result<PathBuf, SourceError>> {
        Box::pin(async move {
            let listed = self
                .listed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
                .filter(|p| &p.manifest == manifest);
            let Some(payload) = listed else {
                return Err(SourceError::from(FleetError::UnknownPayload(format!(
                    "cursor {:?}",
                    manifest.cursor.revision()
                ))));
            };
            Ok(self.transport.fetch(&payload, scratch).await?)
        })
    }
}

/// Implement [`ArtifactTransport`] for a type with a `core: Core<_>` field.
macro_rules! delegate_transport {
    ($ty:ty) => {
        impl $crate::ArtifactTransport for $ty {
            fn key(&self) -> &$crate::FleetKey {
                self.core.key()
            }

            fn pointer(
                &self,
            ) -> futures::future::BoxFuture<'_, Result<$crate::PointerReading, $crate::FleetError>>
            {
                Box::pin(self.core.pointer())
            }

            fn publish<'a>(
                &'a self,
                artifact: &'a std::path::Path,
            ) -> futures::future::BoxFuture<'a, Result<$crate::Published, $crate::FleetError>> {
                Box::pin(self.core.publish(artifact))
            }

            fn newest(
                &self,
            ) -> futures::future::BoxFuture<
                '_,
                Result<Option<$crate::PayloadRef>, $crate::FleetError>,
            > {
                Box::pin(self.core.newest())
            }

            fn fetch<'a>(
                &'a self,
                payload: &'a $crate::PayloadRef,
                scratch: &'a std::path::Path,
            ) -> futures::future::BoxFuture<'a, Result<std::path::PathBuf, $crate::FleetError>>
            {
                Box::pin(self.core.fetch(payload, scratch))
            }

            fn prune(
                &self,
                keep_last: std::num::NonZeroUsize,
            ) -> futures::future::BoxFuture<'_, Result<$crate::PruneReport, $crate::FleetError>>
            {
                Box::pin(self.core.prune(keep_last))
            }

            fn acquire_lease<'a>(
                &'a self,
                holder: &'a str,
                ttl: std::time::Duration,
            ) -> futures::future::BoxFuture<'a, Result<$crate::LeaseGrant, $crate::FleetError>>
            {
                Box::pin(self.core.acquire_lease(holder, ttl))
            }

            fn release_lease<'a>(
                &'a self,
                holder: &'a str,
            ) -> futures::future::BoxFuture<'a, Result<(), $crate::FleetError>> {
                Box::pin(self.core.release_lease(holder))
            }
        }
    };
}

pub(crate) use delegate_transport;
