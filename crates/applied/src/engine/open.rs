//! Opening a watch, bounded by the setup timeout, and which failures a
//! later attempt may not repeat.

use slipstream_kv::{ExpiryReason, KvError, KvWatcher, WatchStart};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::error::AppliedError;

/// The result of trying to open a watch.
pub(crate) enum Opened<St> {
    Stream(St),
    Shutdown,
    Expired(ExpiryReason),
    Failed(KvError),
}

/// Open a watch of the configured scope from `start`. A refused cursor is
/// `Expired`, a transient failure `Failed`; any other failure is an error.
pub(crate) async fn open_watch<W: KvWatcher>(
    watcher: &W,
    config: &Settings,
    shutdown: &CancellationToken,
    start: WatchStart,
) -> Result<Opened<W::WatchStream>, AppliedError> {
    let bound = config.timeouts.watch_setup;
    let setup = tokio::time::timeout(bound, watcher.watch(&config.scope, start));
    let outcome = tokio::select! {
        biased;
        () = shutdown.cancelled() => return Ok(Opened::Shutdown),
        r = setup => r,
    };
    match outcome {
        Err(_) => Ok(Opened::Failed(KvError::Timeout {
            operation: "watch setup".into(),
            after: bound,
        })),
        Ok(Ok(stream)) => Ok(Opened::Stream(stream)),
        Ok(Err(KvError::CursorExpired { reason })) => Ok(Opened::Expired(reason)),
        Ok(Err(e)) if is_transient(&e) => Ok(Opened::Failed(e)),
        Ok(Err(e)) => Err(AppliedError::Kv(e)),
    }
}

/// Failures a later attempt may not repeat.
pub(crate) fn is_transient(error: &KvError) -> bool {
    matches!(
        error,
        KvError::NotConnected
            | KvError::ConnectionFailed(_)
            | KvError::Watch(_)
            | KvError::OperationFailed(_)
            | KvError::Timeout { .. }
    )
}
