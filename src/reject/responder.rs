//! [`Responder`]: how a layer turns a [`Rejection`] into a response.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Response};

use super::Rejection;
use super::render::{DEFAULT_REALM, is_grpc, render};

/// Renders rejections into responses.
///
/// Implemented for closures `Fn(&Rejection, &HeaderMap) -> Response<Bytes>`, which receive the
/// request's headers (for content negotiation).
pub trait RenderRejection: Send + Sync + 'static {
    /// The response for `rejection` to a request with `request_headers`.
    fn render(&self, rejection: &Rejection, request_headers: &HeaderMap) -> Response<Bytes>;
}

impl<F> RenderRejection for F
where
    F: Fn(&Rejection, &HeaderMap) -> Response<Bytes> + Send + Sync + 'static,
{
    fn render(&self, rejection: &Rejection, request_headers: &HeaderMap) -> Response<Bytes> {
        self(rejection, request_headers)
    }
}

/// How a layer turns a [`Rejection`] into a response. Cheap to clone.
///
/// The default renders problem+json (gRPC trailers-only for gRPC requests) with
/// `WWW-Authenticate: Bearer realm="api"`; [`with_realm`](Self::with_realm) changes the realm,
/// [`new`](Self::new) replaces the rendering:
///
/// ```
/// use bytes::Bytes;
/// use http::{HeaderMap, Response, StatusCode};
/// use tower_api_key::{Rejection, Responder};
///
/// // Plain-text bodies, keeping the default status codes.
/// let responder = Responder::new(|r: &Rejection, _: &HeaderMap| {
///     let mut res = Response::new(Bytes::from(r.message().into_owned()));
///     *res.status_mut() = r.status();
///     res
/// });
/// let res = responder.respond(&Rejection::MissingKey, &HeaderMap::new());
/// assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
/// assert_eq!(res.body(), "Invalid or missing API key");
/// ```
#[derive(Clone, Default)]
pub struct Responder(Kind);

#[derive(Clone, Default)]
enum Kind {
    /// The default rendering, realm `api`.
    #[default]
    Default,
    /// The default rendering with another realm.
    Realm(Arc<str>),
    Custom(Arc<dyn RenderRejection>),
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Default => f.write_str("Responder::default()"),
            Kind::Realm(realm) => write!(f, "Responder::with_realm({realm:?})"),
            Kind::Custom(_) => f.write_str("Responder::new(..)"),
        }
    }
}

impl Responder {
    /// A custom renderer.
    pub fn new(render: impl RenderRejection) -> Self {
        Self(Kind::Custom(Arc::new(render)))
    }

    /// The default renderer with another `WWW-Authenticate` realm than `api`.
    pub fn with_realm(realm: &str) -> Self {
        if realm == DEFAULT_REALM {
            return Self::default();
        }
        Self(Kind::Realm(Arc::from(realm)))
    }

    /// Render a rejection of a request with these headers.
    pub fn respond(&self, rejection: &Rejection, request_headers: &HeaderMap) -> Response<Bytes> {
        match self.realm() {
            Ok(realm) => render(rejection, realm, is_grpc(request_headers), HeaderMap::new()),
            Err(custom) => custom.render(rejection, request_headers),
        }
    }

    /// Render a rejection of a request whose header map the layer gives up: the default
    /// rendering builds the response in that map, emptied, which saves an allocation.
    pub(crate) fn refuse(
        &self,
        rejection: &Rejection,
        mut request_headers: HeaderMap,
    ) -> Response<Bytes> {
        match self.realm() {
            Ok(realm) => {
                let grpc = is_grpc(&request_headers);
                request_headers.clear();
                render(rejection, realm, grpc, request_headers)
            }
            Err(custom) => custom.render(rejection, &request_headers),
        }
    }

    /// The realm of the default rendering, or the custom renderer.
    #[inline]
    fn realm(&self) -> Result<&str, &dyn RenderRejection> {
        match &self.0 {
            Kind::Default => Ok(DEFAULT_REALM),
            Kind::Realm(realm) => Ok(realm),
            Kind::Custom(custom) => Err(&**custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reject::InvalidKey;
    use http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE};
    use http::{HeaderName, HeaderValue};

    /// A request map full of headers, the credential among them: what a refusal reuses.
    fn busy_request_headers(grpc: bool) -> HeaderMap {
        let mut h = HeaderMap::new();
        if grpc {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        }
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer br_live_not_a_real_key_at_all_00000"),
        );
        h.insert(COOKIE, HeaderValue::from_static("session=1"));
        for i in 0..20 {
            let name = HeaderName::try_from(format!("x-request-{i}")).unwrap();
            h.append(name, HeaderValue::from_static("v"));
        }
        h
    }

    #[test]
    fn a_refusal_built_in_the_request_map_is_the_rendered_one_without_its_headers() {
        let responders = [
            Responder::default(),
            Responder::with_realm("other"),
            Responder::new(|r: &Rejection, h: &HeaderMap| r.default_response(h, "custom")),
        ];
        let rejections = [
            Rejection::MissingKey,
            Rejection::InvalidKey(InvalidKey::Unknown),
            Rejection::KeyInQuery,
            Rejection::NoRouteRule,
            Rejection::InsufficientScope {
                required: "org:billing".into(),
            },
            Rejection::StoreUnavailable { retry_after: 5 },
        ];
        for responder in &responders {
            for grpc in [false, true] {
                for r in &rejections {
                    let request = busy_request_headers(grpc);
                    let rendered = responder.respond(r, &request);
                    let reused = responder.refuse(r, request);
                    let what = format!("{responder:?} {r:?} grpc={grpc}");
                    assert_eq!(reused.status(), rendered.status(), "{what}");
                    assert_eq!(reused.headers(), rendered.headers(), "{what}");
                    assert_eq!(reused.body(), rendered.body(), "{what}");
                    assert!(!reused.headers().contains_key(AUTHORIZATION), "{what}");
                    assert!(!reused.headers().contains_key(COOKIE), "{what}");
                }
            }
        }
    }

    #[test]
    fn the_realm_reaches_the_challenge() {
        let res =
            Responder::with_realm("banata").respond(&Rejection::MissingKey, &HeaderMap::new());
        assert_eq!(
            res.headers()["www-authenticate"],
            r#"Bearer realm="banata""#
        );
        let res = Responder::with_realm("api").respond(&Rejection::MissingKey, &HeaderMap::new());
        assert_eq!(res.headers()["www-authenticate"], r#"Bearer realm="api""#);
    }
}
