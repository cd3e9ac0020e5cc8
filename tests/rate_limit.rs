//! OrgRateLimit and SessionQuota in full stacks (`ApiKeyAuth` + the limiter over a
//! `service_fn`), with a manual clock: every figure is exact.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::{limit_reached, problem, problem_code, problem_of};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_api_key::rate_limit::{
    CheckResult, Gcra, OnBackendError, OrgRateLimitLayer, QuotaPolicy, RateLimitBackend,
    RateLimitError,
};
use tower_api_key::{
    ApiKeyAuth, Clock, Cost, KeyManager, KeyStore, ManualClock, MemoryRateLimiter, MemoryStore,
    NewKey, OrgId, OrgRateLimit, Plan, Principal, Quota, SessionError, SessionQuota, Timestamp,
};

/// 2023-11-14T22:13:20Z: a whole second, so reset values are easy to read.
const T0: u64 = 1_700_000_000;

struct Fixture {
    store: MemoryStore,
    manager: KeyManager<MemoryStore>,
    clock: Clock,
    manual: ManualClock,
}

fn fixture() -> Fixture {
    let (clock, manual) = Clock::manual(Timestamp::from_unix_secs(T0));
    let store = MemoryStore::new();
    let manager = KeyManager::new(store.clone()).clock(clock.clone());
    Fixture {
        store,
        manager,
        clock,
        manual,
    }
}

impl Fixture {
    async fn key(&self, org: &str) -> String {
        let created = self
            .manager
            .create(&OrgId::from(org), NewKey::new("test"))
            .await
            .unwrap();
        created.key.expose_secret().to_owned()
    }

    /// ApiKeyAuth → `layer` → a handler answering 200 "ok".
    fn stack(
        &self,
        layer: OrgRateLimitLayer,
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

    fn advance(&self, d: Duration) {
        self.manual.advance(d);
    }
}

fn get(key: &str) -> Request<Full<Bytes>> {
    Request::get("/v1/browsers")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::default())
        .unwrap()
}

fn grpc(key: &str) -> Request<Full<Bytes>> {
    Request::post("/banata.Browsers/Create")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap()
}

async fn call<S, B>(svc: &S, req: Request<Full<Bytes>>) -> Response<B>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
{
    svc.clone().oneshot(req).await.unwrap()
}

