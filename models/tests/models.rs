//! Every model at tiny bounds: the unmutated protocol holds its properties
//! and reaches every repair path; each mutation is caught by the property
//! that names its damage.

use slipstream_models::{
    AppliedModel, AppliedMutation, Depth, FloorGuardModel, FloorMutation, Outcome, PointerModel,
    PointerMutation, PropertyKind, RepairOrderModel, RepairOrderMutation, ResumeMutation,
    ResumeRepairConfig, ResumeRepairModel, RunKind, RunReport, WatchMutation, WatchRepairConfig,
    WatchRepairModel, applied_config, check, floor_guard_config, pointer_config,
    repair_order_config, resume_repair_configs, resume_repair_known_gap, run_all,
    watch_repair_configs, watch_repair_known_gap,
};

const TINY: Depth = Depth::Tiny;

fn resume_config(name: &str) -> ResumeRepairConfig {
    resume_repair_configs(TINY)
        .into_iter()
        .map(|(config, _)| config)
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no configuration {name}"))
}

fn assert_baseline(outcome: &Outcome) {
    for p in &outcome.properties {
        match p.kind {
            PropertyKind::Always => assert!(
                !p.discovered,
                "{} violated:\n{}",
                p.name,
                p.trace.as_deref().unwrap_or_default()
            ),
            PropertyKind::Sometimes => assert!(p.discovered, "{} never reached", p.name),
        }
    }
}

fn assert_caught_by(outcome: &Outcome, property: &str) {
    let p = outcome
        .properties
        .iter()
        .find(|p| p.name == property)
        .unwrap_or_else(|| panic!("no property {property}"));
    assert_eq!(p.kind, PropertyKind::Always);
    assert!(p.discovered, "{property} was not violated");
}

fn resume(name: &str, mutation: Option<ResumeMutation>) -> Outcome {
    let kind = mutation.map_or(RunKind::Baseline, |_| RunKind::Mutation("m"));
    check(
        ResumeRepairModel {
            config: resume_config(name),
            mutation,
        },
        kind,
        1,
    )
}

const CONVERGED: &str = "caught-up fold equals writes minus real deletes";
const TAIL: &str = "a repair leaves fold + tail = truth";

#[test]
fn retaining_bucket_repairs_lost_deletes_by_relist() {
    assert_baseline(&resume("retaining", None));
}

#[test]
fn prefix_watch_repairs_at_resume_without_a_live_guard() {
    assert_baseline(&resume("retaining-prefix", None));
}

#[test]
fn prefix_watch_trusting_the_silent_clamp_keeps_a_lost_delete() {
    let outcome = resume("retaining-prefix", Some(ResumeMutation::TrustSilentClamp));
    assert_caught_by(&outcome, CONVERGED);
}

#[test]
fn evicting_bucket_repairs_by_restoring_an_artifact() {
    assert_baseline(&resume("evicting", None));
}

#[test]
fn restore_outside_the_log_window_leaves_a_gap() {
    let outcome = resume("evicting", Some(ResumeMutation::RestoreOutsideWindow));
    assert_caught_by(&outcome, TAIL);
}

#[test]
fn restore_ignoring_the_listing_deletes_a_live_key() {
    let outcome = resume("evicting", Some(ResumeMutation::PhantomDelete));
    assert_caught_by(
        &outcome,
        "restore never moves a key backward or deletes a live key",
    );
}

#[test]
fn eviction_memo_forces_restore_after_eviction_is_switched_off() {
    assert_baseline(&resume("eviction-switched-off", None));
}

#[test]
fn forgotten_eviction_memo_relists_away_aged_out_values() {
    let outcome = resume(
        "eviction-switched-off",
        Some(ResumeMutation::ForgetEvictionMemo),
    );
    assert_caught_by(&outcome, TAIL);
}

#[test]
fn a_bucket_that_only_allows_ttl_relists_through_expiries() {
    assert_baseline(&resume("per-message-ttl", None));
}

#[test]
fn ttl_counted_as_eviction_refuses_repairs_the_listing_could_do() {
    let outcome = resume("per-message-ttl", Some(ResumeMutation::TtlCountsAsEviction));
    assert_caught_by(
        &outcome,
        "a bucket that only allows TTL never refuses a repair",
    );
}

#[test]
fn recreated_bucket_behind_the_cursor_is_repaired() {
    assert_baseline(&resume("recreated", None));
}

#[test]
fn trusting_a_cursor_beyond_the_log_waits_on_a_recreated_bucket() {
    let outcome = resume("recreated", Some(ResumeMutation::IgnoreCursorBeyondLog));
    assert_caught_by(&outcome, CONVERGED);
}

