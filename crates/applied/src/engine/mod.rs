//! The applied-watch engine, as parts that each own their state:
//!
//! - [`run`]: the [`Engine`], which opens watches and hands each to
//!   [`follow`] or a repair, and stops (E5);
//! - [`follow`]: one watch stream: the select loop and the checks a
//!   running watch makes (K4, K15, K17, K18, R7);
//! - [`fold`]: updates in, `apply`, the cursor, commits and what they
//!   report (E1–E4), over [`batch`] (the open batch and its window),
//!   [`commit`] (the store and the commit in flight) and [`cursor`] (the
//!   applied cursor and the next watch's start, K16);
//! - [`retention`]: what retention reads saw, and quiet (K11 generalised);
//! - [`repair`]: expiry handling and the relist and restore repairs (R1–R9),
//!   on a narrow context of the fold, the watcher and [`retention`];
//! - [`exports`]: export requests between flushes (E8); [`open`], opening
//!   a watch; [`timer`], the loop's timers.
//!
//! Dependencies point down this list's parts: none of them names the
//! engine or the loop.

mod batch;
mod commit;
mod cursor;
mod exports;
mod fold;
mod follow;
mod open;
mod repair;
mod retention;
mod run;
mod timer;

pub(crate) use run::Engine;
