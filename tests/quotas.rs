//! Several named policies per plan (`QuotaPolicy::policies`): the all-or-nothing decision, the
//! `X-RateLimit-*` trio of the policy closest to refusing, the IETF fields of
//! draft-ietf-httpapi-ratelimit-headers-12 (parsed with a Structured Field parser, `sfv`), the
//! `quota-exceeded` problem with `violated-policies`, `Retry-After`, and check-only requests.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use sfv::{BareItem, ListEntry, Parser};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_api_key::rate_limit::{
    Gcra, OrgRateLimitLayer, Policies, QuotaPolicy, Spend, decide_all,
};
use tower_api_key::{
    ApiKeyAuth, Clock, KeyManager, ManualClock, MemoryRateLimiter, MemoryStore, NewKey, OrgId,
    OrgRateLimit, Plan, Timestamp,
};

const T0: u64 = 1_700_000_000;

struct Fixture {
    store: MemoryStore,
    manager: KeyManager<MemoryStore>,
    clock: Clock,
    manual: ManualClock,
}

fn fixture() -> Fixture {
    let (clock, manual) = Clock::manual(Timestamp::from_unix_secs(T0));
    let store = MemoryStore::new();
    let manager = KeyManager::new(store.clone()).clock(clock.clone());
    Fixture {
        store,
        manager,
        clock,
        manual,
    }
}

impl Fixture {
    async fn key(&self, org: &str) -> String {
        let created = self
            .manager
            .create(&OrgId::from(org), NewKey::new("test"))
            .await
            .unwrap();
        created.key.expose_secret().to_owned()
    }

    fn stack(
        &self,
        layer: OrgRateLimitLayer,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<impl http_body::Body<Data = Bytes, Error: std::fmt::Debug>>,
        Error = Infallible,
    > + Clone {
        ServiceBuilder::new()
            .layer(ApiKeyAuth::new(self.store.clone()).clock(self.clock.clone()))
            .layer(layer.clock(self.clock.clone()))
            .service_fn(|_req: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            })
    }
}

fn get(path: &str, key: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("authorization", format!("Bearer {key}"))
        .body(Full::default())
        .unwrap()
}

async fn call<S, B>(svc: &S, req: Request<Full<Bytes>>) -> Response<B>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
{
    svc.clone().oneshot(req).await.unwrap()
}

fn h(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Free = 10 a second + 100 a minute + 10 concurrent sessions.
fn free_with_burst() -> Arc<Policies> {
    Arc::new(
        Policies::builder()
            .requests("burst", 10, Duration::from_secs(1))
            .requests("minute", 100, Duration::from_secs(60))
            .concurrent_sessions("sessions", 10)
            .build()
            .unwrap(),
    )
}

fn layer_with(policies: Arc<Policies>) -> OrgRateLimitLayer {
    OrgRateLimit::new().policy(QuotaPolicy::policies(move |_| policies.clone()))
}

/// One member of a parsed RateLimit or RateLimit-Policy field: name and parameters.
type Member = (String, Vec<(String, BareItem)>);

/// Parse a field as a Structured Field List whose members are Items with a String value.
fn parse_field(value: &str) -> Vec<Member> {
    let list: sfv::List = Parser::new(value)
        .parse()
        .unwrap_or_else(|e| panic!("{value:?} is not a Structured Field List: {e}"));
    list.into_iter()
        .map(|entry| match entry {
            ListEntry::Item(item) => {
                let name = item
                    .bare_item
                    .as_string()
                    .unwrap_or_else(|| panic!("policy name of {value:?} is not a String"))
                    .as_str()
                    .to_owned();
                let params = item
                    .params
                    .into_iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v))
                    .collect();
                (name, params)
            }
            ListEntry::InnerList(_) => panic!("{value:?} has an inner list"),
        })
        .collect()
}

fn int(params: &[(String, BareItem)], key: &str) -> Option<i64> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.as_integer())
        .map(i64::from)
}

fn string_param(params: &[(String, BareItem)], key: &str) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.as_string().map(|s| s.as_str().to_owned()))
}

