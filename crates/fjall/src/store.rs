//! `FjallStore`: the fold in a `data` keyspace, the cursor, fold totals and
//! backend marker in a `meta` keyspace, each apply one atomic batch (S4).

use core::ops::ControlFlow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use slipstream_kv::{KvUpdate, WatchCursor};
use slipstream_snapshot::{
    BackendId, Durability, EntryRef, ExportCapture, FoldTotals, SnapshotError, SnapshotStore,
    StoreStats, StoredEntry, check_update_limits, detect_backend, encode_value_record,
};

use crate::error::engine;
use crate::options::{FjallOptions, SettlePolicy};
use crate::reader::{self, FjallReader, corrupted};

pub(crate) const DATA_KEYSPACE: &str = "data";
pub(crate) const META_KEYSPACE: &str = "meta";
/// Meta key of the backend marker (`fjall/<generation>`).
pub(crate) const MARKER_KEY: &str = "backend";
/// Meta key of the committed cursor ([`WatchCursor::to_bytes`]).
pub(crate) const CURSOR_KEY: &str = "cursor";
/// Meta key of the fold totals ([`FoldTotals::to_bytes`]).
pub(crate) const TOTALS_KEY: &str = "totals";
/// Scratch keyspace whose only use is to push the journal over fjall's
/// rotation size (see [`FjallStore::shrink_journal`]).
const PAD_KEYSPACE: &str = "journal-pad";
/// fjall's flush worker starts a new journal only once the active one is
/// past this size (fjall 3.1, not configurable).
const JOURNAL_ROTATION_BYTES: u64 = 64_000_000;
/// An active journal below this replays in a few milliseconds at open.
const JOURNAL_SHRINK_THRESHOLD: u64 = 2 << 20;
/// Padding is written in values of this size.
const PAD_CHUNK_BYTES: u64 = 8 << 20;

/// A durable fold in a fjall database (S4).
///
/// Every [`apply`](SnapshotStore::apply) is one fjall write batch holding the
/// data changes, the cursor and the fold totals, so a crash recovers a
/// committed (data, cursor) pair, never a mixture. Reads from other threads
/// go through [`FjallStore::reader`].
///
/// Closing: [`SnapshotStore::close`] flushes the memtables, shrinks the
/// journal and fsyncs, so the next open replays (almost) nothing. Merely dropping the store loses
/// nothing already written to the OS but leaves the journal to replay. Both
/// block (fjall joins its background threads): call them off the async
/// runtime.
pub struct FjallStore {
    db: Database,
    data: Keyspace,
    meta: Keyspace,
    dir: Arc<Path>,
    cursor: WatchCursor,
    totals: FoldTotals,
    persist: PersistMode,
    settle: SettlePolicy,
    poisoned: Option<String>,
    /// Journal bytes the next open may replay: the journal files found at
    /// open plus what this handle wrote since (key and record bytes).
    journaled: u64,
}

impl FjallStore {
    fn capture(&self) -> FjallCapture {
        FjallCapture {
            snapshot: self.db.snapshot(),
            data: self.data.clone(),
            cursor: self.cursor.clone(),
            totals: self.totals,
        }
    }
}

/// The last commit of a [`FjallStore`], as a fjall snapshot of its data
/// keyspace plus the meta it committed with.
struct FjallCapture {
    snapshot: fjall::Snapshot,
    data: Keyspace,
    cursor: WatchCursor,
    totals: FoldTotals,
}

impl ExportCapture for FjallCapture {
    fn cursor(&self) -> &WatchCursor {
        &self.cursor
    }

    fn write_to(self: Box<Self>, data_dir: &Path) -> Result<(), SnapshotError> {
        let options = FjallOptions {
            worker_threads: 1,
            ..FjallOptions::default()
        };
        let db = open_database(data_dir, &options)?;
        let data = db.keyspace(DATA_KEYSPACE, data_options).map_err(engine)?;
        let meta = db.keyspace(META_KEYSPACE, meta_options).map_err(engine)?;
        let mut ingestion = data.start_ingestion().map_err(engine)?;
        for guard in self.snapshot.iter(&self.data) {
            let (key, record) = guard.into_inner().map_err(engine)?;
            ingestion.write(key, record).map_err(engine)?;
        }
        ingestion.finish().map_err(engine)?;
        let mut batch = db.batch().durability(Some(PersistMode::SyncAll));
        batch.insert(&meta, MARKER_KEY, marker());
        batch.insert(&meta, CURSOR_KEY, self.cursor.to_bytes());
        batch.insert(&meta, TOTALS_KEY, self.totals.to_bytes().to_vec());
        batch.commit().map_err(engine)?;
        flush(&meta)?;
        db.persist(PersistMode::SyncAll).map_err(engine)?;
        Ok(())
    }
}

