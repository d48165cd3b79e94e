//! `slipstream mirror` (C1): keep a durable fold of a bucket in a store
//! directory, resuming after restarts.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use slipstream::fleet::{ArtifactTransport, ExportStatus, FleetConfig, ScheduleConfig};
use slipstream::kv::{Connection, KvStore};
use slipstream::{
    AppliedConfig, AppliedError, AppliedWatch, Bootstrap, BootstrapConfig, MassDeletePolicy,
    NatsBucket, NatsConnection, OnExpiry, Phase, RepairMode, SnapshotStore, StatusReceiver,
    StopReason, WatchScope, bootstrap, handlers,
};
use tokio_util::sync::CancellationToken;

use crate::backend::{WithStore, dispatch, open_store};
use crate::error::CliError;
use crate::fleet::{Artifacts, ArtifactsArg, Opener, parse_duration};
use crate::layout::{BackendKind, Marker, StoreDir, is_absent_or_empty, prefixes_of, scope_of};
use crate::server::ServerArgs;

/// What to do when the store's cursor is outside the bucket's retained
/// history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RepairArg {
    /// Relist where the bucket's listing is the truth, restore otherwise.
    Auto,
    /// Rebuild from the bucket's key listing.
    Relist,
    /// Rebuild from the newest artifact in `--artifacts`.
    Restore,
    /// Do not repair: stop with an error.
    None,
}

impl RepairArg {
    /// What the engine does on expiry.
    fn on_expiry(self) -> OnExpiry {
        match self {
            Self::Auto => OnExpiry::Repair(RepairMode::Auto),
            Self::Relist => OnExpiry::Repair(RepairMode::Relist),
            Self::Restore => OnExpiry::Repair(RepairMode::Restore),
            Self::None => OnExpiry::Stop,
        }
    }
}

/// Whether a repair may delete most of the fold (K14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum MassDeleteArg {
    /// Stop (exit 3) before a repair that deletes more than half the fold.
    Hold,
    /// Let the repair delete whatever the bucket no longer holds.
    Allow,
}

impl MassDeleteArg {
    /// The engine's policy.
    fn policy(self) -> MassDeletePolicy {
        match self {
            Self::Hold => MassDeletePolicy::default(),
            Self::Allow => MassDeletePolicy::Allow,
        }
    }
}

/// How a new node (an empty store) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BootstrapArg {
    /// Import the newest usable artifact of `--artifacts`, then take the
    /// delta; hydrate from the bucket when there is none.
    Artifact,
    /// Always hydrate from the bucket.
    Listing,
}

/// `mirror`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct MirrorArgs {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    /// The bucket to mirror.
    #[arg(long, value_name = "NAME")]
    pub(crate) bucket: String,
    /// The store directory (created when absent).
    #[arg(long, value_name = "DIR")]
    pub(crate) store: PathBuf,
    /// The backend of a new store; an existing store keeps its own.
    #[arg(long, value_enum)]
    pub(crate) backend: Option<BackendKind>,
    /// Mirror only keys starting with this prefix (repeatable; ends at a
    /// `.` boundary). Without one, the whole bucket.
    #[arg(long = "prefix", value_name = "P")]
    pub(crate) prefixes: Vec<String>,
    /// How to repair a cursor that retention has passed.
    #[arg(long, value_enum, default_value_t = RepairArg::Auto)]
    pub(crate) repair: RepairArg,
    /// Where to restore and bootstrap from: a directory of artifacts
    /// (copied in by hand, or published by `--export-to DIR`), or
    /// `nats://BUCKET`, an object store bucket on this server.
    #[arg(long, value_name = "DIR|nats://BUCKET")]
    pub(crate) artifacts: Option<ArtifactsArg>,
    /// How a new node's empty store starts.
    #[arg(long, value_enum, default_value_t = BootstrapArg::Artifact)]
    pub(crate) bootstrap: BootstrapArg,
    /// Export the fold every DURATION (e.g. 30s, 5m, 1h) while mirroring,
    /// and publish it to `--export-to` (default: `--artifacts`); one
    /// exporter at a time per bucket, scope and backend holds the lease.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) export_every: Option<Duration>,
    /// Where scheduled exports are published: a directory or
    /// `nats://BUCKET` (created when absent).
    #[arg(long, value_name = "DIR|nats://BUCKET", requires = "export_every")]
    pub(crate) export_to: Option<ArtifactsArg>,
    /// Published artifacts to keep (the newest one is always kept).
    #[arg(long, value_name = "N", default_value = "3")]
    pub(crate) keep_artifacts: NonZeroUsize,
    /// Replicas of an object store bucket this mirror creates.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub(crate) artifact_replicas: u8,
    /// Whether a repair may delete more than half of the fold.
    #[arg(long, value_enum, default_value_t = MassDeleteArg::Hold)]
    pub(crate) mass_delete: MassDeleteArg,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9090).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<SocketAddr>,
}

