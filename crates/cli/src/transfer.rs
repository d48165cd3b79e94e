//! `slipstream export` and `slipstream import` (C4).

use std::fs;
use std::path::{Path, PathBuf};

use slipstream::snapshot::{MANIFEST_FILE, MAX_MANIFEST_BYTES};
use slipstream::{ArtifactManifest, SnapshotError, SnapshotStore, WatchScope, import};

use crate::backend::{WithStore, dispatch, open_store};
use crate::error::CliError;
use crate::layout::{BackendKind, FOLD_DIR, Marker, StoreDir, is_absent_or_empty};

/// Export a store's last commit as an artifact.
pub(crate) struct Export {
    /// The artifact's destination.
    pub(crate) out: PathBuf,
    /// The scope the fold was built under.
    pub(crate) scope: WatchScope,
}

impl WithStore for Export {
    type Output = ArtifactManifest;

    fn run<S: SnapshotStore>(self, fold: &Path) -> Result<ArtifactManifest, CliError> {
        let mut store: S = open_store(fold)?;
        let manifest = store.export_to(&self.out, &self.scope)?;
        store.close()?;
        Ok(manifest)
    }
}

/// Import an artifact into a fresh fold directory.
struct Import<'a> {
    artifact: &'a Path,
}

impl WithStore for Import<'_> {
    type Output = ArtifactManifest;

    fn run<S: SnapshotStore>(self, fold: &Path) -> Result<ArtifactManifest, CliError> {
        Ok(import::<S>(self.artifact, fold, &S::Options::default())?)
    }
}

/// Read an artifact's manifest, to learn its backend before importing.
fn peek_manifest(artifact: &Path) -> Result<ArtifactManifest, CliError> {
    let path = artifact.join(MANIFEST_FILE);
    let invalid = |detail: String| CliError::Artifact {
        path: artifact.to_owned(),
        detail,
    };
    let meta = fs::metadata(&path).map_err(|e| {
        invalid(format!(
            "is not a slipstream artifact: cannot read {MANIFEST_FILE}: {e}"
        ))
    })?;
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(SnapshotError::artifact(
            slipstream::snapshot::ArtifactInvalidReason::ManifestTooLarge {
                size: meta.len(),
                limit: MAX_MANIFEST_BYTES,
            },
        )
        .into());
    }
    let bytes = fs::read(&path).map_err(|e| CliError::io("read", &path, e))?;
    Ok(ArtifactManifest::from_json(&bytes)?)
}

/// Import `artifact` as a new store at `root` (absent or empty). The
/// artifact is verified in full (A3); nothing is left at `root` on failure.
///
/// # Errors
/// [`CliError::Store`] when `root` already holds something, the import's
/// own failure otherwise.
pub(crate) fn import_store(
    artifact: &Path,
    root: &Path,
) -> Result<(ArtifactManifest, StoreDir), CliError> {
    if !is_absent_or_empty(root)? {
        return Err(CliError::Store {
            path: root.to_owned(),
            detail: "exists and is not empty; import needs a new store directory".into(),
        });
    }
    let manifest = peek_manifest(artifact)?;
    let backend =
        BackendKind::from_name(&manifest.backend_name).ok_or_else(|| CliError::Artifact {
            path: artifact.to_owned(),
            detail: format!("is of an unknown backend {:?}", manifest.backend_name),
        })?;
    let existed = root.exists();
    let result = fs::create_dir_all(root)
        .map_err(|e| CliError::io("create directory", root, e))
        .and_then(|()| dispatch(backend, &root.join(FOLD_DIR), Import { artifact }))
        .and_then(|imported| {
            let marker = Marker::new(backend, None, &imported.scope);
            let dir = StoreDir::create(root, marker)?;
            Ok((imported, dir))
        });
    if result.is_err() {
        // Leave the destination as it was found.
        let _ = fs::remove_dir_all(root.join(FOLD_DIR));
        let _ = fs::remove_file(root.join(crate::layout::MARKER_FILE));
        if !existed {
            let _ = fs::remove_dir(root);
        }
    }
    result
}
