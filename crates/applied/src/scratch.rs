//! `ScratchDir`: one repair's own subdirectory of [`ScratchPolicy::dir`]
//! (a relist's sorted runs, a restore's fetched artifact and temporary
//! fold), removed when dropped; and the sweep that removes the ones a
//! killed process left behind.
//!
//! The parent is shared (by default the system's temporary directory, by
//! every node on the machine), so a directory is only ever removed by a
//! sweep when nobody holds it: each live one keeps its `.lock` file locked
//! (`File::try_lock`, released by the OS when the process dies). A new
//! directory is made and locked under a staging name the sweep ignores,
//! then renamed into place, so no sweep sees it unlocked.
//!
//! [`ScratchPolicy::dir`]: crate::ScratchPolicy::dir

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The lock file inside every scratch directory.
const LOCK_FILE: &str = ".lock";
/// Names of scratch directories being set up; never swept.
const STAGING_PREFIX: &str = "slipstream-staging-";

/// What a scratch directory is for; its name starts with the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScratchKind {
    /// A relist's sorted runs.
    Relist,
    /// A restore's fetched artifact and temporary fold.
    Restore,
}

impl ScratchKind {
    const ALL: [Self; 2] = [Self::Relist, Self::Restore];

    fn prefix(self) -> &'static str {
        match self {
            Self::Relist => "slipstream-relist-",
            Self::Restore => "slipstream-restore-",
        }
    }
}

/// A failure to set up a scratch directory, with the path it concerns.
#[derive(Debug)]
pub(crate) struct ScratchError {
    pub(crate) path: PathBuf,
    pub(crate) source: io::Error,
}

/// A repair's own scratch directory, locked while it lives and removed
/// with everything in it when dropped.
#[derive(Debug)]
pub(crate) struct ScratchDir {
    path: PathBuf,
    // Held until the directory is gone: the lock is what keeps sweeps off.
    _lock: File,
}

impl ScratchDir {
    /// Sweep what dead repairs left in `parent`, then make a new locked
    /// directory there.
    pub(crate) fn create(parent: &Path, kind: ScratchKind) -> Result<Self, ScratchError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let at = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ScratchError { path, source }
        };
        fs::create_dir_all(parent).map_err(at(parent))?;
        sweep(parent);
        let pid = std::process::id();
        let mut attempts = 0;
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            // The time keeps names apart from a crashed process' leftovers
            // that had the same pid.
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let name = format!("{pid}-{n}-{nanos:08x}");
            let staging = parent.join(format!("{STAGING_PREFIX}{name}"));
            match fs::create_dir(&staging) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 16 => {
                    attempts += 1;
                    continue;
                }
                Err(source) => {
                    return Err(ScratchError {
                        path: staging,
                        source,
                    });
                }
            }
            let lock = match lock_new(&staging) {
                Ok(lock) => lock,
                Err(source) => {
                    let _ = fs::remove_dir_all(&staging);
                    return Err(ScratchError {
                        path: staging,
                        source,
                    });
                }
            };
            let path = parent.join(format!("{}{name}", kind.prefix()));
            if let Err(source) = fs::rename(&staging, &path) {
                let _ = fs::remove_dir_all(&staging);
                return Err(ScratchError { path, source });
            }
            return Ok(Self { path, _lock: lock });
        }
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Removed while still locked, so no sweep races this.
        if let Err(error) = fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "could not remove a repair's scratch directory");
        }
    }
}

fn lock_new(dir: &Path) -> io::Result<File> {
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.join(LOCK_FILE))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "a new scratch lock file is locked by someone else",
        )),
        // A file system without locks: the directory goes unlocked, and
        // sweeps there cannot take a lock either, so they leave it.
        Err(TryLockError::Error(e)) if e.kind() == io::ErrorKind::Unsupported => Ok(lock),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Remove every scratch directory in `parent` whose lock nobody holds. A