/// Run `mirror` until a signal, the end of the watch, or a failure.
///
/// # Errors
/// Usage errors, a store of another backend, scope or bucket, connection
/// failures, and the engine's failures (an expired cursor included).
pub(crate) fn run(args: MirrorArgs) -> Result<(), CliError> {
    slipstream::kv::validate_bucket_name(&args.bucket)
        .map_err(|e| CliError::Usage(format!("--bucket: {e}")))?;
    let scope = scope_of((!args.prefixes.is_empty()).then(|| args.prefixes.clone()));
    scope
        .validate()
        .map_err(|e| CliError::Usage(format!("--prefix: {e}")))?;
    if args.repair == RepairArg::Restore && args.artifacts.is_none() {
        return Err(CliError::Usage(
            "--repair restore needs --artifacts DIR|nats://BUCKET".into(),
        ));
    }
    if args.export_every.is_some() && args.export_destination().is_none() {
        return Err(CliError::Usage(
            "--export-every needs --export-to DIR|nats://BUCKET (or --artifacts)".into(),
        ));
    }
    if let Some(ArtifactsArg::Dir(dir)) = &args.artifacts
        && !dir.is_dir()
        && args.export_destination() != args.artifacts.as_ref()
    {
        return Err(CliError::Usage(format!(
            "--artifacts {}: not a directory",
            dir.display()
        )));
    }
    let existing = StoreDir::find(&args.store)?;
    let (backend, fold) = match &existing {
        Some(dir) => {
            check_existing(dir, &args, &scope)?;
            (dir.backend, dir.fold.clone())
        }
        None => {
            let backend = args.backend.unwrap_or(BackendKind::AppendLog);
            (backend, args.store.join(crate::layout::FOLD_DIR))
        }
    };
    dispatch(
        backend,
        &fold,
        Mirror {
            args,
            scope,
            backend,
            existing,
        },
    )
}

impl MirrorArgs {
    /// Where scheduled exports go, if any.
    fn export_destination(&self) -> Option<&ArtifactsArg> {
        self.export_every?;
        self.export_to.as_ref().or(self.artifacts.as_ref())
    }
}

/// Refuse a store built for another backend, bucket or scope.
fn check_existing(dir: &StoreDir, args: &MirrorArgs, scope: &WatchScope) -> Result<(), CliError> {
    if let Some(requested) = args.backend
        && requested != dir.backend
    {
        return Err(CliError::WrongBackend {
            path: dir.root.clone(),
            requested: requested.name().to_owned(),
            found: dir.backend.name().to_owned(),
        });
    }
    let Some(marker) = &dir.marker else {
        return Ok(());
    };
    if let Some(bucket) = &marker.bucket
        && *bucket != args.bucket
    {
        return Err(CliError::Store {
            path: dir.root.clone(),
            detail: format!(
                "mirrors bucket {bucket:?}, not {:?}; use a new --store",
                args.bucket
            ),
        });
    }
    if marker.prefixes != prefixes_of(scope) {
        let describe = |p: &Option<Vec<String>>| {
            p.as_ref().map_or_else(
                || "the whole bucket".to_owned(),
                |ps| format!("prefixes {ps:?}"),
            )
        };
        return Err(CliError::Store {
            path: dir.root.clone(),
            detail: format!(
                "was built for {}, not {}; mirror with the same --prefix values or use a new --store",
                describe(&marker.prefixes),
                describe(&prefixes_of(scope)),
            ),
        });
    }
    Ok(())
}

