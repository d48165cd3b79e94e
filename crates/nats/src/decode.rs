//! Decoding raw KV messages (N9) and showing payloads in logs (N12).

use core::fmt;
use core::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use slipstream_kv::{KvEntry, KvMarker, KvUpdate, Timestamp, VersionToken};

use crate::ack::AckInfo;

/// The header naming a KV operation.
pub(crate) const KV_OPERATION: &str = "KV-Operation";
/// The header a server-placed delete marker carries (limit markers,
/// `subject_delete_marker_ttl`), naming why the key's messages went.
pub(crate) const MARKER_REASON: &str = "Nats-Marker-Reason";
/// The header carrying a message's own TTL (ADR-43).
pub(crate) const MESSAGE_TTL: &str = "Nats-TTL";
/// The header carrying a value's size in headers-only deliveries.
pub(crate) const MSG_SIZE: &str = "Nats-Msg-Size";

/// What a KV message does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Put,
    Delete,
    Purge,
}

/// The operation a message's headers announce; absent means put.
///
/// A server's delete marker has no `KV-Operation`, only a reason: `Remove`
/// stands for a delete, `MaxAge` and `Purge` for a purge (the key's
/// history is gone either way). An unknown reason is still a marker, never
/// a value: it is taken as a delete.
pub(crate) fn operation(headers: Option<&HeaderMap>) -> Operation {
    let header = |name| {
        headers
            .and_then(|h| h.get(name))
            .map(async_nats::HeaderValue::as_str)
    };
    match header(KV_OPERATION) {
        Some("DEL") => Operation::Delete,
        Some("PURGE") => Operation::Purge,
        _ => match header(MARKER_REASON) {
            None => Operation::Put,
            Some("MaxAge" | "Purge") => Operation::Purge,
            Some(_) => Operation::Delete,
        },
    }
}

/// A message's TTL from its `Nats-TTL` header: integer seconds or a Go
/// duration (`90s`, `1h30m`, `1.5h`); `never`, an absent or an unreadable
/// header is no TTL. The server refused the message if it could not read
/// the header, so an unreadable one is not one it honours either.
pub(crate) fn message_ttl(headers: Option<&HeaderMap>) -> Option<Duration> {
    let text = headers?.get(MESSAGE_TTL)?.as_str().trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return (seconds > 0).then(|| Duration::from_secs(seconds));
    }
    go_duration(text).filter(|d| !d.is_zero())
}

/// A Go `time.Duration` string: a sequence of decimal numbers, each with a
/// unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`). Negative durations are no
/// TTL.
fn go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return None;
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        nanos += number * scale;
    }
    (nanos.is_finite() && nanos < u64::MAX as f64).then(|| Duration::from_nanos(nanos as u64))
}

/// The key of a subject in the bucket's keyspace, or `None` for a subject
/// outside it.
pub(crate) fn key_of<'a>(subject: &'a str, keyspace: &str) -> Option<&'a str> {
    subject.strip_prefix(keyspace).filter(|k| !k.is_empty())
}

/// Build the update a raw message stands for (N9).
pub(crate) fn to_update(
    subject: &str,
    keyspace: &str,
    headers: Option<&HeaderMap>,
    payload: Bytes,
    ack: AckInfo,
) -> Option<KvUpdate> {
    let key = key_of(subject, keyspace)?.to_owned();
    let version = ack
        .stream_sequence
        .map_or_else(VersionToken::unknown, VersionToken::from_u64);
    let created = ack.timestamp.map(Timestamp::from_unix_nanos);
    Some(match operation(headers) {
        Operation::Put => KvUpdate::Put(KvEntry {
            key,
            value: payload,
            version,
            created,
            // The server expires the message at its stored time plus the TTL.
            expires: message_ttl(headers).and_then(|ttl| Some(created?.plus(ttl))),
        }),
        Operation::Delete => KvUpdate::Delete(KvMarker {
            key,
            version,
            created,
        }),
        Operation::Purge => KvUpdate::Purge(KvMarker {
            key,
            version,
            created,
        }),
    })
}

/// A value size from a headers-only delivery.
pub(crate) fn message_size(headers: Option<&HeaderMap>) -> Option<u64> {
    headers?.get(MSG_SIZE)?.as_str().trim().parse().ok()
}

/// Shows server bytes in a log line: UTF-8 when valid, hex otherwise, never
/// with replacement characters (N12).
pub struct LogPayload<'a>(pub &'a [u8]);

