//! The engine's loop: receive, batch, apply, commit, report (E1–E9).

use std::mem;
use std::pin::Pin;
use std::time::{Duration, Instant as StdInstant};
use std::vec::Drain;

use futures::{FutureExt, StreamExt};
use slipstream_kv::{
    BucketIdentity, ExpiryReason, KvError, KvUpdate, KvWatcher, Retention, Timestamp, WatchCursor,
    WatchEvent, WatchStart,
};
use slipstream_protocol::{
    Eviction, GapReading, cursor_beyond_log, gap_needs_floor_check, is_replay, listing_is_truth,
    next_high_water, quiet_for_repair, read_gap, resume_window_ok,
};
use slipstream_snapshot::SnapshotError;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::{Instant, Sleep, sleep};
use tokio_util::sync::CancellationToken;

use crate::applied::{Finished, StopReason, Stopped};
use crate::config::{AppliedConfig, OnExpiry, Settings};
use crate::error::AppliedError;
use crate::expiry::{AfterExpiry, RepairTrigger};
use crate::export::{ExportRequest, ExportRequests};
use crate::handlers::Handlers;
use crate::slot::StoreSlot;
use crate::status::{Phase, Reporter, WatchStatus};
use crate::ttl::{Expiries, deadline_for};

/// The open batch, plus raw updates of failed commits waiting in front of
/// it (E4).
struct Pending<T> {
    parsed: Vec<T>,
    /// Raw updates for the store: re-queued ones first, then the open
    /// batch's. Empty without a store.
    raw: Vec<KvUpdate>,
    /// Updates received into the open batch, parsed or rejected.
    count: usize,
    /// The open batch's highest revision and its message time.
    high: Option<(u64, Option<Timestamp>)>,
}

impl<T> Pending<T> {
    fn new(capacity: usize) -> Self {
        Self {
            parsed: Vec::with_capacity(capacity),
            raw: Vec::new(),
            count: 0,
            high: None,
        }
    }
}

/// What a commit task hands back: the store, the raw updates it was given,
/// the cursor it committed with them, the outcome and how long it took.
type CommitOutput<S> = (
    S,
    Vec<KvUpdate>,
    WatchCursor,
    Result<(), SnapshotError>,
    Duration,
);

/// How one watch stream ended.
enum StreamEnd {
    Shutdown,
    Ended,
    Failed(KvError),
    Expired(slipstream_kv::ExpiryReason),
    /// The bucket is quiet and messages left it unseen (K11 generalised):
    /// relist now.
    RepairDue,
}

