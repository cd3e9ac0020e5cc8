//! The brute-force guard (`invalid_key_limit`) and the signals: usage thresholds, invalid-key
//! bursts and dead keys presented, as events.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{Fixture, bearer, echo_principal, problem_code};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Service, ServiceExt, service_fn};
use tower_api_key::client_addr::{ClientAddr, PeerAddr};
use tower_api_key::{ApiKeyAuth, KeyFormat, OrgRateLimit};

const MINUTE: Duration = Duration::from_secs(60);

/// A GET with `authorization` (if any), from TCP peer `peer`, with more headers.
fn from(peer: &str, auth: Option<&str>, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get("/v1/things");
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut req = b.body(Full::new(Bytes::new())).unwrap();
    req.extensions_mut()
        .insert(PeerAddr(peer.parse::<SocketAddr>().unwrap()));
    req
}

/// A well-formed key no store knows.
fn unknown_key() -> String {
    format!(
        "Bearer {}",
        KeyFormat::live().generate().unwrap().expose_secret()
    )
}

async fn send<S>(svc: &mut S, req: Request<Full<Bytes>>) -> S::Response
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    svc.ready().await.unwrap().call(req).await.unwrap()
}

fn retry_after<B>(res: &Response<B>) -> Option<&str> {
    res.headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn the_attempt_past_the_limit_is_429_only_for_that_address_until_the_window_passes() {
    let f = Fixture::new();
    let key = f.mint("org_1", &[]).await;
    let mut svc = tower::ServiceBuilder::new()
        .layer(
            ApiKeyAuth::new(f.store.clone())
                .clock(f.clock.clone())
                .invalid_key_limit(3, MINUTE),
        )
        .service(service_fn(echo_principal));
    let a = "203.0.113.7:4000";
    let b = "198.51.100.9:4000";
    // Malformed, unknown and a bad header all count; a missing key does not.
    for auth in [
        Some("Bearer br_live_nope".to_owned()),
        None,
        Some(unknown_key()),
        Some(unknown_key()),
    ] {
        let missing = auth.is_none();
        let res = send(&mut svc, from(a, auth.as_deref(), &[])).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let code = problem_code(res).await;
        assert_eq!(
            code,
            if missing {
                "missing_api_key"
            } else {
                "invalid_api_key"
            }
        );
    }
    let res = send(&mut svc, from(a, Some(&unknown_key()), &[])).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    // 3 per minute: one attempt refills every 20 s.
    assert_eq!(retry_after(&res), Some("20"));
    assert_eq!(problem_code(res).await, "too_many_invalid_keys");

    // While blocked, even a valid key from that address is refused.
    let res = send(&mut svc, from(a, Some(&bearer(&key)), &[])).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem_code(res).await, "too_many_invalid_keys");

    // Another address is untouched.
    let res = send(&mut svc, from(b, Some(&unknown_key()), &[])).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(problem_code(res).await, "invalid_api_key");
    let res = send(&mut svc, from(b, Some(&bearer(&key)), &[])).await;
    assert_eq!(res.status(), StatusCode::OK);

    // After the window: 401 again for invalid keys, 200 for the valid one.
    f.time.advance(MINUTE);
    let res = send(&mut svc, from(a, Some(&bearer(&key)), &[])).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = send(&mut svc, from(a, Some(&unknown_key()), &[])).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(problem_code(res).await, "invalid_api_key");
}

