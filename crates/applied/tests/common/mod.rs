//! Test helpers: a fault-injecting store wrapper, a scripted watcher, and an
//! application that records what the engine hands it. Its modules: a node
//! over the simulator (`node`), the gaps the repair and restore tests open
//! (`gaps`), watchers wrapping a simulated bucket (`watchers`), restore
//! sources (`sources`), and a fault wrapper over any store (`faulty`).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod faulty;
pub mod gaps;
pub mod node;
pub mod sources;
pub mod watchers;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use slipstream_applied::{Handlers, handlers};
use slipstream_kv::{
    BucketIdentity, Eviction, KvEntry, KvError, KvMarker, KvUpdate, KvWatcher, Retention,
    Timestamp, VersionToken, WatchCursor, WatchEvent, WatchScope, WatchStart,
};
use slipstream_snapshot::{
    AppendLogOptions, AppendLogStore, BackendId, Durability, EntryRef, ExportCapture,
    SnapshotError, SnapshotStore, StoreStats,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a [`FaultStore`] does at given commit numbers (1-based).
#[derive(Debug, Default)]
pub struct FaultState {
    /// Commits attempted so far.
    pub attempts: u64,
    /// Commits that return an I/O error.
    pub fail_at: BTreeSet<u64>,
    /// Fail every commit.
    pub fail_all: bool,
    /// The commit that panics.
    pub panic_at: Option<u64>,
    /// From this commit on, commits report success but write nothing.
    pub crash_at: Option<u64>,
    /// Exports fail.
    pub fail_exports: bool,
    /// Every successful commit: (batch length, cursor revision).
    pub committed: Vec<(usize, Option<u64>)>,
    /// Handles dropped so far.
    pub drops: u64,
}

/// The shared fault plan of a [`FaultStore`] and the gate its `close` waits
/// on.
#[derive(Debug, Default)]
pub struct FaultPlan {
    pub state: Mutex<FaultState>,
    close_gate: Mutex<Option<bool>>,
    close_cv: Condvar,
    /// `Some(false)`: an export's file writing waits until released.
    export_gate: Arc<(Mutex<Option<bool>>, Condvar)>,
    /// Exports captured so far.
    pub captures: std::sync::atomic::AtomicU64,
}

impl FaultPlan {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn state(&self) -> MutexGuard<'_, FaultState> {
        lock(&self.state)
    }

    /// Make `close` block until [`FaultPlan::release_close`].
    pub fn block_close(&self) {
        *lock(&self.close_gate) = Some(false);
    }

    pub fn release_close(&self) {
        *lock(&self.close_gate) = Some(true);
        self.close_cv.notify_all();
    }

    /// Make an export's file writing (after its capture) wait until
    /// [`FaultPlan::release_export_writes`].
    pub fn block_export_writes(&self) {
        *lock(&self.export_gate.0) = Some(false);
    }

    pub fn release_export_writes(&self) {
        *lock(&self.export_gate.0) = Some(true);
        self.export_gate.1.notify_all();
    }

    fn wait_close_gate(&self) {
        let mut gate = lock(&self.close_gate);
        while *gate == Some(false) {
            gate = self
                .close_cv
                .wait(gate)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A capture whose file writing waits at the plan's export gate.
struct GatedCapture {
    inner: Box<dyn ExportCapture>,
    gate: Arc<(Mutex<Option<bool>>, Condvar)>,
}

impl ExportCapture for GatedCapture {
    fn cursor(&self) -> &WatchCursor {
        self.inner.cursor()
    }

    fn write_to(self: Box<Self>, data_dir: &Path) -> Result<(), SnapshotError> {
        let (gate, cv) = &*self.gate;
        let mut open = lock(gate);
        while *open == Some(false) {
            open = cv.wait(open).unwrap_or_else(PoisonError::into_inner);
        }
        drop(open);
        self.inner.write_to(data_dir)
    }
}

/// Options of a [`FaultStore`]: the inner store's, and the plan.
#[derive(Debug, Clone, Default)]
pub struct FaultOptions {
    pub inner: AppendLogOptions,
    pub plan: Arc<FaultPlan>,
}

/// An append-log store that fails, panics or "crashes" (stops committing)
/// where its plan says.
#[derive(Debug)]
pub struct FaultStore {
    inner: AppendLogStore,
    plan: Arc<FaultPlan>,
    // Declared after `inner`, so it drops after the store released its lock.
    _dropped: DropCounter,
}

/// Counts a handle as dropped when it goes.
#[derive(Debug)]
struct DropCounter(Arc<FaultPlan>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.state().drops += 1;
    }
}

impl FaultStore {
    pub fn plan(&self) -> &Arc<FaultPlan> {
        &self.plan
    }

    pub fn inner(&self) -> &AppendLogStore {
        &self.inner
    }
}

impl SnapshotStore for FaultStore {
    type Options = FaultOptions;
    const BACKEND: BackendId = AppendLogStore::BACKEND;

    fn open(dir: &Path, options: &Self::Options) -> Result<(WatchCursor, Self), SnapshotError> {
        let (cursor, inner) = AppendLogStore::open(dir, &options.inner)?;
        Ok((
            cursor,
            Self {
                inner,
                plan: Arc::clone(&options.plan),
                _dropped: DropCounter(Arc::clone(&options.plan)),
            },
        ))
    }

    fn apply(&mut self, batch: &[KvUpdate], cursor: &WatchCursor) -> Result<(), SnapshotError> {
        let n = {
            let mut s = self.plan.state();
            s.attempts += 1;
            s.attempts
        };
        let (fail, panic, crashed) = {
            let s = self.plan.state();
            (
                s.fail_all || s.fail_at.contains(&n),
                s.panic_at == Some(n),
                s.crash_at.is_some_and(|c| n >= c),
            )
        };
        if panic {
            panic!("injected panic at commit {n}");
        }
        if fail {
            return Err(SnapshotError::io(
                "injected commit failure",
                "",
                std::io::Error::other("injected"),
            ));
        }
        if crashed {
            return Ok(());
        }
        self.inner.apply(batch, cursor)?;
        self.plan
            .state()
            .committed
            .push((batch.len(), cursor.revision()));
        Ok(())
    }

    fn cursor(&self) -> &WatchCursor {
        self.inner.cursor()
    }

    fn get(&self, key: &str) -> Result<Option<slipstream_snapshot::StoredEntry>, SnapshotError> {
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

    fn capture_for_export(
        &mut self,
        data_dir: &Path,
    ) -> Result<Box<dyn ExportCapture>, SnapshotError> {
        if self.plan.state().fail_exports {
            return Err(SnapshotError::io(
                "injected export failure",
                data_dir,
                std::io::Error::other("injected"),
            ));
        }
        let inner = self.inner.capture_for_export(data_dir)?;
        self.plan
            .captures
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Box::new(GatedCapture {
            inner,
            gate: Arc::clone(&self.plan.export_gate),
        }))
    }

    fn checkpoint_to(&mut self, data_dir: &Path) -> Result<(), SnapshotError> {
        if self.plan.state().fail_exports {
            return Err(SnapshotError::io(
                "injected export failure",
                data_dir,
                std::io::Error::other("injected"),
            ));
        }
        self.inner.checkpoint_to(data_dir)
    }

    fn close(self) -> Result<(), SnapshotError> {
        self.plan.wait_close_gate();
        let mut me = self;
        me.inner.sync()
    }
}

/// Open a fault store in `dir` without fsync, with `plan`.
pub fn open_store(dir: &Path, plan: &Arc<FaultPlan>) -> (WatchCursor, FaultStore) {
    let options = FaultOptions {
        inner: AppendLogOptions::with_durability(Durability::NoFsync),
        plan: Arc::clone(plan),
    };
    FaultStore::open(dir, &options).expect("open store")
}

/// The store's fold: key -> (value, revision).
pub fn fold_of<S: SnapshotStore>(store: &S) -> BTreeMap<String, (Bytes, Option<u64>)> {
    store
        .range("")
        .expect("range")
        .into_iter()
        .map(|(k, e)| (k, (e.value, e.version.as_u64())))
        .collect()
}

/// One item the application parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: String,
    pub value: Option<Bytes>,
    pub revision: Option<u64>,
}

/// What the application saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Revisions `parse` was called with, in order.
    pub parsed: Vec<Option<u64>>,
    /// Each `apply` call's revisions.
    pub batches: Vec<Vec<Option<u64>>>,
    /// The application's own fold.
    pub fold: BTreeMap<String, (Bytes, Option<u64>)>,
    /// Cursors `on_applied` reported.
    pub reported: Vec<WatchCursor>,
    /// Violations noticed inside the closures.
    pub violations: Vec<String>,
}

