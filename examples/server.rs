//! A browser- and sandbox-sessions API on axum, behind tower-api-key.
//!
//! ```text
//! cargo run --example server                 # 127.0.0.1:3000, in-memory store, /dev/seed on
//! cargo run --example server -- --addr 127.0.0.1:8080 --no-dev-seed
//! cargo run --example server -- --scanning-keys github-keys.json   # GitHub's secret-scanning keys
//! cargo run --example server --features sqlite -- --store sqlite://keys.db
//! cargo run --example server --features postgres -- --store postgres://postgres@127.0.0.1/test
//! cargo run --example server --features redis -- --redis redis://127.0.0.1:6379 --redis-fail open
//! cargo run --example server -- --invalid-keys-per-minute 20 --trusted-proxy 10.0.0.0/8
//! WEBHOOK_SECRET=whsec_… cargo run --example server --features webhook -- --webhook-url https://hooks.example.com/api-keys
//! cargo run --example server --features metrics      # GET /metrics, Prometheus text format
//! RUST_LOG=tower_api_key=debug cargo run --example server
//! ```
//!
//! SIGINT and SIGTERM stop it gracefully: no new connections, in-flight requests finish within
//! the drain deadline, then the last-used times still in memory are written, then exit 0.
//!
//! Routes (all under `/v1` need `Authorization: Bearer br_live_…`):
//!
//! | route | scope |
//! |---|---|
//! | `POST /v1/browsers`, `GET` / `DELETE /v1/browsers/{id}` | `browser_sessions:create` / `:read` / `:delete` |
//! | `POST /v1/sandboxes`, `GET` / `DELETE /v1/sandboxes/{id}` | `sandbox_sessions:create` / `:read` / `:delete` |
//! | `POST /v1/sandboxes/{id}/exec` | `sandbox_sessions:exec` |
//! | `GET /v1/usage` (plan, limits, open sessions, today's metered requests) | `org:billing` |
//! | `GET /v1/org/usage?from=&to=&granularity=` (metered requests per key) | `api_keys:manage` |
//! | `POST` / `GET /v1/api-keys`, `DELETE /v1/api-keys/{id}`, `POST /v1/api-keys/{id}/rotate` | `api_keys:manage` |
//! | `GET /healthz`, `POST /dev/seed` | none (no key) |
//! | `GET /metrics` (feature `metrics`; serve it on an internal port in production) | none (no key) |
//! | `POST /security/secret-scanning` (GitHub's signed reports), `POST /credentials/revoke` | none: see `tower_api_key::leaks` |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower_api_key::admin::{AdminApi, NewSecret};
use tower_api_key::client_addr::{ClientAddr, IpNet};
use tower_api_key::dashboard::{CurrentUsage, Dashboard};
use tower_api_key::leaks::{Leaks, ScanningKeys};
use tower_api_key::observe::Observe;
#[cfg(feature = "redis")]
use tower_api_key::rate_limit::OnBackendError;
use tower_api_key::rate_limit::RateLimitBackend;
use tower_api_key::serve::{Server, shutdown_signal};
use tower_api_key::store::store_from_url;
use tower_api_key::{
    ApiKeyAuth, BoxedStore, Granularity, KeyFormats, KeyManager, ManageError, MemorySessions,
    NewKey, OrgId, OrgRateLimit, OrgRateLimitLayer, Plan, Principal, Rejection, ScopeGuard,
    ScopeRules, Scopes, SessionError, SessionLease, SessionQuota, Timestamp,
};
use tower_api_key::{LastUsedRecorder, LastUsedRecorderLayer};

/// How long a session holds its slot of the plan's concurrent-session quota without being read
/// or deleted: a crashed client never leaks a slot for longer than this.
const SESSION_LEASE: Duration = Duration::from_secs(15 * 60);

// ---------------------------------------------------------------------------------------------
// Errors: one problem+json shape for everything the handlers refuse.

