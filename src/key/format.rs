//! [`KeyFormat`]: what a key looks like, and the checks a presented key must pass.

use std::fmt;
use std::sync::Arc;

use super::secret::{ApiKey, RngError, push_random_alphanumerics};

pub(super) const ALPHABET: &[u8; 62] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const CHECKSUM_LEN: usize = 6;

/// Why a presented key was refused before any lookup.
///
/// Clients never see these details (they get the same 401 for every invalid key); they are
/// reported in `tracing` events and are useful in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedKey {
    /// The key does not start with any accepted prefix.
    #[error("unknown key prefix")]
    Prefix,
    /// The key has the wrong length for its prefix.
    #[error("wrong key length")]
    Length,
    /// The key contains a character outside `[0-9A-Za-z]` after its prefix.
    #[error("invalid character in key")]
    Alphabet,
    /// The checksum suffix does not match the rest of the key.
    #[error("key checksum mismatch")]
    Checksum,
}

/// A [`KeyFormat`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The prefix must be 1 to 32 characters of `[a-z0-9_]`.
    #[error("invalid key prefix {0:?}: use 1 to 32 characters of [a-z0-9_]")]
    Prefix(String),
    /// The environment label must be 1 to 32 characters of `[a-z0-9_-]`.
    #[error("invalid environment {0:?}: use 1 to 32 characters of [a-z0-9_-]")]
    Environment(String),
    /// The random part must be between 16 and 64 characters long.
    #[error("random part of {0} characters is out of range 16..=64")]
    RandomLength(usize),
}

/// The shape of the keys one environment issues and accepts.
///
/// ```
/// use tower_api_key::KeyFormat;
///
/// let live = KeyFormat::live();
/// let key = live.generate()?;
/// assert!(key.expose_secret().starts_with("br_live_"));
/// assert_eq!(key.expose_secret().len(), "br_live_".len() + 32);
/// assert!(live.check(key.expose_secret()).is_ok());
///
/// let sandbox = KeyFormat::new("btk_", "live")?.with_checksum(true);
/// let key = sandbox.generate()?;
/// assert!(sandbox.check(key.expose_secret()).is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct KeyFormat {
    prefix: Arc<str>,
    environment: Arc<str>,
    random_len: usize,
    checksum: bool,
}

impl fmt::Debug for KeyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFormat")
            .field("prefix", &&*self.prefix)
            .field("environment", &&*self.environment)
            .field("random_len", &self.random_len)
            .field("checksum", &self.checksum)
            .finish()
    }
}

impl Default for KeyFormat {
    fn default() -> Self {
        Self::live()
    }
}

impl KeyFormat {
    /// `br_live_` + 32 alphanumerics, environment `live`: the default format.
    pub fn live() -> Self {
        Self {
            prefix: Arc::from("br_live_"),
            environment: Arc::from("live"),
            random_len: 32,
            checksum: false,
        }
    }

    /// `br_test_` + 32 alphanumerics, environment `test`.
    pub fn test() -> Self {
        Self {
            prefix: Arc::from("br_test_"),
            environment: Arc::from("test"),
            random_len: 32,
            checksum: false,
        }
    }

    /// A format with a custom prefix (e.g. `btk_`) and environment label, 32 random characters and
    /// no checksum.
    pub fn new(prefix: &str, environment: &str) -> Result<Self, FormatError> {
        let ok_prefix = !prefix.is_empty()
            && prefix.len() <= 32
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok_prefix {
            return Err(FormatError::Prefix(prefix.to_owned()));
        }
        let ok_env = !environment.is_empty()
            && environment.len() <= 32
            && environment
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok_env {
            return Err(FormatError::Environment(environment.to_owned()));
        }
        Ok(Self {
            prefix: Arc::from(prefix),
            environment: Arc::from(environment),
            random_len: 32,
            checksum: false,
        })
    }

    /// Append a 6-character base62 CRC32 checksum (GitHub-style) to generated keys and require it
    /// on parsed ones, so a mistyped or made-up key is refused without hashing or a lookup.
    pub fn with_checksum(mut self, checksum: bool) -> Self {
        self.checksum = checksum;
        self
    }

    /// Change the length of the random part (16 to 64 characters; default 32).
    pub fn with_random_len(mut self, len: usize) -> Result<Self, FormatError> {
        if !(16..=64).contains(&len) {
            return Err(FormatError::RandomLength(len));
        }
        self.random_len = len;
        Ok(self)
    }

    /// The prefix, e.g. `br_live_`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The environment label given to keys of this format, e.g. `live`.
    pub fn environment(&self) -> &str {
        &self.environment
    }

    pub(crate) fn environment_arc(&self) -> &Arc<str> {
        &self.environment
    }

    /// Whether keys carry a checksum suffix.
    pub fn has_checksum(&self) -> bool {
        self.checksum
    }

    /// Total length of a key of this format.
    pub fn key_len(&self) -> usize {
        self.prefix.len() + self.random_len + if self.checksum { CHECKSUM_LEN } else { 0 }
    }

    /// Generate a new key from the operating system's random number generator.
    pub fn generate(&self) -> Result<ApiKey, RngError> {
        let mut key = String::with_capacity(self.key_len());
        key.push_str(&self.prefix);
        push_random_alphanumerics(&mut key, self.random_len)?;
        if self.checksum {
            let sum = crc32fast::hash(key.as_bytes());
            push_base62_checksum(&mut key, sum);
        }
        Ok(ApiKey::from_secret(key))
    }

