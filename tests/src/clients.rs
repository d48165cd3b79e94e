//! KV buckets as other clients create them.

use serde_json::Value;

/// A client whose KV bucket creation the live suites reproduce, stream
/// config for stream config, so the engine meets buckets as users have
/// them. Other clients' buckets differ from ours: nats-py 2.16 sets
/// `allow_msg_ttl` on every KV stream (with discard new, rollups allowed,
/// deletes denied, a duplicate window of min(ttl, 120 s)); nats.go sets it
/// only with limit markers, and then `subject_delete_marker_ttl` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvClient {
    /// nats-py 2.16 `create_key_value(bucket=..., history=1)`: per-message
    /// TTL allowed on every bucket, discard new, no `max_age`.
    Python,
    /// nats.go `CreateKeyValue` with history 1 and no limit markers.
    Go,
    /// `nats kv add --history 1 --marker-ttl 60s` (nats.go underneath):
    /// TTL allowed and the server places delete markers that live 60 s.
    CliLimitMarkers,
}

impl KvClient {
    /// The `STREAM.CREATE` body this client sends for bucket `name`.
    pub fn stream_config(self, name: &str) -> Value {
        let mut config = serde_json::json!({
            "name": format!("KV_{name}"),
            "subjects": [format!("$KV.{name}.>")],
            "retention": "limits",
            "max_consumers": -1,
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": 0,
            "max_msgs_per_subject": 1,
            "max_msg_size": -1,
            "discard": "new",
            "storage": "file",
            "num_replicas": 1,
            "duplicate_window": 120_000_000_000_u64,
            "allow_rollup_hdrs": true,
            "deny_delete": true,
            "deny_purge": false,
            "allow_direct": true,
        });
        match self {
            Self::Python => config["allow_msg_ttl"] = true.into(),
            Self::Go => {}
            Self::CliLimitMarkers => {
                config["allow_msg_ttl"] = true.into();
                config["subject_delete_marker_ttl"] = 60_000_000_000_u64.into();
            }
        }
        config
    }
}
