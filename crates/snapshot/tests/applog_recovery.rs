//! Append-log recovery (S3), case by case with crafted files, plus
//! compaction, poisoning, locking and limits.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a panic is a test failure"
)]

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use slipstream_kv::{KvEntry, KvUpdate, VersionToken, WatchCursor};
use slipstream_snapshot::{
    AppendLogOptions, AppendLogStore, CompactionPolicy, Durability, LOG_FILE, MAX_VALUE_LEN,
    SnapshotError, SnapshotStore,
};

const HEADER: usize = 12;

fn put(key: &str, value: &[u8], rev: u64) -> KvUpdate {
    KvUpdate::Put(KvEntry {
        key: key.into(),
        value: Bytes::copy_from_slice(value),
        version: VersionToken::from_u64(rev),
        created: None,
        expires: None,
    })
}

fn opts() -> AppendLogOptions {
    AppendLogOptions::with_durability(Durability::NoFsync)
}

fn open(dir: &Path) -> Result<(WatchCursor, AppendLogStore), SnapshotError> {
    AppendLogStore::open(dir, &opts())
}

/// Three commits, each one put (`k1`, `k2`, `k3`) plus its cursor record.
/// Returns the store dir and the offsets where records start.
fn three_commits(tmp: &tempfile::TempDir) -> (PathBuf, Vec<usize>) {
    let dir = tmp.path().join("s");
    let (_, mut store) = open(&dir).unwrap();
    for rev in 1..=3u64 {
        store
            .apply(
                &[put(&format!("k{rev}"), b"value-bytes", rev)],
                &WatchCursor::at(rev),
            )
            .unwrap();
    }
    drop(store);
    let bytes = fs::read(dir.join(LOG_FILE)).unwrap();
    (dir, record_starts(&bytes))
}

/// Start offsets of every record, plus the file's end.
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut at = HEADER;
    let mut starts = vec![];
    while at < bytes.len() {
        starts.push(at);
        let len = u32::from_le_bytes(bytes[at + 5..at + 9].try_into().unwrap()) as usize;
        at += 9 + len;
    }
    starts.push(at);
    starts
}

fn log(dir: &Path) -> PathBuf {
    dir.join(LOG_FILE)
}

fn keys(store: &AppendLogStore) -> Vec<String> {
    store
        .range("")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

fn edit(dir: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(log(dir)).unwrap();
    f(&mut bytes);
    fs::write(log(dir), bytes).unwrap();
}

#[test]
fn torn_final_record_is_dropped_and_a_later_append_still_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, starts) = three_commits(&tmp);
    // starts: put1, cur1, put2, cur2, put3, cur3, end. Cut cur3 in half.
    let cut = (starts[5] + starts[6]) / 2;
    edit(&dir, |b| b.truncate(cut));
    let (cursor, mut store) = open(&dir).unwrap();
    assert_eq!(cursor, WatchCursor::at(2));
    assert_eq!(
        keys(&store),
        ["k1", "k2"],
        "the uncommitted put3 is dropped too"
    );
    assert_eq!(
        fs::metadata(log(&dir)).unwrap().len(),
        starts[4] as u64,
        "truncated before any append"
    );
    store
        .apply(&[put("k9", b"x", 9)], &WatchCursor::at(9))
        .unwrap();
    drop(store);
    let (cursor, store) = open(&dir).unwrap();
    assert_eq!(cursor, WatchCursor::at(9));
    assert_eq!(keys(&store), ["k1", "k2", "k9"]);
}

#[test]
fn data_records_without_their_cursor_record_are_not_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, starts) = three_commits(&tmp);
    edit(&dir, |b| b.truncate(starts[5]));
    let (cursor, store) = open(&dir).unwrap();
    assert_eq!(cursor, WatchCursor::at(2));
    assert_eq!(keys(&store), ["k1", "k2"]);
}

#[test]
fn crc_mismatch_mid_file_is_corrupted_and_the_file_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, starts) = three_commits(&tmp);
    edit(&dir, |b| b[starts[2] + 12] ^= 0x20);
    let before = fs::read(log(&dir)).unwrap();
    match open(&dir) {
        Err(SnapshotError::Corrupted { offset, .. }) => assert_eq!(offset, starts[2] as u64),
        other => panic!("expected Corrupted, got {other:?}"),
    }
    assert_eq!(
        fs::read(log(&dir)).unwrap(),
        before,
        "a failed open truncates nothing"
    );
}

#[test]
fn bit_flipped_length_pointing_past_the_end_does_not_hide_later_records() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, starts) = three_commits(&tmp);
    edit(&dir, |b| b[starts[0] + 8] ^= 0x40);
    assert!(
        matches!(open(&dir), Err(SnapshotError::Corrupted { offset, .. }) if offset == HEADER as u64)
    );
}

#[test]
fn bit_flipped_length_inside_the_file_is_corrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, starts) = three_commits(&tmp);
    edit(&dir, |b| b[starts[2] + 5] ^= 0x01);
    assert!(
        matches!(open(&dir), Err(SnapshotError::Corrupted { offset, .. }) if offset == starts[2] as u64)
    );
}

