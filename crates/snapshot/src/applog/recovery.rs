//! Reading an append-log at open (S3 recovery rules).
//!
//! Records are collected in log order and count once their group's cursor
//! record arrives, so the result is always some committed (data, cursor)
//! pair. The first record that does not read cleanly is
//! classified:
//!
//! - zero bytes where a record should start (a crashed file system's
//!   zero-filled tail or gap: a real record's type byte is never 0), or
//!   damage with no valid record anywhere after it, is a torn tail: it is
//!   dropped, together with anything after it and any data records of the
//!   unfinished group, and the file is truncated to the last commit before
//!   any append. Keeping records beyond a gap would fold later commits
//!   without earlier ones: a mixture.
//! - damage followed by a valid record is corruption, reported as such and
//!   never dropped: a bit-flipped CRC or length cannot hide the records
//!   after it.

use std::io::{self, Read};

use slipstream_kv::WatchCursor;

use super::codec::{
    self, FORMAT_VERSION, FRAME_HEADER_LEN, HEADER_LEN, MAGIC, OLDEST_FORMAT, RecordRef,
};
use super::fold::{Fold, FoldBuilder};

/// What an open found in a log.
#[derive(Debug, Default)]
pub(crate) struct Scanned {
    pub(crate) fold: Fold,
    pub(crate) cursor: WatchCursor,
    /// End of the last committed group (or of the header): the file's
    /// length after recovery.
    pub(crate) valid_end: u64,
    /// Whether the file needs its header written (it was empty).
    pub(crate) empty: bool,
    /// The format version its header names.
    pub(crate) format: u32,
}

/// Whether a scan builds the fold or only checks the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanMode {
    /// Fold every committed group.
    Build,
    /// Check structure and find the cursor; the fold stays empty.
    VerifyOnly,
}

/// Why a log cannot be opened.
#[derive(Debug)]
pub(crate) enum ScanError {
    Io(io::Error),
    Corrupted { offset: u64, detail: String },
    UnsupportedFormat(u32),
}

