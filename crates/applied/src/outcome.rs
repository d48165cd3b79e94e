//! How a watch ends: a clean stop and its reason, or an error, with the
//! store handed back (E5, E7).

use slipstream_kv::WatchCursor;

use crate::error::AppliedError;

/// Why a watch stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The shutdown token was cancelled.
    Shutdown,
    /// The watch stream ended.
    EndOfStream,
}

/// A watch that stopped cleanly, after flushing its pending batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// The last cursor reported to `on_applied` (with a store: the store's
    /// committed cursor). Resume from here.
    pub cursor: WatchCursor,
    /// Why it stopped.
    pub reason: StopReason,
}

/// How [`AppliedWatch::run`] ended: the outcome, and the store handed back
/// intact so the caller can resume in process.
#[derive(Debug)]
pub struct Finished<S> {
    /// A clean stop, or why the watch failed.
    pub result: Result<Stopped, AppliedError>,
    /// The store, holding its last committed (data, cursor); `None` only
    /// when a blocking store task panicked with it.
    pub store: Option<S>,
    /// The last reported cursor, also on failure.
    pub cursor: WatchCursor,
}
