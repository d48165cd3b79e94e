//! `StreamError`: every way ensuring, replaying or tailing a stream fails.

use std::time::Duration;

use slipstream_applied::{AppliedError, RepairCause};
use slipstream_kv::{BucketIdentity, ExpiryReason, KvError};
use slipstream_nats::NatsError;
use slipstream_nats::jetstream::STREAM_NOT_FOUND;

/// What can go wrong in a projection of a plain JetStream stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The history a resume needs is gone: the stream's first retained
    /// sequence is above `since + 1` (P3). Re-snapshot, then resume from a
    /// sequence at or above `first_sequence - 1`.
    #[error("retention exhausted: the stream's first retained sequence is {first_sequence}")]
    RetentionExhausted {
        /// The stream's first retained sequence when it was checked.
        first_sequence: u64,
    },
    /// A resume names a sequence the stream never reached: the stream was
    /// recreated or rolled back.
    #[error("sequence {since} is beyond the stream's last sequence {last_sequence}")]
    BeyondLastSequence {
        /// The sequence the resume was asked to continue after.
        since: u64,
        /// The stream's last sequence.
        last_sequence: u64,
    },
    /// The stream was deleted and recreated since the cursor was taken: its
    /// creation time differs from the one the cursor recorded.
    #[error("stream identity changed from {expected} to {found}")]
    IdentityChanged {
        /// The identity the cursor recorded.
        expected: BucketIdentity,
        /// The identity the server reports now.
        found: BucketIdentity,
    },
    /// A resume at `u64::MAX`: there is no next sequence to read (K2).
    #[error("there is no sequence after u64::MAX to resume from")]
    NoNextSequence,
    /// The stream does not exist.
    #[error("stream {0:?} not found")]
    StreamNotFound(String),
    /// A stream specification the server cannot take (no name, no subjects).
    #[error("invalid stream specification: {0}")]
    InvalidSpec(String),
    /// A server round-trip did not complete within its bound (N3).
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        operation: String,
        /// The bound that elapsed.
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
    /// A request failed on the client side, or its reply was unusable.
    #[error("{operation} failed: {reason}")]
    Request {
        /// What was being done.
        operation: String,
        /// The client's description.
        reason: String,
    },
    /// The applied-watch engine failed for a reason other than exhausted
    /// retention.
    #[error("applied watch: {0}")]
    Engine(#[source] AppliedError),
}

impl StreamError {
    /// The error as the engine's `KvError`, for a watch that was to resume
    /// after `since`. Exhausted retention and a sequence past the log are
    /// cursor expiries, so the engine handles them on its one expiry path.
    pub(crate) fn into_kv(self, since: u64) -> KvError {
        match self {
            Self::RetentionExhausted { first_sequence } => KvError::CursorExpired {
                reason: ExpiryReason::BelowFirstSequence {
                    revision: since,
                    first_sequence,
                },
            },
            Self::BeyondLastSequence {
                since,
                last_sequence,
            } => KvError::CursorExpired {
                reason: ExpiryReason::BeyondLastSequence {
                    revision: since,
                    last_sequence,
                },
            },
            Self::IdentityChanged { expected, found } => KvError::CursorExpired {
                reason: ExpiryReason::IdentityChanged { expected, found },
            },
            Self::NoNextSequence => KvError::CursorExpired {
                reason: ExpiryReason::NoNextSequence,
            },
            Self::StreamNotFound(stream) => KvError::BucketNotFound { bucket: stream },
            Self::InvalidSpec(m) => KvError::InvalidConfig(m),
            Self::Timeout { operation, after } => KvError::Timeout { operation, after },
            Self::Engine(e) => KvError::Watch(e.to_string()),
            e @ (Self::Api { .. } | Self::Request { .. }) => {
                KvError::OperationFailed(e.to_string())
            }
        }
    }
}

impl StreamError {
    /// A JetStream failure about `stream`, the server's "stream not found"
    /// as [`StreamError::StreamNotFound`].
    pub(crate) fn about_stream(stream: &str, err: NatsError) -> Self {
        if err.err_code() == Some(STREAM_NOT_FOUND) {
            Self::StreamNotFound(stream.to_owned())
        } else {
            err.into()
        }
    }
}