struct Mirror {
    args: MirrorArgs,
    scope: WatchScope,
    backend: BackendKind,
    existing: Option<StoreDir>,
}

impl WithStore for Mirror {
    type Output = ();

    fn run<S: SnapshotStore>(self, fold: &Path) -> Result<(), CliError> {
        let runtime = crate::runtime()?;
        runtime.block_on(async move {
            // Connect and open the bucket before a new store directory is
            // made: a mistyped name or an unreachable server must not leave a
            // marker that binds the directory to a bucket that never worked.
            let conn = self.args.server.connect().await?;
            let opened = conn.store(&self.args.bucket).await;
            let bucket = match opened {
                Ok(bucket) => bucket,
                Err(e) => {
                    let _ = conn.shutdown().await;
                    return Err(e.into());
                }
            };
            let result = start::<S>(&self, &conn, &bucket, fold).await;
            let result = match result {
                Ok(started) => mirror(started, bucket, self.args, self.scope).await,
                Err(e) => Err(e),
            };
            let _ = conn.shutdown().await;
            result
        })
    }
}

/// An opened store and the artifact places the mirror uses.
struct Started<S> {
    store: S,
    artifacts: Option<Artifacts>,
    exports: Option<Arc<dyn ArtifactTransport>>,
}

/// Open the artifact places, bind the store directory, bootstrap a new
/// node's empty fold from the newest usable artifact, and open the store.
async fn start<S: SnapshotStore>(
    m: &Mirror,
    conn: &NatsConnection,
    bucket: &NatsBucket,
    fold: &Path,
) -> Result<Started<S>, CliError> {
    let opener = Opener {
        conn: Some(conn),
        bucket: &m.args.bucket,
        scope: m.scope.clone(),
        backend: S::BACKEND,
        replicas: usize::from(m.args.artifact_replicas),
        timeout: Duration::from_secs(m.args.server.timeout),
    };
    let destination = m.args.export_destination();
    let exports = match destination {
        Some(dest) => Some(opener.transport(dest).await?),
        None => None,
    };
    let artifacts = match &m.args.artifacts {
        // The same place as the exports: one transport for both.
        Some(arg) if Some(arg) == destination => exports.clone().map(Artifacts::Fleet),
        Some(arg) => Some(opener.artifacts(arg, false).await?),
        None => None,
    };
    bind_store(m)?;
    let mut store = None;
    if let Some(artifacts) = &artifacts
        && m.args.bootstrap == BootstrapArg::Artifact
        && is_absent_or_empty(fold)?
    {
        let source = artifacts.source();
        let config = BootstrapConfig::new(m.scope.clone());
        let outcome = bootstrap::<S, _>(
            &bucket.watcher(),
            &*source,
            fold,
            &S::Options::default(),
            &config,
        )
        .await?;
        match outcome {
            Bootstrap::Imported {
                manifest,
                store: opened,
            } => {
                tracing::info!(
                    artifact = %m.args.artifacts.as_ref().map(ToString::to_string).unwrap_or_default(),
                    cursor = ?manifest.cursor.revision(),
                    "bootstrapped from an artifact; taking the delta"
                );
                store = Some(opened);
            }
            Bootstrap::Declined(why) => {
                tracing::info!(%why, "no artifact to bootstrap from; hydrating from the bucket");
            }
            _ => {}
        }
    }
    let store = match store {
        Some(store) => store,
        None => open_store(fold)?,
    };
    Ok(Started {
        store,
        artifacts,
        exports,
    })
}