#[test]
fn markers_purged_behind_an_older_value_hide_a_delete_from_k1() {
    let outcome = check(
        ResumeRepairModel {
            config: resume_repair_known_gap(TINY),
            mutation: None,
        },
        RunKind::KnownGap("purge_deletes"),
        1,
    );
    assert_caught_by(&outcome, CONVERGED);
}

fn watch_config(name: &str) -> WatchRepairConfig {
    watch_repair_configs(TINY)
        .into_iter()
        .map(|(config, _)| config)
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no configuration {name}"))
}

fn watch(name: &str, mutation: Option<WatchMutation>) -> Outcome {
    let kind = mutation.map_or(RunKind::Baseline, |_| RunKind::Mutation("m"));
    check(
        WatchRepairModel {
            config: watch_config(name),
            mutation,
        },
        kind,
        1,
    )
}

const O1: &str = "caught-up fold equals the bucket (O1)";
const NO_REPEAT: &str = "a relist is never followed by a repair of an unchanged bucket";
const REGRESS: &str = "committed cursor never regresses";

#[test]
fn an_expired_cursors_relist_confirms_its_floor_and_holds_a_mass_delete() {
    assert_baseline(&watch("relist-expired", None));
}

#[test]
fn a_floor_taken_as_held_keeps_a_value_purged_after_the_listing() {
    let outcome = watch(
        "relist-expired",
        Some(WatchMutation::ConfirmFloorAlwaysHeld),
    );
    assert_caught_by(&outcome, O1);
}

#[test]
fn a_listing_whose_puts_are_all_trusted_floors_above_the_purged_one() {
    let outcome = watch("relist-expired", Some(WatchMutation::ListedPutsTrusted));
    assert_caught_by(&outcome, O1);
}

#[test]
fn a_delta_after_a_relist_takes_a_superseded_gap_for_a_new_repair() {
    let outcome = watch(
        "relist-expired",
        Some(WatchMutation::NextStartIgnoresRelistMarker),
    );
    assert_caught_by(&outcome, NO_REPEAT);
}

#[test]
fn a_caught_up_verdict_that_always_watches_never_runs_the_due_repair() {
    let outcome = watch("relist-expired", Some(WatchMutation::CaughtUpAlwaysWatch));
    assert_caught_by(&outcome, O1);
}

#[test]
fn a_guard_that_never_holds_lets_a_relist_empty_the_fold() {
    let outcome = watch("relist-expired", Some(WatchMutation::MassDeleteNeverHolds));
    assert_caught_by(&outcome, "a repair empties the fold only after an override");
}

#[test]
fn a_gap_on_a_running_watch_is_repaired_once_the_bucket_is_quiet() {
    assert_baseline(&watch("relist-gap", None));
}

#[test]
fn a_floor_without_the_listings_end_misses_a_delete_written_after_it() {
    let outcome = watch("relist-gap", Some(WatchMutation::FloorOmitsListingEnd));
    assert_caught_by(&outcome, O1);
}

#[test]
fn a_watch_that_never_checks_gaps_skips_a_purged_value() {
    let outcome = watch("relist-gap", Some(WatchMutation::NeverCheckGaps));
    assert_caught_by(&outcome, O1);
}

#[test]
fn a_delete_purged_while_the_node_was_down_is_found_at_catch_up() {
    assert_baseline(&watch("purged-while-down", None));
}

#[test]
fn ignoring_a_short_catch_up_keeps_a_delete_purged_while_down() {
    let outcome = watch(
        "purged-while-down",
        Some(WatchMutation::CaughtUpShortIgnored),
    );
    assert_caught_by(&outcome, O1);
}

#[test]
fn a_restore_for_a_gap_is_refused_an_artifact_behind_the_cursor() {
    assert_baseline(&watch("restore-behind", None));
}

#[test]
fn restoring_an_artifact_behind_the_cursor_moves_the_cursor_back() {
    let outcome = watch("restore-behind", Some(WatchMutation::RestoreWhenBehind));
    assert_caught_by(&outcome, REGRESS);
}

#[test]
fn a_live_state_sync_on_an_evicting_bucket_checks_the_floor_on_a_gap() {
    assert_baseline(&watch("evicting-state-sync", None));
}

#[test]
fn a_live_state_sync_that_never_checks_gaps_skips_aged_out_values() {
    let outcome = watch("evicting-state-sync", Some(WatchMutation::NeverCheckGaps));
    assert_caught_by(&outcome, O1);
}

