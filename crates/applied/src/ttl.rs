//! Per-message TTL in the fold: the engine removes an entry when the
//! expiry its put carried (`Nats-TTL`: the message's server time plus the
//! TTL) has passed, through `parse`/`apply`/commit like any delete (E1).
//!
//! The server removes such a message at its own clock, and a bucket
//! without delete markers says nothing when it does, so nothing arrives on
//! the watch: the fold has to know the expiry itself. Expiries are compared
//! with the bucket's clock as the backend keeps it (`KvWatcher::now`; on
//! NATS this node's wall clock), so a clock ahead of the server's removes
//! an entry that much early, and one behind, that much late. A timer
//! wakes the engine at the soonest expiry, and every status refresh looks
//! too, which is what notices a simulated clock moved.
//!
//! The index holds only keys whose entry expires. A node starts from a
//! cursor that says whether the fold holds any (`holds_expiring`), and
//! reads them from the store only then. A fold written before expiries
//! were recorded (`expiries_unrecorded`) takes them from one listing of
//! the bucket, without anything reaching `apply`: the application already
//! holds those entries, only their expiry was unknown.

use std::collections::{BTreeSet, HashMap};
use std::ops::ControlFlow;
use std::time::Duration;
use std::vec::Drain;

use slipstream_kv::{KvMarker, KvUpdate, KvWatcher, Timestamp, VersionToken, WatchCursor};
use tokio::time::Instant;

use crate::engine::Engine;
use crate::error::AppliedError;
use crate::expiry::{Listed, push_listed};
use crate::slot::StoreSlot;
use crate::spill::KeySorter;

/// The fold's keys that expire, soonest first.
#[derive(Debug, Default)]
pub(crate) struct Expiries {
    by_time: BTreeSet<(Timestamp, String)>,
    by_key: HashMap<String, Timestamp>,
}

impl Expiries {
    /// Follow an update into the fold: a put replaces the key's expiry
    /// (with none when it has none), anything else removes it.
    pub(crate) fn note(&mut self, update: &KvUpdate) {
        self.set(update.key(), update.expires());
    }

    /// Set (or, with `None`, clear) the key's expiry.
    pub(crate) fn set(&mut self, key: &str, expires: Option<Timestamp>) {
        // Most buckets never set a TTL: a delivery then costs no lookup.
        if expires.is_none() && self.by_key.is_empty() {
            return;
        }
        match expires {
            Some(at) => {
                if let Some(old) = self.by_key.insert(key.to_owned(), at) {
                    if old == at {
                        return;
                    }
                    self.by_time.remove(&(old, key.to_owned()));
                }
                self.by_time.insert((at, key.to_owned()));
            }
            None => {
                if let Some(old) = self.by_key.remove(key) {
                    self.by_time.remove(&(old, key.to_owned()));
                }
            }
        }
    }

    /// The soonest expiry.
    pub(crate) fn next(&self) -> Option<Timestamp> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Whether no key of the fold expires.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Take every key whose expiry is at or before `now`, soonest first.
    pub(crate) fn take_due(&mut self, now: Timestamp) -> Vec<(String, Timestamp)> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.by_time.first() {
            if *at > now {
                break;
            }
            let Some((at, key)) = self.by_time.pop_first() else {
                break;
            };
            self.by_key.remove(&key);
            due.push((key, at));
        }
        due
    }
}

/// The delete an expiry stands for: no version (it moves no cursor), the
/// expiry as its time.
fn expired(key: String, at: Timestamp) -> KvUpdate {
    KvUpdate::Delete(KvMarker {
        key,
        version: VersionToken::unknown(),
        created: Some(at),
    })
}

/// When the timer for an expiry at `at` should fire, the bucket's clock
/// reading `now`.
pub(crate) fn deadline_for(at: Timestamp, now: Timestamp) -> Instant {
    let wait = now.until(at);
    // Far expiries are looked at again within the hour, so a wall clock
    // stepped meanwhile is noticed.
    Instant::now() + wait.min(Duration::from_secs(3600))
}

