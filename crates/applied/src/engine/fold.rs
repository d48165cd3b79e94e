//! The fold's side of the engine: updates in, `apply`, the cursor, commits
//! and what they report (E1–E4, E9). Everything that changes the fold goes
//! through here, deliveries and a repair's synthetic updates alike.

use std::ops::ControlFlow;
use std::vec::Drain;

use slipstream_kv::{KvUpdate, Retention, Timestamp, WatchCursor, WatchScope};
use slipstream_protocol::{is_replay, listing_is_truth, next_high_water};
use tokio::time::{Instant, sleep};

use super::batch::Batch;
use super::commit::{Commits, Settled};
use super::cursor::CursorState;
use super::timer::Timer;
use crate::config::{RetryPolicy, Settings};
use crate::error::AppliedError;
use crate::handlers::Handlers;
use crate::slot::StoreSlot;
use crate::status::Reporter;
use crate::ttl::{Expiries, expired};

pub(crate) struct Fold<S, P, A, O, T> {
    pub(super) cursor: CursorState,
    /// The last cursor committed (with a store) and reported.
    committed: WatchCursor,
    pub(super) batch: Batch<T>,
    pub(super) commits: Commits<S>,
    /// Retries a failed commit after its backoff.
    pub(super) retry_timer: Timer,
    /// The fold's keys that expire (per-message TTL).
    pub(super) expiries: Expiries,
    handlers: Handlers<P, A, O>,
    pub(super) reporter: Reporter,
    name: String,
    retry: RetryPolicy,
}

