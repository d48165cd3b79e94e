//! E1, E3, E4 with the commit pipelined: a batch's commit runs on its
//! blocking thread while the next batch is received and applied, and is
//! reported only once it finished.

// Helpers outside #[test] fns panic on failure too: that is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{App, FaultOptions, FaultPlan, FaultStore, ScriptedWatcher, fold_of, put};
use slipstream_applied::{
    AppliedConfig, AppliedWatch, BatchPolicy, Finished, StatusReceiver, handlers,
};
use slipstream_kv::{KvUpdate, WatchCursor, WatchScope};
use slipstream_snapshot::{
    AppendLogOptions, BackendId, Durability, EntryRef, SnapshotError, SnapshotStore, StoreStats,
    StoredEntry,
};
use tokio_util::sync::CancellationToken;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the gate has seen: commits started and finished, the revisions of
/// every commit's batch in order, and the cursors of the successful ones.
#[derive(Debug, Default)]
struct GateState {
    started: u64,
    finished: u64,
    permits: u64,
    batches: Vec<Vec<Option<u64>>>,
    committed: Vec<Option<u64>>,
}

/// Holds every commit until the test lets it through, one permit each.
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    cv: Condvar,
}

impl Gate {
    fn state(&self) -> MutexGuard<'_, GateState> {
        lock(&self.state)
    }

    fn release_one(&self) {
        self.state().permits += 1;
        self.cv.notify_all();
    }

    fn pass(&self) {
        let mut s = self.state();
        s.started += 1;
        while s.permits == 0 {
            s = self.cv.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        s.permits -= 1;
    }

    /// The highest cursor a finished commit wrote.
    fn committed_max(&self) -> Option<u64> {
        self.state().committed.iter().flatten().max().copied()
    }
}

#[derive(Debug, Clone, Default)]
struct GatedOptions {
    fault: FaultOptions,
    gate: Arc<Gate>,
}

/// A [`FaultStore`] whose commits wait at a [`Gate`] before they run.
#[derive(Debug)]
struct GatedStore {
    inner: FaultStore,
    gate: Arc<Gate>,
}

impl SnapshotStore for GatedStore {
    type Options = GatedOptions;
    const BACKEND: BackendId = FaultStore::BACKEND;

    fn open(dir: &Path, options: &Self::Options) -> Result<(WatchCursor, Self), SnapshotError> {
        let (cursor, inner) = FaultStore::open(dir, &options.fault)?;
        let gate = Arc::clone(&options.gate);
        Ok((cursor, Self { inner, gate }))
    }

    fn apply(&mut self, batch: &[KvUpdate], cursor: &WatchCursor) -> Result<(), SnapshotError> {
        self.gate.pass();
        let result = self.inner.apply(batch, cursor);
        let mut s = self.gate.state();
        s.batches
            .push(batch.iter().map(KvUpdate::revision).collect());
        if result.is_ok() {
            s.committed.push(cursor.revision());
        }
        s.finished += 1;
        result
    }

    fn cursor(&self) -> &WatchCursor {
        self.inner.cursor()
    }

    fn get(&self, key: &str) -> Result<Option<StoredEntry>, SnapshotError> {
        self.inner.get(key)
    }

    fn for_each_in_range(
        &self,
        prefix: &str,
        f: &mut dyn FnMut(&str, EntryRef<'_>) -> ControlFlow<()>,
    ) -> Result<bool, SnapshotError> {
        self.inner.for_each_in_range(prefix, f)
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }

    fn sync(&mut self) -> Result<(), SnapshotError> {
        self.inner.sync()
    }

    fn checkpoint_to(&mut self, data_dir: &Path) -> Result<(), SnapshotError> {
        self.inner.checkpoint_to(data_dir)
    }

    fn close(self) -> Result<(), SnapshotError> {
        self.inner.close()
    }
}

fn open_gated(dir: &Path, plan: &Arc<FaultPlan>, gate: &Arc<Gate>) -> (WatchCursor, GatedStore) {
    let options = GatedOptions {
        fault: FaultOptions {
            inner: AppendLogOptions::with_durability(Durability::NoFsync),
            plan: Arc::clone(plan),
        },
        gate: Arc::clone(gate),
    };
    GatedStore::open(dir, &options).unwrap()
}

/// Let the engine (same runtime) and the commit threads run until `cond`
/// holds; fail after a generous real-time bound.
async fn until(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::task::yield_now().await;
        std::thread::yield_now();
    }
}

