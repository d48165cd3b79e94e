//! Store cases beyond the fold: locking, fold totals and update limits
//! (every store), then what the LSM stores (fjall, RocksDB) share: backend
//! markers, read handles and settle. The backend-specific part of an LSM
//! case (writing a marker with the raw engine API, the read handle, settle)
//! comes in as a function.

use std::ops::ControlFlow;
use std::path::Path;

use slipstream_kv::{KvMarker, KvUpdate, VersionToken, WatchCursor};

use super::cases::{apply, entry, open, put, temp};
use super::{OptionsFor, dump};
use crate::applog::{AppendLogOptions, AppendLogStore};
use crate::error::SnapshotError;
use crate::store::{Durability, EntryRef, SnapshotStore, StoredEntry};

/// Writes a backend marker (e.g. `"rocksdb/1"`) into a fresh database at
/// the given directory with the backend's raw engine API, as a store of
/// that backend would record it.
pub type MarkerWriter = fn(&Path, &str);

/// A backend's settle: flush and compact so that reads and the next open
/// find the store in its steady state.
pub type Settle<S> = fn(&mut S) -> Result<(), SnapshotError>;

/// A read handle an LSM store hands out: reads the last commit from any
/// thread while the store goes on committing. The backends' handles have
/// these methods inherently; [`lsm_store_conformance!`](crate::lsm_store_conformance)
/// wraps them.
pub trait ReadHandle: Clone + Send + 'static {
    /// The entry under `key`, if any.
    ///
    /// # Errors
    /// Backend read failures.
    fn get(&self, key: &str) -> Result<Option<StoredEntry>, SnapshotError>;

    /// Every `(key, entry)` under `prefix`, in key order.
    ///
    /// # Errors
    /// Backend read failures.
    fn range(&self, prefix: &str) -> Result<Vec<(String, StoredEntry)>, SnapshotError>;

    /// Streaming iteration under `prefix`; returns whether it ran to the end.
    ///
    /// # Errors
    /// Backend read failures.
    fn for_each_in_range(
        &self,
        prefix: &str,
        f: &mut dyn FnMut(&str, EntryRef<'_>) -> ControlFlow<()>,
    ) -> Result<bool, SnapshotError>;

    /// The cursor of the last commit.
    ///
    /// # Errors
    /// Backend read failures.
    fn cursor(&self) -> Result<WatchCursor, SnapshotError>;
}

fn delete(key: &str, rev: u64) -> KvUpdate {
    KvUpdate::Delete(KvMarker {
        key: key.into(),
        version: VersionToken::from_u64(rev),
        created: None,
    })
}

/// The error of opening `dir`, which must fail.
fn open_err<S: SnapshotStore>(dir: &Path, options: &S::Options) -> SnapshotError {
    match S::open(dir, options) {
        Ok(_) => panic!("opening {dir:?} as {} succeeded", S::BACKEND),
        Err(e) => e,
    }
}

fn names(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {dir:?}: {e}"))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("list {dir:?}: {e}"))
                .file_name()
        })
        .collect();
    names.sort();
    names
}

/// A second open of a directory another handle holds fails with
/// [`SnapshotError::Locked`].
pub fn second_open_of_a_held_store_is_locked<S: SnapshotStore>(options: OptionsFor<S>) {
    let tmp = temp();
    let (_, _held) = open::<S>(tmp.path(), options);
    let err = open_err::<S>(tmp.path(), &options(Durability::NoFsync));
    assert!(matches!(err, SnapshotError::Locked { .. }), "{err}");
}

/// `len` and `stats().live_bytes` (key + 8-byte version + value per entry)
/// follow overwrites, deletes, deletes of absent keys and duplicate keys
/// within one batch, survive a reopen, and keep counting keys written
/// before the reopen when they are rewritten after it.
pub fn totals_follow_overwrites_deletes_and_duplicates_within_a_batch_across_reopen<
    S: SnapshotStore,
>(
    options: OptionsFor<S>,
) {
    let tmp = temp();
    let (_, mut store) = open::<S>(tmp.path(), options);
    apply(
        &mut store,
        &[
            put("k1", b"aaaa", 1),
            put("k1", b"bb", 2),
            put("k2", b"c", 3),
            delete("nope", 4),
        ],
        &WatchCursor::at(4),
    );
    let expect = |entries: &[(&str, usize)]| -> u64 {
        entries.iter().map(|(k, v)| (k.len() + 8 + v) as u64).sum()
    };
    assert_eq!(store.len(), 2);
    assert_eq!(store.stats().live_bytes, expect(&[("k1", 2), ("k2", 1)]));
    apply(
        &mut store,
        &[delete("k1", 5), put("k1", b"dddddd", 6), delete("k2", 7)],
        &WatchCursor::at(7),
    );
    assert_eq!(store.len(), 1);
    assert_eq!(store.stats().live_bytes, expect(&[("k1", 6)]));
    drop(store);

    let (cursor, mut store) = open::<S>(tmp.path(), options);
    assert_eq!(cursor, WatchCursor::at(7));
    assert_eq!(store.len(), 1);
    assert_eq!(store.stats().live_bytes, expect(&[("k1", 6)]));
    apply(
        &mut store,
        &[put("k1", b"e", 8), put("k3", b"ff", 9)],
        &WatchCursor::at(9),
    );
    assert_eq!(store.len(), 2);
    assert_eq!(store.stats().live_bytes, expect(&[("k1", 1), ("k3", 2)]));
}

