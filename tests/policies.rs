//! Key policies on the request path and in the manager: disabled keys, metadata, allowed client
//! networks, expiry policy and reminders, and the limits of a record. Each refusal is checked
//! through `ApiKeyAuth` and through the fused `ApiKeyStack`, in HTTP and gRPC.

mod common;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_api_key::client_addr::{ClientAddr, PeerAddr};
use tower_api_key::manage::ExpiryReminder;
use tower_api_key::store::limits::{self, LimitError};
use tower_api_key::{
    ApiKeyAuth, CreatedKey, ExpiryPolicy, KeyChanges, KeyStore, ManageError, Metadata, NewKey,
    OrgId, OrgRateLimit, Principal, Rotation,
};

const DAY: Duration = Duration::from_secs(86_400);

async fn handler(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.extensions().get::<Principal>() {
        Some(p) => serde_json::json!({"key_id": p.key_id(), "metadata": p.metadata()}).to_string(),
        None => "no principal".to_owned(),
    };
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// Send one request through `ApiKeyAuth` alone and through the fused stack; both answers must
/// have the same status, `grpc-status` and problem code. Returns (status, grpc-status, code or
/// body).
async fn both(
    fx: &Fixture,
    client_addr: ClientAddr,
    make: impl Fn() -> Request<Full<Bytes>>,
) -> (StatusCode, Option<String>, String) {
    let layer = ApiKeyAuth::new(fx.store.clone())
        .clock(fx.clock.clone())
        .client_addr(client_addr);
    let auth = ServiceBuilder::new()
        .layer(layer.clone())
        .service(service_fn(handler));
    let fused = ServiceBuilder::new()
        .layer(layer.rate_limit(OrgRateLimit::new()))
        .service(service_fn(handler));
    let a = summary(auth.oneshot(make()).await.unwrap()).await;
    let b = summary(fused.oneshot(make()).await.unwrap()).await;
    assert_eq!(a, b, "ApiKeyAuth and ApiKeyStack disagree");
    a
}

async fn summary<B>(res: Response<B>) -> (StatusCode, Option<String>, String)
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let status = res.status();
    let grpc = res
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    if status.is_success() {
        return (status, grpc, body_string(res).await);
    }
    (status, grpc, problem_code(res).await)
}

fn from(peer: &str, key: &CreatedKey, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = get("/v1/whoami", Some(&bearer(key)));
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    req.extensions_mut()
        .insert(PeerAddr(peer.parse::<SocketAddr>().unwrap()));
    req
}

fn grpc(mut req: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    *req.method_mut() = http::Method::POST;
    req.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    req
}

