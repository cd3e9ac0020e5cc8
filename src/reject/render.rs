//! The default rendering of a [`Rejection`]: `application/problem+json` (RFC 9457), or a
//! trailers-only gRPC response for gRPC requests.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::Serialize;

use super::rejection::{INVALID_OR_MISSING, KEY_IN_QUERY, Rejection};
use crate::headers::int_value;

/// `grpc-status`.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`.
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");
const APPLICATION_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");

/// What gRPC percent-encodes in `grpc-message`: everything but printable ASCII, and `%`.
const GRPC_MESSAGE_SET: &AsciiSet = &CONTROLS.add(b'%');

/// The realm of the default responder.
pub(crate) const DEFAULT_REALM: &str = "api";

/// Whether a request is gRPC (`content-type: application/grpc…`).
#[inline]
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The problem+json body of a rejection.
#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    required_scope: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    balance: Option<u64>,
    #[serde(rename = "violated-policies", skip_serializing_if = "Option::is_none")]
    violated_policies: Option<&'a [String]>,
}

/// The problem type of a refusal by a rate limit: the IETF draft's
/// (draft-ietf-httpapi-ratelimit-headers-12, section 5.1).
pub(crate) const QUOTA_EXCEEDED: &str =
    "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// A refusal of the default realm whose response never varies, in both forms.
struct Fixed {
    status: StatusCode,
    www_authenticate: HeaderValue,
    body: &'static str,
    grpc_status: HeaderValue,
    grpc_message: HeaderValue,
}

// The default realm's fixed refusals, one table: missing key, invalid key, key in the query
// string. A unit test checks each against the general rendering.

/// Missing key.
static MISSING: Fixed = Fixed {
    status: StatusCode::UNAUTHORIZED,
    www_authenticate: HeaderValue::from_static(r#"Bearer realm="api""#),
    body: r#"{"type":"about:blank","title":"Invalid or missing API key","status":401,"code":"missing_api_key"}"#,
    grpc_status: HeaderValue::from_static("16"),
    grpc_message: HeaderValue::from_static(INVALID_OR_MISSING),
};

/// Invalid key.
static INVALID: Fixed = Fixed {
    status: StatusCode::UNAUTHORIZED,
    www_authenticate: HeaderValue::from_static(
        r#"Bearer realm="api", error="invalid_token", error_description="Invalid or missing API key""#,
    ),
    body: r#"{"type":"about:blank","title":"Invalid or missing API key","status":401,"code":"invalid_api_key"}"#,
    grpc_status: HeaderValue::from_static("16"),
    grpc_message: HeaderValue::from_static(INVALID_OR_MISSING),
};

/// Key in the query string.
static IN_QUERY: Fixed = Fixed {
    status: StatusCode::BAD_REQUEST,
    www_authenticate: HeaderValue::from_static(
        r#"Bearer realm="api", error="invalid_request", error_description="Send the API key in the Authorization header""#,
    ),
    body: r#"{"type":"about:blank","title":"API keys must not be sent in the URL; use the Authorization: Bearer header","status":400,"code":"api_key_in_query"}"#,
    grpc_status: HeaderValue::from_static("3"),
    grpc_message: HeaderValue::from_static(KEY_IN_QUERY),
};

impl Fixed {
    /// The table's entry for `rejection`, if it has one.
    #[inline]
    fn of(rejection: &Rejection) -> Option<&'static Fixed> {
        match rejection {
            Rejection::MissingKey => Some(&MISSING),
            Rejection::InvalidKey(_) => Some(&INVALID),
            Rejection::KeyInQuery => Some(&IN_QUERY),
            _ => None,
        }
    }

    /// The response, built in `headers` (empty).
    #[inline]
    fn response(&self, grpc: bool, mut headers: HeaderMap) -> Response<Bytes> {
        let (status, body) = if grpc {
            headers.insert(CONTENT_TYPE, APPLICATION_GRPC);
            headers.insert(GRPC_STATUS, self.grpc_status.clone());
            headers.insert(GRPC_MESSAGE, self.grpc_message.clone());
            (StatusCode::OK, Bytes::new())
        } else {
            headers.insert(CONTENT_TYPE, PROBLEM_JSON);
            headers.insert(WWW_AUTHENTICATE, self.www_authenticate.clone());
            (self.status, Bytes::from_static(self.body.as_bytes()))
        };
        with_parts(status, headers, body)
    }
}

fn with_parts(status: StatusCode, headers: HeaderMap, body: Bytes) -> Response<Bytes> {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    *res.headers_mut() = headers;
    res
}

