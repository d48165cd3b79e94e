//! The restore repair (R3, R9): bring the fold forward to an artifact's
//! cursor without moving any key backward or deleting a live one (K10).
//!
//! Order, so a refusal or failure changes nothing: find the newest
//! artifact, check backend, scope, bucket identity and K6 on its manifest
//! (`artifact_refusal`); fetch and import it into scratch as a temporary
//! fold of the same backend; re-check on what was imported; find the
//! fold's keys the artifact lacks and ask the bucket's listing which of
//! them are still live; apply the mass-delete guard. Only then are the
//! changes folded through `parse`/`apply`/store in `max`-sized chunks
//! (deletes first, then the artifact's entries the fold should take), with
//! the cursor unchanged; the final commit moves it to the artifact's
//! cursor.
//!
//! Memory: the artifact is read as a stream of `max`-sized chunks; the
//! keys the artifact lacks are held (they are the candidate deletions).

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::vec::Drain;

use slipstream_kv::{KvEntry, KvUpdate, KvWatcher, Retention, WatchCursor};
use slipstream_protocol::{RestoreAction, restore_key};
use slipstream_snapshot::{ArtifactManifest, StoredEntry};
use tokio::sync::mpsc;

use super::listing::Listed;
use super::{AfterExpiry, Repair};
use crate::error::{AppliedError, RepairCause, RestoreRefusal};
use crate::restore::{artifact_refusal, restore_failed};
use crate::slot::StoreSlot;
use crate::source::fetch_to_scratch;

/// The artifact entries one chunk carries to the engine.
type Chunk = Vec<(String, StoredEntry)>;

