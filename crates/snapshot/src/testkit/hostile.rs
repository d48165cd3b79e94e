//! Artifact hostility (A3): each defect is rejected with its typed reason
//! and nothing appears at the destination.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use slipstream_kv::{KvEntry, KvUpdate, VersionToken, WatchCursor, WatchScope};

use super::OptionsFor;
use crate::artifact::{
    Handover, MANIFEST_FILE, MAX_MANIFEST_BYTES, hex_encode, import, import_open_with,
};
use crate::error::{ArtifactInvalidReason as Reason, SnapshotError};
use crate::store::{Durability, SnapshotStore};

/// A defect planted in an otherwise good artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostileCase {
    /// A byte of the largest data file flipped (size unchanged).
    TamperedFile,
    /// A listed data file deleted.
    MissingFile,
    /// An unlisted file added under `data/`.
    ExtraFile,
    /// A symbolic link added under `data/`.
    Symlink,
    /// A manifest path rewritten to `data/../escape`.
    PathTraversal,
    /// A manifest padded past the size cap.
    OversizedManifest,
    /// The manifest names another backend.
    WrongBackend,
    /// The manifest has a schema from the future.
    FutureSchema,
    /// The manifest's cursor differs from the data's (digests still match).
    CursorMismatch,
    /// No manifest at all.
    MissingManifest,
}

