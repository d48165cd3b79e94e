//! Export (A2): stage, checkpoint, verify, hash, manifest last, rename.

use std::fs;
use std::io::Write;
use std::path::Path;

use slipstream_kv::WatchScope;

use super::fsutil::{Staging, check_destination, hash_and_sync, sync_dir};
use super::hex_encode;
use super::manifest::{ArtifactManifest, DATA_DIR, MANIFEST_FILE, MANIFEST_SCHEMA, ManifestFile};
use crate::error::SnapshotError;
use crate::store::SnapshotStore;

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
/// # Errors
/// [`SnapshotError::DestinationNotEmpty`], I/O and backend failures,
/// [`SnapshotError::ExportVerification`] when the staged copy reopens at
/// another cursor.
pub fn export<S: SnapshotStore>(
    store: &mut S,
    dest: &Path,
    scope: &WatchScope,
) -> Result<ArtifactManifest, SnapshotError> {
    check_destination(dest)?;
    let staging = Staging::next_to(dest, "export")?;
    let data = staging.path().join(DATA_DIR);
    fs::create_dir(&data).map_err(|e| SnapshotError::io("create", &data, e))?;
    store.checkpoint_to(&data)?;

    let expected = store.cursor().clone();
    let found = S::verify_dir(&data, &S::Options::default())?;
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
        backend_name: S::BACKEND.name.to_owned(),
        format_generation: S::BACKEND.format_generation,
        cursor: expected,
        scope: scope.clone(),
        files,
    };
    let manifest_path = staging.path().join(MANIFEST_FILE);
    let json = manifest.to_json()?;
    let mut f = fs::File::create_new(&manifest_path)
        .map_err(|e| SnapshotError::io("create", &manifest_path, e))?;
    f.write_all(&json)
        .and_then(|()| f.sync_all())
        .map_err(|e| SnapshotError::io("write", &manifest_path, e))?;
    staging.publish(dest)?;
    Ok(manifest)
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
