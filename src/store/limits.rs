//! What one key record may hold: the bounds every store checks on insert and update.
//!
//! One module, used by [`KeyManager`](crate::KeyManager) and by every store's
//! [`insert`](super::KeyStore::insert) and [`update`](super::KeyStore::update), so that a
//! direct store user meets exactly the rules the admin API reports (as `400` with the limit):
//!
//! ```
//! use tower_api_key::store::limits::{self, LimitError};
//! assert!(limits::check_id("key id", "key_0123").is_ok());
//! assert!(matches!(
//!     limits::check_id("org id", "org\n2026-01-01 INFO forged line"),
//!     Err(LimitError::InvalidId { .. })
//! ));
//! ```
//!
//! Why: ids are written to logs and to PostgreSQL, so a control character could forge a log
//! line and a NUL cannot be stored at all; sizes are bounded so that one record cannot grow a
//! cache or a listing without bound.

use serde_json::{Map, Value};

use crate::scopes::Scopes;

use super::{KeyChanges, KeyRecord};

/// Most scopes one key may hold.
pub const MAX_SCOPES: usize = 64;
/// Most bytes the scopes of one key may total (each scope is at most 128 bytes).
pub const MAX_SCOPES_BYTES: usize = 2048;
/// Most characters in a key's name (after trimming; at least one).
pub const MAX_NAME_CHARS: usize = 128;
/// Most bytes in a key id or an organization id.
pub const MAX_ID_BYTES: usize = 128;
/// Most bytes of a key's metadata, serialized as compact JSON.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Most top-level members of a key's metadata object.
pub const MAX_METADATA_MEMBERS: usize = 32;
/// Most client networks one key may be restricted to.
pub const MAX_ALLOWED_NETWORKS: usize = 64;

/// A key record exceeds one of the bounds of this module. Each variant names its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// More scopes than [`MAX_SCOPES`].
    #[error("a key may hold at most {max} scopes (got {got})")]
    TooManyScopes {
        /// The limit.
        max: usize,
        /// The count given.
        got: usize,
    },
    /// The scopes total more than [`MAX_SCOPES_BYTES`].
    #[error("the scopes of a key may total at most {max} bytes (got {got})")]
    ScopesTooLarge {
        /// The limit.
        max: usize,
        /// The size given.
        got: usize,
    },
    /// A name that is empty, longer than [`MAX_NAME_CHARS`], or holds control characters.
    #[error("key names must be 1 to {max} characters, without control characters")]
    InvalidName {
        /// The limit.
        max: usize,
    },
    /// An id that is empty, longer than [`MAX_ID_BYTES`], or holds a control character (NUL
    /// included). The id itself is not echoed.
    #[error("{what} must be 1 to {max} bytes, without control characters")]
    InvalidId {
        /// Which id: `key id`, `org id`.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// Metadata with more than [`MAX_METADATA_MEMBERS`] members.
    #[error("metadata may hold at most {max} members (got {got})")]
    TooManyMetadataMembers {
        /// The limit.
        max: usize,
        /// The count given.
        got: usize,
    },
    /// Metadata larger than [`MAX_METADATA_BYTES`] as compact JSON.
    #[error("metadata may be at most {max} bytes as JSON (got {got})")]
    MetadataTooLarge {
        /// The limit.
        max: usize,
        /// The size given.
        got: usize,
    },
    /// More allowed client networks than [`MAX_ALLOWED_NETWORKS`].
    #[error("a key may be restricted to at most {max} client networks (got {got})")]
    TooManyNetworks {
        /// The limit.
        max: usize,
        /// The count given.
        got: usize,
    },
}

impl LimitError {
    /// The stable machine-readable code of the `400` problem body.
    pub fn code(&self) -> &'static str {
        match self {
            LimitError::TooManyScopes { .. } => "too_many_scopes",
            LimitError::ScopesTooLarge { .. } => "scopes_too_large",
            LimitError::InvalidName { .. } => "invalid_name",
            LimitError::InvalidId { .. } => "invalid_id",
            LimitError::TooManyMetadataMembers { .. } | LimitError::MetadataTooLarge { .. } => {
                "metadata_too_large"
            }
            LimitError::TooManyNetworks { .. } => "too_many_networks",
        }
    }
}

/// Check an id: 1 to [`MAX_ID_BYTES`] bytes, no control character (so no NUL).
pub fn check_id(what: &'static str, id: &str) -> Result<(), LimitError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(LimitError::InvalidId {
            what,
            max: MAX_ID_BYTES,
        });
    }
    Ok(())
}

