//! `StreamSource`: a plain JetStream stream as a [`KvWatcher`] the applied
//! engine folds (P2, P3).

use core::pin::Pin;
use core::task::{Context, Poll};

use async_nats::Client;
use futures::Stream;
use slipstream_kv::{
    BucketIdentity, KvError, KvWatcher, Retention, WatchEvent, WatchScope, WatchStart,
};
use slipstream_nats::BackendSettings;
use slipstream_nats::jetstream::{
    Cleanup, ConsumerRequest, JetStreamClient, PushConsumer, StartPolicy, StreamFacts, stream_facts,
};
use slipstream_protocol::{StreamStart, cursor_beyond_log, resume_window_ok, stream_start};
use tokio::sync::mpsc;
use tracing::debug;

use crate::error::StreamError;
use crate::message::KeyMapping;
use crate::tail::Tail;

/// How many events a watch buffers ahead of its reader. A full buffer
/// stops reading the inbox, and flow control then pauses the server.
const BUFFER: usize = 256;

type Item = Result<WatchEvent, KvError>;

/// A projection's consumer: on the caller's client, each round-trip
/// bounded by the settings' `request_timeout`.
pub(crate) type Consumer = PushConsumer<JetStreamClient>;

/// A plain JetStream stream as a source of updates for the applied engine
/// (P2).
///
/// It implements [`KvWatcher`], so [`slipstream_applied::AppliedWatch`]
/// folds it with the same batching, stores and cursor rules as a KV bucket.
/// Each message becomes an update keyed by the [`KeyMapping`] (the subject
/// by default) at its stream sequence.
///
/// A watch replays from K13's start (everything retained, or `since + 1`)
/// and then keeps tailing on the *same* consumer, so the tail continues at
/// the last replayed sequence + 1 by construction; nothing published while
/// the replay ends can fall between two consumers. A consumer that is lost
/// is re-created at the last delivered sequence + 1. Consumers are
/// ephemeral push consumers with AckPolicy::None and an inactivity
/// threshold, deleted when the watch is dropped. Every round-trip is
/// bounded by the settings' `request_timeout`.
///
/// A [`WatchScope`] other than `All` filters by key on the client (the key
/// function is not known to the server).
#[derive(Debug, Clone)]
pub struct StreamSource {
    client: Client,
    stream: String,
    settings: BackendSettings,
    keys: KeyMapping,
}

impl StreamSource {
    /// A source over the stream named `stream`, keyed by subject, with
    /// default settings (30 s round-trip bound, 5 min inactivity
    /// threshold).
    #[must_use]
    pub fn new(client: Client, stream: impl Into<String>) -> Self {
        Self {
            client,
            stream: stream.into(),
            settings: BackendSettings::default(),
            keys: KeyMapping::Subject,
        }
    }

