//! Mutation checks: each protocol guard is shown to matter by running a
//! tiny fold loop over the simulator twice, once driven by the kernel's
//! rule and once by a broken stand-in, and asserting the specific wrong
//! fold the broken rule produces.

// Helpers outside #[test] fns are test code too: a panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use slipstream_kv::{Connection, KvReader, KvStore, KvWriter, StoreConfig, WatchScope};
use slipstream_memory::{DeliverPolicy, MemoryServer, MemoryStore, Operation, RawMessage};
use slipstream_protocol::{
    RestoreAction, cursor_beyond_log, is_replay, listing_is_truth, next_high_water, restore_key,
    resume_window_ok,
};

/// Live keys -> (revision, value): what an application's fold holds.
type Fold = BTreeMap<String, (u64, String)>;

fn fold_of(pairs: &[(&str, u64, &str)]) -> Fold {
    pairs
        .iter()
        .map(|(k, r, v)| ((*k).to_owned(), (*r, (*v).to_owned())))
        .collect()
}

fn apply(fold: &mut Fold, m: &RawMessage) {
    if m.operation == Operation::Put && !m.value.is_empty() {
        let value = String::from_utf8(m.value.to_vec()).unwrap();
        fold.insert(m.key.clone(), (m.sequence, value));
    } else {
        fold.remove(&m.key);
    }
}

async fn open(server: &MemoryServer, config: StoreConfig) -> MemoryStore {
    let conn = server.connection();
    conn.connect().await.unwrap();
    conn.store_with_config(&config).await.unwrap()
}

async fn put(store: &MemoryStore, key: &str, value: &str) -> u64 {
    store
        .writer()
        .put(key, Bytes::copy_from_slice(value.as_bytes()))
        .await
        .unwrap()
}

/// Every message the raw consumer has ready now (it never ends by itself).
fn drain_ready(server: &MemoryServer, start: u64) -> Vec<RawMessage> {
    let mut raw = server
        .bucket("b")
        .raw_consumer(&WatchScope::All, DeliverPolicy::ByStartSequence(start))
        .unwrap();
    let mut out = Vec::new();
    while let Some(Some(m)) = raw.next().now_or_never() {
        out.push(m.unwrap());
    }
    out
}

/// Why a resume did not fold anything.
#[derive(Debug, PartialEq, Eq)]
enum Resume {
    Folded,
    Expired,
}

/// A resume from `cursor`: the guard decides on the bucket's (first, last);
/// if it lets the resume through, everything the server delivers is folded.
fn resume(
    server: &MemoryServer,
    fold: &mut Fold,
    cursor: u64,
    guard: impl Fn(u64, u64, u64) -> bool,
) -> Resume {
    let info = server.bucket("b").info().unwrap();
    if !guard(cursor, info.first_sequence, info.last_sequence) {
        return Resume::Expired;
    }
    for m in drain_ready(server, cursor + 1) {
        apply(fold, &m);
    }
    Resume::Folded
}

#[tokio::test]
async fn k1_trusting_the_silent_clamp_loses_a_delete() {
    let setup = || async {
        let server = MemoryServer::new();
        let store = open(&server, StoreConfig::new("b")).await;
        put(&store, "a", "1").await; // 1: the fold holds a at cursor 1
        store.writer().delete("a").await.unwrap(); // 2
        put(&store, "b", "1").await; // 3
        put(&store, "c", "1").await; // 4
        server.bucket("b").purge_below(3).unwrap(); // the delete is head-evicted
        server
    };
    let truth = fold_of(&[("b", 3, "1"), ("c", 4, "1")]);

    let server = setup().await;
    let mut fold = fold_of(&[("a", 1, "1")]);
    let real = resume(&server, &mut fold, 1, |c, first, _| {
        resume_window_ok(c, first)
    });
    assert_eq!(real, Resume::Expired, "K1 reports the expiry");
    assert_eq!(fold, fold_of(&[("a", 1, "1")]), "and folds nothing partial");

    let server = setup().await;
    let mut fold = fold_of(&[("a", 1, "1")]);
    let broken = resume(&server, &mut fold, 1, |_, _, _| true);
    assert_eq!(broken, Resume::Folded);
    assert_ne!(fold, truth);
    assert_eq!(
        fold,
        fold_of(&[("a", 1, "1"), ("b", 3, "1"), ("c", 4, "1")]),
        "the deleted key a survives: the clamp skipped its delete"
    );
}

