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
