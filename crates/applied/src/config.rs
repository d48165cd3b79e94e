//! The engine's configuration: scope, batching, store, exports, shutdown,
//! timeouts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use slipstream_kv::{WatchCursor, WatchScope};
use slipstream_protocol::{MassDeleteLimit, RepairMode};
use slipstream_snapshot::SnapshotStore;
use tokio_util::sync::CancellationToken;

use crate::error::AppliedError;
use crate::export::ExportRequests;
use crate::slot::NoStore;
use crate::source::RestoreSource;

/// When a batch closes (E2). A batch also closes on shutdown, at the end of
/// the stream, on an export request and when the watch has caught up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// How long a batch stays open after its first update arrived (default
    /// 10 ms). The timer starts with the first received update, even one
    /// `parse` rejects.
    pub window: Duration,
    /// The most updates a batch holds, parsed or rejected (default 100).
    pub max: usize,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(10),
            max: 100,
        }
    }
}

/// Bounds on operations that could otherwise hang.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Starting a watch (default 30 s); also each wait for the next item
    /// of a repair's listing.
    pub watch_setup: Duration,
    /// Reading the bucket's retention (default 30 s).
    pub retention: Duration,
    /// Waiting for the store to close in [`AppliedWatch::run_and_close`]
    /// (default 30 s).
    ///
    /// [`AppliedWatch::run_and_close`]: crate::AppliedWatch::run_and_close
    pub close: Duration,
    /// Each call to a [`RestoreSource`] (finding the newest artifact,
    /// fetching it; default 10 min).
    pub restore: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            watch_setup: Duration::from_secs(30),
            retention: Duration::from_secs(30),
            close: Duration::from_secs(30),
            restore: Duration::from_secs(600),
        }
    }
}

/// How failures that may pass are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first pause before a retry (default 100 ms); doubles per attempt.
    pub initial_backoff: Duration,
    /// The longest pause (default 5 s).
    pub max_backoff: Duration,
    /// Consecutive failed store commits after which the watch stops (E4,
    /// default 16).
    pub max_store_failures: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_store_failures: 16,
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `attempt` (1-based).
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// What the engine does when its cursor expires (R1).
///
/// Unless [`AppliedConfig::on_expiry`] says otherwise, an engine with a
/// store repairs with [`RepairMode::Relist`]: where the bucket's listing is
/// the truth (K7) the fold is re-listed, which is never wrong; where it is
/// not, the watch ends with [`AppliedError::RelistRefused`] naming the
/// reason. An apparent expiry can be a false alarm (on a small bucket
/// written faster than the node reads, supersession alone moves the first
/// sequence past the node), and a relist answers it without stopping. An
/// engine without a store has no fold to compare with a listing, so it
/// stops ([`OnExpiry::Stop`]) and leaves the cursor to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnExpiry {
    /// End the watch with [`AppliedError::CursorExpired`] and leave the
    /// fold as committed, for a caller that repairs by itself. On a bucket
    /// that evicts no current values, a caught-up watch is then not checked
    /// for a first sequence passing it (supersession would stop a healthy
    /// node); only resumes and the backend's guard of delta watches are,
    /// so an operator's purge of a delete marker the watch has not yet
    /// delivered goes unnoticed.
    Stop,
    /// Repair the fold with this mode (K8) and go on watching. Plans that
    /// need a restore take the newest artifact of
    /// [`AppliedConfig::restore_from`]'s source.
    Repair(RepairMode),
}

impl OnExpiry {
    /// What an engine does when its configuration does not say: repair
    /// with a relist when it has a store (`durable`), stop otherwise.
    #[must_use]
    pub const fn default_for(durable: bool) -> Self {
        if durable {
            Self::Repair(RepairMode::Relist)
        } else {
            Self::Stop
        }
    }
}

