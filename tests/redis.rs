//! The Redis backends against a real Redis (`REDIS_URL`, e.g. `redis://127.0.0.1:6379`):
//! replicas sharing one limit and one session count, the same decisions as the memory
//! backends on random traces, plan changes, key layout and expiry, and the failure policy
//! when Redis stops or stalls (on a throwaway `redis-server` each such test starts and kills,
//! never the shared one).
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo test --features redis --test redis
//! ```
//!
//! Without `REDIS_URL` every test prints why it skips. With it, an unreachable Redis, or a
//! missing `redis-server` for the outage tests, fails. Each test works under its own key
//! prefix and deletes its keys when done, so tests run in parallel and leave nothing behind.
#![cfg(feature = "redis")]

mod common;

use std::convert::Infallible;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::limit_reached;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_api_key::rate_limit::redis::RedisStats;
use tower_api_key::rate_limit::{
    Gcra, OnBackendError, OrgRateLimitLayer, Policies, RateLimitBackend, Spend,
};
use tower_api_key::{
    ApiKeyAuth, Clock, KeyManager, ManualClock, MemoryRateLimiter, MemorySessions, MemoryStore,
    NewKey, OrgId, OrgRateLimit, Plan, Principal, RedisRateLimiter, RedisSessions, SessionError,
    SessionQuota, Timestamp,
};

/// 2023-11-14T22:13:20Z.
const T0: u64 = 1_700_000_000;

// ---- fixtures ------------------------------------------------------------------------------

/// `REDIS_URL`, or `None` with the reason printed.
fn redis_url(test: &str) -> Option<String> {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipping {test}: REDIS_URL is not set");
            None
        }
    }
}

/// A key prefix no other test (or concurrent run) uses.
fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "tak_test_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Deletes every key under its prefix when dropped, even if the test failed.
struct Cleanup {
    url: String,
    prefix: String,
}

impl Cleanup {
    fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            prefix: unique_prefix(),
        }
    }

    /// The keys under the prefix.
    fn keys(&self) -> Vec<String> {
        let mut conn = redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let pattern = format!("{{{}:*", self.prefix);
        redis::cmd("KEYS").arg(pattern).query(&mut conn).unwrap()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection())
        else {
            eprintln!("could not clean up the keys under {}", self.prefix);
            return;
        };
        let pattern = format!("{{{}:*", self.prefix);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

/// A limiter with a generous timeout: on a loaded machine a debug-build round trip must not
/// pass for an outage (the timeout test sets its own).
async fn limiter(url: &str, prefix: &str) -> RedisRateLimiter {
    RedisRateLimiter::connect(url)
        .await
        .expect("REDIS_URL is set but Redis is unreachable")
        .prefix(prefix)
        .timeout(Duration::from_secs(2))
}

async fn sessions(url: &str, prefix: &str) -> RedisSessions {
    RedisSessions::connect(url)
        .await
        .expect("REDIS_URL is set but Redis is unreachable")
        .prefix(prefix)
        .timeout(Duration::from_secs(2))
}

/// A throwaway `redis-server` on a free port, killed when dropped.
struct ChildRedis {
    child: Option<Child>,
    port: u16,
}

impl ChildRedis {
    fn start() -> Self {
        Self::on_port(free_port())
    }

    fn on_port(port: u16) -> Self {
        Self::spawn(port, &[])
    }

    fn spawn(port: u16, extra: &[&str]) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "REDIS_URL is set, but `redis-server` could not be started ({e}): this test \
                     stops its own throwaway Redis and needs `redis-server` on PATH"
                )
            });
        let server = Self {
            child: Some(child),
            port,
        };
        // Wait for the server process to accept connections (it was just spawned).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ping = redis::Client::open(server.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ping.is_ok() {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} did not come up"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn control(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A store with keys, a manual clock, and stacks `ApiKeyAuth` → `OrgRateLimit` → "ok".
struct Fixture {
    store: MemoryStore,
    manager: KeyManager<MemoryStore>,
    clock: Clock,
    manual: ManualClock,
}

impl Fixture {
    fn new() -> Self {
        let (clock, manual) = Clock::manual(Timestamp::from_unix_secs(T0));
        let store = MemoryStore::new();
        let manager = KeyManager::new(store.clone()).clock(clock.clone());
        Self {
            store,
            manager,
            clock,
            manual,
        }
    }

    async fn key(&self, org: &str) -> String {
        let created = self
            .manager
            .create(&OrgId::from(org), NewKey::new("test"))
            .await
            .unwrap();
        created.key.expose_secret().to_owned()
    }

    async fn principal(&self, org: &str, plan: Plan) -> Principal {
        let created = self
            .manager
            .create(&OrgId::from(org), NewKey::new("test"))
            .await
            .unwrap();
        Principal::new(Arc::new(created.record), plan)
    }

    /// One replica: its own `ApiKeyAuth` and its own limiter (connection), over the store.
    fn stack<B: RateLimitBackend>(
        &self,
        layer: OrgRateLimitLayer<B>,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<impl http_body::Body<Data = Bytes, Error: std::fmt::Debug>>,
        Error = Infallible,
    > + Clone {
        ServiceBuilder::new()
            .layer(ApiKeyAuth::new(self.store.clone()).clock(self.clock.clone()))
            .layer(layer.clock(self.clock.clone()))
            .service_fn(|_req: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            })
    }
}

