//! The conformance cases every backend runs.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use slipstream_kv::{
    BucketIdentity, KvEntry, KvUpdate, Timestamp, VersionToken, WatchCursor, WatchScope,
};

use super::{OptionsFor, dump, replay, updates};
use crate::artifact::{Handover, import, import_open, import_open_with};
use crate::error::SnapshotError;
use crate::store::{Durability, SnapshotStore, StoredEntry};

pub(super) fn open<S: SnapshotStore>(dir: &Path, options: OptionsFor<S>) -> (WatchCursor, S) {
    S::open(dir, &options(Durability::NoFsync)).unwrap_or_else(|e| panic!("open {dir:?}: {e}"))
}

pub(super) fn put(key: &str, value: &[u8], rev: u64) -> KvUpdate {
    KvUpdate::Put(KvEntry {
        key: key.into(),
        value: Bytes::copy_from_slice(value),
        version: VersionToken::from_u64(rev),
        created: None,
        expires: None,
    })
}

pub(super) fn entry(value: &[u8], rev: u64) -> StoredEntry {
    StoredEntry {
        value: Bytes::copy_from_slice(value),
        version: VersionToken::from_u64(rev),
        expires: None,
    }
}

pub(super) fn temp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

pub(super) fn apply<S: SnapshotStore>(store: &mut S, batch: &[KvUpdate], cursor: &WatchCursor) {
    store
        .apply(batch, cursor)
        .unwrap_or_else(|e| panic!("apply up to {cursor:?}: {e}"));
}

/// A fresh store opens at no cursor and holds nothing.
pub fn fresh_store_opens_empty_at_no_cursor<S: SnapshotStore>(options: OptionsFor<S>) {
    let tmp = temp();
    let (cursor, store) = open::<S>(&tmp.path().join("s"), options);
    assert_eq!(cursor, WatchCursor::none());
    assert_eq!(store.cursor(), &WatchCursor::none());
    assert!(store.is_empty());
    assert_eq!(store.get("a").unwrap_or_else(|e| panic!("{e}")), None);
    assert!(dump(&store).is_empty());
}

/// A batch and its cursor become visible together, in memory and after
/// reopening; an empty batch moves only the cursor.
pub fn apply_commits_data_and_cursor_together<S: SnapshotStore>(options: OptionsFor<S>) {
    let tmp = temp();
    let dir = tmp.path().join("s");
    let (_, mut store) = open::<S>(&dir, options);
    let batch = [put("a", b"1", 1), put("b", b"2", 2), put("a", b"3", 3)];
    apply(&mut store, &batch, &WatchCursor::at(3));
    assert_eq!(store.cursor(), &WatchCursor::at(3));
    assert_eq!(store.len(), 2);
    let get = |s: &S, k| s.get(k).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get(&store, "a"), Some(entry(b"3", 3)));
    assert_eq!(get(&store, "b"), Some(entry(b"2", 2)));
    apply(&mut store, &[], &WatchCursor::at(7));
    store.close().unwrap_or_else(|e| panic!("close: {e}"));

    let (cursor, store) = open::<S>(&dir, options);
    assert_eq!(
        cursor,
        WatchCursor::at(7),
        "cursor-only commit survives reopen"
    );
    assert_eq!(get(&store, "a"), Some(entry(b"3", 3)));
    assert_eq!(get(&store, "b"), Some(entry(b"2", 2)));
    assert_eq!(store.len(), 2);
    let stats = store.stats();
    assert_eq!(stats.keys, 2);
}

