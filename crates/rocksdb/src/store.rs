//! `RocksDbStore`: the fold in a `data` column family, the cursor, fold
//! totals and backend marker in a `meta` column family, each apply one
//! `WriteBatch` through the WAL (S5).

use core::ops::ControlFlow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType, ErrorKind,
    FlushOptions, LogLevel, Options, WaitForCompactOptions, WriteBatch, WriteOptions,
};
use slipstream_kv::{KvUpdate, WatchCursor};
use slipstream_snapshot::{
    BackendId, Durability, EntryRef, FoldTotals, SnapshotError, SnapshotStore, StoreStats,
    StoredEntry, check_update_limits, detect_backend, encode_value_record,
};

use crate::error::engine;
use crate::options::{Compression, RocksDbOptions};
use crate::reader::{self, CURSOR_KEY, DATA_CF, META_CF, RocksDbReader, cf, corrupted};

/// Meta key of the backend marker (`rocksdb/<generation>`).
const MARKER_KEY: &[u8] = b"backend";
/// Meta key of the fold totals ([`FoldTotals::to_bytes`]).
const TOTALS_KEY: &[u8] = b"totals";

/// A durable fold in a RocksDB database (S5).
///
/// Every [`apply`](SnapshotStore::apply) is one `WriteBatch` (WAL on) holding
/// the data changes, the cursor and the fold totals, so a crash recovers a
/// committed (data, cursor) pair, never a mixture. Reads from other threads
/// go through [`RocksDbStore::reader`].
///
/// Closing: [`SnapshotStore::close`] flushes the memtables and the WAL, so
/// the next open replays (almost) nothing. Merely dropping the store loses
/// nothing already written to the OS but leaves the WAL to replay. Both
/// block (RocksDB waits for its background jobs): call them off the async
/// runtime.
pub struct RocksDbStore {
    db: Arc<DB>,
    dir: Arc<Path>,
    cursor: WatchCursor,
    totals: FoldTotals,
    write_options: WriteOptions,
    poisoned: Option<String>,
}

impl core::fmt::Debug for RocksDbStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RocksDbStore")
            .field("dir", &self.dir)
            .field("cursor", &self.cursor)
            .field("totals", &self.totals)
            .finish_non_exhaustive()
    }
}

fn marker() -> String {
    RocksDbStore::BACKEND.to_string()
}

fn db_options(options: &RocksDbOptions) -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    // Data and meta of one batch are flushed together, so the files alone
    // (a checkpoint without its WAL) never hold a mixture either.
    o.set_atomic_flush(true);
    o.set_max_background_jobs(i32::from(options.background_jobs.max(1)));
    o.set_log_level(LogLevel::Warn);
    o.set_keep_log_file_num(2);
    o
}

fn data_cf_options(options: &RocksDbOptions) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&Cache::new_lru_cache(options.block_cache_bytes));
    // Point reads (and the existence checks of apply) mostly miss on a
    // fresh fold: a bloom filter answers them without reading blocks.
    table.set_bloom_filter(10.0, false);
    let mut o = Options::default();
    o.set_block_based_table_factory(&table);
    o.set_compression_type(match options.compression {
        Compression::Lz4 => DBCompressionType::Lz4,
        Compression::None => DBCompressionType::None,
    });
    o
}

fn open_database(dir: &Path, options: &RocksDbOptions) -> Result<DB, SnapshotError> {
    let cfs = [
        ColumnFamilyDescriptor::new(DATA_CF, data_cf_options(options)),
        ColumnFamilyDescriptor::new(META_CF, Options::default()),
    ];
    DB::open_cf_descriptors(&db_options(options), dir, cfs).map_err(|e| {
        // RocksDB words it "lock hold by current process" for a handle in
        // this process and "While lock file" when another process holds it.
        let message = e.as_ref().to_ascii_lowercase();
        let held = e.kind() == ErrorKind::IOError
            && (message.contains("lock hold by") || message.contains("while lock file"));
        if held {
            SnapshotError::Locked {
                path: dir.to_path_buf(),
            }
        } else {
            engine(e)
        }
    })
}

