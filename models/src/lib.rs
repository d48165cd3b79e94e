//! Stateright models of slipstream's protocol.
//!
//! Each model's transitions call the kernel in `slipstream_protocol` (the
//! same functions production calls); none re-implements a rule. A mutation
//! expresses a bug by forging a kernel input or removing a step, and the
//! checker must then find a counterexample: a guard no model fails without
//! is not proven. The models:
//!
//! 1. [`ResumeRepairModel`]: writes, deletes, purges, supersession, marker
//!    compaction, ageing out, recreation, crashes, resume (K1–K3), the live
//!    floor guard (K4), relist and restore repair (K6–K8, K10) and the
//!    eviction memo (K7).
//! 2. [`FloorGuardModel`]: the in-band floor check (K4) against a
//!    periodic-only probe.
//! 3. [`AppliedModel`]: batching, flush, transient store failure, crash,
//!    restart and replay after a reconnect (K2, K5).
//! 4. [`RepairOrderModel`]: synthetic deletes strictly before re-list puts
//!    (R2, with K8 and K14).
//! 5. [`PointerModel`]: the artifact pointer's CAS and payload pruning (K12).
//! 6. [`WatchRepairModel`]: the engine's loop around a repair: the next
//!    watch's start (K16), gaps (K17), the caught-up verdict (K18), a
//!    relist's unchecked floor (K15), restore only when ahead (K6) and the
//!    mass-delete guard (K14), with the operator's purges and overrides.
//!
//! [`run_all`] checks every configuration and mutation; the
//! `slipstream-models` binary prints the table (`--deep` for larger bounds).
//!
//! ```
//! use slipstream_models::{
//!     Depth, FloorGuardModel, FloorMutation, PropertyKind, RunKind, check, floor_guard_config,
//! };
//!
//! let config = floor_guard_config(Depth::Tiny);
//! let safety_violated = |model| {
//!     check(model, RunKind::Baseline, 1)
//!         .properties
//!         .iter()
//!         .any(|p| p.kind == PropertyKind::Always && p.discovered)
//! };
//! // K4 on every delivery: no interleaving lets the watch skip evicted history.
//! assert!(!safety_violated(FloorGuardModel { config, mutation: None }));
//! // Probing only periodically: a delivery catches up and erases the evidence.
//! let periodic = Some(FloorMutation::PeriodicProbeOnly);
//! assert!(safety_violated(FloorGuardModel { config, mutation: periodic }));
//! ```

mod applied;
mod bucket;
mod floor_guard;
mod pointer;
mod repair_order;
mod resume_repair;
mod run;
mod suite;
mod watch_repair;

pub use applied::{
    AppliedAction, AppliedConfig, AppliedModel, AppliedMutation, AppliedState, CommitOutcome,
};
pub use bucket::WriteOp;
pub use floor_guard::{
    FloorAction, FloorGuardConfig, FloorGuardModel, FloorMutation, FloorState, WatchStatus,
};
pub use pointer::{
    Payload, PointerAction, PointerConfig, PointerModel, PointerModelState, PointerMutation,
    Publisher,
};
pub use repair_order::{
    RepairOrderAction, RepairOrderConfig, RepairOrderModel, RepairOrderMutation, RepairOrderState,
    RepairStage,
};
pub use resume_repair::{
    Artifact, EvictionSwitch, Ghost, MarkerPurge, Phase, Recreation, ResumeAction, ResumeMutation,
    ResumeRepairConfig, ResumeRepairModel, ResumeState, Retention, Scope, Store, WriteOps,
};
pub use run::{Outcome, PropertyKind, PropertyResult, RunKind, RunReport, check, table_header};
pub use suite::{
    Depth, applied_config, floor_guard_config, pointer_config, repair_order_config,
    resume_repair_configs, resume_repair_known_gap, run_all, watch_repair_configs,
    watch_repair_known_gap,
};
pub use watch_repair::{
    Durable, Goal, Memory, NodePhase, Prelude, Snapshot, Trace, Watch, WatchAction, WatchMutation,
    WatchRepairConfig, WatchRepairModel, WatchState,
};
