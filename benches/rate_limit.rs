//! OrgRateLimit's check beside governor's keyed limiter, in the same run; one hot
//! organization on one thread and on two.
//!
//! ```text
//! cargo bench --bench rate_limit -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Groups:
//! - `check/*`: one admitted request on a hot org, clock read included (ours: coarse clock;
//!   governor: its default quanta clock).
//! - `check_refused/*`: the same org far over its quota.
//! - `hot_org/*`: aggregate throughput of 1 and 2 threads on one hot org (criterion's
//!   `elem/s` is the aggregate; the bar is 2 threads ≥ 1.2× one).
//! - `hot_org_refused/*`: the same for an organization over its (Free-sized) quota.
//! - `layer/*`: the whole `OrgRateLimit` service (headers included) over a no-op service,
//!   beside the same requests sent to the no-op service directly; `layer_hot_org/*`: the
//!   same on one and two threads.

use std::convert::Infallible;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Empty;
use tower::Service;
use tower_api_key::rate_limit::Gcra;
use tower_api_key::store::KeyRecord;
use tower_api_key::{
    Clock, KeyHash, KeyId, MemoryRateLimiter, OrgId, OrgRateLimit, Plan, Principal, Quota, Scopes,
    Timestamp,
};

#[path = "support/mod.rs"]
mod support;

type GovKeyed = governor::DefaultKeyedRateLimiter<OrgId>;

fn governor_limiter(per_second: u32) -> GovKeyed {
    governor::RateLimiter::keyed(governor::Quota::per_second(
        NonZeroU32::new(per_second).unwrap(),
    ))
}

const HUGE: u32 = u32::MAX;

fn ours(limiter: &MemoryRateLimiter, clock: &Clock, org: &OrgId, gcra: &Gcra) -> bool {
    limiter.decide(org, gcra, 1, clock.now()).allowed
}

fn bench_check(c: &mut Criterion) {
    let org = OrgId::from("org_2b8f1c0d9e7a");
    let clock = Clock::coarse();
    let mut g = c.benchmark_group("check");

    let limiter = MemoryRateLimiter::new();
    let gcra = Gcra::new(HUGE, Duration::from_secs(1));
    g.bench_function("org_rate_limit", |b| {
        b.iter(|| ours(&limiter, &clock, black_box(&org), &gcra))
    });
    let gov = governor_limiter(HUGE);
    g.bench_function("governor_keyed", |b| {
        b.iter(|| gov.check_key(black_box(&org)).is_ok())
    });
    g.finish();

    let mut g = c.benchmark_group("check_refused");
    let limiter = MemoryRateLimiter::new();
    let gcra = Gcra::new(1, Duration::from_secs(3600));
    ours(&limiter, &clock, &org, &gcra);
    g.bench_function("org_rate_limit", |b| {
        b.iter(|| ours(&limiter, &clock, black_box(&org), &gcra))
    });
    let gov = governor_limiter(1);
    let _ = gov.check_key(&org);
    g.bench_function("governor_keyed", |b| {
        b.iter(|| gov.check_key(black_box(&org)).is_ok())
    });
    g.finish();
}

/// Run `op` `iters` times on each of `threads` threads started together; wall time.
fn run_threads<F: Fn() + Sync>(threads: usize, iters: u64, op: F) -> Duration {
    support::run_threads(
        threads,
        |_| (),
        |_, ()| {
            for _ in 0..iters {
                op();
            }
        },
    )
}

