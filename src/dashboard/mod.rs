//! The key-management dashboard (feature `dashboard`): server-rendered pages where a person signs
//! in with a management API key, lists the organization's keys, creates a key with chosen
//! permissions (its secret shown once), rotates and revokes keys, and reads the plan's limits.
//!
//! ```
//! use axum::Router;
//! use tower_api_key::dashboard::Dashboard;
//! use tower_api_key::{KeyManager, MemoryStore};
//!
//! let manager = KeyManager::new(MemoryStore::new());
//! let app: Router = Router::new().nest(
//!     "/dashboard",
//!     // Behind TLS keep the default, Secure cookies; plain HTTP on loopback needs `false`.
//!     Dashboard::new(manager).secure_cookies(false).router(),
//! );
//! ```
//!
//! | page | what it does |
//! |---|---|
//! | `GET /sign-in`, `POST /sign-in`, `POST /sign-out` | sign in by pasting a key that holds `api_keys:manage` |
//! | `GET /` | **API Keys**: name, hint, permissions, created, expires, last used, status |
//! | `GET /keys/new`, `POST /keys` | the create form; the answer shows the secret once |
//! | `GET`, `POST /keys/{id}/rotate` | choose the old key's overlap; the answer shows the new secret once |
//! | `GET`, `POST /keys/{id}/revoke` | a confirmation that says revocation is permanent |
//! | `GET /usage` | the plan, its limits, current use if the host reports it ([`Dashboard::usage`]), the credit balance, refill and next refill ([`Dashboard::credits`]), and a chart of the last 24 hours of metered requests ([`KeyManager::usage`](crate::KeyManager::usage)) |
//! | `GET /activity` | the organization's recent alerts ([`Dashboard::events`]: usage thresholds, revoked keys still in use, leaked and expiring keys), then its audit log, newest first: who (key, user or system) did what to which key, and when |
//! | `GET /assets/dashboard.css`, `/assets/dashboard.js`, `/assets/favicon.svg` | the only assets; nothing is loaded from elsewhere |
//!
//! What it guarantees:
//!
//! - **The session never holds a secret.** Sign-in checks the pasted key once (format, lookup
//!   by hash, active, `api_keys:manage`) and the session keeps only its id and organization.
//!   Every request rebuilds the [`Principal`](crate::Principal) from the store, so revoking the
//!   key signed in with signs its user out. The cookie is `HttpOnly`, `SameSite=Strict` and
//!   (unless [`secure_cookies(false)`](Dashboard::secure_cookies)) `Secure`.
//! - **A secret is shown once.** Only on the answer to the form that created it, with
//!   `Cache-Control: no-store` (as every page has); never in a URL, a redirect or the session.
//!   A resubmitted create or rotate form (reload, back button) creates nothing.
//! - **Every state-changing form carries the session's CSRF token** (32 random bytes, compared
//!   in constant time); without it the answer is `403` and nothing changes.
//! - **Nothing runs inline.** Each answer has a `Content-Security-Policy` without
//!   `unsafe-inline` ([`CONTENT_SECURITY_POLICY`]).
//! - **A user never grants more than their key holds**: other permissions are disabled in the
//!   form, and the [`KeyManager`] refuses them anyway.

