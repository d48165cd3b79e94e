//! Every model configuration the binary and `cargo xtask model` run, at the
//! default or the deep bounds.

mod watch;

use slipstream_protocol::RepairMode;

use crate::applied::{AppliedConfig, AppliedModel, AppliedMutation};
use crate::floor_guard::{FloorGuardConfig, FloorGuardModel, FloorMutation};
use crate::pointer::{PointerConfig, PointerModel, PointerMutation};
use crate::repair_order::{RepairOrderConfig, RepairOrderModel, RepairOrderMutation};
use crate::resume_repair::{
    EvictionSwitch, MarkerPurge, Recreation, ResumeMutation, ResumeRepairConfig, ResumeRepairModel,
    Retention, Scope, WriteOps,
};
use crate::run::{RunKind, RunReport, check};
use crate::watch_repair::WatchRepairModel;

pub use watch::{watch_repair_configs, watch_repair_known_gap};

/// How far the models explore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Depth {
    /// Bounds small enough for every CI run (all models in well under three
    /// minutes on two cores, release build).
    #[default]
    Default,
    /// Larger bounds: more writes, crashes and artifacts.
    Deep,
    /// The smallest bounds that still reach every repair path and catch
    /// every mutation; for unit tests in debug builds.
    Tiny,
}

/// The resume-and-repair configuration that lies outside the protocol's
/// guarantees: markers purged anywhere (NATS `purge_deletes`) remove a
/// delete behind an older live value without moving the first sequence, so
/// K1 cannot see the lost delete. Its row must show a counterexample.
#[must_use]
pub fn resume_repair_known_gap(depth: Depth) -> ResumeRepairConfig {
    ResumeRepairConfig {
        name: "markers-purged-anywhere",
        marker_purge: MarkerPurge::Anywhere,
        ..resume_repair_configs(depth)[0].0
    }
}

/// The resume-and-repair configurations and the mutations each must catch.
#[must_use]
pub fn resume_repair_configs(depth: Depth) -> Vec<(ResumeRepairConfig, Vec<ResumeMutation>)> {
    let (writes, crashes, exports) = match depth {
        Depth::Tiny => (3, 1, 1),
        Depth::Default => (4, 2, 2),
        Depth::Deep => (5, 2, 2),
    };
    let base = ResumeRepairConfig {
        name: "",
        retention: Retention::Retaining,
        scope: Scope::All,
        ops: WriteOps::PutDelete,
        writes,
        compactions: 1,
        marker_purge: MarkerPurge::AtHead,
        switch: EvictionSwitch::Fixed,
        recreation: Recreation::Never,
        exports: 0,
        crashes,
        mode: RepairMode::Auto,
    };
    // Evicting buckets branch the most (every message can age out at any
    // time): their deep bound spends the extra write, not crashes/exports.
    let evicting_base = match depth {
        Depth::Deep => ResumeRepairConfig {
            crashes: 1,
            exports: 1,
            ..base
        },
        _ => ResumeRepairConfig { exports, ..base },
    };
    vec![
        (
            ResumeRepairConfig {
                name: "retaining",
                ops: if depth == Depth::Tiny {
                    WriteOps::PutDelete
                } else {
                    WriteOps::PutDeletePurge
                },
                ..base
            },
            vec![],
        ),
        (
            ResumeRepairConfig {
                name: "retaining-prefix",
                scope: Scope::Prefix,
                ..base
            },
            vec![ResumeMutation::TrustSilentClamp],
        ),
        (
            ResumeRepairConfig {
                name: "evicting",
                retention: Retention::Evicting,
                compactions: 0,
                ..evicting_base
            },
            vec![
                ResumeMutation::RestoreOutsideWindow,
                ResumeMutation::PhantomDelete,
            ],
        ),
        (
            ResumeRepairConfig {
                name: "eviction-switched-off",
                retention: Retention::Evicting,
                compactions: 0,
                switch: EvictionSwitch::MaySwitchOff,
                crashes: evicting_base.crashes - 1,
                ..evicting_base
            },
            vec![ResumeMutation::ForgetEvictionMemo],
        ),
        (
            ResumeRepairConfig {
                name: "per-message-ttl",
                retention: Retention::MessageTtl,
                ..base
            },
            vec![ResumeMutation::TtlCountsAsEviction],
        ),
        (
            ResumeRepairConfig {
                name: "recreated",
                compactions: 0,
                recreation: Recreation::Once,
                ..base
            },
            vec![ResumeMutation::IgnoreCursorBeyondLog],
        ),
    ]
}

/// The floor-guard bounds.
#[must_use]
pub fn floor_guard_config(depth: Depth) -> FloorGuardConfig {
    FloorGuardConfig {
        name: "all-scope evicting",
        writes: match depth {
            Depth::Tiny => 3,
            Depth::Default => 6,
            Depth::Deep => 7,
        },
    }
}

/// The applied-engine bounds.
#[must_use]
pub fn applied_config(depth: Depth) -> AppliedConfig {
    let (writes, failures, crashes) = match depth {
        Depth::Tiny => (3, 1, 1),
        Depth::Default => (4, 2, 1),
        Depth::Deep => (5, 2, 2),
    };
    AppliedConfig {
        name: "batch-of-2",
        writes,
        batch_max: 2,
        failures,
        crashes,
        reconnects: 1,
    }
}

