//! Projections of plain JetStream streams for slipstream (behaviour P):
//! [`ensure_stream`] gets or creates a stream without ever changing an
//! existing one (P1), and [`StreamSource`] feeds any stream to the
//! applied-watch engine, so the same batching, stores and cursor rule (E1)
//! serve streams and KV buckets alike (P2, P4).
//!
//! A projection replays from K13's start, everything retained or
//! everything after `since`, and keeps tailing on the same consumer, so the
//! tail continues at the last replayed sequence + 1 and nothing published
//! during the handover is lost. A resume first checks the retention floor
//! and fails with the typed [`StreamError::RetentionExhausted`] (P3); an
//! engine run that ends for that reason converts to it with
//! [`StreamError::from`].
//!
//! Each message becomes a put keyed by its subject (or by a
//! [`KeyMapping`]) at its stream sequence; the fold holds the latest
//! message per key.
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use slipstream_applied::AppliedError;
//! use slipstream_kv::{ExpiryReason, WatchCursor};
//! use slipstream_stream::{
//!     Discard, KeyMapping, MessageView, StreamError, StreamRetention, StreamSpec,
//! };
//!
//! // The stream to get or create: an existing one is used as it is.
//! let spec = StreamSpec::new("ORDERS", ["orders.>"]).retention(StreamRetention {
//!     max_age: Some(Duration::from_secs(7 * 24 * 3600)),
//!     discard: Discard::Old,
//!     ..StreamRetention::default()
//! });
//! assert_eq!(spec.name(), "ORDERS");
//!
//! // Fold keys: the subject without its common prefix.
//! let keys = KeyMapping::StripPrefix("orders.".into());
//! let payload = Bytes::from_static(b"{\"total\":12}");
//! let message = MessageView { subject: "orders.eu.42", headers: None, payload: &payload, sequence: 9 };
//! let update = keys.to_update(&message, None);
//! assert_eq!((update.key(), update.revision()), ("eu.42", Some(9)));
//!
//! // An engine run that stopped because retention passed its cursor is
//! // the typed error: re-snapshot from the first retained sequence.
//! let stopped = AppliedError::CursorExpired {
//!     reason: ExpiryReason::BelowFirstSequence { revision: 3, first_sequence: 6 },
//!     cursor: WatchCursor::at(3),
//! };
//! assert!(matches!(
//!     StreamError::from(stopped),
//!     StreamError::RetentionExhausted { first_sequence: 6 }
//! ));
//! ```
//!
//! Running a projection: build a [`StreamSource`] from a connected
//! `async_nats::Client` and the stream's name, and hand it to
//! `slipstream_applied::AppliedWatch::new` like any KV watcher.

mod ensure;
mod error;
mod message;
mod source;
mod tail;

pub use ensure::{Discard, Ensured, Storage, StreamRetention, StreamSpec, ensure_stream};
pub use error::StreamError;
pub use message::{KeyFn, KeyMapping, MessageView};
pub use source::{StreamSource, StreamWatch};