fn h(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

/// (limit, remaining, reset) from the X-RateLimit-* headers.
fn figures(headers: &HeaderMap) -> (u64, u64, u64) {
    let n = |name| h(headers, name).unwrap().parse().unwrap();
    (
        n("x-ratelimit-limit"),
        n("x-ratelimit-remaining"),
        n("x-ratelimit-reset"),
    )
}

#[tokio::test]
async fn exact_headers_through_a_sequence() {
    let f = fixture();
    let key = f.key("org_a").await;
    let svc = f.stack(OrgRateLimit::new());

    // Free: 100 per minute, one cell back every 600 ms.
    let res = call(&svc, get(&key)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(figures(res.headers()), (100, 99, T0 + 1));
    assert!(res.headers().get("retry-after").is_none());

    let res = call(&svc, get(&key)).await;
    assert_eq!(figures(res.headers()), (100, 98, T0 + 2)); // full again 1.2 s from now

    f.advance(Duration::from_millis(600)); // one cell back
    let res = call(&svc, get(&key)).await;
    assert_eq!(figures(res.headers()), (100, 98, T0 + 2));

    f.advance(Duration::from_secs(10)); // all back
    let res = call(&svc, get(&key)).await;
    assert_eq!(figures(res.headers()), (100, 99, T0 + 12));
    assert_eq!(body_json_text(res).await, "ok");
}

async fn body_json_text<B>(res: Response<B>) -> String
where
    B: http_body::Body<Data = Bytes, Error: std::fmt::Debug>,
{
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn the_101st_free_request_in_a_minute_is_refused_then_refills() {
    let f = fixture();
    let key = f.key("org_a").await;
    let svc = f.stack(OrgRateLimit::new());

    for i in 0..100u64 {
        let res = call(&svc, get(&key)).await;
        assert_eq!(res.status(), StatusCode::OK, "request {}", i + 1);
        assert_eq!(figures(res.headers()).1, 99 - i);
    }
    f.advance(Duration::from_millis(100));
    let res = call(&svc, get(&key)).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    // The next cell is due 600 ms after T0, 500 ms from now: rounded up to 1 s.
    assert_eq!(h(res.headers(), "retry-after").as_deref(), Some("1"));
    assert_eq!(figures(res.headers()), (100, 0, T0 + 60));
    let body = problem_of(res).await;
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(body["status"], 429);
    assert_eq!(
        body["title"],
        "Rate limit of 100 requests exceeded; retry after 1 seconds"
    );
    assert_eq!(body["retry_after"], 1);
    assert_eq!(body["limit"], 100);

    // Refill: 499 ms later still refused, at 500 ms one request passes, and only one.
    f.advance(Duration::from_millis(499));
    assert_eq!(call(&svc, get(&key)).await.status(), 429);
    f.advance(Duration::from_millis(1));
    let res = call(&svc, get(&key)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(figures(res.headers()), (100, 0, T0 + 61));
    assert_eq!(call(&svc, get(&key)).await.status(), 429);

    // Thirty seconds later, fifty cells are back.
    f.advance(Duration::from_secs(30));
    for _ in 0..50 {
        assert_eq!(call(&svc, get(&key)).await.status(), StatusCode::OK);
    }
    assert_eq!(call(&svc, get(&key)).await.status(), 429);
}

#[tokio::test]
async fn retry_after_counts_whole_seconds_rounded_up() {
    let f = fixture();
    let org = OrgId::from("org_e");
    f.manager
        .set_plan(
            &org,
            Plan::Enterprise(Quota {
                requests: 2,
                period: Duration::from_secs(10),
                concurrent_sessions: 1,
            }),
        )
        .await
        .unwrap();
    let key = f.key("org_e").await;
    let svc = f.stack(OrgRateLimit::new());
    assert_eq!(call(&svc, get(&key)).await.status(), 200);
    assert_eq!(call(&svc, get(&key)).await.status(), 200);
    let res = call(&svc, get(&key)).await;
    assert_eq!(h(res.headers(), "retry-after").as_deref(), Some("5"));
    f.advance(Duration::from_millis(4_001));
    let res = call(&svc, get(&key)).await;
    assert_eq!(h(res.headers(), "retry-after").as_deref(), Some("1"));
    f.advance(Duration::from_millis(999));
    assert_eq!(call(&svc, get(&key)).await.status(), 200);
}

#[tokio::test]
async fn two_orgs_are_independent() {
    let f = fixture();
    let a = f.key("org_a").await;
    let b = f.key("org_b").await;
    let a2 = f.key("org_a").await; // a second key of org_a shares its quota
    let svc = f.stack(OrgRateLimit::new());
    for _ in 0..50 {
        assert_eq!(call(&svc, get(&a)).await.status(), 200);
        assert_eq!(call(&svc, get(&a2)).await.status(), 200);
    }
    assert_eq!(call(&svc, get(&a)).await.status(), 429);
    assert_eq!(call(&svc, get(&a2)).await.status(), 429);
    let res = call(&svc, get(&b)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(figures(res.headers()), (100, 99, T0 + 1));
}

#[tokio::test]
async fn clones_of_the_layer_share_the_state() {
    let f = fixture();
    let key = f.key("org_a").await;
    let layer = OrgRateLimit::new();
    let one = f.stack(layer.clone());
    let two = f.stack(layer);
    for _ in 0..50 {
        assert_eq!(call(&one, get(&key)).await.status(), 200);
        assert_eq!(call(&two, get(&key)).await.status(), 200);
    }
    assert_eq!(call(&one, get(&key)).await.status(), 429);
    assert_eq!(call(&two, get(&key)).await.status(), 429);
}

#[tokio::test]
async fn plan_upgrade_raises_the_limit_on_the_next_request() {
    let f = fixture();
    let org = OrgId::from("org_a");
    let key = f.key("org_a").await;
    let svc = f.stack(OrgRateLimit::new());
    for _ in 0..100 {
        assert_eq!(call(&svc, get(&key)).await.status(), 200);
    }
    assert_eq!(call(&svc, get(&key)).await.status(), 429);

    f.manager.set_plan(&org, Plan::Paid).await.unwrap();
    let res = call(&svc, get(&key)).await;
    assert_eq!(res.status(), 200);
    // The 100 requests already made still count: 101 of 1,000 used, at 60 ms per cell.
    let (limit, remaining, reset) = figures(res.headers());
    assert_eq!((limit, remaining), (1000, 899));
    assert_eq!(reset, T0 + 7); // 101 cells × 60 ms = 6.06 s
    for _ in 0..899 {
        assert_eq!(call(&svc, get(&key)).await.status(), 200);
    }
    assert_eq!(call(&svc, get(&key)).await.status(), 429);

    // Back to Free: at most exhausted, full again within a minute.
    f.store.set_plan(&org, Plan::Free).await.unwrap();
    let res = call(&svc, get(&key)).await;
    assert_eq!(res.status(), 429);
    assert_eq!(figures(res.headers()), (100, 0, T0 + 60));
}

#[tokio::test]
async fn enterprise_custom_quota() {
    let f = fixture();
    let org = OrgId::from("org_big");
    let quota = Quota {
        requests: 5,
        period: Duration::from_secs(1),
        concurrent_sessions: 500,
    };
    f.manager
        .set_plan(&org, Plan::Enterprise(quota))
        .await
        .unwrap();
    let key = f.key("org_big").await;
    let svc = f.stack(OrgRateLimit::new().draft_headers(true));
    for i in 0..5u64 {
        let res = call(&svc, get(&key)).await;
        assert_eq!(res.status(), 200);
        let (limit, remaining, _) = figures(res.headers());
        assert_eq!((limit, remaining), (5, 4 - i));
    }
    let res = call(&svc, get(&key)).await;
    assert_eq!(res.status(), 429);
    assert_eq!(h(res.headers(), "retry-after").as_deref(), Some("1"));
    // The IETF draft fields, named after the plan.
    assert_eq!(
        h(res.headers(), "ratelimit-policy").as_deref(),
        Some("\"enterprise\";q=5;w=1, \"sessions\";q=500;qu=\"concurrent-requests\"")
    );
    assert_eq!(
        h(res.headers(), "ratelimit").as_deref(),
        Some("\"enterprise\";r=0;t=1")
    );
    f.advance(Duration::from_millis(200));
    assert_eq!(call(&svc, get(&key)).await.status(), 200);
}

#[tokio::test]
async fn draft_headers_are_off_by_default_and_exact_when_on() {
    let f = fixture();
    let key = f.key("org_a").await;
    let res = call(&f.stack(OrgRateLimit::new()), get(&key)).await;
    assert!(res.headers().get("ratelimit").is_none());
    assert!(res.headers().get("ratelimit-policy").is_none());

    let key = f.key("org_b").await;
    let res = call(&f.stack(OrgRateLimit::new().draft_headers(true)), get(&key)).await;
    assert_eq!(
        h(res.headers(), "ratelimit-policy").as_deref(),
        Some("\"free\";q=100;w=60, \"sessions\";q=10;qu=\"concurrent-requests\"")
    );
    assert_eq!(
        h(res.headers(), "ratelimit").as_deref(),
        Some("\"free\";r=99;t=1")
    );
}

#[tokio::test]
async fn grpc_refusal_is_resource_exhausted_with_the_figures_as_metadata() {
    let f = fixture();
    let key = f.key("org_a").await;
    let svc = f.stack(OrgRateLimit::new());
    for _ in 0..100 {
        let res = call(&svc, grpc(&key)).await;
        assert_eq!(res.status(), 200);
        assert!(res.headers().get("grpc-status").is_none());
    }
    let res = call(&svc, grpc(&key)).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "gRPC errors are trailers-only 200s"
    );
    assert_eq!(h(res.headers(), "grpc-status").as_deref(), Some("8"));
    assert_eq!(
        h(res.headers(), "grpc-message").as_deref(),
        Some("Rate limit of 100 requests exceeded; retry after 1 seconds")
    );
    assert_eq!(figures(res.headers()), (100, 0, T0 + 60));
    assert_eq!(h(res.headers(), "retry-after").as_deref(), Some("1"));
    assert_eq!(
        h(res.headers(), "content-type").as_deref(),
        Some("application/grpc")
    );
}

#[tokio::test]
async fn per_route_cost_by_function_and_by_extension() {
    let f = fixture();
    let key = f.key("org_a").await;
    let layer = OrgRateLimit::new().cost(|method, uri| {
        if method == Method::POST && uri.path() == "/v1/browsers" {
            10
        } else {
            1
        }
    });
    let svc = f.stack(layer);
    let post = || {
        Request::post("/v1/browsers")
            .header("authorization", format!("Bearer {key}"))
            .body(Full::default())
            .unwrap()
    };
    let res = call(&svc, post()).await;
    assert_eq!(figures(res.headers()).1, 90);
    let res = call(&svc, get(&key)).await;
    assert_eq!(figures(res.headers()).1, 89);

    // A Cost extension set outside the limiter wins over the function.
    let key_b = f.key("org_b").await;
    let inner = f.stack(OrgRateLimit::new());
    let svc = tower::service_fn(move |mut req: Request<Full<Bytes>>| {
        req.extensions_mut().insert(Cost(0));
        inner.clone().oneshot(req)
    });
    let res = svc.clone().oneshot(get(&key_b)).await.unwrap();
    assert_eq!(figures(res.headers()), (100, 100, T0));
}

#[tokio::test]
async fn custom_policy_replaces_the_plan_table() {
    let f = fixture();
    let key = f.key("org_a").await;
    let policy = QuotaPolicy::new(|p: &Principal| Quota {
        requests: 3,
        ..p.plan().quota()
    });
    let svc = f.stack(OrgRateLimit::new().policy(policy));
    for _ in 0..3 {
        assert_eq!(call(&svc, get(&key)).await.status(), 200);
    }
    let res = call(&svc, get(&key)).await;
    assert_eq!(res.status(), 429);
    assert_eq!(h(res.headers(), "retry-after").as_deref(), Some("20"));
}

#[tokio::test]
async fn without_api_key_auth_the_layer_fails_closed() {
    let svc = ServiceBuilder::new().layer(OrgRateLimit::new()).service_fn(
        |_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"leak"))))
        },
    );
    let res = svc.oneshot(get("br_live_whatever")).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = problem_of(res).await;
    assert_eq!(body["code"], "auth_layer_missing");
    assert_eq!(
        body["title"],
        "Server misconfiguration: OrgRateLimit found no authenticated principal (is ApiKeyAuth in front of it?)"
    );
}