/// Flush both column families' memtables into tables and wait.
fn flush(db: &DB) -> Result<(), SnapshotError> {
    let (data, meta) = (cf(db, DATA_CF)?, cf(db, META_CF)?);
    db.flush_cfs_opt(&[data, meta], &FlushOptions::default())
        .map_err(engine)
}

impl RocksDbStore {
    /// A cloneable read handle on this store's fold.
    #[must_use]
    pub fn reader(&self) -> RocksDbReader {
        RocksDbReader {
            db: Arc::clone(&self.db),
            dir: Arc::clone(&self.dir),
        }
    }

    /// The entries under `keys`, in the same order, read in one batched
    /// lookup.
    ///
    /// # Errors
    /// RocksDB read failures, [`SnapshotError::Corrupted`] for an
    /// undecodable record.
    pub fn multi_get(&self, keys: &[&str]) -> Result<Vec<Option<StoredEntry>>, SnapshotError> {
        reader::multi_get(&self.db, &self.dir, keys)
    }

    /// Pay off compaction debt before serving: flush the memtables (so
    /// nothing is left in the WAL to replay) and wait until RocksDB's
    /// background compactions have nothing left to do. Blocks; call it off
    /// the async runtime.
    ///
    /// # Errors
    /// RocksDB failures.
    pub fn settle(&mut self) -> Result<(), SnapshotError> {
        flush(&self.db)?;
        let mut wait = WaitForCompactOptions::default();
        wait.set_flush(true);
        self.db.wait_for_compact(&wait).map_err(engine)
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
    fn check_marker(db: &DB, dir: &Path) -> Result<(), SnapshotError> {
        let meta = cf(db, META_CF)?;
        let Some(found) = db.get_pinned_cf(meta, MARKER_KEY).map_err(engine)? else {
            if db
                .get_pinned_cf(meta, CURSOR_KEY)
                .map_err(engine)?
                .is_some()
            {
                return Err(corrupted(dir, "a cursor but no backend marker".to_owned()));
            }
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            let mut batch = WriteBatch::default();
            batch.put_cf(meta, MARKER_KEY, marker());
            return db.write_opt(batch, &sync).map_err(engine);
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

    /// The record length of each distinct key of `batch` as stored now, in
    /// one batched lookup.
    fn stored_lengths<'b>(
        &self,
        batch: &'b [KvUpdate],
    ) -> Result<HashMap<&'b str, Option<usize>>, SnapshotError> {
        let mut keys: Vec<&str> = Vec::with_capacity(batch.len());
        let mut lengths = HashMap::with_capacity(batch.len());
        for update in batch {
            if lengths.insert(update.key(), None).is_none() {
                keys.push(update.key());
            }
        }
        let data = cf(&self.db, DATA_CF)?;
        for (key, found) in keys
            .iter()
            .zip(self.db.batched_multi_get_cf(data, &keys, false))
        {
            let len = found.map_err(engine)?.map(|v| v.len());
            lengths.insert(key, len);
        }
        Ok(lengths)
    }
}

impl SnapshotStore for RocksDbStore {
    type Options = RocksDbOptions;

    const BACKEND: BackendId = BackendId {
        name: "rocksdb",
        format_generation: 1,
    };