/// The mass-delete guard for repairs (K14, R9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MassDeletePolicy {
    /// Hold (stop with [`AppliedError::MassDeleteHeld`]) a repair that
    /// would delete more than this fraction of the in-scope fold, or all of
    /// a non-empty one.
    Hold(MassDeleteLimit),
    /// The explicit override: let the repair delete whatever it found.
    Allow,
}

impl Default for MassDeletePolicy {
    /// Hold past half of the fold.
    fn default() -> Self {
        Self::Hold(MassDeleteLimit::default())
    }
}

/// How an applied watch is set up: one entry point takes the watcher plus
/// this config.
///
/// `S` is the store the fold is committed to, or [`NoStore`]: then the
/// caller supplies the resume cursor ([`AppliedConfig::resume_from`]) and
/// persists the one `on_applied` reports (E6).
#[derive(Debug)]
pub struct AppliedConfig<S = NoStore> {
    pub(crate) settings: Settings,
    pub(crate) store: S,
    pub(crate) resume: WatchCursor,
    pub(crate) exports: Option<ExportRequests>,
}

/// Everything of a config but the store, the resume cursor and the export
/// channel.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) name: String,
    pub(crate) scope: WatchScope,
    pub(crate) batch: BatchPolicy,
    pub(crate) shutdown: CancellationToken,
    pub(crate) timeouts: Timeouts,
    pub(crate) retry: RetryPolicy,
    pub(crate) status_interval: Duration,
    /// `None`: [`OnExpiry::default_for`] the engine's store.
    pub(crate) on_expiry: Option<OnExpiry>,
    pub(crate) mass_delete: MassDeletePolicy,
    pub(crate) scratch: ScratchPolicy,
    pub(crate) restore: Option<Arc<dyn RestoreSource>>,
}

impl Settings {
    /// The configured answer to an expiry, or the default for a store that
    /// is `durable` (or not).
    pub(crate) fn on_expiry_for(&self, durable: bool) -> OnExpiry {
        self.on_expiry.unwrap_or(OnExpiry::default_for(durable))
    }

    /// Whether a gap on a bucket that evicts nothing current makes a
    /// repair due: only where a repair answers it. A node that stops on
    /// expiry (or has no store) would otherwise stop on supersession, so it
    /// goes on there, as K11 generalised expects of a gap.
    pub(crate) fn repairs_gaps(&self, durable: bool) -> bool {
        durable && matches!(self.on_expiry_for(durable), OnExpiry::Repair(_))
    }
}

impl AppliedConfig<NoStore> {
    /// A watch of `scope` without a store, starting with a state-sync.
    #[must_use]
    pub fn new(scope: WatchScope) -> Self {
        Self {
            settings: Settings {
                name: String::from("default"),
                scope,
                batch: BatchPolicy::default(),
                shutdown: CancellationToken::new(),
                timeouts: Timeouts::default(),
                retry: RetryPolicy::default(),
                status_interval: Duration::from_secs(10),
                on_expiry: None,
                mass_delete: MassDeletePolicy::default(),
                scratch: ScratchPolicy::default(),
                restore: None,
            },
            store: NoStore,
            resume: WatchCursor::none(),
            exports: None,
        }
    }

    /// Resume after `cursor` (one `on_applied` reported earlier) instead of
    /// starting with a state-sync. With a store, the store's own cursor is
    /// used instead.
    #[must_use]
    pub fn resume_from(mut self, cursor: WatchCursor) -> Self {
        self.resume = cursor;
        self
    }

    /// Commit the fold to `store` and resume from its cursor (E6).
    #[must_use]
    pub fn store<S: SnapshotStore>(self, store: S) -> AppliedConfig<S> {
        AppliedConfig {
            settings: self.settings,
            store,
            resume: WatchCursor::none(),
            exports: self.exports,
        }
    }
}

