//! Nothing lost at shutdown: requests go through `ApiKeyAuth` + `LastUsedRecorder` over a
//! `CachedStore<PostgresStore>`; `FlusherHandle::shutdown` writes the last interval's marks,
//! and a fresh `PostgresStore` on the same schema (another process, after a restart) shows the
//! last-used time of every key used.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo test --features postgres --test pg_last_used
//! ```
//!
//! Without `DATABASE_URL` the test prints why it skips.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::pg;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::store::{CachedStore, KeyStore};
use tower_api_key::{
    ApiKeyAuth, Clock, CreatedKey, KeyManager, LastUsedRecorder, NewKey, OrgId, Timestamp,
};

const T0: u64 = 1_800_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_every_last_used_time_to_the_database() {
    let Some(url) = pg::database_url("shutdown_flushes_every_last_used_time_to_the_database")
    else {
        return;
    };
    let (store, guard) = pg::store(&url).await;
    let (clock, manual) = Clock::manual(Timestamp::from_unix_secs(T0));
    let cache = CachedStore::new(store.clone());
    let manager = KeyManager::new(cache.clone()).clock(clock.clone());
    let mint = |org: &'static str| {
        let manager = manager.clone();
        async move {
            manager
                .create(&OrgId::from(org), NewKey::new("test"))
                .await
                .unwrap()
        }
    };
    let (k1, k2, k3, unused) = (
        mint("org_a").await,
        mint("org_a").await,
        mint("org_b").await,
        mint("org_b").await,
    );

    // One-second marks; the flusher's interval (an hour) never comes during the test, so only
    // the shutdown writes.
    let recorder = LastUsedRecorder::new(cache.clone()).clock(clock.clone());
    let flusher = recorder.spawn_flusher(Duration::from_secs(3600));
    let svc = ServiceBuilder::new()
        .layer(ApiKeyAuth::new(cache.clone()).clock(clock.clone()))
        .layer(recorder.clone())
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
    let call = |key: &CreatedKey| {
        let req = Request::get("/v1/whoami")
            .header(
                "authorization",
                format!("Bearer {}", key.key.expose_secret()),
            )
            .body(Full::default())
            .unwrap();
        svc.clone().oneshot(req)
    };

    assert_eq!(call(&k1).await.unwrap().status(), StatusCode::OK);
    assert_eq!(call(&k2).await.unwrap().status(), StatusCode::OK);
    manual.advance(Duration::from_secs(5));
    assert_eq!(call(&k2).await.unwrap().status(), StatusCode::OK);
    manual.advance(Duration::from_millis(2_500));
    assert_eq!(call(&k3).await.unwrap().status(), StatusCode::OK);

    // Before the shutdown the database knows nothing of these requests.
    let before = pg::replica(&url, &guard).await;
    for key in [&k1, &k2, &k3] {
        let record = before.get(&key.record.id).await.unwrap().unwrap();
        assert_eq!(record.last_used_at, None);
    }

    flusher.shutdown().await.unwrap();

    // A fresh store on the same schema: what a restarted replica would read.
    let after = pg::replica(&url, &guard).await;
    let last_used = |key: &CreatedKey| {
        let after = after.clone();
        let id = key.record.id.clone();
        async move { after.get(&id).await.unwrap().unwrap().last_used_at }
    };
    assert_eq!(last_used(&k1).await, Some(Timestamp::from_unix_secs(T0)));
    assert_eq!(
        last_used(&k2).await,
        Some(Timestamp::from_unix_secs(T0 + 5))
    );
    // Marks are truncated to the recorder's one-second granularity.
    assert_eq!(
        last_used(&k3).await,
        Some(Timestamp::from_unix_secs(T0 + 7))
    );
    assert_eq!(last_used(&unused).await, None);
    // And through the listing, as users see it.
    let listed = KeyManager::new(after.clone())
        .list(&OrgId::from("org_a"))
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|r| r.last_used_at.is_some()));
    drop(store);
}