#[tokio::test]
async fn unauthenticated_requests_never_reach_the_limiter() {
    let f = fixture();
    let layer = OrgRateLimit::new();
    let svc = f.stack(layer.clone());
    let res = call(&svc, get("br_live_00000000000000000000000000000000")).await;
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("x-ratelimit-limit").is_none());
    assert!(layer.backend().is_empty());
}

// ---- concurrent sessions ----------------------------------------------------------------

const LEASE: Duration = Duration::from_secs(300);

async fn principal_of(f: &Fixture, key: &str) -> Principal {
    let captured = std::sync::Arc::new(std::sync::Mutex::new(None));
    let c = captured.clone();
    let svc = ServiceBuilder::new()
        .layer(ApiKeyAuth::new(f.store.clone()).clock(f.clock.clone()))
        .service_fn(move |req: Request<Full<Bytes>>| {
            *c.lock().unwrap() = req.extensions().get::<Principal>().cloned();
            async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
        });
    svc.oneshot(get(key)).await.unwrap();
    let p = captured.lock().unwrap().take();
    p.unwrap()
}

#[tokio::test]
async fn eleventh_free_session_is_refused_and_a_released_slot_is_reusable() {
    let f = fixture();
    let key = f.key("org_a").await;
    let p = principal_of(&f, &key).await;
    let sessions = SessionQuota::new().clock(f.clock.clone());
    for i in 0..10 {
        let lease = sessions.acquire(&p, &format!("s{i}"), LEASE).await.unwrap();
        assert_eq!(lease.active(), i + 1);
        assert_eq!(lease.limit(), 10);
        assert_eq!(lease.expires_at(), Timestamp::from_unix_secs(T0 + 300));
    }
    f.advance(Duration::from_secs(100));
    let refused = sessions.acquire(&p, "s10", LEASE).await.unwrap_err();
    match &refused {
        SessionError::LimitReached { limit, retry_after } => {
            assert_eq!(*limit, 10);
            assert_eq!(*retry_after, 200); // the first lease ends at T0 + 300
        }
        other => panic!("{other:?}"),
    }
    let res = refused.rejection().unwrap().problem_response("api");
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "200");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body = problem(res.body());
    assert_eq!(body["code"], "session_limit_exceeded");
    assert_eq!(body["status"], 429);
    assert_eq!(
        body["title"],
        "Concurrent session limit of 10 reached; end a session first"
    );
    let mut grpc_headers = HeaderMap::new();
    grpc_headers.insert("content-type", "application/grpc".parse().unwrap());
    let g = refused
        .rejection()
        .unwrap()
        .default_response(&grpc_headers, "api");
    assert_eq!(g.headers()["grpc-status"], "8");

    assert!(sessions.release(p.org_id(), "s3").await.unwrap());
    assert_eq!(sessions.active(p.org_id()).await.unwrap(), 9);
    sessions.acquire(&p, "s10", LEASE).await.unwrap();
    // Full again: the earliest lease (s0) still ends at T0 + 300.
    assert_eq!(
        limit_reached(sessions.acquire(&p, "s11", LEASE).await),
        (10, 200)
    );
    // Another organization has its own ten.
    let other = principal_of(&f, &f.key("org_b").await).await;
    sessions.acquire(&other, "s0", LEASE).await.unwrap();
}

