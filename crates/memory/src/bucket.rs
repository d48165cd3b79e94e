//! One simulated bucket: the stream of messages, its limits and its
//! eviction rules. Pure data: no locking, no waking, no clock of its own.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use slipstream_kv::{
    BucketIdentity, DiscardPolicy, Eviction, KvEntry, KvError, KvMarker, KvUpdate, MessageTtl,
    Retention, StoreConfig, Timestamp, VersionToken, WatchScope,
};

/// What a stored message does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// A value (possibly empty: an empty-value tombstone).
    Put,
    /// A delete marker.
    Delete,
    /// A purge marker (the key's history was rolled up into it).
    Purge,
}

/// A message as the simulated stream stores it and a raw consumer delivers
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// The stream sequence (the revision).
    pub sequence: u64,
    /// The key.
    pub key: String,
    /// Put, delete marker or purge marker.
    pub operation: Operation,
    /// The value; empty for markers.
    pub value: Bytes,
    /// The simulated server time the message was stored.
    pub created: Timestamp,
    /// When a put with a per-message TTL expires.
    pub expires: Option<Timestamp>,
}

impl RawMessage {
    /// The message as a watch delivers it.
    #[must_use]
    pub fn to_update(&self) -> KvUpdate {
        let version = VersionToken::from_u64(self.sequence);
        let created = Some(self.created);
        match self.operation {
            Operation::Put => KvUpdate::Put(KvEntry {
                key: self.key.clone(),
                value: self.value.clone(),
                version,
                created,
                expires: self.expires,
            }),
            Operation::Delete | Operation::Purge => {
                let marker = KvMarker {
                    key: self.key.clone(),
                    version,
                    created,
                };
                if self.operation == Operation::Delete {
                    KvUpdate::Delete(marker)
                } else {
                    KvUpdate::Purge(marker)
                }
            }
        }
    }

    /// The accounted size: key bytes plus value bytes.
    fn size(&self) -> u64 {
        (self.key.len() + self.value.len()) as u64
    }
}

/// A bucket's limits. Set at creation from a [`StoreConfig`]; tests may
/// change them later through [`crate::BucketAdmin`] (the server applies a
/// tightened limit at once, evicting from the head).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketLimits {
    /// Messages kept per key (1–64); older ones are evicted from the
    /// interior of the stream.
    pub history: u8,
    /// Cap on the number of messages.
    pub max_msgs: Option<u64>,
    /// Cap on the accounted bytes (key plus value per message).
    pub max_bytes: Option<u64>,
    /// Messages at least this old are removed.
    pub max_age: Option<Duration>,
    /// What happens at `max_msgs` / `max_bytes`.
    pub discard: DiscardPolicy,
    /// Whether `put_with_ttl` is accepted.
    pub message_ttl: MessageTtl,
}

impl BucketLimits {
    /// The limits a [`StoreConfig`] creates (no message cap).
    #[must_use]
    pub fn from_config(config: &StoreConfig) -> Self {
        Self {
            history: config.history,
            max_msgs: None,
            max_bytes: config.max_bytes,
            max_age: config.max_age,
            discard: config.discard,
            message_ttl: config.message_ttl,
        }
    }

    fn limits_evict(&self) -> bool {
        self.discard == DiscardPolicy::Old && (self.max_msgs.is_some() || self.max_bytes.is_some())
    }
}

/// Stream state as the server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// First retained sequence; `last + 1` when the stream is empty.
    pub first_sequence: u64,
    /// Last sequence ever stored (or set by a purge past the end).
    pub last_sequence: u64,
    /// Retained messages.
    pub messages: u64,
    /// Accounted bytes of the retained messages.
    pub bytes: u64,
    /// The bucket's incarnation.
    pub identity: BucketIdentity,
}

#[derive(Debug)]
struct Stored {
    message: RawMessage,
    expires_at: Option<u64>,
}

/// The simulated stream behind one bucket.
#[derive(Debug)]
pub(crate) struct Bucket {
    pub(crate) limits: BucketLimits,
    pub(crate) identity: BucketIdentity,
    /// Distinguishes incarnations inside the simulator (watches of a deleted
    /// bucket end).
    pub(crate) incarnation: u64,
    messages: BTreeMap<u64, Stored>,
    by_key: BTreeMap<String, VecDeque<u64>>,
    ttl_index: BTreeSet<(u64, u64)>,
    last_seq: u64,
    bytes: u64,
}

