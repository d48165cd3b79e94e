//! Operator-side access to the server under test: raw JetStream API calls
//! the suites use to arrange situations and to check for leaks.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::time::Instant;

/// The bound on every admin round-trip.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A plain client for arranging and inspecting server state.
#[derive(Debug, Clone)]
pub struct Admin {
    client: async_nats::Client,
}

impl Admin {
    /// Connect to `url`.
    ///
    /// # Panics
    /// When the server cannot be reached.
    pub async fn connect(url: &str) -> Self {
        let seeds: Vec<&str> = url.split(',').map(str::trim).collect();
        let client = tokio::time::timeout(ADMIN_TIMEOUT, async_nats::connect(seeds.as_slice()))
            .await
            .unwrap_or_else(|_| panic!("admin connect to {url} timed out"))
            .unwrap_or_else(|e| panic!("admin connect to {url}: {e}"));
        Self { client }
    }

    /// The raw client.
    #[must_use]
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// A JetStream API request (`$JS.API.<api>`); the reply as JSON.
    ///
    /// # Errors
    /// The reply's `error` object, or a transport failure, as text.
    pub async fn api(&self, api: &str, body: Value) -> Result<Value, String> {
        let reply = tokio::time::timeout(
            ADMIN_TIMEOUT,
            self.client
                .request(format!("$JS.API.{api}"), Bytes::from(body.to_string())),
        )
        .await
        .map_err(|_| format!("{api} timed out"))?
        .map_err(|e| format!("{api}: {e}"))?;
        let v: Value = serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())?;
        match v.get("error") {
            Some(err) => Err(err.to_string()),
            None => Ok(v),
        }
    }

    /// Names of the stream's consumers.
    ///
    /// # Panics
    /// When the listing fails.
    pub async fn consumer_names(&self, stream: &str) -> Vec<String> {
        let v = self
            .api(&format!("CONSUMER.NAMES.{stream}"), json!({}))
            .await
            .unwrap_or_else(|e| panic!("consumer names: {e}"));
        v["consumers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The stream's info.
    ///
    /// # Panics
    /// When the request fails.
    pub async fn stream_info(&self, stream: &str) -> Value {
        self.api(&format!("STREAM.INFO.{stream}"), json!({}))
            .await
            .unwrap_or_else(|e| panic!("stream info {stream}: {e}"))
    }

    /// The infos of the stream's consumers (`CONSUMER.LIST`, first page).
    ///
    /// # Panics
    /// When the listing fails.
    pub async fn consumers(&self, stream: &str) -> Vec<Value> {
        let v = self
            .api(&format!("CONSUMER.LIST.{stream}"), json!({}))
            .await
            .unwrap_or_else(|e| panic!("consumer list: {e}"));
        v["consumers"].as_array().cloned().unwrap_or_default()
    }

    /// The stream's first retained sequence (`last + 1` when empty).
    ///
    /// # Panics
    /// When the request fails or the reply lacks it.
    pub async fn first_sequence(&self, stream: &str) -> u64 {
        let info = self.stream_info(stream).await;
        info["state"]["first_seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("stream info {stream} without first_seq: {info}"))
    }

    /// Wait until the stream's first retained sequence is above `above`
    /// (retention or a purge moved its head past a cursor's resume point);
    /// that sequence, or `None` when `within` elapsed first.
    pub async fn wait_first_sequence_above(
        &self,
        stream: &str,
        above: u64,
        within: Duration,
    ) -> Option<u64> {
        let deadline = Instant::now() + within;
        loop {
            let first = self.first_sequence(stream).await;
            if first > above {
                return Some(first);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Remove every message below `seq`.
    ///
    /// # Errors
    /// The server's refusal.
    pub async fn purge_below(&self, stream: &str, seq: u64) -> Result<(), String> {
        self.api(&format!("STREAM.PURGE.{stream}"), json!({ "seq": seq }))
            .await
            .map(drop)
    }

    /// Remove every message on `subject`.
    ///
    /// # Errors
    /// The server's refusal.
    pub async fn purge_subject(&self, stream: &str, subject: &str) -> Result<(), String> {
        self.api(
            &format!("STREAM.PURGE.{stream}"),
            json!({ "filter": subject }),
        )
        .await
        .map(drop)
    }

    /// Delete the stream.
    ///
    /// # Errors
    /// The server's refusal.
    pub async fn delete_stream(&self, stream: &str) -> Result<(), String> {
        self.api(&format!("STREAM.DELETE.{stream}"), json!({}))
            .await
            .map(drop)
    }

    /// Change one field of the stream's configuration.
    ///
    /// # Errors
    /// The server's refusal.
    pub async fn update_config(
        &self,
        stream: &str,
        field: &str,
        value: Value,
    ) -> Result<(), String> {
        let info = self
            .api(&format!("STREAM.INFO.{stream}"), json!({}))
            .await?;
        let mut config = info["config"].clone();
        config[field] = value;
        self.api(&format!("STREAM.UPDATE.{stream}"), config)
            .await
            .map(drop)
    }
}

/// Poll `check` until it returns true or `within` elapses; true if it did.
pub async fn wait_until<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
