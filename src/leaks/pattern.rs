//! The key pattern a secret scanner looks for, and the offline check of what it found.

use crate::key::{KeyFormat, KeyFormats};

/// The regular expression that finds keys of `format` in text, for a secret scanner (GitHub's
/// partner program, gitleaks, trufflehog, a pre-commit hook).
///
/// The prefix, then exactly as many characters of `[0-9A-Za-z]` as the format has after it
/// (the random part, and the 6-character checksum when the format carries one), between word
/// boundaries so that a longer token that merely contains a key-like run is not reported:
///
/// | format | pattern |
/// |---|---|
/// | [`KeyFormat::live()`] | `\bbr_live_[0-9A-Za-z]{32}\b` |
/// | [`KeyFormat::test()`] | `\bbr_test_[0-9A-Za-z]{32}\b` |
/// | `KeyFormat::new("btk_", "live")?.with_checksum(true)` | `\bbtk_[0-9A-Za-z]{38}\b` (the last 6 are a base62 CRC32) |
///
/// A regular expression cannot compute a CRC32: give the scanner this pattern, and run what it
/// finds through [`is_well_formed`] (GitHub's program calls this "post-processing").
///
/// ```
/// use tower_api_key::KeyFormat;
/// use tower_api_key::leaks::scanner_pattern;
///
/// assert_eq!(scanner_pattern(&KeyFormat::live()), r"\bbr_live_[0-9A-Za-z]{32}\b");
/// ```
pub fn scanner_pattern(format: &KeyFormat) -> String {
    // The prefix is 1 to 32 characters of `[a-z0-9_]` (checked by `KeyFormat::new`): none of
    // them is special in a regular expression, so it goes in as it is.
    let body = format.key_len() - format.prefix().len();
    format!(r"\b{}[0-9A-Za-z]{{{body}}}\b", format.prefix())
}

/// Whether `found` is a well-formed key of one of `formats`: right prefix, length and alphabet,
/// and the right checksum when the format has one. No hashing, no lookup: a scanner's match
/// that fails here is certainly not one of ours.
///
/// ```
/// use tower_api_key::{KeyFormat, KeyFormats};
/// use tower_api_key::leaks::is_well_formed;
///
/// let formats = KeyFormats::from(KeyFormat::live().with_checksum(true));
/// let key = formats.primary().generate()?;
/// assert!(is_well_formed(&formats, key.expose_secret()));
/// assert!(!is_well_formed(&formats, "br_live_0123456789abcdefghijklmnopqrstuvwxyzAB"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn is_well_formed(formats: &KeyFormats, found: &str) -> bool {
    formats.check(found).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_of_the_documented_formats() {
        assert_eq!(
            scanner_pattern(&KeyFormat::test()),
            r"\bbr_test_[0-9A-Za-z]{32}\b"
        );
        let btk = KeyFormat::new("btk_", "live").unwrap().with_checksum(true);
        assert_eq!(scanner_pattern(&btk), r"\bbtk_[0-9A-Za-z]{38}\b");
        let long = KeyFormat::live().with_random_len(64).unwrap();
        assert_eq!(scanner_pattern(&long), r"\bbr_live_[0-9A-Za-z]{64}\b");
    }
}
