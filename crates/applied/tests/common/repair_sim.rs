//! The world of `simulation_repair.rs`: a bucket of one of three retention
//! kinds on a manual clock, one node (an engine over a [`Faulty`] store)
//! that crashes, fails and is revived, exporter nodes writing artifacts,
//! and the oracles.

#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use slipstream_applied::{
    AppliedConfig, AppliedError, AppliedWatch, BatchPolicy, Exporter, Finished, LocalArtifacts,
    MassDeletePolicy, OnExpiry, Phase, RepairMode, RestoreRefusal, RestoreSource, ScratchPolicy,
    SourceError, StatusReceiver, export_channel,
};
use slipstream_kv::{
    Connection, DiscardPolicy, KvError, KvWatcher, Retention, StoreConfig, WatchCursor, WatchEvent,
    WatchScope, WatchStart,
};
use slipstream_memory::{ManualClock, MemoryServer, MemoryStore};
use slipstream_snapshot::{ArtifactManifest, SnapshotStore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::common::faulty::{CommitLog, Faulty, FaultyOptions, open_faulty};
use crate::common::{App, DEADLINE, FaultPlan, fold_of};
use crate::repair_oracle::{Incarnation, Log};

pub(crate) const BUCKET: &str = "dst";
pub(crate) const KEYS: u64 = 6;
pub(crate) const MINUTE: Duration = Duration::from_secs(60);
const MAX_AGE: Duration = Duration::from_secs(3600);

/// A store the schedules run on, and how it is opened.
pub trait Backend: SnapshotStore {
    /// Schedules per `cargo test` run.
    const DEFAULT_SCHEDULES: u64;
    /// Options for every store of a schedule.
    fn options() -> Self::Options;
}

/// A known engine gap a schedule exposes instead of avoiding it (see the
/// ignored tests of `simulation_repair.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expose {
    /// Avoid every known gap: no injected commit failures, a write before
    /// exporting an emptied stream, a restart for a lost cursor-only
    /// commit.
    Nothing,
    /// Inject commit failures (the default run); lost cursor-only commits
    /// still get a restart.
    StoreFailures,
    /// Inject commit failures, and no restart for a lost cursor-only
    /// commit.
    LostCursorCommit,
    /// A fresh node meets an emptied evicting stream with only rank-0
    /// artifacts.
    EmptyStreamBootstrap,
}

impl Expose {
    pub(crate) fn store_failures(self) -> bool {
        matches!(self, Self::StoreFailures | Self::LostCursorCommit)
    }
}

/// How the bucket evicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// No limits: only stream purges evict; the listing stays the truth.
    Plain,
    /// `max_msgs` with discard-old (from the start or switched on later).
    Limits,
    /// `max_age`, aged on the manual clock.
    Aged,
}

/// A watcher counting listings (state-sync watches): every relist, every
/// fresh start, every restore's liveness check. `listings` counts them
/// opened, `caught_up` counts them reaching `CaughtUp`. A key that leaves
/// the bucket may be missing from a fold read by a listing opened after it
/// left (one cut off after delivering the stream's tail is followed by a
/// delta resume, no `CaughtUp` ever comes), or by one still running when
/// it left.
#[derive(Clone)]
pub(crate) struct Counted {
    inner: MemoryStore,
    listings: Arc<AtomicU64>,
    caught_up: Arc<AtomicU64>,
}

impl KvWatcher for Counted {
    type WatchStream = BoxStream<'static, Result<WatchEvent, KvError>>;

    async fn watch(
        &self,
        scope: &WatchScope,
        start: WatchStart,
    ) -> Result<Self::WatchStream, KvError> {
        let relist = start == WatchStart::Relist;
        let stream = self.inner.watch(scope, start).await?;
        if relist {
            self.listings.fetch_add(1, Ordering::SeqCst);
        }
        let caught_up = Arc::clone(&self.caught_up);
        Ok(stream
            .inspect(move |item| {
                if relist && matches!(item, Ok(WatchEvent::CaughtUp)) {
                    caught_up.fetch_add(1, Ordering::SeqCst);
                }
            })
            .boxed())
    }

