//! The NATS backend runs the whole KV conformance kit (V10) against a live
//! server: one nats-server per case.

// Test helpers: a failed expectation is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::Duration;

use serde_json::json;
use slipstream_it::{Admin, NatsServer, test_settings};
use slipstream_kv::testkit::ConformanceHarness;
use slipstream_kv::{Connection, KvError};
use slipstream_nats::{NatsConfig, NatsConnection};

/// A server of the case's own; admin hooks go through the JetStream API,
/// and time is the server's real clock.
struct NatsHarness {
    server: NatsServer,
    admin: Admin,
}

impl NatsHarness {
    async fn start() -> Self {
        let server = NatsServer::start().await;
        let admin = Admin::connect(&server.url()).await;
        Self { server, admin }
    }
}

fn failed(e: String) -> KvError {
    KvError::OperationFailed(e)
}

impl ConformanceHarness for NatsHarness {
    type Conn = NatsConnection;

    async fn connection(&self) -> Result<NatsConnection, KvError> {
        let conn =
            NatsConnection::new(NatsConfig::new(self.server.url()).settings(test_settings()));
        conn.connect().await?;
        Ok(conn)
    }

    fn bucket_name(&self, case: &str) -> String {
        let clean: String = case
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("kit_{clean}")
    }

    async fn purge_below(&self, bucket: &str, seq: u64) -> Result<(), KvError> {
        self.admin
            .purge_below(&format!("KV_{bucket}"), seq)
            .await
            .map_err(failed)
    }

    async fn purge_subject(&self, bucket: &str, key: &str) -> Result<(), KvError> {
        self.admin
            .purge_subject(&format!("KV_{bucket}"), &format!("$KV.{bucket}.{key}"))
            .await
            .map_err(failed)
    }

    async fn delete_bucket(&self, bucket: &str) -> Result<(), KvError> {
        self.admin
            .delete_stream(&format!("KV_{bucket}"))
            .await
            .map_err(failed)
    }

    async fn set_max_msgs(&self, bucket: &str, max_msgs: u64) -> Result<(), KvError> {
        self.admin
            .update_config(&format!("KV_{bucket}"), "max_msgs", json!(max_msgs))
            .await
            .map_err(failed)
    }

    async fn advance_time(&self, by: Duration) {
        // A live server's clock cannot be moved: let the time pass.
        tokio::time::sleep(by).await;
    }
}

slipstream_kv::conformance_tests!(NatsHarness::start().await);
