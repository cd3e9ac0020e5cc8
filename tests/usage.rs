//! Usage metering: requests counted per key by outcome on the request path, flushed with the
//! last-used marks, and read back through `KeyManager::usage`, exactly.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_api_key::{
    ApiKeyAuth, Granularity, KeyHash, KeyId, KeyManager, KeyRecord, KeyStore, LastUsedRecorder,
    ManageError, MemoryStore, NewKey, OrgId, OrgRateLimit, Plan, Principal, Quota, ScopeGuard,
    ScopeRules, Scopes, SessionQuota, StoreError, Timestamp, UsageCounts, UsageDelta, UsageRow,
};

/// A `MemoryStore` whose `record_usage` can be told to fail, and counts its calls.
#[derive(Clone, Default)]
struct Flaky {
    inner: MemoryStore,
    fail_usage: Arc<AtomicBool>,
    usage_writes: Arc<AtomicUsize>,
}

impl KeyStore for Flaky {
    type Lookup = <MemoryStore as KeyStore>::Lookup;
    fn find_by_hash(&self, hash: &KeyHash) -> Self::Lookup {
        self.inner.find_by_hash(hash)
    }
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.inner.insert(record).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.get(id).await
    }
    async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list(org).await
    }
    async fn revoke(&self, id: &KeyId, at: Timestamp) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.revoke(id, at).await
    }
    async fn update(
        &self,
        id: &KeyId,
        changes: &tower_api_key::KeyChanges,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.update(id, changes).await
    }
    async fn touch_last_used(&self, batch: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        self.inner.touch_last_used(batch).await
    }
    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        self.usage_writes.fetch_add(1, Ordering::SeqCst);
        if self.fail_usage.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("injected usage failure"));
        }
        self.inner.record_usage(batch).await
    }
    async fn usage(
        &self,
        org: &OrgId,
        from: Timestamp,
        to: Timestamp,
        granularity: Granularity,
    ) -> Result<Vec<UsageRow>, StoreError> {
        self.inner.usage(org, from, to, granularity).await
    }
    async fn prune_usage(&self, g: Granularity, before: Timestamp) -> Result<u64, StoreError> {
        self.inner.prune_usage(g, before).await
    }
    async fn claim_expiry_reminders(
        &self,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.claim_expiry_reminders(now, until, limit).await
    }
    async fn set_plan(&self, org: &OrgId, plan: Plan) -> Result<(), StoreError> {
        self.inner.set_plan(org, plan).await
    }
    async fn plan(&self, org: &OrgId) -> Result<Plan, StoreError> {
        self.inner.plan(org).await
    }
}

const ORGS: usize = 4;
const KEYS_PER_ORG: usize = 5;
/// Each organization's quota: a burst of this many requests, and this many sessions.
const QUOTA: u32 = 300;
const SESSIONS: u32 = 3;

struct Fixture<St = Flaky> {
    manager: KeyManager<St>,
    /// (org, key id, secret); odd keys may call `/admin`.
    keys: Vec<(OrgId, KeyId, String)>,
}

async fn fixture<St: KeyStore>(store: St) -> Fixture<St> {
    let manager = KeyManager::new(store);
    let mut keys = Vec::new();
    for o in 0..ORGS {
        let org = OrgId::from(format!("org_{o}"));
        manager
            .set_plan(&org, Plan::Enterprise(Quota::per_minute(QUOTA, SESSIONS)))
            .await
            .unwrap();
        for k in 0..KEYS_PER_ORG {
            let mut scopes = vec!["things:read", "sessions:create"];
            if k % 2 == 1 {
                scopes.push("admin:do");
            }
            let created = manager
                .create(
                    &org,
                    NewKey::new(format!("k{k}")).scopes(Scopes::parse(scopes).unwrap()),
                )
                .await
                .unwrap();
            keys.push((
                org.clone(),
                created.record.id.clone(),
                created.key.expose_secret().to_owned(),
            ));
        }
    }
    Fixture { manager, keys }
}

async fn create_session(State(q): State<SessionQuota>, p: Principal) -> Response {
    let id = KeyId::generate().unwrap();
    match q.acquire(&p, id.as_str(), Duration::from_secs(3600)).await {
        Ok(_) => StatusCode::CREATED.into_response(),
        Err(e) => e.into_response(),
    }
}

