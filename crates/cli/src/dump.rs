//! `slipstream dump` (C3): the fold as one JSON object, sorted by key.

use core::ops::ControlFlow;
use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use slipstream::SnapshotStore;

use crate::backend::{WithStore, open_store};
use crate::error::CliError;

/// One entry of the dump, in C3's field order.
#[derive(Serialize)]
struct DumpEntry<'a> {
    key: &'a str,
    /// `null` only for an entry stored without a revision (never from a
    /// server delivery).
    revision: Option<u64>,
    value_b64: String,
}

/// Dump the store's entries under `prefix` to `out`.
pub(crate) struct Dump<'a, W> {
    /// Only keys starting with this.
    pub(crate) prefix: &'a str,
    /// Where the JSON goes.
    pub(crate) out: W,
}

impl<W: Write> WithStore for Dump<'_, W> {
    type Output = ();

    fn run<S: SnapshotStore>(mut self, fold: &Path) -> Result<(), CliError> {
        let store: S = open_store(fold)?;
        let out = &mut self.out;
        let cursor = store.cursor().revision();
        // Written piece by piece so a large fold never sits in memory twice.
        let head = serde_json::to_string(&cursor).map_err(|e| CliError::Output(e.into()))?;
        write!(out, "{{\"cursor\":{head},\"entries\":[").map_err(CliError::Output)?;
        let mut first = true;
        let mut failed = None;
        // An entry past its per-message expiry is gone from the bucket; a
        // stopped node's fold still holds it until the mirror next runs.
        let now = slipstream::Timestamp::now();
        store.for_each_in_range(self.prefix, &mut |key, entry| {
            if entry.is_expired_at(now) {
                return ControlFlow::Continue(());
            }
            let item = DumpEntry {
                key,
                revision: entry.version.as_u64(),
                value_b64: STANDARD.encode(entry.value),
            };
            let sep: &[u8] = if first { b"" } else { b"," };
            first = false;
            let written = out
                .write_all(sep)
                .and_then(|()| serde_json::to_writer(&mut *out, &item).map_err(Into::into));
            match written {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    failed = Some(e);
                    ControlFlow::Break(())
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(CliError::Output(e));
        }
        out.write_all(b"]}\n")
            .and_then(|()| out.flush())
            .map_err(CliError::Output)?;
        store.close()?;
        Ok(())
    }
}
