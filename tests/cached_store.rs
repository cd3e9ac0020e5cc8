//! `CachedStore` behaviour beyond the store contract: what reaches the backend, when, and how
//! invalidations get in. The backend is a real `MemoryStore` wrapped in a probe that counts
//! lookups and can hold them (a gate) or fail them.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::contract::{at, record};
use tokio::sync::Semaphore;
use tower_api_key::store::{
    BoxFuture, CacheConfig, CachedStore, Invalidation, KeyStore, LookupResult,
};
use tower_api_key::{
    ApiKeyAuth, Clock, KeyFormat, KeyHash, KeyId, KeyManager, KeyRecord, ManualClock, MemoryStore,
    NewKey, OrgId, Plan, StoreError, Timestamp,
};

#[derive(Clone)]
struct Probe {
    inner: MemoryStore,
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    fail: Arc<AtomicBool>,
    hide: Arc<AtomicBool>,
}

impl Probe {
    fn new() -> Self {
        Self {
            inner: MemoryStore::new(),
            calls: Arc::default(),
            gate: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            fail: Arc::default(),
            hide: Arc::default(),
        }
    }

    /// Lookups wait until `open`.
    fn gated() -> Self {
        Self {
            gate: Arc::new(Semaphore::new(0)),
            ..Self::new()
        }
    }

    fn open(&self) {
        self.gate.add_permits(1_000_000);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl KeyStore for Probe {
    type Lookup = BoxFuture<'static, LookupResult>;

    fn find_by_hash(&self, hash: &KeyHash) -> Self::Lookup {
        self.calls.fetch_add(1, Ordering::SeqCst);
        // The answer is read now, as a database would at query time; it is delivered when the
        // gate opens.
        let answer = self.inner.find_by_hash(hash);
        let gate = self.gate.clone();
        let fail = self.fail.load(Ordering::SeqCst);
        let hide = self.hide.load(Ordering::SeqCst);
        Box::pin(async move {
            let _permit = gate.acquire().await;
            if fail {
                Err(StoreError::unavailable("backend down"))
            } else if hide {
                Ok(None)
            } else {
                answer.await
            }
        })
    }
    async fn insert(&self, r: KeyRecord) -> Result<(), StoreError> {
        self.inner.insert(r).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.get(id).await
    }
    async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list(org).await
    }
    async fn revoke(&self, id: &KeyId, t: Timestamp) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.revoke(id, t).await
    }
    async fn update(
        &self,
        id: &KeyId,
        c: &tower_api_key::KeyChanges,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.update(id, c).await
    }
    async fn touch_last_used(&self, b: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        self.inner.touch_last_used(b).await
    }
    async fn record_usage(&self, batch: &[tower_api_key::UsageDelta]) -> Result<(), StoreError> {
        self.inner.record_usage(batch).await
    }
    async fn usage(
        &self,
        org: &OrgId,
        from: tower_api_key::Timestamp,
        to: tower_api_key::Timestamp,
        granularity: tower_api_key::Granularity,
    ) -> Result<Vec<tower_api_key::UsageRow>, StoreError> {
        self.inner.usage(org, from, to, granularity).await
    }
    async fn prune_usage(
        &self,
        granularity: tower_api_key::Granularity,
        before: tower_api_key::Timestamp,
    ) -> Result<u64, StoreError> {
        self.inner.prune_usage(granularity, before).await
    }
    async fn set_plan(&self, org: &OrgId, plan: Plan) -> Result<(), StoreError> {
        self.inner.set_plan(org, plan).await
    }
    async fn plan(&self, org: &OrgId) -> Result<Plan, StoreError> {
        self.inner.plan(org).await
    }

    async fn claim_expiry_reminders(
        &self,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.claim_expiry_reminders(now, until, limit).await
    }
}

fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

fn manual() -> (Clock, ManualClock) {
    Clock::manual(Timestamp::from_unix_secs(1_000_000))
}

