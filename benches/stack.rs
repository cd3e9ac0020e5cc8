//! The benchmark suite in one run: each layer alone over a no-op inner service, the full stack
//! (ApiKeyAuth → OrgRateLimit → LastUsedRecorder → ScopeGuard) on a hot key with the coarse
//! clock, and beside them the baselines: no layer, tower-http's static bearer check, governor's
//! keyed limiter, and the same work composed by hand with no tower (the floor). Then the store
//! at 10k and 1M keys, and two threads against one.
//!
//! ```text
//! cargo bench --bench stack                      # about 5 minutes on 2 cores
//! cargo bench --bench stack -- --quick           # criterion's quick mode
//! BENCH_QUICK=1 cargo bench --bench stack        # shortest: checks that everything runs
//! cargo bench --bench stack -- 'suite.net'        # one group
//! ```
//!
//! Groups (`python3 scripts/bench-summary.py` prints their medians):
//!
//! - `suite.baseline`: absolute figures of the baselines (`no_layer`: the inner service alone;
//!   tower-http's bearer check; the hand-composed floor);
//! - `suite.rate_limit_step`: our in-memory limiter against governor's keyed limiter;
//! - `suite.decision`: ApiKeyAuth's refusal decisions without request or response;
//! - `suite.net`: each layer alone, the full stack (as four layers, `stack/*`, and as one
//!   service, `stack_fused/*`), tower-http and the floor, as their cost
//!   **net of the no-layer baseline**: the subject and the same requests sent to the inner
//!   service alone run alternately, 512 iterations at a time, and the measurement is the
//!   difference, so drift of the machine hits both sides alike;
//! - `suite.stack`: the full stack's absolute figures (harness included);
//! - `suite.store_scale`: random keys among 10k and 1M in the store (ApiKeyAuth, the four
//!   layers, the one-service stack);
//! - `suite.threads`: one and two threads, on one hot key and on random keys (the one-service
//!   stack also with usage metering on, `stack_fused_metered_*`); and the store's look-up alone
//!   on one hot key.
//!
//! Every timed iteration builds a fresh request (as a server does for each one it reads), runs
//! it through the service and drops the response. (Building the requests ahead, untimed,
//! measures the allocator instead: freeing thousands of requests allocated in a row makes glibc
//! coalesce chunks on every free.) The inner service answers like a hello-world handler (one
//! `content-type`).

#[path = "support/mod.rs"]
mod support;

use std::cell::RefCell;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use tower::{Layer, Service};
use tower_api_key::rate_limit::Gcra;
use tower_api_key::{
    Clock, KeyFormats, KeyHash, KeyStore, LastUsedRecorder, MemoryRateLimiter, MemoryStore, OrgId,
    OrgRateLimit, Principal, ScopeGuard,
};

use support::{
    Fixture, Floor, Hello, REQUIRED, Rng, full_stack, full_stack_layers, request, request_with,
    run, run_threads,
};

/// Time `svc` on fresh requests from `make`.
fn bench_service<S, R>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    svc: &mut S,
    mut make: impl FnMut() -> Request<http_body_util::Empty<bytes::Bytes>>,
) where
    S: Service<Request<http_body_util::Empty<bytes::Bytes>>, Response = Response<R>>,
    S::Error: std::fmt::Debug,
{
    g.bench_function(name, |b| b.iter(|| run(svc, make())));
}

/// The cost of `target` net of `base`: both run alternately, `BLOCK` iterations at a time,
/// and the measurement is the difference of their times.
fn bench_net(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut target: impl FnMut() -> u16,
    mut base: impl FnMut() -> u16,
) {
    const BLOCK: u64 = 512;
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let (mut t, mut z) = (Duration::ZERO, Duration::ZERO);
            let mut done = 0;
            while done < iters {
                let n = BLOCK.min(iters - done);
                let start = Instant::now();
                for _ in 0..n {
                    black_box(target());
                }
                t += start.elapsed();
                let start = Instant::now();
                for _ in 0..n {
                    black_box(base());
                }
                z += start.elapsed();
                done += n;
            }
            // A sample where noise outweighs a cost of a few nanoseconds counts as 1 ns
            // (criterion refuses zero).
            t.saturating_sub(z).max(Duration::from_nanos(1))
        })
    });
}

