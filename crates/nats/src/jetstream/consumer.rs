//! Ephemeral push consumers: the inbox subscribed before the consumer
//! exists, every round-trip bounded, the consumer deleted afterwards (and
//! reaped by the server if the client cannot), and the loop that re-creates
//! a lost one (N3, N5, O4, R12).

use core::fmt;
use core::future::Future;
use std::time::Duration;

use async_nats::{Client, Message, StatusCode, Subject, Subscriber};
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{CONSUMER_NOT_FOUND, NatsError, api, bounded, nanos};

/// Prefix of every consumer slipstream creates, so leaks can be found.
pub const CONSUMER_PREFIX: &str = "slipstream_";

/// What a [`PushConsumer`] needs of the connection it runs on. The
/// consumer keeps a clone to delete itself when dropped.
pub trait JetStreamHandle: Clone + Send + Sync + 'static {
    /// The error the consumer's operations return: the owner's own type.
    type Error: From<NatsError> + fmt::Display + Send + 'static;

    /// The connected client.
    fn client(&self) -> &Client;

    /// The bound on each round-trip (N3).
    fn request_timeout(&self) -> Duration;

    /// Fails once the owner shut the connection down, so that nothing more
    /// is asked of the server through it.
    ///
    /// # Errors
    /// The owner's "not connected".
    fn ensure_open(&self) -> Result<(), Self::Error>;
}

/// A client and the bound every round-trip through it gets: the handle of
/// a user with no connection life cycle of its own (a projection over a
/// caller's client).
#[derive(Debug, Clone)]
pub struct JetStreamClient {
    client: Client,
    timeout: Duration,
}

impl JetStreamClient {
    /// `client`, with each round-trip bounded by `timeout`.
    #[must_use]
    pub fn new(client: Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }
}

impl JetStreamHandle for JetStreamClient {
    type Error = NatsError;

    fn client(&self) -> &Client {
        &self.client
    }

    fn request_timeout(&self) -> Duration {
        self.timeout
    }

    /// The caller owns the client and its life cycle: always open.
    fn ensure_open(&self) -> Result<(), NatsError> {
        Ok(())
    }
}

/// Where a consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPolicy {
    /// Every retained message.
    All,
    /// The last message of every subject, then live (a state-sync).
    LastPerSubject,
    /// From this stream sequence on (a delta, a resume).
    ByStartSequence(u64),
}

/// How a consumer that is done with, or dropped, is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// One bounded delete; a failure is logged at warn and the server's
    /// inactivity threshold reaps the consumer.
    Once,
    /// A delete that fails is retried in the background, 250 ms doubling,
    /// so a consumer whose server was down when its user moved on does not
    /// linger until the server reaps it; after the last attempt the
    /// failure is logged at warn.
    Retried,
}

/// What to create: an ephemeral push consumer with AckPolicy::None, flow
/// control and idle heartbeats, in memory with one replica.
#[derive(Debug, Clone)]
pub struct ConsumerRequest<'a> {
    /// The stream to read.
    pub stream: &'a str,
    /// The subjects to deliver (disjoint: the server rejects overlapping
    /// filters); empty for the whole stream.
    pub filters: &'a [String],
    /// Where delivery starts.
    pub start: StartPolicy,
    /// Deliver headers only, without payloads.
    pub headers_only: bool,
    /// How often an idle consumer sends a heartbeat.
    pub heartbeat: Duration,
    /// How long the server keeps the consumer without a subscriber.
    pub inactive_threshold: Duration,
    /// How the consumer is deleted.
    pub cleanup: Cleanup,
}

impl ConsumerRequest<'_> {
    /// The server's consumer configuration, named `name`, delivering to
    /// `inbox`.
    fn config(&self, name: &str, inbox: &str) -> Value {
        let mut config = json!({
            "name": name,
            "deliver_subject": inbox,
            "ack_policy": "none",
            "max_deliver": 1,
            "replay_policy": "instant",
            "headers_only": self.headers_only,
            "flow_control": true,
            "idle_heartbeat": nanos(self.heartbeat),
            "inactive_threshold": nanos(self.inactive_threshold),
            "mem_storage": true,
            "num_replicas": 1,
        });
        match self.start {
            StartPolicy::All => config["deliver_policy"] = json!("all"),
            StartPolicy::LastPerSubject => config["deliver_policy"] = json!("last_per_subject"),
            StartPolicy::ByStartSequence(seq) => {
                config["deliver_policy"] = json!("by_start_sequence");
                config["opt_start_seq"] = json!(seq);
            }
        }
        match self.filters {
            [] => {}
            [one] => config["filter_subject"] = json!(one),
            many => config["filter_subjects"] = json!(many),
        }
        config
    }
}

