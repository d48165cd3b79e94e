//! Ephemeral push consumers: created bounded, subscribed before creation,
//! deleted afterwards (N3, N5, O4).

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Message, StatusCode, Subject, Subscriber};
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tracing::{debug, warn};

use crate::api::{ConnShared, bounded};
use crate::error::NatsError;

/// Prefix of every consumer this backend creates, so leaks can be found.
pub const CONSUMER_PREFIX: &str = "slipstream_";

/// Where a consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartPolicy {
    /// The last message of every subject, then live (state-sync).
    LastPerSubject,
    /// From this stream sequence on (delta).
    ByStartSequence(u64),
}

/// What to create.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerRequest<'a> {
    pub(crate) stream: &'a str,
    pub(crate) filters: &'a [String],
    pub(crate) start: StartPolicy,
    pub(crate) headers_only: bool,
}

/// One thing a push consumer's inbox delivered.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// A stream message.
    Data(Message),
    /// The server asks for a flow-control reply on this subject.
    FlowControl(Subject),
    /// An idle heartbeat: the consumer is alive.
    Heartbeat {
        /// The last consumer sequence the server delivered.
        last_consumer_sequence: Option<u64>,
        /// A stalled consumer asks for a reply here.
        stalled: Option<Subject>,
    },
    /// The server reports the consumer gone or the subscription closed.
    Ended(String),
    /// Nothing arrived within the wait.
    Idle,
}

/// Deletes the server-side consumer when dropped unless already deleted.
struct DeleteGuard {
    conn: Arc<ConnShared>,
    stream: String,
    name: String,
    armed: bool,
}

impl Drop for DeleteGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let conn = Arc::clone(&self.conn);
        let stream = std::mem::take(&mut self.stream);
        let name = std::mem::take(&mut self.name);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { delete_consumer(&conn, &stream, &name).await });
        } else {
            debug!(consumer = %name, "no runtime to delete the consumer; the server reaps it when inactive");
        }
    }
}

/// How many times a consumer delete is tried before the server's
/// inactivity reaping is left to remove it.
const DELETE_ATTEMPTS: u32 = 6;

