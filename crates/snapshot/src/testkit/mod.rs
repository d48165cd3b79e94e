//! The store conformance kit (S7): test cases generic over any
//! [`SnapshotStore`], a kill -9 crash harness, and
//! [`snapshot_store_conformance!`](crate::snapshot_store_conformance) to
//! instantiate all of it for a backend.
//!
//! Every case takes `options: fn(Durability) -> S::Options`, so a backend
//! chooses its tuning (e.g. a small compaction threshold so the crash test
//! also kills compactions).

mod cases;
mod crash;
mod hostile;
mod log;

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use crate::store::{Durability, SnapshotStore, StoredEntry};

pub use cases::{
    apply_commits_data_and_cursor_together, deletes_and_purges_remove_keys,
    empty_and_large_values_round_trip, export_refuses_a_non_empty_destination,
    export_then_import_gives_identical_fold_and_cursor, fold_is_pure_under_any_batching,
    fresh_store_opens_empty_at_no_cursor, range_and_iteration_follow_key_order,
    refused_batch_changes_nothing, reopen_returns_last_committed_cursor_with_memo,
};
pub use crash::{CRASH_KILLS_ENV, kill_nine_recovers_a_committed_prefix};
pub use hostile::{HostileCase, import_rejects_hostile_artifact};
pub use log::{replay, update_at, updates};

/// How a kit case builds the backend's options for a durability mode.
pub type OptionsFor<S> = fn(Durability) -> <S as SnapshotStore>::Options;

/// The whole fold of `store`, via the streaming iteration.
///
/// # Panics
/// When the iteration fails.
#[must_use]
pub fn dump<S: SnapshotStore>(store: &S) -> BTreeMap<String, StoredEntry> {
    let mut out = BTreeMap::new();
    let done = store
        .for_each_in_range("", &mut |k, e| {
            out.insert(k.to_owned(), e.to_owned_entry());
            ControlFlow::Continue(())
        })
        .unwrap_or_else(|e| panic!("iteration failed: {e}"));
    assert!(done, "an iteration nothing broke reports completion");
    out
}

/// Instantiate the whole conformance kit for a store type as `#[test]`s in
/// the calling module: `snapshot_store_conformance!(MyStore, |d| my_options(d));`
/// The options expression must coerce to `fn(Durability) -> Options`.
#[macro_export]
macro_rules! snapshot_store_conformance {
    ($store:ty, $options:expr) => {
        $crate::snapshot_store_conformance!(@cases $store, $options,
            fresh_store_opens_empty_at_no_cursor,
            apply_commits_data_and_cursor_together,
            refused_batch_changes_nothing,
            deletes_and_purges_remove_keys,
            range_and_iteration_follow_key_order,
            fold_is_pure_under_any_batching,
            reopen_returns_last_committed_cursor_with_memo,
            empty_and_large_values_round_trip,
            export_then_import_gives_identical_fold_and_cursor,
            export_refuses_a_non_empty_destination,
        );
        $crate::snapshot_store_conformance!(@hostile $store, $options,
            import_rejects_tampered_file => TamperedFile,
            import_rejects_missing_file => MissingFile,
            import_rejects_extra_file => ExtraFile,
            import_rejects_symlink => Symlink,
            import_rejects_path_traversal => PathTraversal,
            import_rejects_oversized_manifest => OversizedManifest,
            import_rejects_wrong_backend => WrongBackend,
            import_rejects_future_schema => FutureSchema,
            import_rejects_cursor_mismatch_between_manifest_and_data => CursorMismatch,
            import_rejects_missing_manifest => MissingManifest,
        );
        #[test]
        fn kill_nine_with_fsync_each_commit_recovers_a_committed_prefix() {
            $crate::testkit::kill_nine_recovers_a_committed_prefix::<$store>(
                $options,
                $crate::Durability::FsyncEachCommit,
                module_path!(),
                "kill_nine_with_fsync_each_commit_recovers_a_committed_prefix",
            );
        }
        #[test]
        fn kill_nine_without_fsync_recovers_a_committed_prefix() {
            $crate::testkit::kill_nine_recovers_a_committed_prefix::<$store>(
                $options,
                $crate::Durability::NoFsync,
                module_path!(),
                "kill_nine_without_fsync_recovers_a_committed_prefix",
            );
        }
    };
    (@cases $store:ty, $options:expr, $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::testkit::$case::<$store>($options);
            }
        )*
    };
    (@hostile $store:ty, $options:expr, $($name:ident => $case:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::testkit::import_rejects_hostile_artifact::<$store>(
                    $options,
                    $crate::testkit::HostileCase::$case,
                );
            }
        )*
    };
}