    async fn retention(&self) -> Result<Retention, KvError> {
        self.inner.retention().await
    }
}

/// The artifacts of the current incarnation (a local directory), counting
/// fetches.
#[derive(Debug, Clone)]
pub(crate) struct Artifacts {
    pub(crate) current: Arc<Mutex<LocalArtifacts>>,
    pub(crate) fetches: Arc<AtomicU64>,
    /// The directory the last `newest` looked in: a recreation between it
    /// and the `fetch` (the node up across it) must not move the fetch.
    pub(crate) asked: Arc<Mutex<Option<LocalArtifacts>>>,
}

impl Artifacts {
    pub(crate) fn source(&self) -> LocalArtifacts {
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

/// One engine run of the node, for O3.
pub(crate) struct Run {
    pub(crate) start: WatchCursor,
    /// The start cursor's incarnation is the current one.
    pub(crate) current: bool,
    /// The incarnation current at the start.
    pub(crate) inc: usize,
    pub(crate) parsed: (usize, usize),
    pub(crate) violations: (usize, usize),
    pub(crate) listings: (u64, u64),
    pub(crate) fetches: (u64, u64),
}

pub(crate) struct Node<B: Backend> {
    pub(crate) task: JoinHandle<Finished<Faulty<B>>>,
    pub(crate) token: CancellationToken,
    pub(crate) status: StatusReceiver,
    pub(crate) exporter: Exporter,
}

pub(crate) struct World<B: Backend> {
    pub(crate) rng: SmallRng,
    pub(crate) server: MemoryServer,
    pub(crate) kv: MemoryStore,
    pub(crate) kind: Kind,
    pub(crate) history: u8,
    pub(crate) max_msgs: Option<u64>,
    pub(crate) work: tempfile::TempDir,
    pub(crate) node_dir: PathBuf,
    pub(crate) nodes: u64,
    pub(crate) plan: Arc<FaultPlan>,
    pub(crate) commits: CommitLog,
    /// Every lineage's commit log (a fresh node starts a new one).
    pub(crate) lineages: Vec<CommitLog>,
    pub(crate) stores_opened: u64,
    pub(crate) app: App,
    pub(crate) incs: Vec<Incarnation>,
    pub(crate) batch: BatchPolicy,
    pub(crate) mode: RepairMode,
    pub(crate) mass: MassDeletePolicy,
    pub(crate) relist_memory: usize,
    pub(crate) listings: Arc<AtomicU64>,
    pub(crate) caught_up: Arc<AtomicU64>,
    /// Which known gap the schedule does not work around.
    pub(crate) expose: Expose,
    pub(crate) source: Artifacts,
    /// Keys whose last event left the bucket: (its revision, repairs
    /// counted when that was noticed).
    pub(crate) evicted: BTreeMap<String, (u64, u64)>,
    pub(crate) runs: Vec<Run>,
    pub(crate) exports: u64,
    pub(crate) failures: u32,
    pub(crate) trace: bool,
    pub(crate) backend: PhantomData<fn() -> B>,
}

impl<B: Backend> World<B> {
    async fn new(seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let kind = match rng.random_range(0..3) {
            0 => Kind::Plain,
            1 => Kind::Limits,
            _ => Kind::Aged,
        };
        let history = if rng.random_bool(0.5) {
            1
        } else {
            rng.random_range(2..=64)
        };
        let max_msgs = (kind == Kind::Limits && rng.random_bool(0.5))
            .then(|| rng.random_range(KEYS..4 * KEYS));
        let mode = match (kind, rng.random_range(0..10)) {
            (_, 0..6) => RepairMode::Auto,
            (Kind::Plain, 6..9) | (_, 9) => RepairMode::Relist,
            _ => RepairMode::Restore,
        };
        let mass = if rng.random_bool(0.9) {
            MassDeletePolicy::Allow
        } else {
            MassDeletePolicy::default()
        };
        let batch = BatchPolicy {
            window: Duration::from_millis(rng.random_range(1..20)),
            max: rng.random_range(1..8),
        };
        let relist_memory = rng.random_range(8..512);
        let work = tempfile::tempdir().unwrap();
        let server = MemoryServer::with_clock(ManualClock::new());
        let artifacts = work.path().join("artifacts-0");
        std::fs::create_dir_all(&artifacts).unwrap();
        let commits = CommitLog::default();
        let mut world = Self {
            rng,
            kv: bucket(&server, kind, history, max_msgs).await,
            server,
            kind,
            history,
            max_msgs,
            node_dir: work.path().join("node-0"),
            work,
            nodes: 0,
            plan: FaultPlan::new(),
            commits: Arc::clone(&commits),
            lineages: vec![commits],
            stores_opened: 0,
            app: App::new(),
            incs: Vec::new(),
            batch,
            mode,
            mass,
            relist_memory,
            listings: Arc::default(),
            caught_up: Arc::default(),
            expose: Expose::Nothing,
            source: Artifacts {
                current: Arc::new(Mutex::new(LocalArtifacts::new(&artifacts))),
                fetches: Arc::default(),
                asked: Arc::default(),
            },
            evicted: BTreeMap::new(),
            runs: Vec::new(),
            exports: 0,
            failures: 0,
            trace: std::env::var_os("SLIPSTREAM_DST_TRACE").is_some(),
            backend: PhantomData,
        };
        let identity = world.admin_info().identity;
        world.incs.push(Incarnation {
            identity,
            log: Log::default(),
            artifacts,
            artifact_max: None,
            final_retained: None,
        });
        if world.trace {
            eprintln!(
                "seed {seed}: {kind:?} history {history} max_msgs {max_msgs:?} mode {mode:?} \
                 mass {mass:?} batch {batch:?} relist_memory {relist_memory}"
            );
        }
        world
    }

    pub(crate) fn admin_info(&self) -> slipstream_memory::StreamInfo {
        self.server.bucket(BUCKET).info().unwrap()
    }

    pub(crate) fn cur(&self) -> &Incarnation {
        self.incs.last().unwrap()
    }

    pub(crate) fn cur_mut(&mut self) -> &mut Incarnation {
        self.incs.last_mut().unwrap()
    }

    /// The bucket's last sequence, `None` while it is empty.
    pub(crate) fn last(&self) -> Option<u64> {
        Some(self.admin_info().last_sequence).filter(|l| *l > 0)
    }

    pub(crate) fn retained(&self) -> BTreeSet<u64> {
        let messages = self.server.bucket(BUCKET).messages().unwrap();
        messages.iter().map(|m| m.sequence).collect()
    }

    /// Where a caught-up node's cursor is at least: the newest retained
    /// sequence (a purged tail leaves nothing above it to deliver); on an
    /// emptied stream, the sequence before its first (K1: a node further
    /// behind was overrun and must not count as caught up).
    pub(crate) fn caught_up_at(&self) -> Option<u64> {
        self.retained()
            .last()
            .copied()
            .or_else(|| Some(self.admin_info().first_sequence.saturating_sub(1)).filter(|s| *s > 0))
    }

    /// Listings opened or caught up, plus artifacts fetched, so far.
    pub(crate) fn repairs(&self) -> u64 {
        self.listings.load(Ordering::SeqCst)
            + self.caught_up.load(Ordering::SeqCst)
            + self.source.fetches.load(Ordering::SeqCst)
    }

    pub(crate) fn trace(&self, what: &str) {
        if self.trace {
            let info = self.admin_info();
            eprintln!(
                "  {what} (first {} last {} listings {}/{} committed {:?})",
                info.first_sequence,
                info.last_sequence,
                self.listings.load(Ordering::SeqCst),
                self.caught_up.load(Ordering::SeqCst),
                self.commits
                    .lock()
                    .unwrap()
                    .last()
                    .map(WatchCursor::revision)
            );
        }
    }

    /// Record keys whose last event is no longer in the bucket.
    pub(crate) fn note_evictions(&mut self) {
        let retained = self.retained();
        let repairs = self.repairs();
        let gone: Vec<(String, u64)> = self
            .cur()
            .log
            .keys()
            .into_iter()
            .filter_map(|k| {
                let (rev, _) = self.cur().log.latest(k)?;
                (!retained.contains(&rev)).then(|| (k.clone(), rev))
            })
            .collect();
        for (key, rev) in gone {
            let noted = self.evicted.get(&key).is_some_and(|(r, _)| *r == rev);
            if !noted {
                self.evicted.insert(key, (rev, repairs));
            }
        }
    }

    // ---- node lifecycle ----

    /// Open the node's store, check O2 on what it recovered, start an
    /// engine.
    pub(crate) fn boot(&mut self) -> Node<B> {
        let options = FaultyOptions::<B> {
            inner: B::options(),
            plan: Arc::clone(&self.plan),
            commits: Arc::clone(&self.commits),
        };
        let (cursor, store) = open_faulty(&self.node_dir, &options);
        self.stores_opened += 1;
        self.check_prefix(&fold_of(&store), &cursor, "reopen");
        let from = (cursor.revision(), fold_of(&store).len());
        // A restarted application loads its state from the store. Entries
        // of an older bucket incarnation carry revisions of a sequence that
        // restarted: the application compares nothing against them.
        self.app.load(&store);
        {
            let log = &self.incs.last().unwrap().log;
            let mut seen = self.app.seen();
            seen.reported.clear();
            for (key, (value, rev)) in &mut seen.fold {
                if rev.is_some_and(|r| !log.has(key, r, value)) {
                    *rev = None;
                }
            }
        }
        let current = cursor
            .identity()
            .is_none_or(|id| *id == self.cur().identity);
        let (parsed, violations) = {
            let seen = self.app.seen();
            (seen.parsed.len(), seen.violations.len())
        };
        let (listings, fetches) = (
            self.listings.load(Ordering::SeqCst),
            self.source.fetches.load(Ordering::SeqCst),
        );
        self.runs.push(Run {
            start: cursor,
            current,
            inc: self.incs.len() - 1,
            parsed: (parsed, parsed),
            violations: (violations, violations),
            listings: (listings, listings),
            fetches: (fetches, fetches),
        });
        let token = CancellationToken::new();
        let (exporter, requests) = export_channel(1);
        let config = AppliedConfig::new(WatchScope::All)
            .store(store)
            .batch(self.batch)
            .shutdown(token.clone())
            .on_expiry(OnExpiry::Repair(self.mode))
            .restore_from(self.source.clone())
            .mass_delete(self.mass)
            .scratch(ScratchPolicy {
                dir: self.work.path().to_owned(),
                relist_memory: self.relist_memory,
            })
            .exports(requests);
        let watcher = Counted {
            inner: self.kv.clone(),
            listings: Arc::clone(&self.listings),
            caught_up: Arc::clone(&self.caught_up),
        };
        let watch = AppliedWatch::new(watcher, config);
        let status = watch.status();
        let task = tokio::spawn(watch.run(self.app.handlers()));
        self.trace(&format!(
            "boot {:?} from {:?} with {} keys",
            self.mode, from.0, from.1
        ));
        Node {
            task,
            token,
            status,
            exporter,
        }
    }

    /// Boot again after a failure: with a fresh artifact and the Auto mode
    /// (allowing mass deletes) at first, on a fresh node if that keeps
    /// failing.
    pub(crate) async fn revive(&mut self) -> Node<B> {
        if self.failures >= 3 {
            self.nodes += 1;
            self.node_dir = self.work.path().join(format!("node-{}", self.nodes));
            self.plan = FaultPlan::new();
            self.commits = CommitLog::default();
            self.lineages.push(Arc::clone(&self.commits));
            self.stores_opened = 0;
            self.failures = 0;
            self.trace("fresh node");
        } else if self.failures > 0 {
            self.mode = RepairMode::Auto;
            self.mass = MassDeletePolicy::Allow;
            if self.caught_up_at().is_none() && self.expose != Expose::EmptyStreamBootstrap {
                // An emptied stream gives a state-syncing exporter no
                // revision, so its artifact is never ahead of a fresh
                // fold (K6): give it one.
                self.write().await;
            }
            self.export_fresh().await;
        }
        self.boot()
    }

    fn close_run(&mut self) {
        let seen = self.app.seen();
        let run = self.runs.last_mut().unwrap();
        run.parsed.1 = seen.parsed.len();
        run.violations.1 = seen.violations.len();
        run.listings.1 = self.listings.load(Ordering::SeqCst);
        run.fetches.1 = self.source.fetches.load(Ordering::SeqCst);
    }

    /// Drop the engine wherever it is (or take its outcome if it already
    /// stopped), and wait until every store handle is gone.
    pub(crate) async fn crash(&mut self, node: Node<B>) {
        node.task.abort();
        match node.task.await {
            Ok(finished) => self.failed(finished),
            Err(e) => assert!(e.is_cancelled(), "engine panicked: {e}"),
        }
        self.close_run();
        self.trace("down");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.plan.state().drops < self.stores_opened {
            assert!(std::time::Instant::now() < deadline, "store never released");
            std::thread::yield_now();
        }
    }

    /// The engine stopped on its own: only with an error a repair may
    /// legitimately end in, the fold and cursor as committed.
    fn failed(&mut self, finished: Finished<Faulty<B>>) {
        let error = match finished.result {
            Ok(stopped) => panic!("the engine stopped on its own: {stopped:?}"),
            Err(e) => e,
        };
        self.trace(&format!("failed: {error}"));
        let store = finished.store.expect("the store comes back");
        let committed = self.commits.lock().unwrap().last().cloned();
        if let Some(committed) = committed {
            assert_eq!(store.cursor(), &committed, "the cursor is as committed");
        }
        self.check_prefix(&fold_of(&store), store.cursor(), "after a failed repair");
        let at = store.cursor().revision();
        // The error names the engine's applied cursor; it is ahead of the
        // committed one only when the last commit failed (re-queued, E4).
        let last_commit_failed = {
            let s = self.plan.state();
            s.fail_at.contains(&s.attempts)
        };
        let named = |cursor: &WatchCursor| {
            assert!(
                cursor.revision() == at || last_commit_failed,
                "{error}: names {cursor:?}, the store is at {at:?}"
            );
        };
        let retention = self.server.bucket(BUCKET).retention().unwrap();
        match &error {
            AppliedError::RelistRefused { cursor, .. } => {
                assert_eq!(self.mode, RepairMode::Relist, "{error}");
                named(cursor);
                assert!(
                    cursor.seen_evicting()
                        || (retention.evicts_current_values() && retention.first_revision > 1),
                    "relist refused on a bucket whose listing is the truth: {retention:?}"
                );
            }
            AppliedError::RestoreRefused {
                refusal, cursor, ..
            } => {
                named(cursor);
                match &**refusal {
                    RestoreRefusal::NoArtifact | RestoreRefusal::OtherIncarnation { .. } => {}
                    RestoreRefusal::NotAhead { artifact, fold } => {
                        assert!(artifact <= fold, "{error}");
                    }
                    RestoreRefusal::ArtifactExpired {
                        artifact,
                        first_sequence,
                    } => assert!(artifact + 1 < *first_sequence, "{error}"),
                    other => panic!("unexpected refusal: {other}"),
                }
            }
            AppliedError::MassDeleteHeld { deletions, .. } => {
                assert!(matches!(self.mass, MassDeletePolicy::Hold(_)), "{error}");
                assert!(*deletions > 0);
            }
            // An injected watch failure while listing (R4).
            AppliedError::RepairFailed {
                source: KvError::Watch(_),
                ..
            } => {}
            other => panic!("unexpected failure: {other:?}"),
        }
        drop(store);
        self.failures += 1;
    }

    /// Wait until the node is ready at the bucket's last sequence, reviving
    /// it through failures.
    async fn converge(&mut self, mut node: Option<Node<B>>) -> Node<B> {
        for _ in 0..10 {
            let mut n = match node.take() {
                Some(n) => n,
                None => self.revive().await,
            };
            let target = self.caught_up_at();
            let Some(failed) =
                settled(&mut n.status, self.server.clock(), target, self.last()).await
            else {
                let status = n.status.borrow().clone();
                let last_commit_failed = {
                    let s = self.plan.state();
                    s.fail_at.contains(&s.attempts)
                };
                // A failed cursor-only commit (no updates with it) is never
                // retried: the engine idles, Ready, at the last commit.
                let stuck = status.is_ready() && last_commit_failed;
                assert!(
                    stuck && self.expose != Expose::LostCursorCommit,
                    "never quiet at {target:?}: {status:?}, last commit failed: {last_commit_failed}"
                );
                self.trace("stuck after a failed cursor-only commit; restarting");
                self.crash(n).await;
                continue;
            };
            if failed {
                self.crash(n).await;
                continue;
            }
            self.failures = 0;
            return n;
        }
        panic!("the node never converged");
    }

    async fn finish(&mut self, node: Node<B>) {
        node.token.cancel();
        let finished = node.task.await.unwrap();
        let stopped = finished.result.expect("a clean stop");
        let store = finished.store.unwrap();
        self.close_run();
        assert_eq!(store.cursor(), &stopped.cursor);
        self.note_evictions();
        let fold = fold_of(&store);
        self.trace(&format!(
            "end: fold {fold:?} log {:?} retained {:?} cursor {:?} parsed {:?} commits {:?}",
            self.cur().log.0,
            self.retained(),
            stopped.cursor,
            self.app.seen().parsed,
            self.commits
                .lock()
                .unwrap()
                .iter()
                .map(|c| c.revision())
                .collect::<Vec<_>>()
        ));
        self.check_converged(&fold, &stopped.cursor, "store");
        assert_eq!(
            self.app.seen().fold,
            fold,
            "O1: the application's fold is the store's"
        );
        self.check_applied();
        drop(store);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.plan.state().drops < self.stores_opened {
            assert!(std::time::Instant::now() < deadline, "store never released");
            std::thread::yield_now();
        }
        // O1 and O2 once more on a cold reopen.
        let options = FaultyOptions::<B> {
            inner: B::options(),
            plan: FaultPlan::new(),
            commits: CommitLog::default(),
        };
        let (cursor, reopened) = open_faulty(&self.node_dir, &options);
        assert_eq!(cursor, stopped.cursor);
        self.check_prefix(&fold_of(&reopened), &cursor, "cold reopen");
        self.check_converged(&fold_of(&reopened), &cursor, "cold reopen");
    }
}

/// Wait until a node is ready at `target` or past it, up to `last`, (`Some(false)`) or
/// has failed (`Some(true)`); `None` past the deadline. Readiness must
/// hold across a few scheduler turns and a wake of every watch: a purge
/// may have overrun one. The status is not borrowed across awaits, so the
/// engine can go on publishing it.
pub(crate) async fn settled(
    status: &mut StatusReceiver,
    clock: &ManualClock,
    target: Option<u64>,
    last: Option<u64>,
) -> Option<bool> {
    let done = |s: &slipstream_applied::WatchStatus| {
        s.phase == Phase::Failed
            || (s.is_ready() && !s.repair_due && s.applied >= target && s.applied <= last)
    };
    for _ in 0..100 {
        let failed = match tokio::time::timeout(DEADLINE, status.wait_for(done)).await {
            Ok(Ok(s)) => s.phase == Phase::Failed,
            Ok(Err(_)) => return Some(true),
            Err(_) => return None,
        };
        if failed {
            return Some(true);
        }
        // The simulator's stand-in for the floor guard's timed backstop
        // probe: moving its clock wakes every idle watch to look again.
        for _ in 0..3 {
            clock.advance(Duration::from_millis(1));
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
            tokio::time::advance(Duration::from_millis(50)).await;
        }
        if !done(&status.borrow()) {
            continue;
        }
        // And one status refresh, where the engine checks K1 against its
        // frontier: the backstop for head eviction passing an idle watch.
        tokio::time::advance(STATUS_REFRESH).await;
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        // And the quiet a due repair waits for (K11 generalised): looks
        // 100 ms apart until nothing moved for 300 ms.
        for _ in 0..12 {
            tokio::time::advance(Duration::from_millis(110)).await;
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
        }
        let now = status.borrow().clone();
        if done(&now) {
            return Some(now.phase == Phase::Failed);
        }
    }
    None
}

/// Past the engine's default status interval.
const STATUS_REFRESH: Duration = Duration::from_secs(11);

pub(crate) async fn bucket(
    server: &MemoryServer,
    kind: Kind,
    history: u8,
    max_msgs: Option<u64>,
) -> MemoryStore {
    let conn = server.connection();
    conn.connect().await.unwrap();
    let mut config = StoreConfig::new(BUCKET).history(history);
    if kind == Kind::Aged {
        config = config.max_age(MAX_AGE);
    }
    let kv = conn.store_with_config(&config).await.unwrap();
    if kind == Kind::Limits {
        let admin = server.bucket(BUCKET);
        admin.set_discard(DiscardPolicy::Old).unwrap();
        admin.set_max_msgs(max_msgs).unwrap();
    }
    kv
}

async fn schedule<B: Backend>(seed: u64, expose: Expose) {
    let mut w = World::<B>::new(seed).await;
    w.expose = expose;
    let mut node = Some(w.boot());
    let steps = w.rng.random_range(10..50);
    for _ in 0..steps {
        if node.as_ref().is_some_and(|n| n.task.is_finished()) {
            w.crash(node.take().unwrap()).await;
        }
        let op = w.rng.random_range(0..100);
        match op {
            0..40 => w.write().await,
            40..48 => match node.take() {
                Some(n) => w.crash(n).await,
                None => node = Some(w.revive().await),
            },
            48..53 if w.expose.store_failures() => {
                let mut state = w.plan.state();
                let from = state.attempts + 1;
                let burst = w.rng.random_range(1..5);
                state.fail_at.extend(from..from + burst);
            }
            53..56 => w
                .server
                .faults()
                .end_watches(KvError::Watch("connection reset".into())),
            56..66 => w.evict(),
            66..72 => w.purge_marker(),
            72..78 => w.export_fresh().await,
            78..83 => {
                if let Some(n) = &node {
                    w.export_self(n).await;
                }
            }
            83..85 => {
                w.recreate(&mut node).await;
            }
            _ => {}
        }
        w.note_evictions();
        w.pause().await;
        w.note_evictions();
    }
    let node = w.converge(node).await;
    w.finish(node).await;
}

/// Run one seeded schedule on `B`.
pub fn run_seed<B: Backend>(seed: u64, expose: Expose) {
    struct Report(u64, &'static str);
    impl Drop for Report {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!(
                    "simulation failed on {}; replay with SLIPSTREAM_DST_SEED={} (SLIPSTREAM_DST_TRACE=1 to trace)",
                    self.1, self.0
                );
            }
        }
    }
    let report = Report(seed, std::any::type_name::<B>());
    // With tracing on, the engine's own decisions interleave with the trace.
    let _subscriber = std::env::var_os("SLIPSTREAM_DST_TRACE").map(|_| {
        tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_test_writer()
                .finish(),
        )
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(schedule::<B>(seed, expose));
    drop(report);
}

/// Run the default number of schedules on `B` (with injected commit
/// failures), or what the environment asks for (`SLIPSTREAM_DST_EXPOSE` =
/// `none` runs them without failures; `lost-cursor-commit` or
/// `empty-stream-bootstrap` exposing that gap).
pub fn run_schedules<B: Backend>() {
    let expose = match std::env::var("SLIPSTREAM_DST_EXPOSE").as_deref() {
        Ok("store-failures") => Expose::StoreFailures,
        Ok("lost-cursor-commit") => Expose::LostCursorCommit,
        Ok("empty-stream-bootstrap") => Expose::EmptyStreamBootstrap,
        Ok("none") => Expose::Nothing,
        _ => Expose::StoreFailures,
    };
    if let Some(seed) = std::env::var("SLIPSTREAM_DST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run_seed::<B>(seed, expose);
        return;
    }
    let n = std::env::var("SLIPSTREAM_DST_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(B::DEFAULT_SCHEDULES);
    for seed in 0..n {
        run_seed::<B>(seed, expose);
    }
}
