//! What the LSM stores (fjall, RocksDB) share: the value record kept under
//! each key (S6) `[version length: u8][version bytes][value bytes]`, or,
//! for an entry with a per-message expiry, the length byte's high bit set
//! and the expiry (Unix nanoseconds, u64 LE) between version and value, the
//! update limits, the fold totals kept next to the cursor, and recognising
//! which backend's files a directory holds.

use std::path::Path;

use slipstream_kv::{KvUpdate, MAX_VERSION_LEN, Timestamp, VersionToken};

use crate::applog::{LOG_FILE, MAX_KEY_LEN, MAX_VALUE_LEN};
use crate::error::SnapshotError;
use crate::store::EntryRef;

/// The length byte's flag for a record that carries an expiry. A version
/// is at most [`MAX_VERSION_LEN`] (10) bytes, so records written before
/// expiries were recorded never set it.
const EXPIRES_FLAG: u8 = 0x80;

/// Bytes a value record adds to the value: the length byte, the version
/// and the expiry, if any.
#[must_use]
pub fn value_record_overhead(version: &VersionToken, expires: Option<Timestamp>) -> usize {
    1 + version.as_bytes().len() + if expires.is_some() { 8 } else { 0 }
}

/// Encode `version`, `expires` and `value` as one value record.
#[must_use]
pub fn encode_value_record(
    version: &VersionToken,
    expires: Option<Timestamp>,
    value: &[u8],
) -> Vec<u8> {
    let v = version.as_bytes();
    let mut out = Vec::with_capacity(value_record_overhead(version, expires) + value.len());
    // A version holds at most MAX_VERSION_LEN (10) bytes: its length fits
    // below the flag bit.
    let flag = if expires.is_some() { EXPIRES_FLAG } else { 0 };
    out.push(v.len() as u8 | flag);
    out.extend_from_slice(v);
    if let Some(at) = expires {
        out.extend_from_slice(&at.as_unix_nanos().to_le_bytes());
    }
    out.extend_from_slice(value);
    out
}

/// Decode a value record; `None` when the record is empty, its version
/// length is over [`MAX_VERSION_LEN`], or the version or expiry runs past
/// the end of the record.
#[must_use]
pub fn decode_value_record(record: &[u8]) -> Option<EntryRef<'_>> {
    let (&head, rest) = record.split_first()?;
    let len = usize::from(head & !EXPIRES_FLAG);
    if len > MAX_VERSION_LEN || len > rest.len() {
        return None;
    }
    let (version, rest) = rest.split_at(len);
    let version = VersionToken::from_bytes(version).ok()?;
    let (expires, value) = if head & EXPIRES_FLAG == 0 {
        (None, rest)
    } else {
        let (at, value) = rest.split_first_chunk::<8>()?;
        (
            Some(Timestamp::from_unix_nanos(u64::from_le_bytes(*at))),
            value,
        )
    };
    Some(EntryRef {
        value,
        version,
        expires,
    })
}

/// Refuse an update no store can hold: a key over [`MAX_KEY_LEN`] bytes or a
/// value over [`MAX_VALUE_LEN`] bytes (the server's ceiling).
///
/// # Errors
/// [`SnapshotError::InvalidUpdate`] naming the key and the limit.
pub fn check_update_limits(update: &KvUpdate) -> Result<(), SnapshotError> {
    let key = update.key();
    let bad = |reason: String| {
        Err(SnapshotError::InvalidUpdate {
            key: key.to_owned(),
            reason,
        })
    };
    if key.len() > MAX_KEY_LEN {
        return bad(format!("key of {} bytes exceeds {MAX_KEY_LEN}", key.len()));
    }
    if let KvUpdate::Put(e) = update
        && e.value.len() > MAX_VALUE_LEN
    {
        return bad(format!(
            "value of {} bytes exceeds {MAX_VALUE_LEN}",
            e.value.len()
        ));
    }
    Ok(())
}

/// Key count and live bytes of a fold, committed with every cursor so that
/// `len` and `stats` need no scan at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FoldTotals {
    /// Keys holding an entry.
    pub keys: u64,
    /// Bytes of keys, versions and values.
    pub live_bytes: u64,
}

impl FoldTotals {
    /// Encoded size.
    pub const LEN: usize = 16;

    /// Account for `key` losing an entry whose value record is `record_len`
    /// bytes long.
    pub fn remove(&mut self, key: &str, record_len: usize) {
        self.keys = self.keys.saturating_sub(1);
        self.live_bytes = self
            .live_bytes
            .saturating_sub(Self::entry_bytes(key, record_len));
    }