impl From<NatsError> for StreamError {
    /// The shared JetStream plumbing fails only with `Timeout`, `Api` and
    /// `Request`; anything else the backend reports is a failed request.
    fn from(err: NatsError) -> Self {
        match err {
            NatsError::Timeout { operation, after } => Self::Timeout { operation, after },
            NatsError::Api {
                operation,
                code,
                err_code,
                description,
            } => Self::Api {
                operation,
                code,
                err_code,
                description,
            },
            NatsError::Request { operation, reason } => Self::Request { operation, reason },
            other => Self::Request {
                operation: "JetStream request".to_owned(),
                reason: other.to_string(),
            },
        }
    }
}

impl From<AppliedError> for StreamError {
    /// An engine that stopped because the stream's retention passed its
    /// cursor (at resume or while tailing), with repairs off or with the
    /// relist it tried refused because the stream evicts current values,
    /// becomes the typed [`StreamError::RetentionExhausted`]; anything else
    /// is [`StreamError::Engine`].
    fn from(err: AppliedError) -> Self {
        match err {
            AppliedError::CursorExpired {
                reason:
                    ExpiryReason::BelowFirstSequence { first_sequence, .. }
                    | ExpiryReason::FloorOverrun { first_sequence, .. },
                ..
            }
            | AppliedError::RelistRefused {
                reason:
                    RepairCause::Expired(
                        ExpiryReason::BelowFirstSequence { first_sequence, .. }
                        | ExpiryReason::FloorOverrun { first_sequence, .. },
                    ),
                ..
            } => Self::RetentionExhausted { first_sequence },
            AppliedError::CursorExpired {
                reason:
                    ExpiryReason::BeyondLastSequence {
                        revision,
                        last_sequence,
                    },
                ..
            } => Self::BeyondLastSequence {
                since: revision,
                last_sequence,
            },
            AppliedError::CursorExpired {
                reason: ExpiryReason::IdentityChanged { expected, found },
                ..
            } => Self::IdentityChanged { expected, found },
            other => Self::Engine(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipstream_kv::WatchCursor;

    #[test]
    fn exhausted_retention_survives_the_round_trip_through_the_engine() {
        let kv = StreamError::RetentionExhausted { first_sequence: 6 }.into_kv(3);
        let KvError::CursorExpired { reason } = kv else {
            panic!("expected an expiry, got {kv:?}");
        };
        let engine = AppliedError::CursorExpired {
            reason,
            cursor: WatchCursor::at(3),
        };
        assert!(matches!(
            StreamError::from(engine),
            StreamError::RetentionExhausted { first_sequence: 6 }
        ));
    }

    /// A floor overrun while tailing, and the relist refused after one,
    /// both say retention passed the projection.
    #[test]
    fn a_floor_overrun_or_the_relist_refused_after_it_is_exhausted_retention() {
        let overrun = ExpiryReason::FloorOverrun {
            frontier: 4,
            first_sequence: 9,
        };
        let cursor = WatchCursor::at(4);
        for engine in [
            AppliedError::CursorExpired {
                reason: overrun.clone(),
                cursor: cursor.clone(),
            },
            AppliedError::RelistRefused {
                reason: RepairCause::Expired(overrun.clone()),
                cursor: cursor.clone(),
            },
        ] {
            assert!(matches!(
                StreamError::from(engine),
                StreamError::RetentionExhausted { first_sequence: 9 }
            ));
        }
        let cursorless = AppliedError::RelistRefused {
            reason: RepairCause::CursorlessStart,
            cursor: WatchCursor::none(),
        };
        assert!(matches!(
            StreamError::from(cursorless),
            StreamError::Engine(_)
        ));
    }

    #[test]
    fn a_missing_stream_is_named_and_other_refusals_stay_api_errors() {
        let refusal = |err_code| NatsError::Api {
            operation: "stream info".into(),
            code: 404,
            err_code,
            description: "x".into(),
        };
        assert!(matches!(
            StreamError::about_stream("orders", refusal(STREAM_NOT_FOUND)),
            StreamError::StreamNotFound(s) if s == "orders"
        ));
        assert!(matches!(
            StreamError::about_stream("orders", refusal(10_014)),
            StreamError::Api {
                err_code: 10_014,
                ..
            }
        ));
    }

    #[test]
    fn other_engine_failures_stay_engine_errors() {
        let engine = AppliedError::InvalidConfig("x".into());
        assert!(matches!(StreamError::from(engine), StreamError::Engine(_)));
    }
}
