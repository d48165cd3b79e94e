//! The live repair suite's harness, shared by its scenarios: a server
//! with one bucket ([`Live`]), an application that records what `parse`
//! and `apply` receive and can be held ([`App`], [`Gate`]), a watcher that
//! logs what the engine did with it ([`Recorder`]), and nodes generic over
//! the store ([`start_node`], [`synced_store`], [`run_to`], [`finish`]),
//! with fold-versus-bucket comparison ([`fold_of`], [`Live::listing`],
//! [`assert_converged`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use std::vec::Drain;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::Value;
use slipstream_applied::{
    AppliedConfig, AppliedWatch, Finished, Handlers, IgnoreApplied, OnExpiry, Phase, RepairMode,
    ScratchPolicy, StatusReceiver, WatchStatus, handlers,
};
use slipstream_it::{Admin, NatsServer, TempDir, connect, open};
use slipstream_kv::{
    ExpiryReason, KvError, KvReader, KvStore, KvUpdate, KvWatcher, KvWriter, Retention,
    StoreConfig, WatchCursor, WatchEvent, WatchScope, WatchStart,
};
use slipstream_nats::{NatsBucket, NatsConnection, NatsWatch};
use slipstream_snapshot::{SnapshotError, SnapshotStore};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// The bound on every wait for the engine or the server.
pub(crate) const BOUND: Duration = Duration::from_secs(30);

/// A fold as (key -> value, revision), from a store or from the bucket.
pub(crate) type Fold = BTreeMap<String, (Bytes, Option<u64>)>;

// ---------------------------------------------------------------------------
// The server side
// ---------------------------------------------------------------------------

/// A nats-server of its own with one bucket, an operator connection to it,
/// and a directory for the node's store and scratch files.
pub(crate) struct Live {
    pub(crate) bucket: NatsBucket,
    pub(crate) admin: Admin,
    pub(crate) dir: TempDir,
    _conn: NatsConnection,
    _server: NatsServer,
}

pub(crate) use slipstream_it::KvClient as Client;

impl Live {
    pub(crate) async fn start(label: &str, config: StoreConfig) -> Self {
        let server = NatsServer::start().await;
        let conn = connect(&server.url()).await;
        let bucket = open(&conn, config).await;
        Self::around(label, server, conn, bucket).await
    }

    /// A bucket `client` created: its stream made with exactly that
    /// client's config, then opened (not created) by the node's backend.
    pub(crate) async fn start_foreign(label: &str, client: Client) -> Self {
        let server = NatsServer::start().await;
        let admin = Admin::connect(&server.url()).await;
        let name = "foreign";
        let config = client.stream_config(name);
        let created = admin
            .api(&format!("STREAM.CREATE.KV_{name}"), config.clone())
            .await
            .unwrap_or_else(|e| panic!("create the {client:?} bucket: {e}"));
        let asked = config.as_object().into_iter().flatten();
        for (field, _) in asked.filter(|(f, _)| f.contains("ttl") || *f == "discard") {
            // 2.10 has no per-message TTL: it drops the fields, so the
            // bucket such a client gets there is one without TTL.
            let kept = if field.contains("ttl") && !server.at_least(2, 11) {
                &Value::Null
            } else {
                &config[field]
            };
            assert_eq!(
                &created["config"][field], kept,
                "{client:?}: the server's answer to {field}"
            );
        }
        let conn = connect(&server.url()).await;
        let bucket = open(&conn, StoreConfig::new(name)).await;
        Self::around(label, server, conn, bucket).await
    }

    async fn around(
        label: &str,
        server: NatsServer,
        conn: NatsConnection,
        bucket: NatsBucket,
    ) -> Self {
        let admin = Admin::connect(&server.url()).await;
        let dir = TempDir::new(label);
        // Repairs make their own directory under the scratch directory.
        std::fs::create_dir(dir.path().join("scratch")).unwrap();
        Self {
            bucket,
            admin,
            dir,
            _conn: conn,
            _server: server,
        }
    }

    pub(crate) fn stream(&self) -> &str {
        self.bucket.stream_name()
    }