impl core::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FjallStore")
            .field("dir", &self.dir)
            .field("cursor", &self.cursor)
            .field("totals", &self.totals)
            .finish_non_exhaustive()
    }
}

fn marker() -> String {
    FjallStore::BACKEND.to_string()
}

fn data_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default()
}

fn meta_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default().expect_point_read_hits(true)
}

fn persist_mode(durability: Durability) -> PersistMode {
    match durability {
        Durability::FsyncEachCommit => PersistMode::SyncAll,
        // Written to the OS: a killed process loses nothing.
        Durability::NoFsync => PersistMode::Buffer,
    }
}

/// Remove what a database creation killed before fjall wrote its `version`
/// marker leaves behind (a lock file, an empty `keyspaces` folder, the first
/// journal): fjall would fail on it forever ("file exists"), and without the
/// marker nothing was ever committed. Anything else is left alone.
fn clear_unfinished_creation(dir: &Path) -> Result<(), SnapshotError> {
    if dir.join("version").exists() {
        return Ok(());
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let keyspaces = dir.join("keyspaces");
    let keyspaces_empty = std::fs::read_dir(&keyspaces).map_or(true, |mut d| d.next().is_none());
    let leftover = |n: &String| n == "lock" || n == "keyspaces" || n == "0.jnl";
    if names.is_empty() || !keyspaces_empty || !names.iter().all(leftover) {
        return Ok(());
    }
    for name in &names {
        let path = dir.join(name);
        let removed = if name == "keyspaces" {
            std::fs::remove_dir(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| SnapshotError::io("remove", &path, e))?;
    }
    Ok(())
}

fn open_database(dir: &Path, options: &FjallOptions) -> Result<Database, SnapshotError> {
    Database::builder(dir)
        .cache_size(options.cache_bytes)
        .worker_threads(options.worker_threads.max(1))
        .manual_journal_persist(true)
        .open()
        .map_err(|e| match e {
            fjall::Error::Locked => SnapshotError::Locked {
                path: dir.to_path_buf(),
            },
            other => engine(other),
        })
}

/// Bytes the journal files in `dir` hold: what the next open replays, at
/// most. fjall preallocates journals as sparse files, so on Unix this counts
/// allocated blocks, not lengths.
fn journal_file_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".jnl")))
        .filter_map(|e| e.metadata().ok())
        .map(|m| allocated_bytes(&m))
        .sum()
}

#[cfg(unix)]
fn allocated_bytes(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.blocks() * 512
}

#[cfg(not(unix))]
fn allocated_bytes(m: &std::fs::Metadata) -> u64 {
    m.len()
}

/// `len` bytes an LZ4 journal cannot shrink (xorshift output).
fn incompressible(len: u64) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut out = Vec::with_capacity(len as usize + 8);
    while (out.len() as u64) < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

/// Flush a keyspace's memtable into a table and wait for it.
fn flush(keyspace: &Keyspace) -> Result<(), SnapshotError> {
    keyspace.rotate_memtable_and_wait().map_err(engine)
}

impl FjallStore {
    /// A cloneable read handle on this store's fold.
    #[must_use]
    pub fn reader(&self) -> FjallReader {
        FjallReader {
            data: self.data.clone(),
            meta: self.meta.clone(),
            dir: Arc::clone(&self.dir),
        }
    }

    /// Pay off compaction debt before serving: flush the memtables, as the
    /// options' [`SettlePolicy`] says compact the data keyspace into one
    /// sorted run in the foreground, and shrink the journal so that even a
    /// crash right after leaves little to replay. Blocks; call it off the
    /// async runtime.
    ///
    /// # Errors
    /// fjall failures.
    pub fn settle(&mut self) -> Result<(), SnapshotError> {
        flush(&self.data)?;
        flush(&self.meta)?;
        let compact = match self.settle {
            SettlePolicy::AlwaysCompact => true,
            SettlePolicy::CompactAboveL0Tables(n) => self.data.l0_table_count() > n,
            SettlePolicy::FlushOnly => false,
        };
        if compact {
            self.data.major_compact().map_err(engine)?;
        }
        self.shrink_journal()
    }

