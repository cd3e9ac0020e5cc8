//! Finding the credential in a request, and a key where none belongs (the URL): pure
//! functions, no tower.

use std::borrow::Cow;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, Uri};
use percent_encoding::percent_decode;

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

/// Query parameter names that can only mean a credential, compared case-insensitively after
/// decoding. Generic names (`token`, `key`) are left out: APIs use them for other things.
const CREDENTIAL_PARAMS: &[&[u8]] = &[
    b"api_key",
    b"apikey",
    b"api-key",
    b"x-api-key",
    b"access_token",
];

/// Whether the URL's query string carries an API key, so the request must be refused
/// (`400 api_key_in_query`) rather than served: a key in a URL ends up in access logs, proxies,
/// browser history and `Referer` headers.
///
/// The query is split into parameters at `&` and each name and value at its first `=`; each is
/// decoded once as a form field (`%XX` escapes, `+` as a space; an invalid escape such as `%zz`
/// or a trailing `%` is kept literally). The query carries a key when:
///
/// - the query as sent contains a well-formed key of one of `formats` (prefix, length,
///   alphabet and checksum, as [`KeyFormats::check`] accepts; a prefix alone or a truncated key
///   is not one): `%a` before `br_live_…` hides nothing from a log;
/// - after decoding, a name or a value contains one, whatever the parameter; or
/// - a name is `api_key`, `apikey`, `api-key`, `x-api-key` or `access_token` in any case,
///   whatever its value (even none). `token`, `key` and other generic names are allowed.
///
/// Decoding happens once, as the application's own query parser does: a double-encoded key
/// (`br%255Flive%255F…`) is not a key to that parser, and passes.
///
/// [`ApiKeyAuth`](crate::ApiKeyAuth) applies this check to every request it sees; call it for
/// routes served outside the stack (a health check, a development endpoint):
///
/// ```
/// use http::Uri;
/// use tower_api_key::auth::key_in_query;
/// use tower_api_key::{KeyFormat, KeyFormats};
///
/// let formats = KeyFormats::default();
/// let key = KeyFormat::live().generate()?;
/// let rest = &key.expose_secret()["br_live_".len()..];
/// let uri: Uri = format!("/healthz?k=br%5Flive%5F{rest}").parse()?;
/// assert!(key_in_query(&uri, &formats));
/// assert!(key_in_query(&"/healthz?API%5FKEY=".parse()?, &formats));
/// assert!(!key_in_query(&"/healthz?token=abc&q=br_live_".parse()?, &formats));
/// assert!(!key_in_query(&"/healthz".parse()?, &formats));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn key_in_query(uri: &Uri, formats: &KeyFormats) -> bool {
    let Some(query) = uri.query() else {
        return false;
    };
    let raw = query.as_bytes();
    // As sent: a key in the URL is in every access log whatever an escape next to it means.
    if formats.appears_in(raw) {
        return true;
    }
    // As the application reads it: only what decoding changed needs another look.
    let changed_has_key = |decoded: Cow<'_, [u8]>| match decoded {
        Cow::Owned(bytes) => formats.appears_in(&bytes),
        Cow::Borrowed(_) => false,
    };
    raw.split(|&b| b == b'&').any(|param| {
        let mut halves = param.splitn(2, |&b| b == b'=');
        let name = form_decode(halves.next().unwrap_or_default());
        let value = halves.next().unwrap_or_default();
        is_credential_name(&name) || changed_has_key(name) || changed_has_key(form_decode(value))
    })
}

/// Whether a decoded parameter name is one of [`CREDENTIAL_PARAMS`], in any case.
fn is_credential_name(name: &[u8]) -> bool {
    CREDENTIAL_PARAMS
        .iter()
        .any(|p| name.eq_ignore_ascii_case(p))
}

