//! The snapshot conformance kit (S7), run against the RocksDB store.

use slipstream_rocksdb::{RocksDbOptions, RocksDbStore};
use slipstream_snapshot::Durability;

fn options(durability: Durability) -> RocksDbOptions {
    RocksDbOptions::with_durability(durability)
}

slipstream_snapshot::snapshot_store_conformance!(RocksDbStore, options);
