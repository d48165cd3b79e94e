//! A store directory as the CLI lays it out (C2): a marker file naming the
//! backend, the bucket and the scope, next to the backend's own files in
//! `fold/`. Later commands read the marker, so they need no `--backend`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use slipstream::WatchScope;
use slipstream::snapshot::detect_backend;

use crate::error::CliError;

/// The marker's file name inside the store directory.
pub(crate) const MARKER_FILE: &str = "slipstream-store.json";
/// The backend's directory inside the store directory.
pub(crate) const FOLD_DIR: &str = "fold";
/// The marker's layout version.
const MARKER_VERSION: u32 = 1;

/// The snapshot store backends the CLI knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BackendKind {
    /// The pure-Rust append-only log, for folds that fit in memory.
    AppendLog,
    /// The fjall LSM store.
    Fjall,
    /// The RocksDB LSM store.
    Rocksdb,
}

impl BackendKind {
    /// The backend's stable name, as stores and artifacts record it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::AppendLog => "append-log",
            Self::Fjall => "fjall",
            Self::Rocksdb => "rocksdb",
        }
    }

    /// The backend with this stable name.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        [Self::AppendLog, Self::Fjall, Self::Rocksdb]
            .into_iter()
            .find(|b| b.name() == name)
    }
}

/// The marker file's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Marker {
    /// The marker's layout version.
    pub(crate) slipstream_store: u32,
    /// The backend's stable name.
    pub(crate) backend: String,
    /// The bucket the fold mirrors, once known.
    pub(crate) bucket: Option<String>,
    /// The key prefixes the fold covers; `None` is the whole bucket.
    pub(crate) prefixes: Option<Vec<String>>,
}

impl Marker {
    /// A marker for a new store.
    pub(crate) fn new(backend: BackendKind, bucket: Option<String>, scope: &WatchScope) -> Self {
        Self {
            slipstream_store: MARKER_VERSION,
            backend: backend.name().to_owned(),
            bucket,
            prefixes: prefixes_of(scope),
        }
    }

    /// The watch scope the fold was built under.
    pub(crate) fn scope(&self) -> WatchScope {
        scope_of(self.prefixes.clone())
    }
}

/// The scope for a list of `--prefix` values: none is the whole bucket.
pub(crate) fn scope_of(prefixes: Option<Vec<String>>) -> WatchScope {
    match prefixes {
        None => WatchScope::All,
        Some(mut ps) => {
            ps.sort();
            ps.dedup();
            if ps.iter().any(String::is_empty) {
                WatchScope::All
            } else if ps.len() == 1 {
                WatchScope::Prefix(ps.remove(0))
            } else {
                WatchScope::Prefixes(ps)
            }
        }
    }
}

/// The sorted prefix list of a scope; `None` for the whole bucket.
pub(crate) fn prefixes_of(scope: &WatchScope) -> Option<Vec<String>> {
    if scope.is_all() {
        return None;
    }
    let mut ps = match scope {
        WatchScope::All => return None,
        WatchScope::Prefix(p) => vec![p.clone()],
        WatchScope::Prefixes(ps) => ps.clone(),
    };
    ps.sort();
    ps.dedup();
    Some(ps)
}

/// An existing store directory: where its fold lives and what it holds.
#[derive(Debug, Clone)]
pub(crate) struct StoreDir {
    /// The directory given on the command line.
    pub(crate) root: PathBuf,
    /// The backend's directory.
    pub(crate) fold: PathBuf,
    /// The backend.
    pub(crate) backend: BackendKind,
    /// The marker; `None` for a bare backend directory a library made.
    pub(crate) marker: Option<Marker>,
}

impl StoreDir {
    /// Read an existing store directory: its marker, or, for a directory a
    /// library wrote, the backend's own signature files.
    ///
    /// # Errors
    /// [`CliError::Store`] when `root` is missing or holds no store.
    pub(crate) fn open(root: &Path) -> Result<Self, CliError> {
        match Self::detect(root)? {
            Some(dir) => Ok(dir),
            None if root.exists() => Err(store_error(
                root,
                "holds no slipstream store (run `slipstream mirror` or `slipstream import` first)",
            )),
            None => Err(store_error(root, "does not exist")),
        }
    }

    /// Like [`StoreDir::open`], `None` when `root` is absent or empty.
    ///
    /// # Errors
    /// [`CliError::Store`] for a directory holding something else.
    pub(crate) fn find(root: &Path) -> Result<Option<Self>, CliError> {
        match Self::detect(root)? {
            Some(dir) => Ok(Some(dir)),
            None if is_absent_or_empty(root)? => Ok(None),
            None => Err(store_error(
                root,
                "is not empty and holds no slipstream store; refusing to write into it (use a new --store)",
            )),
        }
    }