#[tokio::test]
async fn revoked_and_expired_keys_count_and_grpc_gets_resource_exhausted() {
    let f = Fixture::new();
    let revoked = f.mint("org_1", &[]).await;
    f.manager
        .revoke(&revoked.record.org_id, &revoked.record.id)
        .await
        .unwrap();
    let expiring = f.mint_expiring("org_1", MINUTE).await;
    f.time.advance(MINUTE * 2);
    let mut svc = tower::ServiceBuilder::new()
        .layer(
            ApiKeyAuth::new(f.store.clone())
                .clock(f.clock.clone())
                .invalid_key_limit(2, MINUTE),
        )
        .service(service_fn(echo_principal));
    let a = "203.0.113.7:4000";
    for key in [&revoked, &expiring] {
        let res = send(&mut svc, from(a, Some(&bearer(key)), &[])).await;
        assert_eq!(problem_code(res).await, "invalid_api_key");
    }
    let res = send(
        &mut svc,
        from(
            a,
            Some(&bearer(&revoked)),
            &[("content-type", "application/grpc")],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "8");
    assert_eq!(retry_after(&res), Some("30"));
}

#[tokio::test]
async fn behind_trusted_proxies_the_forwarded_client_is_counted_and_the_fused_stack_agrees() {
    let f = Fixture::new();
    let key = f.mint("org_1", &[]).await;
    let mut svc = tower::ServiceBuilder::new()
        .layer(
            ApiKeyAuth::new(f.store.clone())
                .clock(f.clock.clone())
                .client_addr(ClientAddr::trusted_proxies(["10.0.0.0/8".parse().unwrap()]))
                .rate_limit(OrgRateLimit::new().clock(f.clock.clone()))
                .invalid_key_limit(1, MINUTE),
        )
        .service(service_fn(echo_principal));
    let lb = "10.0.0.5:4000";
    let client_a = [("x-forwarded-for", "203.0.113.7")];
    let client_b = [("x-forwarded-for", "203.0.113.8")];
    let res = send(&mut svc, from(lb, Some(&unknown_key()), &client_a)).await;
    assert_eq!(problem_code(res).await, "invalid_api_key");
    let res = send(&mut svc, from(lb, Some(&unknown_key()), &client_a)).await;
    assert_eq!(problem_code(res).await, "too_many_invalid_keys");
    // The load balancer's other clients are not blocked.
    let res = send(&mut svc, from(lb, Some(&bearer(&key)), &client_b)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = send(&mut svc, from(lb, Some(&bearer(&key)), &client_a)).await;
    assert_eq!(problem_code(res).await, "too_many_invalid_keys");
}

#[cfg(feature = "events")]
mod events {
    use super::*;
    use tower_api_key::events::{Event, EventKind, Events, RecentEvents, UNAUTHENTICATED};
    use tower_api_key::{OrgId, Plan, Quota, SessionQuota};

    /// The kinds of `org`'s events, oldest first, once delivery has drained.
    async fn drained(
        recent: &RecentEvents,
        delivery: tower_api_key::events::Delivery,
        org: &str,
    ) -> Vec<EventKind> {
        assert!(delivery.shutdown(Duration::from_secs(5)).await);
        let mut list: Vec<Event> = recent.list(&OrgId::from(org));
        list.reverse();
        list.into_iter().map(|e| e.kind).collect()
    }

    fn threshold(
        policy: &str,
        unit: &'static str,
        percent: u8,
        limit: u64,
        window_secs: u64,
    ) -> EventKind {
        EventKind::UsageThreshold {
            policy: policy.to_owned(),
            unit,
            percent,
            limit,
            window_secs,
        }
    }

    #[tokio::test]
    async fn request_thresholds_fire_once_per_window_at_80_90_and_100_percent() {
        let f = Fixture::new();
        let org = OrgId::from("org_t");
        let quota = Quota {
            requests: 10,
            period: MINUTE,
            concurrent_sessions: 5,
        };
        f.manager
            .set_plan(&org, Plan::Enterprise(quota))
            .await
            .unwrap();
        let key = f.mint("org_t", &[]).await;
        let recent = RecentEvents::new(100);
        let (events, delivery) = Events::builder().sink(recent.clone()).start();
        let signals = events.signals();
        let mut svc = tower::ServiceBuilder::new()
            .layer(
                ApiKeyAuth::new(f.store.clone())
                    .clock(f.clock.clone())
                    .rate_limit(OrgRateLimit::new().clock(f.clock.clone()))
                    .observe(&signals),
            )
            .service(service_fn(echo_principal));
        let peer = "203.0.113.7:4000";
        let mut emitted_after = Vec::new();
        // The fixture's clock starts on a minute boundary: one window.
        for _ in 0..11 {
            send(&mut svc, from(peer, Some(&bearer(&key)), &[])).await;
            emitted_after.push(events.emitted());
        }
        // Crossed on the 8th, 9th and 10th request; the refused 11th crosses nothing.
        assert_eq!(emitted_after, vec![0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 3]);
        // A cell refills (6 s) and is spent again: 90 → 100 % again, same window, no event.
        f.time.advance(Duration::from_secs(6));
        let res = send(&mut svc, from(peer, Some(&bearer(&key)), &[])).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(events.emitted(), 3);
        // The next window: the bucket is whole again and the levels fire again.
        f.time.advance(MINUTE);
        for _ in 0..10 {
            send(&mut svc, from(peer, Some(&bearer(&key)), &[])).await;
        }
        assert_eq!(events.emitted(), 6);
        let kinds = drained(&recent, delivery, "org_t").await;
        let enterprise = Plan::Enterprise(quota).name();
        let one_window: Vec<EventKind> = [80, 90, 100]
            .map(|p| threshold(enterprise, "requests", p, 10, 60))
            .into();
        assert_eq!(kinds, [one_window.clone(), one_window].concat());
    }

    #[tokio::test]
    async fn session_thresholds_fire_once_per_lease_window_and_levels_are_configurable() {
        let f = Fixture::new();
        let recent = RecentEvents::new(100);
        let (events, delivery) = Events::builder().sink(recent.clone()).start();
        let signals = events.signals().levels([50, 100]);
        let sessions = SessionQuota::new().clock(f.clock.clone()).observe(&signals);
        let org = OrgId::from("org_s");
        let lease = Duration::from_secs(300);
        for i in 0..4 {
            sessions
                .acquire_for(&org, 4, &format!("s{i}"), lease)
                .await
                .unwrap();
        }
        assert_eq!(events.emitted(), 2);
        // Down to 2 and up to 4 again within the lease window: nothing new.
        assert!(sessions.release(&org, "s0").await.unwrap());
        assert!(sessions.release(&org, "s1").await.unwrap());
        sessions.acquire_for(&org, 4, "s4", lease).await.unwrap();
        sessions.acquire_for(&org, 4, "s5", lease).await.unwrap();
        assert_eq!(events.emitted(), 2);
        let kinds = drained(&recent, delivery, "org_s").await;
        assert_eq!(
            kinds,
            vec![
                threshold("sessions", "sessions", 50, 4, 300),
                threshold("sessions", "sessions", 100, 4, 300)
            ]
        );
    }

    #[tokio::test]
    async fn a_revoked_key_presented_three_times_is_one_event_with_times_3_per_flush() {
        let f = Fixture::new();
        let key = f.mint("org_d", &[]).await;
        f.manager
            .revoke(&key.record.org_id, &key.record.id)
            .await
            .unwrap();
        let recent = RecentEvents::new(100);
        let (events, delivery) = Events::builder().sink(recent.clone()).start();
        let signals = events.signals();
        let mut svc = tower::ServiceBuilder::new()
            .layer(
                ApiKeyAuth::new(f.store.clone())
                    .clock(f.clock.clone())
                    .observe(&signals),
            )
            .service(service_fn(echo_principal));
        for _ in 0..3 {
            let res = send(&mut svc, from("203.0.113.7:1", Some(&bearer(&key)), &[])).await;
            assert_eq!(problem_code(res).await, "invalid_api_key");
        }
        assert_eq!(
            events.emitted(),
            0,
            "counted, not emitted, on the request path"
        );
        assert_eq!(signals.flush(), 1);
        assert_eq!(signals.flush(), 0, "nothing presented since");
        send(&mut svc, from("203.0.113.7:1", Some(&bearer(&key)), &[])).await;
        assert_eq!(signals.flush(), 1);
        let kinds = drained(&recent, delivery, "org_d").await;
        let dead = |times| EventKind::DeadKeyPresented {
            key_id: key.record.id.clone(),
            status: "revoked",
            times,
        };
        assert_eq!(kinds, vec![dead(3), dead(1)]);
    }

    #[tokio::test]
    async fn the_guard_emits_one_burst_event_per_block() {
        let f = Fixture::new();
        let recent = RecentEvents::new(100);
        let (events, delivery) = Events::builder().sink(recent.clone()).start();
        let signals = events.signals();
        let mut svc = tower::ServiceBuilder::new()
            .layer(
                ApiKeyAuth::new(f.store.clone())
                    .clock(f.clock.clone())
                    .invalid_key_limit(2, MINUTE)
                    .observe(&signals),
            )
            .service(service_fn(echo_principal));
        let peer = "203.0.113.7:1";
        for _ in 0..5 {
            send(&mut svc, from(peer, Some(&unknown_key()), &[])).await;
        }
        assert_eq!(
            events.emitted(),
            1,
            "one event for the block, not one per refusal"
        );
        // The block ends (30 s refills one attempt); the next burst is a new block.
        f.time.advance(Duration::from_secs(30));
        for _ in 0..2 {
            send(&mut svc, from(peer, Some(&unknown_key()), &[])).await;
        }
        let kinds = drained(&recent, delivery, UNAUTHENTICATED).await;
        let burst = EventKind::InvalidKeyBurst {
            client: "203.0.113.7".into(),
            attempts: 3,
        };
        assert_eq!(kinds, vec![burst.clone(), burst]);
    }
}
