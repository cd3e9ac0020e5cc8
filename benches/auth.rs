//! ApiKeyAuth and ScopeGuard, each over a no-op inner service, beside the baselines measured in
//! the same run: no layer, tower-http's static bearer check, and a hand-composed function doing
//! the same work with no tower around it (the floor).
//!
//! `cargo bench --bench auth`; quick: `cargo bench --bench auth -- --quick`.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Empty;
use tower::{Layer, Service};
use tower_api_key::{
    ApiKeyAuth, KeyFormat, KeyHash, KeyManager, KeyStore, MemoryStore, NewKey, OrgId, Principal,
    ScopeGuard, Scopes,
};

/// The inner service: answers at once, allocates nothing.
#[derive(Clone, Copy)]
struct Noop;

impl<B> Service<Request<B>> for Noop {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<B>) -> Self::Future {
        ready(Ok(Response::new(Empty::new())))
    }
}

/// Drive one request through a service whose futures complete without waiting.
fn run<S, B, R>(svc: &mut S, req: Request<B>) -> u16
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    // Noop and the in-memory store are always ready.
    let _ = svc.poll_ready(&mut cx);
    let fut = pin!(svc.call(req));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(res)) => res.status().as_u16(),
        Poll::Ready(Err(e)) => panic!("{e:?}"),
        Poll::Pending => panic!("benchmark services must complete at once"),
    }
}

fn req(auth: &str) -> Request<Empty<Bytes>> {
    Request::get("/v1/browsers/b1")
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(Empty::new())
        .unwrap()
}

struct Fixture {
    store: MemoryStore,
    good: String,
    revoked: String,
    unknown: String,
    malformed: String,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = MemoryStore::new();
        let manager = KeyManager::new(store.clone());
        let org = OrgId::from("org_bench");
        let scopes = Scopes::parse(["browser_sessions:create", "browser_sessions:read"]).unwrap();
        let good = manager
            .create(&org, NewKey::new("good").scopes(scopes.clone()))
            .await
            .unwrap();
        let revoked = manager
            .create(&org, NewKey::new("revoked").scopes(scopes))
            .await
            .unwrap();
        manager.revoke(&org, &revoked.record.id).await.unwrap();
        let unknown = KeyFormat::live().generate().unwrap();
        Fixture {
            store,
            good: format!("Bearer {}", good.key.expose_secret()),
            revoked: format!("Bearer {}", revoked.key.expose_secret()),
            unknown: format!("Bearer {}", unknown.expose_secret()),
            malformed: "Bearer br_live_thisisnotakey".to_owned(),
        }
    })
}

fn bench_auth(c: &mut Criterion) {
    let fx = fixture();
    let mut g = c.benchmark_group("auth");

    let mut none = Noop;
    g.bench_function("baseline/no_layer", |b| {
        b.iter_batched(
            || req(&fx.good),
            |r| run(&mut none, r),
            BatchSize::SmallInput,
        )
    });

    let token = fx.good.trim_start_matches("Bearer ").to_owned();
    #[allow(deprecated)]
    let mut static_bearer =
        tower_http::validate_request::ValidateRequestHeaderLayer::bearer(&token).layer(Noop);
    g.bench_function("baseline/tower_http_static_bearer", |b| {
        b.iter_batched(
            || req(&fx.good),
            |r| run(&mut static_bearer, r),
            BatchSize::SmallInput,
        )
    });

    // The floor: the same work as the accept path, by hand, without tower.
    let formats = tower_api_key::KeyFormats::default();
    let store = fx.store.clone();
    g.bench_function("baseline/hand_composed_accept", |b| {
        b.iter_batched(
            || req(&fx.good),
            |mut r| {
                let value = r.headers().get("authorization").unwrap().as_bytes();
                let key = tower_api_key::auth::parse_bearer(value).unwrap();
                formats.check(key).unwrap();
                let hash = KeyHash::of(key);
                let found = store.find_by_hash(&hash).into_inner().unwrap().unwrap();
                assert!(found.record.hash.ct_eq(&hash));
                r.extensions_mut()
                    .insert(Principal::new(found.record, found.plan));
                run(&mut Noop, r)
            },
            BatchSize::SmallInput,
        )
    });

    let mut auth = ApiKeyAuth::new(fx.store.clone()).layer(Noop);
    for (name, header) in [
        ("accept", &fx.good),
        ("malformed_refused", &fx.malformed),
        ("unknown_refused", &fx.unknown),
        ("revoked_refused", &fx.revoked),
    ] {
        g.bench_function(format!("api_key_auth/{name}"), |b| {
            b.iter_batched(|| req(header), |r| run(&mut auth, r), BatchSize::SmallInput)
        });
    }
    g.finish();
}

fn bench_scope(c: &mut Criterion) {
    let fx = fixture();
    let principal = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let hash = KeyHash::of(fx.good.trim_start_matches("Bearer "));
        let found = rt.block_on(fx.store.find_by_hash(&hash)).unwrap().unwrap();
        Principal::new(found.record, found.plan)
    };
    let with_principal = || {
        let mut r = req(&fx.good);
        r.extensions_mut().insert(principal.clone());
        r
    };
    let mut g = c.benchmark_group("scope");
    let mut none = Noop;
    g.bench_function("baseline/no_layer", |b| {
        b.iter_batched(with_principal, |r| run(&mut none, r), BatchSize::SmallInput)
    });
    let mut held = ScopeGuard::require("browser_sessions:read").layer(Noop);
    g.bench_function("scope_guard/held", |b| {
        b.iter_batched(with_principal, |r| run(&mut held, r), BatchSize::SmallInput)
    });
    let mut refused = ScopeGuard::require("browser_sessions:delete").layer(Noop);
    g.bench_function("scope_guard/refused", |b| {
        b.iter_batched(
            with_principal,
            |r| run(&mut refused, r),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_auth, bench_scope);
criterion_main!(benches);
