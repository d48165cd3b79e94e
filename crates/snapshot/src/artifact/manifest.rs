//! `MANIFEST.json` (A1): what an artifact holds and how to check it.

use serde::{Deserialize, Serialize};
use slipstream_kv::{WatchCursor, WatchScope};

use crate::error::{ArtifactInvalidReason, SnapshotError};
use crate::store::BackendId;

/// The manifest schema this build writes and reads.
pub const MANIFEST_SCHEMA: u64 = 1;
/// The manifest's file name at the artifact's root.
pub const MANIFEST_FILE: &str = "MANIFEST.json";
/// The directory holding the backend's files.
pub const DATA_DIR: &str = "data";
/// The largest manifest an import reads.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// One file of an artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    /// Path relative to the artifact root, `/`-separated, under `data/`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 digest.
    pub blake3: [u8; 32],
}

/// An artifact's manifest (A1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactManifest {
    /// The manifest schema version.
    pub schema: u64,
    /// The backend that wrote the data, with its format generation.
    pub backend_name: String,
    /// The backend's format generation.
    pub format_generation: u32,
    /// The cursor the data is exact at, memo included.
    pub cursor: WatchCursor,
    /// The watch scope the fold was built under.
    pub scope: WatchScope,
    /// Every file of the artifact except the manifest itself.
    pub files: Vec<ManifestFile>,
}

impl ArtifactManifest {
    /// The backend as `name/generation`.
    #[must_use]
    pub fn backend_label(&self) -> String {
        format!("{}/{}", self.backend_name, self.format_generation)
    }

    /// Whether the manifest names `backend`.
    #[must_use]
    pub fn is_from(&self, backend: BackendId) -> bool {
        self.backend_name == backend.name && self.format_generation == backend.format_generation
    }

    /// The JSON encoding.
    ///
    /// # Errors
    /// Never in practice; serialization errors are reported as corruption.
    pub fn to_json(&self) -> Result<Vec<u8>, SnapshotError> {
        let wire = Wire {
            schema: self.schema,
            backend: self.backend_name.clone(),
            format_generation: self.format_generation,
            cursor: hex_encode(&self.cursor.to_bytes()),
            cursor_revision: self.cursor.revision(),
            scope: WireScope::from(&self.scope),
            files: self
                .files
                .iter()
                .map(|f| WireFile {
                    path: f.path.clone(),
                    size: f.size,
                    blake3: hex_encode(&f.blake3),
                })
                .collect(),
        };
        serde_json::to_vec_pretty(&wire).map_err(|e| SnapshotError::Corrupted {
            path: MANIFEST_FILE.into(),
            offset: 0,
            detail: format!("manifest does not serialize: {e}"),
        })
    }

    /// Parse and check the shape of a manifest (not the files it lists).
    ///
    /// # Errors
    /// [`SnapshotError::ArtifactInvalid`] with `ManifestMalformed`,
    /// `UnsupportedSchema`, `CursorMalformed` or `PathTraversal`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let malformed = |e: serde_json::Error| {
            SnapshotError::artifact(ArtifactInvalidReason::ManifestMalformed {
                detail: e.to_string(),
            })
        };
        // The schema is read first so a future manifest is reported as such,
        // not as a shape error.
        let loose: serde_json::Value = serde_json::from_slice(bytes).map_err(malformed)?;
        let schema = loose.get("schema").and_then(serde_json::Value::as_u64);
        match schema {
            Some(MANIFEST_SCHEMA) => {}
            Some(found) => {
                return Err(SnapshotError::artifact(
                    ArtifactInvalidReason::UnsupportedSchema {
                        found,
                        supported: MANIFEST_SCHEMA,
                    },
                ));
            }
            None => {
                return Err(SnapshotError::artifact(
                    ArtifactInvalidReason::ManifestMalformed {
                        detail: "no numeric \"schema\" field".into(),
                    },
                ));
            }
        }
        let wire: Wire = serde_json::from_value(loose).map_err(malformed)?;
        let cursor_bytes = hex_decode(&wire.cursor).ok_or_else(|| {
            SnapshotError::artifact(ArtifactInvalidReason::CursorMalformed {
                detail: "not hex".into(),
            })
        })?;
        let cursor = WatchCursor::from_bytes(&cursor_bytes).map_err(|e| {
            SnapshotError::artifact(ArtifactInvalidReason::CursorMalformed {
                detail: e.to_string(),
            })
        })?;
        let mut files = Vec::with_capacity(wire.files.len());
        for f in wire.files {
            check_relative_path(&f.path)?;
            let digest = hex_decode(&f.blake3)
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| {
                    SnapshotError::artifact(ArtifactInvalidReason::ManifestMalformed {
                        detail: format!("digest of {:?} is not 32 hex bytes", f.path),
                    })
                })?;
            files.push(ManifestFile {
                path: f.path,
                size: f.size,
                blake3: digest,
            });
        }
        Ok(Self {
            schema: wire.schema,
            backend_name: wire.backend,
            format_generation: wire.format_generation,
            cursor,
            scope: wire.scope.into(),
            files,
        })
    }
}

