//! The key-management API as an axum [`Router`] (feature `admin`): create a key with chosen
//! permissions, list, show, revoke and rotate keys, and read the organization's plan, on behalf
//! of whoever the host's own authentication says is calling.
//!
//! ```
//! use axum::Router;
//! use tower_api_key::admin::AdminApi;
//! use tower_api_key::{ApiKeyAuth, KeyManager, MemoryStore};
//!
//! let store = MemoryStore::new();
//! let app: Router = Router::new()
//!     // /v1/api-keys, /v1/api-keys/{id}, /v1/api-keys/{id}/rotate, /v1/org, /v1/openapi.json
//!     .nest("/v1", AdminApi::new(KeyManager::new(store.clone())).router())
//!     // The caller is the API key of the request; it needs the `api_keys:manage` scope.
//!     .layer(ApiKeyAuth::new(store));
//! ```
//!
//! | method and path | answer |
//! |---|---|
//! | `POST /api-keys` `{"name", "scopes": [..] or "access": "full", "expires_in_secs"?, "metadata"?, "allowed_networks"?}` | `201 {"key": SECRET, "api_key": KEY}` |
//! | `GET /api-keys?limit=20&cursor=ID` | `200 {"data": [KEY..], "has_more", "next_cursor"}`, newest first |
//! | `GET /api-keys/{id}` | `200 KEY` |
//! | `PATCH /api-keys/{id}` `{"name"?, "scopes"? or "access": "full", "disabled"?, "metadata"? (null clears), "allowed_networks"?}` | `200 KEY`, changes hold from the next request on |
//! | `POST /api-keys/{id}/disable`, `POST /api-keys/{id}/enable` | `200 KEY`, refused (or accepted again) from the next request on |
//! | `DELETE /api-keys/{id}` | `200 KEY`, revoked from the next request on |
//! | `POST /api-keys/{id}/rotate` `{"overlap": "now" \| "1h" \| "24h" \| "7d" \| SECONDS}` | `201 {"key": SECRET, "api_key": KEY}` |
//! | `GET /org` | `200 {"org_id", "plan", "limits"}` |
//! | `GET /org/usage?from=SECS&to=SECS&granularity=minute\|hour\|day` | `200` [`UsageReport`]: requests by outcome per key and in total (default: the last 24 hours by hour) |
//! | `GET /org/audit?limit=50&before=ID` | `200 {"data": [ENTRY..], "has_more", "next_cursor"}`: the audit log, newest first ([`AuditEntryView`]) |
//! | `GET /org/credits` | `200` [`OrgCredits`]: the organization's balance and each key's own, with refill and next refill (needs [`AdminApi::credits`]) |
//! | `PUT /org/credits`, `PUT /api-keys/{id}/credits` `{"balance", "refill"?: {"every": "never" \| "day" \| "month", "day"?}}` | `200` [`CreditBalance`]; credit operators only ([`AdminApi::credit_operator`]) |
//! | `GET /openapi.json` | the OpenAPI 3.1 document of these routes |
//!
//! `KEY` is always the same object, [`ApiKeyView`]; a key with every permission shows
//! `"access": "full"` beside empty `scopes`. Every route acts for the caller's organization only
//! (another organization's key is `404`), needs the `api_keys:manage` permission, and never
//! grants more than the caller holds (`403 scope_escalation`). Errors are `application/problem+json`
//! with a stable `code`, as the layers' refusals are.
//!
//! Who is calling is the host's business, through [`Caller`]: by default the [`Principal`] that
//! [`ApiKeyAuth`](crate::ApiKeyAuth) put in the request ([`FromExtensions`]); a dashboard with
//! signed-in users implements [`Caller`] over its session.

pub(crate) mod credits;
mod error;
mod openapi;
mod view;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post, put};
use serde::Deserialize;

pub use credits::{CreditBalance, Every, KeyCredits, OrgCredits, RefillView, SetCredits};
pub use error::AdminError;
pub use openapi::openapi;
pub use view::{
    Access, ActorView, ApiKeyView, AuditEntryView, AuditPage, KeyPage, Limits, NewSecret, OrgView,
    Status,
};

