//! The model's initial state, environment steps, properties and
//! reachability goals.

use stateright::{Model, Property};

use super::{
    Durable, FLOOR_CHECKED, FLOOR_PASSED, GAP_DUE, Goal, HELD, Memory, NodePhase, REFUSED_BEHIND,
    REPAIRED_RELIST, REPAIRED_RESTORE, REPLACED, SHORT_DUE, Snapshot, Trace, WatchAction,
    WatchMutation, WatchRepairModel, WatchState,
};
use crate::bucket::{AGEING, Bucket, KEYS, RETAINING, WriteOp};

impl WatchRepairModel {
    pub(super) fn has(&self, m: WatchMutation) -> bool {
        self.mutation == Some(m)
    }

    fn initial(&self) -> WatchState {
        let prelude = self.config.prelude;
        let mut bucket = Bucket::new(if self.config.evicting {
            AGEING
        } else {
            RETAINING
        });
        for &(key, op) in prelude.writes {
            bucket.write(key, op);
        }
        let fold_at = |cursor: u64| -> [Option<u64>; KEYS] {
            core::array::from_fn(|k| {
                bucket
                    .log
                    .iter()
                    .zip(1u64..)
                    .take_while(|(_, seq)| *seq <= cursor)
                    .filter(|(m, _)| m.key as usize == k)
                    .last()
                    .and_then(|(m, seq)| m.op.is_put().then_some(seq))
            })
        };
        let artifact = prelude.artifact_at.map(|cursor| Snapshot {
            fold: fold_at(cursor),
            cursor,
        });
        let fold = fold_at(prelude.applied);
        let recreated = !prelude.recreate.is_empty();
        if recreated {
            bucket.recreate();
            for &(key, op) in prelude.recreate {
                bucket.write(key, op);
            }
        }
        WatchState {
            store: Durable {
                fold,
                applied: (prelude.applied > 0).then_some(prelude.applied),
                floor: None,
                repair_due: false,
                seen_evicting: false,
            },
            bucket,
            writes: 0,
            purges: 0,
            compactions: 0,
            exports: 0,
            crashes: 0,
            artifact,
            node: Memory::default(),
            phase: NodePhase::Down,
            override_next: false,
            trace: Trace {
                old_cursor: recreated,
                ..Trace::default()
            },
        }
    }

    /// Caught up and idle: the watch is ready and no node step (delivery,
    /// `CaughtUp`, look) changes anything.
    fn quiescent(&self, s: &WatchState) -> bool {
        matches!(s.phase, NodePhase::Watching(w) if w.ready)
            && [
                WatchAction::Deliver,
                WatchAction::CaughtUp,
                WatchAction::Look,
            ]
            .into_iter()
            .all(|a| self.node_step(s, a).is_none())
    }

    /// O1 as the simulations check it: each key as the writes leave it; a
    /// value that left the bucket may be kept, or lacked once a listing
    /// stood for the bucket since it left, never held at an older version.
    fn converged(s: &WatchState) -> bool {
        (0..KEYS).all(|k| {
            let key = k as u8;
            let held = s.store.fold[k];
            held == s.bucket.truth(key).map(|v| v.0)
                || (held.is_none() && s.bucket.value_left(key) && !s.trace.left_unrepaired[k])
        })
    }

    fn goal_reached(&self, s: &WatchState, goal: Goal) -> bool {
        let settled = || self.quiescent(s) && Self::converged(s);
        let e = s.trace.events;
        match goal {
            Goal::FloorRepaired => e & FLOOR_PASSED != 0 && settled(),
            Goal::GapRepaired => e & GAP_DUE != 0 && e & REPAIRED_RELIST != 0 && settled(),
            Goal::ShortRepaired => e & SHORT_DUE != 0 && e & REPAIRED_RELIST != 0 && settled(),
            Goal::HeldThenOverridden => e & HELD != 0 && e & REPAIRED_RELIST != 0 && settled(),
            Goal::RestoreRefusedBehind => e & REFUSED_BEHIND != 0,
            Goal::RestoreConverges => e & REPAIRED_RESTORE != 0 && settled(),
            Goal::FloorCheckRepaired => e & FLOOR_CHECKED != 0 && settled(),
            Goal::RecreatedRestored => e & REPLACED != 0 && e & REPAIRED_RESTORE != 0 && settled(),
        }
    }

