//! LastUsedRecorder: marks on the request path, batched flushes, retries, shutdown.
//!
//! Time is paused tokio time for the flusher and a manual `Clock` for the marks, so every test is
//! deterministic and nothing sleeps for real.

mod common;

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_api_key::store::LookupResult;
use tower_api_key::{
    ApiKey, ApiKeyAuth, Clock, KeyHash, KeyId, KeyManager, KeyRecord, KeyStore, LastUsedRecorder,
    LastUsedRecorderLayer, ManualClock, MemoryStore, NewKey, OrgId, Plan, Principal, StoreError,
    Timestamp,
};

const START: u64 = 1_700_000_000;
const INTERVAL: Duration = Duration::from_secs(10);

/// A real `MemoryStore` behind a wrapper that counts every call and can be told to fail (or
/// panic in) `touch_last_used`.
#[derive(Clone, Default)]
struct CountingStore {
    inner: MemoryStore,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    find_by_hash: AtomicUsize,
    touch: AtomicUsize,
    other: AtomicUsize,
    fail_touch: AtomicBool,
    panic_touch: AtomicBool,
    batches: Mutex<Vec<Vec<(KeyId, Timestamp)>>>,
}

impl CountingStore {
    fn touches(&self) -> usize {
        self.counts.touch.load(Ordering::SeqCst)
    }
    fn total_calls(&self) -> usize {
        self.counts.find_by_hash.load(Ordering::SeqCst)
            + self.touches()
            + self.counts.other.load(Ordering::SeqCst)
    }
    fn batches(&self) -> Vec<Vec<(KeyId, Timestamp)>> {
        self.counts.batches.lock().unwrap().clone()
    }
    fn fail(&self, fail: bool) {
        self.counts.fail_touch.store(fail, Ordering::SeqCst);
    }
    fn other(&self) {
        self.counts.other.fetch_add(1, Ordering::SeqCst);
    }
}

impl KeyStore for CountingStore {
    type Lookup = Ready<LookupResult>;

    fn find_by_hash(&self, hash: &KeyHash) -> Self::Lookup {
        self.counts.find_by_hash.fetch_add(1, Ordering::SeqCst);
        self.inner.find_by_hash(hash)
    }
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.other();
        self.inner.insert(record).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.other();
        self.inner.get(id).await
    }
    async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, StoreError> {
        self.other();
        self.inner.list(org).await
    }
    async fn revoke(&self, id: &KeyId, at: Timestamp) -> Result<Option<KeyRecord>, StoreError> {
        self.other();
        self.inner.revoke(id, at).await
    }
    async fn update(
        &self,
        id: &KeyId,
        c: &tower_api_key::KeyChanges,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.other();
        self.inner.update(id, c).await
    }
    async fn touch_last_used(&self, batch: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        self.counts.touch.fetch_add(1, Ordering::SeqCst);
        let mut sorted = batch.to_vec();
        sorted.sort();
        self.counts.batches.lock().unwrap().push(sorted);
        if self.counts.panic_touch.swap(false, Ordering::SeqCst) {
            panic!("injected panic in touch_last_used");
        }
        if self.counts.fail_touch.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("injected failure"));
        }
        self.inner.touch_last_used(batch).await
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
        self.other();
        self.inner.set_plan(org, plan).await
    }
    async fn plan(&self, org: &OrgId) -> Result<Plan, StoreError> {
        self.other();
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

struct Fixture {
    store: CountingStore,
    manager: KeyManager<MemoryStore>,
    clock: Clock,
    time: ManualClock,
    org: OrgId,
}

impl Fixture {
    fn new() -> Self {
        let store = CountingStore::default();
        let (clock, time) = Clock::manual(Timestamp::from_unix_secs(START));
        let manager = KeyManager::new(store.inner.clone()).clock(clock.clone());
        Self {
            store,
            manager,
            clock,
            time,
            org: OrgId::from("org_1"),
        }
    }

    fn recorder(&self) -> LastUsedRecorderLayer<CountingStore> {
        LastUsedRecorder::new(self.store.clone()).clock(self.clock.clone())
    }

    /// A key, and the principal `ApiKeyAuth` would insert for it (read from the memory store
    /// directly, so the counting store stays at zero).
    async fn key(&self, name: &str) -> (ApiKey, Principal) {
        let created = self
            .manager
            .create(&self.org, NewKey::new(name))
            .await
            .unwrap();
        let stored = self
            .store
            .inner
            .find_by_hash(&created.key.hash())
            .await
            .unwrap()
            .unwrap();
        (created.key, Principal::new(stored.record, stored.plan))
    }

    async fn principals(&self, n: usize) -> Vec<Principal> {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            v.push(self.key(&format!("k{i}")).await.1);
        }
        v
    }

    async fn last_used(&self, p: &Principal) -> Option<Timestamp> {
        self.manager
            .get(&self.org, p.key_id())
            .await
            .unwrap()
            .last_used_at
    }

    fn at(&self, secs_after_start: u64) -> Timestamp {
        let t = Timestamp::from_unix_secs(START + secs_after_start);
        self.time.set(t);
        t
    }
}

