//! A stream's configuration and state, read from `STREAM.INFO` (N4, N11).

use std::time::Duration;

use async_nats::Client;
use serde_json::Value;
use slipstream_kv::{BucketIdentity, Eviction, Retention, Timestamp};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{NatsError, api};

/// A stream's configuration and state, as the resume checks (N4) and the
/// retention the engine is told (N11) need them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFacts {
    /// The first retained sequence; `last + 1` when the stream is empty.
    pub first_sequence: u64,
    /// The last sequence the stream assigned.
    pub last_sequence: u64,
    /// The bytes the stream holds.
    pub bytes: u64,
    /// How many consumers the stream has.
    pub consumer_count: u64,
    /// The stream's name and creation time: a recreated stream differs.
    pub identity: BucketIdentity,
    /// When the server read these facts (the reader's clock when the reply
    /// lacks it).
    pub observed_at: Timestamp,
    /// The age limit; `None` when messages do not age out.
    pub max_age: Option<Duration>,
    /// The message limit; not positive when unlimited.
    pub max_msgs: i64,
    /// The byte limit; not positive when unlimited.
    pub max_bytes: i64,
    /// Whether a limit removes old messages (rather than refusing new ones).
    pub discard_old: bool,
    /// Whether messages may carry their own TTL.
    pub allow_msg_ttl: bool,
}

impl StreamFacts {
    /// Read the facts from a `STREAM.INFO` reply for `stream`.
    ///
    /// # Errors
    /// [`NatsError::Request`] when the reply lacks the stream's
    /// creation time, without which a recreated stream cannot be told from
    /// the one a cursor was taken on.
    pub fn from_info(stream: &str, v: &Value) -> Result<Self, NatsError> {
        let config = &v["config"];
        let state = &v["state"];
        let created =
            v["created"]
                .as_str()
                .and_then(parse_time)
                .ok_or_else(|| NatsError::Request {
                    operation: "stream info".to_owned(),
                    reason: "reply lacks a creation time".to_owned(),
                })?;
        let observed_at = v["ts"]
            .as_str()
            .and_then(parse_time)
            .unwrap_or_else(|| Timestamp::from(std::time::SystemTime::now()));
        let max_age = config["max_age"]
            .as_u64()
            .filter(|&n| n > 0)
            .map(Duration::from_nanos);
        let last_sequence = state["last_seq"].as_u64().unwrap_or(0);
        // A never-written stream reports first 0: normalise every empty
        // stream to `first = last + 1`.
        let first_sequence = match state["messages"].as_u64() {
            Some(0) | None => last_sequence.saturating_add(1),
            Some(_) => state["first_seq"].as_u64().unwrap_or(0),
        };
        Ok(Self {
            first_sequence,
            last_sequence,
            bytes: state["bytes"].as_u64().unwrap_or(0),
            consumer_count: state["consumer_count"].as_u64().unwrap_or(0),
            identity: BucketIdentity {
                stream: stream.to_owned(),
                created,
            },
            observed_at,
            max_age,
            max_msgs: config["max_msgs"].as_i64().unwrap_or(-1),
            max_bytes: config["max_bytes"].as_i64().unwrap_or(-1),
            discard_old: config["discard"].as_str() != Some("new"),
            allow_msg_ttl: config["allow_msg_ttl"].as_bool().unwrap_or(false),
        })
    }

    /// The facts as the engine's [`Retention`] (N11): current values can be
    /// evicted by age or by a discard-old limit; a per-message TTL is the
    /// writer's own expiry.
    #[must_use]
    pub fn retention(&self) -> Retention {
        let limited = self.max_msgs > 0 || self.max_bytes > 0;
        Retention {
            eviction: Eviction {
                max_age: self.max_age.is_some(),
                discard_old_limit: self.discard_old && limited,
                per_message_ttl: self.allow_msg_ttl,
            },
            first_revision: self.first_sequence,
            last_revision: self.last_sequence,
            identity: self.identity.clone(),
            max_age: self.max_age,
            observed_at: self.observed_at,
        }
    }
}

/// The stream's `STREAM.INFO` reply, bounded by `after`. A missing stream is
/// the server's refusal with [`STREAM_NOT_FOUND`](super::STREAM_NOT_FOUND),
/// which each caller names in its own terms.
///
/// # Errors
/// What [`api`](super::api()) fails with.
pub async fn stream_info(
    client: &Client,
    after: Duration,
    stream: &str,
) -> Result<Value, NatsError> {
    api(
        client,
        after,
        "stream info",
        &format!("STREAM.INFO.{stream}"),
        &Value::Object(serde_json::Map::new()),
    )
    .await
}