#[tokio::test]
async fn expired_lease_is_reclaimed() {
    let f = fixture();
    let key = f.key("org_a").await;
    let p = principal_of(&f, &key).await;
    let sessions = SessionQuota::new().clock(f.clock.clone());
    for i in 0..10 {
        sessions
            .acquire(&p, &format!("s{i}"), Duration::from_secs(60 + i))
            .await
            .unwrap();
    }
    // "s0" crashed without releasing: its lease ends at T0 + 60.
    f.advance(Duration::from_secs(59));
    assert_eq!(
        limit_reached(sessions.acquire(&p, "new", LEASE).await),
        (10, 1)
    );
    f.advance(Duration::from_secs(1));
    sessions.acquire(&p, "new", LEASE).await.unwrap();
    assert!(matches!(
        sessions.renew(p.org_id(), "s0", LEASE).await,
        Err(SessionError::NotHeld)
    ));
    // A live holder that renews keeps its slot past its first expiry.
    sessions.renew(p.org_id(), "s1", LEASE).await.unwrap();
    f.advance(Duration::from_secs(10));
    assert_eq!(sessions.active(p.org_id()).await.unwrap(), 2); // "new" and "s1"
}

#[tokio::test]
async fn session_limit_follows_the_plan() {
    let f = fixture();
    let org = OrgId::from("org_a");
    let key = f.key("org_a").await;
    let sessions = SessionQuota::new().clock(f.clock.clone());
    let p = principal_of(&f, &key).await;
    for i in 0..10 {
        sessions.acquire(&p, &format!("s{i}"), LEASE).await.unwrap();
    }
    assert_eq!(
        limit_reached(sessions.acquire(&p, "s10", LEASE).await),
        (10, 300)
    );
    f.manager.set_plan(&org, Plan::Paid).await.unwrap();
    // The next request's Principal carries the new plan.
    let p = principal_of(&f, &key).await;
    for i in 10..100 {
        sessions.acquire(&p, &format!("s{i}"), LEASE).await.unwrap();
    }
    assert_eq!(
        limit_reached(sessions.acquire(&p, "s100", LEASE).await),
        (100, 300)
    );
}