struct Running {
    task: tokio::task::JoinHandle<Finished<GatedStore>>,
    status: StatusReceiver,
    token: CancellationToken,
    tx: futures::channel::mpsc::UnboundedSender<
        Result<slipstream_kv::WatchEvent, slipstream_kv::KvError>,
    >,
}

/// An engine over a scripted watch into `store`, with batches closed only
/// by size (two updates): no timer decides when anything happens. Its
/// `on_applied` records violations of "reported only after its commit
/// finished" into the app's record.
fn start(store: GatedStore, gate: &Arc<Gate>, app: &App) -> Running {
    let (watcher, tx) = ScriptedWatcher::new();
    let token = CancellationToken::new();
    let config = AppliedConfig::new(WatchScope::All)
        .store(store)
        .batch(BatchPolicy {
            window: Duration::from_secs(3600),
            max: 2,
        })
        .shutdown(token.clone());
    let watch = AppliedWatch::new(watcher, config);
    let status = watch.status();
    let seen = Arc::clone(&app.seen);
    let parse = move |u: &KvUpdate| {
        let KvUpdate::Put(entry) = u else {
            return None;
        };
        Some((entry.key.clone(), entry.value.clone(), u.revision()))
    };
    let apply = move |batch: std::vec::Drain<'_, (String, Bytes, Option<u64>)>| {
        let mut s = lock(&seen);
        let mut revisions = Vec::new();
        for (key, value, revision) in batch {
            revisions.push(revision);
            s.fold.insert(key, (value, revision));
        }
        s.batches.push(revisions);
    };
    let seen = Arc::clone(&app.seen);
    let gate = Arc::clone(gate);
    let handlers = handlers(parse, apply).on_applied(move |c: &WatchCursor| {
        let mut s = lock(&seen);
        if c.revision() > gate.committed_max() {
            s.violations
                .push(format!("{c:?} reported before its commit finished"));
        }
        s.reported.push(c.clone());
    });
    let task = tokio::spawn(watch.run(handlers));
    Running {
        task,
        status,
        token,
        tx,
    }
}

fn reported(app: &App) -> Vec<Option<u64>> {
    app.seen()
        .reported
        .iter()
        .map(WatchCursor::revision)
        .collect()
}

#[tokio::test]
async fn a_slow_commit_does_not_hold_back_the_next_batch_nor_report_early() {
    let dir = tempfile::tempdir().unwrap();
    let (plan, gate) = (FaultPlan::new(), Arc::new(Gate::default()));
    let (_, store) = open_gated(dir.path(), &plan, &gate);
    let app = App::new();
    let run = start(store, &gate, &app);

    run.tx.unbounded_send(put("a", b"1", Some(1))).unwrap();
    run.tx.unbounded_send(put("b", b"1", Some(2))).unwrap();
    until(|| gate.state().started == 1, "the first commit starts").await;
    run.tx.unbounded_send(put("a", b"2", Some(3))).unwrap();
    run.tx.unbounded_send(put("c", b"1", Some(4))).unwrap();
    until(|| app.seen().batches.len() == 2, "the second batch applied").await;
    // The first commit is still held at the gate: nothing is reported.
    assert_eq!(gate.state().finished, 0);
    assert!(reported(&app).is_empty(), "{:?}", reported(&app));
    assert_eq!(run.status.borrow().applied, None);

    gate.release_one();
    until(|| gate.state().started == 2, "the second commit starts").await;
    assert_eq!(reported(&app), vec![Some(2)]);
    assert_eq!(run.status.borrow().applied, Some(2));

    // No further delivery: the finished commit alone gets reported.
    gate.release_one();
    let mut status = run.status.clone();
    tokio::time::timeout(common::DEADLINE, status.wait_for(|s| s.applied == Some(4)))
        .await
        .expect("status deadline")
        .unwrap();
    assert_eq!(reported(&app), vec![Some(2), Some(4)]);

    run.token.cancel();
    let finished = run.task.await.unwrap();
    assert_eq!(finished.result.unwrap().cursor.revision(), Some(4));
    assert_eq!(
        gate.state().batches,
        vec![vec![Some(1), Some(2)], vec![Some(3), Some(4)]]
    );
    let store = finished.store.unwrap();
    assert_eq!(store.cursor().revision(), Some(4));
    let seen = app.seen();
    assert!(seen.violations.is_empty(), "{:?}", seen.violations);
    assert_eq!(
        seen.batches,
        vec![vec![Some(1), Some(2)], vec![Some(3), Some(4)]]
    );
    drop(run.tx);
}

