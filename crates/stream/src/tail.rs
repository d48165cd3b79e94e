//! The task behind a [`StreamWatch`](crate::StreamWatch): replay, then tail
//! on the same consumer; re-create a lost consumer after the frontier; guard
//! the retention floor (K4).

use std::time::Duration;

use async_nats::Message;
use slipstream_kv::{BucketIdentity, ExpiryReason, KvError, Timestamp, WatchEvent, WatchScope};
use slipstream_nats::jetstream::{Delivery, RecreateFailed, recreate_within};
use slipstream_nats::parse_ack_subject;
use slipstream_protocol::{FloorVerdict, floor_verdict, gap_needs_floor_check};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::error::StreamError;
use crate::message::MessageView;
use crate::source::{Consumer, StreamSource};

type Item = Result<WatchEvent, KvError>;

enum Step {
    Stop,
    Probe,
    Got(Delivery),
}

enum Flow {
    Continue,
    Recreate(String),
    Stop,
}

pub(crate) struct Tail {
    source: StreamSource,
    identity: BucketIdentity,
    scope: WatchScope,
    /// The highest sequence passed on, or the resume's `since`.
    frontier: Option<u64>,
    expected_cseq: u64,
    /// Deliveries left before `CaughtUp`; `None` once it was sent.
    catch_up: Option<u64>,
    tx: mpsc::Sender<Item>,
}

impl Tail {
    pub(crate) fn new(
        source: StreamSource,
        identity: BucketIdentity,
        scope: WatchScope,
        since: Option<u64>,
        tx: mpsc::Sender<Item>,
    ) -> Self {
        Self {
            source,
            identity,
            scope,
            frontier: since,
            expected_cseq: 1,
            catch_up: Some(0),
            tx,
        }
    }

