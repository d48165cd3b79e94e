//! Bounded JetStream API round-trips (N3) and the stream facts read from
//! them (N11).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use serde_json::Value;
use slipstream_kv::{BucketIdentity, Timestamp};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::BackendSettings;
use crate::decode::LogPayload;
use crate::error::NatsError;

/// JetStream's error code for "stream not found".
pub(crate) const STREAM_NOT_FOUND: u64 = 10059;

/// JetStream's error code for "no message found".
const NO_MESSAGE_FOUND: u64 = 10037;

/// What every handle of one connection shares.
#[derive(Debug)]
pub(crate) struct ConnShared {
    pub(crate) client: Client,
    pub(crate) settings: BackendSettings,
    /// Cleared by `shutdown`: every handle then fails with `NotConnected`.
    pub(crate) open: AtomicBool,
}

/// Run `fut`, failing with [`NatsError::Timeout`] after `after`.
pub(crate) async fn bounded<T, F>(operation: &str, after: Duration, fut: F) -> Result<T, NatsError>
where
    F: Future<Output = Result<T, NatsError>>,
{
    match tokio::time::timeout(after, fut).await {
        Ok(result) => result,
        Err(_) => Err(NatsError::Timeout {
            operation: operation.to_owned(),
            after,
        }),
    }
}

impl ConnShared {
    /// [`NatsError::NotConnected`] once the connection was shut down.
    pub(crate) fn ensure_open(&self) -> Result<(), NatsError> {
        if self.open.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(NatsError::NotConnected)
        }
    }

    /// Whether the connected server is at least `major.minor`.
    pub(crate) fn server_at_least(&self, major: u64, minor: u64) -> bool {
        version_at_least(&self.client.server_info().version, major, minor)
    }

    /// A raw JetStream API request (`$JS.API.<api>`), bounded; the reply's
    /// bytes unparsed.
    pub(crate) async fn raw_request(
        &self,
        operation: &str,
        api: &str,
        body: &Value,
    ) -> Result<Bytes, NatsError> {
        self.ensure_open()?;
        let after = self.settings.request_timeout;
        let payload = Bytes::from(body.to_string());
        let subject = format!("$JS.API.{api}");
        bounded(operation, after, async {
            let reply =
                self.client
                    .request(subject, payload)
                    .await
                    .map_err(|e| match e.kind() {
                        async_nats::RequestErrorKind::TimedOut => NatsError::Timeout {
                            operation: operation.to_owned(),
                            after,
                        },
                        _ => NatsError::Request {
                            operation: operation.to_owned(),
                            reason: e.to_string(),
                        },
                    })?;
            Ok(reply.payload)
        })
        .await
    }

    /// A JetStream API request whose reply must be a JSON object without an
    /// `error` field.
    pub(crate) async fn api(
        &self,
        operation: &str,
        api: &str,
        body: &Value,
    ) -> Result<Value, NatsError> {
        let bytes = self.raw_request(operation, api, body).await?;
        parse_reply(operation, &bytes)
    }

    /// The stream's configuration and state, read live.
    pub(crate) async fn stream_facts(&self, stream: &str) -> Result<StreamFacts, NatsError> {
        let reply = self
            .api(
                "stream info",
                &format!("STREAM.INFO.{stream}"),
                &Value::Object(Default::default()),
            )
            .await;
        match reply {
            Ok(v) => StreamFacts::from_info(stream, &v),
            Err(NatsError::Api { err_code, .. }) if err_code == STREAM_NOT_FOUND => {
                Err(NatsError::BucketNotFound(bucket_of(stream).to_owned()))
            }
            Err(e) => Err(e),
        }
    }
}

