//! The store conformance kit (S7): test cases generic over any
//! [`SnapshotStore`], a kill -9 crash harness, and
//! [`snapshot_store_conformance!`](crate::snapshot_store_conformance) to
//! instantiate all of it for a backend; the cases the LSM stores share on
//! top, instantiated by [`lsm_store_conformance!`](crate::lsm_store_conformance);
//! and, with feature `bench`, the store benchmarks (module `bench`).
//!
//! Every case takes `options: fn(Durability) -> S::Options`, so a backend
//! chooses its tuning (e.g. a small compaction threshold so the crash test
//! also kills compactions).

mod backends;
#[cfg(feature = "bench")]
pub mod bench;
mod cases;
mod crash;
mod hostile;
mod log;

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use crate::store::{Durability, SnapshotStore, StoredEntry};

pub use backends::{
    MarkerWriter, ReadHandle, Settle,
    foreign_marker_is_wrong_backend_and_newer_generation_is_unsupported,
    opening_an_append_log_directory_is_wrong_backend_and_writes_nothing,
    oversized_value_is_invalid_and_commits_nothing, read_handle_on_another_thread_sees_each_commit,
    second_open_of_a_held_store_is_locked,
    settle_then_clean_close_reopens_to_the_same_fold_and_cursor,
    totals_follow_overwrites_deletes_and_duplicates_within_a_batch_across_reopen,
};
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

// For the macros, so a caller need not name slipstream-kv itself.
#[doc(hidden)]
pub use slipstream_kv as __kv;

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
            second_open_of_a_held_store_is_locked,
            totals_follow_overwrites_deletes_and_duplicates_within_a_batch_across_reopen,
            oversized_value_is_invalid_and_commits_nothing,
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

/// Instantiate the cases the LSM stores share, beyond
/// [`snapshot_store_conformance!`](crate::snapshot_store_conformance), as
/// `#[test]`s in the calling module. The backend-specific parts come in as
/// functions:
///
/// ```text
/// slipstream_snapshot::lsm_store_conformance! {
///     store: FjallStore,
///     options: options,               // fn(Durability) -> FjallOptions
///     write_marker: write_marker,     // fn(&Path, &str), raw engine API
///     reader: FjallReader = FjallStore::reader,
///     settle: FjallStore::settle,     // fn(&mut FjallStore) -> Result<(), _>
///     settle_options: settle_options, // options for the settle case
/// }
/// ```
///
/// The reader type must have the methods of
/// [`ReadHandle`](crate::testkit::ReadHandle) inherently and be `Clone +
/// Send`; the macro wraps it in a local type implementing the trait.
#[macro_export]
macro_rules! lsm_store_conformance {
    (
        store: $store:ty,
        options: $options:expr,
        write_marker: $write_marker:expr,
        reader: $reader:ty = $make_reader:expr,
        settle: $settle:expr,
        settle_options: $settle_options:expr $(,)?
    ) => {
        #[test]
        fn opening_an_append_log_directory_is_wrong_backend_and_writes_nothing() {
            $crate::testkit::opening_an_append_log_directory_is_wrong_backend_and_writes_nothing::<
                $store,
            >($options);
        }
        #[test]
        fn foreign_marker_is_wrong_backend_and_newer_generation_is_unsupported() {
            $crate::testkit::foreign_marker_is_wrong_backend_and_newer_generation_is_unsupported::<
                $store,
            >($options, $write_marker);
        }
        #[test]
        fn read_handle_on_another_thread_sees_each_commit() {
            // Local, so the trait can be implemented for the backend's type.
            #[derive(Clone)]
            struct Reader($reader);
            type Fallible<T> = ::core::result::Result<T, $crate::SnapshotError>;
            impl $crate::testkit::ReadHandle for Reader {
                fn get(&self, key: &str) -> Fallible<Option<$crate::StoredEntry>> {
                    self.0.get(key)
                }
                fn range(&self, prefix: &str) -> Fallible<Vec<(String, $crate::StoredEntry)>> {
                    self.0.range(prefix)
                }
                fn for_each_in_range(
                    &self,
                    prefix: &str,
                    f: &mut dyn FnMut(&str, $crate::EntryRef<'_>) -> ::core::ops::ControlFlow<()>,
                ) -> Fallible<bool> {
                    self.0.for_each_in_range(prefix, f)
                }
                fn cursor(&self) -> Fallible<$crate::testkit::__kv::WatchCursor> {
                    self.0.cursor()
                }
            }
            $crate::testkit::read_handle_on_another_thread_sees_each_commit::<$store, Reader>(
                $options,
                |store| Reader(($make_reader)(store)),
            );
        }
        #[test]
        fn settle_then_clean_close_reopens_to_the_same_fold_and_cursor() {
            $crate::testkit::settle_then_clean_close_reopens_to_the_same_fold_and_cursor::<$store>(
                $settle_options,
                $settle,
            );
        }
    };
}
