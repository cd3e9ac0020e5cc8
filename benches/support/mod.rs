//! Harness shared by the benches (`#[path = "support/mod.rs"] mod support;`): the no-op inner
//! service, driving a service without a runtime, a store with the keys each path needs, the
//! full stack, and running an operation on several threads at once.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Empty;
use tower::Service;
use tower::layer::util::{Identity, Stack};
use tower_api_key::{
    ApiKeyAuth, ApiKeyAuthLayer, KeyFormat, KeyHash, KeyId, KeyManager, KeyRecord, KeyStore,
    LastUsedRecorder, MemoryStore, NewKey, OrgId, OrgRateLimit, Plan, Principal, Quota, ScopeGuard,
    Scopes, Timestamp,
};
use tower_api_key::{
    Clock, KeyFormats, LastUsedRecorderLayer, MemoryRateLimiter, QuotaPolicy, Requirement,
};

/// Criterion settings that keep the whole suite within minutes on two cores. `--quick` (or
/// `BENCH_QUICK=1`) shortens it further, to check that everything runs.
pub fn criterion() -> Criterion {
    let c = Criterion::default()
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    if std::env::var_os("BENCH_QUICK").is_some_and(|v| v != "0") {
        c.warm_up_time(Duration::from_millis(50))
            .measurement_time(Duration::from_millis(100))
            .sample_size(10)
            .configure_from_args()
    } else {
        c.configure_from_args()
    }
}

/// The inner service: answers at once, as a hello-world handler does (a `content-type`, an
/// empty body). Keeps nothing of the request.
#[derive(Clone, Copy, Debug)]
pub struct Hello;

#[inline]
pub fn hello_response() -> Response<Empty<Bytes>> {
    let mut res = Response::new(Empty::new());
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

impl<B> Service<Request<B>> for Hello {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;
    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    #[inline]
    fn call(&mut self, _: Request<B>) -> Self::Future {
        ready(Ok(hello_response()))
    }
}

/// Drive one request through a service whose futures complete without waiting; the response
/// is dropped inside (its cost is part of what is measured). Returns the status.
#[inline]
pub fn run<S, B, R>(svc: &mut S, req: Request<B>) -> u16
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    if svc.poll_ready(&mut cx).is_pending() {
        panic!("benchmark services are always ready");
    }
    let fut = pin!(svc.call(req));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(res)) => res.status().as_u16(),
        Poll::Ready(Err(e)) => panic!("{e:?}"),
        Poll::Pending => panic!("benchmark services must complete at once"),
    }
}

/// A request as a client sends it: a path, an `Authorization` header (a `'static` value, so
/// building and dropping the request allocates only its header map), an `accept` header.
pub fn request(authorization: &'static str) -> Request<Empty<Bytes>> {
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = Uri::from_static("/v1/browsers");
    let h = req.headers_mut();
    h.insert(AUTHORIZATION, HeaderValue::from_static(authorization));
    h.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
    req
}

/// The same with a header value built at run time (keys of a large store).
pub fn request_with(authorization: HeaderValue) -> Request<Empty<Bytes>> {
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = Uri::from_static("/v1/browsers");
    let h = req.headers_mut();
    h.insert(AUTHORIZATION, authorization);
    h.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
    req
}

/// `Bearer <key>` with a `'static` lifetime (a few strings, leaked once per bench process).
pub fn bearer(key: &str) -> &'static str {
    Box::leak(format!("Bearer {key}").into_boxed_str())
}

/// An enterprise plan no benchmark can exhaust, whose header figures stay at four digits (as
/// Free and Paid ones are): 9,999 requests per millisecond.
pub fn unbounded() -> Plan {
    Plan::Enterprise(Quota {
        requests: 9_999,
        period: Duration::from_millis(1),
        concurrent_sessions: 1,
    })
}

/// An enterprise plan for runs that keep both cores busy: the coarse clock advances by scheduler
/// ticks (4 ms on the benchmark machine), and two threads admit more than a burst of 9,999
/// ([`unbounded`]) within one tick. A million per 100 ms (the same rate, a hundred times the
/// burst) does not run out.
pub fn roomy() -> Plan {
    Plan::Enterprise(Quota {
        requests: 1_000_000,
        period: Duration::from_millis(100),
        concurrent_sessions: 1,
    })
}

/// The scope the full stack's route requires.
pub const REQUIRED: &str = "browser_sessions:create";

