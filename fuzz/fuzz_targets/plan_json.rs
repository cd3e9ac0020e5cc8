//! A plan's JSON form (`Plan` and `Quota` through serde) from arbitrary bytes.
//!
//! Property: deserializing never panics, and a plan that parses
//! - serializes, and that JSON parses back to an equal plan (and serializes to the same text);
//! - is written as documented: `"free"`, `"paid"`, or `{"enterprise": {"requests": …,
//!   "period": <seconds>, "concurrent_sessions": …}}`, named by `Plan::name`;
//! - grants the quota of the plan table: free 100 requests a minute and 10 sessions, paid 1,000
//!   and 100, enterprise its own quota.
//!
//! The same bytes as a bare `Quota`: one that parses round-trips equal, its period in whole
//! seconds.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower_api_key::{Plan, Quota};

fuzz_target!(|data: &[u8]| {
    if let Ok(plan) = serde_json::from_slice::<Plan>(data) {
        let json = serde_json::to_string(&plan).expect("a plan serializes");
        let back: Plan = serde_json::from_str(&json).expect("a serialized plan parses");
        assert_eq!(back, plan, "{json}");
        assert_eq!(serde_json::to_string(&back).unwrap(), json);

        let value: Value = serde_json::from_str(&json).unwrap();
        match plan {
            Plan::Free | Plan::Paid => assert_eq!(value, Value::from(plan.name())),
            Plan::Enterprise(q) => {
                assert_eq!(plan.name(), "enterprise");
                let quota = &value["enterprise"];
                assert_eq!(value.as_object().map(|o| o.len()), Some(1), "{json}");
                assert_eq!(quota["requests"], Value::from(q.requests));
                assert_eq!(quota["period"], Value::from(q.period.as_secs()));
                assert_eq!(
                    quota["concurrent_sessions"],
                    Value::from(q.concurrent_sessions)
                );
            }
        }

        let quota = plan.quota();
        match plan {
            Plan::Free => assert_eq!(quota, Quota::per_minute(100, 10)),
            Plan::Paid => assert_eq!(quota, Quota::per_minute(1_000, 100)),
            Plan::Enterprise(q) => assert_eq!(quota, q),
        }
    }

    if let Ok(quota) = serde_json::from_slice::<Quota>(data) {
        assert_eq!(quota.period, Duration::from_secs(quota.period.as_secs()));
        let json = serde_json::to_string(&quota).expect("a quota serializes");
        let back: Quota = serde_json::from_str(&json).expect("a serialized quota parses");
        assert_eq!(back, quota, "{json}");
    }
});