#[test]
fn a_recreated_bucket_is_relisted_then_restored_past_its_floor() {
    assert_baseline(&watch("recreated-evicting", None));
}

#[test]
fn trusting_the_cursor_above_a_relists_floor_keeps_an_old_incarnations_value() {
    let outcome = watch("recreated-evicting", Some(WatchMutation::TrustAboveFloor));
    assert_caught_by(&outcome, O1);
}

#[test]
fn a_fresh_state_sync_that_crashes_leaves_no_floor_to_find_an_aged_out_value() {
    let outcome = check(
        WatchRepairModel {
            config: watch_repair_known_gap(TINY),
            mutation: None,
        },
        RunKind::KnownGap("fresh state-sync"),
        1,
    );
    assert_caught_by(&outcome, O1);
}

#[test]
fn in_band_floor_check_never_skips_evicted_history() {
    let model = FloorGuardModel {
        config: floor_guard_config(TINY),
        mutation: None,
    };
    assert_baseline(&check(model, RunKind::Baseline, 1));
}

#[test]
fn periodic_only_probe_lets_deliveries_erase_the_evidence() {
    let model = FloorGuardModel {
        config: floor_guard_config(TINY),
        mutation: Some(FloorMutation::PeriodicProbeOnly),
    };
    let outcome = check(model, RunKind::Mutation("m"), 1);
    assert_caught_by(
        &outcome,
        "a live watch never silently skips evicted history",
    );
}

#[test]
fn requeued_failed_batch_keeps_store_and_cursor_together() {
    let model = AppliedModel {
        config: applied_config(TINY),
        mutation: None,
    };
    assert_baseline(&check(model, RunKind::Baseline, 1));
}

#[test]
fn dropping_a_failed_batch_loses_its_updates() {
    let model = AppliedModel {
        config: applied_config(TINY),
        mutation: Some(AppliedMutation::DropFailedBatch),
    };
    let outcome = check(model, RunKind::Mutation("m"), 1);
    assert_caught_by(&outcome, "caught-up store and application equal the bucket");
}

#[test]
fn replays_reaching_apply_move_a_key_backward() {
    let model = AppliedModel {
        config: applied_config(TINY),
        mutation: Some(AppliedMutation::NoReplayFilter),
    };
    let outcome = check(model, RunKind::Mutation("m"), 1);
    assert_caught_by(&outcome, "apply never sees a key move backward");
}

#[test]
fn synthetic_deletes_before_relist_puts_survive_racing_writes() {
    let model = RepairOrderModel {
        config: repair_order_config(TINY),
        mutation: None,
    };
    assert_baseline(&check(model, RunKind::Baseline, 1));
}

#[test]
fn relist_puts_before_synthetic_deletes_erase_a_recreated_key() {
    let model = RepairOrderModel {
        config: repair_order_config(TINY),
        mutation: Some(RepairOrderMutation::PutsBeforeDeletes),
    };
    let outcome = check(model, RunKind::Mutation("m"), 1);
    assert_caught_by(&outcome, CONVERGED);
}

#[test]
fn guarded_pointer_never_regresses_and_its_target_stays_fetchable() {
    let model = PointerModel {
        config: pointer_config(TINY),
        mutation: None,
    };
    assert_baseline(&check(model, RunKind::Baseline, 1));
}

#[test]
fn age_only_prune_deletes_the_pointer_target() {
    let model = PointerModel {
        config: pointer_config(TINY),
        mutation: Some(PointerMutation::AgeOnlyPrune),
    };
    let outcome = check(model, RunKind::Mutation("m"), 1);
    assert_caught_by(&outcome, "pointer target is always fetchable");
}

#[test]
fn unchecked_publish_regresses_the_pointer() {
    let model = PointerModel {
        config: pointer_config(TINY),
        mutation: Some(PointerMutation::PublishWithoutCheck),
    };
    let outcome = check(model, RunKind::Mutation("m"), 1);
    assert_caught_by(&outcome, "published cursor never regresses");
}

#[test]
fn every_tiny_row_passes_and_every_mutation_is_listed() {
    let mut rows: Vec<RunReport> = Vec::new();
    run_all(TINY, 1, |row| rows.push(row));
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.passed())
        .map(ToString::to_string)
        .collect();
    assert!(failed.is_empty(), "failing rows:\n{}", failed.join("\n"));
    let mutations = rows
        .iter()
        .filter(|r| matches!(r.kind, RunKind::Mutation(_)))
        .count();
    assert_eq!(mutations, 23, "every mutation runs once");
}