fn get(key: &str) -> Request<Full<Bytes>> {
    Request::get("/v1/browsers")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::default())
        .unwrap()
}

async fn call<S, B>(svc: &S, key: &str) -> Response<B>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
{
    svc.clone().oneshot(get(key)).await.unwrap()
}

fn header(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn remaining(headers: &HeaderMap) -> Option<u64> {
    header(headers, "x-ratelimit-remaining")
}

/// Checks that reached Redis and got an answer.
fn answered(s: RedisStats) -> u64 {
    s.checks - s.errors - s.timeouts - s.skipped
}

// ---- one limit across replicas -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_limit() {
    let Some(url) = redis_url("two_replicas_share_one_limit") else {
        return;
    };
    let cleanup = Cleanup::new(&url);
    let f = Fixture::new();
    let key = f.key("org_shared").await;
    // Two replicas: two connections, two layers, one Redis state.
    let a = f.stack(OrgRateLimit::with_backend(
        limiter(&url, &cleanup.prefix).await,
    ));
    let b = f.stack(OrgRateLimit::with_backend(
        limiter(&url, &cleanup.prefix).await,
    ));

    for i in 0..100u64 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let res = call(replica, &key).await;
        assert_eq!(res.status(), StatusCode::OK, "request {}", i + 1);
        // One count: each replica sees the other's requests.
        assert_eq!(remaining(res.headers()), Some(99 - i));
        assert_eq!(header(res.headers(), "x-ratelimit-limit"), Some(100));
    }
    for replica in [&a, &b] {
        let res = call(replica, &key).await;
        assert_eq!(
            res.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "the 101st request"
        );
        assert_eq!(header(res.headers(), "retry-after"), Some(1));
        assert_eq!(header(res.headers(), "x-ratelimit-reset"), Some(T0 + 60));
    }
    // One cell refills every 600 ms, for whichever replica asks first.
    f.manual.advance(Duration::from_millis(600));
    assert_eq!(call(&b, &key).await.status(), StatusCode::OK);
    assert_eq!(call(&a, &key).await.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        cleanup.keys(),
        [format!("{{{}:org_shared}}:rl", cleanup.prefix)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_service_stack_shares_the_limit_with_the_layers() {
    let Some(url) = redis_url("the_one_service_stack_shares_the_limit_with_the_layers") else {
        return;
    };
    let cleanup = Cleanup::new(&url);
    let f = Fixture::new();
    let key = f.key("org_mixed").await;
    // Replica `a` runs the layers, replica `b` the one-service stack; one Redis state. Every
    // check of `b` waits for Redis: the stack's pending-check path.
    let a = f.stack(OrgRateLimit::with_backend(
        limiter(&url, &cleanup.prefix).await,
    ));
    let b = ServiceBuilder::new()
        .layer(
            ApiKeyAuth::new(f.store.clone())
                .clock(f.clock.clone())
                .rate_limit(
                    OrgRateLimit::with_backend(limiter(&url, &cleanup.prefix).await)
                        .clock(f.clock.clone()),
                ),
        )
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
    for i in 0..100u64 {
        let res = if i % 2 == 0 {
            call(&a, &key).await.map(|_| ())
        } else {
            call(&b, &key).await.map(|_| ())
        };
        assert_eq!(res.status(), StatusCode::OK, "request {}", i + 1);
        assert_eq!(remaining(res.headers()), Some(99 - i));
    }
    let res = call(&b, &key).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(res.headers(), "retry-after"), Some(1));
    assert_eq!(header(res.headers(), "x-ratelimit-reset"), Some(T0 + 60));
    assert_eq!(call(&a, &key).await.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_plan_change_carries_the_cells_over_across_replicas() {
    let Some(url) = redis_url("a_plan_change_carries_the_cells_over_across_replicas") else {
        return;
    };
    let cleanup = Cleanup::new(&url);
    let f = Fixture::new();
    let key = f.key("org_upgrade").await;
    let a = f.stack(OrgRateLimit::with_backend(
        limiter(&url, &cleanup.prefix).await,
    ));
    let b = f.stack(OrgRateLimit::with_backend(
        limiter(&url, &cleanup.prefix).await,
    ));
    for _ in 0..100 {
        assert_eq!(call(&a, &key).await.status(), StatusCode::OK);
    }
    assert_eq!(call(&b, &key).await.status(), StatusCode::TOO_MANY_REQUESTS);
    // Upgrade: the store hands out the new plan with the next lookup.
    f.manager
        .set_plan(&OrgId::from("org_upgrade"), Plan::Paid)
        .await
        .unwrap();
    let res = call(&b, &key).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(res.headers(), "x-ratelimit-limit"), Some(1000));
    // 100 of 1,000 were spent: this is the 101st.
    assert_eq!(remaining(res.headers()), Some(899));
    let res = call(&a, &key).await;
    assert_eq!(remaining(res.headers()), Some(898));
}

#[tokio::test]
async fn keys_are_hash_tagged_by_org_and_expire_when_idle() {
    let Some(url) = redis_url("keys_are_hash_tagged_by_org_and_expire_when_idle") else {
        return;
    };
    let cleanup = Cleanup::new(&url);
    let limiter = limiter(&url, &cleanup.prefix)
        .await
        .idle_grace(Duration::from_secs(5));
    let org = OrgId::from("org_ttl");
    let key = limiter.key(&org);
    assert_eq!(key, format!("{{{}:org_ttl}}:rl", cleanup.prefix));
    let free = Gcra::from_quota(&Plan::Free.quota());
    let now = Timestamp::from_unix_secs(T0);
    // A refusal writes nothing.
    assert!(!limiter.check(&org, &free, 101, now).await.unwrap().allowed);
    assert!(cleanup.keys().is_empty());
    // Ten cells: full again in 6 s; the key lives that long plus the 5 s grace.
    assert!(limiter.check(&org, &free, 10, now).await.unwrap().allowed);
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let pttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).unwrap();
    assert!(
        pttl > 0 && pttl <= 11_000,
        "the state must expire once idle (PTTL {pttl} ms)"
    );
    // It holds the TAT and the quota, never a key or a hash.
    let fields: Vec<String> = redis::cmd("HKEYS").arg(&key).query(&mut conn).unwrap();
    assert_eq!(fields.len(), 3);
    let q: String = redis::cmd("HGET")
        .arg(&key)
        .arg("q")
        .query(&mut conn)
        .unwrap();
    assert_eq!(q, "100:60000000000");
}

// ---- the same decisions as the memory backend ----------------------------------------------

/// Quotas a trace switches between (plan changes), all exact in the memory backend (refill
/// slower than one cell per 10 µs: no striping).
fn quotas() -> [Gcra; 6] {
    [
        Gcra::from_quota(&Plan::Free.quota()),
        Gcra::from_quota(&Plan::Paid.quota()),
        Gcra::new(7, Duration::from_secs(1)),
        Gcra::new(3, Duration::from_secs(10)),
        Gcra::new(50, Duration::from_millis(500)),
        // 60 s / 7: an emission interval that is not a whole number of nanoseconds.
        Gcra::new(7, Duration::from_secs(60)),
    ]
}

/// Events: (gap in ns, cost, index of the quota in force).
fn trace() -> impl Strategy<Value = (u64, Vec<(u64, u32, usize)>)> {
    (
        0u64..1_000_000_000,
        prop::collection::vec(
            (
                prop_oneof![
                    3 => Just(0u64),
                    4 => 0u64..700_000_000,
                    1 => 0u64..20_000_000_000,
                ],
                prop_oneof![8 => Just(1u32), 2 => 0u32..=8, 1 => 0u32..=120],
                prop_oneof![12 => Just(usize::MAX), 1 => 0usize..6],
            ),
            1..150,
        ),
    )
}

#[test]
fn memory_and_redis_limiters_agree_on_random_traces() {
    let Some(url) = redis_url("memory_and_redis_limiters_agree_on_random_traces") else {
        return;
    };
    let cleanup = Cleanup::new(&url);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = rt.block_on(limiter(&url, &cleanup.prefix));
    let memory = MemoryRateLimiter::new();
    let quotas = quotas();
    let case = AtomicU32::new(0);
    let mut runner = TestRunner::new(ProptestConfig::with_cases(24));
    runner
        .run(&trace(), |(start_frac, events)| {
            // A fresh organization per case (shrinking replays cases).
            let org = OrgId::from(format!("org_{}", case.fetch_add(1, Ordering::Relaxed)));
            let mut now = T0 * 1_000_000_000 + start_frac;
            let mut quota = 0usize;
            for (i, (gap, cost, change)) in events.into_iter().enumerate() {
                now += gap;
                if change != usize::MAX {
                    quota = change;
                }
                let gcra = quotas[quota];
                let t = Timestamp::from_unix_nanos(now);
                let expected = memory.decide(&org, &gcra, cost, t);
                let got = rt.block_on(redis.check(&org, &gcra, cost, t)).unwrap();
                prop_assert_eq!(
                    (got.allowed, got.info),
                    (expected.allowed, expected.info),
                    "event {} (cost {}, quota {:?}, t {})",
                    i,
                    cost,
                    gcra,
                    now
                );
            }
            Ok(())
        })
        .unwrap();
    let stats = redis.stats();
    assert_eq!(
        stats.errors + stats.timeouts + stats.skipped,
        0,
        "{stats:?}"
    );
}

#[tokio::test]
async fn quotas_over_long_periods_are_exact_in_coarser_units() {
    let Some(url) = redis_url("quotas_over_long_periods_are_exact_in_coarser_units") else {
        return;
    };
    let cleanup = Cleanup::new(&url);
    let redis = limiter(&url, &cleanup.prefix).await;
    let memory = MemoryRateLimiter::new();
    let org = OrgId::from("org_long");
    // 5 per 100 days: 8.64e15 ns of capacity, past what a double holds exactly, so the script
    // counts in microseconds; at whole-microsecond times it agrees with the memory backend.
    let gcra = Gcra::new(5, Duration::from_secs(100 * 86_400));
    let mut now = Timestamp::from_unix_secs(T0);
    for step in [
        0,
        0,
        0,
        0,
        0,
        0,
        1,
        86_400,
        20 * 86_400 - 1,
        1,
        7,
        400 * 86_400,
    ] {
        now = now.saturating_add(Duration::from_secs(step));
        let expected = memory.decide(&org, &gcra, 1, now);
        let got = redis.check(&org, &gcra, 1, now).await.unwrap();
        assert_eq!((got.allowed, got.info), (expected.allowed, expected.info));
    }
}

// ---- Redis down or slow --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_test_fails_closed_or_open_to_the_local_limiter() {
    let Some(_url) = redis_url("redis_stopped_mid_test_fails_closed_or_open_to_the_local_limiter")
    else {
        return;
    };
    let mut server = ChildRedis::start();
    let f = Fixture::new();
    let (key_closed, key_open) = (f.key("org_closed").await, f.key("org_open").await);
    let closed_limiter = limiter(&server.url(), "tak").await;
    let open_limiter = limiter(&server.url(), "tak").await;
    let closed = f.stack(OrgRateLimit::with_backend(closed_limiter.clone()));
    let open = f.stack(
        OrgRateLimit::with_backend(open_limiter.clone()).on_backend_error(OnBackendError::FailOpen),
    );
    for i in 0..10 {
        assert_eq!(
            remaining(call(&closed, &key_closed).await.headers()),
            Some(99 - i)
        );
        assert_eq!(
            remaining(call(&open, &key_open).await.headers()),
            Some(99 - i)
        );
    }
    assert_eq!(answered(closed_limiter.stats()), 10);

    server.kill();

    // Fail closed: 503 + Retry-After, counted; the next check skips Redis during the cooldown.
    let res = call(&closed, &key_closed).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(res.headers(), "retry-after"), Some(1));
    let s = closed_limiter.stats();
    assert_eq!(
        (s.errors + s.timeouts, s.skipped, s.fallbacks),
        (1, 0, 0),
        "{s:?}"
    );
    let res = call(&closed, &key_closed).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(closed_limiter.stats().skipped, 1);

    // Fail open: the local limiter decides. It never saw the 10 requests made through Redis,
    // so it starts from a full bucket, and it limits: 100 admitted, the 101st refused.
    for i in 0..100 {
        let res = call(&open, &key_open).await;
        assert_eq!(res.status(), StatusCode::OK, "local request {}", i + 1);
        assert_eq!(remaining(res.headers()), Some(99 - i));
    }
    let res = call(&open, &key_open).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(res.headers(), "retry-after"), Some(1));
    let s = open_limiter.stats();
    assert_eq!((s.errors + s.timeouts, s.fallbacks), (1, 101), "{s:?}");
    assert_eq!(s.skipped, 100);

    // Redis comes back (empty: nothing persisted). Once the cooldown has passed, the next
    // checks try Redis again, and the connection reconnects by itself.
    let _server = ChildRedis::on_port(server.port);
    let before = answered(open_limiter.stats());
    let deadline = Instant::now() + Duration::from_secs(10);
    let res = loop {
        f.manual.advance(Duration::from_secs(1));
        let res = call(&open, &key_open).await;
        if answered(open_limiter.stats()) > before {
            break res;
        }
        assert!(Instant::now() < deadline, "never reconnected to Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Decided by Redis (a fresh state), not by the nearly empty local bucket.
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(remaining(res.headers()), Some(99));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_times_out_and_the_policy_applies() {
    let Some(_url) = redis_url("a_stalled_redis_times_out_and_the_policy_applies") else {
        return;
    };
    let server = ChildRedis::start();
    let f = Fixture::new();
    let key = f.key("org_slow").await;
    let limiter = limiter(&server.url(), "tak")
        .await
        .timeout(Duration::from_millis(250))
        .cooldown(Duration::ZERO);
    let closed = f.stack(OrgRateLimit::with_backend(limiter.clone()));
    let open = f.stack(
        OrgRateLimit::with_backend(limiter.clone()).on_backend_error(OnBackendError::FailOpen),
    );
    assert_eq!(call(&closed, &key).await.status(), StatusCode::OK);

    // Scripts that may write wait until the pause ends: the check cannot be answered.
    let mut control = server.control();
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "10000", "WRITE"])
        .query(&mut control)
        .unwrap();
    let res = call(&closed, &key).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let res = call(&open, &key).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        remaining(res.headers()),
        Some(99),
        "decided by the local limiter"
    );
    let s = limiter.stats();
    assert_eq!((s.timeouts, s.errors, s.fallbacks), (2, 0, 1), "{s:?}");
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut control)
        .unwrap();

    // Unpaused, the stalled scripts run late (they count: stricter, never looser) and the
    // next check is answered by Redis again.
    let res = call(&closed, &key).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(remaining(res.headers()), Some(96));
    assert_eq!(limiter.stats().timeouts, 2);
}

