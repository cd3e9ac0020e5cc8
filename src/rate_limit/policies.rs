//! Several named limits per plan: [`Policies`].
//!
//! A plan of a real API platform is rarely one number: a per-second burst beside a per-minute
//! rate and a daily cap, plus a number of concurrent sessions. [`Policies`] names each limit
//! (the names are what the IETF `RateLimit-Policy` / `RateLimit` fields and the `429` body's
//! `violated-policies` show), and [`QuotaPolicy::policies`](super::QuotaPolicy::policies) gives
//! an organization its set. Every request policy is checked on every request; the request is
//! admitted only if all admit it, and then all are spent at once (a request refused by one
//! policy spends none of the others). The session policy is enforced by
//! [`SessionQuota`](crate::SessionQuota) when a session is opened, not per request; it is
//! listed in `RateLimit-Policy` with `qu="concurrent-requests"`.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower_api_key::rate_limit::{Policies, QuotaPolicy};
//! use tower_api_key::{OrgRateLimit, Plan};
//!
//! // Free: 10 a second, 100 a minute, 10 sessions. Other plans keep the defaults.
//! let free = Arc::new(
//!     Policies::builder()
//!         .requests("burst", 10, Duration::from_secs(1))
//!         .requests("minute", 100, Duration::from_secs(60))
//!         .concurrent_sessions("sessions", 10)
//!         .build()
//!         .expect("valid policies"),
//! );
//! let layer = OrgRateLimit::new()
//!     .policy(QuotaPolicy::policies(move |p| match p.plan() {
//!         Plan::Free => free.clone(),
//!         other => Arc::new(Policies::for_plan(&other)),
//!     }))
//!     .draft_headers(true);
//! # let _ = layer;
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

use super::gcra::Gcra;
use crate::plan::Plan;

/// The longest policy name accepted.
pub const MAX_POLICY_NAME: usize = 64;

/// A policy's name: 1 to 64 characters of `[A-Za-z0-9_.:-]`, so it is a valid Structured
/// Field string, a JSON string and a log field without escaping. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PolicyName(Arc<str>);

impl PolicyName {
    /// Check and wrap `name`.
    pub fn new(name: &str) -> Result<Self, PolicyError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_POLICY_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if ok {
            Ok(Self(Arc::from(name)))
        } else {
            Err(PolicyError::InvalidName {
                // Only the length is kept: the name may hold control characters.
                len: name.len(),
            })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a set of [`Policies`] was not built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A name is empty, longer than 64 bytes, or has a character outside `[A-Za-z0-9_.:-]`.
    #[error("policy name of {len} bytes is not 1 to 64 characters of [A-Za-z0-9_.:-]")]
    InvalidName {
        /// The length of the name refused.
        len: usize,
    },
    /// Two policies have the same name.
    #[error("two policies are named {0:?}")]
    Duplicate(String),
    /// A set needs at least one request policy.
    #[error("a set of policies needs at least one request policy")]
    NoRequestPolicy,
    /// A request policy has a window of zero.
    #[error("policy {0:?} has a zero window")]
    ZeroWindow(String),
}

/// One request policy: `quota` requests (cells) per `window`, as a GCRA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RatePolicy {
    name: PolicyName,
    gcra: Gcra,
}

impl RatePolicy {
    /// The policy's name.
    pub fn name(&self) -> &PolicyName {
        &self.name
    }

    /// Its GCRA (quota, window, emission interval).
    pub fn gcra(&self) -> &Gcra {
        &self.gcra
    }
}

/// The concurrent-session policy of a set: enforced by [`SessionQuota`](crate::SessionQuota).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionPolicy {
    name: PolicyName,
    limit: u32,
}

impl SessionPolicy {
    /// The policy's name.
    pub fn name(&self) -> &PolicyName {
        &self.name
    }

    /// Sessions allowed at once.
    pub fn limit(&self) -> u32 {
        self.limit
    }
}

/// An organization's named limits: one or more request policies and an optional
/// concurrent-session policy. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policies {
    rates: SmallVec<[RatePolicy; 3]>,
    sessions: Option<SessionPolicy>,
}

impl Policies {
    /// Start a set.
    pub fn builder() -> PoliciesBuilder {
        PoliciesBuilder::default()
    }

    /// The default set of a plan: its request rate named after the plan (`free`, `paid`,
    /// `enterprise`) and its concurrent sessions named `sessions`.
    pub fn for_plan(plan: &Plan) -> Self {
        let q = plan.quota();
        Self::single(
            plan.name(),
            Gcra::from_quota(&q),
            Some(q.concurrent_sessions),
        )
    }

    /// One request policy (and optionally sessions), as the default plans have.
    pub(crate) fn single(name: &'static str, gcra: Gcra, sessions: Option<u32>) -> Self {
        let mut rates = SmallVec::new();
        rates.push(RatePolicy {
            name: PolicyName(Arc::from(name)),
            gcra,
        });
        Self {
            rates,
            sessions: sessions.map(|limit| SessionPolicy {
                name: PolicyName(Arc::from("sessions")),
                limit,
            }),
        }
    }