    pub(crate) async fn run(mut self, mut consumer: Consumer) {
        let settings = self.source.client_settings().clone();
        let probe_every = settings.floor_probe_interval.max(Duration::from_millis(10));
        let mut probe = tokio::time::interval_at(Instant::now() + probe_every, probe_every);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stall_after = settings.idle_heartbeat.saturating_mul(3);
        if !self.arm_catch_up(consumer.initial_pending()).await {
            consumer.delete().await;
            return;
        }
        loop {
            let step = tokio::select! {
                biased;
                () = self.tx.closed() => Step::Stop,
                _ = probe.tick(), if self.frontier.is_some() => Step::Probe,
                d = consumer.next(stall_after) => Step::Got(d),
            };
            let flow = match step {
                Step::Stop => Flow::Stop,
                Step::Probe => self.probe().await,
                Step::Got(Delivery::Data(msg)) => self.on_message(msg).await,
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
                Step::Got(Delivery::Heartbeat { .. }) => Flow::Continue,
                Step::Got(Delivery::Ended(reason)) => Flow::Recreate(reason),
                Step::Got(Delivery::Idle) => {
                    Flow::Recreate(format!("no delivery or heartbeat for {stall_after:?}"))
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Stop => break,
                Flow::Recreate(reason) => {
                    warn!(consumer = consumer.name(), %reason, "projection consumer lost; re-creating it after the frontier");
                    // Dropping deletes the old consumer in the background.
                    drop(consumer);
                    match self.recreate(settings.reconnect_budget).await {
                        Ok(next) => {
                            consumer = next;
                            if !self.arm_catch_up(consumer.initial_pending()).await {
                                break;
                            }
                        }
                        Err(e) => {
                            let _ = self.tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
            }
        }
        consumer.delete().await;
    }

    /// Reset the consumer sequence and, before the first `CaughtUp`, the
    /// count of deliveries the replay still owes; send `CaughtUp` at once
    /// when nothing is pending. False when the reader is gone.
    async fn arm_catch_up(&mut self, pending: u64) -> bool {
        self.expected_cseq = 1;
        if self.catch_up.is_none() {
            return true;
        }
        if pending == 0 {
            self.catch_up = None;
            return self.tx.send(Ok(WatchEvent::CaughtUp)).await.is_ok();
        }
        self.catch_up = Some(pending);
        true
    }

    async fn on_message(&mut self, msg: Message) -> Flow {
        let ack = parse_ack_subject(msg.reply.as_deref().unwrap_or_default());
        let Some(seq) = ack.stream_sequence else {
            return Flow::Recreate(format!(
                "a delivery on {} without a stream sequence",
                msg.subject
            ));
        };
        if let Some(cseq) = ack.consumer_sequence {
            if cseq != self.expected_cseq {
                return Flow::Recreate(format!(
                    "consumer sequence {cseq}, expected {}: deliveries lost",
                    self.expected_cseq
                ));
            }
            self.expected_cseq += 1;
        }
        let replayed = self.frontier.is_some_and(|f| seq <= f);
        if !replayed {
            if let Some(frontier) = self.frontier
                && gap_needs_floor_check(frontier, seq)
            {
                match self.source.first_sequence().await {
                    Ok(first) if floor_verdict(frontier, first) == FloorVerdict::Overrun => {
                        return self.fail_overrun(frontier, first).await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = self.tx.send(Err(e.into_kv(frontier))).await;
                        return Flow::Stop;
                    }
                }
            }
            self.frontier = Some(seq);
            let view = MessageView {
                subject: &msg.subject,
                headers: msg.headers.as_ref(),
                payload: &msg.payload,
                sequence: seq,
            };
            let created = ack.timestamp.map(Timestamp::from_unix_nanos);
            let update = self.source.key_mapping().to_update(&view, created);
            if self.scope.contains(update.key())
                && self.tx.send(Ok(WatchEvent::Update(update))).await.is_err()
            {
                return Flow::Stop;
            }
        }
        if let Some(left) = self.catch_up {
            let left = left.saturating_sub(1);
            if left == 0 || ack.pending == Some(0) {
                self.catch_up = None;
                debug!(stream = %self.source.stream(), frontier = ?self.frontier, "replay done; tailing");
                if self.tx.send(Ok(WatchEvent::CaughtUp)).await.is_err() {
                    return Flow::Stop;
                }
            } else {
                self.catch_up = Some(left);
            }
        }
        Flow::Continue
    }

    async fn fail_overrun(&self, frontier: u64, first_sequence: u64) -> Flow {
        warn!(frontier, first_sequence, stream = %self.source.stream(), "projection overrun by retention");
        let reason = ExpiryReason::FloorOverrun {
            frontier,
            first_sequence,
        };
        let _ = self.tx.send(Err(KvError::CursorExpired { reason })).await;
        Flow::Stop
    }

    /// Retention may pass the frontier while nothing is delivered.
    async fn probe(&self) -> Flow {
        let Some(frontier) = self.frontier else {
            return Flow::Continue;
        };
        match self.source.first_sequence().await {
            Ok(first) if floor_verdict(frontier, first) == FloorVerdict::Overrun => {
                self.fail_overrun(frontier, first).await
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
    async fn recreate(&self, budget: Duration) -> Result<Consumer, KvError> {
        let since = self.frontier.unwrap_or(0);
        let attempt = || self.source.reopen(&self.identity, self.frontier);
        let fatal = |e: &StreamError| {
            matches!(
                e,
                StreamError::RetentionExhausted { .. }
                    | StreamError::BeyondLastSequence { .. }
                    | StreamError::IdentityChanged { .. }
                    | StreamError::NoNextSequence
            )
        };
        let on_retry = |e: &StreamError, backoff: Duration| {
            debug!(error = %e, ?backoff, "re-creating the projection consumer failed; retrying");
        };
        match recreate_within(budget, attempt, fatal, on_retry).await {
            Ok(consumer) => Ok(consumer),
            Err(RecreateFailed::Fatal(e)) => Err(e.into_kv(since)),
            Err(RecreateFailed::OutOfBudget(e)) => Err(KvError::Watch(format!(
                "could not re-create the projection consumer within {budget:?}: {e}"
            ))),
        }
    }
}