// ---- sessions ------------------------------------------------------------------------------

const LEASE: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_quota_is_shared_across_replicas() {
    let Some(url) = redis_url("session_quota_is_shared_across_replicas") else {
        return;
    };
    let cleanup = Cleanup::new(&url);
    let f = Fixture::new();
    let p = f.principal("org_sessions", Plan::Free).await;
    let org = p.org_id().clone();
    let a =
        SessionQuota::with_backend(sessions(&url, &cleanup.prefix).await).clock(f.clock.clone());
    let b =
        SessionQuota::with_backend(sessions(&url, &cleanup.prefix).await).clock(f.clock.clone());

    // s0..s4 at t, s5..s9 at t + 100 s: alternately on each replica.
    for i in 0..10u32 {
        if i == 5 {
            f.manual.advance(Duration::from_secs(100));
        }
        let replica = if i % 2 == 0 { &a } else { &b };
        let lease = replica.acquire(&p, &format!("s{i}"), LEASE).await.unwrap();
        assert_eq!((lease.active(), lease.limit()), (i + 1, 10));
    }
    // The 11th Free session is refused on either replica, until the earliest lease (s0, 200 s
    // from now) expires.
    for replica in [&a, &b] {
        assert_eq!(
            limit_reached(replica.acquire(&p, "s10", LEASE).await),
            (10, 200)
        );
    }
    // Re-acquiring a held id takes no second slot.
    assert_eq!(b.acquire(&p, "s0", LEASE).await.unwrap().active(), 10);
    // A release on one replica frees a slot for the other.
    assert!(a.release(&org, "s3").await.unwrap());
    assert!(!b.release(&org, "s3").await.unwrap());
    assert_eq!(b.active(&org).await.unwrap(), 9);
    assert_eq!(b.acquire(&p, "s10", LEASE).await.unwrap().active(), 10);
    // Full again; the earliest lease is still s1's (and s2's, s4's), 200 s from now.
    assert_eq!(limit_reached(a.acquire(&p, "s11", LEASE).await), (10, 200));

    // s1, s2 and s4 expire at t + 300 s (s0 was renewed by its re-acquire): their slots are
    // reclaimed without a release.
    f.manual.advance(Duration::from_secs(200));
    assert_eq!(a.active(&org).await.unwrap(), 7);
    for id in ["s11", "s12", "s13"] {
        a.acquire(&p, id, LEASE).await.unwrap();
    }
    // Full again; the earliest leases now are s0 (re-acquired) and s5..s10, 100 s from now.
    assert_eq!(limit_reached(b.acquire(&p, "s14", LEASE).await), (10, 100));
    // An expired lease cannot be renewed; a live one can.
    assert!(matches!(
        b.renew(&org, "s1", LEASE).await,
        Err(SessionError::NotHeld)
    ));
    assert_eq!(a.renew(&org, "s5", LEASE).await.unwrap().active(), 10);
    assert_eq!(
        cleanup.keys(),
        [format!("{{{}:org_sessions}}:sess", cleanup.prefix)]
    );
}

