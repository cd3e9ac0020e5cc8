//! `ApiKeyStack` (the whole stack in one service) answers exactly as the four layers composed
//! with `ServiceBuilder` do: same statuses, same headers, same bodies, for every path a request
//! can take, with lookups and rate-limit checks that are ready at once or pending, and with the
//! stages on the authentication's clock or on clocks of their own.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::stores::{Mode, TestStore};
use common::*;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_api_key::rate_limit::{CheckResult, Gcra, OrgRateLimitLayer, RateLimitBackend};
use tower_api_key::{
    ApiKeyAuth, Clock, Cost, KeyStore, LastUsedRecorder, MemoryRateLimiter, OrgId, OrgRateLimit,
    Plan, Quota, ScopeGuard, ScopeRules, Timestamp,
};

/// A rate-limit backend that answers after a real await point (as Redis would).
#[derive(Clone, Default)]
struct Remote(MemoryRateLimiter);

impl RateLimitBackend for Remote {
    type Check = std::pin::Pin<Box<dyn std::future::Future<Output = CheckResult> + Send>>;

    fn check(&self, org: &OrgId, gcra: &Gcra, cost: u32, now: Timestamp) -> Self::Check {
        let (limiter, org, gcra) = (self.0.clone(), org.clone(), *gcra);
        Box::pin(async move {
            tokio::task::yield_now().await;
            Ok(limiter.decide(&org, &gcra, cost, now))
        })
    }
}

fn rules() -> ScopeRules {
    ScopeRules::new()
        .route(Method::POST, "/v1/browsers", "browser_sessions:create")
        .route(Method::GET, "/v1/browsers/{id}", "browser_sessions:read")
        .authenticated(Method::GET, "/v1/whoami")
}

/// What a client sees of a response.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

async fn seen<B>(res: Response<B>) -> Seen
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let status = res.status().as_u16();
    let mut headers: Vec<(String, String)> = res
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Seen {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

async fn handler(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.extensions().get::<tower_api_key::Principal>() {
        Some(p) => format!("{} {} {}", req.uri().path(), p.org_id(), p.key_id()),
        None => "no principal".to_owned(),
    };
    Ok(Response::new(Full::new(Bytes::from(body))))
}

fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::default()).unwrap()
}

/// Both stacks over the same store, each with its own limiter and recorder, fed the same
/// requests: every answer must be the same.
struct Pair<A, B> {
    layers: A,
    fused: B,
}

impl<A, B, RA, RB> Pair<A, B>
where
    A: Service<Request<Full<Bytes>>, Response = Response<RA>, Error = Infallible> + Clone,
    B: Service<Request<Full<Bytes>>, Response = Response<RB>, Error = Infallible> + Clone,
    RA: http_body::Body<Data = Bytes, Error: std::fmt::Debug>,
    RB: http_body::Body<Data = Bytes, Error: std::fmt::Debug>,
{
    /// Send `make()` to both; assert the answers are equal; return the answer.
    async fn same(&self, make: impl Fn() -> Request<Full<Bytes>>) -> Seen {
        let a = seen(self.layers.clone().oneshot(make()).await.unwrap()).await;
        let b = seen(self.fused.clone().oneshot(make()).await.unwrap()).await;
        assert_eq!(a, b, "the four layers and the one service disagree");
        a
    }
}

