//! Scans and key listings over one ephemeral push consumer (N5).

use std::sync::Arc;

use bytes::Bytes;
use slipstream_kv::{KvEntry, KvError, KvUpdate, validate_prefix};
use tokio::time::Instant;
use tracing::debug;

use crate::ack::parse_ack_subject;
use crate::consumer::{create_consumer, filter_subjects};
use crate::decode::{message_size, to_update};
use crate::error::NatsError;
use crate::jetstream::{Delivery, StartPolicy};
use crate::settle::{Next, Settle};
use crate::store::NatsBucket;

impl NatsBucket {
    /// Visit the entries under `prefix`, markers included, with whether
    /// each is live: one LastPerSubject consumer with AckPolicy::None,
    /// drained until every key in scope was delivered (`settle.rs`), then
    /// deleted. A key rewritten while the listing runs may be visited more
    /// than once, in revision order. With `headers_only`, values are not
    /// fetched and each entry's value is empty; the size header decides
    /// liveness.
    pub(crate) async fn drain_listing<F>(
        &self,
        prefix: &str,
        headers_only: bool,
        mut f: F,
    ) -> Result<(), KvError>
    where
        F: FnMut(KvUpdate, bool) + Send,
    {
        validate_prefix(prefix)?;
        let inner = &self.inner;
        inner.conn.ensure_open()?;
        let conn = Arc::clone(&inner.conn);
        let filters = filter_subjects(&inner.keyspace, &[prefix.to_owned()]);
        let timeout = self.timeout();
        let heartbeat = conn.settings.idle_heartbeat.min(timeout);
        let mut consumer = create_consumer(
            &conn,
            &inner.stream,
            &filters,
            StartPolicy::LastPerSubject,
            headers_only,
            heartbeat,
        )
        .await?;
        let pending = consumer.initial_pending();
        let mut settle = match Settle::after_creation(self, pending, prefix.is_empty()).await {
            Ok(settle) => settle,
            Err(e) => {
                consumer.delete().await;
                return Err(e);
            }
        };
        let mut expected_cseq = 1;
        let mut frontier = 0;
        let mut visited = 0u64;
        let mut deadline = Instant::now() + timeout;
        let mut settled = settle.nothing_pending();
        while !settled {
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
                    frontier = frontier.max(ack.stream_sequence.unwrap_or(0));
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
                    if let Some(update) = update {
                        let live = matches!(update, KvUpdate::Put(_)) && live_size > 0;
                        visited += 1;
                        f(update, live);
                    }
                    let more = consumer.has_data_waiting();
                    settled = match settle.delivered(ack.stream_sequence, ack.pending, more) {
                        Next::CaughtUp => true,
                        Next::Check => settle.check(self, &filters, frontier).await?,
                        Next::Wait => false,
                    };
                }
                Delivery::FlowControl(subject)
                | Delivery::Heartbeat {
                    stalled: Some(subject),
                    ..
                } => consumer.reply_flow_control(subject).await?,
                // Idle: a rewrite the last hint waited for may be gone.
                Delivery::Heartbeat { .. } => {
                    settled = settle.check(self, &filters, frontier).await?;
                }
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
        Ok(())
    }

    /// The live entries under `prefix`, one per key (its latest delivered
    /// revision), sorted by key.
    pub(crate) async fn live_entries(
        &self,
        prefix: &str,
        headers_only: bool,
    ) -> Result<Vec<KvEntry>, KvError> {
        let mut listed: Vec<(String, Option<KvEntry>)> = Vec::new();
        self.drain_listing(prefix, headers_only, |update, live| {
            let key = update.key().to_owned();
            let entry = match update {
                KvUpdate::Put(entry) if live => Some(entry),
                _ => None,
            };
            listed.push((key, entry));
        })
        .await?;
        // Stable: a key's deliveries stay in revision order, and the last
        // one is its latest.
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        let mut entries: Vec<KvEntry> = Vec::with_capacity(listed.len());
        let mut runs = listed.into_iter().peekable();
        while let Some((key, entry)) = runs.next() {
            if runs.peek().is_some_and(|(next, _)| *next == key) {
                continue;
            }
            entries.extend(entry);
        }
        Ok(entries)
    }
}