impl fmt::Display for LogPayload<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match core::str::from_utf8(self.0) {
            Ok(text) => write!(f, "{text:?}"),
            Err(_) => {
                f.write_str("0x")?;
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for LogPayload<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::parse_ack_subject;

    #[test]
    fn subject_outside_the_keyspace_is_skipped() {
        assert_eq!(key_of("$KV.b.a.x", "$KV.b."), Some("a.x"));
        assert_eq!(key_of("$KV.other.a", "$KV.b."), None);
        assert_eq!(key_of("$KV.b.", "$KV.b."), None);
    }

    #[test]
    fn operation_header_decides_the_update_kind() {
        let ack = parse_ack_subject("$JS.ACK.KV_b.c.1.9.1.5.0");
        let mut del = HeaderMap::new();
        del.insert(KV_OPERATION, "DEL");
        let mut purge = HeaderMap::new();
        purge.insert(KV_OPERATION, "PURGE");
        let put = to_update("$KV.b.k", "$KV.b.", None, Bytes::from_static(b"v"), ack).unwrap();
        assert!(
            matches!(&put, KvUpdate::Put(e) if e.value == "v" && e.version.as_u64() == Some(9))
        );
        assert_eq!(put.created(), Some(Timestamp::from_unix_nanos(5)));
        let d = to_update("$KV.b.k", "$KV.b.", Some(&del), Bytes::new(), ack).unwrap();
        assert!(matches!(d, KvUpdate::Delete(_)));
        let p = to_update("$KV.b.k", "$KV.b.", Some(&purge), Bytes::new(), ack).unwrap();
        assert!(matches!(p, KvUpdate::Purge(_)));
    }

    #[test]
    fn server_delete_markers_are_deletes_whatever_their_reason() {
        let ack = parse_ack_subject("$JS.ACK.KV_b.c.1.9.1.5.0");
        let marker = |reason: &str| {
            let mut h = HeaderMap::new();
            h.insert(MARKER_REASON, reason);
            h.insert("Nats-TTL", "1s");
            to_update("$KV.b.k", "$KV.b.", Some(&h), Bytes::new(), ack).unwrap()
        };
        assert!(matches!(marker("MaxAge"), KvUpdate::Purge(_)));
        assert!(matches!(marker("Purge"), KvUpdate::Purge(_)));
        assert!(matches!(marker("Remove"), KvUpdate::Delete(_)));
        assert!(matches!(marker("SomethingNew"), KvUpdate::Delete(_)));
        // An explicit operation wins over a reason.
        let mut both = HeaderMap::new();
        both.insert(KV_OPERATION, "PURGE");
        both.insert(MARKER_REASON, "Remove");
        let p = to_update("$KV.b.k", "$KV.b.", Some(&both), Bytes::new(), ack).unwrap();
        assert!(matches!(p, KvUpdate::Purge(_)));
        // A TTL on a put does not make it a marker.
        let mut ttl = HeaderMap::new();
        ttl.insert("Nats-TTL", "5s");
        let put = to_update(
            "$KV.b.k",
            "$KV.b.",
            Some(&ttl),
            Bytes::from_static(b"v"),
            ack,
        );
        assert!(matches!(put, Some(KvUpdate::Put(_))));
    }

    #[test]
    fn a_put_with_a_ttl_expires_at_its_server_time_plus_the_ttl() {
        let ack = parse_ack_subject("$JS.ACK.KV_b.c.1.9.1.5000000000.0");
        let put = |ttl: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(ttl) = ttl {
                h.insert(MESSAGE_TTL, ttl);
            }
            let u = to_update("$KV.b.k", "$KV.b.", Some(&h), Bytes::from_static(b"v"), ack);
            u.and_then(|u| u.expires()).map(Timestamp::as_unix_nanos)
        };
        assert_eq!(put(Some("30")), Some(35_000_000_000));
        assert_eq!(put(Some("1m30s")), Some(95_000_000_000));
        assert_eq!(put(Some("1.5s")), Some(6_500_000_000));
        assert_eq!(put(Some("never")), None);
        assert_eq!(put(Some("garbage")), None);
        assert_eq!(put(Some("-5s")), None);
        assert_eq!(put(None), None);
        // Without the server's time nothing can be said of the expiry.
        let u = to_update("$KV.b.k", "$KV.b.", None, Bytes::new(), AckInfo::default());
        assert_eq!(u.and_then(|u| u.expires()), None);
    }

    #[test]
    fn go_durations_read_as_the_server_reads_them() {
        let d = |s| go_duration(s).map(|d| d.as_nanos());
        assert_eq!(d("2h45m"), Some(9_900_000_000_000));
        assert_eq!(d("300ms"), Some(300_000_000));
        assert_eq!(d("1us"), Some(1_000));
        assert_eq!(d("1µs"), Some(1_000));
        assert_eq!(d("10"), None);
        assert_eq!(d("5d"), None);
        assert_eq!(d(""), None);
    }

    #[test]
    fn unparseable_ack_gives_an_unknown_version() {
        let u = to_update("$KV.b.k", "$KV.b.", None, Bytes::new(), AckInfo::default()).unwrap();
        assert!(u.version().is_unknown());
    }

    #[test]
    fn log_payload_is_utf8_or_hex_never_lossy() {
        assert_eq!(LogPayload(b"hello").to_string(), "\"hello\"");
        assert_eq!(LogPayload(&[0xff, 0x00, 0x41]).to_string(), "0xff0041");
    }

    #[test]
    fn message_size_reads_the_header() {
        let mut h = HeaderMap::new();
        h.insert(MSG_SIZE, "12");
        assert_eq!(message_size(Some(&h)), Some(12));
        assert_eq!(message_size(None), None);
    }
}