/// failure on one entry is logged and skipped: sweeping never fails a
/// repair.
fn sweep(parent: &Path) {
    let entries = match fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::warn!(path = %parent.display(), %error, "could not list the scratch directory to sweep it");
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if !ScratchKind::ALL
            .iter()
            .any(|k| name.starts_with(k.prefix()))
        {
            continue;
        }
        let path = entry.path();
        // Never through a symlink: only real directories of ours.
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            _ => continue,
        }
        if let Err(error) = sweep_one(&path) {
            tracing::warn!(path = %path.display(), %error, "could not sweep a dead repair's scratch directory");
        }
    }
}

/// Remove `dir` if its lock can be taken. One without a lock file is
/// left: every directory gets its lock before it gets its name.
fn sweep_one(dir: &Path) -> io::Result<()> {
    let lock_path = dir.join(LOCK_FILE);
    match fs::symlink_metadata(&lock_path) {
        Ok(meta) if meta.is_file() => {}
        _ => return Ok(()),
    }
    let lock = match OpenOptions::new().read(true).write(true).open(&lock_path) {
        Ok(lock) => lock,
        // Removed by another sweep meanwhile.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    match lock.try_lock() {
        Ok(()) => {
            tracing::info!(path = %dir.display(), "removing a dead repair's scratch directory");
            let removed = fs::remove_dir_all(dir);
            drop(lock);
            match removed {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        Err(TryLockError::WouldBlock) => Ok(()),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// A scratch directory as a killed process leaves it: its lock file is
    /// there, nobody holds the lock.
    fn leftover(parent: &Path, name: &str) -> PathBuf {
        let dir = parent.join(name);
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(LOCK_FILE), b"").unwrap();
        fs::write(dir.join("run-000001"), vec![7; 4096]).unwrap();
        dir
    }

    #[test]
    fn a_dead_repairs_directories_are_swept_when_the_next_repair_starts() {
        let parent = tempfile::tempdir().unwrap();
        let relist = leftover(parent.path(), "slipstream-relist-1-2-3");
        let restore = leftover(parent.path(), "slipstream-restore-4-5-6");
        let new = ScratchDir::create(parent.path(), ScratchKind::Relist).unwrap();
        assert!(!relist.exists() && !restore.exists());
        assert_eq!(
            names(parent.path()),
            [new.path().file_name().unwrap().to_str().unwrap()]
        );
        assert!(new.path().join(LOCK_FILE).exists());
    }

    #[test]
    fn a_live_repairs_directory_is_left_alone() {
        let parent = tempfile::tempdir().unwrap();
        let live = ScratchDir::create(parent.path(), ScratchKind::Restore).unwrap();
        fs::write(live.path().join("artifact"), b"in use").unwrap();
        let other = ScratchDir::create(parent.path(), ScratchKind::Relist).unwrap();
        assert!(live.path().join("artifact").exists());
        assert_eq!(names(parent.path()).len(), 2);
        drop(other);
        drop(live);
        assert!(names(parent.path()).is_empty(), "each removes its own");
    }

    #[test]
    fn entries_that_are_not_ours_or_not_locked_directories_are_left_alone() {
        let parent = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let target = leftover(elsewhere.path(), "slipstream-relist-9-9-9");
        let foreign = leftover(parent.path(), "someone-elses-7-7-7");
        // Made by a process that has not locked it yet.
        fs::create_dir(parent.path().join("slipstream-relist-8-8-8")).unwrap();
        fs::write(parent.path().join("slipstream-restore-file"), b"a file").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, parent.path().join("slipstream-relist-link")).unwrap();
        let new = ScratchDir::create(parent.path(), ScratchKind::Relist).unwrap();
        assert!(foreign.join("run-000001").exists());
        assert!(parent.path().join("slipstream-relist-8-8-8").exists());
        assert!(parent.path().join("slipstream-restore-file").exists());
        assert!(target.join("run-000001").exists(), "nothing through a link");
        #[cfg(unix)]
        assert!(
            parent
                .path()
                .join("slipstream-relist-link")
                .symlink_metadata()
                .is_ok()
        );
        drop(new);
    }

    #[test]
    fn a_parent_that_is_a_file_is_an_error_naming_it() {
        let parent = tempfile::tempdir().unwrap();
        let file = parent.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let error = ScratchDir::create(&file, ScratchKind::Relist).unwrap_err();
        assert_eq!(error.path, file);
    }
}