use crate::audit::{Actor, AuditQuery};
use crate::clock::Timestamp;
use crate::credits::{CreditBackend, Credits};
use crate::ids::KeyId;
use crate::manage::{KeyManager, NewKey, Rotation, UsageReport};
use crate::principal::Principal;
use crate::scopes::{Scope, Scopes};
use crate::store::{Granularity, IpNet, KeyChanges, KeyStore, Metadata};

/// The permission every admin route requires of its caller.
pub const MANAGE_SCOPE: &str = "api_keys:manage";

/// The longest overlap a rotation may keep the old key working.
pub const MAX_OVERLAP: Duration = Duration::from_secs(30 * 24 * 3600);

/// Who is calling the admin API: the [`Principal`] whose organization and permissions bound what
/// the call may do. Implement it over your user sessions; API keys need [`FromExtensions`].
pub trait Caller: Clone + Send + Sync + 'static {
    /// The caller of this request, or `None` when nobody is signed in (the route answers 401).
    fn principal(&self, parts: &Parts) -> impl Future<Output = Option<Principal>> + Send;
}

/// The [`Principal`] found in the request's extensions, where
/// [`ApiKeyAuth`](crate::ApiKeyAuth) (or a middleware of the host's) puts it.
#[derive(Clone, Copy, Debug, Default)]
pub struct FromExtensions;

impl Caller for FromExtensions {
    async fn principal(&self, parts: &Parts) -> Option<Principal> {
        parts.extensions.get::<Principal>().cloned()
    }
}

/// The admin API over a [`KeyManager`]; [`router`](Self::router) builds the routes.
#[derive(Clone, Debug)]
pub struct AdminApi<St, C = FromExtensions> {
    manager: KeyManager<St>,
    caller: C,
    page_size: usize,
    credit_settings: credits::CreditSettings,
}

impl<St: KeyStore> AdminApi<St> {
    /// The admin API acting for the [`Principal`] in the request's extensions.
    pub fn new(manager: KeyManager<St>) -> Self {
        Self {
            manager,
            caller: FromExtensions,
            page_size: 20,
            credit_settings: credits::CreditSettings::default(),
        }
    }
}

impl<St: KeyStore, C: Caller> AdminApi<St, C> {
    /// Decide who is calling with `caller` instead (a signed-in user's session, say).
    pub fn caller<C2: Caller>(self, caller: C2) -> AdminApi<St, C2> {
        AdminApi {
            manager: self.manager,
            caller,
            page_size: self.page_size,
            credit_settings: self.credit_settings,
        }
    }

    /// Show and set credits ([`Credits`]) through `GET`/`PUT /org/credits` and
    /// `PUT /api-keys/{id}/credits`. Without it those routes answer
    /// `404 credits_not_configured`.
    pub fn credits<B: CreditBackend>(mut self, credits: Credits<B>) -> Self {
        self.credit_settings.credits = Some(Arc::new(credits));
        self
    }

    /// Who may set credits (`PUT`), decided from the caller's [`Principal`]; by default
    /// nobody may (`403 operator_required`). Why: customers must not top themselves up with
    /// a key that merely manages keys, so the host names its operators.
    ///
    /// ```
    /// use tower_api_key::admin::AdminApi;
    /// use tower_api_key::credits::Credits;
    /// use tower_api_key::{KeyManager, MemoryStore};
    ///
    /// let api = AdminApi::new(KeyManager::new(MemoryStore::new()))
    ///     .credits(Credits::new())
    ///     .credit_operator(|p| p.org_id().as_str() == "org_operator");
    /// # let _: axum::Router = api.router();
    /// ```
    pub fn credit_operator(
        mut self,
        operator: impl Fn(&Principal) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.credit_settings.operator = Arc::new(operator);
        self
    }

    /// The page size of `GET /api-keys` when the request gives no `limit` (default 20; a
    /// request may ask for up to 100).
    pub fn page_size(mut self, n: usize) -> Self {
        self.page_size = n.clamp(1, MAX_PAGE);
        self
    }