// ---- asynchronous backends -----------------------------------------------------------------

/// A backend answering after a real await point (as Redis would), over the memory math; or
/// failing, when `down`.
#[derive(Clone)]
struct Remote {
    memory: MemoryRateLimiter,
    down: bool,
}

impl RateLimitBackend for Remote {
    type Check = std::pin::Pin<Box<dyn std::future::Future<Output = CheckResult> + Send>>;

    fn check(&self, org: &OrgId, gcra: &Gcra, cost: u32, now: Timestamp) -> Self::Check {
        let (this, org, gcra) = (self.clone(), org.clone(), *gcra);
        Box::pin(async move {
            tokio::task::yield_now().await;
            if this.down {
                Err(RateLimitError::unavailable("connection refused"))
            } else {
                Ok(this.memory.decide(&org, &gcra, cost, now))
            }
        })
    }
}

#[tokio::test]
async fn a_pending_backend_gives_the_same_answers() {
    let f = fixture();
    let key = f.key("org_a").await;
    let remote = Remote {
        memory: MemoryRateLimiter::new(),
        down: false,
    };
    let ready = f.stack(OrgRateLimit::new());
    let layer = OrgRateLimit::with_backend(remote).clock(f.clock.clone());
    let pending = ServiceBuilder::new()
        .layer(ApiKeyAuth::new(f.store.clone()).clock(f.clock.clone()))
        .layer(layer)
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
    let key_b = f.key("org_b").await;
    for _ in 0..101 {
        let a = call(&ready, get(&key)).await;
        let b = call(&pending, get(&key_b)).await;
        assert_eq!(a.status(), b.status());
        assert_eq!(figures(a.headers()), figures(b.headers()));
        assert_eq!(h(a.headers(), "retry-after"), h(b.headers(), "retry-after"));
    }
}

