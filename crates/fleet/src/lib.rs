//! Fleet artifacts for slipstream (A5): publish a running mirror's exports
//! where other nodes can restore from them, with nothing beyond NATS.
//!
//! - [`ArtifactTransport`]: one trait over where artifacts live — a local
//!   directory ([`LocalDirTransport`]) or a NATS object store bucket
//!   ([`ObjectStoreTransport`], pointer and lease in a companion KV bucket).
//!   Uploads stream in chunks; downloads are checked file by file (size,
//!   length, BLAKE3) before anything is imported, and a hostile or truncated
//!   object is a typed [`FleetError::Refused`].
//! - A pointer to the newest artifact that only moves forward: every move is
//!   a compare-and-set guarded by K12's
//!   [`pointer_publish_allowed`](slipstream_protocol::pointer_publish_allowed),
//!   and it is written only after every object of the payload is uploaded.
//!   Pruning keeps the newest N and, by K12's
//!   [`payload_prunable`](slipstream_protocol::payload_prunable), never the
//!   pointed-to payload.
//! - An export lease per [`FleetKey`] (bucket, scope, backend): a
//!   create-only key holding its expiry, taken over by CAS once expired or
//!   unreadable ([`lease_takeover_allowed`](slipstream_protocol::lease_takeover_allowed)).
//!   Expiry is compared with the local wall clock, so exporters' clocks are
//!   assumed to agree to well within the lease's TTL.
//! - [`ScheduledExport`]: the periodic export loop over the engine's
//!   [`Exporter`](slipstream_applied::Exporter) (A4: the artifact's cursor is
//!   exactly the applied cursor).
//! - [`TransportSource`]: any transport as the engine's restore source (R3)
//!   and a new node's bootstrap source
//!   ([`bootstrap`](slipstream_applied::bootstrap)).
//! - [`FleetConfig`]: both, set up on an
//!   [`AppliedConfig`](slipstream_applied::AppliedConfig).
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use slipstream_applied::{AppliedConfig, Bootstrap, BootstrapConfig, bootstrap};
//! use slipstream_fleet::{
//!     ArtifactTransport, FleetConfig, FleetKey, ObjectStoreConfig, ObjectStoreTransport,
//!     ScheduleConfig, TransportSource,
//! };
//! use slipstream_kv::{KvStore, WatchScope};
//! use slipstream_snapshot::{AppendLogOptions, AppendLogStore, SnapshotStore};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run(client: async_nats::Client, bucket: impl KvStore) -> Result<(), Box<dyn std::error::Error>> {
//! let key = FleetKey::new("config", WatchScope::All, AppendLogStore::BACKEND);
//! let transport: Arc<dyn ArtifactTransport> = Arc::new(
//!     ObjectStoreTransport::open(client, ObjectStoreConfig::new("artifacts"), key).await?,
//! );
//!
//! // A new node starts from the newest artifact instead of a listing.
//! let source = TransportSource::new(Arc::clone(&transport));
//! let options = AppendLogOptions::default();
//! let outcome = bootstrap::<AppendLogStore, _>(
//!     &bucket.watcher(),
//!     &source,
//!     "fold".as_ref(),
//!     &options,
//!     &BootstrapConfig::new(WatchScope::All),
//! )
//! .await?;
//! let store = match outcome {
//!     Bootstrap::Imported { store, .. } => store,
//!     other => {
//!         println!("hydrating from the bucket: {:?}", other.declined());
//!         AppendLogStore::open("fold".as_ref(), &options)?.1
//!     }
//! };
//!
//! // The engine serves exports, and repairs from the same place.
//! let (_config, schedule) = AppliedConfig::new(WatchScope::All)
//!     .store(store)
//!     .restore_from_fleet(Arc::clone(&transport))
//!     .export_on_schedule(transport, ScheduleConfig::new(Duration::from_secs(300), "scratch"));
//! // ... start the AppliedWatch with `_config`, and next to it:
//! let final_status = schedule.run(CancellationToken::new()).await;
//! println!("{} artifacts published", final_status.published);
//! # Ok(())
//! # }
//! ```

mod core;
mod error;
mod local;
mod naming;
mod object;
mod schedule;
mod transport;

pub use error::{FleetError, Refusal};
pub use local::LocalDirTransport;
pub use naming::FleetKey;
pub use object::{ObjectStoreConfig, ObjectStoreTransport};
pub use schedule::{ExportStatus, FleetConfig, RoundOutcome, ScheduleConfig, ScheduledExport};
pub use transport::{
    ArtifactTransport, FleetTimeouts, LeaseGrant, PayloadRef, PointerReading, PruneReport,
    PublishOutcome, Published, TransportSource,
};
