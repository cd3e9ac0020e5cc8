//! The authentication's own counters, plain atomics read by
//! [`Telemetry`](crate::telemetry): decisions by reason, and the store lookups that waited.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::reject::{InvalidKey, Rejection};
use crate::store::{LookupResult, StoreError};

/// The `reason` label of a refusal, by index.
pub(crate) const REASONS: [&str; 10] = [
    "missing",
    "malformed",
    "unknown",
    "revoked",
    "expired",
    "disabled",
    "client_not_allowed",
    "too_many_invalid_keys",
    "key_in_query",
    "unavailable",
];

/// Upper bounds, in seconds, of the store-lookup duration buckets; one more bucket holds the
/// longer lookups.
pub(crate) const LOOKUP_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The `kind` label of a store error, by index.
pub(crate) const LOOKUP_ERRORS: [&str; 3] = ["error", "timeout", "circuit_open"];

#[derive(Debug, Default)]
pub(crate) struct AuthCounts {
    pub(crate) accepted: AtomicU64,
    pub(crate) refused: [AtomicU64; REASONS.len()],
    /// Lookups that waited, by duration bucket (the last one past every bound).
    pub(crate) waited: [AtomicU64; LOOKUP_BUCKETS.len() + 1],
    pub(crate) lookup_errors: [AtomicU64; LOOKUP_ERRORS.len()],
}

impl AuthCounts {
    #[inline]
    pub(crate) fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a refusal by its reason.
    pub(crate) fn refused(&self, rejection: &Rejection) {
        let reason = match rejection {
            Rejection::MissingKey => 0,
            Rejection::InvalidKey(InvalidKey::Unknown) => 2,
            Rejection::InvalidKey(InvalidKey::Revoked) => 3,
            Rejection::InvalidKey(InvalidKey::Expired) => 4,
            Rejection::InvalidKey(InvalidKey::Disabled) => 5,
            Rejection::InvalidKey(_) => 1,
            Rejection::ClientNotAllowed => 6,
            Rejection::TooManyInvalidKeys { .. } => 7,
            Rejection::KeyInQuery => 8,
            _ => 9,
        };
        self.refused[reason].fetch_add(1, Ordering::Relaxed);
    }

    /// Count a store error (waited for or not).
    pub(crate) fn lookup_error(&self, error: &StoreError) {
        let kind = match error {
            StoreError::Timeout => 1,
            StoreError::CircuitOpen(_) => 2,
            _ => 0,
        };
        self.lookup_errors[kind].fetch_add(1, Ordering::Relaxed);
    }

    /// A lookup that waited `elapsed` for the store: its duration, when it answered.
    pub(crate) fn waited(&self, elapsed: Duration, result: &LookupResult) {
        if result.is_err() {
            return;
        }
        let secs = elapsed.as_secs_f64();
        let bucket = LOOKUP_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LOOKUP_BUCKETS.len());
        self.waited[bucket].fetch_add(1, Ordering::Relaxed);
    }
}
