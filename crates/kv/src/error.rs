//! `KvError` (V4) and the reasons it carries.

use core::fmt;
use std::time::Duration;

use crate::cursor::BucketIdentity;

/// Every failure of the KV surface (V4).
///
/// `Clone`, so one failure can fan out to several waiters; details from
/// sources that are not `Clone` are flattened to strings at the boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The connection is not established (never connected, or shut down).
    #[error("not connected")]
    NotConnected,
    /// Connecting to the server failed.
    #[error("connection failed: {0}")]
    ConnectionFailed(String),
    /// `create` found a live value under the key.
    #[error("key {key:?} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// A compare-and-set saw a different revision than expected.
    #[error("revision mismatch on key {key:?}: expected {expected}")]
    RevisionMismatch {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: u64,
    },
    /// A key or prefix is not valid for a KV bucket.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The offending key or prefix.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A version token longer than 10 bytes.
    #[error("version token of {len} bytes exceeds the 10-byte limit")]
    InvalidVersion {
        /// The length that was offered.
        len: usize,
    },
    /// Encoded cursor bytes could not be decoded.
    #[error("invalid cursor encoding: {0}")]
    InvalidCursor(CursorDecodeError),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The bucket does not exist.
    #[error("bucket {bucket:?} not found")]
    BucketNotFound {
        /// The bucket's name.
        bucket: String,
    },
    /// A watch failed to start or ended with an error.
    #[error("watch failed: {0}")]
    Watch(String),
    /// Any other failed operation, with the backend's description.
    #[error("operation failed: {0}")]
    OperationFailed(String),
    /// A server round-trip did not complete within its bound.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        operation: String,
        /// The bound that elapsed.
        after: Duration,
    },
    /// The cursor is outside the log: history it needs is gone, or the
    /// bucket it was taken against no longer exists as it was.
    #[error("cursor expired: {reason}")]
    CursorExpired {
        /// Why.
        reason: ExpiryReason,
    },
    /// The backend lacks the capability.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// Why a cursor is outside the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpiryReason {
    /// Head eviction passed the cursor: the first retained sequence is above
    /// `revision + 1` (K1).
    BelowFirstSequence {
        /// The cursor's revision.
        revision: u64,
        /// The stream's first retained sequence.
        first_sequence: u64,
    },
    /// The cursor names a revision the stream never reached (K3): the bucket
    /// was recreated or rolled back.
    BeyondLastSequence {
        /// The cursor's revision.
        revision: u64,
        /// The stream's last sequence.
        last_sequence: u64,
    },
    /// The bucket's identity differs from the one the cursor was taken
    /// against: it was deleted and recreated.
    IdentityChanged {
        /// The identity recorded in the cursor.
        expected: BucketIdentity,
        /// The identity the server reports now.
        found: BucketIdentity,
    },
    /// A running watch was overrun by head eviction (K4, the floor guard).
    FloorOverrun {
        /// The highest revision delivered before the gap.
        frontier: u64,
        /// The stream's first retained sequence when checked.
        first_sequence: u64,
    },
    /// The cursor is at `u64::MAX`: there is no next sequence (K2).
    NoNextSequence,
    /// The server refused the start sequence (second line of defence).
    StartRejected {
        /// The server's description.
        detail: String,
    },
}

impl fmt::Display for ExpiryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BelowFirstSequence {
                revision,
                first_sequence,
            } => write!(
                f,
                "revision {revision} is below the retention floor (first sequence {first_sequence})"
            ),
            Self::BeyondLastSequence {
                revision,
                last_sequence,
            } => write!(
                f,
                "revision {revision} is beyond the stream's last sequence {last_sequence} (bucket recreated or rolled back)"
            ),
            Self::IdentityChanged { expected, found } => {
                write!(f, "bucket identity changed from {expected} to {found}")
            }
            Self::FloorOverrun {
                frontier,
                first_sequence,
            } => write!(
                f,
                "live watch overrun by retention: frontier {frontier}, first sequence {first_sequence}"
            ),
            Self::NoNextSequence => f.write_str("cursor at u64::MAX has no next sequence"),
            Self::StartRejected { detail } => write!(f, "server rejected the start: {detail}"),
        }
    }
}

/// Why encoded cursor bytes were rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorDecodeError {
    /// No bytes at all.
    Empty,
    /// A format version this build does not know.
    UnknownVersion(u8),
    /// Flag bits this format version does not define.
    UnknownFlags(u8),
    /// The bytes end before the fields the flags announce.
    Truncated,
    /// Bytes remain after the last field.
    TrailingBytes,
    /// The bucket identity's stream name is not UTF-8.
    InvalidIdentity,
}

impl fmt::Display for CursorDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("no bytes"),
            Self::UnknownVersion(v) => write!(f, "unknown format version {v}"),
            Self::UnknownFlags(bits) => write!(f, "unknown flag bits {bits:#04x}"),
            Self::Truncated => f.write_str("truncated"),
            Self::TrailingBytes => f.write_str("trailing bytes"),
            Self::InvalidIdentity => f.write_str("bucket identity is not UTF-8"),
        }
    }
}
