//! The kill -9 crash harness (S7, O2).
//!
//! The test re-executes its own binary, filtered to itself, with an
//! environment variable that turns it into the child: the child opens the
//! store, applies batches of the deterministic log from the store's cursor
//! on, forever, and is killed with SIGKILL at a random moment. After each
//! kill the parent reopens the store and checks O2: the recovered fold is
//! exactly the replay of the log up to the recovered cursor, and the cursor
//! never moves backward (a killed process loses nothing it wrote to the
//! OS, with or without fsync).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use slipstream_kv::WatchCursor;

use super::{OptionsFor, dump, replay, update_at, updates};
use crate::error::SnapshotError;
use crate::store::{Durability, SnapshotStore};

/// Environment variable with the number of kills per test (default 10).
pub const CRASH_KILLS_ENV: &str = "SLIPSTREAM_CRASH_KILLS";
const CHILD_DIR_ENV: &str = "SLIPSTREAM_CRASH_CHILD_DIR";
const CHILD_SEED_ENV: &str = "SLIPSTREAM_CRASH_CHILD_SEED";
const READY: &str = "slipstream-crash-child: committed";
const KEYSPACE: u64 = 400;
/// A child orphaned by a dead parent stops by itself.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// Run the crash test for `S` under `durability`, or, when this process is
/// the re-executed child, be the child. `module_path` and `test_name` name
/// the calling test (`module_path!()` and the function's name) so the child
/// can be filtered to it.
///
/// # Panics
/// When O2 or cursor monotonicity fails, or the child cannot be run.
pub fn kill_nine_recovers_a_committed_prefix<S: SnapshotStore>(
    options: OptionsFor<S>,
    durability: Durability,
    module_path: &str,
    test_name: &str,
) {
    if let (Ok(dir), Ok(seed)) = (std::env::var(CHILD_DIR_ENV), std::env::var(CHILD_SEED_ENV)) {
        let seed = seed
            .parse()
            .unwrap_or_else(|e| panic!("bad seed {seed:?}: {e}"));
        run_child::<S>(Path::new(&dir), &options(durability), seed);
        return;
    }
    let kills: u32 = std::env::var(CRASH_KILLS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64);
    let filter = match module_path.split_once("::") {
        Some((_crate, rest)) => format!("{rest}::{test_name}"),
        None => test_name.to_owned(),
    };
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let dir = tmp.path().join("store");
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut oracle = BTreeMap::new();
    let mut recovered = 0u64;
    let stderr_path = tmp.path().join("child-stderr");
    for kill in 0..kills {
        let stderr = std::fs::File::create(&stderr_path)
            .unwrap_or_else(|e| panic!("create {stderr_path:?}: {e}"));
        let mut child = Command::new(&exe)
            .args([
                filter.as_str(),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, &dir)
            .env(CHILD_SEED_ENV, seed.to_string())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn child: {e}"));
        let stdout = child
            .stdout
            .take()
            .unwrap_or_else(|| panic!("child stdout"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) if l.contains(READY) => {
                        let _ = tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        // Mostly wait until the child has committed once, then let it run a
        // random while: the kill lands in apply, fsync or compaction. About
        // one kill in four does not wait, so some land in start-up and
        // recovery.
        let wait_for_commit = rng.random_range(0..4) != 0;
        if wait_for_commit && rx.recv_timeout(READY_DEADLINE).is_err() {
            let _ = child.kill();
            let status = child.wait();
            let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            panic!("seed {seed} kill {kill}: child never committed (status {status:?}):\n{log}");
        }
        // The delay is the fault's timing, not a synchronization.
        std::thread::sleep(Duration::from_micros(rng.random_range(0..40_000)));
        child.kill().unwrap_or_else(|e| panic!("kill child: {e}"));
        let _ = child.wait();

        let (cursor, store) = open_when_unlocked::<S>(&dir, &options(durability))
            .unwrap_or_else(|e| panic!("seed {seed} kill {kill}: reopen failed: {e}"));
        let at = cursor.revision().unwrap_or(0);
        assert!(
            at >= recovered,
            "seed {seed} kill {kill}: cursor moved backward from {recovered} to {at}"
        );
        if at > recovered {
            replay(&mut oracle, &updates(seed, recovered + 1, at, KEYSPACE));
        }
        recovered = at;
        assert_eq!(
            dump(&store),
            oracle,
            "seed {seed} kill {kill}: O2 violated: fold differs from the log replayed to {at}"
        );
        assert_eq!(store.len(), oracle.len() as u64);
        drop(store);
    }
    assert!(
        recovered > 0,
        "seed {seed}: no commit survived {kills} kills"
    );
}

/// Open, waiting out a lock held for an instant by a process that shares
/// the lock's file description between its fork and exec (the tests of one
/// binary spawn children concurrently).
fn open_when_unlocked<S: SnapshotStore>(
    dir: &Path,
    options: &S::Options,
) -> Result<(WatchCursor, S), SnapshotError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match S::open(dir, options) {
            Err(SnapshotError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            other => return other,
        }
    }
}

fn run_child<S: SnapshotStore>(dir: &Path, options: &S::Options, seed: u64) {
    let (cursor, mut store) =
        open_when_unlocked::<S>(dir, options).unwrap_or_else(|e| panic!("child: open failed: {e}"));
    let mut at = cursor.revision().unwrap_or(0);
    let mut rng = SmallRng::seed_from_u64(seed ^ at);
    let started = Instant::now();
    let mut announced = false;
    while started.elapsed() < CHILD_LIFETIME {
        let n = rng.random_range(0..=200u64);
        let batch: Vec<_> = (at + 1..=at + n)
            .map(|i| update_at(seed, i, KEYSPACE))
            .collect();
        store
            .apply(&batch, &WatchCursor::at(at + n))
            .unwrap_or_else(|e| panic!("child: apply failed: {e}"));
        at += n;
        if !announced {
            // The parent reads this line from the child's stdout.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{READY}").and_then(|()| out.flush());
            announced = true;
        }
    }
}