/// One thing a push consumer's inbox delivered.
#[derive(Debug)]
pub enum Delivery {
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

impl Delivery {
    /// What an inbox message is: data, or one of the server's status
    /// messages.
    fn of(msg: Message) -> Self {
        match msg.status {
            None | Some(StatusCode::OK) => Self::Data(msg),
            Some(StatusCode::IDLE_HEARTBEAT) => match msg.reply {
                Some(reply) => Self::FlowControl(reply),
                None => {
                    let header = |name: &str| {
                        msg.headers
                            .as_ref()
                            .and_then(|h| h.get(name))
                            .map(|v| v.as_str().to_owned())
                    };
                    Self::Heartbeat {
                        last_consumer_sequence: header("Nats-Last-Consumer")
                            .and_then(|v| v.parse().ok()),
                        stalled: header("Nats-Consumer-Stalled").map(Subject::from),
                    }
                }
            },
            Some(status) => Self::Ended(format!(
                "consumer ended by the server: {} {}",
                status,
                msg.description.unwrap_or_default()
            )),
        }
    }
}

/// Deletes the server-side consumer when dropped unless already deleted.
struct DeleteGuard<H: JetStreamHandle> {
    handle: H,
    stream: String,
    name: String,
    cleanup: Cleanup,
    armed: bool,
}

impl<H: JetStreamHandle> Drop for DeleteGuard<H> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let handle = self.handle.clone();
        let stream = std::mem::take(&mut self.stream);
        let name = std::mem::take(&mut self.name);
        let cleanup = self.cleanup;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { delete_consumer(&handle, &stream, &name, cleanup).await });
        } else {
            debug!(consumer = %name, "no runtime to delete the consumer; the server reaps it when inactive");
        }
    }
}

/// How many times a [`Cleanup::Retried`] delete is tried before the
/// server's inactivity reaping is left to remove the consumer.
const DELETE_ATTEMPTS: u32 = 6;

