//! The KV conformance kit (V10): every V rule and the server behaviours the
//! simulator reproduces (M1–M4), as async cases generic over any backend.
//!
//! A backend implements [`ConformanceHarness`] (a connected connection,
//! fresh bucket names, and the admin hooks below the client API that the
//! cases need) and instantiates the whole kit with
//! [`conformance_tests!`](crate::conformance_tests), which expands to one
//! `#[tokio::test]` per case (the backend's crate needs `tokio` with the
//! `macros` and `rt` features as a dev-dependency):
//!
//! ```text
//! slipstream_kv::conformance_tests!(MyHarness::start().await);
//! ```
//!
//! Every await in a case is bounded by [`ConformanceHarness::timeout`], so a
//! broken backend fails instead of hanging. Cases run on real time: a backend
//! with a manual clock moves it in [`ConformanceHarness::advance_time`], a
//! live server sleeps there.

// The kit is assertion code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::config::StoreConfig;
use crate::entry::{KvUpdate, WatchEvent};
use crate::error::KvError;
use crate::scope::{Retention, WatchScope, WatchStart};
use crate::traits::{Connection, KvPurge, KvReader, KvStore, KvWatcher, KvWriter};

mod reader;
mod server;
mod watch;
mod writer;

pub use reader::*;
pub use server::*;
pub use watch::*;
pub use writer::*;

/// What a backend provides to run the kit against itself.
///
/// The admin hooks act beneath the client API, as a server operator would;
/// on NATS they map to the JetStream API (stream purge with a sequence,
/// purge with a subject filter, stream delete, stream config update).
pub trait ConformanceHarness: Send + Sync {
    /// The backend's connection type.
    type Conn: Connection;

    /// A new, connected connection to the server under test. Each call
    /// returns its own connection (a case may shut it down).
    fn connection(&self) -> impl Future<Output = Result<Self::Conn, KvError>> + Send;

    /// A valid bucket name (`[A-Za-z0-9_-]`) no other case or run uses.
    fn bucket_name(&self, case: &str) -> String;

    /// Remove every message of the bucket's stream below sequence `seq`
    /// (NATS: `$JS.API.STREAM.PURGE.KV_<bucket>` with `{"seq": seq}`).
    fn purge_below(
        &self,
        bucket: &str,
        seq: u64,
    ) -> impl Future<Output = Result<(), KvError>> + Send;

    /// Remove every message of one key, markers included, leaving nothing
    /// (NATS: stream purge with `{"filter": "$KV.<bucket>.<key>"}`).
    fn purge_subject(
        &self,
        bucket: &str,
        key: &str,
    ) -> impl Future<Output = Result<(), KvError>> + Send;

    /// Delete the bucket (a later `store_with_config` recreates it; NATS:
    /// stream delete).
    fn delete_bucket(&self, bucket: &str) -> impl Future<Output = Result<(), KvError>> + Send;

    /// Cap the bucket's stream at `max_msgs` messages; under discard-old the
    /// server evicts from the head at once (NATS: a stream config update of
    /// `max_msgs`).
    fn set_max_msgs(
        &self,
        bucket: &str,
        max_msgs: u64,
    ) -> impl Future<Output = Result<(), KvError>> + Send;

    /// Let `by` of server time pass: move a manual clock, or sleep against a
    /// live server.
    fn advance_time(&self, by: Duration) -> impl Future<Output = ()> + Send;

    /// The bound on every single await of a case.
    fn timeout(&self) -> Duration {
        Duration::from_secs(10)
    }

    /// How long a case listens to conclude that nothing more arrives.
    fn quiet_period(&self) -> Duration {
        Duration::from_millis(200)
    }
}

/// The store type a harness yields.
pub type HarnessStore<H> = <<H as ConformanceHarness>::Conn as Connection>::Store;

/// The watch stream type a harness yields.
pub type HarnessWatch<H> = <<HarnessStore<H> as KvStore>::Watcher as KvWatcher>::WatchStream;

/// A case's bucket and connection.
struct Fixture<'h, H: ConformanceHarness> {
    h: &'h H,
    conn: H::Conn,
    name: String,
    store: HarnessStore<H>,
}

