//! The breaker in front of the key store and of Redis: once the backend has failed
//! `failures` times in a row, misses (rate-limit checks) are refused at once instead of waiting
//! for the backend's timeout; cache hits keep working; after the cool-down one probe decides.
//!
//! The first tests run a `CachedStore` over an in-memory store that can be switched down or made
//! to hang, and need no service. With the `postgres` feature, a PostgreSQL store on a port where
//! nothing listens shows the fail-fast path end to end; with `DATABASE_URL` too, a switchable
//! TCP proxy in front of the real database shows the breaker closing when it comes back:
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//! REDIS_URL=redis://127.0.0.1:6379 \
//!     cargo test --features postgres,redis --test breaker
//! ```
//!
//! Without `DATABASE_URL` (`REDIS_URL`) the tests that need it print why they skip; with it, an
//! unreachable service fails them. Time is a `ManualClock`: the cool-down ends when a test says so.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use common::{Fixture, echo_principal, get, problem_code};
use http::{Response, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt, service_fn, util::BoxCloneService};
use tower_api_key::store::{BoxFuture, CacheConfig, CachedStore, LookupResult};
use tower_api_key::{
    ApiKey, ApiKeyAuth, BreakerConfig, BreakerState, Clock, KeyFormat, KeyHash, KeyId, KeyRecord,
    KeyStore, OrgId, Plan, ResponseBody, StoreError, Timestamp,
};

type Svc = BoxCloneService<
    http::Request<Full<Bytes>>,
    Response<ResponseBody<Full<Bytes>>>,
    std::convert::Infallible,
>;

/// A store in front of a `MemoryStore` that can be switched down (lookups fail at once) or made
/// to hang (lookups wait until released), and counts its lookups.
#[derive(Clone)]
struct Switch<S> {
    inner: S,
    down: Arc<AtomicBool>,
    open: tokio::sync::watch::Sender<bool>,
    lookups: Arc<AtomicUsize>,
}

impl<S: KeyStore> Switch<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            down: Arc::default(),
            open: tokio::sync::watch::Sender::new(true),
            lookups: Arc::default(),
        }
    }

    fn down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Lookups wait (`false`) or go ahead (`true`).
    fn gate(&self, open: bool) {
        self.open.send_replace(open);
    }

    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }
}

impl<S: KeyStore> KeyStore for Switch<S> {
    type Lookup = BoxFuture<'static, LookupResult>;