/// The scenario: every path a request can take, and a quota that runs out.
async fn scenario<A, B, RA, RB>(fx: &Fixture, pair: Pair<A, B>)
where
    A: Service<Request<Full<Bytes>>, Response = Response<RA>, Error = Infallible> + Clone,
    B: Service<Request<Full<Bytes>>, Response = Response<RB>, Error = Infallible> + Clone,
    RA: http_body::Body<Data = Bytes, Error: std::fmt::Debug>,
    RB: http_body::Body<Data = Bytes, Error: std::fmt::Debug>,
{
    let writer = fx
        .mint(
            "org_a",
            &["browser_sessions:create", "browser_sessions:read"],
        )
        .await;
    let reader = fx.mint("org_a", &["browser_sessions:read"]).await;
    let revoked = fx.mint("org_a", &[]).await;
    fx.manager
        .revoke(&OrgId::from("org_a"), &revoked.record.id)
        .await
        .unwrap();
    let expiring = fx.mint_expiring("org_b", Duration::from_secs(60)).await;
    // Three requests per hour for org_c.
    fx.manager
        .set_plan(
            &OrgId::from("org_c"),
            Plan::Enterprise(Quota {
                requests: 3,
                period: Duration::from_secs(3600),
                concurrent_sessions: 1,
            }),
        )
        .await
        .unwrap();
    let limited = fx.mint("org_c", &[]).await;

    let (w, r, rv, ex, lim) = (
        bearer(&writer),
        bearer(&reader),
        bearer(&revoked),
        bearer(&expiring),
        bearer(&limited),
    );
    let x_api_key = writer.key.expose_secret().to_owned();

    // Accepted, with the rate limit's headers and the principal.
    let ok = pair
        .same(|| request(Method::POST, "/v1/browsers", &[("authorization", &w)]))
        .await;
    assert_eq!(ok.status, 200);
    assert!(ok.body.starts_with("/v1/browsers org_a"));
    assert!(ok.headers.iter().any(|(k, _)| k == "x-ratelimit-remaining"));
    // The custom header.
    let ok = pair
        .same(|| request(Method::GET, "/v1/whoami", &[("x-api-key", &x_api_key)]))
        .await;
    assert_eq!(ok.status, 200);
    // A route the key's scopes do not cover: 403, with the rate limit's headers.
    let denied = pair
        .same(|| request(Method::POST, "/v1/browsers", &[("authorization", &r)]))
        .await;
    assert_eq!(denied.status, 403);
    assert!(denied.headers.iter().any(|(k, _)| k == "x-ratelimit-limit"));
    assert_eq!(
        problem(denied.body.as_bytes())["code"],
        "insufficient_scope"
    );
    // No rule matches: refused (the table fails closed).
    assert_eq!(
        pair.same(|| request(Method::DELETE, "/v1/other", &[("authorization", &w)]))
            .await
            .status,
        403
    );
    // Refusals before any lookup, and after.
    for (headers, status) in [
        (vec![], 401),
        (vec![("authorization", "Bearer br_live_short")], 401),
        (vec![("authorization", "Basic dXNlcjpwYXNz")], 401),
        (
            vec![("authorization", w.as_str()), ("authorization", w.as_str())],
            401,
        ),
        (vec![("authorization", rv.as_str())], 401),
        (
            vec![(
                "authorization",
                "Bearer br_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6",
            )],
            401,
        ),
    ] {
        let got = pair
            .same(|| request(Method::GET, "/v1/whoami", &headers))
            .await;
        assert_eq!(got.status, status, "{headers:?}");
        assert!(!got.headers.iter().any(|(k, _)| k == "x-ratelimit-limit"));
    }
    // The key in the URL.
    assert_eq!(
        pair.same(|| request(
            Method::GET,
            "/v1/whoami?api_key=abc",
            &[("authorization", &w)]
        ))
        .await
        .status,
        400
    );
    // gRPC: trailers-only answers.
    let grpc = pair
        .same(|| {
            request(
                Method::POST,
                "/v1/browsers",
                &[("content-type", "application/grpc"), ("authorization", &r)],
            )
        })
        .await;
    assert_eq!(grpc.status, 200);
    assert!(grpc.headers.contains(&("grpc-status".into(), "7".into())));
    let grpc = pair
        .same(|| request(Method::POST, "/x", &[("content-type", "application/grpc")]))
        .await;
    assert!(grpc.headers.contains(&("grpc-status".into(), "16".into())));
    // Expiry, on the authentication's clock.
    assert_eq!(
        pair.same(|| request(Method::GET, "/v1/whoami", &[("authorization", &ex)]))
            .await
            .status,
        200
    );
    fx.time.advance(Duration::from_secs(61));
    assert_eq!(
        pair.same(|| request(Method::GET, "/v1/whoami", &[("authorization", &ex)]))
            .await
            .status,
        401
    );
    // A quota of three, one request costing two (a `Cost` extension): the third request is
    // refused with 429, Retry-After and the figures.
    let with_cost = || {
        let mut req = request(Method::GET, "/v1/whoami", &[("authorization", &lim)]);
        req.extensions_mut().insert(Cost(2));
        req
    };
    assert_eq!(pair.same(with_cost).await.status, 200);
    assert_eq!(
        pair.same(|| request(Method::GET, "/v1/whoami", &[("authorization", &lim)]))
            .await
            .status,
        200
    );
    let limited = pair
        .same(|| request(Method::GET, "/v1/whoami", &[("authorization", &lim)]))
        .await;
    assert_eq!(limited.status, 429);
    // The next of the three hourly cells is 1,200 s away.
    assert!(
        limited
            .headers
            .contains(&("retry-after".into(), "1200".into())),
        "{:?}",
        limited.headers
    );
    let body = problem(limited.body.as_bytes());
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(body["status"], 429);
}

