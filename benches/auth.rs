//! ApiKeyAuth and ScopeGuard, each over a no-op inner service, beside the baselines measured in
//! the same run: no layer, tower-http's static bearer check, and a hand-composed function doing
//! the same work with no tower around it (the floor).
//!
//! `cargo bench --bench auth`; quick: `cargo bench --bench auth -- --quick`. The one-run suite
//! of every measured path is `benches/stack.rs`; both share `benches/support`.

#[path = "support/mod.rs"]
mod support;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tower::Layer;
use tower_api_key::{ApiKeyAuth, KeyHash, KeyStore, Principal, ScopeGuard};

use support::{Hello as Noop, fixture, request as req, run};

fn bench_auth(c: &mut Criterion) {
    let fx = fixture();
    let mut g = c.benchmark_group("auth");

    let mut none = Noop;
    g.bench_function("baseline/no_layer", |b| {
        b.iter_batched(|| req(fx.hot), |r| run(&mut none, r), BatchSize::SmallInput)
    });

    let token = fx.hot.trim_start_matches("Bearer ").to_owned();
    #[allow(deprecated)]
    let mut static_bearer =
        tower_http::validate_request::ValidateRequestHeaderLayer::bearer(&token).layer(Noop);
    g.bench_function("baseline/tower_http_static_bearer", |b| {
        b.iter_batched(
            || req(fx.hot),
            |r| run(&mut static_bearer, r),
            BatchSize::SmallInput,
        )
    });

    // The floor: the same work as the accept path, by hand, without tower.
    let formats = tower_api_key::KeyFormats::default();
    let store = fx.store.clone();
    g.bench_function("baseline/hand_composed_accept", |b| {
        b.iter_batched(
            || req(fx.hot),
            |mut r| {
                let value = r.headers().get("authorization").unwrap().as_bytes();
                let key = support::parse_bearer(value).unwrap();
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
        ("accept", fx.hot),
        ("malformed_refused", fx.malformed),
        ("unknown_refused", fx.unknown),
        ("revoked_refused", fx.revoked),
    ] {
        g.bench_function(format!("api_key_auth/{name}"), |b| {
            b.iter_batched(|| req(header), |r| run(&mut auth, r), BatchSize::SmallInput)
        });
    }
    g.finish();
}

fn bench_scope(c: &mut Criterion) {
    let fx = fixture();
    let principal = fx.principal.clone();
    let with_principal = || {
        let mut r = req(fx.hot);
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
