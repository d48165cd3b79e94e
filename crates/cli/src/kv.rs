//! `slipstream kv` (C5): small admin operations on a bucket.

use std::io::{IsTerminal, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use slipstream::kv::{Connection, KvReader, KvStore, KvUpdate, KvWatcher, KvWriter};
use slipstream::{WatchEvent, WatchStart};
use tokio_util::sync::CancellationToken;

use crate::error::CliError;
use crate::layout::scope_of;
use crate::server::ServerArgs;

/// The `kv` operations.
#[derive(Debug, Clone, clap::Subcommand)]
pub(crate) enum KvCommand {
    /// Print a key's value (raw bytes; a newline is added on a terminal).
    Get {
        /// The key.
        key: String,
    },
    /// Store a value; prints the new revision.
    Put {
        /// The key.
        key: String,
        /// The value (UTF-8 text).
        value: String,
    },
    /// Write a delete marker for a key.
    Del {
        /// The key.
        key: String,
    },
    /// List live keys, one a line, sorted.
    Keys {
        /// Only keys starting with this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Print every key's current value, then live changes, as JSON lines,
    /// until interrupted.
    Watch {
        /// Only keys starting with this prefix (repeatable).
        #[arg(long)]
        prefix: Vec<String>,
    },
}

/// The `kv` command's arguments.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct KvArgs {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    /// The bucket.
    #[arg(long, value_name = "NAME")]
    pub(crate) bucket: String,
    #[command(subcommand)]
    pub(crate) command: KvCommand,
}

/// One watched change, as a JSON line.
#[derive(Serialize)]
struct WatchLine<'a> {
    op: &'static str,
    key: &'a str,
    revision: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_b64: Option<String>,
}

/// Run a `kv` command.
pub(crate) async fn run(args: KvArgs, shutdown: CancellationToken) -> Result<(), CliError> {
    let conn = args.server.connect().await?;
    let result = run_on(&conn, &args, shutdown).await;
    let _ = conn.shutdown().await;
    result
}

async fn run_on(
    conn: &slipstream::NatsConnection,
    args: &KvArgs,
    shutdown: CancellationToken,
) -> Result<(), CliError> {
    let bucket = conn.store(&args.bucket).await?;
    let mut out = std::io::stdout().lock();
    match &args.command {
        KvCommand::Get { key } => {
            let value = bucket.reader().get(key).await?;
            let value = value.ok_or_else(|| CliError::KeyNotFound(key.clone()))?;
            out.write_all(&value).map_err(CliError::Output)?;
            if out.is_terminal() {
                out.write_all(b"\n").map_err(CliError::Output)?;
            }
        }
        KvCommand::Put { key, value } => {
            let revision = bucket
                .writer()
                .put(key, Bytes::copy_from_slice(value.as_bytes()))
                .await?;
            writeln!(out, "{revision}").map_err(CliError::Output)?;
        }
        KvCommand::Del { key } => {
            bucket.writer().delete(key).await?;
        }
        KvCommand::Keys { prefix } => {
            for key in bucket.reader().keys(prefix).await? {
                writeln!(out, "{key}").map_err(CliError::Output)?;
            }
        }
        KvCommand::Watch { prefix } => {
            let scope = scope_of((!prefix.is_empty()).then(|| prefix.clone()));
            let mut watch = bucket.watcher().watch(&scope, WatchStart::Relist).await?;
            loop {
                let event = tokio::select! {
                    () = shutdown.cancelled() => break,
                    event = watch.next() => event,
                };
                let Some(event) = event else { break };
                if let WatchEvent::Update(update) = event? {
                    print_update(&mut out, &update)?;
                }
            }
        }
    }
    out.flush().map_err(CliError::Output)
}

fn print_update(out: &mut impl Write, update: &KvUpdate) -> Result<(), CliError> {
    let (op, value_b64) = match update {
        KvUpdate::Put(e) => ("put", Some(STANDARD.encode(&e.value))),
        KvUpdate::Delete(_) => ("del", None),
        KvUpdate::Purge(_) => ("purge", None),
    };
    let line = WatchLine {
        op,
        key: update.key(),
        revision: update.revision(),
        value_b64,
    };
    serde_json::to_writer(&mut *out, &line).map_err(|e| CliError::Output(e.into()))?;
    out.write_all(b"\n")
        .and_then(|()| out.flush())
        .map_err(CliError::Output)
}
