//! Opening and creating buckets (N4) and reading their retention (N11).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use serde_json::Value;
use slipstream_kv::{DiscardPolicy, MessageTtl, StorageKind, StoreConfig};
use tracing::{debug, info, warn};

use crate::api::ConnShared;
use crate::error::NatsError;
use crate::jetstream::{STREAM_EXISTS, api_error, bounded};
use crate::store::NatsBucket;

/// Open `config.name`, creating it with `config` when it does not exist.
pub(crate) async fn open_bucket(
    conn: &Arc<ConnShared>,
    config: &StoreConfig,
) -> Result<NatsBucket, NatsError> {
    let name = config.name.as_str();
    if let Err(e) = slipstream_kv::validate_bucket_name(name) {
        let detail = match e {
            slipstream_kv::KvError::InvalidConfig(detail) => detail,
            other => other.to_string(),
        };
        return Err(NatsError::InvalidConfig(detail));
    }
    let timeout = conn.settings.request_timeout;
    let mut js = jetstream::new(conn.client.clone());
    js.set_timeout(timeout);

    match get_kv(&js, name, timeout).await {
        Ok(kv) => return Ok(NatsBucket::new(Arc::clone(conn), kv, name)),
        Err(e) => info!(bucket = %name, cause = %e, "bucket not opened; creating it"),
    }

    if config.message_ttl == MessageTtl::Enabled && !conn.server_at_least(2, 11) {
        warn!(bucket = %name, "per-message TTL needs nats-server 2.11+; the bucket is created without it");
    }
    let stream_config = stream_config(config);
    let created = bounded("bucket create", timeout, async {
        js.create_stream(stream_config.clone())
            .await
            .map_err(|e| NatsError::Request {
                operation: "bucket create".to_owned(),
                reason: e.to_string(),
            })
    })
    .await;
    if let Err(e) = created {
        warn!(bucket = %name, cause = %e, "client bucket create failed; trying a raw STREAM.CREATE");
        raw_create(conn, &stream_config).await?;
    }
    // Mandatory: whatever the create said, the bucket must now be there.
    let kv = get_kv(&js, name, timeout).await?;
    Ok(NatsBucket::new(Arc::clone(conn), kv, name))
}

async fn get_kv(
    js: &jetstream::Context,
    name: &str,
    timeout: Duration,
) -> Result<jetstream::kv::Store, NatsError> {
    bounded("bucket get", timeout, async {
        js.get_key_value(name)
            .await
            .map_err(|e| NatsError::Request {
                operation: "bucket get".to_owned(),
                reason: e.to_string(),
            })
    })
    .await
}

/// What a raw `STREAM.CREATE` reply means (N4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CreateOutcome {
    /// The stream was created.
    Created,
    /// It already exists (10058).
    AlreadyExists,
    /// The account's stream limit was hit; the bucket may exist anyway.
    StreamLimit,
    /// The reply could not be parsed; only the re-verification decides.
    Unverified,
}

/// Classify a raw `STREAM.CREATE` reply (N4).
pub(crate) fn classify_create_reply(bytes: &[u8]) -> Result<CreateOutcome, NatsError> {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return Ok(CreateOutcome::Unverified);
    };
    let Some(err) = value.get("error") else {
        return Ok(CreateOutcome::Created);
    };
    let code = err.get("code").and_then(Value::as_u64);
    let err_code = err.get("err_code").and_then(Value::as_u64);
    let description = err
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if code == Some(STREAM_EXISTS) || err_code == Some(STREAM_EXISTS) {
        return Ok(CreateOutcome::AlreadyExists);
    }
    if code == Some(400)
        && description
            .to_ascii_lowercase()
            .contains("maximum number of streams")
    {
        return Ok(CreateOutcome::StreamLimit);
    }
    Err(api_error("bucket create (raw)", err))
}

async fn raw_create(conn: &ConnShared, config: &stream::Config) -> Result<(), NatsError> {
    let body = serde_json::to_value(config).map_err(|e| NatsError::Request {
        operation: "bucket create (raw)".to_owned(),
        reason: e.to_string(),
    })?;
    let api = format!("STREAM.CREATE.{}", config.name);
    let reply = conn.raw_request("bucket create (raw)", &api, &body).await?;
    let outcome = classify_create_reply(&reply)?;
    debug!(stream = %config.name, ?outcome, "raw stream create");
    Ok(())
}

