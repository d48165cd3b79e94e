//! The operations of `simulation_repair.rs`'s schedules: writes, head
//! eviction, marker purges, ageing, exports, bucket recreation.

use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use slipstream_applied::{
    AppliedConfig, AppliedError, AppliedWatch, LocalArtifacts, MassDeletePolicy, OnExpiry,
    RepairMode, ScratchPolicy,
};
use slipstream_kv::{KvStore, KvWriter, WatchCursor, WatchScope};
use slipstream_snapshot::{ArtifactManifest, SnapshotStore};
use tokio_util::sync::CancellationToken;

use crate::common::faulty::{CommitLog, FaultyOptions, open_faulty};
use crate::common::{App, DEADLINE, FaultPlan};
use crate::repair_node::settled;
use crate::repair_oracle::{Incarnation, Log};
use crate::repair_sim::{BUCKET, Backend, KEYS, Kind, MINUTE, Node, World, bucket};

impl<B: Backend> World<B> {
    pub(crate) async fn write(&mut self) {
        let key = format!("k{}", self.rng.random_range(0..KEYS));
        let w = self.kv.writer();
        let (rev, value) = if self.rng.random_range(0..10) < 7 {
            let value = Bytes::from(format!("v{}", self.rng.random::<u32>()));
            (w.put(&key, value.clone()).await.unwrap(), Some(value))
        } else {
            w.delete(&key).await.unwrap();
            (self.admin_info().last_sequence, None)
        };
        self.cur_mut().log.0.push((rev, key, value));
    }

    /// Head eviction by the bucket's own means.
    pub(crate) fn evict(&mut self) {
        match self.kind {
            Kind::Plain | Kind::Limits => {
                let info = self.admin_info();
                if self.kind == Kind::Limits && self.rng.random_bool(0.5) {
                    let n = self.rng.random_range(KEYS / 2..3 * KEYS);
                    self.max_msgs = Some(n);
                    self.server.bucket(BUCKET).set_max_msgs(Some(n)).unwrap();
                    self.trace(&format!("max_msgs {n}"));
                } else if info.first_sequence <= info.last_sequence {
                    let below = self
                        .rng
                        .random_range(info.first_sequence + 1..=info.last_sequence + 1);
                    self.server.bucket(BUCKET).purge_below(below).unwrap();
                    self.trace(&format!("purge below {below}"));
                }
            }
            Kind::Aged => {
                let by = MINUTE * self.rng.random_range(35..100);
                self.server.clock().advance(by);
                self.trace(&format!("age by {by:?}"));
            }
        }
    }

    /// Purge a retained delete marker (b). Losing a delete this way is
    /// undetectable unless the head then passes it (K1), so unless the
    /// node has committed past the marker and no artifact predates it, the
    /// stream is purged past the marker too.
    pub(crate) fn purge_marker(&mut self) {
        if self.kind == Kind::Aged {
            return;
        }
        let retained = self.retained();
        let markers: Vec<(String, u64)> = self
            .cur()
            .log
            .keys()
            .into_iter()
            .filter_map(|k| match self.cur().log.latest(k)? {
                (rev, None) if retained.contains(&rev) => Some((k.clone(), rev)),
                _ => None,
            })
            .collect();
        if markers.is_empty() {
            return;
        }
        let (key, rev) = markers[self.rng.random_range(0..markers.len())].clone();
        self.server.bucket(BUCKET).purge_subject(&key).unwrap();
        let committed = self
            .commits
            .lock()
            .unwrap()
            .last()
            .filter(|c| c.identity() == Some(&self.cur().identity))
            .and_then(WatchCursor::revision);
        let artifacts_past = self.cur().artifact_max.is_none_or(|a| a >= rev);
        let safe = committed.is_some_and(|c| c >= rev) && artifacts_past;
        if !safe {
            self.server.bucket(BUCKET).purge_below(rev + 1).unwrap();
        }
        self.trace(&format!("purge marker {key}@{rev} (then head: {})", !safe));
    }

    pub(crate) async fn pause(&mut self) {
        match self.rng.random_range(0..4) {
            0 | 1 => {
                for _ in 0..self.rng.random_range(0..6) {
                    tokio::task::yield_now().await;
                }
            }
            2 => {
                let ms = self.rng.random_range(0..25);
                tokio::time::advance(Duration::from_millis(ms)).await;
            }
            _ => {
                // Simulated server time and the engine's timers move
                // together: ageing on one, retention refreshes on the other.
                let by = MINUTE * self.rng.random_range(1..20);
                self.server.clock().advance(by);
                // Noted before the node runs on: a listing it opens next
                // comes after this eviction.
                self.note_evictions();
                let secs = self.rng.random_range(1..15);
                tokio::time::advance(Duration::from_secs(secs)).await;
            }
        }
    }

