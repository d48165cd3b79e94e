//! V7: state-sync and delta watches, expiry at resume, the live floor guard.

use super::{
    ConformanceHarness, Fixture, Seen, assert_quiet, expect_expired, next_item, next_update, put,
    seen, until_caught_up, within,
};
use crate::cursor::WatchCursor;
use crate::entry::WatchEvent;
use crate::error::{ExpiryReason, KvError};
use crate::scope::{WatchScope, WatchStart};

/// State-sync delivers the latest message of every key (delete and purge
/// markers included, tombstones too) in revision order, then `CaughtUp`.
pub async fn state_sync_delivers_latest_per_key_with_markers_then_caught_up<
    H: ConformanceHarness,
>(
    h: &H,
) {
    let fx = Fixture::new(h, "sync-markers", |c| c.history(5)).await;
    fx.put("a", b"1").await; // 1
    fx.put("b", b"1").await; // 2
    fx.put("a", b"2").await; // 3
    fx.delete("b").await; // 4
    fx.put("c", b"1").await; // 5
    fx.purge("c").await; // 6
    fx.put("d", b"").await; // 7
    let mut watch = fx
        .watch(&WatchScope::All, WatchStart::Relist)
        .await
        .expect("watch");
    let got: Vec<Seen> = until_caught_up(h, &mut watch)
        .await
        .iter()
        .map(seen)
        .collect();
    assert_eq!(
        got,
        [
            put("a", 3, b"2"),
            Seen::Del("b".into(), 4),
            Seen::Purge("c".into(), 6),
            put("d", 7, b""),
        ]
    );
}

/// State-sync of an empty bucket yields `CaughtUp` first.
pub async fn state_sync_of_empty_bucket_is_caught_up_at_once<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "sync-empty", |c| c).await;
    let mut watch = fx
        .watch(&WatchScope::All, WatchStart::Relist)
        .await
        .expect("watch");
    assert_eq!(
        next_item(h, &mut watch, "first item").await,
        Ok(WatchEvent::CaughtUp)
    );
    fx.put("a", b"1").await;
    assert_eq!(
        seen(&next_update(h, &mut watch, "live put").await),
        put("a", 1, b"1")
    );
}

/// An empty `Prefixes` list watches nothing: `CaughtUp`, then silence while
/// the bucket changes (never the whole bucket).
pub async fn empty_prefix_list_watches_nothing<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "empty-prefixes", |c| c).await;
    fx.put("a", b"1").await;
    let scope = WatchScope::Prefixes(vec![]);
    for start in [WatchStart::Relist, WatchStart::After(WatchCursor::at(0))] {
        let mut watch = fx.watch(&scope, start).await.expect("watch");
        assert_eq!(
            next_item(h, &mut watch, "first item").await,
            Ok(WatchEvent::CaughtUp)
        );
        fx.put("b", b"1").await;
        assert_quiet(h, &mut watch, "an empty scope").await;
    }
}

/// A `Prefixes` scope delivers only keys under its prefixes, in state-sync
/// and live.
pub async fn prefixes_scope_filters_state_sync_and_live<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "prefixes", |c| c).await;
    fx.put("a.1", b"x").await; // 1
    fx.put("b.1", b"x").await; // 2
    fx.put("c.1", b"x").await; // 3
    fx.delete("b.1").await; // 4
    let scope = WatchScope::Prefixes(vec!["a.".into(), "b.".into()]);
    let mut watch = fx.watch(&scope, WatchStart::Relist).await.expect("watch");
    let got: Vec<Seen> = until_caught_up(h, &mut watch)
        .await
        .iter()
        .map(seen)
        .collect();
    assert_eq!(got, [put("a.1", 1, b"x"), Seen::Del("b.1".into(), 4)]);
    fx.put("c.2", b"y").await; // 5
    fx.put("b.2", b"y").await; // 6
    assert_eq!(
        seen(&next_update(h, &mut watch, "live").await),
        put("b.2", 6, b"y")
    );
    let mut single = fx
        .watch(
            &WatchScope::Prefix("c.".into()),
            WatchStart::After(WatchCursor::at(0)),
        )
        .await
        .expect("watch");
    let got: Vec<Seen> = until_caught_up(h, &mut single)
        .await
        .iter()
        .map(seen)
        .collect();
    assert_eq!(got, [put("c.1", 3, b"x"), put("c.2", 5, b"y")]);
}

/// Keys rewritten right after a state-sync opened are all in what it
/// delivers before `CaughtUp`: with their first value, or with a rewrite
/// where the first went before delivery (history 1). A caught-up
/// state-sync lists every key, on an unfiltered and a filtered scope.
pub async fn caught_up_state_sync_lists_keys_rewritten_while_it_runs<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "sync-rewritten", |c| c.history(1)).await;
    let keys = ["k.a", "k.b", "k.c"];
    for key in keys {
        fx.put(key, b"0").await;
    }
    for scope in [WatchScope::All, WatchScope::Prefixes(vec!["k.".into()])] {
        let mut watch = fx.watch(&scope, WatchStart::Relist).await.expect("watch");
        for round in [b"1", b"2"] {
            for key in keys {
                fx.put(key, round).await;
            }
        }
        let mut listed: Vec<String> = until_caught_up(h, &mut watch)
            .await
            .iter()
            .map(|u| u.key().to_owned())
            .collect();
        listed.sort_unstable();
        listed.dedup();
        assert_eq!(listed, keys, "{scope:?}");
    }
}

