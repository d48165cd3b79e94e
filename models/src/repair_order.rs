//! Model 4: the order of a re-list repair (R2).
//!
//! The consumer's cursor has expired after a delete was lost in the gap.
//! The repair takes the listing, runs a synthetic delete for every fold key
//! the listing lacks (checked by K14 first), and only then opens the
//! state-sync watch. Writes continue throughout, so a key can be deleted in
//! the gap and recreated after the listing: if the watch's put of the new
//! value were folded before the synthetic delete, the delete would erase it.

use slipstream_protocol::{
    MassDeleteLimit, MassDeleteVerdict, RepairMode, RepairPlan, listing_is_truth,
    mass_delete_guard, next_high_water, plan_repair, resume_window_ok,
};
use stateright::{Model, Property};

use crate::bucket::{Bucket, KEYS, RETAINING, WriteOp};

/// A removed step in the repair-order model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RepairOrderMutation {
    /// The state-sync watch opens with the listing, so its puts can be
    /// folded before the synthetic deletes.
    PutsBeforeDeletes,
}

/// Bounds of the repair-order model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RepairOrderConfig {
    /// Name shown in the table.
    pub name: &'static str,
    /// Writes (puts and deletes) during the repair.
    pub writes: u8,
}

/// The repair-order model.
#[derive(Debug, Clone, Copy)]
pub struct RepairOrderModel {
    /// The bounds.
    pub config: RepairOrderConfig,
    /// The mutation, if any.
    pub mutation: Option<RepairOrderMutation>,
}

/// Where the repair is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RepairStage {
    /// About to resume from the expired cursor.
    Resuming,
    /// Listing taken; synthetic deletes still owed per key, and the
    /// state-sync watch's next sequence once it is open.
    Listed {
        /// Keys still to delete.
        deletes: [bool; KEYS],
        /// The open watch's next sequence.
        watch: Option<u64>,
    },
    /// Deletes done; the watch delivers.
    Watching {
        /// The watch's next sequence.
        next: u64,
    },
    /// Stopped loudly (K8 refused or K14 held).
    Failed,
}

/// A state of the repair-order model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepairOrderState {
    bucket: Bucket,
    writes: u8,
    fold: [Option<u64>; KEYS],
    cursor: u64,
    stage: RepairStage,
    /// Ghost: a write landed between the listing and the end of the deletes.
    raced: bool,
}

/// A step of the repair-order model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RepairOrderAction {
    /// A client writes to a key.
    Write(u8, WriteOp),
    /// Resume, find the cursor expired, plan and take the listing.
    Resume,
    /// Fold the synthetic delete of a key.
    SyntheticDelete(u8),
    /// Open the state-sync watch.
    OpenWatch,
    /// The watch delivers its next message.
    Deliver,
}

impl RepairOrderModel {
    fn resume(s: &mut RepairOrderState) -> bool {
        if s.stage != RepairStage::Resuming {
            return false;
        }
        let first = s.bucket.first();
        if resume_window_ok(s.cursor, first) {
            s.stage = RepairStage::Watching { next: s.cursor + 1 };
            return true;
        }
        let truth = listing_is_truth(s.bucket.evicting(), first, false);
        if plan_repair(RepairMode::Auto, Some(truth)) != RepairPlan::Relist {
            s.stage = RepairStage::Failed;
            return true;
        }
        let deletes: [bool; KEYS] =
            core::array::from_fn(|k| s.fold[k].is_some() && !s.bucket.listed_live(k as u8));
        let fold_len = s.fold.iter().filter(|v| v.is_some()).count() as u64;
        let deletions = deletes.iter().filter(|d| **d).count() as u64;
        if mass_delete_guard(fold_len, deletions, MassDeleteLimit::default())
            == MassDeleteVerdict::Hold
        {
            s.stage = RepairStage::Failed;
            return true;
        }
        s.stage = RepairStage::Listed {
            deletes,
            watch: None,
        };
        true
    }

