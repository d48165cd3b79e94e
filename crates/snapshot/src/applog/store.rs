//! `AppendLogStore`: open, apply, compaction, reads.

use core::ops::ControlFlow;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use slipstream_kv::{KvUpdate, WatchCursor};

use super::codec;
use super::fold::Fold;
use super::recovery::{self, ScanError, ScanMode};
use crate::artifact::sync_dir;
use crate::error::SnapshotError;
use crate::store::{
    BackendId, Durability, EntryRef, ExportCapture, SnapshotStore, StoreStats, StoredEntry,
};

/// The log's file name inside the store directory.
pub const LOG_FILE: &str = "snapshot.log";
const COMPACT_TEMP: &str = "snapshot.log.compact";
const CREATE_TEMP: &str = "snapshot.log.new";

/// When the log is rewritten to hold only the live fold.
///
/// Compaction runs when the file exceeds both `min_file_bytes` and
/// `max_size_ratio` times the size of a compacted image. Each compaction
/// leaves a file of one image, so the next needs the log to grow by a
/// constant factor again: the cost is amortized linear in the bytes
/// written, never quadratic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Never compact a log smaller than this.
    pub min_file_bytes: u64,
    /// Compact when the log is this many times the compacted image (>= 2).
    pub max_size_ratio: u64,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        Self {
            min_file_bytes: 8 << 20,
            max_size_ratio: 2,
        }
    }
}

/// How to open an [`AppendLogStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppendLogOptions {
    /// fsync per commit or not.
    pub durability: Durability,
    /// When to compact.
    pub compaction: CompactionPolicy,
}

impl AppendLogOptions {
    /// Default options with `durability`.
    #[must_use]
    pub fn with_durability(durability: Durability) -> Self {
        Self {
            durability,
            ..Self::default()
        }
    }
}

/// The append-log snapshot store (S3): the default, pure Rust, for folds
/// that fit in memory. The whole fold lives in a B-tree; the file is an
/// append-only log of commits, rebuilt at open.
#[derive(Debug)]
pub struct AppendLogStore {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// The directory handle holding the store's exclusive lock.
    _lock: File,
    /// The log's committed length: appends go here.
    len: u64,
    fold: Fold,
    cursor: WatchCursor,
    options: AppendLogOptions,
    poisoned: Option<String>,
    buf: Vec<u8>,
}

impl AppendLogStore {
    fn poison(&mut self, cause: String) -> SnapshotError {
        tracing::error!(store = ?self.dir, %cause, "append-log store poisoned");
        self.poisoned = Some(cause.clone());
        SnapshotError::Poisoned { cause }
    }

    fn check_poisoned(&self) -> Result<(), SnapshotError> {
        match &self.poisoned {
            Some(cause) => Err(SnapshotError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn needs_compaction(&self) -> bool {
        let policy = self.options.compaction;
        let image = codec::HEADER_LEN as u64 + self.fold.image_bytes() + 64;
        self.len > policy.min_file_bytes
            && self.len > image.saturating_mul(policy.max_size_ratio.max(2))
    }

    /// Rewrite the log as one image of the fold. On failure the old file is
    /// intact but the writer is poisoned: the handle may no longer match the
    /// file at `path`.
    fn compact(&mut self) -> Result<(), SnapshotError> {
        let temp = self.dir.join(COMPACT_TEMP);
        let result = write_image(&temp, &self.fold, &self.cursor)
            .and_then(|len| {
                fs::rename(&temp, &self.path)
                    .map_err(|e| SnapshotError::io("rename compacted log", &self.path, e))?;
                Ok(len)
            })
            .and_then(|len| {
                sync_dir(&self.dir)?;
                let file = open_rw(&self.path)?;
                Ok((len, file))
            });
        match result {
            Ok((len, file)) => {
                tracing::debug!(store = ?self.dir, from = self.len, to = len, "compacted append-log");
                self.file = file;
                self.len = len;
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(self.poison(format!("compaction failed: {e}")))
            }
        }
    }
}

fn open_rw(path: &Path) -> Result<File, SnapshotError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| SnapshotError::io("open", path, e))
}

/// Write a fresh log holding `fold` and `cursor` at `path`, fsynced.
/// Returns its length.
fn write_image(path: &Path, fold: &Fold, cursor: &WatchCursor) -> Result<u64, SnapshotError> {
    let io = |e| SnapshotError::io("write log image", path, e);
    let file = File::create(path).map_err(io)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&codec::header()).map_err(io)?;
    let mut rec = Vec::with_capacity(256);
    let mut len = codec::HEADER_LEN as u64;
    for (key, entry) in fold.range("") {
        rec.clear();
        codec::encode_put(&mut rec, key, &entry.version, entry.expires, entry.value);
        w.write_all(&rec).map_err(io)?;
        len += rec.len() as u64;
    }
    rec.clear();
    codec::encode_cursor(&mut rec, cursor);
    w.write_all(&rec).map_err(io)?;
    len += rec.len() as u64;
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(len)
}

/// A committed prefix of a live log, captured for an export.
struct LogPrefix {
    file: File,
    len: u64,
    cursor: WatchCursor,
    source: PathBuf,
}