mod catalogue;
mod error;
mod handlers;
mod pages;
mod session;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{OriginalUri, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use tower_sessions::cookie::SameSite;
use tower_sessions::cookie::time;
use tower_sessions::{Expiry, SessionManagerLayer, SessionStore};

pub use catalogue::{ScopeCatalogue, ScopeInfo};
pub use error::DashboardError;

use crate::admin::credits::SharedCredits;
use crate::credits::{CreditBackend, Credits};
use crate::ids::OrgId;
use crate::manage::KeyManager;
use crate::store::KeyStore;

/// The `Content-Security-Policy` of every dashboard answer: only the dashboard's own stylesheet
/// and script, no inline code, forms posting only to the dashboard, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; \
     script-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The session cookie's name: distinct, so the dashboard's session never collides with a host
/// cookie called `id` (tower-sessions' default).
pub const COOKIE_NAME: &str = "api_dashboard_session";

/// The expiration choices of the create form: value, label, lifetime (`None`: never expires).
const EXPIRATIONS: [(&str, &str, Option<Duration>); 4] = [
    ("never", "Never", None),
    ("30d", "30 days", Some(Duration::from_secs(30 * 86_400))),
    ("90d", "90 days", Some(Duration::from_secs(90 * 86_400))),
    ("1y", "1 year", Some(Duration::from_secs(365 * 86_400))),
];

/// The overlap choices of the rotate form: value, label, how long the old key keeps working.
const OVERLAPS: [(&str, &str, Duration); 4] = [
    ("now", "Now (revoke the old key at once)", Duration::ZERO),
    ("1h", "In 1 hour", Duration::from_secs(3600)),
    ("24h", "In 24 hours", Duration::from_secs(24 * 3600)),
    ("7d", "In 7 days", Duration::from_secs(7 * 86_400)),
];

/// An organization's current use, as the host counts it, for the Usage page (see
/// [`Dashboard::usage`]): the limits alone do not tell a person how close they are. Either part
/// may be unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CurrentUsage {
    /// Requests counted in the current window.
    pub requests: Option<u64>,
    /// Sessions open now.
    pub open_sessions: Option<u32>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type UsageFn = Arc<dyn Fn(OrgId) -> BoxFuture<CurrentUsage> + Send + Sync>;

/// The dashboard over a [`KeyManager`]; configure it, then mount [`router`](Self::router).
///
/// `Ss` is where sessions live: a tower-sessions [`MemoryStore`](tower_sessions::MemoryStore)
/// by default (one process; a restart signs everyone out), or the host's own
/// [`SessionStore`] through [`session_store`](Self::session_store), so that replicas share
/// sign-ins.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::dashboard::{Dashboard, ScopeCatalogue};
/// use tower_api_key::{KeyManager, MemoryStore};
///
/// let catalogue = ScopeCatalogue::empty()
///     .scope("reports:read", "Read reports")?
///     .scope("api_keys:manage", "Create, rotate and revoke API keys")?;
/// let router: axum::Router = Dashboard::new(KeyManager::new(MemoryStore::new()))
///     .scopes(catalogue)
///     .session_store(tower_sessions::MemoryStore::default())
///     .session_ttl(Duration::from_secs(3600))
///     .router();
/// # Ok::<(), tower_api_key::InvalidScope>(())
/// ```
pub struct Dashboard<St, Ss = tower_sessions::MemoryStore> {
    manager: KeyManager<St>,
    sessions: Ss,
    catalogue: ScopeCatalogue,
    secure_cookies: bool,
    session_ttl: Duration,
    usage: Option<UsageFn>,
    credits: Option<SharedCredits>,
    #[cfg(feature = "events")]
    recent: Option<crate::events::RecentEvents>,
}

impl<St, Ss: std::fmt::Debug> std::fmt::Debug for Dashboard<St, Ss> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("sessions", &self.sessions)
            .field("catalogue", &self.catalogue)
            .field("secure_cookies", &self.secure_cookies)
            .field("session_ttl", &self.session_ttl)
            .field("usage", &self.usage.is_some())
            .field("credits", &self.credits.is_some())
            .field("events", &self.recent_configured())
            .finish_non_exhaustive()
    }
}

impl<St: KeyStore> Dashboard<St> {
    /// A dashboard over `manager` with in-memory sessions, the default [`ScopeCatalogue`],
    /// `Secure` cookies and sessions that end after 8 idle hours.
    pub fn new(manager: KeyManager<St>) -> Self {
        Self {
            manager,
            sessions: tower_sessions::MemoryStore::default(),
            catalogue: ScopeCatalogue::default(),
            secure_cookies: true,
            session_ttl: Duration::from_secs(8 * 3600),
            usage: None,
            credits: None,
            #[cfg(feature = "events")]
            recent: None,
        }
    }
}

