//! Consumers: the raw server primitive, and the KV watch built on it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures::Stream;
use slipstream_kv::{ExpiryReason, KvError, Timestamp, WatchEvent, WatchScope};
use slipstream_protocol::{FloorVerdict, floor_verdict, gap_needs_floor_check};

use crate::bucket::RawMessage;
use crate::server::{Shared, State};

/// Where a raw consumer starts, as on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliverPolicy {
    /// Every retained message.
    All,
    /// From this sequence on. Below the first retained sequence it is
    /// silently clamped; 0 is refused; past the end it waits.
    ByStartSequence(u64),
    /// The latest message of every key in scope, then live messages.
    LastPerSubject,
    /// Only messages stored after creation.
    New,
}

/// What one step of a consumer produced.
/// The `Option<u64>` is the first retained sequence when the bucket can
/// evict current values (the floor a watch must not pass), else `None`.
enum Step {
    Message(RawMessage, Option<u64>),
    Idle(Option<u64>),
    Fail(KvError),
}

/// A server-side consumer's position, shared by raw consumers and watches.
#[derive(Debug)]
struct Core {
    shared: Arc<Shared>,
    bucket: String,
    incarnation: u64,
    id: u64,
    epoch: u64,
    scope: WatchScope,
    backlog: VecDeque<u64>,
    next_seq: u64,
    /// The last sequence when the consumer was created.
    created_at_last: u64,
    /// A message of the creation-time snapshot went before delivery (its
    /// key was rewritten, purged or evicted); a rewrite comes later.
    skipped_snapshot: bool,
}

impl Core {
    fn create(
        shared: Arc<Shared>,
        state: &mut State,
        now: Timestamp,
        bucket_name: &str,
        scope: WatchScope,
        policy: DeliverPolicy,
    ) -> Result<Self, KvError> {
        let id = state.new_consumer_id();
        let epoch = state.kill_epoch;
        let bucket = state.bucket(bucket_name, now)?;
        let last = bucket.last_seq();
        let (backlog, next_seq) = match policy {
            DeliverPolicy::All => (VecDeque::new(), 1),
            DeliverPolicy::ByStartSequence(0) => {
                return Err(KvError::Watch(
                    "consumer start sequence must be at least 1 (server error 10094)".into(),
                ));
            }
            DeliverPolicy::ByStartSequence(n) => (VecDeque::new(), n),
            DeliverPolicy::LastPerSubject => {
                (bucket.last_per_key(&scope).into(), last.saturating_add(1))
            }
            DeliverPolicy::New => (VecDeque::new(), last.saturating_add(1)),
        };
        Ok(Self {
            incarnation: bucket.incarnation,
            shared,
            bucket: bucket_name.to_owned(),
            id,
            epoch,
            scope,
            backlog,
            next_seq,
            created_at_last: last,
            skipped_snapshot: false,
        })
    }

    /// Advance by one message if there is one; register for wake-ups
    /// otherwise. Registration happens before state is read, so no change
    /// between the read and parking can be missed.
    fn poll_step(&mut self, cx: &Context<'_>) -> Poll<Step> {
        self.shared.clock.register(self.id, cx.waker());
        let now = self.shared.clock.now();
        let shared = Arc::clone(&self.shared);
        let mut state = shared.lock();
        state.register(self.id, cx.waker());
        let step = self.step(&mut state, now);
        Shared::release(state);
        step
    }

