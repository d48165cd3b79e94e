//! Connections and buckets with the short bounds live tests use.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use slipstream_kv::{Connection, KvReader, KvStore, StoreConfig};
use slipstream_nats::{BackendSettings, NatsBucket, NatsConfig, NatsConnection};

/// Settings for tests: short round-trip bound and fast heartbeats, so a
/// broken behaviour fails quickly instead of waiting out production
/// defaults.
#[must_use]
pub fn test_settings() -> BackendSettings {
    BackendSettings::default()
        .request_timeout(Duration::from_secs(5))
        .idle_heartbeat(Duration::from_millis(500))
        .inactive_threshold(Duration::from_secs(60))
        .reconnect_budget(Duration::from_secs(20))
        .ping_interval(Duration::from_secs(1))
}

/// A connected connection to `url` with [`test_settings`].
///
/// # Panics
/// When connecting fails.
pub async fn connect(url: &str) -> NatsConnection {
    connect_with(NatsConfig::new(url).settings(test_settings())).await
}

/// A connected connection with `config`.
///
/// # Panics
/// When connecting fails.
pub async fn connect_with(config: NatsConfig) -> NatsConnection {
    let conn = NatsConnection::new(config);
    conn.connect()
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    conn
}

/// Open (creating) a bucket.
///
/// # Panics
/// When opening fails.
pub async fn open(conn: &NatsConnection, config: StoreConfig) -> NatsBucket {
    conn.store_with_config(&config)
        .await
        .unwrap_or_else(|e| panic!("open bucket {}: {e}", config.name))
}

/// The bucket's live keys and values, as its listing has them now.
pub async fn live_values(bucket: &NatsBucket) -> BTreeMap<String, Bytes> {
    bucket
        .reader()
        .scan("")
        .await
        .unwrap_or_else(|e| panic!("list the bucket: {e}"))
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect()
}