    fn find_by_hash(&self, hash: &KeyHash) -> Self::Lookup {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let down = self.down.load(Ordering::SeqCst);
        let answer = self.inner.find_by_hash(hash);
        let mut open = self.open.subscribe();
        Box::pin(async move {
            // The sender lives in the store; if it is gone the lookup just goes ahead.
            let _ = open.wait_for(|open| *open).await;
            if down {
                Err(StoreError::unavailable("connection refused"))
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

/// The cool-down of these tests: 7 s, told apart from the layer's default `Retry-After` (5 s).
const COOL_DOWN: Duration = Duration::from_secs(7);

fn config(clock: &Clock) -> CacheConfig {
    CacheConfig::default()
        .clock(clock.clone())
        .breaker(BreakerConfig::default().failures(5).cool_down(COOL_DOWN))
}

fn service<S: KeyStore>(cache: &CachedStore<S>, clock: &Clock, timeout: Duration) -> Svc {
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(
                ApiKeyAuth::new(cache.clone())
                    .clock(clock.clone())
                    .store_timeout(timeout),
            )
            .service(service_fn(echo_principal)),
    )
}

/// A well-formed key no store knows: always a miss.
fn unknown_key() -> ApiKey {
    KeyFormat::live().generate().unwrap()
}

async fn call(svc: &Svc, key: &ApiKey) -> Response<ResponseBody<Full<Bytes>>> {
    let auth = format!("Bearer {}", key.expose_secret());
    svc.clone().oneshot(get("/", Some(&auth))).await.unwrap()
}

/// A miss on a service of its own, for spawned tasks (a service is `Send`, not `Sync`).
async fn miss(svc: Svc) -> Response<ResponseBody<Full<Bytes>>> {
    let auth = format!("Bearer {}", unknown_key().expose_secret());
    svc.oneshot(get("/", Some(&auth))).await.unwrap()
}

fn retry_after<B>(res: &Response<B>) -> Option<&str> {
    res.headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap())
}

/// Asserts `res` is `503 auth_unavailable` with `Retry-After: retry`.
async fn assert_unavailable<B>(res: Response<B>, retry: &str)
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after(&res), Some(retry));
    assert_eq!(problem_code(res).await, "auth_unavailable");
}

/// Five misses while the store is down: each reaches it, fails, and gets the layer's 503.
async fn trip<S: KeyStore>(svc: &Svc, cache: &CachedStore<S>) {
    for i in 0..5 {
        assert_eq!(
            cache.stats().breaker.state,
            BreakerState::Closed,
            "miss {i}"
        );
        assert_unavailable(call(svc, &unknown_key()).await, "5").await;
    }
    assert_eq!(cache.stats().breaker.state, BreakerState::Open);
}

#[tokio::test]
async fn four_failures_and_a_success_keep_the_breaker_closed() {
    let fx = Fixture::new();
    let known = fx.mint("org_a", &[]).await;
    let store = Switch::new(fx.store.clone());
    let cache = CachedStore::with_config(store.clone(), config(&fx.clock));
    let svc = service(&cache, &fx.clock, Duration::from_secs(3));

    store.down(true);
    for _ in 0..4 {
        assert_unavailable(call(&svc, &unknown_key()).await, "5").await;
    }
    store.down(false);
    assert_eq!(call(&svc, &known.key).await.status(), StatusCode::OK);
    store.down(true);
    for _ in 0..4 {
        assert_unavailable(call(&svc, &unknown_key()).await, "5").await;
    }
    assert_eq!(store.lookups(), 9, "every miss reached the store");
    assert_eq!(cache.stats().breaker.state, BreakerState::Closed);
    assert_eq!(cache.stats().breaker.opened, 0);
}

#[tokio::test]
async fn once_open_a_miss_is_refused_at_once_with_the_remaining_cool_down() {
    let fx = Fixture::new();
    let store = Switch::new(fx.store.clone());
    let cache = CachedStore::with_config(store.clone(), config(&fx.clock));
    let svc = service(&cache, &fx.clock, Duration::from_secs(3));

    store.down(true);
    trip(&svc, &cache).await;
    assert_eq!(store.lookups(), 5);

    assert_unavailable(call(&svc, &unknown_key()).await, "7").await;
    fx.time.advance(Duration::from_millis(3_500));
    assert_unavailable(call(&svc, &unknown_key()).await, "4").await;
    fx.time.advance(Duration::from_millis(3_499));
    assert_unavailable(call(&svc, &unknown_key()).await, "1").await;
    assert_eq!(store.lookups(), 5, "the store was not asked while open");

    let stats = cache.stats();
    assert_eq!(
        (
            stats.breaker.opened,
            stats.breaker.refused,
            stats.breaker.probes
        ),
        (1, 3, 0)
    );
    assert_eq!((stats.misses, stats.backend_lookups), (8, 5));
}

#[tokio::test]
async fn cache_hits_are_served_while_open() {
    let fx = Fixture::new();
    let known = fx.mint("org_a", &[]).await;
    let made_up = unknown_key();
    let store = Switch::new(fx.store.clone());
    let cache = CachedStore::with_config(store.clone(), config(&fx.clock));
    let svc = service(&cache, &fx.clock, Duration::from_secs(3));
    assert_eq!(call(&svc, &known.key).await.status(), StatusCode::OK);
    let res = call(&svc, &made_up).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    store.down(true);
    trip(&svc, &cache).await;
    let lookups = store.lookups();

    let res = call(&svc, &known.key).await;
    assert_eq!(res.status(), StatusCode::OK, "a cached key");
    let res = call(&svc, &made_up).await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "a cached unknown key"
    );
    assert_eq!(problem_code(res).await, "invalid_api_key");
    assert_eq!(store.lookups(), lookups);
    assert_eq!(
        cache.stats().breaker.refused,
        0,
        "hits never ask the breaker"
    );
}