/// After `CaughtUp`, live puts and deletes arrive in revision order.
pub async fn state_sync_then_live_changes_in_order<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "sync-live", |c| c).await;
    fx.put("a", b"1").await;
    let mut watch = fx
        .watch(&WatchScope::All, WatchStart::Relist)
        .await
        .expect("watch");
    assert_eq!(until_caught_up(h, &mut watch).await.len(), 1);
    fx.put("b", b"1").await;
    fx.delete("a").await;
    fx.purge("x").await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(seen(&next_update(h, &mut watch, "live").await));
    }
    assert_eq!(
        got,
        [
            put("b", 2, b"1"),
            Seen::Del("a".into(), 3),
            Seen::Purge("x".into(), 4)
        ]
    );
}

/// A delta watch delivers exactly the messages after the cursor, in order,
/// then `CaughtUp`, then live changes.
pub async fn delta_watch_delivers_after_cursor_then_caught_up<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "delta", |c| c.history(5)).await;
    fx.put("a", b"1").await;
    fx.put("b", b"1").await;
    fx.delete("a").await;
    fx.put("b", b"2").await;
    let mut watch = fx
        .watch(&WatchScope::All, WatchStart::After(WatchCursor::at(2)))
        .await
        .expect("watch");
    let got: Vec<Seen> = until_caught_up(h, &mut watch)
        .await
        .iter()
        .map(seen)
        .collect();
    assert_eq!(got, [Seen::Del("a".into(), 3), put("b", 4, b"2")]);
    fx.put("c", b"1").await;
    assert_eq!(
        seen(&next_update(h, &mut watch, "live").await),
        put("c", 5, b"1")
    );
}

/// A delta watch at the last revision is caught up at once, then live.
pub async fn delta_watch_at_last_revision_is_caught_up_then_live<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "delta-last", |c| c).await;
    fx.put("a", b"1").await;
    let last = fx.put("b", b"1").await;
    let mut watch = fx
        .watch(&WatchScope::All, WatchStart::After(WatchCursor::at(last)))
        .await
        .expect("watch at the last revision");
    assert_eq!(
        next_item(h, &mut watch, "first item").await,
        Ok(WatchEvent::CaughtUp)
    );
    fx.delete("a").await;
    assert_eq!(
        seen(&next_update(h, &mut watch, "live").await),
        Seen::Del("a".into(), last + 1)
    );
}

/// A cursor without a revision ranks 0: the delta watch replays the whole
/// log while the first sequence is 1.
pub async fn delta_watch_without_revision_replays_everything<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "delta-none", |c| c).await;
    fx.put("x", b"1").await;
    fx.put("a", b"1").await;
    fx.delete("a").await;
    let mut watch = fx
        .watch(&WatchScope::All, WatchStart::After(WatchCursor::none()))
        .await
        .expect("watch");
    let got: Vec<Seen> = until_caught_up(h, &mut watch)
        .await
        .iter()
        .map(seen)
        .collect();
    assert_eq!(got, [put("x", 1, b"1"), Seen::Del("a".into(), 3)]);
}

/// K1: a delta watch whose cursor head eviction has passed is refused with
/// `CursorExpired(BelowFirstSequence)`, never silently clamped (which would
/// lose the delete at revision 2).
pub async fn delta_watch_below_first_sequence_is_expired<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "delta-below", |c| c).await;
    fx.put("a", b"1").await; // 1
    fx.put("b", b"1").await; // 2
    fx.delete("a").await; // 3
    fx.put("c", b"1").await; // 4
    within(h, "purge_below", h.purge_below(&fx.name, 4))
        .await
        .expect("purge");
    for scope in [WatchScope::All, WatchScope::Prefix("a.".into())] {
        let result = fx
            .watch(&scope, WatchStart::After(WatchCursor::at(1)))
            .await;
        let reason = expect_expired(result, "resume below the floor");
        assert_eq!(
            reason,
            ExpiryReason::BelowFirstSequence {
                revision: 1,
                first_sequence: 4
            }
        );
    }
}

/// K1's edge: a cursor right below the first sequence loses nothing.
pub async fn delta_watch_at_floor_edge_is_accepted<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "delta-edge", |c| c).await;
    for key in ["a", "b", "c", "d"] {
        fx.put(key, b"1").await;
    }
    within(h, "purge_below", h.purge_below(&fx.name, 3))
        .await
        .expect("purge");
    let mut watch = fx
        .watch(&WatchScope::All, WatchStart::After(WatchCursor::at(2)))
        .await
        .expect("a cursor at first - 1 is inside the window");
    let got: Vec<Seen> = until_caught_up(h, &mut watch)
        .await
        .iter()
        .map(seen)
        .collect();
    assert_eq!(got, [put("c", 3, b"1"), put("d", 4, b"1")]);
}

