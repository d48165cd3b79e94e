//! Artifacts in a local (or mounted) directory.
//!
//! Layout under the root:
//!
//! ```text
//! objects/<prefix>/<payload>/MANIFEST.json, objects/<prefix>/<payload>/data/...
//! meta/<prefix>.pointer, meta/<prefix>.lease   (revision line, then value)
//! meta/.lock                                    (held while a value changes)
//! tmp/                                          (objects being written)
//! ```
//!
//! Guarantee: every metadata compare-and-set runs under an exclusive
//! advisory lock on `meta/.lock` (`flock` on Unix), so CAS is sound between
//! threads and processes on one host and on file systems that honour such
//! locks; a network file system that does not honour them voids the CAS.
//! Objects and values are written to a temporary file, synced and renamed
//! into place, so a crash never leaves a half-written object or pointer.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncRead;

use crate::core::{Backend, Cas, Core, Download, MetaEntry};
use crate::error::FleetError;
use crate::naming::FleetKey;
use crate::transport::FleetTimeouts;

/// The largest metadata value read (pointer and lease are tiny).
const MAX_META_BYTES: u64 = 64 * 1024;

/// The local directory store.
#[derive(Debug)]
pub(crate) struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    #[cfg(test)]
    pub(crate) fn at(root: PathBuf) -> Self {
        Self { root }
    }

    fn objects(&self) -> PathBuf {
        self.root.join("objects")
    }

    fn meta(&self) -> PathBuf {
        self.root.join("meta")
    }

    fn object_path(&self, name: &str) -> Result<PathBuf, FleetError> {
        let mut path = self.objects();
        for part in name.split('/') {
            if part.is_empty() || part == "." || part == ".." || part.contains(['\\', '\0']) {
                return Err(FleetError::InvalidName(name.to_owned()));
            }
            path.push(part);
        }
        Ok(path)
    }

    fn meta_path(&self, key: &str) -> Result<PathBuf, FleetError> {
        let plain = !key.is_empty()
            && !key.starts_with('.')
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if plain {
            Ok(self.meta().join(key))
        } else {
            Err(FleetError::InvalidName(key.to_owned()))
        }
    }

    /// Run `f` on a blocking thread under the metadata lock.
    async fn locked<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Path) -> Result<T, FleetError> + Send + 'static,
    ) -> Result<T, FleetError> {
        let meta = self.meta();
        tokio::task::spawn_blocking(move || {
            fs::create_dir_all(&meta).map_err(|e| FleetError::io("create", &meta, e))?;
            let lock_path = meta.join(".lock");
            let lock = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(|e| FleetError::io("open", &lock_path, e))?;
            lock.lock()
                .map_err(|e| FleetError::io("lock", &lock_path, e))?;
            let result = f(&meta);
            // Dropping the file releases the lock too; unlocking first keeps
            // the critical section exactly this long.
            let _ = lock.unlock();
            result
        })
        .await
        .map_err(|_| FleetError::TaskFailed("a metadata update"))?
    }

    fn temp_path(&self) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        self.root.join("tmp").join(format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ))
    }
}

/// A metadata file: `<revision> put|del\n` then the value.
fn read_meta(path: &Path) -> Result<Option<MetaEntry>, FleetError> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FleetError::io("open", path, e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_META_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| FleetError::io("read", path, e))?;
    let split = bytes.iter().position(|b| *b == b'\n');
    let (head, value) = match split {
        Some(i) => (&bytes[..i], bytes[i + 1..].to_vec()),
        None => (&bytes[..], Vec::new()),
    };
    let head = String::from_utf8_lossy(head);
    let mut words = head.split(' ');
    let revision = words.next().and_then(|r| r.parse::<u64>().ok());
    let op = words.next();
    match (revision, op) {
        (Some(revision), Some("put")) => Ok(Some(MetaEntry {
            value: Some(value),
            revision,
        })),
        (Some(revision), Some("del")) => Ok(Some(MetaEntry {
            value: None,
            revision,
        })),
        // A damaged file reads as a value nobody can parse, at revision 0,
        // so CAS over it still works and K12/A5 treat it as corrupt.
        _ => Ok(Some(MetaEntry {
            value: Some(bytes),
            revision: 0,
        })),
    }
}

/// The next revision: one sequence for all keys, so a recreated key never
/// reuses a revision a stale reader might hold.
fn next_revision(meta: &Path) -> Result<u64, FleetError> {
    let path = meta.join(".seq");
    let current = match fs::read_to_string(&path) {
        Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(FleetError::io("read", &path, e)),
    };
    let next = current.saturating_add(1);
    write_atomically(&path, next.to_string().as_bytes())?;
    Ok(next)
}

fn write_meta(meta: &Path, path: &Path, value: Option<&[u8]>) -> Result<(), FleetError> {
    let revision = next_revision(meta)?;
    let mut bytes = match value {
        Some(_) => format!("{revision} put\n").into_bytes(),
        None => format!("{revision} del\n").into_bytes(),
    };
    bytes.extend_from_slice(value.unwrap_or_default());
    write_atomically(path, &bytes)
}