#[test]
fn memory_and_redis_sessions_agree_on_random_traces() {
    let Some(url) = redis_url("memory_and_redis_sessions_agree_on_random_traces") else {
        return;
    };
    let cleanup = Cleanup::new(&url);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = rt.block_on(sessions(&url, &cleanup.prefix));
    let memory = MemorySessions::new();
    let case = AtomicU32::new(0);
    // (op, session id, lease in s, seconds to advance first)
    let ops = prop::collection::vec((0u8..4, 0u8..8, 0u64..30, 0u64..12), 1..120);
    let mut runner = TestRunner::new(ProptestConfig::with_cases(16));
    runner
        .run(&(1u32..6, ops), |(limit, ops)| {
            use tower_api_key::sessions::SessionBackend;
            let org = OrgId::from(format!("org_{}", case.fetch_add(1, Ordering::Relaxed)));
            let mut now = Timestamp::from_unix_secs(T0);
            for (i, (op, id, lease, gap)) in ops.into_iter().enumerate() {
                now = now.saturating_add(Duration::from_secs(gap));
                let id = format!("s{id}");
                let lease = Duration::from_secs(lease);
                let show = |r: Result<tower_api_key::SessionLease, SessionError>| match r {
                    Ok(l) => format!("ok {} {} {:?}", l.active(), l.limit(), l.expires_at()),
                    Err(e) => format!("{e}"),
                };
                let (m, r) = match op {
                    0 => (
                        show(rt.block_on(memory.acquire(&org, &id, limit, lease, now))),
                        show(rt.block_on(redis.acquire(&org, &id, limit, lease, now))),
                    ),
                    1 => (
                        show(rt.block_on(memory.renew(&org, &id, lease, now))),
                        show(rt.block_on(redis.renew(&org, &id, lease, now))),
                    ),
                    2 => (
                        format!("{:?}", rt.block_on(memory.release(&org, &id, now)).unwrap()),
                        format!("{:?}", rt.block_on(redis.release(&org, &id, now)).unwrap()),
                    ),
                    _ => (
                        format!("{:?}", rt.block_on(memory.active(&org, now)).unwrap()),
                        format!("{:?}", rt.block_on(redis.active(&org, now)).unwrap()),
                    ),
                };
                prop_assert_eq!(m, r, "op {} #{} on {}", op, i, id);
            }
            Ok(())
        })
        .unwrap();
}

