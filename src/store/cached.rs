//! [`CachedStore`]: a read-through cache in front of any [`KeyStore`], with pushed invalidation.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::breaker::{Breaker, BreakerConfig, BreakerStats};
use crate::clock::{Clock, Timestamp};
use crate::ids::{KeyId, OrgId};
use crate::key::{KeyHash, KeyHashBuilder};
use crate::plan::Plan;

use super::{
    BoxFuture, Granularity, KeyChanges, KeyRecord, KeyStore, LookupResult, StoreError, StoredKey,
    UsageDelta, UsageRow,
};

/// What changed, as far as a cache is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// The key with this hash changed (revoked, rotated, re-scoped, created or deleted).
    Key(KeyHash),
    /// The organization's plan changed: every cached key of it is stale.
    Org(OrgId),
    /// Anything may have changed (e.g. notifications were lost): drop everything.
    All,
}

/// A stream of [`Invalidation`]s a [`CachedStore`] can [`subscribe`](CachedStore::subscribe) to.
///
/// Implemented for tokio `mpsc` receivers and for `broadcast` receivers (where a lagging
/// receiver, which has lost messages, yields [`Invalidation::All`]). Implement it to plug in any
/// other transport (Redis pub/sub, a message bus, …): return `None` only when the source is done
/// for good, and [`Invalidation::All`] whenever messages may have been lost.
pub trait InvalidationSource: Send + 'static {
    /// The next invalidation; `None` ends the subscription.
    fn next(&mut self) -> impl Future<Output = Option<Invalidation>> + Send;
}

impl InvalidationSource for tokio::sync::mpsc::Receiver<Invalidation> {
    async fn next(&mut self) -> Option<Invalidation> {
        self.recv().await
    }
}

impl InvalidationSource for tokio::sync::mpsc::UnboundedReceiver<Invalidation> {
    async fn next(&mut self) -> Option<Invalidation> {
        self.recv().await
    }
}

impl InvalidationSource for tokio::sync::broadcast::Receiver<Invalidation> {
    async fn next(&mut self) -> Option<Invalidation> {
        use tokio::sync::broadcast::error::RecvError;
        match self.recv().await {
            Ok(inv) => Some(inv),
            Err(RecvError::Lagged(_)) => Some(Invalidation::All),
            Err(RecvError::Closed) => None,
        }
    }
}

/// Tuning of a [`CachedStore`].
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::store::CacheConfig;
/// let config = CacheConfig::default()
///     .ttl(Duration::from_secs(60))
///     .negative_capacity(50_000);
/// ```
#[derive(Clone, Debug)]
pub struct CacheConfig {
    ttl: Duration,
    negative_ttl: Duration,
    capacity: usize,
    negative_capacity: usize,
    clock: Clock,
    breaker: BreakerConfig,
}

impl Default for CacheConfig {
    /// TTL 30 s, negative TTL 60 s, 1,000,000 keys, 100,000 unknown hashes, coarse clock, and a
    /// breaker opening after 5 consecutive backend failures for 5 s.
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(60),
            capacity: 1_000_000,
            negative_capacity: 100_000,
            clock: Clock::default(),
            breaker: BreakerConfig::default(),
        }
    }
}

impl CacheConfig {
    /// How long a known key is served from the cache without asking the backend. With pushed
    /// invalidation this only bounds staleness when notifications are lost unnoticed.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long an unknown hash is answered "no such key" without asking the backend.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// At most this many known keys are cached (at least 8).
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n.max(8);
        self
    }

    /// At most this many unknown hashes are remembered (at least 8).
    pub fn negative_capacity(mut self, n: usize) -> Self {
        self.negative_capacity = n.max(8);
        self
    }

    /// The clock for TTLs and the breaker's cool-down (default: the coarse clock;
    /// [`Clock::manual`] in tests).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The [breaker](crate::breaker) in front of the backend (default: open after 5 consecutive
    /// failures or abandoned lookups, for 5 s). While it is open a miss is answered at once with
    /// [`StoreError::CircuitOpen`] (`503 auth_unavailable`, `Retry-After` = what is left of the
    /// cool-down) instead of waiting for a backend that is down; hits keep being served.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_api_key::BreakerConfig;
    /// use tower_api_key::store::CacheConfig;
    ///
    /// let config = CacheConfig::default()
    ///     .breaker(BreakerConfig::default().failures(3).cool_down(Duration::from_secs(2)));
    /// let always_ask = CacheConfig::default().breaker(BreakerConfig::disabled());
    /// # let _ = (config, always_ask);
    /// ```
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }
}