/// What a retention check asks of a running watch.
pub(crate) enum Check {
    /// The cursor expired under it.
    Expired(ExpiryReason),
    /// A relist is due and the bucket is quiet.
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

/// How soon a watch with a due relist looks again whether the bucket is
/// quiet: soon after writes stop, without a stream info request per
/// delivery while they go on.
const QUIET_LOOK: Duration = Duration::from_millis(100);

/// How long neither the frontier nor the last sequence may move for the
/// bucket to count as quiet: longer than the pauses a busy server takes
/// (a file store flush stalls writers and deliveries alike).
const QUIET_FOR: Duration = Duration::from_millis(300);

/// What woke the loop.
enum Event<C> {
    Shutdown,
    /// The commit in flight finished (or its task panicked).
    Committed(Result<C, JoinError>),
    Export(Option<ExportRequest>),
    WindowElapsed,
    RetryCommit,
    RefreshStatus,
    ExpiryDue,
    Exported,
    Item(Option<Result<WatchEvent, KvError>>),
}

pub(crate) struct Engine<W, S, P, A, O, T> {
    pub(crate) watcher: W,
    pub(crate) config: Settings,
    exports: Option<ExportRequests>,
    /// `None` while a commit holds it (`in_flight`), or after a blocking
    /// store task panicked with it. Only [`Engine::take_store`] takes it.
    pub(crate) store: Option<S>,
    /// The commit running on a blocking thread while the next batch is
    /// received and applied; at most one.
    in_flight: Option<JoinHandle<CommitOutput<S>>>,
    /// An emptied raw buffer handed back by the last successful commit, so
    /// the two buffers alternate instead of being reallocated.
    spare: Vec<KvUpdate>,
    reporter: Reporter,
    handlers: Handlers<P, A, O>,
    /// `apply` has returned for every update at or below this cursor.
    pub(crate) applied: WatchCursor,
    /// The last cursor committed (with a store) and reported.
    committed: WatchCursor,
    identity: Option<BucketIdentity>,
    /// The next watch is a state-sync (after a repair), whatever the cursor.
    pub(crate) relist_next: bool,
    /// The next watch resumes after this position instead of the applied
    /// cursor (R8: a gap of supersession only).
    pub(crate) resume_at: Option<WatchCursor>,
    /// What the last retention read said the bucket can evict.
    eviction: Option<Eviction>,
    /// The watch being followed is a delta watch (not a state-sync, whose
    /// deliveries skip by design).
    watching_delta: bool,
    /// `(frontier, last sequence)` at the previous retention look of this
    /// watch: the bucket is quiet when neither moved.
    last_look: Option<(u64, u64, Instant)>,
    /// A relist just became due: look for quiet soon.
    look_soon: bool,
    /// The last sequence the latest retention read saw.
    observed_last: Option<u64>,
    /// A repair armed the next watch (its state-sync or delta resume).
    pub(crate) rewatch_after_repair: bool,
    /// The followed watch is a repair's.
    watch_after_repair: bool,
    /// The followed watch's `CaughtUp` is being handled.
    catching_up: bool,
    /// `observed_last` when the followed watch opened: a delta watch's
    /// `CaughtUp` has delivered every message in scope that existed then,
    /// so an All-scope frontier short of it means messages left unseen.
    last_at_open: Option<u64>,
    /// The last sequence when the latest relist (or a fresh node's
    /// state-sync) was planned: its listing stands for everything up to
    /// there, so a frontier short of it does not mean writers are busy.
    pub(crate) listed_through: Option<u64>,
    pending: Pending<T>,
    store_failures: u32,
    window: Pin<Box<Sleep>>,
    window_armed: bool,
    retry: Pin<Box<Sleep>>,
    retry_armed: bool,
    /// The export whose files are being written; one at a time.
    export_in_flight: Option<JoinHandle<()>>,
    /// The fold's keys that expire (per-message TTL).
    pub(crate) expiries: Expiries,
    expiry_timer: Pin<Box<Sleep>>,
    /// The expiry the timer is set for.
    expiry_armed: Option<Timestamp>,
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
        let capacity = config.batch.max.min(4096);
        Self {
            watcher,
            exports,
            store: Some(store),
            in_flight: None,
            spare: Vec::new(),
            reporter,
            handlers,
            applied: start.clone(),
            committed: start,
            identity: None,
            relist_next: false,
            resume_at: None,
            eviction: None,
            watching_delta: false,
            last_look: None,
            look_soon: false,
            observed_last: None,
            rewatch_after_repair: false,
            watch_after_repair: false,
            catching_up: false,
            last_at_open: None,
            listed_through: None,
            pending: Pending::new(capacity),
            store_failures: 0,
            window: Box::pin(sleep(config.batch.window)),
            window_armed: false,
            retry: Box::pin(sleep(config.retry.initial_backoff)),
            retry_armed: false,
            export_in_flight: None,
            expiries: Expiries::default(),
            expiry_timer: Box::pin(sleep(Duration::ZERO)),
            expiry_armed: None,
            config,
        }
    }

    pub(crate) fn finish(mut self, result: Result<Stopped, AppliedError>) -> Finished<S> {
        debug_assert!(self.in_flight.is_none(), "run settles every commit");
        if result.is_err() {
            self.reporter.phase(Phase::Failed);
        }
        Finished {
            result,
            store: self.store.take(),
            cursor: self.committed,
        }
    }

    /// Run the watch; on every exit no commit is left in flight, so the
    /// store is back in place (or known lost).
    pub(crate) async fn run(&mut self) -> Result<Stopped, AppliedError> {
        let result = self.watch_until_stopped().await;
        if result.is_err()
            && let Err(error) = self.settle().await
        {
            tracing::warn!(watch = %self.config.name, %error, "the last commit failed too");
        }
        result
    }

