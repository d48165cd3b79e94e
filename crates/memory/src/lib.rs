//! A deterministic, in-process simulation of a NATS JetStream KV bucket,
//! implementing every `slipstream-kv` trait.
//!
//! It keeps one global revision sequence per bucket and reproduces the
//! server's retention (per-key history, `max_msgs`, `max_bytes`, `max_age`,
//! per-message TTL, discard old/new), its markers and rollup purge, and its
//! quirks on purpose: the raw consumer ([`BucketAdmin::raw_consumer`])
//! silently clamps a start below the first retained sequence, and an empty
//! stream reports `first = last + 1`. The KV watch built on it detects expiry
//! itself (K1, K3, bucket identity, the live floor guard K4), exactly as the
//! NATS backend does.
//!
//! Deterministic: time is a [`ManualClock`] the test advances, there are no
//! threads and no randomness, and watch streams are plain
//! [`futures::Stream`]s woken when the bucket or the clock changes. Fault
//! hooks ([`Faults`]) fail operations, end or stall watches.
//!
//! ```
//! use bytes::Bytes;
//! use futures::StreamExt;
//! use slipstream_kv::{Connection, ExpiryReason, KvError, KvStore, KvWatcher, KvWriter,
//!     WatchCursor, WatchEvent, WatchScope, WatchStart};
//! use slipstream_memory::MemoryServer;
//!
//! # futures::executor::block_on(async {
//! let server = MemoryServer::new();
//! let conn = server.connection();
//! conn.connect().await?;
//! let store = conn.store("config").await?;
//! store.writer().put("a", Bytes::from_static(b"1")).await?;
//! store.writer().delete("a").await?;
//! store.writer().put("b", Bytes::from_static(b"2")).await?;
//!
//! // State-sync: the latest message per key, markers included, then CaughtUp.
//! let mut watch = store.watcher().watch(&WatchScope::All, WatchStart::Relist).await?;
//! assert!(matches!(watch.next().await, Some(Ok(WatchEvent::Update(u))) if u.key() == "a"));
//! assert!(matches!(watch.next().await, Some(Ok(WatchEvent::Update(u))) if u.key() == "b"));
//! assert_eq!(watch.next().await, Some(Ok(WatchEvent::CaughtUp)));
//!
//! // Head eviction passes a cursor at revision 1: the resume is refused.
//! server.bucket("config").purge_below(3)?;
//! let resumed = store.watcher().watch(&WatchScope::All, WatchStart::After(WatchCursor::at(1))).await;
//! assert!(matches!(
//!     resumed.err(),
//!     Some(KvError::CursorExpired { reason: ExpiryReason::BelowFirstSequence { revision: 1, first_sequence: 3 } })
//! ));
//! # Ok::<(), KvError>(())
//! # }).unwrap();
//! ```

mod bucket;
mod clock;
mod consumer;
mod server;
mod store;

pub use bucket::{BucketLimits, Operation, RawMessage, StreamInfo};
pub use clock::ManualClock;
pub use consumer::{DeliverPolicy, MemoryWatch, RawConsumer};
pub use server::{BucketAdmin, Faults, MemoryServer};
pub use store::{MemoryConnection, MemoryStore};
