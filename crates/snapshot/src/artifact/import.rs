//! Import (A3): treat the artifact as untrusted, stage a checked copy, open
//! it, and only then rename it into place.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

use super::fsutil::{Staging, check_destination, copy_hashing, move_hashing};
use super::hex_encode;
use super::manifest::{ArtifactManifest, DATA_DIR, MANIFEST_FILE, MAX_MANIFEST_BYTES};
use crate::error::{ArtifactInvalidReason as Reason, SnapshotError};
use crate::store::SnapshotStore;
use slipstream_kv::WatchCursor;

/// Import the artifact at `artifact` as a store directory at `dest` (which
/// must not exist or be an empty directory) and return its manifest.
///
/// Every check runs before anything appears at `dest`: the manifest is
/// size-capped and parsed, its schema and backend must match `S`, no path
/// may escape `data/`, the artifact may hold no symlink, no unlisted and no
/// missing file; each file is copied into a hidden staging directory next
/// to `dest` and the copy's size and BLAKE3 digest must match (so what is
/// checked is what is used); the staged store is checked with
/// [`SnapshotStore::verify_dir`] under `options` and must come back at the
/// manifest's cursor; only then is it renamed onto `dest`.
///
/// # Errors
/// [`SnapshotError::ArtifactInvalid`] naming the reason for every defect of
/// the artifact; [`SnapshotError::DestinationNotEmpty`]; I/O failures at the
/// destination.
pub fn import<S: SnapshotStore>(
    artifact: &Path,
    dest: &Path,
    options: &S::Options,
) -> Result<ArtifactManifest, SnapshotError> {
    let (manifest, staging) = stage::<S>(artifact, dest, Handover::Copy)?;
    let cursor = S::verify_dir(staging.path(), options).map_err(|e| {
        SnapshotError::artifact(Reason::DataUnreadable {
            detail: e.to_string(),
        })
    })?;
    check_cursor(&manifest, &cursor)?;
    staging.publish(dest)?;
    Ok(manifest)
}

/// [`import`], handing back the store opened at `dest`: for a new node
/// that opens the store next anyway, the store-level check is the open
/// itself, so the data is read once instead of twice.
///
/// The same checks run as in [`import`], in the same order up to the
/// verified copy. The copy is then renamed onto `dest` and opened there
/// (a store may keep its directory's path); if the open fails or comes back
/// at another cursor than the manifest's, `dest` is removed again. A crash
/// in that window leaves at `dest` only files whose size and BLAKE3 digest
/// matched the manifest.
///
/// # Errors
/// As [`import`].
pub fn import_open<S: SnapshotStore>(
    artifact: &Path,
    dest: &Path,
    options: &S::Options,
) -> Result<(ArtifactManifest, S), SnapshotError> {
    import_open_with(artifact, dest, options, Handover::Copy)
}

/// What an import may do with the artifact's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Handover {
    /// They stay where they are: each is copied, and the copy is what is
    /// hashed and used.
    #[default]
    Copy,
    /// They are the caller's to give up (a download into its own scratch
    /// directory): each is hashed and synced where it is, then moved into
    /// the staging directory, which saves writing the data a second time.
    /// Where a move cannot be made (another file system) it is copied. On
    /// any refusal the files are gone from `artifact`.
    Move,
}

/// [`import_open`], with the artifact's files handled as `handover` says.
///
/// # Errors
/// As [`import`].
pub fn import_open_with<S: SnapshotStore>(
    artifact: &Path,
    dest: &Path,
    options: &S::Options,
    handover: Handover,
) -> Result<(ArtifactManifest, S), SnapshotError> {
    let existed = dest.exists();
    let (manifest, staging) = stage::<S>(artifact, dest, handover)?;
    staging.publish(dest)?;
    let opened = S::open(dest, options)
        .map_err(|e| {
            SnapshotError::artifact(Reason::DataUnreadable {
                detail: e.to_string(),
            })
        })
        .and_then(|(cursor, store)| match check_cursor(&manifest, &cursor) {
            Ok(()) => Ok(store),
            Err(e) => {
                let _ = store.close();
                Err(e)
            }
        });
    match opened {
        Ok(store) => Ok((manifest, store)),
        Err(e) => {
            remove_published(dest, existed);
            Err(e)
        }
    }
}

fn check_cursor(manifest: &ArtifactManifest, cursor: &WatchCursor) -> Result<(), SnapshotError> {
    if *cursor == manifest.cursor {
        Ok(())
    } else {
        Err(SnapshotError::artifact(Reason::CursorMismatch {
            manifest: hex_encode(&manifest.cursor.to_bytes()),
            data: hex_encode(&cursor.to_bytes()),
        }))
    }
}

/// Leave `dest` as it was before the import: absent, or empty.
fn remove_published(dest: &Path, existed: bool) {
    if !existed {
        let _ = fs::remove_dir_all(dest);
        return;
    }
    let Ok(entries) = fs::read_dir(dest) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let _ = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
    }
}

