//! Per-message TTL in the fold: the engine removes an entry when the
//! expiry its put carried (`Nats-TTL`: the message's server time plus the
//! TTL) has passed, through `parse`/`apply`/commit like any delete (E1).
//!
//! The server removes such a message at its own clock, and a bucket
//! without delete markers says nothing when it does, so nothing arrives on
//! the watch: the fold has to know the expiry itself. Expiries are compared
//! with the bucket's clock as the backend keeps it (`KvWatcher::now`; on
//! NATS this node's wall clock), so a clock ahead of the server's removes
//! an entry that much early, and one behind, that much late. A timer
//! wakes the engine at the soonest expiry, and every status refresh looks
//! too, which is what notices a simulated clock moved.
//!
//! The index holds only keys whose entry expires. A node starts from a
//! cursor that says whether the fold holds any (`holds_expiring`), and
//! reads them from the store only then. A fold written before expiries
//! were recorded (`expiries_unrecorded`) takes them from one listing of
//! the bucket, without anything reaching `apply`: the application already
//! holds those entries, only their expiry was unknown.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use slipstream_kv::{KvMarker, KvUpdate, Timestamp, VersionToken};
use tokio::time::Instant;

/// The fold's keys that expire, soonest first.
#[derive(Debug, Default)]
pub(crate) struct Expiries {
    by_time: BTreeSet<(Timestamp, String)>,
    by_key: HashMap<String, Timestamp>,
}

impl Expiries {
    /// Follow an update into the fold: a put replaces the key's expiry
    /// (with none when it has none), anything else removes it.
    pub(crate) fn note(&mut self, update: &KvUpdate) {
        self.set(update.key(), update.expires());
    }

    /// Set (or, with `None`, clear) the key's expiry.
    pub(crate) fn set(&mut self, key: &str, expires: Option<Timestamp>) {
        // Most buckets never set a TTL: a delivery then costs no lookup.
        if expires.is_none() && self.by_key.is_empty() {
            return;
        }
        match expires {
            Some(at) => {
                if let Some(old) = self.by_key.insert(key.to_owned(), at) {
                    if old == at {
                        return;
                    }
                    self.by_time.remove(&(old, key.to_owned()));
                }
                self.by_time.insert((at, key.to_owned()));
            }
            None => {
                if let Some(old) = self.by_key.remove(key) {
                    self.by_time.remove(&(old, key.to_owned()));
                }
            }
        }
    }

    /// The soonest expiry.
    pub(crate) fn next(&self) -> Option<Timestamp> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Whether no key of the fold expires.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Take every key whose expiry is at or before `now`, soonest first.
    pub(crate) fn take_due(&mut self, now: Timestamp) -> Vec<(String, Timestamp)> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.by_time.first() {
            if *at > now {
                break;
            }
            let Some((at, key)) = self.by_time.pop_first() else {
                break;
            };
            self.by_key.remove(&key);
            due.push((key, at));
        }
        due
    }
}

/// The delete an expiry stands for: no version (it moves no cursor), the
/// expiry as its time.
pub(crate) fn expired(key: String, at: Timestamp) -> KvUpdate {
    KvUpdate::Delete(KvMarker {
        key,
        version: VersionToken::unknown(),
        created: Some(at),
    })
}

/// When the timer for an expiry at `at` should fire, the bucket's clock
/// reading `now`.
pub(crate) fn deadline_for(at: Timestamp, now: Timestamp) -> Instant {
    let wait = now.until(at);
    // Far expiries are looked at again within the hour, so a wall clock
    // stepped meanwhile is noticed.
    Instant::now() + wait.min(Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, at: Option<u64>) -> KvUpdate {
        KvUpdate::Put(slipstream_kv::KvEntry {
            key: key.into(),
            value: bytes::Bytes::from_static(b"v"),
            version: VersionToken::from_u64(1),
            created: None,
            expires: at.map(Timestamp::from_unix_nanos),
        })
    }

    #[test]
    fn a_rewrite_moves_or_clears_the_expiry_and_a_delete_clears_it() {
        let mut e = Expiries::default();
        e.note(&put("a", Some(10)));
        e.note(&put("b", Some(20)));
        e.note(&put("a", Some(30)));
        assert_eq!(e.next(), Some(Timestamp::from_unix_nanos(20)));
        e.note(&put("b", None));
        assert_eq!(e.next(), Some(Timestamp::from_unix_nanos(30)));
        e.note(&KvUpdate::synthetic_delete("a"));
        assert!(e.is_empty());
        assert_eq!(e.next(), None);
    }

    #[test]
    fn only_what_is_due_is_taken_soonest_first() {
        let mut e = Expiries::default();
        for (k, at) in [("c", 30), ("a", 10), ("b", 20)] {
            e.note(&put(k, Some(at)));
        }
        let due = e.take_due(Timestamp::from_unix_nanos(20));
        let keys: Vec<_> = due.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(e.next(), Some(Timestamp::from_unix_nanos(30)));
        assert!(e.take_due(Timestamp::from_unix_nanos(29)).is_empty());
    }
}
