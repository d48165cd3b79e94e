//! `ensure_stream` (P1): get or create, never update.

use std::time::Duration;

use async_nats::Client;
use serde_json::{Value, json};
use slipstream_nats::jetstream::{STREAM_EXISTS, api, nanos, stream_info};
use tracing::{debug, info};

use crate::error::StreamError;

/// Where the server keeps a stream's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// On disk (default).
    #[default]
    File,
    /// In memory.
    Memory,
}

/// What the server does when a limit is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Discard {
    /// Remove the oldest messages (default): the stream's floor moves up.
    #[default]
    Old,
    /// Refuse new messages.
    New,
}

/// How long a stream keeps its messages. Every limit is off by default
/// (keep everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamRetention {
    /// Remove messages older than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many messages.
    pub max_messages: Option<u64>,
    /// Keep at most this many bytes.
    pub max_bytes: Option<u64>,
    /// Keep at most this many messages per subject.
    pub max_messages_per_subject: Option<u64>,
    /// What happens at a limit.
    pub discard: Discard,
}

/// A stream to get or create: its name, subjects and retention (P1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    name: String,
    subjects: Vec<String>,
    retention: StreamRetention,
    storage: Storage,
    replicas: u32,
}

impl StreamSpec {
    /// A stream named `name` capturing `subjects`, keeping everything, on
    /// file storage with one replica.
    #[must_use]
    pub fn new(
        name: impl Into<String>,
        subjects: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            name: name.into(),
            subjects: subjects.into_iter().map(Into::into).collect(),
            retention: StreamRetention::default(),
            storage: Storage::File,
            replicas: 1,
        }
    }

    /// The retention a newly created stream gets.
    #[must_use]
    pub fn retention(mut self, retention: StreamRetention) -> Self {
        self.retention = retention;
        self
    }

    /// The storage a newly created stream gets.
    #[must_use]
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// How many replicas a newly created stream gets (at least 1).
    #[must_use]
    pub fn replicas(mut self, replicas: u32) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// The stream's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self) -> Result<(), StreamError> {
        let bad_name = self.name.is_empty()
            || self
                .name
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'));
        if bad_name {
            return Err(StreamError::InvalidSpec(format!(
                "stream name {:?} must be non-empty without whitespace, '.', '*', '>', '/' or '\\'",
                self.name
            )));
        }
        if self.subjects.is_empty() || self.subjects.iter().any(String::is_empty) {
            return Err(StreamError::InvalidSpec(
                "a stream needs at least one non-empty subject".to_owned(),
            ));
        }
        Ok(())
    }

    /// The server's stream configuration for this spec.
    pub(crate) fn to_config(&self) -> Value {
        let r = &self.retention;
        let limit = |v: Option<u64>| v.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        json!({
            "name": self.name,
            "subjects": self.subjects,
            "retention": "limits",
            "max_age": r.max_age.map_or(0, nanos),
            "max_msgs": limit(r.max_messages),
            "max_bytes": limit(r.max_bytes),
            "max_msgs_per_subject": limit(r.max_messages_per_subject),
            "discard": match r.discard { Discard::Old => "old", Discard::New => "new" },
            "storage": match self.storage { Storage::File => "file", Storage::Memory => "memory" },
            "num_replicas": self.replicas,
        })
    }
}

/// Whether [`ensure_stream`] found the stream or made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The stream existed; its configuration was left exactly as it was,
    /// even where it differs from the spec.
    Existing,
    /// The stream was created from the spec.
    Created,
}

/// Get the stream `spec` names, or create it with the spec's subjects and
/// retention (P1). An existing stream's configuration is never changed,
/// even when it differs from the spec: the spec only describes a stream to
/// create. Each round-trip is bounded by `timeout`.
///
/// # Errors
/// [`StreamError::InvalidSpec`] for a spec the server cannot take; the
/// server's refusal ([`StreamError::Api`]), or a timeout.
pub async fn ensure_stream(
    client: &Client,
    spec: &StreamSpec,
    timeout: Duration,
) -> Result<Ensured, StreamError> {
    spec.validate()?;
    match stream_info(client, timeout, &spec.name).await {
        Ok(_) => {
            debug!(stream = %spec.name, "stream exists; its configuration is left as it is");
            return Ok(Ensured::Existing);
        }
        Err(e) => match StreamError::about_stream(&spec.name, e) {
            StreamError::StreamNotFound(_) => {}
            e => return Err(e),
        },
    }
    let created = api(
        client,
        timeout,
        "stream create",
        &format!("STREAM.CREATE.{}", spec.name),
        &spec.to_config(),
    )
    .await;
    match created {
        Ok(_) => {
            info!(stream = %spec.name, "stream created");
            Ok(Ensured::Created)
        }
        // Someone else created it between our look-up and our create.
        Err(e) if e.err_code() == Some(STREAM_EXISTS) => Ok(Ensured::Existing),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_limits_are_unlimited_and_set_ones_saturate() {
        let spec = StreamSpec::new("orders", ["orders.>"]).retention(StreamRetention {
            max_age: Some(Duration::from_secs(2)),
            max_messages: Some(u64::MAX),
            ..StreamRetention::default()
        });
        let c = spec.to_config();
        assert_eq!(c["max_age"], 2_000_000_000u64);
        assert_eq!(c["max_msgs"], i64::MAX);
        assert_eq!(c["max_bytes"], -1);
        assert_eq!(c["discard"], "old");
        assert_eq!(c["subjects"], json!(["orders.>"]));
    }

    #[test]
    fn a_spec_without_subjects_or_with_a_bad_name_is_refused() {
        let no_subjects = StreamSpec::new("orders", Vec::<String>::new());
        assert!(matches!(
            no_subjects.validate(),
            Err(StreamError::InvalidSpec(_))
        ));
        for bad in ["", "a.b", "a b", "a>"] {
            let spec = StreamSpec::new(bad, ["x"]);
            assert!(spec.validate().is_err(), "{bad:?}");
        }
        assert!(StreamSpec::new("orders", ["orders.>"]).validate().is_ok());
    }
}
