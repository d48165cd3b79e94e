//! `slipstream status` (C3): what a store holds, and how far it is behind
//! the live bucket.

use core::ops::ControlFlow;
use std::fmt::Write as _;
use std::path::Path;

use std::time::{Duration, SystemTime};

use slipstream::{
    ArtifactManifest, BackendId, Connection, KvStore, KvWatcher, Retention, SnapshotStore,
    WatchCursor, artifact_refusal,
};

use crate::backend::{WithStore, open_store};
use crate::error::CliError;
use crate::fleet::{ArtifactsArg, Opener};
use crate::layout::StoreDir;
use crate::server::ServerArgs;

/// What `status` reads from the store.
#[derive(Debug, Clone)]
pub(crate) struct StoreInfo {
    /// The backend and its format generation.
    pub(crate) backend: BackendId,
    /// The committed cursor.
    pub(crate) cursor: WatchCursor,
    /// Keys holding an entry that has not expired.
    pub(crate) keys: u64,
    /// Entries past their per-message expiry that the fold still holds
    /// (removed when the mirror next runs); `keys` leaves them out.
    pub(crate) expired: u64,
    /// Bytes of keys, values and versions.
    pub(crate) live_bytes: u64,
    /// Bytes on disk (an estimate for LSM stores).
    pub(crate) disk_bytes: u64,
}

/// The newest artifact of `status --artifacts`.
#[derive(Debug, Clone)]
pub(crate) struct NewestArtifact {
    /// Where it was looked for, as given.
    pub(crate) place: String,
    /// Its manifest and when it was published (or written), if any.
    pub(crate) found: Option<(ArtifactManifest, Option<SystemTime>)>,
}

/// Read a store's figures.
pub(crate) struct ReadInfo;

impl WithStore for ReadInfo {
    type Output = StoreInfo;

    fn run<S: SnapshotStore>(self, fold: &Path) -> Result<StoreInfo, CliError> {
        let store: S = open_store(fold)?;
        let stats = store.stats();
        let mut expired = 0u64;
        if store.cursor().holds_expiring() {
            let now = slipstream::Timestamp::now();
            store.for_each_in_range("", &mut |_, entry| {
                expired += u64::from(entry.is_expired_at(now));
                ControlFlow::Continue(())
            })?;
        }
        let info = StoreInfo {
            backend: store.backend_id(),
            cursor: store.cursor().clone(),
            keys: store.len().saturating_sub(expired),
            expired,
            live_bytes: stats.live_bytes,
            disk_bytes: stats.disk_bytes,
        };
        store.close()?;
        Ok(info)
    }
}

/// What `status` reads beyond the store: the bucket's retention (with a
/// server) and the newest artifact (with `--artifacts`), on one
/// connection.
///
/// # Errors
/// Connection, bucket and transport failures.
pub(crate) async fn read_live(
    server: Option<&ServerArgs>,
    bucket: &str,
    dir: &StoreDir,
    backend: BackendId,
    artifacts: Option<&ArtifactsArg>,
) -> Result<(Option<Retention>, Option<NewestArtifact>), CliError> {
    let conn = match server {
        Some(server) => Some(server.connect().await?),
        None => None,
    };
    let result = async {
        let retention = match &conn {
            Some(conn) => Some(conn.store(bucket).await?.watcher().retention().await?),
            None => None,
        };
        let newest = match artifacts {
            None => None,
            Some(arg) => {
                let opener = Opener {
                    conn: conn.as_ref(),
                    bucket,
                    scope: dir.scope(),
                    backend,
                    replicas: 1,
                    timeout: Duration::from_secs(server.map_or(10, |s| s.timeout)),
                };
                let found = opener.artifacts(arg, false).await?.newest().await?;
                Some(NewestArtifact {
                    place: arg.to_string(),
                    found,
                })
            }
        };
        Ok::<_, CliError>((retention, newest))
    }
    .await;
    if let Some(conn) = conn {
        let _ = conn.shutdown().await;
    }
    result
}

/// Render `status` as `name: value` lines.
pub(crate) fn render(
    dir: &StoreDir,
    info: &StoreInfo,
    bucket: Option<&str>,
    live: Option<&Retention>,
    artifact: Option<&NewestArtifact>,
) -> String {
    let mut out = String::new();
    let revision = |c: Option<u64>| c.map_or_else(|| "none".to_owned(), |r| r.to_string());
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let scope = match dir.marker.as_ref().and_then(|m| m.prefixes.clone()) {
        None => "whole bucket".to_owned(),
        Some(ps) => ps.join(", "),
    };
    let lines = [
        ("store", dir.root.display().to_string()),
        ("backend", info.backend.to_string()),
        ("bucket", bucket.unwrap_or("unknown").to_owned()),
        ("scope", scope),
        ("cursor", revision(info.cursor.revision())),
        ("keys", info.keys.to_string()),
        (
            "expired",
            if info.expired == 0 {
                "0".to_owned()
            } else {
                format!("{} (removed when the mirror next runs)", info.expired)
            },
        ),
        ("live bytes", info.live_bytes.to_string()),
        ("disk bytes", info.disk_bytes.to_string()),
        (
            "memo: seen evicting",
            yes_no(info.cursor.seen_evicting()).to_owned(),
        ),
        (
            "memo: bucket identity",
            info.cursor
                .identity()
                .map_or_else(|| "unknown".to_owned(), ToString::to_string),
        ),
        (
            "memo: unchecked floor",
            revision(info.cursor.unchecked_floor()),
        ),
        // K11 generalised: messages left unseen; a mirror repairs once
        // the bucket is quiet.
        (
            "memo: repair due",
            yes_no(info.cursor.repair_due()).to_owned(),
        ),
        (
            "memo: expiries",
            if info.cursor.expiries_unrecorded() {
                "unrecorded (an older build wrote the fold; the next mirror run reads them from the bucket)"
            } else {
                "recorded"
            }
            .to_owned(),
        ),
    ];
    for (name, value) in lines {
        let _ = writeln!(out, "{name:<24}{value}");
    }
    if let Some(r) = live {
        let lag = r.last_revision.saturating_sub(info.cursor.rank());
        let live_lines = [
            ("stream first", r.first_revision.to_string()),
            ("stream last", r.last_revision.to_string()),
            ("lag", lag.to_string()),
            ("resumable", resumable(&info.cursor, r).to_owned()),
            ("listing is truth", listing_truth(&info.cursor, r)),
        ];
        for (name, value) in live_lines {
            let _ = writeln!(out, "{name:<24}{value}");
        }
    }
    if let Some(a) = artifact {
        for (name, value) in artifact_lines(dir, info, live, a) {
            let _ = writeln!(out, "{name:<24}{value}");
        }
    }
    out
}

