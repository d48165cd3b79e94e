//! The local-directory transport: publish, newest, verified fetch, the
//! pointer's K12 guard, pruning, the export lease, and refusals of tampered
//! or hostile stores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use slipstream_applied::RestoreSource;
use slipstream_fleet::{
    ArtifactTransport, FleetError, FleetKey, LeaseGrant, LocalDirTransport, PointerReading,
    PublishOutcome, Refusal, TransportSource,
};
use slipstream_kv::{KvEntry, KvUpdate, VersionToken, WatchCursor, WatchScope};
use slipstream_snapshot::{
    AppendLogStore, ArtifactManifest, MANIFEST_FILE, SnapshotStore, export, import,
};

fn key() -> FleetKey {
    FleetKey::new("cfg", WatchScope::All, AppendLogStore::BACKEND)
}

/// An exported artifact of a store holding `k0..k{rank}` at cursor `rank`.
fn artifact(dir: &Path, rank: u64) -> (PathBuf, ArtifactManifest) {
    let store_dir = dir.join(format!("store-{rank}"));
    let (_, mut store) = AppendLogStore::open(&store_dir, &Default::default()).unwrap();
    let batch: Vec<KvUpdate> = (1..=rank)
        .map(|r| {
            KvUpdate::Put(KvEntry {
                key: format!("k{r}"),
                value: Bytes::from(format!("value {r}").repeat(20)),
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

/// Flip a byte of an exported file (same size), without touching the
/// store it may be hard-linked to.
fn corrupt_after_export(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, &bytes).unwrap();
}

fn moved_payload(outcome: &PublishOutcome) -> String {
    match outcome {
        PublishOutcome::Moved { payload, .. } => payload.clone(),
        other => panic!("expected the pointer to move, got {other:?}"),
    }
}

#[tokio::test]
async fn a_published_artifact_is_fetched_verified_and_imports() {
    let tmp = tempfile::tempdir().unwrap();
    let t = LocalDirTransport::new(tmp.path().join("store"), key());
    assert_eq!(t.pointer().await.unwrap(), PointerReading::Absent);
    assert!(t.newest().await.unwrap().is_none());

    let (dir, manifest) = artifact(tmp.path(), 5);
    let published = t.publish(&dir).await.unwrap();
    assert_eq!(published.rank, 5);
    let payload = moved_payload(&published.outcome);

    let newest = t.newest().await.unwrap().unwrap();
    assert_eq!(newest.id, payload);
    assert_eq!(newest.manifest, manifest);
    let fetched = t.fetch(&newest, &tmp.path().join("scratch")).await.unwrap();
    let imported =
        import::<AppendLogStore>(&fetched, &tmp.path().join("imported"), &Default::default())
            .unwrap();
    assert_eq!(imported.cursor.revision(), Some(5));
}

#[tokio::test]
async fn the_pointer_never_moves_backward() {
    let tmp = tempfile::tempdir().unwrap();
    let t = LocalDirTransport::new(tmp.path().join("store"), key());
    let (ten, _) = artifact(tmp.path(), 10);
    let (five, _) = artifact(tmp.path(), 5);
    let at_ten = moved_payload(&t.publish(&ten).await.unwrap().outcome);

    let late = t.publish(&five).await.unwrap();
    assert_eq!(
        late.outcome,
        PublishOutcome::Stale {
            pointer_rank: 10,
            uploaded: None
        }
    );
    assert_eq!(
        t.pointer().await.unwrap(),
        PointerReading::At {
            payload: at_ten,
            rank: 10
        }
    );
    // Nothing was uploaded for the stale artifact.
    let payloads = std::fs::read_dir(t.payload_dir("x").parent().unwrap())
        .unwrap()
        .count();
    assert_eq!(payloads, 1);
}

#[tokio::test]
async fn an_equal_rank_republish_moves_the_pointer() {
    let tmp = tempfile::tempdir().unwrap();
    let t = LocalDirTransport::new(tmp.path().join("store"), key());
    let (a, _) = artifact(tmp.path(), 3);
    let first = moved_payload(&t.publish(&a).await.unwrap().outcome);
    let second = moved_payload(&t.publish(&a).await.unwrap().outcome);
    assert_ne!(first, second);
    assert_eq!(t.pointer().await.unwrap().rank(), Some(3));
}

#[tokio::test]
async fn a_tampered_data_object_is_refused_and_nothing_is_left() {
    let tmp = tempfile::tempdir().unwrap();
    let t = LocalDirTransport::new(tmp.path().join("store"), key());
    let (dir, manifest) = artifact(tmp.path(), 4);
    let payload = moved_payload(&t.publish(&dir).await.unwrap().outcome);
    let file = &manifest.files[0];
    let stored = t.payload_dir(&payload).join(&file.path);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[0] ^= 0xff; // Same size, different content.
    std::fs::write(&stored, &bytes).unwrap();

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
        "no partial copy"
    );

    // A shorter object is refused before it is read.
    std::fs::write(&stored, &bytes[..bytes.len() - 1]).unwrap();
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
    // A missing one too.
    std::fs::remove_file(&stored).unwrap();
    let err = t.fetch(&newest, &scratch).await.unwrap_err();
    assert!(
        matches!(
            err,
            FleetError::Refused {
                reason: Refusal::MissingObject,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_manifest_swapped_under_the_pointer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = LocalDirTransport::new(tmp.path().join("store"), key());
    let (dir, _) = artifact(tmp.path(), 4);
    let (other, _) = artifact(tmp.path(), 9);
    let payload = moved_payload(&t.publish(&dir).await.unwrap().outcome);
    // A consistent but different manifest: only the pointer's digest tells.
    std::fs::copy(
        other.join(MANIFEST_FILE),
        t.payload_dir(&payload).join(MANIFEST_FILE),
    )
    .unwrap();
    let err = t.newest().await.unwrap_err();
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
}

#[tokio::test]
async fn a_failed_upload_leaves_the_pointer_on_the_last_complete_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let t = LocalDirTransport::new(tmp.path().join("store"), key());
    let (one, _) = artifact(tmp.path(), 1);
    let at_one = moved_payload(&t.publish(&one).await.unwrap().outcome);

    // A file changed after export (same size, other bytes): the uploaded
    // bytes do not match the manifest.
    let (two, manifest) = artifact(tmp.path(), 2);
    corrupt_after_export(&two.join(&manifest.files[0].path));
    let err = t.publish(&two).await.unwrap_err();
    assert!(matches!(err, FleetError::SourceChanged { .. }), "{err}");

    // A file gone midway.
    let (three, manifest) = artifact(tmp.path(), 3);
    std::fs::remove_file(three.join(&manifest.files[0].path)).unwrap();
    assert!(matches!(
        t.publish(&three).await.unwrap_err(),
        FleetError::Io { .. }
    ));

    assert_eq!(
        t.pointer().await.unwrap(),
        PointerReading::At {
            payload: at_one,
            rank: 1
        }
    );
    let newest = t.newest().await.unwrap().unwrap();
    t.fetch(&newest, &tmp.path().join("scratch")).await.unwrap();
}

#[tokio::test]
async fn pruning_keeps_the_newest_and_always_the_target() {
    let tmp = tempfile::tempdir().unwrap();
    let t = LocalDirTransport::new(tmp.path().join("store"), key());
    let mut ids = Vec::new();
    for rank in 1..=4 {
        let (dir, _) = artifact(tmp.path(), rank);
        ids.push(moved_payload(&t.publish(&dir).await.unwrap().outcome));
    }
    let report = t.prune(NonZeroUsize::new(2).unwrap()).await.unwrap();
    assert_eq!(report.pruned, ids[..2].to_vec());
    assert_eq!(report.kept, ids[2..].to_vec());
    assert!(!t.payload_dir(&ids[0]).exists());

    // An orphan above the pointer (an upload that never got pointed at)
    // pushes the target out of the newest 1; the target stays anyway, and
    // the orphan (at or above the pointer's rank) stays too.
    let (dir, manifest) = artifact(tmp.path(), 9);
    corrupt_after_export(&dir.join(&manifest.files[0].path));
    t.publish(&dir).await.unwrap_err();
    let report = t.prune(NonZeroUsize::MIN).await.unwrap();
    assert!(report.kept.contains(&ids[3]), "{report:?}");
    assert_eq!(report.kept.len(), 2, "{report:?}");
    assert_eq!(report.pruned, vec![ids[2].clone()]);
    let newest = t.newest().await.unwrap().unwrap();
    assert_eq!(newest.id, ids[3]);
    t.fetch(&newest, &tmp.path().join("scratch")).await.unwrap();
}

#[tokio::test]
async fn the_export_lease_is_exclusive_until_it_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let a = LocalDirTransport::new(&root, key());
    let b = LocalDirTransport::new(&root, key());
    let hour = Duration::from_secs(3600);
    assert!(matches!(
        a.acquire_lease("a", hour).await.unwrap(),
        LeaseGrant::Acquired { .. }
    ));
    let held = b.acquire_lease("b", hour).await.unwrap();
    assert!(
        matches!(&held, LeaseGrant::HeldElsewhere { holder, .. } if holder == "a"),
        "{held:?}"
    );
    assert!(matches!(
        a.acquire_lease("a", Duration::ZERO).await.unwrap(),
        LeaseGrant::Renewed { .. }
    ));
    // a's lease has now expired: b takes it over.
    let took = b.acquire_lease("b", hour).await.unwrap();
    assert!(
        matches!(&took, LeaseGrant::TakenOver { from: Some(from), .. } if from == "a"),
        "{took:?}"
    );
    // a's release does not touch b's lease.
    a.release_lease("a").await.unwrap();
    assert!(!a.acquire_lease("a", hour).await.unwrap().is_held());
    b.release_lease("b").await.unwrap();
    assert!(matches!(
        a.acquire_lease("a", hour).await.unwrap(),
        LeaseGrant::Acquired { .. }
    ));
}

#[tokio::test]
async fn a_corrupt_lease_is_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let t = LocalDirTransport::new(&root, key());
    t.acquire_lease("a", Duration::from_secs(3600))
        .await
        .unwrap();
    let lease = root.join("meta").join(format!("{}.lease", key().prefix()));
    let mut bytes = std::fs::read(&lease).unwrap();
    let newline = bytes.iter().position(|b| *b == b'\n').unwrap();
    bytes.truncate(newline + 1);
    bytes.extend_from_slice(b"{not json");
    std::fs::write(&lease, bytes).unwrap();
    let grant = t
        .acquire_lease("b", Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(
        matches!(grant, LeaseGrant::TakenOver { from: None, .. }),
        "{grant:?}"
    );
}

#[tokio::test]
async fn a_hostile_pointer_is_corrupt_and_the_next_publish_replaces_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let t = LocalDirTransport::new(&root, key());
    let (dir, _) = artifact(tmp.path(), 2);
    t.publish(&dir).await.unwrap();
    let pointer = root
        .join("meta")
        .join(format!("{}.pointer", key().prefix()));
    let text = std::fs::read_to_string(&pointer).unwrap();
    let (head, _) = text.split_once('\n').unwrap();
    std::fs::write(
        &pointer,
        format!(
            "{head}\n{{\"payload\":\"../../../etc\",\"rank\":99,\"manifest_blake3\":\"{}\"}}",
            "0".repeat(64)
        ),
    )
    .unwrap();
    assert_eq!(t.pointer().await.unwrap(), PointerReading::Corrupt);
    assert!(matches!(
        t.newest().await.unwrap_err(),
        FleetError::PointerCorrupt { .. }
    ));
    // Nothing is pruned without a readable pointer.
    assert!(t.prune(NonZeroUsize::MIN).await.unwrap().pruned.is_empty());
    let (one, _) = artifact(tmp.path(), 1);
    assert!(t.publish(&one).await.unwrap().moved());
    assert_eq!(t.newest().await.unwrap().unwrap().rank, 1);
}

#[tokio::test]
async fn an_artifact_of_another_scope_is_not_published() {
    let tmp = tempfile::tempdir().unwrap();
    let other = FleetKey::new(
        "cfg",
        WatchScope::Prefix("a.".into()),
        AppendLogStore::BACKEND,
    );
    let t = LocalDirTransport::new(tmp.path().join("store"), other);
    let (dir, _) = artifact(tmp.path(), 2);
    assert!(matches!(
        t.publish(&dir).await.unwrap_err(),
        FleetError::WrongArtifact { .. }
    ));
}

#[tokio::test]
async fn the_restore_source_adapter_fetches_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let t = Arc::new(LocalDirTransport::new(tmp.path().join("store"), key()));
    let (dir, manifest) = artifact(tmp.path(), 7);
    t.publish(&dir).await.unwrap();
    let source = TransportSource::new(t);
    let newest = source.newest().await.unwrap().unwrap();
    assert_eq!(newest, manifest);
    let fetched = source
        .fetch(&newest, &tmp.path().join("scratch"))
        .await
        .unwrap();
    import::<AppendLogStore>(&fetched, &tmp.path().join("imported"), &Default::default()).unwrap();
}
