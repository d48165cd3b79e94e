//! The in-memory fold of the append-log store: key -> (version, expiry,
//! value),
//! packed to keep memory close to the live data: keys up to 24 bytes live
//! inline in the map, and version and value share one allocation.

use core::ops::Bound;
use std::collections::BTreeMap;

use compact_str::CompactString;
use slipstream_kv::{Timestamp, VersionToken};

use super::codec;
use crate::store::EntryRef;

/// One allocation per entry: `[version length | expiry flag][version]
/// [expiry u64, when flagged][value]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Packed(Box<[u8]>);

/// The length byte's flag for an entry with an expiry.
const EXPIRES: u8 = 0x80;

impl Packed {
    fn new(version: &VersionToken, expires: Option<Timestamp>, value: &[u8]) -> Self {
        let v = version.as_bytes();
        let mut buf = Vec::with_capacity(1 + v.len() + 8 + value.len());
        // A version is at most 10 bytes: the length fits below the flag.
        let flag = if expires.is_some() { EXPIRES } else { 0 };
        buf.push(v.len() as u8 | flag);
        buf.extend_from_slice(v);
        if let Some(at) = expires {
            buf.extend_from_slice(&at.as_unix_nanos().to_le_bytes());
        }
        buf.extend_from_slice(value);
        Self(buf.into_boxed_slice())
    }

    fn split(&self) -> EntryRef<'_> {
        let head = self.0[0];
        let len = usize::from(head & !EXPIRES);
        let version = VersionToken::from_bytes(&self.0[1..=len]).unwrap_or_default();
        let rest = &self.0[1 + len..];
        let (expires, value) = match rest.split_first_chunk::<8>() {
            Some((at, value)) if head & EXPIRES != 0 => (
                Some(Timestamp::from_unix_nanos(u64::from_le_bytes(*at))),
                value,
            ),
            _ => (None, rest),
        };
        EntryRef {
            value,
            version,
            expires,
        }
    }

    /// The bytes of version, expiry and value.
    fn data_len(&self) -> usize {
        self.0.len() - 1
    }

    fn record_len(&self, key: &str) -> u64 {
        let e = self.split();
        codec::put_record_len(key, &e.version, e.expires, e.value)
    }
}

/// The fold plus the size of its compacted log image.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Fold {
    map: BTreeMap<CompactString, Packed>,
    /// Bytes of the put records a compacted log holds for this fold.
    image_bytes: u64,
    /// Bytes of keys, versions and values.
    live_bytes: u64,
}

impl Fold {
    pub(crate) fn put(
        &mut self,
        key: &str,
        version: &VersionToken,
        expires: Option<Timestamp>,
        value: &[u8],
    ) {
        let packed = Packed::new(version, expires, value);
        let added = codec::put_record_len(key, version, expires, value);
        if let Some(slot) = self.map.get_mut(key) {
            self.image_bytes -= slot.record_len(key);
            self.live_bytes -= (key.len() + slot.data_len()) as u64;
            self.live_bytes += (key.len() + packed.data_len()) as u64;
            *slot = packed;
        } else {
            self.live_bytes += (key.len() + packed.data_len()) as u64;
            self.map.insert(key.into(), packed);
        }
        self.image_bytes += added;
    }

    pub(crate) fn remove(&mut self, key: &str) {
        if let Some(old) = self.map.remove(key) {
            self.image_bytes -= old.record_len(key);
            self.live_bytes -= (key.len() + old.data_len()) as u64;
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<EntryRef<'_>> {
        self.map.get(key).map(Packed::split)
    }

    pub(crate) fn range<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, EntryRef<'a>)> + 'a {
        self.map
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, p)| (&**k, p.split()))
    }

    pub(crate) fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Bytes of keys, versions and values.
    pub(crate) fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    pub(crate) fn image_bytes(&self) -> u64 {
        self.image_bytes
    }
}

/// Builds a fold while a log is read: every record is collected in log
/// order, each commit marks how far the records count, and `finish` sorts
/// the committed ones by key (stable: the last record of a key wins),
/// drops the keys whose last record is a delete, and bulk-loads the rest.
/// That is several times cheaper than folding one by one into the map, and
/// needs no key order in the log. Superseded records are held until the
/// end, so the peak at open is bounded by the log's size, which compaction
/// keeps below twice its image.
#[derive(Debug, Default)]
pub(crate) struct FoldBuilder {
    /// Puts (`Some`) and deletes (`None`) in log order.
    ops: Vec<(CompactString, Option<Packed>)>,
    /// How many of `ops` a commit covers.
    committed: usize,
}

impl FoldBuilder {
    pub(crate) fn put(
        &mut self,
        key: &str,
        version: &VersionToken,
        expires: Option<Timestamp>,
        value: &[u8],
    ) {
        self.ops
            .push((key.into(), Some(Packed::new(version, expires, value))));
    }

    pub(crate) fn remove(&mut self, key: &str) {
        self.ops.push((key.into(), None));
    }

    /// A commit record: everything so far counts.
    pub(crate) fn commit(&mut self) {
        self.committed = self.ops.len();
    }

    /// The fold of the committed records; the rest (a group no commit
    /// closed) is dropped.
    pub(crate) fn finish(mut self) -> Fold {
        let mut ops = std::mem::take(&mut self.ops);
        ops.truncate(self.committed);
        // Stable, and linear on input that is already sorted (an image).
        ops.sort_by(|(a, _), (b, _)| a.cmp(b));
        // A later record of a key hands its entry to the kept (earlier) slot.
        ops.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(&mut later.1, &mut kept.1);
            }
            same
        });
        let mut fold = Fold::default();
        let live = ops.into_iter().filter_map(|(key, packed)| {
            let packed = packed?;
            fold.image_bytes += packed.record_len(&key);
            fold.live_bytes += (key.len() + packed.data_len()) as u64;
            Some((key, packed))
        });
        // Sorted and unique: the map is built in bulk.
        let map = live.collect();
        fold.map = map;
        fold
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn bulk_loading_builder_equals_one_by_one_folding(
            ops in proptest::collection::vec((0u8..40, any::<bool>(), 0usize..4), 0..200),
        ) {
            let mut plain = Fold::default();
            let mut builder = FoldBuilder::default();
            // Puts in any order, repeated keys among them, before the
            // first delete: the bulk path sorts and deduplicates them.
            for (i, (k, is_put, len)) in ops.iter().enumerate() {
                let key = if i < ops.len() / 2 { format!("a{:02}", k % 20) } else { format!("b{k:02}") };
                let version = VersionToken::from_u64(i as u64);
                let value = vec![*k; *len];
                let expires = (k % 3 == 0).then(|| Timestamp::from_unix_nanos(u64::from(*k)));
                if *is_put || i < ops.len() / 2 {
                    plain.put(&key, &version, expires, &value);
                    builder.put(&key, &version, expires, &value);
                } else {
                    plain.remove(&key);
                    builder.remove(&key);
                }
            }
            builder.commit();
            // An unclosed group after the last commit is not part of it.
            builder.put("zz", &VersionToken::from_u64(9999), None, b"torn");
            builder.remove("a00");
            let built = builder.finish();
            prop_assert_eq!(built.image_bytes(), plain.image_bytes());
            prop_assert_eq!(built.live_bytes(), plain.live_bytes());
            prop_assert_eq!(built, plain);
        }
    }
}