// ---- Redis Cluster -------------------------------------------------------------------------

/// A throwaway three-node Redis Cluster (no replicas), torn down when dropped.
struct ChildCluster {
    nodes: Vec<ChildRedis>,
    dir: std::path::PathBuf,
}

impl ChildCluster {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(unique_prefix());
        std::fs::create_dir_all(&dir).unwrap();
        let dir_arg = dir.to_str().unwrap().to_owned();
        let nodes: Vec<ChildRedis> = (0..3)
            .map(|_| {
                let port = free_port();
                let conf = format!("nodes-{port}.conf");
                ChildRedis::spawn(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf,
                        "--dir",
                        &dir_arg,
                    ],
                )
            })
            .collect();
        let cluster = Self { nodes, dir };
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "REDIS_URL is set, but `redis-cli` could not be run ({e}): the cluster test \
                     builds its own throwaway Redis Cluster and needs `redis-cli` on PATH"
                )
            });
        assert!(status.success(), "redis-cli --cluster create failed");
        // Wait for every node to see the whole cluster (the gossip that just started).
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &cluster.nodes {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut node.control())
                    .unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster never became ready");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        cluster
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(ChildRedis::url).collect()
    }
}

impl Drop for ChildCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backends_work_on_a_redis_cluster() {
    use redis::cluster::ClusterClient;
    use tower_api_key::sessions::SessionBackend;