struct ApiError {
    status: StatusCode,
    code: &'static str,
    title: String,
    /// A refusal rendered by the library (e.g. the session quota's 429 with `Retry-After`).
    rejection: Option<Rejection>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, title: impl Into<String>) -> Self {
        Self {
            status,
            code,
            title: title.into(),
            rejection: None,
        }
    }
    fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("No such {what}"),
        )
    }
    fn bad_request(title: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", title)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(r) = self.rejection {
            return r.problem_response("api").map(axum::body::Body::from);
        }
        let body = json!({
            "type": "about:blank",
            "title": self.title,
            "status": self.status.as_u16(),
            "code": self.code,
        });
        (
            self.status,
            [("content-type", "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        Self::bad_request(format!("Invalid JSON body: {}", r.body_text()))
    }
}

impl From<ManageError> for ApiError {
    fn from(e: ManageError) -> Self {
        match e {
            ManageError::NotFound => Self::not_found("API key"),
            ManageError::ScopeEscalation => Self::new(
                StatusCode::FORBIDDEN,
                "scope_escalation",
                "An API key can only grant permissions it holds itself",
            ),
            ManageError::Revoked => Self::new(
                StatusCode::CONFLICT,
                "api_key_revoked",
                "The API key is revoked",
            ),
            ManageError::InvalidName
            | ManageError::ExpiryInPast
            | ManageError::LifetimeTooLong { .. }
            | ManageError::Limit(_) => Self::bad_request(e.to_string()),
            other => {
                tracing::error!(error = %other, "key management failed");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Key management is temporarily unavailable",
                )
            }
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e.rejection() {
            Some(r) => Self {
                rejection: Some(r),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "session_limit_exceeded", "")
            },
            None => {
                tracing::error!(error = %e, "session quota failed");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Sessions are temporarily unavailable",
                )
            }
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Parse a JSON body, treating an empty body as `{}`.
fn body<T: for<'de> Deserialize<'de> + Default>(
    json: Result<Json<T>, JsonRejection>,
) -> ApiResult<T> {
    match json {
        Ok(Json(v)) => Ok(v),
        Err(JsonRejection::MissingJsonContentType(_)) => Ok(T::default()),
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// State.

#[derive(Clone, Serialize)]
struct Session {
    id: String,
    #[serde(skip)]
    org_id: OrgId,
    kind: &'static str,
    status: &'static str,
    weight: String,
    created_at: Timestamp,
}

#[derive(Clone)]
struct AppState {
    manager: KeyManager<BoxedStore>,
    recorder: LastUsedRecorderLayer<BoxedStore>,
    quota: SessionQuota<Sessions>,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
}

impl AppState {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 12];
    // The OS RNG failing is not recoverable for an id; fall back to the time for the demo.
    if getrandom::fill(&mut bytes).is_err() {
        bytes[..8].copy_from_slice(&Timestamp::now().as_unix_nanos().to_le_bytes());
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

// ---------------------------------------------------------------------------------------------
// Where the concurrent-session counts live: this process, or Redis shared by every replica.

/// The session backend chosen by `--redis`. With `--redis-fail open`, a Redis failure falls
/// back to this replica's own count instead of answering 503.
#[derive(Clone)]
enum Sessions {
    Memory(MemorySessions),
    #[cfg(feature = "redis")]
    Redis {
        shared: tower_api_key::RedisSessions,
        local: MemorySessions,
        fail_open: bool,
    },
}

/// Runs `$call` on the chosen backend; on a Redis failure under `--redis-fail open`, on the
/// local fallback.
macro_rules! on_backend {
    ($self:ident, |$b:ident| $call:expr) => {
        match $self {
            Sessions::Memory($b) => $call.await,
            #[cfg(feature = "redis")]
            Sessions::Redis { shared, local, fail_open } => {
                let $b = shared;
                match $call.await {
                    Err(SessionError::Unavailable(e)) if *fail_open => {
                        tracing::warn!(error = %e, "Redis sessions failed; counting locally");
                        let $b = local;
                        $call.await
                    }
                    other => other,
                }
            }
        }
    };
}

impl tower_api_key::sessions::SessionBackend for Sessions {
    async fn acquire(
        &self,
        org: &OrgId,
        session: &str,
        limit: u32,
        lease: Duration,
        now: Timestamp,
    ) -> Result<SessionLease, SessionError> {
        on_backend!(self, |b| b.acquire(org, session, limit, lease, now))
    }

    async fn renew(
        &self,
        org: &OrgId,
        session: &str,
        lease: Duration,
        now: Timestamp,
    ) -> Result<SessionLease, SessionError> {
        on_backend!(self, |b| b.renew(org, session, lease, now))
    }

    async fn release(
        &self,
        org: &OrgId,
        session: &str,
        now: Timestamp,
    ) -> Result<bool, SessionError> {
        on_backend!(self, |b| b.release(org, session, now))
    }

    async fn active(&self, org: &OrgId, now: Timestamp) -> Result<u32, SessionError> {
        on_backend!(self, |b| b.active(org, now))
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions (browsers and sandboxes): visible to their own organization only.

#[derive(Deserialize, Default)]
struct CreateSession {
    weight: Option<String>,
}

async fn create_session(
    state: &AppState,
    principal: &Principal,
    kind: &'static str,
    req: CreateSession,
) -> ApiResult<(StatusCode, Json<Session>)> {
    let weight = req.weight.unwrap_or_else(|| "light".to_owned());
    if !matches!(weight.as_str(), "light" | "medium" | "heavy") {
        return Err(ApiError::bad_request(
            "weight must be one of light, medium, heavy",
        ));
    }
    let id = random_id(if kind == "browser" { "brs_" } else { "sbx_" });
    // Counts against the plan's concurrent sessions (Free 10, Paid 100): 429 past it.
    state.quota.acquire(principal, &id, SESSION_LEASE).await?;
    let session = Session {
        id,
        org_id: principal.org_id().clone(),
        kind,
        status: "running",
        weight,
        created_at: Timestamp::now(),
    };
    state.sessions().insert(session.id.clone(), session.clone());
    Ok((StatusCode::CREATED, Json(session)))
}

fn own_session(
    state: &AppState,
    principal: &Principal,
    kind: &str,
    id: &str,
) -> ApiResult<Session> {
    state
        .sessions()
        .get(id)
        .filter(|s| &s.org_id == principal.org_id() && s.kind == kind)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&format!("{kind} session")))
}

/// Read a session: renews its lease, and forgets it if the lease already ran out.
async fn read_session(
    state: &AppState,
    principal: &Principal,
    kind: &str,
    id: &str,
) -> ApiResult<Session> {
    let session = own_session(state, principal, kind, id)?;
    match state
        .quota
        .renew(principal.org_id(), id, SESSION_LEASE)
        .await
    {
        Ok(_) => Ok(session),
        Err(SessionError::NotHeld) => {
            state.sessions().remove(id);
            Err(ApiError::not_found(&format!("{kind} session")))
        }
        Err(e) => Err(e.into()),
    }
}

async fn create_browser(
    State(state): State<AppState>,
    principal: Principal,
    json: Result<Json<CreateSession>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Session>)> {
    create_session(&state, &principal, "browser", body(json)?).await
}

async fn get_browser(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Session>> {
    read_session(&state, &principal, "browser", &id)
        .await
        .map(Json)
}

async fn delete_session(
    state: &AppState,
    principal: &Principal,
    kind: &str,
    id: &str,
) -> ApiResult<StatusCode> {
    own_session(state, principal, kind, id)?;
    state.sessions().remove(id);
    // Frees the slot; a session whose lease already expired has nothing to free.
    let _ = state.quota.release(principal.org_id(), id).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_browser(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    delete_session(&state, &principal, "browser", &id).await
}

async fn create_sandbox(
    State(state): State<AppState>,
    principal: Principal,
    json: Result<Json<CreateSession>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Session>)> {
    create_session(&state, &principal, "sandbox", body(json)?).await
}

async fn get_sandbox(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Session>> {
    read_session(&state, &principal, "sandbox", &id)
        .await
        .map(Json)
}

async fn delete_sandbox(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    delete_session(&state, &principal, "sandbox", &id).await
}

/// The code to run: `code` (what the SDK sends) or `command`.
#[derive(Deserialize, Default)]
struct Exec {
    code: Option<String>,
    command: Option<String>,
}

async fn exec_sandbox(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    json: Result<Json<Exec>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let exec = body(json)?;
    own_session(&state, &principal, "sandbox", &id)?;
    let command = exec
        .code
        .or(exec.command)
        .ok_or_else(|| ApiError::bad_request("code (or command) is required"))?;
    Ok(Json(
        json!({ "sandbox_id": id, "exit_code": 0, "stdout": command }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Usage.

/// The plan, its limits, open sessions and today's metered requests (by hour and by key, as
/// the recorder's flusher wrote them: up to one flush interval behind).
async fn usage(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<serde_json::Value>> {
    let now = state.manager.now();
    let today = Granularity::Day.bucket(now)..now.saturating_add(Duration::from_secs(1));
    let report = state
        .manager
        .usage(principal.org_id(), today, Granularity::Hour)
        .await?;
    let open = state.quota.active(principal.org_id()).await.unwrap_or(0);
    let quota = principal.plan().quota();
    Ok(Json(json!({
        "org_id": principal.org_id(),
        "plan": principal.plan().name(),
        "requests": report.total.requests(),
        "limits": {
            "requests_per_window": quota.requests,
            "window_secs": quota.period.as_secs(),
            "concurrent_sessions": quota.concurrent_sessions,
        },
        "open_sessions": open,
        "today": report,
    })))
}

// ---------------------------------------------------------------------------------------------
// Key management is tower_api_key::admin, nested at /v1 (see `app`).

fn parse_scopes(scopes: &[String]) -> ApiResult<Scopes> {
    Scopes::parse(scopes).map_err(|e| ApiError::bad_request(e.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Development seed endpoint.

#[derive(Deserialize, Default)]
struct Seed {
    org_id: Option<String>,
    plan: Option<Plan>,
    #[serde(default)]
    scopes: Vec<String>,
    expires_in_secs: Option<u64>,
    name: Option<String>,
}

async fn dev_seed(
    State(state): State<AppState>,
    json: Result<Json<Seed>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let seed = body(json)?;
    let org = OrgId::from(seed.org_id.unwrap_or_else(|| random_id("org_")));
    if org.as_str().is_empty() || org.as_str().len() > 128 {
        return Err(ApiError::bad_request("org_id must be 1 to 128 characters"));
    }
    if let Some(plan) = seed.plan {
        state.manager.set_plan(&org, plan).await?;
    }
    let mut spec = NewKey::new(seed.name.unwrap_or_else(|| "dev seed".to_owned()))
        .scopes(parse_scopes(&seed.scopes)?);
    if let Some(secs) = seed.expires_in_secs {
        spec = spec.expires_in(Duration::from_secs(secs));
    }
    let created = state.manager.create(&org, spec).await?;
    let plan = state.manager.plan(&org).await?;
    // The admin API's envelope for a new secret, plus the organization it was made for.
    let mut answer = json!(NewSecret::of(&created, state.manager.now()));
    answer["org_id"] = json!(org);
    answer["plan"] = json!(plan);
    Ok((StatusCode::CREATED, Json(answer)))
}

// ---------------------------------------------------------------------------------------------
// Wiring.

struct Options {
    addr: SocketAddr,
    dev_seed: bool,
    store: String,
    flush_interval: Duration,
    redis: Option<String>,
    redis_fail_open: bool,
    scanning_keys: Option<String>,
    server: Server,
    invalid_keys_per_minute: u32,
    trusted_proxies: Vec<IpNet>,
    webhook_url: Option<String>,
    webhook_secret: Option<String>,
}

/// What the request path reports, and to whom: the brute-force guard, the proxies whose
/// forwarding headers name the client, the signals observer, the metrics endpoint.
struct Observability {
    invalid_keys_per_minute: u32,
    trusted_proxies: Vec<IpNet>,
    observe: Option<Observe>,
    /// Where leaked keys are reported too.
    #[cfg(feature = "events")]
    events: tower_api_key::events::Events,
    /// The recent events the dashboard lists as Alerts.
    #[cfg(feature = "events")]
    recent: tower_api_key::events::RecentEvents,
    #[cfg(feature = "metrics")]
    metrics: Option<(
        metrics_exporter_prometheus::PrometheusHandle,
        tower_api_key::telemetry::Telemetry,
    )>,
}

const USAGE: &str = "usage: server [--addr HOST:PORT] [--store URL] [--redis URL [--redis-fail open|closed]]
              [--no-dev-seed] [--scanning-keys FILE] [--flush-interval-ms N] [--drain-deadline-ms N]
              [--header-read-timeout-ms N] [--idle-timeout-ms N] [--invalid-keys-per-minute N]
              [--trusted-proxy CIDR]... [--webhook-url URL [--webhook-secret whsec_…]]

  --addr                    where to listen (default 127.0.0.1:3000; port 0 picks a free one)
  --store                   memory:// (default), sqlite://FILE (feature sqlite), postgres://… (feature postgres)
  --redis                   rate limits and session counts in Redis, shared by replicas (feature redis)
  --redis-fail              when Redis fails: closed (503, default) or open (count on this replica)
  --no-dev-seed             turn off POST /dev/seed
  --scanning-keys           GitHub's secret-scanning public keys, the JSON of its
                            meta/public_keys/secret_scanning API, saved to FILE (without it,
                            POST /security/secret-scanning refuses every report: no key to check it)
  --flush-interval-ms       how often last-used times are written to the store (default 5000)
  --drain-deadline-ms       how long a shutdown waits for in-flight requests (default 10000)
  --header-read-timeout-ms  how long a client may take to send a request head (default 10000)
  --idle-timeout-ms         how long a connection may stay silent (default 60000)
  --invalid-keys-per-minute invalid keys a client address may send per minute before it is
                            refused with 429 too_many_invalid_keys (default 20; 0: no limit)
  --trusted-proxy           a reverse proxy (CIDR) whose Forwarded / X-Forwarded-For names the
                            client; repeatable (default: none, the TCP peer is the client)
  --webhook-url             POST events (key changes with who made them, usage thresholds,
                            invalid-key bursts, dead keys, leaked keys) there, signed (feature
                            webhook)
  --webhook-secret          the whsec_… signing secret (default: env WEBHOOK_SECRET)";

fn millis(args: &mut impl Iterator<Item = String>, flag: &str) -> Result<Duration, String> {
    let v = args
        .next()
        .ok_or_else(|| format!("{flag} needs a number of milliseconds"))?;
    let ms: u64 = v.parse().map_err(|e| format!("bad {flag} {v:?}: {e}"))?;
    Ok(Duration::from_millis(ms.max(1)))
}

fn options() -> Result<Options, String> {
    let mut opts = Options {
        addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
        dev_seed: true,
        store: "memory://".to_owned(),
        flush_interval: Duration::from_secs(5),
        redis: None,
        redis_fail_open: false,
        scanning_keys: None,
        server: Server::new(),
        invalid_keys_per_minute: 20,
        trusted_proxies: Vec::new(),
        webhook_url: None,
        webhook_secret: std::env::var("WEBHOOK_SECRET").ok(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => {
                let v = args
                    .next()
                    .ok_or("--addr needs a value, e.g. 127.0.0.1:3000")?;
                opts.addr = v.parse().map_err(|e| format!("bad --addr {v:?}: {e}"))?;
            }
            "--no-dev-seed" => opts.dev_seed = false,
            "--scanning-keys" => {
                opts.scanning_keys = Some(args.next().ok_or(
                    "--scanning-keys needs a file holding GitHub's secret-scanning public keys",
                )?);
            }
            "--store" => {
                opts.store = args
                    .next()
                    .ok_or("--store needs a URL: memory://, sqlite://FILE, postgres://…")?;
            }
            "--flush-interval-ms" => opts.flush_interval = millis(&mut args, &arg)?,
            "--drain-deadline-ms" => {
                opts.server = opts.server.drain_deadline(millis(&mut args, &arg)?);
            }
            "--header-read-timeout-ms" => {
                opts.server = opts.server.header_read_timeout(millis(&mut args, &arg)?);
            }
            "--idle-timeout-ms" => opts.server = opts.server.idle_timeout(millis(&mut args, &arg)?),
            "--redis" => {
                opts.redis = Some(
                    args.next()
                        .ok_or("--redis needs a URL, e.g. redis://127.0.0.1:6379")?,
                );
            }
            "--redis-fail" => match args.next().as_deref() {
                Some("open") => opts.redis_fail_open = true,
                Some("closed") => opts.redis_fail_open = false,
                _ => return Err("--redis-fail needs open or closed".to_owned()),
            },
            "--invalid-keys-per-minute" => {
                let v = args
                    .next()
                    .ok_or("--invalid-keys-per-minute needs a number")?;
                opts.invalid_keys_per_minute = v
                    .parse()
                    .map_err(|e| format!("bad --invalid-keys-per-minute {v:?}: {e}"))?;
            }
            "--trusted-proxy" => {
                let v = args
                    .next()
                    .ok_or("--trusted-proxy needs a CIDR, e.g. 10.0.0.0/8")?;
                let net = v
                    .parse::<IpNet>()
                    .or_else(|_| v.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|e| format!("bad --trusted-proxy {v:?}: {e}"))?;
                opts.trusted_proxies.push(net);
            }
            "--webhook-url" => {
                opts.webhook_url = Some(args.next().ok_or("--webhook-url needs a URL")?);
            }
            "--webhook-secret" => {
                opts.webhook_secret = Some(
                    args.next()
                        .ok_or("--webhook-secret needs a whsec_… secret")?,
                );
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    Ok(opts)
}

fn app<B: RateLimitBackend>(
    state: AppState,
    with_dev_seed: bool,
    limit: OrgRateLimitLayer<B>,
    scanning_keys: ScanningKeys,
    observability: Observability,
) -> Router {
    let store = state.manager.store().clone();
    // Each route's scope, checked inside the one-service stack below (a per-route
    // `route_layer(ScopeGuard::require(..))` does the same, at the cost of a boxed service and
    // future per request in axum). Every route of `api` has a rule; requests to other paths
    // go on to the router's 404.
    let scopes = ScopeRules::new()
        .route(Method::POST, "/v1/browsers", "browser_sessions:create")
        .route(Method::GET, "/v1/browsers/{id}", "browser_sessions:read")
        .route(
            Method::DELETE,
            "/v1/browsers/{id}",
            "browser_sessions:delete",
        )
        .route(Method::POST, "/v1/sandboxes", "sandbox_sessions:create")
        .route(Method::GET, "/v1/sandboxes/{id}", "sandbox_sessions:read")
        .route(
            Method::DELETE,
            "/v1/sandboxes/{id}",
            "sandbox_sessions:delete",
        )
        .route(
            Method::POST,
            "/v1/sandboxes/{id}/exec",
            "sandbox_sessions:exec",
        )
        .route(Method::GET, "/v1/usage", "org:billing")
        .route(Method::POST, "/v1/api-keys", "api_keys:manage")
        .route(Method::GET, "/v1/api-keys", "api_keys:manage")
        .route(Method::GET, "/v1/api-keys/{id}", "api_keys:manage")
        .route(Method::PATCH, "/v1/api-keys/{id}", "api_keys:manage")
        .route(Method::DELETE, "/v1/api-keys/{id}", "api_keys:manage")
        .route(Method::POST, "/v1/api-keys/{id}/rotate", "api_keys:manage")
        .route(Method::GET, "/v1/org", "api_keys:manage")
        .route(Method::GET, "/v1/org/usage", "api_keys:manage")
        .route(Method::GET, "/v1/openapi.json", "api_keys:manage")
        .allow_unmatched();
    // The whole stack as one service: ApiKeyAuth, the org's rate limit (the X-RateLimit-* trio
    // and the IETF RateLimit-Policy / RateLimit fields), last-used marks and the scope rules
    // (see `tower_api_key::stack`).
    // Behind your own proxies, the client is the address they forwarded; the brute-force guard
    // (and keys restricted to client networks) read it.
    let mut auth = ApiKeyAuth::new(store)
        .client_addr(ClientAddr::trusted_proxies(observability.trusted_proxies));
    if observability.invalid_keys_per_minute > 0 {
        auth = auth.invalid_key_limit(
            observability.invalid_keys_per_minute,
            Duration::from_secs(60),
        );
    }
    let mut stack = auth
        .rate_limit(limit.draft_headers(true))
        .record_last_used(state.recorder.clone())
        .scope_guard(ScopeGuard::rules(scopes));
    // Usage thresholds, invalid-key bursts and dead keys, as events (the dashboard's Alerts,
    // and `--webhook-url`).
    if let Some(observe) = observability.observe {
        stack = stack.observe(observe);
    }
    #[cfg(feature = "metrics")]
    let metrics = observability.metrics.map(|(handle, telemetry)| {
        let telemetry = telemetry.stack(&stack);
        move || async move {
            telemetry.publish();
            (
                [("content-type", "text/plain; version=0.0.4")],
                handle.render(),
            )
        }
    });
    let api = Router::new()
        .route("/v1/browsers", post(create_browser))
        .route("/v1/browsers/{id}", get(get_browser).delete(delete_browser))
        .route("/v1/sandboxes", post(create_sandbox))
        .route(
            "/v1/sandboxes/{id}",
            get(get_sandbox).delete(delete_sandbox),
        )
        .route("/v1/sandboxes/{id}/exec", post(exec_sandbox))
        .route("/v1/usage", get(usage))
        // /v1/api-keys…, /v1/org and /v1/openapi.json: the library's admin API.
        .nest("/v1", AdminApi::new(state.manager.clone()).router())
        .fallback(|| async { ApiError::not_found("route") })
        // One `.layer` call: axum boxes every `Router::layer` separately.
        .layer(stack);

    let mut open = Router::new().route("/healthz", get(|| async { Json(json!({"status": "ok"})) }));
    if with_dev_seed {
        open = open.route("/dev/seed", post(dev_seed));
    }
    #[cfg(feature = "metrics")]
    if let Some(metrics) = metrics {
        open = open.route("/metrics", get(metrics));
    }
    // Leaked keys: GitHub's secret scanning reports keys found in public code (signed with the
    // keys of `--scanning-keys`), and anyone who finds one can revoke it. Either way the key is
    // revoked at once on every replica, and reported (the `key_leaked` event, and this hook).
    let leaks = Leaks::new(state.manager.clone()).on_leak(|leak| {
        tracing::info!(
            key_id = %leak.key_id, org_id = %leak.org_id,
            "a leaked key was revoked: tell the organization's owners where it was found"
        );
    });
    #[cfg(feature = "events")]
    let leaks = leaks.events(observability.events);
    let open = open
        .route(
            "/security/secret-scanning",
            leaks.secret_scanning(scanning_keys).route(),
        )
        .route("/credentials/revoke", leaks.public_revoke().route());
    // People manage keys in the dashboard: sign in with a key holding `api_keys:manage`. Plain
    // HTTP on localhost here; behind TLS, keep `secure_cookies` on (the default).
    let quota = state.quota.clone();
    let dashboard = Dashboard::new(state.manager.clone())
        .secure_cookies(false)
        // The Usage page's current use: the organization's open sessions (shared with Redis).
        .usage(move |org| {
            let quota = quota.clone();
            async move {
                CurrentUsage {
                    requests: None,
                    open_sessions: quota.active(&org).await.ok(),
                }
            }
        });
    // The Activity page lists the organization's alerts (usage thresholds, dead and leaked keys).
    #[cfg(feature = "events")]
    let dashboard = dashboard.events(observability.recent);
    let open = open.nest("/dashboard", dashboard.router());
    // The routes outside the stack refuse a key in the URL as the stack does: a key that went
    // into a URL is in some log by now, whichever route it was sent to.
    let open = open.route_layer(axum::middleware::from_fn_with_state(
        state.manager.key_formats().clone(),
        refuse_key_in_query,
    ));
    open.merge(api).with_state(state)
}

async fn refuse_key_in_query(
    State(formats): State<KeyFormats>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if tower_api_key::auth::key_in_query(req.uri(), &formats) {
        return Rejection::KeyInQuery
            .problem_response("api")
            .map(axum::body::Body::from);
    }
    next.run(req).await
}

/// The rate limiter and session backend: in this process, or in Redis with `--redis`.
async fn limits(opts: &Options) -> Result<(Option<Limiter>, Sessions), String> {
    let Some(url) = &opts.redis else {
        return Ok((None, Sessions::Memory(MemorySessions::new())));
    };
    #[cfg(feature = "redis")]
    {
        let limiter = tower_api_key::RedisRateLimiter::connect(url)
            .await
            .map_err(|e| format!("cannot connect to Redis: {e}"))?;
        let shared = tower_api_key::RedisSessions::new(limiter.connection().clone());
        let sessions = Sessions::Redis {
            shared,
            local: MemorySessions::new(),
            fail_open: opts.redis_fail_open,
        };
        Ok((Some(limiter), sessions))
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = url;
        Err("--redis needs the example built with --features redis".to_owned())
    }
}

#[cfg(feature = "redis")]
type Limiter = tower_api_key::RedisRateLimiter;
#[cfg(not(feature = "redis"))]
type Limiter = std::convert::Infallible;

/// The events pipeline (feature `events`): every event is kept for the dashboard's Alerts
/// and, with `--webhook-url`, POSTed to the webhook; the signals observer, its dead-key
/// flusher, and the delivery to drain at shutdown.
#[cfg(feature = "events")]
struct Signalling {
    events: tower_api_key::events::Events,
    recent: tower_api_key::events::RecentEvents,
    signals: tower_api_key::events::Signals,
    flusher: tokio::task::JoinHandle<()>,
    delivery: tower_api_key::events::Delivery,
}

#[cfg(feature = "events")]
impl Signalling {
    fn start(opts: &Options) -> Result<Self, String> {
        use tower_api_key::events::{Events, RecentEvents};
        // The latest 100 events of each organization, in memory: what the dashboard lists.
        let recent = RecentEvents::new(100);
        let mut builder = Events::builder().sink(recent.clone());
        if let Some(webhook) = webhook_sink(opts)? {
            builder = builder.sink(webhook);
        }
        let (events, delivery) = builder.start();
        let signals = events.signals();
        // Dead keys presented are counted per key and reported once per flush interval.
        let flusher = signals.spawn_flusher(opts.flush_interval);
        Ok(Self {
            events,
            recent,
            signals,
            flusher,
            delivery,
        })
    }

    /// The observer the auth, limit and session layers report to.
    fn observe(&self) -> Option<Observe> {
        Some(Observe::from(&self.signals))
    }

    /// Report the dead keys still counted, then deliver what is queued (at most 5 s).
    async fn shutdown(self) {
        self.flusher.abort();
        self.signals.flush();
        if !self.delivery.shutdown(Duration::from_secs(5)).await {
            eprintln!("some events were not delivered before the deadline");
        }
    }
}

/// Without feature `events`: no pipeline, and `--webhook-url` is refused.
#[cfg(not(feature = "events"))]
struct Signalling;

#[cfg(not(feature = "events"))]
impl Signalling {
    fn start(opts: &Options) -> Result<Self, String> {
        match opts.webhook_url {
            Some(_) => {
                Err("--webhook-url needs the example built with --features webhook".to_owned())
            }
            None => Ok(Self),
        }
    }

    fn observe(&self) -> Option<Observe> {
        None
    }

    async fn shutdown(self) {}
}

/// The `--webhook-url` sink, signed with `--webhook-secret`.
#[cfg(feature = "webhook")]
fn webhook_sink(opts: &Options) -> Result<Option<tower_api_key::events::BoxedSink>, String> {
    use tower_api_key::events::{BoxedSink, webhook::WebhookSink};
    let Some(url) = &opts.webhook_url else {
        return Ok(None);
    };
    let secret = opts
        .webhook_secret
        .as_deref()
        .ok_or("--webhook-url needs --webhook-secret or WEBHOOK_SECRET")?;
    let sink =
        WebhookSink::new(url, secret).map_err(|e| format!("bad --webhook-url or secret: {e}"))?;
    Ok(Some(BoxedSink::new(sink)))
}

#[cfg(all(feature = "events", not(feature = "webhook")))]
fn webhook_sink(opts: &Options) -> Result<Option<tower_api_key::events::BoxedSink>, String> {
    match opts.webhook_url {
        Some(_) => Err("--webhook-url needs the example built with --features webhook".to_owned()),
        None => Ok(None),
    }
}

/// The Prometheus recorder and what `/metrics` publishes before each scrape (the stack is
/// added in `app`).
#[cfg(feature = "metrics")]
fn prometheus(
    state: &AppState,
    signals: &Signalling,
) -> (
    metrics_exporter_prometheus::PrometheusHandle,
    tower_api_key::telemetry::Telemetry,
) {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    use tower_api_key::telemetry::{LOOKUP_BUCKETS, Telemetry};
    let builder = PrometheusBuilder::new().set_buckets_for_metric(
        Matcher::Full("tower_api_key_store_lookup_duration_seconds".into()),
        LOOKUP_BUCKETS,
    );
    // Fixed, non-empty buckets: this cannot fail; fall back to summaries if it ever did.
    let recorder = builder
        .unwrap_or_else(|_| PrometheusBuilder::new())
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        eprintln!("a metrics recorder was already installed; /metrics shows only its own");
    }
    let telemetry = Telemetry::new()
        .sessions(&state.quota)
        .last_used(&state.recorder);
    #[cfg(feature = "events")]
    let telemetry = telemetry.events(&signals.events);
    #[cfg(not(feature = "events"))]
    let _ = signals;
    (handle, telemetry)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_api_key=info".into()),
        )
        .init();
    let opts = match options() {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let store = match store_from_url(&opts.store).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot open store {:?}: {e}", opts.store);
            std::process::exit(1);
        }
    };
    let (limiter, sessions) = match limits(&opts).await {
        Ok(l) => l,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(1);
        }
    };
    let scanning_keys = match &opts.scanning_keys {
        None => ScanningKeys::default(),
        Some(path) => match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|json| ScanningKeys::from_github_json(&json).map_err(|e| e.to_string()))
        {
            Ok(keys) => keys,
            Err(e) => {
                eprintln!("cannot read --scanning-keys {path:?}: {e}");
                std::process::exit(1);
            }
        },
    };
    // Last-used times and usage per key (accepted, rate limited, scope, session quota), written
    // by one flusher; `/v1/usage` and the dashboard read them back.
    let recorder = LastUsedRecorder::new(store.clone()).meter_usage(true);
    let flusher = recorder.spawn_flusher(opts.flush_interval);
    let mut quota = SessionQuota::with_backend(sessions);
    // Events (feature events): signals, leaked keys and key changes, listed on the dashboard's
    // Activity page and, with `--webhook-url` (feature webhook), POSTed there, signed.
    let signals = match Signalling::start(&opts) {
        Ok(s) => s,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let observe = signals.observe();
    if let Some(observe) = &observe {
        quota = quota.observe(observe.clone());
    }
    // Key created / revoked / rotated / changed and plan changes, with who did it (the audit
    // log), become events too (for the webhook; the dashboard shows them from the audit log).
    #[cfg_attr(not(feature = "events"), allow(unused_mut))]
    let mut manager = KeyManager::new(store);
    #[cfg(feature = "events")]
    {
        manager = manager.on_audit(signals.events.on_audit());
    }
    let state = AppState {
        manager,
        recorder,
        quota,
        sessions: Arc::default(),
    };
    let observability = Observability {
        invalid_keys_per_minute: opts.invalid_keys_per_minute,
        trusted_proxies: opts.trusted_proxies.clone(),
        observe,
        #[cfg(feature = "events")]
        events: signals.events.clone(),
        #[cfg(feature = "events")]
        recent: signals.recent.clone(),
        #[cfg(feature = "metrics")]
        metrics: Some(prometheus(&state, &signals)),
    };
    let listener = match tokio::net::TcpListener::bind(opts.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", opts.addr);
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr().unwrap_or(opts.addr);
    println!("listening on http://{addr}");
    println!("dashboard:   http://{addr}/dashboard (sign in with a key holding api_keys:manage)");
    if opts.dev_seed {
        println!(
            "mint a key:  curl -s -X POST http://{addr}/dev/seed -H 'content-type: application/json' -d '{{\"scopes\":[\"browser_sessions:create\",\"browser_sessions:read\"]}}'"
        );
    }
    let app = match limiter {
        #[cfg(feature = "redis")]
        Some(limiter) => {
            let on_error = if opts.redis_fail_open {
                OnBackendError::FailOpen
            } else {
                OnBackendError::FailClosed
            };
            let limit = OrgRateLimit::with_backend(limiter).on_backend_error(on_error);
            app(state, opts.dev_seed, limit, scanning_keys, observability)
        }
        // Without `redis`, `Limiter` has no values: this arm is the only one.
        _ => app(
            state,
            opts.dev_seed,
            OrgRateLimit::new(),
            scanning_keys,
            observability,
        ),
    };
    // Until SIGINT or SIGTERM; then in-flight requests get the drain deadline to finish.
    let served = opts.server.serve(listener, app, shutdown_signal()).await;
    // Nothing lost: every request answered before the shutdown has its last-used time written.
    if let Err(e) = flusher.shutdown().await {
        eprintln!("could not flush last-used times: {e}");
        std::process::exit(1);
    }
    signals.shutdown().await;
    match served {
        Ok(served) => tracing::info!("{served}"),
        Err(e) => {
            eprintln!("server error: {e}");
            std::process::exit(1);
        }
    }
}