impl<St: KeyStore, Ss: SessionStore + Clone> Dashboard<St, Ss> {
    /// Keep sessions in `store` instead (one shared by replicas, say). Sessions hold only a key
    /// id, an organization id and tokens.
    pub fn session_store<Ss2: SessionStore + Clone>(self, store: Ss2) -> Dashboard<St, Ss2> {
        Dashboard {
            manager: self.manager,
            sessions: store,
            catalogue: self.catalogue,
            secure_cookies: self.secure_cookies,
            session_ttl: self.session_ttl,
            usage: self.usage,
            credits: self.credits,
            #[cfg(feature = "events")]
            recent: self.recent,
        }
    }

    /// Show credit balances ([`Credits`]): the organization's balance, refill and next refill
    /// on the Usage page, and a Credits column on the keys page for keys with a balance of
    /// their own. Read only: setting credits is for operators (the admin API or the CLI).
    pub fn credits<B: CreditBackend>(mut self, credits: Credits<B>) -> Self {
        self.credits = Some(Arc::new(credits));
        self
    }

    /// List the organization's recent alerts on the Activity page, above the audit log: usage
    /// thresholds, revoked or expired keys still presented, leaked keys and keys about to
    /// expire, newest first, as `recent` keeps them (give the same [`RecentEvents`] to
    /// [`Events::builder`](crate::events::Events::builder) as a sink). People look at the
    /// dashboard, not at logs; without this the page shows the audit log alone.
    ///
    /// Key changes (`key_created`, …) are left out there: the audit log below shows them, with
    /// who made them.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use tower_api_key::dashboard::Dashboard;
    /// use tower_api_key::events::{Events, RecentEvents};
    /// use tower_api_key::{KeyManager, MemoryStore};
    ///
    /// let recent = RecentEvents::new(100);
    /// let (events, _delivery) = Events::builder().sink(recent.clone()).start();
    /// let manager = KeyManager::new(MemoryStore::new()).on_audit(events.on_audit());
    /// let dashboard = Dashboard::new(manager).events(recent);
    /// # let _ = dashboard; });
    /// ```
    ///
    /// [`RecentEvents`]: crate::events::RecentEvents
    #[cfg(feature = "events")]
    pub fn events(mut self, recent: crate::events::RecentEvents) -> Self {
        self.recent = Some(recent);
        self
    }

    /// The permissions the create form offers (default: [`ScopeCatalogue::default`]).
    pub fn scopes(mut self, catalogue: ScopeCatalogue) -> Self {
        self.catalogue = catalogue;
        self
    }

    /// Whether the session cookie is `Secure` (default `true`): leave it on behind TLS; turn it
    /// off only to serve plain HTTP on loopback during development, where browsers would
    /// otherwise drop the cookie.
    pub fn secure_cookies(mut self, secure: bool) -> Self {
        self.secure_cookies = secure;
        self
    }

    /// How long an idle session lasts (default 8 hours).
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl = ttl;
        self
    }

    /// Show the organization's current use on the Usage page, as `usage` reports it (the host
    /// knows its request counts and open sessions; the dashboard does not).
    ///
    /// ```
    /// use tower_api_key::dashboard::{CurrentUsage, Dashboard};
    /// use tower_api_key::{KeyManager, MemoryStore};
    ///
    /// let dashboard = Dashboard::new(KeyManager::new(MemoryStore::new())).usage(|_org| async {
    ///     CurrentUsage { requests: Some(42), open_sessions: Some(3) }
    /// });
    /// ```
    pub fn usage<F, Fut>(mut self, usage: F) -> Self
    where
        F: Fn(OrgId) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CurrentUsage> + Send + 'static,
    {
        self.usage = Some(Arc::new(move |org| Box::pin(usage(org))));
        self
    }

    /// The pages and assets, to [`nest`](Router::nest) where the host wants them (links follow
    /// whatever prefix it is mounted at). Brings its own session layer.
    pub fn router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        let ttl =
            time::Duration::seconds(i64::try_from(self.session_ttl.as_secs()).unwrap_or(i64::MAX));
        let sessions = SessionManagerLayer::new(self.sessions)
            .with_name(COOKIE_NAME)
            .with_http_only(true)
            .with_same_site(SameSite::Strict)
            .with_secure(self.secure_cookies)
            .with_expiry(Expiry::OnInactivity(ttl));
        let shared = Arc::new(Inner {
            manager: self.manager,
            catalogue: self.catalogue,
            usage: self.usage,
            credits: self.credits,
            #[cfg(feature = "events")]
            recent: self.recent,
        });
        handlers::routes::<St>()
            .with_state(shared)
            .merge(asset_routes())
            .layer(sessions)
            .layer(middleware::from_fn(frame))
    }
}