    fn open(dir: &Path, options: &RocksDbOptions) -> Result<(WatchCursor, Self), SnapshotError> {
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
        let db = open_database(dir, options)?;
        Self::check_marker(&db, dir)?;
        let cursor = reader::read_cursor(&db, dir)?;
        let meta = cf(&db, META_CF)?;
        let totals = match db.get_pinned_cf(meta, TOTALS_KEY).map_err(engine)? {
            None => FoldTotals::default(),
            Some(bytes) => FoldTotals::from_bytes(&bytes)
                .ok_or_else(|| corrupted(dir, "undecodable fold totals".to_owned()))?,
        };
        let mut write_options = WriteOptions::default();
        write_options.set_sync(options.durability == Durability::FsyncEachCommit);
        let store = Self {
            db: Arc::new(db),
            dir: Arc::from(dir),
            cursor: cursor.clone(),
            totals,
            write_options,
            poisoned: None,
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
        let mut current = self.stored_lengths(batch)?;
        let (data, meta) = (cf(&self.db, DATA_CF)?, cf(&self.db, META_CF)?);
        let mut writes = WriteBatch::default();
        for update in batch {
            let key = update.key();
            let before = current.get(key).copied().flatten();
            if let Some(len) = before {
                totals.remove(key, len);
            }
            match update {
                KvUpdate::Put(entry) => {
                    let record = encode_value_record(&entry.version, entry.expires, &entry.value);
                    totals.add(key, record.len());
                    current.insert(key, Some(record.len()));
                    writes.put_cf(data, key, record);
                }
                KvUpdate::Delete(_) | KvUpdate::Purge(_) => {
                    // Deleting an absent key changes nothing: no tombstone.
                    if before.is_some() {
                        writes.delete_cf(data, key);
                    }
                    current.insert(key, None);
                }
            }
        }
        writes.put_cf(meta, CURSOR_KEY, cursor.to_bytes());
        writes.put_cf(meta, TOTALS_KEY, totals.to_bytes());
        if let Err(e) = self.db.write_opt(writes, &self.write_options) {
            // The WAL may hold a partial write: accept no more until reopened.
            self.poisoned = Some(e.to_string());
            return Err(engine(e));
        }
        self.cursor = cursor.clone();
        self.totals = totals;
        Ok(())
    }

    fn cursor(&self) -> &WatchCursor {
        &self.cursor
    }

    fn get(&self, key: &str) -> Result<Option<StoredEntry>, SnapshotError> {
        reader::get(&self.db, &self.dir, key)
    }

    fn for_each_in_range(
        &self,
        prefix: &str,
        f: &mut dyn FnMut(&str, EntryRef<'_>) -> ControlFlow<()>,
    ) -> Result<bool, SnapshotError> {
        reader::for_each_in_range(&self.db, &self.dir, prefix, f)
    }

    fn len(&self) -> u64 {
        self.totals.keys
    }

    fn stats(&self) -> StoreStats {
        let sst = |name| {
            cf(&self.db, name).ok().and_then(|h| {
                self.db
                    .property_int_value_cf(h, rocksdb::properties::TOTAL_SST_FILES_SIZE)
                    .ok()
                    .flatten()
            })
        };
        StoreStats {
            keys: self.totals.keys,
            live_bytes: self.totals.live_bytes,
            disk_bytes: sst(DATA_CF).unwrap_or(0) + sst(META_CF).unwrap_or(0),
        }
    }

    fn sync(&mut self) -> Result<(), SnapshotError> {
        self.db.flush_wal(true).map_err(engine)
    }

    /// RocksDB's checkpoint: memtables flushed, table files hard-linked
    /// (copied across file systems), the manifest and options written
    /// afresh.
    fn checkpoint_to(&mut self, data_dir: &Path) -> Result<(), SnapshotError> {
        // RocksDB creates the checkpoint directory itself.
        std::fs::remove_dir(data_dir).map_err(|e| SnapshotError::io("remove", data_dir, e))?;
        Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(data_dir))
            .map_err(engine)
    }

    /// Flush the memtables and the WAL (the next open then has nothing to
    /// replay) and drop the database, waiting for RocksDB's background jobs.
    /// Read handles still alive keep the database open until they are
    /// dropped.
    fn close(mut self) -> Result<(), SnapshotError> {
        if self.poisoned.is_none() {
            flush(&self.db)?;
        }
        self.sync()
    }
}
