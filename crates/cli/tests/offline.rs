//! The CLI without a server: argument errors, store errors, `dump`'s JSON
//! shape, `status`, and export/import round trips through the binary.

// Test helpers: a failed expectation is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use support::{library_store, put, run, s};

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["mirror"][..],
        &["dump"],
        &["frobnicate"],
        &["kv", "--server", "nats://127.0.0.1:4222", "get", "k"],
        &[
            "mirror",
            "--server",
            "u",
            "--bucket",
            "b",
            "--store",
            "d",
            "--repair",
            "sometimes",
        ],
        &[
            "mirror",
            "--server",
            "u",
            "--bucket",
            "b",
            "--store",
            "d",
            "--backend",
            "sqlite",
        ],
    ] {
        let r = run(args);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        assert!(r.stderr.starts_with("error: "), "{args:?}: {}", r.stderr);
    }
}

#[test]
fn restore_repair_without_artifacts_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let r = run(&[
        "mirror",
        "--server",
        "nats://127.0.0.1:1",
        "--bucket",
        "b",
        "--store",
        s(&store),
        "--repair",
        "restore",
    ]);
    r.assert_one_line_error(2, "--artifacts");
    assert!(!store.exists(), "nothing is created on a usage error");
}

#[test]
fn invalid_prefix_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(&[
        "mirror",
        "--server",
        "nats://127.0.0.1:1",
        "--bucket",
        "b",
        "--store",
        s(&tmp.path().join("store")),
        "--prefix",
        "bad prefix",
    ]);
    r.assert_one_line_error(2, "--prefix");
}

#[test]
fn help_is_available_on_every_command() {
    for cmd in ["mirror", "dump", "status", "export", "import", "kv"] {
        let r = run(&[cmd, "--help"]);
        assert_eq!(r.code, Some(0), "{cmd}: {}", r.stderr);
        assert!(
            r.stdout.contains("Usage: slipstream"),
            "{cmd}: {}",
            r.stdout
        );
    }
}

#[test]
fn dump_of_missing_store_is_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(&["dump", "--store", s(&tmp.path().join("nope"))]);
    r.assert_one_line_error(1, "does not exist");
}

#[test]
fn dump_of_foreign_directory_is_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "hello\nworld\n").unwrap();
    let r = run(&["dump", "--store", s(tmp.path())]);
    r.assert_one_line_error(1, "holds no slipstream store");
    // Reading commands write nothing, so they do not talk of writing.
    assert!(!r.stderr.contains("writ"), "{}", r.stderr);
    let r = run(&["status", "--store", s(tmp.path())]);
    r.assert_one_line_error(1, "holds no slipstream store");
    assert!(!r.stderr.contains("writ"), "{}", r.stderr);
}

#[test]
fn dump_prints_exactly_the_documented_json_shape_sorted_by_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fold");
    library_store(
        &dir,
        &[
            put("b.two", b"2", 3),
            put("a.one", b"\x00\xff", 5),
            put("c", b"", 7),
        ],
        9,
    );
    let out = run(&["dump", "--store", s(&dir)]).ok();
    let doc: Value = serde_json::from_str(&out).unwrap();
    let top = doc.as_object().unwrap();
    assert_eq!(top.keys().collect::<Vec<_>>(), ["cursor", "entries"]);
    assert_eq!(top["cursor"], 9);
    let entries = top["entries"].as_array().unwrap();
    let keys: Vec<&str> = entries.iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["a.one", "b.two", "c"]);
    for e in entries {
        let fields: Vec<&String> = e.as_object().unwrap().keys().collect();
        assert_eq!(fields, ["key", "revision", "value_b64"]);
    }
    assert_eq!(entries[0]["revision"], 5);
    assert_eq!(
        STANDARD
            .decode(entries[0]["value_b64"].as_str().unwrap())
            .unwrap(),
        b"\x00\xff"
    );
    assert_eq!(entries[2]["value_b64"], "");

    let filtered: Value =
        serde_json::from_str(&run(&["dump", "--store", s(&dir), "--prefix", "b."]).ok()).unwrap();
    assert_eq!(filtered["entries"].as_array().unwrap().len(), 1);
    assert_eq!(filtered["entries"][0]["key"], "b.two");
}

#[test]
fn dump_of_empty_store_has_null_cursor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fold");
    let (_, store) = <slipstream::AppendLogStore as slipstream::SnapshotStore>::open(
        &dir,
        &slipstream::AppendLogOptions::default(),
    )
    .unwrap();
    slipstream::SnapshotStore::close(store).unwrap();
    let out = run(&["dump", "--store", s(&dir)]).ok();
    assert_eq!(out.trim(), r#"{"cursor":null,"entries":[]}"#);
}

#[test]
fn status_reports_backend_cursor_and_key_count() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fold");
    library_store(&dir, &[put("a", b"1", 1), put("b", b"2", 2)], 2);
    let out = run(&["status", "--store", s(&dir)]).ok();
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name).map(str::trim))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .to_owned()
    };
    assert_eq!(field("backend"), "append-log/1");
    assert_eq!(field("cursor"), "2");
    assert_eq!(field("keys"), "2");
    assert_eq!(field("memo: seen evicting"), "no");
}