    /// The routes, to [`nest`](Router::nest) where the host wants them.
    pub fn router<S>(self) -> Router<S> {
        Router::new()
            .route("/api-keys", post(create::<St, C>).get(list::<St, C>))
            .route(
                "/api-keys/{id}",
                get(show::<St, C>)
                    .patch(update::<St, C>)
                    .delete(revoke::<St, C>),
            )
            .route("/api-keys/{id}/rotate", post(rotate::<St, C>))
            .route("/api-keys/{id}/disable", post(disable::<St, C>))
            .route("/api-keys/{id}/enable", post(enable::<St, C>))
            .route("/org", get(org::<St, C>))
            .route("/org/usage", get(usage::<St, C>))
            .route("/org/audit", get(audit::<St, C>))
            .route(
                "/org/credits",
                get(credits::show::<St, C>).put(credits::set_org::<St, C>),
            )
            .route("/api-keys/{id}/credits", put(credits::set_key::<St, C>))
            .route("/openapi.json", get(|| async { Json(openapi()) }))
            .with_state(Arc::new(self))
    }
}

const MAX_PAGE: usize = 100;

impl<St: KeyStore, C> AdminApi<St, C> {
    /// The manager acting as the calling key: its changes are audited as `Actor::Key`.
    fn acting_as(&self, caller: &Principal) -> KeyManager<St> {
        self.manager.as_actor(Actor::Key(caller.key_id().clone()))
    }
}

type Shared<St, C> = State<Arc<AdminApi<St, C>>>;

/// The caller, checked: signed in and holding [`MANAGE_SCOPE`].
struct Acting(Principal);

impl<St: KeyStore, C: Caller> FromRequestParts<Arc<AdminApi<St, C>>> for Acting {
    type Rejection = AdminError;

    async fn from_request_parts(
        parts: &mut Parts,
        api: &Arc<AdminApi<St, C>>,
    ) -> Result<Self, AdminError> {
        let principal = api
            .caller
            .principal(parts)
            .await
            .ok_or(AdminError::Unauthenticated)?;
        if !principal.allows(&Scope::from_static(MANAGE_SCOPE)) {
            return Err(AdminError::MissingScope);
        }
        Ok(Acting(principal))
    }
}

/// A JSON body, or a 400 that says what is wrong with it.
fn body<T>(json: Result<Json<T>, JsonRejection>) -> Result<T, AdminError> {
    json.map(|Json(v)| v)
        .map_err(|e| AdminError::BadRequest(format!("invalid JSON body: {}", e.body_text())))
}

/// The body of `POST /api-keys`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Human label, 1 to 128 characters.
    pub name: String,
    /// The permissions to grant, each one the caller holds. Give at least one, or `access`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `full` for every permission (only a caller with full access may grant it).
    pub access: Option<Access>,
    /// Seconds until the key expires; omitted, it never does (or gets the expiry policy's
    /// default lifetime).
    pub expires_in_secs: Option<u64>,
    /// A JSON object returned with the key and on every verified request; at most 32 members
    /// and 4 KiB.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Metadata>,
    /// Client networks (CIDR, IPv4 or IPv6) the key may be used from; omitted: anywhere.
    #[schema(value_type = Option<Vec<String>>)]
    pub allowed_networks: Option<Vec<IpNet>>,
}

async fn create<St: KeyStore, C: Caller>(
    State(api): Shared<St, C>,
    Acting(caller): Acting,
    json: Result<Json<CreateKey>, JsonRejection>,
) -> Result<(StatusCode, Json<NewSecret>), AdminError> {
    let req = body(json)?;
    let scopes = requested_scopes(Some(&req.scopes), req.access)?.ok_or_else(|| {
        AdminError::BadRequest(
            "\"scopes\" must name at least one permission (or set \"access\": \"full\")".into(),
        )
    })?;
    let mut spec = NewKey::new(req.name).scopes(scopes);
    if let Some(secs) = req.expires_in_secs {
        if secs == 0 {
            return Err(AdminError::BadRequest(
                "\"expires_in_secs\" must be at least 1".into(),
            ));
        }
        spec = spec.expires_in(Duration::from_secs(secs));
    }
    if let Some(metadata) = req.metadata {
        spec = spec.metadata(metadata);
    }
    if let Some(networks) = req.allowed_networks {
        spec = spec.allowed_networks(networks);
    }
    let created = api.acting_as(&caller).create_for(&caller, spec).await?;
    let now = api.manager.now();
    Ok((StatusCode::CREATED, Json(NewSecret::of(&created, now))))
}