fn routes(sessions: SessionQuota) -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/admin", get(|| async { "admin" }))
        .route("/sessions", post(create_session))
        .with_state(sessions)
}

fn rules() -> ScopeRules {
    ScopeRules::new()
        .route(Method::GET, "/ok", "things:read")
        .route(Method::GET, "/admin", "admin:do")
        .route(Method::POST, "/sessions", "sessions:create")
}

/// The outcome a response shows, read from its status and problem `code`.
async fn outcome(res: Response) -> &'static str {
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    match status {
        StatusCode::OK | StatusCode::CREATED => "accepted",
        StatusCode::FORBIDDEN => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["code"], "insufficient_scope");
            "scope"
        }
        StatusCode::TOO_MANY_REQUESTS => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            match v["code"].as_str() {
                Some("rate_limited") => "rate_limited",
                Some("session_limit_exceeded") => "session_quota",
                other => panic!("unexpected 429 code {other:?}"),
            }
        }
        other => panic!("unexpected status {other}: {body:?}"),
    }
}

fn add(c: &mut UsageCounts, outcome: &str) {
    match outcome {
        "accepted" => c.accepted += 1,
        "rate_limited" => c.rate_limited += 1,
        "scope" => c.scope += 1,
        "session_quota" => c.session_quota += 1,
        _ => unreachable!(),
    }
}

/// Send `per_task` requests from each of `tasks` tasks, spread over every key and path, and
/// count each response's outcome per key: the reference.
async fn send_all(
    app: Router,
    keys: &[(OrgId, KeyId, String)],
    tasks: usize,
    per_task: usize,
) -> HashMap<KeyId, UsageCounts> {
    let keys = Arc::new(keys.to_vec());
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (app, keys) = (app.clone(), keys.clone());
        handles.push(tokio::spawn(async move {
            let mut mine: HashMap<KeyId, UsageCounts> = HashMap::new();
            for i in 0..per_task {
                let (_, id, secret) = &keys[(t * 7 + i * 3) % keys.len()];
                let (method, path) = match i % 5 {
                    0..=2 => (Method::GET, "/ok"),
                    3 => (Method::GET, "/admin"),
                    _ => (Method::POST, "/sessions"),
                };
                let req = Request::builder()
                    .method(method)
                    .uri(path)
                    .header("authorization", format!("Bearer {secret}"))
                    .body(axum::body::Body::empty())
                    .unwrap();
                let res = app.clone().oneshot(req).await.unwrap();
                add(mine.entry(id.clone()).or_default(), outcome(res).await);
            }
            mine
        }));
    }
    let mut total: HashMap<KeyId, UsageCounts> = HashMap::new();
    for h in handles {
        for (k, c) in h.await.unwrap() {
            *total.entry(k).or_default() += c;
        }
    }
    total
}

/// What the store holds per key, summed over `granularity`'s buckets around now.
async fn stored<St: KeyStore>(
    f: &Fixture<St>,
    granularity: Granularity,
) -> (HashMap<KeyId, UsageCounts>, UsageCounts) {
    let now = Timestamp::now().as_unix_secs();
    let span = match granularity {
        Granularity::Minute => 3_600,
        Granularity::Hour => 86_400,
        Granularity::Day => 5 * 86_400,
    };
    let range = Timestamp::from_unix_secs(now - span)..Timestamp::from_unix_secs(now + span);
    let mut per_key = HashMap::new();
    let mut all = UsageCounts::default();
    for o in 0..ORGS {
        let org = OrgId::from(format!("org_{o}"));
        let report = f
            .manager
            .usage(&org, range.clone(), granularity)
            .await
            .unwrap();
        let mut org_total = UsageCounts::default();
        for b in &report.buckets {
            org_total += b.counts;
        }
        assert_eq!(
            org_total, report.total,
            "the org's buckets add up to its total"
        );
        for k in report.keys {
            let mut sum = UsageCounts::default();
            for b in &k.buckets {
                sum += b.counts;
            }
            assert_eq!(sum, k.total, "a key's buckets add up to its total");
            per_key.insert(k.key_id, k.total);
        }
        all += report.total;
    }
    (per_key, all)
}

