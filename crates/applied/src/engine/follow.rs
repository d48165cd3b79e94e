//! Following one watch stream: the loop's select over the stream, the
//! commit in flight, exports and timers (E1–E9), and the checks a running
//! watch makes on gaps and retention (K4, K15, K17, K18, R7).

use std::mem;
use std::time::Duration;
use std::vec::Drain;

use futures::{FutureExt, StreamExt};
use slipstream_kv::{
    ExpiryReason, KvError, KvUpdate, KvWatcher, Retention, WatchCursor, WatchEvent,
};
use slipstream_protocol::{
    CaughtUpAction, CaughtUpView, FloorConfirmation, GapAction, GapView, caught_up_short,
    caught_up_verdict, confirm_floor, cursor_beyond_log, gap_action, read_gap,
};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use super::commit::Settled;
use super::exports::{ExportEvent, Exports};
use super::fold::Fold;
use super::retention::{self, Looks, Seen};
use super::timer::ExpiryTimer;
use crate::config::Settings;
use crate::error::AppliedError;
use crate::export::ExportRequest;
use crate::slot::StoreSlot;
use crate::status::Phase;

/// How soon a watch with a due repair looks again whether the bucket is
/// quiet: soon after writes stop, without a stream info request per
/// delivery while they go on.
const QUIET_LOOK: Duration = Duration::from_millis(100);

/// How one watch stream ended.
pub(crate) enum StreamEnd {
    Shutdown,
    Ended,
    Failed(KvError),
    Expired(ExpiryReason),
    /// The bucket is quiet and messages left it unseen (K11 generalised):
    /// repair now.
    RepairDue,
}

/// What a retention check asks of a running watch.
enum Check {
    /// The cursor expired under it.
    Expired(ExpiryReason),
    /// A repair is due and the bucket is quiet.
    RepairDue,
}

impl From<Check> for StreamEnd {
    fn from(check: Check) -> Self {
        match check {
            Check::Expired(reason) => Self::Expired(reason),
            Check::RepairDue => Self::RepairDue,
        }
    }
}

/// What woke the loop.
enum Event {
    Shutdown,
    /// The commit in flight finished (or its task panicked).
    Committed(Result<Settled, AppliedError>),
    Export(Option<ExportRequest>),
    WindowElapsed,
    RetryCommit,
    RefreshStatus,
    ExpiryDue,
    Exported,
    Item(Option<Result<WatchEvent, KvError>>),
}

/// What is known of the watch being followed.
pub(crate) struct Watched {
    /// A delta watch (not a state-sync, whose deliveries skip by design).
    pub(crate) delta: bool,
    /// A repair's own watch (its state-sync or delta resume).
    pub(crate) after_repair: bool,
    /// The last sequence seen before it opened: a delta watch's `CaughtUp`
    /// has delivered every message in scope that existed then.
    pub(crate) last_at_open: Option<u64>,
    /// Its `CaughtUp` is being handled.
    catching_up: bool,
    looks: Looks,
}

impl Watched {
    pub(crate) fn new(delta: bool, after_repair: bool, last_at_open: Option<u64>) -> Self {
        Self {
            delta,
            after_repair,
            last_at_open,
            catching_up: false,
            looks: Looks::default(),
        }
    }
}

/// The parts a followed watch works on, borrowed from the engine.
pub(crate) struct Follow<'a, W, S, P, A, O, T> {
    pub(crate) watcher: &'a W,
    pub(crate) config: &'a Settings,
    pub(crate) fold: &'a mut Fold<S, P, A, O, T>,
    pub(crate) seen: &'a mut Seen,
    pub(crate) exports: &'a mut Exports,
    pub(crate) expiry: &'a mut ExpiryTimer,
    pub(crate) watched: Watched,
}