/// Every check on the artifact itself, then its data files copied or
/// moved (as `handover` says) into a staging directory next to `dest`,
/// each one's size and BLAKE3 digest matched against the manifest.
fn stage<S: SnapshotStore>(
    artifact: &Path,
    dest: &Path,
    handover: Handover,
) -> Result<(ArtifactManifest, Staging), SnapshotError> {
    let invalid = |reason| Err(SnapshotError::artifact(reason));
    match fs::symlink_metadata(artifact) {
        Ok(m) if m.is_dir() => {}
        _ => return invalid(Reason::NotADirectory),
    }
    check_destination(dest)?;
    let manifest = read_manifest(artifact)?;
    if !manifest.is_from(S::BACKEND) {
        return invalid(Reason::WrongBackend {
            expected: S::BACKEND.to_string(),
            found: manifest.backend_label(),
        });
    }
    let mut listed = BTreeMap::new();
    for f in &manifest.files {
        if listed.insert(f.path.as_str(), f).is_some() {
            return invalid(Reason::DuplicateFile {
                path: f.path.clone(),
            });
        }
    }
    let mut present = Vec::new();
    walk(artifact, "", &mut present)?;
    for path in &present {
        if path != MANIFEST_FILE && !listed.contains_key(path.as_str()) {
            return invalid(Reason::ExtraFile { path: path.clone() });
        }
    }
    for path in listed.keys() {
        if !present.iter().any(|p| p == path) {
            return invalid(Reason::MissingFile {
                path: (*path).to_owned(),
            });
        }
    }

    let staging = Staging::next_to(dest, "import")?;
    for file in listed.values() {
        // Manifest paths were checked to be `data/` + plain names.
        let inner = file.path.strip_prefix("data/").unwrap_or(&file.path);
        let to = staging.path().join(inner);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(|e| SnapshotError::io("create", parent, e))?;
        }
        let from = artifact.join(&file.path);
        let (size, digest) = match handover {
            Handover::Copy => copy_hashing(&from, &to)?,
            Handover::Move => move_hashing(&from, &to)?,
        };
        if size != file.size {
            return invalid(Reason::SizeMismatch {
                path: file.path.clone(),
                expected: file.size,
                found: size,
            });
        }
        if digest != file.blake3 {
            return invalid(Reason::DigestMismatch {
                path: file.path.clone(),
            });
        }
    }
    Ok((manifest, staging))
}

fn read_manifest(artifact: &Path) -> Result<ArtifactManifest, SnapshotError> {
    let path = artifact.join(MANIFEST_FILE);
    let meta = match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SnapshotError::artifact(Reason::ManifestMissing));
        }
        Err(e) => return Err(SnapshotError::io("inspect", &path, e)),
        Ok(m) => m,
    };
    if meta.file_type().is_symlink() {
        return Err(SnapshotError::artifact(Reason::Symlink {
            path: MANIFEST_FILE.into(),
        }));
    }
    if !meta.is_file() {
        return Err(SnapshotError::artifact(Reason::NotARegularFile {
            path: MANIFEST_FILE.into(),
        }));
    }
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(SnapshotError::artifact(Reason::ManifestTooLarge {
            size: meta.len(),
            limit: MAX_MANIFEST_BYTES,
        }));
    }
    let mut bytes = Vec::new();
    // The cap holds even if the file grows after the size check.
    fs::File::open(&path)
        .and_then(|f| f.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| SnapshotError::io("read", &path, e))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(SnapshotError::artifact(Reason::ManifestTooLarge {
            size: bytes.len() as u64,
            limit: MAX_MANIFEST_BYTES,
        }));
    }
    ArtifactManifest::from_json(&bytes)
}

/// Every regular file under `dir` as a `/`-separated path relative to the
/// artifact root; symlinks and special files are rejected, and at the root
/// only the manifest and `data/` may exist.
fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), SnapshotError> {
    let entries = fs::read_dir(dir)
        .and_then(|rd| rd.collect::<Result<Vec<_>, _>>())
        .map_err(|e| SnapshotError::io("list", dir, e))?;
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let meta = fs::symlink_metadata(entry.path())
            .map_err(|e| SnapshotError::io("inspect", entry.path(), e))?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            return Err(SnapshotError::artifact(Reason::Symlink { path: path_rel }));
        } else if kind.is_dir() {
            if rel.is_empty() && name != DATA_DIR {
                return Err(SnapshotError::artifact(Reason::ExtraFile {
                    path: path_rel,
                }));
            }
            walk(&entry.path(), &path_rel, out)?;
        } else if kind.is_file() {
            out.push(path_rel);
        } else {
            return Err(SnapshotError::artifact(Reason::NotARegularFile {
                path: path_rel,
            }));
        }
    }
    Ok(())
}
