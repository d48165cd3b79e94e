//! Running the `slipstream` binary and building stores for its tests.

// Shared by several test binaries, each using a part; a failed expectation
// is a test failure.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use bytes::Bytes;
use slipstream::{
    AppendLogOptions, AppendLogStore, KvEntry, KvUpdate, SnapshotStore, WatchCursor,
    kv::VersionToken,
};

/// What a run of the binary left behind.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Assert a failure reported as exactly one readable line.
    pub fn assert_one_line_error(&self, code: i32, needle: &str) {
        assert_eq!(self.code, Some(code), "exit code; stderr: {}", self.stderr);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "stderr must be one line: {:?}", self.stderr);
        assert!(
            lines[0].starts_with("slipstream: error: "),
            "not an error line: {:?}",
            lines[0]
        );
        assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
    }

    /// Assert success and return stdout.
    pub fn ok(self) -> String {
        assert_eq!(self.code, Some(0), "stderr: {}", self.stderr);
        self.stdout
    }
}

/// The binary, with logs quiet unless a test asks.
pub fn slipstream() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_slipstream"));
    cmd.env("RUST_LOG", "warn").env_remove("NATS_URL");
    cmd
}

/// Run the binary with `args` to completion.
pub fn run(args: &[&str]) -> Run {
    slipstream()
        .args(args)
        .output()
        .expect("the binary runs")
        .into()
}

/// A put update.
pub fn put(key: &str, value: &[u8], revision: u64) -> KvUpdate {
    KvUpdate::Put(KvEntry {
        key: key.into(),
        value: Bytes::copy_from_slice(value),
        version: VersionToken::from_u64(revision),
        created: None,
        expires: None,
    })
}

/// A bare append-log store (as a library would leave it) holding
/// `updates`, committed at `cursor`.
pub fn library_store(dir: &Path, updates: &[KvUpdate], cursor: u64) {
    let (_, mut store) = AppendLogStore::open(dir, &AppendLogOptions::default()).unwrap();
    store.apply(updates, &WatchCursor::at(cursor)).unwrap();
    store.close().unwrap();
}

/// Path as `&str` for argument lists.
pub fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}
