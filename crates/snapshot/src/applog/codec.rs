//! The append-log file format (S3).
//!
//! ```text
//! file   = header record*
//! header = magic "SLPSTLOG" (8) | format version u32 LE (4)
//! record = crc32 u32 LE | type u8 | payload length u32 LE | payload
//!          (the CRC covers type, length and payload)
//! put    = key length u16 LE | key | version length u8 (<= 10) | version | value
//!        | key length u16 LE | key | (version length | 0x80) u8 | version
//!          | expiry u64 LE (Unix nanoseconds) | value   (format 2: with a TTL)
//! delete = key length u16 LE | key | version length u8 (<= 10) | version
//! cursor = WatchCursor::to_bytes
//! ```
//!
//! Each apply appends its data records followed by one cursor record; a
//! group without its cursor record was never committed.

use slipstream_kv::{MAX_VERSION_LEN, Timestamp, VersionToken, WatchCursor};

/// The file's magic bytes.
pub(crate) const MAGIC: [u8; 8] = *b"SLPSTLOG";
/// The format version this build writes. Format 2 adds the expiry a put
/// may carry; format 1 logs are read as they are (no expiries) and take
/// format 2's header when opened for writing.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// The oldest format this build reads.
pub(crate) const OLDEST_FORMAT: u32 = 1;
/// The version length byte's flag for a put that carries an expiry.
const EXPIRES_FLAG: u8 = 0x80;
/// Magic plus version.
pub(crate) const HEADER_LEN: usize = 12;
/// CRC, type and payload length.
pub(crate) const FRAME_HEADER_LEN: usize = 9;
/// The largest value a put may carry: the server's ceiling.
pub const MAX_VALUE_LEN: usize = 64 << 20;
/// The longest key the format encodes.
pub const MAX_KEY_LEN: usize = u16::MAX as usize;
/// The largest payload any record may have.
pub(crate) const MAX_PAYLOAD_LEN: usize = MAX_VALUE_LEN + 2 + MAX_KEY_LEN + 1 + MAX_VERSION_LEN + 8;

pub(crate) const TYPE_PUT: u8 = 1;
pub(crate) const TYPE_DELETE: u8 = 2;
pub(crate) const TYPE_CURSOR: u8 = 3;

/// A decoded record, borrowing from its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordRef<'a> {
    Put {
        key: &'a str,
        version: VersionToken,
        expires: Option<Timestamp>,
        value: &'a [u8],
    },
    Delete {
        key: &'a str,
    },
    Cursor(WatchCursor),
}

