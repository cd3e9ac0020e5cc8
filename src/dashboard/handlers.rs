//! The routes of the dashboard: each handler checks who is signed in (through [`SignedIn`]),
//! checks the form's CSRF token before anything changes, and renders a page.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tower_sessions::Session;

use super::error::{DashboardError, manage_problem};
use super::pages::{self, Frame, NewKeyForm};
use super::session::{self, Form, SessionData, SignedIn, tokens_match};
use super::{Base, EXPIRATIONS, OVERLAPS, Shared};
use crate::admin::{ApiKeyView, AuditEntryView, CreditBalance, Limits, MANAGE_SCOPE, OrgView};
use crate::audit::{Actor, AuditQuery};
use crate::clock::Timestamp;
use crate::credits::Account;
use crate::ids::KeyId;
use crate::key::KeyHash;
use crate::manage::{KeyManager, ManageError, NewKey, Rotation};
use crate::scopes::{Scope, Scopes};
use crate::store::{Granularity, KeyStatus, KeyStore};

type Page = Result<Response, DashboardError>;

pub(super) fn routes<St: KeyStore>() -> Router<Shared<St>> {
    Router::new()
        .route("/", get(list::<St>))
        .route("/sign-in", get(sign_in_form).post(sign_in::<St>))
        .route("/sign-out", post(sign_out))
        .route("/keys/new", get(new_key_form::<St>))
        .route("/keys", post(create::<St>))
        .route(
            "/keys/{id}/revoke",
            get(revoke_form::<St>).post(revoke::<St>),
        )
        .route(
            "/keys/{id}/rotate",
            get(rotate_form::<St>).post(rotate::<St>),
        )
        .route("/keys/{id}/disable", post(disable::<St>))
        .route("/keys/{id}/enable", post(enable::<St>))
        .route("/usage", get(usage::<St>))
        .route("/activity", get(activity::<St>))
        .fallback(|| async { DashboardError::PageNotFound })
}

impl SignedIn {
    /// The manager acting as this user: the audit log names them `Actor::User` by the id of
    /// the key they signed in with (the dashboard knows people by that key only).
    fn manager<St: KeyStore>(&self, dashboard: &Shared<St>) -> KeyManager<St> {
        dashboard
            .manager
            .as_actor(Actor::User(self.principal.key_id().to_string()))
    }

    fn frame<'a>(&'a self, base: &'a str) -> Frame<'a> {
        Frame {
            base,
            signed_in: Some((self.principal.org_id().as_str(), &self.data.csrf)),
        }
    }
}

async fn sign_in_form(Extension(Base(base)): Extension<Base>, session: Session) -> Page {
    let data = session::with_csrf(&session).await?;
    let frame = Frame {
        base: &base,
        signed_in: None,
    };
    Ok(pages::sign_in(&frame, &data.csrf, None).into_response())
}

/// Check the pasted key once; on success the session keeps its id and organization only.
async fn sign_in<St: KeyStore>(
    State(dashboard): State<Shared<St>>,
    Extension(Base(base)): Extension<Base>,
    session: Session,
    body: Bytes,
) -> Page {
    let form = Form::parse(&body);
    let data = session::load(&session).await?;
    if !tokens_match(form.get("csrf"), &data.csrf) {
        return Err(DashboardError::Csrf);
    }
    let refuse = |status: StatusCode, message: &str| {
        let frame = Frame {
            base: &base,
            signed_in: None,
        };
        (status, pages::sign_in(&frame, &data.csrf, Some(message))).into_response()
    };
    let key = form.get("key").unwrap_or("").trim();
    let manager = &dashboard.manager;
    if manager.key_formats().check(key).is_err() {
        return Ok(refuse(
            StatusCode::BAD_REQUEST,
            "That is not an API key of this service: check that you pasted the whole key.",
        ));
    }
    let found = manager.store().find_by_hash(&KeyHash::of(key)).await?;
    let Some(found) = found.filter(|f| f.record.status(manager.now()) == KeyStatus::Active) else {
        return Ok(refuse(
            StatusCode::UNAUTHORIZED,
            "This API key is unknown, revoked or expired.",
        ));
    };
    if !found
        .record
        .scopes
        .allows(&Scope::from_static(MANAGE_SCOPE))
    {
        return Ok(refuse(
            StatusCode::FORBIDDEN,
            "This API key cannot manage API keys: it lacks the api_keys:manage permission. \
             Sign in with a key that holds it.",
        ));
    }
    // A new session id at sign-in, so an id planted before it is worth nothing after.
    session.cycle_id().await?;
    let signed_in = SessionData {
        key_id: Some(found.record.id.to_string()),
        org_id: Some(found.record.org_id.to_string()),
        csrf: session::random_token()?,
        ..SessionData::default()
    };
    session::save(&session, &signed_in).await?;
    tracing::info!(key_id = %found.record.id, org_id = %found.record.org_id, "dashboard sign-in");
    Ok(Redirect::to(&super::home(&base)).into_response())
}

