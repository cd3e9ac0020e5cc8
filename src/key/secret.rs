//! [`ApiKey`]: the secret itself, redacted and zeroized.

use std::fmt;

use zeroize::Zeroizing;

use super::format::{ALPHABET, KeyFormat};
use super::hash::KeyHash;

/// The operating system's random number generator failed.
#[derive(Debug, thiserror::Error)]
#[error("the OS random number generator failed: {0}")]
pub struct RngError(getrandom::Error);

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

fn hint(key: &str, prefix: &str) -> String {
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