impl<'h, H: ConformanceHarness> Fixture<'h, H> {
    async fn new(h: &'h H, case: &str, config: impl FnOnce(StoreConfig) -> StoreConfig) -> Self {
        let conn = within(h, "connect", h.connection()).await.expect("connect");
        let name = h.bucket_name(case);
        let store = within(
            h,
            "open bucket",
            conn.store_with_config(&config(StoreConfig::new(&name))),
        )
        .await
        .expect("open bucket");
        Self {
            h,
            conn,
            name,
            store,
        }
    }

    async fn put(&self, key: &str, value: &[u8]) -> u64 {
        let w = self.store.writer();
        within(self.h, "put", w.put(key, Bytes::copy_from_slice(value)))
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"))
    }

    async fn delete(&self, key: &str) {
        let w = self.store.writer();
        let reported = within(self.h, "delete", w.delete(key))
            .await
            .unwrap_or_else(|e| panic!("delete {key}: {e}"));
        assert!(reported, "delete reports true");
    }

    async fn purge(&self, key: &str) {
        let p = self.store.purge_writer();
        within(self.h, "purge", p.purge(key))
            .await
            .unwrap_or_else(|e| panic!("purge {key}: {e}"));
    }

    async fn get(&self, key: &str) -> Option<Bytes> {
        let r = self.store.reader();
        within(self.h, "get", r.get(key))
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e}"))
    }

    async fn retention(&self) -> Retention {
        let w = self.store.watcher();
        within(self.h, "retention", w.retention())
            .await
            .expect("retention")
    }

    async fn watch(
        &self,
        scope: &WatchScope,
        start: WatchStart,
    ) -> Result<HarnessWatch<H>, KvError> {
        let w = self.store.watcher();
        within(self.h, "watch", w.watch(scope, start)).await
    }

    async fn reopen(&self, config: StoreConfig) -> HarnessStore<H> {
        within(
            self.h,
            "reopen bucket",
            self.conn.store_with_config(&config),
        )
        .await
        .expect("reopen bucket")
    }
}

/// Await `fut`, failing the case after [`ConformanceHarness::timeout`].
async fn within<H: ConformanceHarness, F: Future>(h: &H, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(h.timeout(), fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: no result within {:?}", h.timeout()),
    }
}

/// Let server time pass, bounded by the timeout on top of `by`.
async fn advance<H: ConformanceHarness>(h: &H, by: Duration) {
    let bound = h.timeout().saturating_add(by);
    if tokio::time::timeout(bound, h.advance_time(by))
        .await
        .is_err()
    {
        panic!("advance_time({by:?}): not done within {bound:?}");
    }
}

/// Poll `check` until it holds, failing after [`ConformanceHarness::timeout`].
async fn eventually<H, F, Fut>(h: &H, what: &str, mut check: F)
where
    H: ConformanceHarness,
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let wait = async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    within(h, what, wait).await;
}

/// The next item of a watch; the stream ending is a failure.
async fn next_item<H, S>(h: &H, watch: &mut S, what: &str) -> Result<WatchEvent, KvError>
where
    H: ConformanceHarness,
    S: Stream<Item = Result<WatchEvent, KvError>> + Unpin,
{
    within(h, what, watch.next())
        .await
        .unwrap_or_else(|| panic!("{what}: watch ended"))
}

/// The next update; `CaughtUp` or an error is a failure.
async fn next_update<H, S>(h: &H, watch: &mut S, what: &str) -> KvUpdate
where
    H: ConformanceHarness,
    S: Stream<Item = Result<WatchEvent, KvError>> + Unpin,
{
    match next_item(h, watch, what).await {
        Ok(WatchEvent::Update(u)) => u,
        other => panic!("{what}: expected an update, got {other:?}"),
    }
}

/// Every update up to the `CaughtUp` marker.
async fn until_caught_up<H, S>(h: &H, watch: &mut S) -> Vec<KvUpdate>
where
    H: ConformanceHarness,
    S: Stream<Item = Result<WatchEvent, KvError>> + Unpin,
{
    let mut seen = Vec::new();
    loop {
        match next_item(h, watch, "waiting for CaughtUp").await {
            Ok(WatchEvent::Update(u)) => seen.push(u),
            Ok(WatchEvent::CaughtUp) => return seen,
            Err(e) => panic!("watch failed before CaughtUp: {e}"),
        }
    }
}