#[tokio::test]
async fn a_failed_commit_in_flight_is_requeued_in_front_of_the_updates_received_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let (plan, gate) = (FaultPlan::new(), Arc::new(Gate::default()));
    plan.state().fail_at.insert(1);
    let (_, store) = open_gated(dir.path(), &plan, &gate);
    let app = App::new();
    let run = start(store, &gate, &app);

    run.tx.unbounded_send(put("a", b"old", Some(1))).unwrap();
    run.tx.unbounded_send(put("b", b"1", Some(2))).unwrap();
    until(|| gate.state().started == 1, "the first commit starts").await;
    // A newer value of the same key arrives while that commit runs: if the
    // retry put it behind the older one, the store would end at "old".
    run.tx.unbounded_send(put("a", b"new", Some(3))).unwrap();
    run.tx.unbounded_send(put("c", b"1", Some(4))).unwrap();
    until(|| app.seen().batches.len() == 2, "the second batch applied").await;
    gate.release_one();
    until(|| gate.state().started == 2, "the cumulative commit starts").await;
    assert!(
        reported(&app).is_empty(),
        "the failed commit is not reported"
    );
    gate.release_one();
    let mut status = run.status.clone();
    tokio::time::timeout(common::DEADLINE, status.wait_for(|s| s.applied == Some(4)))
        .await
        .expect("status deadline")
        .unwrap();

    run.token.cancel();
    let finished = run.task.await.unwrap();
    assert_eq!(finished.result.unwrap().cursor.revision(), Some(4));
    assert_eq!(
        gate.state().batches,
        vec![
            vec![Some(1), Some(2)],
            vec![Some(1), Some(2), Some(3), Some(4)]
        ],
        "one cumulative retry, the failed batch first"
    );
    assert_eq!(plan.state().committed, vec![(4, Some(4))]);
    assert_eq!(reported(&app), vec![Some(4)]);
    assert!(
        app.seen().violations.is_empty(),
        "{:?}",
        app.seen().violations
    );
    drop(finished.store);

    let (cursor, reopened) = open_gated(dir.path(), &plan, &gate);
    assert_eq!(cursor.revision(), Some(4));
    let fold = fold_of(&reopened);
    assert_eq!(fold["a"], (Bytes::from_static(b"new"), Some(3)));
    assert_eq!(fold, app.seen().fold, "store and application agree");
    drop(run.tx);
}

#[tokio::test]
async fn shutdown_waits_for_the_commit_in_flight_and_hands_the_store_back() {
    let dir = tempfile::tempdir().unwrap();
    let (plan, gate) = (FaultPlan::new(), Arc::new(Gate::default()));
    let (_, store) = open_gated(dir.path(), &plan, &gate);
    let app = App::new();
    let run = start(store, &gate, &app);

    run.tx.unbounded_send(put("a", b"1", Some(1))).unwrap();
    run.tx.unbounded_send(put("b", b"1", Some(2))).unwrap();
    run.tx.unbounded_send(put("c", b"1", Some(3))).unwrap();
    until(|| gate.state().started == 1, "the first commit starts").await;
    run.token.cancel();
    // The shutdown flush has to wait for the first commit to settle.
    gate.release_one();
    until(|| gate.state().started == 2, "the shutdown commit starts").await;
    gate.release_one();
    let finished = run.task.await.unwrap();
    assert_eq!(finished.result.unwrap().cursor.revision(), Some(3));
    assert_eq!(finished.store.unwrap().cursor().revision(), Some(3));
    assert_eq!(reported(&app), vec![Some(2), Some(3)]);
    assert!(
        app.seen().violations.is_empty(),
        "{:?}",
        app.seen().violations
    );
    drop(run.tx);
}
