//! ScopeGuard and KeyManager: scopes, minting within one's own scopes, rotation, revocation.

mod common;

use std::time::Duration;

use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_api_key::{
    ApiKeyAuth, KeyStore, ManageError, NewKey, OrgId, Principal, Requirement, Rotation, ScopeGuard,
    ScopeGuardLayer, ScopeRules, Scopes, Timestamp,
};

async fn status_with(
    fx: &Fixture,
    guard: ScopeGuardLayer,
    key: &tower_api_key::CreatedKey,
    req: Request<Full<bytes::Bytes>>,
) -> (StatusCode, http::HeaderMap) {
    let _ = key;
    let svc = ServiceBuilder::new()
        .layer(ApiKeyAuth::new(fx.store.clone()).clock(fx.clock.clone()))
        .layer(guard)
        .service(service_fn(echo_principal));
    let res = svc.oneshot(req).await.unwrap();
    (res.status(), res.headers().clone())
}

#[tokio::test]
async fn missing_scope_is_403_with_an_insufficient_scope_challenge() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &["browser_sessions:read"]).await;
    let svc = ServiceBuilder::new()
        .layer(ApiKeyAuth::new(fx.store.clone()).clock(fx.clock.clone()))
        .layer(ScopeGuard::require("browser_sessions:delete"))
        .service(service_fn(echo_principal));
    let res = svc.oneshot(get("/", Some(&bearer(&key)))).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        res.headers()["www-authenticate"],
        "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"browser_sessions:delete\""
    );
    let v = problem_of(res).await;
    assert_eq!(v["code"], "insufficient_scope");
    assert_eq!(v["required_scope"], "browser_sessions:delete");
}