fn assert_exact(
    label: &str,
    got: &HashMap<KeyId, UsageCounts>,
    want: &HashMap<KeyId, UsageCounts>,
) {
    let got: HashMap<_, _> = got.iter().filter(|(_, c)| !c.is_zero()).collect();
    let want: HashMap<_, _> = want.iter().filter(|(_, c)| !c.is_zero()).collect();
    assert_eq!(
        got, want,
        "{label}: stored counts per key equal the responses"
    );
}

fn sum(m: &HashMap<KeyId, UsageCounts>) -> UsageCounts {
    let mut t = UsageCounts::default();
    for c in m.values() {
        t += *c;
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fused_stack_counts_are_exact_under_concurrency() {
    let store = Flaky::default();
    let f = fixture(store.clone()).await;
    let recorder = LastUsedRecorder::new(store.clone()).meter_usage(true);
    // Flushing every few milliseconds, while the requests run.
    let flusher = recorder.spawn_flusher(Duration::from_millis(3));
    let stack = ApiKeyAuth::new(store.clone())
        .rate_limit(OrgRateLimit::new())
        .record_last_used(recorder.clone())
        .scope_guard(ScopeGuard::rules(rules()));
    let app = routes(SessionQuota::new()).layer(stack);
    let want = send_all(app, &f.keys, 16, 400).await;
    flusher.shutdown().await.unwrap();

    let all = sum(&want);
    assert_eq!(all.requests(), 16 * 400);
    // Every outcome happened, so each is checked.
    assert!(
        all.accepted > 0 && all.rate_limited > 0 && all.scope > 0,
        "{all:?}"
    );
    assert!(all.session_quota > 0, "{all:?}");
    for g in Granularity::ALL {
        let (got, total) = stored(&f, g).await;
        assert_exact(&format!("{g:?}"), &got, &want);
        assert_eq!(total, all, "{g:?}: org totals");
    }
    assert!(recorder.is_flushed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separate_layers_count_the_same_outcomes_exactly() {
    let store = Flaky::default();
    let f = fixture(store.clone()).await;
    let recorder = LastUsedRecorder::new(store.clone()).meter_usage(true);
    let flusher = recorder.spawn_flusher(Duration::from_millis(3));
    let app = routes(SessionQuota::new()).layer(
        ServiceBuilder::new()
            .layer(ApiKeyAuth::new(store.clone()))
            .layer(OrgRateLimit::new().meter(recorder.usage_meter()))
            .layer(recorder.clone())
            .layer(ScopeGuard::rules(rules())),
    );
    let want = send_all(app, &f.keys, 16, 300).await;
    flusher.shutdown().await.unwrap();
    let all = sum(&want);
    assert!(
        all.accepted > 0 && all.rate_limited > 0 && all.scope > 0 && all.session_quota > 0,
        "{all:?}"
    );
    let (got, total) = stored(&f, Granularity::Minute).await;
    assert_exact("layers", &got, &want);
    assert_eq!(total, all);
}

#[tokio::test]
async fn graceful_shutdown_writes_every_count() {
    let store = Flaky::default();
    let f = fixture(store.clone()).await;
    let recorder = LastUsedRecorder::new(store.clone()).meter_usage(true);
    // An interval no test waits for: only the shutdown flush can write.
    let flusher = recorder.spawn_flusher(Duration::from_secs(3600));
    let stack = ApiKeyAuth::new(store.clone())
        .rate_limit(OrgRateLimit::new())
        .record_last_used(recorder.clone())
        .scope_guard(ScopeGuard::rules(rules()));
    let app = routes(SessionQuota::new()).layer(stack);
    let want = send_all(app, &f.keys, 4, 250).await;
    let (before, _) = stored(&f, Granularity::Minute).await;
    assert!(
        before.is_empty(),
        "nothing written before shutdown: {before:?}"
    );
    flusher.shutdown().await.unwrap();
    let (got, total) = stored(&f, Granularity::Hour).await;
    assert_exact("shutdown", &got, &want);
    assert_eq!(total.requests(), 1_000);
}

#[tokio::test]
async fn a_failed_usage_write_keeps_the_counts_for_the_next_flush() {
    let store = Flaky::default();
    let f = fixture(store.clone()).await;
    let recorder = LastUsedRecorder::new(store.clone()).meter_usage(true);
    let stack = ApiKeyAuth::new(store.clone())
        .rate_limit(OrgRateLimit::new())
        .record_last_used(recorder.clone())
        .scope_guard(ScopeGuard::rules(rules()));
    let app = routes(SessionQuota::new()).layer(stack);
    let first = send_all(app.clone(), &f.keys, 2, 50).await;
    store.fail_usage.store(true, Ordering::SeqCst);
    let err = recorder.flush().await.unwrap_err();
    assert!(matches!(err.source, StoreError::Unavailable(_)), "{err:?}");
    assert_eq!(err.pending, 0, "the marks were written");
    assert_eq!(
        err.pending_usage,
        first.len(),
        "one bucket per key used, kept"
    );
    assert!(!recorder.is_flushed().await);
    // More requests while the store is down, then it comes back.
    let second = send_all(app, &f.keys, 2, 50).await;
    store.fail_usage.store(false, Ordering::SeqCst);
    recorder.flush().await.unwrap();
    assert!(recorder.is_flushed().await);
    let mut want = first;
    for (k, c) in second {
        *want.entry(k).or_default() += c;
    }
    let (got, _) = stored(&f, Granularity::Day).await;
    assert_exact("after a failed write", &got, &want);
    assert_eq!(store.usage_writes.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn without_metering_nothing_is_counted_or_written() {
    let store = Flaky::default();
    let f = fixture(store.clone()).await;
    let recorder = LastUsedRecorder::new(store.clone());
    assert!(!recorder.usage_meter().is_on());
    let stack = ApiKeyAuth::new(store.clone())
        .rate_limit(OrgRateLimit::new())
        .record_last_used(recorder.clone())
        .scope_guard(ScopeGuard::rules(rules()));
    let app = routes(SessionQuota::new()).layer(stack);
    let sent = send_all(app, &f.keys, 2, 100).await;
    assert!(sum(&sent).rate_limited == 0 && sum(&sent).scope > 0);
    recorder.flush().await.unwrap();
    assert_eq!(store.usage_writes.load(Ordering::SeqCst), 0);
    let (got, total) = stored(&f, Granularity::Minute).await;
    assert!(got.is_empty() && total.is_zero(), "{got:?}");
}

#[tokio::test]
async fn usage_queries_refuse_empty_and_oversized_ranges() {
    let manager = KeyManager::new(MemoryStore::new());
    let org = OrgId::from("org_1");
    let t = Timestamp::from_unix_secs(1_700_000_000);
    let err = manager
        .usage(&org, t..t, Granularity::Minute)
        .await
        .unwrap_err();
    assert!(matches!(err, ManageError::InvalidUsageRange), "{err:?}");
    assert_eq!(err.code(), "invalid_usage_range");
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    let eight_days = Timestamp::from_unix_secs(1_700_000_000 + 8 * 86_400);
    let err = manager
        .usage(&org, t..eight_days, Granularity::Minute)
        .await
        .unwrap_err();
    assert!(matches!(err, ManageError::InvalidUsageRange), "{err:?}");
    // Exactly a week of minutes is the most one query spans.
    let week = Timestamp::from_unix_secs(1_700_000_000 - 1_700_000_000 % 60);
    let week_later = Timestamp::from_unix_secs(week.as_unix_secs() + 7 * 86_400);
    let report = manager
        .usage(&org, week..week_later, Granularity::Minute)
        .await;
    assert!(report.is_ok(), "{report:?}");
    let one_more = Timestamp::from_unix_secs(week_later.as_unix_secs() + 1);
    let err = manager
        .usage(&org, week..one_more, Granularity::Minute)
        .await
        .unwrap_err();
    assert!(matches!(err, ManageError::InvalidUsageRange), "{err:?}");
    // The same range in hours is fine, and empty.
    let report = manager
        .usage(&org, t..eight_days, Granularity::Hour)
        .await
        .unwrap();
    assert!(report.keys.is_empty() && report.buckets.is_empty() && report.total.is_zero());
    assert_eq!(report.from, Granularity::Hour.bucket(t));
}

/// Two replicas over one PostgreSQL schema, each with its own cache, stack and flusher, take
/// requests at once: the database holds the sum of both, exactly.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_writing_to_one_postgres_add_up() {
    use common::pg;
    use tower_api_key::CachedStore;
    let Some(url) = pg::database_url("two_replicas_writing_to_one_postgres_add_up") else {
        return;
    };
    let (first, guard) = pg::store(&url).await;
    let second = pg::replica(&url, &guard).await;
    let f = fixture(first.clone()).await;
    let mut flushers = Vec::new();
    let mut sends = Vec::new();
    for store in [first.clone(), second.clone()] {
        let cache = CachedStore::new(store);
        let recorder = LastUsedRecorder::new(cache.clone()).meter_usage(true);
        flushers.push(recorder.spawn_flusher(Duration::from_millis(3)));
        let stack = ApiKeyAuth::new(cache)
            .rate_limit(OrgRateLimit::new())
            .record_last_used(recorder)
            .scope_guard(ScopeGuard::rules(rules()));
        let app = routes(SessionQuota::new()).layer(stack);
        let keys = f.keys.clone();
        sends.push(tokio::spawn(
            async move { send_all(app, &keys, 8, 150).await },
        ));
    }
    let mut want: HashMap<KeyId, UsageCounts> = HashMap::new();
    for s in sends {
        for (k, c) in s.await.unwrap() {
            *want.entry(k).or_default() += c;
        }
    }
    for flusher in flushers {
        flusher.shutdown().await.unwrap();
    }
    let all = sum(&want);
    assert_eq!(all.requests(), 2 * 8 * 150);
    assert!(
        all.accepted > 0 && all.scope > 0 && all.session_quota > 0,
        "{all:?}"
    );
    // Read through a third connection, as another process would.
    let reader = fixture_reader(pg::replica(&url, &guard).await, &f);
    for g in Granularity::ALL {
        let (got, total) = stored(&reader, g).await;
        assert_exact(&format!("two replicas, {g:?}"), &got, &want);
        assert_eq!(total, all, "{g:?}");
    }
}

#[cfg(feature = "postgres")]
fn fixture_reader<St: KeyStore, St2>(store: St, f: &Fixture<St2>) -> Fixture<St> {
    Fixture {
        manager: KeyManager::new(store),
        keys: f.keys.clone(),
    }
}

#[tokio::test]
async fn the_flusher_prunes_buckets_past_their_retention() {
    use tower_api_key::{Clock, UsageRetention};
    let store = MemoryStore::new();
    let now = Timestamp::from_unix_secs(1_800_000_000);
    let (clock, _manual) = Clock::manual(now);
    let org = OrgId::from("org_p");
    let key = KeyId::from("key_p");
    let at = |hours_ago: u64| UsageDelta {
        org_id: org.clone(),
        key_id: key.clone(),
        minute: Timestamp::from_unix_secs(now.as_unix_secs() - hours_ago * 3_600),
        counts: UsageCounts {
            accepted: 1,
            ..Default::default()
        },
    };
    // Minutes kept 2 hours, hours 10 hours, days for ever (the default two years).
    store.record_usage(&[at(1), at(5), at(30)]).await.unwrap();
    let recorder = LastUsedRecorder::new(store.clone())
        .clock(clock)
        .meter_usage(true)
        .usage_retention(
            UsageRetention::default()
                .minutes(Duration::from_secs(2 * 3_600))
                .hours(Duration::from_secs(10 * 3_600)),
        );
    assert_eq!(
        recorder.flush().await.unwrap(),
        0,
        "nothing to write, but pruned"
    );
    let all = Timestamp::from_unix_secs(now.as_unix_secs() - 40 * 3_600)
        ..Timestamp::from_unix_secs(now.as_unix_secs() + 60);
    let rows = |g| store.usage(&org, all.start, all.end, g);
    assert_eq!(
        rows(Granularity::Minute).await.unwrap().len(),
        1,
        "minutes within 2 h"
    );
    assert_eq!(
        rows(Granularity::Hour).await.unwrap().len(),
        2,
        "hours within 10 h"
    );
    let days: i64 = rows(Granularity::Day)
        .await
        .unwrap()
        .iter()
        .map(|r| r.counts.accepted)
        .sum();
    assert_eq!(days, 3, "days are all kept");
}
