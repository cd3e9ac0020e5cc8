//! Shared by the targets that drive requests through `ApiKeyAuth`: a memory store holding one
//! known key, an inner service that marks the responses it produced, and a checker for the
//! documented refusals.
#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower_api_key::{
    ApiKeyAuth, Clock, KeyFormat, KeyFormats, KeyHash, KeyId, KeyRecord, KeyStore, MemoryStore,
    OrgId, Principal, ResponseBody, Scopes, Timestamp,
};
use tower_layer::Layer;
use tower_service::Service;

/// The one key the store knows (`br_live_` + 32 alphanumerics, no checksum).
pub const KEY: &str = "br_live_Fuzz0123456789abcdefghijKLMNOPQR";
/// Its id in the store.
pub const KEY_ID: &str = "key_fuzz";
/// The custom header the layer also reads the key from.
pub const CUSTOM: &str = "x-api-key";
/// The header the inner service sets on every response it produces.
pub const REACHED: &str = "x-fuzz-reached-inner";

/// Every refusal documented in `tower_api_key::reject`: HTTP status and `code`.
pub const DOCUMENTED: &[(u16, &str)] = &[
    (401, "missing_api_key"),
    (401, "invalid_api_key"),
    (400, "api_key_in_query"),
    (403, "insufficient_scope"),
    (403, "no_route_rule"),
    (503, "auth_unavailable"),
    (429, "rate_limited"),
    (429, "session_limit_exceeded"),
    (500, "auth_layer_missing"),
];

/// The codes `ApiKeyAuth` itself can refuse with (the others belong to later layers).
pub const AUTH_CODES: &[&str] = &[
    "missing_api_key",
    "invalid_api_key",
    "api_key_in_query",
    "auth_unavailable",
];

/// `br_live_` keys, and `br_test_` keys with a checksum.
pub fn formats() -> KeyFormats {
    KeyFormats::new([KeyFormat::live(), KeyFormat::test().with_checksum(true)])
}

/// Poll a future that must be ready at once (the memory store and the inner service never wait).
pub fn now<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a memory-store request must be decided without waiting"),
    }
}

pub type Svc = ApiKeyAuth<Inner, MemoryStore>;

/// `ApiKeyAuth` (`br_live_` and checksummed `br_test_` formats, `Authorization: Bearer` or
/// `x-api-key`) over a memory store holding [`KEY`], in front of [`Inner`].
///
/// Built once per process and cloned for each input: authenticating never changes the store
/// (no last-used recorder here) and the clock is fixed, so every input sees the same service.
pub fn service() -> Svc {
    static SERVICE: OnceLock<Svc> = OnceLock::new();
    SERVICE.get_or_init(build_service).clone()
}

fn build_service() -> Svc {
    let start = Timestamp::from_unix_secs(1_700_000_000);
    let (clock, _manual) = Clock::manual(start);
    let store = MemoryStore::new();
    assert!(
        formats().check(KEY).is_ok(),
        "the known key must be well-formed"
    );
    let record = KeyRecord::new(
        KeyId::from(KEY_ID),
        OrgId::from("org_fuzz"),
        "fuzz".to_owned(),
        KeyHash::of(KEY),
        "br_live_…OPQR".to_owned(),
        Scopes::full_access(),
        Arc::from("live"),
        start,
    );
    now(store.insert(record)).expect("insert the known key");
    ApiKeyAuth::new(store)
        .formats(formats())
        .header(HeaderName::from_static(CUSTOM))
        .clock(clock)
        .layer(Inner)
}

/// The inner service: answers 200 marked with [`REACHED`], after checking that the layer
/// inserted the principal of the known key.
#[derive(Clone)]
pub struct Inner;

impl<B> Service<Request<B>> for Inner {
    type Response = Response<Full<Bytes>>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let principal = req
            .extensions()
            .get::<Principal>()
            .expect("a request let through carries a Principal");
        assert_eq!(
            principal.key_id().as_str(),
            KEY_ID,
            "the principal is the known key's"
        );
        let mut res = Response::new(Full::new(Bytes::from_static(b"ok")));
        res.headers_mut()
            .insert(REACHED, http::HeaderValue::from_static("1"));
        std::future::ready(Ok(res))
    }
}

