//! The admin API's JSON bodies (`POST /api-keys`, `POST /api-keys/{id}/rotate`) from arbitrary
//! bytes, through the real router, acting for a caller that holds `api_keys:manage` and
//! `browser_sessions:read` only. The first byte picks the route; the rest is the body.
//!
//! Property: the router never panics and answers every body with
//! - `201` and a `{"key", "api_key"}` envelope whose secret is a well-formed `br_live_` key and
//!   whose key holds only permissions the caller holds (never full access), named as asked; or
//! - `400 invalid_request`, `403 scope_escalation`, `409 key_revoked` or `422` (name, expiry) as
//!   `application/problem+json`, whose `status` member matches the response's.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::request::Parts;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower_api_key::admin::{AdminApi, Caller};
use tower_api_key::{KeyManager, MemoryStore, NewKey, OrgId, Principal, Scopes};
use tower_service::Service;

#[derive(Clone)]
struct Fixed(Principal);

impl Caller for Fixed {
    async fn principal(&self, _: &Parts) -> Option<Principal> {
        Some(self.0.clone())
    }
}

const CALLER_SCOPES: [&str; 2] = ["api_keys:manage", "browser_sessions:read"];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&route, body)) = data.split_first() else {
        return;
    };
    runtime().block_on(async {
        let manager = KeyManager::new(MemoryStore::new());
        let org = OrgId::from("org_fuzz");
        let scopes = Scopes::parse(CALLER_SCOPES).unwrap();
        let caller = manager
            .create(&org, NewKey::new("caller").scopes(scopes.clone()))
            .await
            .unwrap();
        let target = manager
            .create(
                &org,
                NewKey::new("target").scopes(Scopes::parse(["browser_sessions:read"]).unwrap()),
            )
            .await
            .unwrap();
        let plan = manager.plan(&org).await.unwrap();
        let principal = Principal::new(Arc::new(caller.record.clone()), plan);
        let mut router = AdminApi::new(manager)
            .caller(Fixed(principal))
            .router::<()>();

        let path = if route % 2 == 0 {
            "/api-keys".to_owned()
        } else {
            format!("/api-keys/{}/rotate", target.record.id)
        };
        let req = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_vec()))
            .unwrap();
        let res = router.call(req).await.unwrap();
        let status = res.status();
        let content_type = res.headers().get("content-type").cloned();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let json: Value = serde_json::from_slice(&bytes).expect("every answer is JSON");

        if status == StatusCode::CREATED {
            let secret = json["key"].as_str().expect("a secret");
            assert!(
                secret.starts_with("br_live_") && secret.len() == 40,
                "{secret}"
            );
            let key = &json["api_key"];
            assert_eq!(key["access"], "scoped", "never full access: {json}");
            for scope in key["scopes"].as_array().expect("scopes") {
                let scope = scope.as_str().unwrap();
                assert!(
                    CALLER_SCOPES.iter().any(|held| {
                        *held == scope
                            || held.strip_suffix('*').is_some_and(|p| scope.starts_with(p))
                    }),
                    "granted {scope} the caller does not hold"
                );
            }
            if route % 2 == 0 {
                let asked: Value = serde_json::from_slice(body).expect("a 201 had a JSON body");
                assert_eq!(key["name"], asked["name"]);
            } else {
                assert_eq!(key["rotated_from"], target.record.id.as_str());
            }
            return;
        }
        assert_eq!(
            content_type.as_ref().map(|v| v.as_bytes()),
            Some(&b"application/problem+json"[..]),
            "{status}"
        );
        assert_eq!(json["status"], status.as_u16());
        let code = json["code"].as_str().expect("a code");
        let documented = matches!(
            (status.as_u16(), code),
            (400, "invalid_request")
                | (403, "scope_escalation")
                | (409, "key_revoked")
                | (
                    422,
                    "invalid_name" | "expiry_in_past" | "unknown_environment"
                )
        );
        assert!(documented, "{status} {code}");
    });
});