fn auth<St: KeyStore>(fx: &Fixture, store: St) -> tower_api_key::ApiKeyAuthLayer<St> {
    ApiKeyAuth::new(store)
        .clock(fx.clock.clone())
        .header(HeaderName::from_static("x-api-key"))
}

fn limit<B: RateLimitBackend>(layer: OrgRateLimitLayer<B>, clock: &Clock) -> OrgRateLimitLayer<B> {
    layer.clock(clock.clone()).draft_headers(true)
}

#[tokio::test]
async fn one_service_answers_as_the_four_layers() {
    let fx = Fixture::new();
    let recorder = LastUsedRecorder::new(fx.store.clone()).clock(fx.clock.clone());
    let layers = ServiceBuilder::new()
        .layer(auth(&fx, fx.store.clone()))
        .layer(limit(OrgRateLimit::new(), &fx.clock))
        .layer(recorder.clone())
        .layer(ScopeGuard::rules(rules()))
        .service_fn(handler);
    let fused_recorder = LastUsedRecorder::new(fx.store.clone()).clock(fx.clock.clone());
    let fused = ServiceBuilder::new()
        .layer(
            auth(&fx, fx.store.clone())
                .rate_limit(limit(OrgRateLimit::new(), &fx.clock))
                .record_last_used(fused_recorder.clone())
                .scope_guard(ScopeGuard::rules(rules())),
        )
        .service_fn(handler);
    scenario(&fx, Pair { layers, fused }).await;
    // A key's mark goes to the recorder that saw it first in an interval (here the layers':
    // each request went there first); together the recorders wrote the four keys that were
    // accepted (writer, reader, expiring, limited; the revoked key never was).
    let written = recorder.flush().await.unwrap() + fused_recorder.flush().await.unwrap();
    assert_eq!(written, 4);
}

#[tokio::test]
async fn pending_lookups_and_checks_answer_as_ready_ones() {
    let fx = Fixture::new();
    let slow = TestStore::new(fx.store.clone(), Mode::Yield);
    let layers = ServiceBuilder::new()
        .layer(auth(&fx, fx.store.clone()))
        .layer(limit(OrgRateLimit::new(), &fx.clock))
        .layer(LastUsedRecorder::new(fx.store.clone()).clock(fx.clock.clone()))
        .layer(ScopeGuard::rules(rules()))
        .service_fn(handler);
    // Every lookup and every check waits once.
    let fused = ServiceBuilder::new()
        .layer(
            auth(&fx, slow.clone())
                .rate_limit(limit(
                    OrgRateLimit::with_backend(Remote::default()),
                    &fx.clock,
                ))
                .record_last_used(LastUsedRecorder::new(fx.store.clone()).clock(fx.clock.clone()))
                .scope_guard(ScopeGuard::rules(rules())),
        )
        .service_fn(handler);
    scenario(&fx, Pair { layers, fused }).await;
    assert!(slow.lookups() > 0);
}