fn cached(probe: &Probe, clock: Clock) -> CachedStore<Probe> {
    let config = CacheConfig::default()
        .ttl(Duration::from_secs(30))
        .negative_ttl(Duration::from_secs(60))
        .clock(clock);
    CachedStore::with_config(probe.clone(), config)
}

fn unknown_hash() -> KeyHash {
    KeyFormat::live().generate().unwrap().hash()
}

async fn inserted(store: &impl KeyStore, org: &str) -> KeyRecord {
    let rec = record(&OrgId::from(org), "k", at(0));
    store.insert(rec.clone()).await.unwrap();
    rec
}

#[tokio::test]
async fn a_hit_is_answered_at_once_without_the_backend() {
    let probe = Probe::new();
    let (clock, _) = manual();
    let cache = cached(&probe, clock);
    let rec = inserted(&cache, "org_a").await;

    assert!(cache.find_by_hash(&rec.hash).await.unwrap().is_some());
    assert_eq!(probe.calls(), 1);
    for _ in 0..3 {
        let mut lookup = cache.find_by_hash(&rec.hash);
        let Poll::Ready(found) = poll_once(&mut lookup) else {
            panic!("a hit must be ready on the first poll");
        };
        assert_eq!(found.unwrap().unwrap().record.id, rec.id);
    }
    assert_eq!(probe.calls(), 1, "hits never reach the backend");
    assert_eq!(cache.stats().entries, 1);
}

#[tokio::test]
async fn positive_entries_expire_after_the_ttl() {
    let probe = Probe::new();
    let (clock, time) = manual();
    let cache = cached(&probe, clock);
    let rec = inserted(&cache, "org_a").await;

    cache.find_by_hash(&rec.hash).await.unwrap();
    time.advance(Duration::from_secs(29));
    cache.find_by_hash(&rec.hash).await.unwrap();
    assert_eq!(probe.calls(), 1);
    time.advance(Duration::from_secs(1));
    cache.find_by_hash(&rec.hash).await.unwrap();
    assert_eq!(
        probe.calls(),
        2,
        "an expired entry is refreshed from the backend"
    );
}

#[tokio::test]
async fn unknown_keys_reach_the_backend_once_per_negative_ttl() {
    let probe = Probe::new();
    let (clock, time) = manual();
    let cache = cached(&probe, clock);
    let made_up = unknown_hash();

    for _ in 0..100 {
        let mut lookup = cache.find_by_hash(&made_up);
        if let Poll::Ready(r) = poll_once(&mut lookup) {
            assert!(r.unwrap().is_none());
        } else {
            assert!(lookup.await.unwrap().is_none());
        }
    }
    assert_eq!(
        probe.calls(),
        1,
        "repeats of a made-up key are answered from the cache"
    );
    assert_eq!(cache.stats().negative_entries, 1);

    time.advance(Duration::from_secs(60));
    assert!(cache.find_by_hash(&made_up).await.unwrap().is_none());
    assert_eq!(probe.calls(), 2);
}

#[tokio::test]
async fn the_negative_cache_stays_within_its_capacity() {
    let probe = Probe::new();
    let (clock, _) = manual();
    let config = CacheConfig::default().negative_capacity(64).clock(clock);
    let cache = CachedStore::with_config(probe.clone(), config);
    let mut max_seen = 0;
    for _ in 0..5_000 {
        assert!(cache.find_by_hash(&unknown_hash()).await.unwrap().is_none());
        max_seen = max_seen.max(cache.stats().negative_entries);
    }
    assert!(max_seen <= 64, "negative cache grew to {max_seen}");
    assert!(cache.stats().negative_entries > 0);
    // A real key still works and is cached apart from the flood.
    let rec = inserted(&cache, "org_a").await;
    assert!(cache.find_by_hash(&rec.hash).await.unwrap().is_some());
    assert_eq!(cache.stats().entries, 1);
}