impl<W, S, P, A, O, T> Follow<'_, W, S, P, A, O, T>
where
    W: KvWatcher,
    S: StoreSlot,
    P: FnMut(&KvUpdate) -> Option<T>,
    A: FnMut(Drain<'_, T>),
    O: FnMut(&WatchCursor),
{
    /// Follow `stream` until it ends or the engine must stop.
    pub(crate) async fn run(
        mut self,
        shutdown: &CancellationToken,
        mut stream: W::WatchStream,
    ) -> Result<StreamEnd, AppliedError> {
        let every = self.config.status_interval;
        let mut refresh = Box::pin(sleep(every));
        // One waiter for the whole stream, not one per delivery.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            let watcher = self.watcher;
            self.expiry.aim(self.fold.expiries.next(), || watcher.now());
            let event = tokio::select! {
                biased;
                () = &mut cancelled => Event::Shutdown,
                // Settled as soon as it finishes, so `on_applied` and the
                // status follow the commit, not the next batch.
                settled = self.fold.commits.finished() => Event::Committed(settled),
                // Ahead of the stream, so a firehose cannot starve exports.
                export = self.exports.next() => match export {
                    ExportEvent::Requested(r) => Event::Export(r),
                    ExportEvent::Written => Event::Exported,
                },
                () = self.fold.batch.window.fired() => Event::WindowElapsed,
                () = self.fold.retry_timer.fired() => Event::RetryCommit,
                () = &mut refresh => Event::RefreshStatus,
                () = self.expiry.fired() => Event::ExpiryDue,
                item = stream.next() => Event::Item(item),
            };
            match event {
                Event::Shutdown => return Ok(StreamEnd::Shutdown),
                Event::Committed(settled) => self.fold.settled(settled?)?,
                Event::Export(None) => self.exports.closed(),
                Event::Export(Some(request)) => {
                    let config = self.config;
                    self.exports
                        .serve(request, self.fold, &config.scope, &config.name)
                        .await?;
                }
                Event::WindowElapsed | Event::RetryCommit => self.fold.flush().await?,
                Event::Exported => {}
                Event::ExpiryDue => self.fold.expire_due(self.watcher.now()).await?,
                Event::RefreshStatus => {
                    self.fold.expire_due(self.watcher.now()).await?;
                    let ready = self.fold.reporter.is_ready();
                    let check = self.refresh_retention(ready).await?;
                    // While a repair waits for quiet, look again soon.
                    let next = if self.fold.applied().repair_due() {
                        every.min(QUIET_LOOK)
                    } else {
                        every
                    };
                    refresh.as_mut().reset(Instant::now() + next);
                    if let Some(check) = check {
                        return Ok(check.into());
                    }
                }
                Event::Item(item) => {
                    if let Some(end) = self.on_item(item).await? {
                        return Ok(end);
                    }
                    if mem::take(&mut self.watched.looks.soon) {
                        refresh
                            .as_mut()
                            .reset(Instant::now() + every.min(QUIET_LOOK));
                    }
                    // Take what the stream already holds, up to the end of
                    // the open batch, before looking at the other arms again:
                    // a batch is at most `max` deliveries, so exports and
                    // shutdown still get their turn between batches.
                    while self.fold.batch.is_open() {
                        let Some(item) = stream.next().now_or_never() else {
                            break;
                        };
                        if let Some(end) = self.on_item(item).await? {
                            return Ok(end);
                        }
                    }
                }
            }
        }
    }

    /// Handle one stream item; `Some` when the stream is over.
    async fn on_item(
        &mut self,
        item: Option<Result<WatchEvent, KvError>>,
    ) -> Result<Option<StreamEnd>, AppliedError> {
        match item {
            None => Ok(Some(StreamEnd::Ended)),
            Some(Err(KvError::CursorExpired { reason })) => Ok(Some(StreamEnd::Expired(reason))),
            Some(Err(e)) => Ok(Some(StreamEnd::Failed(e))),
            Some(Ok(WatchEvent::CaughtUp)) => {
                // `Ready` comes with the caught-up cursor committed: a
                // failed commit is retried here, not after the phase says
                // the store holds it.
                self.fold.commit_all().await?;
                let frontier = self.fold.frontier();
                if caught_up_short(frontier, self.watched.last_at_open, self.gap_view()) {
                    self.make_repair_due(frontier, "caught up short of the last sequence");
                }
                // A state-sync skips what the head passes mid-listing and
                // still catches up: check at once, not at the next refresh.
                self.watched.catching_up = true;
                let check = self.refresh_retention(true).await;
                self.watched.catching_up = false;
                if let Some(check) = check? {
                    return Ok(Some(check.into()));
                }
                // A checked floor leaves the cursor's memo: `Ready` comes
                // with that cursor committed too (nothing to do otherwise).
                self.fold.commit_all().await?;
                self.fold.reporter.phase(Phase::Ready);
                Ok(None)
            }
            Some(Ok(WatchEvent::Update(update))) => self.on_update(update).await,
        }
    }

    async fn on_update(&mut self, update: KvUpdate) -> Result<Option<StreamEnd>, AppliedError> {
        // K4 on every caught-up All-scope watch: a backend guards its delta
        // watches only, and a state-sync goes on live after its `CaughtUp`,
        // where retention or an operator's purge can pass it too. A
        // caught-up watch with no position has seen nothing yet: its
        // frontier is position 0.
        let frontier = self.fold.frontier();
        let delivered = update.revision();
        // Whether to look at retention once this delivery is in.
        let mut look = false;
        if let Some(delivered) = delivered {
            match gap_action(frontier, delivered, self.gap_view()) {
                GapAction::Nothing => {}
                // K11 generalised: what left unseen is found by a repair
                // once the bucket is quiet, so that hot keys cannot make it
                // loop.
                GapAction::RepairWhenQuiet => {
                    self.make_repair_due(frontier, "a delivery skipped messages");
                    look = true;
                }
                GapAction::CheckFloor => {
                    if let Some(check) = self.refresh_retention(true).await? {
                        return Ok(Some(check.into()));
                    }
                }
            }
        }
        // With a repair due, reaching the last sequence the previous look
        // saw may mean the bucket went quiet: look again.
        if self.fold.applied().repair_due()
            && let (Some(delivered), Some(last)) = (delivered, self.watched.looks.last_seen())
            && delivered >= last
        {
            look = true;
        }
        if self.fold.receive(update) {
            self.fold.flush().await?;
        }
        if look && let Some(check) = self.refresh_retention(true).await? {
            return Ok(Some(check.into()));
        }
        Ok(None)
    }

    /// What K17 needs to know of this watch.
    fn gap_view(&self) -> GapView {
        let applied = self.fold.applied();
        GapView {
            all_scope: self.config.scope.is_all(),
            delta: self.watched.delta,
            ready: self.fold.reporter.is_ready(),
            repair_due: applied.repair_due(),
            repairs_gaps: self.config.repairs_gaps(S::DURABLE),
            seen_evicting: applied.seen_evicting(),
            reading: self.seen.gap_reading(),
        }
    }

    /// K11 generalised: messages left unseen; record the due repair in the
    /// cursor's memo (committed with the next flush) and look for quiet
    /// soon.
    fn make_repair_due(&mut self, frontier: u64, why: &'static str) {
        tracing::debug!(
            watch = %self.config.name,
            frontier,
            why,
            "messages left the log unseen; a repair is due once the bucket is quiet",
        );
        self.fold.cursor.update(|c| c.with_repair_due(true));
        self.watched.looks.soon = true;
    }

    /// Re-read the bucket's retention for the status' lag, the cursor's
    /// bucket identity and its eviction memo (R5). A failed read only
    /// leaves the status stale; only a failing memo commit is an error.
    /// `caught_up` says whether the watch has caught up: only then is the
    /// read checked against the cursor ([`Follow::check`]).
    async fn refresh_retention(&mut self, caught_up: bool) -> Result<Option<Check>, AppliedError> {
        let bound = self.config.timeouts.retention;
        let retention = match retention::read(self.watcher, bound, self.seen).await {
            Ok(retention) => retention,
            Err(error) => {
                tracing::debug!(watch = %self.config.name, %error, "retention read failed");
                return Ok(None);
            }
        };
        self.fold.note_retention(&retention).await?;
        Ok(if caught_up {
            self.check(&retention)
        } else {
            None
        })
    }

    /// A caught-up watch's retention read against its cursor. R7 and K3: the
    /// bucket was replaced under a live consumer. K15: a relist's floor
    /// the head passed. K18 on an All-scope watch: K1 against the frontier
    /// (the backend's floor guard looks only when a delivery arrives, so
    /// head eviction that passes an idle watch would go unnoticed), and on
    /// a bucket that evicts nothing current, where a due repair waits for
    /// quiet.
    fn check(&mut self, retention: &Retention) -> Option<Check> {
        let applied = self.fold.applied();
        if let Some(revision) = applied.revision() {
            if let Some(expected) = applied.identity()
                && *expected != retention.identity
            {
                return Some(Check::Expired(ExpiryReason::IdentityChanged {
                    expected: expected.clone(),
                    found: retention.identity.clone(),
                }));
            }
            if cursor_beyond_log(revision, retention.last_revision) {
                return Some(Check::Expired(ExpiryReason::BeyondLastSequence {
                    revision,
                    last_sequence: retention.last_revision,
                }));
            }
        }
        let reading = read_gap(retention.eviction);
        let all_scope = self.config.scope.is_all();
        if let Some(floor) = applied.unchecked_floor() {
            // The floor is in the committed cursor, so a restart checks it
            // too; it stays until checked here or a repair replaces it.
            match confirm_floor(floor, retention.first_revision, reading, all_scope) {
                FloorConfirmation::Held => {}
                FloorConfirmation::RepairWhenQuiet => {
                    self.make_repair_due(floor, "the head passed a relist's floor");
                }
                FloorConfirmation::Overrun => {
                    return Some(Check::Expired(ExpiryReason::FloorOverrun {
                        frontier: floor.saturating_sub(1),
                        first_sequence: retention.first_revision,
                    }));
                }
            }
            self.fold.cursor.update(|c| c.with_unchecked_floor(None));
        }
        if !all_scope {
            return None;
        }
        // No position yet is position 0: a listing that found the stream
        // emptied after its start was planned lost what left.
        let frontier = self.fold.frontier();
        let repairs_gaps = self.config.repairs_gaps(S::DURABLE);
        let listed_through = self.fold.cursor.listed_through().unwrap_or(0);
        // Only where K18 waits for quiet: a look is remembered from when
        // its values were first seen.
        let still_since = (!reading.repairs_now() && repairs_gaps).then(|| {
            self.watched
                .looks
                .still_since(frontier.max(listed_through), retention.last_revision)
        });
        let applied = self.fold.applied();
        let verdict = caught_up_verdict(CaughtUpView {
            frontier,
            first_sequence: retention.first_revision,
            last_sequence: retention.last_revision,
            listed_through,
            still_since: still_since.flatten(),
            at_catch_up: self.watched.catching_up && !self.watched.after_repair,
            reading,
            repair_due: applied.repair_due(),
            repairs_gaps,
        });
        if verdict.mark_due {
            self.make_repair_due(frontier, "the head passed the frontier");
        }
        match verdict.action {
            CaughtUpAction::Watch => None,
            CaughtUpAction::Repair => Some(Check::RepairDue),
            CaughtUpAction::Overrun => Some(Check::Expired(ExpiryReason::FloorOverrun {
                frontier,
                first_sequence: retention.first_revision,
            })),
        }
    }
}