#[tokio::test]
async fn every_policy_is_checked_and_the_closest_one_fills_the_trio() {
    let f = fixture();
    let key = f.key("org_a").await;
    let svc = f.stack(layer_with(free_with_burst()).draft_headers(true));

    // The first request: the burst (9 left of 10) is closer to refusing than the minute (99).
    let res = call(&svc, get("/v1/x", &key)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(h(res.headers(), "x-ratelimit-limit"), "10");
    assert_eq!(h(res.headers(), "x-ratelimit-remaining"), "9");
    // Whole again in 100 ms: the reset second rounds up to T0 + 1.
    assert_eq!(h(res.headers(), "x-ratelimit-reset"), (T0 + 1).to_string());
    for _ in 0..9 {
        assert_eq!(call(&svc, get("/v1/x", &key)).await.status(), 200);
    }
    // The 11th in the same second: refused by "burst" alone.
    let res = call(&svc, get("/v1/x", &key)).await;
    assert_eq!(res.status(), 429);
    assert_eq!(h(res.headers(), "retry-after"), "1");
    assert_eq!(h(res.headers(), "x-ratelimit-limit"), "10");
    assert_eq!(h(res.headers(), "x-ratelimit-remaining"), "0");
    let state = parse_field(&h(res.headers(), "ratelimit"));
    let burst = state.iter().find(|m| m.0 == "burst").unwrap();
    let minute = state.iter().find(|m| m.0 == "minute").unwrap();
    assert_eq!(int(&burst.1, "r"), Some(0));
    // Retry-After is never earlier than the end of the refusing policy's effective window.
    assert_eq!(int(&burst.1, "t"), Some(1));
    // The refusal spent nothing of "minute": 90 left, as after ten admissions.
    assert_eq!(int(&minute.1, "r"), Some(90));
    let body: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        body["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(body["violated-policies"], serde_json::json!(["burst"]));
    assert_eq!(body["retry_after"], 1);

    // A second later the burst is whole again; 90 of the minute remain, and after 90 more
    // requests spread over 9 seconds the minute refuses while the burst still has cells.
    for s in 1..=9u64 {
        f.manual.advance(Duration::from_secs(1));
        for _ in 0..10 {
            let res = call(&svc, get("/v1/x", &key)).await;
            assert_eq!(res.status(), 200, "second {s}");
        }
    }
    f.manual.advance(Duration::from_secs(1));
    let res = call(&svc, get("/v1/x", &key)).await;
    // 10 s after the start the minute has refilled 16 cells (one per 600 ms): admitted.
    assert_eq!(res.status(), 200);
    // The burst (9 left) is closer to refusing than the minute (15 left).
    assert_eq!(h(res.headers(), "x-ratelimit-limit"), "10");
    assert_eq!(h(res.headers(), "x-ratelimit-remaining"), "9");
}

#[tokio::test]
async fn a_longer_policy_refusing_sets_retry_after_and_is_named() {
    let f = fixture();
    let key = f.key("org_a").await;
    // 5 a second, 6 an hour: the 7th request is refused by "hourly" alone.
    let set = Arc::new(
        Policies::builder()
            .requests("secondly", 5, Duration::from_secs(1))
            .requests("hourly", 6, Duration::from_secs(3600))
            .build()
            .unwrap(),
    );
    let svc = f.stack(layer_with(set).draft_headers(true));
    for _ in 0..5 {
        assert_eq!(call(&svc, get("/v1/x", &key)).await.status(), 200);
    }
    // The 6th: "secondly" refuses (0 left), "hourly" would admit.
    let res = call(&svc, get("/v1/x", &key)).await;
    assert_eq!(res.status(), 429);
    f.manual.advance(Duration::from_secs(2));
    assert_eq!(call(&svc, get("/v1/x", &key)).await.status(), 200);
    // The 7th: "hourly" is spent (6 of 6), its first cell back 600 s after the start.
    let res = call(&svc, get("/v1/x", &key)).await;
    assert_eq!(res.status(), 429);
    assert_eq!(h(res.headers(), "retry-after"), "598");
    assert_eq!(h(res.headers(), "x-ratelimit-limit"), "6");
    let body: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["violated-policies"], serde_json::json!(["hourly"]));
    assert_eq!(body["retry_after"], 598);
}

#[tokio::test]
async fn ietf_fields_parse_as_the_drafts_examples_do() {
    // The draft's own example (section 3.2): two policies, a minute and an hour.
    let example = parse_field(r#""permin";q=50;w=60,"perhr";q=1000;w=3600"#);
    let f = fixture();
    let key = f.key("org_a").await;
    let set = Arc::new(
        Policies::builder()
            .requests("permin", 50, Duration::from_secs(60))
            .requests("perhr", 1000, Duration::from_secs(3600))
            .build()
            .unwrap(),
    );
    let res = call(
        &f.stack(layer_with(set).draft_headers(true)),
        get("/v1/x", &key),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(parse_field(&h(res.headers(), "ratelimit-policy")), example);
    // RateLimit (section 4.2's shape): each policy with r and t.
    let state = parse_field(&h(res.headers(), "ratelimit"));
    assert_eq!(state.len(), 2);
    assert_eq!(state[0].0, "permin");
    assert_eq!(int(&state[0].1, "r"), Some(49));
    assert_eq!(int(&state[0].1, "t"), Some(2)); // 1.2 s until whole, rounded up
    assert_eq!(state[1].0, "perhr");
    assert_eq!(int(&state[1].1, "r"), Some(999));
    assert_eq!(int(&state[1].1, "t"), Some(4)); // 3.6 s
    // The draft's RateLimit example parses to the same shape.
    let example = parse_field(r#""default";r=50;t=30"#);
    assert_eq!(
        example[0].1.iter().map(|p| &p.0).collect::<Vec<_>>(),
        ["r", "t"]
    );
}

#[tokio::test]
async fn default_plans_list_the_request_rate_and_the_sessions() {
    let f = fixture();
    let key = f.key("org_a").await;
    let res = call(
        &f.stack(OrgRateLimit::new().draft_headers(true)),
        get("/v1/x", &key),
    )
    .await;
    let policy = parse_field(&h(res.headers(), "ratelimit-policy"));
    assert_eq!(policy.len(), 2);
    assert_eq!(policy[0].0, "free");
    assert_eq!(int(&policy[0].1, "q"), Some(100));
    assert_eq!(int(&policy[0].1, "w"), Some(60));
    assert_eq!(string_param(&policy[0].1, "qu"), None); // "requests", the default
    assert_eq!(policy[1].0, "sessions");
    assert_eq!(int(&policy[1].1, "q"), Some(10));
    assert_eq!(
        string_param(&policy[1].1, "qu").as_deref(),
        Some("concurrent-requests")
    );
    assert_eq!(int(&policy[1].1, "w"), None);
    let state = parse_field(&h(res.headers(), "ratelimit"));
    assert_eq!(state.len(), 1, "sessions are not decided per request");
    assert_eq!(int(&state[0].1, "r"), Some(99));

    // Paid keeps the seed's numbers too.
    f.manager
        .set_plan(&OrgId::from("org_p"), Plan::Paid)
        .await
        .unwrap();
    let key = f.key("org_p").await;
    let res = call(
        &f.stack(OrgRateLimit::new().draft_headers(true)),
        get("/v1/x", &key),
    )
    .await;
    let policy = parse_field(&h(res.headers(), "ratelimit-policy"));
    assert_eq!(
        (policy[0].0.as_str(), int(&policy[0].1, "q")),
        ("paid", Some(1000))
    );
    assert_eq!(int(&policy[1].1, "q"), Some(100));
}

#[tokio::test]
async fn check_only_requests_spend_nothing() {
    let f = fixture();
    let key = f.key("org_a").await;
    let limiter = MemoryRateLimiter::new();
    let set = Arc::new(
        Policies::builder()
            .requests("burst", 2, Duration::from_secs(10))
            .build()
            .unwrap(),
    );
    let layer = OrgRateLimit::with_backend(limiter.clone())
        .policy(QuotaPolicy::policies(move |_| set.clone()))
        .check_only(|m, uri| m == Method::GET && uri.path() == "/v1/can-start");
    let svc = f.stack(layer);
    for _ in 0..5 {
        let res = call(&svc, get("/v1/can-start", &key)).await;
        assert_eq!(res.status(), 200);
        assert_eq!(h(res.headers(), "x-ratelimit-remaining"), "1");
    }
    assert_eq!(call(&svc, get("/v1/x", &key)).await.status(), 200);
    assert_eq!(call(&svc, get("/v1/x", &key)).await.status(), 200);
    // Spent: the check now says 429, and still spends nothing.
    let res = call(&svc, get("/v1/can-start", &key)).await;
    assert_eq!(res.status(), 429);
    assert_eq!(h(res.headers(), "retry-after"), "5");

    // The default plans' one-policy path has a check-only form too.
    let key = f.key("org_b").await;
    let svc = f.stack(OrgRateLimit::new().check_only(|_, uri| uri.path() == "/v1/can-start"));
    for _ in 0..3 {
        let res = call(&svc, get("/v1/can-start", &key)).await;
        assert_eq!(h(res.headers(), "x-ratelimit-remaining"), "99");
    }
    let res = call(&svc, get("/v1/x", &key)).await;
    assert_eq!(h(res.headers(), "x-ratelimit-remaining"), "99");
    let res = call(&svc, get("/v1/can-start", &key)).await;
    assert_eq!(h(res.headers(), "x-ratelimit-remaining"), "98");
}

#[tokio::test]
async fn server_errors_are_refunded_when_asked() {
    let f = fixture();
    let stack = |layer: OrgRateLimitLayer| {
        ServiceBuilder::new()
            .layer(ApiKeyAuth::new(f.store.clone()).clock(f.clock.clone()))
            .layer(layer.clock(f.clock.clone()))
            .service_fn(|req: Request<Full<Bytes>>| async move {
                let mut res = Response::new(Full::new(Bytes::from_static(b"x")));
                if req.uri().path() == "/v1/fail" {
                    *res.status_mut() = http::StatusCode::BAD_GATEWAY;
                }
                Ok::<_, Infallible>(res)
            })
    };
    // One policy (Free) and several: 150 failed calls cost nothing.
    for (org, layer) in [
        ("org_one", OrgRateLimit::new().refund_server_errors(true)),
        (
            "org_many",
            layer_with(free_with_burst()).refund_server_errors(true),
        ),
    ] {
        let key = f.key(org).await;
        let svc = stack(layer);
        for _ in 0..150 {
            let res = call(&svc, get("/v1/fail", &key)).await;
            assert_eq!(res.status(), 502, "{org}");
        }
        let res = call(&svc, get("/v1/ok", &key)).await;
        assert_eq!(res.status(), 200, "{org}");
        let expected = if org == "org_one" { "99" } else { "9" };
        assert_eq!(h(res.headers(), "x-ratelimit-remaining"), expected, "{org}");
    }
    // Off by default: the 101st failed call is refused.
    let key = f.key("org_off").await;
    let svc = stack(OrgRateLimit::new());
    for _ in 0..100 {
        assert_eq!(call(&svc, get("/v1/fail", &key)).await.status(), 502);
    }
    assert_eq!(call(&svc, get("/v1/fail", &key)).await.status(), 429);
}

#[test]
fn plan_changes_between_one_and_several_policies_never_burst_twice() {
    let l = MemoryRateLimiter::new();
    let org = OrgId::from("org");
    let now = Timestamp::from_unix_secs(T0);
    let free = Gcra::new(100, Duration::from_secs(60));
    for _ in 0..100 {
        assert!(l.decide(&org, &free, 1, now).allowed);
    }
    // To several policies: each starts with the 100 cells in use (capped at its quota).
    let set = free_with_burst();
    let d = l.decide_policies(&org, &set, 1, now, Spend::Commit);
    assert!(!d.allowed());
    assert_eq!(d.each().iter().filter(|e| !e.allowed).count(), 2);
    // And back: the largest count in use carries over.
    assert!(!l.decide(&org, &free, 1, now).allowed);
    assert_eq!(l.len(), 1);
}

/// What a client sees of a decision: admitted, and each policy's verdict and figures.
fn figures(
    d: &tower_api_key::rate_limit::Decisions,
) -> (bool, Vec<(bool, tower_api_key::rate_limit::RateLimitInfo)>) {
    (
        d.allowed(),
        d.each().iter().map(|e| (e.allowed, e.info)).collect(),
    )
}

/// A request trace: (time step in ms, cost, whether the inner service fails and the request is
/// refunded).
fn trace() -> impl Strategy<Value = Vec<(u64, u32, bool)>> {
    prop::collection::vec((0u64..=700, 0u32..=4, prop::bool::weighted(0.2)), 1..250)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// For random traces of costs across two or three policies, no window of any policy ever
    /// admits more than `N + ⌊W·N/period⌋` cells, the memory backend decides exactly as the
    /// pure `decide_all` on the same states, and a refusal spends nothing.
    #[test]
    fn several_policies_never_admit_more_than_any_quota(
        quotas in prop::collection::vec((1u32..=30, 1u64..=20_000), 2..=3),
        events in trace(),
    ) {
        let mut builder = Policies::builder();
        for (i, (n, ms)) in quotas.iter().enumerate() {
            builder = builder.requests(&format!("p{i}"), *n, Duration::from_millis(*ms));
        }
        let set = builder.build().unwrap();
        let gcras: Vec<Gcra> = set.rates().iter().map(|r| *r.gcra()).collect();
        let l = MemoryRateLimiter::new();
        let org = OrgId::from("org");
        let mut tats = vec![Timestamp::EPOCH; gcras.len()];
        let mut now = T0 * 1_000_000_000;
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        for (step, cost, fails) in events {
            now += step * 1_000_000;
            let at = Timestamp::from_unix_nanos(now);
            // A dry run first: it must say the same and change nothing.
            let dry = l.decide_policies(&org, &set, cost, at, Spend::DryRun);
            let expected = decide_all(&gcras, &tats, at, cost);
            let got = l.decide_policies(&org, &set, cost, at, Spend::Commit);
            // States are compared when they are written (a refused or idle state may read as
            // the epoch or as now: both are a full bucket).
            prop_assert_eq!(figures(&dry), figures(&expected));
            prop_assert_eq!(figures(&got), figures(&expected));
            if got.allowed() {
                prop_assert_eq!(&got, &expected);
            }
            if got.allowed() && fails {
                // Refunded at once: as if the request had never been made.
                use tower_api_key::rate_limit::RateLimitBackend;
                l.refund(&org, &gcras, cost, at);
                let again = l.decide_policies(&org, &set, 0, at, Spend::DryRun);
                prop_assert_eq!(figures(&again), figures(&decide_all(&gcras, &tats, at, 0)));
            } else if got.allowed() {
                tats = got.each().iter().map(|d| d.tat).collect();
                admitted.push((now, u64::from(cost)));
            } else {
                let retry = got.info().retry_after;
                prop_assert!(retry >= 1);
                prop_assert!(got.each().iter().any(|d| !d.allowed));
                // Retry-After is never early: at that time every violated policy admits the
                // same request (when it can ever be admitted).
                if gcras.iter().all(|g| u64::from(cost) <= g.limit()) {
                    let later = Timestamp::from_unix_nanos(now + retry * 1_000_000_000);
                    let then = decide_all(&gcras, &tats, later, cost);
                    prop_assert!(then.allowed(), "refused again {} s later", retry);
                }
            }
        }
        for g in &gcras {
            let p = g.period().as_nanos();
            for i in 0..admitted.len() {
                let mut sum = 0u64;
                for j in i..admitted.len() {
                    sum += admitted[j].1;
                    let w = u128::from(admitted[j].0 - admitted[i].0);
                    let bound = u128::from(g.limit()) + w * u128::from(g.limit()) / p;
                    prop_assert!(u128::from(sum) <= bound,
                        "{} cells in {} ns, bound {} ({:?})", sum, w, bound, g);
                }
            }
        }
    }
}
