//! Fleet artifacts over a live nats-server (A5): the object-store transport
//! round trip, tampered objects refused, interrupted uploads never pointed
//! at, pruning that keeps the pointed-to artifact, and two mirrors
//! exporting on a schedule under writes with one lease between them.

// Test helpers: a failed expectation is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

#[path = "repair_e2e/harness.rs"]
#[allow(dead_code, unreachable_pub)]
mod harness;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use slipstream_applied::{AppliedConfig, AppliedWatch, export_channel, handlers};
use slipstream_fleet::{
    ArtifactTransport, FleetError, FleetKey, ObjectStoreConfig, ObjectStoreTransport,
    PointerReading, PublishOutcome, Refusal, RoundOutcome, ScheduleConfig, ScheduledExport,
};
use slipstream_it::{NatsServer, TempDir, connect, open, wait_until};
use slipstream_kv::{
    KvEntry, KvStore, KvUpdate, KvWriter, StoreConfig, VersionToken, WatchCursor, WatchScope,
};
use slipstream_snapshot::{AppendLogStore, ArtifactManifest, SnapshotStore, export, import};
use tokio_util::sync::CancellationToken;

const BOUND: Duration = Duration::from_secs(30);
const ARTIFACTS: &str = "artifacts";

fn key() -> FleetKey {
    FleetKey::new("cfg", WatchScope::All, AppendLogStore::BACKEND)
}

async fn transport(server: &NatsServer) -> ObjectStoreTransport {
    let conn = connect(&server.url()).await;
    ObjectStoreTransport::open(
        conn.client().unwrap(),
        ObjectStoreConfig::new(ARTIFACTS),
        key(),
    )
    .await
    .unwrap()
}

/// An exported artifact of a store with `rank` keys of `value_len` bytes,
/// at cursor `rank`.
fn artifact(dir: &Path, rank: u64, value_len: usize) -> (PathBuf, ArtifactManifest) {
    let store_dir = dir.join(format!("store-{rank}"));
    let (_, mut store) = AppendLogStore::open(&store_dir, &Default::default()).unwrap();
    let batch: Vec<KvUpdate> = (1..=rank)
        .map(|r| {
            KvUpdate::Put(KvEntry {
                key: format!("k{r}"),
                value: Bytes::from(vec![u8::try_from(r % 251).unwrap(); value_len]),
                version: VersionToken::from_u64(r),
                created: None,
                expires: None,
            })
        })
        .collect();
    store.apply(&batch, &WatchCursor::at(rank)).unwrap();
    let dest = dir.join(format!("artifact-{rank}"));
    let manifest = export(&mut store, &dest, &WatchScope::All).unwrap();
    store.close().unwrap();
    (dest, manifest)
}

fn moved(outcome: &PublishOutcome) -> String {
    match outcome {
        PublishOutcome::Moved { payload, .. } => payload.clone(),
        other => panic!("expected the pointer to move, got {other:?}"),
    }
}