/// Nothing arrives within the quiet period.
async fn assert_quiet<H, S>(h: &H, watch: &mut S, what: &str)
where
    H: ConformanceHarness,
    S: Stream<Item = Result<WatchEvent, KvError>> + Unpin,
{
    if let Ok(item) = tokio::time::timeout(h.quiet_period(), watch.next()).await {
        panic!("{what}: expected nothing, got {item:?}");
    }
}

/// What a case compares: key, kind, revision, value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Put(String, u64, Vec<u8>),
    Del(String, u64),
    Purge(String, u64),
}

fn seen(u: &KvUpdate) -> Seen {
    let rev = u
        .revision()
        .expect("a delivered update carries its revision");
    match u {
        KvUpdate::Put(e) => Seen::Put(e.key.clone(), rev, e.value.to_vec()),
        KvUpdate::Delete(m) => Seen::Del(m.key.clone(), rev),
        KvUpdate::Purge(m) => Seen::Purge(m.key.clone(), rev),
    }
}

fn put(key: &str, rev: u64, value: &[u8]) -> Seen {
    Seen::Put(key.to_owned(), rev, value.to_vec())
}

fn expect_expired<T>(result: Result<T, KvError>, what: &str) -> crate::error::ExpiryReason {
    match result {
        Err(KvError::CursorExpired { reason }) => reason,
        Err(e) => panic!("{what}: expected CursorExpired, got {e}"),
        Ok(_) => panic!("{what}: expected CursorExpired, got a watch"),
    }
}

/// Expand to one `#[tokio::test]` per conformance case, each running the
/// case against the harness `$harness` evaluates to (evaluated afresh in
/// every test, inside its async body, so it may `.await`).
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@cases $harness;
            get_of_missing_key_is_none,
            get_returns_latest_value_and_entry_its_revision,
            get_hides_markers_and_tombstones_entry_keeps_empty_puts,
            keys_and_scan_skip_markers_and_tombstones_in_key_order,
            listing_respects_prefix,
            listing_of_5000_keys_is_complete,
            updates_carry_server_timestamps,
            invalid_keys_and_prefixes_are_refused,
            writes_share_one_increasing_revision_sequence,
            delete_of_absent_key_reports_true_and_writes_marker,
            create_refuses_live_key_but_not_marker_or_tombstone,
            update_with_stale_revision_is_revision_mismatch,
            delete_with_version_is_cas_to_tombstone,
            purge_rolls_history_into_one_marker,
            purge_is_idempotent,
            put_with_ttl_expires_the_value,
            state_sync_delivers_latest_per_key_with_markers_then_caught_up,
            state_sync_of_empty_bucket_is_caught_up_at_once,
            empty_prefix_list_watches_nothing,
            prefixes_scope_filters_state_sync_and_live,
            state_sync_then_live_changes_in_order,
            caught_up_state_sync_lists_keys_rewritten_while_it_runs,
            delta_watch_delivers_after_cursor_then_caught_up,
            delta_watch_at_last_revision_is_caught_up_then_live,
            delta_watch_without_revision_replays_everything,
            delta_watch_below_first_sequence_is_expired,
            delta_watch_at_floor_edge_is_accepted,
            delta_watch_beyond_last_sequence_is_expired,
            delta_watch_at_u64_max_is_expired,
            invalid_watch_prefix_is_refused,
            live_head_eviction_never_skips_silently,
            interior_eviction_gap_is_benign_for_live_watch,
            empty_stream_reports_first_after_last,
            history_limit_evicts_interior_revisions,
            max_msgs_evicts_from_the_head,
            max_age_removes_aged_messages,
            discard_new_refuses_writes_at_the_byte_limit,
            discard_old_byte_limit_evicts_from_the_head,
            subject_purge_removes_key_and_its_markers,
            retention_reports_limits_truthfully,
            identity_changes_when_bucket_is_recreated,
            cursor_with_old_identity_is_refused_after_recreate,
            cursor_beyond_last_of_recreated_bucket_is_refused,
            existing_bucket_is_used_as_is,
            shutdown_makes_operations_not_connected,
        );
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let harness = $harness;
                $crate::testkit::$case(&harness).await;
            }
        )*
    };
}
