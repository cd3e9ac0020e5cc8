//! Identifiers: [`OrgId`] (the tenant) and [`KeyId`] (a key's public id).

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$m:meta])* $name:ident($inner:ty)) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name($inner);

        impl $name {
            /// The identifier as a string.
            #[inline]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(<$inner>::from(s))
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(<$inner>::from(s))
            }
        }
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
    };
}

string_id!(
    /// An organization: the tenant that owns keys, data and a rate-limit plan.
    ///
    /// Reference-counted: the many keys and requests of one organization share one string.
    OrgId(Arc<str>)
);

impl OrgId {
    /// Wrap an identifier.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }
}

string_id!(
    /// The public identifier of a key (`key_…`): safe to log and show, unlike the key itself.
    ///
    /// Held inline, without an allocation, up to 24 bytes (generated ids are 24): 24 bytes in a
    /// record instead of a pointer and a 40-byte allocation. Longer ids are heap-allocated.
    KeyId(CompactString)
);

impl KeyId {
    /// Wrap an identifier.
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(CompactString::new(id))
    }

    /// A fresh random identifier, `key_` + 20 base62 characters.
    pub fn generate() -> Result<Self, crate::key::RngError> {
        let mut id = String::with_capacity(24);
        id.push_str("key_");
        crate::key::push_random_alphanumerics(&mut id, 20)?;
        Ok(Self::from(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_prefixed_and_unique() {
        let a = KeyId::generate().unwrap();
        let b = KeyId::generate().unwrap();
        assert!(a.as_str().starts_with("key_"));
        assert_eq!(a.as_str().len(), 24);
        assert_ne!(a, b);
    }
}