    /// Whether the server has per-message TTL (2.11 and later); a test of
    /// TTL expiry on an older one says so and passes without running.
    pub(crate) fn has_message_ttl(&self, test: &str) -> bool {
        let has = self._server.at_least(2, 11);
        if !has {
            eprintln!("{test}: not applicable, the server has no per-message TTL");
        }
        has
    }

    /// Delete the bucket's stream and create the bucket again with
    /// `config`: a new incarnation whose revisions restart at 1.
    pub(crate) async fn recreate(&mut self, config: StoreConfig) {
        let stream = self.stream().to_owned();
        self.admin
            .delete_stream(&stream)
            .await
            .unwrap_or_else(|e| panic!("delete {stream}: {e}"));
        self.bucket = open(&self._conn, config).await;
    }

    /// Where the node's store lives.
    pub(crate) fn fold_dir(&self) -> PathBuf {
        self.dir.path().join("fold")
    }

    /// Repairs put their scratch files under the test's own directory.
    pub(crate) fn scratch(&self) -> ScratchPolicy {
        ScratchPolicy {
            dir: self.dir.path().join("scratch"),
            ..ScratchPolicy::default()
        }
    }

    pub(crate) async fn put(&self, key: &str, value: &str) -> u64 {
        self.put_bytes(key, Bytes::from(value.to_owned())).await
    }

    pub(crate) async fn put_bytes(&self, key: &str, value: Bytes) -> u64 {
        self.bucket
            .writer()
            .put(key, value)
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"))
    }

    pub(crate) async fn delete(&self, key: &str) {
        self.bucket
            .writer()
            .delete(key)
            .await
            .unwrap_or_else(|e| panic!("delete {key}: {e}"));
    }

    /// Remove every message of `key`, its delete marker included: the
    /// delete can no longer be delivered to anyone.
    pub(crate) async fn purge_marker(&self, key: &str) {
        let subject = format!("$KV.{}.{key}", self.bucket.name());
        self.admin
            .purge_subject(self.stream(), &subject)
            .await
            .unwrap_or_else(|e| panic!("purge {subject}: {e}"));
    }

    /// Wait until the stream's head has passed `above`; the first sequence.
    pub(crate) async fn wait_first_sequence_above(&self, above: u64) -> u64 {
        self.admin
            .wait_first_sequence_above(self.stream(), above, BOUND)
            .await
            .unwrap_or_else(|| panic!("the stream's first sequence never passed {above}"))
    }

    /// The bucket's live entries as the KV API lists them.
    pub(crate) async fn listing(&self) -> Fold {
        self.bucket
            .reader()
            .scan("")
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.key, (e.value, e.version.as_u64())))
            .collect()
    }

    /// The stream's last sequence.
    pub(crate) async fn stream_last(&self) -> u64 {
        self.admin.stream_info(self.stream()).await["state"]["last_seq"]
            .as_u64()
            .expect("stream info with last_seq")
    }

    /// Write big values to [`BURST_KEYS`] keys until the server holds back
    /// deliveries to the node's delta watch, as its flow control does while
    /// the node does not read (its `apply` is held). Held back: messages
    /// are pending for the consumer, and another write changes nothing it
    /// was delivered.
    pub(crate) async fn burst_until_stalled(&self) {
        let value = Bytes::from(vec![b'x'; 64 << 10]);
        for written in 0..4096 {
            self.put_bytes(&burst_key(written), value.clone()).await;
            let before = self.delta_consumer().await.expect("the node's consumer");
            if before["num_pending"].as_u64().unwrap_or(0) == 0 {
                continue;
            }
            self.put_bytes(&burst_key(written + 1), value.clone()).await;
            let after = self.delta_consumer().await.expect("the node's consumer");
            if after["delivered"] == before["delivered"] {
                return;
            }
        }
        panic!("the server never held back a delivery");
    }

    /// The last stream sequence delivered to the node's delta watch.
    pub(crate) async fn delivered(&self) -> u64 {
        let consumer = self.delta_consumer().await.expect("the node's consumer");
        consumer["delivered"]["stream_seq"]
            .as_u64()
            .expect("consumer info with a delivered stream sequence")
    }

    /// The node's delta-watch consumer (the only one starting at a
    /// sequence), if it exists.
    pub(crate) async fn delta_consumer(&self) -> Option<Value> {
        self.admin
            .consumers(self.stream())
            .await
            .into_iter()
            .find(|c| c["config"]["deliver_policy"] == "by_start_sequence")
    }
}

