//! Expiries a fold lacks: a fold written before per-message expiries were
//! recorded (`expiries_unrecorded`) takes them from one listing of the
//! bucket, without anything reaching `apply` (the application already
//! holds those entries; only their expiry was unknown).

use std::vec::Drain;

use slipstream_kv::{KvUpdate, KvWatcher, WatchCursor};

use super::Repair;
use super::listing::{Listed, push_listed};
use crate::error::AppliedError;
use crate::slot::StoreSlot;
use crate::spill::KeySorter;

impl<W, S, P, A, O, T> Repair<'_, W, S, P, A, O, T>
where
    W: KvWatcher,
    S: StoreSlot,
    P: FnMut(&KvUpdate) -> Option<T>,
    A: FnMut(Drain<'_, T>),
    O: FnMut(&WatchCursor),
{
    /// A fold written before expiries were recorded: take them from one
    /// listing of the bucket. An entry the listing holds at the fold's own
    /// version gets its expiry, committed without reaching `apply` (the
    /// application holds the entry already). A fold key the listing lacks
    /// may have expired unseen: the repair that finds out is made due.
    /// Returns false when shutdown came first.
    pub(crate) async fn record_missing_expiries(
        &mut self,
        allows_ttl: bool,
    ) -> Result<bool, AppliedError> {
        // No entry of a bucket without per-message TTL expires, and a node
        // without a store (or with an empty one) has no fold to annotate.
        if !S::DURABLE || !allows_ttl || !self.fold.has_data(&self.config.scope).await? {
            self.fold
                .cursor
                .update(|c| c.with_expiries_unrecorded(false));
            return Ok(true);
        }
        self.fold.commit_all().await?;
        tracing::info!(
            watch = %self.config.name,
            "the fold was written before per-message expiries were recorded; reading them from the bucket",
        );
        let mut listed = KeySorter::new(&self.config.scratch)?;
        let Some(mut stream) = self.open_listing().await? else {
            return Ok(false);
        };
        let mut expiring = Vec::new();
        let mut annotated = 0u64;
        loop {
            let update = match self.next_listed(&mut stream).await? {
                Listed::Update(update) => update,
                Listed::CaughtUp => break,
                Listed::Shutdown => return Ok(false),
            };
            let revision = update.revision();
            let live = matches!(update, KvUpdate::Put(_));
            let key = update.key().to_owned();
            if update.expires().is_some() {
                expiring.push(update);
            }
            push_listed(&mut listed, key, revision, live).await?;
            if expiring.len() >= self.config.batch.max {
                annotated += self.annotate(std::mem::take(&mut expiring)).await?;
            }
        }
        drop(stream);
        annotated += self.annotate(expiring).await?;
        let (fold_len, vanished) = self.vanished_keys(listed).await?;
        tracing::info!(
            watch = %self.config.name,
            annotated,
            fold_len,
            unlisted = vanished.len(),
            "per-message expiries recorded",
        );
        self.fold
            .cursor
            .update(|c| c.with_expiries_unrecorded(false));
        if !vanished.is_empty() && self.config.repairs_gaps(S::DURABLE) {
            // Keys the bucket no longer lists: expired (or deleted) while
            // no expiry was known for them.
            self.fold.cursor.update(|c| c.with_repair_due(true));
        }
        self.fold.commit_all().await?;
        Ok(true)
    }

    /// Commit the listed expiring puts whose version the fold holds, store
    /// only; returns how many.
    async fn annotate(&mut self, puts: Vec<KvUpdate>) -> Result<u64, AppliedError> {
        if puts.is_empty() {
            return Ok(0);
        }
        self.fold.commit_all().await?;
        let same = self
            .fold
            .with_store("recording expiries", move |store| {
                let mut same = Vec::with_capacity(puts.len());
                for put in puts {
                    match store.get_entry(put.key()) {
                        Ok(Some(entry)) if entry.version == put.version() => same.push(put),
                        Ok(_) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(same)
            })
            .await?;
        let same = same.map_err(|source| AppliedError::Store {
            operation: "recording expiries",
            source,
        })?;
        let count = u64::try_from(same.len()).unwrap_or(u64::MAX);
        for put in same {
            self.fold.store_only(put);
        }
        self.fold.commit_all().await?;
        Ok(count)
    }
}