/// Counters and sizes of a [`CachedStore`], for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Known keys cached now.
    pub entries: usize,
    /// Unknown hashes remembered now.
    pub negative_entries: usize,
    /// Backend lookups in flight now (each shared by all callers of its hash).
    pub in_flight: usize,
    /// Lookups answered from the cache (known keys and unknown hashes).
    pub hits: u64,
    /// Lookups that were not answered from the cache.
    pub misses: u64,
    /// Queries sent to the backend (≤ misses, thanks to single flight).
    pub backend_lookups: u64,
    /// Invalidations applied (local writes and pushed ones).
    pub invalidations: u64,
    /// Times the whole cache was dropped ([`Invalidation::All`]).
    pub resets: u64,
    /// The backend's breaker: its state, and how often it opened, refused a miss and probed.
    pub breaker: BreakerStats,
}

/// A read-through cache in front of any [`KeyStore`], with pushed invalidation.
///
/// # What it caches
///
/// - **Known keys** (positive entries), for [`CacheConfig::ttl`]. Revoked and expired records are
///   cached too: they carry their `revoked_at` / `expires_at`, and [`ApiKeyAuth`](crate::ApiKeyAuth)
///   refuses them from the cache without a round trip.
/// - **Unknown hashes** (negative entries), for [`CacheConfig::negative_ttl`], in a map bounded by
///   [`CacheConfig::negative_capacity`]: a client repeating a made-up key reaches the backend once
///   per TTL, and a flood of distinct made-up keys cannot grow memory past the bound (when the map
///   is full, expired entries are swept and then arbitrary ones evicted, an eighth at a time).
/// - Nothing else: errors are never cached, and `get`, `list`, `plan` and `touch_last_used` go
///   straight to the backend (management reads are always fresh).
///
/// # When the backend is down
///
/// Backend lookups go through a [`Breaker`] ([`CacheConfig::breaker`]): after 5 consecutive
/// failures (errors, timeouts, or lookups abandoned because the request timed out) it opens for
/// 5 s, and a miss is answered at once with [`StoreError::CircuitOpen`] (`503 auth_unavailable`
/// with `Retry-After`) instead of waiting for the store's timeout. Hits, positive and negative,
/// are served as usual. After the cool-down one miss goes to the backend as the probe: its
/// answer closes the breaker, its failure opens it again. State and counters are in
/// [`CacheStats::breaker`].
///
/// # Single flight
///
/// Concurrent misses on one hash share one backend query: the first caller runs it, the others
/// wait for its result. If the caller running it is cancelled (e.g. its request timed out), a
/// waiter takes over.
///
/// # Invalidation
///
/// Writes through the cache ([`insert`](KeyStore::insert), [`revoke`](KeyStore::revoke),
/// [`set_plan`](KeyStore::set_plan)) invalidate the local entries once the backend has accepted
/// them. Changes made elsewhere (another replica, an admin script) arrive as [`Invalidation`]s from
/// an [`InvalidationSource`] passed to [`CachedStore::subscribe`]: with the `postgres` feature,
/// `PgInvalidations` (in `store`) turns PostgreSQL `LISTEN/NOTIFY` into one.
/// The TTL is only the fallback for notifications that are lost without the source noticing; a
/// source that notices a gap (a reconnect, a lagging channel) sends [`Invalidation::All`].
///
/// A lookup that was already in flight when an invalidation arrived does not fill the cache with
/// its (possibly stale) answer, and lookups that start after the invalidation never join it.
///
/// # Cost
///
/// A hit is one lock-free map read, one clock read and an `Arc` clone, answered with a ready
/// future: [`ApiKeyAuth`](crate::ApiKeyAuth) takes its synchronous fast path, exactly as with
/// [`MemoryStore`](crate::MemoryStore). Only a miss allocates (one boxed future).
///
/// # Example
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tower_api_key::{ApiKeyAuth, MemoryStore};
/// use tower_api_key::store::{CachedStore, Invalidation};
///
/// let cached = CachedStore::new(MemoryStore::new());
/// // Invalidations from elsewhere (here an in-process channel):
/// let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
/// cached.subscribe(rx);
/// tx.send(Invalidation::All)?;
/// let _layer = ApiKeyAuth::new(cached);
/// # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
pub struct CachedStore<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for CachedStore<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("store", &self.inner.store)
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish()
    }
}

