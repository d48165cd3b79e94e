//! Prefix scopes over the simulator: a relist and a restore after an expiry, the
//! relist's unchecked floor (K15), and the mass-delete guard (K14) counting
//! only the fold in scope. A repair of a scope never touches a key outside
//! it, even one the bucket no longer lists (the store here also holds keys
//! an earlier All-scope node folded).

// Helpers outside #[test] fns panic on failure too: that is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::node::{
    Fold, bucket, bucket_with, export_from, in_scope, out_of_scope, plain, put, run_to,
    run_to_error, start_scoped, synced_scoped, truth,
};
use common::watchers::{Hook, Hooked};
use common::{App, fold_of};
use slipstream_applied::{AppliedError, LocalArtifacts, OnExpiry, RepairMode};
use slipstream_kv::{ExpiryReason, KvStore, KvWatcher, KvWriter, StoreConfig, WatchScope};
use slipstream_memory::{ManualClock, MemoryServer, MemoryStore};

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

fn prefix(p: &str) -> WatchScope {
    WatchScope::Prefix(p.into())
}

fn relisting() -> common::node::Tune {
    Box::new(|c| c.on_expiry(OnExpiry::Repair(RepairMode::Relist)))
}

/// How many synthetic deletes (no revision) the application was given.
fn synthetic_deletes(app: &App) -> usize {
    app.seen().parsed.iter().filter(|r| r.is_none()).count()
}

/// A node folded the whole bucket at 4 (`a.1`, `a.2`, `c.1`, `c.2`) and
/// restarts watching `a.` only. While it was down `a.1` and `c.1` were
/// deleted and their markers purged, everything else rewritten, and the
/// head purged past the cursor: K1 refuses the resume. Returns the store,
/// the bucket's last revision and the fold before the restart.
async fn offline_purge_under_a_prefix(
    server: &MemoryServer,
    kv: &MemoryStore,
    dir: &std::path::Path,
) -> (common::FaultStore, u64, Fold) {
    put(kv, "a.1", "v1").await; // 1
    put(kv, "a.2", "v1").await; // 2
    put(kv, "c.1", "v1").await; // 3
    put(kv, "c.2", "v1").await; // 4
    let store = synced_scoped(kv, dir, &App::new(), WatchScope::All, 4).await;
    let before = fold_of(&store);

    kv.writer().delete("a.1").await.unwrap(); // 5
    server.bucket("cfg").purge_subject("a.1").unwrap();
    kv.writer().delete("c.1").await.unwrap(); // 6
    server.bucket("cfg").purge_subject("c.1").unwrap();
    put(kv, "a.2", "v2").await; // 7
    put(kv, "c.2", "v2").await; // 8
    put(kv, "a.3", "v1").await; // 9
    let last = put(kv, "c.3", "v1").await; // 10
    // Only superseded messages go; the head passes the resume point.
    server.bucket("cfg").purge_below(7).unwrap();
    (store, last, before)
}

