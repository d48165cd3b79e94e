//! A tiny JetStream KV bucket shared by the models: one global sequence,
//! per-key history of one message, delete and purge markers, head eviction
//! (age or limits), an operator's purge of the head, marker compaction and
//! bucket recreation.
//!
//! The log keeps every message ever written with how it was lost, so the
//! models can compute the bucket's truth (every write minus every real
//! delete) from the full history, exactly as the oracle O1 describes.

use slipstream_protocol::Eviction;

/// Number of keys every model uses: two are enough for a lost delete on one
/// key to hide behind traffic on the other.
pub(crate) const KEYS: usize = 2;

/// What a write does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WriteOp {
    /// A put of a new value.
    Put,
    /// A delete marker.
    Delete,
    /// A purge marker (rollup: removes every earlier message of the key).
    Purge,
}

impl WriteOp {
    pub(crate) const fn is_put(self) -> bool {
        matches!(self, Self::Put)
    }
}

/// Why a message is no longer retained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kept {
    /// Still in the stream.
    Retained,
    /// Removed because a later message of the same key replaced it
    /// (per-key history limit or purge rollup).
    Superseded,
    /// Removed from the head by age or a stream limit.
    HeadEvicted,
    /// A delete or purge marker removed by marker compaction.
    Compacted,
    /// Removed from the head by an operator's stream purge.
    Purged,
}

/// One message of the log; its sequence is its index + 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Msg {
    pub(crate) key: u8,
    pub(crate) op: WriteOp,
    pub(crate) kept: Kept,
}

/// The bucket. `epoch` changes when the bucket is deleted and recreated (its
/// identity); the log then starts over at sequence 1.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Bucket {
    pub(crate) log: Vec<Msg>,
    pub(crate) eviction: Eviction,
    pub(crate) epoch: u8,
}

/// A bucket only supersession, deletes and marker compaction shrink.
pub(crate) const RETAINING: Eviction = Eviction {
    max_age: false,
    discard_old_limit: false,
    per_message_ttl: false,
};

/// A bucket whose values age out (`max_age`).
pub(crate) const AGEING: Eviction = Eviction {
    max_age: true,
    ..RETAINING
};

/// A bucket that allows per-message TTL and has limit markers, nothing
/// else: an expired put leaves a server delete marker.
pub(crate) const TTL_MARKERS: Eviction = Eviction {
    per_message_ttl: true,
    ..RETAINING
};

/// A key's value as the truth or a fold sees it: the sequence of the put
/// and the bucket epoch it was written in.
pub(crate) type Version = (u64, u8);

impl Bucket {
    pub(crate) const fn new(eviction: Eviction) -> Self {
        Self {
            log: Vec::new(),
            eviction,
            epoch: 0,
        }
    }

    /// K7's input, from the same kernel rule the backends report with.
    pub(crate) const fn evicting(&self) -> bool {
        self.eviction.evicts_current_values()
    }

    /// A put with a TTL runs out: the server replaces the key's current
    /// value by a delete marker (limit markers), which marker compaction
    /// later removes as the marker's own TTL would. False unless the
    /// bucket allows TTL and the key's latest message is a retained put.
    pub(crate) fn expire(&mut self, key: u8) -> bool {
        let current_put = self
            .log
            .iter()
            .rev()
            .find(|m| m.key == key)
            .is_some_and(|m| m.kept == Kept::Retained && m.op.is_put());
        if !self.eviction.per_message_ttl || !current_put {
            return false;
        }
        self.write(key, WriteOp::Delete);
        true
    }

    /// The last sequence ever assigned (0 for an empty stream).
    pub(crate) fn last(&self) -> u64 {
        self.log.len() as u64
    }

    /// The first retained sequence; `last + 1` for a stream with nothing
    /// retained, as the server reports it.
    pub(crate) fn first(&self) -> u64 {
        self.log
            .iter()
            .position(|m| m.kept == Kept::Retained)
            .map_or(self.last() + 1, |i| i as u64 + 1)
    }

    pub(crate) fn msg(&self, seq: u64) -> Msg {
        self.log[(seq - 1) as usize]
    }

