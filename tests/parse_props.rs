//! Property tests of the key parser: arbitrary input never panics, and only well-formed keys
//! pass. (The bearer parser's own property tests sit beside it, in `src/auth/extract.rs`.)

use proptest::prelude::*;
use tower_api_key::{KeyFormat, KeyFormats, MalformedKey};

fn formats() -> KeyFormats {
    KeyFormats::new([
        KeyFormat::live(),
        KeyFormat::test().with_checksum(true),
        KeyFormat::new("btk_", "sandbox").unwrap(),
    ])
}

/// The reference definition of "well-formed", written independently of the parser.
fn well_formed(key: &str) -> bool {
    let alnum = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
    if let Some(rest) = key.strip_prefix("br_live_") {
        return rest.len() == 32 && alnum(rest);
    }
    if let Some(rest) = key.strip_prefix("btk_") {
        return rest.len() == 32 && alnum(rest);
    }
    if let Some(rest) = key.strip_prefix("br_test_") {
        if rest.len() != 38 || !alnum(rest) {
            return false;
        }
        // Checksum: base62 of CRC32 over prefix + random part, six digits.
        const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut sum = crc32fast::hash(&key.as_bytes()[..key.len() - 6]);
        let mut digits = [0u8; 6];
        for d in digits.iter_mut().rev() {
            *d = A[(sum % 62) as usize];
            sum /= 62;
        }
        return key.as_bytes()[key.len() - 6..] == digits;
    }
    false
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn key_check_never_panics_and_accepts_exactly_the_well_formed(s in ".{0,64}") {
        let f = formats();
        prop_assert_eq!(f.check(&s).is_ok(), well_formed(&s), "{:?}", s);
    }

    #[test]
    fn near_miss_keys_are_judged_like_the_reference(
        prefix in prop_oneof![Just("br_live_"), Just("br_test_"), Just("btk_"), Just("br_lve_")],
        body in "[0-9A-Za-z_!-]{28,40}",
    ) {
        let key = format!("{prefix}{body}");
        prop_assert_eq!(formats().check(&key).is_ok(), well_formed(&key), "{}", key);
    }

    /// Every case is valid by construction: the replacement is the original character moved
    /// `shift` (1 to 61) places along the 62 alphanumerics, so it always differs and nothing
    /// is filtered out.
    #[test]
    fn generated_keys_always_pass_and_one_changed_char_fails_the_checksum(
        pos in 8usize..46, shift in 1usize..62,
    ) {
        const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let f = KeyFormat::test().with_checksum(true);
        let key = f.generate().unwrap();
        let secret = key.expose_secret().to_owned();
        prop_assert!(f.check(&secret).is_ok());
        let mut bytes = secret.clone().into_bytes();
        let at = ALNUM.iter().position(|&c| c == bytes[pos]).unwrap();
        bytes[pos] = ALNUM[(at + shift) % ALNUM.len()];
        let changed = String::from_utf8(bytes).unwrap();
        prop_assert_ne!(&changed, &secret);
        prop_assert_eq!(f.check(&changed), Err(MalformedKey::Checksum));
    }
}