async fn sign_out(Extension(Base(base)): Extension<Base>, session: Session, body: Bytes) -> Page {
    let data = session::load(&session).await?;
    if !tokens_match(Form::parse(&body).get("csrf"), &data.csrf) {
        return Err(DashboardError::Csrf);
    }
    session.flush().await?;
    Ok(Redirect::to(&format!("{base}/sign-in")).into_response())
}

async fn list<St: KeyStore>(
    State(dashboard): State<Shared<St>>,
    Extension(Base(base)): Extension<Base>,
    mut user: SignedIn,
) -> Page {
    let notice = user.take_notice().await?;
    let records = dashboard.manager.list(user.principal.org_id()).await?;
    let now = dashboard.manager.now();
    let views: Vec<ApiKeyView> = records.iter().map(|r| ApiKeyView::of(r, now)).collect();
    // Each key's own balance, when credits are shown (one peek a key: a page, not a request path).
    let mut key_credits = std::collections::HashMap::new();
    if let Some(credits) = &dashboard.credits {
        let org = user.principal.org_id();
        let now = credits.now();
        for r in &records {
            let account = Account::Key { org, key: &r.id };
            if let Some(b) = credits.peek(account).await? {
                key_credits.insert(r.id.to_string(), CreditBalance::of(&b, now));
            }
        }
    }
    Ok(pages::keys(&user.frame(&base), &views, &key_credits, notice.as_deref()).into_response())
}

async fn new_key_form<St: KeyStore>(
    State(dashboard): State<Shared<St>>,
    Extension(Base(base)): Extension<Base>,
    mut user: SignedIn,
) -> Page {
    new_key_page(
        &dashboard,
        &base,
        &mut user,
        StatusCode::OK,
        &NewKeyForm::default(),
    )
    .await
}

/// The create form, with a fresh one-time token; filled as submitted when `form` has an error.
async fn new_key_page<St: KeyStore>(
    dashboard: &Shared<St>,
    base: &str,
    user: &mut SignedIn,
    status: StatusCode,
    form: &NewKeyForm<'_>,
) -> Page {
    let token = user.new_form_token().await?;
    let page = pages::new_key(
        &user.frame(base),
        &dashboard.catalogue,
        user.principal.scopes(),
        &user.data.csrf,
        &token,
        form,
    );
    Ok((status, page).into_response())
}

/// Create a key; the answer is the only place its secret ever appears.
async fn create<St: KeyStore>(
    State(dashboard): State<Shared<St>>,
    Extension(Base(base)): Extension<Base>,
    mut user: SignedIn,
    body: Bytes,
) -> Page {
    let form = Form::parse(&body);
    user.check_csrf(&form)?;
    if !user.take_form_token(form.get("form")).await? {
        return Err(DashboardError::AlreadySubmitted);
    }
    let mut filled = NewKeyForm {
        name: form.get("name").unwrap_or(""),
        scopes: form.all("scope").collect(),
        expiration: form.get("expiration").unwrap_or("never"),
        error: None,
    };
    let spec = match key_spec(&dashboard, &filled) {
        Ok(spec) => spec,
        Err(message) => {
            filled.error = Some(message);
            return new_key_page(
                &dashboard,
                &base,
                &mut user,
                StatusCode::BAD_REQUEST,
                &filled,
            )
            .await;
        }
    };
    match user
        .manager(&dashboard)
        .create_for(&user.principal, spec)
        .await
    {
        Ok(created) => {
            let view = ApiKeyView::of(&created.record, dashboard.manager.now());
            let page = pages::secret(
                &user.frame(&base),
                "Your new API key",
                created.key.expose_secret(),
                &view,
            );
            Ok((StatusCode::CREATED, page).into_response())
        }
        Err(e @ (ManageError::ScopeEscalation | ManageError::InvalidName)) => {
            filled.error = Some(manage_problem(&e).1);
            new_key_page(&dashboard, &base, &mut user, e.status(), &filled).await
        }
        Err(e) => Err(e.into()),
    }
}

