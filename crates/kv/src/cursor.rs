//! `WatchCursor` (V2), its memo, and its versioned byte encoding.

use core::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{CursorDecodeError, KvError};

/// A server timestamp: nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// From nanoseconds since the Unix epoch.
    #[must_use]
    pub const fn from_unix_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// Nanoseconds since the Unix epoch.
    #[must_use]
    pub const fn as_unix_nanos(self) -> u64 {
        self.0
    }

    /// How long before `now` this timestamp lies (zero if it is later).
    #[must_use]
    pub const fn age_at(self, now: Self) -> Duration {
        Duration::from_nanos(now.0.saturating_sub(self.0))
    }

    /// How long after this timestamp `later` lies (zero if it is earlier).
    #[must_use]
    pub const fn until(self, later: Self) -> Duration {
        Duration::from_nanos(later.0.saturating_sub(self.0))
    }

    /// This timestamp plus `d`, saturating.
    #[must_use]
    pub fn plus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }

    /// The wall clock now.
    #[must_use]
    pub fn now() -> Self {
        SystemTime::now().into()
    }
}

impl From<SystemTime> for Timestamp {
    /// Times before the epoch become 0; times past year 2554 saturate.
    fn from(t: SystemTime) -> Self {
        let nanos = t
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self(nanos)
    }
}

/// Which incarnation of a bucket a cursor was taken against: the stream's
/// name and creation time. A deleted-and-recreated bucket has the same name
/// and a different creation time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BucketIdentity {
    /// The stream's name (`KV_<bucket>`).
    pub stream: String,
    /// When the server created the stream.
    pub created: Timestamp,
}

impl fmt::Display for BucketIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.stream, self.created.as_unix_nanos())
    }
}

/// What the repair rules need to know besides the revision (V2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct CursorMemo {
    seen_evicting: bool,
    identity: Option<BucketIdentity>,
    message_time: Option<Timestamp>,
    unchecked_floor: Option<u64>,
    repair_due: bool,
    expiries_unrecorded: bool,
    holds_expiring: bool,
}

impl CursorMemo {
    fn is_empty(&self) -> bool {
        !self.seen_evicting
            && self.identity.is_none()
            && self.message_time.is_none()
            && self.unchecked_floor.is_none()
            && !self.repair_due
            && !self.expiries_unrecorded
            && !self.holds_expiring
    }
}

/// A position in a bucket's history: every retained message at or below the
/// revision has been applied (V2).
///
/// Opaque to users: persist it with [`WatchCursor::to_bytes`] and hand it
/// back through [`WatchCursor::from_bytes`]. It carries a memo for the repair
/// rules: whether retention was ever seen evicting current values, the bucket
/// identity it was taken against, the server time of the message at the
/// cursor, a relist's floor not yet checked, and a repair made due by
/// messages that left the log unseen. A plain-revision cursor
/// keeps the memo off the heap.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct WatchCursor {
    revision: Option<u64>,
    memo: Option<Box<CursorMemo>>,
}

/// Version 2 cursors come with folds that record per-message expiries; a
/// version 1 cursor reads as [`WatchCursor::expiries_unrecorded`].
const FORMAT_VERSION: u8 = 2;
const FORMAT_BEFORE_EXPIRIES: u8 = 1;
const FLAG_REVISION: u8 = 1 << 0;
const FLAG_SEEN_EVICTING: u8 = 1 << 1;
const FLAG_IDENTITY: u8 = 1 << 2;
const FLAG_MESSAGE_TIME: u8 = 1 << 3;
const FLAG_UNCHECKED_FLOOR: u8 = 1 << 4;
const FLAG_REPAIR_DUE: u8 = 1 << 5;
const FLAG_EXPIRIES_UNRECORDED: u8 = 1 << 6;
const FLAG_HOLDS_EXPIRING: u8 = 1 << 7;
const KNOWN_FLAGS: u8 = FLAG_EXPIRIES_UNRECORDED
    | FLAG_HOLDS_EXPIRING
    | FLAG_REVISION
    | FLAG_SEEN_EVICTING
    | FLAG_IDENTITY
    | FLAG_MESSAGE_TIME
    | FLAG_UNCHECKED_FLOOR
    | FLAG_REPAIR_DUE;