/// Keys a write burst cycles through.
pub(crate) const BURST_KEYS: usize = 8;

/// The `n`th key of a write burst.
pub(crate) fn burst_key(n: usize) -> String {
    format!("burst{}", n % BURST_KEYS)
}

// ---------------------------------------------------------------------------
// The application
// ---------------------------------------------------------------------------

/// One update as `parse` saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Put(String, Option<u64>),
    /// Delete and purge markers alike; repair deletes carry no revision.
    Delete(String, Option<u64>),
}

pub(crate) fn put_op(key: &str, revision: u64) -> Op {
    Op::Put(key.to_owned(), Some(revision))
}

pub(crate) fn repair_delete(key: &str) -> Op {
    Op::Delete(key.to_owned(), None)
}

/// What the application saw: every parsed update in order and its own
/// fold built by `apply`.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    parsed: Vec<Op>,
    fold: BTreeMap<String, Bytes>,
}

/// Holds `apply` while closed: a slow application.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    closed: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    pub(crate) fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }

    pub(crate) fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.cv.notify_all();
    }

    /// Wait while closed (at most [`BOUND`]), off the runtime's workers.
    pub(crate) fn pass(&self) {
        if !*self.closed.lock().unwrap() {
            return;
        }
        tokio::task::block_in_place(|| {
            let deadline = std::time::Instant::now() + BOUND;
            let mut closed = self.closed.lock().unwrap();
            while *closed {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                assert!(!left.is_zero(), "the apply gate was never opened");
                closed = self.cv.wait_timeout(closed, left).unwrap().0;
            }
        });
    }
}

pub(crate) type Item = (String, Option<Bytes>);

/// The application: records what `parse` and `apply` receive.
#[derive(Debug, Clone, Default)]
pub(crate) struct App {
    pub(crate) seen: Arc<Mutex<Seen>>,
    pub(crate) gate: Arc<Gate>,
}

impl App {
    /// An application whose fold starts as `store` holds it (a node
    /// restarting with its committed fold).
    pub(crate) fn resuming<S: SnapshotStore>(store: &S) -> Self {
        let app = Self::default();
        app.seen.lock().unwrap().fold = fold_of(store)
            .into_iter()
            .map(|(k, (v, _))| (k, v))
            .collect();
        app
    }

    pub(crate) fn parsed(&self) -> Vec<Op> {
        self.seen.lock().unwrap().parsed.clone()
    }

    /// The application's fold: key -> value.
    pub(crate) fn fold(&self) -> BTreeMap<String, Bytes> {
        self.seen.lock().unwrap().fold.clone()
    }

    pub(crate) fn handlers(
        &self,
    ) -> Handlers<
        impl FnMut(&KvUpdate) -> Option<Item> + Send + 'static,
        impl FnMut(Drain<'_, Item>) + Send + 'static,
        IgnoreApplied,
    > {
        let seen = Arc::clone(&self.seen);
        let parse = move |u: &KvUpdate| {
            let (op, item) = match u {
                KvUpdate::Put(e) => (
                    Op::Put(e.key.clone(), u.revision()),
                    (e.key.clone(), Some(e.value.clone())),
                ),
                other => (
                    Op::Delete(other.key().to_owned(), u.revision()),
                    (other.key().to_owned(), None),
                ),
            };
            seen.lock().unwrap().parsed.push(op);
            Some(item)
        };
        let seen = Arc::clone(&self.seen);
        let gate = Arc::clone(&self.gate);
        let apply = move |batch: Drain<'_, Item>| {
            gate.pass();
            let mut seen = seen.lock().unwrap();
            for (key, value) in batch {
                match value {
                    Some(v) => seen.fold.insert(key, v),
                    None => seen.fold.remove(&key),
                };
            }
        };
        handlers(parse, apply)
    }
}

/// The values of a fold, without revisions.
pub(crate) fn values(fold: &Fold) -> BTreeMap<String, Bytes> {
    fold.iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect()
}

