//! Two replicas over one PostgreSQL database: each is an `ApiKeyAuth` stack over its own
//! `CachedStore<PostgresStore>` subscribed to `LISTEN/NOTIFY`. What one replica changes, the
//! other honours within a bound, although its cache TTL (one hour here) would let it serve the
//! stale entry: only the pushed invalidation can explain the refusal.
//!
//! # Measured bound
//!
//! From the revocation's commit on replica A to the first refusal on replica B (20 revocations
//! per run, B polled with a 1 ms tokio sleep between requests), on the 2-core development
//! machine with PostgreSQL 15 on localhost, over 11 runs: fastest 0.3–0.6 ms, median 1.8–3.0 ms,
//! p90 3.0–5.0 ms, worst 14.4 ms. The poll's sleep rounds up to the timer's millisecond, so the
//! median mostly measures the polling; the fastest figure is the propagation itself (commit →
//! NOTIFY → listener → invalidation → one query). Bound documented for users: **a revocation is
//! refused on every replica within ~15 ms on a healthy local network**, well under a second; if
//! the listener connection drops, the cache is dropped on reconnect (about 10 ms after the kill
//! here), and the TTL (30 s by default) bounds anything lost without the listener noticing.
//! The test asserts a generous 2 s and prints the figures:
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo test --features postgres --test replicas -- --nocapture
//! ```
//!
//! Without `DATABASE_URL` the tests print why they skip.

mod common;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use common::pg;
use http::{Request, Response, StatusCode};
use tower::{ServiceExt, service_fn, util::BoxCloneService};
use tower_api_key::store::{
    CacheConfig, CachedStore, Invalidation, InvalidationSource, KeyStore, PgInvalidations,
    PostgresStore,
};
use tower_api_key::{
    ApiKey, ApiKeyAuth, Clock, KeyManager, NewKey, OrgId, Plan, Principal, ResponseBody, Rotation,
    Scopes,
};
use tower_layer::Layer;

const BOUND: Duration = Duration::from_secs(2);

type Svc = BoxCloneService<Request<String>, Response<ResponseBody<String>>, Infallible>;

struct Replica {
    cache: CachedStore<PostgresStore>,
    svc: Svc,
}

/// A replica: its own pool, its own cache (TTL one hour), its own listener.
async fn replica(store: PostgresStore, listen: bool) -> Replica {
    let config = CacheConfig::default()
        .ttl(Duration::from_secs(3600))
        .negative_ttl(Duration::from_secs(3600));
    let cache = CachedStore::with_config(store.clone(), config);
    if listen {
        cache.subscribe(store.invalidations().await.unwrap());
    }
    // The handler answers with what the principal carries: plan and scopes.
    let handler = service_fn(|req: Request<String>| async move {
        let p = req.extensions().get::<Principal>().unwrap();
        let scopes: Vec<&str> = p.scopes().iter().map(|s| s.as_str()).collect();
        Ok::<_, Infallible>(Response::new(format!(
            "{} {}",
            p.plan().name(),
            scopes.join(",")
        )))
    });
    let svc = BoxCloneService::new(ApiKeyAuth::new(cache.clone()).layer(handler));
    Replica { cache, svc }
}

