//! Short byte-string equality without a call to `memcmp`.

/// Whether `a == b`, compared inline eight bytes at a time: the strings compared on the request
/// path are short (a key prefix, a scope, a path segment), and a call to `memcmp` costs more
/// than the comparison.
#[inline]
pub(crate) fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a, mut b) = (a, b);
    let mut diff = 0u64;
    while let (Some((x, ta)), Some((y, tb))) =
        (a.split_first_chunk::<8>(), b.split_first_chunk::<8>())
    {
        diff |= u64::from_ne_bytes(*x) ^ u64::from_ne_bytes(*y);
        a = ta;
        b = tb;
    }
    for (x, y) in a.iter().zip(b) {
        diff |= u64::from(x ^ y);
    }
    diff == 0
}

/// Whether `s` starts with `prefix`, as [`bytes_eq`].
#[inline]
pub(crate) fn starts_with(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && bytes_eq(&s[..prefix.len()], prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn agrees_with_slice_equality(a in proptest::collection::vec(0u8..4, 0..40),
                                      b in proptest::collection::vec(0u8..4, 0..40)) {
            prop_assert_eq!(bytes_eq(&a, &b), a == b);
            prop_assert_eq!(starts_with(&a, &b), a.starts_with(&b));
            prop_assert!(bytes_eq(&a, &a.clone()));
        }
    }
}
