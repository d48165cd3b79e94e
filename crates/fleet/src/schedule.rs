//! Scheduled exports from a running mirror: every period, take the export
//! lease, ask the engine for an export (A4: at its applied cursor, between
//! flushes), publish it, prune, and report.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use slipstream_applied::{AppliedConfig, AppliedError, Exporter, export_channel};
use slipstream_snapshot::SnapshotStore;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::FleetError;
use crate::naming::new_payload_id;
use crate::transport::{ArtifactTransport, PublishOutcome};

/// How a [`ScheduledExport`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleConfig {
    every: Duration,
    scratch: PathBuf,
    keep_last: NonZeroUsize,
    lease_ttl: Option<Duration>,
    holder: String,
}

impl ScheduleConfig {
    /// Export every `every`, staging each export under `scratch` (removed
    /// once published). `scratch` must be this exporter's own: leftover
    /// staged exports in it are removed when the exporter starts. Defaults: keep the last 3 payloads, a lease of
    /// three periods (at least 30 s), a holder id unique to this process.
    #[must_use]
    pub fn new(every: Duration, scratch: impl Into<PathBuf>) -> Self {
        let unique = new_payload_id(0);
        let suffix = unique.rsplit('-').next().unwrap_or_default();
        Self {
            every: every.max(Duration::from_millis(1)),
            scratch: scratch.into(),
            keep_last: NonZeroUsize::MIN.saturating_add(2),
            lease_ttl: None,
            holder: format!("exporter-{}-{suffix}", std::process::id()),
        }
    }

    /// Keep the newest `n` payloads when pruning (the pointed-to one is
    /// always kept).
    #[must_use]
    pub fn keep_last(mut self, n: NonZeroUsize) -> Self {
        self.keep_last = n;
        self
    }

    /// How long a taken lease lasts without renewal. It should outlast one
    /// export and upload: a lease that lapses mid-upload lets a second
    /// exporter start, which costs bandwidth, not correctness (the pointer
    /// is still guarded by K12 with CAS).
    #[must_use]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = Some(ttl);
        self
    }

    /// This exporter's lease holder id (unique per exporter).
    #[must_use]
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = holder.into();
        self
    }

    /// The holder id.
    #[must_use]
    pub fn holder_id(&self) -> &str {
        &self.holder
    }

    fn ttl(&self) -> Duration {
        self.lease_ttl
            .unwrap_or_else(|| self.every.saturating_mul(3).max(Duration::from_secs(30)))
    }
}

/// How one round ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundOutcome {
    /// An artifact was exported, uploaded and pointed at.
    Published {
        /// The payload's id.
        payload: String,
        /// Its cursor's rank.
        rank: u64,
        /// Payloads pruned after it.
        pruned: usize,
    },
    /// The pointer already names an artifact at this export's rank or
    /// above: nothing new to publish.
    UpToDate {
        /// The export's rank.
        rank: u64,
    },
    /// The pointer moved past this export during the upload (K12 kept it).
    Stale {
        /// The pointer's rank.
        pointer_rank: u64,
    },
    /// Another exporter holds the lease.
    NotLeader {
        /// Who.
        holder: String,
    },
}

/// What a [`ScheduledExport`] has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportStatus {
    /// Rounds run.
    pub rounds: u64,
    /// Rounds that moved the pointer.
    pub published: u64,
    /// When the last publish finished.
    pub last_published_at: Option<SystemTime>,
    /// The rank of the last artifact this exporter published.
    pub last_rank: Option<u64>,
    /// How the last successful round ended.
    pub last_outcome: Option<RoundOutcome>,
    /// The last round's error, cleared by the next success.
    pub last_error: Option<String>,
    /// Failed rounds since the last success.
    pub consecutive_failures: u32,
    /// Whether this exporter held the lease in its last round.
    pub holds_lease: bool,
}

/// Exports a running engine's fold on a schedule and publishes it through
/// a transport; one per mirror. Runs until shut down or the engine stops.
#[derive(Debug)]
pub struct ScheduledExport {
    exporter: Exporter,
    transport: Arc<dyn ArtifactTransport>,
    config: ScheduleConfig,
    status: watch::Sender<ExportStatus>,
}

impl ScheduledExport {
    /// Export through `exporter` (the engine's export channel) and publish
    /// to `transport`.
    #[must_use]
    pub fn new(
        exporter: Exporter,
        transport: Arc<dyn ArtifactTransport>,
        config: ScheduleConfig,
    ) -> Self {
        Self {
            exporter,
            transport,
            config,
            status: watch::Sender::new(ExportStatus::default()),
        }
    }

    /// A live view of what this exporter has done.
    #[must_use]
    pub fn status(&self) -> watch::Receiver<ExportStatus> {
        self.status.subscribe()
    }

