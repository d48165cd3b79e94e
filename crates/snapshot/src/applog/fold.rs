//! The in-memory fold of the append-log store: key -> (version, value),
//! packed to keep memory close to the live data: keys up to 24 bytes live
//! inline in the map, and version and value share one allocation.

use core::ops::Bound;
use std::collections::BTreeMap;

use compact_str::CompactString;
use slipstream_kv::VersionToken;

use super::codec;
use crate::store::EntryRef;

/// One allocation per entry: `[version length][version][value]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Packed(Box<[u8]>);

impl Packed {
    fn new(version: &VersionToken, value: &[u8]) -> Self {
        let v = version.as_bytes();
        let mut buf = Vec::with_capacity(1 + v.len() + value.len());
        // A version is at most 10 bytes: the length fits a byte.
        buf.push(v.len() as u8);
        buf.extend_from_slice(v);
        buf.extend_from_slice(value);
        Self(buf.into_boxed_slice())
    }

    fn split(&self) -> (VersionToken, &[u8]) {
        let len = usize::from(self.0[0]);
        let version = VersionToken::from_bytes(&self.0[1..=len]).unwrap_or_default();
        (version, &self.0[1 + len..])
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
    pub(crate) fn put(&mut self, key: &str, version: &VersionToken, value: &[u8]) {
        let packed = Packed::new(version, value);
        let added = codec::put_record_len(key, version, value);
        if let Some(slot) = self.map.get_mut(key) {
            let (old_v, old_val) = slot.split();
            self.image_bytes -= codec::put_record_len(key, &old_v, old_val);
            self.live_bytes -= (key.len() + slot.0.len() - 1) as u64;
            self.live_bytes += (key.len() + packed.0.len() - 1) as u64;
            *slot = packed;
        } else {
            self.live_bytes += (key.len() + packed.0.len() - 1) as u64;
            self.map.insert(key.into(), packed);
        }
        self.image_bytes += added;
    }

    pub(crate) fn remove(&mut self, key: &str) {
        if let Some(old) = self.map.remove(key) {
            let (v, val) = old.split();
            self.image_bytes -= codec::put_record_len(key, &v, val);
            self.live_bytes -= (key.len() + old.0.len() - 1) as u64;
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<EntryRef<'_>> {
        self.map.get(key).map(|p| {
            let (version, value) = p.split();
            EntryRef { value, version }
        })
    }

    pub(crate) fn range<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, EntryRef<'a>)> + 'a {
        self.map
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, p)| {
                let (version, value) = p.split();
                (&**k, EntryRef { value, version })
            })
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

/// Builds a fold while a log is read. Runs of puts with strictly ascending
/// keys into an empty fold (a compacted image is one) are collected and
/// bulk-loaded, which is several times cheaper than inserting one by one.
#[derive(Debug, Default)]
pub(crate) struct FoldBuilder {
    fold: Fold,
    run: Vec<(CompactString, Packed)>,
}

impl FoldBuilder {
    pub(crate) fn put(&mut self, key: &str, version: &VersionToken, value: &[u8]) {
        let ascending = self.run.last().is_none_or(|(last, _)| key > &**last);
        if ascending && self.fold.map.is_empty() {
            self.fold.image_bytes += codec::put_record_len(key, version, value);
            let packed = Packed::new(version, value);
            self.fold.live_bytes += (key.len() + packed.0.len() - 1) as u64;
            self.run.push((key.into(), packed));
        } else {
            self.flush();
            self.fold.put(key, version, value);
        }
    }

    pub(crate) fn remove(&mut self, key: &str) {
        self.flush();
        self.fold.remove(key);
    }

    fn flush(&mut self) {
        if !self.run.is_empty() {
            // The run only grows while the map is empty, and its keys are
            // unique and sorted: the map is built from it in bulk. Taking
            // the vector (not draining it) lets the bulk load reuse its
            // allocation instead of holding a second copy.
            self.fold.map = std::mem::take(&mut self.run).into_iter().collect();
        }
    }

    pub(crate) fn finish(mut self) -> Fold {
        self.flush();
        self.fold
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
            // Ascending stretches first, so the bulk path is exercised.
            for (i, (k, is_put, len)) in ops.iter().enumerate() {
                let key = if i < ops.len() / 2 { format!("a{i:04}") } else { format!("b{k:02}") };
                let version = VersionToken::from_u64(i as u64);
                let value = vec![*k; *len];
                if *is_put || i < ops.len() / 2 {
                    plain.put(&key, &version, &value);
                    builder.put(&key, &version, &value);
                } else {
                    plain.remove(&key);
                    builder.remove(&key);
                }
            }
            let built = builder.finish();
            prop_assert_eq!(built.image_bytes(), plain.image_bytes());
            prop_assert_eq!(built.live_bytes(), plain.live_bytes());
            prop_assert_eq!(built, plain);
        }
    }
}