#[tokio::test]
async fn after_the_cool_down_a_successful_probe_closes_the_breaker() {
    let fx = Fixture::new();
    let fresh = fx.mint("org_a", &[]).await;
    let store = Switch::new(fx.store.clone());
    let cache = CachedStore::with_config(store.clone(), config(&fx.clock));
    let svc = service(&cache, &fx.clock, Duration::from_secs(3));
    store.down(true);
    trip(&svc, &cache).await;

    store.down(false);
    assert_unavailable(call(&svc, &fresh.key).await, "7").await;
    fx.time.advance(COOL_DOWN);
    assert_eq!(cache.stats().breaker.state, BreakerState::HalfOpen);
    assert_eq!(call(&svc, &fresh.key).await.status(), StatusCode::OK);
    let stats = cache.stats();
    assert_eq!(
        (stats.breaker.state, stats.breaker.probes),
        (BreakerState::Closed, 1)
    );

    let res = call(&svc, &unknown_key()).await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "misses reach the store again"
    );
    assert_eq!(store.lookups(), 7);
}

#[tokio::test]
async fn a_failed_probe_opens_the_breaker_for_another_cool_down() {
    let fx = Fixture::new();
    let store = Switch::new(fx.store.clone());
    let cache = CachedStore::with_config(store.clone(), config(&fx.clock));
    let svc = service(&cache, &fx.clock, Duration::from_secs(3));
    store.down(true);
    trip(&svc, &cache).await;

    fx.time.advance(COOL_DOWN);
    // The probe reaches the store and fails: the layer's own 503.
    assert_unavailable(call(&svc, &unknown_key()).await, "5").await;
    assert_eq!(store.lookups(), 6);
    // Open again for a whole cool-down from the probe's failure.
    assert_unavailable(call(&svc, &unknown_key()).await, "7").await;
    assert_eq!(store.lookups(), 6);
    let stats = cache.stats().breaker;
    assert_eq!(
        (stats.state, stats.opened, stats.probes),
        (BreakerState::Open, 2, 1)
    );
}

fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

#[tokio::test]
async fn while_the_probe_is_under_way_other_misses_are_refused() {
    let fx = Fixture::new();
    let known = fx.mint("org_a", &[]).await;
    let store = Switch::new(fx.store.clone());
    let cache = CachedStore::with_config(store.clone(), config(&fx.clock));
    let svc = service(&cache, &fx.clock, Duration::from_secs(3));
    store.down(true);
    trip(&svc, &cache).await;
    store.down(false);
    fx.time.advance(COOL_DOWN);

    store.gate(false);
    let mut probe = cache.find_by_hash(&known.key.hash());
    assert!(
        poll_once(&mut probe).is_pending(),
        "the probe waits for the store"
    );
    let other = cache.find_by_hash(&unknown_key().hash());
    match other.await {
        Err(StoreError::CircuitOpen(refused)) => assert_eq!(refused.retry_after_secs(), 1),
        other => panic!("expected CircuitOpen, got {other:?}"),
    }
    assert_unavailable(call(&svc, &unknown_key()).await, "1").await;
    assert_eq!(store.lookups(), 6, "only the probe reached the store");

    store.gate(true);
    assert!(probe.await.unwrap().is_some());
    assert_eq!(cache.stats().breaker.state, BreakerState::Closed);
}

/// The finding this breaker answers: a store that hangs costs every miss the store timeout.
/// Lookups abandoned by that timeout count as failures, so after five of them misses are
/// answered at once.
#[tokio::test(start_paused = true)]
async fn lookups_abandoned_at_the_store_timeout_open_the_breaker() {
    let fx = Fixture::new();
    let store = Switch::new(fx.store.clone());
    let cache = CachedStore::with_config(store.clone(), config(&fx.clock));
    let svc = service(&cache, &fx.clock, Duration::from_secs(3));
    store.gate(false);

    let started = tokio::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..5 {
        calls.spawn(miss(svc.clone()));
    }
    while let Some(res) = calls.join_next().await {
        assert_unavailable(res.unwrap(), "5").await;
    }
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(3),
        "each waited the timeout"
    );
    assert_eq!(cache.stats().breaker.state, BreakerState::Open);

    let started = tokio::time::Instant::now();
    assert_unavailable(call(&svc, &unknown_key()).await, "7").await;
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "answered without waiting"
    );
    assert_eq!(store.lookups(), 5);
}