/// A stopped node's fold with one entry past its per-message expiry, one
/// that expires in an hour, and one that never does.
fn fold_with_an_expired_entry(dir: &std::path::Path) {
    use slipstream::{AppendLogOptions, AppendLogStore, KvUpdate, SnapshotStore, WatchCursor};
    let now = slipstream::Timestamp::now();
    let with_expiry = |key: &str, rev, at| match put(key, b"v", rev) {
        KvUpdate::Put(e) => KvUpdate::Put(slipstream::KvEntry {
            expires: Some(at),
            ..e
        }),
        other => other,
    };
    let updates = [
        with_expiry("gone", 1, slipstream::Timestamp::from_unix_nanos(1)),
        with_expiry("later", 2, now.plus(std::time::Duration::from_secs(3600))),
        put("kept", b"v", 3),
    ];
    let (_, mut store) = AppendLogStore::open(dir, &AppendLogOptions::default()).unwrap();
    let cursor = WatchCursor::at(3).with_holds_expiring(true);
    store.apply(&updates, &cursor).unwrap();
    store.close().unwrap();
}

#[test]
fn dump_never_shows_an_entry_past_its_expiry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fold");
    fold_with_an_expired_entry(&dir);
    let doc: Value = serde_json::from_str(&run(&["dump", "--store", s(&dir)]).ok()).unwrap();
    let keys: Vec<_> = doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, ["kept", "later"]);
}

#[test]
fn status_counts_an_expired_entry_apart_from_the_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fold");
    fold_with_an_expired_entry(&dir);
    let out = run(&["status", "--store", s(&dir)]).ok();
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name).map(str::trim))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .to_owned()
    };
    assert_eq!(field("keys"), "2");
    assert_eq!(field("expired"), "1 (removed when the mirror next runs)");
    assert_eq!(field("memo: expiries"), "recorded");
}

#[test]
fn status_with_server_but_no_known_bucket_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fold");
    library_store(&dir, &[put("a", b"1", 1)], 1);
    let r = run(&[
        "status",
        "--store",
        s(&dir),
        "--server",
        "nats://127.0.0.1:1",
    ]);
    r.assert_one_line_error(2, "--bucket");
}

#[test]
fn export_then_import_round_trips_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    library_store(&source, &[put("k.1", b"one", 4), put("k.2", b"two", 6)], 8);
    let artifact = tmp.path().join("artifact");
    let copy = tmp.path().join("copy");
    run(&["export", "--store", s(&source), "--out", s(&artifact)]).ok();
    assert!(artifact.join("MANIFEST.json").is_file());
    run(&["import", "--artifact", s(&artifact), "--store", s(&copy)]).ok();
    assert!(
        copy.join("slipstream-store.json").is_file(),
        "import records the backend"
    );

    let before = run(&["dump", "--store", s(&source)]).ok();
    let after = run(&["dump", "--store", s(&copy)]).ok();
    assert_eq!(before, after);
    assert!(before.contains(r#""cursor":8"#));

    // The imported store can itself be exported again.
    run(&[
        "export",
        "--store",
        s(&copy),
        "--out",
        s(&tmp.path().join("again")),
    ])
    .ok();
}

#[test]
fn export_to_non_empty_destination_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    library_store(&source, &[put("a", b"1", 1)], 1);
    let dest = tmp.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("x"), "x").unwrap();
    run(&["export", "--store", s(&source), "--out", s(&dest)])
        .assert_one_line_error(1, "not an empty directory");
}

#[test]
fn import_into_non_empty_store_is_refused_and_leaves_it_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    library_store(&source, &[put("a", b"1", 1)], 1);
    let artifact = tmp.path().join("artifact");
    run(&["export", "--store", s(&source), "--out", s(&artifact)]).ok();
    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "keep").unwrap();
    run(&["import", "--artifact", s(&artifact), "--store", s(&busy)])
        .assert_one_line_error(1, "not empty");
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);
}

#[test]
fn tampered_artifact_is_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    library_store(&source, &[put("a", b"value", 1)], 1);
    let artifact = tmp.path().join("artifact");
    run(&["export", "--store", s(&source), "--out", s(&artifact)]).ok();
    let log = artifact.join("data").join("snapshot.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&log, bytes).unwrap();
    let dest = tmp.path().join("dest");
    run(&["import", "--artifact", s(&artifact), "--store", s(&dest)])
        .assert_one_line_error(1, "invalid artifact");
    assert!(!dest.exists(), "a refused import leaves no store behind");
}

#[test]
fn import_of_a_non_artifact_is_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    run(&[
        "import",
        "--artifact",
        s(tmp.path()),
        "--store",
        s(&tmp.path().join("d")),
    ])
    .assert_one_line_error(1, "is not a slipstream artifact");
}