/// K3: a cursor past the last sequence is refused with
/// `CursorExpired(BeyondLastSequence)` instead of waiting silently.
pub async fn delta_watch_beyond_last_sequence_is_expired<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "delta-beyond", |c| c).await;
    fx.put("a", b"1").await;
    fx.put("a", b"2").await;
    let result = fx
        .watch(&WatchScope::All, WatchStart::After(WatchCursor::at(5)))
        .await;
    assert_eq!(
        expect_expired(result, "resume past the end"),
        ExpiryReason::BeyondLastSequence {
            revision: 5,
            last_sequence: 2
        }
    );
}

/// K2: a cursor at `u64::MAX` has no next sequence; it is refused, never
/// wrapped to 0.
pub async fn delta_watch_at_u64_max_is_expired<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "delta-max", |c| c).await;
    fx.put("a", b"1").await;
    let result = fx
        .watch(
            &WatchScope::All,
            WatchStart::After(WatchCursor::at(u64::MAX)),
        )
        .await;
    assert_eq!(
        expect_expired(result, "resume at u64::MAX"),
        ExpiryReason::NoNextSequence
    );
}

/// A watch scope with an invalid prefix is refused with `InvalidKey`.
pub async fn invalid_watch_prefix_is_refused<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "watch-invalid", |c| c).await;
    for scope in [
        WatchScope::Prefix("a".into()),
        WatchScope::Prefixes(vec!["a.".into(), "b*.".into()]),
    ] {
        let result = fx.watch(&scope, WatchStart::Relist).await;
        assert!(
            matches!(result, Err(KvError::InvalidKey { .. })),
            "{scope:?}"
        );
    }
}

/// K4: when head eviction passes a live All-scope delta watch's frontier,
/// the watch never delivers a later message across the gap: either it had
/// already received every message (contiguous revisions), or it ends with
/// `CursorExpired(FloorOverrun)` and then the stream ends.
pub async fn live_head_eviction_never_skips_silently<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "floor-guard", |c| c).await;
    fx.put("k0", b"0").await; // 1
    let mut watch = fx
        .watch(&WatchScope::All, WatchStart::After(WatchCursor::at(1)))
        .await
        .expect("watch");
    fx.put("a", b"1").await; // 2
    fx.delete("k0").await; // 3
    fx.put("c", b"1").await; // 4
    within(h, "set_max_msgs", h.set_max_msgs(&fx.name, 1))
        .await
        .expect("set_max_msgs");
    assert_eq!(fx.retention().await.first_revision, 4);
    let mut frontier = 1;
    while frontier < 4 {
        match next_item(h, &mut watch, "after head eviction").await {
            Ok(WatchEvent::CaughtUp) => {}
            Ok(WatchEvent::Update(u)) => {
                let rev = u.revision().expect("revision");
                assert_eq!(
                    rev,
                    frontier + 1,
                    "a delivery skipped revisions {frontier}..{rev}"
                );
                frontier = rev;
            }
            Err(KvError::CursorExpired {
                reason:
                    ExpiryReason::FloorOverrun {
                        frontier: f,
                        first_sequence,
                    },
            }) => {
                assert_eq!((f, first_sequence), (frontier, 4));
                let end =
                    within(h, "end after overrun", futures::StreamExt::next(&mut watch)).await;
                assert!(end.is_none(), "the stream ends after an overrun: {end:?}");
                return;
            }
            Err(e) => panic!("unexpected watch error: {e}"),
        }
    }
}

/// K4: a gap left by interior eviction (a key's older revision superseded)
/// is benign: the watch goes on and delivers the newer revision.
pub async fn interior_eviction_gap_is_benign_for_live_watch<H: ConformanceHarness>(h: &H) {
    let fx = Fixture::new(h, "floor-benign", |c| c).await;
    fx.put("anchor", b"0").await; // 1
    let mut watch = fx
        .watch(&WatchScope::All, WatchStart::After(WatchCursor::at(1)))
        .await
        .expect("watch");
    fx.put("a", b"1").await; // 2, evicted by history 1
    fx.put("a", b"2").await; // 3
    assert_eq!(fx.retention().await.first_revision, 1);
    loop {
        match next_item(h, &mut watch, "after interior eviction").await {
            Ok(WatchEvent::CaughtUp) => {}
            Ok(WatchEvent::Update(u)) if u.revision() == Some(3) => {
                assert_eq!(seen(&u), put("a", 3, b"2"));
                break;
            }
            Ok(WatchEvent::Update(u)) => assert_eq!(u.revision(), Some(2)),
            Err(e) => panic!("an interior gap tripped the floor guard: {e}"),
        }
    }
    fx.put("b", b"1").await;
    assert_eq!(
        seen(&next_update(h, &mut watch, "live").await),
        put("b", 4, b"1")
    );
}