/// Write `bytes` to a sibling temporary file, sync it and rename it onto
/// `path`, then sync the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FleetError> {
    let tmp = path.with_extension("tmp-write");
    let mut file = fs::File::create(&tmp).map_err(|e| FleetError::io("create", &tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| FleetError::io("write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| FleetError::io("rename", path, e))?;
    sync_parent(path)
}

fn sync_parent(path: &Path) -> Result<(), FleetError> {
    if let Some(parent) = path.parent() {
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| FleetError::io("fsync", parent, e))?;
    }
    Ok(())
}

impl Backend for LocalDir {
    async fn meta_get(&self, key: &str) -> Result<Option<MetaEntry>, FleetError> {
        let path = self.meta_path(key)?;
        self.locked(move |_| read_meta(&path)).await
    }

    async fn meta_create(&self, key: &str, value: Vec<u8>) -> Result<Cas, FleetError> {
        let path = self.meta_path(key)?;
        self.locked(move |meta| match read_meta(&path)? {
            Some(MetaEntry { value: Some(_), .. }) => Ok(Cas::Conflict),
            _ => write_meta(meta, &path, Some(&value)).map(|()| Cas::Written),
        })
        .await
    }

    async fn meta_update(
        &self,
        key: &str,
        value: Vec<u8>,
        revision: u64,
    ) -> Result<Cas, FleetError> {
        let path = self.meta_path(key)?;
        self.locked(move |meta| match read_meta(&path)? {
            Some(e) if e.revision == revision => {
                write_meta(meta, &path, Some(&value)).map(|()| Cas::Written)
            }
            _ => Ok(Cas::Conflict),
        })
        .await
    }

    async fn meta_delete(&self, key: &str, revision: u64) -> Result<Cas, FleetError> {
        let path = self.meta_path(key)?;
        self.locked(move |meta| match read_meta(&path)? {
            Some(e) if e.revision == revision && e.value.is_some() => {
                write_meta(meta, &path, None).map(|()| Cas::Written)
            }
            _ => Ok(Cas::Conflict),
        })
        .await
    }

    async fn put_object(
        &self,
        name: &str,
        data: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<(), FleetError> {
        let path = self.object_path(name)?;
        let tmp = self.temp_path();
        for dir in [tmp.parent(), path.parent()].into_iter().flatten() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| FleetError::io("create", dir, e))?;
        }
        let written = async {
            let mut out = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| FleetError::io("create", &tmp, e))?;
            tokio::io::copy(data, &mut out)
                .await
                .map_err(|e| FleetError::io("write", &tmp, e))?;
            out.sync_all()
                .await
                .map_err(|e| FleetError::io("fsync", &tmp, e))?;
            tokio::fs::rename(&tmp, &path)
                .await
                .map_err(|e| FleetError::io("rename", &path, e))
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        written
    }

    async fn get_object(&self, name: &str) -> Result<Option<Download>, FleetError> {
        let path = self.object_path(name)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FleetError::io("open", &path, e)),
        };
        let meta = file
            .metadata()
            .await
            .map_err(|e| FleetError::io("stat", &path, e))?;
        if !meta.is_file() {
            return Ok(None);
        }
        Ok(Some(Download {
            size: meta.len(),
            reader: Box::new(file),
        }))
    }

    async fn list_objects(&self, prefix: &str) -> Result<Vec<String>, FleetError> {
        let root = self.objects();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&root, "", &mut out)?;
            out.retain(|n| n.starts_with(&prefix));
            Ok(out)
        })
        .await
        .map_err(|_| FleetError::TaskFailed("listing objects"))?
    }

    async fn delete_object(&self, name: &str) -> Result<(), FleetError> {
        let path = self.object_path(name)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(FleetError::io("remove", &path, e)),
        }
        // Tidy emptied directories up to the objects root; a non-empty one
        // stops the walk.
        let root = self.objects();
        let mut dir = path.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            if d == root || tokio::fs::remove_dir(&d).await.is_err() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        Ok(())
    }
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), FleetError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(FleetError::io("read", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| FleetError::io("read", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let kind = entry
            .file_type()
            .map_err(|e| FleetError::io("stat", entry.path(), e))?;
        if kind.is_dir() {
            walk(&entry.path(), &child, out)?;
        } else if kind.is_file() {
            out.push(child);
        }
    }
    Ok(())
}

/// Artifacts in a local or mounted directory; see the module docs for the
/// layout and the CAS guarantee.
#[derive(Debug)]
pub struct LocalDirTransport {
    pub(crate) core: Core<LocalDir>,
}

impl LocalDirTransport {
    /// Artifacts of `key` under `root` (created on first write), with the
    /// default bounds.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>, key: FleetKey) -> Self {
        Self::with_timeouts(root, key, FleetTimeouts::default())
    }

    /// As [`new`](Self::new), with `timeouts`.
    #[must_use]
    pub fn with_timeouts(root: impl Into<PathBuf>, key: FleetKey, timeouts: FleetTimeouts) -> Self {
        Self {
            core: Core::new(LocalDir { root: root.into() }, key, timeouts),
        }
    }

    /// The directory the objects of payload `payload` live in (for
    /// operators and tests).
    #[must_use]
    pub fn payload_dir(&self, payload: &str) -> PathBuf {
        let name = self.core.object_name(payload, "");
        self.core.backend.objects().join(name.trim_end_matches('/'))
    }
}

crate::transport::delegate_transport!(LocalDirTransport);