struct Entry {
    stored: StoredKey,
    expires: Timestamp,
}

/// A backend answer shared by the callers of one flight. `StoreError` is not `Clone`.
type Shared = Result<Option<StoredKey>, Arc<StoreError>>;
type Flight = Arc<OnceCell<Shared>>;

struct Inner<S> {
    store: S,
    config: CacheConfig,
    positive: papaya::HashMap<KeyHash, Entry, KeyHashBuilder>,
    negative: papaya::HashMap<KeyHash, Timestamp, KeyHashBuilder>,
    inflight: Mutex<HashMap<KeyHash, Flight, KeyHashBuilder>>,
    /// Bumped by every invalidation; a flight that saw it move does not fill the cache.
    epoch: AtomicU64,
    /// One sweeper at a time, per map.
    sweeping_positive: AtomicBool,
    sweeping_negative: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    backend_lookups: AtomicU64,
    invalidations: AtomicU64,
    resets: AtomicU64,
    /// Fails misses fast while the backend is down.
    breaker: Breaker,
    /// Dropped with the cache: tells subscription tasks to stop.
    shutdown: tokio::sync::watch::Sender<()>,
}

impl<S: KeyStore> CachedStore<S> {
    /// Cache `store` with the [default configuration](CacheConfig::default).
    pub fn new(store: S) -> Self {
        Self::with_config(store, CacheConfig::default())
    }

    /// Cache `store` with `config`.
    pub fn with_config(store: S, config: CacheConfig) -> Self {
        let breaker = Breaker::new("key store", config.breaker, config.clock.clone());
        Self {
            inner: Arc::new(Inner {
                store,
                config,
                positive: papaya::HashMap::builder().hasher(KeyHashBuilder).build(),
                negative: papaya::HashMap::builder().hasher(KeyHashBuilder).build(),
                inflight: Mutex::new(HashMap::with_hasher(KeyHashBuilder)),
                epoch: AtomicU64::new(0),
                sweeping_positive: AtomicBool::new(false),
                sweeping_negative: AtomicBool::new(false),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                backend_lookups: AtomicU64::new(0),
                invalidations: AtomicU64::new(0),
                resets: AtomicU64::new(0),
                breaker,
                shutdown: tokio::sync::watch::Sender::new(()),
            }),
        }
    }

    /// The backend store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// Apply an invalidation now.
    pub fn invalidate(&self, invalidation: &Invalidation) {
        self.inner.invalidate(invalidation);
    }

    /// Apply the invalidations of `source` as they arrive, on a spawned tokio task.
    ///
    /// The task ends when the source ends or when the last clone of this cache is dropped.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime (as `tokio::spawn` does).
    pub fn subscribe<I: InvalidationSource>(&self, mut source: I) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner<S>> = Arc::downgrade(&self.inner);
        let mut shutdown = self.inner.shutdown.subscribe();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = shutdown.changed() => return,
                    next = source.next() => next,
                };
                let Some(invalidation) = next else {
                    tracing::debug!("invalidation source ended");
                    return;
                };
                match weak.upgrade() {
                    Some(inner) => inner.invalidate(&invalidation),
                    None => return,
                }
            }
        })
    }
}

