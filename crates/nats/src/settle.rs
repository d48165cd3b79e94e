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

/// The catch-up check of one state-sync consumer.
#[derive(Debug)]
pub(crate) struct Settle {
    all_scope: bool,
    every_message_after: u64,
    window: Option<Window>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    delivered: u64,
    target: u64,
}

impl Settle {
    /// For a consumer that delivers every retained message after
    /// `every_message_after` (`u64::MAX`: settle at the tail only).
    pub(crate) fn new(all_scope: bool, every_message_after: u64) -> Self {
        Self {
            all_scope,
            every_message_after,
            window: None,
        }
    }

    /// For a LastPerSubject consumer just created: reads the stream's last
    /// sequence.
    pub(crate) async fn after_creation(
        bucket: &NatsBucket,
        all_scope: bool,
    ) -> Result<Self, KvError> {
        let last = bucket.facts().await?.last_sequence;
        Ok(Self::new(all_scope, last))
    }

    /// Whether the scope is unfiltered.
    pub(crate) fn all_scope(&self) -> bool {
        self.all_scope
    }

    /// After the delivery of `seq`: whether it closed a window, every
    /// sequence up to its target received without a gap.
    pub(crate) fn delivered(&mut self, seq: Option<u64>) -> bool {
        let (Some(w), Some(seq)) = (self.window, seq) else {
            return false;
        };
        let next = seq == w.delivered.saturating_add(1);
        if next && seq >= w.target {
            self.window = None;
            return true;
        }
        self.window = next.then_some(Window {
            delivered: seq,
            target: w.target,
        });
        false
    }

    /// At a hint: whether no message in scope lies beyond `delivered`.
    /// Otherwise opens a window where one can be proven.
    pub(crate) async fn check(
        &mut self,
        bucket: &NatsBucket,
        filters: &[String],
        delivered: u64,
    ) -> Result<bool, KvError> {
        let Some(last) = last_beyond(bucket, filters, self.all_scope, delivered).await? else {
            return Ok(true);
        };
        if self.all_scope && self.window.is_none() && delivered >= self.every_message_after {
            self.window = Some(Window {
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
        Settle {
            all_scope: true,
            every_message_after: 0,
            window: Some(Window { delivered, target }),
        }
    }

    #[test]
    fn a_window_closes_when_every_sequence_to_its_target_arrived() {
        let mut s = windowed(10, 13);
        assert!(!s.delivered(Some(11)));
        assert!(!s.delivered(Some(12)));
        assert!(s.delivered(Some(13)));
        assert!(s.window.is_none());
    }

    #[test]
    fn a_gap_drops_the_window() {
        let mut s = windowed(10, 13);
        assert!(!s.delivered(Some(12)));
        assert!(s.window.is_none());
        assert!(!s.delivered(Some(13)), "no window, no catch-up");
    }

    #[test]
    fn without_a_window_or_a_sequence_nothing_closes() {
        let mut s = Settle::new(true, 0);
        assert!(!s.delivered(Some(1)));
        let mut s = windowed(10, 11);
        assert!(!s.delivered(None));
    }
}