#[tokio::test]
async fn the_positive_cache_stays_within_its_capacity() {
    let probe = Probe::new();
    let (clock, _) = manual();
    let config = CacheConfig::default().capacity(16).clock(clock);
    let cache = CachedStore::with_config(probe.clone(), config);
    let mut recs = Vec::new();
    for i in 0..100 {
        recs.push(inserted(&cache, &format!("org_{i}")).await);
    }
    for rec in &recs {
        let found = cache.find_by_hash(&rec.hash).await.unwrap().unwrap();
        assert_eq!(found.record.id, rec.id);
        assert!(cache.stats().entries <= 16);
    }
}

#[tokio::test]
async fn a_burst_on_one_cold_key_makes_one_backend_query() {
    let probe = Probe::gated();
    let (clock, _) = manual();
    let cache = cached(&probe, clock);
    let rec = inserted(&cache, "org_a").await;

    let mut lookups: Vec<_> = (0..100).map(|_| cache.find_by_hash(&rec.hash)).collect();
    for l in &mut lookups {
        assert!(poll_once(l).is_pending(), "the gate holds the backend");
    }
    assert_eq!(probe.calls(), 1, "one query for the whole burst");
    assert_eq!(cache.stats().in_flight, 1);

    probe.open();
    for l in lookups {
        assert_eq!(l.await.unwrap().unwrap().record.id, rec.id);
    }
    assert_eq!(probe.calls(), 1);
    assert_eq!(cache.stats().in_flight, 0, "finished flights are forgotten");
    assert!(poll_once(&mut cache.find_by_hash(&rec.hash)).is_ready());
}

#[tokio::test]
async fn a_waiter_takes_over_when_the_leader_is_cancelled() {
    let probe = Probe::gated();
    let (clock, _) = manual();
    let cache = cached(&probe, clock);
    let rec = inserted(&cache, "org_a").await;

    let mut leader = cache.find_by_hash(&rec.hash);
    let mut waiter = cache.find_by_hash(&rec.hash);
    assert!(poll_once(&mut leader).is_pending());
    assert!(poll_once(&mut waiter).is_pending());
    drop(leader); // e.g. its request timed out
    probe.open();
    assert_eq!(waiter.await.unwrap().unwrap().record.id, rec.id);
    assert_eq!(probe.calls(), 2, "the waiter ran the query itself");
    assert_eq!(cache.stats().in_flight, 0);

    // An abandoned flight with no waiter is forgotten too.
    let other = inserted(&cache, "org_b").await;
    let probe2 = Probe::gated();
    let cache2 = cached(&probe2, manual().0);
    cache2.insert(other.clone()).await.unwrap();
    let mut lone = cache2.find_by_hash(&other.hash);
    assert!(poll_once(&mut lone).is_pending());
    assert_eq!(cache2.stats().in_flight, 1);
    drop(lone);
    assert_eq!(cache2.stats().in_flight, 0);
}

#[tokio::test]
async fn an_invalidation_during_a_lookup_is_not_overwritten() {
    let probe = Probe::gated();
    let (clock, _) = manual();
    let cache = cached(&probe, clock);
    let rec = inserted(&cache, "org_a").await;

    // A lookup reads the key before the revocation commits...
    let mut stale = cache.find_by_hash(&rec.hash);
    assert!(poll_once(&mut stale).is_pending());
    // ...the revocation lands (through the cache: backend write, then invalidation)...
    cache.revoke(&rec.id, at(1)).await.unwrap();
    // ...and a lookup that starts now does not join the stale flight.
    let mut fresh = cache.find_by_hash(&rec.hash);
    assert!(poll_once(&mut fresh).is_pending());
    assert_eq!(probe.calls(), 2);

    probe.open();
    assert_eq!(stale.await.unwrap().unwrap().record.revoked_at, None);
    assert_eq!(fresh.await.unwrap().unwrap().record.revoked_at, Some(at(1)));
    // The cache holds the fresh answer, not the stale one.
    let Poll::Ready(now) = poll_once(&mut cache.find_by_hash(&rec.hash)) else {
        panic!("expected a hit");
    };
    assert_eq!(now.unwrap().unwrap().record.revoked_at, Some(at(1)));
}