/// The stream's facts, read live, bounded by `after`.
///
/// # Errors
/// What [`stream_info`] and [`StreamFacts::from_info`] fail with.
pub async fn stream_facts(
    client: &Client,
    after: Duration,
    stream: &str,
) -> Result<StreamFacts, NatsError> {
    let info = stream_info(client, after, stream).await?;
    StreamFacts::from_info(stream, &info)
}

/// A JetStream timestamp (RFC 3339, nanosecond precision); `None` when
/// unreadable.
fn parse_time(s: &str) -> Option<Timestamp> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    let nanos = u64::try_from(t.unix_timestamp_nanos()).unwrap_or(0);
    Some(Timestamp::from_unix_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stream_facts_read_config_and_state() {
        let info = json!({
            "created": "2026-11-22T03:15:16.123456789Z",
            "ts": "2026-11-22T03:20:00Z",
            "config": {"max_age": 3_000_000_000u64, "max_msgs": -1, "max_bytes": 1024, "discard": "old"},
            "state": {"messages": 3, "first_seq": 5, "last_seq": 9, "bytes": 77, "consumer_count": 2}
        });
        let f = StreamFacts::from_info("KV_b", &info).unwrap();
        assert_eq!(
            (f.first_sequence, f.last_sequence, f.bytes, f.consumer_count),
            (5, 9, 77, 2)
        );
        assert_eq!(f.max_age, Some(Duration::from_secs(3)));
        assert!(f.discard_old && !f.allow_msg_ttl);
        assert_eq!(f.identity.stream, "KV_b");
        assert_eq!(
            f.identity.created.as_unix_nanos() % 1_000_000_000,
            123_456_789
        );
    }

    #[test]
    fn an_empty_stream_has_its_floor_above_its_last_sequence() {
        let info = json!({
            "created": "2026-11-22T03:15:16Z",
            "config": {"max_age": 0, "max_msgs": -1, "max_bytes": -1, "discard": "old"},
            "state": {"messages": 0, "first_seq": 0, "last_seq": 7}
        });
        let f = StreamFacts::from_info("orders", &info).unwrap();
        assert_eq!((f.first_sequence, f.last_sequence), (8, 7));
        assert!(!f.retention().evicts_current_values());
    }

    #[test]
    fn a_reply_without_a_creation_time_is_refused() {
        let info = json!({"config": {}, "state": {}});
        assert!(matches!(
            StreamFacts::from_info("s", &info),
            Err(NatsError::Request { .. })
        ));
    }

    fn facts(
        max_age: Option<Duration>,
        max_bytes: i64,
        discard_old: bool,
        ttl: bool,
    ) -> StreamFacts {
        StreamFacts {
            first_sequence: 1,
            last_sequence: 0,
            bytes: 0,
            consumer_count: 0,
            identity: BucketIdentity {
                stream: "KV_b".into(),
                created: Timestamp::from_unix_nanos(1),
            },
            observed_at: Timestamp::from_unix_nanos(2),
            max_age,
            max_msgs: -1,
            max_bytes,
            discard_old,
            allow_msg_ttl: ttl,
        }
    }

    #[test]
    fn retention_evicts_current_values_by_age_or_discard_old_limit_not_ttl() {
        assert!(
            !facts(None, -1, true, false)
                .retention()
                .evicts_current_values()
        );
        assert!(
            !facts(None, 100, false, false)
                .retention()
                .evicts_current_values()
        );
        let by_limit = facts(None, 100, true, false).retention();
        assert!(by_limit.evicts_current_values() && !by_limit.age_is_only_eviction());
        let by_age = facts(Some(Duration::from_secs(1)), -1, true, false).retention();
        assert!(by_age.evicts_current_values() && by_age.age_is_only_eviction());
        // nats-py's default bucket: TTL allowed, discard new, no max_age.
        let by_ttl = facts(None, -1, false, true).retention();
        assert!(!by_ttl.evicts_current_values() && !by_ttl.age_is_only_eviction());
        assert!(by_ttl.listing_truth(false).is_truth());
        let age_and_ttl = facts(Some(Duration::from_secs(1)), -1, false, true).retention();
        assert!(age_and_ttl.evicts_current_values() && !age_and_ttl.age_is_only_eviction());
    }

    #[test]
    fn age_and_discard_old_limits_evict_current_values() {
        let info = json!({
            "created": "2026-11-22T03:15:16Z",
            "config": {"max_age": 3_000_000_000u64, "max_msgs": 10, "max_bytes": -1, "discard": "old"},
            "state": {"messages": 3, "first_seq": 5, "last_seq": 7}
        });
        let r = StreamFacts::from_info("orders", &info).unwrap().retention();
        assert!(r.evicts_current_values());
        assert!(!r.age_is_only_eviction(), "the message limit evicts too");
        assert_eq!(r.max_age, Some(Duration::from_secs(3)));
        assert_eq!((r.first_revision, r.last_revision), (5, 7));
    }
}