impl Replica {
    async fn call(&self, key: &ApiKey) -> (StatusCode, String) {
        let req = Request::builder()
            .header("authorization", format!("Bearer {}", key.expose_secret()))
            .body(String::new())
            .unwrap();
        let res = self.svc.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .map(|c| String::from_utf8_lossy(&c.to_bytes()).into_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// Call until a call is answered from the cache. The first call fills it, but the key's own
    /// creation notification may still be on its way and evict that entry once.
    async fn warm(&self, key: &ApiKey) {
        let start = Instant::now();
        loop {
            let misses = self.cache.stats().misses;
            assert_eq!(self.call(key).await.0, StatusCode::OK);
            if self.cache.stats().misses == misses {
                return;
            }
            assert!(start.elapsed() < BOUND, "the key never stays cached");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Poll until `want` holds; how long it took. Fails past `BOUND`.
    async fn until(&self, key: &ApiKey, want: impl Fn(StatusCode, &str) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            let (status, body) = self.call(key).await;
            if want(status, &body) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < BOUND,
                "replica B still answers {status} {body:?} after {BOUND:?}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Two replicas on one fresh schema; the guard drops the schema.
async fn two_replicas(url: &str) -> (Replica, Replica, pg::SchemaGuard) {
    let (store_a, guard) = pg::store(url).await;
    let store_b = pg::replica(url, &guard).await;
    (
        replica(store_a, true).await,
        replica(store_b, true).await,
        guard,
    )
}

fn manager(r: &Replica) -> KeyManager<CachedStore<PostgresStore>> {
    // The coarse clock, as `ApiKeyAuth` uses by default: the revocation time is never ahead of
    // what the layers read, so the measured delay is propagation only.
    KeyManager::new(r.cache.clone()).clock(Clock::coarse())
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_replica_is_refused_on_the_other() {
    let Some(url) = pg::database_url("replicas") else {
        return;
    };
    let (a, b, _guard) = two_replicas(&url).await;
    let manager = manager(&a);
    let org = OrgId::from("org_replicas");

    let mut delays = Vec::new();
    for i in 0..20 {
        let created = manager
            .create(&org, NewKey::new(format!("k{i}")))
            .await
            .unwrap();
        b.warm(&created.key).await; // B now serves the key from its cache

        let invalidations = b.cache.stats().invalidations;
        manager.revoke(&org, &created.record.id).await.unwrap();
        let delay = b
            .until(&created.key, |s, _| s == StatusCode::UNAUTHORIZED)
            .await;
        assert!(
            b.cache.stats().invalidations > invalidations,
            "the refusal came from a pushed invalidation, not the TTL"
        );
        delays.push(delay);
    }
    delays.sort();
    println!(
        "revocation on A -> refused on B: min {:?}, median {:?}, p90 {:?}, max {:?} (n = {})",
        delays[0],
        percentile(&delays, 50),
        percentile(&delays, 90),
        delays[delays.len() - 1],
        delays.len()
    );
    assert!(delays[delays.len() - 1] < BOUND);
}

#[tokio::test]
async fn rotation_and_plan_changes_reach_the_other_replica() {
    let Some(url) = pg::database_url("replicas") else {
        return;
    };
    let (a, b, _guard) = two_replicas(&url).await;
    let manager = manager(&a);
    let org = OrgId::from("org_rotate");
    let scopes = Scopes::parse(["browser_sessions:create"]).unwrap();
    let old = manager
        .create(&org, NewKey::new("web").scopes(scopes))
        .await
        .unwrap();
    assert_eq!(
        b.call(&old.key).await,
        (StatusCode::OK, "free browser_sessions:create".to_owned())
    );

    let new = manager
        .rotate(&org, &old.record.id, Rotation::immediate())
        .await
        .unwrap();
    let took = b
        .until(&old.key, |s, _| s == StatusCode::UNAUTHORIZED)
        .await;
    println!("rotation on A -> old key refused on B after {took:?}");
    assert_eq!(
        b.call(&new.key).await,
        (StatusCode::OK, "free browser_sessions:create".to_owned()),
        "the new key carries the same permissions"
    );

    manager.set_plan(&org, Plan::Paid).await.unwrap();
    let took = b.until(&new.key, |_, body| body.starts_with("paid ")).await;
    println!("plan change on A -> seen on B after {took:?}");
}

#[tokio::test]
async fn narrowed_scopes_reach_the_other_replica() {
    let Some(url) = pg::database_url("replicas") else {
        return;
    };
    let (a, b, _guard) = two_replicas(&url).await;
    let org = OrgId::from("org_narrow");
    let scopes = Scopes::parse(["browser_sessions:create", "browser_sessions:read"]).unwrap();
    let key = manager(&a)
        .create(&org, NewKey::new("web").scopes(scopes))
        .await
        .unwrap();
    b.warm(&key.key).await;
    let narrow = Scopes::parse(["browser_sessions:read"]).unwrap();
    let changes = tower_api_key::KeyChanges::new().scopes(narrow);
    a.cache
        .update(&key.record.id, &changes)
        .await
        .unwrap()
        .unwrap();
    let took = b
        .until(&key.key, |s, body| {
            s == StatusCode::OK && body == "free browser_sessions:read"
        })
        .await;
    println!("scopes narrowed on A -> seen on B after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_enable_and_allowed_networks_reach_the_other_replica() {
    let Some(url) = pg::database_url("replicas") else {
        return;
    };
    let (a, b, _guard) = two_replicas(&url).await;
    let manager = manager(&a);
    let org = OrgId::from("org_disable");
    let key = manager.create(&org, NewKey::new("web")).await.unwrap();
    b.warm(&key.key).await;

    let invalidations = b.cache.stats().invalidations;
    manager.disable(&org, &key.record.id).await.unwrap();
    let took = b
        .until(&key.key, |s, _| s == StatusCode::UNAUTHORIZED)
        .await;
    assert!(
        b.cache.stats().invalidations > invalidations,
        "the refusal came from a pushed invalidation, not the TTL"
    );
    println!("disable on A -> refused on B after {took:?}");
    assert!(took < BOUND);

    manager.enable(&org, &key.record.id).await.unwrap();
    let took = b.until(&key.key, |s, _| s == StatusCode::OK).await;
    println!("enable on A -> accepted on B after {took:?}");
    b.warm(&key.key).await;

    // Restricted to a network the test's requests (which carry no peer address) are not from.
    let changes =
        tower_api_key::KeyChanges::new().allowed_networks(vec!["203.0.113.0/24".parse().unwrap()]);
    manager.update(&org, &key.record.id, changes).await.unwrap();
    let took = b.until(&key.key, |s, _| s == StatusCode::FORBIDDEN).await;
    println!("allowed networks set on A -> refused on B after {took:?}");
}

/// The next invalidation of `source`, failing past `BOUND`.
async fn next(source: &mut PgInvalidations) -> Invalidation {
    tokio::time::timeout(BOUND, source.next())
        .await
        .expect("no notification within the bound")
        .expect("the source does not end")
}

#[tokio::test]
async fn what_is_announced_and_what_is_not() {
    let Some(url) = pg::database_url("replicas") else {
        return;
    };
    let (a, b, guard) = two_replicas(&url).await;
    // A raw feed of the schema's notifications, in commit order.
    let mut feed = a.cache.store().invalidations().await.unwrap();
    let manager = manager(&a);
    let org = OrgId::from("org_admin");
    let created = manager.create(&org, NewKey::new("ops")).await.unwrap();
    let sentinel = manager.create(&org, NewKey::new("sentinel")).await.unwrap();
    assert_eq!(
        next(&mut feed).await,
        Invalidation::Key(created.record.hash)
    );
    assert_eq!(
        next(&mut feed).await,
        Invalidation::Key(sentinel.record.hash)
    );
    assert_eq!(
        b.call(&created.key).await,
        (StatusCode::OK, "free ".to_owned())
    );

    // An operator narrows the key's scopes by hand, outside the library.
    let admin = PostgresStore::connect(&url).await.unwrap();
    let sql = format!(
        "UPDATE \"{}\".api_keys SET scopes = '{{files:read}}' WHERE id = $1",
        guard.schema()
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(created.record.id.as_str())
        .execute(admin.pool())
        .await
        .unwrap();
    assert_eq!(
        next(&mut feed).await,
        Invalidation::Key(created.record.hash)
    );
    b.until(&created.key, |_, body| body == "free files:read")
        .await;

    // Not announced: a last-used flush, and anything in another schema. Each commits before
    // the sentinel's revocation, so the sentinel's notification must come next.
    a.cache
        .touch_last_used(&[(created.record.id.clone(), tower_api_key::Timestamp::now())])
        .await
        .unwrap();
    let (elsewhere, _other_guard) = pg::store(&url).await;
    let stranger = common::contract::record(&org, "stranger", tower_api_key::Timestamp::now());
    elsewhere.insert(stranger).await.unwrap();
    elsewhere.set_plan(&org, Plan::Paid).await.unwrap();
    manager.revoke(&org, &sentinel.record.id).await.unwrap();
    assert_eq!(
        next(&mut feed).await,
        Invalidation::Key(sentinel.record.hash),
        "last-used flushes and other schemas are not announced"
    );

    // Plan changes are announced per organization.
    manager.set_plan(&org, Plan::Paid).await.unwrap();
    assert_eq!(next(&mut feed).await, Invalidation::Org(org.clone()));
}

#[tokio::test]
async fn a_lost_listener_connection_drops_the_cache_on_reconnect() {
    let Some(url) = pg::database_url("replicas") else {
        return;
    };
    let (store_a, guard) = pg::store(&url).await;
    let store_b = pg::replica(&url, &guard).await;
    let a = replica(store_a.clone(), false).await;
    let b = replica(store_b, true).await; // the only listener on this schema
    let manager = manager(&a);
    let org = OrgId::from("org_lost");
    let created = manager.create(&org, NewKey::new("k")).await.unwrap();
    b.warm(&created.key).await;

    // A revocation whose notification is lost (triggers off while it commits).
    let table = format!("\"{}\".api_keys", guard.schema());
    let admin = store_a.pool();
    for sql in [
        format!("ALTER TABLE {table} DISABLE TRIGGER USER"),
        format!(
            "UPDATE {table} SET revoked_at = 1 WHERE id = '{}'",
            created.record.id
        ),
        format!("ALTER TABLE {table} ENABLE TRIGGER USER"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(admin)
            .await
            .unwrap();
    }
    assert_eq!(
        b.call(&created.key).await.0,
        StatusCode::OK,
        "without the notification, B still serves its cached entry"
    );

    // B's listener loses its connection; on reconnect it must drop the whole cache.
    let resets = b.cache.stats().resets;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(format!("tower-api-key-listener:{}", guard.schema()))
    .fetch_all(admin)
    .await
    .unwrap();
    assert_eq!(killed, [true], "exactly B's listener was terminated");
    let took = b
        .until(&created.key, |s, _| s == StatusCode::UNAUTHORIZED)
        .await;
    println!("listener connection killed -> cache dropped and key refused after {took:?}");
    assert!(b.cache.stats().resets > resets);

    // And it listens again: a new revocation is pushed as usual.
    let second = manager.create(&org, NewKey::new("k2")).await.unwrap();
    b.warm(&second.key).await;
    manager.revoke(&org, &second.record.id).await.unwrap();
    b.until(&second.key, |s, _| s == StatusCode::UNAUTHORIZED)
        .await;
}

#[tokio::test]
async fn a_new_key_is_not_held_back_by_another_replicas_negative_cache() {
    let Some(url) = pg::database_url("replicas") else {
        return;
    };
    let (a, b, _guard) = two_replicas(&url).await;
    let format = tower_api_key::KeyFormat::live();
    let key = format.generate().unwrap();
    // B has seen this key before it existed (negative TTL: one hour).
    assert_eq!(b.call(&key).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(b.cache.stats().negative_entries, 1);

    let rec = common::contract::record(
        &OrgId::from("org_new"),
        "k",
        tower_api_key::Timestamp::now(),
    );
    let mut rec = rec;
    rec.hash = key.hash();
    a.cache.insert(rec).await.unwrap();
    let took = b.until(&key, |s, _| s == StatusCode::OK).await;
    println!("key created on A -> accepted on B (was negatively cached) after {took:?}");
}
