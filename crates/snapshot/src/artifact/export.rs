//! Export (A2): stage, checkpoint, verify, hash, manifest last, rename.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use slipstream_kv::{WatchCursor, WatchScope};

use super::fsutil::{Staging, check_destination, hash_and_sync, sync_dir};
use super::hex_encode;
use super::manifest::{ArtifactManifest, DATA_DIR, MANIFEST_FILE, MANIFEST_SCHEMA, ManifestFile};
use crate::error::SnapshotError;
use crate::store::{BackendId, ExportCapture, SnapshotStore};

/// Export `store`'s last commit as an artifact at `dest`, which must not
/// exist or be an empty directory (A2).
///
/// The backend writes its checkpoint into `data/` of a hidden staging
/// directory next to `dest` ([`SnapshotStore::checkpoint_to`]: hard links
/// for immutable files where the file system allows, see
/// [`link_or_copy`](crate::link_or_copy)); the staged copy is checked with
/// [`SnapshotStore::verify_dir`] and must come back at the store's cursor;
/// then every file is fsynced and hashed (after the check, so the digests
/// cover whatever a reopen left), the manifest is written last, and the
/// staging directory is renamed onto `dest`. A crash leaves only the hidden
/// staging directory.
///
/// This is [`begin_export`] followed at once by [`PendingExport::finish`].
///
/// # Errors
/// [`SnapshotError::DestinationNotEmpty`], I/O and backend failures,
/// [`SnapshotError::ExportVerification`] when the staged copy reopens at
/// another cursor.
pub fn export<S: SnapshotStore>(
    store: &mut S,
    dest: &Path,
    scope: &WatchScope,
) -> Result<ArtifactManifest, SnapshotError> {
    begin_export(store, dest, scope)?.finish()
}

/// The part of an export that needs the store: check the destination,
/// stage, and capture the last commit ([`SnapshotStore::capture_for_export`]).
/// The rest ([`PendingExport::finish`]: writing, verifying and hashing the
/// files, the manifest, the rename) runs without the store, so a running
/// engine goes on committing meanwhile.
///
/// # Errors
/// [`SnapshotError::DestinationNotEmpty`], I/O and backend failures.
pub fn begin_export<S: SnapshotStore>(
    store: &mut S,
    dest: &Path,
    scope: &WatchScope,
) -> Result<PendingExport, SnapshotError> {
    check_destination(dest)?;
    let staging = Staging::next_to(dest, "export")?;
    let data = staging.path().join(DATA_DIR);
    fs::create_dir(&data).map_err(|e| SnapshotError::io("create", &data, e))?;
    let capture = store.capture_for_export(&data)?;
    Ok(PendingExport {
        staging,
        dest: dest.to_owned(),
        scope: scope.clone(),
        capture,
        backend: S::BACKEND,
        verify: |dir| S::verify_dir(dir, &S::Options::default()),
    })
}

/// An export whose commit is captured; [`PendingExport::finish`] writes
/// the artifact. Dropped unfinished, it removes its staging directory.
pub struct PendingExport {
    staging: Staging,
    dest: PathBuf,
    scope: WatchScope,
    capture: Box<dyn ExportCapture>,
    backend: BackendId,
    verify: fn(&Path) -> Result<WatchCursor, SnapshotError>,
}

impl core::fmt::Debug for PendingExport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PendingExport")
            .field("dest", &self.dest)
            .field("backend", &self.backend)
            .field("cursor", self.capture.cursor())
            .finish_non_exhaustive()
    }
}

impl PendingExport {
    /// The cursor the artifact will carry: the captured commit's.
    #[must_use]
    pub fn cursor(&self) -> &WatchCursor {
        self.capture.cursor()
    }

    /// Write, verify and hash the captured commit's files, write the
    /// manifest last and rename the artifact into place. May block for as
    /// long as the fold takes to write: call it off the async runtime.
    ///
    /// # Errors
    /// I/O and backend failures, [`SnapshotError::ExportVerification`]
    /// when the staged copy reopens at another cursor than the capture's.
    pub fn finish(self) -> Result<ArtifactManifest, SnapshotError> {
        let Self {
            staging,
            dest,
            scope,
            capture,
            backend,
            verify,
        } = self;
        let data = staging.path().join(DATA_DIR);
        let expected = capture.cursor().clone();
        capture.write_to(&data)?;
        let found = verify(&data)?;
        if found != expected {
            return Err(SnapshotError::ExportVerification {
                expected: hex_encode(&expected.to_bytes()),
                found: hex_encode(&found.to_bytes()),
            });
        }

        let mut files = Vec::new();
        collect_files(&data, DATA_DIR, &mut files)?;
        let manifest = ArtifactManifest {
            schema: MANIFEST_SCHEMA,
            backend_name: backend.name.to_owned(),
            format_generation: backend.format_generation,
            cursor: expected,
            scope,
            files,
        };
        let manifest_path = staging.path().join(MANIFEST_FILE);
        let json = manifest.to_json()?;
        let mut f = fs::File::create_new(&manifest_path)
            .map_err(|e| SnapshotError::io("create", &manifest_path, e))?;
        f.write_all(&json)
            .and_then(|()| f.sync_all())
            .map_err(|e| SnapshotError::io("write", &manifest_path, e))?;
        staging.publish(&dest)?;
        Ok(manifest)
    }
}

/// Hash and fsync every file under `dir` (sorted, recursively), recording
/// paths as `label/...`. Only regular files and directories are expected
/// in a checkpoint the backend itself wrote.
fn collect_files(
    dir: &Path,
    label: &str,
    out: &mut Vec<ManifestFile>,
) -> Result<(), SnapshotError> {
    let mut entries = fs::read_dir(dir)
        .and_then(|rd| rd.collect::<Result<Vec<_>, _>>())
        .map_err(|e| SnapshotError::io("list", dir, e))?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = format!("{label}/{name}");
        let meta =
            fs::symlink_metadata(&path).map_err(|e| SnapshotError::io("inspect", &path, e))?;
        if meta.is_dir() {
            collect_files(&path, &rel, out)?;
        } else if meta.is_file() {
            let (size, blake3) = hash_and_sync(&path)?;
            out.push(ManifestFile {
                path: rel,
                size,
                blake3,
            });
        } else {
            return Err(SnapshotError::io(
                "export",
                &path,
                std::io::Error::other("checkpoint holds something that is not a regular file"),
            ));
        }
    }
    sync_dir(dir)
}