/// The query of `GET /api-keys`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Keys per page, 1 to 100.
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

async fn list<St: KeyStore, C: Caller>(
    State(api): Shared<St, C>,
    Acting(caller): Acting,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<KeyPage>, AdminError> {
    let Query(query) = query.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    let limit = match query.limit {
        None => api.page_size,
        Some(n @ 1..=MAX_PAGE) => n,
        Some(_) => {
            return Err(AdminError::BadRequest(format!(
                "\"limit\" must be 1 to {MAX_PAGE}"
            )));
        }
    };
    let keys = api.manager.list(caller.org_id()).await?;
    let start = match &query.cursor {
        None => 0,
        Some(cursor) => match keys.iter().position(|k| k.id.as_str() == cursor) {
            Some(at) => at + 1,
            None => return Err(AdminError::BadRequest("unknown \"cursor\"".into())),
        },
    };
    let now = api.manager.now();
    let page: Vec<ApiKeyView> = keys
        .iter()
        .skip(start)
        .take(limit)
        .map(|k| ApiKeyView::of(k, now))
        .collect();
    let has_more = start + page.len() < keys.len();
    let next_cursor = has_more
        .then(|| page.last().map(|k| k.id.clone()))
        .flatten();
    Ok(Json(KeyPage {
        data: page,
        has_more,
        next_cursor,
    }))
}

async fn show<St: KeyStore, C: Caller>(
    State(api): Shared<St, C>,
    Acting(caller): Acting,
    Path(id): Path<String>,
) -> Result<Json<ApiKeyView>, AdminError> {
    let record = api.manager.get(caller.org_id(), &KeyId::from(id)).await?;
    Ok(Json(ApiKeyView::of(&record, api.manager.now())))
}

/// The body of `PATCH /api-keys/{id}`: what changes. At least one member.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    /// The new name, 1 to 128 characters.
    pub name: Option<String>,
    /// The new permissions, each one the caller holds (replaces the old list).
    pub scopes: Option<Vec<String>>,
    /// `full` for every permission (only a caller with full access may grant it).
    pub access: Option<Access>,
    /// `true` switches the key off, `false` on again (a revoked key stays off).
    pub disabled: Option<bool>,
    /// The new metadata object; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// The new client networks (CIDR); `[]`: anywhere.
    #[schema(value_type = Option<Vec<String>>)]
    pub allowed_networks: Option<Vec<IpNet>>,
}

/// A member that is present, `null` included (`Some(Value::Null)`), as opposed to absent.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// The scopes a create or update body asks for: a non-empty list, or `"access": "full"`.
fn requested_scopes(
    scopes: Option<&[String]>,
    access: Option<Access>,
) -> Result<Option<Scopes>, AdminError> {
    let listed = scopes.is_some_and(|s| !s.is_empty());
    match (access, scopes) {
        (Some(Access::Full), _) if listed => Err(AdminError::BadRequest(
            "give either \"access\": \"full\" or a list of scopes, not both".into(),
        )),
        (Some(Access::Full), _) => Ok(Some(Scopes::full_access())),
        (_, Some(list)) if !list.is_empty() => Scopes::parse(list)
            .map(Some)
            .map_err(|e| AdminError::BadRequest(e.to_string())),
        (_, Some(_)) => Err(AdminError::BadRequest(
            "\"scopes\" must name at least one permission (or set \"access\": \"full\")".into(),
        )),
        (_, None) => Ok(None),
    }
}

