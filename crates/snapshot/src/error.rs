//! `SnapshotError`: every failure of a snapshot store or an artifact.

use core::fmt;
use std::io;
use std::path::PathBuf;

/// Every failure of a snapshot store, an export or an import.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// A file-system operation failed.
    #[error("{operation} {path:?}: {source}")]
    Io {
        /// What was being done (`"open"`, `"fsync"`, ...).
        operation: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Stored data is damaged in a way recovery must not paper over: a
    /// checksum mismatch with valid data after it, an undecodable record, a
    /// foreign file.
    #[error("{path:?} is corrupted at byte {offset}: {detail}")]
    Corrupted {
        /// The damaged file.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// The store was written by a newer (or unknown) format of this backend.
    #[error("{path:?} has format version {found}; this build reads version {supported}")]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// The version found in the file.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// The directory holds another backend's store.
    #[error("{path:?} holds a {found} store, not a {expected} store")]
    WrongBackend {
        /// The directory.
        path: PathBuf,
        /// The backend that was asked to open it.
        expected: String,
        /// What was found there.
        found: String,
    },
    /// Another handle (in this or another process) has the store open.
    #[error("store {path:?} is locked by another handle")]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// An earlier failure left the writer in an unknown state (a failed
    /// compaction, a write that could not be rolled back); every later write
    /// fails. The committed data on disk is intact; reopen to continue.
    #[error("store is poisoned: {cause}")]
    Poisoned {
        /// The failure that poisoned it.
        cause: String,
    },
    /// An update cannot be stored (a value over the 64 MiB ceiling, an
    /// over-long key).
    #[error("cannot store update for key {key:?}: {reason}")]
    InvalidUpdate {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// An export or import destination exists and is not an empty directory.
    #[error("destination {path:?} exists and is not an empty directory")]
    DestinationNotEmpty {
        /// The destination.
        path: PathBuf,
    },
    /// An export's staged copy did not reopen to the cursor it was exported
    /// at; nothing was published.
    #[error("export verification failed: staged copy reopened at {found}, expected {expected}")]
    ExportVerification {
        /// The store's cursor, hex-encoded.
        expected: String,
        /// The staged copy's cursor, hex-encoded.
        found: String,
    },
    /// An artifact failed validation; nothing was written at the destination.
    #[error("invalid artifact: {reason}")]
    ArtifactInvalid {
        /// Why it was rejected.
        reason: ArtifactInvalidReason,
    },
    /// A backend-specific failure (fjall, RocksDB), with its description.
    #[error("{backend} error: {source}")]
    Backend {
        /// The backend's id.
        backend: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SnapshotError {
    /// An [`SnapshotError::Io`] for `operation` on `path`.
    pub fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            operation,
            path: path.into(),
            source,
        }
    }

    /// An [`SnapshotError::ArtifactInvalid`] with `reason`.
    #[must_use]
    pub fn artifact(reason: ArtifactInvalidReason) -> Self {
        Self::ArtifactInvalid { reason }
    }

    /// The artifact rejection reason, if this is one.
    #[must_use]
    pub fn artifact_reason(&self) -> Option<&ArtifactInvalidReason> {
        match self {
            Self::ArtifactInvalid { reason } => Some(reason),
            _ => None,
        }
    }
}

/// Why an artifact was rejected (A3).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArtifactInvalidReason {
    /// The artifact path is not a directory (or does not exist).
    NotADirectory,
    /// There is no `MANIFEST.json`.
    ManifestMissing,
    /// `MANIFEST.json` exceeds the size cap.
    ManifestTooLarge {
        /// Its size in bytes.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// `MANIFEST.json` is not valid JSON of the expected shape.
    ManifestMalformed {
        /// The parser's description.
        detail: String,
    },
    /// The manifest's schema version is not the one this build reads.
    UnsupportedSchema {
        /// The schema version in the manifest.
        found: u64,
        /// The schema version this build reads.
        supported: u64,
    },
    /// The artifact was exported by another backend or format generation.
    WrongBackend {
        /// This backend and generation (`id/generation`).
        expected: String,
        /// The manifest's (`id/generation`).
        found: String,
    },
    /// A manifest path is absolute, empty, or has a component that is not a
    /// plain name (`..`, `.`, a separator, NUL).
    PathTraversal {
        /// The offending path as written in the manifest.
        path: String,
    },
    /// The manifest lists the same file twice.
    DuplicateFile {
        /// The path.
        path: String,
    },
    /// A listed file is not in the artifact.
    MissingFile {
        /// The path.
        path: String,
    },
    /// The artifact holds a file the manifest does not list.
    ExtraFile {
        /// The path, relative to the artifact.
        path: String,
    },
    /// The artifact holds a symbolic link.
    Symlink {
        /// The path, relative to the artifact.
        path: String,
    },
    /// The artifact holds something that is neither a file nor a directory.
    NotARegularFile {
        /// The path, relative to the artifact.
        path: String,
    },
    /// A file's size differs from the manifest's.
    SizeMismatch {
        /// The path.
        path: String,
        /// The manifest's size.
        expected: u64,
        /// The size found.
        found: u64,
    },
    /// A file's BLAKE3 digest differs from the manifest's.
    DigestMismatch {
        /// The path.
        path: String,
    },
    /// The manifest's cursor does not decode.
    CursorMalformed {
        /// The decoder's description.
        detail: String,
    },
    /// The data does not open as a store of this backend.
    DataUnreadable {
        /// The store's error.
        detail: String,
    },
    /// The data opens at a cursor other than the manifest's.
    CursorMismatch {
        /// The manifest's cursor, hex-encoded.
        manifest: String,
        /// The data's cursor, hex-encoded.
        data: String,
    },
}

impl fmt::Display for ArtifactInvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotADirectory => f.write_str("artifact is not a directory"),
            Self::ManifestMissing => f.write_str("MANIFEST.json is missing"),
            Self::ManifestTooLarge { size, limit } => {
                write!(
                    f,
                    "MANIFEST.json is {size} bytes, over the {limit}-byte cap"
                )
            }
            Self::ManifestMalformed { detail } => write!(f, "MANIFEST.json is malformed: {detail}"),
            Self::UnsupportedSchema { found, supported } => {
                write!(
                    f,
                    "manifest schema {found} is not supported (this build reads {supported})"
                )
            }
            Self::WrongBackend { expected, found } => {
                write!(f, "artifact is from backend {found}, expected {expected}")
            }
            Self::PathTraversal { path } => {
                write!(f, "manifest path {path:?} escapes the artifact")
            }
            Self::DuplicateFile { path } => write!(f, "manifest lists {path:?} twice"),
            Self::MissingFile { path } => write!(f, "listed file {path:?} is missing"),
            Self::ExtraFile { path } => write!(f, "unlisted file {path:?} in artifact"),
            Self::Symlink { path } => write!(f, "{path:?} is a symbolic link"),
            Self::NotARegularFile { path } => write!(f, "{path:?} is not a regular file"),
            Self::SizeMismatch {
                path,
                expected,
                found,
            } => write!(f, "{path:?} is {found} bytes, manifest says {expected}"),
            Self::DigestMismatch { path } => write!(f, "{path:?} does not match its BLAKE3 digest"),
            Self::CursorMalformed { detail } => write!(f, "manifest cursor is malformed: {detail}"),
            Self::DataUnreadable { detail } => write!(f, "artifact data does not open: {detail}"),
            Self::CursorMismatch { manifest, data } => {
                write!(
                    f,
                    "data cursor {data} differs from manifest cursor {manifest}"
                )
            }
        }
    }
}