impl WatchCursor {
    /// No position: nothing applied yet.
    #[must_use]
    pub const fn none() -> Self {
        Self {
            revision: None,
            memo: None,
        }
    }

    /// A cursor at `revision` with an empty memo.
    #[must_use]
    pub const fn at(revision: u64) -> Self {
        Self {
            revision: Some(revision),
            memo: None,
        }
    }

    /// The revision, if any.
    #[must_use]
    pub const fn revision(&self) -> Option<u64> {
        self.revision
    }

    /// The rank the kernel compares: the revision, or 0 without one.
    #[must_use]
    pub fn rank(&self) -> u64 {
        self.revision.unwrap_or(0)
    }

    /// Whether retention was ever seen evicting current values (R5).
    #[must_use]
    pub fn seen_evicting(&self) -> bool {
        self.memo.as_ref().is_some_and(|m| m.seen_evicting)
    }

    /// The bucket identity the cursor was taken against, when known.
    #[must_use]
    pub fn identity(&self) -> Option<&BucketIdentity> {
        self.memo.as_ref().and_then(|m| m.identity.as_ref())
    }

    /// The server time of the message at the cursor, when known.
    #[must_use]
    pub fn message_time(&self) -> Option<Timestamp> {
        self.memo.as_ref().and_then(|m| m.message_time)
    }

    /// After a relist, until a caught-up watch has checked it: the first
    /// sequence the bucket may have. A purge past it between the relist's
    /// listing and its state-sync took an entry the fold still lacks.
    #[must_use]
    pub fn unchecked_floor(&self) -> Option<u64> {
        self.memo.as_ref().and_then(|m| m.unchecked_floor)
    }

    /// Record (or, with `None`, clear) the floor a relist left unchecked.
    #[must_use]
    pub fn with_unchecked_floor(mut self, floor: Option<u64>) -> Self {
        self.update_memo(|m| m.unchecked_floor = floor);
        self
    }

    /// Whether a repair is due once the bucket is quiet: messages left a
    /// bucket that evicts nothing current before the fold saw them, so a
    /// key whose latest message expired (or whose delete marker a client
    /// purged) unseen may still be in the fold (K11 generalised).
    /// Committed with the cursor that passes the gap, so a restart keeps it.
    #[must_use]
    pub fn repair_due(&self) -> bool {
        self.memo.as_ref().is_some_and(|m| m.repair_due)
    }

    /// Record (or clear) a due repair.
    #[must_use]
    pub fn with_repair_due(mut self, due: bool) -> Self {
        self.update_memo(|m| m.repair_due = due);
        self
    }

    /// Whether the fold this cursor belongs to was written by a build that
    /// did not record per-message expiries (`Nats-TTL`): its entries may
    /// lack the expiry the bucket gave them. Set on every cursor of format
    /// 1; cleared once the fold's expiries were read again from the bucket
    /// (or the bucket allows no per-message TTL).
    #[must_use]
    pub fn expiries_unrecorded(&self) -> bool {
        self.memo.as_ref().is_some_and(|m| m.expiries_unrecorded)
    }

    /// Record (or clear) that the fold's expiries are unrecorded.
    #[must_use]
    pub fn with_expiries_unrecorded(mut self, unrecorded: bool) -> Self {
        self.update_memo(|m| m.expiries_unrecorded = unrecorded);
        self
    }

    /// Whether the fold may hold entries with a per-message expiry: a node
    /// starting from this cursor reads the fold's expiries only then.
    #[must_use]
    pub fn holds_expiring(&self) -> bool {
        self.memo.as_ref().is_some_and(|m| m.holds_expiring)
    }

    /// Record whether the fold holds entries with an expiry.
    #[must_use]
    pub fn with_holds_expiring(mut self, holds: bool) -> Self {
        self.update_memo(|m| m.holds_expiring = holds);
        self
    }

    /// The same memo at a new revision and message time. The rest of the
    /// memo (`seen_evicting`, identity, an unchecked floor) carries over.
    #[must_use]
    pub fn advanced(&self, revision: u64, message_time: Option<Timestamp>) -> Self {
        let mut next = self.clone();
        next.revision = Some(revision);
        next.update_memo(|m| m.message_time = message_time);
        next
    }