/// The object names under `prefix` in the artifacts bucket, straight from
/// the server.
async fn object_names(server: &NatsServer, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let client = connect(&server.url()).await.client().unwrap();
    let store = async_nats::jetstream::new(client)
        .get_object_store(ARTIFACTS)
        .await
        .unwrap();
    let list = store.list().await.unwrap();
    let mut names: Vec<String> = list
        .map_ok(|i| i.name)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn an_artifact_round_trips_through_the_object_store_in_chunks() {
    let server = NatsServer::start().await;
    let t = transport(&server).await;
    let tmp = TempDir::new("fleet-round-trip");
    assert_eq!(t.pointer().await.unwrap(), PointerReading::Absent);
    assert!(t.newest().await.unwrap().is_none());

    // ~1 MiB of values: several of the object store's 128 KiB chunks.
    let (dir, manifest) = artifact(tmp.path(), 400, 2500);
    assert!(manifest.files.iter().map(|f| f.size).sum::<u64>() > 512 * 1024);
    let published = t.publish(&dir).await.unwrap();
    let payload = moved(&published.outcome);
    let client = connect(&server.url()).await.client().unwrap();
    let raw = async_nats::jetstream::new(client)
        .get_object_store(ARTIFACTS)
        .await
        .unwrap();
    let biggest = manifest.files.iter().max_by_key(|f| f.size).unwrap();
    let info = raw
        .info(t.object_name(&payload, &biggest.path))
        .await
        .unwrap();
    assert!(info.chunks > 1, "uploaded in one piece: {info:?}");

    // A second transport (another node) sees it through the pointer.
    let other = transport(&server).await;
    let newest = other.newest().await.unwrap().unwrap();
    assert_eq!(newest.id, payload);
    assert_eq!(newest.manifest, manifest);
    let fetched = other
        .fetch(&newest, &tmp.path().join("scratch"))
        .await
        .unwrap();
    let imported =
        import::<AppendLogStore>(&fetched, &tmp.path().join("imported"), &Default::default())
            .unwrap();
    assert_eq!(imported.cursor.revision(), Some(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_publishers_leave_the_pointer_at_the_highest_rank() {
    let server = NatsServer::start().await;
    let tmp = TempDir::new("fleet-race");
    // Ranks published out of order by separate nodes, all at once.
    let ranks = [7u64, 3, 9, 1, 8, 2, 6, 4, 5];
    let mut dirs = Vec::new();
    for rank in ranks {
        dirs.push(artifact(tmp.path(), rank, 200).0);
    }
    let mut nodes = Vec::new();
    for dir in dirs {
        nodes.push((transport(&server).await, dir));
    }
    // Every publisher reads the pointer before any of them writes it, so
    // only the CAS re-check under K12 keeps the highest rank.
    let start = Arc::new(tokio::sync::Barrier::new(nodes.len()));
    let mut tasks = Vec::new();
    for (t, dir) in nodes {
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            t.publish(&dir).await.unwrap()
        }));
    }
    for task in tasks {
        let published = task.await.unwrap();
        if let PublishOutcome::Stale { pointer_rank, .. } = published.outcome {
            assert!(pointer_rank > published.rank);
        }
    }
    let t = transport(&server).await;
    assert_eq!(t.pointer().await.unwrap().rank(), Some(9));
    // A late publish of an older artifact does not move it.
    let (old, _) = artifact(&tmp.path().join("late"), 2, 200);
    let late = t.publish(&old).await.unwrap();
    assert!(!late.moved(), "{late:?}");
    assert_eq!(t.newest().await.unwrap().unwrap().rank, 9);
}

#[tokio::test]
async fn a_tampered_object_is_refused_and_nothing_is_imported() {
    let server = NatsServer::start().await;
    let t = transport(&server).await;
    let tmp = TempDir::new("fleet-tamper");
    let (dir, manifest) = artifact(tmp.path(), 50, 100);
    let payload = moved(&t.publish(&dir).await.unwrap().outcome);

    // Overwrite one payload object with bytes of the same length.
    let file = &manifest.files[0];
    let name = t.object_name(&payload, &file.path);
    let mut bytes = std::fs::read(dir.join(&file.path)).unwrap();
    bytes[10] ^= 0xff;
    let client = connect(&server.url()).await.client().unwrap();
    let raw = async_nats::jetstream::new(client)
        .get_object_store(ARTIFACTS)
        .await
        .unwrap();
    raw.put(name.as_str(), &mut bytes.as_slice()).await.unwrap();

    let newest = t.newest().await.unwrap().unwrap();
    let scratch = tmp.path().join("scratch");
    let err = t.fetch(&newest, &scratch).await.unwrap_err();
    assert!(
        matches!(
            err,
            FleetError::Refused {
                reason: Refusal::DigestMismatch,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "the refused copy is gone"
    );
    // The pointer still names the (now damaged) artifact; nothing moved.
    assert_eq!(t.pointer().await.unwrap().rank(), Some(50));

    // A truncated object: refused on its announced size.
    raw.put(name.as_str(), &mut &bytes[..bytes.len() / 2])
        .await
        .unwrap();
    let err = t.fetch(&newest, &scratch).await.unwrap_err();
    assert!(
        matches!(
            err,
            FleetError::Refused {
                reason: Refusal::SizeMismatch { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn an_interrupted_upload_is_never_pointed_at() {
    let server = NatsServer::start().await;
    let t = transport(&server).await;
    let tmp = TempDir::new("fleet-interrupt");
    let (first, _) = artifact(tmp.path(), 10, 100);
    let at_first = moved(&t.publish(&first).await.unwrap().outcome);

    // Fails after the data object is uploaded: the bytes read do not
    // match the manifest.
    let (second, manifest) = artifact(tmp.path(), 20, 100);
    let path = second.join(&manifest.files[0].path);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let err = t.publish(&second).await.unwrap_err();
    assert!(matches!(err, FleetError::SourceChanged { .. }), "{err}");
    assert_eq!(
        t.pointer().await.unwrap(),
        PointerReading::At {
            payload: at_first.clone(),
            rank: 10
        }
    );
    let prefix = format!("{}/", key().prefix());
    assert!(
        object_names(&server, &prefix).await.len() > 2,
        "the failed upload left objects behind, unreferenced"
    );

    // Exporters killed at arbitrary points of their upload: whatever the
    // pointer names afterwards is complete and verifies.
    let mut rank = 20;
    let mut cut_short = 0;
    for cut_after_ms in [0, 1, 2, 5, 10, 20, 40, 80, 160] {
        rank += 10;
        let (dir, _) = artifact(tmp.path(), rank, 3000);
        let _ = tokio::time::timeout(Duration::from_millis(cut_after_ms), t.publish(&dir)).await;
        let newest = t.newest().await.unwrap().unwrap();
        if newest.rank < rank {
            cut_short += 1;
        }
        let scratch = tmp.path().join(format!("scratch-{rank}"));
        let fetched = t.fetch(&newest, &scratch).await.unwrap_or_else(|e| {
            panic!("after a cut at {cut_after_ms} ms the pointer names a bad payload: {e}")
        });
        import::<AppendLogStore>(
            &fetched,
            &tmp.path().join(format!("imported-{rank}")),
            &Default::default(),
        )
        .unwrap();
    }
    assert!(cut_short >= 1, "no upload was actually interrupted");
}

#[tokio::test]
async fn pruning_keeps_the_pointed_to_artifact() {
    let server = NatsServer::start().await;
    let t = transport(&server).await;
    let tmp = TempDir::new("fleet-prune");
    let mut ids = Vec::new();
    for rank in [3, 6, 9] {
        let (dir, _) = artifact(tmp.path(), rank, 100);
        ids.push(moved(&t.publish(&dir).await.unwrap().outcome));
    }
    // An upload above the pointer that was never pointed at.
    let (dir, manifest) = artifact(tmp.path(), 12, 100);
    let path = dir.join(&manifest.files[0].path);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    t.publish(&dir).await.unwrap_err();

    let report = t.prune(NonZeroUsize::MIN).await.unwrap();
    assert_eq!(report.target.as_deref(), Some(ids[2].as_str()));
    assert!(report.kept.contains(&ids[2]), "{report:?}");
    assert_eq!(report.pruned, ids[..2].to_vec());
    let prefix = format!("{}/", key().prefix());
    let left = object_names(&server, &prefix).await;
    assert!(
        left.iter()
            .all(|n| !n.contains(&ids[0]) && !n.contains(&ids[1])),
        "{left:?}"
    );
    let newest = t.newest().await.unwrap().unwrap();
    assert_eq!(newest.id, ids[2]);
    t.fetch(&newest, &tmp.path().join("scratch")).await.unwrap();
}

/// A mirror: an engine folding `bucket` into its own store and serving
/// exports, with a scheduled exporter publishing to the artifacts bucket.
struct Mirror {
    engine: tokio::task::JoinHandle<()>,
    engine_stop: CancellationToken,
    schedule: tokio::task::JoinHandle<slipstream_fleet::ExportStatus>,
    schedule_stop: CancellationToken,
    status: tokio::sync::watch::Receiver<slipstream_fleet::ExportStatus>,
}

async fn start_mirror(server: &NatsServer, bucket: &str, dir: &Path, holder: &str) -> Mirror {
    let conn = connect(&server.url()).await;
    let kv = open(&conn, StoreConfig::new(bucket)).await;
    let (_, store) = AppendLogStore::open(&dir.join("fold"), &Default::default()).unwrap();
    let (exporter, requests) = export_channel(1);
    let engine_stop = CancellationToken::new();
    let config = AppliedConfig::new(WatchScope::All)
        .store(store)
        .exports(requests)
        .shutdown(engine_stop.clone());
    let watch = AppliedWatch::new(kv.watcher(), config);
    let engine = tokio::spawn(async move {
        let _ = watch
            .run(handlers(
                |_: &KvUpdate| Some(()),
                |_: std::vec::Drain<'_, ()>| {},
            ))
            .await;
    });
    let transport: Arc<dyn ArtifactTransport> = Arc::new(
        ObjectStoreTransport::open(
            conn.client().unwrap(),
            ObjectStoreConfig::new(ARTIFACTS),
            FleetKey::new(bucket, WatchScope::All, AppendLogStore::BACKEND),
        )
        .await
        .unwrap(),
    );
    let schedule = ScheduledExport::new(
        exporter,
        transport,
        ScheduleConfig::new(Duration::from_millis(100), dir.join("scratch"))
            .keep_last(NonZeroUsize::new(2).unwrap())
            .lease_ttl(Duration::from_secs(3))
            .holder(holder),
    );
    let status = schedule.status();
    let schedule_stop = CancellationToken::new();
    let stop = schedule_stop.clone();
    let schedule = tokio::spawn(schedule.run(stop));
    Mirror {
        engine,
        engine_stop,
        schedule,
        schedule_stop,
        status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mirrors_export_on_a_schedule_with_one_lease_and_a_forward_pointer() {
    let server = NatsServer::start().await;
    let bucket = "fleet_sched";
    let conn = connect(&server.url()).await;
    let kv = open(&conn, StoreConfig::new(bucket)).await;
    let tmp = TempDir::new("fleet-sched");

    // Writes all along.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let w = kv.writer();
        let writing = Arc::clone(&writing);
        tokio::spawn(async move {
            let mut i = 0u64;
            while writing.load(Ordering::SeqCst) {
                w.put(&format!("k{}", i % 50), Bytes::from(format!("v{i}")))
                    .await
                    .unwrap();
                i += 1;
                tokio::task::yield_now().await;
            }
            i
        })
    };

    // Someone watching the pointer the whole time.
    let watcher_key = FleetKey::new(bucket, WatchScope::All, AppendLogStore::BACKEND);
    let observer_transport = ObjectStoreTransport::open(
        conn.client().unwrap(),
        ObjectStoreConfig::new(ARTIFACTS),
        watcher_key,
    )
    .await
    .unwrap();
    let observing = Arc::new(AtomicBool::new(true));
    let observer = {
        let observing = Arc::clone(&observing);
        tokio::spawn(async move {
            let mut seen: Vec<u64> = Vec::new();
            while observing.load(Ordering::SeqCst) {
                if let Some(rank) = observer_transport.pointer().await.unwrap().rank()
                    && seen.last() != Some(&rank)
                {
                    seen.push(rank);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        })
    };

    let a = start_mirror(&server, bucket, &tmp.path().join("a"), "mirror-a").await;
    let b = start_mirror(&server, bucket, &tmp.path().join("b"), "mirror-b").await;

    // One of them leads and publishes repeatedly; the other never does.
    let leader_published_thrice = wait_until(BOUND, || {
        let (sa, sb) = (a.status.borrow().clone(), b.status.borrow().clone());
        async move { sa.published >= 3 || sb.published >= 3 }
    })
    .await;
    assert!(
        leader_published_thrice,
        "a={:?} b={:?}",
        *a.status.borrow(),
        *b.status.borrow()
    );
    let (leader, follower) = if a.status.borrow().published >= 3 {
        (a, b)
    } else {
        (b, a)
    };
    // Let the follower run rounds while the leader holds the lease.
    let follower_rounds = follower.status.borrow().rounds;
    assert!(
        wait_until(BOUND, || {
            let rounds = follower.status.borrow().rounds;
            async move { rounds >= follower_rounds + 3 }
        })
        .await
    );
    {
        let f = follower.status.borrow();
        assert_eq!(
            f.published, 0,
            "the follower published without the lease: {f:?}"
        );
        assert!(
            matches!(f.last_outcome, Some(RoundOutcome::NotLeader { ref holder }) if holder.starts_with("mirror-")),
            "{f:?}"
        );
    }

    // The leader stops exporting (and releases its lease): the follower
    // takes over and the pointer keeps moving forward.
    leader.schedule_stop.cancel();
    let final_leader = leader.schedule.await.unwrap();
    assert!(!final_leader.holds_lease);
    let led_rank = final_leader.last_rank.unwrap();
    let took_over = wait_until(BOUND, || {
        let s = follower.status.borrow().clone();
        async move { s.published >= 1 && s.last_rank.is_some_and(|r| r > led_rank) }
    })
    .await;
    assert!(took_over, "follower: {:?}", *follower.status.borrow());

    writing.store(false, Ordering::SeqCst);
    let writes = writer.await.unwrap();
    assert!(writes > 100, "writes ran during the exports: {writes}");
    // With the writes stopped, rounds find nothing new to publish.
    let idle = wait_until(BOUND, || {
        let s = follower.status.borrow().clone();
        async move { matches!(s.last_outcome, Some(RoundOutcome::UpToDate { .. })) }
    })
    .await;
    assert!(idle, "follower: {:?}", *follower.status.borrow());
    let published = follower.status.borrow().published;
    let rounds = follower.status.borrow().rounds;
    assert!(
        wait_until(BOUND, || {
            let r = follower.status.borrow().rounds;
            async move { r >= rounds + 3 }
        })
        .await
    );
    assert_eq!(
        follower.status.borrow().published,
        published,
        "idle rounds publish nothing"
    );
    observing.store(false, Ordering::SeqCst);
    let seen = observer.await.unwrap();
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "the pointer moved backward: {seen:?}"
    );

    leader.engine_stop.cancel();
    let _ = leader.engine.await;
    follower.schedule_stop.cancel();
    let _ = follower.schedule.await;
    follower.engine_stop.cancel();
    let _ = follower.engine.await;
}

/// The engine's restore (R3) pulling from the object store through
/// `TransportSource`: a node down across an aged-out gap is repaired from
/// another node's published artifact. A tampered artifact is refused first
/// and the fold is left exactly as committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_pulls_a_verified_artifact_from_the_object_store() {
    use harness::{App, Live, finish, fold_of, open_store, run_to, start_node, synced_store};
    use slipstream_applied::{AppliedError, OnExpiry, RepairMode};
    use slipstream_fleet::TransportSource;

    let live = Live::start(
        "fleet-restore",
        StoreConfig::new("repair").max_age(Duration::from_secs(3)),
    )
    .await;
    live.put("a", "v1").await; // 1
    live.put("b", "v1").await; // 2
    let store = synced_store::<AppendLogStore>(&live, 2).await;
    live.put("g", "v1").await; // 3: the gap write
    live.delete("b").await; // 4: the real delete

    // Another node folds up to 4 and publishes its export.
    let key = FleetKey::new("repair", WatchScope::All, AppendLogStore::BACKEND);
    let transport = Arc::new(
        ObjectStoreTransport::open(
            live.admin.client().clone(),
            ObjectStoreConfig::new(ARTIFACTS),
            key,
        )
        .await
        .unwrap(),
    );
    let (_, exporter) = open_store::<AppendLogStore>(&live.dir.path().join("exporter")).await;
    let node = start_node(&live, exporter, &App::default(), harness::plain);
    let mut exporter = run_to(node, 4).await;
    let exported_dir = live.dir.path().join("exported");
    let manifest = exporter.export_to(&exported_dir, &WatchScope::All).unwrap();
    let exported = fold_of(&exporter);
    drop(exporter);
    let payload = moved(&transport.publish(&exported_dir).await.unwrap().outcome);

    assert_eq!(live.wait_first_sequence_above(4).await, 5);
    let last = live.put("h", "v1").await; // 5

    // Tamper with the published data: the restore refuses it.
    let file = &manifest.files[0];
    let mut bytes = std::fs::read(exported_dir.join(&file.path)).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let raw = async_nats::jetstream::new(live.admin.client().clone())
        .get_object_store(ARTIFACTS)
        .await
        .unwrap();
    let name = transport.object_name(&payload, &file.path);
    raw.put(name.as_str(), &mut bytes.as_slice()).await.unwrap();

    let before = fold_of(&store);
    let restore = |source: TransportSource| {
        move |c: AppliedConfig<AppendLogStore>| {
            c.on_expiry(OnExpiry::Repair(RepairMode::Restore))
                .restore_from(source)
        }
    };
    let source = TransportSource::new(Arc::clone(&transport) as Arc<dyn ArtifactTransport>);
    let node = start_node(&live, store, &App::default(), restore(source));
    let finished = finish(node).await;
    match &finished.result {
        Err(AppliedError::RestoreFailed { source, .. }) => {
            let refused = source
                .downcast_ref::<FleetError>()
                .is_some_and(FleetError::is_refusal);
            assert!(refused, "{source}");
        }
        other => panic!("expected a refused restore, got {other:?}"),
    }
    let store = finished.store.expect("the store is handed back");
    assert_eq!(fold_of(&store), before, "the refusal changed nothing");

    // The artifact republished intact (same rank: K12 allows it).
    transport.publish(&exported_dir).await.unwrap();
    let app = App::resuming(&store);
    let source = TransportSource::new(Arc::clone(&transport) as Arc<dyn ArtifactTransport>);
    let node = start_node(&live, store, &app, restore(source));
    let store = run_to(node, last).await;
    let mut expected = exported;
    expected.insert("h".into(), (Bytes::from_static(b"v1"), Some(last)));
    let fold = fold_of(&store);
    assert_eq!(fold, expected, "the exporter's fold plus the delta");
    assert!(fold.contains_key("g") && !fold.contains_key("b"));
}
