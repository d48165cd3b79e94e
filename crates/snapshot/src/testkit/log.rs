//! A deterministic update log: update `i` (1-based) is a pure function of
//! `(seed, i)`, so a crashed writer and the checking parent agree on it
//! without sharing anything but the seed.

use std::collections::BTreeMap;

use bytes::Bytes;
use slipstream_kv::{KvEntry, KvMarker, KvUpdate, Timestamp, VersionToken};

use crate::store::StoredEntry;

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Update number `index` (1-based; a revision for the cursor) of the log
/// `seed` over `keyspace` keys: mostly puts (some with empty values), some
/// deletes and purges, and synthetic deletes with unknown versions.
#[must_use]
pub fn update_at(seed: u64, index: u64, keyspace: u64) -> KvUpdate {
    let h = mix(seed ^ mix(index));
    let key = format!("k.{:05}", h % keyspace.max(1));
    let op = (h >> 32) % 100;
    let version = VersionToken::from_u64(index);
    let marker = |version| KvMarker {
        key: key.clone(),
        version,
        created: None,
    };
    match op {
        0..70 => {
            let len = usize::try_from((h >> 40) % 160).unwrap_or(0);
            let value: Vec<u8> = index
                .to_be_bytes()
                .iter()
                .copied()
                .cycle()
                .take(len)
                .collect();
            KvUpdate::Put(KvEntry {
                key,
                value: Bytes::from(value),
                version,
                created: None,
                // Some entries carry an expiry, so every store's round trip
                // of it is checked against the oracle.
                expires: h
                    .is_multiple_of(5)
                    .then(|| Timestamp::from_unix_nanos(h >> 8)),
            })
        }
        70..85 => KvUpdate::Delete(marker(version)),
        85..95 => KvUpdate::Purge(marker(version)),
        _ => KvUpdate::synthetic_delete(key),
    }
}

/// Updates `from..=to` of the log.
#[must_use]
pub fn updates(seed: u64, from: u64, to: u64, keyspace: u64) -> Vec<KvUpdate> {
    (from..=to).map(|i| update_at(seed, i, keyspace)).collect()
}

/// The oracle fold: `Put` inserts, `Delete` and `Purge` remove.
pub fn replay<'a>(
    fold: &mut BTreeMap<String, StoredEntry>,
    updates: impl IntoIterator<Item = &'a KvUpdate>,
) {
    for u in updates {
        match u {
            KvUpdate::Put(e) => {
                fold.insert(
                    e.key.clone(),
                    StoredEntry {
                        value: e.value.clone(),
                        version: e.version,
                        expires: e.expires,
                    },
                );
            }
            KvUpdate::Delete(m) | KvUpdate::Purge(m) => {
                fold.remove(&m.key);
            }
        }
    }
}
