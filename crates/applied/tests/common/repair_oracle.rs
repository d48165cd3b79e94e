//! The oracles of `simulation_repair.rs` (O1–O3 in docs/rules.md) over the
//! test's own log of every write, per bucket incarnation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use bytes::Bytes;
use slipstream_kv::{BucketIdentity, WatchCursor};

use crate::repair_sim::{Backend, World};

pub(crate) type Fold = BTreeMap<String, (Bytes, Option<u64>)>;

/// The test's record of one bucket incarnation's writes.
#[derive(Debug, Default)]
pub(crate) struct Log(pub(crate) Vec<(u64, String, Option<Bytes>)>);

impl Log {
    /// The fold the log implies up to `upto` (everything for `None`).
    pub(crate) fn replay(&self, upto: Option<u64>) -> Fold {
        let mut fold = Fold::new();
        for (rev, key, value) in &self.0 {
            if upto.is_some_and(|c| *rev > c) {
                break;
            }
            match value {
                Some(v) => fold.insert(key.clone(), (v.clone(), Some(*rev))),
                None => fold.remove(key),
            };
        }
        fold
    }

    /// The key's last event: (revision, value or delete).
    pub(crate) fn latest(&self, key: &str) -> Option<(u64, Option<&Bytes>)> {
        self.0
            .iter()
            .rev()
            .find(|(_, k, _)| k == key)
            .map(|(r, _, v)| (*r, v.as_ref()))
    }

    /// Whether the log put `value` to `key` at `rev`.
    pub(crate) fn has(&self, key: &str, rev: u64, value: &Bytes) -> bool {
        self.0
            .iter()
            .any(|(r, k, v)| *r == rev && k == key && v.as_ref() == Some(value))
    }

    pub(crate) fn changed_after(&self, key: &str, cursor: Option<u64>) -> bool {
        self.0
            .iter()
            .any(|(r, k, _)| k == key && cursor.is_none_or(|c| *r > c))
    }

    pub(crate) fn keys(&self) -> BTreeSet<&String> {
        self.0.iter().map(|(_, k, _)| k).collect()
    }
}

/// One bucket incarnation.
pub(crate) struct Incarnation {
    pub(crate) identity: BucketIdentity,
    pub(crate) log: Log,
    pub(crate) artifacts: PathBuf,
    /// The highest cursor of an artifact taken in this incarnation.
    pub(crate) artifact_max: Option<u64>,
    /// Retained sequences when the incarnation was deleted.
    pub(crate) final_retained: Option<BTreeSet<u64>>,
}

impl<B: Backend> World<B> {
    /// O2 for a recovered (fold, cursor): each key as the cursor's
    /// incarnation's log has it at the cursor, except where
    /// - the log changes the key after the cursor, or after a relist's
    ///   unchecked floor below it (a state-sync committed before it caught
    ///   up, or whose floor a purge passed; a restore's deletes, committed
    ///   with the old cursor);
    /// - the key is missing and its last event has left the bucket (a
    ///   relist's or restore's deletes, committed with the old cursor);
    /// - the entry is newer than the cursor but is exactly the log's write
    ///   and an artifact at or past it exists (a restore's chunks, committed
    ///   with the old cursor; the last commit moves it);
    /// - the entry is exactly a write of an older incarnation (a repair
    ///   after a recreation has not replaced it yet);
    /// - the cursor is of an older incarnation and the key is missing, or
    ///   is exactly a newer incarnation's write an artifact holds (a repair
    ///   after a recreation, its deletes and chunks committed with the old
    ///   cursor).
    pub(crate) fn check_prefix(&self, fold: &Fold, cursor: &WatchCursor, what: &str) {
        let at = cursor
            .identity()
            .and_then(|id| self.incs.iter().position(|i| i.identity == *id))
            .unwrap_or(self.incs.len() - 1);
        let inc = &self.incs[at];
        let c = cursor.revision();
        // Above a relist's unchecked floor the fold may lack what a purge
        // took before the state-sync delivered it; the engine trusts it
        // only below, and checks the floor at its next `CaughtUp`.
        let trusted = match (c, cursor.unchecked_floor()) {
            (Some(c), Some(floor)) => Some(c.min(floor.saturating_sub(1))),
            _ => c,
        };
        let replay = if c.is_some() {
            inc.log.replay(c)
        } else {
            Fold::new()
        };
        let retained = inc
            .final_retained
            .clone()
            .unwrap_or_else(|| self.retained());
        let keys: BTreeSet<&String> = fold.keys().chain(replay.keys()).collect();
        for key in keys {
            let (have, want) = (fold.get(key), replay.get(key));
            if have == want {
                continue;
            }
            let replaced = at + 1 < self.incs.len();
            if let Some((value, Some(rev))) = have {
                if self.incs[..at].iter().any(|i| i.log.has(key, *rev, value)) {
                    continue;
                }
                if replaced
                    && self.incs[at + 1..].iter().any(|i| {
                        i.log.has(key, *rev, value) && i.artifact_max.is_some_and(|a| a >= *rev)
                    })
                {
                    continue;
                }
                if c.is_none_or(|c| *rev > c) {
                    assert!(
                        inc.log.has(key, *rev, value)
                            && inc.artifact_max.is_some_and(|a| a >= *rev),
                        "O2 {what}: {key} at {rev} is newer than the cursor {c:?} and no artifact holds it"
                    );
                    continue;
                }
            }
            if inc.log.changed_after(key, trusted) || (replaced && have.is_none()) {
                continue;
            }
            let vanished = inc
                .log
                .latest(key)
                .is_some_and(|(rev, _)| !retained.contains(&rev));
            // A due repair (K11 generalised) is the engine saying the fold
            // may still hold a key whose latest message left unseen.
            if vanished && cursor.repair_due() {
                continue;
            }
            assert!(
                have.is_none() && vanished,
                "O2 {what}: {key} is {have:?} in the fold at {c:?}, {want:?} in the log"
            );
        }
    }

