//! The snapshot conformance kit (S7), run against the fjall store.

use slipstream_fjall::{FjallOptions, FjallStore};
use slipstream_snapshot::Durability;

fn options(durability: Durability) -> FjallOptions {
    FjallOptions::with_durability(durability)
}

slipstream_snapshot::snapshot_store_conformance!(FjallStore, options);
