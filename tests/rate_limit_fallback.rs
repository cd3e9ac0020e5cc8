//! `OrgRateLimit` with a failing backend that has a local fallback
//! (`RateLimitBackend::fallback`): failing open decides with the fallback, headers and `429`
//! included; failing closed never consults it. No Redis needed: the backend fails on purpose.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::rate_limit::{
    CheckResult, Decision, Gcra, OnBackendError, OrgRateLimitLayer, RateLimitBackend,
    RateLimitError,
};
use tower_api_key::{
    ApiKeyAuth, Clock, KeyManager, MemoryRateLimiter, MemoryStore, NewKey, OrgId, OrgRateLimit,
    Timestamp,
};

/// Always unreachable, pending first as a network backend would be; decides locally when
/// asked to.
#[derive(Clone, Default)]
struct Unreachable {
    local: MemoryRateLimiter,
    fallbacks: Arc<AtomicUsize>,
}

impl RateLimitBackend for Unreachable {
    type Check = std::pin::Pin<Box<dyn std::future::Future<Output = CheckResult> + Send>>;

    fn check(&self, _org: &OrgId, _gcra: &Gcra, _cost: u32, _now: Timestamp) -> Self::Check {
        Box::pin(async {
            tokio::task::yield_now().await;
            Err(RateLimitError::unavailable("connection refused"))
        })
    }

    fn fallback(&self, org: &OrgId, gcra: &Gcra, cost: u32, now: Timestamp) -> Option<Decision> {
        self.fallbacks.fetch_add(1, Ordering::SeqCst);
        Some(self.local.decide(org, gcra, cost, now))
    }
}

#[tokio::test]
async fn failing_open_decides_with_the_backends_fallback() {
    let (clock, _manual) = Clock::manual(Timestamp::from_unix_secs(1_700_000_000));
    let store = MemoryStore::new();
    let created = KeyManager::new(store.clone())
        .clock(clock.clone())
        .create(&OrgId::from("org_a"), NewKey::new("test"))
        .await
        .unwrap();
    let key = created.key.expose_secret().to_owned();
    let svc = |layer: OrgRateLimitLayer<Unreachable>| {
        ServiceBuilder::new()
            .layer(ApiKeyAuth::new(store.clone()).clock(clock.clone()))
            .layer(layer.clock(clock.clone()))
            .service_fn(|_req: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            })
    };
    let req = || {
        Request::get("/")
            .header("authorization", format!("Bearer {key}"))
            .body(Full::default())
            .unwrap()
    };

    let backend = Unreachable::default();
    let closed = svc(OrgRateLimit::with_backend(backend.clone()));
    let res = closed.clone().oneshot(req()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend.fallbacks.load(Ordering::SeqCst), 0);

    let open =
        svc(OrgRateLimit::with_backend(backend.clone()).on_backend_error(OnBackendError::FailOpen));
    for i in 0..100u64 {
        let res = open.clone().oneshot(req()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.headers()["x-ratelimit-remaining"].to_str().unwrap(),
            (99 - i).to_string()
        );
    }
    let res = open.clone().oneshot(req()).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(backend.fallbacks.load(Ordering::SeqCst), 101);
}