    let Some(_url) = redis_url("the_backends_work_on_a_redis_cluster") else {
        return;
    };
    let cluster = ChildCluster::start();
    let connect = || async {
        ClusterClient::new(cluster.urls())
            .unwrap()
            .get_async_connection()
            .await
            .unwrap()
    };
    // Two replicas, each with its own cluster connection.
    let a = RedisRateLimiter::new(connect().await).timeout(Duration::from_secs(2));
    let b = RedisRateLimiter::new(connect().await).timeout(Duration::from_secs(2));
    let sessions_a = RedisSessions::new(connect().await).timeout(Duration::from_secs(2));
    let sessions_b = RedisSessions::new(connect().await).timeout(Duration::from_secs(2));
    let gcra = Gcra::new(3, Duration::from_secs(60));
    let now = Timestamp::from_unix_secs(T0);
    let lease = Duration::from_secs(60);
    let mut control = cluster.nodes[0].control();
    for i in 0..30 {
        let org = OrgId::from(format!("org_{i}"));
        // One limit across both replicas, whichever node holds the organization.
        for n in 0..3u64 {
            let replica = if n % 2 == 0 { &a } else { &b };
            let d = replica.check(&org, &gcra, 1, now).await.unwrap();
            assert!(d.allowed);
            assert_eq!(d.info.remaining, 2 - n);
        }
        assert!(!b.check(&org, &gcra, 1, now).await.unwrap().allowed);
        // One session count too.
        sessions_a.acquire(&org, "s1", 2, lease, now).await.unwrap();
        sessions_b.acquire(&org, "s2", 2, lease, now).await.unwrap();
        assert_eq!(
            limit_reached(sessions_a.acquire(&org, "s3", 2, lease, now).await),
            (2, 60)
        );
        // Both keys of an organization share its slot.
        let mut slot = |key: String| -> i64 {
            redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query(&mut control)
                .unwrap()
        };
        assert_eq!(slot(a.key(&org)), slot(sessions_a.key(&org)));
    }
    // The organizations are spread over every node.
    for node in &cluster.nodes {
        let keys: i64 = redis::cmd("DBSIZE").query(&mut node.control()).unwrap();
        assert!(keys > 0, "node {} holds no organization", node.port);
    }
    let s = a.stats();
    assert_eq!(s.errors + s.timeouts + s.skipped, 0, "{s:?}");
}

// ---- quotas at the extremes of the types ---------------------------------------------------

/// 1.8e10 s (570 years): `now + period` is past the last nanosecond a `u64` holds.
const VERY_LONG: Duration = Duration::from_secs(18_000_000_000);

#[tokio::test]
async fn one_request_per_1_8e10_seconds_admits_only_the_first() {
    let Some(url) = redis_url("one_request_per_1_8e10_seconds_admits_only_the_first") else {
        return;
    };
    let cleanup = Cleanup::new(&url);
    let redis = limiter(&url, &cleanup.prefix).await;
    let org = OrgId::from("org_slow");
    let gcra = Gcra::new(1, VERY_LONG);
    let t0 = Timestamp::from_unix_secs(T0);
    let first = redis.check(&org, &gcra, 1, t0).await.unwrap();
    assert!(first.allowed);
    assert_eq!(first.info.remaining, 0);
    let second = redis.check(&org, &gcra, 1, t0).await.unwrap();
    assert!(!second.allowed);
    // The one cell refills a whole period after it was spent.
    assert_eq!(second.info.retry_after, 18_000_000_000);
    // A second, a day, a century later: still a fraction of the period, still refused.
    let mut now = t0;
    for step in [1, 86_400, 100 * 365 * 86_400] {
        now = now.saturating_add(Duration::from_secs(step));
        let d = redis.check(&org, &gcra, 1, now).await.unwrap();
        assert!(!d.allowed, "after {step} s");
    }
}

