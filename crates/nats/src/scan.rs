//! Scans and key listings over one ephemeral push consumer (N5).

use std::sync::Arc;

use bytes::Bytes;
use slipstream_kv::{KvEntry, KvError, KvUpdate, validate_prefix};
use tokio::time::Instant;
use tracing::debug;

use crate::ack::parse_ack_subject;
use crate::consumer::{ConsumerRequest, Delivery, PushConsumer, StartPolicy, filter_subjects};
use crate::decode::{message_size, to_update};
use crate::error::NatsError;
use crate::store::NatsBucket;

impl NatsBucket {
    /// Visit the live entries under `prefix`: one LastPerSubject consumer
    /// with AckPolicy::None, drained for exactly its initial pending count,
    /// then deleted. With `headers_only`, values are not fetched and each
    /// entry's value is empty; the size header decides liveness.
    pub(crate) async fn drain_live<F>(
        &self,
        prefix: &str,
        headers_only: bool,
        mut f: F,
    ) -> Result<u64, KvError>
    where
        F: FnMut(KvEntry) + Send,
    {
        validate_prefix(prefix)?;
        let inner = &self.inner;
        inner.conn.ensure_open()?;
        let conn = Arc::clone(&inner.conn);
        let filters = filter_subjects(&inner.keyspace, &[prefix.to_owned()]);
        let request = ConsumerRequest {
            stream: &inner.stream,
            filters: &filters,
            start: StartPolicy::LastPerSubject,
            headers_only,
        };
        let timeout = self.timeout();
        let heartbeat = conn.settings.idle_heartbeat.min(timeout);
        let mut consumer = PushConsumer::create(&conn, &request, heartbeat).await?;
        let mut remaining = consumer.initial_pending;
        let mut expected_cseq = 1;
        let mut visited = 0;
        let mut deadline = Instant::now() + timeout;
        while remaining > 0 {
            let wait = deadline.saturating_duration_since(Instant::now());
            match consumer.next(wait).await {
                Delivery::Data(msg) => {
                    deadline = Instant::now() + timeout;
                    let ack = parse_ack_subject(msg.reply.as_deref().unwrap_or_default());
                    if let Some(cseq) = ack.consumer_sequence {
                        if cseq != expected_cseq {
                            return Err(NatsError::Consumer(format!(
                                "listing lost deliveries (consumer sequence {cseq}, expected {expected_cseq}); retry"
                            ))
                            .into());
                        }
                        expected_cseq += 1;
                    }
                    remaining -= 1;
                    let live_size = if headers_only {
                        // Without the size a tombstone and a value look alike.
                        message_size(msg.headers.as_ref()).ok_or_else(|| {
                            NatsError::Consumer(format!(
                                "headers-only delivery on {} lacks Nats-Msg-Size",
                                msg.subject
                            ))
                        })?
                    } else {
                        msg.payload.len() as u64
                    };
                    let payload = if headers_only {
                        Bytes::new()
                    } else {
                        msg.payload
                    };
                    let update = to_update(
                        &msg.subject,
                        &inner.keyspace,
                        msg.headers.as_ref(),
                        payload,
                        ack,
                    );
                    if let Some(KvUpdate::Put(entry)) = update
                        && live_size > 0
                    {
                        visited += 1;
                        f(entry);
                    }
                    // Nothing left right now: everything pending at creation
                    // has been seen, even if some of it was removed meanwhile.
                    if ack.pending == Some(0) {
                        break;
                    }
                }
                Delivery::FlowControl(subject)
                | Delivery::Heartbeat {
                    stalled: Some(subject),
                    ..
                } => consumer.reply_flow_control(&conn, subject).await?,
                Delivery::Heartbeat { .. } => {}
                Delivery::Ended(reason) => {
                    return Err(
                        NatsError::Consumer(format!("listing ended early: {reason}")).into(),
                    );
                }
                Delivery::Idle => {
                    return Err(NatsError::Timeout {
                        operation: "listing message".to_owned(),
                        after: timeout,
                    }
                    .into());
                }
            }
        }
        debug!(consumer = consumer.name(), visited, "listing complete");
        consumer.delete().await;
        Ok(visited)
    }
}
