//! Store lookups: the `CachedStore` hit path against `MemoryStore` in the same run (bar: within
//! 10%), negative hits, the same through `ApiKeyAuth`, and a cold lookup against PostgreSQL
//! (feature `postgres`, only when `DATABASE_URL` is set) and SQLite (feature `sqlite`).
//!
//! ```text
//! cargo bench --bench stores -- --warm-up-time 1 --measurement-time 3
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo bench --features sqlite,postgres --bench stores -- --warm-up-time 1 --measurement-time 3
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use tower::{Service, service_fn};
use tower_api_key::store::{CachedStore, KeyStore};
use tower_api_key::{
    ApiKey, ApiKeyAuth, KeyFormat, KeyHash, KeyId, KeyRecord, MemoryStore, OrgId, Scopes, Timestamp,
};
use tower_layer::Layer;

const KEYS: usize = 10_000;

/// Poll a future once (a lookup, as `ApiKeyAuth` does, or a response future); it must be ready.
#[inline]
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("not ready"),
    }
}

fn record(key: &ApiKey, format: &KeyFormat, i: usize) -> KeyRecord {
    KeyRecord::new(
        KeyId::generate().unwrap(),
        OrgId::from(format!("org_{}", i % 100)),
        format!("key {i}"),
        key.hash(),
        key.hint(format),
        Scopes::full_access(),
        Arc::from("live"),
        Timestamp::now(),
    )
}

fn populate<S: KeyStore>(rt: &tokio::runtime::Runtime, store: &S) -> Vec<ApiKey> {
    let format = KeyFormat::live();
    rt.block_on(async {
        let mut keys = Vec::with_capacity(KEYS);
        for i in 0..KEYS {
            let key = format.generate().unwrap();
            store.insert(record(&key, &format, i)).await.unwrap();
            keys.push(key);
        }
        keys
    })
}

fn lookups(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let memory = MemoryStore::new();
    let keys = populate(&rt, &memory);
    let cached = CachedStore::new(memory.clone());
    let hot: KeyHash = keys[KEYS / 2].hash();
    let unknown: KeyHash = KeyFormat::live().generate().unwrap().hash();
    // Warm the cache: the hot key and the unknown one.
    rt.block_on(async {
        cached.find_by_hash(&hot).await.unwrap().unwrap();
        assert!(cached.find_by_hash(&unknown).await.unwrap().is_none());
    });

    let mut g = c.benchmark_group("store_lookup");
    g.bench_function("memory_hit", |b| {
        b.iter(|| ready(memory.find_by_hash(black_box(&hot))))
    });
    g.bench_function("cached_memory_hit", |b| {
        b.iter(|| ready(cached.find_by_hash(black_box(&hot))))
    });
    g.bench_function("memory_unknown", |b| {
        b.iter(|| ready(memory.find_by_hash(black_box(&unknown))))
    });
    g.bench_function("cached_negative_hit", |b| {
        b.iter(|| ready(cached.find_by_hash(black_box(&unknown))))
    });
    g.finish();

    // The same through the layer, over a no-op service.
    let noop = service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    let header =
        http::HeaderValue::try_from(format!("Bearer {}", keys[KEYS / 2].expose_secret())).unwrap();
    let mut g = c.benchmark_group("auth_accept");
    let mut on_memory = ApiKeyAuth::new(memory.clone()).layer(noop);
    let mut on_cache = ApiKeyAuth::new(cached.clone()).layer(noop);
    g.bench_function("memory", |b| {
        // `service_fn` is always ready, so `call` without `poll_ready` is fine here.
        b.iter(|| {
            let mut req = Request::new(());
            req.headers_mut().insert("authorization", header.clone());
            let fut = on_memory.call(req);
            ready(fut).unwrap()
        })
    });
    g.bench_function("cached_memory", |b| {
        b.iter(|| {
            let mut req = Request::new(());
            req.headers_mut().insert("authorization", header.clone());
            let fut = on_cache.call(req);
            ready(fut).unwrap()
        })
    });
    g.finish();
}

#[cfg(feature = "postgres")]
fn postgres_cold(c: &mut Criterion) {
    use tower_api_key::store::{Invalidation, PostgresStore};

    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!("postgres_cold: skipped (DATABASE_URL is not set)");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let schema = format!("tak_bench_{}", std::process::id());
    let store = rt.block_on(async {
        let store = PostgresStore::builder(&url)
            .schema(schema.clone())
            .max_connections(2)
            .connect()
            .await
            .expect("DATABASE_URL is set but PostgreSQL is unreachable");
        store.migrate().await.unwrap();
        store
    });
    let keys = populate(&rt, &store);
    let hot = keys[KEYS / 2].hash();
    let cached = CachedStore::new(store.clone());

    let mut g = c.benchmark_group("postgres_lookup");
    g.bench_function("cold_find_by_hash", |b| {
        b.to_async(&rt)
            .iter(|| async { store.find_by_hash(black_box(&hot)).await.unwrap().unwrap() })
    });
    g.bench_function("cached_miss", |b| {
        b.to_async(&rt).iter(|| async {
            cached.invalidate(&Invalidation::Key(hot));
            cached.find_by_hash(black_box(&hot)).await.unwrap().unwrap()
        })
    });
    g.finish();

    rt.block_on(async {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .execute(store.pool())
        .await
        .unwrap();
    });
}

#[cfg(not(feature = "postgres"))]
fn postgres_cold(_c: &mut Criterion) {
    eprintln!("postgres_cold: skipped (feature `postgres` is off)");
}

#[cfg(feature = "sqlite")]
fn sqlite_cold(c: &mut Criterion) {
    use tower_api_key::store::SqliteStore;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(async {
        let store = SqliteStore::memory().await.unwrap();
        store.migrate().await.unwrap();
        store
    });
    let keys = populate(&rt, &store);
    let hot = keys[KEYS / 2].hash();
    c.bench_function("sqlite_lookup/cold_find_by_hash", |b| {
        b.to_async(&rt)
            .iter(|| async { store.find_by_hash(black_box(&hot)).await.unwrap().unwrap() })
    });
}

#[cfg(not(feature = "sqlite"))]
fn sqlite_cold(_c: &mut Criterion) {
    eprintln!("sqlite_cold: skipped (feature `sqlite` is off)");
}

criterion_group!(benches, lookups, postgres_cold, sqlite_cold);
criterion_main!(benches);