    /// The store at `root` by its marker or its backend's files; `None` when
    /// neither is there.
    fn detect(root: &Path) -> Result<Option<Self>, CliError> {
        let marker_path = root.join(MARKER_FILE);
        if marker_path.exists() {
            let marker = read_marker(&marker_path)?;
            let backend = BackendKind::from_name(&marker.backend).ok_or_else(|| {
                store_error(
                    root,
                    &format!("names an unknown backend {:?}", marker.backend),
                )
            })?;
            return Ok(Some(Self {
                root: root.to_owned(),
                fold: root.join(FOLD_DIR),
                backend,
                marker: Some(marker),
            }));
        }
        // A store opened by a library, or an import that stopped before its
        // marker was written.
        for fold in [root.to_owned(), root.join(FOLD_DIR)] {
            if let Some(backend) = detect_backend(&fold).and_then(BackendKind::from_name) {
                return Ok(Some(Self {
                    root: root.to_owned(),
                    fold,
                    backend,
                    marker: None,
                }));
            }
        }
        Ok(None)
    }

    /// Create the layout of a new store: the directory and its marker. The
    /// backend creates its files in [`StoreDir::fold`] when first opened.
    ///
    /// # Errors
    /// I/O failures.
    pub(crate) fn create(root: &Path, marker: Marker) -> Result<Self, CliError> {
        let backend = BackendKind::from_name(&marker.backend)
            .ok_or_else(|| store_error(root, "unknown backend"))?;
        fs::create_dir_all(root).map_err(|e| CliError::io("create directory", root, e))?;
        write_marker(root, &marker)?;
        Ok(Self {
            root: root.to_owned(),
            fold: root.join(FOLD_DIR),
            backend,
            marker: Some(marker),
        })
    }

    /// Replace the marker (written to a temp file, then renamed).
    ///
    /// # Errors
    /// I/O failures.
    pub(crate) fn set_marker(&mut self, marker: Marker) -> Result<(), CliError> {
        write_marker(&self.root, &marker)?;
        self.marker = Some(marker);
        Ok(())
    }

    /// The scope the fold was built under, as far as the store records it.
    pub(crate) fn scope(&self) -> WatchScope {
        self.marker.as_ref().map_or(WatchScope::All, Marker::scope)
    }
}

fn store_error(root: &Path, detail: &str) -> CliError {
    CliError::Store {
        path: root.to_owned(),
        detail: detail.to_owned(),
    }
}

/// Whether `path` does not exist or is an empty directory.
pub(crate) fn is_absent_or_empty(path: &Path) -> Result<bool, CliError> {
    match fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(CliError::io("list", path, e)),
    }
}

fn read_marker(path: &Path) -> Result<Marker, CliError> {
    // A marker is a few hundred bytes; anything far larger is not ours.
    const MAX_MARKER_BYTES: u64 = 1 << 20;
    let meta = fs::metadata(path).map_err(|e| CliError::io("read", path, e))?;
    if meta.len() > MAX_MARKER_BYTES {
        return Err(CliError::Store {
            path: path.to_owned(),
            detail: "marker file is too large".into(),
        });
    }
    let bytes = fs::read(path).map_err(|e| CliError::io("read", path, e))?;
    let marker: Marker = serde_json::from_slice(&bytes).map_err(|e| CliError::Store {
        path: path.to_owned(),
        detail: format!("unreadable marker file: {e}"),
    })?;
    if marker.slipstream_store != MARKER_VERSION {
        return Err(CliError::Store {
            path: path.to_owned(),
            detail: format!(
                "marker layout version {} is not supported (this build reads {MARKER_VERSION})",
                marker.slipstream_store
            ),
        });
    }
    Ok(marker)
}

fn write_marker(root: &Path, marker: &Marker) -> Result<(), CliError> {
    let path = root.join(MARKER_FILE);
    let temp = root.join(format!(".{MARKER_FILE}.tmp"));
    let mut bytes = serde_json::to_vec_pretty(marker).map_err(|e| CliError::Store {
        path: path.clone(),
        detail: format!("cannot encode marker: {e}"),
    })?;
    bytes.push(b'\n');
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&temp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        fs::File::open(root)?.sync_all()
    };
    write().map_err(|e| CliError::io("write marker", &path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_lists_normalize_to_the_narrowest_scope() {
        assert_eq!(scope_of(None), WatchScope::All);
        assert_eq!(scope_of(Some(vec![String::new()])), WatchScope::All);
        assert_eq!(
            scope_of(Some(vec!["b.".into(), "a.".into(), "b.".into()])),
            WatchScope::Prefixes(vec!["a.".into(), "b.".into()])
        );
        assert_eq!(
            prefixes_of(&scope_of(Some(vec!["a.".into()]))),
            Some(vec!["a.".to_owned()])
        );
    }

    #[test]
    fn marker_round_trips_and_names_its_backend() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("store");
        let marker = Marker::new(BackendKind::Fjall, Some("routes".into()), &WatchScope::All);
        StoreDir::create(&root, marker.clone()).unwrap();
        let found = StoreDir::open(&root).unwrap();
        assert_eq!(
            (found.backend, found.marker),
            (BackendKind::Fjall, Some(marker))
        );
    }

    #[test]
    fn foreign_non_empty_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("notes.txt"), b"x").unwrap();
        let err = StoreDir::find(tmp.path()).unwrap_err();
        assert!(
            err.to_string().contains("holds no slipstream store"),
            "{err}"
        );
    }
}