// ---------------------------------------------------------------------------
// The watcher: the bucket, with a log of what the engine did with it
// ---------------------------------------------------------------------------

/// What a node's engine did with its watcher, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Watched {
    /// A watch call: a state-sync (`after: None`, a relist or its listing)
    /// or a delta after this revision, and the engine's phase at the call.
    Call { after: Option<u64>, phase: Phase },
    /// The watch call refused the cursor (expiry at resume).
    Refused(ExpiryReason),
    /// A running watch ended with an expiry (the floor guard).
    Overrun(ExpiryReason),
}

/// A [`KvWatcher`] over the bucket that logs each watch call with the
/// engine's phase, and each expiry, at resume or mid-watch.
#[derive(Clone)]
pub(crate) struct Recorder {
    bucket: NatsBucket,
    status: Arc<OnceLock<StatusReceiver>>,
    log: Arc<Mutex<Vec<Watched>>>,
}

impl Recorder {
    pub(crate) fn push(&self, event: Watched) {
        self.log.lock().unwrap().push(event);
    }
}

impl KvWatcher for Recorder {
    type WatchStream = Observed;

    async fn watch(&self, scope: &WatchScope, start: WatchStart) -> Result<Observed, KvError> {
        let after = match &start {
            WatchStart::Relist => None,
            WatchStart::After(cursor) => Some(cursor.rank()),
        };
        let phase = self
            .status
            .get()
            .map_or(Phase::Starting, |s| s.borrow().phase);
        self.push(Watched::Call { after, phase });
        match self.bucket.watch(scope, start).await {
            Ok(inner) => Ok(Observed {
                inner,
                log: Arc::clone(&self.log),
            }),
            Err(e) => {
                if let KvError::CursorExpired { reason } = &e {
                    self.push(Watched::Refused(reason.clone()));
                }
                Err(e)
            }
        }
    }

    async fn retention(&self) -> Result<Retention, KvError> {
        self.bucket.retention().await
    }
}

/// A watch stream that logs a mid-stream expiry.
pub(crate) struct Observed {
    inner: NatsWatch,
    log: Arc<Mutex<Vec<Watched>>>,
}

impl Stream for Observed {
    type Item = Result<WatchEvent, KvError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = ready!(self.inner.poll_next_unpin(cx));
        if let Some(Err(KvError::CursorExpired { reason })) = &item {
            self.log
                .lock()
                .unwrap()
                .push(Watched::Overrun(reason.clone()));
        }
        Poll::Ready(item)
    }
}

// ---------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------

/// A running node: the engine's task, its status, its shutdown and the log
/// of its watcher.
pub(crate) struct Node<S> {
    pub(crate) task: JoinHandle<Finished<S>>,
    pub(crate) status: StatusReceiver,
    pub(crate) token: CancellationToken,
    pub(crate) log: Arc<Mutex<Vec<Watched>>>,
}

impl<S> Node<S> {
    pub(crate) fn watched(&self) -> Vec<Watched> {
        self.log.lock().unwrap().clone()
    }
}

/// The configuration tweak of a node; [`plain`] changes nothing.
pub(crate) fn plain<S>(config: AppliedConfig<S>) -> AppliedConfig<S> {
    config
}

pub(crate) fn repair<S>(mode: RepairMode) -> impl FnOnce(AppliedConfig<S>) -> AppliedConfig<S> {
    move |c| c.on_expiry(OnExpiry::Repair(mode))
}