    fn env_step(&self, s: &WatchState, action: WatchAction) -> Option<WatchState> {
        let c = &self.config;
        let mut n = s.clone();
        match action {
            // The new incarnation stays behind an old cursor until the
            // node notices (K3); past it is the identity check's job (R7).
            WatchAction::Write(key, op)
                if n.writes < c.writes
                    && !(n.trace.old_cursor
                        && n.store.applied.is_some_and(|r| n.bucket.last() + 1 >= r)) =>
            {
                n.bucket.write(key, op);
                n.writes += 1;
            }
            WatchAction::PurgeHead | WatchAction::AgeOut if n.purges < c.purges => {
                let (_, head) = n.bucket.next_retained(1)?;
                if action == WatchAction::AgeOut {
                    n.bucket.age_out();
                } else {
                    n.bucket.purge_head();
                }
                if head.op.is_put() {
                    n.trace.left_unrepaired[head.key as usize] = true;
                }
                n.purges += 1;
            }
            WatchAction::CompactMarkers
                if n.compactions < c.compactions
                    && n.phase == NodePhase::Down
                    && n.bucket.compact_markers() =>
            {
                n.compactions += 1;
            }
            WatchAction::Export if n.exports < c.exports => {
                let snapshot = Snapshot {
                    fold: core::array::from_fn(|k| n.bucket.truth(k as u8).map(|v| v.0)),
                    cursor: n.bucket.last(),
                };
                if n.artifact == Some(snapshot) {
                    return None;
                }
                n.artifact = Some(snapshot);
                n.exports += 1;
                // The bucket is as it was: a relist's follow-up still
                // finds nothing new.
                return Some(n);
            }
            _ => return None,
        }
        n.trace.unchanged_since_relist = false;
        Some(n)
    }
}

impl Model for WatchRepairModel {
    type State = WatchState;
    type Action = WatchAction;

    fn init_states(&self) -> Vec<WatchState> {
        vec![self.initial()]
    }

    fn actions(&self, s: &WatchState, actions: &mut Vec<WatchAction>) {
        let c = &self.config;
        if s.writes < c.writes {
            for key in 0..KEYS as u8 {
                actions.push(WatchAction::Write(key, WriteOp::Put));
                actions.push(WatchAction::Write(key, WriteOp::Delete));
            }
        }
        if s.purges < c.purges {
            actions.push(if c.evicting {
                WatchAction::AgeOut
            } else {
                WatchAction::PurgeHead
            });
        }
        if s.compactions < c.compactions && s.phase == NodePhase::Down {
            actions.push(WatchAction::CompactMarkers);
        }
        if s.exports < c.exports {
            actions.push(WatchAction::Export);
        }
        actions.extend([
            WatchAction::Start,
            WatchAction::Open,
            WatchAction::Deliver,
            WatchAction::CaughtUp,
            WatchAction::Look,
            WatchAction::Crash,
            WatchAction::Override,
        ]);
    }

    fn next_state(&self, s: &WatchState, action: WatchAction) -> Option<WatchState> {
        match action {
            WatchAction::Write(..)
            | WatchAction::PurgeHead
            | WatchAction::AgeOut
            | WatchAction::CompactMarkers
            | WatchAction::Export => self.env_step(s, action),
            _ => self.node_step(s, action),
        }
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut props = vec![
            Property::always("committed cursor never regresses", |_, s: &WatchState| {
                !s.trace.cursor_regressed
            }),
            Property::always(
                "caught-up fold equals the bucket (O1)",
                |m: &Self, s: &WatchState| !m.quiescent(s) || Self::converged(s),
            ),
            Property::always(
                "a repair empties the fold only after an override",
                |_, s: &WatchState| !s.trace.emptied_unconfirmed,
            ),
            Property::always(
                "a relist is never followed by a repair of an unchanged bucket",
                |_, s: &WatchState| !s.trace.repeated,
            ),
        ];
        for &goal in self.config.goals {
            props.push(goal_property(goal));
        }
        props
    }
}

/// A `sometimes` property for `goal`; stateright takes plain function
/// pointers, so each goal has its own.
fn goal_property(goal: Goal) -> Property<WatchRepairModel> {
    macro_rules! reach {
        ($goal:expr) => {
            Property::sometimes($goal.name(), |m: &WatchRepairModel, s: &WatchState| {
                m.goal_reached(s, $goal)
            })
        };
    }
    match goal {
        Goal::FloorRepaired => reach!(Goal::FloorRepaired),
        Goal::GapRepaired => reach!(Goal::GapRepaired),
        Goal::ShortRepaired => reach!(Goal::ShortRepaired),
        Goal::HeldThenOverridden => reach!(Goal::HeldThenOverridden),
        Goal::RestoreRefusedBehind => reach!(Goal::RestoreRefusedBehind),
        Goal::RestoreConverges => reach!(Goal::RestoreConverges),
        Goal::FloorCheckRepaired => reach!(Goal::FloorCheckRepaired),
        Goal::RecreatedRestored => reach!(Goal::RecreatedRestored),
    }
}
