//! Durable local folds for slipstream: the [`SnapshotStore`] trait (a fold
//! key -> latest entry plus the cursor it is exact at, committed together),
//! the pure-Rust [`AppendLogStore`], artifacts ([`SnapshotStore::export_to`]
//! and [`import`]) and a conformance kit any backend runs (feature
//! `testkit`).
//!
//! ```
//! use bytes::Bytes;
//! use slipstream_kv::{KvEntry, KvUpdate, VersionToken, WatchCursor, WatchScope};
//! use slipstream_snapshot::{AppendLogOptions, AppendLogStore, SnapshotStore, import};
//!
//! let tmp = tempfile::tempdir()?;
//! let (cursor, mut store) = AppendLogStore::open(&tmp.path().join("fold"), &AppendLogOptions::default())?;
//! assert_eq!(cursor, WatchCursor::none());
//!
//! let put = KvUpdate::Put(KvEntry {
//!     key: "routes.eu".into(),
//!     value: Bytes::from_static(b"10.0.0.1"),
//!     version: VersionToken::from_u64(1),
//!     created: None,
//!     expires: None,
//! });
//! store.apply(&[put], &WatchCursor::at(1))?;
//! assert_eq!(store.get("routes.eu")?.map(|e| e.value), Some(Bytes::from_static(b"10.0.0.1")));
//!
//! // Export, then import elsewhere: same fold, same cursor.
//! store.export_to(&tmp.path().join("artifact"), &WatchScope::All)?;
//! let manifest = import::<AppendLogStore>(
//!     &tmp.path().join("artifact"),
//!     &tmp.path().join("restored"),
//!     &AppendLogOptions::default(),
//! )?;
//! let (cursor, restored) = AppendLogStore::open(&tmp.path().join("restored"), &AppendLogOptions::default())?;
//! assert_eq!((cursor, manifest.cursor), (WatchCursor::at(1), WatchCursor::at(1)));
//! assert_eq!(restored.len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod applog;
mod artifact;
mod error;
mod lsm;
mod store;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use applog::{
    AppendLogOptions, AppendLogStore, CompactionPolicy, LOG_FILE, MAX_KEY_LEN, MAX_VALUE_LEN,
};
pub use artifact::{
    ArtifactManifest, DATA_DIR, Handover, MANIFEST_FILE, MANIFEST_SCHEMA, MAX_MANIFEST_BYTES,
    ManifestFile, PendingExport, Placement, begin_export, export, import, import_open,
    import_open_with, link_or_copy,
};
pub use error::{ArtifactInvalidReason, SnapshotError};
pub use lsm::{
    FoldTotals, check_update_limits, decode_value_record, detect_backend, encode_value_record,
    value_record_overhead,
};
pub use store::{
    BackendId, Durability, EntryRef, ExportCapture, SnapshotStore, StoreStats, StoredEntry,
};