/// Create the store directory (or name the bucket in a bare one's marker).
fn bind_store(m: &Mirror) -> Result<(), CliError> {
    let mut dir = match &m.existing {
        Some(dir) => dir.clone(),
        None => StoreDir::create(
            &m.args.store,
            Marker::new(m.backend, Some(m.args.bucket.clone()), &m.scope),
        )?,
    };
    if let Some(marker) = dir.marker.clone()
        && marker.bucket.is_none()
    {
        dir.set_marker(Marker {
            bucket: Some(m.args.bucket.clone()),
            ..marker
        })?;
    }
    Ok(())
}

async fn mirror<S: SnapshotStore>(
    started: Started<S>,
    bucket: NatsBucket,
    args: MirrorArgs,
    scope: WatchScope,
) -> Result<(), CliError> {
    let Started {
        store,
        artifacts,
        exports,
    } = started;
    let shutdown = CancellationToken::new();
    crate::signals::cancel_on_signal(shutdown.clone());
    if let Some(addr) = args.metrics {
        crate::metrics::serve(addr, shutdown.clone()).await?;
    }
    let start = store.cursor().revision();
    tracing::info!(
        bucket = %args.bucket,
        store = %args.store.display(),
        backend = %store.backend_id(),
        cursor = ?start,
        "starting mirror"
    );
    let mut config = AppliedConfig::new(scope)
        .name(args.bucket.clone())
        .store(store)
        .on_expiry(args.repair.on_expiry())
        .mass_delete(args.mass_delete.policy())
        .shutdown(shutdown.clone());
    if let Some(artifacts) = &artifacts {
        config = match artifacts {
            Artifacts::Hand(dir) => config.restore_from(dir.clone()),
            Artifacts::Fleet(transport) => config.restore_from_fleet(Arc::clone(transport)),
        };
    }
    let mut schedule = None;
    if let (Some(transport), Some(every)) = (exports, args.export_every) {
        let staging = args.store.join(EXPORT_STAGING_DIR);
        let plan = ScheduleConfig::new(every, staging).keep_last(args.keep_artifacts);
        let (with_exports, exporter) = config.export_on_schedule(transport, plan);
        config = with_exports;
        let status = exporter.status();
        let reporter = tokio::spawn(report_exports(status));
        let run = tokio::spawn(exporter.run(shutdown.clone()));
        schedule = Some((run, reporter));
    }
    let watch = AppliedWatch::new(bucket.watcher(), config);
    let progress = tokio::spawn(show_progress(watch.status(), start));
    // The fold lives in the store; the CLI only counts what arrives, so a
    // restart shows that only the delta came.
    let mut received = 0u64;
    let parse = |_: &slipstream::KvUpdate| {
        received += 1;
        Some(())
    };
    let result = watch.run_and_close(handlers(parse, |_batch| {})).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), progress).await;
    if let Some((run, reporter)) = schedule {
        // A round in flight ends at its next await; the lease is released.
        let bound = Duration::from_secs(args.server.timeout);
        if let Ok(Ok(status)) = tokio::time::timeout(bound, run).await {
            tracing::info!(
                rounds = status.rounds,
                published = status.published,
                "scheduled exports stopped"
            );
        }
        reporter.abort();
    }
    match result {
        Ok(stopped) => {
            let how = match stopped.reason {
                StopReason::Shutdown => "shut down",
                StopReason::EndOfStream => "watch ended",
            };
            tracing::info!(
                cursor = ?stopped.cursor.revision(),
                "mirror stopped ({how}); {received} updates received this run"
            );
            Ok(())
        }
        Err(AppliedError::CursorExpired { reason, cursor }) => Err(CliError::CursorExpired {
            revision: cursor
                .revision()
                .map_or_else(|| "none".to_owned(), |r| r.to_string()),
            reason: reason.to_string(),
            advice: EXPIRY_ADVICE.to_owned(),
        }),
        Err(e) => Err(match repair_fix(&e, &args) {
            Some(fix) => CliError::RepairBlocked { source: e, fix },
            None => e.into(),
        }),
    }
}