/// An application recording everything into shared state. `reject` keys
/// starting with it are rejected by `parse`.
#[derive(Debug, Clone, Default)]
pub struct App {
    pub seen: Arc<Mutex<Seen>>,
    pub reject: Option<String>,
}

type Parse = Box<dyn FnMut(&KvUpdate) -> Option<Item> + Send>;
type Apply = Box<dyn FnMut(std::vec::Drain<'_, Item>) + Send>;
type Report = Box<dyn FnMut(&WatchCursor) + Send>;

impl App {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn seen(&self) -> MutexGuard<'_, Seen> {
        lock(&self.seen)
    }

    /// Seed the application's fold from a store (what a restarted
    /// application would load).
    pub fn load<S: SnapshotStore>(&self, store: &S) {
        self.seen().fold = fold_of(store);
    }

    pub fn handlers(&self) -> Handlers<Parse, Apply, Report> {
        let seen = Arc::clone(&self.seen);
        let reject = self.reject.clone();
        let parse: Parse = Box::new(move |u: &KvUpdate| {
            lock(&seen).parsed.push(u.revision());
            if reject.as_deref().is_some_and(|r| u.key().starts_with(r)) {
                return None;
            }
            Some(Item {
                key: u.key().to_owned(),
                value: match u {
                    KvUpdate::Put(e) => Some(e.value.clone()),
                    _ => None,
                },
                revision: u.revision(),
            })
        });
        let seen = Arc::clone(&self.seen);
        let apply: Apply = Box::new(move |batch| {
            let mut s = lock(&seen);
            let mut revs = Vec::new();
            for item in batch {
                revs.push(item.revision);
                let older = s
                    .fold
                    .get(&item.key)
                    .and_then(|(_, r)| *r)
                    .zip(item.revision)
                    .is_some_and(|(have, new)| new <= have);
                if older {
                    let msg = format!("key {} moved back to {:?}", item.key, item.revision);
                    s.violations.push(msg);
                }
                match item.value {
                    Some(v) => {
                        s.fold.insert(item.key, (v, item.revision));
                    }
                    None => {
                        s.fold.remove(&item.key);
                    }
                }
            }
            if revs.is_empty() {
                s.violations.push("apply called with an empty batch".into());
            }
            if let Some(last) = s.reported.last().and_then(WatchCursor::revision)
                && revs.iter().flatten().any(|r| *r <= last)
            {
                s.violations
                    .push(format!("batch {revs:?} at or below reported {last}"));
            }
            s.batches.push(revs);
        });
        let seen = Arc::clone(&self.seen);
        let report: Report = Box::new(move |c: &WatchCursor| {
            let mut s = lock(&seen);
            if let Some(prev) = s.reported.last().cloned()
                && prev.rank() > c.rank()
            {
                s.violations
                    .push(format!("cursor went back from {prev:?} to {c:?}"));
            }
            s.reported.push(c.clone());
        });
        handlers(parse, apply).on_applied(report)
    }
}