    /// Leave the next open (almost) nothing to replay.
    ///
    /// fjall replays the whole active journal at open, flushed or not, at
    /// about 3 µs per entry (a second for a 1 M-key hydration), and starts a
    /// new journal only when a flush finds the active one over 64 MB. So,
    /// with everything flushed, pad the journal past that size with
    /// incompressible values in a scratch keyspace, clearing the keyspace
    /// after each (the padding never reaches a table), then flush: fjall
    /// rotates the journal and deletes the old one, whose every entry is now
    /// in tables. Without this, fjall 3.1 offers no way to start a new
    /// journal.
    fn shrink_journal(&mut self) -> Result<(), SnapshotError> {
        if self.journaled < JOURNAL_SHRINK_THRESHOLD {
            return Ok(());
        }
        let pad = self
            .db
            .keyspace(PAD_KEYSPACE, KeyspaceCreateOptions::default)
            .map_err(engine)?;
        // The journal's write position is not public: pad enough to pass
        // the rotation size from any position, a chunk at a time so memory
        // stays bounded.
        let chunk = incompressible(PAD_CHUNK_BYTES);
        let mut padded = 0;
        while padded <= JOURNAL_ROTATION_BYTES {
            let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
            batch.insert(&pad, "pad", chunk.as_slice());
            batch.commit().map_err(engine)?;
            pad.clear().map_err(engine)?;
            padded += PAD_CHUNK_BYTES;
        }
        // Something for the flush to carry: the unchanged totals.
        let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
        batch.insert(&self.meta, TOTALS_KEY, self.totals.to_bytes().to_vec());
        batch.commit().map_err(engine)?;
        flush(&self.meta)?;
        self.db.persist(PersistMode::SyncAll).map_err(engine)?;
        self.journaled = 0;
        Ok(())
    }

