//! Where a restore repair finds artifacts (R3): the [`RestoreSource`]
//! trait and the local-directory source that ships here.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use slipstream_snapshot::{ArtifactManifest, MANIFEST_FILE, MAX_MANIFEST_BYTES};

/// The error a [`RestoreSource`] reports; the engine wraps it in
/// [`AppliedError::RestoreFailed`](crate::AppliedError::RestoreFailed).
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// A place artifacts are published to and fetched from, for restore
/// repairs (R3).
///
/// The engine asks for the newest artifact's manifest, checks it (backend,
/// scope, K6) without fetching anything, and only then fetches it.
/// Implementations must bound their own network operations; the engine
/// also bounds each call with [`Timeouts::restore`](crate::Timeouts).
pub trait RestoreSource: fmt::Debug + Send + Sync + 'static {
    /// The newest artifact's manifest, `None` when there is none.
    fn newest(&self) -> BoxFuture<'_, Result<Option<ArtifactManifest>, SourceError>>;

    /// Make the artifact `newest` described available as a local
    /// directory (copying it under `scratch` if it has to be copied at
    /// all) and return that directory. The engine verifies what it finds
    /// there against the artifact's own manifest when it imports it.
    fn fetch<'a>(
        &'a self,
        manifest: &'a ArtifactManifest,
        scratch: &'a Path,
    ) -> BoxFuture<'a, Result<PathBuf, SourceError>>;
}

/// Artifacts in a local directory: the directory itself when it holds an
/// artifact, and each of its immediate subdirectories that does. The
/// newest is the one with the highest cursor revision; unreadable or
/// invalid manifests are skipped with a warning, so one bad artifact does
/// not hide the good ones.
///
/// Fetching hands back the artifact's own directory: the import copies
/// and verifies from there.
#[derive(Debug, Clone)]
pub struct LocalArtifacts {
    dir: PathBuf,
    found: Arc<Mutex<Vec<(ArtifactManifest, PathBuf)>>>,
}

impl LocalArtifacts {
    /// Artifacts under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            found: Arc::default(),
        }
    }

    /// The directory searched.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every valid artifact under the directory, newest first.
    fn scan(dir: &Path) -> Result<Vec<(ArtifactManifest, PathBuf)>, SourceError> {
        let mut candidates = vec![dir.to_path_buf()];
        let entries = fs::read_dir(dir).map_err(|e| {
            SourceError::from(format!("reading artifact directory {}: {e}", dir.display()))
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| {
                SourceError::from(format!("reading artifact directory {}: {e}", dir.display()))
            })?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                candidates.push(entry.path());
            }
        }
        let mut found: Vec<(ArtifactManifest, PathBuf)> = candidates
            .into_iter()
            .filter_map(|path| match read_manifest(&path) {
                Ok(Some(manifest)) => Some((manifest, path)),
                Ok(None) => None,
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "skipping an unreadable artifact");
                    None
                }
            })
            .collect();
        // Newest first; equal revisions in path order so the pick is stable.
        found.sort_by(|(a, pa), (b, pb)| b.cursor.rank().cmp(&a.cursor.rank()).then(pa.cmp(pb)));
        Ok(found)
    }
}

/// The manifest in `dir`, `None` when it has none.
fn read_manifest(dir: &Path) -> Result<Option<ArtifactManifest>, SourceError> {
    let path = dir.join(MANIFEST_FILE);
    let file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("opening {}: {e}", path.display()).into()),
    };
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_MANIFEST_BYTES {
        return Err(format!(
            "{} is larger than {MAX_MANIFEST_BYTES} bytes",
            path.display()
        )
        .into());
    }
    Ok(Some(ArtifactManifest::from_json(&bytes)?))
}

impl RestoreSource for LocalArtifacts {
    fn newest(&self) -> BoxFuture<'_, Result<Option<ArtifactManifest>, SourceError>> {
        Box::pin(async move {
            let dir = self.dir.clone();
            let found = tokio::task::spawn_blocking(move || Self::scan(&dir))
                .await
                .map_err(|e| SourceError::from(format!("artifact scan panicked: {e}")))??;
            let newest = found.first().map(|(m, _)| m.clone());
            *self.found.lock().unwrap_or_else(PoisonError::into_inner) = found;
            Ok(newest)
        })
    }

    fn fetch<'a>(
        &'a self,
        manifest: &'a ArtifactManifest,
        _scratch: &'a Path,
    ) -> BoxFuture<'a, Result<PathBuf, SourceError>> {
        Box::pin(async move {
            let known = self
                .found
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .find(|(m, _)| m == manifest)
                .map(|(_, p)| p.clone());
            known.ok_or_else(|| {
                SourceError::from(format!(
                    "no artifact with cursor {:?} is known under {}; ask for the newest first",
                    manifest.cursor.revision(),
                    self.dir.display()
                ))
            })
        })
    }
}

/// Fetch `manifest`'s artifact from `source` into a new restore scratch
/// directory under `parent`, bounded by `bound`; the directory (removed
/// when dropped) and the fetched artifact's path. Restores and bootstraps
/// both take artifacts this way.
pub(crate) async fn fetch_to_scratch(
    source: &dyn RestoreSource,
    manifest: &ArtifactManifest,
    parent: &Path,
    bound: std::time::Duration,
) -> Result<(crate::scratch::ScratchDir, PathBuf), crate::AppliedError> {
    use crate::AppliedError;
    let scratch = crate::scratch::ScratchDir::create(parent, crate::scratch::ScratchKind::Restore)
        .map_err(|e| AppliedError::RestoreFailed {
            stage: "creating the scratch directory",
            source: format!("{}: {}", e.path.display(), e.source).into(),
        })?;
    let fetched = tokio::time::timeout(bound, source.fetch(manifest, scratch.path()))
        .await
        .map_err(|_| AppliedError::RestoreFailed {
            stage: "fetching the artifact",
            source: format!("no answer within {bound:?}").into(),
        })?
        .map_err(|source| AppliedError::RestoreFailed {
            stage: "fetching the artifact",
            source,
        })?;
    Ok((scratch, fetched))
}