    /// Check that `key` has this format: prefix, length, alphabet and checksum.
    pub fn check(&self, key: &str) -> Result<(), MalformedKey> {
        self.check_bytes(key.as_bytes())
    }

    /// [`check`](Self::check) on bytes that need not be UTF-8 (a percent-decoded query string).
    #[inline]
    fn check_bytes(&self, bytes: &[u8]) -> Result<(), MalformedKey> {
        if !crate::bytes_eq::starts_with(bytes, self.prefix.as_bytes()) {
            return Err(MalformedKey::Prefix);
        }
        if bytes.len() != self.key_len() {
            return Err(MalformedKey::Length);
        }
        let body = &bytes[self.prefix.len()..];
        if !all_alphanumeric(body) {
            return Err(MalformedKey::Alphabet);
        }
        if self.checksum {
            let split = bytes.len() - CHECKSUM_LEN;
            let sum = crc32fast::hash(&bytes[..split]);
            if !base62_checksum_matches(&bytes[split..], sum) {
                return Err(MalformedKey::Checksum);
            }
        }
        Ok(())
    }

    /// Whether some `key_len()` bytes of `haystack` pass [`check`](Self::check). Only windows
    /// starting with the prefix's first byte are checked; a haystack shorter than a key has none.
    fn appears_in(&self, haystack: &[u8]) -> bool {
        let first = self.prefix.as_bytes().first();
        // `key_len()` is at least 17 (a non-empty prefix and 16 random characters), so
        // `windows` is never asked for windows of size 0 (its one panic).
        haystack
            .windows(self.key_len())
            .any(|w| w.first() == first && self.check_bytes(w).is_ok())
    }
}

/// Whether every byte is in `[0-9A-Za-z]`. Folded without an early exit, so the loop is
/// vectorized (a key is refused or accepted as a whole; which byte is wrong does not matter).
#[inline]
pub(super) fn all_alphanumeric(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |ok, &b| {
        let lower = b | 0x20;
        ok & (b.wrapping_sub(b'0') < 10 || lower.wrapping_sub(b'a') < 26)
    })
}

fn push_base62_checksum(out: &mut String, mut sum: u32) {
    let mut digits = [b'0'; CHECKSUM_LEN];
    for d in digits.iter_mut().rev() {
        *d = ALPHABET[(sum % 62) as usize];
        sum /= 62;
    }
    for d in digits {
        out.push(d as char);
    }
}

fn base62_checksum_matches(digits: &[u8], mut sum: u32) -> bool {
    // 62^6 > 2^32, so six digits always hold the whole sum.
    for &d in digits.iter().rev() {
        if d != ALPHABET[(sum % 62) as usize] {
            return false;
        }
        sum /= 62;
    }
    true
}

/// The formats a service accepts (for example `br_live_` and `br_test_` at once).
///
/// The first format is the one [`KeyManager`](crate::KeyManager) issues by default.
#[derive(Clone, Debug)]
pub struct KeyFormats {
    formats: Arc<[KeyFormat]>,
}

impl Default for KeyFormats {
    fn default() -> Self {
        Self::new([KeyFormat::live()])
    }
}

impl From<KeyFormat> for KeyFormats {
    fn from(f: KeyFormat) -> Self {
        Self::new([f])
    }
}

impl KeyFormats {
    /// Accept the given formats. An empty list accepts the default `br_live_` format.
    pub fn new(formats: impl IntoIterator<Item = KeyFormat>) -> Self {
        let formats: Vec<KeyFormat> = formats.into_iter().collect();
        if formats.is_empty() {
            return Self::default();
        }
        Self {
            formats: formats.into(),
        }
    }

    /// The formats, the default one first.
    pub fn iter(&self) -> impl Iterator<Item = &KeyFormat> {
        self.formats.iter()
    }

    /// The format new keys are issued in unless another is asked for.
    pub fn primary(&self) -> &KeyFormat {
        // `new` never stores an empty list.
        &self.formats[0]
    }

    /// The format issuing keys for `environment`, if any.
    pub fn for_environment(&self, environment: &str) -> Option<&KeyFormat> {
        self.formats.iter().find(|f| &*f.environment == environment)
    }

    /// Check `key` against every accepted format; the error of the format whose prefix matched
    /// (or [`MalformedKey::Prefix`]) when none accepts it.
    pub fn check(&self, key: &str) -> Result<&KeyFormat, MalformedKey> {
        let mut err = MalformedKey::Prefix;
        for f in self.formats.iter() {
            match f.check(key) {
                Ok(()) => return Ok(f),
                Err(MalformedKey::Prefix) => {}
                Err(e) => err = e,
            }
        }
        Err(err)
    }

    /// Whether `haystack` contains, anywhere, a well-formed key of one of these formats: a run
    /// of bytes that [`check`](Self::check) accepts (prefix, length, alphabet, checksum).
    /// A prefix alone, a truncated key or one with a wrong checksum is not a key.
    pub(crate) fn appears_in(&self, haystack: &[u8]) -> bool {
        self.formats.iter().any(|f| f.appears_in(haystack))
    }
}
