//! Properties of the simulator against a model log of every write.
//!
//! O1/O2 in miniature: whatever retention did, a delta watch the simulator
//! accepts from cursor `c`, folded onto the replay of the write log up to
//! `c`, converges to the replay of the whole log (every write minus every
//! real delete); and it accepts exactly the cursors K1 and K3 allow.

// Helpers outside #[test] fns are test code too: a panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use proptest::prelude::*;
use slipstream_kv::{
    Connection, KvError, KvPurge, KvStore, KvUpdate, KvWatcher, KvWriter, StoreConfig, WatchCursor,
    WatchEvent, WatchScope, WatchStart,
};
use slipstream_memory::{MemoryServer, MemoryStore};
use slipstream_protocol::{cursor_beyond_log, resume_window_ok};

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Tombstone(u8),
    Delete(u8),
    Purge(u8),
    PurgeBelow(u8),
    MaxMsgs(u8),
    Advance(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..5_u8, 1..=255_u8).prop_map(|(k, v)| Op::Put(k, v)),
        1 => (0..5_u8).prop_map(Op::Tombstone),
        2 => (0..5_u8).prop_map(Op::Delete),
        1 => (0..5_u8).prop_map(Op::Purge),
        1 => (0..4_u8).prop_map(Op::PurgeBelow),
        1 => (2..8_u8).prop_map(Op::MaxMsgs),
        1 => (1..6_u8).prop_map(Op::Advance),
    ]
}

/// Live keys -> value.
type Fold = BTreeMap<String, Vec<u8>>;

/// The model log: (revision, key, value after the write; `None` = no value).
type Log = Vec<(u64, String, Option<Vec<u8>>)>;

fn replay(log: &Log, up_to: u64) -> Fold {
    let mut fold = Fold::new();
    for (rev, key, value) in log.iter().filter(|(rev, ..)| *rev <= up_to) {
        let _ = rev;
        match value {
            Some(v) => fold.insert(key.clone(), v.clone()),
            None => fold.remove(key),
        };
    }
    fold
}

fn apply(fold: &mut Fold, u: &KvUpdate) {
    match u {
        KvUpdate::Put(e) if !e.value.is_empty() => {
            fold.insert(e.key.clone(), e.value.to_vec());
        }
        other => {
            fold.remove(other.key());
        }
    }
}

async fn run(ops: Vec<Op>, history: u8, max_age: bool) -> Result<(), TestCaseError> {
    let server = MemoryServer::new();
    let conn = server.connection();
    conn.connect().await.unwrap();
    let mut config = StoreConfig::new("b").history(history);
    if max_age {
        config = config.max_age(Duration::from_secs(10));
    }
    let store: MemoryStore = conn.store_with_config(&config).await.unwrap();
    let admin = server.bucket("b");
    let w = store.writer();
    let mut log = Log::new();
    for op in ops {
        let key = |k: u8| format!("k{k}");
        match op {
            Op::Put(k, v) => {
                let rev = w.put(&key(k), Bytes::from(vec![v])).await.unwrap();
                log.push((rev, key(k), Some(vec![v])));
            }
            Op::Tombstone(k) => {
                let rev = w.put(&key(k), Bytes::new()).await.unwrap();
                log.push((rev, key(k), None));
            }
            Op::Delete(k) => {
                w.delete(&key(k)).await.unwrap();
                let rev = admin.info().unwrap().last_sequence;
                log.push((rev, key(k), None));
            }
            Op::Purge(k) => {
                store.purge_writer().purge(&key(k)).await.unwrap();
                let rev = admin.info().unwrap().last_sequence;
                log.push((rev, key(k), None));
            }
            Op::PurgeBelow(back) => {
                let last = admin.info().unwrap().last_sequence;
                admin
                    .purge_below(last.saturating_sub(u64::from(back)))
                    .unwrap();
            }
            Op::MaxMsgs(n) => admin.set_max_msgs(Some(u64::from(n))).unwrap(),
            Op::Advance(s) => server.clock().advance(Duration::from_secs(u64::from(s))),
        }
    }
    let info = admin.info().unwrap();
    let truth = replay(&log, u64::MAX);
    for cursor in 0..=info.last_sequence + 1 {
        let started = store
            .watcher()
            .watch(&WatchScope::All, WatchStart::After(WatchCursor::at(cursor)))
            .await;
        let allowed = resume_window_ok(cursor, info.first_sequence)
            && !cursor_beyond_log(cursor, info.last_sequence);
        let mut watch = match started {
            Ok(watch) => watch,
            Err(KvError::CursorExpired { .. }) => {
                prop_assert!(!allowed, "cursor {cursor} refused though K1/K3 allow it");
                continue;
            }
            Err(e) => return Err(TestCaseError::fail(format!("watch: {e}"))),
        };
        prop_assert!(allowed, "cursor {cursor} accepted though K1/K3 refuse it");
        let mut fold = replay(&log, cursor);
        loop {
            match watch.next().now_or_never() {
                Some(Some(Ok(WatchEvent::Update(u)))) => apply(&mut fold, &u),
                Some(Some(Ok(WatchEvent::CaughtUp))) => break,
                other => return Err(TestCaseError::fail(format!("cursor {cursor}: {other:?}"))),
            }
        }
        prop_assert_eq!(&fold, &truth, "cursor {}", cursor);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn accepted_resumes_converge_to_the_write_log(
        ops in proptest::collection::vec(op(), 1..40),
        history in 1..4_u8,
        max_age in any::<bool>(),
    ) {
        futures::executor::block_on(run(ops, history, max_age))?;
    }
}