fn request(p: &Principal) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(p.clone());
    req
}

type OkResult = Result<Response<Empty<Bytes>>, Infallible>;

fn ok_service() -> impl Service<
    Request<()>,
    Response = Response<Empty<Bytes>>,
    Error = Infallible,
    Future = Ready<OkResult>,
> + Clone {
    tower::service_fn(|_: Request<()>| ready(Ok(Response::new(Empty::new()))))
}

/// Send one request through `recorder` over a no-op service.
async fn hit(recorder: &LastUsedRecorderLayer<CountingStore>, p: &Principal) {
    let res = ServiceBuilder::new()
        .layer(recorder.clone())
        .service(ok_service())
        .oneshot(request(p))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// Let paused time run `d` (the runtime jumps from timer to timer, running the flusher at each
/// of its ticks on the way).
async fn pass(d: Duration) {
    tokio::time::sleep(d).await;
}

const JUST_PAST: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn one_flush_per_interval_and_none_when_idle() {
    let fx = Fixture::new();
    let p = fx.key("ci").await.1;
    let recorder = fx.recorder();
    let flusher = recorder.spawn_flusher(INTERVAL);
    pass(JUST_PAST).await; // stay 1 ms off the ticks at 10 s, 20 s, …

    for round in 1..=3u64 {
        fx.at(round * 100);
        for _ in 0..50 {
            hit(&recorder, &p).await;
        }
        pass(INTERVAL - JUST_PAST * 2).await;
        assert_eq!(fx.store.touches() as u64, round - 1, "not before the tick");
        pass(JUST_PAST * 2).await;
        assert_eq!(fx.store.touches() as u64, round, "one call per interval");
        assert_eq!(
            fx.last_used(&p).await,
            Some(Timestamp::from_unix_secs(START + round * 100))
        );
    }

    // Intervals without requests make no store call.
    pass(INTERVAL * 5).await;
    assert_eq!(fx.store.touches(), 3);
    flusher.shutdown().await.unwrap();
    assert_eq!(
        fx.store.touches(),
        3,
        "nothing pending at shutdown, no call"
    );
}

#[tokio::test(start_paused = true)]
async fn many_keys_are_written_in_one_batched_call() {
    let fx = Fixture::new();
    let keys = fx.principals(200).await;
    let recorder = fx.recorder();
    let flusher = recorder.spawn_flusher(INTERVAL);

    let t = fx.at(42);
    for p in &keys {
        hit(&recorder, p).await;
        hit(&recorder, p).await;
    }
    pass(INTERVAL + JUST_PAST).await;

    assert_eq!(fx.store.touches(), 1);
    let batch = &fx.store.batches()[0];
    assert_eq!(batch.len(), 200, "each key once, however many requests");
    assert!(batch.iter().all(|(_, at)| *at == t));
    for p in &keys {
        assert_eq!(fx.last_used(p).await, Some(t));
    }
    flusher.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn marks_are_truncated_to_the_granularity_and_not_rewritten_within_it() {
    let fx = Fixture::new();
    let p = fx.key("ci").await.1;
    let recorder = fx.recorder().granularity(Duration::from_secs(60));
    let flusher = recorder.spawn_flusher(INTERVAL);

    // START is a multiple of 60 s plus 20 s.
    let minute = (START / 60) * 60;
    fx.time
        .set(Timestamp::from_unix_millis(START * 1000 + 5_500));
    hit(&recorder, &p).await;
    pass(INTERVAL + JUST_PAST).await;
    assert_eq!(
        fx.last_used(&p).await,
        Some(Timestamp::from_unix_secs(minute))
    );
    assert_eq!(fx.store.touches(), 1);

    // Still the same minute: nothing to write.
    fx.at(30);
    hit(&recorder, &p).await;
    pass(INTERVAL).await;
    assert_eq!(fx.store.touches(), 1);

    // Next minute: written.
    fx.at(40);
    hit(&recorder, &p).await;
    pass(INTERVAL).await;
    assert_eq!(fx.store.touches(), 2);
    assert_eq!(
        fx.last_used(&p).await,
        Some(Timestamp::from_unix_secs(minute + 60))
    );
    flusher.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn last_used_only_moves_forward() {
    let fx = Fixture::new();
    let p = fx.key("ci").await.1;
    let recorder = fx.recorder();

    let late = fx.at(500);
    hit(&recorder, &p).await;
    recorder.flush().await.unwrap();
    assert_eq!(fx.last_used(&p).await, Some(late));

    // A stale batch (another replica's, or a retry) does not move the time back.
    fx.store
        .touch_last_used(&[(p.key_id().clone(), Timestamp::from_unix_secs(START + 100))])
        .await
        .unwrap();
    assert_eq!(fx.last_used(&p).await, Some(late));

    // Nor does the clock stepping back.
    fx.at(200);
    hit(&recorder, &p).await;
    assert_eq!(
        recorder.flush().await.unwrap(),
        0,
        "an older time marks nothing"
    );
    assert_eq!(fx.last_used(&p).await, Some(late));

    // The store replaces a key's snapshot (here a revocation with a grace period): the new
    // snapshot starts from the old one's mark, and a late flush of the old one cannot undo
    // a newer mark of the new one.
    fx.manager
        .store()
        .revoke(p.key_id(), Timestamp::from_unix_secs(START + 10_000))
        .await
        .unwrap();
    let replaced = fx
        .store
        .inner
        .find_by_hash(&p.record().hash)
        .await
        .unwrap()
        .unwrap();
    assert!(!Arc::ptr_eq(&replaced.record, p.record()), "a new snapshot");
    let p2 = Principal::new(replaced.record, replaced.plan);
    fx.at(450);
    hit(&recorder, &p2).await;
    assert_eq!(
        recorder.flush().await.unwrap(),
        0,
        "older than the copied mark"
    );
    let newest = fx.at(700);
    hit(&recorder, &p2).await;
    recorder.flush().await.unwrap();
    fx.at(650);
    hit(&recorder, &p).await; // the old snapshot, still held by an in-flight request
    recorder.flush().await.unwrap();
    assert_eq!(fx.last_used(&p).await, Some(newest));
}

#[tokio::test(start_paused = true)]
async fn a_failed_flush_keeps_every_mark_and_the_next_interval_retries() {
    let fx = Fixture::new();
    let keys = fx.principals(3).await;
    let (a, b, c) = (&keys[0], &keys[1], &keys[2]);
    let recorder = fx.recorder();
    let flusher = recorder.spawn_flusher(INTERVAL);

    fx.store.fail(true);
    let t1 = fx.at(1);
    hit(&recorder, a).await;
    hit(&recorder, b).await;
    pass(INTERVAL + JUST_PAST).await;
    assert_eq!(fx.store.touches(), 1, "tried");
    assert_eq!(fx.last_used(a).await, None, "and failed");

    // Still failing: retried the next interval with the same marks.
    pass(INTERVAL).await;
    assert_eq!(fx.store.touches(), 2);
    assert_eq!(fx.store.batches()[0], fx.store.batches()[1]);

    // Newer marks merge with the kept ones: a moves forward, c joins.
    let t2 = fx.at(30);
    hit(&recorder, a).await;
    hit(&recorder, c).await;
    fx.store.fail(false);
    pass(INTERVAL).await;
    assert_eq!(fx.store.touches(), 3);
    assert_eq!(fx.store.batches()[2].len(), 3, "one batch with every key");
    assert_eq!(fx.last_used(a).await, Some(t2));
    assert_eq!(fx.last_used(b).await, Some(t1));
    assert_eq!(fx.last_used(c).await, Some(t2));

    // Written marks are not written again.
    pass(INTERVAL).await;
    assert_eq!(fx.store.touches(), 3);
    flusher.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_writes_everything_pending_before_returning() {
    let fx = Fixture::new();
    let keys = fx.principals(20).await;
    let recorder = fx.recorder();
    let flusher = recorder.spawn_flusher(INTERVAL);

    let t = fx.at(3);
    for p in &keys {
        hit(&recorder, p).await;
    }
    pass(INTERVAL / 2).await;
    assert_eq!(fx.store.touches(), 0, "mid-interval");

    flusher.shutdown().await.unwrap();
    assert_eq!(fx.store.touches(), 1);
    for p in &keys {
        assert_eq!(fx.last_used(p).await, Some(t));
    }
    assert!(recorder.is_flushed().await);
}

#[tokio::test(start_paused = true)]
async fn a_failed_shutdown_flush_keeps_the_marks_for_a_later_flush() {
    let fx = Fixture::new();
    let keys = fx.principals(4).await;
    let recorder = fx.recorder();
    let flusher = recorder.spawn_flusher(INTERVAL);
    let t = fx.at(3);
    for p in &keys {
        hit(&recorder, p).await;
    }

    fx.store.fail(true);
    let err = flusher.shutdown().await.unwrap_err();
    assert_eq!(err.pending, 4);
    assert!(matches!(err.source, StoreError::Unavailable(_)));
    assert!(!recorder.is_flushed().await);

    fx.store.fail(false);
    assert_eq!(recorder.flush().await.unwrap(), 4);
    for p in &keys {
        assert_eq!(fx.last_used(p).await, Some(t));
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_that_never_answers_is_bounded_by_the_flush_timeout() {
    #[derive(Clone)]
    struct Hanging(MemoryStore);
    impl KeyStore for Hanging {
        type Lookup = Ready<LookupResult>;
        fn find_by_hash(&self, hash: &KeyHash) -> Self::Lookup {
            self.0.find_by_hash(hash)
        }
        async fn insert(&self, r: KeyRecord) -> Result<(), StoreError> {
            self.0.insert(r).await
        }
        async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
            self.0.get(id).await
        }
        async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, StoreError> {
            self.0.list(org).await
        }
        async fn revoke(&self, id: &KeyId, at: Timestamp) -> Result<Option<KeyRecord>, StoreError> {
            self.0.revoke(id, at).await
        }
        async fn update(
            &self,
            id: &KeyId,
            c: &tower_api_key::KeyChanges,
        ) -> Result<Option<KeyRecord>, StoreError> {
            self.0.update(id, c).await
        }
        async fn touch_last_used(&self, _: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
            std::future::pending().await
        }
        async fn record_usage(
            &self,
            batch: &[tower_api_key::UsageDelta],
        ) -> Result<(), StoreError> {
            self.0.record_usage(batch).await
        }
        async fn usage(
            &self,
            org: &OrgId,
            from: tower_api_key::Timestamp,
            to: tower_api_key::Timestamp,
            granularity: tower_api_key::Granularity,
        ) -> Result<Vec<tower_api_key::UsageRow>, StoreError> {
            self.0.usage(org, from, to, granularity).await
        }
        async fn prune_usage(
            &self,
            granularity: tower_api_key::Granularity,
            before: tower_api_key::Timestamp,
        ) -> Result<u64, StoreError> {
            self.0.prune_usage(granularity, before).await
        }
        async fn set_plan(&self, org: &OrgId, plan: Plan) -> Result<(), StoreError> {
            self.0.set_plan(org, plan).await
        }
        async fn plan(&self, org: &OrgId) -> Result<Plan, StoreError> {
            self.0.plan(org).await
        }

        async fn claim_expiry_reminders(
            &self,
            now: Timestamp,
            until: Timestamp,
            limit: usize,
        ) -> Result<Vec<KeyRecord>, StoreError> {
            self.0.claim_expiry_reminders(now, until, limit).await
        }
    }

    let fx = Fixture::new();
    let p = fx.key("ci").await.1;
    let recorder = LastUsedRecorder::new(Hanging(fx.store.inner.clone()))
        .clock(fx.clock.clone())
        .flush_timeout(Duration::from_secs(2));
    fx.at(1);
    recorder.mark(&p);
    let err = recorder.flush().await.unwrap_err();
    assert!(matches!(err.source, StoreError::Timeout));
    assert_eq!(err.pending, 1, "the mark is kept");
}

#[tokio::test(start_paused = true)]
async fn shutdown_flushes_even_if_the_flusher_task_panicked() {
    let fx = Fixture::new();
    let p = fx.key("ci").await.1;
    let recorder = fx.recorder();
    let flusher = recorder.spawn_flusher(INTERVAL);
    let t = fx.at(9);
    hit(&recorder, &p).await;

    fx.store.counts.panic_touch.store(true, Ordering::SeqCst);
    pass(INTERVAL + JUST_PAST).await;
    assert!(flusher.is_finished(), "the store's panic ended the task");

    flusher.shutdown().await.unwrap();
    assert_eq!(fx.last_used(&p).await, Some(t));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_leaves_the_flusher_running() {
    let fx = Fixture::new();
    let p = fx.key("ci").await.1;
    let recorder = fx.recorder();
    drop(recorder.spawn_flusher(INTERVAL));
    let t = fx.at(1);
    hit(&recorder, &p).await;
    pass(INTERVAL + JUST_PAST).await;
    assert_eq!(fx.last_used(&p).await, Some(t));
}

#[tokio::test(start_paused = true)]
async fn the_request_path_makes_no_store_call() {
    let fx = Fixture::new();
    let keys = fx.principals(10).await;
    let recorder = fx.recorder();
    let mut svc = ServiceBuilder::new()
        .layer(recorder.clone())
        .service(ok_service());

    // Many requests, across new granules (the slow path and queueing run too).
    for second in 0..30 {
        fx.at(second);
        for p in &keys {
            for _ in 0..10 {
                svc.ready().await.unwrap().call(request(p)).await.unwrap();
            }
        }
    }
    assert_eq!(
        fx.store.total_calls(),
        0,
        "3,000 requests, zero store calls"
    );

    assert_eq!(recorder.flush().await.unwrap(), 10);
    assert_eq!(fx.store.total_calls(), 1);
    assert_eq!(fx.store.touches(), 1);
}

#[tokio::test(start_paused = true)]
async fn behind_api_key_auth_only_the_lookup_touches_the_store() {
    let fx = Fixture::new();
    let (key, p) = fx.key("ci").await;
    let recorder = fx.recorder();
    let flusher = recorder.spawn_flusher(INTERVAL);
    let mut svc = ServiceBuilder::new()
        .layer(ApiKeyAuth::new(fx.store.clone()).clock(fx.clock.clone()))
        .layer(recorder.clone())
        .service(ok_service());

    let t = fx.at(7);
    for _ in 0..100 {
        let req = Request::builder()
            .header("authorization", format!("Bearer {}", key.expose_secret()))
            .body(())
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(fx.store.counts.find_by_hash.load(Ordering::SeqCst), 100);
    assert_eq!(fx.store.total_calls(), 100, "lookups only");

    pass(INTERVAL + JUST_PAST).await;
    assert_eq!(fx.store.touches(), 1);
    assert_eq!(fx.last_used(&p).await, Some(t));
    flusher.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn key_manager_list_shows_last_used_after_a_flush() {
    let fx = Fixture::new();
    let (used_key, used) = fx.key("used").await;
    let idle = fx.key("idle").await.1;
    let recorder = fx.recorder();
    let flusher = recorder.spawn_flusher(INTERVAL);
    let app =
        axum::Router::new()
            .route(
                "/v1/whoami",
                axum::routing::get(
                    |axum::Extension(p): axum::Extension<Principal>| async move {
                        p.key_id().to_string()
                    },
                ),
            )
            .layer(recorder.clone())
            .layer(ApiKeyAuth::new(fx.store.clone()).clock(fx.clock.clone()));

    let t = fx.at(61);
    let res = app
        .oneshot(
            Request::builder()
                .uri("/v1/whoami")
                .header(
                    "authorization",
                    format!("Bearer {}", used_key.expose_secret()),
                )
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let listed = |fx: &Fixture| {
        let manager = fx.manager.clone();
        let org = fx.org.clone();
        async move {
            let mut v: Vec<(KeyId, Option<Timestamp>)> = manager
                .list(&org)
                .await
                .unwrap()
                .into_iter()
                .map(|r| (r.id, r.last_used_at))
                .collect();
            v.sort();
            v
        }
    };
    let mut before = vec![(used.key_id().clone(), None), (idle.key_id().clone(), None)];
    before.sort();
    assert_eq!(listed(&fx).await, before, "not yet flushed");

    pass(INTERVAL + JUST_PAST).await;
    let mut after = vec![
        (used.key_id().clone(), Some(t)),
        (idle.key_id().clone(), None),
    ];
    after.sort();
    assert_eq!(listed(&fx).await, after);
    flusher.shutdown().await.unwrap();
}

/// A flush replaces the store's snapshot of a key. Requests still holding the old snapshot (in
/// flight during the flush) mark that one: their marks reach the store on the next flush. The new
/// snapshot carries the flushed mark, so reading it in the same granule queues nothing.
#[tokio::test(start_paused = true)]
async fn a_mark_on_a_snapshot_replaced_by_a_flush_reaches_the_store_next_flush() {
    let fx = Fixture::new();
    let (key, old) = fx.key("ci").await;
    let recorder = fx.recorder();

    let first = fx.at(100);
    hit(&recorder, &old).await;
    assert_eq!(recorder.flush().await.unwrap(), 1);
    assert_eq!(fx.last_used(&old).await, Some(first));

    let stored = fx
        .store
        .inner
        .find_by_hash(&key.hash())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !Arc::ptr_eq(&stored.record, old.record()),
        "the flush replaced the snapshot"
    );
    assert_eq!(
        stored.record.last_used_at,
        Some(first),
        "the request path sees it"
    );
    let new = Principal::new(stored.record, stored.plan);

    // Same granule, new snapshot: it carries the flushed mark, nothing to write.
    hit(&recorder, &new).await;
    assert_eq!(recorder.flush().await.unwrap(), 0);

    // A later request that still holds the old snapshot.
    let second = fx.at(200);
    hit(&recorder, &old).await;
    assert_eq!(recorder.flush().await.unwrap(), 1);
    assert_eq!(fx.last_used(&old).await, Some(second));
    assert_eq!(
        fx.store.batches().last().unwrap()[0],
        (old.key_id().clone(), second)
    );

    // And the snapshot that flush installed keeps taking marks.
    let third = fx.at(300);
    let latest = fx
        .store
        .inner
        .find_by_hash(&key.hash())
        .await
        .unwrap()
        .unwrap();
    hit(&recorder, &Principal::new(latest.record, latest.plan)).await;
    assert_eq!(recorder.flush().await.unwrap(), 1);
    assert_eq!(fx.last_used(&old).await, Some(third));
}

/// Touched, revoked, touched again through the recorder: the key keeps its revocation and its
/// latest last-used time, and the revoked key's old snapshot still records.
#[tokio::test(start_paused = true)]
async fn a_revoked_key_keeps_its_revocation_and_its_latest_last_used() {
    let fx = Fixture::new();
    let p = fx.key("ci").await.1;
    let recorder = fx.recorder();

    fx.at(100);
    hit(&recorder, &p).await;
    recorder.flush().await.unwrap();
    let revoked_at = fx.at(150);
    fx.manager.revoke(&fx.org, p.key_id()).await.unwrap();
    let last = fx.at(200);
    hit(&recorder, &p).await;
    recorder.flush().await.unwrap();

    let got = fx.manager.get(&fx.org, p.key_id()).await.unwrap();
    assert_eq!(got.revoked_at, Some(revoked_at));
    assert_eq!(got.last_used_at, Some(last));
}

#[tokio::test(start_paused = true)]
async fn without_a_principal_the_layer_fails_closed() {
    let fx = Fixture::new();
    let recorder = fx.recorder();
    let called = Arc::new(AtomicBool::new(false));
    let flag = called.clone();
    let svc = ServiceBuilder::new()
        .layer(recorder.clone())
        .service(tower::service_fn(move |_: Request<()>| {
            flag.store(true, Ordering::SeqCst);
            ready(Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())))
        }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let json = common::problem_of(res).await;
    assert_eq!(json["code"], "auth_layer_missing");
    assert_eq!(
        json["title"],
        "Server misconfiguration: LastUsedRecorder found no authenticated principal (is ApiKeyAuth in front of it?)"
    );
    assert!(
        !called.load(Ordering::SeqCst),
        "the inner service is not called"
    );
    assert!(recorder.is_flushed().await, "nothing marked");
}

/// Real threads: many tasks mark the same key and their own keys while flushes run concurrently;
/// every key ends with its latest mark (no mark lost between a drain and a re-mark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_marking_same_and_different_keys_at_once() {
    const TASKS: usize = 8;
    let fx = Fixture::new();
    let shared = fx.key("shared").await.1;
    let own = fx.principals(TASKS).await;
    let recorder = fx.recorder();

    for round in 1..=20u64 {
        let t = fx.at(round);
        let start = Arc::new(tokio::sync::Barrier::new(TASKS + 1));
        let mut tasks = Vec::new();
        for mine in own.clone() {
            let (recorder, shared, start) = (recorder.clone(), shared.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                let mut svc = ServiceBuilder::new().layer(recorder).service(ok_service());
                start.wait().await;
                for i in 0..200 {
                    let p = if i % 2 == 0 { &shared } else { &mine };
                    svc.ready().await.unwrap().call(request(p)).await.unwrap();
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        // Flush while the tasks mark.
        let flushing = {
            let recorder = recorder.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                for _ in 0..20 {
                    recorder.flush().await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        };
        for task in tasks {
            task.await.unwrap();
        }
        flushing.await.unwrap();
        recorder.flush().await.unwrap();

        assert_eq!(fx.last_used(&shared).await, Some(t), "round {round}");
        for p in &own {
            assert_eq!(fx.last_used(p).await, Some(t), "round {round}");
        }
    }
    assert_eq!(fx.store.counts.find_by_hash.load(Ordering::SeqCst), 0);
    assert!(fx.store.batches().iter().all(|b| b.len() <= TASKS + 1));
}
