//! The append-log store runs the whole store conformance kit, with a small
//! compaction threshold so compactions happen (and get killed) in the
//! crash tests too.

use slipstream_snapshot::{AppendLogOptions, AppendLogStore, CompactionPolicy, Durability};

fn options(durability: Durability) -> AppendLogOptions {
    AppendLogOptions {
        durability,
        compaction: CompactionPolicy {
            min_file_bytes: 64 << 10,
            max_size_ratio: 2,
        },
    }
}

mod append_log {
    use super::{AppendLogStore, options};

    slipstream_snapshot::snapshot_store_conformance!(AppendLogStore, options);
}