    async fn watch_until_stopped(&mut self) -> Result<Stopped, AppliedError> {
        self.config.validate()?;
        let shutdown = self.config.shutdown.clone();
        self.reporter.phase(Phase::Starting);
        self.reporter.applied(self.committed.revision());
        // Not caught up yet: the start's read only seeds the status and memo.
        self.refresh_retention(false).await?;
        self.load_expiries().await?;
        if self.applied.expiries_unrecorded() {
            let allows_ttl = self.eviction.is_none_or(|e| e.per_message_ttl);
            if !self.record_missing_expiries(allows_ttl).await? {
                return self.stop(StopReason::Shutdown).await;
            }
        }
        if self.applied.revision().is_none()
            && self.repair(RepairTrigger::CursorlessStart).await? == AfterExpiry::Shutdown
        {
            return self.stop(StopReason::Shutdown).await;
        }
        let mut attempt = 0u32;
        loop {
            // Report what a finished stream left committing before any
            // backoff or repair, rather than after it.
            self.settle().await?;
            let start = match (&self.resume_at, self.applied.revision()) {
                (Some(at), _) => WatchStart::After(at.clone()),
                (None, Some(_)) if !self.relist_next => WatchStart::After(self.applied.clone()),
                _ => WatchStart::Relist,
            };
            let before = self.identity.clone();
            let delta = matches!(start, WatchStart::After(_));
            let stream = match self.open_watch(&shutdown, start).await? {
                Opened::Stream(s) => {
                    attempt = 0;
                    self.watching_delta = delta;
                    self.last_look = None;
                    self.last_at_open = self.observed_last;
                    self.watch_after_repair = mem::take(&mut self.rewatch_after_repair);
                    self.relist_next = false;
                    self.resume_at = None;
                    s
                }
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
            if self.straddles_recreation(before.as_ref()).await {
                drop(stream);
                continue;
            }
            // A cursor without an identity takes the bucket's as it is now.
            // One without a revision but with another identity was left by
            // a repair of an earlier incarnation: its fold was compared
            // with that bucket, not this one (R7).
            if let Some(id) = self.identity.clone() {
                match self.applied.identity().cloned() {
                    None => self.applied = self.applied.clone().with_identity(id),
                    Some(known) if known != id && self.applied.revision().is_none() => {
                        drop(stream);
                        let reason = ExpiryReason::IdentityChanged {
                            expected: known,
                            found: id,
                        };
                        if self.repair(RepairTrigger::Expiry(reason)).await?
                            == AfterExpiry::Shutdown
                        {
                            return self.stop(StopReason::Shutdown).await;
                        }
                        continue;
                    }
                    Some(_) => {}
                }
            }
            self.reporter.phase(Phase::Syncing);
            match self.follow(&shutdown, stream).await? {
                StreamEnd::Shutdown => return self.stop(StopReason::Shutdown).await,
                StreamEnd::Ended => return self.stop(StopReason::EndOfStream).await,
                StreamEnd::Expired(reason) => {
                    // Drain-then-repair: everything delivered is folded first.
                    self.flush().await?;
                    if self.repair(RepairTrigger::Expiry(reason)).await? == AfterExpiry::Shutdown {
                        return self.stop(StopReason::Shutdown).await;
                    }
                }
                StreamEnd::RepairDue => {
                    self.flush().await?;
                    if self.repair(RepairTrigger::Quiet).await? == AfterExpiry::Shutdown {
                        return self.stop(StopReason::Shutdown).await;
                    }
                }
                StreamEnd::Failed(e) => {
                    self.flush().await?;
                    self.reporter.rewatch();
                    attempt += 1;
                    if !self.backoff(&shutdown, attempt, &e).await {
                        return self.stop(StopReason::Shutdown).await;
                    }
                }
            }
        }
    }

    /// Flush the pending batch and stop (E5). A failing final commit is
    /// retried like any other, up to the consecutive-failure limit.
    async fn stop(&mut self, reason: StopReason) -> Result<Stopped, AppliedError> {
        self.settle_export().await;
        self.commit_all().await?;
        Ok(Stopped {
            cursor: self.committed.clone(),
            reason,
        })
    }

    /// Flush and wait until everything received and the applied cursor are
    /// committed, retrying failed commits with backoff up to the
    /// consecutive-failure limit. A repair reads the store only after this,
    /// so a re-queued update cannot be missing from its scan.
    pub(crate) async fn commit_all(&mut self) -> Result<(), AppliedError> {
        self.flush().await?;
        self.settle().await?;
        while !self.pending.raw.is_empty() || (S::DURABLE && self.committed != self.applied) {
            sleep(self.config.retry.backoff(self.store_failures)).await;
            self.flush().await?;
            self.settle().await?;
        }
        Ok(())
    }

    /// The last cursor committed (with a store) and reported.
    pub(crate) fn committed(&self) -> &WatchCursor {
        &self.committed
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
        self.reporter.phase(Phase::Syncing);
        tokio::select! {
            biased;
            () = shutdown.cancelled() => false,
            () = sleep(pause) => true,
        }
    }

    pub(crate) async fn open_watch(
        &mut self,
        shutdown: &CancellationToken,
        start: WatchStart,
    ) -> Result<Opened<W::WatchStream>, AppliedError> {
        let bound = self.config.timeouts.watch_setup;
        let setup = tokio::time::timeout(bound, self.watcher.watch(&self.config.scope, start));
        let outcome = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(Opened::Shutdown),
            r = setup => r,
        };
        match outcome {
            Err(_) => Ok(Opened::Failed(KvError::Timeout {
                operation: "watch setup".into(),
                after: bound,
            })),
            Ok(Ok(stream)) => Ok(Opened::Stream(stream)),
            Ok(Err(KvError::CursorExpired { reason })) => Ok(Opened::Expired(reason)),
            Ok(Err(e)) if is_transient(&e) => Ok(Opened::Failed(e)),
            Ok(Err(e)) => Err(AppliedError::Kv(e)),
        }
    }