/// The repair-order bounds.
#[must_use]
pub fn repair_order_config(depth: Depth) -> RepairOrderConfig {
    RepairOrderConfig {
        name: "relist-with-writes",
        writes: match depth {
            Depth::Tiny => 1,
            Depth::Default => 4,
            Depth::Deep => 6,
        },
    }
}

/// The pointer bounds.
#[must_use]
pub fn pointer_config(depth: Depth) -> PointerConfig {
    PointerConfig {
        name: "2-publishers",
        ranks: match depth {
            Depth::Tiny => 3,
            Depth::Default => 4,
            Depth::Deep => 5,
        },
    }
}

/// Runs every configuration (baseline and mutations) at `depth` with
/// `threads` checker threads, handing each row to `report` as it finishes.
pub fn run_all(depth: Depth, threads: usize, mut report: impl FnMut(RunReport)) {
    for (config, mutations) in resume_repair_configs(depth) {
        for mutation in std::iter::once(None).chain(mutations.into_iter().map(Some)) {
            let kind = mutation.map_or(RunKind::Baseline, |m| RunKind::Mutation(resume_name(m)));
            let outcome = check(ResumeRepairModel { config, mutation }, kind, threads);
            report(RunReport {
                model: "resume-repair",
                config: config.name,
                kind,
                outcome,
            });
        }
    }
    let config = resume_repair_known_gap(depth);
    let kind = RunKind::KnownGap("purge_deletes hides a delete from K1");
    let outcome = check(
        ResumeRepairModel {
            config,
            mutation: None,
        },
        kind,
        threads,
    );
    report(RunReport {
        model: "resume-repair",
        config: config.name,
        kind,
        outcome,
    });
    for (config, mutations) in watch_repair_configs(depth) {
        for mutation in std::iter::once(None).chain(mutations.into_iter().map(Some)) {
            let kind = mutation.map_or(RunKind::Baseline, |m| RunKind::Mutation(m.name()));
            let outcome = check(WatchRepairModel { config, mutation }, kind, threads);
            report(RunReport {
                model: "watch-repair",
                config: config.name,
                kind,
                outcome,
            });
        }
    }
    let config = watch_repair_known_gap(depth);
    let kind = RunKind::KnownGap("a fresh node's state-sync leaves no floor");
    let outcome = check(
        WatchRepairModel {
            config,
            mutation: None,
        },
        kind,
        threads,
    );
    report(RunReport {
        model: "watch-repair",
        config: config.name,
        kind,
        outcome,
    });
    let config = floor_guard_config(depth);
    for mutation in [None, Some(FloorMutation::PeriodicProbeOnly)] {
        let kind = mutation.map_or(RunKind::Baseline, |_| {
            RunKind::Mutation("PeriodicProbeOnly")
        });
        let outcome = check(FloorGuardModel { config, mutation }, kind, threads);
        report(RunReport {
            model: "floor-guard",
            config: config.name,
            kind,
            outcome,
        });
    }
    let config = applied_config(depth);
    for mutation in [
        None,
        Some(AppliedMutation::DropFailedBatch),
        Some(AppliedMutation::NoReplayFilter),
    ] {
        let kind = mutation.map_or(RunKind::Baseline, |m| {
            RunKind::Mutation(match m {
                AppliedMutation::DropFailedBatch => "DropFailedBatch",
                AppliedMutation::NoReplayFilter => "NoReplayFilter",
            })
        });
        let outcome = check(AppliedModel { config, mutation }, kind, threads);
        report(RunReport {
            model: "applied-engine",
            config: config.name,
            kind,
            outcome,
        });
    }
    let config = repair_order_config(depth);
    for mutation in [None, Some(RepairOrderMutation::PutsBeforeDeletes)] {
        let kind = mutation.map_or(RunKind::Baseline, |_| {
            RunKind::Mutation("PutsBeforeDeletes")
        });
        let outcome = check(RepairOrderModel { config, mutation }, kind, threads);
        report(RunReport {
            model: "repair-order",
            config: config.name,
            kind,
            outcome,
        });
    }
    let config = pointer_config(depth);
    for mutation in [
        None,
        Some(PointerMutation::AgeOnlyPrune),
        Some(PointerMutation::PublishWithoutCheck),
    ] {
        let kind = mutation.map_or(RunKind::Baseline, |m| {
            RunKind::Mutation(match m {
                PointerMutation::AgeOnlyPrune => "AgeOnlyPrune",
                PointerMutation::PublishWithoutCheck => "PublishWithoutCheck",
            })
        });
        let outcome = check(PointerModel { config, mutation }, kind, threads);
        report(RunReport {
            model: "artifact-pointer",
            config: config.name,
            kind,
            outcome,
        });
    }
}

const fn resume_name(m: ResumeMutation) -> &'static str {
    match m {
        ResumeMutation::TrustSilentClamp => "TrustSilentClamp",
        ResumeMutation::IgnoreCursorBeyondLog => "IgnoreCursorBeyondLog",
        ResumeMutation::ForgetEvictionMemo => "ForgetEvictionMemo",
        ResumeMutation::RestoreOutsideWindow => "RestoreOutsideWindow",
        ResumeMutation::PhantomDelete => "PhantomDelete",
        ResumeMutation::TtlCountsAsEviction => "TtlCountsAsEviction",
    }
}