pub(crate) fn header() -> [u8; HEADER_LEN] {
    let mut h = [0; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// Encoded size of a put record.
pub(crate) fn put_record_len(
    key: &str,
    version: &VersionToken,
    expires: Option<Timestamp>,
    value: &[u8],
) -> u64 {
    let expiry = if expires.is_some() { 8 } else { 0 };
    (FRAME_HEADER_LEN + 2 + key.len() + 1 + version.as_bytes().len() + expiry + value.len()) as u64
}

/// Append a framed record whose payload `fill` writes.
fn frame(out: &mut Vec<u8>, kind: u8, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    out[start + 4] = kind;
    fill(out);
    // Callers check key and value bounds, so the payload fits a u32.
    let len = (out.len() - start - FRAME_HEADER_LEN) as u32;
    out[start + 5..start + 9].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

fn key_and_version(out: &mut Vec<u8>, key: &str, version: &VersionToken, flag: u8) {
    // Callers check `key.len() <= MAX_KEY_LEN`.
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    let v = version.as_bytes();
    out.push(v.len() as u8 | flag);
    out.extend_from_slice(v);
}

pub(crate) fn encode_put(
    out: &mut Vec<u8>,
    key: &str,
    version: &VersionToken,
    expires: Option<Timestamp>,
    value: &[u8],
) {
    frame(out, TYPE_PUT, |o| {
        let flag = if expires.is_some() { EXPIRES_FLAG } else { 0 };
        key_and_version(o, key, version, flag);
        if let Some(at) = expires {
            o.extend_from_slice(&at.as_unix_nanos().to_le_bytes());
        }
        o.extend_from_slice(value);
    });
}

pub(crate) fn encode_delete(out: &mut Vec<u8>, key: &str, version: &VersionToken) {
    frame(out, TYPE_DELETE, |o| key_and_version(o, key, version, 0));
}

pub(crate) fn encode_cursor(out: &mut Vec<u8>, cursor: &WatchCursor) {
    frame(out, TYPE_CURSOR, |o| {
        o.extend_from_slice(&cursor.to_bytes())
    });
}

/// A frame header that could start a record: known type, payload within
/// bounds. Returns `(crc, type, payload length)`.
pub(crate) fn parse_frame_header(h: &[u8; FRAME_HEADER_LEN]) -> Option<(u32, u8, usize)> {
    let crc = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let kind = h[4];
    let len = u32::from_le_bytes([h[5], h[6], h[7], h[8]]) as usize;
    let ok = matches!(kind, TYPE_PUT | TYPE_DELETE | TYPE_CURSOR) && len <= MAX_PAYLOAD_LEN;
    ok.then_some((crc, kind, len))
}

/// Whether `crc` matches the frame's type, length and payload.
pub(crate) fn crc_matches(h: &[u8; FRAME_HEADER_LEN], payload: &[u8], crc: u32) -> bool {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[4..]);
    hasher.update(payload);
    hasher.finalize() == crc
}

/// Decode a payload whose CRC matched.
pub(crate) fn decode_payload(kind: u8, payload: &[u8]) -> Result<RecordRef<'_>, &'static str> {
    match kind {
        TYPE_CURSOR => WatchCursor::from_bytes(payload)
            .map(RecordRef::Cursor)
            .map_err(|_| "cursor record does not decode"),
        TYPE_PUT | TYPE_DELETE => {
            let (key, version, flag, rest) = decode_key_and_version(payload)?;
            if kind == TYPE_PUT {
                let (expires, rest) = if flag == 0 {
                    (None, rest)
                } else {
                    let (at, rest) = rest
                        .split_first_chunk::<8>()
                        .ok_or("expiry runs past the record")?;
                    (
                        Some(Timestamp::from_unix_nanos(u64::from_le_bytes(*at))),
                        rest,
                    )
                };
                if rest.len() > MAX_VALUE_LEN {
                    return Err("value over the 64 MiB ceiling");
                }
                Ok(RecordRef::Put {
                    key,
                    version,
                    expires,
                    value: rest,
                })
            } else if flag != 0 {
                Err("delete record carries an expiry")
            } else if rest.is_empty() {
                Ok(RecordRef::Delete { key })
            } else {
                Err("delete record has trailing bytes")
            }
        }
        _ => Err("unknown record type"),
    }
}

/// Key, version, the version length's flag bits, and the rest.
fn decode_key_and_version(p: &[u8]) -> Result<(&str, VersionToken, u8, &[u8]), &'static str> {
    let (len, rest) = p.split_first_chunk::<2>().ok_or("record too short")?;
    let len = usize::from(u16::from_le_bytes(*len));
    if rest.len() < len {
        return Err("key runs past the record");
    }
    let (key, rest) = rest.split_at(len);
    let key = core::str::from_utf8(key).map_err(|_| "key is not UTF-8")?;
    let (&head, rest) = rest.split_first().ok_or("record too short")?;
    let flag = head & EXPIRES_FLAG;
    let vlen = usize::from(head & !EXPIRES_FLAG);
    if vlen > MAX_VERSION_LEN || rest.len() < vlen {
        return Err("bad version length");
    }
    let (v, rest) = rest.split_at(vlen);
    let version = VersionToken::from_bytes(v).map_err(|_| "bad version length")?;
    Ok((key, version, flag, rest))
}

/// Whether a complete, CRC-valid, decodable record starts at `buf[0]`.
pub(crate) fn is_valid_record_at(buf: &[u8]) -> bool {
    let Some(h) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return false;
    };
    let Some((crc, kind, len)) = parse_frame_header(h) else {
        return false;
    };
    let Some(payload) = buf[FRAME_HEADER_LEN..].get(..len) else {
        return false;
    };
    // The structural check first: it rejects garbage after a few bytes,
    // where a checksum would read the whole claimed payload.
    decode_payload(kind, payload).is_ok() && crc_matches(h, payload, crc)
}