/// 2^63 − 1 ns (in 2262): the last TAT a state holds; requests at or past it cost nothing or
/// are refused.
const END_OF_TIME: u64 = (1 << 63) - 1;

#[tokio::test]
async fn memory_and_redis_agree_at_the_extremes() {
    let Some(url) = redis_url("memory_and_redis_agree_at_the_extremes") else {
        return;
    };
    let cleanup = Cleanup::new(&url);
    let redis = limiter(&url, &cleanup.prefix).await;
    let memory = MemoryRateLimiter::new();
    let secs = |s: u64| s * 1_000_000_000;
    let burst = |n: usize| vec![(0, 1); n];
    // (quota, start in ns, events (gap in ns, cost), requests admitted in all)
    type Trace = (Gcra, u64, Vec<(u64, u32)>, usize);
    let traces: Vec<Trace> = vec![
        // One per 1.8e10 s: the first, then nothing for a century.
        (
            Gcra::new(1, VERY_LONG),
            secs(T0),
            vec![
                (0, 1),
                (0, 1),
                (secs(1), 1),
                (secs(86_400), 1),
                (secs(3_153_600_000), 1),
            ],
            1,
        ),
        // 1000 per 1.8e10 s: one cell per 1.8e7 s, and the 418th cell's TAT passes 2262, so the
        // burst stops there (held), never more.
        (Gcra::new(1000, VERY_LONG), secs(T0), burst(1001), 418),
        // Free, ten seconds before the end of time: 17 cells of 600 ms fit, then the TAT is
        // held; past the end, nothing.
        (
            Gcra::new(100, Duration::from_secs(60)),
            END_OF_TIME - secs(10),
            [burst(30), vec![(secs(20), 1), (0, 0), (secs(1_000), 1)]].concat(),
            18, // 17, then the free request
        ),
        // At the top of the u64 range: only free requests.
        (
            Gcra::new(100, Duration::from_secs(60)),
            u64::MAX - 1,
            vec![(0, 1), (0, 0), (0, 100)],
            1,
        ),
        // The largest burst over the longest period: one cell per 136 years, capacity held at
        // u64::MAX ns; the second cell's TAT passes 2262.
        (
            Gcra::new(u32::MAX, Duration::MAX),
            secs(T0),
            vec![(0, 1), (0, 1), (0, 1), (secs(86_400 * 365), 1)],
            2,
        ),
        // A cost of the whole burst over the longest period for one request.
        (
            Gcra::new(1, Duration::MAX),
            secs(T0),
            vec![(0, 2), (0, 1), (0, 1), (0, 0)],
            2, // the cost-1 request, and the free one
        ),
    ];
    for (i, (gcra, start, events, admitted)) in traces.into_iter().enumerate() {
        let org = OrgId::from(format!("org_extreme_{i}"));
        let mut now = start;
        let mut count = 0;
        for (j, (gap, cost)) in events.into_iter().enumerate() {
            now = now.saturating_add(gap).min(u64::MAX - 1);
            let t = Timestamp::from_unix_nanos(now);
            let expected = memory.decide(&org, &gcra, cost, t);
            let got = redis.check(&org, &gcra, cost, t).await.unwrap();
            assert_eq!(
                (got.allowed, got.info.remaining),
                (expected.allowed, expected.info.remaining),
                "trace {i}, event {j} (cost {cost}, t {now})"
            );
            count += usize::from(got.allowed);
        }
        assert_eq!(count, admitted, "trace {i}");
    }
}

// ---- several policies per organization -----------------------------------------------------

/// Sets of policies a trace switches between; index 0 is the one-policy Free plan, decided by
/// the one-policy check (so its state is carried over when a set takes over).
fn policy_sets() -> Vec<Arc<Policies>> {
    let set = |b: tower_api_key::rate_limit::PoliciesBuilder| Arc::new(b.build().unwrap());
    vec![
        Arc::new(Policies::for_plan(&Plan::Free)),
        set(Policies::builder()
            .requests("burst", 10, Duration::from_secs(1))
            .requests("minute", 100, Duration::from_secs(60))),
        set(Policies::builder()
            .requests("burst", 7, Duration::from_secs(1))
            .requests("minute", 100, Duration::from_secs(60))
            .requests("hour", 1000, Duration::from_secs(3600))),
        set(Policies::builder()
            .requests("fast", 50, Duration::from_millis(500))
            .requests("slow", 7, Duration::from_secs(60))),
    ]
}

/// One event: (gap in ns, cost, set index or `usize::MAX` to keep it, dry run, refunded).
type PolicyEvent = (u64, u32, usize, bool, bool);