#[tokio::test]
async fn the_fused_stack_answers_an_open_breaker_the_same_way() {
    let fx = Fixture::new();
    let store = Switch::new(fx.store.clone());
    let cache = CachedStore::with_config(store.clone(), config(&fx.clock));
    let stack: Svc = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(
                ApiKeyAuth::new(cache.clone())
                    .clock(fx.clock.clone())
                    .rate_limit(tower_api_key::OrgRateLimit::new().clock(fx.clock.clone())),
            )
            .service(service_fn(echo_principal)),
    );
    store.down(true);
    trip(&stack, &cache).await;
    fx.time.advance(Duration::from_millis(1_500));
    let res = call(&stack, &unknown_key()).await;
    assert!(res.headers().get("x-ratelimit-limit").is_none());
    assert_unavailable(res, "6").await;
    assert_eq!(store.lookups(), 5);
}

#[tokio::test]
async fn a_disabled_breaker_asks_the_store_every_time() {
    let fx = Fixture::new();
    let store = Switch::new(fx.store.clone());
    let config = CacheConfig::default()
        .clock(fx.clock.clone())
        .breaker(BreakerConfig::disabled());
    let cache = CachedStore::with_config(store.clone(), config);
    let svc = service(&cache, &fx.clock, Duration::from_secs(3));
    store.down(true);
    for _ in 0..20 {
        assert_unavailable(call(&svc, &unknown_key()).await, "5").await;
    }
    assert_eq!(store.lookups(), 20);
    assert_eq!(cache.stats().breaker.state, BreakerState::Closed);
}

#[cfg(feature = "postgres")]
mod postgres {
    //! A real `PostgresStore` behind the real layer.

    use std::net::SocketAddr;
    use std::time::Instant;

    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};
    use tower_api_key::KeyManager;
    use tower_api_key::store::PostgresStore;

    use super::common::pg;
    use super::*;

    /// A port where nothing listens: bound, then released.
    fn dead_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    const STORE_TIMEOUT: Duration = Duration::from_secs(3);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_connections_open_the_breaker_and_misses_then_fail_fast() {
        let url = format!("postgres://postgres@127.0.0.1:{}/test", dead_port());
        let pool = PgPoolOptions::new()
            .acquire_timeout(STORE_TIMEOUT)
            .connect_lazy(&url)
            .unwrap();
        let (clock, _manual) = Clock::manual(Timestamp::from_unix_secs(1_800_000_000));
        let cache = CachedStore::with_config(PostgresStore::from_pool(pool), config(&clock));
        let svc = service(&cache, &clock, STORE_TIMEOUT);

        // Five misses at once (distinct keys: no single flight), each failing on its own.
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..5 {
            calls.spawn(miss(svc.clone()));
        }
        while let Some(res) = calls.join_next().await {
            assert_unavailable(res.unwrap(), "5").await;
        }
        assert_eq!(cache.stats().breaker.state, BreakerState::Open);

        let started = Instant::now();
        for _ in 0..100 {
            assert_unavailable(call(&svc, &unknown_key()).await, "7").await;
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "100 misses took {took:?} with the breaker open"
        );
        let stats = cache.stats();
        assert_eq!(stats.backend_lookups, 5);
        assert_eq!(stats.breaker.refused, 100);
    }

    /// A TCP proxy to `target` that can be switched off: it then closes every connection it
    /// forwards and every one it accepts.
    struct Proxy {
        addr: SocketAddr,
        up: tokio::sync::watch::Sender<bool>,
    }

    impl Proxy {
        async fn start(target: SocketAddr) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let up = tokio::sync::watch::Sender::new(true);
            let switch = up.clone();
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !*switch.borrow() {
                        let _ = client.shutdown().await;
                        continue;
                    }
                    let mut down = switch.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = down.wait_for(|up| !*up) => {}
                        }
                    });
                }
            });
            Self { addr, up }
        }

        fn switch(&self, up: bool) {
            self.up.send_replace(up);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cached_keys_work_while_open_and_the_probe_closes_it_when_the_store_is_back() {
        let Some(url) = pg::database_url(
            "cached_keys_work_while_open_and_the_probe_closes_it_when_the_store_is_back",
        ) else {
            return;
        };
        let (direct, guard) = pg::store(&url).await;
        let options: PgConnectOptions = url.parse().unwrap();
        let target = tokio::net::lookup_host((options.get_host(), options.get_port()))
            .await
            .unwrap()
            .next()
            .unwrap();
        let proxy = Proxy::start(target).await;
        let proxied = PostgresStore::from_pool(
            PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(STORE_TIMEOUT)
                .connect_with(
                    options
                        .host("127.0.0.1")
                        .port(proxy.addr.port())
                        .options([("search_path", guard.schema())]),
                )
                .await
                .expect("DATABASE_URL is set but PostgreSQL is unreachable through the proxy"),
        );
        let (clock, manual) = Clock::manual(Timestamp::from_unix_secs(1_800_000_000));
        let manager = KeyManager::new(direct.clone()).clock(clock.clone());
        let org = OrgId::from("org_breaker");
        let cached = manager
            .create(&org, tower_api_key::NewKey::new("cached"))
            .await
            .unwrap();
        let cache = CachedStore::with_config(proxied, config(&clock));
        let svc = service(&cache, &clock, STORE_TIMEOUT);
        assert_eq!(call(&svc, &cached.key).await.status(), StatusCode::OK);

        proxy.switch(false);
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..5 {
            calls.spawn(miss(svc.clone()));
        }
        while let Some(res) = calls.join_next().await {
            assert_unavailable(res.unwrap(), "5").await;
        }
        assert_eq!(cache.stats().breaker.state, BreakerState::Open);
        let lookups = cache.stats().backend_lookups;

        assert_eq!(call(&svc, &cached.key).await.status(), StatusCode::OK);
        let started = Instant::now();
        for _ in 0..100 {
            assert_unavailable(call(&svc, &unknown_key()).await, "7").await;
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "100 misses took {took:?}");
        assert_eq!(cache.stats().backend_lookups, lookups);

        // The database is back; a key created meanwhile is found by the probe.
        let fresh = manager
            .create(&org, tower_api_key::NewKey::new("fresh"))
            .await
            .unwrap();
        proxy.switch(true);
        manual.advance(COOL_DOWN);
        assert_eq!(call(&svc, &fresh.key).await.status(), StatusCode::OK);
        let stats = cache.stats();
        assert_eq!(
            (stats.breaker.state, stats.breaker.probes),
            (BreakerState::Closed, 1)
        );
        let res = call(&svc, &unknown_key()).await;
        assert_eq!(
            res.status(),
            StatusCode::UNAUTHORIZED,
            "misses reach the store"
        );
        assert_eq!(cache.stats().backend_lookups, lookups + 2);
        drop(guard);
    }
}

