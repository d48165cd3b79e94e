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
//! - [`TransportSource`]: any transport as the engine's restore source (R3).
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use slipstream_applied::{AppliedConfig, export_channel};
//! use slipstream_fleet::{
//!     ArtifactTransport, FleetKey, ObjectStoreConfig, ObjectStoreTransport, ScheduleConfig,
//!     ScheduledExport, TransportSource,
//! };
//! use slipstream_kv::WatchScope;
//! use slipstream_snapshot::{AppendLogStore, SnapshotStore};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run(client: async_nats::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let key = FleetKey::new("config", WatchScope::All, AppendLogStore::BACKEND);
//! let transport: Arc<dyn ArtifactTransport> = Arc::new(
//!     ObjectStoreTransport::open(client, ObjectStoreConfig::new("artifacts"), key).await?,
//! );
//!
//! // The engine serves exports, and restores from the same place.
//! let (exporter, requests) = export_channel(1);
//! let (_cursor, store) = AppendLogStore::open("fold".as_ref(), &Default::default())?;
//! let _config = AppliedConfig::new(WatchScope::All)
//!     .store(store)
//!     .exports(requests)
//!     .restore_from(TransportSource::new(Arc::clone(&transport)));
//! // ... start the AppliedWatch with `_config` ...
//!
//! let schedule = ScheduledExport::new(
//!     exporter,
//!     transport,
//!     ScheduleConfig::new(Duration::from_secs(300), "scratch"),
//! );
//! let status = schedule.status();
//! let final_status = schedule.run(CancellationToken::new()).await;
//! assert_eq!(final_status.rounds, status.borrow().rounds);
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
pub use schedule::{ExportStatus, RoundOutcome, ScheduleConfig, ScheduledExport};
pub use transport::{
    ArtifactTransport, FleetTimeouts, LeaseGrant, PayloadRef, PointerReading, PruneReport,
    PublishOutcome, Published, TransportSource,
};
