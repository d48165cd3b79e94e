//! Projections of plain JetStream streams against a live nats-server
//! (behaviour P): the replay-to-tail handover, resume below the retention
//! floor, `ensure_stream` on an existing stream, consumer cleanup, and the
//! cursor rule (E1) across a kill and restart.

// Test helpers: a failed expectation is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use slipstream_applied::{AppliedConfig, AppliedWatch, Finished, StatusReceiver, handlers};
use slipstream_it::{Admin, NatsServer, TempDir, test_settings, wait_until};
use slipstream_kv::{KvUpdate, WatchCursor, WatchEvent, WatchScope};
use slipstream_snapshot::{AppendLogStore, SnapshotError, SnapshotStore};
use slipstream_stream::{
    Discard, Ensured, StreamError, StreamRetention, StreamSource, StreamSpec, StreamWatch,
    ensure_stream,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const BOUND: Duration = Duration::from_secs(20);
const STREAM: &str = "ORDERS";

struct Fixture {
    _server: NatsServer,
    admin: Admin,
    js: jetstream::Context,
}

impl Fixture {
    /// A server of its own with an empty `ORDERS` stream on `orders.>`.
    async fn start() -> Self {
        let server = NatsServer::start().await;
        let admin = Admin::connect(&server.url()).await;
        let spec = StreamSpec::new(STREAM, ["orders.>"]);
        let ensured = ensure_stream(admin.client(), &spec, BOUND).await.unwrap();
        assert_eq!(ensured, Ensured::Created);
        let js = jetstream::new(admin.client().clone());
        Self {
            _server: server,
            admin,
            js,
        }
    }

    fn source(&self) -> StreamSource {
        StreamSource::new(self.admin.client().clone(), STREAM).settings(test_settings())
    }

    /// Publish `orders.<n>` = `n` and return its stream sequence.
    async fn publish(&self, n: u64) -> u64 {
        publish(&self.js, n).await
    }

    async fn consumers(&self) -> Vec<String> {
        self.admin.consumer_names(STREAM).await
    }

    async fn no_consumers_left(&self) {
        let gone = wait_until(BOUND, || async { self.consumers().await.is_empty() }).await;
        assert!(gone, "consumers left behind: {:?}", self.consumers().await);
    }
}

async fn publish(js: &jetstream::Context, n: u64) -> u64 {
    let ack = tokio::time::timeout(BOUND, async {
        js.publish(format!("orders.{n}"), Bytes::from(n.to_string()))
            .await
            .unwrap()
            .await
            .unwrap()
    })
    .await
    .expect("publish timed out");
    ack.sequence
}

async fn next_event(w: &mut StreamWatch) -> WatchEvent {
    tokio::time::timeout(BOUND, w.next())
        .await
        .expect("the projection produced nothing within the bound")
        .expect("the projection ended")
        .expect("the projection failed")
}

async fn next_sequence(w: &mut StreamWatch) -> u64 {
    match next_event(w).await {
        WatchEvent::Update(u) => u.revision().expect("a stream sequence"),
        WatchEvent::CaughtUp => panic!("expected an update, got CaughtUp"),
    }
}

/// Every sequence `apply` returned for, in the order it did.
type Applied = Arc<Mutex<Vec<u64>>>;

fn sequence_of(u: &KvUpdate) -> Option<u64> {
    u.revision()
}

async fn wait_applied(status: &mut StatusReceiver, at_least: u64) {
    tokio::time::timeout(
        BOUND,
        status.wait_for(|s| s.applied.is_some_and(|a| a >= at_least)),
    )
    .await
    .unwrap_or_else(|_| panic!("the projection did not apply up to {at_least}"))
    .expect("the projection stopped");
}

#[tokio::test]
async fn a_message_published_during_the_replay_to_tail_handover_is_applied_once() {
    let f = Fixture::start().await;
    for n in 1..=50 {
        f.publish(n).await;
    }
    // `parse` sees the last replayed message: that is the handover; a
    // publisher fires at that very moment, racing the switch to tailing.
    let (handover_tx, mut handover_rx) = mpsc::unbounded_channel();
    let js = f.js.clone();
    let publisher = tokio::spawn(async move {
        handover_rx
            .recv()
            .await
            .expect("the handover was signalled");
        publish(&js, 51).await
    });
    let applied: Applied = Arc::default();
    let log = Arc::clone(&applied);
    let parse = move |u: &KvUpdate| {
        if u.revision() == Some(50) {
            let _ = handover_tx.send(());
        }
        sequence_of(u)
    };
    let apply = move |batch: std::vec::Drain<'_, u64>| log.lock().unwrap().extend(batch);
    let shutdown = CancellationToken::new();
    let config = AppliedConfig::new(WatchScope::All).shutdown(shutdown.clone());
    let watch = AppliedWatch::new(f.source(), config);
    let mut status = watch.status();
    let run = tokio::spawn(watch.run(handlers(parse, apply)));

    tokio::time::timeout(BOUND, status.wait_for(|s| s.is_ready()))
        .await
        .expect("the projection never caught up")
        .unwrap();
    let during = tokio::time::timeout(BOUND, publisher)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(during, 51);
    let after = f.publish(52).await;
    wait_applied(&mut status, after).await;
    shutdown.cancel();
    let finished = tokio::time::timeout(BOUND, run).await.unwrap().unwrap();
    assert_eq!(finished.result.unwrap().cursor.revision(), Some(52));

    let applied = applied.lock().unwrap().clone();
    assert_eq!(
        applied,
        (1..=52).collect::<Vec<_>>(),
        "every message applied exactly once, in order, the handover's included"
    );
    f.no_consumers_left().await;
}

/// The design P2 forbids, built here to show what it loses: replay on one
/// consumer, then tail on a second one asking for "new messages only".
#[tokio::test]
async fn replay_then_new_messages_only_loses_the_message_published_during_the_handover() {
    let f = Fixture::start().await;
    for n in 1..=50 {
        f.publish(n).await;
    }
    let stream = tokio::time::timeout(BOUND, f.js.get_stream(STREAM))
        .await
        .unwrap()
        .unwrap();
    let pull = |deliver_policy| consumer::pull::Config {
        deliver_policy,
        ack_policy: consumer::AckPolicy::None,
        inactive_threshold: Duration::from_secs(60),
        ..Default::default()
    };
    let mut seen = Vec::new();

    let replay = tokio::time::timeout(
        BOUND,
        stream.create_consumer(pull(consumer::DeliverPolicy::All)),
    )
    .await
    .unwrap()
    .unwrap();
    while seen.len() < 50 {
        let mut batch = replay
            .fetch()
            .max_messages(50 - seen.len())
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        while let Some(m) = tokio::time::timeout(BOUND, batch.next()).await.unwrap() {
            seen.push(m.unwrap().info().unwrap().stream_sequence);
        }
    }
    let replay_name = replay.cached_info().name.clone();
    stream.delete_consumer(&replay_name).await.unwrap();

    // The handover: replay is done, the tail does not exist yet.
    let during = f.publish(51).await;

    let tail = tokio::time::timeout(
        BOUND,
        stream.create_consumer(pull(consumer::DeliverPolicy::New)),
    )
    .await
    .unwrap()
    .unwrap();
    let after = f.publish(52).await;
    let sentinel = f.publish(53).await;
    while seen.last() != Some(&sentinel) {
        let mut batch = tail
            .fetch()
            .max_messages(10)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        while let Some(m) = tokio::time::timeout(BOUND, batch.next()).await.unwrap() {
            seen.push(m.unwrap().info().unwrap().stream_sequence);
        }
    }
    let tail_name = tail.cached_info().name.clone();
    stream.delete_consumer(&tail_name).await.unwrap();

    assert!(seen.contains(&after) && seen.contains(&50));
    assert!(
        !seen.contains(&during),
        "the broken design was expected to lose {during}; it saw {seen:?}"
    );
    let stored = f
        .admin
        .api(
            &format!("STREAM.MSG.GET.{STREAM}"),
            json!({ "seq": during }),
        )
        .await;
    assert!(
        stored.is_ok(),
        "the lost message is in the stream: {stored:?}"
    );
}

#[tokio::test]
async fn resume_since_below_the_floor_returns_retention_exhausted_with_the_first_sequence() {
    let f = Fixture::start().await;
    for n in 1..=10 {
        f.publish(n).await;
    }
    f.admin.purge_below(STREAM, 6).await.unwrap();
    let source = f.source();

    match source.replay(Some(3)).await {
        Err(StreamError::RetentionExhausted { first_sequence }) => assert_eq!(first_sequence, 6),
        other => panic!("expected RetentionExhausted, got {other:?}"),
    }
    assert!(
        f.consumers().await.is_empty(),
        "a refused resume creates no consumer"
    );

    // Through the engine the same check ends the run with the typed error.
    let config = AppliedConfig::new(WatchScope::All).resume_from(WatchCursor::at(3));
    let finished = tokio::time::timeout(
        BOUND,
        AppliedWatch::new(source.clone(), config).run(handlers(sequence_of, |_| {})),
    )
    .await
    .expect("the engine did not stop");
    match finished.result.map_err(StreamError::from) {
        Err(StreamError::RetentionExhausted { first_sequence }) => assert_eq!(first_sequence, 6),
        other => panic!("expected RetentionExhausted, got {other:?}"),
    }

    // Right at the floor, the resume works and starts at the first retained message.
    let mut w = source.replay(Some(5)).await.unwrap();
    assert_eq!(next_sequence(&mut w).await, 6);
    drop(w);
    f.no_consumers_left().await;
}

#[tokio::test]
async fn ensure_stream_leaves_an_existing_streams_config_untouched() {
    let f = Fixture::start().await;
    f.publish(1).await;
    let before = f.admin.stream_info(STREAM).await["config"].clone();

    let different = StreamSpec::new(STREAM, ["orders.>", "returns.>"]).retention(StreamRetention {
        max_age: Some(Duration::from_secs(1)),
        max_messages: Some(5),
        discard: Discard::New,
        ..StreamRetention::default()
    });
    let ensured = ensure_stream(f.admin.client(), &different, BOUND)
        .await
        .unwrap();
    assert_eq!(ensured, Ensured::Existing);
    let after = f.admin.stream_info(STREAM).await;
    assert_eq!(
        after["config"], before,
        "the existing config must not change"
    );
    assert_eq!(after["state"]["messages"], 1, "nor its messages");

    // A stream that does not exist is created with the spec's retention.
    let fresh = StreamSpec::new("RETURNS", ["returns.>"]).retention(StreamRetention {
        max_messages: Some(5),
        ..StreamRetention::default()
    });
    let ensured = ensure_stream(f.admin.client(), &fresh, BOUND)
        .await
        .unwrap();
    assert_eq!(ensured, Ensured::Created);
    let created = f.admin.stream_info("RETURNS").await;
    assert_eq!(created["config"]["max_msgs"], 5);
    assert_eq!(created["config"]["subjects"], json!(["returns.>"]));
}

#[tokio::test]
async fn no_consumer_of_ours_remains_after_the_projection_stops() {
    let f = Fixture::start().await;
    for n in 1..=5 {
        f.publish(n).await;
    }
    let shutdown = CancellationToken::new();
    let config = AppliedConfig::new(WatchScope::All).shutdown(shutdown.clone());
    let watch = AppliedWatch::new(f.source(), config);
    let mut status = watch.status();
    let run = tokio::spawn(watch.run(handlers(sequence_of, |_| {})));
    wait_applied(&mut status, 5).await;
    let running = f.consumers().await;
    assert_eq!(running.len(), 1, "one consumer while running: {running:?}");
    let info = f
        .admin
        .api(&format!("CONSUMER.INFO.{STREAM}.{}", running[0]), json!({}))
        .await
        .unwrap();
    assert_eq!(info["config"]["ack_policy"], "none");
    assert!(info["config"]["inactive_threshold"].as_u64().unwrap() > 0);

    shutdown.cancel();
    let finished = tokio::time::timeout(BOUND, run).await.unwrap().unwrap();
    assert!(finished.result.is_ok());
    f.no_consumers_left().await;

    // A projection watch dropped by its reader cleans up too.
    let w = f.source().replay(None).await.unwrap();
    assert_eq!(f.consumers().await.len(), 1);
    drop(w);
    f.no_consumers_left().await;
}

/// Open `dir`, waiting while a killed run's store handle is still being
/// released by its blocking thread.
async fn open_store(dir: &Path) -> (WatchCursor, AppendLogStore) {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match AppendLogStore::open(dir, &Default::default()) {
            Ok(opened) => return opened,
            Err(SnapshotError::Locked { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("open store: {e}"),
        }
    }
}

fn start_run(
    source: StreamSource,
    store: AppendLogStore,
    applied: &Applied,
) -> (
    tokio::task::JoinHandle<Finished<AppendLogStore>>,
    CancellationToken,
    StatusReceiver,
) {
    let shutdown = CancellationToken::new();
    let config = AppliedConfig::new(WatchScope::All)
        .shutdown(shutdown.clone())
        .store(store);
    let watch = AppliedWatch::new(source, config);
    let status = watch.status();
    let log = Arc::clone(applied);
    let apply = move |batch: std::vec::Drain<'_, u64>| log.lock().unwrap().extend(batch);
    (
        tokio::spawn(watch.run(handlers(sequence_of, apply))),
        shutdown,
        status,
    )
}

#[tokio::test]
async fn the_projection_cursor_obeys_e1_across_a_kill_and_restart() {
    const TOTAL: u64 = 600;
    let f = Fixture::start().await;
    let dir = TempDir::new("stream-e1");
    let fold = dir.path().join("fold");
    for n in 1..=200 {
        f.publish(n).await;
    }
    let js = f.js.clone();
    let publisher = tokio::spawn(async move {
        for n in 201..=TOTAL {
            publish(&js, n).await;
        }
    });

    let first: Applied = Arc::default();
    let (_, store) = open_store(&fold).await;
    let (run, _token, mut status) = start_run(f.source(), store, &first);
    wait_applied(&mut status, 250).await;
    // The kill: no shutdown, no final flush; whatever was in flight is lost.
    run.abort();
    let _ = run.await;

    let (cursor, store) = open_store(&fold).await;
    let committed = cursor.revision().expect("something was committed");
    let first = first.lock().unwrap().clone();
    assert!(
        first.starts_with(&(1..=committed).collect::<Vec<_>>()),
        "E1: the committed cursor {committed} covers only what apply returned for, in order"
    );
    assert_eq!(
        store.len(),
        committed,
        "the fold and its cursor were committed together"
    );

    tokio::time::timeout(BOUND, publisher)
        .await
        .unwrap()
        .unwrap();
    let second: Applied = Arc::default();
    let (run, token, mut status) = start_run(f.source(), store, &second);
    wait_applied(&mut status, TOTAL).await;
    token.cancel();
    let finished = tokio::time::timeout(BOUND, run).await.unwrap().unwrap();
    assert_eq!(finished.result.unwrap().cursor.revision(), Some(TOTAL));

    let second = second.lock().unwrap().clone();
    assert_eq!(
        second,
        (committed + 1..=TOTAL).collect::<Vec<_>>(),
        "the restart resumes right after the committed cursor: nothing lost, nothing out of order"
    );
    let store = finished.store.expect("the store is handed back");
    assert_eq!(store.len(), TOTAL);
    let last = store
        .get(&format!("orders.{TOTAL}"))
        .unwrap()
        .expect("last key");
    assert_eq!(last.value, Bytes::from(TOTAL.to_string()));
    drop(store);
    f.no_consumers_left().await;
}

#[tokio::test]
async fn a_tail_overtaken_by_the_retention_floor_ends_with_a_floor_overrun() {
    let f = Fixture::start().await;
    for n in 1..=5 {
        f.publish(n).await;
    }
    let settings = test_settings().floor_probe_interval(Duration::from_millis(100));
    let source = f.source().settings(settings);
    let mut w = source.replay(None).await.unwrap();
    for expected in 1..=5 {
        assert_eq!(next_sequence(&mut w).await, expected);
    }
    assert_eq!(next_event(&mut w).await, WatchEvent::CaughtUp);

    // Everything up to 7 is gone: sequences 6 and 7 can never be delivered.
    f.admin.purge_below(STREAM, 8).await.unwrap();
    let ended = tokio::time::timeout(BOUND, w.next())
        .await
        .expect("the floor guard did not fire")
        .expect("the projection ended without saying why");
    match ended {
        Err(slipstream_kv::KvError::CursorExpired {
            reason:
                slipstream_kv::ExpiryReason::FloorOverrun {
                    frontier,
                    first_sequence,
                },
        }) => assert_eq!((frontier, first_sequence), (5, 8)),
        other => panic!("expected a floor overrun, got {other:?}"),
    }
    drop(w);
    f.no_consumers_left().await;
}
