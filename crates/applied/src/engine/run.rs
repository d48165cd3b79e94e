//! The engine: opens a watch from where the cursor says (K16), follows it,
//! runs the repair its end asks for, and stops with everything committed
//! (E5).

use std::vec::Drain;

use slipstream_kv::{BucketIdentity, ExpiryReason, KvError, KvUpdate, KvWatcher, WatchCursor};
use tokio::sync::watch;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;

use super::exports::Exports;
use super::fold::Fold;
use super::follow::{Follow, StreamEnd, Watched};
use super::open::{Opened, open_watch};
use super::repair::{AfterExpiry, Repair, RepairTrigger};
use super::retention::{self, Seen};
use super::timer::ExpiryTimer;
use crate::config::{AppliedConfig, Settings};
use crate::error::AppliedError;
use crate::handlers::Handlers;
use crate::outcome::{Finished, StopReason, Stopped};
use crate::slot::StoreSlot;
use crate::status::{Phase, Reporter, WatchStatus};

pub(crate) struct Engine<W, S, P, A, O, T> {
    watcher: W,
    config: Settings,
    fold: Fold<S, P, A, O, T>,
    seen: Seen,
    exports: Exports,
    expiry: ExpiryTimer,
}

impl<W, S, P, A, O, T> Engine<W, S, P, A, O, T>
where
    W: KvWatcher,
    S: StoreSlot,
    P: FnMut(&KvUpdate) -> Option<T>,
    A: FnMut(Drain<'_, T>),
    O: FnMut(&WatchCursor),
{
    pub(crate) fn new(
        watcher: W,
        config: AppliedConfig<S>,
        status: watch::Sender<WatchStatus>,
        handlers: Handlers<P, A, O>,
    ) -> Self {
        let AppliedConfig {
            settings: config,
            store,
            resume,
            exports,
        } = config;
        let reporter = Reporter::new(&config.name, status);
        let start = store.stored_cursor().cloned().unwrap_or(resume);
        Self {
            fold: Fold::new(store, start, handlers, reporter, &config),
            watcher,
            seen: Seen::default(),
            exports: Exports::new(exports),
            expiry: ExpiryTimer::new(),
            config,
        }
    }

    pub(crate) fn finish(self, result: Result<Stopped, AppliedError>) -> Finished<S> {
        if result.is_err() {
            self.fold.reporter.phase(Phase::Failed);
        }
        let (store, cursor) = self.fold.into_parts();
        Finished {
            result,
            store,
            cursor,
        }
    }

    /// Run the watch; on every exit no commit is left in flight, so the
    /// store is back in place (or known lost).
    pub(crate) async fn run(&mut self) -> Result<Stopped, AppliedError> {
        let result = self.watch_until_stopped().await;
        if result.is_err()
            && let Err(error) = self.fold.settle().await
        {
            tracing::warn!(watch = %self.config.name, %error, "the last commit failed too");
        }
        result
    }

    async fn watch_until_stopped(&mut self) -> Result<Stopped, AppliedError> {
        self.config.validate()?;
        let shutdown = self.config.shutdown.clone();
        self.fold.reporter.phase(Phase::Starting);
        self.fold.reporter.applied(self.fold.committed().revision());
        // Not caught up yet: the start's read only seeds the status and memo.
        let bound = self.config.timeouts.retention;
        match retention::read(&self.watcher, bound, &mut self.seen).await {
            Ok(retention) => self.fold.note_retention(&retention).await?,
            Err(error) => {
                tracing::debug!(watch = %self.config.name, %error, "retention read failed");
            }
        }
        self.fold.load_expiries(&self.config.scope).await?;
        if self.fold.applied().expiries_unrecorded() {
            let allows_ttl = self.seen.allows_ttl();
            if !self.repairs().record_missing_expiries(allows_ttl).await? {
                return self.stop(StopReason::Shutdown).await;
            }
        }
        if self.fold.applied().revision().is_none()
            && self.repair(RepairTrigger::CursorlessStart).await? == AfterExpiry::Shutdown
        {
            return self.stop(StopReason::Shutdown).await;
        }
        let mut attempt = 0u32;
        loop {
            // Report what a finished stream left committing before any
            // backoff or repair, rather than after it.
            self.fold.settle().await?;
            let start = self.fold.cursor.next_start();
            let before = self.seen.identity().cloned();
            let delta = matches!(start, slipstream_kv::WatchStart::After(_));
            let opened = open_watch(&self.watcher, &self.config, &shutdown, start).await?;
            let stream = match opened {
                Opened::Stream(s) => s,
                Opened::Shutdown => return self.stop(StopReason::Shutdown).await,
                Opened::Expired(reason) => {
                    if self.repair(RepairTrigger::Expiry(reason)).await? == AfterExpiry::Shutdown {
                        return self.stop(StopReason::Shutdown).await;
                    }
                    continue;
                }
                Opened::Failed(e) => {
                    attempt += 1;
                    if !self.backoff(&shutdown, attempt, &e).await {
                        return self.stop(StopReason::Shutdown).await;
                    }
                    continue;
                }
            };
            attempt = 0;
            let after_repair = self.fold.cursor.opened();
            let watched = Watched::new(delta, after_repair, self.seen.last());
            if self.straddles_recreation(before.as_ref()).await {
                drop(stream);
                continue;
            }
            if let Some(reason) = self.adopt_identity() {
                drop(stream);
                if self.repair(RepairTrigger::Expiry(reason)).await? == AfterExpiry::Shutdown {
                    return self.stop(StopReason::Shutdown).await;
                }
                continue;
            }
            self.fold.reporter.phase(Phase::Syncing);
            let follow = Follow {
                watcher: &self.watcher,
                config: &self.config,
                fold: &mut self.fold,
                seen: &mut self.seen,
                exports: &mut self.exports,
                expiry: &mut self.expiry,
                watched,
            };
            let trigger = match follow.run(&shutdown, stream).await? {
                StreamEnd::Shutdown => return self.stop(StopReason::Shutdown).await,
                StreamEnd::Ended => return self.stop(StopReason::EndOfStream).await,
                StreamEnd::Expired(reason) => RepairTrigger::Expiry(reason),
                StreamEnd::RepairDue => RepairTrigger::Quiet,
                StreamEnd::Failed(e) => {
                    self.fold.flush().await?;
                    self.fold.reporter.rewatch();
                    attempt += 1;
                    if !self.backoff(&shutdown, attempt, &e).await {
                        return self.stop(StopReason::Shutdown).await;
                    }
                    continue;
                }
            };
            // Drain-then-repair: everything delivered is folded first.
            self.fold.flush().await?;
            if self.repair(trigger).await? == AfterExpiry::Shutdown {
                return self.stop(StopReason::Shutdown).await;
            }
        }
    }

    /// A cursor without an identity takes the bucket's as it is now. One
    /// without a revision but with another identity was left by a repair
    /// of an earlier incarnation: its fold was compared with that bucket,
    /// not this one (R7), so it asks for a repair.
    fn adopt_identity(&mut self) -> Option<ExpiryReason> {
        let found = self.seen.identity()?.clone();
        match self.fold.applied().identity() {
            None => {
                self.fold.cursor.update(|c| c.with_identity(found));
                None
            }
            Some(known) if *known != found && self.fold.applied().revision().is_none() => {
                Some(ExpiryReason::IdentityChanged {
                    expected: known.clone(),
                    found,
                })
            }
            Some(_) => None,
        }
    }

    /// What a repair works on.
    fn repairs(&mut self) -> Repair<'_, W, S, P, A, O, T> {
        Repair {
            watcher: &self.watcher,
            config: &self.config,
            fold: &mut self.fold,
            seen: &mut self.seen,
        }
    }

    async fn repair(&mut self, trigger: RepairTrigger) -> Result<AfterExpiry, AppliedError> {
        self.repairs().run(trigger).await
    }

    /// Flush the pending batch and stop (E5). A failing final commit is
    /// retried like any other, up to the consecutive-failure limit.
    async fn stop(&mut self, reason: StopReason) -> Result<Stopped, AppliedError> {
        self.exports.settle(&self.config.name).await;
        self.fold.commit_all().await?;
        Ok(Stopped {
            cursor: self.fold.committed().clone(),
            reason,
        })
    }

    /// Pause before retry number `attempt`; false when shutdown came first.
    async fn backoff(
        &mut self,
        shutdown: &CancellationToken,
        attempt: u32,
        error: &KvError,
    ) -> bool {
        let pause = self.config.retry.backoff(attempt);
        tracing::warn!(watch = %self.config.name, %error, ?pause, attempt, "watch failed; re-watching");
        self.fold.reporter.phase(Phase::Syncing);
        tokio::select! {
            biased;
            () = shutdown.cancelled() => false,
            () = sleep(pause) => true,
        }
    }

    /// A cursor without a revision takes its identity from the watch just
    /// opened, so read the identity again after the open: if it is not the
    /// one known before, the bucket may have been recreated around the
    /// open, and the watch is opened again. A failed read changes nothing.
    async fn straddles_recreation(&mut self, before: Option<&BucketIdentity>) -> bool {
        if self.fold.applied().revision().is_some() {
            return false;
        }
        let bound = self.config.timeouts.retention;
        retention::read(&self.watcher, bound, &mut self.seen)
            .await
            .is_ok_and(|retention| before != Some(&retention.identity))
    }
}