    /// Record that retention has evicted current values. Never unset (R5).
    #[must_use]
    pub fn with_seen_evicting(mut self) -> Self {
        self.update_memo(|m| m.seen_evicting = true);
        self
    }

    /// Record the bucket identity.
    #[must_use]
    pub fn with_identity(mut self, identity: BucketIdentity) -> Self {
        self.update_memo(|m| m.identity = Some(identity));
        self
    }

    /// Record the server time of the message at the cursor.
    #[must_use]
    pub fn with_message_time(mut self, time: Option<Timestamp>) -> Self {
        self.update_memo(|m| m.message_time = time);
        self
    }

    fn update_memo(&mut self, f: impl FnOnce(&mut CursorMemo)) {
        let mut memo = self.memo.take().map(|b| *b).unwrap_or_default();
        f(&mut memo);
        self.memo = (!memo.is_empty()).then(|| Box::new(memo));
    }

    /// The stable byte encoding: a format version, flags, then the fields
    /// the flags announce.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut flags = 0;
        let mut out = Vec::with_capacity(10);
        out.push(FORMAT_VERSION);
        out.push(0);
        if let Some(rev) = self.revision {
            flags |= FLAG_REVISION;
            out.extend_from_slice(&rev.to_be_bytes());
        }
        if self.seen_evicting() {
            flags |= FLAG_SEEN_EVICTING;
        }
        if let Some(t) = self.message_time() {
            flags |= FLAG_MESSAGE_TIME;
            out.extend_from_slice(&t.as_unix_nanos().to_be_bytes());
        }
        if let Some(id) = self.identity() {
            flags |= FLAG_IDENTITY;
            out.extend_from_slice(&id.created.as_unix_nanos().to_be_bytes());
            let name = id.stream.as_bytes();
            let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&name[..usize::from(len)]);
        }
        if let Some(floor) = self.unchecked_floor() {
            flags |= FLAG_UNCHECKED_FLOOR;
            out.extend_from_slice(&floor.to_be_bytes());
        }
        if self.repair_due() {
            flags |= FLAG_REPAIR_DUE;
        }
        if self.expiries_unrecorded() {
            flags |= FLAG_EXPIRIES_UNRECORDED;
        }
        if self.holds_expiring() {
            flags |= FLAG_HOLDS_EXPIRING;
        }
        out[1] = flags;
        out
    }

    /// Decode [`WatchCursor::to_bytes`] output.
    ///
    /// # Errors
    /// [`KvError::InvalidCursor`] for empty input, an unknown format version,
    /// unknown flags, truncation, trailing bytes or a non-UTF-8 identity.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KvError> {
        decode(bytes).map_err(KvError::InvalidCursor)
    }
}

fn decode(bytes: &[u8]) -> Result<WatchCursor, CursorDecodeError> {
    let (&version, rest) = bytes.split_first().ok_or(CursorDecodeError::Empty)?;
    let known = match version {
        FORMAT_VERSION => KNOWN_FLAGS,
        FORMAT_BEFORE_EXPIRIES => KNOWN_FLAGS & !(FLAG_EXPIRIES_UNRECORDED | FLAG_HOLDS_EXPIRING),
        _ => return Err(CursorDecodeError::UnknownVersion(version)),
    };
    let (&flags, mut rest) = rest.split_first().ok_or(CursorDecodeError::Truncated)?;
    if flags & !known != 0 {
        return Err(CursorDecodeError::UnknownFlags(flags & !known));
    }
    let mut cursor = WatchCursor::none();
    if version == FORMAT_BEFORE_EXPIRIES || flags & FLAG_EXPIRIES_UNRECORDED != 0 {
        cursor = cursor.with_expiries_unrecorded(true);
    }
    if flags & FLAG_HOLDS_EXPIRING != 0 {
        cursor = cursor.with_holds_expiring(true);
    }
    if flags & FLAG_REVISION != 0 {
        cursor.revision = Some(take_u64(&mut rest)?);
    }
    if flags & FLAG_SEEN_EVICTING != 0 {
        cursor = cursor.with_seen_evicting();
    }
    if flags & FLAG_MESSAGE_TIME != 0 {
        let t = Timestamp::from_unix_nanos(take_u64(&mut rest)?);
        cursor = cursor.with_message_time(Some(t));
    }
    if flags & FLAG_IDENTITY != 0 {
        let created = Timestamp::from_unix_nanos(take_u64(&mut rest)?);
        let len = usize::from(u16::from_be_bytes(take::<2>(&mut rest)?));
        if rest.len() < len {
            return Err(CursorDecodeError::Truncated);
        }
        let (name, tail) = rest.split_at(len);
        rest = tail;
        let stream = core::str::from_utf8(name)
            .map_err(|_| CursorDecodeError::InvalidIdentity)?
            .to_owned();
        cursor = cursor.with_identity(BucketIdentity { stream, created });
    }
    if flags & FLAG_UNCHECKED_FLOOR != 0 {
        cursor = cursor.with_unchecked_floor(Some(take_u64(&mut rest)?));
    }
    if flags & FLAG_REPAIR_DUE != 0 {
        cursor = cursor.with_repair_due(true);
    }
    if !rest.is_empty() {
        return Err(CursorDecodeError::TrailingBytes);
    }
    Ok(cursor)
}

