//! Live pins of the server behaviours the design rests on. Each fails if
//! the server (or our reading of it) changes.

// Test helpers: a failed expectation is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::Duration;

use async_nats::Subscriber;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use slipstream_it::{Admin, NatsServer, connect, open};
use slipstream_kv::{
    Connection, ExpiryReason, KvError, KvPurge, KvWatcher, KvWriter, StoreConfig, WatchCursor,
    WatchScope, WatchStart,
};
use slipstream_nats::parse_ack_subject;

const BOUND: Duration = Duration::from_secs(10);

/// A raw push consumer (AckPolicy::None) made by the admin, beneath our
/// backend: what the server itself does.
async fn raw_consumer(admin: &Admin, stream: &str, mut config: Value) -> Subscriber {
    let inbox = admin.client().new_inbox();
    let sub = admin.client().subscribe(inbox.clone()).await.unwrap();
    config["deliver_subject"] = json!(inbox);
    config["ack_policy"] = json!("none");
    admin
        .api(
            &format!("CONSUMER.CREATE.{stream}"),
            json!({ "stream_name": stream, "config": config }),
        )
        .await
        .unwrap_or_else(|e| panic!("raw consumer create: {e}"));
    sub
}

async fn recv(sub: &mut Subscriber) -> async_nats::Message {
    tokio::time::timeout(BOUND, sub.next())
        .await
        .expect("raw consumer delivered nothing within the bound")
        .expect("subscription ended")
}

fn expiry(result: Result<impl Sized, KvError>) -> ExpiryReason {
    match result {
        Err(KvError::CursorExpired { reason }) => reason,
        Err(e) => panic!("expected CursorExpired, got {e}"),
        Ok(_) => panic!("expected CursorExpired, got a watch"),
    }
}

