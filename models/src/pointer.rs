//! Model 5: the artifact pointer and payload pruning (K12).
//!
//! Two publishers upload artifact payloads at ranks of their choosing, read
//! the pointer and publish with a compare-and-swap guarded by K12
//! `pointer_publish_allowed`. A pruner reads the pointer and deletes payloads
//! K12 `payload_prunable` allows; payloads age at any time.

use slipstream_protocol::{PointerState, payload_prunable, pointer_publish_allowed};
use stateright::{Model, Property};

const PUBLISHERS: usize = 2;

/// A forged kernel input in the pointer model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PointerMutation {
    /// K12 `payload_prunable` is fed inputs under which only age counts.
    AgeOnlyPrune,
    /// K12 `pointer_publish_allowed` is fed an absent pointer.
    PublishWithoutCheck,
}

/// Bounds of the pointer model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PointerConfig {
    /// Name shown in the table.
    pub name: &'static str,
    /// Payload ranks are `1..=ranks`.
    pub ranks: u8,
}

/// The pointer model.
#[derive(Debug, Clone, Copy)]
pub struct PointerModel {
    /// The bounds.
    pub config: PointerConfig,
    /// The mutation, if any.
    pub mutation: Option<PointerMutation>,
}

/// A payload's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Payload {
    /// Not uploaded.
    Missing,
    /// Uploaded and young.
    Fresh,
    /// Uploaded and past the retention age.
    Aged,
    /// Deleted by the pruner.
    Pruned,
}

/// A publisher's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Publisher {
    /// Not publishing.
    Idle,
    /// Uploaded a payload at this rank.
    Uploaded(u8),
    /// Read the pointer (`None` = absent) before publishing this rank.
    Read(u8, Option<u8>),
}

/// A state of the pointer model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PointerModelState {
    payloads: Vec<Payload>,
    pointer: Option<u8>,
    publishers: [Publisher; PUBLISHERS],
    /// The pointer the pruner read, if it has read one.
    pruner_view: Option<u8>,
    /// Ghost: a publish lowered the pointer.
    regressed: bool,
    /// Ghost: publishes that moved the pointer.
    publishes: u8,
    /// Ghost: payloads pruned.
    pruned: u8,
}

/// A step of the pointer model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PointerAction {
    /// A publisher uploads a payload at a rank.
    Upload(usize, u8),
    /// A publisher reads the pointer.
    ReadPointer(usize),
    /// A publisher compares-and-swaps the pointer.
    Publish(usize),
    /// A payload ages past retention.
    Age(u8),
    /// The pruner reads the pointer.
    PrunerRead,
    /// The pruner deletes a payload if K12 allows.
    Prune(u8),
}

impl PointerModel {
    fn slot(s: &mut PointerModelState, rank: u8) -> &mut Payload {
        &mut s.payloads[(rank - 1) as usize]
    }

    fn publish(&self, s: &mut PointerModelState, p: usize) -> bool {
        let Publisher::Read(rank, seen) = s.publishers[p] else {
            return false;
        };
        s.publishers[p] = Publisher::Idle;
        let current = match (self.mutation, seen) {
            (Some(PointerMutation::PublishWithoutCheck), _) | (_, None) => PointerState::Absent,
            (_, Some(r)) => PointerState::Present(Some(u64::from(r))),
        };
        // The CAS succeeds only if the pointer is still what was read.
        if pointer_publish_allowed(current, u64::from(rank)) && s.pointer == seen {
            if s.pointer.is_some_and(|old| rank < old) {
                s.regressed = true;
            }
            if s.pointer != Some(rank) {
                s.publishes += 1;
            }
            s.pointer = Some(rank);
        }
        true
    }

    fn prune(&self, s: &mut PointerModelState, rank: u8) -> bool {
        let Some(view) = s.pruner_view else {
            return false;
        };
        let payload = *Self::slot(s, rank);
        if !matches!(payload, Payload::Fresh | Payload::Aged) {
            return false;
        }
        let aged = payload == Payload::Aged;
        let prunable = match self.mutation {
            Some(PointerMutation::AgeOnlyPrune) => payload_prunable(Some(0), u64::MAX, false, aged),
            _ => payload_prunable(Some(u64::from(rank)), u64::from(view), rank == view, aged),
        };
        if !prunable {
            return false;
        }
        *Self::slot(s, rank) = Payload::Pruned;
        s.pruned += 1;
        true
    }
}

impl Model for PointerModel {
    type State = PointerModelState;
    type Action = PointerAction;

    fn init_states(&self) -> Vec<PointerModelState> {
        vec![PointerModelState {
            payloads: vec![Payload::Missing; self.config.ranks as usize],
            pointer: None,
            publishers: [Publisher::Idle; PUBLISHERS],
            pruner_view: None,
            regressed: false,
            publishes: 0,
            pruned: 0,
        }]
    }

    fn actions(&self, _: &PointerModelState, actions: &mut Vec<PointerAction>) {
        for p in 0..PUBLISHERS {
            for rank in 1..=self.config.ranks {
                actions.push(PointerAction::Upload(p, rank));
            }
            actions.push(PointerAction::ReadPointer(p));
            actions.push(PointerAction::Publish(p));
        }
        for rank in 1..=self.config.ranks {
            actions.push(PointerAction::Age(rank));
            actions.push(PointerAction::Prune(rank));
        }
        actions.push(PointerAction::PrunerRead);
    }

    fn next_state(
        &self,
        s: &PointerModelState,
        action: PointerAction,
    ) -> Option<PointerModelState> {
        let mut n = s.clone();
        let changed = match action {
            PointerAction::Upload(p, rank) => {
                if n.publishers[p] == Publisher::Idle
                    && *Self::slot(&mut n, rank) == Payload::Missing
                {
                    *Self::slot(&mut n, rank) = Payload::Fresh;
                    n.publishers[p] = Publisher::Uploaded(rank);
                    true
                } else {
                    false
                }
            }
            PointerAction::ReadPointer(p) => match n.publishers[p] {
                Publisher::Uploaded(rank) => {
                    n.publishers[p] = Publisher::Read(rank, n.pointer);
                    true
                }
                _ => false,
            },
            PointerAction::Publish(p) => self.publish(&mut n, p),
            PointerAction::Age(rank) => {
                let slot = Self::slot(&mut n, rank);
                if *slot == Payload::Fresh {
                    *slot = Payload::Aged;
                    true
                } else {
                    false
                }
            }
            PointerAction::PrunerRead => {
                let changed = n.pointer.is_some() && n.pruner_view != n.pointer;
                n.pruner_view = n.pointer;
                changed
            }
            PointerAction::Prune(rank) => self.prune(&mut n, rank),
        };
        changed.then_some(n)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "published cursor never regresses",
                |_, s: &PointerModelState| !s.regressed,
            ),
            Property::always(
                "pointer target is always fetchable",
                |_, s: &PointerModelState| {
                    s.pointer.is_none_or(|r| {
                        matches!(s.payloads[(r - 1) as usize], Payload::Fresh | Payload::Aged)
                    })
                },
            ),
            Property::sometimes("pointer advances twice", |_, s: &PointerModelState| {
                s.publishes >= 2
            }),
            Property::sometimes(
                "an old payload is pruned under a live pointer",
                |_, s: &PointerModelState| s.pruned >= 1 && s.pointer.is_some(),
            ),
        ]
    }
}