#[tokio::test]
async fn held_scope_passes() {
    let fx = Fixture::new();
    let key = fx
        .mint(
            "org_a",
            &["browser_sessions:create", "browser_sessions:read"],
        )
        .await;
    let (status, _) = status_with(
        &fx,
        ScopeGuard::require("browser_sessions:read"),
        &key,
        get("/", Some(&bearer(&key))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn wildcard_scope_passes_within_its_resource_only() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &["browser_sessions:*"]).await;
    let (ok, _) = status_with(
        &fx,
        ScopeGuard::require("browser_sessions:delete"),
        &key,
        get("/", Some(&bearer(&key))),
    )
    .await;
    assert_eq!(ok, StatusCode::OK);
    let (denied, _) = status_with(
        &fx,
        ScopeGuard::require("sandbox_sessions:delete"),
        &key,
        get("/", Some(&bearer(&key))),
    )
    .await;
    assert_eq!(denied, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn empty_scopes_mean_full_access() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    for scope in ["org:billing", "api_keys:manage", "members:manage_roles"] {
        let (status, _) = status_with(
            &fx,
            ScopeGuard::require(Requirement::scope(
                tower_api_key::Scope::new(scope).unwrap(),
            )),
            &key,
            get("/", Some(&bearer(&key))),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{scope}");
    }
}

#[tokio::test]
async fn any_of_and_all_of() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &["org:billing"]).await;
    let (any, _) = status_with(
        &fx,
        ScopeGuard::any_of(["org:manage", "org:billing"]),
        &key,
        get("/", Some(&bearer(&key))),
    )
    .await;
    assert_eq!(any, StatusCode::OK);
    let (all, headers) = status_with(
        &fx,
        ScopeGuard::all_of(["org:manage", "org:billing"]),
        &key,
        get("/", Some(&bearer(&key))),
    )
    .await;
    assert_eq!(all, StatusCode::FORBIDDEN);
    // The challenge names every required scope, in the order given.
    assert_eq!(
        headers["www-authenticate"],
        "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"org:manage org:billing\""
    );
}

#[tokio::test]
async fn rule_table_by_method_and_path_fails_closed() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &["browser_sessions:read"]).await;
    let rules = ScopeRules::new()
        .route(Method::GET, "/v1/browsers/{id}", "browser_sessions:read")
        .route(
            Method::DELETE,
            "/v1/browsers/{id}",
            "browser_sessions:delete",
        )
        .grpc("/sandbox.v1.Sandbox/Exec", "sandbox_sessions:exec");
    let req = |m: Method, p: &str| {
        Request::builder()
            .method(m)
            .uri(p)
            .header("authorization", bearer(&key))
            .body(Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let cases = [
        (Method::GET, "/v1/browsers/b1", StatusCode::OK),
        (Method::DELETE, "/v1/browsers/b1", StatusCode::FORBIDDEN),
        (
            Method::POST,
            "/sandbox.v1.Sandbox/Exec",
            StatusCode::FORBIDDEN,
        ),
        (Method::GET, "/v1/unlisted", StatusCode::FORBIDDEN),
    ];
    for (m, p, want) in cases {
        let (status, _) = status_with(
            &fx,
            ScopeGuard::rules(rules.clone()),
            &key,
            req(m.clone(), p),
        )
        .await;
        assert_eq!(status, want, "{m} {p}");
    }
    let (status, _) = status_with(
        &fx,
        ScopeGuard::rules(rules.allow_unmatched()),
        &key,
        req(Method::GET, "/v1/unlisted"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_route_without_a_rule_is_refused_with_no_route_rule() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await; // full access: only the missing rule refuses
    let rules = ScopeRules::new().route(Method::GET, "/v1/browsers/{id}", "browser_sessions:read");
    let request = || {
        Request::builder()
            .uri("/v1/unlisted")
            .header("authorization", bearer(&key))
            .body(Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let layered = ServiceBuilder::new()
        .layer(ApiKeyAuth::new(fx.store.clone()).clock(fx.clock.clone()))
        .layer(ScopeGuard::rules(rules.clone()))
        .service(service_fn(echo_principal));
    let fused = ServiceBuilder::new()
        .layer(
            ApiKeyAuth::new(fx.store.clone())
                .clock(fx.clock.clone())
                .scope_guard(ScopeGuard::rules(rules)),
        )
        .service(service_fn(echo_principal));
    let layered = layered.oneshot(request()).await.unwrap();
    let fused = fused.oneshot(request()).await.unwrap();
    for (status, challenge, v) in [
        (
            layered.status(),
            layered.headers().contains_key("www-authenticate"),
            problem_of(layered).await,
        ),
        (
            fused.status(),
            fused.headers().contains_key("www-authenticate"),
            problem_of(fused).await,
        ),
    ] {
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(!challenge, "no scope to name in a challenge");
        assert_eq!(v["code"], "no_route_rule");
        assert_eq!(v["title"], "No permission rule for this route");
    }
}

#[tokio::test]
async fn scope_guard_without_api_key_auth_fails_closed_with_500() {
    let svc = ServiceBuilder::new()
        .layer(ScopeGuard::require("org:billing"))
        .service(service_fn(echo_principal));
    let res = svc.oneshot(get("/", None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let v = problem_of(res).await;
    assert_eq!(v["code"], "auth_layer_missing");
    assert_eq!(
        v["title"],
        "Server misconfiguration: ScopeGuard found no authenticated principal (is ApiKeyAuth in front of it?)"
    );
}

async fn principal_of(fx: &Fixture, key: &tower_api_key::CreatedKey) -> Principal {
    let found = fx
        .store
        .find_by_hash(&key.key.hash())
        .await
        .unwrap()
        .unwrap();
    Principal::new(found.record, found.plan)
}

#[tokio::test]
async fn a_key_can_only_mint_keys_within_its_own_scopes() {
    let fx = Fixture::new();
    let admin = fx
        .mint("org_a", &["api_keys:manage", "browser_sessions:*"])
        .await;
    let actor = principal_of(&fx, &admin).await;

    let ok = fx
        .manager
        .create_for(
            &actor,
            NewKey::new("worker").scopes(Scopes::parse(["browser_sessions:create"]).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(ok.record.org_id, OrgId::from("org_a"));

    let escalate = fx
        .manager
        .create_for(
            &actor,
            NewKey::new("billing").scopes(Scopes::parse(["org:billing"]).unwrap()),
        )
        .await;
    assert!(matches!(escalate, Err(ManageError::ScopeEscalation)));

    // Full access is more than any scoped key holds.
    let full = fx.manager.create_for(&actor, NewKey::new("root")).await;
    assert!(matches!(full, Err(ManageError::ScopeEscalation)));

    // A full-access key may mint anything.
    let root = fx.mint("org_a", &[]).await;
    let root = principal_of(&fx, &root).await;
    let anything = fx
        .manager
        .create_for(&root, NewKey::new("anything"))
        .await
        .unwrap();
    assert_eq!(anything.record.org_id, OrgId::from("org_a"));
    assert!(anything.record.scopes.is_full_access());
}

#[tokio::test]
async fn rotate_issues_a_new_key_with_the_same_permissions_and_revokes_the_old() {
    let fx = Fixture::new();
    let org = OrgId::from("org_a");
    let old = fx.mint("org_a", &["browser_sessions:read"]).await;
    let new = fx
        .manager
        .rotate(&org, &old.record.id, Rotation::immediate())
        .await
        .unwrap();
    assert_ne!(new.key.expose_secret(), old.key.expose_secret());
    assert_eq!(new.record.name(), old.record.name());
    assert_eq!(new.record.scopes, old.record.scopes);
    assert_eq!(new.record.org_id, org);
    assert_eq!(new.record.rotated_from(), Some(&old.record.id));

    let svc = ServiceBuilder::new()
        .layer(ApiKeyAuth::new(fx.store.clone()).clock(fx.clock.clone()))
        .service(service_fn(echo_principal));
    let res = svc
        .clone()
        .oneshot(get("/", Some(&bearer(&new))))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = svc.oneshot(get("/", Some(&bearer(&old)))).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn rotate_with_grace_keeps_the_old_key_until_the_grace_ends() {
    let fx = Fixture::new();
    let org = OrgId::from("org_a");
    let old = fx.mint("org_a", &[]).await;
    fx.manager
        .rotate(
            &org,
            &old.record.id,
            Rotation::with_grace(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(ApiKeyAuth::new(fx.store.clone()).clock(fx.clock.clone()))
        .service(service_fn(echo_principal));
    // The grace ends `REVOCATION_LEEWAY` early (clock-skew allowance), never late.
    let leeway = tower_api_key::KeyRecord::REVOCATION_LEEWAY;
    fx.time
        .advance(Duration::from_secs(3600) - leeway - Duration::from_secs(1));
    let res = svc
        .clone()
        .oneshot(get("/", Some(&bearer(&old))))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    fx.time.advance(Duration::from_secs(1));
    let res = svc.oneshot(get("/", Some(&bearer(&old)))).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn rotating_a_key_needs_its_scopes() {
    let fx = Fixture::new();
    let powerful = fx.mint("org_a", &["org:manage"]).await;
    let actor = fx.mint("org_a", &["api_keys:manage"]).await;
    let actor = principal_of(&fx, &actor).await;
    let res = fx
        .manager
        .rotate_for(&actor, &powerful.record.id, Rotation::immediate())
        .await;
    assert!(matches!(res, Err(ManageError::ScopeEscalation)));
}

#[tokio::test]
async fn revocation_is_immediate_permanent_and_idempotent() {
    let fx = Fixture::new();
    let org = OrgId::from("org_a");
    let key = fx.mint("org_a", &[]).await;
    let first = fx.manager.revoke(&org, &key.record.id).await.unwrap();
    let at = first.revoked_at.unwrap();

    fx.time.advance(Duration::from_secs(10));
    let again = fx.manager.revoke(&org, &key.record.id).await.unwrap();
    assert_eq!(
        again.revoked_at,
        Some(at),
        "a second revoke changes nothing"
    );

    // Even a store-level revoke with a later time cannot move it (and nothing un-revokes).
    let later = fx
        .store
        .revoke(
            &key.record.id,
            Timestamp::from_unix_secs(u64::MAX / 2_000_000_000),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(later.revoked_at, Some(at));

    let rotate = fx
        .manager
        .rotate(&org, &key.record.id, Rotation::immediate())
        .await;
    assert!(matches!(rotate, Err(ManageError::Revoked)));
}

#[tokio::test]
async fn organizations_are_isolated_in_management() {
    let fx = Fixture::new();
    let a = fx.mint("org_a", &[]).await;
    let _b = fx.mint("org_b", &[]).await;
    let org_b = OrgId::from("org_b");
    assert!(matches!(
        fx.manager.get(&org_b, &a.record.id).await,
        Err(ManageError::NotFound)
    ));
    assert!(matches!(
        fx.manager.revoke(&org_b, &a.record.id).await,
        Err(ManageError::NotFound)
    ));
    assert!(matches!(
        fx.manager
            .rotate(&org_b, &a.record.id, Rotation::immediate())
            .await,
        Err(ManageError::NotFound)
    ));
    let listed = fx.manager.list(&org_b).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed.iter().all(|r| r.org_id == org_b));
    // The key of org_a still works: org_b's attempts touched nothing.
    let rec = fx.manager.get(&"org_a".into(), &a.record.id).await.unwrap();
    assert!(rec.revoked_at.is_none());
}

#[tokio::test]
async fn list_shows_metadata_newest_first_and_never_secrets() {
    let fx = Fixture::new();
    let first = fx.mint("org_a", &["org:billing"]).await;
    fx.time.advance(Duration::from_secs(1));
    let second = fx.mint("org_a", &[]).await;
    let listed = fx.manager.list(&"org_a".into()).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].id, second.record.id);
    assert_eq!(listed[1].id, first.record.id);
    assert!(listed[1].hint().starts_with("br_live_…"));
    assert!(
        first
            .key
            .expose_secret()
            .ends_with(&listed[1].hint()["br_live_…".len()..])
    );
    let json = serde_json::to_string(&listed).unwrap();
    assert!(!json.contains(&first.key.expose_secret()[8..]));
    assert!(!json.contains(&second.key.expose_secret()[8..]));
}

#[tokio::test]
async fn expiry_must_be_in_the_future() {
    let fx = Fixture::new();
    let past = fx
        .manager
        .create(
            &"org_a".into(),
            NewKey::new("old").expires_at(Timestamp::from_unix_secs(1)),
        )
        .await;
    assert!(matches!(past, Err(ManageError::ExpiryInPast)));
    let unnamed = fx.manager.create(&"org_a".into(), NewKey::new("  ")).await;
    assert!(matches!(unnamed, Err(ManageError::InvalidName)));
}