#[tokio::test]
async fn a_stale_answer_arriving_after_an_invalidation_is_dropped() {
    let probe = Probe::gated();
    let (clock, _) = manual();
    let cache = cached(&probe, clock);
    let rec = inserted(&cache, "org_a").await;

    let mut stale = cache.find_by_hash(&rec.hash);
    assert!(poll_once(&mut stale).is_pending());
    probe.inner.revoke(&rec.id, at(1)).await.unwrap(); // another replica
    cache.invalidate(&Invalidation::Key(rec.hash)); // its notification
    probe.open();
    assert_eq!(stale.await.unwrap().unwrap().record.revoked_at, None);
    assert_eq!(cache.stats().entries, 0, "the stale answer was not cached");
    let found = cache.find_by_hash(&rec.hash).await.unwrap().unwrap();
    assert_eq!(found.record.revoked_at, Some(at(1)));
}

#[tokio::test]
async fn errors_are_shared_but_never_cached() {
    let probe = Probe::gated();
    let (clock, _) = manual();
    let cache = cached(&probe, clock);
    let rec = inserted(&cache, "org_a").await;
    probe.fail.store(true, Ordering::SeqCst);

    let mut lookups: Vec<_> = (0..3).map(|_| cache.find_by_hash(&rec.hash)).collect();
    for l in &mut lookups {
        assert!(poll_once(l).is_pending());
    }
    probe.open();
    for l in lookups {
        let err = l.await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert_eq!(err.to_string(), "key store unavailable: backend down");
    }
    assert_eq!(probe.calls(), 1);

    probe.fail.store(false, Ordering::SeqCst);
    assert!(cache.find_by_hash(&rec.hash).await.unwrap().is_some());
    assert_eq!(probe.calls(), 2, "the error was not cached");
}

#[tokio::test]
async fn org_invalidation_drops_only_that_orgs_keys() {
    let probe = Probe::new();
    let (clock, _) = manual();
    let cache = cached(&probe, clock);
    let a1 = inserted(&cache, "org_a").await;
    let a2 = inserted(&cache, "org_a").await;
    let b = inserted(&cache, "org_b").await;
    for r in [&a1, &a2, &b] {
        cache.find_by_hash(&r.hash).await.unwrap();
    }
    assert_eq!(probe.calls(), 3);

    probe
        .inner
        .set_plan(&OrgId::from("org_a"), Plan::Paid)
        .await
        .unwrap();
    cache.invalidate(&Invalidation::Org(OrgId::from("org_a")));
    assert!(
        poll_once(&mut cache.find_by_hash(&b.hash)).is_ready(),
        "org_b stays cached"
    );
    assert_eq!(
        cache.find_by_hash(&a1.hash).await.unwrap().unwrap().plan,
        Plan::Paid
    );
    assert_eq!(
        cache.find_by_hash(&a2.hash).await.unwrap().unwrap().plan,
        Plan::Paid
    );
    assert_eq!(probe.calls(), 5);

    cache.invalidate(&Invalidation::All);
    let stats = cache.stats();
    assert_eq!(
        (stats.entries, stats.negative_entries, stats.resets),
        (0, 0, 1)
    );
}

