//! The memory backend runs the whole KV conformance kit.

use std::time::Duration;

use slipstream_kv::testkit::ConformanceHarness;
use slipstream_kv::{Connection, KvError};
use slipstream_memory::{MemoryConnection, MemoryServer};

/// A fresh simulated server per test; admin hooks go straight to it and
/// time is its manual clock.
struct MemoryHarness {
    server: MemoryServer,
}

impl MemoryHarness {
    fn new() -> Self {
        Self {
            server: MemoryServer::new(),
        }
    }
}

impl ConformanceHarness for MemoryHarness {
    type Conn = MemoryConnection;

    async fn connection(&self) -> Result<MemoryConnection, KvError> {
        let conn = self.server.connection();
        conn.connect().await?;
        Ok(conn)
    }

    fn bucket_name(&self, case: &str) -> String {
        format!("kit_{case}")
    }

    async fn purge_below(&self, bucket: &str, seq: u64) -> Result<(), KvError> {
        self.server.bucket(bucket).purge_below(seq).map(drop)
    }

    async fn purge_subject(&self, bucket: &str, key: &str) -> Result<(), KvError> {
        self.server.bucket(bucket).purge_subject(key).map(drop)
    }

    async fn delete_bucket(&self, bucket: &str) -> Result<(), KvError> {
        self.server.bucket(bucket).delete()
    }

    async fn set_max_msgs(&self, bucket: &str, max_msgs: u64) -> Result<(), KvError> {
        self.server.bucket(bucket).set_max_msgs(Some(max_msgs))
    }

    async fn advance_time(&self, by: Duration) {
        self.server.clock().advance(by);
    }
}

slipstream_kv::conformance_tests!(MemoryHarness::new());
