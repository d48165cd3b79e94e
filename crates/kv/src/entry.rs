//! Entries and updates (V3).

use bytes::Bytes;

use crate::cursor::Timestamp;
use crate::version::VersionToken;

/// A key's value at a version (V3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The key, without the `$KV.<bucket>.` subject prefix.
    pub key: String,
    /// The value. Empty for an empty-value tombstone.
    pub value: Bytes,
    /// The version (the stream sequence on NATS).
    pub version: VersionToken,
    /// The server time the message was stored, when known.
    pub created: Option<Timestamp>,
    /// When the entry expires: the message's server time plus its
    /// per-message TTL (`Nats-TTL`); `None` for an entry that never does.
    pub expires: Option<Timestamp>,
}

impl KvEntry {
    /// Whether the entry has expired at `now` (its expiry is at or before).
    #[must_use]
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }
}

/// A delete or purge marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvMarker {
    /// The key.
    pub key: String,
    /// The marker's version; unknown for synthetic repair deletes.
    pub version: VersionToken,
    /// The server time the marker was stored, when known.
    pub created: Option<Timestamp>,
}

/// One change to a bucket, as a watch delivers it (V3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvUpdate {
    /// A value was written.
    Put(KvEntry),
    /// A delete marker: the key has no value from here on.
    Delete(KvMarker),
    /// A purge marker: the key's history was rolled up into this marker.
    Purge(KvMarker),
}

impl KvUpdate {
    /// The key the update is about.
    #[must_use]
    pub fn key(&self) -> &str {
        match self {
            Self::Put(e) => &e.key,
            Self::Delete(m) | Self::Purge(m) => &m.key,
        }
    }

    /// The update's version.
    #[must_use]
    pub fn version(&self) -> VersionToken {
        match self {
            Self::Put(e) => e.version,
            Self::Delete(m) | Self::Purge(m) => m.version,
        }
    }

    /// The update's revision, when its version is one.
    #[must_use]
    pub fn revision(&self) -> Option<u64> {
        self.version().as_u64()
    }

    /// The server time of the message, when known.
    #[must_use]
    pub fn created(&self) -> Option<Timestamp> {
        match self {
            Self::Put(e) => e.created,
            Self::Delete(m) | Self::Purge(m) => m.created,
        }
    }

    /// When the value the update writes expires (puts only).
    #[must_use]
    pub fn expires(&self) -> Option<Timestamp> {
        match self {
            Self::Put(e) => e.expires,
            Self::Delete(_) | Self::Purge(_) => None,
        }
    }

    /// Whether the key holds a value after this update. An empty-value put
    /// is a tombstone, not a value.
    #[must_use]
    pub fn is_live(&self) -> bool {
        matches!(self, Self::Put(e) if !e.value.is_empty())
    }

    /// A synthetic delete with an unknown version, as repairs emit: it never
    /// moves a cursor.
    #[must_use]
    pub fn synthetic_delete(key: impl Into<String>) -> Self {
        Self::Delete(KvMarker {
            key: key.into(),
            version: VersionToken::unknown(),
            created: None,
        })
    }
}

/// An item of a watch stream (V7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A change, in revision order.
    Update(KvUpdate),
    /// Everything pending when the watch was created has been delivered
    /// (immediately for an empty scope), and so has the rewrite of any key
    /// whose pending message went before delivery: the updates so far are
    /// the scope as of the last one. A key absent from a caught-up
    /// state-sync is absent from the bucket. Sent once per watch.
    CaughtUp,
}
