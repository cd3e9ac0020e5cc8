//! Finding the credential in a request: pure functions, no tower.

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, Uri};

use crate::key::KeyFormats;

/// What the headers carry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Credential<'a> {
    /// No credential we recognise.
    Missing,
    /// A credential that cannot be a key (several `Authorization` headers, non-ASCII, …).
    Bad,
    /// A candidate key.
    Key(&'a str),
}

/// The token of an `Authorization: Bearer <token>` value.
///
/// The scheme is matched case-insensitively (RFC 7235); one or more spaces separate it from the
/// token; trailing spaces are ignored. Returns `None` for another scheme, an empty token, or a
/// token containing whitespace or non-visible characters.
///
pub(crate) fn parse_bearer(value: &[u8]) -> Option<&str> {
    let (scheme, rest) = value.split_first_chunk::<6>()?;
    if !is_bearer(scheme) || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    if token.is_empty() || !all_graphic(token) {
        return None;
    }
    // SAFETY: `all_graphic` checked that every byte is in `!`..=`~`: ASCII, hence UTF-8.
    // (Validating again with `str::from_utf8` costs a fifth of a malformed-key refusal.)
    Some(unsafe { std::str::from_utf8_unchecked(token) })
}

/// Whether six bytes spell `bearer` in any case, compared as one word.
///
/// Setting bit 5 of each byte folds an ASCII capital to its small letter and is exact here:
/// the only bytes that become `b`, `e`, `a` or `r` are that letter and its capital. (A tenth of
/// a malformed-key refusal less than `eq_ignore_ascii_case`'s byte loop.)
#[inline]
fn is_bearer(scheme: &[u8; 6]) -> bool {
    const BEARER: u64 = u64::from_le_bytes(*b"bearer\0\0");
    let mut word = [0u8; 8];
    word[..6].copy_from_slice(scheme);
    u64::from_le_bytes(word) | 0x2020_2020_2020 == BEARER
}

/// Whether every byte is visible ASCII (`!`..=`~`). Folded without an early exit, so the loop
/// is vectorized: a 40-byte key is checked in a few instructions.
#[inline]
pub(crate) fn all_graphic(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(b'!') <= b'~' - b'!'))
}

/// The candidate key of a request: `Authorization: Bearer` first, then the custom header.
pub(crate) fn credential<'a>(
    headers: &'a HeaderMap,
    custom: Option<&HeaderName>,
) -> Credential<'a> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    let auth = all.next();
    if auth.is_some() && all.next().is_some() {
        // Two `Authorization` headers: ambiguous, so a key was attempted and is refused.
        return Credential::Bad;
    }
    if let Some(first) = auth {
        if let Some(token) = parse_bearer(first.as_bytes()) {
            return Credential::Key(token);
        }
        if first.as_bytes().first_chunk::<6>().is_some_and(is_bearer) {
            // `Bearer` with an empty or unparsable token: a key was attempted.
            return Credential::Bad;
        }
    }
    if let Some(name) = custom {
        let mut values = headers.get_all(name).iter();
        if let Some(v) = values.next() {
            if values.next().is_some() {
                return Credential::Bad;
            }
            let trimmed = v.as_bytes().trim_ascii();
            return match std::str::from_utf8(trimmed) {
                Ok(s) if !s.is_empty() && all_graphic(s.as_bytes()) => Credential::Key(s),
                _ => Credential::Bad,
            };
        }
    }
    Credential::Missing
}

/// Query parameter names that carry credentials by convention.
const CREDENTIAL_PARAMS: &[&str] = &["api_key", "apikey", "api-key", "access_token", "x-api-key"];