fn metadata(v: serde_json::Value) -> Metadata {
    match v {
        serde_json::Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// Collects the fmt output of `tracing` events on this thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[tokio::test]
async fn a_disabled_key_is_refused_with_the_uniform_401_until_enabled() {
    let fx = Fixture::new();
    let org = OrgId::from("org_a");
    let key = fx.mint("org_a", &[]).await;
    let peer = "198.51.100.1:1";
    assert_eq!(
        both(&fx, ClientAddr::peer(), || from(peer, &key, &[]))
            .await
            .0,
        StatusCode::OK
    );

    let (logs, _guard) = Logs::capture();
    let disabled = fx.manager.disable(&org, &key.record.id).await.unwrap();
    assert!(disabled.is_disabled());
    let (status, _, code) = both(&fx, ClientAddr::peer(), || from(peer, &key, &[])).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_api_key")
    );
    let (status, grpc_status, _) =
        both(&fx, ClientAddr::peer(), || grpc(from(peer, &key, &[]))).await;
    assert_eq!(
        (status, grpc_status.as_deref()),
        (StatusCode::OK, Some("16"))
    );
    let text = logs.text();
    assert!(
        text.contains("reason=\"disabled\"") && text.contains(key.record.id.as_str()),
        "the refusal is logged with reason disabled and the key id: {text}"
    );
    assert!(!text.contains(key.key.expose_secret()), "never the secret");

    // Still listed, disabled.
    let listed = fx.manager.list(&org).await.unwrap();
    assert!(
        listed
            .iter()
            .any(|r| r.id == key.record.id && r.is_disabled())
    );

    fx.manager.enable(&org, &key.record.id).await.unwrap();
    assert_eq!(
        both(&fx, ClientAddr::peer(), || from(peer, &key, &[]))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn disabling_keeps_last_used_revoking_a_disabled_key_works_enabling_a_revoked_one_does_not() {
    let fx = Fixture::new();
    let org = OrgId::from("org_a");
    let key = fx.mint("org_a", &[]).await;
    let used = tower_api_key::Timestamp::from_unix_secs(1_800_000_100);
    fx.store
        .touch_last_used(&[(key.record.id.clone(), used)])
        .await
        .unwrap();
    let disabled = fx.manager.disable(&org, &key.record.id).await.unwrap();
    assert_eq!(disabled.last_used_at, Some(used));
    let revoked = fx.manager.revoke(&org, &key.record.id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(matches!(
        fx.manager.enable(&org, &key.record.id).await,
        Err(ManageError::Revoked)
    ));
    assert!(matches!(
        fx.manager
            .disable(&OrgId::from("org_b"), &key.record.id)
            .await,
        Err(ManageError::NotFound)
    ));
}

#[tokio::test]
async fn metadata_comes_back_on_the_principal_and_in_listings_and_is_bounded() {
    let fx = Fixture::new();
    let org = OrgId::from("org_a");
    let meta = metadata(serde_json::json!({"customer_id": "cus_42", "tier": 3}));
    let key = fx
        .manager
        .create(&org, NewKey::new("partner").metadata(meta.clone()))
        .await
        .unwrap();
    let (status, _, body) = both(&fx, ClientAddr::peer(), || {
        from("198.51.100.1:1", &key, &[])
    })
    .await;
    assert_eq!(status, StatusCode::OK);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["metadata"], serde_json::Value::Object(meta.clone()));
    let listed = fx.manager.list(&org).await.unwrap();
    assert_eq!(listed[0].metadata(), Some(&meta));

    let too_big = metadata(serde_json::json!({"blob": "x".repeat(limits::MAX_METADATA_BYTES)}));
    let err = fx
        .manager
        .create(&org, NewKey::new("big").metadata(too_big))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ManageError::Limit(LimitError::MetadataTooLarge { max: 4096, .. })
        ),
        "{err:?}"
    );
    let res = err.problem_response();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let v = problem(res.body());
    assert_eq!(v["code"], "metadata_too_large");
    assert!(v["title"].as_str().unwrap().contains("4096"), "{v}");

    let many = metadata(serde_json::Value::Object(
        (0..33).map(|i| (format!("k{i}"), i.into())).collect(),
    ));
    let err = fx
        .manager
        .update(&org, &key.record.id, KeyChanges::new().metadata(Some(many)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ManageError::Limit(LimitError::TooManyMetadataMembers { max: 32, got: 33 })
        ),
        "{err:?}"
    );
}

/// A key limited to 203.0.113.0/24 and 2001:db8::/32.
async fn restricted(fx: &Fixture) -> CreatedKey {
    fx.manager
        .create(
            &OrgId::from("org_a"),
            NewKey::new("office").allowed_networks([
                "203.0.113.0/24".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ]),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn allowed_networks_admit_ipv4_ipv6_and_mapped_addresses_inside_and_refuse_the_rest() {
    let fx = Fixture::new();
    let key = restricted(&fx).await;
    for (peer, want) in [
        ("203.0.113.9:443", StatusCode::OK),
        ("[2001:db8::5]:443", StatusCode::OK),
        ("[::ffff:203.0.113.9]:443", StatusCode::OK),
        ("198.51.100.1:443", StatusCode::FORBIDDEN),
        ("[2001:db9::1]:443", StatusCode::FORBIDDEN),
        ("[::ffff:198.51.100.1]:443", StatusCode::FORBIDDEN),
    ] {
        let (status, _, code) = both(&fx, ClientAddr::peer(), || from(peer, &key, &[])).await;
        assert_eq!(status, want, "{peer}");
        if want == StatusCode::FORBIDDEN {
            assert_eq!(code, "client_not_allowed", "{peer}");
        }
    }
    // No known address: refused (fail closed).
    let (status, _, code) = both(&fx, ClientAddr::peer(), || {
        get("/v1/whoami", Some(&bearer(&key)))
    })
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "client_not_allowed")
    );
    // gRPC: permission denied.
    let (status, grpc_status, _) = both(&fx, ClientAddr::peer(), || {
        grpc(from("198.51.100.1:443", &key, &[]))
    })
    .await;
    assert_eq!(
        (status, grpc_status.as_deref()),
        (StatusCode::OK, Some("7"))
    );
    // A key without a list needs no address at all.
    let open = fx.mint("org_a", &[]).await;
    let (status, _, _) = both(&fx, ClientAddr::peer(), || {
        get("/v1/whoami", Some(&bearer(&open)))
    })
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_spoofed_x_forwarded_for_from_an_untrusted_peer_is_not_believed() {
    let fx = Fixture::new();
    let key = restricted(&fx).await;
    let behind_lb = || ClientAddr::trusted_proxies(["10.0.0.0/8".parse().unwrap()]);
    let xff = [("x-forwarded-for", "203.0.113.9")];
    // From the internet, claiming an allowed address: refused.
    let (status, _, code) = both(&fx, behind_lb(), || from("198.51.100.1:1", &key, &xff)).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "client_not_allowed")
    );
    // The default extractor never reads the header, even from a proxy's address.
    let (status, _, _) = both(&fx, ClientAddr::peer(), || from("10.0.0.5:1", &key, &xff)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Through the trusted proxy: the forwarded client is allowed.
    let (status, _, _) = both(&fx, behind_lb(), || from("10.0.0.5:1", &key, &xff)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn allowed_networks_changed_by_update_hold_from_the_next_request() {
    let fx = Fixture::new();
    let org = OrgId::from("org_a");
    let key = fx.mint("org_a", &[]).await;
    let peer = "198.51.100.1:1";
    let layer = ApiKeyAuth::new(fx.store.clone()).clock(fx.clock.clone());
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(handler));
    let status = |res: Response<_>| res.status();
    let res = svc.ready().await.unwrap().call(from(peer, &key, &[])).await;
    assert_eq!(status(res.unwrap()), StatusCode::OK);
    fx.manager
        .update(
            &org,
            &key.record.id,
            KeyChanges::new().allowed_networks(vec!["203.0.113.0/24".parse().unwrap()]),
        )
        .await
        .unwrap();
    let res = svc.ready().await.unwrap().call(from(peer, &key, &[])).await;
    assert_eq!(status(res.unwrap()), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_maximum_lifetime_is_enforced_on_create_and_rotate_and_the_default_applies() {
    let fx = Fixture::new();
    let org = OrgId::from("org_a");
    let strict = OrgId::from("org_strict");
    let manager = fx
        .manager
        .clone()
        .expiry_policy(
            ExpiryPolicy::new()
                .max_lifetime(365 * DAY)
                .default_lifetime(90 * DAY),
        )
        .org_expiry_policy(strict.clone(), ExpiryPolicy::new().max_lifetime(30 * DAY));
    let now = fx.clock.now();

    let default = manager.create(&org, NewKey::new("d")).await.unwrap();
    assert_eq!(
        default.record.expires_at,
        Some(now.saturating_add(90 * DAY))
    );
    let err = manager
        .create(&org, NewKey::new("long").expires_in(366 * DAY))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ManageError::LifetimeTooLong { max_secs } if max_secs == 365 * 86_400),
        "{err:?}"
    );
    let res = err.problem_response();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let v = problem(res.body());
    assert_eq!(v["code"], "lifetime_too_long");
    assert!(v["title"].as_str().unwrap().contains("31536000"), "{v}");

    // The org's own policy replaces the global one; without a default, the maximum applies.
    let capped = manager.create(&strict, NewKey::new("c")).await.unwrap();
    assert_eq!(capped.record.expires_at, Some(now.saturating_add(30 * DAY)));
    assert!(matches!(
        manager
            .create(&strict, NewKey::new("c").expires_in(31 * DAY))
            .await,
        Err(ManageError::LifetimeTooLong { max_secs }) if max_secs == 30 * 86_400
    ));

    // Rotation: a key made before the policy, never expiring, cannot be rotated into a key
    // that lives longer than the maximum; it gets the maximum.
    let legacy = fx
        .manager
        .create(&strict, NewKey::new("legacy"))
        .await
        .unwrap();
    assert_eq!(legacy.record.expires_at, None);
    let rotated = manager
        .rotate(&strict, &legacy.record.id, Rotation::immediate())
        .await
        .unwrap();
    assert_eq!(
        rotated.record.expires_at,
        Some(now.saturating_add(30 * DAY))
    );
    // A key whose expiry lies beyond the maximum (made under a looser policy) is refused.
    let loose = fx
        .manager
        .create(&strict, NewKey::new("loose").expires_in(300 * DAY))
        .await
        .unwrap();
    assert!(matches!(
        manager
            .rotate(&strict, &loose.record.id, Rotation::immediate())
            .await,
        Err(ManageError::LifetimeTooLong { .. })
    ));
}

#[tokio::test]
async fn the_expiry_reminder_fires_once_per_key_even_with_two_replicas() {
    let fx = Fixture::new();
    let org = OrgId::from("org_a");
    let soon = fx
        .manager
        .create(&org, NewKey::new("soon").expires_in(3 * DAY))
        .await
        .unwrap();
    fx.manager
        .create(&org, NewKey::new("later").expires_in(60 * DAY))
        .await
        .unwrap();
    fx.manager.create(&org, NewKey::new("never")).await.unwrap();

    let fired = Arc::new(Mutex::new(Vec::new()));
    let replica = |fired: Arc<Mutex<Vec<String>>>| {
        ExpiryReminder::new(fx.store.clone(), 7 * DAY)
            .clock(fx.clock.clone())
            .on_expiring(move |key| fired.lock().unwrap().push(key.id.to_string()))
    };
    let (a, b) = (replica(fired.clone()), replica(fired.clone()));
    let (logs, _guard) = Logs::capture();
    let (na, nb) = tokio::join!(a.run_once(), b.run_once());
    assert_eq!(na.unwrap() + nb.unwrap(), 1);
    assert_eq!(a.run_once().await.unwrap(), 0, "not again");
    assert_eq!(*fired.lock().unwrap(), vec![soon.record.id.to_string()]);
    let text = logs.text();
    assert_eq!(text.matches("key_expiring").count(), 1, "{text}");
    assert!(text.contains(soon.record.id.as_str()));

    // Later, the 60-day key enters the window: reminded once too.
    fx.time.advance(55 * DAY);
    assert_eq!(b.run_once().await.unwrap(), 1);
    assert_eq!(a.run_once().await.unwrap(), 0);
    assert_eq!(fired.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn ids_names_and_scopes_beyond_the_limits_are_400_naming_the_limit() {
    let fx = Fixture::new();
    for (org, spec, code) in [
        (
            OrgId::from("org_\n2026 INFO forged"),
            NewKey::new("n"),
            "invalid_id",
        ),
        (OrgId::from("org_\0"), NewKey::new("n"), "invalid_id"),
        (
            OrgId::from("org_a"),
            NewKey::new("n").scopes(
                tower_api_key::Scopes::parse((0..65).map(|i| format!("r{i}:read"))).unwrap(),
            ),
            "too_many_scopes",
        ),
    ] {
        let err = fx.manager.create(&org, spec).await.unwrap_err();
        let res = err.problem_response();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{err:?}");
        let v = problem(res.body());
        assert_eq!(v["code"], code);
        assert!(
            v["title"].as_str().unwrap().contains("128")
                || v["title"].as_str().unwrap().contains("64"),
            "the limit is in the message: {v}"
        );
        assert!(!v["title"].as_str().unwrap().contains("forged"));
    }
}

#[cfg(feature = "events")]
#[tokio::test]
async fn the_expiry_reminder_feeds_the_event_sink_once() {
    use tower_api_key::events::{EventKind, Events, RecentEvents};
    let fx = Fixture::new();
    let org = OrgId::from("org_a");
    let soon = fx
        .manager
        .create(&org, NewKey::new("soon").expires_in(2 * DAY))
        .await
        .unwrap();
    let recent = RecentEvents::new(10);
    let (events, delivery) = Events::builder().sink(recent.clone()).start();
    let reminder = ExpiryReminder::new(fx.store.clone(), 7 * DAY)
        .clock(fx.clock.clone())
        .on_expiring(events.on_expiring());
    assert_eq!(reminder.run_once().await.unwrap(), 1);
    assert_eq!(reminder.run_once().await.unwrap(), 0);
    delivery.shutdown(Duration::from_secs(5)).await;
    let got: Vec<EventKind> = recent.list(&org).into_iter().map(|e| e.kind).collect();
    assert_eq!(
        got,
        vec![EventKind::KeyExpiring {
            key_id: soon.record.id.clone(),
            expires_at: soon.record.expires_at.unwrap().as_unix_secs(),
        }]
    );
}
