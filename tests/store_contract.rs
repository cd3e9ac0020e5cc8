//! The whole `KeyStore` contract, run against every store.
//!
//! PostgreSQL runs need `DATABASE_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`) and the
//! `postgres` feature; each test works in a schema of its own, dropped at the end. Without the
//! variable they print why they skip.

mod common;

use common::contract;
use tower_api_key::MemoryStore;
use tower_api_key::store::{CacheConfig, CachedStore};

#[tokio::test]
async fn memory_store() {
    contract::run_all(&MemoryStore::new()).await;
}

#[tokio::test]
async fn cached_memory_store() {
    contract::run_all(&CachedStore::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn cached_memory_store_tiny_cache() {
    // Eviction must never change answers.
    let config = CacheConfig::default().capacity(8).negative_capacity(8);
    contract::run_all(&CachedStore::with_config(MemoryStore::new(), config)).await;
}

#[tokio::test]
async fn store_from_url_memory_and_unsupported() {
    let store = tower_api_key::store::store_from_url("memory://")
        .await
        .unwrap();
    contract::run_all(&store).await;
    let err = tower_api_key::store::store_from_url("mongodb://x")
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            tower_api_key::StoreError::Unavailable(e)
                if e.downcast_ref::<tower_api_key::store::UnsupportedStoreUrl>().is_some()
        ),
        "{err:?}"
    );
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use tower_api_key::KeyStore;
    use tower_api_key::store::SqliteStore;

    fn temp_db(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "tower-api-key-{name}-{}-{}.db",
            std::process::id(),
            tower_api_key::KeyId::generate().unwrap()
        ))
    }

    fn remove_db(path: &std::path::Path) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }

    #[tokio::test]
    async fn sqlite_in_memory() {
        let store = SqliteStore::memory().await.unwrap();
        store.migrate().await.unwrap();
        contract::run_all(&store).await;
    }

    #[tokio::test]
    async fn sqlite_file_survives_restart() {
        let path = temp_db("contract");
        let store = SqliteStore::open(&path).await.unwrap();
        store.migrate().await.unwrap();
        store.migrate().await.unwrap(); // idempotent
        contract::run_all(&store).await;

        let org = tower_api_key::OrgId::from("org_restart");
        let rec = contract::record(&org, "durable", contract::at(0));
        store.insert(rec.clone()).await.unwrap();
        store.revoke(&rec.id, contract::at(3)).await.unwrap();
        store.pool().close().await;
        drop(store);

        let reopened = SqliteStore::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        reopened.migrate().await.unwrap();
        let found = reopened.find_by_hash(&rec.hash).await.unwrap().unwrap();
        assert_eq!(found.record.revoked_at, Some(contract::at(3)));
        reopened.pool().close().await;
        remove_db(&path);
    }

    #[tokio::test]
    async fn cached_sqlite() {
        let store = SqliteStore::memory().await.unwrap();
        store.migrate().await.unwrap();
        contract::run_all(&CachedStore::new(store)).await;
    }

    #[tokio::test]
    async fn store_from_url_sqlite() {
        let store = tower_api_key::store::store_from_url("sqlite::memory:")
            .await
            .unwrap();
        contract::run_all(&store).await;
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use common::pg;

    #[tokio::test]
    async fn postgres_store() {
        let Some(url) = pg::database_url("postgres_store") else {
            return;
        };
        let (store, _guard) = pg::store(&url).await;
        store.migrate().await.unwrap(); // idempotent
        contract::run_all(&store).await;
    }

    #[tokio::test]
    async fn cached_postgres_store() {
        let Some(url) = pg::database_url("cached_postgres_store") else {
            return;
        };
        let (store, _guard) = pg::store(&url).await;
        let cached = CachedStore::new(store.clone());
        cached.subscribe(store.invalidations().await.unwrap());
        contract::run_all(&cached).await;
    }

    #[tokio::test]
    async fn store_from_url_postgres() {
        let Some(url) = pg::database_url("store_from_url_postgres") else {
            return;
        };
        let (_store, guard) = pg::store(&url).await;
        // The URL picks the schema (`options[search_path]=..`), as a deployment would.
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}options[search_path]={}", guard.schema());
        let store = tower_api_key::store::store_from_url(&url).await.unwrap();
        contract::run_all(&store).await;
    }

    #[tokio::test]
    async fn an_unreachable_database_is_503_never_401() {
        use http::{Request, Response, StatusCode};
        use std::time::Duration;
        use tower::{ServiceExt, service_fn};
        use tower_api_key::store::{KeyStore, PostgresStore};
        use tower_api_key::{ApiKeyAuth, KeyFormat, OrgId, StoreError};
        use tower_layer::Layer;

        // Nothing listens on port 1; no DATABASE_URL needed.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(300))
            .connect_lazy("postgres://postgres@127.0.0.1:1/test")
            .unwrap();
        let store = PostgresStore::from_pool(pool);
        let key = KeyFormat::live().generate().unwrap();
        let err = store.find_by_hash(&key.hash()).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Unavailable(_) | StoreError::Timeout),
            "{err:?}"
        );
        let err = store.list(&OrgId::from("org_x")).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Unavailable(_) | StoreError::Timeout),
            "{err:?}"
        );
        let err = store.migrate().await.unwrap_err();
        assert!(
            matches!(err, StoreError::Unavailable(_) | StoreError::Timeout),
            "{err:?}"
        );

        for svc_store in [
            tower_api_key::BoxedStore::new(store.clone()),
            tower_api_key::BoxedStore::new(CachedStore::new(store.clone())),
        ] {
            let svc = ApiKeyAuth::new(svc_store).layer(service_fn(|_r: Request<String>| async {
                Ok::<_, std::convert::Infallible>(Response::new(String::new()))
            }));
            let req = Request::builder()
                .header("authorization", format!("Bearer {}", key.expose_secret()))
                .body(String::new())
                .unwrap();
            let res = svc.oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(res.headers().contains_key("retry-after"));
        }
    }
}