/// A manifest path must be `data/` followed by plain names: no absolute
/// paths, no `.` or `..`, no backslashes or NULs.
fn check_relative_path(path: &str) -> Result<(), SnapshotError> {
    let bad = || {
        SnapshotError::artifact(ArtifactInvalidReason::PathTraversal {
            path: path.to_owned(),
        })
    };
    let mut parts = path.split('/');
    if parts.next() != Some(DATA_DIR) {
        return Err(bad());
    }
    let mut any = false;
    for part in parts {
        any = true;
        if part.is_empty()
            || part == "."
            || part == ".."
            || part.contains('\\')
            || part.contains('\0')
        {
            return Err(bad());
        }
    }
    if any { Ok(()) } else { Err(bad()) }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    schema: u64,
    backend: String,
    format_generation: u32,
    /// `WatchCursor::to_bytes`, hex: the memo travels with the revision.
    cursor: String,
    /// For people reading the manifest; the hex cursor is authoritative.
    cursor_revision: Option<u64>,
    scope: WireScope,
    files: Vec<WireFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireFile {
    path: String,
    size: u64,
    blake3: String,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum WireScope {
    All,
    Prefix { prefix: String },
    Prefixes { prefixes: Vec<String> },
}

impl From<&WatchScope> for WireScope {
    fn from(s: &WatchScope) -> Self {
        match s {
            WatchScope::All => Self::All,
            WatchScope::Prefix(p) => Self::Prefix { prefix: p.clone() },
            WatchScope::Prefixes(ps) => Self::Prefixes {
                prefixes: ps.clone(),
            },
        }
    }
}

impl From<WireScope> for WatchScope {
    fn from(s: WireScope) -> Self {
        match s {
            WireScope::All => Self::All,
            WireScope::Prefix { prefix } => Self::Prefix(prefix),
            WireScope::Prefixes { prefixes } => Self::Prefixes(prefixes),
        }
    }
}

/// Lower-case hex.
pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_through_json_with_its_memo() {
        let m = ArtifactManifest {
            schema: MANIFEST_SCHEMA,
            backend_name: "append-log".into(),
            format_generation: 1,
            cursor: WatchCursor::at(9).with_seen_evicting(),
            scope: WatchScope::Prefixes(vec!["a.".into(), "b.".into()]),
            files: vec![ManifestFile {
                path: "data/snapshot.log".into(),
                size: 12,
                blake3: [7; 32],
            }],
        };
        let back = ArtifactManifest::from_json(&m.to_json().unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn paths_outside_data_are_traversal() {
        for bad in [
            "data",
            "data/",
            "/data/x",
            "data/../x",
            "data/./x",
            "x/y",
            "data//x",
            "data/a\\b",
        ] {
            assert!(
                matches!(
                    check_relative_path(bad),
                    Err(SnapshotError::ArtifactInvalid {
                        reason: ArtifactInvalidReason::PathTraversal { .. }
                    })
                ),
                "{bad:?}"
            );
        }
        assert!(check_relative_path("data/sub/file.sst").is_ok());
    }

    #[test]
    fn hex_round_trips_and_rejects_odd_input() {
        assert_eq!(
            hex_decode(&hex_encode(&[0, 1, 0xab, 0xff])).unwrap(),
            vec![0, 1, 0xab, 0xff]
        );
        assert!(hex_decode("abc").is_none());
        assert!(hex_decode("zz").is_none());
    }
}
