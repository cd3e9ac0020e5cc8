//! Arbitrary headers and URI through the real `ApiKeyAuth` over a memory store holding one
//! known key (`common::KEY`), configured for `Authorization: Bearer` and `x-api-key`.
//!
//! Input: the first line is the request target (an unparsable one falls back to `/v1/x`); each
//! further line is a header `name:value` (one space after the colon is dropped; lines that are
//! not a valid header are skipped; repeated names are appended, not replaced).
//!
//! Property:
//! - the layer never panics, and answers without waiting;
//! - the request reaches the inner service (200, with the known key's `Principal`) only if it
//!   carried exactly that key — in the one `Authorization` header as `Bearer <key>` (scheme in
//!   any case), or, with no `Bearer` attempt in `Authorization`, in the one `x-api-key` header —
//!   and its query string carries no key (no valid key in plain text, no credential-named
//!   parameter);
//! - every other answer is one of `ApiKeyAuth`'s documented refusals (400 or 401 — the memory
//!   store never fails, so never 503): a problem+json body whose `status` and `code` are a pair
//!   of the table in `tower_api_key::reject`, or the trailers-only gRPC form for gRPC requests;
//!   a refusal echoes none of the request's credentials;
//! - with no query string, the known key sent plainly (`Authorization: Bearer <key>` alone, or
//!   `x-api-key: <key>` alone) is let through, and a request with neither header is refused
//!   401 `missing_api_key`.
#![no_main]

mod common;

use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};
use libfuzzer_sys::fuzz_target;

use common::{CUSTOM, KEY};

/// Query parameter names that carry credentials by convention (refused in a query string).
const CREDENTIAL_PARAMS: &[&str] = &["api_key", "apikey", "api-key", "access_token", "x-api-key"];

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let uri = lines
        .next()
        .and_then(|l| Uri::try_from(l).ok())
        .unwrap_or_else(|| Uri::from_static("/v1/x"));
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    check(uri, headers);
});

fn check(uri: Uri, headers: HeaderMap) {
    let mut req = Request::builder()
        .uri(uri.clone())
        .body(())
        .expect("a valid URI");
    *req.headers_mut() = headers.clone();
    let mut svc = common::service();
    let out = common::send(&mut svc, req);

    let auths: Vec<&[u8]> = headers
        .get_all(AUTHORIZATION)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let customs: Vec<&[u8]> = headers
        .get_all(CUSTOM)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let grpc = headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));

    if out.reached() {
        assert_eq!(out.status, 200);
        assert!(
            !key_like_query(uri.query()),
            "let through with a key-like query {:?}",
            uri.query()
        );
        let via_auth = auths.len() == 1 && bearer_token(auths[0]) == Some(KEY.as_bytes());
        let via_custom = auths.len() <= 1
            && !auths.iter().any(|a| is_bearer_scheme(a))
            && customs.len() == 1
            && customs[0].trim_ascii() == KEY.as_bytes();
        assert!(
            via_auth || via_custom,
            "let through without the exact key: {headers:?}"
        );
        return;
    }

    let refusal = common::assert_documented_refusal(&out, grpc);
    assert!(
        matches!(refusal.status, 400 | 401),
        "the memory store never fails, yet {refusal:?}"
    );
    // A refusal is rendered in a fresh header map: none of the request's credentials come back.
    assert!(!out.headers.contains_key(AUTHORIZATION));
    assert!(!out.headers.contains_key(CUSTOM));
    assert!(!contains(&out.body, KEY.as_bytes()));
    for (_, v) in &out.headers {
        assert!(
            !contains(v.as_bytes(), KEY.as_bytes()),
            "the key echoed in {v:?}"
        );
    }

    if uri.query().is_none_or(str::is_empty) {
        assert_ne!(refusal.status, 400, "no query string, yet {refusal:?}");
        let exact_auth = auths.len() == 1
            && is_bearer_scheme(auths[0])
            && auths[0][6..].strip_prefix(b" ") == Some(KEY.as_bytes());
        let exact_custom = auths.is_empty() && customs.len() == 1 && customs[0] == KEY.as_bytes();
        assert!(
            !(exact_auth || exact_custom),
            "the known key, sent plainly, was refused: {refusal:?} {headers:?}"
        );
        if auths.is_empty() && customs.is_empty() {
            assert_eq!(refusal.status, 401);
            assert!(
                matches!(refusal.code, None | Some("missing_api_key")),
                "no credential at all, yet {refusal:?}"
            );
        }
    }
}

/// Whether an `Authorization` value starts with the `Bearer` scheme (any case).
fn is_bearer_scheme(value: &[u8]) -> bool {
    value.len() >= 6 && value[..6].eq_ignore_ascii_case(b"bearer")
}

/// The token of `Bearer <token>`: after the scheme and at least one space, trimmed.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    if !is_bearer_scheme(value) || value.get(6) != Some(&b' ') {
        return None;
    }
    Some(value[6..].trim_ascii())
}

/// Whether a query string, as sent, carries a key: a valid key in plain text, or a parameter
/// named like a credential.
fn key_like_query(query: Option<&str>) -> bool {
    let Some(q) = query else { return false };
    common::contains_valid_key(q)
        || q.split('&').any(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            CREDENTIAL_PARAMS
                .iter()
                .any(|p| name.eq_ignore_ascii_case(p))
        })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