    /// Appends a write; the per-key history limit of one supersedes every
    /// earlier retained message of the key (interior eviction, or a head
    /// advance when the superseded message was the head).
    pub(crate) fn write(&mut self, key: u8, op: WriteOp) -> u64 {
        for m in self.log.iter_mut().filter(|m| m.key == key) {
            if m.kept == Kept::Retained {
                m.kept = Kept::Superseded;
            }
        }
        self.log.push(Msg {
            key,
            op,
            kept: Kept::Retained,
        });
        self.last()
    }

    /// Removes the head message, current value or not (age or a limit on an
    /// evicting bucket). False when nothing is retained.
    pub(crate) fn age_out(&mut self) -> bool {
        match self.log.iter_mut().find(|m| m.kept == Kept::Retained) {
            Some(m) => {
                m.kept = Kept::HeadEvicted;
                true
            }
            None => false,
        }
    }

    /// Removes every retained delete and purge marker (an operator purging
    /// deletes). The listing stays the truth: a compacted key is deleted.
    pub(crate) fn compact_markers(&mut self) -> bool {
        let mut changed = false;
        for m in &mut self.log {
            if m.kept == Kept::Retained && !m.op.is_put() {
                m.kept = Kept::Compacted;
                changed = true;
            }
        }
        changed
    }

    /// Purges the head message, current value or not (an operator's
    /// stream purge up to a sequence). False when nothing is retained.
    pub(crate) fn purge_head(&mut self) -> bool {
        match self.log.iter_mut().find(|m| m.kept == Kept::Retained) {
            Some(m) => {
                m.kept = Kept::Purged;
                true
            }
            None => false,
        }
    }

    /// Removes delete and purge markers from the head only, while the head
    /// is a marker: the first sequence moves past every marker removed.
    pub(crate) fn compact_head_markers(&mut self) -> bool {
        let mut changed = false;
        while let Some(m) = self.log.iter_mut().find(|m| m.kept == Kept::Retained) {
            if m.op.is_put() {
                break;
            }
            m.kept = Kept::Compacted;
            changed = true;
        }
        changed
    }

    /// Whether a fold at `cursor` plus the retained messages after it
    /// reproduces the truth of the keys below `scope`: nothing after the
    /// cursor was lost except by supersession.
    pub(crate) fn tail_completes(
        &self,
        fold: &[Option<Version>; KEYS],
        cursor: u64,
        scope: usize,
    ) -> bool {
        let mut folded = *fold;
        let mut seq = cursor.saturating_add(1);
        while let Some((at, m)) = self.next_retained_in(seq, scope) {
            folded[m.key as usize] = m.op.is_put().then_some((at, self.epoch));
            seq = at + 1;
        }
        (0..scope).all(|k| folded[k] == self.truth(k as u8))
    }

    /// Deletes and recreates the bucket: new identity, empty log.
    pub(crate) fn recreate(&mut self) {
        self.log.clear();
        self.epoch += 1;
    }

    /// The first retained message at or after `from`.
    pub(crate) fn next_retained(&self, from: u64) -> Option<(u64, Msg)> {
        self.next_retained_in(from, KEYS)
    }

    /// The first retained message at or after `from` whose key is below
    /// `scope` (a filtered watch).
    pub(crate) fn next_retained_in(&self, from: u64, scope: usize) -> Option<(u64, Msg)> {
        let start = from.max(1);
        (start..=self.last())
            .map(|seq| (seq, self.msg(seq)))
            .find(|(_, m)| m.kept == Kept::Retained && (m.key as usize) < scope)
    }

    /// The key's retained message, what a listing delivers for it (the
    /// history of one keeps at most one).
    pub(crate) fn latest_retained(&self, key: u8) -> Option<(u64, Msg)> {
        self.log
            .iter()
            .enumerate()
            .rev()
            .find(|(_, m)| m.key == key && m.kept == Kept::Retained)
            .map(|(i, m)| (i as u64 + 1, *m))
    }