/// The KV stream configuration for `config`. Durations saturate.
pub(crate) fn stream_config(config: &StoreConfig) -> stream::Config {
    let max_age = config.max_age.map_or(Duration::ZERO, |d| {
        d.min(Duration::from_nanos(i64::MAX.unsigned_abs()))
    });
    let duplicate_window = if max_age.is_zero() {
        Duration::from_secs(120)
    } else {
        max_age.min(Duration::from_secs(120))
    };
    stream::Config {
        name: format!("KV_{}", config.name),
        subjects: vec![format!("$KV.{}.>", config.name)],
        max_messages_per_subject: i64::from(config.history.clamp(1, 64)),
        max_bytes: config
            .max_bytes
            .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        max_age,
        max_message_size: -1,
        storage: match config.storage {
            StorageKind::File => stream::StorageType::File,
            StorageKind::Memory => stream::StorageType::Memory,
        },
        num_replicas: config.replicas.max(1),
        discard: match config.discard {
            DiscardPolicy::Old => stream::DiscardPolicy::Old,
            DiscardPolicy::New => stream::DiscardPolicy::New,
        },
        duplicate_window,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        allow_message_ttl: config.message_ttl == MessageTtl::Enabled,
        ..Default::default()
    }
}

/// Whether a consumer-creation error names a start-sequence problem (N7's
/// second line of defence). Biased to true; "stream not found" is not one.
pub(crate) fn names_start_problem(description: &str) -> bool {
    let d = description.to_ascii_lowercase();
    if d.contains("stream not found") {
        return false;
    }
    d.contains("start seq")
        || d.contains("start_seq")
        || d.contains("start sequence")
        || d.contains("opt_start")
        || d.contains("sequence") && (d.contains("first") || d.contains("invalid"))
        || d.contains("deliver policy") && d.contains("start")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn already_exists_is_recognised_in_code_or_err_code() {
        let by_err = br#"{"error":{"code":400,"err_code":10058,"description":"stream name already in use"}}"#;
        let by_code = br#"{"error":{"code":10058,"description":"x"}}"#;
        assert_eq!(
            classify_create_reply(by_err).unwrap(),
            CreateOutcome::AlreadyExists
        );
        assert_eq!(
            classify_create_reply(by_code).unwrap(),
            CreateOutcome::AlreadyExists
        );
    }

    #[test]
    fn stream_limit_is_not_fatal_and_other_errors_are() {
        let limit = br#"{"error":{"code":400,"description":"maximum number of streams reached"}}"#;
        assert_eq!(
            classify_create_reply(limit).unwrap(),
            CreateOutcome::StreamLimit
        );
        let other =
            br#"{"error":{"code":500,"err_code":10049,"description":"insufficient resources"}}"#;
        let err = classify_create_reply(other).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("500") && text.contains("10049") && text.contains("insufficient"));
    }

    #[test]
    fn unparseable_reply_is_unverified_and_success_is_created() {
        assert_eq!(
            classify_create_reply(b"<html>").unwrap(),
            CreateOutcome::Unverified
        );
        assert_eq!(
            classify_create_reply(br#"{"config":{}}"#).unwrap(),
            CreateOutcome::Created
        );
    }

    #[test]
    fn durations_saturate_and_history_is_clamped() {
        let c = stream_config(&StoreConfig::new("b").max_age(Duration::MAX).history(200));
        assert_eq!(c.max_age, Duration::from_nanos(i64::MAX.unsigned_abs()));
        assert_eq!(c.max_messages_per_subject, 64);
        assert_eq!(c.subjects, ["$KV.b.>"]);
        let short = stream_config(&StoreConfig::new("b").max_age(Duration::from_secs(5)));
        assert_eq!(short.duplicate_window, Duration::from_secs(5));
    }

    #[test]
    fn start_sequence_errors_are_expiry_but_missing_streams_are_not() {
        assert!(names_start_problem(
            "consumer delivery policy is deliver by start sequence, but optional start sequence is not set"
        ));
        assert!(names_start_problem("Invalid OPT_START_SEQ"));
        assert!(!names_start_problem("stream not found"));
        assert!(!names_start_problem("insufficient resources"));
    }
}