/// Open the store in `dir`, waiting while a stopped node's handle is still
/// being released by its blocking thread.
pub(crate) async fn open_store<S: SnapshotStore>(dir: &Path) -> (WatchCursor, S) {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match S::open(dir, &S::Options::default()) {
            Ok(opened) => return opened,
            Err(SnapshotError::Locked { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("open store: {e}"),
        }
    }
}

/// Start an All-scope node on `store`, folding into `app`.
pub(crate) fn start_node<S: SnapshotStore>(
    live: &Live,
    store: S,
    app: &App,
    tune: impl FnOnce(AppliedConfig<S>) -> AppliedConfig<S>,
) -> Node<S> {
    start_scoped_node(live, store, app, WatchScope::All, tune)
}

/// Start a node watching `scope` on `store`, folding into `app`.
pub(crate) fn start_scoped_node<S: SnapshotStore>(
    live: &Live,
    store: S,
    app: &App,
    scope: WatchScope,
    tune: impl FnOnce(AppliedConfig<S>) -> AppliedConfig<S>,
) -> Node<S> {
    let token = CancellationToken::new();
    let config = tune(
        AppliedConfig::new(scope)
            .store(store)
            .shutdown(token.clone())
            .scratch(live.scratch()),
    );
    let recorder = Recorder {
        bucket: live.bucket.clone(),
        status: Arc::default(),
        log: Arc::default(),
    };
    let (slot, log) = (Arc::clone(&recorder.status), Arc::clone(&recorder.log));
    let watch = AppliedWatch::new(recorder, config);
    let status = watch.status();
    assert!(slot.set(watch.status()).is_ok());
    let task = tokio::spawn(watch.run(app.handlers()));
    Node {
        task,
        status,
        token,
        log,
    }
}

/// Wait until `node`'s status satisfies `f`; a node that ended instead
/// fails the test with its outcome.
pub(crate) async fn wait_status<S: Send + 'static>(
    node: &mut Node<S>,
    f: impl FnMut(&WatchStatus) -> bool,
) {
    let waited = timeout(BOUND, node.status.wait_for(f))
        .await
        .map(|r| r.is_ok());
    match waited {
        Ok(true) => {}
        Ok(false) => {
            let finished = timeout(BOUND, &mut node.task).await;
            let outcome = finished.map(|r| r.map(|f| f.result));
            panic!("the node ended: {outcome:?}; watched {:?}", node.watched());
        }
        Err(_) => panic!(
            "status deadline: {:?}; watched {:?}",
            *node.status.borrow(),
            node.watched()
        ),
    }
}

/// Wait until `node` is ready with everything up to `revision` applied; it
/// must still be running (a repair does not stop it).
pub(crate) async fn wait_applied<S: Send + 'static>(node: &mut Node<S>, revision: u64) {
    wait_status(node, |s| s.is_ready() && s.applied == Some(revision)).await;
    assert!(!node.task.is_finished(), "the watch goes on");
}

/// Stop `node` gracefully; it must stop cleanly. Hands the store back.
pub(crate) async fn stop<S: Send + 'static>(node: Node<S>) -> S {
    node.token.cancel();
    let finished = finish(node).await;
    finished.result.expect("a clean stop");
    finished.store.expect("the store is handed back")
}

/// Wait for `node` to end on its own (or after a cancel).
pub(crate) async fn finish<S: Send + 'static>(node: Node<S>) -> Finished<S> {
    timeout(BOUND, node.task)
        .await
        .expect("the node did not end in time")
        .expect("the node's task panicked")
}

/// Run until the status is ready at `revision`, then stop; the store.
pub(crate) async fn run_to<S: Send + 'static>(mut node: Node<S>, revision: u64) -> S {
    wait_applied(&mut node, revision).await;
    stop(node).await
}

/// A fresh node synced to the bucket up to `last`, stopped: its store.
pub(crate) async fn synced_store<S: SnapshotStore>(live: &Live, last: u64) -> S {
    let (_, store) = open_store::<S>(&live.fold_dir()).await;
    let node = start_node(live, store, &App::default(), plain);
    let store = run_to(node, last).await;
    assert_eq!(store.cursor().revision(), Some(last));
    store
}

/// A store's fold: key -> (value, revision).
pub(crate) fn fold_of<S: SnapshotStore>(store: &S) -> Fold {
    store
        .range("")
        .unwrap()
        .into_iter()
        .map(|(k, e)| (k, (e.value, e.version.as_u64())))
        .collect()
}

/// The store's fold and the application's both equal the bucket's listing.
pub(crate) async fn assert_converged<S: SnapshotStore>(live: &Live, store: &S, app: &App) {
    let listing = live.listing().await;
    assert_eq!(fold_of(store), listing, "the store's fold is the bucket's");
    assert_eq!(app.fold(), values(&listing), "the application's fold too");
}