impl HostileCase {
    fn accepts(self, reason: &Reason) -> bool {
        match self {
            Self::TamperedFile => matches!(reason, Reason::DigestMismatch { .. }),
            Self::MissingFile => matches!(reason, Reason::MissingFile { .. }),
            Self::ExtraFile => {
                matches!(reason, Reason::ExtraFile { path } if path == "data/zz-extra.bin")
            }
            Self::Symlink => matches!(reason, Reason::Symlink { path } if path == "data/zz-link"),
            Self::PathTraversal => {
                matches!(reason, Reason::PathTraversal { path } if path == "data/../escape")
            }
            Self::OversizedManifest => matches!(reason, Reason::ManifestTooLarge { .. }),
            Self::WrongBackend => {
                matches!(reason, Reason::WrongBackend { found, .. } if found.starts_with("no-such-backend/"))
            }
            Self::FutureSchema => matches!(reason, Reason::UnsupportedSchema { found: 2, .. }),
            Self::CursorMismatch => matches!(reason, Reason::CursorMismatch { .. }),
            Self::MissingManifest => matches!(reason, Reason::ManifestMissing),
        }
    }
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn edit_manifest(artifact: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = artifact.join(MANIFEST_FILE);
    let mut json: serde_json::Value = ok(serde_json::from_slice(&ok(fs::read(&path))));
    f(&mut json);
    ok(fs::write(&path, ok(serde_json::to_vec_pretty(&json))));
}

fn largest_data_file(artifact: &Path) -> (PathBuf, String) {
    let mut best: Option<(u64, PathBuf, String)> = None;
    let mut stack = vec![(artifact.join("data"), "data".to_owned())];
    while let Some((dir, rel)) = stack.pop() {
        for e in ok(fs::read_dir(&dir)) {
            let e = ok(e);
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = ok(fs::symlink_metadata(e.path()));
            if meta.is_dir() {
                stack.push((e.path(), format!("{rel}/{name}")));
            } else if best.as_ref().is_none_or(|(size, _, _)| meta.len() > *size) {
                best = Some((meta.len(), e.path(), format!("{rel}/{name}")));
            }
        }
    }
    let (_, path, rel) = best.unwrap_or_else(|| panic!("artifact has no data file"));
    (path, rel)
}

/// Export a good artifact, plant `case`, import it: the import must fail
/// with the case's typed reason, leaving nothing at the destination and no
/// staging directory behind.
pub fn import_rejects_hostile_artifact<S: SnapshotStore>(
    options: OptionsFor<S>,
    case: HostileCase,
) {
    let tmp = ok(tempfile::tempdir());
    let artifact = tmp.path().join("artifact");
    {
        let (_, mut store) = ok(S::open(
            &tmp.path().join("s"),
            &options(Durability::NoFsync),
        ));
        let batch: Vec<_> = (1..=500u64)
            .map(|i| {
                KvUpdate::Put(KvEntry {
                    key: format!("key.{i:04}"),
                    value: Bytes::from(vec![(i % 256) as u8; 64]),
                    version: VersionToken::from_u64(i),
                    created: None,
                    expires: None,
                })
            })
            .collect();
        ok(store.apply(&batch, &WatchCursor::at(500)));
        ok(store.export_to(&artifact, &WatchScope::All));
    }
    match case {
        HostileCase::TamperedFile => {
            let (path, _) = largest_data_file(&artifact);
            let mut bytes = ok(fs::read(&path));
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x01;
            ok(fs::write(&path, bytes));
        }
        HostileCase::MissingFile => ok(fs::remove_file(largest_data_file(&artifact).0)),
        HostileCase::ExtraFile => ok(fs::write(artifact.join("data/zz-extra.bin"), b"extra")),
        HostileCase::Symlink => {
            let (target, _) = largest_data_file(&artifact);
            ok(std::os::unix::fs::symlink(
                target,
                artifact.join("data/zz-link"),
            ));
        }
        HostileCase::PathTraversal => {
            ok(fs::write(tmp.path().join("escape"), b"outside"));
            edit_manifest(&artifact, |m| {
                m["files"][0]["path"] = "data/../escape".into()
            });
        }
        HostileCase::OversizedManifest => {
            let path = artifact.join(MANIFEST_FILE);
            let mut bytes = ok(fs::read(&path));
            let cap = usize::try_from(MAX_MANIFEST_BYTES).unwrap_or(usize::MAX);
            bytes.resize(cap + 1, b' ');
            ok(fs::write(&path, bytes));
        }
        HostileCase::WrongBackend => {
            edit_manifest(&artifact, |m| m["backend"] = "no-such-backend".into());
        }
        HostileCase::FutureSchema => edit_manifest(&artifact, |m| m["schema"] = 2.into()),
        HostileCase::CursorMismatch => edit_manifest(&artifact, |m| {
            m["cursor"] = hex_encode(&WatchCursor::at(499).to_bytes()).into();
        }),
        HostileCase::MissingManifest => ok(fs::remove_file(artifact.join(MANIFEST_FILE))),
    }
    let dest = tmp.path().join("dest");
    let result = import::<S>(&artifact, &dest, &options(Durability::NoFsync));
    match &result {
        Err(SnapshotError::ArtifactInvalid { reason }) if case.accepts(reason) => {}
        other => panic!("{case:?}: expected its typed ArtifactInvalid reason, got {other:?}"),
    }
    assert!(
        !dest.exists(),
        "{case:?}: nothing may appear at the destination"
    );
    // The opening import checks the store at the destination itself, and
    // must leave it as absent as the plain one; the moving import last, as
    // it gives up the artifact's files.
    for handover in [Handover::Copy, Handover::Move] {
        let opened =
            import_open_with::<S>(&artifact, &dest, &options(Durability::NoFsync), handover);
        match &opened {
            Err(SnapshotError::ArtifactInvalid { reason }) if case.accepts(reason) => {}
            Err(other) => {
                panic!(
                    "{case:?}: import_open {handover:?}: expected its typed reason, got {other:?}"
                )
            }
            Ok(_) => panic!("{case:?}: import_open {handover:?} accepted a hostile artifact"),
        }
        assert!(
            !dest.exists(),
            "{case:?}: import_open {handover:?} left something at the destination"
        );
    }
    let hidden: Vec<_> = ok(fs::read_dir(tmp.path()))
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        hidden.is_empty(),
        "{case:?}: staging left behind: {hidden:?}"
    );
}