/// A batch holding a value over the 64 MiB ceiling is refused naming that
/// key, and nothing of it (not the valid put before it, not the cursor) is
/// committed.
pub fn oversized_value_is_invalid_and_commits_nothing<S: SnapshotStore>(options: OptionsFor<S>) {
    let tmp = temp();
    let (_, mut store) = open::<S>(tmp.path(), options);
    let big = vec![0; crate::MAX_VALUE_LEN + 1];
    let refused = store.apply(
        &[put("small", b"s", 1), put("big", &big, 2)],
        &WatchCursor::at(2),
    );
    assert!(
        matches!(refused, Err(SnapshotError::InvalidUpdate { ref key, .. }) if key == "big"),
        "{refused:?}"
    );
    assert_eq!(store.cursor(), &WatchCursor::none());
    let small = store.get("small").unwrap_or_else(|e| panic!("get: {e}"));
    assert!(small.is_none(), "{small:?}");
}

/// Opening an append-log store's directory is
/// [`SnapshotError::WrongBackend`] naming `append-log`, and leaves the
/// directory as it was.
pub fn opening_an_append_log_directory_is_wrong_backend_and_writes_nothing<S: SnapshotStore>(
    options: OptionsFor<S>,
) {
    let tmp = temp();
    let (_, log) = AppendLogStore::open(tmp.path(), &AppendLogOptions::default())
        .unwrap_or_else(|e| panic!("open append-log: {e}"));
    log.close()
        .unwrap_or_else(|e| panic!("close append-log: {e}"));
    let before = names(tmp.path());

    let err = open_err::<S>(tmp.path(), &options(Durability::NoFsync));
    assert!(
        matches!(&err, SnapshotError::WrongBackend { found, .. } if found == "append-log"),
        "{err}"
    );
    assert_eq!(names(tmp.path()), before);
}

/// A database whose marker names another backend is
/// [`SnapshotError::WrongBackend`]; one whose marker names this backend at
/// a newer format generation is [`SnapshotError::UnsupportedFormat`].
pub fn foreign_marker_is_wrong_backend_and_newer_generation_is_unsupported<S: SnapshotStore>(
    options: OptionsFor<S>,
    write_marker: MarkerWriter,
) {
    let own = S::BACKEND;
    let newer = own.format_generation + 8;
    let foreign = ["append-log/1", "fjall/1", "rocksdb/1"]
        .into_iter()
        .filter(|m| m.split('/').next() != Some(own.name));
    for marker in foreign {
        let tmp = temp();
        write_marker(tmp.path(), marker);
        let err = open_err::<S>(tmp.path(), &options(Durability::NoFsync));
        assert!(
            matches!(&err, SnapshotError::WrongBackend { found, .. } if found == marker),
            "{marker}: {err}"
        );
    }
    let tmp = temp();
    write_marker(tmp.path(), &format!("{}/{newer}", own.name));
    let err = open_err::<S>(tmp.path(), &options(Durability::NoFsync));
    assert!(
        matches!(
            err,
            SnapshotError::UnsupportedFormat { found, supported, .. }
                if found == newer && supported == own.format_generation
        ),
        "{err}"
    );
}

/// A read handle, moved to another thread, sees each commit: point reads,
/// the cursor, ranges and a broken streaming iteration.
pub fn read_handle_on_another_thread_sees_each_commit<S: SnapshotStore, R: ReadHandle>(
    options: OptionsFor<S>,
    reader: fn(&S) -> R,
) {
    let tmp = temp();
    let (_, mut store) = open::<S>(tmp.path(), options);
    let reader = reader(&store);
    apply(&mut store, &[put("a.1", b"x", 1)], &WatchCursor::at(1));
    let seen = {
        let reader = reader.clone();
        std::thread::spawn(move || {
            let got = reader.get("a.1").unwrap_or_else(|e| panic!("get: {e}"));
            let cursor = reader.cursor().unwrap_or_else(|e| panic!("cursor: {e}"));
            (got, cursor)
        })
        .join()
        .unwrap_or_else(|_| panic!("the reading thread panicked"))
    };
    assert_eq!(seen, (Some(entry(b"x", 1)), WatchCursor::at(1)));

    apply(
        &mut store,
        &[put("a.2", b"y", 2), delete("a.1", 3)],
        &WatchCursor::at(3),
    );
    let keys: Vec<String> = reader
        .range("a.")
        .unwrap_or_else(|e| panic!("range: {e}"))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["a.2"]);
    let mut first = None;
    let finished = reader
        .for_each_in_range("", &mut |k, _| {
            first = Some(k.to_owned());
            ControlFlow::Break(())
        })
        .unwrap_or_else(|e| panic!("iterate: {e}"));
    assert!(!finished);
    assert_eq!(first.as_deref(), Some("a.2"));
}

/// After rounds of overwrites, `settle` then a clean close reopen to the
/// same fold and cursor. `options` may choose a settle policy that compacts.
pub fn settle_then_clean_close_reopens_to_the_same_fold_and_cursor<S: SnapshotStore>(
    options: OptionsFor<S>,
    settle: Settle<S>,
) {
    let tmp = temp();
    let (_, mut store) = open::<S>(tmp.path(), options);
    for round in 0..5u64 {
        let batch: Vec<_> = (0..200u64)
            .map(|i| put(&format!("key.{i:04}"), b"value", round * 200 + i + 1))
            .collect();
        apply(&mut store, &batch, &WatchCursor::at((round + 1) * 200));
    }
    settle(&mut store).unwrap_or_else(|e| panic!("settle: {e}"));
    let before = dump(&store);
    store.close().unwrap_or_else(|e| panic!("close: {e}"));

    let (cursor, store) = open::<S>(tmp.path(), options);
    assert_eq!(cursor, WatchCursor::at(1000));
    assert_eq!(dump(&store), before);
    assert_eq!(store.len(), 200);
}