async fn update<St: KeyStore, C: Caller>(
    State(api): Shared<St, C>,
    Acting(caller): Acting,
    Path(id): Path<String>,
    json: Result<Json<UpdateKey>, JsonRejection>,
) -> Result<Json<ApiKeyView>, AdminError> {
    let req = body(json)?;
    let mut changes = KeyChanges::new();
    changes.scopes = requested_scopes(req.scopes.as_deref(), req.access)?;
    changes.name = req.name;
    changes.disabled = req.disabled;
    changes.allowed_networks = req.allowed_networks;
    changes.metadata = match req.metadata {
        None => None,
        Some(serde_json::Value::Null) => Some(None),
        Some(serde_json::Value::Object(m)) => Some(Some(m)),
        Some(_) => {
            return Err(AdminError::BadRequest(
                "\"metadata\" must be a JSON object or null".into(),
            ));
        }
    };
    if changes.is_empty() {
        return Err(AdminError::BadRequest(
            "nothing to change: give \"name\", \"scopes\", \"access\", \"disabled\", \
             \"metadata\" or \"allowed_networks\""
                .into(),
        ));
    }
    let record = api
        .acting_as(&caller)
        .update_for(&caller, &KeyId::from(id), changes)
        .await?;
    Ok(Json(ApiKeyView::of(&record, api.manager.now())))
}

async fn revoke<St: KeyStore, C: Caller>(
    State(api): Shared<St, C>,
    Acting(caller): Acting,
    Path(id): Path<String>,
) -> Result<Json<ApiKeyView>, AdminError> {
    let record = api
        .acting_as(&caller)
        .revoke(caller.org_id(), &KeyId::from(id))
        .await?;
    Ok(Json(ApiKeyView::of(&record, api.manager.now())))
}

async fn disable<St: KeyStore, C: Caller>(
    state: Shared<St, C>,
    caller: Acting,
    id: Path<String>,
) -> Result<Json<ApiKeyView>, AdminError> {
    set_disabled(state, caller, id, true).await
}

async fn enable<St: KeyStore, C: Caller>(
    state: Shared<St, C>,
    caller: Acting,
    id: Path<String>,
) -> Result<Json<ApiKeyView>, AdminError> {
    set_disabled(state, caller, id, false).await
}

/// Disable or enable any key of the caller's organization, as `DELETE` revokes one: switching
/// a key off or on grants the caller nothing.
async fn set_disabled<St: KeyStore, C: Caller>(
    State(api): Shared<St, C>,
    Acting(caller): Acting,
    Path(id): Path<String>,
    disabled: bool,
) -> Result<Json<ApiKeyView>, AdminError> {
    let (org, id) = (caller.org_id(), KeyId::from(id));
    let manager = api.acting_as(&caller);
    let record = if disabled {
        manager.disable(org, &id).await?
    } else {
        manager.enable(org, &id).await?
    };
    Ok(Json(ApiKeyView::of(&record, api.manager.now())))
}

/// The body of `POST /api-keys/{id}/rotate`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old key keeps working: `now` (the default), `1h`, `24h`, `7d`, any
    /// `<n>s|m|h|d`, or a number of seconds; at most 30 days.
    #[schema(value_type = Option<String>)]
    pub overlap: Option<Overlap>,
}

/// A rotation's overlap as the API accepts it: a duration string or seconds.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Overlap {
    /// Seconds.
    Secs(u64),
    /// `now` or `<n>s|m|h|d`.
    Text(String),
}

impl Overlap {
    /// The duration, or a 400 that says what is accepted.
    fn duration(&self) -> Result<Duration, AdminError> {
        let bad = || {
            AdminError::BadRequest(
                "\"overlap\" must be \"now\", a duration such as \"1h\", \"24h\" or \"7d\", \
                 or seconds, at most 30 days"
                    .into(),
            )
        };
        let d = match self {
            Overlap::Secs(s) => Duration::from_secs(*s),
            Overlap::Text(t) if t == "now" => Duration::ZERO,
            Overlap::Text(t) => {
                let unit = match t.as_bytes().last() {
                    Some(b's') => 1,
                    Some(b'm') => 60,
                    Some(b'h') => 3600,
                    Some(b'd') => 86_400,
                    _ => return Err(bad()),
                };
                let n: u64 = t[..t.len() - 1].parse().map_err(|_| bad())?;
                Duration::from_secs(n.checked_mul(unit).ok_or_else(bad)?)
            }
        };
        if d > MAX_OVERLAP {
            return Err(bad());
        }
        Ok(d)
    }
}