/// Read a whole log image from `reader`, whose total length is `total`.
pub(crate) fn scan<R: Read>(
    mut reader: R,
    total: u64,
    mode: ScanMode,
) -> Result<Scanned, ScanError> {
    if total == 0 {
        return Ok(Scanned {
            empty: true,
            ..Scanned::default()
        });
    }
    let mut header = [0u8; HEADER_LEN];
    if total < HEADER_LEN as u64 || read_full(&mut reader, &mut header)? < HEADER_LEN {
        return Err(ScanError::Corrupted {
            offset: 0,
            detail: "file is shorter than the append-log header".into(),
        });
    }
    if header[..8] != MAGIC {
        return Err(ScanError::Corrupted {
            offset: 0,
            detail: "not an append-log file (bad magic)".into(),
        });
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if !(OLDEST_FORMAT..=FORMAT_VERSION).contains(&version) {
        return Err(ScanError::UnsupportedFormat(version));
    }

    let mut out = Scanned {
        valid_end: HEADER_LEN as u64,
        format: version,
        ..Scanned::default()
    };
    let mut builder = FoldBuilder::default();
    let mut offset = HEADER_LEN as u64;
    let mut payload = Vec::new();
    loop {
        if offset == total {
            out.fold = builder.finish();
            return Ok(out);
        }
        let mut h = [0u8; FRAME_HEADER_LEN];
        let got = read_full(&mut reader, &mut h)?;
        let frame = (got == FRAME_HEADER_LEN)
            .then(|| codec::parse_frame_header(&h))
            .flatten()
            .filter(|&(_, _, len)| offset + (FRAME_HEADER_LEN + len) as u64 <= total);
        let Some((crc, kind, len)) = frame else {
            out.fold = builder.finish();
            return damaged(out, offset, h[..got].to_vec(), reader);
        };
        payload.resize(len, 0);
        let got_payload = read_full(&mut reader, &mut payload)?;
        if got_payload < len || !codec::crc_matches(&h, &payload, crc) {
            let mut consumed = h.to_vec();
            consumed.extend_from_slice(&payload[..got_payload]);
            out.fold = builder.finish();
            return damaged(out, offset, consumed, reader);
        }
        let record =
            codec::decode_payload(kind, &payload).map_err(|detail| ScanError::Corrupted {
                offset,
                detail: format!("record passes its checksum but does not decode: {detail}"),
            })?;
        offset += (FRAME_HEADER_LEN + len) as u64;
        match record {
            RecordRef::Cursor(c) => {
                builder.commit();
                out.cursor = c;
                out.valid_end = offset;
            }
            RecordRef::Put {
                key,
                version,
                expires,
                value,
            } => {
                if mode == ScanMode::Build {
                    builder.put(key, &version, expires, value);
                }
            }
            RecordRef::Delete { key } => {
                if mode == ScanMode::Build {
                    builder.remove(key);
                }
            }
        }
    }
}

/// Classify damage at `offset`; `consumed` holds the bytes already read
/// from there.
fn damaged<R: Read>(
    out: Scanned,
    offset: u64,
    mut consumed: Vec<u8>,
    mut reader: R,
) -> Result<Scanned, ScanError> {
    let zero_start = consumed.len() >= 5 && consumed[..5].iter().all(|&b| b == 0);
    let short_zeros = consumed.len() < 5 && consumed.iter().all(|&b| b == 0);
    if zero_start || short_zeros {
        return Ok(out);
    }
    reader.read_to_end(&mut consumed).map_err(ScanError::Io)?;
    if let Some(at) = (1..consumed.len()).find(|&i| codec::is_valid_record_at(&consumed[i..])) {
        return Err(ScanError::Corrupted {
            offset,
            detail: format!(
                "damaged record with a valid record {at} bytes after it (checksum or length mismatch mid-file)"
            ),
        });
    }
    Ok(out)
}

/// Read until `buf` is full or the input ends; returns the bytes read.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize, ScanError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ScanError::Io(e)),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A log of `groups` commits and, for each prefix boundary, the
    /// (end offset, cursor, fold) after that commit.
    fn log_with_commits(groups: &[Vec<(u8, bool)>]) -> (Vec<u8>, Vec<(usize, WatchCursor, Fold)>) {
        let mut bytes = codec::header().to_vec();
        let mut fold = Fold::default();
        let mut commits = vec![(bytes.len(), WatchCursor::none(), Fold::default())];
        let mut rev = 0;
        for group in groups {
            for &(k, is_put) in group {
                rev += 1;
                let key = format!("k{k}");
                let version = slipstream_kv::VersionToken::from_u64(rev);
                if is_put {
                    let value = vec![k; usize::from(k % 7) * 5];
                    let expires =
                        (k % 2 == 0).then(|| slipstream_kv::Timestamp::from_unix_nanos(rev));
                    codec::encode_put(&mut bytes, &key, &version, expires, &value);
                    fold.put(&key, &version, expires, &value);
                } else {
                    codec::encode_delete(&mut bytes, &key, &version);
                    fold.remove(&key);
                }
            }
            let cursor = WatchCursor::at(rev);
            codec::encode_cursor(&mut bytes, &cursor);
            commits.push((bytes.len(), cursor, fold.clone()));
        }
        (bytes, commits)
    }

    fn commit_at(
        commits: &[(usize, WatchCursor, Fold)],
        cut: usize,
    ) -> &(usize, WatchCursor, Fold) {
        commits
            .iter()
            .rev()
            .find(|(end, _, _)| *end <= cut)
            .unwrap()
    }

    proptest! {
        #[test]
        fn every_torn_or_zero_filled_tail_recovers_the_last_whole_commit(
            groups in proptest::collection::vec(
                proptest::collection::vec((0u8..8, any::<bool>()), 0..5), 1..6),
            cut_fraction in 0.0f64..1.0,
            zero_fill in any::<bool>(),
        ) {
            let (bytes, commits) = log_with_commits(&groups);
            let header = codec::header().len();
            let cut = header + ((bytes.len() - header) as f64 * cut_fraction) as usize;
            let mut damaged = bytes.clone();
            if zero_fill {
                damaged[cut..].fill(0);
            } else {
                damaged.truncate(cut);
            }
            let scanned = scan(&damaged[..], damaged.len() as u64, ScanMode::Build).unwrap();
            // Zero-filling bytes that were zero already damages nothing.
            let first_changed = if zero_fill {
                (cut..bytes.len()).find(|&i| bytes[i] != 0).unwrap_or(bytes.len())
            } else {
                cut
            };
            let (end, cursor, fold) = commit_at(&commits, first_changed);
            prop_assert_eq!(scanned.valid_end, *end as u64);
            prop_assert_eq!(&scanned.cursor, cursor);
            prop_assert_eq!(&scanned.fold, fold);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = scan(&bytes[..], bytes.len() as u64, ScanMode::Build);
        }

        #[test]
        fn decoding_arbitrary_records_after_a_valid_header_never_panics(
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut bytes = codec::header().to_vec();
            bytes.extend_from_slice(&body);
            if let Ok(s) = scan(&bytes[..], bytes.len() as u64, ScanMode::Build) {
                prop_assert!(s.valid_end <= bytes.len() as u64);
            }
        }
    }
}
