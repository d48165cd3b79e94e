//! The simulated server: buckets, shared state, admin and fault hooks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Duration;

use slipstream_kv::{
    BucketIdentity, DiscardPolicy, KvError, Retention, StoreConfig, Timestamp, WatchScope,
};

use crate::bucket::{Bucket, BucketLimits, RawMessage, StreamInfo};
use crate::clock::ManualClock;
use crate::consumer::{DeliverPolicy, RawConsumer};
use crate::store::MemoryConnection;

/// Everything behind the server's one lock.
#[derive(Debug, Default)]
pub(crate) struct State {
    buckets: BTreeMap<String, Bucket>,
    next_incarnation: u64,
    last_identity_nanos: u64,
    fail_next: u64,
    /// Watches created before this epoch end with `kill_error`.
    pub(crate) kill_epoch: u64,
    pub(crate) kill_error: Option<KvError>,
    pub(crate) stalled: bool,
    next_consumer_id: u64,
    wakers: BTreeMap<u64, Waker>,
    /// Something watches may care about changed since they were last woken.
    dirty: bool,
}

impl State {
    /// The bucket, with expired messages already removed.
    pub(crate) fn bucket(&mut self, name: &str, now: Timestamp) -> Result<&mut Bucket, KvError> {
        let bucket = self
            .buckets
            .get_mut(name)
            .ok_or_else(|| KvError::BucketNotFound {
                bucket: name.to_owned(),
            })?;
        if bucket.expire(now) {
            self.dirty = true;
        }
        Ok(bucket)
    }

    pub(crate) fn has_bucket(&self, name: &str) -> bool {
        self.buckets.contains_key(name)
    }

    pub(crate) fn create_bucket(&mut self, config: &StoreConfig, now: Timestamp) {
        // Identities stay distinct even when the clock did not move between
        // a delete and a recreate.
        let created = now
            .as_unix_nanos()
            .max(self.last_identity_nanos.saturating_add(1));
        self.last_identity_nanos = created;
        self.next_incarnation += 1;
        let identity = BucketIdentity {
            stream: format!("KV_{}", config.name),
            created: Timestamp::from_unix_nanos(created),
        };
        let bucket = Bucket::new(
            BucketLimits::from_config(config),
            identity,
            self.next_incarnation,
        );
        self.buckets.insert(config.name.clone(), bucket);
        self.dirty = true;
    }

    pub(crate) fn mark_changed(&mut self) {
        self.dirty = true;
    }

    pub(crate) fn new_consumer_id(&mut self) -> u64 {
        self.next_consumer_id += 1;
        self.next_consumer_id
    }

    pub(crate) fn register(&mut self, id: u64, waker: &Waker) {
        match self.wakers.get(&id) {
            Some(w) if w.will_wake(waker) => {}
            _ => {
                self.wakers.insert(id, waker.clone());
            }
        }
    }

    pub(crate) fn unregister(&mut self, id: u64) {
        self.wakers.remove(&id);
    }

    fn take_fault(&mut self) -> Result<(), KvError> {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            return Err(KvError::OperationFailed("injected fault".into()));
        }
        Ok(())
    }
}

/// The state and clock every handle shares.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) clock: ManualClock,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation of `State` completes before it can panic-free
        // return; a poisoned lock only follows a bug elsewhere in a test.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Run a server-side operation; wake watches if it changed anything.
    pub(crate) fn admin<R>(
        &self,
        f: impl FnOnce(&mut State, Timestamp) -> Result<R, KvError>,
    ) -> Result<R, KvError> {
        let now = self.clock.now();
        let mut state = self.lock();
        let out = f(&mut state, now);
        Self::release(state);
        out
    }

    /// Run a client operation: it may be failed by an injected fault.
    pub(crate) fn client<R>(
        &self,
        f: impl FnOnce(&mut State, Timestamp) -> Result<R, KvError>,
    ) -> Result<R, KvError> {
        self.admin(|state, now| {
            state.take_fault()?;
            f(state, now)
        })
    }

    /// Drop the lock, then wake every parked watch if the state changed.
    pub(crate) fn release(mut state: MutexGuard<'_, State>) {
        if !state.dirty {
            return;
        }
        state.dirty = false;
        let wakers = std::mem::take(&mut state.wakers);
        drop(state);
        wakers.into_values().for_each(Waker::wake);
    }

    pub(crate) fn wake_all(&self) {
        let mut state = self.lock();
        state.dirty = true;
        Self::release(state);
    }
}