    /// Whether a state-sync listing would show `key` live: its latest
    /// retained message is a put.
    pub(crate) fn listed_live(&self, key: u8) -> bool {
        self.log
            .iter()
            .rev()
            .find(|m| m.key == key && m.kept == Kept::Retained)
            .is_some_and(|m| m.op.is_put())
    }

    /// The key's current state from the full history: the version of its
    /// last put, or `None` when its last operation is a delete or it was
    /// never written. Age, limits and purges do not delete; only markers do.
    pub(crate) fn truth(&self, key: u8) -> Option<Version> {
        self.log
            .iter()
            .enumerate()
            .rev()
            .find(|(_, m)| m.key == key)
            .and_then(|(i, m)| m.op.is_put().then_some((i as u64 + 1, self.epoch)))
    }

    /// Whether the key's value left the bucket: its last message is a put
    /// that is no longer retained. A fold may keep that value (it saw it)
    /// or lack it (a repair's listing found it gone), never hold an older
    /// one (O1).
    pub(crate) fn value_left(&self, key: u8) -> bool {
        self.log
            .iter()
            .rev()
            .find(|m| m.key == key)
            .is_some_and(|m| m.op.is_put() && m.kept != Kept::Retained)
    }

    /// The key's latest message if it is still retained and at or below
    /// `cursor`: the state a cursor at `cursor` claims the fold holds.
    pub(crate) fn settled_at(&self, key: u8, cursor: u64) -> Option<(u64, Msg)> {
        let (i, m) = self
            .log
            .iter()
            .enumerate()
            .rev()
            .find(|(_, m)| m.key == key)?;
        let seq = i as u64 + 1;
        (m.kept == Kept::Retained && seq <= cursor).then_some((seq, *m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_of_one_supersedes_and_advances_first() {
        let mut b = Bucket::new(RETAINING);
        b.write(0, WriteOp::Put);
        b.write(1, WriteOp::Put);
        assert_eq!(b.first(), 1);
        b.write(0, WriteOp::Delete);
        assert_eq!(b.first(), 2);
        assert!(!b.listed_live(0));
        assert!(b.listed_live(1));
        assert_eq!(b.truth(0), None);
        assert_eq!(b.truth(1), Some((2, 0)));
    }

    #[test]
    fn ageing_out_keeps_the_truth_but_not_the_listing() {
        let mut b = Bucket::new(AGEING);
        b.write(0, WriteOp::Put);
        assert!(b.age_out());
        assert_eq!(b.first(), 2);
        assert!(!b.listed_live(0));
        assert_eq!(b.truth(0), Some((1, 0)));
    }

    #[test]
    fn an_expired_ttl_put_leaves_a_marker_and_the_listing_the_truth() {
        let mut b = Bucket::new(TTL_MARKERS);
        assert!(!b.evicting(), "per-message TTL is not eviction (K7)");
        b.write(0, WriteOp::Put);
        assert!(b.expire(0));
        assert!(!b.expire(0), "a marker does not expire as a value");
        assert_eq!(b.truth(0), None, "the writer asked for the expiry");
        assert!(!b.listed_live(0));
        assert!(!Bucket::new(RETAINING).expire(0));
    }

    #[test]
    fn a_purged_head_value_leaves_the_bucket_and_the_first_sequence_moves() {
        let mut b = Bucket::new(RETAINING);
        b.write(0, WriteOp::Put);
        b.write(1, WriteOp::Put);
        assert!(b.purge_head());
        assert_eq!(b.first(), 2);
        assert_eq!(b.truth(0), Some((1, 0)), "a purge is not a delete");
        assert!(b.value_left(0));
        assert!(!b.value_left(1));
        assert_eq!(b.latest_retained(0), None);
        assert_eq!(b.latest_retained(1).map(|(seq, _)| seq), Some(2));
        assert!(b.purge_head());
        assert!(!b.purge_head());
    }

    #[test]
    fn compacted_markers_leave_an_empty_stream_reporting_last_plus_one() {
        let mut b = Bucket::new(RETAINING);
        b.write(0, WriteOp::Put);
        b.write(0, WriteOp::Purge);
        assert!(b.compact_markers());
        assert_eq!(b.first(), 3);
        assert_eq!(b.next_retained(1), None);
    }
}