impl<S: KeyStore> CachedStore<S> {
    /// The miss path, out of line: the flight's future is large, and building it inside
    /// `find_by_hash` would make every hit pay for its stack frame.
    #[inline(never)]
    fn miss(&self, hash: &KeyHash) -> CachedLookup {
        self.inner.misses.fetch_add(1, Ordering::Relaxed);
        if let Err(refused) = self.inner.breaker.check() {
            return CachedLookup(LookupState::Ready(Err(StoreError::CircuitOpen(refused))));
        }
        CachedLookup(LookupState::Pending(Box::pin(
            self.inner.clone().load(*hash),
        )))
    }
}

impl<S> CachedStore<S> {
    /// Current sizes and counters.
    pub fn stats(&self) -> CacheStats {
        let i = &self.inner;
        CacheStats {
            entries: i.positive.len(),
            negative_entries: i.negative.len(),
            in_flight: i.inflight().len(),
            hits: i.hits.load(Ordering::Relaxed),
            misses: i.misses.load(Ordering::Relaxed),
            backend_lookups: i.backend_lookups.load(Ordering::Relaxed),
            invalidations: i.invalidations.load(Ordering::Relaxed),
            resets: i.resets.load(Ordering::Relaxed),
            breaker: i.breaker.stats(),
        }
    }
}

impl<S> Inner<S> {
    fn inflight(&self) -> MutexGuard<'_, HashMap<KeyHash, Flight, KeyHashBuilder>> {
        // The map only holds flights; a panic elsewhere cannot leave it inconsistent.
        self.inflight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn invalidate(&self, invalidation: &Invalidation) {
        // Bump first, then remove: a flight that filled after our removal sees the new epoch
        // when it re-checks, and removes what it filled.
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        match invalidation {
            Invalidation::Key(hash) => {
                self.positive.pin().remove(hash);
                self.negative.pin().remove(hash);
                self.inflight().remove(hash);
            }
            Invalidation::Org(org) => {
                self.positive
                    .pin()
                    .retain(|_, e| &e.stored.record.org_id != org);
                self.inflight().clear();
            }
            Invalidation::All => {
                self.resets.fetch_add(1, Ordering::Relaxed);
                self.positive.pin().clear();
                self.negative.pin().clear();
                self.inflight().clear();
            }
        }
    }

    /// Cache a backend answer, unless an invalidation happened since `epoch`.
    fn fill(&self, hash: &KeyHash, result: &LookupResult, epoch: u64) {
        if self.epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        let now = self.config.clock.now();
        match result {
            Ok(Some(stored)) if stored.record.hash.ct_eq(hash) => {
                let entry = Entry {
                    stored: stored.clone(),
                    expires: now.saturating_add(self.config.ttl),
                };
                self.positive.pin().insert(*hash, entry);
                self.negative.pin().remove(hash);
                self.bound_positive(now);
            }
            Ok(None) => {
                self.negative
                    .pin()
                    .insert(*hash, now.saturating_add(self.config.negative_ttl));
                // An expired positive entry would shadow the negative one.
                self.positive.pin().remove(hash);
                self.bound_negative(now);
            }
            // Errors are never cached; a record under another hash is not trusted.
            _ => return,
        }
        if self.epoch.load(Ordering::SeqCst) != epoch {
            self.positive.pin().remove(hash);
            self.negative.pin().remove(hash);
        }
    }

    fn bound_positive(&self, now: Timestamp) {
        let cap = self.config.capacity;
        if self.positive.len() > cap {
            self.sweep(&self.positive, &self.sweeping_positive, cap, |e| {
                e.expires > now
            });
        }
    }

    fn bound_negative(&self, now: Timestamp) {
        let cap = self.config.negative_capacity;
        if self.negative.len() > cap {
            self.sweep(&self.negative, &self.sweeping_negative, cap, |expires| {
                *expires > now
            });
        }
    }