/// Render `rejection` for a request with `request_headers`, in `headers` (an empty map the
/// response takes over: the refused request's own, emptied, saves an allocation).
pub(crate) fn render(
    rejection: &Rejection,
    realm: &str,
    grpc: bool,
    headers: HeaderMap,
) -> Response<Bytes> {
    match Fixed::of(rejection) {
        Some(fixed) if realm == DEFAULT_REALM => fixed.response(grpc, headers),
        _ if grpc => grpc_in(rejection, headers),
        _ => problem_in(rejection, realm, headers),
    }
}

fn problem_in(rejection: &Rejection, realm: &str, mut headers: HeaderMap) -> Response<Bytes> {
    let status = rejection.status();
    let title = rejection.message();
    let (required_scope, limit) = match rejection {
        Rejection::InsufficientScope { required } => (Some(required.as_str()), None),
        Rejection::RateLimited { info, .. } => (None, Some(info.limit)),
        Rejection::SessionLimit { limit, .. } => (None, Some(*limit)),
        _ => (None, None),
    };
    let problem = Problem {
        kind: match rejection {
            Rejection::RateLimited { .. } => QUOTA_EXCEEDED,
            _ => "about:blank",
        },
        title: &title,
        status: status.as_u16(),
        code: rejection.code(),
        required_scope,
        retry_after: match rejection {
            Rejection::RateLimited { info, .. } => Some(info.retry_after),
            Rejection::CreditsExhausted { retry_after, .. } => *retry_after,
            Rejection::SessionLimit { retry_after, .. }
            | Rejection::StoreUnavailable { retry_after }
            | Rejection::TooManyInvalidKeys { retry_after } => Some(*retry_after),
            _ => None,
        },
        limit,
        balance: match rejection {
            Rejection::CreditsExhausted { balance, .. } => Some(*balance),
            _ => None,
        },
        violated_policies: match rejection {
            Rejection::RateLimited { violated, .. } => Some(violated),
            _ => None,
        },
    };
    // Serializing a struct of strings and integers cannot fail.
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    headers.insert(CONTENT_TYPE, PROBLEM_JSON);
    if let Some(v) = rejection.www_authenticate(realm) {
        headers.insert(WWW_AUTHENTICATE, v);
    }
    write_retry_headers(rejection, &mut headers);
    with_parts(status, headers, Bytes::from(body))
}

fn grpc_in(rejection: &Rejection, mut headers: HeaderMap) -> Response<Bytes> {
    headers.insert(CONTENT_TYPE, APPLICATION_GRPC);
    headers.insert(
        GRPC_STATUS,
        HeaderValue::from(u16::from(rejection.grpc_status())),
    );
    let message = utf8_percent_encode(&rejection.message(), GRPC_MESSAGE_SET).to_string();
    if let Ok(v) = HeaderValue::from_str(&message) {
        headers.insert(GRPC_MESSAGE, v);
    }
    write_retry_headers(rejection, &mut headers);
    with_parts(StatusCode::OK, headers, Bytes::new())
}

fn write_retry_headers(rejection: &Rejection, headers: &mut HeaderMap) {
    if let Rejection::RateLimited { info, .. } = rejection {
        info.write(headers);
    }
    if let Some(secs) = rejection.retry_after() {
        headers.insert(RETRY_AFTER, int_value(secs));
    }
}

impl Rejection {
    /// The default rendering for a request with these headers: gRPC trailers-only when the
    /// request's `content-type` is `application/grpc*`, problem+json otherwise.
    pub fn default_response(&self, request_headers: &HeaderMap, realm: &str) -> Response<Bytes> {
        render(self, realm, is_grpc(request_headers), HeaderMap::new())
    }

    /// The `application/problem+json` response: `type`, `title`, `status`, `code`, and the
    /// rejection's own members (`required_scope`, `retry_after`, `limit`).
    pub fn problem_response(&self, realm: &str) -> Response<Bytes> {
        problem_in(self, realm, HeaderMap::new())
    }