async fn rotate<St: KeyStore, C: Caller>(
    State(api): Shared<St, C>,
    Acting(caller): Acting,
    Path(id): Path<String>,
    json: Result<Json<RotateKey>, JsonRejection>,
) -> Result<(StatusCode, Json<NewSecret>), AdminError> {
    // No body (no JSON content type) rotates at once.
    let req = match json {
        Err(JsonRejection::MissingJsonContentType(_)) => RotateKey::default(),
        json => body(json)?,
    };
    let overlap = match &req.overlap {
        Some(o) => o.duration()?,
        None => Duration::ZERO,
    };
    let rotation = if overlap.is_zero() {
        Rotation::immediate()
    } else {
        Rotation::with_grace(overlap)
    };
    let created = api
        .acting_as(&caller)
        .rotate_for(&caller, &KeyId::from(id), rotation)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewSecret::of(&created, api.manager.now())),
    ))
}

async fn org<St: KeyStore, C: Caller>(
    State(api): Shared<St, C>,
    Acting(caller): Acting,
) -> Result<Json<OrgView>, AdminError> {
    let plan = api.manager.plan(caller.org_id()).await?;
    let quota = plan.quota();
    Ok(Json(OrgView {
        org_id: caller.org_id().to_string(),
        plan: plan.name().to_owned(),
        limits: Limits {
            requests_per_window: quota.requests,
            window_secs: quota.period.as_secs(),
            concurrent_sessions: quota.concurrent_sessions,
        },
    }))
}

/// The query of `GET /org/usage`: Unix seconds and a granularity, each optional.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct UsageQuery {
    /// Start of the range, Unix seconds, included (default: `to` minus one hour of minutes,
    /// one day of hours, or thirty days of days).
    pub from: Option<u64>,
    /// End of the range, Unix seconds, excluded (default: now).
    pub to: Option<u64>,
    /// `minute`, `hour` (default) or `day`.
    #[param(value_type = Option<String>)]
    pub granularity: Option<Granularity>,
}

async fn usage<St: KeyStore, C: Caller>(
    State(api): Shared<St, C>,
    Acting(caller): Acting,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<UsageReport>, AdminError> {
    let Query(query) = query.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    let granularity = query.granularity.unwrap_or(Granularity::Hour);
    let to = query
        .to
        .map_or_else(|| api.manager.now(), Timestamp::from_unix_secs);
    let span = match granularity {
        Granularity::Minute => 3_600,
        Granularity::Hour => 86_400,
        Granularity::Day => 30 * 86_400,
    };
    let from = Timestamp::from_unix_secs(
        query
            .from
            .unwrap_or_else(|| to.as_unix_secs().saturating_sub(span)),
    );
    let report = api
        .manager
        .usage(caller.org_id(), from..to, granularity)
        .await?;
    Ok(Json(report))
}

/// The query of `GET /org/audit`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditLogQuery {
    /// Entries per page, 1 to 100 (default 50).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page: entries older than it.
    pub before: Option<String>,
}

async fn audit<St: KeyStore, C: Caller>(
    State(api): Shared<St, C>,
    Acting(caller): Acting,
    query: Result<Query<AuditLogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditPage>, AdminError> {
    let Query(query) = query.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    let limit = match query.limit {
        None => 50,
        Some(n @ 1..=MAX_PAGE) => n,
        Some(_) => {
            return Err(AdminError::BadRequest(format!(
                "\"limit\" must be 1 to {MAX_PAGE}"
            )));
        }
    };
    // One more than the page, to know whether another follows.
    let mut q = AuditQuery::new().limit(limit + 1);
    if let Some(before) = query.before {
        q = q.before(before);
    }
    let mut entries = api.manager.audit_log(caller.org_id(), &q).await?;
    let has_more = entries.len() > limit;
    entries.truncate(limit);
    let next_cursor = has_more
        .then(|| entries.last().map(|e| e.id.clone()))
        .flatten();
    Ok(Json(AuditPage {
        data: entries.iter().map(AuditEntryView::of).collect(),
        has_more,
        next_cursor,
    }))
}
