//! When a LastPerSubject consumer has delivered every key in its scope.
//!
//! A key rewritten after the consumer was created loses its pending
//! message and shows up only later, with its rewrite; the server's pending
//! number reaches 0 before that. So a pending number of 0 (or an idle
//! heartbeat) is only a hint, checked against the scope's last message: if
//! nothing lies beyond what was delivered, every key was.
//!
//! While writes go on there may be no moment with nothing beyond. Past the
//! stream's last sequence read after creation (`every_message_after`) the
//! consumer delivers every retained message, so a key not delivered yet
//! has its latest message beyond the delivered one. Reading the last
//! sequence `L` at a delivery `d` there and then receiving every sequence
//! from `d + 1` to `L` without a gap delivers each such key. A gap (a
//! message removed before delivery) drops that window until the next hint.
//! Sequences are contiguous only on an unfiltered scope, so a filtered one
//! settles at its tail only.

use slipstream_kv::KvError;

use crate::store::NatsBucket;

/// When one consumer has caught up. A delta consumer (ByStartSequence)
/// delivers every retained message, so its pending number is exact; a
/// state-sync's is checked as above.
#[derive(Debug)]
pub(crate) struct Settle {
    /// Deliveries left by count, for reply subjects without a pending
    /// number.
    left: u64,
    /// `None` for a delta consumer.
    tail: Option<Tail>,
}

#[derive(Debug)]
struct Tail {
    all_scope: bool,
    every_message_after: u64,
    window: Option<Window>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    delivered: u64,
    target: u64,
}

/// What to do after a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Every key in scope was delivered.
    CaughtUp,
    /// Ask the server where the scope ends ([`Settle::check`]).
    Check,
    /// Go on reading.
    Wait,
}

impl Settle {
    /// For a delta consumer with `pending` messages at creation; an idle
    /// heartbeat means nothing is left for it.
    pub(crate) fn delta(pending: u64) -> Self {
        Self {
            left: pending,
            tail: None,
        }
    }

    /// For a state-sync consumer with `pending` messages at creation that
    /// delivers every retained message after `every_message_after`
    /// (`u64::MAX`: settle at the tail only).
    pub(crate) fn state_sync(pending: u64, all_scope: bool, every_message_after: u64) -> Self {
        Self {
            left: pending,
            tail: Some(Tail {
                all_scope,
                every_message_after,
                window: None,
            }),
        }
    }

    /// For a LastPerSubject consumer just created: reads the stream's last
    /// sequence.
    pub(crate) async fn after_creation(
        bucket: &NatsBucket,
        pending: u64,
        all_scope: bool,
    ) -> Result<Self, KvError> {
        let last = bucket.facts().await?.last_sequence;
        Ok(Self::state_sync(pending, all_scope, last))
    }

    /// The same check for a consumer re-created after `frontier` (`None`:
    /// before any delivery, a fresh LastPerSubject consumer).
    pub(crate) fn recreated(&self, pending: u64, frontier: Option<u64>) -> Self {
        match &self.tail {
            None => Self::delta(pending),
            Some(tail) => Self::state_sync(pending, tail.all_scope, frontier.unwrap_or(u64::MAX)),
        }
    }

    /// Whether nothing was pending at creation: caught up at once.
    pub(crate) fn nothing_pending(&self) -> bool {
        self.left == 0
    }

    /// After a delivery of `seq` with the reply's `pending` number;
    /// `more_waiting`: another data message already waits in the inbox.
    pub(crate) fn delivered(
        &mut self,
        seq: Option<u64>,
        pending: Option<u64>,
        more_waiting: bool,
    ) -> Next {
        self.left = self.left.saturating_sub(1);
        if self.closes_window(seq) {
            return Next::CaughtUp;
        }
        // Counting deliveries is not enough: a key rewritten after the
        // consumer was created loses its pending message, and a later
        // message takes its place in the count while the rewrite is still
        // to come. A backlog pushed at the tail says 0 on every message,
        // so the server is asked only once the inbox runs dry.
        let hint = match pending {
            Some(pending) => pending == 0,
            None => self.left == 0,
        };
        match (hint && !more_waiting, &self.tail) {
            (false, _) => Next::Wait,
            (true, None) => Next::CaughtUp,
            (true, Some(_)) => Next::Check,
        }
    }

