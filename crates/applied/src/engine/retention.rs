//! What retention reads say about the bucket, and when it counts as quiet
//! (K11 generalised).

use std::time::Duration;

use slipstream_kv::{BucketIdentity, KvError, KvWatcher, Retention};
use slipstream_protocol::{Eviction, GapReading, read_gap};
use tokio::time::Instant;

/// How long neither the frontier nor the last sequence may move for the
/// bucket to count as quiet: longer than the pauses a busy server takes
/// (a file store flush stalls writers and deliveries alike).
const QUIET_FOR: Duration = Duration::from_millis(300);

/// What the latest retention read said of the bucket as it is now.
#[derive(Default)]
pub(crate) struct Seen {
    identity: Option<BucketIdentity>,
    eviction: Option<Eviction>,
    last: Option<u64>,
}

impl Seen {
    fn observe(&mut self, retention: &Retention) {
        self.identity = Some(retention.identity.clone());
        self.eviction = Some(retention.eviction);
        self.last = Some(retention.last_revision);
    }

    /// The bucket's identity (a revisionless cursor takes it at the next
    /// watch).
    pub(crate) const fn identity(&self) -> Option<&BucketIdentity> {
        self.identity.as_ref()
    }

    /// The last sequence.
    pub(crate) const fn last(&self) -> Option<u64> {
        self.last
    }

    /// K11 generalised; `None` before any read.
    pub(crate) fn gap_reading(&self) -> Option<GapReading> {
        self.eviction.map(read_gap)
    }

    /// Whether the bucket may allow per-message TTL (true before any read).
    pub(crate) fn allows_ttl(&self) -> bool {
        self.eviction.is_none_or(|e| e.per_message_ttl)
    }
}

/// Retention as the server reports it now, bounded by `bound`; what it
/// says of the bucket is recorded in `seen`.
pub(crate) async fn read<W: KvWatcher>(
    watcher: &W,
    bound: Duration,
    seen: &mut Seen,
) -> Result<Retention, KvError> {
    let retention = tokio::time::timeout(bound, watcher.retention())
        .await
        .map_err(|_| KvError::Timeout {
            operation: "retention".into(),
            after: bound,
        })??;
    seen.observe(&retention);
    Ok(retention)
}

/// The looks at retention a watch took, to tell when the bucket is quiet.
#[derive(Default)]
pub(crate) struct Looks {
    /// `(frontier, last sequence)` at an earlier look, and when they were
    /// first seen: the bucket is quiet when neither moved since.
    last_look: Option<(u64, u64, Instant)>,
    /// A repair just became due: look for quiet soon.
    pub(crate) soon: bool,
}

impl Looks {
    /// The `(frontier, last)` of a look at least [`QUIET_FOR`] ago if
    /// neither has moved since, as `quiet_for_repair` takes it; the look
    /// is remembered from when these values were first seen.
    pub(crate) fn still_since(&mut self, frontier: u64, last: u64) -> Option<(u64, u64)> {
        let now = Instant::now();
        match self.last_look {
            Some((f, l, since)) if (f, l) == (frontier, last) => {
                (now.duration_since(since) >= QUIET_FOR).then_some((f, l))
            }
            _ => {
                self.last_look = Some((frontier, last, now));
                None
            }
        }
    }

    /// The last sequence the previous look saw.
    pub(crate) fn last_seen(&self) -> Option<u64> {
        self.last_look.map(|(_, last, _)| last)
    }
}