    fn step(&mut self, state: &mut State, now: Timestamp) -> Poll<Step> {
        if state.kill_epoch > self.epoch {
            let error = state
                .kill_error
                .clone()
                .unwrap_or_else(|| KvError::Watch("watch ended by the server".into()));
            return Poll::Ready(Step::Fail(error));
        }
        if state.stalled {
            return Poll::Pending;
        }
        let incarnation = self.incarnation;
        let bucket = match state.bucket(&self.bucket, now) {
            Ok(b) if b.incarnation == incarnation => b,
            _ => {
                return Poll::Ready(Step::Fail(KvError::Watch(format!(
                    "bucket {:?} was deleted",
                    self.bucket
                ))));
            }
        };
        let first = bucket.evicts_current_values().then(|| bucket.first_seq());
        while let Some(seq) = self.backlog.pop_front() {
            // A snapshot entry removed since creation is skipped, as the
            // server skips deleted messages.
            if let Some(m) = bucket.message(seq) {
                return Poll::Ready(Step::Message(m.clone(), first));
            }
            self.skipped_snapshot = true;
        }
        match bucket.next_matching(self.next_seq, &self.scope) {
            Some(m) => {
                self.next_seq = m.sequence.saturating_add(1);
                Poll::Ready(Step::Message(m.clone(), first))
            }
            None => Poll::Ready(Step::Idle(first)),
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.shared.clock.unregister(self.id);
        self.shared.lock().unregister(self.id);
    }
}

/// The server's consumer primitive, with the server's quirks: a start below
/// the first retained sequence is silently clamped (no error, no signal).
/// Detecting expiry is the layer above's job.
#[derive(Debug)]
pub struct RawConsumer {
    core: Core,
    done: bool,
}

impl RawConsumer {
    pub(crate) fn create(
        shared: Arc<Shared>,
        state: &mut State,
        now: Timestamp,
        bucket: &str,
        scope: WatchScope,
        policy: DeliverPolicy,
    ) -> Result<Self, KvError> {
        Core::create(shared, state, now, bucket, scope, policy)
            .map(|core| Self { core, done: false })
    }
}

impl Stream for RawConsumer {
    type Item = Result<RawMessage, KvError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.core.poll_step(cx) {
            Poll::Pending | Poll::Ready(Step::Idle(_)) => Poll::Pending,
            Poll::Ready(Step::Message(m, _)) => Poll::Ready(Some(Ok(m))),
            Poll::Ready(Step::Fail(e)) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

/// The watch stream of the simulated KV (V7).
///
/// Built on the raw consumer. On an All-scope delta watch it runs the live
/// floor guard (K4) on every gap, and also whenever it is woken with nothing
/// to deliver (the simulator's stand-in for the timed backstop probe).
#[derive(Debug)]
pub struct MemoryWatch {
    core: Core,
    connected: Arc<AtomicBool>,
    /// The highest revision delivered; `Some` only where the floor guard is
    /// sound (All-scope delta watches).
    frontier: Option<u64>,
    caught_up_sent: bool,
    held: Option<RawMessage>,
    done: bool,
}

/// How a watch starts, resolved against the bucket.
pub(crate) enum WatchPlan {
    StateSync,
    Delta { start: u64, guard_from: Option<u64> },
}

impl MemoryWatch {
    pub(crate) fn create(
        shared: Arc<Shared>,
        state: &mut State,
        now: Timestamp,
        bucket: &str,
        scope: WatchScope,
        plan: WatchPlan,
        connected: Arc<AtomicBool>,
    ) -> Result<Self, KvError> {
        let (policy, frontier) = match plan {
            WatchPlan::StateSync => (DeliverPolicy::LastPerSubject, None),
            WatchPlan::Delta { start, guard_from } => {
                (DeliverPolicy::ByStartSequence(start), guard_from)
            }
        };
        let core = Core::create(shared, state, now, bucket, scope, policy)?;
        Ok(Self {
            core,
            connected,
            frontier,
            caught_up_sent: false,
            held: None,
            done: false,
        })
    }

    fn fail(&mut self, error: KvError) -> Poll<Option<Result<WatchEvent, KvError>>> {
        self.done = true;
        Poll::Ready(Some(Err(error)))
    }

    fn overrun(&self, first: Option<u64>) -> Option<KvError> {
        let frontier = self.frontier?;
        let first = first?;
        (floor_verdict(frontier, first) == FloorVerdict::Overrun).then_some(
            KvError::CursorExpired {
                reason: ExpiryReason::FloorOverrun {
                    frontier,
                    first_sequence: first,
                },
            },
        )
    }

    fn deliver(&mut self, m: &RawMessage) -> Poll<Option<Result<WatchEvent, KvError>>> {
        if self.frontier.is_some() {
            self.frontier = Some(m.sequence);
        }
        Poll::Ready(Some(Ok(WatchEvent::Update(m.to_update()))))
    }
}

impl Stream for MemoryWatch {
    type Item = Result<WatchEvent, KvError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.connected.load(Ordering::Acquire) {
            return self.fail(KvError::NotConnected);
        }
        if let Some(m) = self.held.take() {
            return self.deliver(&m);
        }
        match self.core.poll_step(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Step::Fail(e)) => self.fail(e),
            Poll::Ready(Step::Message(m, first)) => {
                if let Some(frontier) = self.frontier
                    && gap_needs_floor_check(frontier, m.sequence)
                    && let Some(e) = self.overrun(first)
                {
                    return self.fail(e);
                }
                // Past the snapshot the watch has caught up, unless a key's
                // snapshot message went: its rewrite is still to come, so
                // only an idle consumer (nothing pending) has caught up.
                if !self.caught_up_sent
                    && m.sequence > self.core.created_at_last
                    && !self.core.skipped_snapshot
                {
                    self.caught_up_sent = true;
                    self.held = Some(m);
                    return Poll::Ready(Some(Ok(WatchEvent::CaughtUp)));
                }
                self.deliver(&m)
            }
            Poll::Ready(Step::Idle(first)) => {
                if let Some(e) = self.overrun(first) {
                    return self.fail(e);
                }
                if self.caught_up_sent {
                    Poll::Pending
                } else {
                    self.caught_up_sent = true;
                    Poll::Ready(Some(Ok(WatchEvent::CaughtUp)))
                }
            }
        }
    }
}