    /// Whether the delivery of `seq` closed a window: every sequence up to
    /// its target received without a gap.
    fn closes_window(&mut self, seq: Option<u64>) -> bool {
        let Some(tail) = &mut self.tail else {
            return false;
        };
        let (Some(w), Some(seq)) = (tail.window, seq) else {
            return false;
        };
        let next = seq == w.delivered.saturating_add(1);
        if next && seq >= w.target {
            tail.window = None;
            return true;
        }
        tail.window = next.then_some(Window {
            delivered: seq,
            target: w.target,
        });
        false
    }

    /// At a hint, or an idle heartbeat: whether no message in scope lies
    /// beyond `delivered`. Otherwise opens a window where one can be
    /// proven.
    pub(crate) async fn check(
        &mut self,
        bucket: &NatsBucket,
        filters: &[String],
        delivered: u64,
    ) -> Result<bool, KvError> {
        let Some(tail) = &mut self.tail else {
            return Ok(true);
        };
        let Some(last) = last_beyond(bucket, filters, tail.all_scope, delivered).await? else {
            return Ok(true);
        };
        if tail.all_scope && tail.window.is_none() && delivered >= tail.every_message_after {
            tail.window = Some(Window {
                delivered,
                target: last,
            });
        }
        Ok(false)
    }
}

/// The sequence of the scope's last message if it lies beyond `delivered`.
async fn last_beyond(
    bucket: &NatsBucket,
    filters: &[String],
    all_scope: bool,
    delivered: u64,
) -> Result<Option<u64>, KvError> {
    let conn = &bucket.inner.conn;
    if all_scope {
        let facts = bucket.facts().await?;
        // A purged stream keeps its last sequence but holds nothing.
        let empty = facts.first_sequence > facts.last_sequence;
        if empty || facts.last_sequence <= delivered {
            return Ok(None);
        }
        // The last sequence may be a purged message. Only then ask for the
        // last one there is: a wildcard lookup the server pays per subject
        // (about 30 ms at 200 k keys).
        if conn
            .holds_message(&bucket.inner.stream, facts.last_sequence)
            .await?
        {
            return Ok(Some(facts.last_sequence));
        }
    }
    for filter in filters {
        let last = conn
            .last_sequence_matching(&bucket.inner.stream, filter)
            .await?;
        if let Some(last) = last.filter(|&l| l > delivered) {
            return Ok(Some(last));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windowed(delivered: u64, target: u64) -> Settle {
        let mut s = Settle::state_sync(100, true, 0);
        if let Some(tail) = &mut s.tail {
            tail.window = Some(Window { delivered, target });
        }
        s
    }

    #[test]
    fn a_window_closes_when_every_sequence_to_its_target_arrived() {
        let mut s = windowed(10, 13);
        assert_eq!(s.delivered(Some(11), Some(5), false), Next::Wait);
        assert_eq!(s.delivered(Some(12), Some(5), false), Next::Wait);
        assert_eq!(s.delivered(Some(13), Some(5), false), Next::CaughtUp);
    }

    #[test]
    fn a_gap_drops_the_window() {
        let mut s = windowed(10, 13);
        assert_eq!(s.delivered(Some(12), Some(5), false), Next::Wait);
        assert_eq!(s.delivered(Some(13), Some(5), false), Next::Wait);
    }

    #[test]
    fn a_state_sync_checks_at_a_dry_hint_and_a_delta_trusts_it() {
        let mut sync = Settle::state_sync(3, true, 0);
        assert_eq!(sync.delivered(Some(1), Some(0), true), Next::Wait);
        assert_eq!(sync.delivered(Some(2), Some(0), false), Next::Check);
        let mut delta = Settle::delta(3);
        assert_eq!(delta.delivered(Some(1), Some(0), true), Next::Wait);
        assert_eq!(delta.delivered(Some(2), Some(0), false), Next::CaughtUp);
    }

    #[test]
    fn without_a_pending_number_the_count_hints() {
        let mut delta = Settle::delta(2);
        assert_eq!(delta.delivered(Some(1), None, false), Next::Wait);
        assert_eq!(delta.delivered(Some(2), None, false), Next::CaughtUp);
    }
}