#[tokio::test(start_paused = true)]
async fn a_relist_of_a_prefix_deletes_only_in_scope_and_leaves_other_keys_alone() {
    let (server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let (store, _, before) = offline_purge_under_a_prefix(&server, &kv, dir.path()).await;
    let scope = prefix("a.");

    let app = App::new();
    let run = start_scoped(kv.watcher(), store, &app, scope.clone(), relisting());
    // The state-sync after the relist delivers `a.2` (7) and `a.3` (9).
    let store = run_to(run, 9).await;
    let fold = fold_of(&store);
    assert!(!fold.contains_key("a.1"), "the vanished key in scope left");
    assert_eq!(in_scope(&fold, &scope), in_scope(&truth(&kv).await, &scope));
    assert_eq!(
        out_of_scope(&fold, &scope),
        out_of_scope(&before, &scope),
        "keys outside the scope are untouched, `c.1` included, though the bucket deleted it"
    );
    assert_eq!(synthetic_deletes(&app), 1, "{:?}", app.seen().parsed);
}

#[tokio::test(start_paused = true)]
async fn the_mass_delete_guard_counts_only_the_fold_in_scope() {
    let (server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    put(&kv, "a.1", "v1").await; // 1
    for i in 1..=5 {
        put(&kv, &format!("c.{i}"), "v1").await; // 2..=6
    }
    let store = synced_scoped(&kv, dir.path(), &App::new(), WatchScope::All, 6).await;
    let before = fold_of(&store);
    kv.writer().delete("a.1").await.unwrap(); // 7
    server.bucket("cfg").purge_subject("a.1").unwrap();
    let mut first = 0;
    for i in 1..=5 {
        let revision = put(&kv, &format!("c.{i}"), "v2").await; // 8..=12
        if first == 0 {
            first = revision;
        }
    }
    server.bucket("cfg").purge_below(first).unwrap();

    // In scope the relist would delete `a.1`, every key the fold holds
    // there, though only one of six in the whole fold.
    let run = start_scoped(kv.watcher(), store, &App::new(), prefix("a."), relisting());
    let (error, store) = run_to_error(run).await;
    match error {
        AppliedError::MassDeleteHeld {
            deletions,
            fold_len,
            ..
        } => assert_eq!((deletions, fold_len), (1, 1)),
        other => panic!("expected the mass-delete guard, got {other:?}"),
    }
    assert_eq!(fold_of(&store), before, "nothing changed");
}

#[tokio::test(start_paused = true)]
async fn a_restore_of_a_prefix_takes_only_the_artifacts_keys_in_scope() {
    let work = tempfile::tempdir().unwrap();
    let artifacts = work.path().join("artifacts");
    let server = MemoryServer::with_clock(ManualClock::new());
    let kv = bucket_with(&server, StoreConfig::new("cfg").max_age(HOUR)).await;
    put(&kv, "a.a", "v1").await; // 1
    put(&kv, "a.b", "v1").await; // 2
    put(&kv, "c.x", "v1").await; // 3
    put(&kv, "a.d", "v1").await; // 4
    let node = work.path().join("node");
    let store = synced_scoped(&kv, &node, &App::new(), WatchScope::All, 4).await;
    let before = fold_of(&store);
    server.clock().advance(10 * MINUTE);
    put(&kv, "a.g", "v1").await; // 5: the gap write
    kv.writer().delete("a.d").await.unwrap(); // 6: the real delete
    put(&kv, "c.y", "v1").await; // 7: outside the scope
    let exported = export_from(&kv, work.path(), &artifacts, "at-7", 7).await;
    server.clock().advance(HOUR);
    let last = put(&kv, "a.h", "v1").await; // 8
    assert!(
        !truth(&kv).await.contains_key("a.g"),
        "the gap write aged out"
    );

    let scope = prefix("a.");
    let source = LocalArtifacts::new(&artifacts);
    let app = App::new();
    let run = start_scoped(
        kv.watcher(),
        store,
        &app,
        scope.clone(),
        Box::new(move |c| {
            c.on_expiry(OnExpiry::Repair(RepairMode::Auto))
                .restore_from(source)
        }),
    );
    let store = run_to(run, last).await;
    let fold = fold_of(&store);
    let mut expected = in_scope(&exported, &scope);
    expected.extend(in_scope(&truth(&kv).await, &scope));
    assert_eq!(
        in_scope(&fold, &scope),
        expected,
        "the artifact's keys in scope, then the delta"
    );
    assert!(fold.contains_key("a.g") && !fold.contains_key("a.d"));
    assert_eq!(
        out_of_scope(&fold, &scope),
        out_of_scope(&before, &scope),
        "`c.y` of the artifact is outside the scope and is not taken"
    );
}

#[tokio::test(start_paused = true)]
async fn a_prefix_whose_relist_floor_the_head_passed_is_repaired_again() {
    let (server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let (store, _, before) = offline_purge_under_a_prefix(&server, &kv, dir.path()).await;
    let scope = prefix("a.");
    // Between the listing and its state-sync: `a.2`, which the listing saw
    // live and the fold holds, is deleted (11), `a.3` rewritten (12), `c.9`
    // written (13), and the stream purged below 12.
    let hook = Hook::PurgeBeforeRelist {
        n: 2,
        server: server.clone(),
        delete: "a.2",
        rewrite: &["a.3", "c.9"],
    };
    let watcher = Hooked::new(&kv, hook);
    let app = App::new();
    let run = start_scoped(watcher, store, &app, scope.clone(), relisting());
    // The second relist's state-sync delivers `a.3` (12).
    let store = run_to(run, 12).await;
    let fold = fold_of(&store);
    assert!(
        !fold.contains_key("a.2"),
        "a prefix cannot wait for quiet: the floor overrun repairs at once: {fold:?}"
    );
    assert_eq!(in_scope(&fold, &scope), in_scope(&truth(&kv).await, &scope));
    assert_eq!(out_of_scope(&fold, &scope), out_of_scope(&before, &scope));
    assert_eq!(
        synthetic_deletes(&app),
        2,
        "`a.1`, then `a.2`: {:?}",
        app.seen().parsed
    );
}

#[tokio::test(start_paused = true)]
async fn a_prefix_node_that_stops_on_expiry_reports_the_floor_it_lost() {
    let (server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let (store, _, before) = offline_purge_under_a_prefix(&server, &kv, dir.path()).await;
    let run = start_scoped(
        kv.watcher(),
        store,
        &App::new(),
        prefix("a."),
        Box::new(|c| c.on_expiry(OnExpiry::Stop)),
    );
    let (error, store) = run_to_error(run).await;
    match error {
        AppliedError::CursorExpired {
            reason:
                ExpiryReason::BelowFirstSequence {
                    revision,
                    first_sequence,
                },
            ..
        } => assert_eq!((revision, first_sequence), (4, 7)),
        other => panic!("expected an expired cursor, got {other:?}"),
    }
    assert_eq!(fold_of(&store), before);
}

/// A node watching `a.` and `b.` folds the bucket at 2 (`a.1`, `b.1`; `c.1`
/// at 3 is outside its scope) and goes down. `offline` writes while it is
/// down; the last is the delete of `b.1`. Returns the store, the fold
/// before and the bucket's last revision.
async fn offline_under_two_prefixes(
    kv: &MemoryStore,
    dir: &std::path::Path,
    scope: &WatchScope,
    offline: &[&str],
) -> (common::FaultStore, Fold, u64) {
    put(kv, "a.1", "v1").await; // 1
    put(kv, "b.1", "v1").await; // 2
    put(kv, "c.1", "v1").await; // 3
    let store = synced_scoped(kv, dir, &App::new(), scope.clone(), 2).await;
    let before = fold_of(&store);
    for key in offline {
        put(kv, key, "v2").await;
    }
    kv.writer().delete("b.1").await.unwrap();
    let last = kv.retention().await.unwrap().last_revision;
    (store, before, last)
}

fn a_and_b() -> WatchScope {
    WatchScope::Prefixes(vec!["a.".into(), "b.".into()])
}

#[tokio::test(start_paused = true)]
async fn a_multi_prefix_node_resumes_from_its_cursor_with_only_its_delta() {
    let (_server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let scope = a_and_b();
    // 4..=7; nothing is superseded below the resume point (3).
    let offline = ["c.2", "a.1", "b.2", "c.3"];
    let (store, before, last) = offline_under_two_prefixes(&kv, dir.path(), &scope, &offline).await;
    assert_eq!(last, 8);

    let app = App::new();
    let run = start_scoped(kv.watcher(), store, &app, scope.clone(), plain());
    let store = run_to(run, last).await;
    assert_eq!(
        app.seen().parsed,
        [Some(5), Some(6), Some(8)],
        "the delta in scope after the cursor, nothing else"
    );
    let fold = fold_of(&store);
    assert_eq!(in_scope(&fold, &scope), in_scope(&truth(&kv).await, &scope));
    assert!(!fold.contains_key("b.1"));
    assert_eq!(out_of_scope(&fold, &scope), out_of_scope(&before, &scope));
}

/// K1 cannot tell which scope a removed message was in: a rewrite of `c.1`
/// (history 1) outside the scope removes the message right after the
/// cursor, and the resume is refused. The repair lists the scope only.
#[tokio::test(start_paused = true)]
async fn a_multi_prefix_node_passed_by_a_rewrite_outside_its_scope_repairs_only_in_scope() {
    let (_server, kv) = bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let scope = a_and_b();
    let offline = ["c.1", "a.1", "b.2", "c.2"];
    let (store, before, last) = offline_under_two_prefixes(&kv, dir.path(), &scope, &offline).await;

    let app = App::new();
    let run = start_scoped(kv.watcher(), store, &app, scope.clone(), plain());
    let store = run_to(run, last).await;
    assert_eq!(
        app.seen().parsed,
        [None, Some(5), Some(6), Some(8)],
        "the relist's delete of `b.1`, then the state-sync of the scope"
    );
    let fold = fold_of(&store);
    assert_eq!(in_scope(&fold, &scope), in_scope(&truth(&kv).await, &scope));
    assert_eq!(out_of_scope(&fold, &scope), out_of_scope(&before, &scope));
}
