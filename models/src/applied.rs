//! Model 3: the applied-watch engine's batching and commit loop (E1–E5).
//!
//! Deliveries join a pending batch; a flush runs `apply`, moves the applied
//! cursor to the batch high-water (K5 `next_high_water`) and commits the raw
//! batch with that cursor. A commit can fail transiently (the raw batch is
//! re-queued in front of newer updates, E4), the engine can crash (memory is
//! lost, the store survives) and restart from the store's cursor (K2), and
//! the consumer can be recreated after a reconnect and start over, whose
//! replays K5 `is_replay` drops.

use slipstream_protocol::{is_replay, next_high_water, resume_start_sequence};
use stateright::{Model, Property};

use crate::bucket::{KEYS, WriteOp};

/// A forged kernel input or a removed step in the applied-engine model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppliedMutation {
    /// A batch whose commit failed is dropped instead of re-queued.
    DropFailedBatch,
    /// K5 `is_replay` is fed an unknown received high-water: replays reach
    /// `apply`.
    NoReplayFilter,
}

/// Bounds of the applied-engine model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AppliedConfig {
    /// Name shown in the table.
    pub name: &'static str,
    /// Total writes (puts and deletes).
    pub writes: u8,
    /// Largest batch (E2's `max`).
    pub batch_max: u8,
    /// Transient commit failures.
    pub failures: u8,
    /// Engine crashes.
    pub crashes: u8,
    /// Consumer recreations that start over from the beginning.
    pub reconnects: u8,
}

/// The applied-engine model.
#[derive(Debug, Clone, Copy)]
pub struct AppliedModel {
    /// The bounds.
    pub config: AppliedConfig,
    /// The mutation, if any.
    pub mutation: Option<AppliedMutation>,
}

/// One key's state as `apply` or the store saw it last: the sequence of the
/// last update (0 for none) and whether the key is live.
type Slot = (u64, bool);

/// A state of the applied-engine model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AppliedState {
    log: Vec<(u8, WriteOp)>,
    /// `None` while the engine is down; else the watch's next sequence.
    running: Option<u64>,
    applied: Option<u64>,
    pending: Vec<u64>,
    uncommitted: Vec<u64>,
    app: [Slot; KEYS],
    store_fold: [Slot; KEYS],
    store_cursor: Option<u64>,
    failures: u8,
    crashes: u8,
    reconnects: u8,
    /// Ghost: `apply` saw a key move to an older revision.
    apply_went_backward: bool,
    /// Ghost: a commit succeeded after a failed one.
    recovered_from_failure: bool,
    failed_since_commit: bool,
    dropped_replay: bool,
}

/// How a commit attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommitOutcome {
    /// The store committed.
    Committed,
    /// The store failed transiently.
    Failed,
}

/// A step of the applied-engine model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppliedAction {
    /// A client writes to a key.
    Write(u8, WriteOp),
    /// The engine starts from its store.
    Start,
    /// The watch delivers its next message.
    Deliver,
    /// The batch closes: apply, then commit with the given outcome.
    Flush(CommitOutcome),
    /// The consumer is recreated and starts over from sequence 1.
    Reconnect,
    /// The engine crashes.
    Crash,
}

fn fold_into(slots: &mut [Slot; KEYS], log: &[(u8, WriteOp)], seq: u64) -> bool {
    let (key, op) = log[(seq - 1) as usize];
    let slot = &mut slots[key as usize];
    let backward = seq < slot.0;
    *slot = (seq, op.is_put());
    backward
}

impl AppliedModel {
    fn flush(&self, s: &mut AppliedState, outcome: CommitOutcome) -> bool {
        if s.running.is_none() || (s.pending.is_empty() && s.uncommitted.is_empty()) {
            return false;
        }
        if outcome == CommitOutcome::Failed && s.failures >= self.config.failures {
            return false;
        }
        for &seq in &s.pending {
            if fold_into(&mut s.app, &s.log, seq) {
                s.apply_went_backward = true;
            }
            s.applied = next_high_water(s.applied, Some(seq));
        }
        let batch = std::mem::take(&mut s.pending);
        s.uncommitted.extend(batch);
        match outcome {
            CommitOutcome::Committed => {
                for &seq in &s.uncommitted {
                    fold_into(&mut s.store_fold, &s.log, seq);
                }
                s.uncommitted.clear();
                s.store_cursor = s.applied;
                if s.failed_since_commit {
                    s.recovered_from_failure = true;
                    s.failed_since_commit = false;
                }
            }
            CommitOutcome::Failed => {
                s.failures += 1;
                s.failed_since_commit = true;
                if self.mutation == Some(AppliedMutation::DropFailedBatch) {
                    s.uncommitted.clear();
                }
            }
        }
        true
    }

