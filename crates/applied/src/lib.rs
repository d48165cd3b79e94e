//! The applied-watch engine of slipstream: it follows a KV bucket through
//! any [`KvWatcher`](slipstream_kv::KvWatcher), hands batches to the
//! application's `parse` and `apply`, commits the raw updates and the cursor
//! atomically to any [`SnapshotStore`](slipstream_snapshot::SnapshotStore),
//! and moves the cursor only past what `apply` has returned for (E1–E10).
//!
//! ```
//! use std::collections::BTreeMap;
//! use bytes::Bytes;
//! use slipstream_applied::{AppliedConfig, AppliedWatch, StopReason, handlers};
//! use slipstream_kv::{Connection, KvStore, KvUpdate, KvWriter, WatchScope};
//! use slipstream_memory::MemoryServer;
//! use tokio_util::sync::CancellationToken;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let server = MemoryServer::new();
//! let conn = server.connection();
//! conn.connect().await?;
//! let bucket = conn.store("routes").await?;
//! bucket.writer().put("eu", Bytes::from_static(b"10.0.0.1")).await?;
//!
//! let shutdown = CancellationToken::new();
//! let config = AppliedConfig::new(WatchScope::All).shutdown(shutdown.clone());
//! let watch = AppliedWatch::new(bucket.watcher(), config);
//! let mut status = watch.status();
//!
//! let mut routes = BTreeMap::new();
//! let parse = |u: &KvUpdate| match u {
//!     KvUpdate::Put(e) => Some((e.key.clone(), Some(e.value.clone()))),
//!     other => Some((other.key().to_owned(), None)),
//! };
//! let apply = |batch: std::vec::Drain<'_, (String, Option<Bytes>)>| {
//!     for (key, value) in batch {
//!         match value {
//!             Some(v) => { routes.insert(key, v); }
//!             None => { routes.remove(&key); }
//!         }
//!     }
//! };
//! let (finished, _) = tokio::join!(watch.run(handlers(parse, apply)), async {
//!     status.wait_for(|s| s.is_ready()).await.ok();
//!     shutdown.cancel();
//! });
//! let stopped = finished.result?;
//! assert_eq!(stopped.reason, StopReason::Shutdown);
//! assert_eq!(stopped.cursor.revision(), Some(1));
//! assert_eq!(routes.get("eu"), Some(&Bytes::from_static(b"10.0.0.1")));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Without a store the caller persists the cursor `on_applied` reports and
//! passes it back through [`AppliedConfig::resume_from`]; with one
//! ([`AppliedConfig::store`]) the engine resumes from the store's own
//! cursor.
//!
//! When the cursor expires (the bucket's retention passed it while the
//! node was down, or overran a running watch), the engine repairs the fold
//! as [`AppliedConfig::on_expiry`] says ([`OnExpiry`]; by default a
//! relist when the engine has a store, a stop without one). A relist repair deletes, through `parse` and `apply`, every
//! fold key the bucket no longer lists, before any re-listed value arrives;
//! it is refused where the listing is not the truth (retention evicts
//! current values) and held by the mass-delete guard
//! ([`MassDeletePolicy`]) when it would delete most of the fold. A restore
//! ([`RepairMode::Restore`], or [`RepairMode::Auto`] where a relist is
//! refused) takes the newest artifact of [`AppliedConfig::restore_from`]'s
//! source. [`OnExpiry::Stop`] ends the watch with
//! [`AppliedError::CursorExpired`] instead.
//!
//! `apply` panicking aborts the watch (E10): the panic unwinds through
//! [`AppliedWatch::run`], nothing of the batch is committed, and the next
//! start re-delivers it.

mod applied;
mod bootstrap;
mod config;
mod engine;
mod error;
mod export;
mod handlers;
mod outcome;
mod restore;
mod scratch;
mod slot;
mod source;
mod spill;
mod status;
mod ttl;

pub use applied::AppliedWatch;
pub use bootstrap::{Bootstrap, BootstrapConfig, bootstrap};
pub use config::{
    AppliedConfig, BatchPolicy, MassDeletePolicy, OnExpiry, RetryPolicy, ScratchPolicy, Timeouts,
};
pub use error::{AppliedError, RepairCause, RestoreRefusal};
pub use export::{ExportRequest, ExportRequests, Exporter, export_channel};
pub use handlers::{Handlers, IgnoreApplied, handlers};
pub use outcome::{Finished, StopReason, Stopped};
pub use restore::artifact_refusal;
pub use slipstream_protocol::{MassDeleteLimit, RepairMode};
pub use slot::{NoStore, StoreSlot};
pub use source::{LocalArtifacts, RestoreSource, SourceError};
pub use status::{Phase, StatusReceiver, WatchStatus};