/// A start offset in ns and the events.
fn policies_trace() -> impl Strategy<Value = (u64, Vec<PolicyEvent>)> {
    (
        0u64..1_000_000_000,
        prop::collection::vec(
            (
                prop_oneof![
                    3 => Just(0u64),
                    4 => 0u64..700_000_000,
                    1 => 0u64..20_000_000_000,
                ],
                prop_oneof![8 => Just(1u32), 2 => 0u32..=8, 1 => 0u32..=120],
                prop_oneof![12 => Just(usize::MAX), 1 => 0usize..4],
                prop_oneof![6 => Just(false), 1 => Just(true)],
                prop_oneof![5 => Just(false), 1 => Just(true)],
            ),
            1..150,
        ),
    )
}

/// For random traces of requests, costs, check-only requests, refunds and plan changes across several
/// policies (starting from a one-policy state), the memory and Redis backends give the same
/// decisions and figures for every policy, and a refused request spends nothing in either.
#[test]
fn memory_and_redis_agree_on_several_policies() {
    let Some(url) = redis_url("memory_and_redis_agree_on_several_policies") else {
        return;
    };
    let cleanup = Cleanup::new(&url);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = rt.block_on(limiter(&url, &cleanup.prefix));
    let sets = policy_sets();
    let free = *sets[0].rates()[0].gcra();
    let case = AtomicU32::new(0);
    let mut runner = TestRunner::new(ProptestConfig::with_cases(24));
    runner
        .run(&policies_trace(), |(start_frac, events)| {
            let org = OrgId::from(format!("org_{}", case.fetch_add(1, Ordering::Relaxed)));
            // A limiter per case: cases run at unrelated times, and a sweep at one case's time
            // would drop another's state that is not idle at its own.
            let memory = MemoryRateLimiter::new();
            let mut now = T0 * 1_000_000_000 + start_frac;
            let mut set = 0usize;
            for (i, (gap, cost, change, dry, refunded)) in events.into_iter().enumerate() {
                now += gap;
                if change != usize::MAX {
                    set = change;
                }
                let t = Timestamp::from_unix_nanos(now);
                if set == 0 {
                    let expected = memory.decide(&org, &free, cost, t);
                    let got = rt.block_on(redis.check(&org, &free, cost, t)).unwrap();
                    prop_assert_eq!((got.allowed, got.info), (expected.allowed, expected.info));
                    if refunded && got.allowed {
                        memory.refund(&org, &[free], cost, t);
                        rt.block_on(redis.refund_now(&org, &[free], cost, t))
                            .unwrap();
                    }
                    continue;
                }
                let spend = if dry { Spend::DryRun } else { Spend::Commit };
                let expected = memory.decide_policies(&org, &sets[set], cost, t, spend);
                let got = rt
                    .block_on(redis.check_policies(&org, &sets[set], cost, t, spend))
                    .unwrap();
                let seen = |d: &tower_api_key::rate_limit::Decisions| {
                    (
                        d.allowed(),
                        d.each()
                            .iter()
                            .map(|e| (e.allowed, e.info))
                            .collect::<Vec<_>>(),
                    )
                };
                prop_assert_eq!(
                    seen(&got),
                    seen(&expected),
                    "event {} (cost {}, set {}, dry {}, t {})",
                    i,
                    cost,
                    set,
                    dry,
                    now
                );
                if refunded && got.allowed() && !dry {
                    // The inner service failed: both give the cells back.
                    let gcras: Vec<Gcra> = sets[set].rates().iter().map(|r| *r.gcra()).collect();
                    memory.refund(&org, &gcras, cost, t);
                    rt.block_on(redis.refund_now(&org, &gcras, cost, t))
                        .unwrap();
                }
            }
            Ok(())
        })
        .unwrap();
    let stats = redis.stats();
    assert_eq!(
        stats.errors + stats.timeouts + stats.skipped,
        0,
        "{stats:?}"
    );
}

/// Several policies through the layer over Redis: a refusal by one policy names it and spends
/// none of the others; every key of the organization shares one hash slot.
#[tokio::test]
async fn several_policies_over_redis_refuse_atomically() {
    let Some(url) = redis_url("several_policies_over_redis_refuse_atomically") else {
        return;
    };
    let cleanup = Cleanup::new(&url);
    let redis = limiter(&url, &cleanup.prefix).await;
    let org = OrgId::from("org_multi");
    let set = Arc::new(
        Policies::builder()
            .requests("burst", 3, Duration::from_secs(1))
            .requests("minute", 10, Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    let t = Timestamp::from_unix_secs(T0);
    for _ in 0..3 {
        let d = redis
            .check_policies(&org, &set, 1, t, Spend::Commit)
            .await
            .unwrap();
        assert!(d.allowed());
    }
    let d = redis
        .check_policies(&org, &set, 1, t, Spend::Commit)
        .await
        .unwrap();
    assert!(!d.allowed());
    assert_eq!(
        d.each().iter().map(|e| e.allowed).collect::<Vec<_>>(),
        [false, true]
    );
    // "minute" was not spent by the refusal: 7 of 10 left.
    assert_eq!(d.each()[1].info.remaining, 7);
    assert_eq!(d.info().retry_after, 1);
    let key = redis.policies_key(&org);
    assert!(key.starts_with(&format!("{{{}:org_multi}}", cleanup.prefix)));
    assert_eq!(cleanup.keys(), vec![key]);
}