    fn deliver(&self, s: &mut AppliedState) -> bool {
        let Some(next) = s.running else {
            return false;
        };
        if next > s.log.len() as u64 || s.pending.len() >= self.config.batch_max as usize {
            return false;
        }
        s.running = Some(next + 1);
        // Everything applied or already pending counts as received.
        let received = s
            .pending
            .iter()
            .fold(s.applied, |high, &seq| next_high_water(high, Some(seq)));
        let received = match self.mutation {
            Some(AppliedMutation::NoReplayFilter) => None,
            _ => received,
        };
        if is_replay(received, Some(next)) {
            s.dropped_replay = true;
        } else {
            s.pending.push(next);
        }
        true
    }

    fn quiescent(s: &AppliedState) -> bool {
        s.running.is_some_and(|next| next > s.log.len() as u64)
            && s.pending.is_empty()
            && s.uncommitted.is_empty()
    }

    fn replay(s: &AppliedState, upto: u64) -> [Slot; KEYS] {
        let mut slots = [(0, false); KEYS];
        for seq in 1..=upto {
            fold_into(&mut slots, &s.log, seq);
        }
        slots
    }
}

impl Model for AppliedModel {
    type State = AppliedState;
    type Action = AppliedAction;

    fn init_states(&self) -> Vec<AppliedState> {
        vec![AppliedState {
            log: Vec::new(),
            running: None,
            applied: None,
            pending: Vec::new(),
            uncommitted: Vec::new(),
            app: [(0, false); KEYS],
            store_fold: [(0, false); KEYS],
            store_cursor: None,
            failures: 0,
            crashes: 0,
            reconnects: 0,
            apply_went_backward: false,
            recovered_from_failure: false,
            failed_since_commit: false,
            dropped_replay: false,
        }]
    }

    fn actions(&self, s: &AppliedState, actions: &mut Vec<AppliedAction>) {
        if s.log.len() < self.config.writes as usize {
            for key in 0..KEYS as u8 {
                actions.push(AppliedAction::Write(key, WriteOp::Put));
                actions.push(AppliedAction::Write(key, WriteOp::Delete));
            }
        }
        actions.extend([
            AppliedAction::Start,
            AppliedAction::Deliver,
            AppliedAction::Flush(CommitOutcome::Committed),
            AppliedAction::Flush(CommitOutcome::Failed),
            AppliedAction::Reconnect,
            AppliedAction::Crash,
        ]);
    }

    fn next_state(&self, s: &AppliedState, action: AppliedAction) -> Option<AppliedState> {
        let mut n = s.clone();
        let changed = match action {
            AppliedAction::Write(key, op) => {
                n.log.push((key, op));
                true
            }
            AppliedAction::Start => match (
                n.running,
                resume_start_sequence(n.store_cursor.unwrap_or(0)),
            ) {
                (None, Some(next)) => {
                    n.running = Some(next);
                    n.applied = n.store_cursor;
                    n.app = n.store_fold;
                    true
                }
                _ => false,
            },
            AppliedAction::Deliver => self.deliver(&mut n),
            AppliedAction::Flush(outcome) => self.flush(&mut n, outcome),
            AppliedAction::Reconnect => {
                if n.running.is_none() || n.reconnects >= self.config.reconnects {
                    return None;
                }
                n.reconnects += 1;
                n.running = Some(1);
                true
            }
            AppliedAction::Crash => {
                if n.running.is_none() || n.crashes >= self.config.crashes {
                    return None;
                }
                n.crashes += 1;
                n.running = None;
                n.applied = None;
                n.pending.clear();
                n.uncommitted.clear();
                n.app = [(0, false); KEYS];
                n.failed_since_commit = false;
                true
            }
        };
        changed.then_some(n)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut props = vec![
            Property::always(
                "store cursor names only committed data",
                |_, s: &AppliedState| {
                    let live = |slots: [Slot; KEYS]| slots.map(|(seq, live)| live.then_some(seq));
                    live(s.store_fold) == live(Self::replay(s, s.store_cursor.unwrap_or(0)))
                },
            ),
            Property::always(
                "apply never sees a key move backward",
                |_, s: &AppliedState| !s.apply_went_backward,
            ),
            Property::always(
                "caught-up store and application equal the bucket",
                |_, s: &AppliedState| {
                    if !Self::quiescent(s) {
                        return true;
                    }
                    let truth = Self::replay(s, s.log.len() as u64);
                    let live = |slots: [Slot; KEYS]| slots.map(|(seq, live)| live.then_some(seq));
                    live(s.store_fold) == live(truth) && live(s.app) == live(truth)
                },
            ),
        ];
        if self.config.failures > 0 {
            props.push(Property::sometimes(
                "commit recovers after a transient failure",
                |_, s: &AppliedState| s.recovered_from_failure && Self::quiescent(s),
            ));
        }
        if self.config.reconnects > 0 {
            props.push(Property::sometimes(
                "replay after a reconnect is dropped",
                |_, s: &AppliedState| s.dropped_replay && Self::quiescent(s),
            ));
        }
        props
    }
}