impl ExportCapture for LogPrefix {
    fn cursor(&self) -> &WatchCursor {
        &self.cursor
    }

    fn write_to(self: Box<Self>, data_dir: &Path) -> Result<(), SnapshotError> {
        let path = data_dir.join(LOG_FILE);
        let out = File::create_new(&path).map_err(|e| SnapshotError::io("create", &path, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, out);
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < self.len {
            let want = usize::try_from((self.len - at).min(buf.len() as u64)).unwrap_or(buf.len());
            // Positional reads: the store's own handle shares the offset.
            self.file
                .read_exact_at(&mut buf[..want], at)
                .map_err(|e| SnapshotError::io("read", &self.source, e))?;
            w.write_all(&buf[..want])
                .map_err(|e| SnapshotError::io("write", &path, e))?;
            at += want as u64;
        }
        let out = w
            .into_inner()
            .map_err(|e| SnapshotError::io("write", &path, e.into_error()))?;
        out.sync_all()
            .map_err(|e| SnapshotError::io("sync", &path, e))?;
        sync_dir(data_dir)
    }
}

/// Scan the log open as `file`; returns what was found and the file's
/// length.
fn scan_file(
    file: &File,
    path: &Path,
    mode: ScanMode,
) -> Result<(recovery::Scanned, u64), SnapshotError> {
    let total = file
        .metadata()
        .map_err(|e| SnapshotError::io("inspect", path, e))?
        .len();
    let scanned = recovery::scan(BufReader::with_capacity(1 << 20, file), total, mode).map_err(
        |e| match e {
            ScanError::Io(e) => SnapshotError::io("read", path, e),
            ScanError::Corrupted { offset, detail } => SnapshotError::Corrupted {
                path: path.to_owned(),
                offset,
                detail,
            },
            ScanError::UnsupportedFormat(found) => SnapshotError::UnsupportedFormat {
                path: path.to_owned(),
                found,
                supported: codec::FORMAT_VERSION,
            },
        },
    )?;
    Ok((scanned, total))
}

/// How long `open` waits for a directory lock held elsewhere. A lock can be
/// held briefly by a process that is exiting, or by a forked child of this
/// process that has not reached `exec` yet (it shares the open file until
/// then); only a lock held past this wait is a real second owner.
const LOCK_WAIT: Duration = Duration::from_secs(2);

fn lock_dir(dir: &Path) -> Result<File, SnapshotError> {
    let handle = File::open(dir).map_err(|e| SnapshotError::io("open directory", dir, e))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match handle.try_lock() {
            Ok(()) => return Ok(handle),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(SnapshotError::Locked {
                    path: dir.to_owned(),
                });
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(SnapshotError::io("lock directory", dir, e));
            }
        }
    }
}

/// Create an empty log (header only) atomically: a crash leaves either no
/// log or a complete header.
fn create_log(dir: &Path, path: &Path) -> Result<(), SnapshotError> {
    let temp = dir.join(CREATE_TEMP);
    let io = |e| SnapshotError::io("create log", &temp, e);
    let mut f = File::create(&temp).map_err(io)?;
    f.write_all(&codec::header()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&temp, path).map_err(|e| SnapshotError::io("rename new log", path, e))?;
    sync_dir(dir)
}

impl SnapshotStore for AppendLogStore {
    type Options = AppendLogOptions;

    const BACKEND: BackendId = BackendId {
        name: "append-log",
        format_generation: 1,
    };

    fn open(dir: &Path, options: &Self::Options) -> Result<(WatchCursor, Self), SnapshotError> {
        fs::create_dir_all(dir).map_err(|e| SnapshotError::io("create directory", dir, e))?;
        let lock = lock_dir(dir)?;
        for leftover in [COMPACT_TEMP, CREATE_TEMP] {
            match fs::remove_file(dir.join(leftover)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(SnapshotError::io("remove", dir.join(leftover), e)),
            }
        }
        let path = dir.join(LOG_FILE);
        if !path.exists() {
            let foreign = fs::read_dir(dir)
                .map_err(|e| SnapshotError::io("list", dir, e))?
                .next()
                .is_some();
            if foreign {
                return Err(SnapshotError::WrongBackend {
                    path: dir.to_owned(),
                    expected: Self::BACKEND.to_string(),
                    found: "a directory without an append-log".into(),
                });
            }
            create_log(dir, &path)?;
        }
        let file = open_rw(&path)?;
        let (scanned, total) = scan_file(&file, &path, ScanMode::Build)?;
        let mut len = scanned.valid_end;
        if scanned.empty {
            file.write_all_at(&codec::header(), 0)
                .and_then(|()| file.sync_all())
                .map_err(|e| SnapshotError::io("write header", &path, e))?;
            len = codec::HEADER_LEN as u64;
        } else if scanned.format < codec::FORMAT_VERSION {
            // Every older log is a valid log of this format: take its
            // header before appending records an older reader would
            // misread as a torn tail.
            file.write_all_at(&codec::header(), 0)
                .and_then(|()| file.sync_all())
                .map_err(|e| SnapshotError::io("write header", &path, e))?;
        }
        if !scanned.empty && len < total {
            // The torn tail goes before any append can land behind it.
            tracing::warn!(log = ?path, kept = len, dropped = total - len, "dropping torn tail of append-log");
            file.set_len(len)
                .and_then(|()| file.sync_all())
                .map_err(|e| SnapshotError::io("truncate torn tail", &path, e))?;
        }
        let cursor = scanned.cursor;
        let store = Self {
            dir: dir.to_owned(),
            path,
            file,
            _lock: lock,
            len,
            fold: scanned.fold,
            cursor: cursor.clone(),
            options: *options,
            poisoned: None,
            buf: Vec::new(),
        };
        Ok((cursor, store))
    }

