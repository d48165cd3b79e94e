//! The `slipstream` command line: mirror a NATS JetStream KV bucket into a
//! durable local fold (`mirror`), inspect it (`dump`, `status`), move it
//! between machines (`export`, `import`), and poke at a bucket (`kv`).
//!
//! Every error is one line on stderr and a non-zero exit: 2 for bad
//! arguments, 3 when the fold needs a repair this build cannot do, 1
//! otherwise. Logs go to stderr, filtered by `RUST_LOG`.

mod backend;
mod dump;
mod error;
mod fleet;
mod inspect;
mod kv;
mod layout;
mod metrics;
mod mirror;
mod progress;
mod server;
mod signals;
mod transfer;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use crate::backend::dispatch;
use crate::error::CliError;
use crate::layout::StoreDir;
use crate::server::ServerArgs;

/// Keep a durable, always-correct local copy of a NATS JetStream KV bucket.
#[derive(Debug, Parser)]
#[command(name = "slipstream", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Keep a durable fold of a bucket in a store directory, resuming after
    /// restarts; stops gracefully on SIGINT or SIGTERM.
    Mirror(mirror::MirrorArgs),
    /// Print a store's fold as JSON: {"cursor": N|null, "entries": [{"key",
    /// "revision", "value_b64"}]}, sorted by key.
    Dump {
        /// The store directory.
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
        /// Only keys starting with this prefix.
        #[arg(long, value_name = "P", default_value = "")]
        prefix: String,
    },
    /// Show a store's cursor, key count, backend and memo; with --server,
    /// also its lag behind the live bucket.
    Status {
        /// The store directory.
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
        /// The NATS server URL, to compare against the live bucket.
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// The bucket (default: the one the store records).
        #[arg(long, value_name = "NAME", requires = "server")]
        bucket: Option<String>,
        /// Also show the newest artifact there (a directory, or
        /// `nats://BUCKET` with --server): its revision, its age, and
        /// whether a new node could start from it.
        #[arg(long, value_name = "DIR|nats://BUCKET")]
        artifacts: Option<fleet::ArtifactsArg>,
        /// Bound on every server round-trip, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout: u64,
    },
    /// Export a store's last commit as a verified artifact directory.
    Export {
        /// The store directory (not in use by a running mirror).
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
        /// The artifact's destination (must not exist, or be empty).
        #[arg(long, value_name = "ARTIFACT")]
        out: PathBuf,
    },
    /// Create a store from an artifact, verifying every file first.
    Import {
        /// The artifact directory.
        #[arg(long, value_name = "ARTIFACT")]
        artifact: PathBuf,
        /// The new store directory (must not exist, or be empty).
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
    },
    /// Read, write and watch a bucket.
    Kv(kv::KvArgs),
}

fn main() -> ExitCode {
    // clap prints its own usage errors and exits 2.
    let cli = Cli::parse();
    // A mirror narrates its progress; the one-shot commands stay quiet.
    let default_filter = match cli.command {
        Command::Mirror(_) => "warn,slipstream=info",
        _ => "warn",
    };
    let outcome = init_logging(default_filter).and_then(|()| execute(cli));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped early (`| head`) is not a failure.
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the error's text holds.
            let line = e.to_string().replace(['\n', '\r'], " ");
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "slipstream: error: {line}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (`default` when unset).
fn init_logging(default: &str) -> Result<(), CliError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => Targets::from_str(&spec)
            .map_err(|e| CliError::Usage(format!("RUST_LOG={spec:?}: {e}")))?,
        _ => Targets::from_str(default)
            .map_err(|e| CliError::Usage(format!("default log filter: {e}")))?,
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(|| progress::LogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // A subscriber set earlier (never, in the binary) is left in place.
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
    Ok(())
}

/// The async runtime for commands that talk to a server.
///
/// # Errors
/// When the runtime cannot start.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::io("start the async runtime", "", e))
}

fn execute(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Mirror(args) => mirror::run(args),
        Command::Dump { store, prefix } => {
            let dir = StoreDir::open(&store)?;
            let out = std::io::BufWriter::new(std::io::stdout().lock());
            dispatch(
                dir.backend,
                &dir.fold,
                dump::Dump {
                    prefix: &prefix,
                    out,
                },
            )
        }
        Command::Status {
            store,
            server,
            bucket,
            artifacts,
            timeout,
        } => status(&store, server, bucket, artifacts, timeout),
        Command::Export { store, out } => {
            let dir = StoreDir::open(&store)?;
            let scope = dir.scope();
            let manifest = dispatch(
                dir.backend,
                &dir.fold,
                transfer::Export {
                    out: out.clone(),
                    scope,
                },
            )?;
            tracing::info!(
                artifact = %out.display(),
                cursor = ?manifest.cursor.revision(),
                files = manifest.files.len(),
                "exported"
            );
            Ok(())
        }
        Command::Import { artifact, store } => {
            let spinner = progress::add(indicatif::ProgressBar::new_spinner());
            spinner.set_message("verifying and importing the artifact");
            spinner.enable_steady_tick(std::time::Duration::from_millis(120));
            let imported = transfer::import_store(&artifact, &store);
            spinner.finish_and_clear();
            let (manifest, dir) = imported?;
            tracing::info!(
                store = %dir.root.display(),
                backend = %manifest.backend_label(),
                cursor = ?manifest.cursor.revision(),
                "imported"
            );
            Ok(())
        }
        Command::Kv(args) => {
            let shutdown = CancellationToken::new();
            runtime()?.block_on(async {
                signals::cancel_on_signal(shutdown.clone());
                kv::run(args, shutdown).await
            })
        }
    }
}

fn status(
    store: &std::path::Path,
    server: Option<String>,
    bucket: Option<String>,
    artifacts: Option<fleet::ArtifactsArg>,
    timeout: u64,
) -> Result<(), CliError> {
    let dir = StoreDir::open(store)?;
    let info = dispatch(dir.backend, &dir.fold, inspect::ReadInfo)?;
    let bucket = bucket.or_else(|| dir.marker.as_ref().and_then(|m| m.bucket.clone()));
    if server.is_none() && matches!(artifacts, Some(fleet::ArtifactsArg::ObjectStore(_))) {
        return Err(CliError::Usage(
            "--artifacts nats://BUCKET needs --server".into(),
        ));
    }
    let (live, newest) = match (server, artifacts) {
        (None, None) => (None, None),
        (server, artifacts) => {
            let name = match bucket.clone() {
                Some(name) => name,
                None if server.is_none() => String::new(),
                None => {
                    return Err(CliError::Usage(
                        "the store records no bucket: pass --bucket NAME".into(),
                    ));
                }
            };
            let args = server.map(|url| ServerArgs {
                server: url,
                timeout,
            });
            runtime()?.block_on(inspect::read_live(
                args.as_ref(),
                &name,
                &dir,
                info.backend,
                artifacts.as_ref(),
            ))?
        }
    };
    let text = inspect::render(
        &dir,
        &info,
        bucket.as_deref(),
        live.as_ref(),
        newest.as_ref(),
    );
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(CliError::Output)
}
