//! axum integration (feature `axum`): [`Principal`] and `Option<Principal>` as extractors.
//!
//! ```
//! use axum::{Router, routing::get};
//! use tower_api_key::{ApiKeyAuth, MemoryStore, Principal};
//!
//! async fn whoami(p: Principal) -> String {
//!     format!("{} of {}", p.key_id(), p.org_id())
//! }
//!
//! async fn maybe(p: Option<Principal>) -> &'static str {
//!     if p.is_some() { "authenticated" } else { "anonymous" }
//! }
//!
//! let app: Router = Router::new()
//!     .route("/whoami", get(whoami))
//!     .route("/maybe", get(maybe))
//!     .layer(ApiKeyAuth::new(MemoryStore::new()));
//! ```

use std::convert::Infallible;

use axum_core::body::Body;
use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;

use crate::principal::Principal;
use crate::reject::Rejection;

/// The rejection of the [`Principal`] extractor: the request reached the handler without passing
/// through [`ApiKeyAuth`](crate::ApiKeyAuth). A server misconfiguration, answered with `500
/// auth_layer_missing` and logged as an error, never a silent pass.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("no Principal in the request: the ApiKeyAuth layer is missing in front of this handler")]
pub struct MissingApiKeyAuth;

impl IntoResponse for MissingApiKeyAuth {
    fn into_response(self) -> Response {
        tracing::error!("{self}");
        Rejection::MissingPrincipal {
            layer: "the Principal extractor",
        }
        .problem_response("api")
        .map(Body::from)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = MissingApiKeyAuth;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(MissingApiKeyAuth)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Principal>().cloned())
    }
}