fn with_principal(
    auth: &'static str,
    p: &Principal,
) -> Request<http_body_util::Empty<bytes::Bytes>> {
    let mut r = request(auth);
    r.extensions_mut().insert(p.clone());
    r
}

/// The full stack's paths: name, `Authorization` value, the status the path must answer.
fn stack_paths(fx: &Fixture) -> [(&'static str, &'static str, u16); 6] {
    [
        ("accept", fx.hot, 200),
        ("malformed_refused", fx.malformed, 401),
        ("unknown_refused", fx.unknown, 401),
        ("revoked_refused", fx.revoked, 401),
        ("scope_refused", fx.read_only, 403),
        ("rate_limited_refused", fx.limited, 429),
    ]
}

fn baselines_and_layers(c: &mut Criterion) {
    let fx = support::fixture();
    let Fixture {
        hot,
        read_only,
        revoked,
        limited,
        unknown,
        malformed,
        ..
    } = fx;
    let mut g = c.benchmark_group("suite.baseline");
    bench_service(&mut g, "no_layer", &mut Hello, || request(hot));
    bench_service(&mut g, "no_layer_with_principal", &mut Hello, || {
        with_principal(hot, &fx.principal)
    });
    let token = hot.trim_start_matches("Bearer ");
    #[allow(deprecated)]
    let mut bearer =
        tower_http::validate_request::ValidateRequestHeaderLayer::bearer(token).layer(Hello);
    bench_service(&mut g, "tower_http_bearer/accept", &mut bearer, || {
        request(hot)
    });
    bench_service(&mut g, "tower_http_bearer/refused", &mut bearer, || {
        request(unknown)
    });
    let floor = Floor::new(&fx.store);
    g.bench_function("hand_composed/auth_accept", |b| {
        b.iter(|| floor.auth_only(request(hot)))
    });
    g.bench_function("hand_composed/full_accept", |b| {
        b.iter(|| floor.full(request(hot)))
    });
    g.finish();

    // The rate-limit step alone: our in-memory backend against governor's keyed limiter, one
    // admitted request on a hot organization, clock read included (ours: coarse; governor: its
    // default clock).
    let mut g = c.benchmark_group("suite.rate_limit_step");
    let org = fx.hot_org.clone();
    let limiter = MemoryRateLimiter::new();
    let gcra = Gcra::new(u32::MAX, Duration::from_secs(1));
    let clock = Clock::coarse();
    g.bench_function("org_rate_limit", |b| {
        b.iter(|| {
            limiter
                .decide(black_box(&org), &gcra, 1, clock.now())
                .allowed
        })
    });
    let gov: governor::DefaultKeyedRateLimiter<OrgId> =
        governor::RateLimiter::keyed(governor::Quota::per_second(NonZeroU32::MAX));
    g.bench_function("governor_keyed", |b| {
        b.iter(|| gov.check_key(black_box(&org)).is_ok())
    });
    g.finish();

    // ApiKeyAuth's decisions alone, without a request or a response: finding the bearer token
    // and checking its format (the malformed key's refusal), and the same plus SHA-256 and the
    // store lookup (the unknown key's).
    let mut g = c.benchmark_group("suite.decision");
    let formats = KeyFormats::default();
    let value = http::HeaderValue::from_static(malformed);
    g.bench_function("malformed_key", |b| {
        b.iter(|| {
            let key = support::parse_bearer(black_box(&value).as_bytes());
            key.is_some_and(|k| formats.check(k).is_ok())
        })
    });
    let value = http::HeaderValue::from_static(unknown);
    g.bench_function("unknown_key", |b| {
        b.iter(|| {
            let Some(key) = support::parse_bearer(black_box(&value).as_bytes()) else {
                return false;
            };
            if formats.check(key).is_err() {
                return false;
            }
            let hash = KeyHash::of(key);
            matches!(fx.store.find_by_hash(&hash).into_inner(), Ok(Some(_)))
        })
    });
    g.finish();

    // Each subject's cost net of the same requests sent to the inner service directly,
    // alternating in blocks so that drift of the machine hits both sides alike.
    let mut g = c.benchmark_group("suite.net");
    let mut auth = support::auth_layer(&fx.store).layer(Hello);
    for (name, header, status) in [
        ("accept", hot, 200),
        ("malformed_refused", malformed, 401),
        ("unknown_refused", unknown, 401),
        ("revoked_refused", revoked, 401),
    ] {
        // Every timed request must take the path it is named for.
        let mut other = 0u64;
        bench_net(
            &mut g,
            &format!("api_key_auth/{name}"),
            || {
                let got = run(&mut auth, request(header));
                other += u64::from(got != status);
                got
            },
            || run(&mut Hello, request(header)),
        );
        assert_eq!(
            other, 0,
            "{name}: {other} requests answered otherwise than {status}"
        );
    }
    let mut limit = OrgRateLimit::new().layer(Hello);
    for (name, header, p, status) in [
        ("admitted", hot, &fx.principal, 200),
        ("refused", limited, &fx.limited_principal, 429),
    ] {
        run(&mut limit, with_principal(header, p)); // spends the limited quota of one
        let mut other = 0u64;
        bench_net(
            &mut g,
            &format!("org_rate_limit/{name}"),
            || {
                let got = run(&mut limit, with_principal(header, p));
                other += u64::from(got != status);
                got
            },
            || run(&mut Hello, with_principal(header, p)),
        );
        assert_eq!(
            other, 0,
            "{name}: {other} requests answered otherwise than {status}"
        );
    }
    let mut recorder = LastUsedRecorder::new(fx.store.clone()).layer(Hello);
    bench_net(
        &mut g,
        "last_used/mark",
        || run(&mut recorder, with_principal(hot, &fx.principal)),
        || run(&mut Hello, with_principal(hot, &fx.principal)),
    );
    let mut guard = ScopeGuard::require(REQUIRED).layer(Hello);
    for (name, header, p) in [
        ("held", hot, &fx.principal),
        ("refused", read_only, &fx.read_only_principal),
    ] {
        bench_net(
            &mut g,
            &format!("scope_guard/{name}"),
            || run(&mut guard, with_principal(header, p)),
            || run(&mut Hello, with_principal(header, p)),
        );
    }
    let mut stack = full_stack(&fx.store, Hello);
    for (name, header, status) in stack_paths(&fx) {
        // Every timed request must take the path named (e.g. a hot key must never be rate
        // limited: with a coarse clock one tick's requests share one instant). One untimed
        // request first: it spends the rate-limited organization's quota of one.
        run(&mut stack, request(header));
        let mut other = 0u64;
        bench_net(
            &mut g,
            &format!("stack/{name}"),
            || {
                let got = run(&mut stack, request(header));
                other += u64::from(got != status);
                got
            },
            || run(&mut Hello, request(header)),
        );
        assert_eq!(
            other, 0,
            "{name}: {other} requests answered otherwise than {status}"
        );
    }
    let mut fused = support::fused_stack_layer(&fx.store).layer(Hello);
    for (name, header, status) in stack_paths(&fx) {
        run(&mut fused, request(header));
        let mut other = 0u64;
        bench_net(
            &mut g,
            &format!("stack_fused/{name}"),
            || {
                let got = run(&mut fused, request(header));
                other += u64::from(got != status);
                got
            },
            || run(&mut Hello, request(header)),
        );
        assert_eq!(
            other, 0,
            "fused {name}: {other} requests answered otherwise than {status}"
        );
    }
    bench_net(
        &mut g,
        "tower_http_bearer/accept",
        || run(&mut bearer, request(hot)),
        || run(&mut Hello, request(hot)),
    );
    bench_net(
        &mut g,
        "tower_http_bearer/refused",
        || run(&mut bearer, request(unknown)),
        || run(&mut Hello, request(unknown)),
    );
    bench_net(
        &mut g,
        "hand_composed/auth_accept",
        || floor.auth_only(request(hot)),
        || run(&mut Hello, request(hot)),
    );
    bench_net(
        &mut g,
        "hand_composed/full_accept",
        || floor.full(request(hot)),
        || run(&mut Hello, request(hot)),
    );
    let mut other = 0u64;
    bench_net(
        &mut g,
        "hand_composed/malformed_refused",
        || {
            let got = floor.malformed(request(malformed));
            other += u64::from(got != 401);
            got
        },
        || run(&mut Hello, request(malformed)),
    );
    assert_eq!(other, 0, "the malformed floor took another path");
    g.finish();

    let mut g = c.benchmark_group("suite.stack");
    let mut stack = full_stack(&fx.store, Hello);
    for (name, header, status) in stack_paths(&fx) {
        run(&mut stack, request(header));
        let mut other = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                let got = run(&mut stack, request(header));
                other += u64::from(got != status);
                got
            })
        });
        assert_eq!(
            other, 0,
            "{name}: {other} requests answered otherwise than {status}"
        );
    }
    g.finish();
}