#[test]
fn oversized_length_mid_file_is_corrupted_and_on_the_last_record_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, starts) = three_commits(&tmp);
    let original = fs::read(log(&dir)).unwrap();
    edit(&dir, |b| {
        b[starts[1] + 5..starts[1] + 9].copy_from_slice(&u32::MAX.to_le_bytes())
    });
    assert!(matches!(open(&dir), Err(SnapshotError::Corrupted { .. })));

    fs::write(log(&dir), &original).unwrap();
    edit(&dir, |b| {
        b[starts[5] + 5..starts[5] + 9].copy_from_slice(&u32::MAX.to_le_bytes())
    });
    let (cursor, store) = open(&dir).unwrap();
    assert_eq!(cursor, WatchCursor::at(2));
    assert_eq!(keys(&store), ["k1", "k2"]);
}

#[test]
fn trailing_zero_bytes_are_a_torn_tail_and_compaction_keeps_every_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, starts) = three_commits(&tmp);
    edit(&dir, |b| b.extend_from_slice(&[0; 4096]));
    // Compact at the first apply after recovery.
    let eager = AppendLogOptions {
        durability: Durability::FsyncEachCommit,
        compaction: CompactionPolicy {
            min_file_bytes: 0,
            max_size_ratio: 2,
        },
    };
    let (cursor, mut store) = AppendLogStore::open(&dir, &eager).unwrap();
    assert_eq!(cursor, WatchCursor::at(3));
    assert_eq!(keys(&store), ["k1", "k2", "k3"]);
    assert_eq!(
        fs::metadata(log(&dir)).unwrap().len(),
        *starts.last().unwrap() as u64
    );
    for rev in 4..50u64 {
        store
            .apply(&[put("k1", &rev.to_be_bytes(), rev)], &WatchCursor::at(rev))
            .unwrap();
    }
    assert!(
        fs::metadata(log(&dir)).unwrap().len() < 2_000,
        "overwrites were compacted away"
    );
    drop(store);
    let (cursor, store) = open(&dir).unwrap();
    assert_eq!(cursor, WatchCursor::at(49));
    assert_eq!(keys(&store), ["k1", "k2", "k3"]);
    assert_eq!(
        store.get("k1").unwrap().unwrap().value.as_ref(),
        49u64.to_be_bytes()
    );
}

#[test]
fn zero_filled_gap_followed_by_valid_records_is_a_torn_tail_not_a_mixture() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, starts) = three_commits(&tmp);
    // Commit 2 lost to a zero-filled gap; commit 3 landed after it.
    edit(&dir, |b| b[starts[2]..starts[4]].fill(0));
    let (cursor, mut store) = open(&dir).unwrap();
    assert_eq!(
        cursor,
        WatchCursor::at(1),
        "commit 3 without commit 2 would be a mixture"
    );
    assert_eq!(keys(&store), ["k1"]);
    assert_eq!(fs::metadata(log(&dir)).unwrap().len(), starts[2] as u64);
    store
        .apply(&[put("k2", b"again", 2)], &WatchCursor::at(2))
        .unwrap();
    drop(store);
    let (cursor, store) = open(&dir).unwrap();
    assert_eq!(cursor, WatchCursor::at(2));
    assert_eq!(keys(&store), ["k1", "k2"]);
}

#[test]
fn wrong_magic_is_corrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = three_commits(&tmp);
    edit(&dir, |b| b[0] = b'X');
    assert!(matches!(
        open(&dir),
        Err(SnapshotError::Corrupted { offset: 0, .. })
    ));
}

#[test]
fn future_format_version_is_unsupported() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = three_commits(&tmp);
    edit(&dir, |b| b[8..12].copy_from_slice(&3u32.to_le_bytes()));
    assert!(matches!(
        open(&dir),
        Err(SnapshotError::UnsupportedFormat {
            found: 3,
            supported: 2,
            ..
        })
    ));
}

