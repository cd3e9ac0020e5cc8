//! The Redis rate-limit check round trip, beside a bare `PING` on the same connection (the
//! floor any Redis call pays), against the real Redis at `REDIS_URL`.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo bench --features redis --bench redis -- \
//!     --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Groups (`redis/*`):
//! - `ping`: one `PING` round trip on the limiter's multiplexed connection.
//! - `check_admitted`: one `RedisRateLimiter::check` (one `EVALSHA` of the GCRA script) on a
//!   hot organization, admitted.
//! - `check_refused`: the same on an organization over its quota (the script writes nothing).
//! - `check_16_in_flight`: 16 checks in flight at once on the one connection (pipelined by the
//!   multiplexer); criterion's `elem/s` is the throughput of one replica's connection.
//!
//! Without `REDIS_URL` the benchmarks are skipped with a message.
//!
//! Measured on the 2-core development machine (Redis 7.0 on localhost, load average ~4 from
//! other builds, so expect noise): `ping` 22–25 µs, `check_admitted` 30–36 µs,
//! `check_refused` 34–42 µs, `check_16_in_flight` 57–63 K checks/s on one connection.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tower_api_key::rate_limit::{Gcra, RateLimitBackend};
use tower_api_key::{OrgId, RedisRateLimiter, Timestamp};

fn bench(c: &mut Criterion) {
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("skipping the Redis benchmarks: REDIS_URL is not set");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let prefix = format!("tak_bench_{}", std::process::id());
    let limiter = rt
        .block_on(RedisRateLimiter::connect(&url))
        .expect("REDIS_URL is set but Redis is unreachable")
        .prefix(&prefix)
        // Generous: a benchmark measures latency, it must not fail over to the local limiter.
        .timeout(Duration::from_secs(5));
    let hot = OrgId::from("org_hot");
    let over = OrgId::from("org_over");
    let huge = Gcra::new(u32::MAX, Duration::from_secs(1));
    let tiny = Gcra::new(1, Duration::from_secs(3600));
    let now = Timestamp::now;
    rt.block_on(async {
        // Load the script, and spend the tiny quota.
        limiter.check(&hot, &huge, 1, now()).await.unwrap();
        limiter.check(&over, &tiny, 1, now()).await.unwrap();
    });

    let mut g = c.benchmark_group("redis");
    g.bench_function("ping", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = limiter.connection().clone();
            async move {
                let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
                pong
            }
        })
    });
    g.bench_function("check_admitted", |b| {
        b.to_async(&rt).iter(|| async {
            let d = limiter.check(&hot, &huge, 1, now()).await.unwrap();
            assert!(d.allowed);
        })
    });
    g.bench_function("check_refused", |b| {
        b.to_async(&rt).iter(|| async {
            let d = limiter.check(&over, &tiny, 1, now()).await.unwrap();
            assert!(!d.allowed);
        })
    });
    g.throughput(Throughput::Elements(16));
    g.bench_function("check_16_in_flight", |b| {
        b.to_async(&rt).iter(|| async {
            let checks = (0..16).map(|_| limiter.check(&hot, &huge, 1, now()));
            for d in futures_join_all(checks).await {
                assert!(d.unwrap().allowed);
            }
        })
    });
    g.finish();

    rt.block_on(async {
        let mut conn = limiter.connection().clone();
        let _: redis::RedisResult<i64> = redis::cmd("DEL")
            .arg(limiter.key(&hot))
            .arg(limiter.key(&over))
            .query_async(&mut conn)
            .await;
    });
}

/// Await every future, all in flight at once (a tiny `join_all`, to avoid a dependency).
async fn futures_join_all<F: std::future::Future + Unpin>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut pending: Vec<Option<F>> = futs.map(Some).collect();
    let mut out: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, result) in pending.iter_mut().zip(out.iter_mut()) {
            if let Some(fut) = slot {
                match std::pin::Pin::new(fut).poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *result = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

criterion_group!(benches, bench);
criterion_main!(benches);