/// The newest artifact's revision and age, and with a live bucket whether a
/// new node could start from it (K6 against an empty fold).
fn artifact_lines(
    dir: &StoreDir,
    info: &StoreInfo,
    live: Option<&Retention>,
    a: &NewestArtifact,
) -> Vec<(&'static str, String)> {
    let Some((manifest, published)) = &a.found else {
        return vec![("artifact", format!("none in {}", a.place))];
    };
    let revision = manifest
        .cursor
        .revision()
        .map_or_else(|| "none".to_owned(), |r| r.to_string());
    let age = published
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map_or_else(|| "unknown".to_owned(), crate::fleet::describe_age);
    let mut lines = vec![
        ("artifact", format!("revision {revision} in {}", a.place)),
        ("artifact age", age),
    ];
    if let Some(r) = live {
        let usable = artifact_refusal(manifest, Some(info.backend), &dir.scope(), 0, r)
            .map_or_else(|| "yes".to_owned(), |why| format!("no: {why}"));
        lines.push(("artifact bootstraps", usable));
    }
    lines
}

/// Whether a relist could repair this fold (K7), with why, and what a repair
/// needs otherwise.
fn listing_truth(cursor: &WatchCursor, r: &Retention) -> String {
    let truth = r.listing_truth(cursor.seen_evicting());
    if truth.is_truth() {
        format!("yes: {}", truth.reason())
    } else {
        format!(
            "no: {} (a repair restores from an artifact: mirror with --artifacts DIR)",
            truth.reason()
        )
    }
}

/// Whether a mirror restarted now would get a delta, in words.
fn resumable(cursor: &WatchCursor, r: &Retention) -> &'static str {
    if cursor.identity().is_some_and(|id| *id != r.identity) {
        return "no: the bucket was recreated since the cursor was taken";
    }
    if cursor
        .unchecked_floor()
        .is_some_and(|floor| r.first_revision > floor)
    {
        return "no: retention has passed the floor a relist left unchecked (a mirror repairs again)";
    }
    match cursor.revision() {
        None => "n/a: no cursor yet (a mirror starts with a full sync)",
        Some(rev) if rev > r.last_revision => "no: the cursor is beyond the stream's last sequence",
        Some(rev) if rev.saturating_add(1) < r.first_revision => {
            "no: retention has passed the cursor (a mirror needs a repair)"
        }
        Some(_) => "yes: a mirror resumes with the delta",
    }
}

#[cfg(test)]
mod tests {
    use slipstream::kv::{BucketIdentity, Eviction, Timestamp};

    use super::*;

    fn retention(first: u64, last: u64) -> Retention {
        Retention {
            eviction: Eviction::default(),
            first_revision: first,
            last_revision: last,
            identity: BucketIdentity {
                stream: "KV_cfg".into(),
                created: Timestamp::from_unix_nanos(1),
            },
            max_age: None,
            observed_at: Timestamp::from_unix_nanos(2),
        }
    }

    #[test]
    fn status_says_whether_the_listing_is_the_truth_and_why() {
        let fresh = WatchCursor::at(20);
        let ttl_only = Retention {
            eviction: Eviction {
                per_message_ttl: true,
                ..Eviction::default()
            },
            ..retention(12, 30)
        };
        let line = listing_truth(&fresh, &ttl_only);
        assert!(line.starts_with("yes: no max_age"), "{line}");
        let ageing = Retention {
            eviction: Eviction {
                max_age: true,
                ..Eviction::default()
            },
            ..retention(12, 30)
        };
        let line = listing_truth(&fresh, &ageing);
        assert!(line.starts_with("no: max_age has evicted"), "{line}");
        assert!(line.contains("--artifacts DIR"), "{line}");
        let line = listing_truth(
            &fresh,
            &Retention {
                first_revision: 1,
                ..ageing
            },
        );
        assert!(line.starts_with("yes:"), "{line}");
        let seen = fresh.with_seen_evicting();
        let line = listing_truth(&seen, &ttl_only);
        assert!(line.starts_with("no: this fold's memo saw"), "{line}");
    }

    #[test]
    fn a_passed_unchecked_floor_is_not_resumable_even_within_the_window() {
        let cursor = WatchCursor::at(20).with_unchecked_floor(Some(8));
        assert!(resumable(&cursor, &retention(12, 30)).starts_with("no:"));
        assert!(resumable(&cursor, &retention(8, 30)).starts_with("yes:"));
    }
}
