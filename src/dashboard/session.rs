//! The signed-in session: what it stores (a key id, its organization and a CSRF token, never a
//! secret), how a request's [`Principal`] is rebuilt from it, and the form checks.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tower_sessions::Session;

use super::Shared;
use super::error::DashboardError;
use crate::admin::MANAGE_SCOPE;
use crate::auth::extract::form_decode;
use crate::ids::{KeyId, OrgId};
use crate::principal::Principal;
use crate::scopes::Scope;
use crate::store::{KeyStatus, KeyStore};

/// The session entry's name in the session store.
const SESSION_KEY: &str = "tower_api_key.dashboard";

/// How many unsubmitted create and rotate forms a session remembers.
const MAX_PENDING_FORMS: usize = 16;

/// Everything the dashboard keeps in a session. No secret: the key a user signed in with is
/// looked up by id on every request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct SessionData {
    /// The signed-in key, `None` before sign-in.
    pub key_id: Option<String>,
    /// The organization of the signed-in key.
    pub org_id: Option<String>,
    /// The per-session CSRF token, 32 random bytes in hex.
    pub csrf: String,
    /// One-time tokens of create and rotate forms rendered and not yet submitted: a resubmitted
    /// form (reload, back button) finds its token gone and creates nothing.
    #[serde(default)]
    pub pending: Vec<String>,
    /// A one-line notice for the next page ("Key revoked").
    #[serde(default)]
    pub notice: Option<String>,
}

/// 32 random bytes, hex encoded.
pub(super) fn random_token() -> Result<String, DashboardError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(DashboardError::Rng)?;
    Ok(hex::encode(bytes))
}

/// Constant-time comparison of a submitted token with the expected one.
pub(super) fn tokens_match(submitted: Option<&str>, expected: &str) -> bool {
    match submitted {
        Some(s) if !expected.is_empty() => s.as_bytes().ct_eq(expected.as_bytes()).into(),
        _ => false,
    }
}

/// The session of this request, loaded.
pub(super) async fn load(session: &Session) -> Result<SessionData, DashboardError> {
    Ok(session.get(SESSION_KEY).await?.unwrap_or_default())
}

/// Save `data` as this session's entry.
pub(super) async fn save(session: &Session, data: &SessionData) -> Result<(), DashboardError> {
    session.insert(SESSION_KEY, data).await?;
    Ok(())
}

/// The tower-sessions [`Session`] of the request (put there by the dashboard's own layer).
pub(super) fn session_of(parts: &Parts) -> Result<Session, DashboardError> {
    parts
        .extensions
        .get::<Session>()
        .cloned()
        .ok_or(DashboardError::NoSessionLayer)
}

/// The session data of a visitor, with a CSRF token (created if the session has none yet).
pub(super) async fn with_csrf(session: &Session) -> Result<SessionData, DashboardError> {
    let mut data = load(session).await?;
    if data.csrf.is_empty() {
        data.csrf = random_token()?;
        save(session, &data).await?;
    }
    Ok(data)
}

/// A signed-in user: the session and the [`Principal`] rebuilt from the store for this request.
/// Extracting it redirects to sign-in when nobody is signed in, or when the key signed in with
/// is no longer active or no longer holds `api_keys:manage` (that also ends the session).
pub(super) struct SignedIn {
    pub session: Session,
    pub data: SessionData,
    pub principal: Principal,
}

impl SignedIn {
    /// Remember a fresh one-time form token and return it.
    pub async fn new_form_token(&mut self) -> Result<String, DashboardError> {
        let token = random_token()?;
        self.data.pending.push(token.clone());
        if self.data.pending.len() > MAX_PENDING_FORMS {
            self.data.pending.remove(0);
        }
        save(&self.session, &self.data).await?;
        Ok(token)
    }