/// A watcher whose single watch yields what the test sends.
type Script = mpsc::UnboundedReceiver<Result<WatchEvent, KvError>>;

#[derive(Debug, Clone)]
pub struct ScriptedWatcher {
    rx: Arc<Mutex<Option<Script>>>,
    pub starts: Arc<Mutex<Vec<WatchStart>>>,
}

impl ScriptedWatcher {
    pub fn new() -> (Self, mpsc::UnboundedSender<Result<WatchEvent, KvError>>) {
        let (tx, rx) = mpsc::unbounded();
        (
            Self {
                rx: Arc::new(Mutex::new(Some(rx))),
                starts: Arc::default(),
            },
            tx,
        )
    }
}

impl KvWatcher for ScriptedWatcher {
    type WatchStream = mpsc::UnboundedReceiver<Result<WatchEvent, KvError>>;

    async fn watch(
        &self,
        _scope: &WatchScope,
        start: WatchStart,
    ) -> Result<Self::WatchStream, KvError> {
        lock(&self.starts).push(start);
        lock(&self.rx)
            .take()
            .ok_or_else(|| KvError::BucketNotFound {
                bucket: "scripted".into(),
            })
    }

    async fn retention(&self) -> Result<Retention, KvError> {
        Ok(Retention {
            eviction: Eviction::default(),
            first_revision: 1,
            // A script's end is not known up front: no revision is past it.
            last_revision: u64::MAX,
            identity: BucketIdentity {
                stream: "KV_scripted".into(),
                created: Timestamp::from_unix_nanos(1),
            },
            max_age: None,
            observed_at: Timestamp::from_unix_nanos(1),
        })
    }
}

/// A put event at `revision` (unknown version when `None`).
pub fn put(key: &str, value: &'static [u8], revision: Option<u64>) -> Result<WatchEvent, KvError> {
    Ok(WatchEvent::Update(KvUpdate::Put(KvEntry {
        key: key.into(),
        value: Bytes::from_static(value),
        version: revision.map_or_else(VersionToken::unknown, VersionToken::from_u64),
        created: None,
        expires: None,
    })))
}

/// A delete event at `revision`.
pub fn delete(key: &str, revision: u64) -> Result<WatchEvent, KvError> {
    Ok(WatchEvent::Update(KvUpdate::Delete(KvMarker {
        key: key.into(),
        version: VersionToken::from_u64(revision),
        created: None,
    })))
}

/// Yield to other tasks until `cond` holds, without letting a paused clock
/// advance; panic once `steps` yields and the wall-clock [`DEADLINE`] have
/// both passed (work on blocking threads runs in real time).
pub async fn yield_until(mut cond: impl FnMut() -> bool, steps: usize, what: &str) {
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut yields = 0usize;
    while !cond() {
        assert!(
            yields < steps || std::time::Instant::now() < deadline,
            "condition not reached within {steps} yields and {DEADLINE:?}: {what}"
        );
        yields += 1;
        tokio::task::yield_now().await;
    }
}

/// A bound for status waits; on a paused clock it elapses only when the
/// runtime is idle.
pub const DEADLINE: Duration = Duration::from_secs(60);
