//! The projection's ephemeral push consumer: AckPolicy::None, an inactivity
//! threshold, its inbox subscribed before it exists, deleted when done.

use std::time::Duration;

use async_nats::{Client, Message, StatusCode, Subject, Subscriber};
use futures::StreamExt;
use serde_json::{Value, json};
use slipstream_nats::{BackendSettings, CONSUMER_PREFIX};
use tracing::{debug, warn};

use crate::api::{CONSUMER_NOT_FOUND, api, bounded, nanos};
use crate::error::StreamError;

/// Where a consumer starts (K13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Every retained message.
    All,
    /// From this stream sequence on.
    At(u64),
}

/// One thing the consumer's inbox delivered.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// A stream message.
    Data(Message),
    /// The server asks for a reply on this subject (flow control, or a
    /// stalled consumer).
    Reply(Subject),
    /// An idle heartbeat naming the last consumer sequence sent.
    Heartbeat(Option<u64>),
    /// The server reports the consumer gone, or the subscription closed.
    Ended(String),
    /// Nothing arrived within the wait.
    Idle,
}

/// Deletes the server-side consumer when dropped, unless already deleted.
struct DeleteGuard {
    client: Client,
    timeout: Duration,
    stream: String,
    name: String,
    armed: bool,
}

impl Drop for DeleteGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let client = self.client.clone();
        let timeout = self.timeout;
        let stream = std::mem::take(&mut self.stream);
        let name = std::mem::take(&mut self.name);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { delete_consumer(&client, timeout, &stream, &name).await });
        } else {
            debug!(consumer = %name, "no runtime to delete the consumer; the server reaps it when inactive");
        }
    }
}

/// Delete a consumer, bounded and best-effort: a failure is logged, and
/// the inactivity threshold makes the server reap it anyway.
async fn delete_consumer(client: &Client, timeout: Duration, stream: &str, name: &str) {
    let subject = format!("CONSUMER.DELETE.{stream}.{name}");
    match api(client, timeout, "consumer delete", &subject, &json!({})).await {
        Ok(_) => debug!(consumer = %name, "consumer deleted"),
        Err(StreamError::Api { err_code, .. }) if err_code == CONSUMER_NOT_FOUND => {
            debug!(consumer = %name, "consumer already gone");
        }
        Err(e) => {
            warn!(consumer = %name, error = %e, "deleting consumer failed; the server reaps it when inactive");
        }
    }
}

/// An ephemeral push consumer over a whole stream.
pub(crate) struct PushConsumer {
    sub: Subscriber,
    guard: DeleteGuard,
    /// Messages pending for the consumer when it was created.
    pub(crate) initial_pending: u64,
}

impl PushConsumer {
    /// Subscribe to a fresh inbox, then create the consumer delivering to
    /// it, so no delivery can precede the subscription.
    pub(crate) async fn create(
        client: &Client,
        settings: &BackendSettings,
        stream: &str,
        start: Start,
    ) -> Result<Self, StreamError> {
        let timeout = settings.request_timeout;
        let inbox = client.new_inbox();
        let unique = inbox.rsplit('.').next().unwrap_or("x");
        let name = format!("{CONSUMER_PREFIX}{unique}");
        let sub = bounded("subscribe", timeout, async {
            client
                .subscribe(inbox.clone())
                .await
                .map_err(|e| StreamError::Request {
                    operation: "subscribe".to_owned(),
                    reason: e.to_string(),
                })
        })
        .await?;
        // Armed before the request: a create that timed out may still have
        // reached the server.
        let mut guard = DeleteGuard {
            client: client.clone(),
            timeout,
            stream: stream.to_owned(),
            name: name.clone(),
            armed: true,
        };
        let mut config = json!({
            "name": name,
            "deliver_subject": inbox,
            "ack_policy": "none",
            "replay_policy": "instant",
            "flow_control": true,
            "idle_heartbeat": nanos(settings.idle_heartbeat),
            "inactive_threshold": nanos(settings.inactive_threshold),
            "mem_storage": true,
            "num_replicas": 1,
        });
        match start {
            Start::All => config["deliver_policy"] = json!("all"),
            Start::At(seq) => {
                config["deliver_policy"] = json!("by_start_sequence");
                config["opt_start_seq"] = json!(seq);
            }
        }
        let body = json!({ "stream_name": stream, "config": config });
        let subject = format!("CONSUMER.CREATE.{stream}.{name}");
        let reply = match api(client, timeout, "consumer create", &subject, &body).await {
            Ok(reply) => reply,
            Err(e @ StreamError::Api { .. }) => {
                // The server refused it: there is nothing to delete.
                guard.armed = false;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let initial_pending = reply
            .get("num_pending")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        debug!(consumer = %name, initial_pending, ?start, "projection consumer created");
        Ok(Self {
            sub,
            guard,
            initial_pending,
        })
    }

    /// The consumer's name.
    pub(crate) fn name(&self) -> &str {
        &self.guard.name
    }

    /// Wait up to `wait` for the next delivery.
    pub(crate) async fn next(&mut self, wait: Duration) -> Delivery {
        let msg = match tokio::time::timeout(wait, self.sub.next()).await {
            Err(_) => return Delivery::Idle,
            Ok(None) => return Delivery::Ended("subscription closed".to_owned()),
            Ok(Some(msg)) => msg,
        };
        match msg.status {
            None | Some(StatusCode::OK) => Delivery::Data(msg),
            Some(StatusCode::IDLE_HEARTBEAT) => {
                let header = |name: &str| {
                    msg.headers
                        .as_ref()
                        .and_then(|h| h.get(name))
                        .map(|v| v.as_str().to_owned())
                };
                if let Some(reply) = msg.reply.clone() {
                    return Delivery::Reply(reply);
                }
                if let Some(stalled) = header("Nats-Consumer-Stalled") {
                    return Delivery::Reply(Subject::from(stalled));
                }
                Delivery::Heartbeat(header("Nats-Last-Consumer").and_then(|v| v.parse().ok()))
            }
            Some(status) => Delivery::Ended(format!(
                "consumer ended by the server: {} {}",
                status,
                msg.description.unwrap_or_default()
            )),
        }
    }

    /// Answer a flow-control request or a stall notice, bounded.
    pub(crate) async fn reply(&self, subject: Subject) -> Result<(), StreamError> {
        let client = &self.guard.client;
        bounded("flow control reply", self.guard.timeout, async {
            client
                .publish(subject, bytes::Bytes::new())
                .await
                .map_err(|e| StreamError::Request {
                    operation: "flow control reply".to_owned(),
                    reason: e.to_string(),
                })
        })
        .await
    }

    /// Delete the consumer now (bounded, best-effort).
    pub(crate) async fn delete(mut self) {
        self.guard.armed = false;
        let _ = self.sub.unsubscribe().await;
        let g = &self.guard;
        delete_consumer(&g.client, g.timeout, &g.stream, &g.name).await;
    }
}