    /// Follow one watch stream until it ends or the engine must stop.
    async fn follow(
        &mut self,
        shutdown: &CancellationToken,
        mut stream: W::WatchStream,
    ) -> Result<StreamEnd, AppliedError> {
        let every = self.config.status_interval;
        let mut refresh = Box::pin(sleep(every));
        // One waiter for the whole stream, not one per delivery.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            let exports_open = self.exports.is_some() && self.export_in_flight.is_none();
            let exporting = self.export_in_flight.is_some();
            let committing = self.in_flight.is_some();
            self.arm_expiry();
            let expiring = self.expiry_armed.is_some();
            let event = tokio::select! {
                biased;
                () = &mut cancelled => Event::Shutdown,
                // Settled as soon as it finishes, so `on_applied` and the
                // status follow the commit, not the next batch.
                joined = join_in_flight(&mut self.in_flight), if committing => {
                    Event::Committed(joined)
                }
                // Ahead of the stream, so a firehose cannot starve exports.
                r = recv_export(&mut self.exports), if exports_open => Event::Export(r),
                () = join_export(&mut self.export_in_flight), if exporting => Event::Exported,
                () = &mut self.window, if self.window_armed => Event::WindowElapsed,
                () = &mut self.retry, if self.retry_armed => Event::RetryCommit,
                () = &mut refresh => Event::RefreshStatus,
                () = &mut self.expiry_timer, if expiring => Event::ExpiryDue,
                item = stream.next() => Event::Item(item),
            };
            match event {
                Event::Shutdown => return Ok(StreamEnd::Shutdown),
                Event::Committed(joined) => {
                    self.in_flight = None;
                    self.settled(joined)?;
                }
                Event::Export(None) => self.exports = None,
                Event::Export(Some(request)) => self.serve_export(request).await?,
                Event::WindowElapsed | Event::RetryCommit => self.flush().await?,
                Event::Exported => self.export_in_flight = None,
                Event::ExpiryDue => {
                    self.expiry_armed = None;
                    self.expire_due().await?;
                }
                Event::RefreshStatus => {
                    self.expire_due().await?;
                    let check = self.refresh_retention(self.reporter.is_ready()).await?;
                    // While a relist waits for quiet, look again soon.
                    let next = if self.applied.repair_due() {
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
                    if mem::take(&mut self.look_soon) {
                        refresh
                            .as_mut()
                            .reset(Instant::now() + every.min(QUIET_LOOK));
                    }
                    // Take what the stream already holds, up to the end of
                    // the open batch, before looking at the other arms again:
                    // a batch is at most `max` deliveries, so exports and
                    // shutdown still get their turn between batches.
                    while self.pending.count > 0 {
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
                self.commit_all().await?;
                self.note_tail_left_unseen();
                // A state-sync skips what the head passes mid-listing and
                // still catches up: check at once, not at the next refresh.
                self.catching_up = true;
                let check = self.refresh_retention(true).await;
                self.catching_up = false;
                if let Some(check) = check? {
                    return Ok(Some(check.into()));
                }
                // A checked floor leaves the cursor's memo: `Ready` comes
                // with that cursor committed too (nothing to do otherwise).
                self.commit_all().await?;
                self.reporter.phase(Phase::Ready);
                Ok(None)
            }
            Some(Ok(WatchEvent::Update(update))) => {
                // K4 on every caught-up All-scope watch: a backend guards
                // its delta watches only, and a state-sync goes on live
                // after its `CaughtUp`, where retention or an operator's
                // purge can pass it too. A caught-up watch with no position
                // has seen nothing yet: its frontier is position 0.
                let frontier = self.frontier();
                let delivered = update.revision();
                // Whether to look at retention once this delivery is in.
                let mut look = false;
                if self.config.scope.is_all()
                    && let Some(delivered) = delivered
                    && gap_needs_floor_check(frontier, delivered)
                {
                    match self.gap_reading() {
                        // K11 generalised: what left unseen is found by a
                        // repair once the bucket is quiet, so that hot keys
                        // cannot make it loop. A state-sync skips by design.
                        Some(GapReading::RepairWhenQuiet) => {
                            if (self.watching_delta || self.reporter.is_ready())
                                && !self.applied.repair_due()
                                && self.repairs_gaps()
                            {
                                self.make_repair_due(frontier, "a delivery skipped messages");
                                look = true;
                            }
                        }
                        reading => {
                            let evicting = reading.is_some() || self.applied.seen_evicting();
                            if self.reporter.is_ready()
                                && self.checks_gaps(evicting)
                                && let Some(check) = self.refresh_retention(true).await?
                            {
                                return Ok(Some(check.into()));
                            }
                        }
                    }
                }
                // With a repair due, reaching the last sequence the previous
                // look saw may mean the bucket went quiet: look again.
                if self.applied.repair_due()
                    && let (Some(delivered), Some((_, last, _))) = (delivered, self.last_look)
                    && delivered >= last
                {
                    look = true;
                }
                if self.receive(update) {
                    self.flush().await?;
                }
                if look && let Some(check) = self.refresh_retention(true).await? {
                    return Ok(Some(check.into()));
                }
                Ok(None)
            }
        }
    }

    /// At a delta watch's `CaughtUp`: every message in scope that existed
    /// when it opened was delivered, so on an All-scope watch a frontier
    /// short of the last sequence seen before the open means the messages
    /// after it left unseen (a TTL that expired while the node was down, a
    /// purged delete); on a bucket that evicts nothing current that makes
    /// a repair due (K11 generalised).
    fn note_tail_left_unseen(&mut self) {
        let frontier = self.frontier();
        if self.watching_delta
            && self.config.scope.is_all()
            && self.gap_reading() == Some(GapReading::RepairWhenQuiet)
            && self.repairs_gaps()
            && !self.applied.repair_due()
            && let Some(last) = self.last_at_open
            && frontier < last
        {
            self.make_repair_due(frontier, "caught up short of the last sequence");
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
        self.applied = self.applied.clone().with_repair_due(true);
        self.look_soon = true;
    }

    /// The highest revision received: applied, or in the open batch; 0
    /// without a position.
    fn frontier(&self) -> u64 {
        next_high_water(self.applied.revision(), self.pending.high.map(|(r, _)| r)).unwrap_or(0)
    }

    /// Take a repair's synthetic update (a restored put or a delete) into
    /// the open batch: no replay filter and no cursor movement, because a
    /// repair's updates are not deliveries; true when the batch is full.
    pub(crate) fn receive_repair(&mut self, update: KvUpdate) -> bool {
        self.expiries.note(&update);
        self.pending.count += 1;
        if let Some(item) = (self.handlers.parse)(&update) {
            self.pending.parsed.push(item);
        }
        if S::DURABLE {
            self.pending.raw.push(update);
        }
        self.pending.count >= self.config.batch.max
    }

    /// Take one delivery into the open batch; true when the batch is full.
    pub(crate) fn receive(&mut self, update: KvUpdate) -> bool {
        let revision = update.revision();
        let received = next_high_water(self.applied.revision(), self.pending.high.map(|(r, _)| r));
        if is_replay(received, revision) {
            tracing::debug!(watch = %self.config.name, ?revision, "replay dropped");
            self.reporter.replay_dropped();
            return false;
        }
        self.expiries.note(&update);
        if self.pending.count == 0 {
            let deadline = Instant::now() + self.config.batch.window;
            self.window.as_mut().reset(deadline);
            self.window_armed = true;
        }
        self.pending.count += 1;
        if let Some(rev) = revision
            && self.pending.high.is_none_or(|(h, _)| rev > h)
        {
            self.pending.high = Some((rev, update.created()));
        }
        if let Some(item) = (self.handlers.parse)(&update) {
            self.pending.parsed.push(item);
        }
        if S::DURABLE {
            self.pending.raw.push(update);
        }
        self.pending.count >= self.config.batch.max
    }

    /// Take an update for the store alone: it changes nothing the
    /// application sees (an expiry learnt for an entry it holds).
    pub(crate) fn receive_store_only(&mut self, update: KvUpdate) {
        self.expiries.note(&update);
        if S::DURABLE {
            self.pending.raw.push(update);
        }
    }

    /// Point the expiry timer at the soonest expiry, if it moved.
    fn arm_expiry(&mut self) {
        let next = self.expiries.next();
        if next != self.expiry_armed {
            if let Some(at) = next {
                let now = self.watcher.now();
                self.expiry_timer.as_mut().reset(deadline_for(at, now));
            }
            self.expiry_armed = next;
        }
    }

    /// Close the open batch: apply, move the cursor, start its commit (E3).
    /// The commit runs while the next batch is received; it is reported
    /// when it finishes. Without a store the cursor is reported here.
    pub(crate) async fn flush(&mut self) -> Result<(), AppliedError> {
        let size = mem::take(&mut self.pending.count);
        self.window_armed = false;
        if size == 0 && self.pending.raw.is_empty() {
            if S::DURABLE {
                self.settle().await?;
            }
            if self.committed == self.applied {
                self.retry_armed = false;
                return Ok(());
            }
            // A commit of the cursor alone (a repair's final cursor, the
            // eviction memo) failed: it is retried like any other.
        }
        if !self.pending.parsed.is_empty() {
            (self.handlers.apply)(self.pending.parsed.drain(..));
        }
        if let Some((rev, time)) = self.pending.high.take()
            && next_high_water(self.applied.revision(), Some(rev)) != self.applied.revision()
        {
            self.applied = self.applied.advanced(rev, time);
        }
        if size > 0 {
            self.reporter.batch(size);
        }
        if let Some(rev) = self.applied.revision() {
            self.reporter.stream_last(rev);
        }
        let expiring = !self.expiries.is_empty();
        if self.applied.holds_expiring() != expiring {
            self.applied = self.applied.clone().with_holds_expiring(expiring);
        }
        if S::DURABLE {
            self.commit().await
        } else {
            self.report(self.applied.clone());
            Ok(())
        }
    }

    /// The applied cursor, held below a relist's unchecked floor: above
    /// it, the fold may lack retained entries (see `list_live_keys`), so
    /// repairs trust it only this far.
    pub(crate) fn trusted_cursor(&self) -> WatchCursor {
        match (self.applied.unchecked_floor(), self.applied.revision()) {
            (Some(floor), Some(revision)) if revision >= floor => {
                self.applied.advanced(floor.saturating_sub(1), None)
            }
            _ => self.applied.clone(),
        }
    }

    /// `cursor` is committed (or, without a store, applied): publish it.
    fn report(&mut self, cursor: WatchCursor) {
        self.reporter.applied(cursor.revision());
        self.reporter.repair_due(cursor.repair_due());
        (self.handlers.on_applied)(&cursor);
        self.committed = cursor;
    }

    /// Start committing the raw updates (re-queued ones first) and the
    /// applied cursor atomically on a blocking thread, after the previous
    /// commit settled (E3, E4).
    async fn commit(&mut self) -> Result<(), AppliedError> {
        let mut store = self.take_store("commit").await?;
        // Taken after the previous commit settled: a failed one is already
        // back in front of the newer updates, so this commit is cumulative.
        let mut raw = mem::replace(&mut self.pending.raw, mem::take(&mut self.spare));
        let cursor = self.applied.clone();
        self.retry_armed = false;
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let started = StdInstant::now();
            let result = store.commit(&raw, &cursor);
            let took = started.elapsed();
            if result.is_ok() {
                // Freeing a committed batch is work the engine's thread
                // need not do.
                raw.clear();
            }
            (store, raw, cursor, result, took)
        }));
        Ok(())
    }

