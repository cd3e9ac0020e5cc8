//! API keys: generation, parsing and hashing.
//!
//! A key is `prefix + random` (and, optionally, a 6-character CRC32 checksum), for example
//! `br_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6`. Only its SHA-256 digest, a [`KeyHash`], is ever
//! stored; the raw key lives in an [`ApiKey`], a secret type that redacts itself in `Debug` and
//! `Display` and wipes its memory when dropped.
//!
//! Parsing is ordered so that the cheapest checks run first: prefix, length, alphabet, then the
//! optional checksum. A malformed key is refused before any hashing or store lookup.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
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

/// The operating system's random number generator failed.
#[derive(Debug, thiserror::Error)]
#[error("the OS random number generator failed: {0}")]
pub struct RngError(getrandom::Error);

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
    /// `br_live_` + 32 alphanumerics, environment `live`: the seeds' format.
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
        let mut key = Zeroizing::new(String::with_capacity(self.key_len()));
        key.push_str(&self.prefix);
        push_random_alphanumerics(&mut key, self.random_len)?;
        if self.checksum {
            let sum = crc32fast::hash(key.as_bytes());
            push_base62_checksum(&mut key, sum);
        }
        Ok(ApiKey(key))
    }

    /// Check that `key` has this format: prefix, length, alphabet and checksum.
    pub fn check(&self, key: &str) -> Result<(), MalformedKey> {
        let bytes = key.as_bytes();
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
}

/// Whether every byte is in `[0-9A-Za-z]`. Folded without an early exit, so the loop is
/// vectorized (a key is refused or accepted as a whole; which byte is wrong does not matter).
#[inline]
fn all_alphanumeric(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |ok, &b| {
        let lower = b | 0x20;
        ok & (b.wrapping_sub(b'0') < 10 || lower.wrapping_sub(b'a') < 26)
    })
}

/// Append `n` uniformly random characters of `[0-9A-Za-z]` from the OS RNG.
pub(crate) fn push_random_alphanumerics(out: &mut String, n: usize) -> Result<(), RngError> {
    let mut buf = Zeroizing::new([0u8; 64]);
    let mut produced = 0;
    while produced < n {
        getrandom::fill(&mut buf[..]).map_err(RngError)?;
        for &b in buf.iter() {
            // Rejection sampling keeps the alphabet uniform: 248 = 4 * 62.
            if b < 248 && produced < n {
                out.push(ALPHABET[(b % 62) as usize] as char);
                produced += 1;
            }
        }
    }
    Ok(())
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

    /// Whether `s` contains something that starts like one of our keys.
    pub(crate) fn appears_in(&self, s: &str) -> bool {
        self.formats.iter().any(|f| s.contains(&*f.prefix))
    }
}

/// A raw API key: the secret a client sends.
///
/// It is returned exactly once, when a key is created or rotated. `Debug` and `Display` print
/// only the prefix; the memory is zeroized when the value is dropped. Read it with
/// [`expose_secret`](Self::expose_secret).
///
/// ```
/// let key = tower_api_key::KeyFormat::live().generate()?;
/// assert_eq!(format!("{key:?}"), "ApiKey(br_live_…)");
/// assert!(!format!("{key}").contains(&key.expose_secret()[8..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ApiKey(Zeroizing<String>);

impl ApiKey {
    /// Wrap a key received from elsewhere (e.g. a client configuration).
    pub fn from_secret(secret: impl Into<String>) -> Self {
        Self(Zeroizing::new(secret.into()))
    }

    /// The raw key. Show it to its owner once; never log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The SHA-256 digest under which the key is stored.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.0)
    }

    /// A short, non-secret hint to recognise the key: its prefix, `…`, and its last 4 characters.
    pub fn hint(&self, format: &KeyFormat) -> String {
        hint(&self.0, format.prefix())
    }

    fn visible_prefix(&self) -> &str {
        let end = self
            .0
            .rfind('_')
            .map(|i| i + 1)
            .filter(|&i| i <= 16)
            .unwrap_or(0);
        &self.0[..end]
    }
}

pub(crate) fn hint(key: &str, prefix: &str) -> String {
    let tail_start = key.len().saturating_sub(4).max(prefix.len().min(key.len()));
    let tail = key.get(tail_start..).unwrap_or("");
    format!("{prefix}…{tail}")
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}…)", self.visible_prefix())
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…[redacted]", self.visible_prefix())
    }
}

/// SHA-256 digest of a full key, the only form in which keys are stored.
///
/// Its `Hash` implementation feeds the first 8 bytes to the hasher: the digest is already uniform,
/// so [`KeyHashBuilder`] can use them as the hash directly.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyHash([u8; 32]);