#[tokio::test]
async fn stages_on_clocks_of_their_own_read_them() {
    let fx = Fixture::new();
    // The rate limit and the recorder run an hour ahead of the authentication.
    let (ahead, _handle) = Clock::manual(Timestamp::from_unix_secs(1_800_003_600));
    let recorder = LastUsedRecorder::new(fx.store.clone()).clock(ahead.clone());
    let layers = ServiceBuilder::new()
        .layer(auth(&fx, fx.store.clone()))
        .layer(limit(OrgRateLimit::new(), &ahead))
        .layer(recorder.clone())
        .service_fn(handler);
    let fused = ServiceBuilder::new()
        .layer(
            auth(&fx, fx.store.clone())
                .rate_limit(limit(OrgRateLimit::new(), &ahead))
                .record_last_used(LastUsedRecorder::new(fx.store.clone()).clock(ahead.clone())),
        )
        .service_fn(handler);
    let key = fx.mint("org_a", &[]).await;
    let auth_header = bearer(&key);
    let pair = Pair { layers, fused };
    let res = pair
        .same(|| {
            request(
                Method::GET,
                "/v1/whoami",
                &[("authorization", &auth_header)],
            )
        })
        .await;
    // The reset time is on the limiter's clock: an hour ahead.
    let reset: u64 = res
        .headers
        .iter()
        .find(|(k, _)| k == "x-ratelimit-reset")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap();
    assert!(reset > 1_800_003_600, "{reset}");

    // The last-used mark is on the recorder's clock (the one service alone, on a store of its
    // own, so that its recorder is the one that marks the key).
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    let auth_header = bearer(&key);
    let recorder = LastUsedRecorder::new(fx.store.clone()).clock(ahead.clone());
    let fused = ServiceBuilder::new()
        .layer(auth(&fx, fx.store.clone()).record_last_used(recorder.clone()))
        .service_fn(handler);
    let res = fused
        .oneshot(request(
            Method::GET,
            "/v1/whoami",
            &[("authorization", &auth_header)],
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(recorder.flush().await.unwrap(), 1);
    let record = fx
        .manager
        .get(&OrgId::from("org_a"), &key.record.id)
        .await
        .unwrap();
    assert_eq!(
        record.last_used_at,
        Some(Timestamp::from_unix_secs(1_800_003_600))
    );
}

#[tokio::test]
async fn every_stage_is_optional() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &["browser_sessions:read"]).await;
    let auth_header = bearer(&key);
    let req = || {
        request(
            Method::GET,
            "/v1/browsers/b1",
            &[("authorization", &auth_header)],
        )
    };
    // Scope guard alone: no rate-limit headers.
    let svc = ServiceBuilder::new()
        .layer(auth(&fx, fx.store.clone()).scope_guard(ScopeGuard::rules(rules())))
        .service_fn(handler);
    let res = svc.oneshot(req()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("x-ratelimit-limit").is_none());
    let svc = ServiceBuilder::new()
        .layer(auth(&fx, fx.store.clone()).scope_guard(ScopeGuard::require("org:billing")))
        .service_fn(handler);
    assert_eq!(svc.oneshot(req()).await.unwrap().status(), 403);
    // Last-used alone.
    let recorder = LastUsedRecorder::new(fx.store.clone()).clock(fx.clock.clone());
    let svc = ServiceBuilder::new()
        .layer(auth(&fx, fx.store.clone()).record_last_used(recorder.clone()))
        .service_fn(handler);
    assert_eq!(svc.oneshot(req()).await.unwrap().status(), 200);
    assert_eq!(recorder.flush().await.unwrap(), 1);
    // The authentication is configured first, then the stages are added.
    let svc = ServiceBuilder::new()
        .layer(
            ApiKeyAuth::new(fx.store.clone())
                .clock(fx.clock.clone())
                .header(HeaderName::from_static("x-api-key"))
                .rate_limit(OrgRateLimit::new().clock(fx.clock.clone())),
        )
        .service_fn(handler);
    let mut req = request(Method::GET, "/v1/whoami", &[]);
    req.headers_mut().insert(
        "x-api-key",
        HeaderValue::from_str(key.key.expose_secret()).unwrap(),
    );
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-ratelimit-limit"], "100");
}

// Paused time: the store timeout elapses as soon as the runtime is idle, without waiting.
#[tokio::test(start_paused = true)]
async fn a_failing_or_hanging_store_is_a_503_never_a_401() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    let auth_header = bearer(&key);
    for mode in [Mode::Fail, Mode::Hang] {
        let store = TestStore::new(fx.store.clone(), mode);
        let svc = ServiceBuilder::new()
            .layer(
                auth(&fx, store)
                    .store_timeout(Duration::from_millis(20))
                    .rate_limit(limit(OrgRateLimit::new(), &fx.clock))
                    .scope_guard(ScopeGuard::rules(rules())),
            )
            .service_fn(handler);
        let res = svc
            .oneshot(request(
                Method::GET,
                "/v1/whoami",
                &[("authorization", &auth_header)],
            ))
            .await
            .unwrap();
        assert_eq!(res.status(), 503, "{mode:?}");
        assert_eq!(res.headers()["retry-after"], "5");
        assert!(res.headers().get("x-ratelimit-limit").is_none());
        assert_eq!(problem_code(res).await, "auth_unavailable", "{mode:?}");
    }
}
