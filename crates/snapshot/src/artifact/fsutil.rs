//! File-system helpers shared by export and import.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::SnapshotError;

/// fsync a directory so entries created or renamed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SnapshotError::io("fsync directory", dir, e))
}

/// `dest` must not exist, or be an empty directory (not a symlink).
pub(crate) fn check_destination(dest: &Path) -> Result<(), SnapshotError> {
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SnapshotError::io("inspect destination", dest, e)),
        Ok(meta) if meta.is_dir() => {
            let mut entries =
                fs::read_dir(dest).map_err(|e| SnapshotError::io("list destination", dest, e))?;
            if entries.next().is_none() {
                Ok(())
            } else {
                Err(SnapshotError::DestinationNotEmpty {
                    path: dest.to_owned(),
                })
            }
        }
        Ok(_) => Err(SnapshotError::DestinationNotEmpty {
            path: dest.to_owned(),
        }),
    }
}

/// A hidden staging directory next to `dest`, removed on drop unless
/// published. A crash leaves only this hidden directory behind.
pub(crate) struct Staging {
    path: PathBuf,
    published: bool,
}

impl Staging {
    pub(crate) fn next_to(dest: &Path, purpose: &str) -> Result<Self, SnapshotError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let parent = parent_of(dest);
        let name = dest
            .file_name()
            .map_or_else(|| "artifact".into(), |n| n.to_string_lossy().into_owned());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Process id, counter and clock: unique even next to a leftover from
        // a crashed process that had the same id.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = parent.join(format!(
            ".{name}.{purpose}-{}-{n}-{nanos}",
            std::process::id()
        ));
        fs::create_dir(&path)
            .map_err(|e| SnapshotError::io("create staging directory", &path, e))?;
        Ok(Self {
            path,
            published: false,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Rename the staged directory onto `dest` (which is absent or an empty
    /// directory) and make the rename durable.
    pub(crate) fn publish(mut self, dest: &Path) -> Result<(), SnapshotError> {
        sync_dir(&self.path)?;
        fs::rename(&self.path, dest)
            .map_err(|e| SnapshotError::io("rename into place", dest, e))?;
        self.published = true;
        sync_dir(&parent_of(dest))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            // Best effort: a leftover hidden directory is harmless.
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Copy `from` to `to` (created new), hashing what was written, and fsync
/// it. Returns the size and BLAKE3 digest of the bytes copied.
pub(crate) fn copy_hashing(from: &Path, to: &Path) -> Result<(u64, [u8; 32]), SnapshotError> {
    let mut src = File::open(from).map_err(|e| SnapshotError::io("open", from, e))?;
    let mut dst = File::create_new(to).map_err(|e| SnapshotError::io("create", to, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SnapshotError::io("read", from, e)),
        };
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])
            .map_err(|e| SnapshotError::io("write", to, e))?;
        size += n as u64;
    }
    dst.sync_all()
        .map_err(|e| SnapshotError::io("fsync", to, e))?;
    Ok((size, *hasher.finalize().as_bytes()))
}

/// Move `from` to `to` (which must not exist), returning the size and
/// BLAKE3 digest of the file as it was hashed, synced, before the move. On
/// another file system it is copied as [`copy_hashing`] does.
pub(crate) fn move_hashing(from: &Path, to: &Path) -> Result<(u64, [u8; 32]), SnapshotError> {
    if to.exists() {
        return Err(SnapshotError::io(
            "create",
            to,
            io::Error::from(io::ErrorKind::AlreadyExists),
        ));
    }
    let hashed = hash_and_sync(from)?;
    match fs::rename(from, to) {
        Ok(()) => Ok(hashed),
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => copy_hashing(from, to),
        Err(e) => Err(SnapshotError::io("move", from, e)),
    }
}

/// Size and BLAKE3 digest of a file, fsyncing it on the way.
pub(crate) fn hash_and_sync(path: &Path) -> Result<(u64, [u8; 32]), SnapshotError> {
    let file = File::open(path).map_err(|e| SnapshotError::io("open", path, e))?;
    file.sync_all()
        .map_err(|e| SnapshotError::io("fsync", path, e))?;
    let mut hasher = blake3::Hasher::new();
    let size = io::copy(&mut &file, &mut hasher).map_err(|e| SnapshotError::io("read", path, e))?;
    Ok((size, *hasher.finalize().as_bytes()))
}

/// How [`link_or_copy`] placed a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A hard link to the same inode.
    Linked,
    /// A byte copy (the file system refused a link).
    Copied,
}

/// Hard-link `from` at `to`, or copy it (fsynced) where the file system
/// refuses a link (another device, no link support). For a backend's
/// immutable files only: a link shares every later write to the file.
///
/// # Errors
/// I/O failures of the copy.
pub fn link_or_copy(from: &Path, to: &Path) -> Result<Placement, SnapshotError> {
    if fs::hard_link(from, to).is_ok() {
        return Ok(Placement::Linked);
    }
    fs::copy(from, to).map_err(|e| SnapshotError::io("copy", from, e))?;
    File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(|e| SnapshotError::io("fsync", to, e))?;
    Ok(Placement::Copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_or_copy_links_on_one_file_system_and_preserves_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let from = tmp.path().join("a");
        fs::write(&from, b"immutable").unwrap();
        let to = tmp.path().join("b");
        assert_eq!(link_or_copy(&from, &to).unwrap(), Placement::Linked);
        assert_eq!(fs::read(&to).unwrap(), b"immutable");
    }

    #[test]
    fn destination_must_be_absent_or_an_empty_directory() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(check_destination(&tmp.path().join("absent")).is_ok());
        assert!(check_destination(tmp.path()).is_ok());
        fs::write(tmp.path().join("f"), b"x").unwrap();
        assert!(matches!(
            check_destination(tmp.path()),
            Err(SnapshotError::DestinationNotEmpty { .. })
        ));
        assert!(matches!(
            check_destination(&tmp.path().join("f")),
            Err(SnapshotError::DestinationNotEmpty { .. })
        ));
    }
}
