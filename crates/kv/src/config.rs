//! Bucket configuration (V9) and backend capabilities.

use std::time::Duration;

/// Where the server keeps a bucket's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StorageKind {
    /// On disk.
    #[default]
    File,
    /// In memory.
    Memory,
}

/// What the server does when a limit is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DiscardPolicy {
    /// Evict the oldest messages (head eviction; evicts current values).
    #[default]
    Old,
    /// Refuse new messages.
    New,
}

/// Whether the bucket accepts per-message TTLs (server 2.11+).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MessageTtl {
    /// Messages live until retention removes them.
    #[default]
    Disabled,
    /// `put_with_ttl` may give a message its own expiry (evicts current
    /// values).
    Enabled,
}

/// How to create a bucket (V9). Applies only at creation: an existing bucket
/// is used as it is.
///
/// ```
/// use std::time::Duration;
/// use slipstream_kv::StoreConfig;
///
/// let config = StoreConfig::new("routes").history(5).max_age(Duration::from_secs(3600));
/// assert_eq!(config.history, 5);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The bucket's name.
    pub name: String,
    /// Where messages are kept.
    pub storage: StorageKind,
    /// Cap on the bucket's bytes; `None` is unlimited.
    pub max_bytes: Option<u64>,
    /// Revisions kept per key (1–64).
    pub history: u8,
    /// Age after which messages are removed; `None` keeps them.
    pub max_age: Option<Duration>,
    /// Replicas in a cluster (1–5).
    pub replicas: usize,
    /// What happens at a limit.
    pub discard: DiscardPolicy,
    /// Per-message TTL support.
    pub message_ttl: MessageTtl,
}

impl StoreConfig {
    /// Defaults: file storage, no byte limit, history 1, no `max_age`, one
    /// replica, discard old, no per-message TTL.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            storage: StorageKind::File,
            max_bytes: None,
            history: 1,
            max_age: None,
            replicas: 1,
            discard: DiscardPolicy::Old,
            message_ttl: MessageTtl::Disabled,
        }
    }

    /// Set the storage kind.
    #[must_use]
    pub fn storage(mut self, storage: StorageKind) -> Self {
        self.storage = storage;
        self
    }

    /// Set the byte cap.
    #[must_use]
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = Some(max_bytes);
        self
    }

    /// Set the per-key history.
    #[must_use]
    pub fn history(mut self, history: u8) -> Self {
        self.history = history;
        self
    }

    /// Set `max_age`.
    #[must_use]
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Set the replica count.
    #[must_use]
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Set the discard policy.
    #[must_use]
    pub fn discard(mut self, discard: DiscardPolicy) -> Self {
        self.discard = discard;
        self
    }

    /// Set per-message TTL support.
    #[must_use]
    pub fn message_ttl(mut self, message_ttl: MessageTtl) -> Self {
        self.message_ttl = message_ttl;
        self
    }
}

/// What a backend can do. Never advertises a capability the backend lacks
/// (V9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[allow(clippy::struct_excessive_bools)] // a capability set is a set of yes/no facts
pub struct ConnectionCapabilities {
    /// `WatchScope::Prefixes` runs on one server-side consumer.
    pub multi_filter_watch: bool,
    /// `KvTtl::put_with_ttl` works.
    pub per_message_ttl: bool,
    /// `KvPurge::purge` reclaims bytes.
    pub purge: bool,
    /// Key listings read sizes from headers without fetching values.
    pub headers_only_listing: bool,
}