/// Lookups and accepted requests with a random key per iteration, in stores of 10k and 1M keys.
fn store_scale(c: &mut Criterion) {
    let mut g = c.benchmark_group("suite.store_scale");
    for (n, label) in [(10_000usize, "10k"), (1_000_000, "1m")] {
        // Built on first use, so a run filtered to other benches does not pay for it.
        let built = std::cell::OnceCell::new();
        let data = || {
            built.get_or_init(|| {
                let (store, headers) = support::large_store(n, support::unbounded());
                let hashes: Vec<KeyHash> = headers
                    .iter()
                    .map(|h| KeyHash::of(&h.to_str().unwrap()["Bearer ".len()..]))
                    .collect();
                (store, headers, hashes)
            })
        };
        let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
        g.bench_function(format!("memory_lookup/{label}"), |b| {
            let (store, _, hashes) = data();
            b.iter(|| {
                let h = &hashes[rng.below(n)];
                store.find_by_hash(h).into_inner().unwrap().is_some()
            })
        });
        // Each service is built once, on first use, and kept across samples (criterion calls a
        // bench's closure once per sample): its rate-limit and last-used state stay warm, as a
        // server's do.
        let auth = std::cell::OnceCell::new();
        g.bench_function(format!("api_key_auth_accept/{label}"), |b| {
            let (store, headers, _) = data();
            let auth = auth.get_or_init(|| RefCell::new(support::auth_layer(store).layer(Hello)));
            let mut auth = auth.borrow_mut();
            b.iter(|| run(&mut *auth, request_with(headers[rng.below(n)].clone())))
        });
        let stack = std::cell::OnceCell::new();
        g.bench_function(format!("stack_accept/{label}"), |b| {
            let (store, headers, _) = data();
            let stack = stack.get_or_init(|| RefCell::new(full_stack(store, Hello)));
            let mut stack = stack.borrow_mut();
            b.iter(|| run(&mut *stack, request_with(headers[rng.below(n)].clone())))
        });
        let fused = std::cell::OnceCell::new();
        g.bench_function(format!("stack_fused_accept/{label}"), |b| {
            let (store, headers, _) = data();
            let fused =
                fused.get_or_init(|| RefCell::new(support::fused_stack_layer(store).layer(Hello)));
            let mut fused = fused.borrow_mut();
            b.iter(|| run(&mut *fused, request_with(headers[rng.below(n)].clone())))
        });
    }
    g.finish();
}

