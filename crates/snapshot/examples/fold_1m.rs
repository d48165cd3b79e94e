//! Fold 1 M keys (100-byte values, batches of 1,000, no fsync) into an
//! append-log store, then reopen, export and import it, printing each
//! step's time. Run it under `/usr/bin/time -v` for peak memory:
//!
//! `cargo run --release -p slipstream-snapshot --example fold_1m`
#![allow(clippy::print_stdout, reason = "an example reports on stdout")]

use std::time::Instant;

use bytes::Bytes;
use slipstream_kv::{KvEntry, KvUpdate, VersionToken, WatchCursor, WatchScope};
use slipstream_snapshot::{
    AppendLogOptions, AppendLogStore, Durability, SnapshotStore, import, import_open,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("store");
    let options = AppendLogOptions::with_durability(Durability::NoFsync);

    let start = Instant::now();
    let (_, mut store) = AppendLogStore::open(&dir, &options)?;
    let mut rev = 0;
    while rev < n {
        let end = (rev + 1_000).min(n);
        let batch: Vec<_> = (rev..end)
            .map(|i| {
                KvUpdate::Put(KvEntry {
                    key: format!("key.{i:07}"),
                    value: Bytes::from(vec![(i % 251) as u8; 100]),
                    version: VersionToken::from_u64(i + 1),
                    created: None,
                    expires: None,
                })
            })
            .collect();
        store.apply(&batch, &WatchCursor::at(end))?;
        rev = end;
    }
    let stats = store.stats();
    println!(
        "fold:   {n} keys in {:?} ({} live bytes, {} on disk); {}",
        start.elapsed(),
        stats.live_bytes,
        stats.disk_bytes,
        memory()
    );
    store.close()?;

    let start = Instant::now();
    let (cursor, mut store) = AppendLogStore::open(&dir, &options)?;
    println!("reopen: {:?} at {cursor:?}; {}", start.elapsed(), memory());

    let start = Instant::now();
    store.export_to(&tmp.path().join("artifact"), &WatchScope::All)?;
    println!("export: {:?}; {}", start.elapsed(), memory());
    drop(store);

    let start = Instant::now();
    import::<AppendLogStore>(
        &tmp.path().join("artifact"),
        &tmp.path().join("imported"),
        &options,
    )?;
    println!("import: {:?}; {}", start.elapsed(), memory());

    let start = Instant::now();
    let (_, imported) = AppendLogStore::open(&tmp.path().join("imported"), &options)?;
    println!("open the import: {:?}; {}", start.elapsed(), memory());
    drop(imported);

    // A new node's bootstrap: the verified import, opened in one pass.
    let start = Instant::now();
    let (_, opened) = import_open::<AppendLogStore>(
        &tmp.path().join("artifact"),
        &tmp.path().join("bootstrapped"),
        &options,
    )?;
    println!("import and open: {:?}; {}", start.elapsed(), memory());
    drop(opened);
    Ok(())
}

/// Current and peak resident memory, from `/proc/self/status` (Linux).
fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map_or("?".to_owned(), |l| l[name.len()..].trim().to_owned())
    };
    format!("RSS {}, peak {}", field("VmRSS:"), field("VmHWM:"))
}
