//! Plans: what an organization may use, as a [`Quota`] per [`Plan`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A request rate and a concurrent-session allowance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Quota {
    /// Requests allowed per `period` (also the burst).
    pub requests: u32,
    /// The window `requests` refers to.
    #[serde(with = "secs")]
    pub period: Duration,
    /// Sessions an organization may hold open at once.
    pub concurrent_sessions: u32,
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

impl Quota {
    /// `requests` per minute and `concurrent_sessions` open at once.
    pub const fn per_minute(requests: u32, concurrent_sessions: u32) -> Self {
        Self {
            requests,
            period: Duration::from_secs(60),
            concurrent_sessions,
        }
    }
}

/// An organization's plan, which sets its [`Quota`].
///
/// | plan | requests | concurrent sessions |
/// |---|---|---|
/// | Free | 100 / minute | 10 |
/// | Paid | 1,000 / minute | 100 |
/// | Enterprise | custom | custom |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    /// 100 requests per minute, 10 concurrent sessions.
    #[default]
    Free,
    /// 1,000 requests per minute, 100 concurrent sessions.
    Paid,
    /// A negotiated quota.
    Enterprise(Quota),
}

impl Plan {
    /// The quota this plan grants.
    pub const fn quota(&self) -> Quota {
        match self {
            Plan::Free => Quota::per_minute(100, 10),
            Plan::Paid => Quota::per_minute(1_000, 100),
            Plan::Enterprise(q) => *q,
        }
    }

    /// `free`, `paid` or `enterprise`.
    pub const fn name(&self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Paid => "paid",
            Plan::Enterprise(_) => "enterprise",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_free_paid_and_enterprise() {
        assert_eq!(Plan::Free.quota(), Quota::per_minute(100, 10));
        assert_eq!(Plan::Paid.quota(), Quota::per_minute(1000, 100));
        let e = Plan::Enterprise(Quota::per_minute(50_000, 2_000));
        assert_eq!(e.quota().requests, 50_000);
        assert_eq!(serde_json::to_string(&Plan::Paid).unwrap(), "\"paid\"");
        let p: Plan = serde_json::from_str(
            r#"{"enterprise":{"requests":5,"period":1,"concurrent_sessions":2}}"#,
        )
        .unwrap();
        assert_eq!(
            p.quota(),
            Quota {
                requests: 5,
                period: Duration::from_secs(1),
                concurrent_sessions: 2
            }
        );
    }
}