fn take<const N: usize>(rest: &mut &[u8]) -> Result<[u8; N], CursorDecodeError> {
    let (head, tail) = rest
        .split_first_chunk::<N>()
        .ok_or(CursorDecodeError::Truncated)?;
    *rest = tail;
    Ok(*head)
}

fn take_u64(rest: &mut &[u8]) -> Result<u64, CursorDecodeError> {
    take::<8>(rest).map(u64::from_be_bytes)
}

impl fmt::Debug for WatchCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("WatchCursor");
        d.field("revision", &self.revision);
        if let Some(m) = &self.memo {
            d.field("seen_evicting", &m.seen_evicting)
                .field("identity", &m.identity)
                .field("message_time", &m.message_time)
                .field("unchecked_floor", &m.unchecked_floor)
                .field("repair_due", &m.repair_due)
                .field("expiries_unrecorded", &m.expiries_unrecorded)
                .field("holds_expiring", &m.holds_expiring);
        }
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_revision_cursor_is_ten_bytes_and_memo_free() {
        let c = WatchCursor::at(42);
        assert!(c.memo.is_none());
        assert_eq!(c.to_bytes().len(), 10);
        assert_eq!(WatchCursor::from_bytes(&c.to_bytes()).unwrap(), c);
    }

    #[test]
    fn none_round_trips() {
        let c = WatchCursor::none();
        assert_eq!(WatchCursor::from_bytes(&c.to_bytes()).unwrap(), c);
        assert_eq!(c.rank(), 0);
    }

    #[test]
    fn garbage_is_rejected_with_a_typed_reason() {
        let err = |b: &[u8]| match WatchCursor::from_bytes(b) {
            Err(KvError::InvalidCursor(r)) => r,
            other => panic!("expected InvalidCursor, got {other:?}"),
        };
        assert_eq!(err(&[]), CursorDecodeError::Empty);
        assert_eq!(err(&[3, 0]), CursorDecodeError::UnknownVersion(3));
        assert_eq!(err(&[0, 0]), CursorDecodeError::UnknownVersion(0));
        assert_eq!(err(&[0xff]), CursorDecodeError::UnknownVersion(0xff));
        assert_eq!(err(&[1]), CursorDecodeError::Truncated);
        assert_eq!(err(&[2]), CursorDecodeError::Truncated);
        assert_eq!(err(&[1, 0x80]), CursorDecodeError::UnknownFlags(0x80));
        // Format 1 knew nothing of the expiries flag.
        assert_eq!(err(&[1, 0x40]), CursorDecodeError::UnknownFlags(0x40));
        assert_eq!(err(&[1, FLAG_REVISION, 0, 0]), CursorDecodeError::Truncated);
        assert_eq!(err(&[1, 0, 9]), CursorDecodeError::TrailingBytes);
        let mut bad_name = vec![1, FLAG_IDENTITY];
        bad_name.extend_from_slice(&[0; 8]);
        bad_name.extend_from_slice(&[0, 2, 0xff, 0xfe]);
        assert_eq!(err(&bad_name), CursorDecodeError::InvalidIdentity);
    }

    #[test]
    fn a_cursor_of_format_1_reads_as_a_fold_without_expiries_and_keeps_saying_so() {
        // Format 1, revision 7: what a build before expiries wrote.
        let mut old = vec![1, FLAG_REVISION];
        old.extend_from_slice(&7u64.to_be_bytes());
        let c = WatchCursor::from_bytes(&old).unwrap();
        assert_eq!(c.revision(), Some(7));
        assert!(c.expiries_unrecorded());
        assert!(!WatchCursor::at(7).expiries_unrecorded());
        // Rewritten in format 2, the mark survives until cleared.
        let again = WatchCursor::from_bytes(&c.advanced(9, None).to_bytes()).unwrap();
        assert!(again.expiries_unrecorded());
        assert_eq!(again.revision(), Some(9));
        let cleared = again.with_expiries_unrecorded(false);
        assert_eq!(cleared, WatchCursor::at(9));
        assert!(
            !WatchCursor::from_bytes(&cleared.to_bytes())
                .unwrap()
                .expiries_unrecorded()
        );
    }

    #[test]
    fn advancing_keeps_the_eviction_memo() {
        let c = WatchCursor::at(3).with_seen_evicting().advanced(9, None);
        assert_eq!(c.revision(), Some(9));
        assert!(c.seen_evicting());
    }

    #[test]
    fn an_unchecked_floor_survives_advancing_and_encoding_until_cleared() {
        let c = WatchCursor::at(3)
            .with_unchecked_floor(Some(7))
            .advanced(9, None);
        assert_eq!(c.unchecked_floor(), Some(7));
        let decoded = WatchCursor::from_bytes(&c.to_bytes()).unwrap();
        assert_eq!(decoded.unchecked_floor(), Some(7));
        let cleared = decoded.with_unchecked_floor(None);
        assert_eq!(cleared, WatchCursor::at(9));
        assert_eq!(cleared.to_bytes().len(), 10);
    }

    #[test]
    fn a_due_repair_survives_advancing_and_encoding_until_cleared() {
        let c = WatchCursor::at(3).with_repair_due(true).advanced(9, None);
        assert!(c.repair_due());
        let bytes = c.to_bytes();
        assert_eq!(bytes[1], FLAG_REVISION | FLAG_REPAIR_DUE);
        let decoded = WatchCursor::from_bytes(&bytes).unwrap();
        assert!(decoded.repair_due());
        let cleared = decoded.with_repair_due(false);
        assert_eq!(cleared, WatchCursor::at(9));
        // A cursor written before the flag existed decodes without it.
        assert!(
            !WatchCursor::from_bytes(&WatchCursor::at(9).to_bytes())
                .unwrap()
                .repair_due()
        );
    }

    fn arb_cursor() -> impl Strategy<Value = WatchCursor> {
        (
            proptest::option::of(any::<u64>()),
            any::<bool>(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(("[a-zA-Z0-9_-]{0,40}", any::<u64>())),
            proptest::option::of(any::<u64>()),
            any::<bool>(),
        )
            .prop_map(|(rev, evicting, time, id, floor, due)| {
                let mut c = rev.map_or_else(WatchCursor::none, WatchCursor::at);
                if evicting {
                    c = c.with_seen_evicting();
                }
                c = c.with_message_time(time.map(Timestamp::from_unix_nanos));
                if let Some((stream, created)) = id {
                    c = c.with_identity(BucketIdentity {
                        stream,
                        created: Timestamp::from_unix_nanos(created),
                    });
                }
                c.with_unchecked_floor(floor).with_repair_due(due)
            })
    }

    proptest! {
        #[test]
        fn encoding_round_trips(c in arb_cursor()) {
            prop_assert_eq!(WatchCursor::from_bytes(&c.to_bytes()).unwrap(), c);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(c) = WatchCursor::from_bytes(&bytes) {
                // Whatever decodes re-encodes to the same bytes: one encoding per cursor.
                prop_assert_eq!(c.to_bytes(), bytes);
            }
        }
    }
}
