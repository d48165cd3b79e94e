//! The KV backend's push consumers: the shared ones of
//! [`jetstream`](crate::jetstream) on this connection, over a bucket's key
//! prefixes.

use std::sync::Arc;
use std::time::Duration;

use crate::api::ConnShared;
use crate::error::NatsError;
use crate::jetstream::{self, Cleanup, ConsumerRequest, StartPolicy};

/// A push consumer on this backend's connection: its requests are refused
/// once the connection was shut down.
pub(crate) type PushConsumer = jetstream::PushConsumer<Arc<ConnShared>>;

/// Create a consumer on `conn` delivering `filters` of `stream` from
/// `start`, with a heartbeat every `heartbeat`. Its delete is retried
/// ([`Cleanup::Retried`]): a watch moving on while the server that holds
/// its consumer restarts must not leave the consumer behind.
pub(crate) async fn create_consumer(
    conn: &Arc<ConnShared>,
    stream: &str,
    filters: &[String],
    start: StartPolicy,
    headers_only: bool,
    heartbeat: Duration,
) -> Result<PushConsumer, NatsError> {
    let request = ConsumerRequest {
        stream,
        filters,
        start,
        headers_only,
        heartbeat,
        inactive_threshold: conn.settings.inactive_threshold,
        cleanup: Cleanup::Retried,
    };
    PushConsumer::create(conn, &request).await
}

/// Consumer filter subjects for key prefixes: nested and duplicate prefixes
/// removed (the server rejects overlapping filters), sorted.
pub(crate) fn filter_subjects(keyspace: &str, prefixes: &[String]) -> Vec<String> {
    let mut sorted: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut kept: Vec<&str> = Vec::with_capacity(sorted.len());
    for p in sorted {
        // Sorted order puts a prefix right before the prefixes it covers.
        if kept.last().is_none_or(|last| !p.starts_with(last)) {
            kept.push(p);
        }
    }
    kept.into_iter()
        .map(|p| format!("{keyspace}{p}>"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_duplicate_prefixes_collapse_to_disjoint_filters() {
        let ps = [
            "b.".into(),
            "a.x.".into(),
            "a.".into(),
            "b.".into(),
            "c.".into(),
        ];
        assert_eq!(
            filter_subjects("$KV.k.", &ps),
            ["$KV.k.a.>", "$KV.k.b.>", "$KV.k.c.>"]
        );
        assert_eq!(
            filter_subjects("$KV.k.", &["".into(), "a.".into()]),
            ["$KV.k.>"]
        );
    }
}