    /// Timeouts, heartbeat, inactivity threshold, floor probe and
    /// re-create budget.
    #[must_use]
    pub fn settings(mut self, settings: BackendSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Which fold key each message updates.
    #[must_use]
    pub fn keys(mut self, keys: KeyMapping) -> Self {
        self.keys = keys;
        self
    }

    /// The stream's name.
    #[must_use]
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Replay every retained message (`since` = `None`) or every message
    /// after `since`, then tail the stream (P2, K13).
    ///
    /// A resume checks the retention floor first: when the stream no longer
    /// holds `since + 1` the call fails with
    /// [`StreamError::RetentionExhausted`] instead of silently starting
    /// later (P3). The floor is checked again once the consumer exists, and
    /// while tailing a gap in the delivered sequences is checked against
    /// the floor (K4): an overrun ends the watch with a
    /// `CursorExpired(FloorOverrun)` item.
    ///
    /// # Errors
    /// [`StreamError::RetentionExhausted`],
    /// [`StreamError::BeyondLastSequence`], [`StreamError::NoNextSequence`],
    /// [`StreamError::StreamNotFound`], or a failed or timed-out round-trip.
    pub async fn replay(&self, since: Option<u64>) -> Result<StreamWatch, StreamError> {
        self.open(since, None, WatchScope::All).await
    }

    async fn facts(&self) -> Result<StreamFacts, StreamError> {
        stream_facts(&self.client, self.settings.request_timeout, &self.stream)
            .await
            .map_err(|e| StreamError::about_stream(&self.stream, e))
    }

    /// Create a consumer over the whole stream from `start`. A failed
    /// delete is logged and left to the inactivity threshold
    /// ([`Cleanup::Once`]).
    async fn consumer(&self, start: StartPolicy) -> Result<Consumer, StreamError> {
        let handle = JetStreamClient::new(self.client.clone(), self.settings.request_timeout);
        let request = ConsumerRequest {
            stream: &self.stream,
            filters: &[],
            start,
            headers_only: false,
            heartbeat: self.settings.idle_heartbeat,
            inactive_threshold: self.settings.inactive_threshold,
            cleanup: Cleanup::Once,
        };
        Ok(PushConsumer::create(&handle, &request).await?)
    }

    async fn open(
        &self,
        since: Option<u64>,
        identity: Option<&BucketIdentity>,
        scope: WatchScope,
    ) -> Result<StreamWatch, StreamError> {
        let start = match stream_start(since).ok_or(StreamError::NoNextSequence)? {
            StreamStart::All => StartPolicy::All,
            StreamStart::ByStart(seq) => StartPolicy::ByStartSequence(seq),
        };
        let before = self.facts().await?;
        let identity = match identity {
            Some(id) => id.clone(),
            None => before.identity.clone(),
        };
        if let Some(n) = since {
            check_resume(&identity, n, &before)?;
        }
        let consumer = self.consumer(start).await?;
        if let Some(n) = since {
            // The server clamps a start below its floor silently: eviction
            // between the first check and the creation must be caught here.
            let after = match self.facts().await {
                Ok(after) => after,
                Err(e) => {
                    consumer.delete().await;
                    return Err(e);
                }
            };
            if let Err(e) = check_resume(&identity, n, &after) {
                consumer.delete().await;
                return Err(e);
            }
        }
        debug!(consumer = consumer.name(), stream = %self.stream, ?since, "projection started");
        let (tx, rx) = mpsc::channel(BUFFER);
        let tail = Tail::new(self.clone(), identity, scope, since, tx);
        tokio::spawn(tail.run(consumer));
        Ok(StreamWatch { rx, _nothing: None })
    }

    /// Re-create the consumer after `frontier` (everything retained when
    /// nothing was delivered yet), checking identity and floor like a
    /// resume.
    pub(crate) async fn reopen(
        &self,
        identity: &BucketIdentity,
        frontier: Option<u64>,
    ) -> Result<Consumer, StreamError> {
        let Some(n) = frontier else {
            return self.consumer(StartPolicy::All).await;
        };
        let start = n.checked_add(1).ok_or(StreamError::NoNextSequence)?;
        check_resume(identity, n, &self.facts().await?)?;
        let consumer = self.consumer(StartPolicy::ByStartSequence(start)).await?;
        match self.facts().await {
            Ok(after) => match check_resume(identity, n, &after) {
                Ok(()) => Ok(consumer),
                Err(e) => {
                    consumer.delete().await;
                    Err(e)
                }
            },
            Err(e) => {
                consumer.delete().await;
                Err(e)
            }
        }
    }

    pub(crate) fn client_settings(&self) -> &BackendSettings {
        &self.settings
    }

    pub(crate) fn key_mapping(&self) -> &KeyMapping {
        &self.keys
    }

    /// The stream's first retained sequence, read live.
    pub(crate) async fn first_sequence(&self) -> Result<u64, StreamError> {
        Ok(self.facts().await?.first_sequence)
    }
}

/// Identity, K3 and K1 for a resume after `since`.
fn check_resume(
    identity: &BucketIdentity,
    since: u64,
    facts: &StreamFacts,
) -> Result<(), StreamError> {
    if *identity != facts.identity {
        return Err(StreamError::IdentityChanged {
            expected: identity.clone(),
            found: facts.identity.clone(),
        });
    }
    if cursor_beyond_log(since, facts.last_sequence) {
        return Err(StreamError::BeyondLastSequence {
            since,
            last_sequence: facts.last_sequence,
        });
    }
    if !resume_window_ok(since, facts.first_sequence) {
        return Err(StreamError::RetentionExhausted {
            first_sequence: facts.first_sequence,
        });
    }
    Ok(())
}

impl KvWatcher for StreamSource {
    type WatchStream = StreamWatch;