/// A store with one key for each path a request can take.
pub struct Fixture {
    pub store: MemoryStore,
    /// Holds `REQUIRED`; its organization is on [`unbounded`].
    pub hot: &'static str,
    /// Same organization, only `browser_sessions:read`: refused by the scope guard.
    pub read_only: &'static str,
    /// Revoked.
    pub revoked: &'static str,
    /// Of an organization whose quota (1 per hour) is spent: refused by the rate limit.
    pub limited: &'static str,
    /// Well formed, in no store.
    pub unknown: &'static str,
    /// Too short: refused by the format check.
    pub malformed: &'static str,
    /// The hot key's principal, as `ApiKeyAuth` inserts it.
    pub principal: Principal,
    /// The read-only key's principal.
    pub read_only_principal: Principal,
    /// The rate-limited key's principal.
    pub limited_principal: Principal,
    pub hot_org: OrgId,
}

pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

pub fn fixture() -> Fixture {
    block_on(async {
        let store = MemoryStore::new();
        let manager = KeyManager::new(store.clone());
        let org = OrgId::from("org_2b8f1c0d9e7a");
        let limited_org = OrgId::from("org_5d1e0a9c3b7f");
        manager.set_plan(&org, unbounded()).await.unwrap();
        manager
            .set_plan(
                &limited_org,
                Plan::Enterprise(Quota {
                    requests: 1,
                    period: Duration::from_secs(3600),
                    concurrent_sessions: 1,
                }),
            )
            .await
            .unwrap();
        let scopes = Scopes::parse([REQUIRED, "browser_sessions:read"]).unwrap();
        let create = |org: OrgId, scopes: Scopes| {
            let manager = manager.clone();
            async move {
                manager
                    .create(&org, NewKey::new("bench").scopes(scopes))
                    .await
                    .unwrap()
            }
        };
        let hot = create(org.clone(), scopes.clone()).await;
        let read_only = create(
            org.clone(),
            Scopes::parse(["browser_sessions:read"]).unwrap(),
        )
        .await;
        let revoked = create(org.clone(), scopes.clone()).await;
        manager.revoke(&org, &revoked.record.id).await.unwrap();
        let limited = create(limited_org, scopes).await;
        let principal = |key: &tower_api_key::ApiKey| {
            let found = store
                .find_by_hash(&key.hash())
                .into_inner()
                .unwrap()
                .unwrap();
            Principal::new(found.record, found.plan)
        };
        let (hot_p, read_only_p, limited_p) = (
            principal(&hot.key),
            principal(&read_only.key),
            principal(&limited.key),
        );
        Fixture {
            store,
            hot: bearer(hot.key.expose_secret()),
            read_only: bearer(read_only.key.expose_secret()),
            revoked: bearer(revoked.key.expose_secret()),
            limited: bearer(limited.key.expose_secret()),
            unknown: bearer(KeyFormat::live().generate().unwrap().expose_secret()),
            malformed: "Bearer br_live_thisisnotakey",
            principal: hot_p,
            read_only_principal: read_only_p,
            limited_principal: limited_p,
            hot_org: org,
        }
    })
}

/// A store with `n` keys over `n / 10` organizations on `plan`, and their `Authorization`
/// values. Keys are deterministic (fast to build), in the live format.
pub fn large_store(n: usize, plan: Plan) -> (MemoryStore, Vec<HeaderValue>) {
    let store = MemoryStore::with_default_plan(plan);
    store.reserve(n);
    let orgs: Vec<OrgId> = (0..n.div_ceil(10))
        .map(|i| OrgId::from(format!("org_{i:012}")))
        .collect();
    let scopes = Scopes::parse([REQUIRED]).unwrap();
    let env: Arc<str> = Arc::from("live");
    let mut headers = Vec::with_capacity(n);
    block_on(async {
        for i in 0..n {
            let key = format!("br_live_{i:032}");
            let record = KeyRecord::new(
                KeyId::from(format!("key_{i:020}")),
                orgs[i / 10].clone(),
                "bench".into(),
                KeyHash::of(&key),
                String::new(),
                scopes.clone(),
                env.clone(),
                Timestamp::EPOCH,
            );
            store.insert(record).await.unwrap();
            headers.push(HeaderValue::try_from(format!("Bearer {key}")).unwrap());
        }
    });
    (store, headers)
}

/// A small, fast pseudo-random sequence (xorshift64*), so each iteration picks another key.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize % n
    }
}

/// The auth layer as the full stack uses it (defaults: coarse clock).
pub fn auth_layer(store: &MemoryStore) -> ApiKeyAuthLayer<MemoryStore> {
    ApiKeyAuth::new(store.clone())
}

/// The full stack over `inner`: ApiKeyAuth → OrgRateLimit → LastUsedRecorder → ScopeGuard,
/// every layer with its defaults (coarse clock, in-memory backends).
pub fn full_stack<S>(
    store: &MemoryStore,
    inner: S,
) -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<impl http_body::Body<Data = Bytes, Error = Infallible>>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send
+ 'static
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Empty<Bytes>>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    full_stack_layers(store).service(inner)
}

