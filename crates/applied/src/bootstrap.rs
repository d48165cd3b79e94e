//! A new node's bootstrap (R6's fast path): an empty store directory
//! becomes the newest acceptable artifact's fold by one verified import
//! (A3), before the store is opened; the watch then resumes from the
//! artifact's cursor and receives only the delta.
//!
//! The engine's cursorless start (K9) can also restore an artifact, but it
//! folds every entry through `parse`/`apply` and the store's commits; an
//! import copies the artifact's files, so it costs about what a restart
//! does. The application sees the bootstrapped fold as it sees the fold
//! after a restart: in the store, not through `apply`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use slipstream_kv::{KvWatcher, WatchScope};
use slipstream_snapshot::{
    ArtifactManifest, Handover, SnapshotError, SnapshotStore, import_open_with,
};

use crate::error::{AppliedError, RestoreRefusal};
use crate::restore::artifact_refusal;
use crate::source::RestoreSource;
use crate::source::fetch_to_scratch;

/// How [`bootstrap`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapConfig {
    scope: WatchScope,
    scratch: PathBuf,
    timeout: Duration,
}

impl BootstrapConfig {
    /// Bootstrap a fold of `scope`. Defaults: the fetched artifact is staged
    /// in the system's temporary directory, and each step (the retention
    /// read, finding the newest artifact, fetching it) is bounded by 10 min.
    #[must_use]
    pub fn new(scope: WatchScope) -> Self {
        Self {
            scope,
            scratch: std::env::temp_dir(),
            timeout: Duration::from_secs(600),
        }
    }

    /// Stage the fetched artifact under `dir` (a directory of its own is
    /// made there and removed afterwards). On the store's file system the
    /// import can hard-link instead of copying.
    #[must_use]
    pub fn scratch(mut self, dir: impl Into<PathBuf>) -> Self {
        self.scratch = dir.into();
        self
    }

    /// The bound on each step.
    #[must_use]
    pub fn timeout(mut self, bound: Duration) -> Self {
        self.timeout = bound;
        self
    }
}

/// How a [`bootstrap`] ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum Bootstrap<S> {
    /// The directory now holds the artifact's fold, at its cursor.
    Imported {
        /// The imported artifact's manifest.
        manifest: ArtifactManifest,
        /// The store, open at the artifact's cursor: hand it to the engine.
        store: S,
    },
    /// No artifact can start this fold; the directory is as it was, and
    /// the watch hydrates from the bucket as a new node does.
    Declined(RestoreRefusal),
}

impl<S> Bootstrap<S> {
    /// Why no artifact was imported, if none was.
    #[must_use]
    pub fn declined(&self) -> Option<&RestoreRefusal> {
        match self {
            Self::Declined(why) => Some(why),
            Self::Imported { .. } => None,
        }
    }
}

/// Fill the absent or empty store directory `dir` from the newest artifact
/// of `source` that can start a fold of the config's scope in the bucket
/// `watcher` follows: of backend `S`, covering the scope, of the bucket's
/// current incarnation, and resumable inside its retained log (K6 against
/// an empty fold: [`artifact_refusal`] with rank 0). The artifact is
/// fetched into scratch and imported with every check of A3
/// ([`import_open`]: the open is the store-level check, so the data is read
/// once); its cursor is checked again as imported, and the open store is
/// handed back.
///
/// # Errors
/// [`AppliedError::Store`] when `dir` is not empty or the import fails
/// (a hostile or truncated artifact is
/// [`SnapshotError::ArtifactInvalid`], and `dir` is left as it was);
/// [`AppliedError::Kv`] when the retention read fails;
/// [`AppliedError::RestoreFailed`] when the source fails or a step
/// outlasts its bound.
pub async fn bootstrap<S, W>(
    watcher: &W,
    source: &dyn RestoreSource,
    dir: &Path,
    options: &S::Options,
    config: &BootstrapConfig,
) -> Result<Bootstrap<S>, AppliedError>
where
    S: SnapshotStore,
    W: KvWatcher,
{
    if !is_absent_or_empty(dir) {
        return Err(AppliedError::Store {
            operation: "bootstrap",
            source: SnapshotError::DestinationNotEmpty {
                path: dir.to_owned(),
            },
        });
    }
    let bound = config.timeout;
    let timed_out = |stage: &'static str| AppliedError::RestoreFailed {
        stage,
        source: format!("no answer within {bound:?}").into(),
    };
    let failed = |stage: &'static str| {
        move |source: crate::source::SourceError| AppliedError::RestoreFailed { stage, source }
    };
    let retention = tokio::time::timeout(bound, watcher.retention())
        .await
        .map_err(|_| timed_out("reading the bucket's retention"))??;
    let newest = tokio::time::timeout(bound, source.newest())
        .await
        .map_err(|_| timed_out("finding the newest artifact"))?
        .map_err(failed("finding the newest artifact"))?;
    let Some(manifest) = newest else {
        return Ok(Bootstrap::Declined(RestoreRefusal::NoArtifact));
    };
    let accept =
        |m: &ArtifactManifest| artifact_refusal(m, Some(S::BACKEND), &config.scope, 0, &retention);
    if let Some(refusal) = accept(&manifest) {
        return Ok(Bootstrap::Declined(refusal));
    }
    let (scratch, fetched) = fetch_to_scratch(source, &manifest, &config.scratch, bound).await?;
    // A download into the scratch directory is ours to move into place;
    // an artifact the source keeps (a local directory) is copied.
    let handover = if fetched.starts_with(scratch.path()) {
        Handover::Move
    } else {
        Handover::Copy
    };
    let dest = dir.to_owned();
    let options = options.clone();
    let imported = tokio::task::spawn_blocking(move || {
        import_open_with::<S>(&fetched, &dest, &options, handover)
    })
    .await;
    drop(scratch);
    let (imported, store) = match imported {
        Ok(Ok(opened)) => opened,
        Ok(Err(source)) => {
            return Err(AppliedError::Store {
                operation: "bootstrap import",
                source,
            });
        }
        Err(_) => {
            return Err(AppliedError::StorePanicked {
                operation: "bootstrap import",
            });
        }
    };
    // The source may have changed between its manifest and its files:
    // what was imported must pass on its own.
    if let Some(refusal) = accept(&imported) {
        let closed = tokio::task::spawn_blocking(move || store.close()).await;
        if !matches!(closed, Ok(Ok(()))) {
            tracing::warn!(dir = %dir.display(), "closing a declined bootstrap's store failed");
        }
        clear(dir);
        return Ok(Bootstrap::Declined(refusal));
    }
    tracing::info!(
        dir = %dir.display(),
        cursor = ?imported.cursor.revision(),
        "bootstrapped the store from an artifact",
    );
    Ok(Bootstrap::Imported {
        manifest: imported,
        store,
    })
}

fn is_absent_or_empty(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Empty `dir` again after a declined import (it was empty before).
fn clear(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(error) = removed {
            tracing::warn!(path = %path.display(), %error, "removing a declined bootstrap's files");
        }
    }
}
