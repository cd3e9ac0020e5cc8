//! [`KeyHash`]: the SHA-256 digest under which a key is stored.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// SHA-256 digest of a full key, the only form in which keys are stored.
///
/// Its `Hash` implementation feeds the first 8 bytes to the hasher: the digest is already uniform,
/// so the store's maps use them as the hash directly.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Hash a raw key.
    #[inline]
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
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
        hex::encode(self.0)
    }

    /// Parse 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
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