/// Delete a consumer, each attempt bounded, as `cleanup` says; the last
/// failure is logged at warn.
async fn delete_consumer<H: JetStreamHandle>(
    handle: &H,
    stream: &str,
    name: &str,
    cleanup: Cleanup,
) {
    let attempts = match cleanup {
        Cleanup::Once => 1,
        Cleanup::Retried => DELETE_ATTEMPTS,
    };
    let mut pause = Duration::from_millis(250);
    for attempt in 1..=attempts {
        match delete_once(handle, stream, name).await {
            Ok(()) => return,
            Err(e) if attempt == attempts => {
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
async fn delete_once<H: JetStreamHandle>(
    handle: &H,
    stream: &str,
    name: &str,
) -> Result<(), H::Error> {
    handle.ensure_open()?;
    let subject = format!("CONSUMER.DELETE.{stream}.{name}");
    let timeout = handle.request_timeout();
    match api(
        handle.client(),
        timeout,
        "consumer delete",
        &subject,
        &json!({}),
    )
    .await
    {
        Ok(_) => {
            debug!(consumer = %name, "consumer deleted");
            Ok(())
        }
        Err(e) if e.err_code() == Some(CONSUMER_NOT_FOUND) => {
            debug!(consumer = %name, "consumer already gone");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// An ephemeral push consumer whose inbox was subscribed before the
/// consumer existed, so no delivery can precede the subscription.
/// Dropping it deletes the server-side consumer in the background.
pub struct PushConsumer<H: JetStreamHandle> {
    sub: Subscriber,
    /// A message taken from the inbox by `has_data_waiting`, for `next`.
    peeked: Option<Option<Message>>,
    guard: DeleteGuard<H>,
    initial_pending: u64,
}

impl<H: JetStreamHandle> fmt::Debug for PushConsumer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushConsumer")
            .field("stream", &self.guard.stream)
            .field("name", &self.guard.name)
            .field("initial_pending", &self.initial_pending)
            .finish_non_exhaustive()
    }
}

impl<H: JetStreamHandle> PushConsumer<H> {
    /// Subscribe to a fresh inbox, then create the consumer delivering to
    /// it, through `handle`.
    ///
    /// # Errors
    /// A failed or timed-out subscribe or create, the server's refusal
    /// (`NatsError::Api` in the owner's type), or the owner's "not
    /// connected".
    pub async fn create(handle: &H, request: &ConsumerRequest<'_>) -> Result<Self, H::Error> {
        let client = handle.client();
        let timeout = handle.request_timeout();
        let inbox = client.new_inbox();
        let unique = inbox.rsplit('.').next().unwrap_or("x");
        let name = format!("{CONSUMER_PREFIX}{unique}");
        let sub = bounded("subscribe", timeout, async {
            client
                .subscribe(inbox.clone())
                .await
                .map_err(|e| NatsError::Request {
                    operation: "subscribe".to_owned(),
                    reason: e.to_string(),
                })
        })
        .await?;
        // Armed before the request: a create that timed out may still have
        // reached the server.
        let mut guard = DeleteGuard {
            handle: handle.clone(),
            stream: request.stream.to_owned(),
            name: name.clone(),
            cleanup: request.cleanup,
            armed: true,
        };
        handle.ensure_open()?;
        let body =
            json!({ "stream_name": request.stream, "config": request.config(&name, &inbox) });
        let subject = format!("CONSUMER.CREATE.{}.{}", request.stream, name);
        let reply = match api(client, timeout, "consumer create", &subject, &body).await {
            Ok(reply) => reply,
            Err(e @ NatsError::Api { .. }) => {
                // The server refused it: there is nothing to delete.
                guard.armed = false;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        let initial_pending = reply
            .get("num_pending")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        debug!(consumer = %name, initial_pending, start = ?request.start, "consumer created");
        Ok(Self {
            sub,
            peeked: None,
            guard,
            initial_pending,
        })
    }

    /// The consumer's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.guard.name
    }

    /// Messages pending for the consumer when it was created: what a
    /// replay or state-sync still owes before it has caught up.
    #[must_use]
    pub fn initial_pending(&self) -> u64 {
        self.initial_pending
    }

    /// Wait up to `wait` for the next delivery.
    pub async fn next(&mut self, wait: Duration) -> Delivery {
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
        match next {
            Some(msg) => Delivery::of(msg),
            None => Delivery::Ended("subscription closed".to_owned()),
        }
    }

    /// Whether a data message already waits in the inbox: whoever checks
    /// where the stream ends can wait for the inbox to run dry.
    pub fn has_data_waiting(&mut self) -> bool {
        if self.peeked.is_none() {
            self.peeked = self.sub.next().now_or_never();
        }
        matches!(
            &self.peeked,
            Some(Some(msg)) if matches!(msg.status, None | Some(StatusCode::OK))
        )
    }

    /// Answer a flow-control request (or a stall notice), bounded.
    ///
    /// # Errors
    /// A failed or timed-out publish.
    pub async fn reply_flow_control(&self, subject: Subject) -> Result<(), H::Error> {
        let handle = &self.guard.handle;
        bounded("flow control reply", handle.request_timeout(), async {
            handle
                .client()
                .publish(subject, bytes::Bytes::new())
                .await
                .map_err(|e| NatsError::Request {
                    operation: "flow control reply".to_owned(),
                    reason: e.to_string(),
                })
        })
        .await
        .map_err(Into::into)
    }

    /// Delete the consumer now, one bounded attempt; with
    /// [`Cleanup::Retried`], a failed one goes on in the background.
    pub async fn delete(mut self) {
        match self.guard.cleanup {
            Cleanup::Once => {
                self.guard.armed = false;
                let _ = self.sub.unsubscribe().await;
                let g = &self.guard;
                delete_consumer(&g.handle, &g.stream, &g.name, Cleanup::Once).await;
            }
            Cleanup::Retried => {
                let _ = self.sub.unsubscribe().await;
                let g = &mut self.guard;
                if delete_once(&g.handle, &g.stream, &g.name).await.is_ok() {
                    g.armed = false;
                }
                // Still armed: dropping the guard spawns the retried delete.
            }
        }
    }
}

/// Why [`recreate_within`] returned without a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecreateFailed<E> {
    /// An attempt failed in a way retrying cannot mend (the cursor expired,
    /// the connection was shut down).
    Fatal(E),
    /// The next retry would pass the budget; the last attempt's error.
    OutOfBudget(E),
}

/// Re-create a lost consumer: run `attempt` until it succeeds, retrying
/// transient failures after a pause (100 ms doubling to 2 s) while the
/// next attempt still starts within `budget`. Each retried failure is
/// handed to `on_retry` with the pause that follows, for the caller to log
/// at its own level; a failure `is_fatal` says retrying cannot mend ends
/// the loop at once. Each attempt bounds its own round-trips.
///
/// # Errors
/// [`RecreateFailed::Fatal`] or [`RecreateFailed::OutOfBudget`], with the
/// attempt's error.
pub async fn recreate_within<T, E, Fut>(
    budget: Duration,
    mut attempt: impl FnMut() -> Fut,
    is_fatal: impl Fn(&E) -> bool,
    on_retry: impl Fn(&E, Duration),
) -> Result<T, RecreateFailed<E>>
where
    Fut: Future<Output = Result<T, E>>,
{
    let give_up = Instant::now() + budget;
    let mut backoff = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(consumer) => return Ok(consumer),
            Err(e) if is_fatal(&e) => return Err(RecreateFailed::Fatal(e)),
            Err(e) if Instant::now() + backoff >= give_up => {
                return Err(RecreateFailed::OutOfBudget(e));
            }
            Err(e) => {
                on_retry(&e, backoff);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::HeaderMap;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn status(code: StatusCode, reply: Option<&str>, headers: &[(&str, &str)]) -> Message {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        Message {
            subject: Subject::from("_INBOX.x"),
            reply: reply.map(Subject::from),
            payload: bytes::Bytes::new(),
            headers: Some(map),
            status: Some(code),
            description: Some("Consumer Deleted".to_owned()),
            length: 0,
        }
    }

    #[test]
    fn status_messages_are_told_apart() {
        let flow = status(StatusCode::IDLE_HEARTBEAT, Some("$JS.FC.x"), &[]);
        assert!(matches!(Delivery::of(flow), Delivery::FlowControl(s) if s.as_str() == "$JS.FC.x"));
        let beat = status(
            StatusCode::IDLE_HEARTBEAT,
            None,
            &[
                ("Nats-Last-Consumer", "7"),
                ("Nats-Consumer-Stalled", "$JS.FC.y"),
            ],
        );
        let Delivery::Heartbeat {
            last_consumer_sequence,
            stalled,
        } = Delivery::of(beat)
        else {
            panic!("a heartbeat");
        };
        assert_eq!(last_consumer_sequence, Some(7));
        assert_eq!(stalled.as_deref(), Some("$JS.FC.y"));
        let gone = status(StatusCode::REQUEST_TERMINATED, None, &[]);
        assert!(matches!(Delivery::of(gone), Delivery::Ended(r) if r.contains("Consumer Deleted")));
        let mut data = status(StatusCode::OK, None, &[]);
        data.status = None;
        assert!(matches!(Delivery::of(data), Delivery::Data(_)));
    }

    #[test]
    fn the_configuration_follows_the_start_and_the_filters() {
        let filters = ["a.>".to_owned(), "b.>".to_owned()];
        let mut request = ConsumerRequest {
            stream: "S",
            filters: &[],
            start: StartPolicy::All,
            headers_only: false,
            heartbeat: Duration::from_secs(5),
            inactive_threshold: Duration::from_secs(300),
            cleanup: Cleanup::Once,
        };
        let c = request.config("slipstream_n", "_INBOX.n");
        assert_eq!(c["deliver_policy"], "all");
        assert!(c.get("filter_subject").is_none() && c.get("filter_subjects").is_none());
        assert_eq!(c["idle_heartbeat"], 5_000_000_000u64);
        assert_eq!(c["ack_policy"], "none");
        request.start = StartPolicy::ByStartSequence(9);
        request.filters = &filters[..1];
        let c = request.config("slipstream_n", "_INBOX.n");
        assert_eq!(
            (
                &c["deliver_policy"],
                &c["opt_start_seq"],
                &c["filter_subject"]
            ),
            (&json!("by_start_sequence"), &json!(9), &json!("a.>"))
        );
        request.start = StartPolicy::LastPerSubject;
        request.filters = &filters;
        let c = request.config("slipstream_n", "_INBOX.n");
        assert_eq!(c["deliver_policy"], "last_per_subject");
        assert_eq!(c["filter_subjects"], json!(filters));
    }

    #[tokio::test]
    async fn recreating_retries_transient_failures_and_stops_at_a_fatal_one() {
        let tries = AtomicU32::new(0);
        let retried = AtomicU32::new(0);
        let got = recreate_within(
            Duration::from_secs(10),
            || {
                let n = tries.fetch_add(1, Ordering::SeqCst);
                async move { if n < 1 { Err("transient") } else { Ok(n) } }
            },
            |_| false,
            |_, pause| {
                assert_eq!(pause, Duration::from_millis(100));
                retried.fetch_add(1, Ordering::SeqCst);
            },
        )
        .await;
        assert_eq!(got, Ok(1));
        assert_eq!(retried.load(Ordering::SeqCst), 1);

        let fatal = recreate_within(
            Duration::from_secs(10),
            || async { Err::<(), _>("gone") },
            |e| *e == "gone",
            |_, _| panic!("a fatal failure is not retried"),
        )
        .await;
        assert_eq!(fatal, Err(RecreateFailed::Fatal("gone")));

        let spent = recreate_within(
            Duration::ZERO,
            || async { Err::<(), _>("down") },
            |_| false,
            |_, _| panic!("no budget for a retry"),
        )
        .await;
        assert_eq!(spent, Err(RecreateFailed::OutOfBudget("down")));
    }
}
