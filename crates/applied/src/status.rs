//! The watchable status and the metrics (E9).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use tokio::sync::watch;

/// Where an applied watch is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Configured, no watch established yet.
    Starting,
    /// A watch is running and has not yet delivered everything that was
    /// pending when it was created (also after a re-watch).
    Syncing,
    /// The fold holds everything the bucket held when the current watch
    /// started, and follows live changes.
    Ready,
    /// The fold is being repaired after a cursor expiry.
    Repairing,
    /// The watch stopped with an error.
    Failed,
}

/// A snapshot of an applied watch's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchStatus {
    /// The phase.
    pub phase: Phase,
    /// The revision of the applied (and, with a store, committed) cursor.
    pub applied: Option<u64>,
    /// The stream's last sequence as last seen (from the bucket's retention
    /// or a later delivery).
    pub stream_last: Option<u64>,
    /// How far the applied cursor is behind the stream's last sequence.
    pub lag: Option<u64>,
    /// Deliveries dropped as replays of applied revisions (K5).
    pub replays_dropped: u64,
    /// Messages left a bucket that evicts nothing current before the watch
    /// saw them, so a repair is due; it runs once the bucket is quiet (K11
    /// generalised). Until then the fold may hold a key a writer's TTL or
    /// a purged delete removed. As committed with the cursor.
    pub repair_due: bool,
    /// Entries removed because their per-message TTL passed, since the
    /// watch started.
    pub expired: u64,
}

impl WatchStatus {
    pub(crate) const fn starting() -> Self {
        Self {
            phase: Phase::Starting,
            applied: None,
            stream_last: None,
            lag: None,
            replays_dropped: 0,
            repair_due: false,
            expired: 0,
        }
    }

    /// Whether the phase is [`Phase::Ready`].
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }
}

/// The receiving end of an applied watch's status.
///
/// A borrow (`borrow()`, or the reference `wait_for` returns) holds the
/// channel's lock: the engine's next status update waits until it is
/// dropped. Copy out what you need; never hold one across an `.await`.
pub type StatusReceiver = watch::Receiver<WatchStatus>;

/// The engine's side of the status and its metric handles.
pub(crate) struct Reporter {
    name: String,
    tx: watch::Sender<WatchStatus>,
    /// The published phase is `Ready`: asked on every delivery, which must
    /// not take the status channel's lock.
    ready: AtomicBool,
    applied: Gauge,
    lag: Gauge,
    batch_size: Histogram,
    commit_seconds: Histogram,
    replays: Counter,
    guard_trips: Counter,
    store_failures: Counter,
    rewatches: Counter,
    expired: Counter,
}

impl Reporter {
    pub(crate) fn new(name: &str, tx: watch::Sender<WatchStatus>) -> Self {
        let label = [("watch", name.to_owned())];
        let ready = tx.borrow().is_ready();
        Self {
            name: name.to_owned(),
            ready: AtomicBool::new(ready),
            tx,
            applied: metrics::gauge!("slipstream_applied_cursor", &label),
            lag: metrics::gauge!("slipstream_applied_lag", &label),
            batch_size: metrics::histogram!("slipstream_applied_batch_size", &label),
            commit_seconds: metrics::histogram!("slipstream_applied_commit_seconds", &label),
            replays: metrics::counter!("slipstream_applied_replays_dropped_total", &label),
            guard_trips: metrics::counter!("slipstream_applied_guard_trips_total", &label),
            store_failures: metrics::counter!("slipstream_applied_store_failures_total", &label),
            rewatches: metrics::counter!("slipstream_applied_rewatches_total", &label),
            expired: metrics::counter!("slipstream_applied_expired_total", &label),
        }
    }

    /// Whether the published phase is `Ready`.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub(crate) fn phase(&self, phase: Phase) {
        self.ready.store(phase == Phase::Ready, Ordering::Relaxed);
        self.tx.send_if_modified(|s| {
            let changed = s.phase != phase;
            s.phase = phase;
            changed
        });
    }

    pub(crate) fn applied(&self, revision: Option<u64>) {
        let mut lag = None;
        self.tx.send_if_modified(|s| {
            let changed = s.applied != revision;
            s.applied = revision;
            s.lag = lag_of(s.stream_last, s.applied);
            lag = s.lag;
            changed
        });
        if let Some(rev) = revision {
            // Gauges are f64; precision loss past 2^53 only blurs a metric.
            #[allow(clippy::cast_precision_loss)]
            self.applied.set(rev as f64);
        }
        self.set_lag(lag);
    }

    pub(crate) fn stream_last(&self, last: u64) {
        let mut lag = None;
        self.tx.send_if_modified(|s| {
            if s.stream_last.is_some_and(|l| l >= last) {
                return false;
            }
            s.stream_last = Some(last);
            s.lag = lag_of(s.stream_last, s.applied);
            lag = s.lag;
            true
        });
        self.set_lag(lag);
    }

    fn set_lag(&self, lag: Option<u64>) {
        if let Some(lag) = lag {
            #[allow(clippy::cast_precision_loss)]
            self.lag.set(lag as f64);
        }
    }

    pub(crate) fn repair_due(&self, due: bool) {
        self.tx.send_if_modified(|s| {
            let changed = s.repair_due != due;
            s.repair_due = due;
            changed
        });
    }

    pub(crate) fn replay_dropped(&self) {
        self.replays.increment(1);
        self.tx.send_modify(|s| s.replays_dropped += 1);
    }

    pub(crate) fn batch(&self, size: usize) {
        #[allow(clippy::cast_precision_loss)]
        self.batch_size.record(size as f64);
    }

    pub(crate) fn commit_took(&self, took: Duration) {
        self.commit_seconds.record(took.as_secs_f64());
    }

    pub(crate) fn guard_trip(&self) {
        self.guard_trips.increment(1);
    }

    /// Count a repair by its kind (`relist`, `relist_only`, `refused`,
    /// `held`, `restore_unavailable`, `bucket_replaced`).
    pub(crate) fn repair(&self, kind: &'static str) {
        metrics::counter!(
            "slipstream_applied_repairs_total",
            "watch" => self.name.clone(),
            "kind" => kind
        )
        .increment(1);
    }

    pub(crate) fn expired(&self, entries: usize) {
        let n = u64::try_from(entries).unwrap_or(u64::MAX);
        self.expired.increment(n);
        self.tx.send_modify(|s| s.expired += n);
    }

    pub(crate) fn store_failure(&self) {
        self.store_failures.increment(1);
    }

    pub(crate) fn rewatch(&self) {
        self.rewatches.increment(1);
    }
}

fn lag_of(last: Option<u64>, applied: Option<u64>) -> Option<u64> {
    last.map(|l| l.saturating_sub(applied.unwrap_or(0)))
}
