//! The CLI end to end against a real nats-server (its binary from
//! `NATS_SERVER_BIN`; `cargo xtask it` runs these with `--ignored`).

// Test helpers: a failed expectation is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::Value;
use slipstream::kv::{DiscardPolicy, KvReader, KvStore, KvWriter, StoreConfig};
use slipstream::{NatsBucket, NatsConnection};
use slipstream_it::{Admin, NatsServer, TempDir, wait_until};
use support::{run, s, slipstream};

/// A running `slipstream mirror` whose logs go to a file.
struct Mirror {
    child: Child,
    log: PathBuf,
}

impl Mirror {
    fn start(url: &str, bucket: &str, store: &Path, log: PathBuf, extra: &[&str]) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = slipstream()
            .env("RUST_LOG", "info")
            .args([
                "mirror",
                "--server",
                url,
                "--bucket",
                bucket,
                "--store",
                s(store),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log says the mirror has caught up.
    async fn wait_caught_up(&self) {
        let ok = wait_until(Duration::from_secs(30), || async {
            self.log().contains("caught up")
        })
        .await;
        assert!(ok, "mirror did not catch up: {}", self.log());
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit code.
    async fn terminate(&mut self) -> Option<i32> {
        self.signal("-TERM").await
    }

    /// Send `signal` (a `kill` flag), then the exit code.
    async fn signal(&mut self, signal: &str) -> Option<i32> {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let mut code = None;
        let exited = wait_until(Duration::from_secs(30), || {
            code = self.child.try_wait().unwrap().map(|s| s.code());
            std::future::ready(code.is_some())
        })
        .await;
        assert!(exited, "mirror ignored {signal}: {}", self.log());
        code.flatten()
    }
}

async fn bucket(url: &str, name: &str) -> (NatsConnection, NatsBucket) {
    let conn = slipstream_it::connect(url).await;
    let bucket = slipstream_it::open(&conn, StoreConfig::new(name).history(5)).await;
    (conn, bucket)
}

/// The bucket's live entries, as `dump` shows them.
async fn truth(bucket: &NatsBucket) -> Fold {
    bucket
        .reader()
        .scan("")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key, (e.version.as_u64().unwrap(), e.value.to_vec())))
        .collect()
}

/// Key -> (revision, value).
type Fold = BTreeMap<String, (u64, Vec<u8>)>;

fn dumped(store: &Path) -> (Option<u64>, Fold) {
    let doc: Value = serde_json::from_str(&run(&["dump", "--store", s(store)]).ok()).unwrap();
    let entries = doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = STANDARD.decode(e["value_b64"].as_str().unwrap()).unwrap();
            (
                e["key"].as_str().unwrap().to_owned(),
                (e["revision"].as_u64().unwrap(), value),
            )
        })
        .collect();
    (doc["cursor"].as_u64(), entries)
}