    /// Account for `key` gaining an entry whose value record is `record_len`
    /// bytes long.
    pub fn add(&mut self, key: &str, record_len: usize) {
        self.keys += 1;
        self.live_bytes += Self::entry_bytes(key, record_len);
    }

    fn entry_bytes(key: &str, record_len: usize) -> u64 {
        // The record's length byte is bookkeeping, not live data.
        (key.len() + record_len.saturating_sub(1)) as u64
    }

    /// `[keys: u64 LE][live bytes: u64 LE]`.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0; Self::LEN];
        out[..8].copy_from_slice(&self.keys.to_le_bytes());
        out[8..].copy_from_slice(&self.live_bytes.to_le_bytes());
        out
    }

    /// Decode [`FoldTotals::to_bytes`]; `None` for any other length.
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; Self::LEN] = bytes.try_into().ok()?;
        let (keys, live) = bytes.split_at(8);
        Some(Self {
            keys: u64::from_le_bytes(keys.try_into().ok()?),
            live_bytes: u64::from_le_bytes(live.try_into().ok()?),
        })
    }
}

/// Which backend's files `dir` holds, recognised by each backend's
/// signature files: `"append-log"`, `"fjall"`, `"rocksdb"`, or `None` (empty,
/// absent or unrecognised). A store checks this before its engine touches
/// the directory, so opening another backend's store fails with
/// [`SnapshotError::WrongBackend`] instead of writing into it.
#[must_use]
pub fn detect_backend(dir: &Path) -> Option<&'static str> {
    let has = |name: &str| dir.join(name).exists();
    if has(LOG_FILE) {
        Some("append-log")
    } else if has("version") && has("keyspaces") {
        Some("fjall")
    } else if has("CURRENT") {
        Some("rocksdb")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_record_round_trips_known_unknown_and_long_versions() {
        for version in [
            VersionToken::unknown(),
            VersionToken::from_u64(42),
            VersionToken::from_bytes(&[9; MAX_VERSION_LEN]).unwrap(),
        ] {
            for value in [&b""[..], b"x", b"hello world"] {
                for expires in [None, Some(Timestamp::from_unix_nanos(u64::MAX - 3))] {
                    let rec = encode_value_record(&version, expires, value);
                    let overhead = value_record_overhead(&version, expires);
                    assert_eq!(rec.len(), overhead + value.len());
                    let e = decode_value_record(&rec).unwrap();
                    assert_eq!((e.version, e.expires, e.value), (version, expires, value));
                }
            }
        }
    }

    #[test]
    fn value_record_rejects_empty_and_overlong_version_lengths() {
        assert!(decode_value_record(&[]).is_none());
        assert!(decode_value_record(&[11; 20]).is_none());
        assert!(decode_value_record(&[8, 1, 2, 3]).is_none());
        // An expiry flag with fewer than eight bytes after the version.
        assert!(decode_value_record(&[0x81, 7, 1, 2, 3]).is_none());
    }

    #[test]
    fn a_record_written_before_expiries_reads_as_never_expiring() {
        let old = [1u8, 42, b'v'];
        let e = decode_value_record(&old).unwrap();
        assert_eq!(
            (e.version, e.expires, e.value),
            (VersionToken::from_bytes(&[42]).unwrap(), None, &b"v"[..])
        );
    }

    #[test]
    fn fold_totals_round_trip_and_account_entries() {
        let mut t = FoldTotals::default();
        t.add("ab", 4);
        t.add("c", 1);
        assert_eq!(
            t,
            FoldTotals {
                keys: 2,
                live_bytes: 6
            }
        );
        t.remove("ab", 4);
        assert_eq!(FoldTotals::from_bytes(&t.to_bytes()), Some(t));
        assert_eq!(FoldTotals::from_bytes(&[0; 15]), None);
    }

    #[test]
    fn detect_backend_recognises_signature_files() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(detect_backend(tmp.path()), None);
        std::fs::write(tmp.path().join("CURRENT"), b"MANIFEST-000001\n").unwrap();
        assert_eq!(detect_backend(tmp.path()), Some("rocksdb"));
        std::fs::write(tmp.path().join(LOG_FILE), b"").unwrap();
        assert_eq!(detect_backend(tmp.path()), Some("append-log"));
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_value_records_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            if let Some(e) = decode_value_record(&bytes) {
                proptest::prop_assert_eq!(encode_value_record(&e.version, e.expires, e.value), bytes);
            }
        }
    }
}