/// An in-process JetStream KV server with a manual clock.
///
/// Cloning shares the server. Clients reach it through
/// [`MemoryServer::connection`]; tests reach behind the client API through
/// [`MemoryServer::bucket`] (admin operations) and [`MemoryServer::faults`].
#[derive(Debug, Clone)]
pub struct MemoryServer {
    shared: Arc<Shared>,
}

impl Default for MemoryServer {
    fn default() -> Self {
        Self::with_clock(ManualClock::new())
    }
}

impl MemoryServer {
    /// A server with its own [`ManualClock`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A server on a clock the caller controls.
    #[must_use]
    pub fn with_clock(clock: ManualClock) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                clock,
            }),
        }
    }

    /// The server's clock.
    #[must_use]
    pub fn clock(&self) -> &ManualClock {
        &self.shared.clock
    }

    /// A new client connection (not yet connected).
    #[must_use]
    pub fn connection(&self) -> MemoryConnection {
        MemoryConnection::new(Arc::clone(&self.shared))
    }

    /// Admin access to the bucket called `name` (it need not exist yet).
    #[must_use]
    pub fn bucket(&self, name: &str) -> BucketAdmin {
        BucketAdmin {
            shared: Arc::clone(&self.shared),
            name: name.to_owned(),
        }
    }

    /// The fault hooks.
    #[must_use]
    pub fn faults(&self) -> Faults {
        Faults {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Server-side operations on one bucket, beneath the client API: never
/// failed by injected faults, independent of any connection.
#[derive(Debug, Clone)]
pub struct BucketAdmin {
    shared: Arc<Shared>,
    name: String,
}

impl BucketAdmin {
    /// The bucket's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the bucket exists.
    #[must_use]
    pub fn exists(&self) -> bool {
        self.shared.lock().has_bucket(&self.name)
    }

    fn read<R>(&self, f: impl FnOnce(&Bucket, Timestamp) -> R) -> Result<R, KvError> {
        self.shared
            .admin(|state, now| Ok(f(state.bucket(&self.name, now)?, now)))
    }

    fn modify<R>(&self, f: impl FnOnce(&mut Bucket, Timestamp) -> R) -> Result<R, KvError> {
        self.shared.admin(|state, now| {
            let out = f(state.bucket(&self.name, now)?, now);
            state.mark_changed();
            Ok(out)
        })
    }

    /// Stream state: first and last sequence, counts, identity.
    ///
    /// # Errors
    /// [`KvError::BucketNotFound`].
    pub fn info(&self) -> Result<StreamInfo, KvError> {
        self.read(|b, _| b.info())
    }

    /// Retention as [`slipstream_kv::KvWatcher::retention`] reports it.
    ///
    /// # Errors
    /// [`KvError::BucketNotFound`].
    pub fn retention(&self) -> Result<Retention, KvError> {
        self.read(|b, now| b.retention(now))
    }

    /// The bucket's current limits.
    ///
    /// # Errors
    /// [`KvError::BucketNotFound`].
    pub fn limits(&self) -> Result<BucketLimits, KvError> {
        self.read(|b, _| b.limits.clone())
    }

    /// Change the limits, as a stream config update does: tightened
    /// discard-old limits evict from the head at once. `history` applies to
    /// later writes.
    ///
    /// # Errors
    /// [`KvError::BucketNotFound`]; [`KvError::InvalidConfig`] for a history
    /// outside 1–64.
    pub fn set_limits(&self, limits: BucketLimits) -> Result<(), KvError> {
        if !(1..=64).contains(&limits.history) {
            return Err(KvError::InvalidConfig("history must be 1-64".into()));
        }
        self.modify(|b, now| {
            b.limits = limits;
            b.enforce_limits();
            b.expire(now);
        })
    }

    /// Set `max_msgs` (see [`BucketAdmin::set_limits`]).
    ///
    /// # Errors
    /// [`KvError::BucketNotFound`].
    pub fn set_max_msgs(&self, max_msgs: Option<u64>) -> Result<(), KvError> {
        let mut limits = self.limits()?;
        limits.max_msgs = max_msgs;
        self.set_limits(limits)
    }

    /// Set `max_bytes` (see [`BucketAdmin::set_limits`]).
    ///
    /// # Errors
    /// [`KvError::BucketNotFound`].
    pub fn set_max_bytes(&self, max_bytes: Option<u64>) -> Result<(), KvError> {
        let mut limits = self.limits()?;
        limits.max_bytes = max_bytes;
        self.set_limits(limits)
    }

    /// Set `max_age` (see [`BucketAdmin::set_limits`]).
    ///
    /// # Errors
    /// [`KvError::BucketNotFound`].
    pub fn set_max_age(&self, max_age: Option<Duration>) -> Result<(), KvError> {
        let mut limits = self.limits()?;
        limits.max_age = max_age;
        self.set_limits(limits)
    }

    /// Set the discard policy (see [`BucketAdmin::set_limits`]).
    ///
    /// # Errors
    /// [`KvError::BucketNotFound`].
    pub fn set_discard(&self, discard: DiscardPolicy) -> Result<(), KvError> {
        let mut limits = self.limits()?;
        limits.discard = discard;
        self.set_limits(limits)
    }

    /// Purge the key's subject entirely: every message of the key, markers
    /// included, is removed and nothing is left in its place. Returns how
    /// many messages were removed.
    ///
    /// # Errors
    /// [`KvError::BucketNotFound`].
    pub fn purge_subject(&self, key: &str) -> Result<u64, KvError> {
        self.modify(|b, _| b.purge_subject(key))
    }

    /// Purge every message below sequence `seq` (a stream purge with a
    /// sequence). Returns how many messages were removed.
    ///
    /// # Errors
    /// [`KvError::BucketNotFound`].
    pub fn purge_below(&self, seq: u64) -> Result<u64, KvError> {
        self.modify(|b, _| b.purge_below(seq))
    }

    /// Delete the bucket. Its watches end with an error; a later
    /// `store_with_config` creates a new incarnation with a new identity.
    ///
    /// # Errors
    /// [`KvError::BucketNotFound`].
    pub fn delete(&self) -> Result<(), KvError> {
        self.shared.admin(|state, _| {
            state
                .buckets
                .remove(&self.name)
                .map(|_| state.mark_changed())
                .ok_or_else(|| KvError::BucketNotFound {
                    bucket: self.name.clone(),
                })
        })
    }

    /// Every retained message, in sequence order.
    ///
    /// # Errors
    /// [`KvError::BucketNotFound`].
    pub fn messages(&self) -> Result<Vec<RawMessage>, KvError> {
        self.read(|b, _| b.messages().cloned().collect())
    }

    /// A raw consumer, as the server creates one: a start below the first
    /// sequence is silently clamped to the first retained message, a start
    /// of 0 is refused, a start beyond the last sequence waits.
    ///
    /// # Errors
    /// [`KvError::BucketNotFound`]; [`KvError::InvalidKey`] for an invalid
    /// scope; [`KvError::Watch`] for `ByStartSequence(0)`.
    pub fn raw_consumer(
        &self,
        scope: &WatchScope,
        policy: DeliverPolicy,
    ) -> Result<RawConsumer, KvError> {
        scope.validate()?;
        let shared = Arc::clone(&self.shared);
        self.shared.admin(|state, now| {
            RawConsumer::create(shared, state, now, &self.name, scope.clone(), policy)
        })
    }
}

/// Fault hooks (M4). The simulator never reorders messages.
#[derive(Debug, Clone)]
pub struct Faults {
    shared: Arc<Shared>,
}

impl Faults {
    /// Fail the next `n` client operations (reads, writes, watch and store
    /// calls, retention reads) with [`KvError::OperationFailed`].
    pub fn fail_next(&self, n: u64) {
        self.shared.lock().fail_next = n;
    }

    /// End every watch and raw consumer that exists now with `error` (they
    /// yield it once, then end). Later watches are unaffected.
    pub fn end_watches(&self, error: KvError) {
        let mut state = self.shared.lock();
        state.kill_epoch += 1;
        state.kill_error = Some(error);
        state.mark_changed();
        Shared::release(state);
    }

    /// Make every watch pending until [`Faults::release_watches`].
    pub fn stall_watches(&self) {
        self.shared.lock().stalled = true;
    }

    /// Let stalled watches continue.
    pub fn release_watches(&self) {
        let mut state = self.shared.lock();
        state.stalled = false;
        state.mark_changed();
        Shared::release(state);
    }
}