/// The key the create form asks for, or what is wrong with the form.
fn key_spec<St>(dashboard: &Shared<St>, form: &NewKeyForm<'_>) -> Result<NewKey, String> {
    if form.scopes.is_empty() {
        return Err("Choose at least one permission.".into());
    }
    if let Some(unknown) = form
        .scopes
        .iter()
        .find(|s| dashboard.catalogue.get(s).is_none())
    {
        return Err(format!("Unknown permission {unknown:?}."));
    }
    let scopes = Scopes::parse(&form.scopes).map_err(|e| e.to_string())?;
    let Some((_, _, lifetime)) = EXPIRATIONS.iter().find(|(v, _, _)| *v == form.expiration) else {
        return Err("Choose an expiration from the list.".into());
    };
    let mut spec = NewKey::new(form.name).scopes(scopes);
    if let Some(lifetime) = lifetime {
        spec = spec.expires_in(*lifetime);
    }
    Ok(spec)
}

async fn revoke_form<St: KeyStore>(
    State(dashboard): State<Shared<St>>,
    Extension(Base(base)): Extension<Base>,
    user: SignedIn,
    Path(id): Path<String>,
) -> Page {
    let manager = &dashboard.manager;
    let record = manager
        .get(user.principal.org_id(), &KeyId::from(id))
        .await?;
    let view = ApiKeyView::of(&record, manager.now());
    Ok(pages::revoke(&user.frame(&base), &user.data.csrf, &view).into_response())
}

async fn revoke<St: KeyStore>(
    State(dashboard): State<Shared<St>>,
    Extension(Base(base)): Extension<Base>,
    mut user: SignedIn,
    Path(id): Path<String>,
    body: Bytes,
) -> Page {
    user.check_csrf(&Form::parse(&body))?;
    let record = user
        .manager(&dashboard)
        .revoke(user.principal.org_id(), &KeyId::from(id))
        .await?;
    user.set_notice(format!(
        "Revoked “{}” ({}): it is refused from its next request on.",
        record.name(),
        record.hint()
    ))
    .await?;
    Ok(Redirect::to(&super::home(&base)).into_response())
}

async fn disable<St: KeyStore>(
    state: State<Shared<St>>,
    base: Extension<Base>,
    user: SignedIn,
    id: Path<String>,
    body: Bytes,
) -> Page {
    set_disabled(state, base, user, id, body, true).await
}

async fn enable<St: KeyStore>(
    state: State<Shared<St>>,
    base: Extension<Base>,
    user: SignedIn,
    id: Path<String>,
    body: Bytes,
) -> Page {
    set_disabled(state, base, user, id, body, false).await
}

/// Switch a key of the signed-in organization off or on again (as revoking, it grants nothing).
async fn set_disabled<St: KeyStore>(
    State(dashboard): State<Shared<St>>,
    Extension(Base(base)): Extension<Base>,
    mut user: SignedIn,
    Path(id): Path<String>,
    body: Bytes,
    disabled: bool,
) -> Page {
    user.check_csrf(&Form::parse(&body))?;
    let (org, id) = (user.principal.org_id(), KeyId::from(id));
    let manager = user.manager(&dashboard);
    let record = if disabled {
        manager.disable(org, &id).await?
    } else {
        manager.enable(org, &id).await?
    };
    let what = if disabled {
        "it is refused from its next request on, until enabled again"
    } else {
        "it is accepted again from its next request on"
    };
    user.set_notice(format!(
        "{} “{}” ({}): {what}.",
        if disabled { "Disabled" } else { "Enabled" },
        record.name(),
        record.hint()
    ))
    .await?;
    Ok(Redirect::to(&super::home(&base)).into_response())
}