impl ConnShared {
    /// A stream's message get (`STREAM.MSG.GET`); `None` when no message
    /// matches.
    async fn message_get(
        &self,
        operation: &str,
        stream: &str,
        body: &Value,
    ) -> Result<Option<Value>, NatsError> {
        let reply = self
            .api(operation, &format!("STREAM.MSG.GET.{stream}"), body)
            .await;
        match reply {
            Ok(v) => Ok(Some(v)),
            Err(NatsError::Api { err_code, .. }) if err_code == NO_MESSAGE_FOUND => Ok(None),
            Err(NatsError::Api { err_code, .. }) if err_code == STREAM_NOT_FOUND => {
                Err(NatsError::BucketNotFound(bucket_of(stream).to_owned()))
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the stream still holds the message at `sequence`.
    pub(crate) async fn holds_message(
        &self,
        stream: &str,
        sequence: u64,
    ) -> Result<bool, NatsError> {
        let body = serde_json::json!({ "seq": sequence });
        Ok(self
            .message_get("message get", stream, &body)
            .await?
            .is_some())
    }

    /// The sequence of the stream's last message on a subject matching
    /// `filter` (wildcards allowed); `None` when no message matches.
    pub(crate) async fn last_sequence_matching(
        &self,
        stream: &str,
        filter: &str,
    ) -> Result<Option<u64>, NatsError> {
        let operation = "last message get";
        let body = serde_json::json!({ "last_by_subj": filter });
        let Some(v) = self.message_get(operation, stream, &body).await? else {
            return Ok(None);
        };
        v["message"]["seq"]
            .as_u64()
            .map(Some)
            .ok_or_else(|| NatsError::Request {
                operation: operation.to_owned(),
                reason: "reply lacks the message's sequence".to_owned(),
            })
    }
}

/// Whether a `major.minor.patch` version string is at least `major.minor`.
pub(crate) fn version_at_least(version: &str, major: u64, minor: u64) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

fn bucket_of(stream: &str) -> &str {
    stream.strip_prefix("KV_").unwrap_or(stream)
}

/// Parse a JetStream API reply, turning an `error` object into
/// [`NatsError::Api`].
pub(crate) fn parse_reply(operation: &str, bytes: &[u8]) -> Result<Value, NatsError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| NatsError::Request {
        operation: operation.to_owned(),
        reason: format!("unparseable reply {}: {e}", LogPayload(bytes)),
    })?;
    if let Some(err) = value.get("error") {
        return Err(api_error(operation, err));
    }
    Ok(value)
}

/// An `error` object of a JetStream reply as [`NatsError::Api`].
pub(crate) fn api_error(operation: &str, err: &Value) -> NatsError {
    NatsError::Api {
        operation: operation.to_owned(),
        code: err.get("code").and_then(Value::as_u64).unwrap_or(0),
        err_code: err.get("err_code").and_then(Value::as_u64).unwrap_or(0),
        description: err
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("no description")
            .to_owned(),
    }
}

/// A stream's configuration and state, as N4 and N11 need them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamFacts {
    pub(crate) first_sequence: u64,
    pub(crate) last_sequence: u64,
    pub(crate) bytes: u64,
    pub(crate) consumer_count: u64,
    pub(crate) identity: BucketIdentity,
    pub(crate) observed_at: Timestamp,
    pub(crate) max_age: Option<Duration>,
    pub(crate) max_msgs: i64,
    pub(crate) max_bytes: i64,
    pub(crate) discard_old: bool,
    pub(crate) allow_msg_ttl: bool,
}

impl StreamFacts {
    pub(crate) fn from_info(stream: &str, v: &Value) -> Result<Self, NatsError> {
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
}

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
    fn versions_compare_by_major_and_minor() {
        assert!(version_at_least("2.11.0", 2, 11));
        assert!(version_at_least("2.15.1", 2, 11));
        assert!(version_at_least("3.0.0-beta", 2, 11));
        assert!(!version_at_least("2.10.26", 2, 11));
        assert!(!version_at_least("", 2, 10));
    }

    #[test]
    fn error_replies_become_api_errors() {
        let err = parse_reply(
            "op",
            br#"{"error":{"code":404,"err_code":10059,"description":"stream not found"}}"#,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            NatsError::Api {
                code: 404,
                err_code: 10059,
                ..
            }
        ));
        assert!(matches!(
            parse_reply("op", b"\xff"),
            Err(NatsError::Request { .. })
        ));
    }
}