    /// Bring `map` down to 7/8 of `cap`: expired entries first, then arbitrary ones (the map's
    /// order follows the key hashes, so this is close to random eviction). One sweeper at a time;
    /// concurrent inserts may overshoot `cap` by the number of threads meanwhile.
    fn sweep<V>(
        &self,
        map: &papaya::HashMap<KeyHash, V, KeyHashBuilder>,
        sweeping: &AtomicBool,
        cap: usize,
        live: impl Fn(&V) -> bool,
    ) {
        if sweeping.swap(true, Ordering::Acquire) {
            return;
        }
        let guard = map.pin();
        guard.retain(|_, v| live(v));
        let target = cap - cap / 8;
        let len = guard.len();
        if len > target {
            let mut excess = len - target;
            guard.retain(|_, _| {
                if excess > 0 {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
        drop(guard);
        sweeping.store(false, Ordering::Release);
    }
}

impl<S: KeyStore> Inner<S> {
    /// A miss: join or start the flight for `hash`.
    async fn load(self: Arc<Self>, hash: KeyHash) -> LookupResult {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let flight = {
            let mut inflight = self.inflight();
            inflight
                .entry(hash)
                .or_insert_with(|| Arc::new(OnceCell::new()))
                .clone()
        };
        let mut guard = FlightGuard {
            inner: &self,
            hash,
            flight: Some(flight),
        };
        let Some(flight) = guard.flight.as_ref() else {
            // Unreachable: set just above.
            return Err(StoreError::unavailable("cache flight missing"));
        };
        let shared = flight
            .get_or_init(|| async {
                // Only the caller running the lookup takes a permit: a flight is one backend call.
                let permit = match self.breaker.try_acquire() {
                    Ok(permit) => permit,
                    Err(refused) => return Err(Arc::new(StoreError::CircuitOpen(refused))),
                };
                self.backend_lookups.fetch_add(1, Ordering::Relaxed);
                let result = self.store.find_by_hash(&hash).await;
                match &result {
                    Ok(_) => permit.success(),
                    Err(_) => permit.failure(),
                }
                self.fill(&hash, &result, epoch);
                result.map_err(Arc::new)
            })
            .await
            .clone();
        guard.finish();
        match shared {
            Ok(found) => Ok(found),
            Err(e) => Err(share_error(e)),
        }
    }
}

/// Removes a finished (or abandoned) flight from the in-flight map. Clones of the flight are
/// only made and dropped under the map's lock, so the reference count seen there is exact.
struct FlightGuard<'a, S> {
    inner: &'a Inner<S>,
    hash: KeyHash,
    flight: Option<Flight>,
}

impl<S> FlightGuard<'_, S> {
    fn finish(&mut self) {
        let Some(ours) = self.flight.take() else {
            return;
        };
        let mut inflight = self.inner.inflight();
        if let Some(current) = inflight.get(&self.hash) {
            // Done, or nobody else waiting on an abandoned flight (map + us = 2).
            if Arc::ptr_eq(current, &ours) && (ours.initialized() || Arc::strong_count(&ours) <= 2)
            {
                inflight.remove(&self.hash);
            }
        }
        drop(ours);
        drop(inflight);
    }
}

impl<S> Drop for FlightGuard<'_, S> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The shared error of a flight, handed to each of its callers.
#[derive(Debug)]
struct SharedError(Arc<StoreError>);

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            StoreError::Unavailable(e) => fmt::Display::fmt(e, f),
            other => fmt::Display::fmt(other, f),
        }
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.0 {
            StoreError::Unavailable(e) => e.source(),
            _ => None,
        }
    }
}

fn share_error(e: Arc<StoreError>) -> StoreError {
    match &*e {
        StoreError::Timeout => StoreError::Timeout,
        StoreError::Duplicate => StoreError::Duplicate,
        StoreError::CircuitOpen(refused) => StoreError::CircuitOpen(*refused),
        _ => StoreError::Unavailable(Box::new(SharedError(e))),
    }
}

/// The lookup future of a [`CachedStore`]: ready at once on a hit, boxed on a miss.
pub struct CachedLookup(LookupState);

enum LookupState {
    Ready(LookupResult),
    Pending(BoxFuture<'static, LookupResult>),
    Done,
}

impl fmt::Debug for CachedLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            LookupState::Ready(_) => f.write_str("CachedLookup::Ready"),
            LookupState::Pending(_) => f.write_str("CachedLookup::Pending"),
            LookupState::Done => f.write_str("CachedLookup::Done"),
        }
    }
}