/// The full stack's layers, outermost last.
pub type FullStackLayers = tower::ServiceBuilder<
    Stack<
        tower_api_key::ScopeGuardLayer,
        Stack<
            tower_api_key::LastUsedRecorderLayer<MemoryStore>,
            Stack<tower_api_key::OrgRateLimitLayer, Stack<ApiKeyAuthLayer<MemoryStore>, Identity>>,
        >,
    >,
>;

/// The full stack as a layer (shares its rate-limit and last-used state between services).
pub fn full_stack_layers(store: &MemoryStore) -> FullStackLayers {
    tower::ServiceBuilder::new()
        .layer(auth_layer(store))
        .layer(OrgRateLimit::new())
        .layer(LastUsedRecorder::new(store.clone()))
        .layer(ScopeGuard::require(REQUIRED))
}

/// The same stack as one service ([`tower_api_key::ApiKeyStack`]): the four stages inside one
/// layer, every piece with its defaults.
pub fn fused_stack_layer(store: &MemoryStore) -> tower_api_key::ApiKeyStackLayer<MemoryStore> {
    auth_layer(store)
        .rate_limit(OrgRateLimit::new())
        .record_last_used(LastUsedRecorder::new(store.clone()))
        .scope_guard(ScopeGuard::require(REQUIRED))
}

/// [`fused_stack_layer`] with usage metering on: every request also counted by outcome.
pub fn fused_stack_layer_metered(
    store: &MemoryStore,
) -> tower_api_key::ApiKeyStackLayer<MemoryStore> {
    auth_layer(store)
        .rate_limit(OrgRateLimit::new())
        .record_last_used(LastUsedRecorder::new(store.clone()).meter_usage(true))
        .scope_guard(ScopeGuard::require(REQUIRED))
}

/// The fused stack without its rate limit: what the first policy costs is the difference.
pub fn fused_unlimited_layer(store: &MemoryStore) -> tower_api_key::ApiKeyStackLayer<MemoryStore> {
    auth_layer(store)
        .record_last_used(LastUsedRecorder::new(store.clone()))
        .scope_guard(ScopeGuard::require(REQUIRED))
}

/// The fused stack with `k` named request policies per organization (1 to 3), each as roomy as
/// [`unbounded`] (9,999 per millisecond, the same rate over a second and a minute), given by
/// [`QuotaPolicy::policies`](tower_api_key::rate_limit::QuotaPolicy::policies): what one more
/// policy costs.
pub fn fused_policies_layer(
    store: &MemoryStore,
    k: usize,
) -> tower_api_key::ApiKeyStackLayer<MemoryStore> {
    use tower_api_key::rate_limit::{Policies, QuotaPolicy};
    let windows = [
        ("ms", 9_999, Duration::from_millis(1)),
        ("second", 9_999_000, Duration::from_secs(1)),
        ("minute", 599_940_000, Duration::from_secs(60)),
    ];
    let mut builder = Policies::builder();
    for (name, n, w) in windows.into_iter().take(k) {
        builder = builder.requests(name, n, w);
    }
    let set = std::sync::Arc::new(builder.build().expect("valid policies"));
    auth_layer(store)
        .rate_limit(OrgRateLimit::new().policy(QuotaPolicy::policies(move |_| set.clone())))
        .record_last_used(LastUsedRecorder::new(store.clone()))
        .scope_guard(ScopeGuard::require(REQUIRED))
}

/// The token of an `Authorization: Bearer <token>` value, parsed as a user would by hand: the
/// scheme matched case-insensitively, the rest trimmed, only visible ASCII accepted. The floors
/// use it rather than the crate's own parser, which is private.
#[inline]
pub fn parse_bearer(value: &[u8]) -> Option<&str> {
    let (scheme, token) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = token.trim_ascii();
    if token.is_empty() || !token.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    std::str::from_utf8(token).ok()
}

/// The problem+json body of ApiKeyAuth's refusal (module docs of `reject`).
pub const MALFORMED_BODY: &[u8] = br#"{"type":"about:blank","title":"Invalid or missing API key","status":401,"code":"invalid_api_key"}"#;

/// The least a conforming refusal of a malformed key can do with `http` 1.x: find the bearer
/// token, check its format, and answer 401 with the two headers the contract asks for
/// (`WWW-Authenticate`, `content-type`) and a static body, written into the
/// request's own header map (no allocation). No tower, no response future, no body wrapper, no
/// gRPC check, no problem+json choice: what any implementation must pay at the least. Returns
/// the status, 0 if the key was not malformed (the caller counts it as a wrong path).
#[inline]
pub fn floor_malformed<B>(formats: &tower_api_key::KeyFormats, req: Request<B>) -> u16 {
    if let Some(value) = req.headers().get(AUTHORIZATION)
        && let Some(key) = parse_bearer(value.as_bytes())
        && formats.check(key).is_ok()
    {
        return 0;
    }
    let (mut parts, _) = req.into_parts();
    parts.headers.clear();
    parts.headers.insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Bearer realm="api", error="invalid_token""#),
    );
    parts.headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    let mut res = Response::new(Bytes::from_static(MALFORMED_BODY));
    *res.status_mut() = http::StatusCode::UNAUTHORIZED;
    *res.headers_mut() = parts.headers;
    std::hint::black_box(&res);
    res.status().as_u16()
}