    /// Run rounds every period until `shutdown` is cancelled or the engine
    /// stops; a failed round is reported and the next one runs on
    /// schedule. Releases the lease on the way out and returns the final
    /// status.
    pub async fn run(self, shutdown: CancellationToken) -> ExportStatus {
        // A round cut short by an earlier shutdown may have left a staged
        // export behind (the engine finishes an export it has started).
        let scratch = self.config.scratch.clone();
        let _ = tokio::task::spawn_blocking(move || remove_leftovers(&scratch)).await;
        // The first round waits one period: a mirror that just started is
        // still hydrating, and its fold is no news to the fleet.
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.every,
            self.config.every,
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            // A round dropped by shutdown leaves the pointer where it was:
            // it is only moved once a payload is wholly uploaded.
            let result = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                r = self.run_once() => r,
            };
            if let Err(FleetError::Export(AppliedError::ExportDropped)) = result {
                tracing::info!("the engine stopped; scheduled exports end");
                break;
            }
        }
        if let Err(error) = self.transport.release_lease(&self.config.holder).await {
            tracing::warn!(%error, "releasing the export lease");
        }
        self.status.send_modify(|s| s.holds_lease = false);
        self.status.borrow().clone()
    }

    /// Run one round now and record it in the status.
    ///
    /// # Errors
    /// Whatever failed: the lease, the export, the upload, the prune.
    pub async fn run_once(&self) -> Result<RoundOutcome, FleetError> {
        let result = self.round().await;
        self.status.send_modify(|s| {
            s.rounds += 1;
            match &result {
                Ok(outcome) => {
                    s.consecutive_failures = 0;
                    s.last_error = None;
                    s.holds_lease = !matches!(outcome, RoundOutcome::NotLeader { .. });
                    if let RoundOutcome::Published { rank, .. } = outcome {
                        s.published += 1;
                        s.last_rank = Some(*rank);
                        s.last_published_at = Some(SystemTime::now());
                    }
                    s.last_outcome = Some(outcome.clone());
                }
                Err(e) => {
                    s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                    s.last_error = Some(e.to_string());
                }
            }
        });
        match &result {
            Ok(outcome) => tracing::debug!(?outcome, "scheduled export round"),
            Err(error) => tracing::warn!(%error, "scheduled export round failed"),
        }
        result
    }

    async fn round(&self) -> Result<RoundOutcome, FleetError> {
        let grant = self
            .transport
            .acquire_lease(&self.config.holder, self.config.ttl())
            .await?;
        if let crate::LeaseGrant::HeldElsewhere { holder, .. } = grant {
            return Ok(RoundOutcome::NotLeader { holder });
        }
        let scratch = &self.config.scratch;
        tokio::fs::create_dir_all(scratch)
            .await
            .map_err(|e| FleetError::io("create", scratch, e))?;
        let dest = scratch.join(format!("export-{}", new_payload_id(0)));
        let staged = Staged(Some(dest.clone()));
        let manifest = self.exporter.export(&dest).await?;
        let rank = manifest.cursor.rank();
        let pointer = self.transport.pointer().await?;
        // An empty fold at no position helps no node: nothing to publish.
        if rank == 0 || pointer.rank().is_some_and(|p| p >= rank) {
            staged.remove().await;
            return Ok(RoundOutcome::UpToDate { rank });
        }
        let published = self.transport.publish(&dest).await;
        staged.remove().await;
        let published = published?;
        match published.outcome {
            PublishOutcome::Stale { pointer_rank, .. } => Ok(RoundOutcome::Stale { pointer_rank }),
            PublishOutcome::Moved { payload, .. } => {
                let pruned = match self.transport.prune(self.config.keep_last).await {
                    Ok(report) => report.pruned.len(),
                    Err(error) => {
                        // The artifact is published; pruning retries next round.
                        tracing::warn!(%error, "pruning artifacts");
                        0
                    }
                };
                Ok(RoundOutcome::Published {
                    payload,
                    rank,
                    pruned,
                })
            }
        }
    }
}

/// Scheduled exports and fleet restores set up on an [`AppliedConfig`].
pub trait FleetConfig: Sized {
    /// Serve the engine's exports to a [`ScheduledExport`] publishing to
    /// `transport` as `schedule` says; run the returned exporter next to
    /// the watch.
    #[must_use]
    fn export_on_schedule(
        self,
        transport: Arc<dyn ArtifactTransport>,
        schedule: ScheduleConfig,
    ) -> (Self, ScheduledExport);

    /// Restore from `transport`'s newest artifact when a repair needs one
    /// (R3).
    #[must_use]
    fn restore_from_fleet(self, transport: Arc<dyn ArtifactTransport>) -> Self;
}

impl<S: SnapshotStore> FleetConfig for AppliedConfig<S> {
    fn export_on_schedule(
        self,
        transport: Arc<dyn ArtifactTransport>,
        schedule: ScheduleConfig,
    ) -> (Self, ScheduledExport) {
        // One request in flight: a round waits for its own export.
        let (exporter, requests) = export_channel(1);
        (
            self.exports(requests),
            ScheduledExport::new(exporter, transport, schedule),
        )
    }

    fn restore_from_fleet(self, transport: Arc<dyn ArtifactTransport>) -> Self {
        self.restore_from(crate::TransportSource::new(transport))
    }
}

/// A staged export, removed when the round is done with it (also when the
/// round is dropped midway).
struct Staged(Option<PathBuf>);

impl Staged {
    async fn remove(mut self) {
        if let Some(path) = self.0.take() {
            // The blocking removal runs off the async threads.
            let _ = tokio::task::spawn_blocking(move || remove_quietly(&path)).await;
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            remove_quietly(&path);
        }
    }
}

/// Remove staged exports (`export-*`, and the engine's hidden staging
/// `.export-*`) from `scratch`, which belongs to this exporter alone.
fn remove_leftovers(scratch: &Path) {
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("export-") || name.starts_with(".export-") {
            remove_quietly(&entry.path());
        }
    }
}

fn remove_quietly(path: &Path) {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(path = %path.display(), %error, "removing a staged export"),
    }
}