#[tokio::test]
async fn backend_failure_fails_closed_by_default_or_open_when_asked() {
    let f = fixture();
    let key = f.key("org_a").await;
    let down = Remote {
        memory: MemoryRateLimiter::new(),
        down: true,
    };
    let svc = |layer: OrgRateLimitLayer<Remote>| {
        ServiceBuilder::new()
            .layer(ApiKeyAuth::new(f.store.clone()).clock(f.clock.clone()))
            .layer(layer.clock(f.clock.clone()))
            .service_fn(|_req: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            })
    };
    let closed = svc(OrgRateLimit::with_backend(down.clone()));
    let res = call(&closed, get(&key)).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h(res.headers(), "retry-after").as_deref(), Some("1"));

    let open = svc(OrgRateLimit::with_backend(down).on_backend_error(OnBackendError::FailOpen));
    let res = call(&open, get(&key)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("x-ratelimit-limit").is_none());
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn session_errors_are_axum_responses() {
    use axum::response::IntoResponse;
    let res = SessionError::LimitReached {
        limit: 10,
        retry_after: 7,
    }
    .into_response();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "7");
    assert_eq!(problem_code(res).await, "session_limit_exceeded");
    let res = SessionError::NotHeld.into_response();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(problem_code(res).await, "session_not_found");
}

// ---- quotas at the extremes of the types ---------------------------------------------------

/// 1.8e10 s (570 years): `now + period` is past the last nanosecond a `u64` holds, so a
/// theoretical arrival time computed in plain `u64` wraps or saturates.
const VERY_LONG: Duration = Duration::from_secs(18_000_000_000);

#[tokio::test]
async fn one_request_per_1_8e10_seconds_admits_only_the_first() {
    let f = fixture();
    let org = OrgId::from("org_slow");
    let quota = Quota {
        requests: 1,
        period: VERY_LONG,
        concurrent_sessions: 1,
    };
    f.manager
        .set_plan(&org, Plan::Enterprise(quota))
        .await
        .unwrap();
    let key = f.key("org_slow").await;
    let svc = f.stack(OrgRateLimit::new());

    let res = call(&svc, get(&key)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(figures(res.headers()).1, 0);

    let res = call(&svc, get(&key)).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    // The one cell refills a whole period after it was spent.
    assert_eq!(
        h(res.headers(), "retry-after").as_deref(),
        Some("18000000000")
    );
    assert_eq!(problem_code(res).await, "rate_limited");

    // A second, a day, a century later: still a fraction of the period, still refused.
    for step in [1, 86_400, 100 * 365 * 86_400] {
        f.advance(Duration::from_secs(step));
        let res = call(&svc, get(&key)).await;
        assert_eq!(
            res.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "after {step} s"
        );
        assert_eq!(problem_code(res).await, "rate_limited");
    }
}

/// Periods from a nanosecond to `Duration::MAX`, the long ones most.
fn extreme_period() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (1u64..=120_000_000_000).prop_map(Duration::from_nanos),
        (1u64 << 50..=u64::MAX).prop_map(Duration::from_nanos),
        any::<u64>().prop_map(Duration::from_secs),
        Just(VERY_LONG),
        Just(Duration::from_nanos(u64::MAX)),
        Just(Duration::MAX),
    ]
}