/// `raw` decoded once as a form field: `+` is a space, `%XX` the byte it escapes, an invalid
/// escape itself. Borrowed (no allocation) when `raw` has neither `%` nor `+`.
pub(crate) fn form_decode(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, piece) in raw.split(|&b| b == b'+').enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend(percent_decode(piece));
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyFormat;
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
    fn a_plain_key_counts_even_when_an_escape_before_it_eats_its_first_letter() {
        let formats = KeyFormats::default();
        let key = KeyFormat::live().generate().unwrap();
        // `%ab` decodes to one byte, taking the key's `b` with it: the decoded value holds no
        // key, but the URL as sent (and every log of it) does.
        let uri: Uri = format!("/x?k=%a{}", key.expose_secret()).parse().unwrap();
        assert!(key_in_query(&uri, &formats));
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

    fn in_query(uri: &str) -> bool {
        key_in_query(&uri.parse::<Uri>().unwrap(), &KeyFormats::default())
    }

    const KEY: &str = "br_live_0123456789abcdefghijABCDEFGHIJxy";

    #[test]
    fn credential_names_are_refused_in_any_case_and_encoding() {
        assert!(in_query("/v1/browsers?api_key=abc"));
        assert!(in_query("/v1/browsers?x=1&ACCESS_TOKEN=abc"));
        assert!(in_query("/v1/browsers?Api-Key"));
        assert!(in_query("/v1/browsers?apikey="));
        assert!(in_query("/v1/browsers?x%2dapi%2dkey=1"));
        assert!(!in_query("/v1/browsers?api+key=1"));
        assert!(!in_query("/v1/browsers?token=abc&key=v&access=1"));
    }

    #[test]
    fn well_formed_keys_are_refused_anywhere_and_prefixes_alone_pass() {
        assert_eq!(KeyFormats::default().check(KEY).map(|_| ()), Ok(()));
        assert!(in_query(&format!("/v1/browsers?k={KEY}")));
        assert!(in_query(&format!("/v1/browsers?{KEY}")));
        assert!(in_query(&format!(
            "/v1/browsers?k=br%5Flive%5F{}",
            &KEY[8..]
        )));
        assert!(in_query(&format!("/v1/browsers?k=a+{KEY}+b")));
        assert!(!in_query("/v1/browsers?k=br_live_abcdef"));
        assert!(!in_query(&format!(
            "/v1/browsers?k={}",
            &KEY[..KEY.len() - 1]
        )));
        assert!(!in_query(&format!(
            "/v1/browsers?k=br_live_{}%21",
            &KEY[9..]
        )));
        assert!(!in_query(&format!(
            "/v1/browsers?k=br%255Flive%255F{}",
            &KEY[8..]
        )));
        assert!(!in_query("/v1/browsers?page=2"));
        assert!(!in_query("/v1/browsers"));
    }

    #[test]
    fn every_configured_format_is_recognised() {
        let f = KeyFormats::new([KeyFormat::live(), KeyFormat::test()]);
        let test_key = KeyFormat::test().generate().unwrap();
        let uri = format!("/x?k={}", test_key.expose_secret());
        assert!(key_in_query(&uri.parse().unwrap(), &f));
        assert!(!key_in_query(&uri.parse().unwrap(), &KeyFormats::default()));
        let sum = KeyFormat::new("btk_", "live").unwrap().with_checksum(true);
        let good = sum.generate().unwrap();
        let good = good.expose_secret();
        let f = KeyFormats::from(sum);
        assert!(key_in_query(&format!("/x?k={good}").parse().unwrap(), &f));
        // The same characters with the checksum broken are not a key.
        let last = if good.ends_with('0') { '1' } else { '0' };
        let bad = format!("{}{last}", &good[..good.len() - 1]);
        assert!(!key_in_query(&format!("/x?k={bad}").parse().unwrap(), &f));
    }

    #[test]
    fn decoding_is_once_with_plus_as_space_and_invalid_escapes_literal() {
        assert_eq!(&*form_decode(b"a+b%2Bc"), b"a b+c");
        assert_eq!(&*form_decode(b"%5f%5F"), b"__");
        assert_eq!(&*form_decode(b"%255F"), b"%5F");
        assert_eq!(&*form_decode(b"%zz%"), b"%zz%");
        assert_eq!(&*form_decode(b"%4"), b"%4");
        assert_eq!(&*form_decode(b"%ff"), &[0xff]);
        assert!(matches!(form_decode(b"page"), Cow::Borrowed(_)));
        assert!(!in_query("/v1/browsers?q=%zz&r=%"));
        assert!(in_query(&format!("/v1/browsers?q=%zz{KEY}%")));
    }

    /// `s` with the bytes picked by `mask` written as `%XX` (`upper` picks the hex case).
    fn encode_some(s: &str, mask: &[bool], upper: bool) -> String {
        s.bytes()
            .zip(mask.iter().chain(std::iter::repeat(&false)))
            .map(|(b, &enc)| match (enc, upper) {
                (false, _) => (b as char).to_string(),
                (true, true) => format!("%{b:02X}"),
                (true, false) => format!("%{b:02x}"),
            })
            .collect()
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
        /// Any valid key of a configured format, with any subset of its bytes percent-encoded,
        /// as the value or the name of any parameter among others: refused.
        #[test]
        fn encoded_key_is_found_under_any_name(
            prefix in prop_oneof![Just("br_live_"), Just("br_test_")],
            body in "[0-9A-Za-z]{32}",
            mask in proptest::collection::vec(any::<bool>(), 40),
            upper in any::<bool>(),
            name in "[A-Za-z0-9_.~-]{0,12}",
            before in "([a-z]{1,5}=[a-z0-9]{0,5}&){0,2}",
            as_name in any::<bool>(),
        ) {
            let formats = KeyFormats::new([KeyFormat::live(), KeyFormat::test()]);
            let key = format!("{prefix}{body}");
            prop_assert!(formats.check(&key).is_ok());
            let enc = encode_some(&key, &mask, upper);
            let query = if as_name { format!("{before}{enc}={name}") } else { format!("{before}{name}={enc}") };
            let uri: Uri = format!("/v1/browsers?{query}").parse().unwrap();
            prop_assert!(key_in_query(&uri, &formats), "{}", query);
        }

        /// Any query the `http` crate accepts, escapes valid or not: the check answers.
        #[test]
        fn query_check_never_panics(query in "[!-~]{0,60}") {
            if let Ok(uri) = format!("/x?{query}").parse::<Uri>() {
                let _ = key_in_query(&uri, &KeyFormats::default());
            }
        }
    }

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
