//! The KV surface of slipstream: the traits a JetStream KV backend
//! implements, the types they speak, and a conformance kit (feature
//! `testkit`) any backend can run against itself.
//!
//! Backends: `slipstream-memory` (a deterministic simulator) and
//! `slipstream-nats` (the live server). The engine above is generic over
//! these traits and never names a backend.
//!
//! ```
//! use slipstream_kv::{WatchCursor, WatchScope, VersionToken};
//!
//! // Cursors are opaque: persist the bytes, hand them back later.
//! let cursor = WatchCursor::at(41);
//! let bytes = cursor.to_bytes();
//! assert_eq!(WatchCursor::from_bytes(&bytes)?, cursor);
//!
//! let scope = WatchScope::Prefixes(vec!["routes.".into(), "certs.".into()]);
//! assert!(scope.contains("routes.eu-west") && !scope.contains("flags.beta"));
//! assert_eq!(VersionToken::from_u64(7).as_u64(), Some(7));
//! # Ok::<(), slipstream_kv::KvError>(())
//! ```

mod config;
mod cursor;
mod entry;
mod error;
mod scope;
mod traits;
mod version;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use config::{ConnectionCapabilities, DiscardPolicy, MessageTtl, StorageKind, StoreConfig};
pub use cursor::{BucketIdentity, Timestamp, WatchCursor};
pub use entry::{KvEntry, KvMarker, KvUpdate, WatchEvent};
pub use error::{CursorDecodeError, ExpiryReason, KvError};
pub use scope::{
    Retention, WatchScope, WatchStart, validate_bucket_name, validate_key, validate_prefix,
};
pub use slipstream_protocol::{Eviction, ListingTruth};
pub use traits::{Connection, KvPurge, KvReader, KvStore, KvTtl, KvWatcher, KvWriter};
pub use version::{MAX_VERSION_LEN, VersionToken};