/// Deletes, purges and synthetic deletes (unknown version) remove keys;
/// removing an absent key is harmless.
pub fn deletes_and_purges_remove_keys<S: SnapshotStore>(options: OptionsFor<S>) {
    let tmp = temp();
    let dir = tmp.path().join("s");
    let (_, mut store) = open::<S>(&dir, options);
    apply(
        &mut store,
        &[
            put("a", b"1", 1),
            put("b", b"2", 2),
            put("c", b"3", 3),
            put("d", b"4", 4),
        ],
        &WatchCursor::at(4),
    );
    let marker = |key: &str, rev| slipstream_kv::KvMarker {
        key: key.into(),
        version: VersionToken::from_u64(rev),
        created: None,
    };
    apply(
        &mut store,
        &[
            KvUpdate::Delete(marker("a", 5)),
            KvUpdate::Purge(marker("b", 6)),
            KvUpdate::synthetic_delete("c"),
            KvUpdate::synthetic_delete("never-written"),
        ],
        &WatchCursor::at(6),
    );
    let expected: BTreeMap<_, _> = [("d".to_owned(), entry(b"4", 4))].into();
    assert_eq!(dump(&store), expected);
    drop(store);
    let (cursor, store) = open::<S>(&dir, options);
    assert_eq!(cursor, WatchCursor::at(6));
    assert_eq!(dump(&store), expected);
}

