//! Connection health and lifecycle (N2), consumer settings (N3) and bucket
//! creation facts (N4) against a live server.

// Test helpers: a failed expectation is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use slipstream_it::{Admin, NatsServer, StallProxy, connect, open, test_settings, wait_until};
use slipstream_kv::{
    Connection, KvError, KvReader, KvTtl, KvWatcher, KvWriter, MessageTtl, StoreConfig, WatchScope,
    WatchStart,
};
use slipstream_nats::{CONSUMER_PREFIX, NatsConfig, NatsConnection};

const BOUND: Duration = Duration::from_secs(20);

#[tokio::test]
async fn health_follows_the_clients_connection_events() {
    let mut server = NatsServer::start().await;
    let conn = connect(&server.url()).await;
    assert!(conn.is_healthy());
    server.stop().await;
    assert!(
        wait_until(BOUND, || async { !conn.is_healthy() }).await,
        "still healthy with the server gone"
    );
    server.restart().await;
    assert!(
        wait_until(BOUND, || async { conn.is_healthy() }).await,
        "not healthy after the server came back"
    );
    conn.shutdown().await.unwrap();
    assert!(!conn.is_healthy());
    conn.connect()
        .await
        .expect("a configured connection redials after shutdown");
    assert!(conn.is_healthy());
}

#[tokio::test]
async fn a_callers_client_is_read_live_and_cannot_be_redialled_after_shutdown() {
    let server = NatsServer::start().await;
    let client = async_nats::connect(server.url()).await.unwrap();
    let conn = NatsConnection::from_client(client, test_settings());
    assert!(!conn.is_healthy(), "not installed before connect");
    conn.connect().await.unwrap();
    assert!(conn.is_healthy());
    let b = conn.store("wrapped").await.unwrap();
    b.put("k", Bytes::from("v")).await.unwrap();
    conn.shutdown().await.unwrap();
    assert!(!conn.is_healthy());
    match conn.connect().await {
        Err(KvError::ConnectionFailed(msg)) => assert!(msg.contains("cannot redial"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(b.get("k").await, Err(KvError::NotConnected));
}

#[tokio::test]
async fn concurrent_connects_install_one_client() {
    let server = NatsServer::start().await;
    let proxy = StallProxy::start(server.addr()).await;
    let conn = NatsConnection::new(NatsConfig::new(proxy.url()).settings(test_settings()));
    let (a, b, c) = tokio::join!(conn.connect(), conn.connect(), conn.connect());
    a.unwrap();
    b.unwrap();
    c.unwrap();
    conn.connect().await.unwrap();
    assert_eq!(proxy.connections_accepted(), 1, "one client dialled");
    assert!(conn.is_healthy());
}

#[tokio::test]
async fn ephemeral_consumers_carry_the_inactivity_threshold_and_no_acks() {
    let server = NatsServer::start().await;
    let conn = connect(&server.url()).await;
    let b = open(&conn, StoreConfig::new("threshold")).await;
    b.put("a", Bytes::from("1")).await.unwrap();
    let _w = b.watch(&WatchScope::All, WatchStart::Relist).await.unwrap();
    let admin = Admin::connect(&server.url()).await;
    let name = admin.consumer_names("KV_threshold").await.pop().unwrap();
    assert!(name.starts_with(CONSUMER_PREFIX));
    let info = admin
        .api(&format!("CONSUMER.INFO.KV_threshold.{name}"), json!({}))
        .await
        .unwrap();
    let config = &info["config"];
    assert_eq!(config["inactive_threshold"].as_u64(), Some(60_000_000_000));
    assert_eq!(config["ack_policy"], "none");
    assert_eq!(config["flow_control"], true);
}

#[tokio::test]
async fn server_reports_already_exists_as_10058_for_a_different_config() {
    let server = NatsServer::start().await;
    let conn = connect(&server.url()).await;
    open(&conn, StoreConfig::new("exists").history(2)).await;
    let admin = Admin::connect(&server.url()).await;
    let err = admin
        .api(
            "STREAM.CREATE.KV_exists",
            json!({"name": "KV_exists", "subjects": ["$KV.exists.>"], "max_msgs_per_subject": 9}),
        )
        .await
        .expect_err("a different config is refused");
    assert!(err.contains("10058"), "{err}");
    // Opening again uses the bucket as it is.
    let again = open(&conn, StoreConfig::new("exists").history(9)).await;
    let info = admin.stream_info(again.stream_name()).await;
    assert_eq!(info["config"]["max_msgs_per_subject"], 2);
}

#[tokio::test]
async fn per_message_ttl_expires_values_where_the_server_supports_it() {
    let server = NatsServer::start().await;
    if !server.at_least(2, 11) {
        eprintln!(
            "skipped: per-message TTL needs nats-server 2.11+, this is {:?}",
            server.version()
        );
        let conn = connect(&server.url()).await;
        assert!(
            !conn.capabilities().per_message_ttl,
            "never advertise what the server lacks"
        );
        // The old server would ignore the TTL header: refused, not silently kept.
        let b = open(
            &conn,
            StoreConfig::new("ttl").message_ttl(MessageTtl::Enabled),
        )
        .await;
        let refused = b
            .put_with_ttl("k", Bytes::from("v"), Duration::from_secs(1))
            .await;
        assert!(
            matches!(refused, Err(KvError::Unsupported(_))),
            "{refused:?}"
        );
        return;
    }
    let conn = connect(&server.url()).await;
    assert!(conn.capabilities().per_message_ttl);
    let b = open(
        &conn,
        StoreConfig::new("ttl").message_ttl(MessageTtl::Enabled),
    )
    .await;
    b.put_with_ttl("short", Bytes::from("v"), Duration::from_secs(1))
        .await
        .unwrap();
    let retention = b.retention().await.unwrap();
    assert!(!retention.evicts_current_values() && retention.eviction.per_message_ttl);
    assert!(wait_until(BOUND, || async { b.get("short").await.unwrap().is_none() }).await);
    let plain = open(&conn, StoreConfig::new("nottl")).await;
    let refused = plain
        .put_with_ttl("k", Bytes::from("v"), Duration::from_secs(1))
        .await;
    assert!(
        matches!(refused, Err(KvError::Unsupported(_))),
        "{refused:?}"
    );
}
