//! [`PublicRevoke`]: the unauthenticated endpoint where anyone who finds a key can revoke it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{MethodRouter, post};
use serde::Deserialize;

use super::{LeakError, Leaks, Sighting, Via};
use crate::client_addr::ClientAddr;
use crate::rate_limit::AddrRateLimit;
use crate::store::KeyStore;

/// The most credentials one request may carry; one more is `413 too_many_credentials`.
pub const MAX_CREDENTIALS: usize = 1_000;

/// The default largest body: room for [`MAX_CREDENTIALS`] keys of the longest format
/// (32 + 64 + 6 characters, quoted, with a comma), and no more.
pub const REVOKE_MAX_BODY: usize = 128 * 1024;

/// The default limit per client address: 10 requests a minute (each up to 1,000 keys).
pub const REVOKE_RATE: (u32, Duration) = (10, Duration::from_secs(60));

/// The body of every accepted request, whatever it carried.
const ACCEPTED: &str =
    r#"{"message":"Accepted. Every credential that was a live API key is now revoked."}"#;

/// The public revocation endpoint: `POST {"credentials": ["…", …]}`, no authentication, as
/// GitHub's own `credentials/revoke` endpoint takes it.
///
/// Anyone who finds a key (in a paste, a log, a screenshot) can kill it. Each credential that is
/// a live key is revoked and reported as a [`LeakedKey`](super::LeakedKey); the answer is `202`
/// with the same status, headers and body for every request it accepts, whether the keys were
/// real, unknown or malformed, so the endpoint tells nobody which keys exist. Refusals depend
/// only on the request itself: `400` for a body that is not `{"credentials": [strings]}`, `413`
/// past [`MAX_CREDENTIALS`] or the body limit, `429` past the per-address limit (checked before
/// the body is read), `503` when the store fails (retry: revocation is idempotent).
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::client_addr::ClientAddr;
/// use tower_api_key::leaks::Leaks;
/// use tower_api_key::rate_limit::AddrRateLimit;
/// # use tower_api_key::{KeyManager, MemoryStore};
///
/// let leaks = Leaks::new(KeyManager::new(MemoryStore::new()));
/// let revoke = leaks
///     .public_revoke()
///     .rate_limit(AddrRateLimit::new(5, Duration::from_secs(60)))
///     // Behind a load balancer: the client is read from X-Forwarded-For it wrote.
///     .client_addr(ClientAddr::trusted_proxies(["10.0.0.0/8".parse()?]));
/// let app: axum::Router = axum::Router::new().route("/credentials/revoke", revoke.route());
/// # let _ = app;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct PublicRevoke<St> {
    leaks: Leaks<St>,
    limit: AddrRateLimit,
    client: ClientAddr,
    max_body: usize,
}

/// The request body.
#[derive(Deserialize)]
struct Credentials {
    credentials: Vec<String>,
}

impl<St: KeyStore> PublicRevoke<St> {
    /// The endpoint with [`REVOKE_RATE`] per client address, the client being the TCP peer;
    /// [`Leaks::public_revoke`] builds it.
    pub fn new(leaks: Leaks<St>) -> Self {
        Self {
            leaks,
            limit: AddrRateLimit::new(REVOKE_RATE.0, REVOKE_RATE.1),
            client: ClientAddr::peer(),
            max_body: REVOKE_MAX_BODY,
        }
    }

    /// Limit each client address with `limit` instead.
    pub fn rate_limit(mut self, limit: AddrRateLimit) -> Self {
        self.limit = limit;
        self
    }

    /// Find the client's address with `client` (e.g. behind trusted proxies).
    pub fn client_addr(mut self, client: ClientAddr) -> Self {
        self.client = client;
        self
    }

    /// The largest body accepted, in bytes (default [`REVOKE_MAX_BODY`]).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The route, answering `POST` (other methods get `405`).
    pub fn route<S: Clone + Send + Sync + 'static>(self) -> MethodRouter<S> {
        let limit = self.max_body;
        post(receive::<St>)
            .with_state(Arc::new(self))
            .layer(DefaultBodyLimit::max(limit))
    }

    async fn handle(&self, req: Request) -> Result<(), LeakError> {
        let ip = self
            .client
            .client_ip(&req)
            .ok_or(LeakError::NoClientAddress)?;
        let decision = self.limit.check(ip);
        if !decision.allowed {
            return Err(LeakError::RateLimited {
                retry_after: decision.info.retry_after,
            });
        }
        let body = Bytes::from_request(req, &())
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => LeakError::BodyTooLarge,
                _ => LeakError::InvalidBody(e.body_text()),
            })?;
        let Credentials { credentials } = serde_json::from_slice(&body).map_err(|e| {
            LeakError::json(
                &format!("{{\"credentials\": [\"…\", …]}} with at most {MAX_CREDENTIALS} strings"),
                &e,
            )
        })?;
        if credentials.len() > MAX_CREDENTIALS {
            return Err(LeakError::TooManyCredentials);
        }
        let sighting = Sighting {
            url: None,
            source: None,
            via: Via::PublicRevoke,
        };
        let mut seen = HashSet::with_capacity(credentials.len());
        for token in &credentials {
            if seen.insert(token.as_str()) {
                self.leaks.revoke_leaked(token, sighting).await?;
            }
        }
        Ok(())
    }
}

async fn receive<St: KeyStore>(
    State(revoke): State<Arc<PublicRevoke<St>>>,
    req: Request,
) -> Result<Response, LeakError> {
    revoke.handle(req).await?;
    Ok(accepted())
}

/// The one answer to every accepted request: no count, no date, nothing that varies.
fn accepted() -> Response {
    let mut res = Response::new(Body::from(ACCEPTED));
    *res.status_mut() = StatusCode::ACCEPTED;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