    /// Reads the whole log without building the fold, and demands that it
    /// ends exactly at a commit (an exported image always does).
    fn verify_dir(dir: &Path, _options: &Self::Options) -> Result<WatchCursor, SnapshotError> {
        let path = dir.join(LOG_FILE);
        let file = File::open(&path).map_err(|e| SnapshotError::io("open", &path, e))?;
        let (scanned, total) = scan_file(&file, &path, ScanMode::VerifyOnly)?;
        if scanned.empty || scanned.valid_end != total {
            return Err(SnapshotError::Corrupted {
                path,
                offset: scanned.valid_end,
                detail: "the log does not end at a commit".into(),
            });
        }
        Ok(scanned.cursor)
    }

    fn apply(&mut self, batch: &[KvUpdate], cursor: &WatchCursor) -> Result<(), SnapshotError> {
        self.check_poisoned()?;
        batch.iter().try_for_each(crate::lsm::check_update_limits)?;
        if self.needs_compaction() {
            self.compact()?;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for update in batch {
            match update {
                KvUpdate::Put(e) => {
                    codec::encode_put(&mut buf, &e.key, &e.version, e.expires, &e.value);
                }
                KvUpdate::Delete(m) | KvUpdate::Purge(m) => {
                    codec::encode_delete(&mut buf, &m.key, &m.version);
                }
            }
        }
        codec::encode_cursor(&mut buf, cursor);
        let written = self.file.write_all_at(&buf, self.len);
        let synced = written.and_then(|()| match self.options.durability {
            Durability::FsyncEachCommit => self.file.sync_data(),
            Durability::NoFsync => Ok(()),
        });
        let appended = buf.len() as u64;
        self.buf = buf;
        if let Err(e) = synced {
            // Roll the partial group back so a later append cannot land
            // behind garbage; if even that fails the file is unknown.
            let err = SnapshotError::io("append", &self.path, e);
            if self.file.set_len(self.len).is_err() {
                return Err(
                    self.poison(format!("append failed and could not be rolled back: {err}"))
                );
            }
            return Err(err);
        }
        self.len += appended;
        for update in batch {
            match update {
                KvUpdate::Put(e) => self.fold.put(&e.key, &e.version, e.expires, &e.value),
                KvUpdate::Delete(m) | KvUpdate::Purge(m) => self.fold.remove(&m.key),
            }
        }
        self.cursor = cursor.clone();
        Ok(())
    }

    fn cursor(&self) -> &WatchCursor {
        &self.cursor
    }

    fn get(&self, key: &str) -> Result<Option<StoredEntry>, SnapshotError> {
        Ok(self.fold.get(key).map(|e| e.to_owned_entry()))
    }

    fn for_each_in_range(
        &self,
        prefix: &str,
        f: &mut dyn FnMut(&str, EntryRef<'_>) -> ControlFlow<()>,
    ) -> Result<bool, SnapshotError> {
        for (k, e) in self.fold.range(prefix) {
            if f(k, e).is_break() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn len(&self) -> u64 {
        self.fold.len()
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            keys: self.fold.len(),
            live_bytes: self.fold.live_bytes(),
            disk_bytes: self.len,
        }
    }

    fn sync(&mut self) -> Result<(), SnapshotError> {
        self.file
            .sync_data()
            .map_err(|e| SnapshotError::io("fsync", &self.path, e))
    }

    /// The log is only ever appended to (a failed append is rolled back
    /// to the committed length; compaction renames a new file over it), so
    /// its bytes up to the committed length are that commit: the capture
    /// keeps a handle on the file and the length, and copies them later
    /// while appends go on.
    fn capture_for_export(
        &mut self,
        _data_dir: &Path,
    ) -> Result<Box<dyn ExportCapture>, SnapshotError> {
        self.check_poisoned()?;
        let file = self
            .file
            .try_clone()
            .map_err(|e| SnapshotError::io("duplicate the handle of", &self.path, e))?;
        Ok(Box::new(LogPrefix {
            file,
            len: self.len,
            cursor: self.cursor.clone(),
            source: self.path.clone(),
        }))
    }

    fn checkpoint_to(&mut self, data_dir: &Path) -> Result<(), SnapshotError> {
        // The live log is appended to, so it cannot be hard-linked: the
        // artifact gets a fresh compacted image instead.
        write_image(&data_dir.join(LOG_FILE), &self.fold, &self.cursor)?;
        sync_dir(data_dir)
    }
}
