//! Names and small values: which (bucket, scope, backend) a transport
//! serves, payload ids, and the pointer's and lease's encodings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use slipstream_kv::WatchScope;
use slipstream_snapshot::{ArtifactManifest, BackendId};

/// What one line of artifacts is for: one KV bucket's fold under one watch
/// scope, in one backend's format. One exporter at a time per key (the
/// lease), one pointer per key, and artifacts of one key are never mixed
/// with another's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetKey {
    bucket: String,
    scope: WatchScope,
    backend_name: String,
    format_generation: u32,
}

impl FleetKey {
    /// Artifacts of `bucket`'s fold under `scope`, written by `backend`.
    #[must_use]
    pub fn new(bucket: impl Into<String>, scope: WatchScope, backend: BackendId) -> Self {
        Self {
            bucket: bucket.into(),
            scope,
            backend_name: backend.name.to_owned(),
            format_generation: backend.format_generation,
        }
    }

    /// The KV bucket whose fold the artifacts hold.
    #[must_use]
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The watch scope.
    #[must_use]
    pub fn scope(&self) -> &WatchScope {
        &self.scope
    }

    /// `name/generation` of the backend, as manifests label it.
    #[must_use]
    pub fn backend_label(&self) -> String {
        format!("{}/{}", self.backend_name, self.format_generation)
    }

    /// Whether `manifest` belongs to this key (scope and backend; the
    /// manifest does not name the bucket).
    #[must_use]
    pub fn matches(&self, manifest: &ArtifactManifest) -> bool {
        manifest.backend_name == self.backend_name
            && manifest.format_generation == self.format_generation
            && manifest.scope == self.scope
    }

    /// The label used in errors.
    pub(crate) fn describe(&self) -> String {
        format!(
            "bucket {:?}, scope {:?}, backend {}",
            self.bucket,
            self.scope,
            self.backend_label()
        )
    }

    /// A name segment safe as a KV key part and an object name part:
    /// readable bucket and backend, and a digest of the scope (prefixes may
    /// hold any character). Distinct keys give distinct prefixes unless the
    /// sanitised bucket names collide, so the digest covers the raw bucket
    /// name too.
    #[must_use]
    pub fn prefix(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(self.bucket.as_bytes());
        hasher.update(&[0]);
        match &self.scope {
            WatchScope::All => {
                hasher.update(b"all");
            }
            WatchScope::Prefix(p) => {
                hasher.update(b"prefix\0");
                hasher.update(p.as_bytes());
            }
            WatchScope::Prefixes(ps) => {
                hasher.update(b"prefixes");
                for p in ps {
                    hasher.update(&[0]);
                    hasher.update(p.as_bytes());
                }
            }
        }
        let digest = hasher.finalize();
        let short = &digest.to_hex()[..16];
        format!(
            "{}.{}-g{}.{short}",
            sanitise(&self.bucket),
            sanitise(&self.backend_name),
            self.format_generation
        )
    }
}

fn sanitise(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() { "_".into() } else { out }
}

/// A payload id: the artifact's rank (zero-padded so names sort by rank)
/// and a unique suffix: `00000000000000000042-1a2b3c4d5e6f7081`.
pub(crate) fn new_payload_id(rank: u64) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut hasher = blake3::Hasher::new();
    hasher.update(&nanos.to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.update(format!("{:?}", std::thread::current().id()).as_bytes());
    let unique = &hasher.finalize().to_hex()[..16];
    format!("{rank:020}-{unique}")
}

/// The rank in a payload id, `None` unless the id is exactly what
/// [`new_payload_id`] writes (so a stored name can never smuggle a path).
pub(crate) fn payload_rank(id: &str) -> Option<u64> {
    let (rank, unique) = id.split_once('-')?;
    let plain = rank.len() == 20
        && rank.bytes().all(|b| b.is_ascii_digit())
        && unique.len() == 16
        && unique
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if plain { rank.parse().ok() } else { None }
}

/// Whether `id` is a well-formed payload id.
pub(crate) fn is_payload_id(id: &str) -> bool {
    payload_rank(id).is_some()
}

/// The pointer's value: which payload is the newest, at what rank, and the
/// BLAKE3 of its manifest's bytes (so a manifest swapped under the pointer is
/// refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PointerValue {
    pub(crate) payload: String,
    pub(crate) rank: u64,
    pub(crate) manifest_blake3: String,
    /// When the pointer was moved here (wall clock, ms since the Unix
    /// epoch); absent in values written without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) published_at_unix_ms: Option<u64>,
}

impl PointerValue {
    /// The value, `None` when it does not parse or names a malformed
    /// payload id, or a rank other than the id's.
    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        let value: Self = serde_json::from_slice(bytes).ok()?;
        (payload_rank(&value.payload) == Some(value.rank) && value.manifest_blake3.len() == 64)
            .then_some(value)
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        // A struct of strings and a number always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The export lease's value: who holds it, until when (wall clock, ms since
/// the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LeaseValue {
    pub(crate) holder: String,
    pub(crate) expires_at_unix_ms: u64,
}

impl LeaseValue {
    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Milliseconds since the Unix epoch, by the local wall clock.
pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_ids_sort_by_rank_and_parse_back() {
        let a = new_payload_id(9);
        let b = new_payload_id(10);
        assert!(a < b);
        assert_ne!(new_payload_id(9), new_payload_id(9));
        assert_eq!(payload_rank(&a), Some(9));
        assert_eq!(payload_rank(&new_payload_id(u64::MAX)), Some(u64::MAX));
    }

    #[test]
    fn only_plain_payload_ids_parse() {
        for bad in [
            "",
            "9-1a2b3c4d5e6f7081",
            "00000000000000000009-../../etc",
            "00000000000000000009-1A2B3C4D5E6F7081",
            "00000000000000000009-1a2b3c4d5e6f70811",
            "0000000000000000000x-1a2b3c4d5e6f7081",
            "99999999999999999999-1a2b3c4d5e6f7081",
        ] {
            assert_eq!(payload_rank(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_pointer_whose_rank_disagrees_with_its_payload_is_unparseable() {
        let good = PointerValue {
            payload: new_payload_id(5),
            rank: 5,
            manifest_blake3: "0".repeat(64),
            published_at_unix_ms: Some(1),
        };
        assert_eq!(PointerValue::parse(&good.encode()), Some(good.clone()));
        let lying = PointerValue { rank: 6, ..good };
        assert_eq!(PointerValue::parse(&lying.encode()), None);
        assert_eq!(PointerValue::parse(b"{"), None);
    }

    #[test]
    fn prefixes_separate_scopes_backends_and_buckets() {
        let backend = BackendId {
            name: "append-log",
            format_generation: 1,
        };
        let a = FleetKey::new("cfg", WatchScope::All, backend).prefix();
        let b = FleetKey::new("cfg", WatchScope::Prefix("a.".into()), backend).prefix();
        let c = FleetKey::new("cfg.x", WatchScope::All, backend).prefix();
        let d = FleetKey::new("cfg_x", WatchScope::All, backend).prefix();
        assert!(a.starts_with("cfg.append-log-g1."));
        assert_ne!(a, b);
        assert_ne!(c, d);
    }
}