    /// `Relist` replays everything retained; `After(cursor)` resumes after
    /// the cursor's revision, failing with `CursorExpired` when retention
    /// has passed it or the stream was recreated.
    async fn watch(&self, scope: &WatchScope, start: WatchStart) -> Result<StreamWatch, KvError> {
        scope.validate()?;
        if scope.is_empty() {
            return Ok(StreamWatch::nothing());
        }
        match start {
            WatchStart::Relist => self
                .open(None, None, scope.clone())
                .await
                .map_err(|e| e.into_kv(0)),
            WatchStart::After(cursor) => {
                let since = cursor.rank();
                self.open(Some(since), cursor.identity(), scope.clone())
                    .await
                    .map_err(|e| e.into_kv(since))
            }
        }
    }

    async fn retention(&self) -> Result<Retention, KvError> {
        match self.facts().await {
            Ok(facts) => Ok(facts.retention()),
            Err(e) => Err(e.into_kv(0)),
        }
    }
}

/// A running projection watch: one `Update` per stream message in
/// sequence order, one `CaughtUp` once the replay is done, and an error
/// item (after which the stream ends) when it cannot go on. Dropping it
/// deletes the server-side consumer in the background.
#[derive(Debug)]
pub struct StreamWatch {
    rx: mpsc::Receiver<Item>,
    // Keeps a watch of nothing open: it has caught up and never ends.
    _nothing: Option<mpsc::Sender<Item>>,
}

impl StreamWatch {
    fn nothing() -> Self {
        let (tx, rx) = mpsc::channel(1);
        // A fresh channel of capacity 1 always has room.
        let _ = tx.try_send(Ok(WatchEvent::CaughtUp));
        Self {
            rx,
            _nothing: Some(tx),
        }
    }
}

impl Stream for StreamWatch {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.rx.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipstream_kv::Timestamp;

    fn facts(first: u64, last: u64, created: u64) -> StreamFacts {
        StreamFacts {
            first_sequence: first,
            last_sequence: last,
            bytes: 0,
            consumer_count: 0,
            identity: BucketIdentity {
                stream: "orders".into(),
                created: Timestamp::from_unix_nanos(created),
            },
            observed_at: Timestamp::from_unix_nanos(0),
            max_age: None,
            max_msgs: 10,
            max_bytes: -1,
            discard_old: true,
            allow_msg_ttl: false,
        }
    }

    #[test]
    fn resume_below_the_floor_is_retention_exhausted_with_the_first_sequence() {
        let f = facts(6, 10, 1);
        let id = f.identity.clone();
        assert!(check_resume(&id, 5, &f).is_ok(), "5 + 1 is still retained");
        assert!(check_resume(&id, 10, &f).is_ok());
        assert!(matches!(
            check_resume(&id, 3, &f),
            Err(StreamError::RetentionExhausted { first_sequence: 6 })
        ));
    }

    #[test]
    fn resume_past_the_log_or_on_a_recreated_stream_is_refused() {
        let f = facts(1, 10, 1);
        assert!(matches!(
            check_resume(&f.identity, 11, &f),
            Err(StreamError::BeyondLastSequence {
                since: 11,
                last_sequence: 10
            })
        ));
        let old = facts(1, 10, 2).identity;
        assert!(matches!(
            check_resume(&old, 4, &f),
            Err(StreamError::IdentityChanged { .. })
        ));
    }

    #[tokio::test]
    async fn a_watch_of_nothing_is_caught_up_at_once_and_stays_open() {
        use futures::StreamExt;
        let mut w = StreamWatch::nothing();
        assert_eq!(w.next().await, Some(Ok(WatchEvent::CaughtUp)));
        let more = tokio::time::timeout(std::time::Duration::from_millis(20), w.next()).await;
        assert!(more.is_err(), "a watch of nothing must not end or deliver");
    }
}
