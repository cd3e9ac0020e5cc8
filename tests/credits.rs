//! Credits: atomic spends (never below zero) in memory and, with `REDIS_URL` and
//! `DATABASE_URL`, on the real Redis and PostgreSQL;
//! the same answers from both on random traces of spends, refunds and refills.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo test --features redis,postgres --test credits
//! ```

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use tower_api_key::credits::{Account, CreditBackend, CreditError, MemoryCredits, Refill};
use tower_api_key::{KeyId, OrgId, Timestamp};

/// 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600;

/// `tasks` tasks spending `cost` `tries` times each from `start` credits, first of one
/// organization (each task its own key), then of one key all tasks share: the final balance is
/// exactly `start - admitted * cost`, every credit that could be spent was, and no answer ever
/// showed a balance below zero.
async fn hammer<B: CreditBackend>(backend: B, tasks: u64, tries: u64, cost: u64, start: u64) {
    let org = OrgId::from(format!("org_hammer_{}", std::process::id()));
    hammer_on(&backend, &org, None, tasks, tries, cost, start).await;
    // Then every task on one key with a balance of its own (spent before the org's).
    let key = KeyId::from("key_shared");
    hammer_on(&backend, &org, Some(&key), tasks, tries, cost, start).await;
}

async fn hammer_on<B: CreditBackend>(
    backend: &B,
    org: &OrgId,
    shared_key: Option<&KeyId>,
    tasks: u64,
    tries: u64,
    cost: u64,
    start: u64,
) {
    let now = Timestamp::from_unix_secs(T0);
    let account = match shared_key {
        Some(key) => Account::Key { org, key },
        None => Account::Org(org),
    };
    backend
        .set(account, start, Refill::Never, now)
        .await
        .unwrap();
    let admitted = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (backend, org, admitted) = (backend.clone(), org.clone(), admitted.clone());
        let key = shared_key.map_or_else(|| KeyId::from(format!("key_{t}")), Clone::clone);
        handles.push(tokio::spawn(async move {
            for _ in 0..tries {
                match backend.spend(&org, &key, cost, now).await {
                    Ok(Some(left)) => {
                        assert!(left < start);
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => panic!("the organization has a balance"),
                    Err(CreditError::Exhausted { balance, .. }) => assert!(balance < cost),
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let admitted = admitted.load(Ordering::Relaxed);
    let left = backend.peek(account, now).await.unwrap().unwrap().balance;
    assert_eq!(left, start - admitted * cost);
    // More was asked than there was: everything that could be spent was.
    assert_eq!(admitted, start / cost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_balance_is_exact_under_concurrency() {
    hammer(MemoryCredits::new(), 16, 100, 3, 1_000).await;
}

/// One operation of a trace: (seconds to advance, spend (true) or refund, amount).
fn ops() -> impl Strategy<Value = Vec<(u64, bool, u64)>> {
    prop::collection::vec(
        (
            prop_oneof![4 => Just(0u64), 1 => 0u64..200_000, 1 => 0u64..3_000_000],
            prop::bool::weighted(0.85),
            0u64..40,
        ),
        1..200,
    )
}

/// A model of one account: topped up to `amount` at each refill boundary.
fn model_trace(refill: Refill, amount: u64, trace: &[(u64, bool, u64)]) -> Vec<Result<u64, u64>> {
    let mut now = Timestamp::from_unix_secs(T0);
    let mut balance = amount;
    let mut period = refill.period(now);
    let mut out = Vec::new();
    for &(dt, spend, n) in trace {
        now = now.saturating_add(Duration::from_secs(dt));
        let p = refill.period(now);
        if p > period {
            balance = balance.max(amount);
            period = p;
        }
        if spend {
            if balance >= n {
                balance -= n;
                out.push(Ok(balance));
            } else {
                out.push(Err(balance));
            }
        } else {
            balance += n;
            out.push(Ok(balance));
        }
    }
    out
}

async fn run_trace<B: CreditBackend>(
    backend: &B,
    org: &OrgId,
    refill: Refill,
    amount: u64,
    trace: &[(u64, bool, u64)],
) -> Vec<Result<u64, u64>> {
    let key = KeyId::from("key_t");
    let mut now = Timestamp::from_unix_secs(T0);
    backend
        .set(Account::Org(org), amount, refill, now)
        .await
        .unwrap();
    let mut out = Vec::new();
    for &(dt, spend, n) in trace {
        now = now.saturating_add(Duration::from_secs(dt));
        if spend {
            out.push(match backend.spend(org, &key, n, now).await {
                Ok(Some(b)) => Ok(b),
                Err(CreditError::Exhausted { balance, .. }) => Err(balance),
                other => panic!("{other:?}"),
            });
        } else {
            backend.refund(org, &key, n, now).await.unwrap();
            let b = backend.peek(Account::Org(org), now).await.unwrap().unwrap();
            out.push(Ok(b.balance));
        }
    }
    out
}

fn refills() -> impl Strategy<Value = Refill> {
    prop_oneof![
        Just(Refill::Never),
        Just(Refill::Daily),
        (1u8..=28).prop_map(|day| Refill::Monthly { day }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Credits never go negative, a refused spend takes nothing, and refills top up to the
    /// amount at each boundary: the memory backend gives the model's answers on random traces.
    #[test]
    fn memory_credits_follow_the_model(refill in refills(), amount in 0u64..200, trace in ops()) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let got = rt.block_on(run_trace(&MemoryCredits::new(), &OrgId::from("o"), refill, amount, &trace));
        prop_assert_eq!(got, model_trace(refill, amount, &trace));
    }
}

/// The layer: each request spends its route's cost; a short balance is `429 credits_exhausted`
/// with `Retry-After` until the refill and the service is not called; no balance, no metering.
#[tokio::test]
async fn the_layer_spends_per_request_and_refuses_when_spent() {
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    use tower::{ServiceBuilder, ServiceExt};
    use tower_api_key::credits::{Credits, SpendCredits};
    use tower_api_key::{ApiKeyAuth, Clock, KeyManager, MemoryStore, NewKey};

    let (clock, _manual) = Clock::manual(Timestamp::from_unix_secs(T0 + 3_600));
    let store = MemoryStore::new();
    let manager = KeyManager::new(store.clone()).clock(clock.clone());
    let credits = Credits::new().clock(clock.clone());
    let org = OrgId::from("org_c");
    credits
        .set(Account::Org(&org), 5, Refill::Daily)
        .await
        .unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let svc = {
        let calls = calls.clone();
        ServiceBuilder::new()
            .layer(ApiKeyAuth::new(store.clone()).clock(clock.clone()))
            .layer(
                SpendCredits::layer(credits.clone())
                    .cost(|_, uri| if uri.path() == "/v1/big" { 2 } else { 0 }),
            )
            .service_fn(move |_req: Request<Full<Bytes>>| {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
            })
    };
    let key = manager.create(&org, NewKey::new("k")).await.unwrap();
    let req = |path: &str, key: &str| {
        Request::get(path)
            .header("authorization", format!("Bearer {key}"))
            .body(Full::default())
            .unwrap()
    };
    let secret = key.key.expose_secret().to_owned();
    for _ in 0..2 {
        assert_eq!(
            svc.clone()
                .oneshot(req("/v1/big", &secret))
                .await
                .unwrap()
                .status(),
            200
        );
    }
    // A free route still passes with 1 credit left; the next costly call is refused.
    assert_eq!(
        svc.clone()
            .oneshot(req("/v1/free", &secret))
            .await
            .unwrap()
            .status(),
        200
    );
    let res = svc.clone().oneshot(req("/v1/big", &secret)).await.unwrap();
    assert_eq!(res.status(), 429);
    // The refill is at the next midnight: 23 hours away.
    assert_eq!(res.headers()["retry-after"], "82800");
    let body: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["code"], "credits_exhausted");
    assert_eq!(body["balance"], 1);
    assert_eq!(calls.load(Ordering::Relaxed), 3);
    let b = credits.peek(Account::Org(&org)).await.unwrap().unwrap();
    assert_eq!(b.balance, 1);
    // Another organization has no balance: unmetered.
    let other = manager
        .create(&OrgId::from("org_free"), NewKey::new("k"))
        .await
        .unwrap();
    let secret = other.key.expose_secret().to_owned();
    for _ in 0..10 {
        assert_eq!(
            svc.clone()
                .oneshot(req("/v1/big", &secret))
                .await
                .unwrap()
                .status(),
            200
        );
    }
}

/// With `refund_server_errors`, a call the service fails (5xx) gets its credits back.
#[tokio::test(flavor = "current_thread")]
async fn the_layer_refunds_server_errors_when_asked() {
    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::Full;
    use std::convert::Infallible;
    use tower::{ServiceBuilder, ServiceExt};
    use tower_api_key::credits::{Credits, SpendCredits};
    use tower_api_key::{ApiKeyAuth, Clock, KeyManager, MemoryStore, NewKey};

    let (clock, _manual) = Clock::manual(Timestamp::from_unix_secs(T0));
    let store = MemoryStore::new();
    let manager = KeyManager::new(store.clone()).clock(clock.clone());
    let credits = Credits::new().clock(clock.clone());
    let org = OrgId::from("org_r");
    credits
        .set(Account::Org(&org), 10, Refill::Never)
        .await
        .unwrap();
    let svc = |refund: bool| {
        ServiceBuilder::new()
            .layer(ApiKeyAuth::new(store.clone()).clock(clock.clone()))
            .layer(
                SpendCredits::layer(credits.clone())
                    .cost(|_, _| 4)
                    .refund_server_errors(refund),
            )
            .service_fn(|req: Request<Full<Bytes>>| async move {
                let mut res = Response::new(Full::new(Bytes::new()));
                if req.uri().path() == "/v1/fail" {
                    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                }
                Ok::<_, Infallible>(res)
            })
    };
    let key = manager.create(&org, NewKey::new("k")).await.unwrap();
    let secret = key.key.expose_secret().to_owned();
    let req = |path: &str| {
        Request::get(path)
            .header("authorization", format!("Bearer {secret}"))
            .body(Full::default())
            .unwrap()
    };
    let balance = || async {
        credits
            .peek(Account::Org(&org))
            .await
            .unwrap()
            .unwrap()
            .balance
    };
    let res = svc(true).oneshot(req("/v1/fail")).await.unwrap();
    assert_eq!(res.status(), 500);
    // The refund runs on this runtime's next turn (a spawned task, ready at once in memory).
    tokio::task::yield_now().await;
    assert_eq!(balance().await, 10);
    // A success keeps its cost; without the option a failure does too.
    assert_eq!(
        svc(true).oneshot(req("/v1/ok")).await.unwrap().status(),
        200
    );
    assert_eq!(
        svc(false).oneshot(req("/v1/fail")).await.unwrap().status(),
        500
    );
    tokio::task::yield_now().await;
    assert_eq!(balance().await, 2);
}

#[cfg(feature = "redis")]
mod on_redis {
    use super::*;
    use proptest::test_runner::TestRunner;
    use tower_api_key::credits::RedisCredits;

    fn redis_url(test: &str) -> Option<String> {
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                eprintln!("skipping {test}: REDIS_URL is not set");
                None
            }
        }
    }

    fn prefix() -> String {
        format!(
            "tak_credits_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        )
    }

    async fn backend(url: &str, prefix: &str) -> RedisCredits {
        RedisCredits::connect(url)
            .await
            .expect("REDIS_URL is set but Redis is unreachable")
            .prefix(prefix)
            .timeout(Duration::from_secs(5))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_balance_is_exact_under_concurrency() {
        let Some(url) = redis_url("redis_balance_is_exact_under_concurrency") else {
            return;
        };
        hammer(backend(&url, &prefix()).await, 16, 100, 3, 1_000).await;
    }

    #[test]
    fn memory_and_redis_credits_agree() {
        let Some(url) = redis_url("memory_and_redis_credits_agree") else {
            return;
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let redis = rt.block_on(backend(&url, &prefix()));
        let case = std::sync::atomic::AtomicU32::new(0);
        TestRunner::new(ProptestConfig::with_cases(24))
            .run(&(refills(), 0u64..200, ops()), |(refill, amount, trace)| {
                let n = case.fetch_add(1, Ordering::Relaxed);
                let org = OrgId::from(format!("org_{n}"));
                let memory = rt.block_on(run_trace(
                    &MemoryCredits::new(),
                    &org,
                    refill,
                    amount,
                    &trace,
                ));
                let got = rt.block_on(run_trace(&redis, &org, refill, amount, &trace));
                prop_assert_eq!(&got, &memory);
                prop_assert_eq!(got, model_trace(refill, amount, &trace));
                Ok(())
            })
            .unwrap();
    }
}

#[cfg(feature = "postgres")]
mod on_postgres {
    use super::*;
    use common::pg;
    use tower_api_key::credits::PgCredits;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_balance_is_exact_under_concurrency() {
        let Some(url) = pg::database_url("postgres_balance_is_exact_under_concurrency") else {
            return;
        };
        let (store, _guard) = pg::store(&url).await;
        hammer(PgCredits::new(store.pool().clone()), 16, 100, 3, 1_000).await;
    }

    #[test]
    fn memory_and_postgres_credits_agree() {
        let Some(url) = pg::database_url("memory_and_postgres_credits_agree") else {
            return;
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (store, _guard) = rt.block_on(pg::store(&url));
        let pgc = PgCredits::new(store.pool().clone());
        let case = std::sync::atomic::AtomicU32::new(0);
        proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(16))
            .run(&(refills(), 0u64..200, ops()), |(refill, amount, trace)| {
                let n = case.fetch_add(1, Ordering::Relaxed);
                let org = OrgId::from(format!("org_{n}"));
                let got = rt.block_on(run_trace(&pgc, &org, refill, amount, &trace));
                prop_assert_eq!(got, model_trace(refill, amount, &trace));
                Ok(())
            })
            .unwrap();
    }
}

#[cfg(feature = "sqlite")]
mod on_sqlite {
    use super::*;
    use tower_api_key::credits::SqliteCredits;
    use tower_api_key::store::SqliteStore;

    async fn backend() -> SqliteCredits {
        let store = SqliteStore::memory().await.unwrap();
        store.migrate().await.unwrap();
        SqliteCredits::new(store.pool().clone())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_balance_is_exact_under_concurrency() {
        hammer(backend().await, 8, 50, 3, 500).await;
    }

    #[test]
    fn sqlite_credits_follow_the_model() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sqlite = rt.block_on(backend());
        let case = std::sync::atomic::AtomicU32::new(0);
        proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(32))
            .run(&(refills(), 0u64..200, ops()), |(refill, amount, trace)| {
                let n = case.fetch_add(1, Ordering::Relaxed);
                let org = OrgId::from(format!("org_{n}"));
                let got = rt.block_on(run_trace(&sqlite, &org, refill, amount, &trace));
                prop_assert_eq!(got, model_trace(refill, amount, &trace));
                Ok(())
            })
            .unwrap();
    }
}
