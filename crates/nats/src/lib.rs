//! slipstream's NATS JetStream KV backend: every `slipstream-kv` trait over
//! async-nats.
//!
//! Every server round-trip is bounded by [`BackendSettings::request_timeout`];
//! scans and watches run on ephemeral push consumers that are deleted
//! afterwards (and reaped by the server if the client cannot); delta watches
//! detect expired cursors themselves, because the server silently clamps a
//! start below its first sequence; All-scope delta watches guard the
//! retention floor while they run.
//!
//! The JetStream plumbing underneath (bounded API requests, stream facts,
//! the push consumer and its re-create loop) is public in [`jetstream`], so
//! that `slipstream-stream`'s projections of plain streams run on the same
//! code.
//!
//! ```
//! use std::time::Duration;
//! use slipstream_nats::{AuthMethod, NatsConfig, NatsConnection, Secret, parse_ack_subject};
//!
//! // Configuration never shows its secrets.
//! let config = NatsConfig::new("nats://app:s3cret@127.0.0.1:4222")
//!     .creds_file("/etc/app/user.creds")
//!     .request_timeout(Duration::from_secs(5));
//! assert_eq!(config.auth_method(), AuthMethod::CredsFile);
//! assert!(!format!("{config:?}").contains("s3cret"));
//! let connection = NatsConnection::new(config);
//! assert!(!format!("{connection:?}").contains("s3cret"));
//!
//! // A pushed message's revision comes from its ACK subject.
//! let ack = parse_ack_subject("$JS.ACK.KV_routes.c1.1.42.7.1700000000000000000.0");
//! assert_eq!(ack.stream_sequence, Some(42));
//! ```

mod ack;
mod api;
mod bucket;
mod config;
mod connection;
mod consumer;
mod decode;
mod error;
pub mod jetstream;
mod outbox;
mod scan;
mod settle;
mod store;
mod watch;

pub use ack::{AckInfo, parse_ack_subject};
pub use config::{
    AuthMethod, BackendSettings, Credentials, NatsConfig, Secret, TlsConfig, TlsMode,
};
pub use connection::NatsConnection;
pub use decode::LogPayload;
pub use error::NatsError;
pub use jetstream::CONSUMER_PREFIX;
pub use store::NatsBucket;
pub use watch::NatsWatch;