    /// O1 on a caught-up fold: each key as the log has it, except a key
    /// whose last write left the bucket, which a fold may keep (a restore
    /// brought it, or the node saw it) or lack, but lack only if a listing
    /// or a restore ran since it left. A delete whose marker left the
    /// bucket must still be a delete.
    pub(crate) fn check_converged(&self, fold: &Fold, cursor: &WatchCursor, what: &str) {
        let inc = self.cur();
        let c = cursor.revision();
        assert!(
            c >= self.caught_up_at() && c <= self.last(),
            "O1 {what}: cursor {c:?} at the end, the bucket ends at {:?}, retains up to {:?}",
            self.last(),
            self.caught_up_at()
        );
        if let Some(id) = cursor.identity() {
            assert_eq!(id, &inc.identity, "O1 {what}: cursor of the current bucket");
        }
        let truth = inc.log.replay(None);
        let retained = self.retained();
        let repairs = self.repairs();
        let log_keys = inc.log.keys();
        let keys: BTreeSet<&String> = fold.keys().chain(log_keys).collect();
        for key in keys {
            let have = fold.get(key);
            let Some((rev, value)) = inc.log.latest(key) else {
                panic!("O1 {what}: {key} is {have:?}, never written to this bucket");
            };
            let exact = truth.get(key);
            if retained.contains(&rev) || have.is_some() || value.is_none() {
                assert_eq!(have, exact, "O1 {what}: {key}");
                continue;
            }
            let noted = self.evicted.get(key).copied();
            assert!(
                noted.is_some_and(|(r, n)| r == rev && repairs > n),
                "O1 {what}: {key} (written at {rev}, evicted, noted {noted:?}) is gone \
                 without a listing or restore since ({repairs})"
            );
        }
    }

    /// O3: committed cursors never decrease within one incarnation; what
    /// `apply` saw (the App's checks); runs without a repair parse
    /// revisions in order without skipping a retained one.
    pub(crate) fn check_applied(&self) {
        for lineage in &self.lineages {
            let commits = lineage.lock().unwrap();
            for pair in commits.windows(2) {
                let (a, b) = (&pair[0], &pair[1]);
                let same = a.identity().is_none()
                    || b.identity().is_none()
                    || a.identity() == b.identity();
                assert!(
                    !same || a.rank() <= b.rank(),
                    "O3: committed cursor went back from {a:?} to {b:?}"
                );
            }
        }
        let seen = self.app.seen();
        let retained = self.retained();
        for (i, run) in self.runs.iter().enumerate() {
            for v in &seen.violations[run.violations.0..run.violations.1] {
                // A restore may bring back a key (one that aged out) at a
                // revision below the cursor; after a recreation the cursor
                // restarts.
                let restored = run.fetches.1 > run.fetches.0 && v.starts_with("batch ");
                // (or, the node up across it, a key's revision restarts).
                let restarted = !run.current
                    && (v.starts_with("cursor went back")
                        || v.starts_with("batch ")
                        || (v.starts_with("key ") && v.contains(" moved back to ")));
                assert!(restored || restarted, "O3 in run {i}: {v}");
            }
            let parsed = &seen.parsed[run.parsed.0..run.parsed.1];
            let fresh = u64::from(run.start.revision().is_none());
            let repaired = run.fetches.1 > run.fetches.0
                || run.listings.1 - run.listings.0 > fresh
                || parsed.iter().any(Option::is_none);
            if repaired || !run.current || run.inc + 1 != self.incs.len() {
                continue;
            }
            let revs: Vec<u64> = parsed.iter().map(|r| r.unwrap()).collect();
            assert!(
                revs.windows(2).all(|w| w[0] < w[1]),
                "O3: revisions not increasing in run {i}: {revs:?}"
            );
            let Some(start) = run.start.revision() else {
                continue;
            };
            let mut prev = start;
            for &r in &revs {
                assert!(r > start, "O3: {r} at or below the start cursor {start}");
                let skipped: Vec<_> = retained.range(prev + 1..r).collect();
                assert!(
                    skipped.is_empty(),
                    "O3: retained {skipped:?} skipped before {r}"
                );
                prev = r;
            }
        }
    }
}
