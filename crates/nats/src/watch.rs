//! Watches (N7) with the live floor guard (N8).

use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::collections::VecDeque;
use std::time::Duration;

use async_nats::Message;
use futures::Stream;
use slipstream_kv::{
    BucketIdentity, ExpiryReason, KvError, KvWatcher, Retention, WatchEvent, WatchScope, WatchStart,
};
use slipstream_protocol::{
    FloorVerdict, cursor_beyond_log, floor_verdict, gap_needs_floor_check, resume_start_sequence,
    resume_window_ok,
};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::ack::parse_ack_subject;
use crate::bucket::names_start_problem;
use crate::consumer::{PushConsumer, create_consumer, filter_subjects};
use crate::decode::to_update;
use crate::error::NatsError;
use crate::jetstream::{
    Delivery, RecreateFailed, STREAM_NOT_FOUND, StartPolicy, StreamFacts, recreate_within,
};
use crate::outbox::{Item, Outbox};
use crate::settle::{Next, Settle};
use crate::store::NatsBucket;

type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A running watch: `Update`s in revision order, one `CaughtUp`, and an
/// error item (after which the stream ends) when the watch cannot go on.
/// Dropping it deletes the server-side consumer in the background.
///
/// The consumer loop runs inside `poll_next`, on the reader's task (which
/// must run on a Tokio runtime): it reads the inbox, answers flow control
/// and probes the floor only while the watch is polled, as an async-nats
/// watcher does, and queues up to 256 events ahead of the reader. A reader
/// that pauses holds the server back through flow control.
pub struct NatsWatch {
    /// Events taken from the outbox, handed out first.
    ready: VecDeque<Item>,
    outbox: Outbox,
    /// `None` once the consumer loop ended; the stream ends when `ready`
    /// and the outbox are empty too.
    driver: Option<Driver>,
}

impl fmt::Debug for NatsWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsWatch")
            .field("ready", &self.ready.len())
            .field("running", &self.driver.is_some())
            .finish_non_exhaustive()
    }
}

impl NatsWatch {
    fn nothing() -> Self {
        // A watch of nothing: caught up at once, then open for good.
        Self {
            ready: VecDeque::from([Ok(WatchEvent::CaughtUp)]),
            outbox: Outbox::default(),
            driver: Some(Box::pin(core::future::pending())),
        }
    }
}