#[cfg(feature = "redis")]
mod redis_limiter {
    //! The Redis rate limiter's breaker, over a connection that can be switched down (it then
    //! fails every command at once, as a refused connection does) and otherwise forwards to the
    //! Redis at `REDIS_URL`.

    use redis::aio::{ConnectionLike, ConnectionManager};
    use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
    use tower_api_key::rate_limit::redis::RedisBackendError;
    use tower_api_key::rate_limit::{Gcra, OnBackendError, RateLimitBackend, RateLimitError};
    use tower_api_key::{NewKey, OrgRateLimit, RedisRateLimiter};

    use super::*;

    #[derive(Clone)]
    struct SwitchConn {
        real: Option<ConnectionManager>,
        down: Arc<AtomicBool>,
        commands: Arc<AtomicUsize>,
    }

    impl SwitchConn {
        fn new(real: Option<ConnectionManager>) -> Self {
            Self {
                real,
                down: Arc::new(AtomicBool::new(true)),
                commands: Arc::default(),
            }
        }

        fn commands(&self) -> usize {
            self.commands.load(Ordering::SeqCst)
        }
    }

    fn refused() -> RedisError {
        std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into()
    }

    impl ConnectionLike for SwitchConn {
        fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
            self.commands.fetch_add(1, Ordering::SeqCst);
            match &mut self.real {
                Some(real) if !self.down.load(Ordering::SeqCst) => real.req_packed_command(cmd),
                _ => Box::pin(async { Err(refused()) }),
            }
        }

