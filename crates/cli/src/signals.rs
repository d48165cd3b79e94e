//! SIGINT / SIGTERM: the first asks for a graceful stop (flush, exit 0); a
//! second SIGINT exits at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancel `token` on the first SIGINT or SIGTERM.
pub(crate) fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::warn!("cannot install signal handlers; stop with SIGKILL");
            return;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            () = token.cancelled() => return,
        };
        tracing::info!("{name} received: flushing and stopping (SIGINT again to exit at once)");
        token.cancel();
        if int.recv().await.is_some() {
            tracing::warn!("second SIGINT: exiting without flushing");
            std::process::exit(130);
        }
    });
}