impl Stream for NatsWatch {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let this = &mut *self;
        loop {
            if let Some(item) = this.ready.pop_front() {
                return Poll::Ready(Some(item));
            }
            if this.outbox.take_into(&mut this.ready) {
                continue;
            }
            let Some(driver) = this.driver.as_mut() else {
                return Poll::Ready(None);
            };
            match driver.as_mut().poll(cx) {
                Poll::Ready(()) => this.driver = None,
                // Pending with events queued means the outbox filled up.
                // Pending with none means the driver waits on the inbox, a
                // timer or a server request, which wake this task.
                Poll::Pending => {
                    if !this.outbox.take_into(&mut this.ready) {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

/// N8 under K11 generalised: only a bucket that can evict current values
/// has a floor the watch must not pass. Elsewhere what the head passed was
/// superseded, or expired at its writer's wish, which the engine answers
/// with a relist once the bucket is quiet; ending the watch there would
/// stop a node on every hot key.
fn guarded(facts: &StreamFacts) -> bool {
    facts.retention().evicts_current_values()
}

fn expired(reason: ExpiryReason) -> KvError {
    KvError::CursorExpired { reason }
}

/// Identity, K3 and K1 for a resume after `rank` (N7).
fn check_resume(
    identity: Option<&BucketIdentity>,
    rank: u64,
    facts: &StreamFacts,
) -> Result<(), KvError> {
    if let Some(expected) = identity
        && *expected != facts.identity
    {
        return Err(expired(ExpiryReason::IdentityChanged {
            expected: expected.clone(),
            found: facts.identity.clone(),
        }));
    }
    if cursor_beyond_log(rank, facts.last_sequence) {
        return Err(expired(ExpiryReason::BeyondLastSequence {
            revision: rank,
            last_sequence: facts.last_sequence,
        }));
    }
    if !resume_window_ok(rank, facts.first_sequence) {
        return Err(expired(ExpiryReason::BelowFirstSequence {
            revision: rank,
            first_sequence: facts.first_sequence,
        }));
    }
    Ok(())
}

impl NatsBucket {
    pub(crate) async fn facts(&self) -> Result<StreamFacts, KvError> {
        Ok(self.inner.conn.stream_facts(&self.inner.stream).await?)
    }

    /// Create a watch consumer; a start-sequence complaint is expiry.
    async fn watch_consumer(
        &self,
        filters: &[String],
        start: StartPolicy,
    ) -> Result<PushConsumer, KvError> {
        let conn = &self.inner.conn;
        let heartbeat = conn.settings.idle_heartbeat;
        let created =
            create_consumer(conn, &self.inner.stream, filters, start, false, heartbeat).await;
        match created {
            Ok(c) => Ok(c),
            Err(NatsError::Api { err_code, .. }) if err_code == STREAM_NOT_FOUND => {
                Err(KvError::BucketNotFound {
                    bucket: self.inner.name.clone(),
                })
            }
            Err(NatsError::Api { description, .. })
                if matches!(start, StartPolicy::ByStartSequence(_))
                    && names_start_problem(&description) =>
            {
                Err(expired(ExpiryReason::StartRejected {
                    detail: description,
                }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Create a consumer resuming after `rank`, checking the log before and
    /// after creation: the server clamps silently, so detection is ours.
    async fn resume_consumer(
        &self,
        filters: &[String],
        identity: Option<&BucketIdentity>,
        rank: u64,
    ) -> Result<PushConsumer, KvError> {
        let start = resume_start_sequence(rank).ok_or(expired(ExpiryReason::NoNextSequence))?;
        check_resume(identity, rank, &self.facts().await?)?;
        let consumer = self
            .watch_consumer(filters, StartPolicy::ByStartSequence(start))
            .await?;
        let after = match self.facts().await {
            Ok(after) => after,
            Err(e) => {
                consumer.delete().await;
                return Err(e);
            }
        };
        if let Err(e) = check_resume(identity, rank, &after) {
            consumer.delete().await;
            return Err(e);
        }
        Ok(consumer)
    }
}

impl KvWatcher for NatsBucket {
    type WatchStream = NatsWatch;

    async fn watch(&self, scope: &WatchScope, start: WatchStart) -> Result<NatsWatch, KvError> {
        scope.validate()?;
        self.inner.conn.ensure_open()?;
        if scope.is_empty() {
            return Ok(NatsWatch::nothing());
        }
        let prefixes: Vec<String> = match scope {
            WatchScope::All => vec![String::new()],
            WatchScope::Prefix(p) => vec![p.clone()],
            WatchScope::Prefixes(ps) => ps.clone(),
        };
        let filters = filter_subjects(&self.inner.keyspace, &prefixes);
        let (consumer, settle, identity, frontier) = match &start {
            WatchStart::Relist => {
                let identity = self.facts().await?.identity;
                let consumer = self
                    .watch_consumer(&filters, StartPolicy::LastPerSubject)
                    .await?;
                let settle =
                    Settle::after_creation(self, consumer.initial_pending(), scope.is_all());
                let settle = match settle.await {
                    Ok(settle) => settle,
                    Err(e) => {
                        consumer.delete().await;
                        return Err(e);
                    }
                };
                (consumer, settle, identity, None)
            }
            WatchStart::After(cursor) => {
                let rank = cursor.rank();
                let consumer = self
                    .resume_consumer(&filters, cursor.identity(), rank)
                    .await?;
                let identity = match cursor.identity() {
                    Some(id) => id.clone(),
                    None => self.facts().await?.identity,
                };
                let settle = Settle::delta(consumer.initial_pending());
                (consumer, settle, identity, Some(rank))
            }
        };
        let outbox = Outbox::default();
        let task = WatchTask {
            bucket: self.clone(),
            floor_guard: scope.is_all() && frontier.is_some(),
            filters,
            identity,
            frontier,
            expected_cseq: 1,
            catch_up: Some(settle),
            out: outbox.clone(),
        };
        debug!(consumer = consumer.name(), ?scope, "watch started");
        Ok(NatsWatch {
            ready: VecDeque::with_capacity(crate::outbox::BUFFER),
            outbox,
            driver: Some(Box::pin(task.run(consumer))),
        })
    }

    async fn retention(&self) -> Result<Retention, KvError> {
        Ok(self.facts().await?.retention())
    }
}

enum Step {
    Probe,
    Got(Delivery),
}

enum Flow {
    Continue,
    Recreate(String),
    Stop,
}

struct WatchTask {
    bucket: NatsBucket,
    filters: Vec<String>,
    identity: BucketIdentity,
    floor_guard: bool,
    /// The highest revision passed on (or the resume cursor's).
    frontier: Option<u64>,
    expected_cseq: u64,
    /// When the consumer has caught up; `None` once `CaughtUp` was sent.
    catch_up: Option<Settle>,
    out: Outbox,
}

impl WatchTask {
    async fn run(mut self, mut consumer: PushConsumer) {
        let settings = self.bucket.inner.conn.settings.clone();
        let probe_every = settings.floor_probe_interval.max(Duration::from_millis(10));
        let mut probe = tokio::time::interval_at(Instant::now() + probe_every, probe_every);
        // After a long pause of a slow reader, one probe is enough.
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stall_after = settings.idle_heartbeat.saturating_mul(3);
        self.arm_catch_up(None).await;
        loop {
            let step = if self.floor_guard {
                tokio::select! {
                    biased;
                    _ = probe.tick() => Step::Probe,
                    d = consumer.next(stall_after) => Step::Got(d),
                }
            } else {
                Step::Got(consumer.next(stall_after).await)
            };
            let flow = match step {
                Step::Probe => self.probe().await,
                Step::Got(Delivery::Data(msg)) => {
                    // Where the stream ends is asked only with the inbox
                    // dry: a backlog pushed at the tail carries pending 0
                    // on every message.
                    let more = self.catch_up.is_some() && consumer.has_data_waiting();
                    self.on_message(msg, more).await
                }
                Step::Got(
                    Delivery::FlowControl(subject)
                    | Delivery::Heartbeat {
                        stalled: Some(subject),
                        ..
                    },
                ) => match consumer.reply_flow_control(subject).await {
                    Ok(()) => Flow::Continue,
                    Err(e) => Flow::Recreate(e.to_string()),
                },
                Step::Got(Delivery::Heartbeat {
                    last_consumer_sequence: Some(last),
                    ..
                }) if last.saturating_add(1) != self.expected_cseq => Flow::Recreate(format!(
                    "heartbeat reports consumer sequence {last}, next expected {}",
                    self.expected_cseq
                )),
                Step::Got(Delivery::Heartbeat { .. }) => {
                    // Idle with the catch-up unsettled: the last hint may
                    // have come before a rewrite that was then removed.
                    self.settle_catch_up().await;
                    Flow::Continue
                }
                Step::Got(Delivery::Ended(reason)) => Flow::Recreate(reason),
                Step::Got(Delivery::Idle) => {
                    Flow::Recreate(format!("no delivery or heartbeat for {stall_after:?}"))
                }
            };
            match flow {
                Flow::Continue => {}
                // The error item is queued; dropping the consumer below
                // deletes it in the background, so the reader sees the end
                // without waiting for the server.
                Flow::Stop => break,
                Flow::Recreate(reason) => {
                    warn!(consumer = consumer.name(), %reason, "watch consumer lost; re-creating it");
                    // Dropping deletes the old consumer in the background.
                    drop(consumer);
                    match self.recreate(settings.reconnect_budget).await {
                        Ok(next) => {
                            consumer = next;
                            // A consumer re-created after a delivery starts
                            // right after it; one re-created before any is a
                            // fresh state-sync, settled by the tail only.
                            let pending = consumer.initial_pending();
                            self.arm_catch_up(Some(pending)).await;
                        }
                        Err(e) => {
                            self.out.send(Err(e)).await;
                            return;
                        }
                    }
                }
            }
        }
        drop(consumer);
    }

    /// Start reading a consumer (re-created with this many messages
    /// `pending`); send `CaughtUp` when nothing is pending.
    async fn arm_catch_up(&mut self, recreated: Option<u64>) {
        self.expected_cseq = 1;
        let Some(settle) = &mut self.catch_up else {
            return;
        };
        if let Some(pending) = recreated {
            *settle = settle.recreated(pending, self.frontier);
        }
        if settle.nothing_pending() {
            self.caught_up().await;
        }
    }

    async fn caught_up(&mut self) {
        self.catch_up = None;
        self.out.send(Ok(WatchEvent::CaughtUp)).await;
    }

    async fn on_message(&mut self, msg: Message, more: bool) -> Flow {
        let ack = parse_ack_subject(msg.reply.as_deref().unwrap_or_default());
        if let Some(cseq) = ack.consumer_sequence {
            if cseq != self.expected_cseq {
                return Flow::Recreate(format!(
                    "consumer sequence {cseq}, expected {}: deliveries lost",
                    self.expected_cseq
                ));
            }
            self.expected_cseq += 1;
        }
        if let (Some(frontier), Some(seq)) = (self.frontier, ack.stream_sequence) {
            if seq <= frontier {
                // A replay from a re-created consumer: already passed on.
                return Flow::Continue;
            }
            if self.floor_guard && gap_needs_floor_check(frontier, seq) {
                match self.bucket.facts().await {
                    Ok(facts) => {
                        if guarded(&facts)
                            && floor_verdict(frontier, facts.first_sequence)
                                == FloorVerdict::Overrun
                        {
                            return self.fail_overrun(frontier, facts.first_sequence).await;
                        }
                    }
                    Err(e) => {
                        self.out.send(Err(e)).await;
                        return Flow::Stop;
                    }
                }
            }
        }
        if let Some(seq) = ack.stream_sequence {
            self.frontier = Some(self.frontier.map_or(seq, |f| f.max(seq)));
        }
        let update = to_update(
            &msg.subject,
            &self.bucket.inner.keyspace,
            msg.headers.as_ref(),
            msg.payload,
            ack,
        );
        if let Some(update) = update {
            self.out.send(Ok(WatchEvent::Update(update))).await;
        }
        if let Some(settle) = &mut self.catch_up {
            match settle.delivered(ack.stream_sequence, ack.pending, more) {
                Next::CaughtUp => self.caught_up().await,
                Next::Check => self.settle_catch_up().await,
                Next::Wait => {}
            }
        }
        Flow::Continue
    }

    /// Send `CaughtUp` if the watch has delivered everything in scope (on
    /// a state-sync, checked against the server's last message in scope).
    async fn settle_catch_up(&mut self) {
        let Some(settle) = &mut self.catch_up else {
            return;
        };
        let delivered = self.frontier.unwrap_or(0);
        match settle.check(&self.bucket, &self.filters, delivered).await {
            Ok(true) => self.caught_up().await,
            Ok(false) => {}
            // The next hint or idle heartbeat asks again.
            Err(e) => {
                warn!(error = %e, "cannot check whether a state-sync caught up; asking again later");
            }
        }
    }

    async fn fail_overrun(&self, frontier: u64, first_sequence: u64) -> Flow {
        warn!(frontier, first_sequence, "live watch overrun by retention");
        self.out
            .send(Err(expired(ExpiryReason::FloorOverrun {
                frontier,
                first_sequence,
            })))
            .await;
        Flow::Stop
    }

    /// The backstop probe (N8): retention may pass the frontier while
    /// nothing is delivered.
    async fn probe(&self) -> Flow {
        let Some(frontier) = self.frontier else {
            return Flow::Continue;
        };
        match self.bucket.facts().await {
            Ok(facts)
                if guarded(&facts)
                    && floor_verdict(frontier, facts.first_sequence) == FloorVerdict::Overrun =>
            {
                self.fail_overrun(frontier, facts.first_sequence).await
            }
            Ok(_) => Flow::Continue,
            Err(e) => {
                debug!(error = %e, "floor probe failed; the next one retries");
                Flow::Continue
            }
        }
    }

    /// Re-create the consumer after the frontier, retrying transient
    /// failures within `budget`.
    async fn recreate(&self, budget: Duration) -> Result<PushConsumer, KvError> {
        let attempt = || async {
            match self.frontier {
                Some(rank) => {
                    self.bucket
                        .resume_consumer(&self.filters, Some(&self.identity), rank)
                        .await
                }
                None => {
                    self.bucket
                        .watch_consumer(&self.filters, StartPolicy::LastPerSubject)
                        .await
                }
            }
        };
        let fatal =
            |e: &KvError| matches!(e, KvError::CursorExpired { .. } | KvError::NotConnected);
        let on_retry = |e: &KvError, backoff: Duration| {
            warn!(error = %e, ?backoff, "re-creating the watch consumer failed; retrying");
        };
        match recreate_within(budget, attempt, fatal, on_retry).await {
            Ok(consumer) => Ok(consumer),
            Err(RecreateFailed::Fatal(e)) => Err(e),
            Err(RecreateFailed::OutOfBudget(e)) => Err(KvError::Watch(format!(
                "could not re-create the watch consumer within {budget:?}: {e}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipstream_kv::Timestamp;

    fn facts(first: u64, last: u64, created: u64) -> StreamFacts {
        StreamFacts {
            first_sequence: first,
            last_sequence: last,
            bytes: 0,
            consumer_count: 0,
            identity: BucketIdentity {
                stream: "KV_b".into(),
                created: Timestamp::from_unix_nanos(created),
            },
            observed_at: Timestamp::from_unix_nanos(0),
            max_age: None,
            max_msgs: -1,
            max_bytes: -1,
            discard_old: true,
            allow_msg_ttl: false,
        }
    }

    #[test]
    fn resume_checks_identity_then_beyond_then_below() {
        let f = facts(5, 10, 1);
        assert!(check_resume(None, 4, &f).is_ok());
        assert!(check_resume(None, 10, &f).is_ok());
        let below = check_resume(None, 3, &f).unwrap_err();
        assert!(matches!(
            below,
            KvError::CursorExpired {
                reason: ExpiryReason::BelowFirstSequence {
                    revision: 3,
                    first_sequence: 5
                }
            }
        ));
        let beyond = check_resume(None, 11, &f).unwrap_err();
        assert!(matches!(
            beyond,
            KvError::CursorExpired {
                reason: ExpiryReason::BeyondLastSequence { .. }
            }
        ));
        let other = facts(5, 10, 2).identity;
        let changed = check_resume(Some(&other), 6, &f).unwrap_err();
        assert!(matches!(
            changed,
            KvError::CursorExpired {
                reason: ExpiryReason::IdentityChanged { .. }
            }
        ));
    }

    #[tokio::test]
    async fn a_watch_of_nothing_is_caught_up_at_once_and_stays_open() {
        use futures::StreamExt;
        let mut w = NatsWatch::nothing();
        assert_eq!(w.next().await, Some(Ok(WatchEvent::CaughtUp)));
        let more = tokio::time::timeout(Duration::from_millis(20), w.next()).await;
        assert!(more.is_err(), "a watch of nothing must not end or deliver");
    }

    fn put(revision: u64) -> Item {
        Ok(WatchEvent::Update(slipstream_kv::KvUpdate::Put(
            slipstream_kv::KvEntry {
                key: format!("k{revision}"),
                value: bytes::Bytes::new(),
                version: slipstream_kv::VersionToken::from_u64(revision),
                created: None,
                expires: None,
            },
        )))
    }

    fn driven_by(outbox: Outbox, driver: impl Future<Output = ()> + Send + 'static) -> NatsWatch {
        NatsWatch {
            ready: VecDeque::new(),
            outbox,
            driver: Some(Box::pin(driver)),
        }
    }

    #[tokio::test]
    async fn events_pass_a_full_outbox_in_order_and_the_stream_ends_after_the_error() {
        use futures::StreamExt;
        let outbox = Outbox::default();
        let out = outbox.clone();
        let total = 3 * crate::outbox::BUFFER as u64 + 7;
        let w = driven_by(outbox, async move {
            for revision in 1..=total {
                out.send(put(revision)).await;
            }
            out.send(Err(KvError::Watch("gone".into()))).await;
        });
        let items: Vec<Item> = w.collect().await;
        let expected: Vec<Item> = (1..=total)
            .map(put)
            .chain([Err(KvError::Watch("gone".into()))])
            .collect();
        assert_eq!(items, expected);
    }

    #[tokio::test]
    async fn a_driver_waiting_on_the_server_wakes_the_reader() {
        use futures::StreamExt;
        let (waiting_tx, waiting) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = tokio::sync::oneshot::channel::<u64>();
        let outbox = Outbox::default();
        let out = outbox.clone();
        let mut w = driven_by(outbox, async move {
            let _ = waiting_tx.send(());
            if let Ok(revision) = rx.await {
                out.send(put(revision)).await;
            }
            core::future::pending::<()>().await;
        });
        let reader = tokio::spawn(async move { w.next().await });
        // The reader's poll has reached the wait (and returned Pending).
        waiting.await.unwrap();
        tx.send(9).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the reader was not woken")
            .unwrap();
        assert_eq!(got, Some(put(9)));
    }
}