    /// Consume a one-time form token: `true` the first time it is submitted only.
    pub async fn take_form_token(&mut self, token: Option<&str>) -> Result<bool, DashboardError> {
        let Some(token) = token else {
            return Ok(false);
        };
        let at = self
            .data
            .pending
            .iter()
            .position(|t| tokens_match(Some(token), t));
        match at {
            Some(at) => {
                self.data.pending.remove(at);
                save(&self.session, &self.data).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Check the form's CSRF token against the session's, in constant time.
    pub fn check_csrf(&self, form: &Form) -> Result<(), DashboardError> {
        if tokens_match(form.get("csrf"), &self.data.csrf) {
            Ok(())
        } else {
            Err(DashboardError::Csrf)
        }
    }

    /// The notice left for this page, taken out of the session.
    pub async fn take_notice(&mut self) -> Result<Option<String>, DashboardError> {
        let notice = self.data.notice.take();
        if notice.is_some() {
            save(&self.session, &self.data).await?;
        }
        Ok(notice)
    }

    /// Leave a notice for the next page.
    pub async fn set_notice(&mut self, notice: String) -> Result<(), DashboardError> {
        self.data.notice = Some(notice);
        save(&self.session, &self.data).await
    }
}

impl<St: KeyStore> FromRequestParts<Shared<St>> for SignedIn {
    type Rejection = DashboardError;

    async fn from_request_parts(
        parts: &mut Parts,
        dashboard: &Shared<St>,
    ) -> Result<Self, DashboardError> {
        let session = session_of(parts)?;
        let data = load(&session).await?;
        let (Some(key_id), Some(org_id)) = (data.key_id.clone(), data.org_id.clone()) else {
            return Err(DashboardError::SignInRequired);
        };
        match principal(dashboard, &KeyId::from(key_id), &OrgId::from(org_id)).await? {
            Some(principal) => Ok(SignedIn {
                session,
                data,
                principal,
            }),
            None => {
                // Revoked, expired or stripped of the permission since sign-in: sign out.
                session.flush().await?;
                Err(DashboardError::SignInRequired)
            }
        }
    }
}

/// The principal of key `id` in `org` as the store has it now, if it may still use the
/// dashboard: active, of that organization, holding `api_keys:manage`.
async fn principal<St: KeyStore>(
    dashboard: &Shared<St>,
    id: &KeyId,
    org: &OrgId,
) -> Result<Option<Principal>, DashboardError> {
    let manager = &dashboard.manager;
    let Some(record) = manager.store().get(id).await? else {
        return Ok(None);
    };
    let usable = &record.org_id == org
        && record.status(manager.now()) == KeyStatus::Active
        && record.scopes.allows(&Scope::from_static(MANAGE_SCOPE));
    if !usable {
        return Ok(None);
    }
    let plan = manager.plan(org).await?;
    Ok(Some(Principal::new(Arc::new(record), plan)))
}

/// An `application/x-www-form-urlencoded` body, with repeated fields (the scope checkboxes)
/// kept.
#[derive(Default)]
pub(super) struct Form {
    fields: Vec<(String, zeroize::Zeroizing<String>)>,
}

impl Form {
    /// Parse a body. An invalid escape stays as written, bytes that are not UTF-8 decode lossily,
    /// and a field without `=` is empty.
    pub fn parse(body: &[u8]) -> Self {
        // Decoded as the query check decodes: `+` a space, `%XX` its byte, once.
        let decode = |raw: &[u8]| String::from_utf8_lossy(&form_decode(raw)).into_owned();
        let fields = body
            .split(|&b| b == b'&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let mut halves = pair.splitn(2, |&b| b == b'=');
                let name = halves.next().unwrap_or_default();
                let value = halves.next().unwrap_or_default();
                (decode(name), zeroize::Zeroizing::new(decode(value)))
            })
            .collect();
        Self { fields }
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_keep_repeated_fields_and_decode_escapes() {
        let form = Form::parse(b"name=ci+bot%21&scope=a%3Ab&scope=c%3Ad&empty");
        assert_eq!(form.get("name"), Some("ci bot!"));
        assert_eq!(form.all("scope").collect::<Vec<_>>(), ["a:b", "c:d"]);
        assert_eq!(form.get("empty"), Some(""));
        assert_eq!(form.get("missing"), None);
    }

    #[test]
    fn tokens_match_only_the_exact_token() {
        let token = random_token().unwrap();
        assert_eq!(token.len(), 64);
        assert!(tokens_match(Some(&token), &token));
        assert!(!tokens_match(Some(&token[..63]), &token));
        assert!(!tokens_match(None, &token));
        assert!(
            !tokens_match(Some(""), ""),
            "an empty expected token never matches"
        );
    }
}
