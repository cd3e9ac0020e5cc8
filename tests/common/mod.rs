//! Shared fixtures for the integration tests.
#![allow(dead_code)]

pub mod contract;
#[cfg(feature = "postgres")]
pub mod pg;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower_api_key::{
    Clock, CreatedKey, KeyManager, ManualClock, MemoryStore, NewKey, OrgId, Principal, Scopes,
    SessionError, Timestamp,
};

/// A store, a manager and a manual clock that all agree on the time.
pub struct Fixture {
    pub store: MemoryStore,
    pub manager: KeyManager<MemoryStore>,
    pub clock: Clock,
    pub time: ManualClock,
}

impl Fixture {
    pub fn new() -> Self {
        let (clock, time) = Clock::manual(Timestamp::from_unix_secs(1_800_000_000));
        let store = MemoryStore::new();
        let manager = KeyManager::new(store.clone()).clock(clock.clone());
        Self {
            store,
            manager,
            clock,
            time,
        }
    }

    pub async fn mint(&self, org: &str, scopes: &[&str]) -> CreatedKey {
        self.manager
            .create(
                &OrgId::from(org),
                NewKey::new("test").scopes(Scopes::parse(scopes).unwrap()),
            )
            .await
            .unwrap()
    }

    pub async fn mint_expiring(&self, org: &str, ttl: Duration) -> CreatedKey {
        self.manager
            .create(&OrgId::from(org), NewKey::new("expiring").expires_in(ttl))
            .await
            .unwrap()
    }
}

/// An inner service answering 200 with `org_id key_id` of the principal, or `anonymous`.
pub async fn echo_principal<B>(req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.extensions().get::<Principal>() {
        Some(p) => format!("{} {} {}", p.org_id(), p.key_id(), p.environment()),
        None => "anonymous".to_owned(),
    };
    Ok(Response::new(Full::new(Bytes::from(body))))
}

pub fn get(uri: &str, auth: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::get(uri);
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

pub fn bearer(key: &CreatedKey) -> String {
    format!("Bearer {}", key.key.expose_secret())
}

pub async fn body_string<B>(res: Response<B>) -> String
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

pub async fn body_json<B>(res: Response<B>) -> serde_json::Value
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    serde_json::from_str(&body_string(res).await).unwrap()
}

/// The body of a refusal as an RFC 9457 problem: asserts it is a JSON object whose `type` and
/// `title` are strings, `status` an HTTP status code and `code` a string, and returns it.
#[track_caller]
pub fn problem(body: &[u8]) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "refusal body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    assert!(v["type"].is_string(), "problem without a `type`: {v}");
    assert!(v["title"].is_string(), "problem without a `title`: {v}");
    assert!(
        v["status"]
            .as_u64()
            .is_some_and(|s| (100..600).contains(&s)),
        "problem without an HTTP `status`: {v}"
    );
    assert!(v["code"].is_string(), "problem without a `code`: {v}");
    v
}

/// A refusal response's problem: asserts the `application/problem+json` content type and that
/// the body's `status` member is the response's status, and returns the parsed body.
pub async fn problem_of<B>(res: Response<B>) -> serde_json::Value
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let status = res.status();
    assert_eq!(
        res.headers()
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap()),
        Some("application/problem+json"),
        "a {status} refusal is problem+json"
    );
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let v = problem(&bytes);
    assert_eq!(
        v["status"],
        status.as_u16(),
        "the body's status is the response's"
    );
    v
}

/// The `code` member of a refusal response's problem body (checked as [`problem_of`] does).
pub async fn problem_code<B>(res: Response<B>) -> String
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    problem_of(res).await["code"].as_str().unwrap().to_owned()
}

/// The `(limit, retry_after)` of a session refusal; panics on anything but
/// [`SessionError::LimitReached`].
#[track_caller]
pub fn limit_reached<T: std::fmt::Debug>(r: Result<T, SessionError>) -> (u64, u64) {
    match r {
        Err(SessionError::LimitReached { limit, retry_after }) => (limit, retry_after),
        other => panic!("expected SessionError::LimitReached, got {other:?}"),
    }
}