/// The longest input whose padded form fits one 64-byte SHA-256 block (1 byte of `0x80`, 8 of
/// length).
const ONE_BLOCK_MAX: usize = 64 - 1 - 8;

/// SHA-256's initial hash value (FIPS 180-4 §5.3.3).
const SHA256_INITIAL: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// Copy `src` (at most [`ONE_BLOCK_MAX`] bytes) to the start of `dst` (64 bytes) with two
/// fixed-size, possibly overlapping moves, which the compiler inlines: a copy of a length known
/// only at run time is a call to libc's `memcpy`, measured at ~10 ns for a key.
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    // No index can be out of bounds: `n <= 55 < 64 == dst.len()`, and each branch's width is
    // at most `n`.
    let n = src.len();
    if n >= 32 {
        dst[..32].copy_from_slice(&src[..32]);
        dst[n - 32..n].copy_from_slice(&src[n - 32..]);
    } else if n >= 16 {
        dst[..16].copy_from_slice(&src[..16]);
        dst[n - 16..n].copy_from_slice(&src[n - 16..]);
    } else if n >= 8 {
        dst[..8].copy_from_slice(&src[..8]);
        dst[n - 8..n].copy_from_slice(&src[n - 8..]);
    } else {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
    }
}

impl KeyHash {
    /// Hash a raw key.
    ///
    /// Keys of up to 55 bytes (every key format's are) fit one SHA-256 block with their padding:
    /// the block is padded here and compressed once with `sha2`'s (SHA-NI accelerated) block
    /// function, which saves `Digest`'s buffering, ~10 ns of ~60. Longer inputs take
    /// `Sha256::digest`. Both give the same digest (tested for every length up to 200 bytes).
    #[inline]
    pub fn of(key: &str) -> Self {
        let bytes = key.as_bytes();
        if bytes.len() > ONE_BLOCK_MAX {
            return Self(Sha256::digest(bytes).into());
        }
        // Indexing cannot panic: `bytes.len() <= 55`, the block is 64 bytes.
        // FIPS 180-4 §5.1.1: the message, a 1 bit, zeros, the message's length in bits as a
        // big-endian u64 in the block's last 8 bytes.
        let mut block = sha2::digest::generic_array::GenericArray::default();
        copy_short(&mut block, bytes);
        block[bytes.len()] = 0x80;
        block[56..].copy_from_slice(&((bytes.len() as u64) * 8).to_be_bytes());
        let mut state = SHA256_INITIAL;
        sha2::compress256(&mut state, std::slice::from_ref(&block));
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        Self(out)
    }

    /// Wrap stored digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, as stored in text columns.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
            s.push(char::from(b"0123456789abcdef"[(b & 15) as usize]));
        }
        s
    }

    /// Parse 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            let hi = (b[2 * i] as char).to_digit(16)?;
            let lo = (b[2 * i + 1] as char).to_digit(16)?;
            *o = (hi * 16 + lo) as u8;
        }
        Some(Self(out))
    }

    /// Constant-time equality: the digest is compared as four 64-bit words folded into one
    /// `subtle` choice.
    #[inline]
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        let w = |h: &KeyHash, i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h.0[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(b)
        };
        let eq = w(self, 0).ct_eq(&w(other, 0))
            & w(self, 1).ct_eq(&w(other, 1))
            & w(self, 2).ct_eq(&w(other, 2))
            & w(self, 3).ct_eq(&w(other, 3));
        bool::from(eq)
    }

    #[inline]
    fn head(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_ne_bytes(b)
    }
}

impl Hash for KeyHash {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.head());
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        write!(f, "KeyHash({}…)", &hex[..12])
    }
}

/// A `BuildHasher` for maps keyed by [`KeyHash`]: the digest's first word is the hash.
#[derive(Clone, Copy, Default, Debug)]
pub struct KeyHashBuilder;

impl BuildHasher for KeyHashBuilder {
    type Hasher = IdentityHasher;
    fn build_hasher(&self) -> IdentityHasher {
        IdentityHasher(0)
    }
}

/// The hasher behind [`KeyHashBuilder`]. Keys other than [`KeyHash`] are mixed with FNV-1a.
#[derive(Clone, Copy, Default, Debug)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0 ^ 0xcbf2_9ce4_8422_2325;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_sha256_at_every_length() {
        // Around the one-block boundary (55/56 bytes) and beyond, against `Sha256::digest`.
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
    fn default_format_matches_the_seeds() {
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
            assert_eq!(crate::auth::all_graphic(&[b]), b.is_ascii_graphic(), "{b}");
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