    fn check_poisoned(&self) -> Result<(), SnapshotError> {
        match &self.poisoned {
            Some(cause) => Err(SnapshotError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Check the backend marker; write it into a fresh store.
    fn check_marker(db: &Database, meta: &Keyspace, dir: &Path) -> Result<(), SnapshotError> {
        let Some(found) = meta.get(MARKER_KEY).map_err(engine)? else {
            if meta.get(CURSOR_KEY).map_err(engine)?.is_some() {
                return Err(corrupted(dir, "a cursor but no backend marker".to_owned()));
            }
            let mut batch = db.batch().durability(Some(PersistMode::SyncAll));
            batch.insert(meta, MARKER_KEY, marker());
            return batch.commit().map_err(engine);
        };
        let found = String::from_utf8_lossy(&found).into_owned();
        if found == marker() {
            return Ok(());
        }
        match found.split_once('/') {
            Some((name, generation)) if name == Self::BACKEND.name => {
                Err(SnapshotError::UnsupportedFormat {
                    path: dir.to_path_buf(),
                    found: generation.parse().unwrap_or(u32::MAX),
                    supported: Self::BACKEND.format_generation,
                })
            }
            _ => Err(SnapshotError::WrongBackend {
                path: dir.to_path_buf(),
                expected: marker(),
                found,
            }),
        }
    }
}

impl SnapshotStore for FjallStore {
    type Options = FjallOptions;

    const BACKEND: BackendId = BackendId {
        name: "fjall",
        format_generation: 1,
    };

    fn open(dir: &Path, options: &FjallOptions) -> Result<(WatchCursor, Self), SnapshotError> {
        if let Some(found) = detect_backend(dir)
            && found != Self::BACKEND.name
        {
            return Err(SnapshotError::WrongBackend {
                path: dir.to_path_buf(),
                expected: Self::BACKEND.name.to_owned(),
                found: found.to_owned(),
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| SnapshotError::io("create", dir, e))?;
        clear_unfinished_creation(dir)?;
        let journaled = journal_file_bytes(dir);
        let db = open_database(dir, options)?;
        let data = db.keyspace(DATA_KEYSPACE, data_options).map_err(engine)?;
        let meta = db.keyspace(META_KEYSPACE, meta_options).map_err(engine)?;
        Self::check_marker(&db, &meta, dir)?;
        let cursor = reader::read_cursor(&meta, dir)?;
        let totals = match meta.get(TOTALS_KEY).map_err(engine)? {
            None => FoldTotals::default(),
            Some(bytes) => FoldTotals::from_bytes(&bytes)
                .ok_or_else(|| corrupted(dir, "undecodable fold totals".to_owned()))?,
        };
        let store = Self {
            db,
            data,
            meta,
            dir: Arc::from(dir),
            cursor: cursor.clone(),
            totals,
            persist: persist_mode(options.durability),
            settle: options.settle,
            poisoned: None,
            journaled,
        };
        Ok((cursor, store))
    }

    fn apply(&mut self, batch: &[KvUpdate], cursor: &WatchCursor) -> Result<(), SnapshotError> {
        self.check_poisoned()?;
        for update in batch {
            check_update_limits(update)?;
        }
        let mut totals = self.totals;
        // Record length of each key's entry as of the updates so far.
        let mut current: HashMap<&str, Option<usize>> = HashMap::with_capacity(batch.len());
        let mut writes = self.db.batch().durability(Some(self.persist));
        let mut journaled = 0;
        for update in batch {
            let key = update.key();
            let before = match current.get(key) {
                Some(len) => *len,
                None => self.data.size_of(key).map_err(engine)?.map(|n| n as usize),
            };
            if let Some(len) = before {
                totals.remove(key, len);
            }
            match update {
                KvUpdate::Put(entry) => {
                    let record = encode_value_record(&entry.version, entry.expires, &entry.value);
                    totals.add(key, record.len());
                    current.insert(key, Some(record.len()));
                    journaled += (key.len() + record.len()) as u64;
                    writes.insert(&self.data, key, record);
                }
                KvUpdate::Delete(_) | KvUpdate::Purge(_) => {
                    // Deleting an absent key changes nothing: no tombstone.
                    if before.is_some() {
                        writes.remove(&self.data, key);
                        journaled += key.len() as u64;
                    }
                    current.insert(key, None);
                }
            }
        }
        writes.insert(&self.meta, CURSOR_KEY, cursor.to_bytes());
        writes.insert(&self.meta, TOTALS_KEY, totals.to_bytes().to_vec());
        if let Err(e) = writes.commit() {
            // fjall poisons itself on a failed journal write; so do we.
            self.poisoned = Some(e.to_string());
            return Err(engine(e));
        }
        self.cursor = cursor.clone();
        self.totals = totals;
        self.journaled += journaled;
        Ok(())
    }

    fn cursor(&self) -> &WatchCursor {
        &self.cursor
    }

    fn get(&self, key: &str) -> Result<Option<StoredEntry>, SnapshotError> {
        reader::get(&self.data, &self.dir, key)
    }

    fn for_each_in_range(
        &self,
        prefix: &str,
        f: &mut dyn FnMut(&str, EntryRef<'_>) -> ControlFlow<()>,
    ) -> Result<bool, SnapshotError> {
        reader::for_each_in_range(&self.data, &self.dir, prefix, f)
    }

    fn len(&self) -> u64 {
        self.totals.keys
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            keys: self.totals.keys,
            live_bytes: self.totals.live_bytes,
            disk_bytes: self.db.disk_space().unwrap_or(0),
        }
    }

    fn sync(&mut self) -> Result<(), SnapshotError> {
        self.db.persist(PersistMode::SyncAll).map_err(engine)
    }

    /// A fresh fjall database in `data_dir`: the data keyspace bulk-loaded
    /// (fjall's sorted ingestion) from a consistent iteration of this one,
    /// then the meta keyspace, flushed and fsynced. fjall has no checkpoint of
    /// its own and its background compactions rewrite the file set, so a
    /// file copy could not be consistent.
    fn checkpoint_to(&mut self, data_dir: &Path) -> Result<(), SnapshotError> {
        Box::new(self.capture()).write_to(data_dir)
    }

    /// A fjall snapshot of the last commit: it reads that commit while
    /// later batches are applied, so the new database is written without
    /// the store.
    fn capture_for_export(
        &mut self,
        _data_dir: &Path,
    ) -> Result<Box<dyn ExportCapture>, SnapshotError> {
        Ok(Box::new(self.capture()))
    }

    /// Flush the memtables and shrink the journal (the next open then has
    /// almost nothing to replay: a few milliseconds at 1 M keys instead of
    /// about a second), fsync, and drop the database, joining fjall's
    /// threads. Shrinking writes about 64 MB of padding to the journal when
    /// more than 2 MiB were journaled since open. Read handles
    /// still alive keep the database open until they are dropped.
    fn close(mut self) -> Result<(), SnapshotError> {
        if self.poisoned.is_none() {
            flush(&self.data)?;
            flush(&self.meta)?;
            self.shrink_journal()?;
        }
        self.sync()
    }
}