    /// Wait for the commit in flight, if any, and take its outcome.
    async fn settle(&mut self) -> Result<(), AppliedError> {
        let Some(task) = self.in_flight.as_mut() else {
            return Ok(());
        };
        let joined = task.await;
        self.in_flight = None;
        self.settled(joined)
    }

    /// Take a finished commit's outcome: put the store back, then report
    /// its cursor, or re-queue its updates in front of those received while
    /// it ran (E4).
    fn settled(&mut self, joined: Result<CommitOutput<S>, JoinError>) -> Result<(), AppliedError> {
        let Ok((store, mut raw, cursor, result, took)) = joined else {
            return Err(AppliedError::StorePanicked {
                operation: "commit",
            });
        };
        self.store = Some(store);
        match result {
            Ok(()) => {
                self.reporter.commit_took(took);
                debug_assert!(raw.is_empty(), "the commit task empties it");
                self.spare = raw;
                self.store_failures = 0;
                self.report(cursor);
                Ok(())
            }
            Err(error) => {
                self.store_failures += 1;
                self.reporter.store_failure();
                if self.store_failures >= self.config.retry.max_store_failures {
                    return Err(AppliedError::StoreFailed {
                        attempts: self.store_failures,
                        last: error,
                    });
                }
                tracing::warn!(
                    watch = %self.config.name,
                    %error,
                    failures = self.store_failures,
                    queued = raw.len(),
                    "store commit failed; re-queued in front of newer updates",
                );
                raw.append(&mut self.pending.raw);
                self.pending.raw = raw;
                let pause = self.config.retry.backoff(self.store_failures);
                self.retry.as_mut().reset(Instant::now() + pause);
                self.retry_armed = true;
                Ok(())
            }
        }
    }

