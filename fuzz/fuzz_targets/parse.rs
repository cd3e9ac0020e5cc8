//! Header and key parsing on arbitrary bytes: never panics, and a key that passes the format
//! check always has the shape the format promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_api_key::auth::parse_bearer;
use tower_api_key::{KeyFormat, KeyFormats};

fuzz_target!(|data: &[u8]| {
    let formats = KeyFormats::new([
        KeyFormat::live(),
        KeyFormat::test().with_checksum(true),
    ]);
    if let Some(token) = parse_bearer(data) {
        assert!(!token.is_empty());
        assert!(token.bytes().all(|b| b.is_ascii_graphic()));
        if let Ok(format) = formats.check(token) {
            assert!(token.starts_with(format.prefix()));
            assert_eq!(token.len(), format.key_len());
            assert!(token[format.prefix().len()..].bytes().all(|b| b.is_ascii_alphanumeric()));
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = formats.check(s);
        let _ = s.parse::<tower_api_key::Scope>();
    }
});