/// Yield to the subscription task until `done` holds (no sleeping: the task is runnable).
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn pushed_invalidations_are_applied() {
    let probe = Probe::new();
    let (clock, _) = manual();
    let cache = cached(&probe, clock);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    cache.subscribe(rx);
    let rec = inserted(&cache, "org_a").await;
    assert!(
        cache
            .find_by_hash(&rec.hash)
            .await
            .unwrap()
            .unwrap()
            .record
            .revoked_at
            .is_none()
    );

    // Another replica revokes in the shared backend and tells us.
    probe.inner.revoke(&rec.id, at(1)).await.unwrap();
    let before = cache.stats().invalidations;
    tx.send(Invalidation::Key(rec.hash)).unwrap();
    until(|| cache.stats().invalidations > before).await;
    let found = cache.find_by_hash(&rec.hash).await.unwrap().unwrap();
    assert_eq!(found.record.revoked_at, Some(at(1)));
}

#[tokio::test]
async fn a_lagging_broadcast_receiver_drops_everything() {
    let probe = Probe::new();
    let (clock, _) = manual();
    let cache = cached(&probe, clock);
    let rec = inserted(&cache, "org_a").await;
    cache.find_by_hash(&rec.hash).await.unwrap();

    let (tx, rx) = tokio::sync::broadcast::channel(1);
    cache.subscribe(rx);
    for _ in 0..3 {
        tx.send(Invalidation::Key(unknown_hash())).unwrap();
    }
    until(|| cache.stats().resets == 1).await;
    assert_eq!(
        cache.stats().entries,
        0,
        "lost messages: the whole cache is dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn the_subscription_ends_with_the_cache() {
    let cache = CachedStore::new(MemoryStore::new());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Invalidation>();
    let task = cache.subscribe(rx);
    drop(cache);
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the task ends when the cache is dropped")
        .unwrap();
    assert!(tx.is_closed(), "the source was released");
}

#[tokio::test]
async fn api_key_auth_over_a_cache_refuses_a_revoked_key() {
    use http::{Request, Response, StatusCode};
    use tower::{ServiceExt, service_fn};
    use tower_layer::Layer;

    // One clock for the manager and the layer: revocation takes effect at the manager's "now",
    // and the layer's default coarse clock may lag the manager's system clock by a tick.
    let (clock, time) = manual();
    let cache = CachedStore::new(MemoryStore::new());
    let manager = KeyManager::new(cache.clone()).clock(clock.clone());
    let org = OrgId::from("org_a");
    let created = manager.create(&org, NewKey::new("web")).await.unwrap();
    time.advance(Duration::from_secs(1));
    let svc = ApiKeyAuth::new(cache.clone())
        .clock(clock)
        .layer(service_fn(|_req: Request<String>| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::new()))
        }));
    let bearer = format!("Bearer {}", created.key.expose_secret());
    let request = || {
        Request::builder()
            .header("authorization", &bearer)
            .body(String::new())
            .unwrap()
    };
    let status = |r: Response<_>| r.status();
    assert_eq!(
        status(svc.clone().oneshot(request()).await.unwrap()),
        StatusCode::OK
    );
    // From the cache.
    assert_eq!(
        status(svc.clone().oneshot(request()).await.unwrap()),
        StatusCode::OK
    );
    manager.revoke(&org, &created.record.id).await.unwrap();
    assert_eq!(
        status(svc.clone().oneshot(request()).await.unwrap()),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_deleted_key_is_negatively_cached_after_its_entry_expires() {
    let probe = Probe::new();
    let (clock, time) = manual();
    let cache = cached(&probe, clock);
    let rec = inserted(&cache, "org_a").await;
    cache.find_by_hash(&rec.hash).await.unwrap().unwrap();

    time.advance(Duration::from_secs(31));
    probe.hide.store(true, Ordering::SeqCst); // the row is gone from the backend
    assert!(cache.find_by_hash(&rec.hash).await.unwrap().is_none());
    assert_eq!(probe.calls(), 2);
    assert!(
        poll_once(&mut cache.find_by_hash(&rec.hash)).is_ready(),
        "the expired positive entry does not shadow the negative one"
    );
    assert_eq!(probe.calls(), 2);
}