    fn deliver(s: &mut RepairOrderState) -> bool {
        let next = match s.stage {
            RepairStage::Watching { next }
            | RepairStage::Listed {
                watch: Some(next), ..
            } => next,
            _ => return false,
        };
        let Some((seq, msg)) = s.bucket.next_retained(next) else {
            return false;
        };
        s.fold[msg.key as usize] = msg.op.is_put().then_some(seq);
        s.cursor = next_high_water(Some(s.cursor), Some(seq)).unwrap_or(seq);
        match &mut s.stage {
            RepairStage::Watching { next } => *next = seq + 1,
            RepairStage::Listed { watch, .. } => *watch = Some(seq + 1),
            _ => {}
        }
        true
    }

    fn finish_deletes(s: &mut RepairOrderState) {
        if let RepairStage::Listed {
            deletes,
            watch: Some(next),
        } = s.stage
            && deletes.iter().all(|d| !d)
        {
            s.stage = RepairStage::Watching { next };
        }
    }

    fn quiescent(s: &RepairOrderState) -> bool {
        matches!(s.stage, RepairStage::Watching { next } if s.bucket.next_retained(next).is_none())
    }
}

impl Model for RepairOrderModel {
    type State = RepairOrderState;
    type Action = RepairOrderAction;

    /// The consumer applied `put a` (1) and `put b` (2); then `delete a` (3)
    /// and `put b` (4) superseded them and the operator compacted the delete
    /// marker, so the stream retains only 4 and the cursor at 2 has expired.
    fn init_states(&self) -> Vec<RepairOrderState> {
        let mut bucket = Bucket::new(RETAINING);
        bucket.write(0, WriteOp::Put);
        bucket.write(1, WriteOp::Put);
        bucket.write(0, WriteOp::Delete);
        bucket.write(1, WriteOp::Put);
        bucket.compact_markers();
        vec![RepairOrderState {
            bucket,
            writes: 0,
            fold: [Some(1), Some(2)],
            cursor: 2,
            stage: RepairStage::Resuming,
            raced: false,
        }]
    }

    fn actions(&self, s: &RepairOrderState, actions: &mut Vec<RepairOrderAction>) {
        if s.writes < self.config.writes {
            for key in 0..KEYS as u8 {
                actions.push(RepairOrderAction::Write(key, WriteOp::Put));
                actions.push(RepairOrderAction::Write(key, WriteOp::Delete));
            }
        }
        actions.push(RepairOrderAction::Resume);
        for key in 0..KEYS as u8 {
            actions.push(RepairOrderAction::SyntheticDelete(key));
        }
        actions.extend([RepairOrderAction::OpenWatch, RepairOrderAction::Deliver]);
    }

    fn next_state(
        &self,
        s: &RepairOrderState,
        action: RepairOrderAction,
    ) -> Option<RepairOrderState> {
        let mut n = s.clone();
        let changed = match action {
            RepairOrderAction::Write(key, op) => {
                n.bucket.write(key, op);
                n.writes += 1;
                if matches!(n.stage, RepairStage::Listed { .. }) {
                    n.raced = true;
                }
                true
            }
            RepairOrderAction::Resume => Self::resume(&mut n),
            RepairOrderAction::SyntheticDelete(key) => match &mut n.stage {
                RepairStage::Listed { deletes, .. } if deletes[key as usize] => {
                    deletes[key as usize] = false;
                    // A synthetic delete has no version: the cursor stays.
                    n.fold[key as usize] = None;
                    Self::finish_deletes(&mut n);
                    true
                }
                _ => false,
            },
            RepairOrderAction::OpenWatch => match &mut n.stage {
                RepairStage::Listed { deletes, watch } if watch.is_none() => {
                    let ordered = self.mutation != Some(RepairOrderMutation::PutsBeforeDeletes);
                    if ordered && deletes.iter().any(|d| *d) {
                        false
                    } else {
                        *watch = Some(n.bucket.first());
                        Self::finish_deletes(&mut n);
                        true
                    }
                }
                _ => false,
            },
            RepairOrderAction::Deliver => Self::deliver(&mut n),
        };
        changed.then_some(n)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "caught-up fold equals writes minus real deletes",
                |_, s: &RepairOrderState| {
                    !Self::quiescent(s)
                        || (0..KEYS).all(|k| s.fold[k] == s.bucket.truth(k as u8).map(|v| v.0))
                },
            ),
            Property::sometimes(
                "relist converges with writes racing the repair",
                |_, s: &RepairOrderState| s.raced && Self::quiescent(s),
            ),
        ]
    }
}