#[tokio::test]
async fn k3_trusting_a_cursor_on_a_recreated_bucket_serves_the_old_incarnation() {
    let server = MemoryServer::new();
    let store = open(&server, StoreConfig::new("b")).await;
    for key in ["a", "b", "c", "d", "e"] {
        put(&store, key, "old").await;
    }
    let folded_old = fold_of(&[
        ("a", 1, "old"),
        ("b", 2, "old"),
        ("c", 3, "old"),
        ("d", 4, "old"),
        ("e", 5, "old"),
    ]);
    server.bucket("b").delete().unwrap();
    let store = open(&server, StoreConfig::new("b")).await;
    put(&store, "a", "new").await; // 1
    put(&store, "z", "new").await; // 2

    let mut fold = folded_old.clone();
    let real = resume(&server, &mut fold, 5, |c, _, last| {
        !cursor_beyond_log(c, last)
    });
    assert_eq!(real, Resume::Expired, "K3 refuses a cursor past the end");

    let mut fold = folded_old.clone();
    let broken = resume(&server, &mut fold, 5, |_, _, _| true);
    assert_eq!(broken, Resume::Folded);
    assert_eq!(
        fold, folded_old,
        "the resume waits: stale keys b..e stay, a keeps its old value"
    );

    // As the new incarnation grows past the cursor, the broken resume folds
    // only its tail onto the old incarnation's data.
    for key in ["f", "g", "h", "i"] {
        put(&store, key, "new").await; // 3..6
    }
    let mut fold = folded_old.clone();
    resume(&server, &mut fold, 5, |_, _, _| true);
    assert_eq!(
        fold.get("a"),
        Some(&(1, "old".to_owned())),
        "a serves the old incarnation's value"
    );
    assert_eq!(
        fold.get("z"),
        None,
        "z of the new incarnation is never seen"
    );
    assert_eq!(fold.get("i"), Some(&(6, "new".to_owned())));
}

#[tokio::test]
async fn k5_applying_replays_moves_a_key_backward() {
    let server = MemoryServer::new();
    let store = open(&server, StoreConfig::new("b").history(5)).await;
    put(&store, "a", "old").await; // 1
    put(&store, "a", "mid").await; // 2
    put(&store, "a", "new").await; // 3
    // The fold is at cursor 3; a recreated consumer starts over from 1.
    let replay = drain_ready(&server, 1);

    let run = |drop_replay: &dyn Fn(Option<u64>, Option<u64>) -> bool,
               high_water: &dyn Fn(Option<u64>, Option<u64>) -> Option<u64>| {
        let mut fold = fold_of(&[("a", 3, "new")]);
        let mut cursor = Some(3);
        let mut states = Vec::new();
        for m in &replay {
            if drop_replay(cursor, Some(m.sequence)) {
                continue;
            }
            apply(&mut fold, m);
            cursor = high_water(cursor, Some(m.sequence));
            states.push((fold["a"].clone(), cursor));
        }
        states
    };

    let real = run(&|a, d| is_replay(a, d), &|c, r| next_high_water(c, r));
    assert!(real.is_empty(), "K5 drops every replay: a never moves");

    let broken = run(&|_, _| false, &|_, r| r);
    assert_eq!(
        broken.first(),
        Some(&((1, "old".to_owned()), Some(1))),
        "a moves back to revision 1 and the committed cursor decreases"
    );
}

