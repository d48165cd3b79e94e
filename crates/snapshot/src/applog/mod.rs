//! The append-log store (S3): an in-memory fold backed by one append-only
//! log file, compacted when garbage dominates.

mod codec;
mod fold;
mod recovery;
mod store;

pub use codec::{MAX_KEY_LEN, MAX_VALUE_LEN};
pub use store::{AppendLogOptions, AppendLogStore, CompactionPolicy, LOG_FILE};