/// Check a name as stored: 1 to [`MAX_NAME_CHARS`] characters, no control character.
pub fn check_name(name: &str) -> Result<(), LimitError> {
    let count = name.chars().count();
    if count == 0 || count > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(LimitError::InvalidName {
            max: MAX_NAME_CHARS,
        });
    }
    Ok(())
}

/// Check a key's scopes: at most [`MAX_SCOPES`], totalling at most [`MAX_SCOPES_BYTES`].
pub fn check_scopes(scopes: &Scopes) -> Result<(), LimitError> {
    let got = scopes.len();
    if got > MAX_SCOPES {
        return Err(LimitError::TooManyScopes {
            max: MAX_SCOPES,
            got,
        });
    }
    let bytes: usize = scopes.iter().map(|s| s.as_str().len()).sum();
    if bytes > MAX_SCOPES_BYTES {
        return Err(LimitError::ScopesTooLarge {
            max: MAX_SCOPES_BYTES,
            got: bytes,
        });
    }
    Ok(())
}

/// Check metadata: at most [`MAX_METADATA_MEMBERS`] members and [`MAX_METADATA_BYTES`] bytes
/// as compact JSON.
pub fn check_metadata(metadata: &Map<String, Value>) -> Result<(), LimitError> {
    if metadata.len() > MAX_METADATA_MEMBERS {
        return Err(LimitError::TooManyMetadataMembers {
            max: MAX_METADATA_MEMBERS,
            got: metadata.len(),
        });
    }
    let got = metadata_size(metadata);
    if got > MAX_METADATA_BYTES {
        return Err(LimitError::MetadataTooLarge {
            max: MAX_METADATA_BYTES,
            got,
        });
    }
    Ok(())
}

/// Compact JSON size of `metadata`, counted without building the string.
fn metadata_size(metadata: &Map<String, Value>) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Map` to an infallible writer cannot fail (keys are strings).
    match serde_json::to_writer(&mut count, metadata) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

/// Check the number of allowed client networks.
pub fn check_networks(count: usize) -> Result<(), LimitError> {
    if count > MAX_ALLOWED_NETWORKS {
        return Err(LimitError::TooManyNetworks {
            max: MAX_ALLOWED_NETWORKS,
            got: count,
        });
    }
    Ok(())
}

/// Check a whole record, as stores do on [`insert`](super::KeyStore::insert).
pub fn check_record(record: &KeyRecord) -> Result<(), LimitError> {
    check_id("key id", record.id.as_str())?;
    check_id("org id", record.org_id.as_str())?;
    check_name(record.name())?;
    check_scopes(&record.scopes)?;
    if let Some(metadata) = record.metadata() {
        check_metadata(metadata)?;
    }
    check_networks(record.allowed_networks().len())
}

/// Check what an [`update`](super::KeyStore::update) would write.
pub fn check_changes(changes: &KeyChanges) -> Result<(), LimitError> {
    if let Some(name) = &changes.name {
        check_name(name)?;
    }
    if let Some(scopes) = &changes.scopes {
        check_scopes(scopes)?;
    }
    if let Some(Some(metadata)) = &changes.metadata {
        check_metadata(metadata)?;
    }
    if let Some(networks) = &changes.allowed_networks {
        check_networks(networks.len())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_refuse_control_characters_nul_and_length() {
        assert!(check_id("key id", "key_ok").is_ok());
        for bad in ["", "a\0b", "a\nb", "a\u{7f}", "a\u{85}b"] {
            assert_eq!(
                check_id("key id", bad),
                Err(LimitError::InvalidId {
                    what: "key id",
                    max: MAX_ID_BYTES
                }),
                "{bad:?}"
            );
        }
        assert!(check_id("org id", &"o".repeat(MAX_ID_BYTES)).is_ok());
        assert!(check_id("org id", &"o".repeat(MAX_ID_BYTES + 1)).is_err());
    }

    #[test]
    fn metadata_is_bounded_by_members_and_size() {
        let mut m = Map::new();
        for i in 0..MAX_METADATA_MEMBERS {
            m.insert(format!("k{i}"), Value::from(i));
        }
        assert!(check_metadata(&m).is_ok());
        m.insert("one_more".into(), Value::Null);
        assert_eq!(
            check_metadata(&m),
            Err(LimitError::TooManyMetadataMembers { max: 32, got: 33 })
        );
        let mut big = Map::new();
        big.insert("k".into(), Value::from("x".repeat(MAX_METADATA_BYTES)));
        assert_eq!(
            check_metadata(&big),
            Err(LimitError::MetadataTooLarge {
                max: MAX_METADATA_BYTES,
                got: MAX_METADATA_BYTES + 8
            })
        );
        assert_eq!(
            metadata_size(&big),
            serde_json::to_string(&big).unwrap().len()
        );
    }
}