        fn req_packed_commands<'a>(
            &'a mut self,
            cmd: &'a Pipeline,
            offset: usize,
            count: usize,
        ) -> RedisFuture<'a, Vec<Value>> {
            self.commands.fetch_add(1, Ordering::SeqCst);
            match &mut self.real {
                Some(real) if !self.down.load(Ordering::SeqCst) => {
                    real.req_packed_commands(cmd, offset, count)
                }
                _ => Box::pin(async { Err(refused()) }),
            }
        }

        fn get_db(&self) -> i64 {
            0
        }
    }

    const T0: u64 = 1_800_000_000;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_unix_millis(T0 * 1000 + ms)
    }

    fn is_skipped(result: &Result<impl std::fmt::Debug, RateLimitError>) -> bool {
        matches!(result, Err(RateLimitError::CircuitOpen(_)))
    }

    fn is_refused(result: &Result<impl std::fmt::Debug, RateLimitError>) -> bool {
        match result {
            Err(RateLimitError::Unavailable(e)) => matches!(
                e.downcast_ref::<RedisBackendError>(),
                Some(RedisBackendError::Redis(_))
            ),
            _ => false,
        }
    }

    #[tokio::test]
    async fn checks_skip_redis_after_consecutive_failures_and_probe_one_at_a_time() {
        let conn = SwitchConn::new(None);
        let limiter = RedisRateLimiter::new(conn.clone()).breaker(
            BreakerConfig::default()
                .failures(3)
                .cool_down(Duration::from_secs(2)),
        );
        let org = OrgId::from("org_r");
        let gcra = Gcra::new(100, Duration::from_secs(60));

        for i in 0..3 {
            let r = limiter.check(&org, &gcra, 1, at(i)).await;
            assert!(is_refused(&r), "check {i} tried Redis: {r:?}");
        }
        assert_eq!(conn.commands(), 3);
        let r = limiter.check(&org, &gcra, 1, at(3)).await;
        assert!(is_skipped(&r), "{r:?}");
        assert_eq!(conn.commands(), 3, "Redis was not tried");

        // The cool-down runs on the layer's time from the third failure (at 2 ms).
        assert!(is_skipped(&limiter.check(&org, &gcra, 1, at(2_001)).await));
        let probe = limiter.check(&org, &gcra, 1, at(2_002));
        let other = limiter.check(&org, &gcra, 1, at(2_002)).await;
        assert!(is_skipped(&other), "one probe at a time: {other:?}");
        assert!(is_refused(&probe.await));
        assert_eq!(conn.commands(), 4);
        // The failed probe opened it again for a whole cool-down.
        assert!(is_skipped(&limiter.check(&org, &gcra, 1, at(4_001)).await));

        let s = limiter.stats();
        assert_eq!((s.checks, s.errors, s.skipped), (8, 4, 4), "{s:?}");
        assert_eq!(
            (s.breaker.opened, s.breaker.refused, s.breaker.probes),
            (2, 4, 1)
        );
    }

    #[tokio::test]
    async fn a_check_cancelled_by_its_request_is_not_a_failure() {
        let conn = SwitchConn::new(None);
        let limiter = RedisRateLimiter::new(conn.clone());
        let org = OrgId::from("org_c");
        let gcra = Gcra::new(100, Duration::from_secs(60));

        drop(limiter.check(&org, &gcra, 1, at(0)));
        let r = limiter.check(&org, &gcra, 1, at(1)).await;
        assert!(is_refused(&r), "Redis was tried: {r:?}");
        assert_eq!(conn.commands(), 1);
        let s = limiter.stats();
        assert_eq!((s.checks, s.errors, s.skipped), (2, 1, 0), "{s:?}");
        assert_eq!(s.breaker.opened, 1, "opened by the real failure only");
    }

    #[tokio::test]
    async fn the_layer_policy_decides_while_redis_is_skipped() {
        let fx = Fixture::new();
        let key = fx
            .manager
            .create(&OrgId::from("org_p"), NewKey::new("k"))
            .await
            .unwrap()
            .key;
        let conn = SwitchConn::new(None);
        let limiter = RedisRateLimiter::new(conn.clone());
        let stack = |policy| {
            ServiceBuilder::new()
                .layer(ApiKeyAuth::new(fx.store.clone()).clock(fx.clock.clone()))
                .layer(
                    OrgRateLimit::with_backend(limiter.clone())
                        .on_backend_error(policy)
                        .clock(fx.clock.clone()),
                )
                .service(service_fn(echo_principal))
        };
        let closed = stack(OnBackendError::FailClosed);
        let open = stack(OnBackendError::FailOpen);
        let call = |svc: &_, key: &ApiKey| {
            let svc = Clone::clone(svc);
            let auth = format!("Bearer {}", key.expose_secret());
            async move {
                ServiceExt::oneshot(svc, get("/", Some(&auth)))
                    .await
                    .unwrap()
            }
        };

        // The default: one failure opens the breaker for 1 s.
        assert_unavailable(call(&closed, &key).await, "1").await;
        assert_unavailable(call(&closed, &key).await, "1").await;
        let res = call(&open, &key).await;
        assert_eq!(res.status(), StatusCode::OK, "decided by the local limiter");
        assert_eq!(res.headers()["x-ratelimit-remaining"], "99");
        assert_eq!(conn.commands(), 1, "only the first check tried Redis");
        let s = limiter.stats();
        assert_eq!((s.errors, s.skipped, s.fallbacks), (1, 2, 1), "{s:?}");
        assert_eq!(s.breaker.opened, 1);

        fx.time.advance(Duration::from_secs(1));
        assert_unavailable(call(&closed, &key).await, "1").await;
        assert_eq!(
            conn.commands(),
            2,
            "after the cooldown one check probed Redis"
        );
    }

    /// Fail closed while the breaker is open: `Retry-After` is what is left of its cool-down,
    /// not the layer's fixed default.
    #[tokio::test]
    async fn fail_closed_answers_the_remaining_cool_down() {
        let fx = Fixture::new();
        let key = fx
            .manager
            .create(&OrgId::from("org_c"), NewKey::new("k"))
            .await
            .unwrap()
            .key;
        let conn = SwitchConn::new(None);
        let limiter = RedisRateLimiter::new(conn.clone()).breaker(
            BreakerConfig::default()
                .failures(1)
                .cool_down(Duration::from_secs(30)),
        );
        let svc = ServiceBuilder::new()
            .layer(ApiKeyAuth::new(fx.store.clone()).clock(fx.clock.clone()))
            .layer(
                OrgRateLimit::with_backend(limiter)
                    .on_backend_error(OnBackendError::FailClosed)
                    .clock(fx.clock.clone()),
            )
            .service(service_fn(echo_principal));
        let auth = format!("Bearer {}", key.expose_secret());
        let call = || ServiceExt::oneshot(svc.clone(), get("/", Some(&auth)));
        // The failure that opens it: the layer's default.
        assert_unavailable(call().await.unwrap(), "1").await;
        // Skipped while open: the cool-down left.
        assert_unavailable(call().await.unwrap(), "30").await;
        fx.time.advance(Duration::from_millis(12_500));
        assert_unavailable(call().await.unwrap(), "18").await;
        assert_eq!(conn.commands(), 1, "Redis was tried once");
    }

    #[tokio::test]
    async fn the_probe_closes_the_breaker_when_redis_answers() {
        let Ok(url) = std::env::var("REDIS_URL") else {
            eprintln!(
                "skipping the_probe_closes_the_breaker_when_redis_answers: REDIS_URL is not set"
            );
            return;
        };
        let real = tower_api_key::rate_limit::redis::connect(&url)
            .await
            .expect("REDIS_URL is set but Redis is unreachable");
        let conn = SwitchConn::new(Some(real.clone()));
        let prefix = format!("tak_breaker_{}", std::process::id());
        let limiter = RedisRateLimiter::new(conn.clone())
            .prefix(&prefix)
            .timeout(Duration::from_secs(2));
        let org = OrgId::from("org_back");
        let gcra = Gcra::new(100, Duration::from_secs(60));

        assert!(is_refused(&limiter.check(&org, &gcra, 1, at(0)).await));
        assert!(is_skipped(&limiter.check(&org, &gcra, 1, at(500)).await));
        conn.down.store(false, Ordering::SeqCst);
        let decision = limiter.check(&org, &gcra, 1, at(1_000)).await.unwrap();
        assert!(decision.allowed);
        assert_eq!(decision.info.remaining, 99);
        let decision = limiter.check(&org, &gcra, 1, at(1_001)).await.unwrap();
        assert_eq!(
            decision.info.remaining, 98,
            "closed: the next check reaches Redis"
        );
        let s = limiter.stats();
        assert_eq!((s.breaker.opened, s.breaker.probes), (1, 1), "{s:?}");

        let mut real = real;
        let _: i64 = redis::cmd("DEL")
            .arg(limiter.key(&org))
            .query_async(&mut real)
            .await
            .unwrap();
    }
}
