//! No secret reaches a log line or a `Debug` output (N1), with
//! `user:pass` in the URL and every kind of credential configured.

// Test helpers: a failed expectation is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use slipstream_it::{NatsServer, ServerAuth, ServerOptions, TempDir, open, test_settings};
use slipstream_kv::{
    Connection, KvReader, KvWatcher, KvWriter, StoreConfig, WatchEvent, WatchScope, WatchStart,
};
use slipstream_nats::{AuthMethod, NatsConfig, NatsConnection, Secret};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

const PASSWORD: &str = "pw-Zebra-4711-secret";
const TOKEN: &str = "tok-Quokka-0815-secret";
const JWT: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJzdWIiOiJVU0VDUkVUSldUIn0.c2lnbmF0dXJlU0VDUkVU";

#[tokio::test]
async fn no_secret_reaches_trace_logs_or_debug_output() {
    let captured = Captured::default();
    let sink = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .init();

    let server = NatsServer::start_with(ServerOptions {
        auth: ServerAuth::UserPassword {
            user: "alice".into(),
            password: PASSWORD.into(),
        },
        ..ServerOptions::default()
    })
    .await;
    let url_with_secret = format!("nats://alice:{PASSWORD}@127.0.0.1:{}", server.addr().port());
    let mut debug_outputs = Vec::new();

    // user:pass in the URL: connects, works, and logs the stripped URL.
    let config = NatsConfig::new(url_with_secret.clone()).settings(test_settings());
    assert_eq!(config.auth_method(), AuthMethod::UserPassword);
    debug_outputs.push(format!("{config:?}"));
    let conn = NatsConnection::new(config);
    conn.connect()
        .await
        .expect("user:pass from the URL authenticates");
    debug_outputs.push(format!("{conn:?}"));
    let b = open(&conn, StoreConfig::new("secure")).await;
    debug_outputs.push(format!("{b:?}"));
    b.put("k", Bytes::from("v")).await.unwrap();
    assert_eq!(b.get("k").await.unwrap(), Some(Bytes::from("v")));
    let mut w = b.watch(&WatchScope::All, WatchStart::Relist).await.unwrap();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .unwrap()
    {
        debug_outputs.push(format!("{ev:?}"));
        if ev.unwrap() == WatchEvent::CaughtUp {
            break;
        }
    }
    drop(w);
    conn.shutdown().await.unwrap();

    // Every credential kind configured at once; the creds file wins and the
    // server (user/password only) refuses it.
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{JWT}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    );
    let dir = TempDir::new("creds");
    let creds_path = dir.path().join("user.creds");
    std::fs::write(&creds_path, &creds).unwrap();
    let everything = NatsConfig::new(url_with_secret.clone())
        .creds_file(&creds_path)
        .nkey_seed(Secret::new(seed.clone()))
        .token(Secret::new(TOKEN))
        .settings(test_settings().request_timeout(Duration::from_secs(3)));
    assert_eq!(everything.auth_method(), AuthMethod::CredsFile);
    debug_outputs.push(format!("{everything:?}"));
    let refused = NatsConnection::new(everything.clone());
    let err = refused
        .connect()
        .await
        .expect_err("the server does not accept this JWT");
    debug_outputs.push(format!("{err:?} {err}"));
    debug_outputs.push(format!("{refused:?}"));

    // Inline creds win over everything else.
    let inline = everything.creds_base64(Secret::new(
        base64::engine::general_purpose::STANDARD.encode(&creds),
    ));
    assert_eq!(inline.auth_method(), AuthMethod::CredsInline);
    debug_outputs.push(format!("{inline:?}"));
    let err = NatsConnection::new(inline)
        .connect()
        .await
        .expect_err("refused");
    debug_outputs.push(format!("{err:?} {err}"));

    let logs = captured.text();
    assert!(
        logs.contains("connecting to NATS"),
        "trace logs were not captured"
    );
    let secrets = [
        PASSWORD,
        TOKEN,
        JWT,
        seed.as_str(),
        &seed[seed.len() - 20..],
    ];
    for secret in secrets {
        assert!(!logs.contains(secret), "secret {secret:?} in the logs");
        for out in &debug_outputs {
            assert!(
                !out.contains(secret),
                "secret {secret:?} in Debug output {out}"
            );
        }
    }
}
