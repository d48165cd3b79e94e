use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn policy(dir: &Path, relist_memory: usize) -> ScratchPolicy {
    ScratchPolicy {
        dir: dir.to_owned(),
        relist_memory,
    }
}

/// Push every record, writing runs as they come due.
fn sorter_with(
    policy: &ScratchPolicy,
    records: &[(String, Option<u64>, bool)],
) -> (KeySorter, usize) {
    let mut sorter = KeySorter::new(policy).unwrap();
    let mut runs = 0;
    for (key, revision, live) in records {
        if let Some(run) = sorter.push(key.clone(), *revision, *live) {
            run.write().unwrap();
            runs += 1;
        }
    }
    (sorter, runs)
}

/// The model: per key, a later push replaces the winner unless its
/// revision is lower (`None` is lowest).
fn model(records: &[(String, Option<u64>, bool)]) -> Vec<String> {
    let mut winners: BTreeMap<&str, (Option<u64>, bool)> = BTreeMap::new();
    for (key, revision, live) in records {
        match winners.get(key.as_str()) {
            Some((have, _)) if revision < have => {}
            _ => {
                winners.insert(key, (*revision, *live));
            }
        }
    }
    winners
        .into_iter()
        .filter(|(_, (_, live))| *live)
        .map(|(k, _)| k.to_owned())
        .collect()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

fn record() -> impl Strategy<Value = (String, Option<u64>, bool)> {
    (
        // Few distinct keys so the same key recurs across runs.
        "[a-d]{1,3}",
        proptest::option::of(0u64..6),
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sorted_listing_matches_a_map_model_under_any_memory_bound(
        records in proptest::collection::vec(record(), 0..300),
        relist_memory in prop_oneof![Just(1usize), 1usize..400, Just(usize::MAX)],
    ) {
        let scratch = tempfile::tempdir().unwrap();
        let (sorter, _) = sorter_with(&policy(scratch.path(), relist_memory), &records);
        let listed: Vec<String> = sorter.finish().unwrap().map(Result::unwrap).collect();
        prop_assert_eq!(listed, model(&records));
        prop_assert!(entries(scratch.path()).is_empty(), "the scratch subdirectory is gone");
    }

    #[test]
    fn contains_probes_in_key_order_agree_with_the_model(
        records in proptest::collection::vec(record(), 0..200),
        probes in proptest::collection::btree_set("[a-d]{1,3}", 0..40),
    ) {
        let scratch = tempfile::tempdir().unwrap();
        let (sorter, _) = sorter_with(&policy(scratch.path(), 100), &records);
        let mut listed = sorter.finish().unwrap();
        let expected = model(&records);
        for probe in &probes {
            prop_assert_eq!(listed.contains(probe).unwrap(), expected.contains(probe), "{}", probe);
        }
    }
}

#[test]
fn a_tiny_memory_bound_spills_past_the_merge_fan_in_and_keeps_every_key() {
    let scratch = tempfile::tempdir().unwrap();
    let records: Vec<_> = (0..200u64)
        .rev()
        .map(|i| (format!("k{i:04}"), Some(i), i % 7 != 0))
        .collect();
    let (sorter, runs) = sorter_with(&policy(scratch.path(), 1), &records);
    assert_eq!(runs, 200, "every push wrote a run");
    let listed: Vec<String> = sorter.finish().unwrap().map(Result::unwrap).collect();
    assert_eq!(listed, model(&records));
}

#[test]
fn a_delete_in_an_early_run_beats_an_older_put_in_a_later_run() {
    let scratch = tempfile::tempdir().unwrap();
    let records = [
        ("a".to_owned(), Some(7), false),
        ("a".to_owned(), Some(5), true),
        ("b".to_owned(), None, true),
        ("b".to_owned(), Some(1), false),
        ("c".to_owned(), Some(2), false),
        ("c".to_owned(), Some(2), true),
    ];
    let (sorter, _) = sorter_with(&policy(scratch.path(), 1), &records);
    let listed: Vec<String> = sorter.finish().unwrap().map(Result::unwrap).collect();
    assert_eq!(listed, ["c"], "revision first, then the later push");
}

/// A sorter whose one run holds `keys`, plus the run's path.
fn one_run(scratch: &Path, keys: &[&str]) -> (KeySorter, PathBuf) {
    let mut sorter = KeySorter::new(&policy(scratch, usize::MAX)).unwrap();
    let mut pending = None;
    for (i, key) in keys.iter().enumerate() {
        if i + 1 == keys.len() {
            sorter.limit = 1;
        }
        pending = sorter.push((*key).to_owned(), Some(i as u64 + 1), true);
    }
    let run = pending.expect("the last push fills the buffer");
    let path = run.path().to_owned();
    run.write().unwrap();
    (sorter, path)
}

fn finish_err(sorter: KeySorter) -> AppliedError {
    match sorter.finish() {
        Ok(listed) => match listed.collect::<Result<Vec<_>, _>>() {
            Ok(keys) => panic!("a damaged run was read as {keys:?}"),
            Err(e) => e,
        },
        Err(e) => e,
    }
}

#[test]
fn a_run_truncated_anywhere_is_a_typed_error_not_a_shorter_listing() {
    let scratch = tempfile::tempdir().unwrap();
    let (first, path) = one_run(scratch.path(), &["alpha", "beta", "gamma"]);
    let whole = fs::read(&path).unwrap();
    drop(first);
    for cut in 0..whole.len() {
        let (sorter, path) = one_run(scratch.path(), &["alpha", "beta", "gamma"]);
        fs::write(&path, &whole[..cut]).unwrap();
        match finish_err(sorter) {
            AppliedError::RepairScratchCorrupt { path: p, .. } => assert_eq!(p, path),
            other => panic!("cut at {cut}: expected RepairScratchCorrupt, got {other:?}"),
        }
    }
}

#[test]
fn a_flipped_byte_anywhere_in_a_run_is_a_typed_error() {
    let scratch = tempfile::tempdir().unwrap();
    let (first, path) = one_run(scratch.path(), &["alpha", "beta"]);
    let whole = fs::read(&path).unwrap();
    drop(first);
    for at in 0..whole.len() {
        let (sorter, path) = one_run(scratch.path(), &["alpha", "beta"]);
        let mut damaged = whole.clone();
        damaged[at] ^= 0x40;
        fs::write(&path, &damaged).unwrap();
        assert!(
            matches!(
                finish_err(sorter),
                AppliedError::RepairScratchCorrupt { .. }
            ),
            "flip at {at}"
        );
    }
}

#[test]
fn bytes_after_the_end_record_are_a_typed_error() {
    let scratch = tempfile::tempdir().unwrap();
    let (sorter, path) = one_run(scratch.path(), &["alpha"]);
    let mut whole = fs::read(&path).unwrap();
    whole.push(0);
    fs::write(&path, &whole).unwrap();
    match finish_err(sorter) {
        AppliedError::RepairScratchCorrupt { problem, .. } => {
            assert_eq!(problem, "bytes after the end record");
        }
        other => panic!("expected RepairScratchCorrupt, got {other:?}"),
    }
}

#[test]
fn a_missing_run_file_is_a_scratch_io_error_naming_it() {
    let scratch = tempfile::tempdir().unwrap();
    let (sorter, path) = one_run(scratch.path(), &["alpha"]);
    fs::remove_file(&path).unwrap();
    match finish_err(sorter) {
        AppliedError::RepairScratchIo { path: p, .. } => assert_eq!(p, path),
        other => panic!("expected RepairScratchIo, got {other:?}"),
    }
}

#[test]
fn the_scratch_subdirectory_is_removed_when_the_sorter_or_listing_drops() {
    let scratch = tempfile::tempdir().unwrap();
    let records: Vec<_> = (0..50u64)
        .map(|i| (format!("k{i}"), Some(i), true))
        .collect();

    // Dropped unfinished, as on a failed or shut-down listing.
    let (sorter, runs) = sorter_with(&policy(scratch.path(), 200), &records);
    assert!(runs > 1);
    let sub = sorter.dir().to_owned();
    assert!(sub.starts_with(scratch.path()) && sub.is_dir());
    assert!(!entries(&sub).is_empty(), "runs were written there");
    drop(sorter);
    assert!(!sub.exists());

    // Finished, partly read, then dropped.
    let (sorter, _) = sorter_with(&policy(scratch.path(), 200), &records);
    let sub = sorter.dir().to_owned();
    let mut listed = sorter.finish().unwrap();
    assert_eq!(listed.next().unwrap().unwrap(), "k0");
    assert!(sub.is_dir());
    drop(listed);
    assert!(!sub.exists());

    // A damaged run fails finishing and still leaves nothing behind.
    let (sorter, path) = one_run(scratch.path(), &["a", "b"]);
    fs::write(&path, b"junk").unwrap();
    let _ = finish_err(sorter);
    assert!(entries(scratch.path()).is_empty());
}

#[test]
fn two_sorters_in_one_scratch_dir_get_their_own_subdirectories() {
    let scratch = tempfile::tempdir().unwrap();
    let a = KeySorter::new(&policy(scratch.path(), 1)).unwrap();
    let b = KeySorter::new(&policy(scratch.path(), 1)).unwrap();
    assert_ne!(a.dir(), b.dir());
}

#[test]
fn a_scratch_dir_that_cannot_hold_directories_fails_with_the_path() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("a-file");
    fs::write(&file, b"").unwrap();
    match KeySorter::new(&policy(&file, 1)) {
        Err(AppliedError::RepairScratchIo { path, .. }) => assert!(path.starts_with(&file)),
        other => panic!("expected RepairScratchIo, got {other:?}"),
    }
}
