//! The backend's own errors, before they become [`KvError`]s.

use std::time::Duration;

use slipstream_kv::{ExpiryReason, KvError};

/// What can go wrong inside the NATS backend. Every variant converts into a
/// [`KvError`] at the trait boundary; none carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The configuration cannot be used (bad inline credentials, unreadable
    /// credentials file, bad certificate path).
    #[error("invalid NATS configuration: {0}")]
    InvalidConfig(String),
    /// Connecting failed.
    #[error("connecting to {url} failed: {reason}")]
    Connect {
        /// The URL, without credentials.
        url: String,
        /// The client's description.
        reason: String,
    },
    /// `connect` after `shutdown` on a connection built from a caller's
    /// client: there is no URL to redial.
    #[error(
        "this connection wraps a caller's client and was shut down; it cannot redial without a URL: build a new connection"
    )]
    CannotRedial,
    /// No client is installed (never connected, or shut down).
    #[error("not connected")]
    NotConnected,
    /// A server round-trip exceeded its bound (N3).
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        operation: String,
        /// The bound.
        after: Duration,
    },
    /// The server answered a JetStream API request with an error.
    #[error("{operation}: server error {code} (err_code {err_code}): {description}")]
    Api {
        /// What was being done.
        operation: String,
        /// The HTTP-like status code.
        code: u64,
        /// The JetStream error code.
        err_code: u64,
        /// The server's description.
        description: String,
    },
    /// A request or publish failed on the client side.
    #[error("{operation} failed: {reason}")]
    Request {
        /// What was being done.
        operation: String,
        /// The client's description.
        reason: String,
    },
    /// The bucket's stream does not exist.
    #[error("bucket {0:?} not found")]
    BucketNotFound(String),
    /// A watch or scan consumer lost messages or ended unexpectedly.
    #[error("{0}")]
    Consumer(String),
    /// The cursor is outside the log.
    #[error("cursor expired: {0}")]
    CursorExpired(ExpiryReason),
}

impl NatsError {
    /// The JetStream error code of a server refusal, for telling "not
    /// found" or "already exists" from other failures.
    #[must_use]
    pub fn err_code(&self) -> Option<u64> {
        match self {
            Self::Api { err_code, .. } => Some(*err_code),
            _ => None,
        }
    }
}

impl From<NatsError> for KvError {
    fn from(err: NatsError) -> Self {
        match err {
            NatsError::InvalidConfig(m) => Self::InvalidConfig(m),
            NatsError::CannotRedial | NatsError::Connect { .. } => {
                Self::ConnectionFailed(err.to_string())
            }
            NatsError::NotConnected => Self::NotConnected,
            NatsError::Timeout { operation, after } => Self::Timeout { operation, after },
            NatsError::BucketNotFound(bucket) => Self::BucketNotFound { bucket },
            NatsError::Consumer(m) => Self::Watch(m),
            NatsError::CursorExpired(reason) => Self::CursorExpired { reason },
            NatsError::Api { .. } | NatsError::Request { .. } => {
                Self::OperationFailed(err.to_string())
            }
        }
    }
}