/// Where scheduled exports are staged inside the store directory (on the
/// store's file system, and removed once published).
const EXPORT_STAGING_DIR: &str = "exports";

/// A log line per published artifact and per failed round.
async fn report_exports(mut status: tokio::sync::watch::Receiver<ExportStatus>) {
    let mut seen = ExportStatus::default();
    // `None`: this mirror holds the lease; the first round always logs.
    let mut leader = Some(String::new());
    while status.changed().await.is_ok() {
        let now = status.borrow_and_update().clone();
        if now.published > seen.published {
            tracing::info!(rank = ?now.last_rank, "published an artifact");
        }
        if now.last_error.is_some() && now.last_error != seen.last_error {
            tracing::warn!(
                error = now.last_error.as_deref().unwrap_or_default(),
                failures = now.consecutive_failures,
                "a scheduled export failed; the next one runs on schedule"
            );
        }
        let holder = match &now.last_outcome {
            Some(slipstream::fleet::RoundOutcome::NotLeader { holder }) => Some(holder.clone()),
            Some(_) => None,
            None => leader.clone(),
        };
        if holder != leader {
            match &holder {
                None => tracing::info!("holding the export lease"),
                Some(holder) => tracing::info!(%holder, "another mirror holds the export lease"),
            }
            leader = holder;
        }
        seen = now;
    }
}

/// The flag that would let a refused repair go on, for exit 3's line.
fn repair_fix(e: &AppliedError, args: &MirrorArgs) -> Option<String> {
    const EXPORT: &str =
        "an artifact `slipstream export` or `mirror --export-every` wrote on a caught-up node";
    let artifacts = args.artifacts.as_ref().map(ToString::to_string);
    Some(match e {
        AppliedError::RelistRefused { .. } => format!(
            "only an artifact can repair it: use --repair auto with --artifacts DIR|nats://BUCKET ({EXPORT})"
        ),
        AppliedError::RestoreUnavailable { .. } => {
            format!("pass --artifacts DIR|nats://BUCKET holding {EXPORT}")
        }
        AppliedError::RestoreRefused { .. } => match artifacts {
            Some(dir) => {
                format!("put into --artifacts {dir} a newer artifact of this bucket ({EXPORT})")
            }
            None => format!("pass --artifacts DIR|nats://BUCKET holding {EXPORT}"),
        },
        AppliedError::MassDeleteHeld { .. } => {
            "check the bucket; if the deletions are meant, run once with --mass-delete allow"
                .to_owned()
        }
        _ => return None,
    })
}

/// What an operator can do when `--repair none` stopped on an expiry.
const EXPIRY_ADVICE: &str = "--repair none: not repairing (--repair auto relists where the bucket's listing is the truth and restores from --artifacts otherwise)";

/// A progress bar while the initial sync runs (hidden when stderr is not
/// a terminal), then a log line per phase change.
async fn show_progress(mut status: StatusReceiver, start: Option<u64>) {
    let base = start.unwrap_or(0);
    let bar = crate::progress::add(ProgressBar::new(0));
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} syncing [{bar:40}] {pos}/{len} revisions ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut phase = Phase::Starting;
    loop {
        let now = status.borrow_and_update().clone();
        if !bar.is_finished() {
            if let Some(last) = now.stream_last {
                bar.set_length(last.saturating_sub(base));
            }
            bar.set_position(now.applied.unwrap_or(base).saturating_sub(base));
        }
        if now.phase != phase {
            phase = now.phase;
            match phase {
                Phase::Ready => {
                    bar.finish_and_clear();
                    tracing::info!(cursor = ?now.applied, lag = ?now.lag, "caught up; following live changes");
                }
                Phase::Syncing | Phase::Repairing if bar.is_finished() => {
                    tracing::info!(?phase, "re-syncing");
                }
                Phase::Failed => bar.abandon(),
                _ => {}
            }
        }
        if status.changed().await.is_err() {
            break;
        }
    }
    bar.finish_and_clear();
}
