//! TLS through async-nats's rustls (N1): a server with a certificate from
//! a test CA, trusted through `TlsConfig::root_ca`.

// Test helpers: a failed expectation is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use slipstream_it::{NatsServer, ServerOptions, ServerTls, TempDir, open, test_settings};
use slipstream_kv::{Connection, KvError, KvReader, KvWriter, StoreConfig};
use slipstream_nats::{NatsConfig, NatsConnection, TlsConfig, TlsMode};

/// Run openssl; false when it is not installed.
fn openssl(dir: &Path, args: &[&str]) -> bool {
    match Command::new("openssl").args(args).current_dir(dir).output() {
        Ok(out) => {
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            true
        }
        Err(_) => false,
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, or
/// `None` without openssl.
fn make_certs(dir: &Path) -> Option<()> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca: Vec<&str> = ["req", "-x509"]
        .into_iter()
        .chain(ec)
        .chain(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"])
        .chain(["-subj", "/CN=slipstream test CA"])
        .collect();
    if !openssl(dir, &ca) {
        return None;
    }
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    for (name, subject) in [
        ("server", "/CN=127.0.0.1"),
        ("client", "/CN=slipstream client"),
    ] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let request: Vec<&str> = ["req"]
            .into_iter()
            .chain(ec)
            .chain(["-keyout", &key, "-out", &csr, "-subj", subject])
            .collect();
        openssl(dir, &request);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        );
    }
    Some(())
}

#[tokio::test]
async fn tls_connection_trusts_a_custom_root_ca_and_refuses_without_it() {
    let dir = TempDir::new("tls");
    if make_certs(dir.path()).is_none() {
        eprintln!("skipped: TLS test needs the openssl command to make certificates");
        return;
    }
    let server = NatsServer::start_with(ServerOptions {
        tls: ServerTls::On {
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
            client_ca: None,
        },
        ..ServerOptions::default()
    })
    .await;
    let url = format!("tls://127.0.0.1:{}", server.addr().port());

    let trusted = NatsConfig::new(url.clone())
        .tls(TlsConfig {
            mode: TlsMode::Required,
            root_ca: Some(dir.path().join("ca.pem")),
            client_cert: None,
        })
        .settings(test_settings());
    let conn = NatsConnection::new(trusted);
    conn.connect().await.expect("TLS with the test CA");
    let b = open(&conn, StoreConfig::new("tls")).await;
    b.put("k", Bytes::from("v")).await.unwrap();
    assert_eq!(b.get("k").await.unwrap(), Some(Bytes::from("v")));

    let untrusted = NatsConnection::new(
        NatsConfig::new(url).settings(test_settings().request_timeout(Duration::from_secs(3))),
    );
    let refused = tokio::time::timeout(Duration::from_secs(10), untrusted.connect())
        .await
        .expect("bounded");
    assert!(
        matches!(refused, Err(KvError::ConnectionFailed(_))),
        "{refused:?}"
    );
}

#[tokio::test]
async fn tls_client_certificate_is_presented_when_the_server_verifies_clients() {
    let dir = TempDir::new("mtls");
    if make_certs(dir.path()).is_none() {
        eprintln!("skipped: TLS test needs the openssl command to make certificates");
        return;
    }
    let ca = dir.path().join("ca.pem");
    let server = NatsServer::start_with(ServerOptions {
        tls: ServerTls::On {
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
            client_ca: Some(ca.clone()),
        },
        ..ServerOptions::default()
    })
    .await;
    let url = format!("tls://127.0.0.1:{}", server.addr().port());
    let tls = |client_cert| TlsConfig {
        mode: TlsMode::Required,
        root_ca: Some(ca.clone()),
        client_cert,
    };
    let with_cert = NatsConnection::new(
        NatsConfig::new(url.clone())
            .tls(tls(Some((
                dir.path().join("client.pem"),
                dir.path().join("client.key"),
            ))))
            .settings(test_settings()),
    );
    with_cert.connect().await.expect("mutual TLS");
    let b = open(&with_cert, StoreConfig::new("mtls")).await;
    b.put("k", Bytes::from("v")).await.unwrap();

    let without = NatsConnection::new(
        NatsConfig::new(url)
            .tls(tls(None))
            .settings(test_settings().request_timeout(Duration::from_secs(3))),
    );
    let refused = tokio::time::timeout(Duration::from_secs(10), without.connect())
        .await
        .expect("bounded");
    assert!(
        refused.is_err(),
        "a client without a certificate must be refused"
    );
}