    /// Handle one export request between flushes (E8).
    async fn serve_export(&mut self, request: ExportRequest) -> Result<(), AppliedError> {
        let ExportRequest { dest, reply } = request;
        if !S::DURABLE {
            // The requester may have gone; nothing to do then.
            let _ = reply.send(Err(AppliedError::NoStore));
            return Ok(());
        }
        self.flush().await?;
        // The store is held only to capture the last commit (A4: the
        // artifact's cursor is the applied cursor); the files are written,
        // verified and hashed while commits go on.
        let mut store = self.take_store("export").await?;
        let scope = self.config.scope.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let result = store.begin_export(&dest, &scope);
            (store, result)
        })
        .await;
        let Ok((store, result)) = joined else {
            return Err(AppliedError::StorePanicked {
                operation: "export",
            });
        };
        self.store = Some(store);
        let pending = match result {
            Some(Ok(pending)) => pending,
            Some(Err(e)) => {
                tracing::warn!(watch = %self.config.name, error = %e, "export failed; the watch goes on");
                let _ = reply.send(Err(AppliedError::Export(e)));
                return Ok(());
            }
            None => {
                let _ = reply.send(Err(AppliedError::NoStore));
                return Ok(());
            }
        };
        let name = self.config.name.clone();
        self.export_in_flight = Some(tokio::task::spawn_blocking(move || {
            let answer = pending.finish().map_err(|e| {
                tracing::warn!(watch = %name, error = %e, "export failed; the watch goes on");
                AppliedError::Export(e)
            });
            let _ = reply.send(answer);
        }));
        Ok(())
    }

    /// Wait for the export being written, if any (its requester has its
    /// answer then).
    async fn settle_export(&mut self) {
        if let Some(task) = self.export_in_flight.take()
            && task.await.is_err()
        {
            tracing::warn!(watch = %self.config.name, "an export task panicked");
        }
    }

    /// Whether a caught-up All-scope watch takes a first sequence past
    /// its frontier as an expiry, when the bucket may evict current values
    /// (or its eviction is not known yet). On an evicting bucket it always
    /// does. Without knowing, only a repair that answers it (a relist, the
    /// listing being the truth) is worth a false alarm; where the answer is
    /// to stop, the check is left to the backend's guard of delta watches.
    fn checks_gaps(&self, evicting: bool) -> bool {
        evicting || self.repairs_gaps()
    }

    /// Whether a gap on a bucket that evicts nothing current makes a
    /// repair due: only where a repair answers it. A node that stops on
    /// expiry (or has no store) would otherwise stop on supersession, so it
    /// goes on there, as K11 generalised expects of a gap.
    pub(crate) fn repairs_gaps(&self) -> bool {
        S::DURABLE && matches!(self.on_expiry_policy(), OnExpiry::Repair(_))
    }

    /// The `(frontier, last)` of a look at least [`QUIET_FOR`] ago if
    /// neither has moved since, as `quiet_for_repair` takes it; the look
    /// is remembered from when these values were first seen.
    fn still_since(&mut self, frontier: u64, last: u64) -> Option<(u64, u64)> {
        let now = Instant::now();
        match self.last_look {
            Some((f, l, since)) if (f, l) == (frontier, last) => {
                (now.duration_since(since) >= QUIET_FOR).then_some((f, l))
            }
            _ => {
                self.last_look = Some((frontier, last, now));
                None
            }
        }
    }

    /// K11 generalised, from the last retention read; `None` before any.
    pub(crate) fn gap_reading(&self) -> Option<GapReading> {
        self.eviction.map(read_gap)
    }

    /// Re-read the bucket's retention for the status' lag, the cursor's
    /// bucket identity and its eviction memo (R5). A failed read only
    /// leaves the status stale; only a failing memo commit is an error.
    ///
    /// On a caught-up All-scope watch this is also K1 against the frontier:
    /// the backend's floor guard (K4) only looks when a delivery arrives,
    /// so head eviction that passes an idle or caught-up state-sync watch
    /// would otherwise go unnoticed. On a bucket that does not evict
    /// current values, it is where a due repair waits for quiet.
    /// `caught_up` says whether the watch has caught up (the frontier is
    /// then where the log must still reach).
    async fn refresh_retention(&mut self, caught_up: bool) -> Result<Option<Check>, AppliedError> {
        match self.retention_now().await {
            Ok(retention) => {
                self.reporter.stream_last(retention.last_revision);
                self.note_eviction(&retention).await?;
                // R7 under a running watch: the bucket was deleted and
                // created again, which a live consumer need not notice.
                if caught_up && let Some(revision) = self.applied.revision() {
                    if let Some(expected) = self.applied.identity()
                        && *expected != retention.identity
                    {
                        return Ok(Some(Check::Expired(ExpiryReason::IdentityChanged {
                            expected: expected.clone(),
                            found: retention.identity,
                        })));
                    }
                    if cursor_beyond_log(revision, retention.last_revision) {
                        return Ok(Some(Check::Expired(ExpiryReason::BeyondLastSequence {
                            revision,
                            last_sequence: retention.last_revision,
                        })));
                    }
                }
                let reading = read_gap(retention.eviction);
                if caught_up && let Some(floor) = self.applied.unchecked_floor() {
                    // A relist's listing saw entries its state-sync must
                    // deliver again; one the head passed in between (a
                    // purge) would leave the fold stale. The floor is in
                    // the committed cursor, so a restart checks it too; it
                    // stays until checked here or a repair replaces it.
                    if retention.first_revision > floor {
                        match reading {
                            // An All-scope watch repairs once quiet; a
                            // prefix-scoped one cannot tell when that is.
                            GapReading::RepairWhenQuiet if self.config.scope.is_all() => {
                                self.make_repair_due(floor, "the head passed a relist's floor");
                            }
                            _ => {
                                return Ok(Some(Check::Expired(ExpiryReason::FloorOverrun {
                                    frontier: floor.saturating_sub(1),
                                    first_sequence: retention.first_revision,
                                })));
                            }
                        }
                    }
                    self.applied = self.applied.clone().with_unchecked_floor(None);
                }
                // No position yet is position 0: a listing that found the
                // stream emptied after its start was planned lost what left.
                let frontier = self.frontier();
                if !self.config.scope.is_all() || !caught_up {
                    return Ok(None);
                }
                if !reading.repairs_now() && !self.repairs_gaps() {
                    return Ok(None);
                }
                if reading.repairs_now() {
                    // Made due while the bucket evicted nothing; it evicts
                    // now, so waiting for quiet protects nothing.
                    if self.applied.repair_due() && self.repairs_gaps() {
                        return Ok(Some(Check::RepairDue));
                    }
                    if self.checks_gaps(true)
                        && !resume_window_ok(frontier, retention.first_revision)
                    {
                        return Ok(Some(Check::Expired(ExpiryReason::FloorOverrun {
                            frontier,
                            first_sequence: retention.first_revision,
                        })));
                    }
                    return Ok(None);
                }
                // The head passed what the fold holds: on this bucket that
                // is supersession, or an expiry or purge only a repair
                // finds (a state-sync that caught up over a purge, say).
                if !resume_window_ok(frontier, retention.first_revision)
                    && !self.applied.repair_due()
                {
                    self.make_repair_due(frontier, "the head passed the frontier");
                }
                let frontier = frontier.max(self.listed_through.unwrap_or(0));
                let before = self.still_since(frontier, retention.last_revision);
                if self.applied.repair_due()
                    && quiet_for_repair(
                        frontier,
                        retention.last_revision,
                        before,
                        self.catching_up && !self.watch_after_repair,
                    )
                {
                    return Ok(Some(Check::RepairDue));
                }
            }
            Err(error) => {
                tracing::debug!(watch = %self.config.name, %error, "retention read failed");
            }
        }
        Ok(None)
    }

    /// A cursor without a revision takes its identity from the watch just
    /// opened (below), so read the identity again after the open: if it is
    /// not the one known before, the bucket may have been recreated around
    /// the open, and the watch is opened again. A failed read changes
    /// nothing.
    async fn straddles_recreation(&mut self, before: Option<&BucketIdentity>) -> bool {
        if self.applied.revision().is_some() {
            return false;
        }
        self.retention_now()
            .await
            .is_ok_and(|retention| before != Some(&retention.identity))
    }

    /// Retention as the server reports it now, bounded by the configured
    /// timeout; what it says of the bucket is recorded (`observed`).
    pub(crate) async fn retention_now(&mut self) -> Result<Retention, KvError> {
        let bound = self.config.timeouts.retention;
        let retention = tokio::time::timeout(bound, self.watcher.retention())
            .await
            .map_err(|_| KvError::Timeout {
                operation: "retention".into(),
                after: bound,
            })??;
        self.observed(&retention);
        Ok(retention)
    }

    /// Take what a retention read says about the bucket as it is now: its
    /// identity (a revisionless cursor takes it at the next watch).
    pub(crate) fn observed(&mut self, retention: &Retention) {
        self.identity = Some(retention.identity.clone());
        self.eviction = Some(retention.eviction);
        self.observed_last = Some(retention.last_revision);
    }

    /// R5: the first time retention is seen to have evicted current values
    /// (an evicting bucket whose head has moved, so K7 fails on retention
    /// alone), record it in the cursor's memo and commit it right away when
    /// no batch is open (otherwise the next flush carries it).
    pub(crate) async fn note_eviction(
        &mut self,
        retention: &Retention,
    ) -> Result<(), AppliedError> {
        if self.applied.seen_evicting()
            || listing_is_truth(
                retention.evicts_current_values(),
                retention.first_revision,
                false,
            )
        {
            return Ok(());
        }
        tracing::warn!(
            watch = %self.config.name,
            first_revision = retention.first_revision,
            "retention evicts current values; the bucket's listing is no longer trusted",
        );
        self.applied = self.applied.clone().with_seen_evicting();
        if self.pending.count > 0 {
            return Ok(());
        }
        if S::DURABLE {
            self.commit().await
        } else {
            self.report(self.applied.clone());
            Ok(())
        }
    }

    /// Take the store out for a blocking task; every such task puts it
    /// back. A commit in flight is settled first, so its failure counts
    /// (and re-queues) as in [`Engine::flush`]; the error is a panicked
    /// task that took the store with it, or too many failed commits.
    pub(crate) async fn take_store(&mut self, operation: &'static str) -> Result<S, AppliedError> {
        self.settle().await?;
        self.store
            .take()
            .ok_or(AppliedError::StorePanicked { operation })
    }

    pub(crate) fn reporter(&self) -> &Reporter {
        &self.reporter
    }
}

/// The result of trying to open a watch.
pub(crate) enum Opened<St> {
    Stream(St),
    Shutdown,
    Expired(slipstream_kv::ExpiryReason),
    Failed(KvError),
}

/// The commit in flight's outcome; pending forever when there is none (its
/// select arm is disabled then).
async fn join_in_flight<C>(in_flight: &mut Option<JoinHandle<C>>) -> Result<C, JoinError> {
    match in_flight {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

async fn join_export(in_flight: &mut Option<JoinHandle<()>>) {
    match in_flight {
        // A panicked export task has dropped its reply: the requester
        // sees `ExportDropped`.
        Some(task) => {
            let _ = task.await;
        }
        None => std::future::pending().await,
    }
}

async fn recv_export(exports: &mut Option<ExportRequests>) -> Option<ExportRequest> {
    match exports {
        Some(e) => e.rx.recv().await,
        None => None,
    }
}

/// Failures a later attempt may not repeat.
pub(crate) fn is_transient(error: &KvError) -> bool {
    matches!(
        error,
        KvError::NotConnected
            | KvError::ConnectionFailed(_)
            | KvError::Watch(_)
            | KvError::OperationFailed(_)
            | KvError::Timeout { .. }
    )
}