    /// The request policies, in the order they were added.
    pub fn rates(&self) -> &[RatePolicy] {
        &self.rates
    }

    /// The session policy, if any.
    pub fn sessions(&self) -> Option<&SessionPolicy> {
        self.sessions.as_ref()
    }

    /// Whether `other` limits requests exactly as this set does (same GCRAs in the same order):
    /// a backend keeps its state when they are.
    pub(crate) fn same_rates(&self, gcras: &[Gcra]) -> bool {
        self.rates.len() == gcras.len() && self.rates.iter().zip(gcras).all(|(r, g)| r.gcra == *g)
    }
}

/// Builds [`Policies`]: [`Policies::builder`].
#[derive(Clone, Debug, Default)]
pub struct PoliciesBuilder {
    rates: Vec<(String, u32, Duration)>,
    sessions: Option<(String, u32)>,
}

impl PoliciesBuilder {
    /// Add a request policy: `quota` requests per `window` (a burst of `quota`, then an even
    /// refill; see [`gcra`](super::gcra)).
    pub fn requests(mut self, name: &str, quota: u32, window: Duration) -> Self {
        self.rates.push((name.to_owned(), quota, window));
        self
    }

    /// Set the concurrent-session policy.
    pub fn concurrent_sessions(mut self, name: &str, limit: u32) -> Self {
        self.sessions = Some((name.to_owned(), limit));
        self
    }

    /// Check the names (valid, distinct) and windows (non-zero) and build the set.
    pub fn build(self) -> Result<Policies, PolicyError> {
        if self.rates.is_empty() {
            return Err(PolicyError::NoRequestPolicy);
        }
        let mut seen: Vec<&str> = Vec::new();
        let names = self
            .rates
            .iter()
            .map(|r| r.0.as_str())
            .chain(self.sessions.as_ref().map(|s| s.0.as_str()));
        for name in names {
            PolicyName::new(name)?;
            if seen.contains(&name) {
                return Err(PolicyError::Duplicate(name.to_owned()));
            }
            seen.push(name);
        }
        let mut rates = SmallVec::new();
        for (name, quota, window) in &self.rates {
            if window.is_zero() {
                return Err(PolicyError::ZeroWindow(name.clone()));
            }
            rates.push(RatePolicy {
                name: PolicyName::new(name)?,
                gcra: Gcra::new(*quota, *window),
            });
        }
        let sessions = match &self.sessions {
            Some((name, limit)) => Some(SessionPolicy {
                name: PolicyName::new(name)?,
                limit: *limit,
            }),
            None => None,
        };
        Ok(Policies { rates, sessions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_checks_names_and_windows() {
        let ok = Policies::builder()
            .requests("burst", 10, Duration::from_secs(1))
            .requests("minute", 100, Duration::from_secs(60))
            .concurrent_sessions("sessions", 10)
            .build()
            .unwrap();
        assert_eq!(ok.rates().len(), 2);
        assert_eq!(ok.rates()[1].name().as_str(), "minute");
        assert_eq!(ok.sessions().unwrap().limit(), 10);
        let dup = Policies::builder()
            .requests("a", 1, Duration::from_secs(1))
            .concurrent_sessions("a", 1)
            .build();
        assert_eq!(dup, Err(PolicyError::Duplicate("a".into())));
        let bad = Policies::builder()
            .requests("a\"b", 1, Duration::from_secs(1))
            .build();
        assert_eq!(bad, Err(PolicyError::InvalidName { len: 3 }));
        let ctl = Policies::builder()
            .requests("a\nb", 1, Duration::from_secs(1))
            .build();
        assert_eq!(ctl, Err(PolicyError::InvalidName { len: 3 }));
        assert_eq!(
            Policies::builder().build(),
            Err(PolicyError::NoRequestPolicy)
        );
        assert_eq!(
            Policies::builder().requests("z", 1, Duration::ZERO).build(),
            Err(PolicyError::ZeroWindow("z".into()))
        );
    }

    #[test]
    fn plan_defaults_are_the_seeds_numbers() {
        let free = Policies::for_plan(&Plan::Free);
        assert_eq!(free.rates()[0].name().as_str(), "free");
        assert_eq!(
            free.rates()[0].gcra(),
            &Gcra::new(100, Duration::from_secs(60))
        );
        assert_eq!(free.sessions().unwrap().limit(), 10);
        let paid = Policies::for_plan(&Plan::Paid);
        assert_eq!(
            paid.rates()[0].gcra(),
            &Gcra::new(1000, Duration::from_secs(60))
        );
        assert_eq!(paid.sessions().unwrap().limit(), 100);
    }
}
