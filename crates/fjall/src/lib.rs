//! slipstream's fjall snapshot store (S4): a durable fold key -> latest
//! entry in a fjall `data` keyspace, with the cursor, fold totals and a
//! backend marker in a `meta` keyspace, every apply one atomic batch.
//!
//! ```
//! use bytes::Bytes;
//! use slipstream_kv::{KvEntry, KvUpdate, VersionToken, WatchCursor};
//! use slipstream_snapshot::{Durability, SnapshotStore};
//! use slipstream_fjall::{FjallOptions, FjallStore};
//!
//! let tmp = tempfile::tempdir()?;
//! let options = FjallOptions::with_durability(Durability::NoFsync);
//! let (cursor, mut store) = FjallStore::open(tmp.path(), &options)?;
//! assert_eq!(cursor, WatchCursor::none());
//!
//! let put = KvUpdate::Put(KvEntry {
//!     key: "routes.eu".into(),
//!     value: Bytes::from_static(b"10.0.0.1"),
//!     version: VersionToken::from_u64(1),
//!     created: None,
//!     expires: None,
//! });
//! store.apply(&[put], &WatchCursor::at(1))?;
//!
//! // A read handle serves other threads while the store applies.
//! let reader = store.reader();
//! let entry = std::thread::spawn(move || reader.get("routes.eu")).join().unwrap()?;
//! assert_eq!(entry.map(|e| e.value), Some(Bytes::from_static(b"10.0.0.1")));
//!
//! store.settle()?;
//! store.close()?;
//! let (cursor, store) = FjallStore::open(tmp.path(), &options)?;
//! assert_eq!((cursor, store.len()), (WatchCursor::at(1), 1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod options;
mod reader;
mod store;

pub use error::FjallStoreError;
pub use options::{FjallOptions, SettlePolicy};
pub use reader::FjallReader;
pub use store::FjallStore;
