//! Artifacts (A1–A3): a directory with the backend's files under `data/`
//! and a `MANIFEST.json`, exported and imported generically over any
//! [`SnapshotStore`](crate::SnapshotStore).

mod export;
mod fsutil;
mod import;
mod manifest;

pub use export::{PendingExport, begin_export, export};
pub(crate) use fsutil::sync_dir;
pub use fsutil::{Placement, link_or_copy};
pub use import::{Handover, import, import_open, import_open_with};
pub(crate) use manifest::hex_encode;
pub use manifest::{
    ArtifactManifest, DATA_DIR, MANIFEST_FILE, MANIFEST_SCHEMA, MAX_MANIFEST_BYTES, ManifestFile,
};
