//! JetStream plumbing the KV backend and `slipstream-stream`'s projections
//! of plain streams share, so that both speak to the server one way: every
//! API round-trip bounded by a timeout (N3), replies and their error
//! objects parsed once, a stream's facts read once (N11), and one ephemeral
//! push consumer with its clean-up and its re-create loop (N5, R12).
//!
//! The functions here fail with [`NatsError`] (only its `Timeout`, `Api`
//! and `Request` variants), which `slipstream-stream` turns into its own
//! error with `From`; [`bounded`] returns the caller's type directly.
//!
//! ```
//! use std::time::Duration;
//! use slipstream_nats::jetstream::{NatsError, STREAM_NOT_FOUND, StreamFacts, nanos, parse_reply};
//!
//! let refused = parse_reply(
//!     "stream info",
//!     br#"{"error":{"code":404,"err_code":10059,"description":"stream not found"}}"#,
//! );
//! assert!(matches!(refused, Err(NatsError::Api { err_code: STREAM_NOT_FOUND, .. })));
//!
//! // An empty stream's floor sits above its last sequence.
//! let info = parse_reply(
//!     "stream info",
//!     br#"{"created":"2026-11-22T03:15:16Z","config":{},"state":{"messages":0,"last_seq":7}}"#,
//! )?;
//! let facts = StreamFacts::from_info("ORDERS", &info)?;
//! assert_eq!((facts.first_sequence, facts.last_sequence), (8, 7));
//! assert!(!facts.retention().evicts_current_values());
//!
//! assert_eq!(nanos(Duration::from_secs(2)), 2_000_000_000);
//! # Ok::<(), NatsError>(())
//! ```

mod consumer;
mod facts;

use std::future::Future;
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use serde_json::Value;

use crate::decode::LogPayload;
pub use crate::error::NatsError;

pub use consumer::{
    CONSUMER_PREFIX, Cleanup, ConsumerRequest, Delivery, JetStreamClient, JetStreamHandle,
    PushConsumer, RecreateFailed, StartPolicy, recreate_within,
};
pub use facts::{StreamFacts, stream_facts, stream_info};

/// JetStream's error code for "stream not found".
pub const STREAM_NOT_FOUND: u64 = 10059;
/// JetStream's error code for "stream name already in use": a create that
/// lost a race to another creator.
pub const STREAM_EXISTS: u64 = 10058;
/// JetStream's error code for "consumer not found": a delete of a consumer
/// that is already gone.
pub const CONSUMER_NOT_FOUND: u64 = 10014;
/// JetStream's error code for "no message found".
pub const NO_MESSAGE_FOUND: u64 = 10037;

/// Run `fut`, failing with [`NatsError::Timeout`] (in the caller's
/// error type) after `after`: no server operation may wait unbounded (N3).
///
/// # Errors
/// `fut`'s error, or the timeout.
pub async fn bounded<T, E, F>(operation: &str, after: Duration, fut: F) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
    E: From<NatsError>,
{
    match tokio::time::timeout(after, fut).await {
        Ok(result) => result,
        Err(_) => Err(NatsError::Timeout {
            operation: operation.to_owned(),
            after,
        }
        .into()),
    }
}

/// A raw JetStream API request (`$JS.API.<api>`) bounded by `after`; the
/// reply's bytes unparsed, for callers that read a refusal themselves.
///
/// # Errors
/// [`NatsError::Timeout`] or [`NatsError::Request`].
pub async fn request(
    client: &Client,
    after: Duration,
    operation: &str,
    api: &str,
    body: &Value,
) -> Result<Bytes, NatsError> {
    let payload = Bytes::from(body.to_string());
    let subject = format!("$JS.API.{api}");
    bounded(operation, after, async {
        let reply = client
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

/// A JetStream API request bounded by `after` whose reply must be a JSON
/// object without an `error` field.
///
/// # Errors
/// [`NatsError::Api`] for the server's refusal, or what [`request`]
/// and [`parse_reply`] fail with.
pub async fn api(
    client: &Client,
    after: Duration,
    operation: &str,
    api: &str,
    body: &Value,
) -> Result<Value, NatsError> {
    let bytes = request(client, after, operation, api, body).await?;
    parse_reply(operation, &bytes)
}

/// Parse a JetStream API reply, turning an `error` object into
/// [`NatsError::Api`]. An unparseable reply is shown through
/// [`LogPayload`], so a large or binary one does not flood the log.
///
/// # Errors
/// [`NatsError::Api`], or [`NatsError::Request`] for a reply that
/// is not JSON.
pub fn parse_reply(operation: &str, bytes: &[u8]) -> Result<Value, NatsError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| NatsError::Request {
        operation: operation.to_owned(),
        reason: format!("unparseable reply {}: {e}", LogPayload(bytes)),
    })?;
    if let Some(err) = value.get("error") {
        return Err(api_error(operation, err));
    }
    Ok(value)
}

/// An `error` object of a JetStream reply as [`NatsError::Api`];
/// missing fields read as 0 and "no description".
#[must_use]
pub fn api_error(operation: &str, err: &Value) -> NatsError {
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

/// A duration as JetStream's nanoseconds, saturating: the API takes
/// durations as integer nanoseconds.
#[must_use]
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

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
                err_code: STREAM_NOT_FOUND,
                ..
            }
        ));
        assert_eq!(err.err_code(), Some(STREAM_NOT_FOUND));
        let unparseable = parse_reply("op", b"\xff").unwrap_err();
        assert!(matches!(unparseable, NatsError::Request { .. }));
        assert_eq!(unparseable.err_code(), None);
    }

    #[test]
    fn an_error_object_without_fields_reads_as_zeroes() {
        let err = api_error("op", &serde_json::json!({}));
        assert_eq!(
            err,
            NatsError::Api {
                operation: "op".into(),
                code: 0,
                err_code: 0,
                description: "no description".into(),
            }
        );
    }

    #[test]
    fn durations_saturate() {
        assert_eq!(nanos(Duration::MAX), u64::MAX);
        assert_eq!(nanos(Duration::from_secs(1)), 1_000_000_000);
    }

    #[tokio::test]
    async fn a_bound_that_elapses_is_a_timeout_in_the_callers_type() {
        let after = Duration::from_millis(5);
        let r: Result<(), NatsError> = bounded(
            "op",
            after,
            core::future::pending::<Result<(), NatsError>>(),
        )
        .await;
        assert_eq!(
            r,
            Err(NatsError::Timeout {
                operation: "op".into(),
                after
            })
        );
    }
}