/// The three `X-RateLimit-*` headers of a decision, written as a user would from its public
/// figures (`HeaderValue::from(u64)`; the crate's own writer, with its table of digits, is
/// private).
#[inline]
pub fn write_limit_headers(info: &tower_api_key::RateLimitInfo, headers: &mut http::HeaderMap) {
    use tower_api_key::rate_limit::{X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET};
    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(info.limit));
    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(info.remaining));
    headers.insert(X_RATELIMIT_RESET, HeaderValue::from(info.reset));
}

/// From the first thread's start to the last one's end.
pub fn span(times: impl Iterator<Item = (Instant, Instant)>) -> Duration {
    let (starts, ends): (Vec<_>, Vec<_>) = times.unzip();
    *ends.iter().max().unwrap() - *starts.iter().min().unwrap()
}

/// Run `threads` threads started together. Each calls `prepare(thread)` before the start
/// (untimed) and `work(thread, prepared)` timed; returns the wall time from the first start to
/// the last end.
pub fn run_threads<P, T>(
    threads: usize,
    prepare: impl Fn(usize) -> P + Sync,
    work: impl Fn(usize, P) -> T + Sync,
) -> Duration
where
    P: Send,
    T: Send,
{
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, prepare, work) = (&barrier, &prepare, &work);
                s.spawn(move || {
                    let p = prepare(t);
                    barrier.wait();
                    let start = Instant::now();
                    std::hint::black_box(work(t, p));
                    (start, Instant::now())
                })
            })
            .collect();
        span(handles.into_iter().map(|h| h.join().unwrap()))
    })
}

/// The floor: what the full stack does for an accepted request, composed by hand from the
/// crate's public pieces, with no tower service, future or body wrapper around it.
pub struct Floor {
    formats: KeyFormats,
    store: MemoryStore,
    clock: Clock,
    policy: QuotaPolicy,
    limiter: MemoryRateLimiter,
    recorder: LastUsedRecorderLayer<MemoryStore>,
    requirement: Requirement,
}

impl Floor {
    pub fn new(store: &MemoryStore) -> Self {
        Self {
            formats: KeyFormats::default(),
            store: store.clone(),
            clock: Clock::coarse(),
            policy: QuotaPolicy::by_plan(),
            limiter: MemoryRateLimiter::new(),
            recorder: LastUsedRecorder::new(store.clone()),
            requirement: Requirement::scope(REQUIRED),
        }
    }

    /// ApiKeyAuth's work: the principal of an accepted request.
    #[inline]
    pub fn authenticate<B>(&self, req: &Request<B>) -> Option<Principal> {
        let value = req.headers().get(AUTHORIZATION)?;
        let key = parse_bearer(value.as_bytes())?;
        self.formats.check(key).ok()?;
        let hash = KeyHash::of(key);
        let found = self.store.find_by_hash(&hash).into_inner().ok()??;
        let now = self.clock.now();
        if !found.record.hash.ct_eq(&hash)
            || found.record.is_revoked(now)
            || found.record.is_expired(now)
        {
            return None;
        }
        Some(Principal::new(found.record, found.plan))
    }

    /// The malformed-key refusal composed by hand ([`floor_malformed`]).
    #[inline]
    pub fn malformed<B>(&self, req: Request<B>) -> u16 {
        floor_malformed(&self.formats, req)
    }

    pub fn auth_only<B>(&self, mut req: Request<B>) -> u16 {
        let Some(p) = self.authenticate(&req) else {
            return 401;
        };
        req.extensions_mut().insert(p);
        drop(req);
        hello_response().status().as_u16()
    }

    pub fn full<B>(&self, mut req: Request<B>) -> u16 {
        let Some(p) = self.authenticate(&req) else {
            return 401;
        };
        let gcra = self.policy.gcra(&p);
        let decision = self.limiter.decide(p.org_id(), &gcra, 1, self.clock.now());
        if !decision.allowed {
            return 429;
        }
        self.recorder.mark(&p);
        if !self.requirement.is_met(p.scopes()) {
            return 403;
        }
        req.extensions_mut().insert(p);
        drop(req);
        let mut res = hello_response();
        write_limit_headers(&decision.info, res.headers_mut());
        res.status().as_u16()
    }
}
