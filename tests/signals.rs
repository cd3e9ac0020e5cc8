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