/// `range` and the streaming iteration return exactly the keys under a
/// prefix, in ascending byte order; a break stops the iteration.
pub fn range_and_iteration_follow_key_order<S: SnapshotStore>(options: OptionsFor<S>) {
    let tmp = temp();
    let (_, mut store) = open::<S>(&tmp.path().join("s"), options);
    let keys = [
        "b.x", "a.b.c", "a.", "ab", "a.a", "a", "a.b", "a.z", "b", "A.a", "a-b",
    ];
    let batch: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| put(k, k.as_bytes(), i as u64 + 1))
        .collect();
    apply(&mut store, &batch, &WatchCursor::at(keys.len() as u64));

    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort_unstable();
    for prefix in ["", "a.", "a", "a.b", "b.", "c", "A."] {
        let want: Vec<&str> = sorted
            .iter()
            .copied()
            .filter(|k| k.starts_with(prefix))
            .collect();
        let got = store.range(prefix).unwrap_or_else(|e| panic!("{e}"));
        let got_keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(got_keys, want, "range({prefix:?})");
        for (k, e) in &got {
            assert_eq!(e.value.as_ref(), k.as_bytes());
        }
        let mut streamed = Vec::new();
        let done = store
            .for_each_in_range(prefix, &mut |k, _| {
                streamed.push(k.to_owned());
                ControlFlow::Continue(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(done);
        assert_eq!(streamed, want, "for_each_in_range({prefix:?})");
    }
    let mut seen = 0;
    let done = store
        .for_each_in_range("a", &mut |_, _| {
            seen += 1;
            if seen == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!done, "a broken iteration reports it did not finish");
    assert_eq!(seen, 2, "nothing is visited after a break");
}

/// The fold is a pure function of the updates: random sequences split into
/// random batches (two different splits per sequence) give the oracle's
/// fold, before and after reopening.
pub fn fold_is_pure_under_any_batching<S: SnapshotStore>(options: OptionsFor<S>) {
    for seed in 0..12u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let count = rng.random_range(1..400u64);
        let keyspace = rng.random_range(1..60u64);
        let log = updates(seed, 1, count, keyspace);
        let mut oracle = BTreeMap::new();
        replay(&mut oracle, &log);
        let tmp = temp();
        for split in 0..2 {
            let dir = tmp.path().join(format!("split-{split}"));
            let (_, mut store) = open::<S>(&dir, options);
            let mut at = 0usize;
            while at < log.len() {
                // Batches of 0 (cursor-only) up to 64 updates.
                let n = rng.random_range(0..=64usize).min(log.len() - at);
                let end = at + n;
                apply(&mut store, &log[at..end], &WatchCursor::at(end as u64));
                at = end;
            }
            assert_eq!(dump(&store), oracle, "seed {seed} split {split}: live fold");
            assert_eq!(store.len(), oracle.len() as u64);
            drop(store);
            let (cursor, store) = open::<S>(&dir, options);
            assert_eq!(cursor, WatchCursor::at(count));
            assert_eq!(
                dump(&store),
                oracle,
                "seed {seed} split {split}: reopened fold"
            );
        }
    }
}

fn memo_cursor(rev: u64) -> WatchCursor {
    WatchCursor::at(rev)
        .with_seen_evicting()
        .with_identity(BucketIdentity {
            stream: "KV_conformance".into(),
            created: Timestamp::from_unix_nanos(1_700_000_000_000_000_000),
        })
        .with_message_time(Some(Timestamp::from_unix_nanos(
            1_800_000_000_000_000_000 + rev,
        )))
}

/// Reopening returns the cursor of the last commit, memo included, not an
/// earlier one.
pub fn reopen_returns_last_committed_cursor_with_memo<S: SnapshotStore>(options: OptionsFor<S>) {
    let tmp = temp();
    let dir = tmp.path().join("s");
    let (_, mut store) = open::<S>(&dir, options);
    for rev in 1..=20u64 {
        apply(
            &mut store,
            &[put("k", &rev.to_be_bytes(), rev)],
            &memo_cursor(rev),
        );
    }
    drop(store);
    let (cursor, store) = open::<S>(&dir, options);
    assert_eq!(cursor, memo_cursor(20));
    assert!(cursor.seen_evicting() && cursor.identity().is_some());
    assert_eq!(store.cursor(), &memo_cursor(20));
    drop(store);
    // And again after another reopen cycle with nothing applied.
    let (cursor, _store) = open::<S>(&dir, options);
    assert_eq!(cursor, memo_cursor(20));
}

/// Empty values are stored as they came; a 4 MiB value round-trips.
pub fn empty_and_large_values_round_trip<S: SnapshotStore>(options: OptionsFor<S>) {
    let tmp = temp();
    let dir = tmp.path().join("s");
    let (_, mut store) = open::<S>(&dir, options);
    let big: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let unknown = KvUpdate::Put(KvEntry {
        key: "unknown-version".into(),
        value: Bytes::from_static(b"v"),
        version: VersionToken::unknown(),
        created: None,
        expires: None,
    });
    apply(
        &mut store,
        &[put("empty", b"", 1), put("big", &big, 2), unknown],
        &WatchCursor::at(3),
    );
    drop(store);
    let (_, store) = open::<S>(&dir, options);
    let get = |k| store.get(k).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get("empty"), Some(entry(b"", 1)));
    assert_eq!(get("big").map(|e| e.value.len()), Some(big.len()));
    assert_eq!(get("big").map(|e| e.value), Some(Bytes::from(big)));
    assert_eq!(
        get("unknown-version").map(|e| e.version),
        Some(VersionToken::unknown())
    );
}

/// Export then import: the imported store has the identical fold and
/// cursor, the manifest carries the scope; the source keeps working.
pub fn export_then_import_gives_identical_fold_and_cursor<S: SnapshotStore>(
    options: OptionsFor<S>,
) {
    let tmp = temp();
    let (_, mut store) = open::<S>(&tmp.path().join("s"), options);
    let log = updates(42, 1, 2_000, 300);
    for (i, chunk) in log.chunks(100).enumerate() {
        apply(&mut store, chunk, &memo_cursor((i as u64 + 1) * 100));
    }
    let scope = WatchScope::Prefixes(vec!["k.".into(), "other.".into()]);
    let artifact = tmp.path().join("artifact");
    let exported = store
        .export_to(&artifact, &scope)
        .unwrap_or_else(|e| panic!("export: {e}"));
    assert_eq!(exported.cursor, memo_cursor(2_000));
    assert!(artifact.join(crate::MANIFEST_FILE).is_file());

    // The source keeps committing after an export; the artifact does not move.
    apply(
        &mut store,
        &[put("k.after", b"x", 2_001)],
        &WatchCursor::at(2_001),
    );

    let dest = tmp.path().join("restored");
    let manifest = import::<S>(&artifact, &dest, &options(Durability::NoFsync))
        .unwrap_or_else(|e| panic!("import: {e}"));
    assert_eq!(manifest.cursor, memo_cursor(2_000));
    assert_eq!(manifest.scope, scope);
    assert_eq!(manifest, exported);
    let (cursor, restored) = open::<S>(&dest, options);
    assert_eq!(cursor, memo_cursor(2_000));
    let mut oracle = BTreeMap::new();
    replay(&mut oracle, &log);
    assert_eq!(dump(&restored), oracle);

    // Importing into an existing empty directory also works.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap_or_else(|e| panic!("{e}"));
    import::<S>(&artifact, &empty, &options(Durability::NoFsync))
        .unwrap_or_else(|e| panic!("import into empty dir: {e}"));

    // The opening import hands back the same fold, open and writable.
    let (manifest, mut opened) = import_open::<S>(
        &artifact,
        &tmp.path().join("opened"),
        &options(Durability::NoFsync),
    )
    .unwrap_or_else(|e| panic!("import_open: {e}"));
    assert_eq!(manifest, exported);
    assert_eq!(opened.cursor(), &memo_cursor(2_000));
    assert_eq!(dump(&opened), oracle);
    apply(
        &mut opened,
        &[put("k.after", b"y", 2_001)],
        &WatchCursor::at(2_001),
    );
    assert_eq!(opened.cursor().revision(), Some(2_001));

    // A moving import (a download handed over) gives the same fold, and
    // the artifact's data files are gone from where they were.
    let handed = tmp.path().join("handed");
    copy_tree(&artifact, &handed);
    let (manifest, moved) = import_open_with::<S>(
        &handed,
        &tmp.path().join("moved"),
        &options(Durability::NoFsync),
        Handover::Move,
    )
    .unwrap_or_else(|e| panic!("import_open_with Move: {e}"));
    assert_eq!(manifest, exported);
    assert_eq!(moved.cursor(), &memo_cursor(2_000));
    assert_eq!(dump(&moved), oracle);
    for file in &manifest.files {
        assert!(
            !handed.join(&file.path).exists(),
            "{} was not moved",
            file.path
        );
    }
}

/// Copy the directory tree at `from` to `to`.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{e}"));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{e}")) {
        let entry = entry.unwrap_or_else(|e| panic!("{e}"));
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// Export refuses a destination that exists and is not empty, and leaves
/// neither it nor a staging directory changed.
pub fn export_refuses_a_non_empty_destination<S: SnapshotStore>(options: OptionsFor<S>) {
    let tmp = temp();
    let (_, mut store) = open::<S>(&tmp.path().join("s"), options);
    apply(&mut store, &[put("a", b"1", 1)], &WatchCursor::at(1));
    let dest = tmp.path().join("dest");
    std::fs::create_dir(&dest).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dest.join("keep"), b"x").unwrap_or_else(|e| panic!("{e}"));
    let err = store.export_to(&dest, &WatchScope::All);
    assert!(
        matches!(err, Err(SnapshotError::DestinationNotEmpty { .. })),
        "{err:?}"
    );
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "no staging left: {names:?}"
    );
    assert_eq!(std::fs::read(dest.join("keep")).ok(), Some(b"x".to_vec()));
}

/// A batch refused for an update no store may hold (a value over the
/// 64 MiB ceiling) changes neither the data nor the cursor, in memory or
/// on disk: apply is all or nothing.
pub fn refused_batch_changes_nothing<S: SnapshotStore>(options: OptionsFor<S>) {
    let tmp = temp();
    let dir = tmp.path().join("s");
    let (_, mut store) = open::<S>(&dir, options);
    apply(&mut store, &[put("a", b"1", 1)], &WatchCursor::at(1));
    let huge = vec![0u8; crate::MAX_VALUE_LEN + 1];
    let refused = store.apply(
        &[put("a", b"2", 2), put("b", b"3", 3), put("c", &huge, 4)],
        &WatchCursor::at(4),
    );
    assert!(
        matches!(refused, Err(SnapshotError::InvalidUpdate { .. })),
        "{refused:?}"
    );
    let expected: BTreeMap<_, _> = [("a".to_owned(), entry(b"1", 1))].into();
    assert_eq!(store.cursor(), &WatchCursor::at(1));
    assert_eq!(dump(&store), expected);
    drop(store);
    let (cursor, store) = open::<S>(&dir, options);
    assert_eq!(cursor, WatchCursor::at(1));
    assert_eq!(dump(&store), expected);
}