fn bench_hot_org(c: &mut Criterion) {
    let clock = Clock::coarse();
    let mut g = c.benchmark_group("hot_org");
    for threads in [1usize, 2] {
        g.throughput(Throughput::Elements(threads as u64));
        let limiter = MemoryRateLimiter::new();
        let gcra = Gcra::new(HUGE, Duration::from_secs(1));
        g.bench_function(format!("org_rate_limit/{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                run_threads(threads, iters, || {
                    // Each thread has its own OrgId value (same org): no shared refcount.
                    thread_local!(static ORG: OrgId = OrgId::from("org_2b8f1c0d9e7a"));
                    ORG.with(|org| black_box(ours(&limiter, &clock, org, &gcra)));
                })
            })
        });
        let gov = governor_limiter(HUGE);
        g.bench_function(format!("governor_keyed/{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                run_threads(threads, iters, || {
                    thread_local!(static ORG: OrgId = OrgId::from("org_2b8f1c0d9e7a"));
                    ORG.with(|org| black_box(gov.check_key(org).is_ok()));
                })
            })
        });
    }
    g.finish();

    // The same over quota (a Free-like quota, exhausted): every request is refused.
    let mut g = c.benchmark_group("hot_org_refused");
    for threads in [1usize, 2] {
        g.throughput(Throughput::Elements(threads as u64));
        let limiter = MemoryRateLimiter::new();
        let gcra = Gcra::new(100, Duration::from_secs(60));
        let org = OrgId::from("org_2b8f1c0d9e7a");
        while ours(&limiter, &clock, &org, &gcra) {}
        g.bench_function(format!("org_rate_limit/{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                run_threads(threads, iters, || {
                    thread_local!(static ORG: OrgId = OrgId::from("org_2b8f1c0d9e7a"));
                    ORG.with(|org| black_box(ours(&limiter, &clock, org, &gcra)));
                })
            })
        });
        let gov = governor_limiter(1);
        while gov.check_key(&org).is_ok() {}
        g.bench_function(format!("governor_keyed/{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                run_threads(threads, iters, || {
                    thread_local!(static ORG: OrgId = OrgId::from("org_2b8f1c0d9e7a"));
                    ORG.with(|org| black_box(gov.check_key(org).is_ok()));
                })
            })
        });
    }
    g.finish();
}

fn principal(plan: Plan) -> Principal {
    let record = KeyRecord::new(
        KeyId::from("key_bench"),
        OrgId::from("org_2b8f1c0d9e7a"),
        "bench".into(),
        KeyHash::of("br_live_bench"),
        "br_live_…nch".into(),
        Scopes::full_access(),
        Arc::from("live"),
        Timestamp::EPOCH,
    );
    Principal::new(Arc::new(record), plan)
}

/// Call a service whose future is ready at once, without a runtime.
fn call_now<S>(svc: &mut S, req: Request<()>) -> S::Response
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = pin!(svc.call(req));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(r) => r.unwrap(),
        Poll::Pending => unreachable!("no-op service"),
    }
}

fn noop_service()
-> impl Service<Request<()>, Response = Response<Empty<Bytes>>, Error = Infallible, Future: Send> + Clone
{
    // With a content-type, as every real handler's response has (so its header map is
    // already allocated, in the baseline as behind the limiter).
    tower::service_fn(|_req: Request<()>| async {
        let mut res = Response::new(Empty::<Bytes>::new());
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Ok::<_, Infallible>(res)
    })
}

fn bench_layer(c: &mut Criterion) {
    // 9,999 per millisecond: admitted at any rate these threads reach, with header figures
    // of at most four digits, as Free and Paid organizations have.
    let enterprise = Plan::Enterprise(Quota {
        requests: 9_999,
        period: Duration::from_millis(1),
        concurrent_sessions: 1,
    });
    let mut g = c.benchmark_group("layer");
    let p = principal(enterprise);
    let mut svc = tower::Layer::layer(&OrgRateLimit::new(), noop_service());
    g.bench_function("org_rate_limit_admitted", |b| {
        b.iter(|| {
            let mut req = Request::new(());
            req.extensions_mut().insert(p.clone());
            black_box(call_now(&mut svc, req))
        })
    });
    let mut noop = noop_service();
    g.bench_function("baseline_noop", |b| {
        b.iter(|| {
            let mut req = Request::new(());
            req.extensions_mut().insert(p.clone());
            black_box(call_now(&mut noop, req))
        })
    });
    g.finish();

    // The whole layer, two threads on one hot org: each thread has its own service clone and
    // its own Principal (same organization), as two connections would.
    let mut g = c.benchmark_group("layer_hot_org");
    for threads in [1usize, 2] {
        g.throughput(Throughput::Elements(threads as u64));
        let layer = OrgRateLimit::new();
        g.bench_function(format!("org_rate_limit/{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                support::run_threads(
                    threads,
                    |_| {
                        (
                            principal(enterprise),
                            tower::Layer::layer(&layer, noop_service()),
                        )
                    },
                    |_, (p, mut svc)| {
                        for _ in 0..iters {
                            let mut req = Request::new(());
                            req.extensions_mut().insert(p.clone());
                            black_box(call_now(&mut svc, req));
                        }
                    },
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_check, bench_hot_org, bench_layer);
criterion_main!(benches);
