//! API keys: generation, parsing and hashing.
//!
//! A key is `prefix + random` (and, optionally, a 6-character CRC32 checksum), for example
//! `br_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6`. Only its SHA-256 digest, a [`KeyHash`], is ever
//! stored; the raw key lives in an [`ApiKey`], a secret type that redacts itself in `Debug` and
//! `Display` and wipes its memory when dropped.
//!
//! Parsing is ordered so that the cheapest checks run first: prefix, length, alphabet, then the
//! optional checksum. A malformed key is refused before any hashing or store lookup.

mod format;
mod hash;
mod secret;

pub use format::{FormatError, KeyFormat, KeyFormats, MalformedKey};
pub use hash::KeyHash;
pub(crate) use hash::KeyHashBuilder;
pub(crate) use secret::push_random_alphanumerics;
pub use secret::{ApiKey, RngError};

#[cfg(test)]
mod tests {
    use super::*;
    use format::all_alphanumeric;
    use sha2::{Digest, Sha256};

    #[test]
    fn key_hash_is_sha256_at_every_length() {
        let text: String = (0..200)
            .map(|i| char::from(b'!' + (i % 94) as u8))
            .collect();
        for len in 0..=text.len() {
            let s = &text[..len];
            let expected: [u8; 32] = Sha256::digest(s.as_bytes()).into();
            assert_eq!(KeyHash::of(s).as_bytes(), &expected, "length {len}");
        }
        // A known vector (FIPS 180-2 appendix B.1).
        assert_eq!(
            KeyHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn default_format_is_br_live_and_32_alphanumerics() {
        let k = KeyFormat::live().generate().unwrap();
        let s = k.expose_secret();
        assert!(s.starts_with("br_live_"));
        assert_eq!(s.len(), 40);
        assert!(s[8..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn generated_keys_differ() {
        let a = KeyFormat::live().generate().unwrap();
        let b = KeyFormat::live().generate().unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
    }

    #[test]
    fn alphanumeric_check_matches_std() {
        for b in 0..=255u8 {
            assert_eq!(all_alphanumeric(&[b]), b.is_ascii_alphanumeric(), "{b}");
        }
        assert!(all_alphanumeric(b"09AZaz"));
        assert!(!all_alphanumeric(b"abc_def"));
    }

    #[test]
    fn check_rejects_in_order() {
        let f = KeyFormat::live();
        assert_eq!(f.check("sk_live_x"), Err(MalformedKey::Prefix));
        assert_eq!(f.check("br_live_abc"), Err(MalformedKey::Length));
        let bad = format!("br_live_{}", "a".repeat(31) + "!");
        assert_eq!(f.check(&bad), Err(MalformedKey::Alphabet));
        let good = format!("br_live_{}", "a".repeat(32));
        assert_eq!(f.check(&good), Ok(()));
    }

    #[test]
    fn checksum_detects_a_typo() {
        let f = KeyFormat::live().with_checksum(true);
        let k = f.generate().unwrap();
        let s = k.expose_secret().to_owned();
        assert_eq!(s.len(), 8 + 32 + 6);
        assert_eq!(f.check(&s), Ok(()));
        let mut typo = s.into_bytes();
        typo[12] = if typo[12] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(f.check(&typo), Err(MalformedKey::Checksum));
    }

    #[test]
    fn formats_report_the_matching_prefix_error() {
        let fs = KeyFormats::new([KeyFormat::live(), KeyFormat::test()]);
        let t = KeyFormat::test().generate().unwrap();
        assert_eq!(fs.check(t.expose_secret()).unwrap().environment(), "test");
        assert_eq!(fs.check("br_test_short").unwrap_err(), MalformedKey::Length);
        assert_eq!(fs.check("nope").unwrap_err(), MalformedKey::Prefix);
    }

    #[test]
    fn secret_is_redacted() {
        let k = KeyFormat::live().generate().unwrap();
        let random = &k.expose_secret()[8..];
        assert!(!format!("{k:?}").contains(random));
        assert!(!format!("{k}").contains(random));
        assert!(!format!("{k:?}").contains(&random[28..]));
    }

    #[test]
    fn hint_shows_prefix_and_last_four() {
        let k = ApiKey::from_secret("br_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6");
        assert_eq!(k.hint(&KeyFormat::live()), "br_live_…o5p6");
    }

    #[test]
    fn hash_hex_round_trip_and_ct_eq() {
        let a = KeyHash::of("br_live_x");
        let b = KeyHash::of("br_live_y");
        assert_eq!(KeyHash::from_hex(&a.to_hex()), Some(a));
        assert!(a.ct_eq(&a));
        assert!(!a.ct_eq(&b));
        let mut last = *a.as_bytes();
        last[31] ^= 1;
        assert!(!a.ct_eq(&KeyHash::from_bytes(last)));
        assert_eq!(
            KeyHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn bad_format_parameters_are_errors() {
        assert!(KeyFormat::new("", "live").is_err());
        assert!(KeyFormat::new("BR_", "live").is_err());
        assert!(KeyFormat::new("btk_", "Live!").is_err());
        assert!(KeyFormat::live().with_random_len(8).is_err());
        assert!(KeyFormat::live().with_random_len(40).is_ok());
    }
}