impl<W, S, P, A, O, T> Repair<'_, W, S, P, A, O, T>
where
    W: KvWatcher,
    S: StoreSlot,
    P: FnMut(&KvUpdate) -> Option<T>,
    A: FnMut(Drain<'_, T>),
    O: FnMut(&WatchCursor),
{
    /// R3: restore the fold from the newest artifact of the configured
    /// source, then resume with a delta watch from the artifact's cursor.
    pub(super) async fn restore(
        &mut self,
        cause: RepairCause,
        retention: &Retention,
    ) -> Result<AfterExpiry, AppliedError> {
        let Some(source) = self.config.restore.clone().filter(|_| S::DURABLE) else {
            self.fold.reporter.repair("restore_unavailable");
            return Err(AppliedError::RestoreUnavailable {
                reason: cause,
                cursor: self.fold.committed().clone(),
            });
        };
        let bound = self.config.timeouts.restore;
        let failed = |stage: &'static str| {
            move |source: crate::source::SourceError| AppliedError::RestoreFailed { stage, source }
        };
        let timed_out = |stage: &'static str| AppliedError::RestoreFailed {
            stage,
            source: format!("no answer within {bound:?}").into(),
        };
        let manifest = tokio::time::timeout(bound, source.newest())
            .await
            .map_err(|_| timed_out("finding the newest artifact"))?
            .map_err(failed("finding the newest artifact"))?;
        let Some(manifest) = manifest else {
            return Err(self.refused(cause, RestoreRefusal::NoArtifact));
        };
        // A recreated bucket's revisions restart: the fold's rank says
        // nothing about the new incarnation, so every artifact key is newer.
        let local = if cause.replaces_bucket() {
            0
        } else {
            // K5: the committed cursor never goes back, so an artifact
            // must be ahead of the applied cursor itself.
            self.fold.applied().rank()
        };
        if let Some(refusal) = self.check_manifest(&manifest, local, retention) {
            return Err(self.refused(cause, refusal));
        }
        let (scratch, fetched) =
            fetch_to_scratch(&*source, &manifest, &self.config.scratch.dir, bound).await?;
        let fold_dir = scratch.path().join("fold");
        let imported =
            tokio::task::spawn_blocking(move || S::import_scratch(&fetched, &fold_dir)).await;
        let (artifact_cursor, artifact) = match imported {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => return Err(restore_failed("importing the artifact", e)),
            Err(e) => return Err(restore_failed("importing the artifact", e)),
        };
        // The directory may have changed since its manifest was read: check
        // again on what was actually imported.
        let imported_manifest = ArtifactManifest {
            cursor: artifact_cursor.clone(),
            ..manifest
        };
        if let Some(refusal) = self.check_manifest(&imported_manifest, local, retention) {
            return Err(self.refused(cause, refusal));
        }
        // A fold without a revision holds only what earlier repairs left
        // (a live watch would have given it one), possibly from another
        // incarnation: its revisions are no more comparable than a
        // recreated bucket's.
        let replaced = cause.replaces_bucket() || self.fold.applied().revision().is_none();
        let Some((fold_len, candidates, artifact)) = self.keys_artifact_lacks(artifact).await?
        else {
            return Ok(AfterExpiry::Shutdown);
        };
        let Some(deletions) = self.not_listed_live(candidates).await? else {
            return Ok(AfterExpiry::Shutdown);
        };
        let count = u64::try_from(deletions.len()).unwrap_or(u64::MAX);
        self.guard_mass_delete("restore", fold_len, count)?;
        tracing::info!(
            watch = %self.config.name,
            artifact = ?artifact_cursor.revision(),
            deletions = count,
            "restore: folding the artifact",
        );
        for key in deletions {
            if self.fold.intake(KvUpdate::synthetic_delete(key)) {
                self.fold.flush().await?;
            }
        }
        self.fold.flush().await?;
        if self.take_artifact(artifact, replaced).await? == AfterExpiry::Shutdown {
            return Ok(AfterExpiry::Shutdown);
        }
        self.fold.flush().await?;
        drop(scratch);
        let mut cursor = artifact_cursor;
        if self.fold.applied().seen_evicting() {
            cursor = cursor.with_seen_evicting();
        }
        if cursor.identity().is_none() {
            cursor = cursor.with_identity(retention.identity.clone());
        }
        self.fold.cursor.set(cursor);
        self.fold.commit_all().await?;
        self.fold.reporter.repair("restore");
        self.fold.cursor.delta_next();
        Ok(AfterExpiry::Rewatch)
    }

    fn refused(&self, cause: RepairCause, refusal: RestoreRefusal) -> AppliedError {
        self.fold.reporter.repair("restore_refused");
        tracing::error!(watch = %self.config.name, %cause, %refusal, "restore refused");
        AppliedError::RestoreRefused {
            reason: cause,
            refusal: Box::new(refusal),
            cursor: self.fold.committed().clone(),
        }
    }

    /// Whether an artifact can repair this fold ([`artifact_refusal`]
    /// against the fold's rank `local`).
    fn check_manifest(
        &self,
        manifest: &ArtifactManifest,
        local: u64,
        retention: &Retention,
    ) -> Option<RestoreRefusal> {
        artifact_refusal(manifest, S::BACKEND, &self.config.scope, local, retention)
    }

    /// Scan the fold's in-scope keys against the imported artifact: the
    /// in-scope fold size and the keys the artifact lacks. Hands the
    /// artifact store back; `None` when shutdown came first.
    async fn keys_artifact_lacks(
        &mut self,
        artifact: S,
    ) -> Result<Option<(u64, Vec<String>, S)>, AppliedError> {
        let scope = self.config.scope.clone();
        let (artifact, result) = self
            .fold
            .with_store("restore scan", move |store| {
                let mut fold_len = 0u64;
                let mut lacking = Vec::new();
                let mut lookup = Ok(());
                let scanned = store.for_each_entry(&scope, &mut |key, _| {
                    fold_len += 1;
                    match artifact.get_entry(key) {
                        Ok(Some(_)) => ControlFlow::Continue(()),
                        Ok(None) => {
                            lacking.push(key.to_owned());
                            ControlFlow::Continue(())
                        }
                        Err(e) => {
                            lookup = Err(e);
                            ControlFlow::Break(())
                        }
                    }
                });
                let result = scanned.and(lookup).map(|()| (fold_len, lacking));
                (artifact, result)
            })
            .await?;
        let (fold_len, lacking) =
            result.map_err(|e| restore_failed("comparing with the artifact", e))?;
        if self.config.shutdown.is_cancelled() {
            return Ok(None);
        }
        Ok(Some((fold_len, lacking, artifact)))
    }

    /// Of `candidates`, the keys the bucket does not list live now (K10's
    /// "never a phantom delete"), from a state-sync read up to its
    /// `CaughtUp`; `None` when shutdown came first.
    async fn not_listed_live(
        &mut self,
        candidates: Vec<String>,
    ) -> Result<Option<Vec<String>>, AppliedError> {
        if candidates.is_empty() {
            return Ok(Some(candidates));
        }
        // Per candidate: the highest revision seen and whether it is a put.
        let mut state: BTreeMap<String, Option<(Option<u64>, bool)>> =
            candidates.into_iter().map(|k| (k, None)).collect();
        let Some(mut stream) = self.open_listing().await? else {
            return Ok(None);
        };
        loop {
            let update = match self.next_listed(&mut stream).await? {
                Listed::Update(update) => update,
                Listed::CaughtUp => break,
                Listed::Shutdown => return Ok(None),
            };
            if let Some(seen) = state.get_mut(update.key()) {
                let revision = update.revision();
                // The newest record of a key wins; a later delivery wins a tie.
                if seen.is_none_or(|(r, _)| revision >= r) {
                    *seen = Some((revision, matches!(update, KvUpdate::Put(_))));
                }
            }
        }
        Ok(Some(
            state
                .into_iter()
                .filter(|(_, seen)| !matches!(seen, Some((_, true))))
                .map(|(key, _)| key)
                .collect(),
        ))
    }

    /// Stream the artifact's in-scope entries and fold every one K10 says
    /// to take, in `max`-sized chunks, the cursor unchanged. With
    /// `replaced`, the fold's entries are from an older incarnation and
    /// never win.
    async fn take_artifact(
        &mut self,
        artifact: S,
        replaced: bool,
    ) -> Result<AfterExpiry, AppliedError> {
        let chunk_len = self.config.batch.max.clamp(1, 4096);
        let scope = self.config.scope.clone();
        let (tx, mut rx) = mpsc::channel::<Chunk>(2);
        let producer = tokio::task::spawn_blocking(move || {
            let mut chunk = Vec::with_capacity(chunk_len);
            let mut receiver_gone = false;
            let scanned = artifact.for_each_entry(&scope, &mut |key, entry| {
                chunk.push((key.to_owned(), entry.to_owned_entry()));
                if chunk.len() < chunk_len {
                    return ControlFlow::Continue(());
                }
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(chunk_len));
                if tx.blocking_send(full).is_err() {
                    receiver_gone = true;
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            });
            if scanned.is_ok() && !receiver_gone && !chunk.is_empty() {
                // The engine may have stopped listening; nothing to do then.
                let _ = tx.blocking_send(chunk);
            }
            scanned
        });
        let shutdown = self.config.shutdown.clone();
        while let Some(chunk) = rx.recv().await {
            if shutdown.is_cancelled() {
                drop(rx);
                let _ = producer.await;
                return Ok(AfterExpiry::Shutdown);
            }
            for update in self.decide_chunk(chunk, replaced).await? {
                if self.fold.intake(update) {
                    self.fold.flush().await?;
                }
            }
        }
        match producer.await {
            Ok(Ok(())) => Ok(AfterExpiry::Rewatch),
            Ok(Err(e)) => Err(restore_failed("reading the artifact", e)),
            Err(e) => Err(restore_failed("reading the artifact", e)),
        }
    }

    /// K10 for one chunk of artifact entries against the fold: the puts to
    /// take. A fold entry ranks by its revision only when the fold's cursor
    /// covers it.
    async fn decide_chunk(
        &mut self,
        chunk: Chunk,
        replaced: bool,
    ) -> Result<Vec<KvUpdate>, AppliedError> {
        // Every entry the fold's history gave it is at or below its cursor;
        // one above it was left by a repair of another incarnation (a key
        // the new bucket listed live keeps its old entry), so its revision
        // says nothing here.
        let trusted_up_to = if replaced {
            None
        } else {
            self.fold.cursor.trusted()
        };
        let result = self
            .fold
            .with_store("restore scan", move |store| {
                let mut takes = Vec::new();
                for (key, entry) in chunk {
                    let local = store.get_entry(&key)?;
                    let identical = local.as_ref() == Some(&entry);
                    let local_rank = local.map(|l| match (l.version.as_u64(), trusted_up_to) {
                        (Some(revision), Some(cursor)) if revision <= cursor => revision,
                        _ => 0,
                    });
                    let artifact_rank = entry.version.as_u64().unwrap_or(0);
                    // The artifact lists the key, so "listed live" plays no part.
                    if restore_key(local_rank, Some(artifact_rank), identical, true)
                        == RestoreAction::Take
                    {
                        takes.push(KvUpdate::Put(KvEntry {
                            key,
                            value: entry.value,
                            version: entry.version,
                            created: None,
                            expires: entry.expires,
                        }));
                    }
                }
                Ok::<_, slipstream_snapshot::SnapshotError>(takes)
            })
            .await?;
        result.map_err(|e| restore_failed("comparing with the artifact", e))
    }
}