    /// The gRPC trailers-only response: HTTP 200, `grpc-status`, `grpc-message`, and for rate
    /// limits the `x-ratelimit-*` and `retry-after` figures as metadata.
    pub fn grpc_response(&self) -> Response<Bytes> {
        grpc_in(self, HeaderMap::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::{RateLimitInfo, X_RATELIMIT_RESET};
    use crate::reject::InvalidKey;

    #[test]
    fn the_fixed_table_is_what_the_general_rendering_gives() {
        for rejection in [
            Rejection::MissingKey,
            Rejection::InvalidKey(InvalidKey::Unknown),
            Rejection::InvalidKey(InvalidKey::BadHeader),
            Rejection::KeyInQuery,
        ] {
            let Some(fixed) = Fixed::of(&rejection) else {
                panic!("{rejection:?} is in the fixed table");
            };
            for grpc in [false, true] {
                let got = fixed.response(grpc, HeaderMap::new());
                let expected = if grpc {
                    grpc_in(&rejection, HeaderMap::new())
                } else {
                    problem_in(&rejection, DEFAULT_REALM, HeaderMap::new())
                };
                let what = format!("{rejection:?}, grpc {grpc}");
                assert_eq!(got.status(), expected.status(), "{what}");
                assert_eq!(got.headers(), expected.headers(), "{what}");
                assert_eq!(got.body(), expected.body(), "{what}");
            }
        }
        assert!(Fixed::of(&Rejection::StoreUnavailable { retry_after: 5 }).is_none());
    }

    #[test]
    fn invalid_key_problem_body() {
        let r = Rejection::InvalidKey(InvalidKey::Unknown);
        let res = r.problem_response("api");
        assert_eq!(res.status(), 401);
        assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(
            res.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"Invalid or missing API key\""
        );
        let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(v["title"], "Invalid or missing API key");
        assert_eq!(v["code"], "invalid_api_key");
        assert_eq!(v["status"], 401);
    }

    #[test]
    fn missing_key_challenge_has_no_error() {
        let res = Rejection::MissingKey.problem_response("banata");
        assert_eq!(res.headers()[WWW_AUTHENTICATE], "Bearer realm=\"banata\"");
    }

    #[test]
    fn grpc_rendering() {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        let res = Rejection::InsufficientScope {
            required: "a:b".into(),
        }
        .default_response(&h, "api");
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["grpc-status"], "7");
        assert_eq!(
            res.headers()["grpc-message"],
            "This API key lacks the permission required: a:b"
        );
        assert!(res.body().is_empty());
    }

    #[test]
    fn retry_after_is_never_zero() {
        let r = Rejection::RateLimited {
            info: RateLimitInfo {
                limit: 100,
                remaining: 0,
                reset: 10,
                retry_after: 0,
            },
            violated: vec!["free".into()],
        };
        assert_eq!(r.problem_response("api").headers()[RETRY_AFTER], "1");
    }

    #[test]
    fn problem_bodies_are_json_with_their_members() {
        let info = RateLimitInfo {
            limit: 100,
            remaining: 0,
            reset: 1_700_000_060,
            retry_after: 7,
        };
        let cases = [
            Rejection::MissingKey,
            Rejection::InvalidKey(InvalidKey::Revoked),
            Rejection::KeyInQuery,
            Rejection::InsufficientScope {
                required: "a:b \"quoted\" \\ \n".into(),
            },
            Rejection::NoRouteRule,
            Rejection::StoreUnavailable { retry_after: 5 },
            Rejection::RateLimited {
                info,
                violated: vec!["burst".into(), "daily".into()],
            },
            Rejection::SessionLimit {
                limit: 10,
                retry_after: 30,
            },
            Rejection::CreditsExhausted {
                balance: 2,
                retry_after: Some(3600),
            },
            Rejection::MissingPrincipal {
                layer: "ScopeGuard",
            },
        ];
        for r in cases {
            let res = r.problem_response("api");
            let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
            let kind = match r {
                Rejection::RateLimited { .. } => QUOTA_EXCEEDED,
                _ => "about:blank",
            };
            assert_eq!(v["type"], kind);
            assert_eq!(v["title"], *r.message());
            assert_eq!(v["status"], r.status().as_u16());
            assert_eq!(v["code"], r.code());
            match &r {
                Rejection::InsufficientScope { required } => {
                    assert_eq!(v["required_scope"], required.as_str())
                }
                Rejection::RateLimited { info: i, violated } => {
                    assert_eq!(v["violated-policies"], serde_json::json!(violated));
                    assert_eq!(v["retry_after"], i.retry_after);
                    assert_eq!(v["limit"], i.limit);
                    assert_eq!(res.headers()[RETRY_AFTER], "7");
                    assert_eq!(res.headers()[X_RATELIMIT_RESET], "1700000060");
                }
                Rejection::CreditsExhausted {
                    balance,
                    retry_after,
                } => {
                    assert_eq!(v["balance"], *balance);
                    assert_eq!(v["retry_after"], retry_after.unwrap());
                    assert_eq!(res.headers()[RETRY_AFTER], "3600");
                }
                Rejection::SessionLimit { limit, retry_after } => {
                    assert_eq!(v["retry_after"], *retry_after);
                    assert_eq!(v["limit"], *limit);
                }
                Rejection::StoreUnavailable { retry_after } => {
                    assert_eq!(v["retry_after"], *retry_after)
                }
                _ => assert_eq!(v.as_object().unwrap().len(), 4),
            }
        }
        assert_eq!(
            Rejection::RateLimited {
                info,
                violated: vec![]
            }
            .message(),
            "Rate limit of 100 requests exceeded; retry after 7 seconds"
        );
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        let r = Rejection::MissingPrincipal { layer: "a%b\né" };
        let res = r.grpc_response();
        let v = res.headers()["grpc-message"].to_str().unwrap();
        assert!(v.contains("a%25b%0A%C3%A9"), "{v}");
    }
}