/// Clock readings: now, just around 2^63 ns (2262, where TATs are held), and up to the top of
/// the `u64` range (2554).
fn extreme_start() -> impl Strategy<Value = u64> {
    const AROUND: u64 = 1 << 40; // about 18 minutes
    prop_oneof![
        Just(T0 * 1_000_000_000),
        (1u64 << 63) - AROUND..=(1u64 << 63) + AROUND,
        u64::MAX - AROUND..=u64::MAX - 1,
        1u64 << 62..=u64::MAX - 1,
    ]
}

/// The time between two requests.
#[derive(Clone, Copy, Debug)]
enum Gap {
    Nanos(u64),
    /// `k/8` of the emission interval.
    Eighths(u8),
}

/// The cost of a request.
#[derive(Clone, Copy, Debug)]
enum Cells {
    Some(u32),
    /// The whole burst, `N`.
    Burst,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// For any quota the types accept and any clock reading, the cells admitted in every
    /// window `[a, b]` between admitted instants never exceed `N + ⌊(b − a) / T⌋`, with
    /// `T = ⌈period / N⌉` computed exactly (the period as given, in u128): by the pure GCRA
    /// and by the memory backend. And the quota is not refused wholesale: before 2262, a fresh
    /// organization's first request costing at most `N` is admitted.
    #[test]
    fn no_quota_admits_more_than_it_allows_at_the_extremes(
        n in prop_oneof![1u32..=10, 1u32..=u32::MAX, Just(u32::MAX)],
        period in extreme_period(),
        start in extreme_start(),
        events in prop::collection::vec(
            (
                prop_oneof![
                    3 => Just(Gap::Nanos(0)),
                    2 => (0u64..1_000).prop_map(Gap::Nanos),
                    4 => (0u8..=24).prop_map(Gap::Eighths),
                    1 => any::<u64>().prop_map(Gap::Nanos),
                ],
                prop_oneof![
                    8 => Just(Cells::Some(1)),
                    2 => (0u32..=4).prop_map(Cells::Some),
                    1 => Just(Cells::Burst),
                    1 => any::<u32>().prop_map(Cells::Some),
                ],
            ),
            1..120,
        ),
    ) {
        let gcra = Gcra::new(n, period);
        let t = period.as_nanos().max(1).div_ceil(u128::from(n));
        let limiter = MemoryRateLimiter::new();
        let org = OrgId::from("org_extreme");
        let mut tat = Timestamp::EPOCH;
        let mut now = start;
        let mut pure: Vec<(u64, u64)> = Vec::new();
        let mut memory: Vec<(u64, u64)> = Vec::new();
        for (i, (gap, cells)) in events.into_iter().enumerate() {
            let gap = match gap {
                Gap::Nanos(ns) => ns,
                Gap::Eighths(k) => u64::try_from(t * u128::from(k) / 8).unwrap_or(u64::MAX),
            };
            now = now.saturating_add(gap).min(u64::MAX - 1);
            let cost = match cells {
                Cells::Some(c) => c,
                Cells::Burst => n,
            };
            let at = Timestamp::from_unix_nanos(now);
            let d = gcra.decide(tat, at, cost);
            if i == 0 && cost <= n && now < 1 << 63 {
                prop_assert!(d.allowed, "the first request of a fresh organization");
            }
            if d.allowed {
                pure.push((now, u64::from(cost)));
                tat = d.tat;
            } else {
                prop_assert_eq!(d.tat, tat, "a refusal leaves the state unchanged");
                prop_assert!(d.info.retry_after >= 1);
            }
            if limiter.decide(&org, &gcra, cost, at).allowed {
                memory.push((now, u64::from(cost)));
            }
        }
        for (name, admitted) in [("pure", &pure), ("memory", &memory)] {
            for i in 0..admitted.len() {
                let mut sum = 0u128;
                for later in &admitted[i..] {
                    sum += u128::from(later.1);
                    let w = u128::from(later.0 - admitted[i].0);
                    let bound = u128::from(n) + w / t;
                    prop_assert!(
                        sum <= bound,
                        "{}: {} cells in {} ns (N={}, T={} ns, start {})",
                        name, sum, w, n, t, start
                    );
                }
            }
        }
    }
}
