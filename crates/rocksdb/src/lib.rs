//! slipstream's RocksDB snapshot store (S5): a durable fold key -> latest
//! entry in a RocksDB `data` column family, with the cursor, fold totals
//! and a backend marker in a `meta` column family, every apply one
//! `WriteBatch` through the WAL. Exports use RocksDB's checkpoint (table
//! files hard-linked).
//!
//! ```
//! use bytes::Bytes;
//! use slipstream_kv::{KvEntry, KvUpdate, VersionToken, WatchCursor};
//! use slipstream_snapshot::{Durability, SnapshotStore};
//! use slipstream_rocksdb::{RocksDbOptions, RocksDbStore};
//!
//! let tmp = tempfile::tempdir()?;
//! let options = RocksDbOptions::with_durability(Durability::NoFsync);
//! let (cursor, mut store) = RocksDbStore::open(tmp.path(), &options)?;
//! assert_eq!(cursor, WatchCursor::none());
//!
//! let put = |key: &str, rev| KvUpdate::Put(KvEntry {
//!     key: key.into(),
//!     value: Bytes::from_static(b"10.0.0.1"),
//!     version: VersionToken::from_u64(rev),
//!     created: None,
//!     expires: None,
//! });
//! store.apply(&[put("routes.eu", 1), put("routes.us", 2)], &WatchCursor::at(2))?;
//!
//! // A read handle serves other threads while the store applies.
//! let reader = store.reader();
//! let found = std::thread::spawn(move || reader.multi_get(&["routes.us", "routes.asia"]))
//!     .join()
//!     .unwrap()?;
//! assert_eq!(found[0].as_ref().map(|e| e.version), Some(VersionToken::from_u64(2)));
//! assert!(found[1].is_none());
//!
//! store.settle()?;
//! store.close()?;
//! let (cursor, store) = RocksDbStore::open(tmp.path(), &options)?;
//! assert_eq!((cursor, store.len()), (WatchCursor::at(2), 2));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod options;
mod reader;
mod store;

pub use error::RocksDbStoreError;
pub use options::{Compression, RocksDbOptions};
pub use reader::RocksDbReader;
pub use store::RocksDbStore;