/// What came back from the layer.
pub struct Outcome {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Outcome {
    /// Whether the inner service produced this response (the request was let through).
    pub fn reached(&self) -> bool {
        self.headers.contains_key(REACHED)
    }
}

/// Send `req` through the layer and read the whole response.
pub fn send<B>(svc: &mut Svc, req: Request<B>) -> Outcome
where
    Inner: Service<Request<B>, Response = Response<Full<Bytes>>, Error = std::convert::Infallible>,
{
    assert!(matches!(
        now(std::future::poll_fn(|cx| svc.poll_ready(cx))),
        Ok(())
    ));
    let Ok(res): Result<Response<ResponseBody<Full<Bytes>>>, _> = now(svc.call(req));
    let (parts, body) = res.into_parts();
    let Ok(collected) = now(body.collect());
    let body = collected.to_bytes();
    Outcome {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A documented refusal: the HTTP status it stands for, and its `code` when the response says
/// it (a gRPC `grpc-status` of 16 stands for both 401 codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: Option<&'static str>,
}

/// Check that `out` is a refusal as documented in `tower_api_key::reject`, and return it:
///
/// - a gRPC request (`content-type: application/grpc…`) gets HTTP 200, `content-type:
///   application/grpc`, an empty body and a `grpc-status` of one of `ApiKeyAuth`'s refusals
///   (16 for 401, 3 for 400, 14 for 503);
/// - any other request gets an `application/problem+json` body whose `status` is the HTTP
///   status and whose `code` is one the table pairs with that status and one `ApiKeyAuth` can
///   give; 401 and 400 carry a `WWW-Authenticate: Bearer realm=…` challenge.
pub fn assert_documented_refusal(out: &Outcome, grpc: bool) -> Refusal {
    assert!(
        !out.reached(),
        "a refusal must not come from the inner service"
    );
    if grpc {
        assert_eq!(
            out.status,
            StatusCode::OK,
            "gRPC refusals are trailers-only 200s"
        );
        assert_eq!(
            out.headers.get(CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(&b"application/grpc"[..])
        );
        assert!(out.body.is_empty(), "a trailers-only response has no body");
        let status = out
            .headers
            .get("grpc-status")
            .expect("a gRPC refusal carries grpc-status");
        let (status, code) = match status.as_bytes() {
            b"16" => (401, None),
            b"3" => (400, Some("api_key_in_query")),
            b"14" => (503, Some("auth_unavailable")),
            other => panic!("grpc-status {other:?} is not one of ApiKeyAuth's refusals"),
        };
        return Refusal { status, code };
    }
    assert_eq!(
        out.headers.get(CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(&b"application/problem+json"[..]),
        "status {}",
        out.status
    );
    let problem: serde_json::Value =
        serde_json::from_slice(&out.body).expect("the problem body is JSON");
    let code = problem["code"]
        .as_str()
        .expect("the problem has a string code");
    let status = out.status.as_u16();
    assert_eq!(problem["status"].as_u64(), Some(u64::from(status)));
    assert!(problem["title"].is_string(), "the problem has a title");
    let &(_, documented) = DOCUMENTED
        .iter()
        .find(|(s, c)| *s == status && *c == code)
        .unwrap_or_else(|| panic!("undocumented refusal {status} {code}"));
    assert!(
        AUTH_CODES.contains(&documented),
        "{documented} is not ApiKeyAuth's"
    );
    if matches!(status, 400 | 401) {
        let challenge = out
            .headers
            .get(WWW_AUTHENTICATE)
            .expect("401 and 400 carry a WWW-Authenticate challenge");
        assert!(challenge.as_bytes().starts_with(b"Bearer realm="));
    }
    Refusal {
        status,
        code: Some(documented),
    }
}

/// Whether `query` holds, as plain text, a key that passes an accepted format's check.
pub fn contains_valid_key(query: &str) -> bool {
    let formats = formats();
    formats.iter().any(|f| {
        query.match_indices(f.prefix()).any(|(at, _)| {
            query
                .get(at..at + f.key_len())
                .is_some_and(|candidate| formats.check(candidate).is_ok())
        })
    })
}
