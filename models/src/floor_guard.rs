//! Model 2: the live floor guard (K4) on an All-scope delta watch.
//!
//! A bucket that evicts current values takes writes on two keys while one
//! live watch delivers. Head eviction can pass the watch's frontier between
//! deliveries. The in-band guard runs K4 on every delivery that leaves a gap;
//! the periodic-only variant runs it only from a backstop probe, so a
//! delivery that catches up erases the evidence before the next probe.

use slipstream_protocol::{FloorVerdict, floor_verdict, gap_needs_floor_check, next_high_water};
use stateright::{Model, Property};

use crate::bucket::{AGEING, Bucket, KEYS, Kept, WriteOp};

/// A removed step in the floor-guard model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloorMutation {
    /// Deliveries skip K4; only the backstop probe checks the floor.
    PeriodicProbeOnly,
}

/// Bounds of the floor-guard model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FloorGuardConfig {
    /// Name shown in the table.
    pub name: &'static str,
    /// Total writes (puts and deletes).
    pub writes: u8,
}

/// The floor-guard model.
#[derive(Debug, Clone, Copy)]
pub struct FloorGuardModel {
    /// The bounds.
    pub config: FloorGuardConfig,
    /// The mutation, if any.
    pub mutation: Option<FloorMutation>,
}

/// Whether the watch is still delivering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WatchStatus {
    /// Delivering.
    Live,
    /// Ended with `CursorExpired`.
    Expired,
}

/// A state of the floor-guard model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FloorState {
    bucket: Bucket,
    writes: u8,
    fold: [Option<u64>; KEYS],
    frontier: u64,
    status: WatchStatus,
    /// Ghost: a delivery jumped over a message lost to head eviction.
    skipped_evicted: bool,
    /// Ghost: a delivery passed a gap of superseded messages only.
    passed_interior_gap: bool,
}

/// A step of the floor-guard model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloorAction {
    /// A client writes to a key.
    Write(u8, WriteOp),
    /// The head message ages out.
    AgeOut,
    /// The watch delivers its next message.
    Deliver,
    /// The backstop probe.
    Probe,
}

impl FloorGuardModel {
    fn deliver(&self, s: &mut FloorState) -> bool {
        if s.status != WatchStatus::Live {
            return false;
        }
        let Some((seq, msg)) = s.bucket.next_retained(s.frontier + 1) else {
            return false;
        };
        let in_band = self.mutation != Some(FloorMutation::PeriodicProbeOnly);
        if in_band
            && gap_needs_floor_check(s.frontier, seq)
            && floor_verdict(s.frontier, s.bucket.first()) == FloorVerdict::Overrun
        {
            s.status = WatchStatus::Expired;
            return true;
        }
        let gap = s.frontier + 1..seq;
        if gap
            .clone()
            .any(|q| s.bucket.msg(q).kept == Kept::HeadEvicted)
        {
            s.skipped_evicted = true;
        } else if !gap.is_empty() {
            s.passed_interior_gap = true;
        }
        s.fold[msg.key as usize] = msg.op.is_put().then_some(seq);
        s.frontier = next_high_water(Some(s.frontier), Some(seq)).unwrap_or(seq);
        true
    }

    fn probe(s: &mut FloorState) -> bool {
        if s.status == WatchStatus::Live
            && floor_verdict(s.frontier, s.bucket.first()) == FloorVerdict::Overrun
        {
            s.status = WatchStatus::Expired;
            return true;
        }
        false
    }

    /// A live watch with nothing to deliver and a probe that finds nothing.
    fn quiescent(&self, s: &FloorState) -> bool {
        let mut probe = s.clone();
        let mut delivery = s.clone();
        s.status == WatchStatus::Live && !self.deliver(&mut delivery) && !Self::probe(&mut probe)
    }
}

impl Model for FloorGuardModel {
    type State = FloorState;
    type Action = FloorAction;

    fn init_states(&self) -> Vec<FloorState> {
        vec![FloorState {
            bucket: Bucket::new(AGEING),
            writes: 0,
            fold: [None; KEYS],
            frontier: 0,
            status: WatchStatus::Live,
            skipped_evicted: false,
            passed_interior_gap: false,
        }]
    }

    fn actions(&self, s: &FloorState, actions: &mut Vec<FloorAction>) {
        if s.writes < self.config.writes {
            for key in 0..KEYS as u8 {
                actions.push(FloorAction::Write(key, WriteOp::Put));
                actions.push(FloorAction::Write(key, WriteOp::Delete));
            }
        }
        actions.extend([
            FloorAction::AgeOut,
            FloorAction::Deliver,
            FloorAction::Probe,
        ]);
    }

    fn next_state(&self, s: &FloorState, action: FloorAction) -> Option<FloorState> {
        let mut n = s.clone();
        let changed = match action {
            FloorAction::Write(key, op) => {
                n.bucket.write(key, op);
                n.writes += 1;
                true
            }
            FloorAction::AgeOut => n.bucket.age_out(),
            FloorAction::Deliver => self.deliver(&mut n),
            FloorAction::Probe => Self::probe(&mut n),
        };
        changed.then_some(n)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "a live watch never silently skips evicted history",
                |m: &Self, s: &FloorState| !(m.quiescent(s) && s.skipped_evicted),
            ),
            Property::always(
                "caught-up live watch equals the truth",
                |m: &Self, s: &FloorState| {
                    !m.quiescent(s)
                        || (0..KEYS).all(|k| s.fold[k] == s.bucket.truth(k as u8).map(|v| v.0))
                },
            ),
            Property::sometimes("guard ends the watch", |_, s: &FloorState| {
                s.status == WatchStatus::Expired
            }),
            Property::sometimes(
                "interior eviction gap passes",
                |m: &Self, s: &FloorState| m.quiescent(s) && s.passed_interior_gap,
            ),
        ]
    }
}