#[test]
fn import_of_a_system_directory_names_the_artifact_not_a_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("d");
    let r = run(&["import", "--artifact", "/etc", "--store", s(&dest)]);
    r.assert_one_line_error(1, "artifact \"/etc\": is not a slipstream artifact");
    assert!(!r.stderr.contains("store"), "{}", r.stderr);
    assert!(!dest.exists(), "a refused import leaves nothing behind");
}

#[test]
fn mirror_into_store_of_another_backend_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    library_store(&source, &[put("a", b"1", 1)], 1);
    let r = run(&[
        "mirror",
        "--server",
        "nats://127.0.0.1:1",
        "--bucket",
        "b",
        "--store",
        s(&source),
        "--backend",
        "fjall",
    ]);
    r.assert_one_line_error(1, "holds the append-log backend, not fjall");
}

#[test]
fn kv_against_unreachable_server_is_one_line_error() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let r = run(&[
        "kv",
        "--server",
        &url,
        "--timeout",
        "5",
        "--bucket",
        "b",
        "get",
        "k",
    ]);
    r.assert_one_line_error(1, "connect");
}

#[test]
fn invalid_rust_log_is_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let r: support::Run = support::slipstream()
        .env("RUST_LOG", "=[bad")
        .args(["dump", "--store", s(tmp.path())])
        .output()
        .unwrap()
        .into();
    r.assert_one_line_error(2, "RUST_LOG");
}

#[test]
fn missing_artifacts_directory_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(&[
        "mirror",
        "--server",
        "nats://127.0.0.1:1",
        "--bucket",
        "b",
        "--store",
        s(&tmp.path().join("store")),
        "--repair",
        "restore",
        "--artifacts",
        s(&tmp.path().join("missing")),
    ]);
    r.assert_one_line_error(2, "--artifacts");
}

#[test]
fn a_mirror_that_cannot_reach_its_server_leaves_no_store_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let r = run(&[
        "mirror",
        "--server",
        &url,
        "--bucket",
        "good",
        "--store",
        s(&store),
        "--timeout",
        "2",
    ]);
    r.assert_one_line_error(1, "connect");
    assert!(
        !store.exists(),
        "the failed run created {}",
        store.display()
    );
}

#[test]
fn a_mirror_with_an_invalid_bucket_name_leaves_no_store_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let r = run(&[
        "mirror",
        "--server",
        &url,
        "--bucket",
        "bad name!",
        "--store",
        s(&store),
    ]);
    r.assert_one_line_error(2, "bucket name \"bad name!\"");
    assert!(
        !store.exists(),
        "the refused run created {}",
        store.display()
    );
}

#[test]
fn fleet_flags_are_checked_before_anything_connects() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mirror = |extra: &[&str]| {
        let mut args = vec![
            "mirror",
            "--server",
            "nats://127.0.0.1:1",
            "--bucket",
            "b",
            "--store",
            s(&store),
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    // Exports need a destination: --export-to, or --artifacts.
    mirror(&["--export-every", "5m"]).assert_one_line_error(2, "--export-to");
    // A destination without a schedule, and durations that mean nothing.
    for extra in [
        &["--export-to", "nats://fleet"][..],
        &["--export-every", "0s", "--export-to", "nats://fleet"],
        &["--export-every", "5 weeks", "--export-to", "nats://fleet"],
        &["--artifacts", "nats://host:4222/fleet"],
        &["--artifacts", "nats://"],
        &["--keep-artifacts", "0", "--artifacts", "nats://fleet"],
    ] {
        let r = mirror(extra);
        assert_eq!(r.code, Some(2), "{extra:?}: {}", r.stderr);
    }
    assert!(!store.exists(), "no store directory for refused flags");
    // An object store needs the server status has no --server for.
    library_store(&store, &[put("a", b"1", 1)], 1);
    run(&[
        "status",
        "--store",
        s(&store),
        "--artifacts",
        "nats://fleet",
    ])
    .assert_one_line_error(2, "--server");
}

#[test]
fn status_shows_the_newest_artifact_in_a_directory_and_its_age() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    library_store(&source, &[put("a", b"1", 1), put("b", b"2", 2)], 2);
    let artifacts = tmp.path().join("artifacts");
    std::fs::create_dir(&artifacts).unwrap();
    let empty = run(&[
        "status",
        "--store",
        s(&source),
        "--artifacts",
        s(&artifacts),
    ])
    .ok();
    assert!(empty.contains("artifact                none in"), "{empty}");
    run(&[
        "export",
        "--store",
        s(&source),
        "--out",
        s(&artifacts.join("at-2")),
    ])
    .ok();
    let status = run(&[
        "status",
        "--store",
        s(&source),
        "--artifacts",
        s(&artifacts),
    ])
    .ok();
    assert!(
        status.contains("artifact                revision 2 in"),
        "{status}"
    );
    let age = status
        .lines()
        .find_map(|l| l.strip_prefix("artifact age"))
        .map(str::trim)
        .unwrap_or_default();
    assert!(age.ends_with(" s"), "just written: {status}");
    assert!(
        !status.contains("artifact bootstraps"),
        "that needs the live bucket: {status}"
    );
}