/// Stores that misbehave on purpose, and one that counts lookups.
pub mod stores {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tower_api_key::store::{BoxFuture, LookupResult};
    use tower_api_key::{
        KeyHash, KeyId, KeyRecord, KeyStore, MemoryStore, OrgId, Plan, StoreError, Timestamp,
    };

    /// How the wrapper answers lookups.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Mode {
        /// Delegate at once.
        Pass,
        /// Delegate after yielding once (a lookup that is pending at first).
        Yield,
        /// Fail with `Unavailable`.
        Fail,
        /// Never answer.
        Hang,
    }

    /// Wraps a `MemoryStore`, counts `find_by_hash` calls and can misbehave.
    #[derive(Clone)]
    pub struct TestStore {
        pub inner: MemoryStore,
        pub lookups: Arc<AtomicUsize>,
        pub mode: Mode,
        /// Audit writes fail with `Unavailable` (the audit table is gone).
        pub audit_down: bool,
    }

    impl TestStore {
        pub fn new(inner: MemoryStore, mode: Mode) -> Self {
            Self {
                inner,
                lookups: Arc::new(AtomicUsize::new(0)),
                mode,
                audit_down: false,
            }
        }

        /// The same store, its audit writes failing.
        pub fn audit_down(mut self) -> Self {
            self.audit_down = true;
            self
        }
        pub fn lookups(&self) -> usize {
            self.lookups.load(Ordering::SeqCst)
        }
    }

    impl KeyStore for TestStore {
        type Lookup = Pin<Box<dyn Future<Output = LookupResult> + Send>>;

        fn find_by_hash(&self, hash: &KeyHash) -> Self::Lookup {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            let inner = self.inner.clone();
            let hash = *hash;
            let mode = self.mode;
            let fut: BoxFuture<'static, LookupResult> = Box::pin(async move {
                match mode {
                    Mode::Pass => inner.find_by_hash(&hash).await,
                    Mode::Yield => {
                        tokio::task::yield_now().await;
                        inner.find_by_hash(&hash).await
                    }
                    Mode::Fail => Err(StoreError::unavailable("connection refused")),
                    Mode::Hang => std::future::pending().await,
                }
            });
            fut
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
            c: &tower_api_key::KeyChanges,
        ) -> Result<Option<KeyRecord>, StoreError> {
            self.inner.update(id, c).await
        }
        async fn touch_last_used(&self, batch: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
            self.inner.touch_last_used(batch).await
        }
        async fn record_usage(
            &self,
            batch: &[tower_api_key::UsageDelta],
        ) -> Result<(), StoreError> {
            self.inner.record_usage(batch).await
        }
        async fn usage(
            &self,
            org: &OrgId,
            from: tower_api_key::Timestamp,
            to: tower_api_key::Timestamp,
            granularity: tower_api_key::Granularity,
        ) -> Result<Vec<tower_api_key::UsageRow>, StoreError> {
            self.inner.usage(org, from, to, granularity).await
        }
        async fn prune_usage(
            &self,
            granularity: tower_api_key::Granularity,
            before: tower_api_key::Timestamp,
        ) -> Result<u64, StoreError> {
            self.inner.prune_usage(granularity, before).await
        }
        async fn set_plan(&self, org: &OrgId, plan: Plan) -> Result<(), StoreError> {
            self.inner.set_plan(org, plan).await
        }
        async fn plan(&self, org: &OrgId) -> Result<Plan, StoreError> {
            self.inner.plan(org).await
        }

        async fn claim_expiry_reminders(
            &self,
            now: Timestamp,
            until: Timestamp,
            limit: usize,
        ) -> Result<Vec<KeyRecord>, StoreError> {
            self.inner.claim_expiry_reminders(now, until, limit).await
        }

        async fn append_audit(&self, entry: tower_api_key::AuditEntry) -> Result<(), StoreError> {
            if self.audit_down {
                return Err(StoreError::unavailable("audit table is gone"));
            }
            self.inner.append_audit(entry).await
        }

        async fn audit_log(
            &self,
            org: &OrgId,
            query: &tower_api_key::AuditQuery,
        ) -> Result<Vec<tower_api_key::AuditEntry>, StoreError> {
            self.inner.audit_log(org, query).await
        }
    }
}
