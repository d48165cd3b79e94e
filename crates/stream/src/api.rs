//! Bounded JetStream API round-trips (N3) and the stream facts read from
//! them.

use std::future::Future;
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use serde_json::Value;
use slipstream_kv::{BucketIdentity, Eviction, Retention, Timestamp};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::StreamError;

/// JetStream's error code for "stream not found".
pub(crate) const STREAM_NOT_FOUND: u64 = 10059;
/// JetStream's error code for "stream name already in use".
pub(crate) const STREAM_EXISTS: u64 = 10058;
/// JetStream's error code for "consumer not found".
pub(crate) const CONSUMER_NOT_FOUND: u64 = 10014;

/// Run `fut`, failing with [`StreamError::Timeout`] after `after`.
pub(crate) async fn bounded<T, F>(
    operation: &str,
    after: Duration,
    fut: F,
) -> Result<T, StreamError>
where
    F: Future<Output = Result<T, StreamError>>,
{
    tokio::time::timeout(after, fut).await.unwrap_or_else(|_| {
        Err(StreamError::Timeout {
            operation: operation.to_owned(),
            after,
        })
    })
}

/// A JetStream API request (`$JS.API.<api>`) bounded by `after`, whose
/// reply must be a JSON object without an `error` field.
pub(crate) async fn api(
    client: &Client,
    after: Duration,
    operation: &str,
    api: &str,
    body: &Value,
) -> Result<Value, StreamError> {
    let payload = Bytes::from(body.to_string());
    let subject = format!("$JS.API.{api}");
    let reply = bounded(operation, after, async {
        client
            .request(subject, payload)
            .await
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::TimedOut => StreamError::Timeout {
                    operation: operation.to_owned(),
                    after,
                },
                _ => StreamError::Request {
                    operation: operation.to_owned(),
                    reason: e.to_string(),
                },
            })
    })
    .await?;
    parse_reply(operation, &reply.payload)
}

/// Parse a JetStream API reply, turning an `error` object into
/// [`StreamError::Api`].
pub(crate) fn parse_reply(operation: &str, bytes: &[u8]) -> Result<Value, StreamError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| StreamError::Request {
        operation: operation.to_owned(),
        reason: format!(
            "unparseable reply {}: {e}",
            slipstream_nats::LogPayload(bytes)
        ),
    })?;
    if let Some(err) = value.get("error") {
        return Err(StreamError::Api {
            operation: operation.to_owned(),
            code: err.get("code").and_then(Value::as_u64).unwrap_or(0),
            err_code: err.get("err_code").and_then(Value::as_u64).unwrap_or(0),
            description: err
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("no description")
                .to_owned(),
        });
    }
    Ok(value)
}

/// The stream's info reply, or [`StreamError::StreamNotFound`].
pub(crate) async fn stream_info(
    client: &Client,
    after: Duration,
    stream: &str,
) -> Result<Value, StreamError> {
    let reply = api(
        client,
        after,
        "stream info",
        &format!("STREAM.INFO.{stream}"),
        &Value::Object(serde_json::Map::new()),
    )
    .await;
    match reply {
        Err(StreamError::Api { err_code, .. }) if err_code == STREAM_NOT_FOUND => {
            Err(StreamError::StreamNotFound(stream.to_owned()))
        }
        other => other,
    }
}

/// A stream's state and the parts of its configuration retention depends
/// on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamFacts {
    /// The first retained sequence; `last + 1` when the stream is empty.
    pub(crate) first_sequence: u64,
    pub(crate) last_sequence: u64,
    pub(crate) identity: BucketIdentity,
    pub(crate) observed_at: Timestamp,
    pub(crate) max_age: Option<Duration>,
    pub(crate) limited_discard_old: bool,
    pub(crate) allow_msg_ttl: bool,
}

impl StreamFacts {
    /// Read the facts from a `STREAM.INFO` reply.
    pub(crate) fn from_info(stream: &str, v: &Value) -> Result<Self, StreamError> {
        let config = &v["config"];
        let state = &v["state"];
        let created =
            v["created"]
                .as_str()
                .and_then(parse_time)
                .ok_or_else(|| StreamError::Request {
                    operation: "stream info".to_owned(),
                    reason: "reply lacks a creation time".to_owned(),
                })?;
        let observed_at = v["ts"]
            .as_str()
            .and_then(parse_time)
            .unwrap_or_else(|| Timestamp::from(std::time::SystemTime::now()));
        let last_sequence = state["last_seq"].as_u64().unwrap_or(0);
        // A never-written stream reports first 0: every empty stream is
        // normalised to `first = last + 1`.
        let first_sequence = match state["messages"].as_u64() {
            Some(0) | None => last_sequence.saturating_add(1),
            Some(_) => state["first_seq"].as_u64().unwrap_or(0),
        };
        let limited = config["max_msgs"].as_i64().unwrap_or(-1) > 0
            || config["max_bytes"].as_i64().unwrap_or(-1) > 0;
        Ok(Self {
            first_sequence,
            last_sequence,
            identity: BucketIdentity {
                stream: stream.to_owned(),
                created,
            },
            observed_at,
            max_age: config["max_age"]
                .as_u64()
                .filter(|&n| n > 0)
                .map(Duration::from_nanos),
            limited_discard_old: limited && config["discard"].as_str() != Some("new"),
            allow_msg_ttl: config["allow_msg_ttl"].as_bool().unwrap_or(false),
        })
    }

    /// The facts as the engine's [`Retention`]: current values can be
    /// evicted by age or by a discard-old limit; a per-message TTL is the
    /// writer's own expiry (N11).
    pub(crate) fn retention(&self) -> Retention {
        Retention {
            eviction: Eviction {
                max_age: self.max_age.is_some(),
                discard_old_limit: self.limited_discard_old,
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

/// Read the stream's facts live.
pub(crate) async fn stream_facts(
    client: &Client,
    after: Duration,
    stream: &str,
) -> Result<StreamFacts, StreamError> {
    let info = stream_info(client, after, stream).await?;
    StreamFacts::from_info(stream, &info)
}

fn parse_time(s: &str) -> Option<Timestamp> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    let nanos = u64::try_from(t.unix_timestamp_nanos()).unwrap_or(0);
    Some(Timestamp::from_unix_nanos(nanos))
}

/// A duration as JetStream's nanoseconds, saturating.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    #[test]
    fn error_replies_become_typed_api_errors() {
        let err = parse_reply(
            "op",
            br#"{"error":{"code":404,"err_code":10059,"description":"stream not found"}}"#,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            StreamError::Api {
                code: 404,
                err_code: STREAM_NOT_FOUND,
                ..
            }
        ));
        assert!(matches!(
            parse_reply("op", b"\xff"),
            Err(StreamError::Request { .. })
        ));
    }

    #[test]
    fn a_reply_without_a_creation_time_is_refused() {
        let info = json!({"config": {}, "state": {}});
        assert!(StreamFacts::from_info("s", &info).is_err());
    }
}
