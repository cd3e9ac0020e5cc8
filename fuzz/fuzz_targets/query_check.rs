//! An arbitrary query string through the real `ApiKeyAuth` (the input is the query: the request
//! target is `/v1/x?<input>`; inputs that make no valid URI are skipped, and a `#fragment` is
//! not part of the query the layer sees).
//!
//! The request is sent twice: once carrying the store's known key in `Authorization: Bearer`,
//! once with no credential. Property:
//! - the layer never panics, and answers without waiting;
//! - with the valid key, the only possible refusal is 400 `api_key_in_query` (problem+json);
//!   without a credential, the answer is that same 400 or 401 `missing_api_key`;
//! - the query check comes first and does not depend on the credential: the keyless request is
//!   refused 400 exactly when the keyed one is;
//! - a query containing, in plain text, a key valid for an accepted format (`br_live_…`, or a
//!   checksummed `br_test_…`) is refused 400 `api_key_in_query`;
//! - an empty query, or one made only of `name=value` pairs with everyday names (`page`,
//!   `limit`, `cursor`, `q`, `sort`) and alphanumeric values, is let through.
#![no_main]

mod common;

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Uri};
use libfuzzer_sys::fuzz_target;

use common::{KEY, Refusal};

/// Parameter names that carry no credential, by any convention.
const EVERYDAY: &[&str] = &["page", "limit", "cursor", "q", "sort"];

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(uri) = Uri::try_from(format!("/v1/x?{input}")) else {
        return;
    };
    let query = uri.query().unwrap_or("").to_owned();
    let query = query.as_str();
    let mut svc = common::service();

    let mut keyed = Request::builder().uri(uri.clone()).body(()).unwrap();
    keyed.headers_mut().insert(
        AUTHORIZATION,
        HeaderValue::try_from(format!("Bearer {KEY}")).unwrap(),
    );
    let with_key = common::send(&mut svc, keyed);
    let refused_with_key = if with_key.reached() {
        assert_eq!(with_key.status, 200);
        false
    } else {
        let r = common::assert_documented_refusal(&with_key, false);
        assert_eq!(
            r,
            Refusal {
                status: 400,
                code: Some("api_key_in_query")
            },
            "a request with a valid key refused for something else than its query {query:?}"
        );
        true
    };

    let keyless = common::send(&mut svc, Request::builder().uri(uri).body(()).unwrap());
    let r = common::assert_documented_refusal(&keyless, false);
    match r.code {
        Some("api_key_in_query") => assert!(
            refused_with_key,
            "the query verdict depends on the credential: {query:?}"
        ),
        Some("missing_api_key") => assert!(
            !refused_with_key,
            "the query check must come before the credential: {query:?}"
        ),
        _ => panic!("a keyless request refused with {r:?}"),
    }

    if common::contains_valid_key(query) {
        assert!(
            refused_with_key,
            "a valid key in the query let through: {query:?}"
        );
    }
    if is_everyday(query) {
        assert!(!refused_with_key, "an everyday query refused: {query:?}");
    }
});

/// Whether `query` is empty or only `name=value` pairs with an everyday name and an
/// alphanumeric value.
fn is_everyday(query: &str) -> bool {
    query.is_empty()
        || query.split('&').all(|pair| {
            pair.split_once('=').is_some_and(|(name, value)| {
                EVERYDAY.contains(&name) && value.bytes().all(|b| b.is_ascii_alphanumeric())
            })
        })
}
