//! Watchers wrapping a simulated bucket for the repair tests: hooks run
//! around state-sync watches and retention reads ([`Hooked`]), a look into
//! the scratch directory ([`ScratchProbe`]), a purge while a listing runs
//! ([`PurgeMidListing`]), and counted listings ([`Counted`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use slipstream_applied::{Phase, StatusReceiver};
use slipstream_kv::{
    ExpiryReason, KvError, KvStore, KvWatcher, KvWriter, Retention, StoreConfig, WatchEvent,
    WatchScope, WatchStart,
};
use slipstream_memory::{MemoryServer, MemoryStore, MemoryWatch};

use super::node::{bucket_with, put};

/// What a [`Hooked`] watcher does besides watching the bucket.
pub enum Hook {
    /// Write `key` right before the `n`th state-sync watch opens: a key
    /// recreated between the listing and the re-list.
    RecreateBeforeRelist { n: usize, key: &'static str },
    /// Delete the bucket, create it again and write `key` in it right
    /// before the `n`th state-sync watch opens.
    RecreateBucketBeforeRelist {
        n: usize,
        server: MemoryServer,
        key: &'static str,
    },
    /// Right before the `n`th state-sync watch opens, delete `delete`,
    /// write each of `rewrite`, and purge the stream up to the first of
    /// those writes: the delete marker goes, and so does every put a
    /// listing saw before it.
    PurgeBeforeRelist {
        n: usize,
        server: MemoryServer,
        delete: &'static str,
        rewrite: &'static [&'static str],
    },
    /// Rewrite `key` right after the `n`th state-sync watch opened: the
    /// message of `key` it was created over goes before it is delivered.
    RewriteAfterOpen { n: usize, key: &'static str },
    /// Every state-sync watch (the listing) fails to open: the bucket is
    /// gone.
    FailListing,
    /// Every retention read fails: the bucket is gone.
    FailRetention,
    /// The first `n` state-sync watches time out, as a listing's consumer
    /// create does while the server it asks is restarting.
    FlakyListing { n: usize },
    /// The first `n` state-sync watches fail as a listing overrun by
    /// retention does (its re-created consumer's frontier is below the
    /// first sequence).
    OverrunListing { n: usize },
    /// The first `n` retention reads made while the status says
    /// `Repairing` find the server unreachable.
    FlakyRetention { n: usize },
    /// Nothing besides recording the phase.
    Observe,
}

/// A watcher of the bucket that runs its [`Hook`] at state-sync watches
/// and retention reads.
pub struct Hooked {
    inner: MemoryStore,
    relists: AtomicUsize,
    retention_failures: AtomicUsize,
    hook: Hook,
    /// The engine's status, once started, and its phase at each state-sync
    /// watch call.
    pub status: Arc<Mutex<Option<StatusReceiver>>>,
    pub phases: Arc<Mutex<Vec<Phase>>>,
}

impl Hooked {
    pub fn new(inner: &MemoryStore, hook: Hook) -> Self {
        Self {
            inner: inner.clone(),
            relists: AtomicUsize::new(0),
            retention_failures: AtomicUsize::new(0),
            hook,
            status: Arc::default(),
            phases: Arc::default(),
        }
    }
}

impl KvWatcher for Hooked {
    type WatchStream = MemoryWatch;

    async fn watch(&self, scope: &WatchScope, start: WatchStart) -> Result<MemoryWatch, KvError> {
        if start == WatchStart::Relist {
            let nth = self.relists.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(rx) = self.status.lock().unwrap().as_ref() {
                let phase = rx.borrow().phase;
                self.phases.lock().unwrap().push(phase);
            }
            match self.hook {
                Hook::RecreateBeforeRelist { n, key } if n == nth => {
                    put(&self.inner, key, "again").await;
                }
                Hook::RecreateBucketBeforeRelist { n, ref server, key } if n == nth => {
                    server.bucket("cfg").delete().unwrap();
                    let kv = bucket_with(server, StoreConfig::new("cfg")).await;
                    put(&kv, key, "third").await;
                }
                Hook::PurgeBeforeRelist {
                    n,
                    ref server,
                    delete,
                    rewrite,
                } if n == nth => {
                    self.inner.writer().delete(delete).await.unwrap();
                    let mut first = None;
                    for key in rewrite {
                        let revision = put(&self.inner, key, "hooked").await;
                        first.get_or_insert(revision);
                    }
                    if let Some(first) = first {
                        server.bucket("cfg").purge_below(first).unwrap();
                    }
                }
                Hook::FailListing => {
                    return Err(KvError::BucketNotFound {
                        bucket: "cfg".into(),
                    });
                }
                Hook::OverrunListing { n } if nth <= n => {
                    return Err(KvError::CursorExpired {
                        reason: ExpiryReason::BelowFirstSequence {
                            revision: 2,
                            first_sequence: 5,
                        },
                    });
                }
                Hook::FlakyListing { n } if nth <= n => {
                    return Err(KvError::Timeout {
                        operation: "consumer create".into(),
                        after: Duration::from_secs(5),
                    });
                }
                _ => {}
            }
        }
        let relist = start == WatchStart::Relist;
        let watch = self.inner.watch(scope, start).await?;
        if let Hook::RewriteAfterOpen { n, key } = self.hook
            && relist
            && self.relists.load(Ordering::SeqCst) == n
        {
            put(&self.inner, key, "rewritten").await;
        }
        Ok(watch)
    }

