//! Restore sources for the restore tests: one that fails or hangs
//! ([`BrokenSource`]), and the current incarnation's local artifacts,
//! counting fetches ([`Artifacts`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use slipstream_applied::{LocalArtifacts, RestoreSource, SourceError};
use slipstream_snapshot::ArtifactManifest;

/// A source whose every answer fails, or never comes.
#[derive(Debug)]
pub enum BrokenSource {
    Fails,
    Hangs,
    /// Lists an artifact, then fails to fetch it.
    FetchFails(ArtifactManifest),
}

impl RestoreSource for BrokenSource {
    fn newest(&self) -> BoxFuture<'_, Result<Option<ArtifactManifest>, SourceError>> {
        Box::pin(async move {
            match self {
                Self::Fails => Err("object store unreachable".into()),
                Self::Hangs => std::future::pending().await,
                Self::FetchFails(m) => Ok(Some(m.clone())),
            }
        })
    }

    fn fetch<'a>(
        &'a self,
        _: &'a ArtifactManifest,
        _: &'a Path,
    ) -> BoxFuture<'a, Result<PathBuf, SourceError>> {
        Box::pin(async { Err("download interrupted".into()) })
    }
}

/// The artifacts of the current incarnation (a local directory), counting
/// fetches.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub current: Arc<Mutex<LocalArtifacts>>,
    pub fetches: Arc<AtomicU64>,
    /// The directory the last `newest` looked in: a recreation between it
    /// and the `fetch` (the node up across it) must not move the fetch.
    pub asked: Arc<Mutex<Option<LocalArtifacts>>>,
}

impl Artifacts {
    pub fn source(&self) -> LocalArtifacts {
        self.current.lock().unwrap().clone()
    }
}

impl RestoreSource for Artifacts {
    fn newest(&self) -> BoxFuture<'_, Result<Option<ArtifactManifest>, SourceError>> {
        let source = self.source();
        *self.asked.lock().unwrap() = Some(source.clone());
        Box::pin(async move { source.newest().await })
    }

    fn fetch<'a>(
        &'a self,
        manifest: &'a ArtifactManifest,
        scratch: &'a Path,
    ) -> BoxFuture<'a, Result<PathBuf, SourceError>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let asked = self.asked.lock().unwrap().clone();
        let source = asked.unwrap_or_else(|| self.source());
        Box::pin(async move { source.fetch(manifest, scratch).await })
    }
}