async fn rotate_form<St: KeyStore>(
    State(dashboard): State<Shared<St>>,
    Extension(Base(base)): Extension<Base>,
    mut user: SignedIn,
    Path(id): Path<String>,
) -> Page {
    let manager = &dashboard.manager;
    let record = manager
        .get(user.principal.org_id(), &KeyId::from(id))
        .await?;
    if record.revoked_at.is_some() {
        return Err(ManageError::Revoked.into());
    }
    let view = ApiKeyView::of(&record, manager.now());
    let token = user.new_form_token().await?;
    Ok(pages::rotate(&user.frame(&base), &user.data.csrf, &token, &view).into_response())
}

/// Rotate a key; the answer is the only place the new secret ever appears.
async fn rotate<St: KeyStore>(
    State(dashboard): State<Shared<St>>,
    Extension(Base(base)): Extension<Base>,
    mut user: SignedIn,
    Path(id): Path<String>,
    body: Bytes,
) -> Page {
    let form = Form::parse(&body);
    user.check_csrf(&form)?;
    let overlap = form.get("overlap").unwrap_or("now");
    let Some((_, _, grace)) = OVERLAPS.iter().find(|(v, _, _)| *v == overlap) else {
        return Err(DashboardError::BadRequest(
            "Choose when the old key stops working: now, in 1 hour, in 24 hours or in 7 days."
                .into(),
        ));
    };
    if !user.take_form_token(form.get("form")).await? {
        return Err(DashboardError::AlreadySubmitted);
    }
    let rotation = if grace.is_zero() {
        Rotation::immediate()
    } else {
        Rotation::with_grace(*grace)
    };
    let manager = &user.manager(&dashboard);
    let created = manager
        .rotate_for(&user.principal, &KeyId::from(id), rotation)
        .await?;
    let view = ApiKeyView::of(&created.record, manager.now());
    let page = pages::secret(
        &user.frame(&base),
        "Your rotated API key",
        created.key.expose_secret(),
        &view,
    );
    Ok((StatusCode::CREATED, page).into_response())
}

async fn usage<St: KeyStore>(
    State(dashboard): State<Shared<St>>,
    Extension(Base(base)): Extension<Base>,
    user: SignedIn,
) -> Page {
    let org = user.principal.org_id();
    let plan = dashboard.manager.plan(org).await?;
    let quota = plan.quota();
    let view = OrgView {
        org_id: org.to_string(),
        plan: plan.name().to_owned(),
        limits: Limits {
            requests_per_window: quota.requests,
            window_secs: quota.period.as_secs(),
            concurrent_sessions: quota.concurrent_sessions,
        },
    };
    let current = match &dashboard.usage {
        Some(usage) => Some(usage(org.clone()).await),
        None => None,
    };
    // The metered requests of the last 24 hours, by hour (empty unless the host meters usage).
    let now = dashboard.manager.now();
    let day_ago = Timestamp::from_unix_secs(now.as_unix_secs().saturating_sub(23 * 3_600));
    let report = dashboard
        .manager
        .usage(
            org,
            day_ago..now.saturating_add(std::time::Duration::from_secs(1)),
            Granularity::Hour,
        )
        .await?;
    let credits = match &dashboard.credits {
        Some(credits) => Some(
            credits
                .peek(Account::Org(org))
                .await?
                .map(|b| CreditBalance::of(&b, credits.now())),
        ),
        None => None,
    };
    let page = pages::usage(
        &user.frame(&base),
        &view,
        current.as_ref(),
        credits.as_ref(),
        &report,
    );
    Ok(page.into_response())
}

/// The organization's recent alerts (with [`Dashboard::events`](super::Dashboard::events)) and
/// its audit log, newest first: who did what to which key, and when.
async fn activity<St: KeyStore>(
    State(dashboard): State<Shared<St>>,
    Extension(Base(base)): Extension<Base>,
    user: SignedIn,
) -> Page {
    let entries = dashboard
        .manager
        .audit_log(user.principal.org_id(), &AuditQuery::new().limit(100))
        .await?;
    let views: Vec<AuditEntryView> = entries.iter().map(AuditEntryView::of).collect();
    #[cfg(feature = "events")]
    let alerts: Option<Vec<pages::Alert>> = dashboard.recent.as_ref().map(|recent| {
        recent
            .list(user.principal.org_id())
            .iter()
            .filter_map(pages::Alert::of)
            .collect()
    });
    #[cfg(not(feature = "events"))]
    let alerts: Option<Vec<pages::Alert>> = None;
    Ok(pages::activity(&user.frame(&base), alerts.as_deref(), &views).into_response())
}