impl<S, P, A, O, T> Fold<S, P, A, O, T>
where
    S: StoreSlot,
    P: FnMut(&KvUpdate) -> Option<T>,
    A: FnMut(Drain<'_, T>),
    O: FnMut(&WatchCursor),
{
    pub(crate) fn new(
        store: S,
        start: WatchCursor,
        handlers: Handlers<P, A, O>,
        reporter: Reporter,
        settings: &Settings,
    ) -> Self {
        Self {
            cursor: CursorState::new(start.clone()),
            committed: start,
            batch: Batch::new(settings.batch.max, settings.batch.window, S::DURABLE),
            commits: Commits::new(store),
            retry_timer: Timer::new(),
            expiries: Expiries::default(),
            handlers,
            reporter,
            name: settings.name.clone(),
            retry: settings.retry,
        }
    }

    /// The applied cursor.
    pub(crate) const fn applied(&self) -> &WatchCursor {
        self.cursor.applied()
    }

    /// The last cursor committed (with a store) and reported.
    pub(crate) const fn committed(&self) -> &WatchCursor {
        &self.committed
    }

    /// The store and the last reported cursor, once the engine is done.
    pub(crate) fn into_parts(self) -> (Option<S>, WatchCursor) {
        (self.commits.into_store(), self.committed)
    }

    /// The highest revision received: applied, or in the open batch; 0
    /// without a position.
    pub(crate) fn frontier(&self) -> u64 {
        next_high_water(self.cursor.applied().revision(), self.batch.high()).unwrap_or(0)
    }

    /// Take one delivery into the open batch; true when the batch is full.
    /// A replay (K5) is dropped before `parse`.
    pub(crate) fn receive(&mut self, update: KvUpdate) -> bool {
        let revision = update.revision();
        let received = next_high_water(self.cursor.applied().revision(), self.batch.high());
        if is_replay(received, revision) {
            tracing::debug!(watch = %self.name, ?revision, "replay dropped");
            self.reporter.replay_dropped();
            return false;
        }
        if let Some(revision) = revision {
            self.batch.raise_high(revision, update.created());
        }
        self.intake(update)
    }

    /// Take an update that is not a delivery (a repair's delete or restored
    /// entry, an expiry) into the open batch: no replay filter and no
    /// cursor movement; true when the batch is full.
    pub(crate) fn intake(&mut self, update: KvUpdate) -> bool {
        self.expiries.note(&update);
        let item = (self.handlers.parse)(&update);
        self.batch.add(update, item)
    }

    /// Take an update for the store alone: it changes nothing the
    /// application sees (an expiry learnt for an entry it holds).
    pub(crate) fn store_only(&mut self, update: KvUpdate) {
        self.expiries.note(&update);
        self.batch.add_store_only(update);
    }

    /// Close the open batch: apply, move the cursor, start its commit (E3).
    /// The commit runs while the next batch is received; it is reported
    /// when it finishes. Without a store the cursor is reported here.
    pub(crate) async fn flush(&mut self) -> Result<(), AppliedError> {
        let closed = self.batch.close();
        if closed.size == 0 && !self.batch.has_raw() {
            if S::DURABLE {
                self.settle().await?;
            }
            if self.committed == *self.cursor.applied() {
                self.retry_timer.disarm();
                return Ok(());
            }
            // A commit of the cursor alone (a repair's final cursor, the
            // eviction memo) failed: it is retried like any other.
        }
        if let Some(items) = self.batch.parsed() {
            (self.handlers.apply)(items);
        }
        let applied = self.cursor.applied().revision();
        if let Some((revision, time)) = closed.high
            && next_high_water(applied, Some(revision)) != applied
        {
            self.cursor.advance(revision, time);
        }
        if closed.size > 0 {
            self.reporter.batch(closed.size);
        }
        if let Some(revision) = self.cursor.applied().revision() {
            self.reporter.stream_last(revision);
        }
        let expiring = !self.expiries.is_empty();
        if self.cursor.applied().holds_expiring() != expiring {
            self.cursor.update(|c| c.with_holds_expiring(expiring));
        }
        self.commit_cursor().await
    }

    /// Commit what waits and the applied cursor; without a store, report
    /// the cursor.
    async fn commit_cursor(&mut self) -> Result<(), AppliedError> {
        if S::DURABLE {
            // After the previous commit settled: a failed one is already
            // back in front of the newer updates, so this one is cumulative.
            self.settle().await?;
            let raw = self.batch.take_raw(self.commits.spare());
            self.retry_timer.disarm();
            self.commits.start(raw, self.cursor.applied().clone())
        } else {
            self.report(self.cursor.applied().clone());
            Ok(())
        }
    }

    /// Flush and wait until everything received and the applied cursor are
    /// committed, retrying failed commits with backoff up to the
    /// consecutive-failure limit. A repair reads the store only after this,
    /// so a re-queued update cannot be missing from its scan.
    pub(crate) async fn commit_all(&mut self) -> Result<(), AppliedError> {
        self.flush().await?;
        self.settle().await?;
        while self.batch.has_raw() || (S::DURABLE && self.committed != *self.cursor.applied()) {
            sleep(self.retry.backoff(self.commits.failures())).await;
            self.flush().await?;
            self.settle().await?;
        }
        Ok(())
    }

    /// Wait for the commit in flight, if any, and take its outcome.
    pub(crate) async fn settle(&mut self) -> Result<(), AppliedError> {
        match self.commits.settle().await {
            Some(settled) => self.settled(settled?),
            None => Ok(()),
        }
    }

    /// Take a finished commit's outcome: report its cursor, or re-queue its
    /// updates in front of those received while it ran (E4).
    pub(crate) fn settled(&mut self, settled: Settled) -> Result<(), AppliedError> {
        match settled {
            Settled::Committed { cursor, took } => {
                self.reporter.commit_took(took);
                self.report(cursor);
                Ok(())
            }
            Settled::Failed {
                raw,
                error,
                failures,
            } => {
                self.reporter.store_failure();
                if failures >= self.retry.max_store_failures {
                    return Err(AppliedError::StoreFailed {
                        attempts: failures,
                        last: error,
                    });
                }
                tracing::warn!(
                    watch = %self.name,
                    %error,
                    failures,
                    queued = raw.len(),
                    "store commit failed; re-queued in front of newer updates",
                );
                self.batch.requeue(raw);
                let pause = self.retry.backoff(failures);
                self.retry_timer.arm(Instant::now() + pause);
                Ok(())
            }
        }
    }

    /// `cursor` is committed (or, without a store, applied): publish it.
    fn report(&mut self, cursor: WatchCursor) {
        self.reporter.applied(cursor.revision());
        self.reporter.repair_due(cursor.repair_due());
        (self.handlers.on_applied)(&cursor);
        self.committed = cursor;
    }

    /// Run `task` with the store on a blocking thread, after the commit in
    /// flight settled (its failure counts and re-queues as in
    /// [`Fold::flush`]); the store is put back. The error is a panicked
    /// task that took the store with it, or too many failed commits.
    pub(crate) async fn with_store<R, F>(
        &mut self,
        operation: &'static str,
        task: F,
    ) -> Result<R, AppliedError>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.settle().await?;
        self.commits.with_store(operation, task).await
    }

    /// Whether the fold holds any key in `scope`.
    pub(crate) async fn has_data(&mut self, scope: &WatchScope) -> Result<bool, AppliedError> {
        if !S::DURABLE {
            return Ok(false);
        }
        let scope = scope.clone();
        let scanned = self
            .with_store("repair scan", move |store| {
                let mut any = false;
                let scanned = store.for_each_entry(&scope, &mut |_, _| {
                    any = true;
                    ControlFlow::Break(())
                });
                scanned.map(|()| any)
            })
            .await?;
        scanned.map_err(|source| AppliedError::Store {
            operation: "repair scan",
            source,
        })
    }

    /// Take a retention read into the status' lag and the cursor's memo.
    pub(crate) async fn note_retention(
        &mut self,
        retention: &Retention,
    ) -> Result<(), AppliedError> {
        self.reporter.stream_last(retention.last_revision);
        self.note_eviction(retention).await
    }

    /// R5: the first time retention is seen to have evicted current values
    /// (an evicting bucket whose head has moved, so K7 fails on retention
    /// alone), record it in the cursor's memo and commit it right away when
    /// no batch is open (otherwise the next flush carries it).
    pub(crate) async fn note_eviction(
        &mut self,
        retention: &Retention,
    ) -> Result<(), AppliedError> {
        if self.cursor.applied().seen_evicting()
            || listing_is_truth(
                retention.evicts_current_values(),
                retention.first_revision,
                false,
            )
        {
            return Ok(());
        }
        tracing::warn!(
            watch = %self.name,
            first_revision = retention.first_revision,
            "retention evicts current values; the bucket's listing is no longer trusted",
        );
        self.cursor.update(WatchCursor::with_seen_evicting);
        if self.batch.is_open() {
            return Ok(());
        }
        self.commit_cursor().await
    }

    /// Read the fold's expiries in `scope` from the store, when its cursor
    /// says it holds any.
    pub(crate) async fn load_expiries(&mut self, scope: &WatchScope) -> Result<(), AppliedError> {
        if !S::DURABLE || !self.cursor.applied().holds_expiring() {
            return Ok(());
        }
        let scope = scope.clone();
        let scanned = self
            .with_store("reading expiries", move |store| {
                let mut found = Vec::new();
                let scanned = store.for_each_entry(&scope, &mut |key, entry| {
                    if let Some(at) = entry.expires {
                        found.push((key.to_owned(), at));
                    }
                    ControlFlow::Continue(())
                });
                scanned.map(|()| found)
            })
            .await?;
        let found = scanned.map_err(|source| AppliedError::Store {
            operation: "reading expiries",
            source,
        })?;
        tracing::debug!(watch = %self.name, expiring = found.len(), "read the fold's expiries");
        for (key, at) in found {
            self.expiries.set(&key, Some(at));
        }
        Ok(())
    }

    /// Remove every entry whose expiry is at or before `now`, through
    /// `parse` and `apply` like a delete.
    pub(crate) async fn expire_due(&mut self, now: Timestamp) -> Result<(), AppliedError> {
        let due = self.expiries.take_due(now);
        if due.is_empty() {
            return Ok(());
        }
        tracing::debug!(watch = %self.name, entries = due.len(), "entries expired");
        self.reporter.expired(due.len());
        for (key, at) in due {
            if self.intake(expired(key, at)) {
                self.flush().await?;
            }
        }
        Ok(())
    }
}