impl Bucket {
    pub(crate) fn new(limits: BucketLimits, identity: BucketIdentity, incarnation: u64) -> Self {
        Self {
            limits,
            identity,
            incarnation,
            messages: BTreeMap::new(),
            by_key: BTreeMap::new(),
            ttl_index: BTreeSet::new(),
            last_seq: 0,
            bytes: 0,
        }
    }

    pub(crate) fn first_seq(&self) -> u64 {
        self.messages
            .first_key_value()
            .map_or(self.last_seq.saturating_add(1), |(seq, _)| *seq)
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub(crate) fn info(&self) -> StreamInfo {
        StreamInfo {
            first_sequence: self.first_seq(),
            last_sequence: self.last_seq,
            messages: self.messages.len() as u64,
            bytes: self.bytes,
            identity: self.identity.clone(),
        }
    }

    /// N8 as K11 generalised reads it: only a bucket that can evict
    /// current values has a floor a watch must not pass.
    pub(crate) fn evicts_current_values(&self) -> bool {
        self.limits.max_age.is_some() || self.limits.limits_evict()
    }

    pub(crate) fn retention(&self, now: Timestamp) -> Retention {
        let l = &self.limits;
        Retention {
            eviction: Eviction {
                max_age: l.max_age.is_some(),
                discard_old_limit: l.limits_evict(),
                per_message_ttl: l.message_ttl == MessageTtl::Enabled,
            },
            first_revision: self.first_seq(),
            last_revision: self.last_seq,
            identity: self.identity.clone(),
            max_age: l.max_age,
            observed_at: now,
        }
    }

    /// Remove every message whose age or TTL has run out. Returns whether
    /// anything was removed.
    pub(crate) fn expire(&mut self, now: Timestamp) -> bool {
        let mut removed = false;
        if let Some(max_age) = self.limits.max_age {
            // Stored times never decrease along the stream: stop at the first
            // message young enough.
            while let Some((&seq, stored)) = self.messages.first_key_value() {
                if stored.message.created.age_at(now) < max_age {
                    break;
                }
                self.remove(seq);
                removed = true;
            }
        }
        while let Some(&(expires, seq)) = self.ttl_index.first() {
            if expires > now.as_unix_nanos() {
                break;
            }
            self.remove(seq);
            removed = true;
        }
        removed
    }

    /// The latest retained message of `key`.
    pub(crate) fn latest(&self, key: &str) -> Option<&RawMessage> {
        let seq = self.by_key.get(key)?.back()?;
        self.messages.get(seq).map(|s| &s.message)
    }

    /// The sequence of the key's latest retained message, 0 without one
    /// (what the server's expected-last-subject-sequence check compares).
    pub(crate) fn last_subject_seq(&self, key: &str) -> u64 {
        self.latest(key).map_or(0, |m| m.sequence)
    }

    pub(crate) fn message(&self, seq: u64) -> Option<&RawMessage> {
        self.messages.get(&seq).map(|s| &s.message)
    }

    /// Store a message and apply rollup, history and limits.
    pub(crate) fn append(
        &mut self,
        key: &str,
        operation: Operation,
        value: Bytes,
        now: Timestamp,
        ttl: Option<Duration>,
    ) -> Result<u64, KvError> {
        let expires_at = ttl.map(|t| {
            let nanos = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
            now.as_unix_nanos().saturating_add(nanos)
        });
        let message = RawMessage {
            sequence: self.last_seq.saturating_add(1),
            key: key.to_owned(),
            operation,
            value,
            created: now,
            expires: expires_at
                .filter(|_| operation == Operation::Put)
                .map(Timestamp::from_unix_nanos),
        };
        let size = message.size();
        if self.limits.discard == DiscardPolicy::New {
            if self
                .limits
                .max_msgs
                .is_some_and(|m| self.messages.len() as u64 >= m)
            {
                return Err(KvError::OperationFailed("maximum messages exceeded".into()));
            }
            if self
                .limits
                .max_bytes
                .is_some_and(|m| self.bytes.saturating_add(size) > m)
            {
                return Err(KvError::OperationFailed("maximum bytes exceeded".into()));
            }
        }
        let seq = message.sequence;
        if let Some(at) = expires_at {
            self.ttl_index.insert((at, seq));
        }
        self.last_seq = seq;
        self.bytes = self.bytes.saturating_add(size);
        self.by_key
            .entry(key.to_owned())
            .or_default()
            .push_back(seq);
        self.messages.insert(
            seq,
            Stored {
                message,
                expires_at,
            },
        );
        if operation == Operation::Purge {
            let older: Vec<u64> = self
                .by_key
                .get(key)
                .map(|seqs| seqs.iter().copied().filter(|s| *s != seq).collect())
                .unwrap_or_default();
            older.into_iter().for_each(|s| self.remove(s));
        }
        let history = usize::from(self.limits.history.max(1));
        while let Some(oldest) = self
            .by_key
            .get(key)
            .filter(|seqs| seqs.len() > history)
            .and_then(|seqs| seqs.front().copied())
        {
            self.remove(oldest);
        }
        self.enforce_limits();
        Ok(seq)
    }

    /// Head eviction under discard-old limits.
    pub(crate) fn enforce_limits(&mut self) {
        if self.limits.discard != DiscardPolicy::Old {
            return;
        }
        while self.over_limit() {
            match self.messages.first_key_value() {
                Some((&seq, _)) => self.remove(seq),
                None => break,
            }
        }
    }

    fn over_limit(&self) -> bool {
        self.limits
            .max_msgs
            .is_some_and(|m| self.messages.len() as u64 > m)
            || self.limits.max_bytes.is_some_and(|m| self.bytes > m)
    }

    /// Remove every message of `key`, markers included.
    pub(crate) fn purge_subject(&mut self, key: &str) -> u64 {
        let seqs: Vec<u64> = self
            .by_key
            .get(key)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let n = seqs.len() as u64;
        seqs.into_iter().for_each(|s| self.remove(s));
        n
    }

    /// Remove every message below `seq`; a `seq` past the end moves the
    /// stream's last sequence to `seq - 1` (as the server does).
    pub(crate) fn purge_below(&mut self, seq: u64) -> u64 {
        let doomed: Vec<u64> = self.messages.range(..seq).map(|(s, _)| *s).collect();
        let n = doomed.len() as u64;
        doomed.into_iter().for_each(|s| self.remove(s));
        if seq > self.last_seq.saturating_add(1) {
            self.last_seq = seq - 1;
        }
        n
    }

    fn remove(&mut self, seq: u64) {
        let Some(stored) = self.messages.remove(&seq) else {
            return;
        };
        self.bytes = self.bytes.saturating_sub(stored.message.size());
        if let Some(at) = stored.expires_at {
            self.ttl_index.remove(&(at, seq));
        }
        let key = &stored.message.key;
        if let Some(seqs) = self.by_key.get_mut(key) {
            seqs.retain(|s| *s != seq);
            if seqs.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    /// The first retained message at or after `from` whose key is in scope.
    pub(crate) fn next_matching(&self, from: u64, scope: &WatchScope) -> Option<&RawMessage> {
        self.messages
            .range(from..)
            .map(|(_, s)| &s.message)
            .find(|m| scope.contains(&m.key))
    }

    /// The sequence of the latest message of every key in scope, ascending.
    pub(crate) fn last_per_key(&self, scope: &WatchScope) -> Vec<u64> {
        let mut seqs: Vec<u64> = self
            .by_key
            .iter()
            .filter(|(k, _)| scope.contains(k))
            .filter_map(|(_, seqs)| seqs.back().copied())
            .collect();
        seqs.sort_unstable();
        seqs
    }

    /// Up to `limit` live latest messages with keys after `after` (or from
    /// the start) that begin with `prefix`, in key order.
    pub(crate) fn live_after(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<&RawMessage> {
        use std::ops::Bound;
        let lower = after.map_or(Bound::Included(prefix), Bound::Excluded);
        self.by_key
            .range::<str, _>((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(_, seqs)| seqs.back().and_then(|s| self.message(*s)))
            .filter(|m| m.operation == Operation::Put && !m.value.is_empty())
            .take(limit)
            .collect()
    }

    /// Every retained message, in sequence order.
    pub(crate) fn messages(&self) -> impl Iterator<Item = &RawMessage> {
        self.messages.values().map(|s| &s.message)
    }
}
