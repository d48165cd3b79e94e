//! How a stream message becomes an update the engine folds.

use core::fmt;
use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;
use slipstream_kv::{KvEntry, KvMarker, KvUpdate, Timestamp, VersionToken};

/// The header a KV bucket's stream uses to mark deletes and purges.
const KV_OPERATION: &str = "KV-Operation";
const MARKER_REASON: &str = "Nats-Marker-Reason";

/// A stream message as a [`KeyMapping::Custom`] function sees it.
#[derive(Debug, Clone, Copy)]
pub struct MessageView<'a> {
    /// The subject it was published on.
    pub subject: &'a str,
    /// Its headers, if any.
    pub headers: Option<&'a HeaderMap>,
    /// Its payload.
    pub payload: &'a Bytes,
    /// Its stream sequence.
    pub sequence: u64,
}

/// A user-provided key function for [`KeyMapping::Custom`].
pub type KeyFn = Arc<dyn Fn(&MessageView<'_>) -> String + Send + Sync>;

/// Which fold key a stream message updates.
///
/// Every message becomes a put of its payload under this key at its
/// stream sequence, so the fold holds the latest message per key and the
/// same engine and stores serve KV buckets and plain streams. Two
/// exceptions keep a KV bucket's stream projecting to the bucket's own
/// fold: a `KV-Operation: DEL` or `PURGE` header makes the message a
/// delete or purge marker, as does a server's `Nats-Marker-Reason`
/// (`MaxAge` and `Purge` a purge, anything else a delete), and an empty payload is a put of an empty value
/// (a tombstone to the fold's readers).
#[derive(Clone, Default)]
pub enum KeyMapping {
    /// The subject is the key (default): `orders.eu.42` -> `orders.eu.42`.
    #[default]
    Subject,
    /// The subject without this prefix: with `orders.`, `orders.eu.42` ->
    /// `eu.42`. A subject outside the prefix keeps its whole subject.
    StripPrefix(String),
    /// A key computed from the whole message (for example a field of the
    /// payload). Called once per delivered message, on the consumer's task:
    /// it must be cheap and must not block.
    Custom(KeyFn),
}

impl fmt::Debug for KeyMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Subject => f.write_str("Subject"),
            Self::StripPrefix(p) => f.debug_tuple("StripPrefix").field(p).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl KeyMapping {
    /// A [`KeyMapping::Custom`] from a closure.
    pub fn custom<F>(f: F) -> Self
    where
        F: Fn(&MessageView<'_>) -> String + Send + Sync + 'static,
    {
        Self::Custom(Arc::new(f))
    }

    /// The key of `message`.
    #[must_use]
    pub fn key_of(&self, message: &MessageView<'_>) -> String {
        match self {
            Self::Subject => message.subject.to_owned(),
            Self::StripPrefix(prefix) => message
                .subject
                .strip_prefix(prefix.as_str())
                .filter(|rest| !rest.is_empty())
                .unwrap_or(message.subject)
                .to_owned(),
            Self::Custom(f) => f(message),
        }
    }

    /// The update `message` stands for; `created` is the server's time of
    /// the message, when known.
    #[must_use]
    pub fn to_update(&self, message: &MessageView<'_>, created: Option<Timestamp>) -> KvUpdate {
        let key = self.key_of(message);
        let version = VersionToken::from_u64(message.sequence);
        let marker = || KvMarker {
            key: key.clone(),
            version,
            created,
        };
        let header = |name| {
            message
                .headers
                .and_then(|h| h.get(name))
                .map(async_nats::HeaderValue::as_str)
        };
        // A server's delete marker (limit markers) names only a reason.
        match (header(KV_OPERATION), header(MARKER_REASON)) {
            (Some("DEL"), _) => KvUpdate::Delete(marker()),
            (Some("PURGE"), _) | (None, Some("MaxAge" | "Purge")) => KvUpdate::Purge(marker()),
            (None, Some(_)) => KvUpdate::Delete(marker()),
            _ => KvUpdate::Put(KvEntry {
                key,
                value: message.payload.clone(),
                version,
                created,
                expires: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(
        subject: &'a str,
        payload: &'a Bytes,
        headers: Option<&'a HeaderMap>,
    ) -> MessageView<'a> {
        MessageView {
            subject,
            headers,
            payload,
            sequence: 7,
        }
    }

    #[test]
    fn a_message_is_a_put_keyed_by_its_subject_at_its_sequence() {
        let payload = Bytes::from_static(b"v");
        let u = KeyMapping::Subject.to_update(&view("orders.eu.1", &payload, None), None);
        assert_eq!(u.key(), "orders.eu.1");
        assert_eq!(u.revision(), Some(7));
        assert!(u.is_live());
    }

    #[test]
    fn a_stripped_prefix_leaves_subjects_outside_it_whole() {
        let m = KeyMapping::StripPrefix("orders.".into());
        let p = Bytes::new();
        assert_eq!(m.key_of(&view("orders.eu.1", &p, None)), "eu.1");
        assert_eq!(m.key_of(&view("audit.x", &p, None)), "audit.x");
        assert_eq!(m.key_of(&view("orders.", &p, None)), "orders.");
    }

    #[test]
    fn a_custom_key_sees_the_payload() {
        let m = KeyMapping::custom(|v| String::from_utf8_lossy(v.payload).into_owned());
        let p = Bytes::from_static(b"customer-9");
        assert_eq!(m.key_of(&view("orders.eu.1", &p, None)), "customer-9");
        assert_eq!(format!("{m:?}"), "Custom(..)");
    }

    #[test]
    fn kv_operation_headers_become_markers() {
        let p = Bytes::new();
        let mut del = HeaderMap::new();
        del.insert(KV_OPERATION, "DEL");
        let mut purge = HeaderMap::new();
        purge.insert(KV_OPERATION, "PURGE");
        let m = KeyMapping::Subject;
        assert!(matches!(
            m.to_update(&view("k", &p, Some(&del)), None),
            KvUpdate::Delete(_)
        ));
        assert!(matches!(
            m.to_update(&view("k", &p, Some(&purge)), None),
            KvUpdate::Purge(_)
        ));
        for (reason, purge) in [("MaxAge", true), ("Purge", true), ("Remove", false)] {
            let mut h = HeaderMap::new();
            h.insert(MARKER_REASON, reason);
            let u = m.to_update(&view("k", &p, Some(&h)), None);
            assert_eq!(matches!(u, KvUpdate::Purge(_)), purge, "{reason}");
            assert!(!u.is_live(), "{reason}");
        }
    }
}