async fn write(bucket: &NatsBucket, range: std::ops::Range<u32>, tag: &str) {
    for i in range {
        let value = Bytes::from(format!("{tag}-{i}"));
        bucket
            .writer()
            .put(&format!("cfg.{i:04}"), value)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live: needs NATS_SERVER_BIN; `cargo xtask it` runs it"]
async fn mirror_survives_kill_9_and_dump_equals_the_bucket() {
    let server = NatsServer::start().await;
    let url = server.url();
    let (_conn, bucket) = bucket(&url, "edge").await;
    let dir = TempDir::new("cli-mirror");
    let store = dir.path().join("store");
    write(&bucket, 0..200, "a").await;

    let first = Mirror::start(&url, "edge", &store, dir.path().join("1.log"), &[]);
    first.wait_caught_up().await;
    write(&bucket, 150..260, "b").await;
    for i in 0..20 {
        bucket
            .writer()
            .delete(&format!("cfg.{i:04}"))
            .await
            .unwrap();
    }
    first.kill_9();

    let (cursor_after_kill, _) = dumped(&store);
    assert!(
        cursor_after_kill.is_some_and(|c| c >= 200),
        "the killed mirror had committed its sync: {cursor_after_kill:?}"
    );
    write(&bucket, 250..300, "c").await;

    let mut second = Mirror::start(&url, "edge", &store, dir.path().join("2.log"), &[]);
    second.wait_caught_up().await;
    let log = second.log();
    assert!(
        !log.contains("cursor=None"),
        "a restarted mirror resumes from its cursor: {log}"
    );
    assert_eq!(second.terminate().await, Some(0), "SIGTERM is a clean stop");

    let (cursor, entries) = dumped(&store);
    let expected = truth(&bucket).await;
    assert_eq!(entries, expected);
    assert_eq!(entries.len(), 280);
    let last = expected.values().map(|(rev, _)| *rev).max().unwrap();
    assert_eq!(cursor, Some(last));
    // Every revision is retained (history 5), so the restart received
    // exactly those above the killed mirror's committed cursor.
    let delta = last - cursor_after_kill.unwrap();
    let log = std::fs::read_to_string(dir.path().join("2.log")).unwrap();
    assert!(
        log.contains(&format!(" {delta} updates received this run")),
        "expected a delta of {delta}: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live: needs NATS_SERVER_BIN; `cargo xtask it` runs it"]
async fn mirror_past_retention_with_repair_none_exits_3_with_one_line() {
    let server = NatsServer::start().await;
    let url = server.url();
    let (_conn, bucket) = bucket(&url, "edge").await;
    let dir = TempDir::new("cli-expiry");
    let store = dir.path().join("store");
    write(&bucket, 0..20, "a").await;
    let mut first = Mirror::start(&url, "edge", &store, dir.path().join("1.log"), &[]);
    first.wait_caught_up().await;
    assert_eq!(first.terminate().await, Some(0));

    write(&bucket, 20..40, "b").await;
    let admin = Admin::connect(&url).await;
    admin.purge_below("KV_edge", 35).await.unwrap();

    let r: support::Run = slipstream()
        .env("RUST_LOG", "off")
        .args([
            "mirror",
            "--server",
            &url,
            "--bucket",
            "edge",
            "--store",
            s(&store),
            "--repair",
            "none",
        ])
        .output()
        .unwrap()
        .into();
    r.assert_one_line_error(3, "cursor expired at revision 20");

    let status = run(&["status", "--store", s(&store), "--server", &url]).ok();
    assert!(
        status.contains("retention has passed the cursor"),
        "{status}"
    );
    // Nothing but supersession and a purge removed messages: a relist would do.
    assert!(
        status.contains("listing is truth        yes: no max_age"),
        "{status}"
    );
}

/// `mirror` run to its exit, with logs off so stderr is the error line.
fn mirror_once(url: &str, bucket: &str, store: &Path, extra: &[&str]) -> support::Run {
    slipstream()
        .env("RUST_LOG", "off")
        .args([
            "mirror",
            "--server",
            url,
            "--bucket",
            bucket,
            "--store",
            s(store),
        ])
        .args(extra)
        .output()
        .unwrap()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live: needs NATS_SERVER_BIN; `cargo xtask it` runs it"]
async fn a_repair_that_needs_an_artifact_exits_3_naming_the_flag_and_status_says_why() {
    let server = NatsServer::start().await;
    let url = server.url();
    let conn = slipstream_it::connect(&url).await;
    // A discard-old byte limit: retention evicts current values.
    let config = StoreConfig::new("capped")
        .max_bytes(8 * 1024)
        .discard(DiscardPolicy::Old);
    let bucket = slipstream_it::open(&conn, config).await;
    let dir = TempDir::new("cli-needs-artifact");
    let store = dir.path().join("store");
    write(&bucket, 0..10, "a").await;
    let mut first = Mirror::start(&url, "capped", &store, dir.path().join("1.log"), &[]);
    first.wait_caught_up().await;
    assert_eq!(first.terminate().await, Some(0));

    // While the mirror is down the limit evicts everything it saw.
    for round in 0..20 {
        write(&bucket, 0..10, &format!("r{round}")).await;
    }
    let first_seq = Admin::connect(&url).await.first_sequence("KV_capped").await;
    assert!(
        first_seq > 11,
        "the limit evicted the mirror's cursor: {first_seq}"
    );

    mirror_once(&url, "capped", &store, &[])
        .assert_one_line_error(3, "pass --artifacts DIR|nats://BUCKET holding an artifact");
    mirror_once(&url, "capped", &store, &["--repair", "relist"])
        .assert_one_line_error(3, "use --repair auto with --artifacts DIR");
    let empty = dir.path().join("artifacts");
    std::fs::create_dir(&empty).unwrap();
    mirror_once(&url, "capped", &store, &["--artifacts", s(&empty)]).assert_one_line_error(
        3,
        &format!("put into --artifacts {} a newer artifact", empty.display()),
    );

    // The refused runs saw the eviction, so the memo now says so too.
    let status = run(&["status", "--store", s(&store), "--server", &url]).ok();
    assert!(
        status.contains("listing is truth        no: this fold's memo saw retention evict"),
        "{status}"
    );
    assert!(status.contains("mirror with --artifacts DIR"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live: needs NATS_SERVER_BIN; `cargo xtask it` runs it"]
async fn a_failed_first_run_leaves_nothing_that_blocks_the_corrected_command() {
    let server = NatsServer::start().await;
    let url = server.url();
    let (_conn, bucket) = bucket(&url, "good").await;
    write(&bucket, 0..5, "a").await;
    let dir = TempDir::new("cli-first-run");
    let store = dir.path().join("store");

    mirror_once(&url, "bad name!", &store, &[]).assert_one_line_error(2, "bucket name");
    assert!(!store.exists());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("nats://127.0.0.1:{port}");
    mirror_once(&nowhere, "good", &store, &["--timeout", "2"]).assert_one_line_error(1, "connect");
    assert!(!store.exists());

    let mut mirror = Mirror::start(&url, "good", &store, dir.path().join("ok.log"), &[]);
    mirror.wait_caught_up().await;
    assert_eq!(mirror.terminate().await, Some(0), "{}", mirror.log());
    assert_eq!(dumped(&store).1, truth(&bucket).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live: needs NATS_SERVER_BIN; `cargo xtask it` runs it"]
async fn mirror_past_retention_relists_and_drops_a_delete_lost_in_the_gap() {
    let server = NatsServer::start().await;
    let url = server.url();
    let (_conn, bucket) = bucket(&url, "edge").await;
    let dir = TempDir::new("cli-relist");
    let store = dir.path().join("store");
    write(&bucket, 0..20, "a").await;
    let mut first = Mirror::start(&url, "edge", &store, dir.path().join("1.log"), &[]);
    first.wait_caught_up().await;
    assert_eq!(first.terminate().await, Some(0));

    // While the mirror is down: every key is rewritten, one is deleted, and
    // retention removes the delete's marker and everything the mirror saw.
    write(&bucket, 0..20, "b").await;
    bucket.writer().delete("cfg.0000").await.unwrap();
    let admin = Admin::connect(&url).await;
    admin
        .purge_subject("KV_edge", "$KV.edge.cfg.0000")
        .await
        .unwrap();
    admin.purge_below("KV_edge", 21).await.unwrap();

    // The default repair mode (auto) relists: the listing is the truth here.
    let mut second = Mirror::start(&url, "edge", &store, dir.path().join("2.log"), &[]);
    second.wait_caught_up().await;
    assert_eq!(second.terminate().await, Some(0));

    let (cursor, entries) = dumped(&store);
    let expected = truth(&bucket).await;
    assert!(!expected.contains_key("cfg.0000"));
    assert_eq!(entries, expected, "the deleted key left the fold");
    assert_eq!(entries.len(), 19);
    assert_eq!(cursor, expected.values().map(|(rev, _)| *rev).max());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live: needs NATS_SERVER_BIN; `cargo xtask it` runs it"]
async fn mirror_past_retention_restores_from_another_nodes_artifact() {
    let server = NatsServer::start().await;
    let url = server.url();
    let (_conn, bucket) = bucket(&url, "edge").await;
    let dir = TempDir::new("cli-restore");
    let (node_a, node_b) = (dir.path().join("a"), dir.path().join("b"));
    let artifacts = dir.path().join("artifacts");
    write(&bucket, 0..20, "a").await;
    let mut first = Mirror::start(&url, "edge", &node_a, dir.path().join("a1.log"), &[]);
    first.wait_caught_up().await;
    assert_eq!(first.terminate().await, Some(0));

    // Node A is down: keys change, one is deleted (its marker purged), and
    // node B, which kept running, exports its fold.
    write(&bucket, 0..20, "b").await;
    bucket.writer().delete("cfg.0000").await.unwrap();
    let admin = Admin::connect(&url).await;
    admin
        .purge_subject("KV_edge", "$KV.edge.cfg.0000")
        .await
        .unwrap();
    let mut other = Mirror::start(&url, "edge", &node_b, dir.path().join("b.log"), &[]);
    other.wait_caught_up().await;
    assert_eq!(other.terminate().await, Some(0));
    std::fs::create_dir_all(&artifacts).unwrap();
    run(&[
        "export",
        "--store",
        s(&node_b),
        "--out",
        s(&artifacts.join("b-1")),
    ])
    .ok();
    write(&bucket, 20..25, "c").await;
    // Only values node A holds go: the head passes its cursor (20).
    admin.purge_below("KV_edge", 22).await.unwrap();

    let mut second = Mirror::start(
        &url,
        "edge",
        &node_a,
        dir.path().join("a2.log"),
        &["--repair", "restore", "--artifacts", s(&artifacts)],
    );
    second.wait_caught_up().await;
    assert_eq!(second.terminate().await, Some(0));
    let (cursor, entries) = dumped(&node_a);
    let expected = truth(&bucket).await;
    assert!(
        !entries.contains_key("cfg.0000"),
        "the real delete is applied"
    );
    assert_eq!(entries, expected, "{}", second.log());
    assert_eq!(cursor, expected.values().map(|(rev, _)| *rev).max());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live: needs NATS_SERVER_BIN; `cargo xtask it` runs it"]
async fn kv_commands_put_get_list_and_delete() {
    let server = NatsServer::start().await;
    let url = server.url();
    let kv = |args: &[&str]| {
        let mut all = vec!["kv", "--server", url.as_str(), "--bucket", "admin"];
        all.extend_from_slice(args);
        run(&all)
    };
    assert_eq!(kv(&["put", "a.x", "one"]).ok().trim(), "1");
    assert_eq!(kv(&["put", "a.y", "two"]).ok().trim(), "2");
    assert_eq!(kv(&["get", "a.x"]).ok(), "one");
    assert_eq!(kv(&["keys", "--prefix", "a."]).ok(), "a.x\na.y\n");
    kv(&["del", "a.x"]).ok();
    kv(&["get", "a.x"]).assert_one_line_error(1, "not found");
    assert_eq!(kv(&["keys"]).ok(), "a.y\n");

    // `watch` prints the current state (the delete marker included), then
    // live changes, as JSON lines.
    let mut watch = slipstream()
        .args([
            "kv", "--server", &url, "--bucket", "admin", "watch", "--prefix", "a.",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(watch.stdout.take().unwrap()));
    let mut next = || serde_json::from_str::<Value>(&lines.next().unwrap().unwrap()).unwrap();
    // Revision order: a.y's put (2), then a.x's delete marker (3).
    let first = next();
    assert_eq!(first["key"], "a.y");
    assert_eq!(
        STANDARD
            .decode(first["value_b64"].as_str().unwrap())
            .unwrap(),
        b"two"
    );
    let second = next();
    assert_eq!(
        (second["op"].as_str(), second["key"].as_str()),
        (Some("del"), Some("a.x"))
    );
    assert_eq!(kv(&["put", "a.z", "three"]).ok().trim(), "4");
    let live = next();
    assert_eq!(
        (live["op"].as_str(), live["revision"].as_u64()),
        (Some("put"), Some(4))
    );
    watch.kill().unwrap();
    watch.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live: needs NATS_SERVER_BIN; `cargo xtask it` runs it"]
async fn every_built_backend_mirrors_exports_and_imports_the_bucket() {
    let server = NatsServer::start().await;
    let url = server.url();
    let (_conn, bucket) = bucket(&url, "edge").await;
    write(&bucket, 0..40, "a").await;
    bucket.writer().delete("cfg.0003").await.unwrap();
    let expected = truth(&bucket).await;
    let mut backends = vec!["append-log"];
    if cfg!(feature = "fjall") {
        backends.push("fjall");
    }
    if cfg!(feature = "rocksdb") {
        backends.push("rocksdb");
    }
    for backend in backends {
        let dir = TempDir::new(&format!("cli-{backend}"));
        let store = dir.path().join("store");
        let mut mirror = Mirror::start(
            &url,
            "edge",
            &store,
            dir.path().join("m.log"),
            &["--backend", backend],
        );
        mirror.wait_caught_up().await;
        assert_eq!(mirror.terminate().await, Some(0), "{backend}");
        let status = run(&["status", "--store", s(&store)]).ok();
        assert!(status.contains(&format!("{backend}/")), "{status}");
        assert_eq!(dumped(&store).1, expected, "{backend}");

        let artifact = dir.path().join("artifact");
        let copy = dir.path().join("copy");
        run(&["export", "--store", s(&store), "--out", s(&artifact)]).ok();
        run(&["import", "--artifact", s(&artifact), "--store", s(&copy)]).ok();
        assert_eq!(dumped(&copy), dumped(&store), "{backend}");
    }
}

/// A plain HTTP GET; the whole response.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live: needs NATS_SERVER_BIN; `cargo xtask it` runs it"]
async fn mirror_serves_prometheus_metrics_and_stops_on_sigint() {
    let server = NatsServer::start().await;
    let url = server.url();
    let (_conn, bucket) = bucket(&url, "edge").await;
    write(&bucket, 0..25, "a").await;
    let dir = TempDir::new("cli-metrics");
    let store = dir.path().join("store");
    let mut mirror = Mirror::start(
        &url,
        "edge",
        &store,
        dir.path().join("m.log"),
        &["--metrics", "127.0.0.1:0"],
    );
    mirror.wait_caught_up().await;
    let log = mirror.log();
    let addr = log
        .lines()
        .find(|l| l.contains("serving Prometheus metrics"))
        .and_then(|l| l.split("bound=").nth(1))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no metrics address logged: {log}"))
        .to_owned();
    let response = http_get(&addr, "/metrics");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.contains("slipstream_applied_cursor{watch=\"edge\"} 25"),
        "{response}"
    );
    assert!(http_get(&addr, "/nope").starts_with("HTTP/1.1 404"));
    assert_eq!(
        mirror.signal("-INT").await,
        Some(0),
        "SIGINT is a clean stop"
    );
    assert_eq!(dumped(&store).0, Some(25));
}

/// The newest artifact's rank in the object store `fleet` for the
/// append-log fold of the whole `bucket`.
async fn published_rank(url: &str, bucket: &str) -> Option<u64> {
    use slipstream::fleet::{ArtifactTransport, FleetKey, ObjectStoreConfig, ObjectStoreTransport};
    let client = slipstream_it::connect(url).await.client().unwrap();
    let key = FleetKey::new(
        bucket,
        slipstream::WatchScope::All,
        <slipstream::AppendLogStore as slipstream::SnapshotStore>::BACKEND,
    );
    let transport = ObjectStoreTransport::open(client, ObjectStoreConfig::new("fleet"), key)
        .await
        .unwrap();
    transport.pointer().await.unwrap().rank()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live: needs NATS_SERVER_BIN; `cargo xtask it` runs it"]
async fn mirrors_export_to_the_object_store_and_nodes_restore_and_bootstrap_from_it() {
    let server = NatsServer::start().await;
    let url = server.url();
    let conn = slipstream_it::connect(&url).await;
    let max_age = Duration::from_secs(2);
    let bucket =
        slipstream_it::open(&conn, StoreConfig::new("edge").history(5).max_age(max_age)).await;
    let dir = TempDir::new("cli-fleet");
    let store = |name: &str| dir.path().join(name);
    write(&bucket, 0..20, "a").await;
    // Node B syncs and goes down.
    let mut b = Mirror::start(&url, "edge", &store("b"), dir.path().join("b1.log"), &[]);
    b.wait_caught_up().await;
    assert_eq!(b.terminate().await, Some(0));

    // Two running mirrors export on a short schedule; one holds the lease.
    let export = [
        "--export-every",
        "200ms",
        "--export-to",
        "nats://fleet",
        "--artifacts",
        "nats://fleet",
    ];
    let mut a = Mirror::start(&url, "edge", &store("a"), dir.path().join("a.log"), &export);
    a.wait_caught_up().await;
    let mut a2 = Mirror::start(
        &url,
        "edge",
        &store("a2"),
        dir.path().join("a2.log"),
        &export,
    );
    a2.wait_caught_up().await;
    write(&bucket, 0..10, "b").await;
    // Keys 10..20 keep only their first values, which age out: the bucket
    // no longer lists them, the running mirrors' folds keep them.
    let aged_out = wait_until(Duration::from_secs(30), || async {
        !truth(&bucket).await.contains_key("cfg.0015")
    })
    .await;
    assert!(aged_out, "max_age removed the untouched keys");
    let last = slipstream::KvWatcher::retention(&bucket.watcher())
        .await
        .unwrap()
        .last_revision;
    let published = wait_until(Duration::from_secs(30), || async {
        published_rank(&url, "edge").await >= Some(last)
    })
    .await;
    assert!(published, "an export at {last} was published: {}", a.log());
    // While both run, one holds the lease and the other is told so.
    let settled = wait_until(Duration::from_secs(30), || {
        let (la, la2) = (a.log(), a2.log());
        let holds = |l: &str| l.contains("holding the export lease");
        let told = |l: &str| l.contains("another mirror holds the export lease");
        std::future::ready((holds(&la) && told(&la2)) || (holds(&la2) && told(&la)))
    })
    .await;
    assert!(
        settled,
        "one exporter holds the lease:\n{}\n{}",
        a.log(),
        a2.log()
    );
    let (holder, other) = if a.log().contains("another mirror holds") {
        (&mut a2, &mut a)
    } else {
        (&mut a, &mut a2)
    };
    assert!(
        !holder.log().contains("another mirror holds"),
        "only one exporter was told another holds it"
    );
    // The holder stops and releases the lease; the other takes it over.
    assert_eq!(holder.terminate().await, Some(0));
    let took_over = wait_until(Duration::from_secs(30), || {
        std::future::ready(
            other
                .log()
                .rsplit("another mirror holds")
                .next()
                .is_some_and(|after| after.contains("holding the export lease")),
        )
    })
    .await;
    assert!(took_over, "the lease passed on: {}", other.log());
    assert_eq!(other.terminate().await, Some(0));
    let (exporter_cursor, exported) = dumped(&store("a"));
    assert_eq!(exporter_cursor, Some(last));
    assert!(
        exported.contains_key("cfg.0015"),
        "the exporter kept aged-out keys"
    );

    // Node B, down past retention, restores from the object store alone.
    let mut b = Mirror::start(
        &url,
        "edge",
        &store("b"),
        dir.path().join("b2.log"),
        &["--artifacts", "nats://fleet"],
    );
    b.wait_caught_up().await;
    assert_eq!(b.terminate().await, Some(0));
    assert_eq!(
        dumped(&store("b")),
        (Some(last), exported.clone()),
        "{}",
        b.log()
    );

    // A new node bootstraps from it and equals the exporter too.
    let mut c = Mirror::start(
        &url,
        "edge",
        &store("c"),
        dir.path().join("c.log"),
        &["--artifacts", "nats://fleet"],
    );
    c.wait_caught_up().await;
    assert_eq!(c.terminate().await, Some(0));
    assert!(
        c.log().contains("bootstrapped from an artifact"),
        "{}",
        c.log()
    );
    assert_eq!(dumped(&store("c")), (Some(last), exported));

    let status = run(&[
        "status",
        "--store",
        s(&store("c")),
        "--server",
        &url,
        "--artifacts",
        "nats://fleet",
    ])
    .ok();
    assert!(
        status.contains(&format!("revision {last} in nats://fleet")),
        "{status}"
    );
    assert!(status.contains("artifact age"), "{status}");
    assert!(status.contains("artifact bootstraps"), "{status}");
}