#[tokio::test]
async fn raw_server_clamps_a_start_below_the_first_sequence_silently_and_our_watch_expires() {
    let server = NatsServer::start().await;
    let conn = connect(&server.url()).await;
    let b = open(&conn, StoreConfig::new("clamp")).await;
    for i in 0..10 {
        b.put(&format!("k{i}"), Bytes::from("v")).await.unwrap();
    }
    let admin = Admin::connect(&server.url()).await;
    admin.purge_below("KV_clamp", 7).await.unwrap();

    let mut sub = raw_consumer(
        &admin,
        "KV_clamp",
        json!({ "deliver_policy": "by_start_sequence", "opt_start_seq": 3 }),
    )
    .await;
    let first = recv(&mut sub).await;
    let seq = parse_ack_subject(first.reply.as_deref().unwrap()).stream_sequence;
    assert_eq!(
        seq,
        Some(7),
        "the server starts at the first retained sequence without an error"
    );

    let reason = expiry(
        b.watch(&WatchScope::All, WatchStart::After(WatchCursor::at(2)))
            .await,
    );
    assert_eq!(
        reason,
        ExpiryReason::BelowFirstSequence {
            revision: 2,
            first_sequence: 7
        }
    );
    // At the floor itself the resume is sound.
    assert!(
        b.watch(&WatchScope::All, WatchStart::After(WatchCursor::at(6)))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn cursor_beyond_the_log_of_a_recreated_bucket_is_detected_not_waited_on() {
    let server = NatsServer::start().await;
    let conn = connect(&server.url()).await;
    let b = open(&conn, StoreConfig::new("again")).await;
    for i in 0..10 {
        b.put(&format!("k{i}"), Bytes::from("v")).await.unwrap();
    }
    let old_identity = b.retention().await.unwrap().identity;
    let admin = Admin::connect(&server.url()).await;
    admin.delete_stream("KV_again").await.unwrap();
    let b = conn.store("again").await.unwrap();
    for i in 0..3 {
        b.put(&format!("k{i}"), Bytes::from("w")).await.unwrap();
    }

    let plain = tokio::time::timeout(
        BOUND,
        b.watch(&WatchScope::All, WatchStart::After(WatchCursor::at(10))),
    )
    .await
    .expect("detected, not waited on");
    assert_eq!(
        expiry(plain),
        ExpiryReason::BeyondLastSequence {
            revision: 10,
            last_sequence: 3
        }
    );
    // Inside the new log's range, only the identity can tell.
    let remembered = WatchCursor::at(2).with_identity(old_identity.clone());
    let reason = expiry(
        tokio::time::timeout(
            BOUND,
            b.watch(&WatchScope::All, WatchStart::After(remembered)),
        )
        .await
        .expect("bounded"),
    );
    assert!(
        matches!(&reason, ExpiryReason::IdentityChanged { expected, found } if *expected == old_identity && *found != old_identity),
        "{reason:?}"
    );
}

#[tokio::test]
async fn purge_reclaims_bytes() {
    let server = NatsServer::start().await;
    let conn = connect(&server.url()).await;
    let b = open(&conn, StoreConfig::new("reclaim").history(20)).await;
    for _ in 0..20 {
        b.put("k", Bytes::from(vec![b'x'; 10_000])).await.unwrap();
    }
    let admin = Admin::connect(&server.url()).await;
    let before = admin.stream_info("KV_reclaim").await["state"]["bytes"]
        .as_u64()
        .unwrap();
    assert!(before >= 200_000, "{before}");
    b.purge("k").await.unwrap();
    let after = admin.stream_info("KV_reclaim").await["state"]["bytes"]
        .as_u64()
        .unwrap();
    assert!(after < 1_000, "purge left {after} bytes");
}

#[tokio::test]
async fn headers_only_delivery_carries_nats_msg_size() {
    let server = NatsServer::start().await;
    let conn = connect(&server.url()).await;
    let b = open(&conn, StoreConfig::new("sizes")).await;
    b.put("big", Bytes::from(vec![b'v'; 1234])).await.unwrap();
    b.put("empty", Bytes::new()).await.unwrap();
    let admin = Admin::connect(&server.url()).await;
    let mut sub = raw_consumer(
        &admin,
        "KV_sizes",
        json!({ "deliver_policy": "last_per_subject", "filter_subject": "$KV.sizes.>", "headers_only": true }),
    )
    .await;
    for expected in ["1234", "0"] {
        let m = recv(&mut sub).await;
        assert!(
            m.payload.is_empty(),
            "headers-only delivery carries no value"
        );
        let size = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Size"))
            .map(|v| v.as_str().to_owned());
        assert_eq!(size.as_deref(), Some(expected));
    }
}

#[tokio::test]
async fn ack_subjects_parse_to_the_right_revision() {
    let server = NatsServer::start().await;
    let conn = connect(&server.url()).await;
    let b = open(&conn, StoreConfig::new("acks").history(5)).await;
    let mut revisions = Vec::new();
    for (k, v) in [("a", "1"), ("b", "1"), ("a", "2")] {
        revisions.push(b.put(k, Bytes::from(v)).await.unwrap());
    }
    b.delete("b").await.unwrap();
    let admin = Admin::connect(&server.url()).await;
    let mut sub = raw_consumer(&admin, "KV_acks", json!({ "deliver_policy": "all" })).await;
    for (i, expected) in revisions.iter().enumerate() {
        let m = recv(&mut sub).await;
        let ack = parse_ack_subject(m.reply.as_deref().unwrap());
        assert_eq!(ack.stream_sequence, Some(*expected));
        assert_eq!(ack.consumer_sequence, Some(i as u64 + 1));
        assert_eq!(
            ack.pending,
            Some(3 - i as u64),
            "the last token is the pending count"
        );
    }
}

#[tokio::test]
async fn multi_filter_consumers_work_on_this_server() {
    let server = NatsServer::start().await;
    let conn = connect(&server.url()).await;
    let b = open(&conn, StoreConfig::new("multi")).await;
    for k in ["a.1", "b.1", "c.1"] {
        b.put(k, Bytes::from("v")).await.unwrap();
    }
    let admin = Admin::connect(&server.url()).await;
    let mut sub = raw_consumer(
        &admin,
        "KV_multi",
        json!({ "deliver_policy": "all", "filter_subjects": ["$KV.multi.a.>", "$KV.multi.c.>"] }),
    )
    .await;
    assert_eq!(recv(&mut sub).await.subject.as_str(), "$KV.multi.a.1");
    assert_eq!(recv(&mut sub).await.subject.as_str(), "$KV.multi.c.1");
}