/// Whether the URL's query string carries something that looks like a key: a value with one of
/// our prefixes, or a parameter named like a credential.
pub(crate) fn key_in_query(uri: &Uri, formats: &KeyFormats) -> bool {
    let Some(query) = uri.query() else {
        return false;
    };
    if query.is_empty() {
        return false;
    }
    if formats.appears_in(query) {
        return true;
    }
    query.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or("");
        CREDENTIAL_PARAMS
            .iter()
            .any(|p| name.eq_ignore_ascii_case(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(parse_bearer(b"BEARER k"), Some("k"));
        assert_eq!(parse_bearer(b"Bearer"), None);
        assert_eq!(parse_bearer(b"Bearer "), None);
        assert_eq!(parse_bearer(b"Bearerk"), None);
        assert_eq!(parse_bearer(b"Token k"), None);
        assert_eq!(parse_bearer(b"BeArEr\tk"), None);
    }

    /// The word compare of the scheme against `eq_ignore_ascii_case`, exhaustively: every
    /// byte at every position, the other five spelling `bearer` in each of their cases.
    #[test]
    fn scheme_compare_is_case_insensitive_and_exact() {
        for case in 0u32..64 {
            let mut word = *b"bearer";
            for (i, b) in word.iter_mut().enumerate() {
                if case & (1 << i) != 0 {
                    b.make_ascii_uppercase();
                }
            }
            assert!(is_bearer(&word));
            for pos in 0..6 {
                for byte in 0..=255u8 {
                    let mut w = word;
                    w[pos] = byte;
                    assert_eq!(is_bearer(&w), w.eq_ignore_ascii_case(b"bearer"), "{w:?}");
                }
            }
        }
    }

    /// The byte-wise parse the word compare replaced.
    fn reference_parse(value: &[u8]) -> Option<&str> {
        if value.len() <= 6 || !value[..6].eq_ignore_ascii_case(b"bearer") || value[6] != b' ' {
            return None;
        }
        let token = value[6..].trim_ascii();
        let ok = !token.is_empty() && token.iter().all(|b| b.is_ascii_graphic());
        ok.then(|| std::str::from_utf8(token).unwrap())
    }

    proptest::proptest! {
        #[test]
        fn parse_agrees_with_the_bytewise_reference(
            v in "[BbXx][Ee][Aa\u{e1}][Rr][Ee][Rr]?[ \t]{0,3}[!-~ \t\u{80}-\u{ff}]{0,8}"
        ) {
            proptest::prop_assert_eq!(parse_bearer(v.as_bytes()), reference_parse(v.as_bytes()));
        }
    }

    #[test]
    fn credential_sources() {
        let x = HeaderName::from_static("x-api-key");
        assert_eq!(credential(&headers(&[]), Some(&x)), Credential::Missing);
        assert_eq!(
            credential(&headers(&[("authorization", "Bearer k1")]), Some(&x)),
            Credential::Key("k1")
        );
        assert_eq!(
            credential(&headers(&[("x-api-key", "k2")]), Some(&x)),
            Credential::Key("k2")
        );
        assert_eq!(
            credential(&headers(&[("x-api-key", "k2")]), None),
            Credential::Missing
        );
        assert_eq!(
            credential(&headers(&[("authorization", "Basic abc")]), None),
            Credential::Missing
        );
        assert_eq!(
            credential(&headers(&[("authorization", "Bearer ")]), None),
            Credential::Bad
        );
        assert_eq!(
            credential(
                &headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
                None
            ),
            Credential::Bad
        );
    }

    #[test]
    fn query_detection() {
        let f = KeyFormats::default();
        let q = |s: &str| key_in_query(&s.parse::<Uri>().unwrap(), &f);
        assert!(q("/v1/browsers?api_key=abc"));
        assert!(q("/v1/browsers?x=1&ACCESS_TOKEN=abc"));
        assert!(q("/v1/browsers?k=br_live_abcdef"));
        assert!(!q("/v1/browsers?page=2"));
        assert!(!q("/v1/browsers"));
    }

    #[test]
    fn bearer_examples() {
        assert_eq!(parse_bearer(b"Bearer br_live_abc"), Some("br_live_abc"));
        assert_eq!(parse_bearer(b"bearer   br_live_abc "), Some("br_live_abc"));
        assert_eq!(parse_bearer(b"Basic dXNlcjpwYXNz"), None);
        assert_eq!(parse_bearer(b"Bearer a b"), None);
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn bearer_parser_never_panics_and_yields_only_visible_ascii(
            scheme in prop_oneof![Just(&b"Bearer "[..]), Just(&b"bearer  "[..]), Just(&b""[..])],
            tail in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let bytes = [scheme, &tail[..]].concat();
            // The parser skips re-validating UTF-8 because it checked for visible ASCII: a token
            // it returns must be exactly a run of the input's visible ASCII bytes.
            if let Some(token) = parse_bearer(&bytes) {
                prop_assert!(!token.is_empty());
                prop_assert!(token.bytes().all(|b| (b'!'..=b'~').contains(&b)), "{:?}", token);
                prop_assert!(std::str::from_utf8(token.as_bytes()).is_ok());
            }
        }

        #[test]
        fn bearer_token_is_what_follows_the_scheme(
            scheme in "(?i:bearer)",
            spaces in " {1,4}",
            token in "[!-~]{1,80}",
        ) {
            let value = format!("{scheme}{spaces}{token}");
            prop_assert_eq!(parse_bearer(value.as_bytes()), Some(token.as_str()));
        }
    }
}
