//! Keep a local copy of a NATS KV bucket in an append-log store, with the
//! application's own in-memory view updated batch by batch, until Ctrl-C.
//!
//! ```sh
//! cargo run -p slipstream --example mirror -- nats://127.0.0.1:4222 config ./config-fold
//! ```
//!
//! Run it twice: the second start resumes from the store's cursor and
//! receives only what changed in between.

#![allow(clippy::print_stderr, reason = "an example reports on its terminal")]

use std::collections::BTreeMap;

use slipstream::{
    AppendLogOptions, AppendLogStore, AppliedConfig, AppliedWatch, Connection, KvStore, KvUpdate,
    NatsConfig, NatsConnection, SnapshotStore, WatchScope, handlers,
};
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let bucket_name = args.next().unwrap_or_else(|| "config".into());
    let dir = args.next().unwrap_or_else(|| "./config-fold".into());

    let connection = NatsConnection::new(NatsConfig::new(url));
    connection.connect().await?;
    let bucket = connection.store(&bucket_name).await?;

    // The store remembers the cursor: a restart resumes after it.
    let (cursor, store) = AppendLogStore::open(dir.as_ref(), &AppendLogOptions::default())?;
    eprintln!(
        "resuming after {:?} with {} keys",
        cursor.revision(),
        store.len()
    );

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::signal::ctrl_c().await.ok();
        stop.cancel();
    });

    let config = AppliedConfig::new(WatchScope::All)
        .store(store)
        .shutdown(shutdown);
    let watch = AppliedWatch::new(bucket.watcher(), config);

    // The application's view: whatever it needs, here key -> UTF-8 value.
    let mut routes: BTreeMap<String, Option<String>> = BTreeMap::new();
    let parse = |update: &KvUpdate| -> Option<(String, Option<String>)> {
        match update {
            KvUpdate::Put(entry) => Some((
                entry.key.clone(),
                Some(String::from_utf8_lossy(&entry.value).into_owned()),
            )),
            KvUpdate::Delete(marker) | KvUpdate::Purge(marker) => Some((marker.key.clone(), None)),
        }
    };
    let apply = |batch: std::vec::Drain<'_, (String, Option<String>)>| {
        for (key, value) in batch {
            match value {
                Some(value) => routes.insert(key, Some(value)),
                None => routes.remove(&key),
            };
        }
    };
    let finished = watch
        .run_and_close(handlers(parse, apply).on_applied(|cursor| {
            eprintln!("applied through {:?}", cursor.revision());
        }))
        .await?;
    eprintln!(
        "stopped at {:?} ({} keys in the application's view)",
        finished.cursor.revision(),
        routes.len()
    );
    connection.shutdown().await?;
    Ok(())
}
