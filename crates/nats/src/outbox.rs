//! The hand-over between a watch's driver and its reader.
//!
//! The driver (the consumer loop) runs inside the reader's `poll_next`, on
//! the reader's task, so a delivery costs no channel operation and no
//! cross-thread wakeup: on a two-core machine shared with the server those
//! cost more than decoding the message.

use core::future::poll_fn;
use core::task::Poll;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use slipstream_kv::{KvError, WatchEvent};

/// What a watch yields.
pub(crate) type Item = Result<WatchEvent, KvError>;

/// How many events the driver queues ahead of the reader before it stops
/// reading the inbox (flow control then pauses the server).
pub(crate) const BUFFER: usize = 256;

/// Events the driver produced and the reader has not taken yet. Shared by
/// the two halves of one watch, which always run on the same task, so the
/// lock is never contended.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outbox(Arc<Mutex<VecDeque<Item>>>);

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Item>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue `item`, first waiting for room.
    ///
    /// The wait registers no waker on purpose: a full outbox means the
    /// reader has events to return, and the reader polls the driver again
    /// only after it took them, which makes room.
    pub(crate) async fn send(&self, item: Item) {
        poll_fn(|_| {
            if self.lock().len() < BUFFER {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        self.lock().push_back(item);
    }

    /// Move everything queued into `into` (which the caller has emptied);
    /// false when nothing was queued.
    pub(crate) fn take_into(&self, into: &mut VecDeque<Item>) -> bool {
        let mut queued = self.lock();
        if queued.is_empty() {
            return false;
        }
        // Swapping keeps both buffers' allocations for the next round.
        core::mem::swap(&mut *queued, into);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn a_full_outbox_holds_the_sender_until_the_reader_takes_its_events() {
        let outbox = Outbox::default();
        for _ in 0..BUFFER {
            assert!(
                outbox
                    .send(Ok(WatchEvent::CaughtUp))
                    .now_or_never()
                    .is_some()
            );
        }
        assert!(
            outbox
                .send(Ok(WatchEvent::CaughtUp))
                .now_or_never()
                .is_none()
        );
        let mut taken = VecDeque::new();
        assert!(outbox.take_into(&mut taken));
        assert_eq!(taken.len(), BUFFER);
        assert!(
            outbox
                .send(Ok(WatchEvent::CaughtUp))
                .now_or_never()
                .is_some()
        );
        taken.clear();
        assert!(outbox.take_into(&mut taken));
        assert_eq!(taken.len(), 1);
        assert!(!outbox.take_into(&mut taken));
    }
}