impl Future for CachedLookup {
    type Output = LookupResult;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<LookupResult> {
        if let LookupState::Pending(fut) = &mut self.0 {
            return fut.as_mut().poll(cx);
        }
        match std::mem::replace(&mut self.0, LookupState::Done) {
            LookupState::Ready(result) => Poll::Ready(result),
            _ => Poll::Ready(polled_after_completion()),
        }
    }
}

#[cold]
#[inline(never)]
fn polled_after_completion() -> LookupResult {
    Err(StoreError::unavailable("lookup polled after completion"))
}

impl<S: KeyStore> KeyStore for CachedStore<S> {
    type Lookup = CachedLookup;

    #[inline]
    fn find_by_hash(&self, hash: &KeyHash) -> CachedLookup {
        let inner = &*self.inner;
        let now = inner.config.clock.now();
        if let Some(entry) = inner.positive.pin().get(hash) {
            if entry.expires > now {
                inner.hits.fetch_add(1, Ordering::Relaxed);
                return CachedLookup(LookupState::Ready(Ok(Some(entry.stored.clone()))));
            }
        } else if let Some(expires) = inner.negative.pin().get(hash) {
            if *expires > now {
                inner.hits.fetch_add(1, Ordering::Relaxed);
                return CachedLookup(LookupState::Ready(Ok(None)));
            }
        }
        self.miss(hash)
    }

    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let hash = record.hash;
        self.inner.store.insert(record).await?;
        self.inner.invalidate(&Invalidation::Key(hash));
        Ok(())
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.store.get(id).await
    }

    async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.store.list(org).await
    }

    async fn revoke(&self, id: &KeyId, at: Timestamp) -> Result<Option<KeyRecord>, StoreError> {
        let revoked = self.inner.store.revoke(id, at).await?;
        if let Some(record) = &revoked {
            self.inner.invalidate(&Invalidation::Key(record.hash));
        }
        Ok(revoked)
    }

    async fn update(
        &self,
        id: &KeyId,
        changes: &KeyChanges,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let updated = self.inner.store.update(id, changes).await?;
        if let Some(record) = &updated {
            self.inner.invalidate(&Invalidation::Key(record.hash));
        }
        Ok(updated)
    }

    async fn touch_last_used(&self, batch: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        self.inner.store.touch_last_used(batch).await
    }

    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        self.inner.store.record_usage(batch).await
    }

    async fn usage(
        &self,
        org: &OrgId,
        from: Timestamp,
        to: Timestamp,
        granularity: Granularity,
    ) -> Result<Vec<UsageRow>, StoreError> {
        self.inner.store.usage(org, from, to, granularity).await
    }

    async fn prune_usage(
        &self,
        granularity: Granularity,
        before: Timestamp,
    ) -> Result<u64, StoreError> {
        self.inner.store.prune_usage(granularity, before).await
    }

    async fn set_plan(&self, org: &OrgId, plan: Plan) -> Result<(), StoreError> {
        self.inner.store.set_plan(org, plan).await?;
        self.inner.invalidate(&Invalidation::Org(org.clone()));
        Ok(())
    }

    async fn plan(&self, org: &OrgId) -> Result<Plan, StoreError> {
        self.inner.store.plan(org).await
    }

    /// Passed through: the reminder mark does not change what a request decides, so cached
    /// entries stay.
    async fn claim_expiry_reminders(
        &self,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner
            .store
            .claim_expiry_reminders(now, until, limit)
            .await
    }

    async fn append_audit(&self, entry: crate::audit::AuditEntry) -> Result<(), StoreError> {
        self.inner.store.append_audit(entry).await
    }

    async fn audit_log(
        &self,
        org: &OrgId,
        query: &crate::audit::AuditQuery,
    ) -> Result<Vec<crate::audit::AuditEntry>, StoreError> {
        self.inner.store.audit_log(org, query).await
    }
}