    /// A fresh exporter node syncs to the bucket's last sequence (restoring
    /// first where it must and can, else state-syncing) and exports its
    /// fold into the incarnation's artifacts directory (d).
    pub(crate) async fn export_fresh(&mut self) {
        let n = self.exports;
        self.exports += 1;
        let last = self.caught_up_at();
        let artifacts = self.cur().artifacts.clone();
        for attempt in 0..2 {
            let options = FaultyOptions::<B> {
                inner: B::options(),
                plan: FaultPlan::new(),
                commits: CommitLog::default(),
            };
            let dir = self.work.path().join(format!("exporter-{n}-{attempt}"));
            let (_, store) = open_faulty(&dir, &options);
            let token = CancellationToken::new();
            let mut config = AppliedConfig::new(WatchScope::All)
                .store(store)
                .shutdown(token.clone())
                .scratch(ScratchPolicy {
                    dir: self.work.path().to_owned(),
                    relist_memory: 1 << 20,
                });
            if attempt == 0 {
                config = config
                    .on_expiry(OnExpiry::Repair(RepairMode::Auto))
                    .restore_from(LocalArtifacts::new(&artifacts))
                    .mass_delete(MassDeletePolicy::Allow);
            }
            let watch = AppliedWatch::new(self.kv.watcher(), config);
            let mut status = watch.status();
            let task = tokio::spawn(watch.run(App::new().handlers()));
            let failed = settled(&mut status, self.server.clock(), last, self.last()).await;
            assert!(failed.is_some(), "the exporter never settled at {last:?}");
            if failed == Some(true) {
                let finished = task.await.unwrap();
                assert!(finished.result.is_err(), "the exporter failed");
                continue;
            }
            token.cancel();
            let finished = task.await.unwrap();
            finished.result.expect("the exporter stops cleanly");
            let mut store = finished.store.unwrap();
            let manifest = store
                .export_to(&artifacts.join(format!("exp-{n}")), &WatchScope::All)
                .unwrap();
            self.took(&manifest);
            self.trace(&format!("exported at {:?}", manifest.cursor.revision()));
            return;
        }
        panic!("a state-syncing exporter never fails");
    }

    /// The node exports itself mid-run (E8) into the artifacts directory.
    pub(crate) async fn export_self(&mut self, node: &Node<B>) {
        let n = self.exports;
        self.exports += 1;
        let dest = self.cur().artifacts.join(format!("self-{n}"));
        let answer = tokio::time::timeout(DEADLINE, node.exporter.export(dest))
            .await
            .expect("the export is answered");
        match answer {
            Ok(manifest) => {
                self.took(&manifest);
                self.trace(&format!(
                    "self-exported at {:?}",
                    manifest.cursor.revision()
                ));
            }
            // The node stopped (a failed repair) before serving it.
            Err(AppliedError::ExportDropped) => {}
            Err(e) => panic!("self-export failed: {e}"),
        }
    }

    pub(crate) fn took(&mut self, manifest: &ArtifactManifest) {
        let cursor = &manifest.cursor;
        // A node that has not committed its repair after a recreation
        // exports the older incarnation's fold: the restore refuses it.
        if cursor
            .identity()
            .is_some_and(|id| *id != self.cur().identity)
        {
            return;
        }
        let inc = self.cur_mut();
        inc.artifact_max = inc.artifact_max.max(cursor.revision());
    }

    /// Delete the bucket and create it again with the same configuration
    /// (c). Half the time the node is taken down first and meets the new
    /// incarnation on its next start. Later artifacts go to a directory of
    /// their own.
    pub(crate) async fn recreate(&mut self, node: &mut Option<Node<B>>) {
        // Half the time the node stays up across it: its running watch
        // meets the deleted bucket, then the new one.
        if self.rng.random_bool(0.5)
            && let Some(node) = node.take()
        {
            self.crash(node).await;
        } else if node.is_some() {
            // Its cursor restarts in the new incarnation: not a step back.
            self.runs.last_mut().unwrap().current = false;
        }
        let retained = self.retained();
        self.cur_mut().final_retained = Some(retained);
        self.server.bucket(BUCKET).delete().unwrap();
        self.kv = bucket(&self.server, self.kind, self.history, self.max_msgs).await;
        let artifacts = self
            .work
            .path()
            .join(format!("artifacts-{}", self.incs.len()));
        std::fs::create_dir_all(&artifacts).unwrap();
        *self.source.current.lock().unwrap() = LocalArtifacts::new(&artifacts);
        let identity = self.admin_info().identity;
        self.incs.push(Incarnation {
            identity,
            log: Log::default(),
            artifacts,
            artifact_max: None,
            final_retained: None,
        });
        self.evicted.clear();
        self.trace("recreated");
    }
}