impl<St, Ss> Dashboard<St, Ss> {
    #[cfg(feature = "events")]
    fn recent_configured(&self) -> bool {
        self.recent.is_some()
    }

    #[cfg(not(feature = "events"))]
    fn recent_configured(&self) -> bool {
        false
    }
}

/// What the handlers share.
pub(crate) struct Inner<St> {
    manager: KeyManager<St>,
    catalogue: ScopeCatalogue,
    usage: Option<UsageFn>,
    credits: Option<SharedCredits>,
    #[cfg(feature = "events")]
    recent: Option<crate::events::RecentEvents>,
}

type Shared<St> = Arc<Inner<St>>;

/// The prefix the dashboard is mounted at (`/dashboard`), from the request's original URI.
#[derive(Clone, Debug)]
struct Base(String);

/// Every answer goes through here: it learns the mount prefix for the handlers, renders error
/// pages and sign-in redirects (which need the prefix), and sets the security headers.
async fn frame(mut req: Request, next: Next) -> Response {
    let base = mount_prefix(&req);
    req.extensions_mut().insert(Base(base.clone()));
    let mut res = next.run(req).await;
    if res.extensions_mut().remove::<error::ToSignIn>().is_some() {
        res = Redirect::to(&format!("{base}/sign-in")).into_response();
    } else if let Some(problem) = res.extensions_mut().remove::<error::Problem>() {
        let frame = pages::Frame {
            base: &base,
            signed_in: None,
        };
        res = (problem.status, pages::problem(&frame, &problem)).into_response();
    }
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        // Pages list keys and may carry a secret: never stored by the browser or a proxy.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// `/dashboard` when the host nested the router there: the original path minus the path the
/// router sees. Empty when not nested.
fn mount_prefix(req: &Request) -> String {
    let seen = req.uri().path();
    let original = req
        .extensions()
        .get::<OriginalUri>()
        .map_or(seen, |o| o.0.path());
    let prefix = match original.strip_suffix(seen) {
        Some(prefix) => prefix,
        // Nested at `/dashboard`, the router sees `/dashboard` itself as `/`.
        None if seen == "/" => original,
        None => "",
    };
    prefix.trim_end_matches('/').to_owned()
}

/// The API Keys page: the mount point itself (`/dashboard`; axum does not route `/dashboard/`
/// to a nested router's `/`).
fn home(base: &str) -> String {
    if base.is_empty() {
        "/".to_owned()
    } else {
        base.to_owned()
    }
}

/// A static asset with its content type, cacheable for an hour (no secret in it).
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

fn css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("assets/dashboard.css"),
    )
}

fn favicon() -> Response {
    asset("image/svg+xml", include_str!("assets/favicon.svg"))
}

fn js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/dashboard.js"),
    )
}

/// The asset routes, which need no sign-in.
fn asset_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/assets/dashboard.css", get(|| async { css() }))
        .route("/assets/dashboard.js", get(|| async { js() }))
        .route("/assets/favicon.svg", get(|| async { favicon() }))
}
