//! Live-server test support for slipstream: a nats-server per test on a
//! free loopback port with its own store directory (X3), a three-node
//! cluster ([`NatsCluster`]), a stalling TCP
//! proxy for fault tests, and small helpers the suites share.
//!
//! The binary comes from `NATS_SERVER_BIN`, which `cargo xtask it` sets.
//!
//! ```
//! use slipstream_it::TempDir;
//!
//! let dir = TempDir::new("doc");
//! assert!(dir.path().is_dir());
//! let path = dir.path().to_path_buf();
//! drop(dir);
//! assert!(!path.exists());
//! ```

mod admin;
mod clients;
mod cluster;
mod fixture;
mod proxy;
mod server;

pub use admin::{Admin, wait_until};
pub use clients::KvClient;
pub use cluster::{Discovery, NatsCluster};
pub use fixture::{connect, connect_with, live_values, open, test_settings};
pub use proxy::{Forwarding, StallProxy};
pub use server::{
    NatsServer, SERVER_BIN_ENV, ServerAuth, ServerOptions, ServerTls, TempDir, server_bin,
};