impl<W, S, P, A, O, T> Engine<W, S, P, A, O, T>
where
    W: KvWatcher,
    S: StoreSlot,
    P: FnMut(&KvUpdate) -> Option<T>,
    A: FnMut(Drain<'_, T>),
    O: FnMut(&WatchCursor),
{
    /// Read the fold's expiries from the store, when its cursor says it
    /// holds any.
    pub(crate) async fn load_expiries(&mut self) -> Result<(), AppliedError> {
        if !S::DURABLE || !self.applied.holds_expiring() {
            return Ok(());
        }
        let store = self.take_store("reading expiries").await?;
        let scope = self.config.scope.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            let scanned = store.for_each_entry(&scope, &mut |key, entry| {
                if let Some(at) = entry.expires {
                    found.push((key.to_owned(), at));
                }
                ControlFlow::Continue(())
            });
            (store, scanned.map(|()| found))
        })
        .await;
        let Ok((store, scanned)) = joined else {
            return Err(AppliedError::StorePanicked {
                operation: "reading expiries",
            });
        };
        self.store = Some(store);
        let found = scanned.map_err(|source| AppliedError::Store {
            operation: "reading expiries",
            source,
        })?;
        tracing::debug!(watch = %self.config.name, expiring = found.len(), "read the fold's expiries");
        for (key, at) in found {
            self.expiries.set(&key, Some(at));
        }
        Ok(())
    }

    /// Remove every entry whose expiry has passed, through `parse` and
    /// `apply` like a delete.
    pub(crate) async fn expire_due(&mut self) -> Result<(), AppliedError> {
        let due = self.expiries.take_due(self.watcher.now());
        if due.is_empty() {
            return Ok(());
        }
        tracing::debug!(watch = %self.config.name, entries = due.len(), "entries expired");
        self.reporter().expired(due.len());
        for (key, at) in due {
            if self.receive(expired(key, at)) {
                self.flush().await?;
            }
        }
        Ok(())
    }

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
        if !S::DURABLE || !allows_ttl || !self.fold_has_data().await? {
            self.applied = self.applied.clone().with_expiries_unrecorded(false);
            return Ok(true);
        }
        self.commit_all().await?;
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
        self.applied = self.applied.clone().with_expiries_unrecorded(false);
        if !vanished.is_empty() && self.repairs_gaps() {
            // Keys the bucket no longer lists: expired (or deleted) while
            // no expiry was known for them.
            self.applied = self.applied.clone().with_repair_due(true);
        }
        self.commit_all().await?;
        Ok(true)
    }

    /// Commit the listed expiring puts whose version the fold holds, store
    /// only; returns how many.
    async fn annotate(&mut self, puts: Vec<KvUpdate>) -> Result<u64, AppliedError> {
        if puts.is_empty() {
            return Ok(0);
        }
        self.commit_all().await?;
        let store = self.take_store("recording expiries").await?;
        let joined = tokio::task::spawn_blocking(move || {
            let mut same = Vec::with_capacity(puts.len());
            for put in puts {
                match store.get_entry(put.key()) {
                    Ok(Some(entry)) if entry.version == put.version() => same.push(put),
                    Ok(_) => {}
                    Err(e) => return (store, Err(e)),
                }
            }
            (store, Ok(same))
        })
        .await;
        let Ok((store, same)) = joined else {
            return Err(AppliedError::StorePanicked {
                operation: "recording expiries",
            });
        };
        self.store = Some(store);
        let same = same.map_err(|source| AppliedError::Store {
            operation: "recording expiries",
            source,
        })?;
        let count = u64::try_from(same.len()).unwrap_or(u64::MAX);
        for put in same {
            self.receive_store_only(put);
        }
        self.commit_all().await?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, at: Option<u64>) -> KvUpdate {
        KvUpdate::Put(slipstream_kv::KvEntry {
            key: key.into(),
            value: bytes::Bytes::from_static(b"v"),
            version: VersionToken::from_u64(1),
            created: None,
            expires: at.map(Timestamp::from_unix_nanos),
        })
    }

    #[test]
    fn a_rewrite_moves_or_clears_the_expiry_and_a_delete_clears_it() {
        let mut e = Expiries::default();
        e.note(&put("a", Some(10)));
        e.note(&put("b", Some(20)));
        e.note(&put("a", Some(30)));
        assert_eq!(e.next(), Some(Timestamp::from_unix_nanos(20)));
        e.note(&put("b", None));
        assert_eq!(e.next(), Some(Timestamp::from_unix_nanos(30)));
        e.note(&KvUpdate::synthetic_delete("a"));
        assert!(e.is_empty());
        assert_eq!(e.next(), None);
    }

    #[test]
    fn only_what_is_due_is_taken_soonest_first() {
        let mut e = Expiries::default();
        for (k, at) in [("c", 30), ("a", 10), ("b", 20)] {
            e.note(&put(k, Some(at)));
        }
        let due = e.take_due(Timestamp::from_unix_nanos(20));
        let keys: Vec<_> = due.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(e.next(), Some(Timestamp::from_unix_nanos(30)));
        assert!(e.take_due(Timestamp::from_unix_nanos(29)).is_empty());
    }
}
