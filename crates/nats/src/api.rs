//! The connection's shared state and the JetStream round-trips the KV
//! backend makes through it: bounded (N3), refused once the connection was
//! shut down, a missing stream named as the bucket (N11).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use serde_json::Value;

use crate::config::BackendSettings;
use crate::error::NatsError;
use crate::jetstream::{self, JetStreamHandle, NO_MESSAGE_FOUND, STREAM_NOT_FOUND, StreamFacts};

/// What every handle of one connection shares.
#[derive(Debug)]
pub(crate) struct ConnShared {
    pub(crate) client: Client,
    pub(crate) settings: BackendSettings,
    /// Cleared by `shutdown`: every handle then fails with `NotConnected`.
    pub(crate) open: AtomicBool,
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
        jetstream::request(&self.client, after, operation, api, body).await
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
        jetstream::parse_reply(operation, &bytes)
    }

    /// The stream's configuration and state, read live.
    pub(crate) async fn stream_facts(&self, stream: &str) -> Result<StreamFacts, NatsError> {
        self.ensure_open()?;
        let after = self.settings.request_timeout;
        match jetstream::stream_facts(&self.client, after, stream).await {
            Ok(facts) => Ok(facts),
            Err(e) if e.err_code() == Some(STREAM_NOT_FOUND) => {
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

impl JetStreamHandle for Arc<ConnShared> {
    type Error = NatsError;

    fn client(&self) -> &Client {
        &self.client
    }

    fn request_timeout(&self) -> Duration {
        self.settings.request_timeout
    }

    fn ensure_open(&self) -> Result<(), NatsError> {
        ConnShared::ensure_open(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert!(version_at_least("2.11.0", 2, 11));
        assert!(version_at_least("2.15.1", 2, 11));
        assert!(version_at_least("3.0.0-beta", 2, 11));
        assert!(!version_at_least("2.10.26", 2, 11));
        assert!(!version_at_least("", 2, 10));
    }
}