#[test]
fn failed_compaction_poisons_the_writer_and_keeps_the_old_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let eager = AppendLogOptions {
        durability: Durability::NoFsync,
        compaction: CompactionPolicy {
            min_file_bytes: 0,
            max_size_ratio: 2,
        },
    };
    let (_, mut store) = AppendLogStore::open(&dir, &eager).unwrap();
    // A directory where the compaction's temp file must go makes it fail.
    fs::create_dir(dir.join("snapshot.log.compact")).unwrap();
    let mut last_ok = 0;
    let mut poisoned = false;
    for rev in 1..100u64 {
        match store.apply(&[put("k", &rev.to_be_bytes(), rev)], &WatchCursor::at(rev)) {
            Ok(()) => last_ok = rev,
            Err(SnapshotError::Poisoned { .. }) => {
                poisoned = true;
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(poisoned, "compaction was attempted and failed");
    assert!(last_ok > 0);
    assert!(matches!(
        store.apply(&[], &WatchCursor::at(500)),
        Err(SnapshotError::Poisoned { .. })
    ));
    drop(store);
    fs::remove_dir(dir.join("snapshot.log.compact")).unwrap();
    let (cursor, store) = open(&dir).unwrap();
    assert_eq!(
        cursor,
        WatchCursor::at(last_ok),
        "the old file holds every commit"
    );
    assert_eq!(
        store.get("k").unwrap().unwrap().value.as_ref(),
        last_ok.to_be_bytes()
    );
}

#[test]
fn compaction_keeps_the_log_proportional_to_the_live_fold() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let policy = AppendLogOptions {
        durability: Durability::NoFsync,
        compaction: CompactionPolicy {
            min_file_bytes: 64 << 10,
            max_size_ratio: 2,
        },
    };
    let (_, mut store) = AppendLogStore::open(&dir, &policy).unwrap();
    let value = [7u8; 100];
    for round in 0..200u64 {
        let batch: Vec<_> = (0..100u64)
            .map(|k| put(&format!("key.{k:03}"), &value, round * 100 + k + 1))
            .collect();
        store
            .apply(&batch, &WatchCursor::at((round + 1) * 100))
            .unwrap();
    }
    let image = 100 * (9 + 2 + 7 + 1 + 8 + 100) as u64;
    let size = fs::metadata(log(&dir)).unwrap().len();
    // 2 MiB were written; the file stays below the policy's bound.
    assert!(
        size <= (64 << 10) + 2 * image + 20_000,
        "log is {size} bytes"
    );
    drop(store);
    let (cursor, store) = open(&dir).unwrap();
    assert_eq!(cursor, WatchCursor::at(20_000));
    assert_eq!(store.len(), 100);
}

#[test]
fn a_second_handle_on_the_same_directory_is_locked_out() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let (_, first) = open(&dir).unwrap();
    assert!(matches!(open(&dir), Err(SnapshotError::Locked { .. })));
    drop(first);
    assert!(open(&dir).is_ok());
}

#[test]
fn value_over_the_64_mib_ceiling_is_refused_and_nothing_is_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let (_, mut store) = open(&dir).unwrap();
    store
        .apply(&[put("a", b"1", 1)], &WatchCursor::at(1))
        .unwrap();
    let huge = vec![0u8; MAX_VALUE_LEN + 1];
    let err = store.apply(
        &[put("b", b"2", 2), put("c", &huge, 3)],
        &WatchCursor::at(3),
    );
    assert!(
        matches!(err, Err(SnapshotError::InvalidUpdate { .. })),
        "{err:?}"
    );
    assert_eq!(store.cursor(), &WatchCursor::at(1));
    assert_eq!(keys(&store), ["a"]);
    drop(store);
    let (cursor, store) = open(&dir).unwrap();
    assert_eq!(cursor, WatchCursor::at(1));
    assert_eq!(keys(&store), ["a"]);
}

#[test]
fn a_directory_holding_something_else_is_the_wrong_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("CURRENT"), b"MANIFEST-000001\n").unwrap();
    assert!(matches!(
        open(&dir),
        Err(SnapshotError::WrongBackend { .. })
    ));
}

/// One record framed as format 1 framed it: CRC over type, length and
/// payload.
fn frame_v1(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let mut body = vec![kind];
    body.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
    body.extend_from_slice(payload);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

#[test]
fn a_log_written_before_expiries_opens_as_it_was_and_says_its_fold_lacks_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    fs::create_dir_all(&dir).unwrap();
    // Format 1: header, two puts (key, version, value) and a format 1
    // cursor at revision 2.
    let mut log = b"SLPSTLOG".to_vec();
    log.extend_from_slice(&1u32.to_le_bytes());
    for (key, rev) in [("a", 1u8), ("b", 2)] {
        let mut p = vec![1, 0, key.as_bytes()[0], 1, rev];
        p.extend_from_slice(b"old");
        frame_v1(&mut log, 1, &p);
    }
    let mut cursor = vec![1, 1];
    cursor.extend_from_slice(&2u64.to_be_bytes());
    frame_v1(&mut log, 3, &cursor);
    fs::write(dir.join(LOG_FILE), &log).unwrap();

    let (cursor, mut store) = open(&dir).unwrap();
    assert_eq!(cursor.revision(), Some(2));
    assert!(
        cursor.expiries_unrecorded(),
        "a format 1 fold must not pass for one with expiries"
    );
    let a = store.get("a").unwrap().unwrap();
    assert_eq!((&a.value[..], a.expires), (&b"old"[..], None));
    // Opened for writing, the log takes format 2's header before anything
    // an older reader would misread is appended.
    let header = fs::read(dir.join(LOG_FILE)).unwrap();
    assert_eq!(header[8..12], 2u32.to_le_bytes());
    let at = slipstream_kv::Timestamp::from_unix_nanos(77);
    let ttl = KvUpdate::Put(KvEntry {
        expires: Some(at),
        ..match put("c", b"ttl", 3) {
            KvUpdate::Put(e) => e,
            _ => unreachable!(),
        }
    });
    store.apply(&[ttl], &cursor.advanced(3, None)).unwrap();
    drop(store);
    let (cursor, store) = open(&dir).unwrap();
    assert_eq!(store.get("c").unwrap().unwrap().expires, Some(at));
    assert_eq!(store.get("b").unwrap().unwrap().expires, None);
    assert!(cursor.expiries_unrecorded());
}