/// Aggregate throughput of the full stack on one and two threads: one hot key (one key, one
/// organization) and random keys over 10k. Each thread has its own clone of the stack, as two
/// connections would; each thread builds its requests as it goes, as the other benches do.
/// Criterion's `elem/s` is the aggregate (the bar: two threads ≥ 1.2× one).
fn threads(c: &mut Criterion) {
    let fx = support::fixture();
    // Both cores busy: a burst large enough for the coarse clock's lag (see `roomy`).
    support::block_on(
        tower_api_key::KeyManager::new(fx.store.clone()).set_plan(&fx.hot_org, support::roomy()),
    )
    .unwrap();
    let big = std::cell::OnceCell::new();
    let mut g = c.benchmark_group("suite.threads");
    for label in ["hot_key", "random_keys"] {
        let (store, headers): (&MemoryStore, &[http::HeaderValue]) = match label {
            "hot_key" => (&fx.store, &[]),
            _ => {
                let (s, h) = big.get_or_init(|| support::large_store(10_000, support::roomy()));
                (s, h)
            }
        };
        // One stack per scenario, shared by its 1- and 2-thread runs.
        let layers = full_stack_layers(store);
        let fused = support::fused_stack_layer(store);
        let metered = support::fused_stack_layer_metered(store);
        for threads in [1usize, 2] {
            g.throughput(Throughput::Elements(threads as u64));
            thread_bench(
                &mut g,
                &format!("stack_{label}/{threads}_threads"),
                &layers,
                threads,
                fx.hot,
                headers,
            );
            thread_bench(
                &mut g,
                &format!("stack_fused_{label}/{threads}_threads"),
                &fused,
                threads,
                fx.hot,
                headers,
            );
            // Usage metering on: one more atomic add per request, on the key's counter block.
            thread_bench(
                &mut g,
                &format!("stack_fused_metered_{label}/{threads}_threads"),
                &metered,
                threads,
                fx.hot,
                headers,
            );
        }
    }
    // The store's look-up alone on one hot key: each returns the key's snapshot by `Arc`, so
    // two threads write one reference count (increment on look-up, decrement on drop).
    let hash = KeyHash::of(fx.hot.strip_prefix("Bearer ").unwrap_or(fx.hot));
    for threads in [1usize, 2] {
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_function(format!("memory_lookup_hot_key/{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                run_threads(
                    threads,
                    |_| fx.store.clone(),
                    |_, store| {
                        let mut found = 0u64;
                        for _ in 0..iters {
                            let hit = store.find_by_hash(&hash).into_inner();
                            found += u64::from(matches!(black_box(hit), Ok(Some(_))));
                        }
                        assert_eq!(found, iters, "the hot key must be found");
                        found
                    },
                )
            })
        });
    }
    g.finish();
}

/// `threads` threads, each with its own service from `layers`, each sending `iters` requests:
/// with the hot key when `headers` is empty, else with random ones of `headers`.
fn thread_bench<L, R>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    layers: &L,
    threads: usize,
    hot: &'static str,
    headers: &[http::HeaderValue],
) where
    L: Layer<Hello> + Sync,
    L::Service:
        Service<Request<http_body_util::Empty<bytes::Bytes>>, Response = Response<R>> + Send,
    <L::Service as Service<Request<http_body_util::Empty<bytes::Bytes>>>>::Error: std::fmt::Debug,
{
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            run_threads(
                threads,
                |t| (layers.layer(Hello), Rng::new(0x1234_5678 + t as u64)),
                |_, (mut svc, mut rng)| {
                    let mut ok = 0u64;
                    for _ in 0..iters {
                        let r = if headers.is_empty() {
                            request(hot)
                        } else {
                            request_with(headers[rng.below(headers.len())].clone())
                        };
                        ok += u64::from(run(&mut svc, r) == 200);
                    }
                    // Every request is admitted: the quota is far above these rates.
                    assert_eq!(ok, iters);
                    ok
                },
            )
        })
    });
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = baselines_and_layers, store_scale, threads
}
criterion_main!(benches);
