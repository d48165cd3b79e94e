//! Export requests (E8): a channel of `{dest, reply}` served by the engine
//! between flushes.

use std::path::PathBuf;

use slipstream_snapshot::ArtifactManifest;
use tokio::sync::{mpsc, oneshot};

use crate::error::AppliedError;

/// One export request: where to write the artifact, and where to send the
/// result.
#[derive(Debug)]
pub struct ExportRequest {
    /// The artifact's destination (must not exist, or be an empty
    /// directory).
    pub dest: PathBuf,
    /// Receives the artifact's manifest, or why the export failed.
    pub reply: oneshot::Sender<Result<ArtifactManifest, AppliedError>>,
}

/// The engine's end of the export channel; hand it to
/// [`AppliedConfig::exports`](crate::AppliedConfig::exports).
#[derive(Debug)]
pub struct ExportRequests {
    pub(crate) rx: mpsc::Receiver<ExportRequest>,
}

impl ExportRequests {
    /// Serve requests arriving on `rx` (for callers with their own sender).
    #[must_use]
    pub fn from_receiver(rx: mpsc::Receiver<ExportRequest>) -> Self {
        Self { rx }
    }
}

/// The caller's end of the export channel.
#[derive(Debug, Clone)]
pub struct Exporter {
    tx: mpsc::Sender<ExportRequest>,
}

/// A connected pair: an [`Exporter`] and the [`ExportRequests`] the engine
/// serves. `capacity` bounds queued requests (at least 1).
#[must_use]
pub fn export_channel(capacity: usize) -> (Exporter, ExportRequests) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (Exporter { tx }, ExportRequests { rx })
}

impl Exporter {
    /// Ask the engine to flush its pending batch and export the fold to
    /// `dest`; resolves when the artifact is in place.
    ///
    /// # Errors
    /// [`AppliedError::NoStore`] for a watch without a store,
    /// [`AppliedError::Export`] when the export failed (the watch goes on),
    /// [`AppliedError::ExportDropped`] when the watch has stopped.
    pub async fn export(&self, dest: impl Into<PathBuf>) -> Result<ArtifactManifest, AppliedError> {
        let (reply, rx) = oneshot::channel();
        let request = ExportRequest {
            dest: dest.into(),
            reply,
        };
        self.tx
            .send(request)
            .await
            .map_err(|_| AppliedError::ExportDropped)?;
        rx.await.map_err(|_| AppliedError::ExportDropped)?
    }
}