    async fn retention(&self) -> Result<Retention, KvError> {
        if matches!(self.hook, Hook::FailRetention) {
            return Err(KvError::BucketNotFound {
                bucket: "cfg".into(),
            });
        }
        if let Hook::FlakyRetention { n } = self.hook {
            let repairing = self
                .status
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|rx| rx.borrow().phase == Phase::Repairing);
            if repairing && self.retention_failures.fetch_add(1, Ordering::SeqCst) < n {
                return Err(KvError::NotConnected);
            }
        }
        self.inner.retention().await
    }
}

/// Every file under `dir`, at any depth.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// A watcher that looks into the scratch directory: how many run files
/// it holds when the listing (the first state-sync) reaches `CaughtUp`,
/// and whether it is empty when the re-list (the second) opens.
pub struct ScratchProbe {
    pub inner: MemoryStore,
    pub scratch: std::path::PathBuf,
    pub relists: AtomicUsize,
    pub runs_at_caught_up: Arc<Mutex<Option<usize>>>,
    pub empty_at_relist: Arc<Mutex<Option<bool>>>,
}

impl KvWatcher for ScratchProbe {
    type WatchStream = futures::stream::BoxStream<'static, Result<WatchEvent, KvError>>;

    async fn watch(
        &self,
        scope: &WatchScope,
        start: WatchStart,
    ) -> Result<Self::WatchStream, KvError> {
        let stream = self.inner.watch(scope, start.clone()).await?;
        if start != WatchStart::Relist {
            return Ok(stream.boxed());
        }
        match self.relists.fetch_add(1, Ordering::SeqCst) {
            0 => {
                let (scratch, runs) = (self.scratch.clone(), Arc::clone(&self.runs_at_caught_up));
                Ok(stream
                    .inspect(move |item| {
                        if matches!(item, Ok(WatchEvent::CaughtUp)) {
                            *runs.lock().unwrap() = Some(files_under(&scratch).len());
                        }
                    })
                    .boxed())
            }
            1 => {
                *self.empty_at_relist.lock().unwrap() =
                    Some(std::fs::read_dir(&self.scratch).unwrap().next().is_none());
                Ok(stream.boxed())
            }
            _ => Ok(stream.boxed()),
        }
    }

    async fn retention(&self) -> Result<Retention, KvError> {
        self.inner.retention().await
    }
}

/// Purges the whole stream right after the first state-sync's first
/// delivery, as head eviction passing a listing in progress would.
pub struct PurgeMidListing {
    pub inner: MemoryStore,
    pub server: MemoryServer,
    pub below: u64,
    pub armed: Arc<std::sync::atomic::AtomicBool>,
    pub listings: AtomicUsize,
}

impl KvWatcher for PurgeMidListing {
    type WatchStream = futures::stream::BoxStream<'static, Result<WatchEvent, KvError>>;

    async fn watch(
        &self,
        scope: &WatchScope,
        start: WatchStart,
    ) -> Result<Self::WatchStream, KvError> {
        let relist = start == WatchStart::Relist;
        if relist {
            let listings = self.listings.fetch_add(1, Ordering::SeqCst) + 1;
            assert!(listings <= 4, "a repair loop: {listings} listings");
        }
        let stream = self.inner.watch(scope, start.clone()).await?;
        let (server, below, armed) = (self.server.clone(), self.below, Arc::clone(&self.armed));
        Ok(stream
            .inspect(move |item| {
                if relist
                    && matches!(item, Ok(WatchEvent::Update(_)))
                    && armed.swap(false, Ordering::SeqCst)
                {
                    server.bucket("cfg").purge_below(below).unwrap();
                }
            })
            .boxed())
    }

    async fn retention(&self) -> Result<Retention, KvError> {
        self.inner.retention().await
    }
}

/// A watcher counting listings (state-sync watches): every relist, every
/// fresh start, every restore's liveness check. `listings` counts them
/// opened, `caught_up` counts them reaching `CaughtUp`. A key that leaves
/// the bucket may be missing from a fold read by a listing opened after it
/// left (one cut off after delivering the stream's tail is followed by a
/// delta resume, no `CaughtUp` ever comes), or by one still running when
/// it left.
#[derive(Clone)]
pub struct Counted {
    pub inner: MemoryStore,
    pub listings: Arc<AtomicU64>,
    pub caught_up: Arc<AtomicU64>,
}

impl KvWatcher for Counted {
    type WatchStream = futures::stream::BoxStream<'static, Result<WatchEvent, KvError>>;

    async fn watch(
        &self,
        scope: &WatchScope,
        start: WatchStart,
    ) -> Result<Self::WatchStream, KvError> {
        let relist = start == WatchStart::Relist;
        let stream = self.inner.watch(scope, start).await?;
        if relist {
            self.listings.fetch_add(1, Ordering::SeqCst);
        }
        let caught_up = Arc::clone(&self.caught_up);
        Ok(stream
            .inspect(move |item| {
                if relist && matches!(item, Ok(WatchEvent::CaughtUp)) {
                    caught_up.fetch_add(1, Ordering::SeqCst);
                }
            })
            .boxed())
    }

    async fn retention(&self) -> Result<Retention, KvError> {
        self.inner.retention().await
    }
}