/// Delete a consumer, each attempt bounded. A failed attempt (the server
/// that holds the consumer restarting, the connection moving) is tried
/// again after a pause, 250 ms doubling, so a consumer whose server was
/// down when its watch moved on does not linger until the server reaps
/// it; after the last, the failure is logged at warn.
pub(crate) async fn delete_consumer(conn: &ConnShared, stream: &str, name: &str) {
    let mut pause = Duration::from_millis(250);
    for attempt in 1..=DELETE_ATTEMPTS {
        match delete_once(conn, stream, name).await {
            Ok(()) => return,
            Err(e) if attempt == DELETE_ATTEMPTS => {
                warn!(consumer = %name, error = %e, attempt, "deleting consumer failed; the server reaps it when inactive");
            }
            Err(e) => {
                debug!(consumer = %name, error = %e, ?pause, attempt, "deleting consumer failed; trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
}

/// One bounded delete; a consumer already gone counts as deleted.
async fn delete_once(conn: &ConnShared, stream: &str, name: &str) -> Result<(), NatsError> {
    let api = format!("CONSUMER.DELETE.{stream}.{name}");
    match conn.api("consumer delete", &api, &json!({})).await {
        Ok(_) => {
            debug!(consumer = %name, "consumer deleted");
            Ok(())
        }
        Err(NatsError::Api {
            err_code: 10014, ..
        }) => {
            debug!(consumer = %name, "consumer already gone");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// An ephemeral push consumer with AckPolicy::None, flow control and idle
/// heartbeats, whose inbox was subscribed before the consumer existed.
pub(crate) struct PushConsumer {
    sub: Subscriber,
    /// A message taken from the inbox by `has_data_waiting`, for `next`.
    peeked: Option<Option<Message>>,
    guard: DeleteGuard,
    /// Messages pending for the consumer when it was created.
    pub(crate) initial_pending: u64,
}

impl PushConsumer {
    /// Subscribe to a fresh inbox, then create the consumer delivering to it.
    pub(crate) async fn create(
        conn: &Arc<ConnShared>,
        request: &ConsumerRequest<'_>,
        heartbeat: Duration,
    ) -> Result<Self, NatsError> {
        let settings = &conn.settings;
        let inbox = conn.client.new_inbox();
        let unique = inbox.rsplit('.').next().unwrap_or("x");
        let name = format!("{CONSUMER_PREFIX}{unique}");
        let sub = bounded("subscribe", settings.request_timeout, async {
            conn.client
                .subscribe(inbox.clone())
                .await
                .map_err(|e| NatsError::Request {
                    operation: "subscribe".to_owned(),
                    reason: e.to_string(),
                })
        })
        .await?;
        // Armed before the request: a timed-out create may still have made it.
        let guard = DeleteGuard {
            conn: Arc::clone(conn),
            stream: request.stream.to_owned(),
            name: name.clone(),
            armed: true,
        };
        let mut config = json!({
            "name": name,
            "deliver_subject": inbox,
            "ack_policy": "none",
            "max_deliver": 1,
            "replay_policy": "instant",
            "headers_only": request.headers_only,
            "flow_control": true,
            "idle_heartbeat": nanos(heartbeat),
            "inactive_threshold": nanos(settings.inactive_threshold),
            "mem_storage": true,
            "num_replicas": 1,
        });
        match request.start {
            StartPolicy::LastPerSubject => config["deliver_policy"] = json!("last_per_subject"),
            StartPolicy::ByStartSequence(seq) => {
                config["deliver_policy"] = json!("by_start_sequence");
                config["opt_start_seq"] = json!(seq);
            }
        }
        match request.filters {
            [one] => config["filter_subject"] = json!(one),
            many => config["filter_subjects"] = json!(many),
        }
        let body = json!({ "stream_name": request.stream, "config": config });
        let api = format!("CONSUMER.CREATE.{}.{}", request.stream, name);
        let reply = conn.api("consumer create", &api, &body).await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e @ NatsError::Api { .. }) => {
                // The server refused it: nothing to delete.
                let mut guard = guard;
                guard.armed = false;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let initial_pending = reply
            .get("num_pending")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        debug!(consumer = %name, initial_pending, "consumer created");
        Ok(Self {
            sub,
            peeked: None,
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
        // What the inbox already holds needs no timer (and no clock read);
        // a backlog is drained this way.
        let next = match self
            .peeked
            .take()
            .or_else(|| self.sub.next().now_or_never())
        {
            Some(next) => next,
            None => match tokio::time::timeout(wait, self.sub.next()).await {
                Err(_) => return Delivery::Idle,
                Ok(next) => next,
            },
        };
        let Some(msg) = next else {
            return Delivery::Ended("subscription closed".to_owned());
        };
        match msg.status {
            None | Some(StatusCode::OK) => Delivery::Data(msg),
            Some(StatusCode::IDLE_HEARTBEAT) => match msg.reply {
                Some(reply) => Delivery::FlowControl(reply),
                None => {
                    let header = |name: &str| {
                        msg.headers
                            .as_ref()
                            .and_then(|h| h.get(name))
                            .map(|v| v.as_str().to_owned())
                    };
                    Delivery::Heartbeat {
                        last_consumer_sequence: header("Nats-Last-Consumer")
                            .and_then(|v| v.parse().ok()),
                        stalled: header("Nats-Consumer-Stalled").map(Subject::from),
                    }
                }
            },
            Some(status) => Delivery::Ended(format!(
                "consumer ended by the server: {} {}",
                status,
                msg.description.unwrap_or_default()
            )),
        }
    }

    /// Whether a data message already waits in the inbox: whoever checks
    /// where the stream ends can wait for the inbox to run dry.
    pub(crate) fn has_data_waiting(&mut self) -> bool {
        if self.peeked.is_none() {
            self.peeked = self.sub.next().now_or_never();
        }
        matches!(
            &self.peeked,
            Some(Some(msg)) if matches!(msg.status, None | Some(StatusCode::OK))
        )
    }

    /// Answer a flow-control request (or a stall notice).
    pub(crate) async fn reply_flow_control(
        &self,
        conn: &ConnShared,
        subject: Subject,
    ) -> Result<(), NatsError> {
        bounded("flow control reply", conn.settings.request_timeout, async {
            conn.client
                .publish(subject, bytes::Bytes::new())
                .await
                .map_err(|e| NatsError::Request {
                    operation: "flow control reply".to_owned(),
                    reason: e.to_string(),
                })
        })
        .await
    }

    /// Delete the consumer now (one bounded attempt); if that fails, the
    /// retried delete goes on in the background.
    pub(crate) async fn delete(mut self) {
        let _ = self.sub.unsubscribe().await;
        let guard = &mut self.guard;
        if delete_once(&guard.conn, &guard.stream, &guard.name)
            .await
            .is_ok()
        {
            guard.armed = false;
        }
        // Still armed: dropping the guard spawns the retried delete.
    }
}

/// A duration as JetStream's nanoseconds, saturating.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Consumer filter subjects for key prefixes: nested and duplicate prefixes
/// removed (the server rejects overlapping filters), sorted.
pub(crate) fn filter_subjects(keyspace: &str, prefixes: &[String]) -> Vec<String> {
    let mut sorted: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut kept: Vec<&str> = Vec::with_capacity(sorted.len());
    for p in sorted {
        // Sorted order puts a prefix right before the prefixes it covers.
        if kept.last().is_none_or(|last| !p.starts_with(last)) {
            kept.push(p);
        }
    }
    kept.into_iter()
        .map(|p| format!("{keyspace}{p}>"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_duplicate_prefixes_collapse_to_disjoint_filters() {
        let ps = [
            "b.".into(),
            "a.x.".into(),
            "a.".into(),
            "b.".into(),
            "c.".into(),
        ];
        assert_eq!(
            filter_subjects("$KV.k.", &ps),
            ["$KV.k.a.>", "$KV.k.b.>", "$KV.k.c.>"]
        );
        assert_eq!(
            filter_subjects("$KV.k.", &["".into(), "a.".into()]),
            ["$KV.k.>"]
        );
    }

    #[test]
    fn durations_saturate() {
        assert_eq!(nanos(Duration::MAX), u64::MAX);
        assert_eq!(nanos(Duration::from_secs(1)), 1_000_000_000);
    }
}
