//! The world of `simulation_repair.rs`: a bucket of one of three retention
//! kinds on a manual clock, one node (an engine over a [`Faulty`] store)
//! that crashes, fails and is revived, exporter nodes writing artifacts,
//! and the oracles; and the schedules run in it. The node's lifecycle is
//! in `repair_node.rs`, the operations in `repair_ops.rs`, the oracles in
//! `repair_oracle.rs`.

#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use slipstream_applied::{
    BatchPolicy, Exporter, Finished, LocalArtifacts, MassDeletePolicy, RepairMode, StatusReceiver,
};
use slipstream_kv::{Connection, DiscardPolicy, KvError, StoreConfig, WatchCursor};
use slipstream_memory::{ManualClock, MemoryServer, MemoryStore};
use slipstream_snapshot::SnapshotStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::common::faulty::{CommitLog, Faulty};
use crate::common::sources::Artifacts;
use crate::common::{App, FaultPlan};
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
}

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
