//! A node over the simulator: a bucket, an engine task on a fault store,
//! and waits on its status, shared by the repair, restore and scope tests.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use slipstream_applied::{
    AppliedConfig, AppliedError, AppliedWatch, Finished, LocalArtifacts, OnExpiry, RepairMode,
    StatusReceiver, WatchStatus,
};
use slipstream_kv::{Connection, KvReader, KvStore, KvWatcher, KvWriter, StoreConfig, WatchScope};
use slipstream_memory::{MemoryServer, MemoryStore};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::{App, DEADLINE, FaultPlan, FaultStore, open_store};

/// key -> (value, revision), as a store or a bucket holds it.
pub type Fold = BTreeMap<String, (Bytes, Option<u64>)>;

/// A configuration change applied to every node a test starts.
pub type Tune = Box<dyn FnOnce(AppliedConfig<FaultStore>) -> AppliedConfig<FaultStore>>;

/// No change.
pub fn plain() -> Tune {
    Box::new(|c| c)
}

/// Repair an expiry by `mode`.
pub fn repair(
    mode: RepairMode,
) -> impl FnOnce(AppliedConfig<FaultStore>) -> AppliedConfig<FaultStore> {
    move |c| c.on_expiry(OnExpiry::Repair(mode))
}

/// Repair an expiry by `mode`, restoring from the artifacts in `artifacts`.
pub fn restoring(mode: RepairMode, artifacts: &Path) -> Tune {
    let source = LocalArtifacts::new(artifacts);
    Box::new(move |c| c.on_expiry(OnExpiry::Repair(mode)).restore_from(source))
}

pub async fn bucket_with(server: &MemoryServer, config: StoreConfig) -> MemoryStore {
    let conn = server.connection();
    conn.connect().await.unwrap();
    conn.store_with_config(&config).await.unwrap()
}

/// A fresh server with a plain bucket `cfg`.
pub async fn bucket() -> (MemoryServer, MemoryStore) {
    let server = MemoryServer::new();
    let kv = bucket_with(&server, StoreConfig::new("cfg")).await;
    (server, kv)
}

pub async fn put(kv: &MemoryStore, key: &str, value: &str) -> u64 {
    kv.writer()
        .put(key, Bytes::from(value.to_owned()))
        .await
        .unwrap()
}

/// What the bucket lists live now.
pub async fn truth(kv: &MemoryStore) -> Fold {
    kv.scan("")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key, (e.value, e.version.as_u64())))
        .collect()
}

/// The entries of `fold` in `scope`.
pub fn in_scope(fold: &Fold, scope: &WatchScope) -> Fold {
    fold.iter()
        .filter(|(k, _)| scope.contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The entries of `fold` outside `scope`.
pub fn out_of_scope(fold: &Fold, scope: &WatchScope) -> Fold {
    fold.iter()
        .filter(|(k, _)| !scope.contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub async fn wait_status(
    rx: &mut StatusReceiver,
    f: impl FnMut(&WatchStatus) -> bool,
) -> WatchStatus {
    timeout(DEADLINE, rx.wait_for(f))
        .await
        .expect("status deadline")
        .expect("status sender alive")
        .clone()
}

/// An engine task and its handles.
pub struct Running {
    pub task: JoinHandle<Finished<FaultStore>>,
    pub status: StatusReceiver,
    pub token: CancellationToken,
}

impl Running {
    /// Stop the node; it must stop cleanly. Hands the store back.
    pub async fn stop(self) -> FaultStore {
        self.token.cancel();
        let finished = timeout(DEADLINE, self.task).await.unwrap().unwrap();
        finished.result.expect("clean stop");
        finished.store.unwrap()
    }
}

/// Start a node watching `scope` on `store`.
pub fn start_scoped<W: KvWatcher + 'static>(
    watcher: W,
    store: FaultStore,
    app: &App,
    scope: WatchScope,
    tune: Tune,
) -> Running {
    let token = CancellationToken::new();
    let config = tune(
        AppliedConfig::new(scope)
            .store(store)
            .shutdown(token.clone()),
    );
    let watch = AppliedWatch::new(watcher, config);
    let status = watch.status();
    let task = tokio::spawn(watch.run(app.handlers()));
    Running {
        task,
        status,
        token,
    }
}

/// Start a node watching the whole bucket on `store`.
pub fn start<W: KvWatcher + 'static>(
    watcher: W,
    store: FaultStore,
    app: &App,
    tune: impl FnOnce(AppliedConfig<FaultStore>) -> AppliedConfig<FaultStore> + 'static,
) -> Running {
    start_scoped(watcher, store, app, WatchScope::All, Box::new(tune))
}

/// Run a node until it is ready at `revision`, then stop it cleanly.
pub async fn run_to(mut run: Running, revision: u64) -> FaultStore {
    wait_status(&mut run.status, |s| {
        s.is_ready() && s.applied == Some(revision)
    })
    .await;
    assert!(!run.task.is_finished(), "the watch goes on");
    run.token.cancel();
    let finished = run.task.await.unwrap();
    finished.result.expect("clean stop");
    finished.store.unwrap()
}

/// The watch must end on its own with an error; hands back the outcome.
pub async fn run_to_error(run: Running) -> (AppliedError, FaultStore) {
    let finished = timeout(DEADLINE, run.task)
        .await
        .expect("the watch ends")
        .unwrap();
    let store = finished.store.unwrap();
    (finished.result.expect_err("the watch fails"), store)
}

/// Sync a node watching `scope` on `dir` until ready at `revision`; hand
/// back its store.
pub async fn synced_scoped(
    kv: &MemoryStore,
    dir: &Path,
    app: &App,
    scope: WatchScope,
    revision: u64,
) -> FaultStore {
    let (_, store) = open_store(dir, &FaultPlan::new());
    run_to(
        start_scoped(kv.watcher(), store, app, scope, plain()),
        revision,
    )
    .await
}

/// Sync a node watching the whole bucket on `dir` until ready at
/// `revision`; hand back its store.
pub async fn synced(kv: &MemoryStore, dir: &Path, app: &App, revision: u64) -> FaultStore {
    synced_scoped(kv, dir, app, WatchScope::All, revision).await
}

/// Sync a fresh node to the bucket (ready at whatever revision), stop it
/// and hand back its store.
pub async fn synced_store(kv: &MemoryStore, dir: &Path, app: &App) -> FaultStore {
    let (_, store) = open_store(dir, &FaultPlan::new());
    let mut run = start(kv.watcher(), store, app, |c| c);
    wait_status(&mut run.status, WatchStatus::is_ready).await;
    run.token.cancel();
    run.task.await.unwrap().store.unwrap()
}

/// An exporter node's artifact of its fold of the whole bucket at
/// `revision`, written to `artifacts/<name>`; also returns the exporter's
/// fold.
pub async fn export_from(
    kv: &MemoryStore,
    work: &Path,
    artifacts: &Path,
    name: &str,
    revision: u64,
) -> Fold {
    use slipstream_snapshot::SnapshotStore;
    let app = App::new();
    let dir = work.join(format!("exporter-{name}"));
    let mut store = synced_scoped(kv, &dir, &app, WatchScope::All, revision).await;
    std::fs::create_dir_all(artifacts).unwrap();
    let manifest = store
        .export_to(&artifacts.join(name), &WatchScope::All)
        .unwrap();
    assert_eq!(manifest.cursor.revision(), Some(revision));
    super::fold_of(&store)
}
