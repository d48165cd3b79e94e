//! The application's side: `parse`, `apply` and `on_applied`, kept generic
//! so they are monomorphized into the engine.

use std::vec::Drain;

use slipstream_kv::{KvUpdate, WatchCursor};

/// The application's closures (architecture invariant 6: the engine owns
/// the loop, the application owns `parse` and `apply`).
///
/// - `parse` turns one update into the application's item, or rejects it
///   with `None`. A rejected update still counts toward the cursor and
///   still goes to the store: it is bucket state (E3).
/// - `apply` receives a batch of parsed items, in revision order. When it
///   returns, the engine may commit and report a cursor covering the batch.
///   It is never called with an empty batch. A panic in `apply` aborts the
///   watch: it unwinds through [`AppliedWatch::run`], nothing of the batch
///   is committed, and the next start re-delivers it (E10).
/// - `on_applied` is called with every cursor after it has been committed
///   (or, without a store, after `apply` returned); without a store the
///   caller persists it (E6).
///
/// [`AppliedWatch::run`]: crate::AppliedWatch::run
#[derive(Debug, Clone)]
pub struct Handlers<P, A, O> {
    pub(crate) parse: P,
    pub(crate) apply: A,
    pub(crate) on_applied: O,
}

/// The `on_applied` of [`handlers`]: does nothing.
pub type IgnoreApplied = fn(&WatchCursor);

fn ignore_applied(_: &WatchCursor) {}

/// Build [`Handlers`] from `parse` and `apply`; add `on_applied` with
/// [`Handlers::on_applied`].
pub fn handlers<T, P, A>(parse: P, apply: A) -> Handlers<P, A, IgnoreApplied>
where
    P: FnMut(&KvUpdate) -> Option<T>,
    A: FnMut(Drain<'_, T>),
{
    Handlers {
        parse,
        apply,
        on_applied: ignore_applied,
    }
}

impl<P, A, O> Handlers<P, A, O> {
    /// Call `f` with every committed cursor.
    pub fn on_applied<F>(self, f: F) -> Handlers<P, A, F>
    where
        F: FnMut(&WatchCursor),
    {
        Handlers {
            parse: self.parse,
            apply: self.apply,
            on_applied: f,
        }
    }
}
