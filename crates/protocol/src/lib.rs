//! The protocol kernel of slipstream: every decision the protocol's
//! correctness rests on, as a pure function over `u64` ranks, `bool`s and
//! this crate's own small enums.
//!
//! No I/O, no async, no allocation, no dependencies. The engine calls these
//! functions; the stateright models call the very same functions, so a model
//! that finds no counterexample speaks about the code that runs. A rank is a
//! revision (a stream sequence); a cursor without a revision ranks 0.
//!
//! Each function is named after its rule in `docs/rules.md` (K1–K18; the
//! export lease's takeover rule belongs to A5).
//!
//! ```
//! use slipstream_protocol::{resume_start_sequence, resume_window_ok, FloorVerdict, floor_verdict};
//!
//! // A node applied everything up to revision 41. The stream now retains 42..
//! assert!(resume_window_ok(41, 42));
//! assert_eq!(resume_start_sequence(41), Some(42));
//! // Retention moved past 42: the resume would silently miss history.
//! assert!(!resume_window_ok(41, 43));
//! assert_eq!(floor_verdict(41, 43), FloorVerdict::Overrun);
//! ```

#![no_std]

mod artifact;
mod cursor;
mod lease;
mod repair;
mod resume;
mod watch;

pub use artifact::{PointerState, payload_prunable, pointer_publish_allowed};
pub use cursor::{is_replay, next_high_water};
pub use lease::{LeaseState, lease_takeover_allowed};
pub use repair::{
    Eviction, GapReading, ListingTruth, MassDeleteLimit, MassDeleteVerdict, RepairMode, RepairPlan,
    RestoreAction, cursorless_start_needs_repair, gap_holds_no_eviction, listing_is_truth,
    listing_truth, mass_delete_guard, plan_repair, quiet_for_repair, read_gap, restore_ahead,
    restore_allowed, restore_key,
};
pub use resume::{
    FloorVerdict, StreamStart, cursor_beyond_log, floor_verdict, gap_needs_floor_check,
    resume_start_sequence, resume_window_ok, stream_start,
};
pub use watch::{
    CaughtUpAction, CaughtUpVerdict, CaughtUpView, FloorConfirmation, GapAction, GapView,
    NextStart, caught_up_short, caught_up_verdict, checks_gaps, confirm_floor, gap_action,
    listed_put_needed, next_start, relist_floor, trusted_rank,
};