#[tokio::test]
async fn k7_trusting_the_listing_on_an_evicting_bucket_deletes_a_live_key() {
    let server = MemoryServer::new();
    let store = open(
        &server,
        StoreConfig::new("b").max_age(Duration::from_secs(10)),
    )
    .await;
    let clock = server.clock();
    put(&store, "aged", "1").await; // 1: never deleted, only ages out
    put(&store, "gone", "1").await; // 2
    let fold = fold_of(&[("aged", 1, "1"), ("gone", 2, "1")]); // cursor 2
    clock.advance(Duration::from_secs(1));
    store.writer().delete("gone").await.unwrap(); // 3: a real delete
    clock.advance(Duration::from_secs(5));
    put(&store, "fresh", "1").await; // 4
    clock.advance(Duration::from_millis(5_500));
    let retention = store.watcher_retention().await;
    assert!(
        !resume_window_ok(2, retention.first_revision),
        "the cursor expired"
    );
    // Truth: every write minus every real delete.
    let truth: Vec<&str> = vec!["aged", "fresh"];

    let listing = store.reader().keys("").await.unwrap();
    assert_eq!(listing, ["fresh"]);
    let relist = |fold: &Fold, trust: bool| -> Vec<String> {
        if !trust {
            // Refused: the fold is left for a restore (or a loud failure).
            return fold.keys().cloned().collect();
        }
        listing.clone()
    };

    let real_trust = listing_is_truth(
        retention.evicts_current_values(),
        retention.first_revision,
        false,
    );
    assert!(
        !real_trust,
        "K7: the listing of an evicting bucket is not the truth"
    );
    let kept = relist(&fold, real_trust);
    assert!(
        kept.contains(&"aged".to_owned()),
        "the live aged-out key is kept"
    );

    let broken = relist(&fold, true);
    assert_eq!(
        broken,
        ["fresh"],
        "the broken rule deletes aged, which nobody deleted"
    );
    assert!(truth.contains(&"aged") && !broken.contains(&"aged".to_owned()));

    // Where retention keeps current values, the same rule does trust the
    // listing, and the relist removes the really deleted key.
    let plain = MemoryServer::new();
    let store = open(&plain, StoreConfig::new("b")).await;
    put(&store, "gone", "1").await;
    store.writer().delete("gone").await.unwrap();
    let r = store.watcher_retention().await;
    assert!(listing_is_truth(
        r.evicts_current_values(),
        r.first_revision,
        false
    ));
}

#[tokio::test]
async fn k10_a_restore_that_takes_older_entries_moves_keys_backward_and_deletes_live_keys() {
    let server = MemoryServer::new();
    let store = open(&server, StoreConfig::new("b")).await;
    put(&store, "x", "1").await; // 1
    put(&store, "a", "old").await; // 2
    put(&store, "a", "new").await; // 3
    put(&store, "b", "live").await; // 4
    // The local fold is current; the artifact is an older export that
    // predates b.
    let local = fold_of(&[("a", 3, "new"), ("b", 4, "live"), ("x", 1, "1")]);
    let artifact = fold_of(&[("a", 2, "old"), ("x", 1, "1")]);
    let listed: Vec<String> = store.reader().keys("").await.unwrap();

    let restore = |rule: &dyn Fn(Option<u64>, Option<u64>, bool, bool) -> RestoreAction| {
        let mut fold = local.clone();
        let keys: Vec<String> = local.keys().chain(artifact.keys()).cloned().collect();
        for key in keys {
            let (l, a) = (local.get(&key), artifact.get(&key));
            let identical = l.is_some() && l == a;
            let listed_live = listed.contains(&key);
            match rule(l.map(|e| e.0), a.map(|e| e.0), identical, listed_live) {
                RestoreAction::Keep => {}
                RestoreAction::Take => {
                    fold.insert(key.clone(), a.cloned().unwrap());
                }
                RestoreAction::Delete => {
                    fold.remove(&key);
                }
            }
        }
        fold
    };

    let real = restore(&|l, a, i, live| restore_key(l, a, i, live));
    assert_eq!(
        real, local,
        "K10 keeps the newer local entries and the listed-live key"
    );

    let broken = restore(&|_, a, _, _| {
        if a.is_some() {
            RestoreAction::Take
        } else {
            RestoreAction::Delete
        }
    });
    assert_eq!(
        broken.get("a"),
        Some(&(2, "old".to_owned())),
        "a moved backward"
    );
    assert_eq!(broken.get("b"), None, "b, listed live, was deleted");
}

/// Retention through the watcher handle.
trait WatcherRetention {
    async fn watcher_retention(&self) -> slipstream_kv::Retention;
}

impl WatcherRetention for MemoryStore {
    async fn watcher_retention(&self) -> slipstream_kv::Retention {
        slipstream_kv::KvWatcher::retention(&self.watcher())
            .await
            .unwrap()
    }
}