impl<S> AppliedConfig<S> {
    /// A label for logs and metrics (default `"default"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.settings.name = name.into();
        self
    }

    /// The batch policy.
    #[must_use]
    pub fn batch(mut self, batch: BatchPolicy) -> Self {
        self.settings.batch = batch;
        self
    }

    /// Serve export requests from this channel (E8).
    #[must_use]
    pub fn exports(mut self, requests: ExportRequests) -> Self {
        self.exports = Some(requests);
        self
    }

    /// Stop gracefully when this token is cancelled (E5).
    #[must_use]
    pub fn shutdown(mut self, token: CancellationToken) -> Self {
        self.settings.shutdown = token;
        self
    }

    /// Timeouts.
    #[must_use]
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.settings.timeouts = timeouts;
        self
    }

    /// Retry policy for re-watching and store commits.
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.settings.retry = retry;
        self
    }

    /// How often the stream's last sequence is re-read for the status' lag
    /// (default 10 s).
    #[must_use]
    pub fn status_interval(mut self, every: Duration) -> Self {
        self.settings.status_interval = every;
        self
    }
}

impl<S> AppliedConfig<S> {
    /// What to do when the cursor expires (default: a relist with a store,
    /// a stop without one; see [`OnExpiry`]).
    #[must_use]
    pub fn on_expiry(mut self, on_expiry: OnExpiry) -> Self {
        self.settings.on_expiry = Some(on_expiry);
        self
    }

    /// The mass-delete guard of repairs (default: hold past half of the
    /// fold).
    #[must_use]
    pub fn mass_delete(mut self, policy: MassDeletePolicy) -> Self {
        self.settings.mass_delete = policy;
        self
    }

    /// Where restore repairs find artifacts (R3); without one, a plan that
    /// needs a restore stops with [`AppliedError::RestoreUnavailable`].
    #[must_use]
    pub fn restore_from(mut self, source: impl RestoreSource) -> Self {
        self.settings.restore = Some(Arc::new(source));
        self
    }

    /// Where repairs put their scratch files and how much memory a relist
    /// listing may hold before it spills (R2, R3).
    #[must_use]
    pub fn scratch(mut self, scratch: ScratchPolicy) -> Self {
        self.settings.scratch = scratch;
        self
    }
}

/// Scratch space for repairs: a relist's sorted runs of listed keys past
/// the memory bound (R2) and a restore's temporary fold (R3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchPolicy {
    /// The directory scratch files go under (default: the system's
    /// temporary directory), created if missing. Each repair makes its own
    /// subdirectory there, holds a lock on it while it runs and removes it
    /// when done; a repair starting removes the subdirectories whose lock
    /// nobody holds (left by a killed process). Other processes may share
    /// the directory.
    pub dir: PathBuf,
    /// The bytes of listed keys a relist holds in memory before it writes
    /// a sorted run to `dir` (default 32 MiB). The repair's peak is this
    /// plus a constant that does not grow with the bucket: the store's
    /// cache and a few MiB of I/O buffers (docs/benchmarks.md, T5).
    pub relist_memory: usize,
}

impl Default for ScratchPolicy {
    fn default() -> Self {
        Self {
            dir: std::env::temp_dir(),
            relist_memory: 32 << 20,
        }
    }
}

impl Settings {
    pub(crate) fn validate(&self) -> Result<(), AppliedError> {
        if self.batch.max == 0 {
            return Err(AppliedError::InvalidConfig(
                "batch max must be at least 1".into(),
            ));
        }
        if self.batch.window.is_zero() {
            return Err(AppliedError::InvalidConfig(
                "batch window must be positive".into(),
            ));
        }
        if self.status_interval.is_zero() {
            return Err(AppliedError::InvalidConfig(
                "status interval must be positive".into(),
            ));
        }
        if self.scratch.relist_memory == 0 {
            return Err(AppliedError::InvalidConfig(
                "relist memory must be at least 1 byte".into(),
            ));
        }
        if self.retry.max_store_failures == 0 {
            return Err(AppliedError::InvalidConfig(
                "max_store_failures must be at least 1".into(),
            ));
        }
        self.scope
            .validate()
            .map_err(|e| AppliedError::InvalidConfig(e.to_string()))
    }
}
