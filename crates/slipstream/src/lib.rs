//! slipstream keeps a durable, always-correct local copy of a NATS
//! JetStream KV bucket: a *fold* (key -> latest entry) plus a *cursor* (the
//! stream sequence the fold is exact at). The cursor only moves after the
//! application has applied the data; a restart resumes from the cursor and
//! receives only the delta; a cursor that retention has passed is detected,
//! never silently skipped.
//!
//! This crate is the front door: it re-exports the layers under one name,
//! with the backends behind cargo features.
//!
//! | feature | default | brings |
//! | --- | --- | --- |
//! | `nats` | yes | [`nats`]: the async-nats backend ([`NatsConnection`]) |
//! | `stream` | no | [`stream`]: projections of plain JetStream streams |
//! | `memory` | no | [`memory`]: a deterministic in-process JetStream KV for tests |
//! | `fjall` | no | [`fjall`]: the fjall snapshot store |
//! | `rocksdb` | no | [`rocksdb`]: the RocksDB snapshot store (slow C++ build) |
//!
//! The append-log store ([`AppendLogStore`]), artifacts, the engine
//! ([`AppliedWatch`]) and the KV traits are always present.
//!
//! The example mirrors a bucket into an append-log store, stops, and shows
//! that the store kept the fold and its cursor (it uses the in-process
//! simulator, so it runs without a server; with NATS, open the bucket
//! through [`NatsConnection`] instead):
//!
//! ```
//! use bytes::Bytes;
//! use slipstream::{
//!     AppendLogOptions, AppendLogStore, AppliedConfig, AppliedWatch, Connection, KvStore,
//!     KvWriter, SnapshotStore, WatchScope, handlers,
//! };
//! use slipstream_memory::MemoryServer;
//! use tokio_util::sync::CancellationToken;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let server = MemoryServer::new();
//! let conn = server.connection();
//! conn.connect().await?;
//! let bucket = conn.store("routes").await?;
//! bucket.writer().put("eu", Bytes::from_static(b"10.0.0.1")).await?;
//! bucket.writer().put("us", Bytes::from_static(b"10.0.0.2")).await?;
//!
//! let dir = tempfile::tempdir()?;
//! let options = AppendLogOptions::default();
//! let (_, store) = AppendLogStore::open(dir.path(), &options)?;
//!
//! let shutdown = CancellationToken::new();
//! let config = AppliedConfig::new(WatchScope::All).store(store).shutdown(shutdown.clone());
//! let watch = AppliedWatch::new(bucket.watcher(), config);
//! let mut status = watch.status();
//! // The application's side: parse each update, apply batches of them.
//! let mut applied = 0;
//! let run = watch.run_and_close(handlers(|_| Some(()), |batch| applied += batch.count()));
//! let (stopped, _) = tokio::join!(run, async {
//!     status.wait_for(|s| s.is_ready()).await.ok();
//!     shutdown.cancel();
//! });
//! assert_eq!(stopped?.cursor.revision(), Some(2));
//! assert_eq!(applied, 2);
//!
//! // The fold and its cursor survive: a restart resumes from revision 2.
//! let (cursor, store) = AppendLogStore::open(dir.path(), &options)?;
//! assert_eq!((cursor.revision(), store.len()), (Some(2), 2));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

/// The protocol kernel: the pure decisions the engine and the models share.
pub use slipstream_protocol as protocol;

/// The KV surface: traits every backend implements and the types they speak.
pub use slipstream_kv as kv;

/// Snapshot stores, the append-log store and artifacts.
pub use slipstream_snapshot as snapshot;

/// The applied-watch engine.
pub use slipstream_applied as applied;

/// Fleet artifacts: transports, the artifact pointer, the export lease and
/// scheduled exports.
#[cfg(feature = "fleet")]
pub use slipstream_fleet as fleet;

/// The NATS JetStream backend.
#[cfg(feature = "nats")]
pub use slipstream_nats as nats;

/// Projections of plain JetStream streams: ensure a stream, replay it and
/// tail it through the applied-watch engine, for data that lives in a
/// stream rather than a KV bucket.
#[cfg(feature = "stream")]
pub use slipstream_stream as stream;

/// The in-process JetStream KV simulator.
#[cfg(feature = "memory")]
pub use slipstream_memory as memory;

/// The fjall snapshot store.
#[cfg(feature = "fjall")]
pub use slipstream_fjall as fjall;

/// The RocksDB snapshot store.
#[cfg(feature = "rocksdb")]
pub use slipstream_rocksdb as rocksdb;

pub use slipstream_applied::{
    AppliedConfig, AppliedError, AppliedWatch, BatchPolicy, Bootstrap, BootstrapConfig,
    ExportRequest, ExportRequests, Exporter, Finished, Handlers, LocalArtifacts, MassDeleteLimit,
    MassDeletePolicy, OnExpiry, Phase, RepairCause, RepairMode, RestoreRefusal, RestoreSource,
    RetryPolicy, ScratchPolicy, StatusReceiver, StopReason, Stopped, Timeouts, WatchStatus,
    artifact_refusal, bootstrap, export_channel, handlers,
};
#[cfg(feature = "fjall")]
pub use slipstream_fjall::{FjallOptions, FjallStore};
pub use slipstream_kv::{
    Connection, ExpiryReason, KvEntry, KvError, KvMarker, KvReader, KvStore, KvUpdate, KvWatcher,
    KvWriter, Retention, StoreConfig, Timestamp, WatchCursor, WatchEvent, WatchScope, WatchStart,
};
#[cfg(feature = "memory")]
pub use slipstream_memory::MemoryServer;
#[cfg(feature = "nats")]
pub use slipstream_nats::{NatsBucket, NatsConfig, NatsConnection, NatsError};
#[cfg(feature = "rocksdb")]
pub use slipstream_rocksdb::{RocksDbOptions, RocksDbStore};
pub use slipstream_snapshot::{
    AppendLogOptions, AppendLogStore, ArtifactManifest, BackendId, Durability, SnapshotError,
    SnapshotStore, StoredEntry, import,
};
