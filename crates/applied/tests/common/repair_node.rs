//! The node's lifecycle in `simulation_repair.rs`'s world: boot (O2 on
//! what its store recovered), revival after a failure, crashes, the
//! failures a repair may legitimately stop with, convergence, and the
//! final checks; and the wait for a node to settle.

#![allow(unreachable_pub, clippy::print_stderr)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use slipstream_applied::{
    AppliedConfig, AppliedError, AppliedWatch, Finished, MassDeletePolicy, OnExpiry, Phase,
    RepairMode, RestoreRefusal, ScratchPolicy, StatusReceiver, export_channel,
};
use slipstream_kv::{KvError, WatchCursor, WatchScope};
use slipstream_memory::ManualClock;
use slipstream_snapshot::SnapshotStore;
use tokio_util::sync::CancellationToken;

use crate::common::faulty::{CommitLog, Faulty, FaultyOptions, open_faulty};
use crate::common::watchers::Counted;
use crate::common::{DEADLINE, FaultPlan, fold_of};
use crate::repair_sim::{BUCKET, Backend, Expose, Node, Run, World};

impl<B: Backend> World<B> {
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
    pub(crate) async fn converge(&mut self, mut node: Option<Node<B>>) -> Node<B> {
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

    pub(crate) async fn finish(&mut self, node: Node<B>) {
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
