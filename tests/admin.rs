//! The admin API over real HTTP, behind `ApiKeyAuth`: every route, one key shape, pagination,
//! errors, scope escalation, isolation between organizations, and the OpenAPI document.
#![cfg(feature = "admin")]

use std::collections::BTreeSet;

use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use tower_api_key::admin::AdminApi;
use tower_api_key::{ApiKeyAuth, KeyManager, MemoryStore, NewKey, OrgId, Scopes};

struct Admin {
    base: String,
    http: Client,
    manager: KeyManager<MemoryStore>,
}

impl Admin {
    async fn start() -> Self {
        let store = MemoryStore::new();
        let manager = KeyManager::new(store.clone());
        let app = axum::Router::new()
            .nest("/v1", AdminApi::new(manager.clone()).router())
            .route("/v1/ping", axum::routing::get(|| async { "pong" }))
            .layer(ApiKeyAuth::new(store));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base,
            http: Client::new(),
            manager,
        }
    }

    /// A key of `org` minted directly (the bootstrap a CLI does), with `scopes` (empty: full).
    async fn mint(&self, org: &str, scopes: &[&str]) -> String {
        let scopes = Scopes::parse(scopes).unwrap();
        let created = self
            .manager
            .create(&OrgId::from(org), NewKey::new("bootstrap").scopes(scopes))
            .await
            .unwrap();
        created.key.expose_secret().to_owned()
    }

    /// Status and JSON body; refusals are checked to be problem+json with a matching status.
    async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let content_type = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let json: Value = res.json().await.unwrap_or(Value::Null);
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(content_type.as_deref(), Some("application/problem+json"));
            assert_eq!(json["status"], status.as_u16());
        }
        (status, json)
    }
}

const KEY_FIELDS: [&str; 15] = [
    "id",
    "name",
    "hint",
    "scopes",
    "access",
    "environment",
    "created_at",
    "expires_at",
    "last_used_at",
    "revoked_at",
    "rotated_from",
    "disabled",
    "metadata",
    "allowed_networks",
    "status",
];

fn assert_key_shape(key: &Value) {
    let fields: BTreeSet<&str> = key
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, KEY_FIELDS.into_iter().collect(), "{key}");
}

#[tokio::test]
async fn create_shows_the_secret_once_and_every_route_the_same_key_object() {
    let admin = Admin::start().await;
    let root = admin.mint("org_a", &[]).await;
    let (status, created) = admin
        .call(
            Method::POST,
            "/v1/api-keys",
            Some(&root),
            Some(
                json!({"name": "ci", "scopes": ["browser_sessions:read", "browser_sessions:create"],
                        "expires_in_secs": 3600}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let secret = created["key"].as_str().unwrap();
    assert!(secret.starts_with("br_live_"), "{secret}");
    let key = &created["api_key"];
    assert_key_shape(key);
    assert_eq!(key["name"], "ci");
    assert_eq!(
        key["scopes"],
        json!(["browser_sessions:create", "browser_sessions:read"])
    );
    assert_eq!(key["access"], "scoped");
    assert_eq!(key["status"], "active");
    assert_eq!(key["last_used_at"], Value::Null);
    assert_eq!(
        key["expires_at"].as_u64().unwrap(),
        key["created_at"].as_u64().unwrap() + 3600
    );
    let id = key["id"].as_str().unwrap();

    let (status, shown) = admin
        .call(
            Method::GET,
            &format!("/v1/api-keys/{id}"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        &shown, key,
        "GET shows the object create answered, without the secret"
    );
    let (_, listed) = admin
        .call(Method::GET, "/v1/api-keys", Some(&root), None)
        .await;
    let in_list = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == key["id"]);
    assert_eq!(in_list, Some(key), "listed as the same object");
    assert!(
        !listed.to_string().contains(secret),
        "no secret in a listing"
    );

    // The new key works, and its use shows up as last used once flushed by the host; here the
    // key simply authenticates.
    let res = admin
        .http
        .get(format!("{}/v1/ping", admin.base))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn full_access_is_shown_as_such_and_only_granted_explicitly() {
    let admin = Admin::start().await;
    let root = admin.mint("org_a", &[]).await;
    let (status, created) = admin
        .call(
            Method::POST,
            "/v1/api-keys",
            Some(&root),
            Some(json!({"name": "all", "access": "full"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["api_key"]["access"], "full");
    assert_eq!(created["api_key"]["scopes"], json!([]));

    for (body, why) in [
        (json!({"name": "none"}), "no scopes and no access"),
        (json!({"name": "none", "scopes": []}), "empty scopes"),
        (
            json!({"name": "both", "access": "full", "scopes": ["org:billing"]}),
            "both",
        ),
        (
            json!({"name": "bad", "scopes": ["Not A Scope"]}),
            "bad scope",
        ),
        (
            json!({"name": "x", "scopes": ["org:billing"], "colour": 1}),
            "unknown field",
        ),
        (json!({"scopes": ["org:billing"]}), "no name"),
        (
            json!({"name": "x", "scopes": ["org:billing"], "expires_in_secs": 0}),
            "expires now",
        ),
    ] {
        let (status, problem) = admin
            .call(Method::POST, "/v1/api-keys", Some(&root), Some(body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{why}: {problem}");
        assert_eq!(problem["code"], "invalid_request", "{why}");
    }
    let res = admin
        .http
        .post(format!("{}/v1/api-keys", admin.base))
        .bearer_auth(&root)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "invalid_request");
}

#[tokio::test]
async fn a_key_cannot_grant_what_it_does_not_hold() {
    let admin = Admin::start().await;
    let manager_key = admin
        .mint("org_a", &["api_keys:manage", "browser_sessions:read"])
        .await;
    for body in [
        json!({"name": "more", "scopes": ["org:billing"]}),
        json!({"name": "all", "access": "full"}),
    ] {
        let (status, problem) = admin
            .call(Method::POST, "/v1/api-keys", Some(&manager_key), Some(body))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(problem["code"], "scope_escalation");
    }
    let (status, _) = admin
        .call(
            Method::POST,
            "/v1/api-keys",
            Some(&manager_key),
            Some(json!({"name": "less", "scopes": ["browser_sessions:read"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // Rotating a key with more permissions than the caller's is escalation too.
    let root = admin.mint("org_a", &[]).await;
    let (_, listed) = admin
        .call(Method::GET, "/v1/api-keys", Some(&root), None)
        .await;
    let full = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["access"] == "full")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, problem) = admin
        .call(
            Method::POST,
            &format!("/v1/api-keys/{full}/rotate"),
            Some(&manager_key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(problem["code"], "scope_escalation");
}

#[tokio::test]
async fn callers_without_the_manage_permission_or_a_principal_are_refused() {
    let admin = Admin::start().await;
    let reader = admin.mint("org_a", &["browser_sessions:read"]).await;
    let (status, problem) = admin
        .call(Method::GET, "/v1/api-keys", Some(&reader), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(problem["code"], "insufficient_scope");
    assert_eq!(problem["required_scope"], "api_keys:manage");

    // Without ApiKeyAuth in front, nobody is calling.
    let bare = axum::Router::new().nest(
        "/v1",
        AdminApi::new(KeyManager::new(MemoryStore::new())).router(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, bare).await });
    let res = reqwest::get(format!("http://{addr}/v1/api-keys"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "unauthenticated");
}

#[tokio::test]
async fn list_pages_through_every_key_newest_first() {
    let admin = Admin::start().await;
    let root = admin.mint("org_a", &[]).await;
    for i in 0..24 {
        let (status, _) = admin
            .call(
                Method::POST,
                "/v1/api-keys",
                Some(&root),
                Some(json!({"name": format!("k{i}"), "scopes": ["org:billing"]})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut path = "/v1/api-keys?limit=10".to_owned();
    loop {
        let (status, page) = admin.call(Method::GET, &path, Some(&root), None).await;
        assert_eq!(status, StatusCode::OK);
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 10);
        seen.extend(data.iter().map(|k| k["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                assert_eq!(page["has_more"], true);
                path = format!("/v1/api-keys?limit=10&cursor={cursor}");
            }
            None => {
                assert_eq!(page["has_more"], false);
                break;
            }
        }
    }
    assert_eq!(seen.len(), 25, "24 created and the bootstrap key");
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 25, "no repeats");
    let all = admin.manager.list(&OrgId::from("org_a")).await.unwrap();
    let want: Vec<String> = all.iter().map(|k| k.id.to_string()).collect();
    assert_eq!(seen, want, "the store's newest-first order");

    for bad in ["limit=0", "limit=101", "limit=x", "cursor=key_nope"] {
        let (status, problem) = admin
            .call(
                Method::GET,
                &format!("/v1/api-keys?{bad}"),
                Some(&root),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(problem["code"], "invalid_request", "{bad}");
    }
}

#[tokio::test]
async fn another_organization_s_keys_are_not_found() {
    let admin = Admin::start().await;
    let a = admin.mint("org_a", &[]).await;
    let b = admin.mint("org_b", &[]).await;
    let (_, created) = admin
        .call(
            Method::POST,
            "/v1/api-keys",
            Some(&b),
            Some(json!({"name": "b's", "scopes": ["org:billing"]})),
        )
        .await;
    let id = created["api_key"]["id"].as_str().unwrap();
    for (method, path) in [
        (Method::GET, format!("/v1/api-keys/{id}")),
        (Method::DELETE, format!("/v1/api-keys/{id}")),
        (Method::POST, format!("/v1/api-keys/{id}/rotate")),
    ] {
        let (status, problem) = admin.call(method.clone(), &path, Some(&a), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(problem["code"], "key_not_found");
    }
    let (_, listed) = admin
        .call(Method::GET, "/v1/api-keys", Some(&a), None)
        .await;
    assert!(
        !listed.to_string().contains(id),
        "not listed to another org"
    );
    let (status, shown) = admin
        .call(Method::GET, &format!("/v1/api-keys/{id}"), Some(&b), None)
        .await;
    assert_eq!(
        (status, shown["status"].clone()),
        (StatusCode::OK, json!("active"))
    );
}

#[tokio::test]
async fn revoke_refuses_the_key_from_the_next_request_on() {
    let admin = Admin::start().await;
    let root = admin.mint("org_a", &[]).await;
    let (_, created) = admin
        .call(
            Method::POST,
            "/v1/api-keys",
            Some(&root),
            Some(json!({"name": "doomed", "scopes": ["org:billing"]})),
        )
        .await;
    let secret = created["key"].as_str().unwrap();
    let id = created["api_key"]["id"].as_str().unwrap();
    let (status, revoked) = admin
        .call(
            Method::DELETE,
            &format!("/v1/api-keys/{id}"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_key_shape(&revoked);
    assert_eq!(revoked["status"], "revoked");
    assert!(revoked["revoked_at"].is_u64());
    let res = admin
        .http
        .get(format!("{}/v1/ping", admin.base))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let (status, problem) = admin
        .call(
            Method::POST,
            &format!("/v1/api-keys/{id}/rotate"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a revoked key cannot be rotated"
    );
    assert_eq!(problem["code"], "key_revoked");
}

#[tokio::test]
async fn rotate_with_an_overlap_keeps_the_old_key_for_that_long() {
    let admin = Admin::start().await;
    let root = admin.mint("org_a", &[]).await;
    let create = || {
        admin.call(
            Method::POST,
            "/v1/api-keys",
            Some(&root),
            Some(json!({"name": "web", "scopes": ["org:billing"]})),
        )
    };
    for (overlap, secs) in [
        (json!("24h"), 86_400),
        (json!("1h"), 3600),
        (json!("7d"), 604_800),
        (json!(90), 90),
        (json!("now"), 0),
    ] {
        let (_, old) = create().await;
        let old_id = old["api_key"]["id"].as_str().unwrap();
        let (status, new) = admin
            .call(
                Method::POST,
                &format!("/v1/api-keys/{old_id}/rotate"),
                Some(&root),
                Some(json!({ "overlap": overlap })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{overlap}");
        assert!(new["key"].as_str().unwrap().starts_with("br_live_"));
        assert_key_shape(&new["api_key"]);
        assert_eq!(new["api_key"]["rotated_from"], old_id);
        assert_eq!(new["api_key"]["name"], "web");
        assert_eq!(new["api_key"]["scopes"], json!(["org:billing"]));
        let (_, old_now) = admin
            .call(
                Method::GET,
                &format!("/v1/api-keys/{old_id}"),
                Some(&root),
                None,
            )
            .await;
        let revoked_at = old_now["revoked_at"].as_u64().unwrap();
        let rotated_at = new["api_key"]["created_at"].as_u64().unwrap();
        assert!(
            (rotated_at + secs..=rotated_at + secs + 1).contains(&revoked_at),
            "{overlap}: revoked at {revoked_at}, rotated at {rotated_at}"
        );
        let want = if secs == 0 { "revoked" } else { "active" };
        assert_eq!(old_now["status"], want, "{overlap}");
    }
    let (_, old) = create().await;
    let old_id = old["api_key"]["id"].as_str().unwrap();
    for bad in [
        json!("3w"),
        json!("31d"),
        json!("h"),
        json!(-1),
        json!("1.5h"),
    ] {
        let (status, problem) = admin
            .call(
                Method::POST,
                &format!("/v1/api-keys/{old_id}/rotate"),
                Some(&root),
                Some(json!({ "overlap": bad })),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(problem["code"], "invalid_request", "{bad}");
    }
}

#[tokio::test]
async fn update_renames_and_narrows_a_key_within_the_caller_s_permissions() {
    let admin = Admin::start().await;
    let manager_key = admin
        .mint("org_a", &["api_keys:manage", "browser_sessions:*"])
        .await;
    let (_, created) = admin
        .call(
            Method::POST,
            "/v1/api-keys",
            Some(&manager_key),
            Some(json!({"name": "worker", "scopes": ["api_keys:manage", "browser_sessions:read"]})),
        )
        .await;
    let secret = created["key"].as_str().unwrap().to_owned();
    let (status, _) = admin
        .call(Method::GET, "/v1/api-keys", Some(&secret), None)
        .await;
    assert_eq!(status, StatusCode::OK, "the new key may manage keys");
    let path = format!(
        "/v1/api-keys/{}",
        created["api_key"]["id"].as_str().unwrap()
    );

    let (status, updated) = admin
        .call(
            Method::PATCH,
            &path,
            Some(&manager_key),
            Some(json!({"name": "reader", "scopes": ["browser_sessions:read"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_key_shape(&updated);
    assert_eq!(updated["name"], "reader");
    assert_eq!(updated["scopes"], json!(["browser_sessions:read"]));
    assert_eq!(updated["hint"], created["api_key"]["hint"], "the same key");
    let (_, shown) = admin
        .call(Method::GET, &path, Some(&manager_key), None)
        .await;
    assert_eq!(shown, updated);

    let (status, _) = admin
        .call(
            Method::PATCH,
            &path,
            Some(&manager_key),
            Some(json!({"name": "  spaced  "})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, shown) = admin
        .call(Method::GET, &path, Some(&manager_key), None)
        .await;
    assert_eq!(shown["name"], "spaced", "names are trimmed");
    assert_eq!(
        shown["scopes"],
        json!(["browser_sessions:read"]),
        "a rename keeps scopes"
    );

    for (body, status, code) in [
        (
            json!({"scopes": ["org:billing"]}),
            StatusCode::FORBIDDEN,
            "scope_escalation",
        ),
        (
            json!({"access": "full"}),
            StatusCode::FORBIDDEN,
            "scope_escalation",
        ),
        (json!({}), StatusCode::BAD_REQUEST, "invalid_request"),
        (
            json!({"scopes": []}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"name": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_name",
        ),
        (
            json!({"colour": "red"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        let (got, problem) = admin
            .call(Method::PATCH, &path, Some(&manager_key), Some(body.clone()))
            .await;
        assert_eq!(
            (got, problem["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }

    // A key the caller does not cover cannot be changed (here: a full-access key).
    let root = admin.mint("org_a", &[]).await;
    let (_, listed) = admin
        .call(Method::GET, "/v1/api-keys", Some(&root), None)
        .await;
    let full = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["access"] == "full")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, problem) = admin
        .call(
            Method::PATCH,
            &format!("/v1/api-keys/{full}"),
            Some(&manager_key),
            Some(json!({"name": "mine now"})),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("scope_escalation"))
    );

    // Narrowed scopes hold from the next request on: the key lost `api_keys:manage`.
    let (status, problem) = admin
        .call(Method::GET, "/v1/api-keys", Some(&secret), None)
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("insufficient_scope"))
    );

    // Revoked keys do not change.
    admin
        .call(Method::DELETE, &path, Some(&manager_key), None)
        .await;
    let (status, problem) = admin
        .call(
            Method::PATCH,
            &path,
            Some(&manager_key),
            Some(json!({"name": "late"})),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("key_revoked"))
    );
}

#[tokio::test]
async fn org_shows_the_plan_and_its_limits() {
    let admin = Admin::start().await;
    let root = admin.mint("org_a", &[]).await;
    let (status, org) = admin.call(Method::GET, "/v1/org", Some(&root), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        org,
        json!({"org_id": "org_a", "plan": "free", "limits":
            {"requests_per_window": 100, "window_secs": 60, "concurrent_sessions": 10}})
    );
}

/// The document lists exactly the routes the router serves, and each documented operation is
/// answered (not 404 or 405) at its path.
#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let admin = Admin::start().await;
    let root = admin.mint("org_a", &[]).await;
    let (status, doc) = admin
        .call(Method::GET, "/v1/openapi.json", Some(&root), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let want: BTreeSet<String> = [
        "POST /api-keys",
        "GET /api-keys",
        "GET /api-keys/{id}",
        "PATCH /api-keys/{id}",
        "DELETE /api-keys/{id}",
        "POST /api-keys/{id}/rotate",
        "POST /api-keys/{id}/disable",
        "POST /api-keys/{id}/enable",
        "GET /org",
        "GET /org/usage",
        "GET /org/audit",
        "GET /org/credits",
        "PUT /org/credits",
        "PUT /api-keys/{id}/credits",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(operations, want);
    for op in &operations {
        let (method, path) = op.split_once(' ').unwrap();
        let path = format!("/v1{}", path.replace("{id}", "key_unknown"));
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, body) = admin
            .call(method, &path, Some(&root), Some(json!({})))
            .await;
        // Without `.credits(..)` the credit routes exist and say so.
        assert!(
            status != StatusCode::NOT_FOUND
                || path.contains("key_unknown")
                || body["code"] == "credits_not_configured",
            "{op}: {status}"
        );
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{op}");
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let key_props: BTreeSet<&str> = schemas["ApiKeyView"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(key_props, KEY_FIELDS.into_iter().collect());
}

#[tokio::test]
async fn policies_metadata_networks_disable_and_enable_through_the_api() {
    let admin = Admin::start().await;
    let root = admin.mint("org_a", &[]).await;
    let (status, created) = admin
        .call(
            Method::POST,
            "/v1/api-keys",
            Some(&root),
            Some(json!({
                "name": "partner",
                "access": "full",
                "metadata": {"customer_id": "cus_42"},
                "allowed_networks": ["203.0.113.0/24", "2001:db8::/32"],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = &created["api_key"];
    assert_key_shape(key);
    assert_eq!(key["metadata"], json!({"customer_id": "cus_42"}));
    assert_eq!(
        key["allowed_networks"],
        json!(["203.0.113.0/24", "2001:db8::/32"])
    );
    assert_eq!(key["disabled"], false);
    let id = key["id"].as_str().unwrap().to_owned();

    // A second key, used to show that disabling refuses its requests and enabling restores them.
    let (_, other) = admin
        .call(
            Method::POST,
            "/v1/api-keys",
            Some(&root),
            Some(json!({"name": "worker", "access": "full"})),
        )
        .await;
    let other_secret = other["key"].as_str().unwrap().to_owned();
    let other_id = other["api_key"]["id"].as_str().unwrap().to_owned();
    let (status, _) = admin
        .call(Method::GET, "/v1/ping", Some(&other_secret), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, disabled) = admin
        .call(
            Method::POST,
            &format!("/v1/api-keys/{other_id}/disable"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{disabled}");
    assert_eq!(
        (disabled["disabled"].clone(), disabled["status"].clone()),
        (json!(true), json!("disabled"))
    );
    let (status, problem) = admin
        .call(Method::GET, "/v1/ping", Some(&other_secret), None)
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_api_key"))
    );
    let (status, enabled) = admin
        .call(
            Method::POST,
            &format!("/v1/api-keys/{other_id}/enable"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(
        (status, enabled["status"].as_str()),
        (StatusCode::OK, Some("active"))
    );
    let (status, _) = admin
        .call(Method::GET, "/v1/ping", Some(&other_secret), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // PATCH: disabled and metadata (null clears) and networks ([] = anywhere).
    let (status, patched) = admin
        .call(
            Method::PATCH,
            &format!("/v1/api-keys/{id}"),
            Some(&root),
            Some(json!({"disabled": true, "metadata": null, "allowed_networks": []})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["disabled"], true);
    assert_eq!(patched["metadata"], Value::Null);
    assert_eq!(patched["allowed_networks"], json!([]));

    // Refusals, each with its code.
    let big = "x".repeat(4096);
    for (method, path, body, want, code) in [
        (
            Method::POST,
            "/v1/api-keys".to_owned(),
            json!({"name": "m", "access": "full", "metadata": {"blob": big}}),
            StatusCode::BAD_REQUEST,
            "metadata_too_large",
        ),
        (
            Method::POST,
            "/v1/api-keys".to_owned(),
            json!({"name": "n", "access": "full", "allowed_networks": ["not-a-network"]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::PATCH,
            format!("/v1/api-keys/{id}"),
            json!({"metadata": [1, 2]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        let (status, problem) = admin
            .call(method, &path, Some(&root), Some(body.clone()))
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (want, Some(code)),
            "{body}"
        );
    }
    let (status, problem) = admin
        .call(
            Method::POST,
            "/v1/api-keys",
            Some(&root),
            Some(json!({"name": "m", "access": "full", "metadata": {"blob": "x".repeat(4096)}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        problem["title"].as_str().unwrap().contains("4096"),
        "the limit is named: {problem}"
    );

    // A revoked key cannot be enabled.
    admin
        .call(
            Method::DELETE,
            &format!("/v1/api-keys/{other_id}"),
            Some(&root),
            None,
        )
        .await;
    let (status, problem) = admin
        .call(
            Method::POST,
            &format!("/v1/api-keys/{other_id}/enable"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("key_revoked"))
    );

    // The OpenAPI document lists the new routes.
    let doc = serde_json::to_value(tower_api_key::admin::openapi()).unwrap();
    for path in ["/api-keys/{id}/disable", "/api-keys/{id}/enable"] {
        assert!(
            doc["paths"][path]["post"].is_object(),
            "{path} in the OpenAPI document"
        );
    }
    let props = &doc["components"]["schemas"]["ApiKeyView"]["properties"];
    for field in ["disabled", "metadata", "allowed_networks"] {
        assert!(props[field].is_object(), "{field} in ApiKeyView's schema");
    }
}

/// `GET /org/usage`: the caller's organization's metered requests, per key and in total, in the
/// asked buckets; bad queries are problems with their own codes.
#[tokio::test]
async fn usage_reports_the_callers_organization_only() {
    use tower_api_key::{KeyId, KeyStore, Timestamp, UsageCounts, UsageDelta};
    let admin = Admin::start().await;
    let root = admin.mint("org_a", &["api_keys:manage"]).await;
    let reader = admin.mint("org_a", &["things:read"]).await;
    let other = admin.mint("org_b", &["api_keys:manage"]).await;
    let t = 1_800_000_000u64; // an hour's start (2027-01-15 08:00 UTC)
    let delta = |org: &str, key: &str, secs: u64, accepted: i64, scope: i64| UsageDelta {
        org_id: OrgId::from(org),
        key_id: KeyId::from(key),
        minute: Timestamp::from_unix_secs(secs),
        counts: UsageCounts {
            accepted,
            scope,
            ..Default::default()
        },
    };
    admin
        .manager
        .store()
        .record_usage(&[
            delta("org_a", "key_1", t, 5, 1),
            delta("org_a", "key_1", t + 120, 2, 0),
            delta("org_a", "key_2", t + 60, 3, 0),
            delta("org_b", "key_3", t, 100, 0),
        ])
        .await
        .unwrap();
    let path = format!("/v1/org/usage?from={t}&to={}&granularity=minute", t + 3_600);
    let (status, body) = admin.call(Method::GET, &path, Some(&root), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["granularity"], "minute");
    assert_eq!(body["from"], t);
    assert_eq!(body["total"]["accepted"], 10);
    assert_eq!(body["total"]["scope"], 1);
    assert_eq!(body["total"]["rate_limited"], 0);
    let buckets: Vec<(u64, i64)> = body["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["start"].as_u64().unwrap(),
                b["counts"]["accepted"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(buckets, vec![(t, 5), (t + 60, 3), (t + 120, 2)]);
    let keys: Vec<(&str, i64)> = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["key_id"].as_str().unwrap(),
                k["total"]["accepted"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(keys, vec![("key_1", 7), ("key_2", 3)]);
    // The same hour as one bucket.
    let path = format!("/v1/org/usage?from={t}&to={}&granularity=hour", t + 3_600);
    let (_, body) = admin.call(Method::GET, &path, Some(&root), None).await;
    assert_eq!(body["buckets"].as_array().unwrap().len(), 1);
    assert_eq!(body["buckets"][0]["counts"]["accepted"], 10);
    // Another organization sees its own.
    let path = format!("/v1/org/usage?from={t}&to={}&granularity=day", t + 3_600);
    let (_, body) = admin.call(Method::GET, &path, Some(&other), None).await;
    assert_eq!(body["total"]["accepted"], 100);
    assert_eq!(body["keys"][0]["key_id"], "key_3");
    // Refusals.
    let (status, body) = admin
        .call(
            Method::GET,
            "/v1/org/usage?granularity=week",
            Some(&root),
            None,
        )
        .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_request"))
    );
    let path = format!("/v1/org/usage?from={t}&to={t}");
    let (status, body) = admin.call(Method::GET, &path, Some(&root), None).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_usage_range"))
    );
    let path = format!(
        "/v1/org/usage?from={t}&to={}&granularity=minute",
        t + 8 * 86_400
    );
    let (status, body) = admin.call(Method::GET, &path, Some(&root), None).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_usage_range"))
    );
    let (status, body) = admin
        .call(Method::GET, "/v1/org/usage", Some(&reader), None)
        .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::FORBIDDEN, &json!("insufficient_scope"))
    );
    // Defaults: the last day by hour, empty here.
    let (status, body) = admin
        .call(Method::GET, "/v1/org/usage", Some(&root), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["granularity"], "hour");
    assert_eq!(body["total"]["accepted"], 0);
}

/// An admin API with credits, whose operators are the keys of `org_ops`.
async fn with_credits() -> (Admin, tower_api_key::credits::Credits) {
    use tower_api_key::credits::Credits;
    let store = MemoryStore::new();
    let manager = KeyManager::new(store.clone());
    let credits = Credits::new();
    let api = AdminApi::new(manager.clone())
        .credits(credits.clone())
        .credit_operator(|p| p.org_id().as_str() == "org_ops");
    let app = axum::Router::new()
        .nest("/v1", api.router())
        .layer(ApiKeyAuth::new(store));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let admin = Admin {
        base,
        http: Client::new(),
        manager,
    };
    (admin, credits)
}

#[tokio::test]
async fn credits_are_shown_to_managers_and_set_by_operators_only() {
    use tower_api_key::credits::{Account, Refill};
    let (admin, credits) = with_credits().await;
    let customer = admin.mint("org_a", &["api_keys:manage"]).await;
    let reader = admin.mint("org_a", &["browser_sessions:read"]).await;
    let ops = admin.mint("org_ops", &[]).await;
    let org_a = OrgId::from("org_a");

    // Nothing set: no org balance, no key rows.
    let (status, shown) = admin
        .call(Method::GET, "/v1/org/credits", Some(&customer), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown, json!({"org_id": "org_a", "org": null, "keys": []}));

    // A customer who manages keys may not top itself up, by org or by key.
    let top_up = json!({"balance": 1_000_000, "refill": {"every": "day"}});
    let (status, body) = admin
        .call(
            Method::PUT,
            "/v1/org/credits",
            Some(&customer),
            Some(top_up.clone()),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("operator_required"))
    );
    let keys = admin.manager.list(&org_a).await.unwrap();
    let key_path = format!("/v1/api-keys/{}/credits", keys[0].id);
    let (status, body) = admin
        .call(
            Method::PUT,
            &key_path,
            Some(&customer),
            Some(top_up.clone()),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("operator_required"))
    );
    assert_eq!(
        credits.peek(Account::Org(&org_a)).await.unwrap(),
        None,
        "nothing was set"
    );
    // Without api_keys:manage, not even shown.
    let (status, body) = admin
        .call(Method::GET, "/v1/org/credits", Some(&reader), None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("insufficient_scope"))
    );

    // The operator sets its own org's balance (the routes act for the caller's organization).
    let (status, body) = admin
        .call(
            Method::PUT,
            "/v1/org/credits",
            Some(&ops),
            Some(json!({"balance": 500, "refill": {"every": "month", "day": 1}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["balance"], 500);
    assert_eq!(body["refill_amount"], 500);
    assert_eq!(body["refill"], json!({"every": "month", "day": 1}));
    let next = body["next_refill_at"].as_u64().unwrap();
    let now = admin.manager.now().as_unix_secs();
    assert!(next > now && next <= now + 31 * 86_400, "{next}");
    assert_eq!(next % 86_400, 0, "refills happen at 00:00 UTC");

    // Bad input: exact codes.
    for (body, code) in [
        (
            json!({"balance": 5, "refill": {"every": "month"}}),
            "invalid_refill",
        ),
        (
            json!({"balance": 5, "refill": {"every": "month", "day": 29}}),
            "invalid_refill",
        ),
        (
            json!({"balance": 5, "refill": {"every": "day", "day": 3}}),
            "invalid_refill",
        ),
        (json!({"balance": -1}), "invalid_request"),
        (json!({"amount": 5}), "invalid_request"),
    ] {
        let (status, problem) = admin
            .call(
                Method::PUT,
                "/v1/org/credits",
                Some(&ops),
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{body}"
        );
    }

    // A key's own balance: set by the operator on one of its keys, shown in GET.
    let ops_keys = admin.manager.list(&OrgId::from("org_ops")).await.unwrap();
    let (status, body) = admin
        .call(
            Method::PUT,
            &format!("/v1/api-keys/{}/credits", ops_keys[0].id),
            Some(&ops),
            Some(json!({"balance": 40})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["refill"], json!({"every": "never", "day": null}));
    assert_eq!(body["next_refill_at"], Value::Null);
    // Another org's key is not found, even for an operator.
    let (status, body) = admin
        .call(
            Method::PUT,
            &key_path,
            Some(&ops),
            Some(json!({"balance": 1})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("key_not_found"))
    );

    let (status, shown) = admin
        .call(Method::GET, "/v1/org/credits", Some(&ops), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["org"]["balance"], 500);
    assert_eq!(shown["keys"].as_array().unwrap().len(), 1);
    assert_eq!(shown["keys"][0]["key_id"], ops_keys[0].id.as_str());
    assert_eq!(shown["keys"][0]["credits"]["balance"], 40);
    // Both sets are in the operator org's audit log, as the operator key.
    let (_, log) = admin
        .call(Method::GET, "/v1/org/audit?limit=2", Some(&ops), None)
        .await;
    let ops_key = json!({"type": "key", "id": ops_keys[0].id.as_str()});
    assert_eq!(log["data"][0]["action"], "credits_set");
    assert_eq!(log["data"][0]["key_id"], ops_keys[0].id.as_str());
    assert_eq!(log["data"][0]["actor"], ops_key);
    assert_eq!(log["data"][1]["action"], "credits_set");
    assert_eq!(log["data"][1]["key_id"], Value::Null);
    assert_eq!(
        log["data"][1]["detail"],
        json!({"balance": 500, "refill": {"every": "month", "day": 1}})
    );

    // The customer's org still has nothing; spending shows in its balance once set.
    credits
        .set(Account::Org(&org_a), 10, Refill::Daily)
        .await
        .unwrap();
    credits.spend_for(&org_a, &keys[0].id, 3).await.unwrap();
    let (_, shown) = admin
        .call(Method::GET, "/v1/org/credits", Some(&customer), None)
        .await;
    assert_eq!(shown["org"]["balance"], 7);
    assert_eq!(shown["org"]["refill_amount"], 10);
    assert_eq!(shown["keys"], json!([]));
}

#[tokio::test]
async fn credit_routes_without_credits_are_404_credits_not_configured() {
    let admin = Admin::start().await;
    let root = admin.mint("org_a", &[]).await;
    let id = admin.manager.list(&OrgId::from("org_a")).await.unwrap()[0]
        .id
        .clone();
    for (method, path) in [
        (Method::GET, "/v1/org/credits".to_owned()),
        (Method::PUT, "/v1/org/credits".to_owned()),
        (Method::PUT, format!("/v1/api-keys/{id}/credits")),
    ] {
        let (status, body) = admin
            .call(
                method.clone(),
                &path,
                Some(&root),
                Some(json!({"balance": 5})),
            )
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("credits_not_configured")),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn the_audit_log_names_the_calling_key_newest_first_and_per_organization() {
    use tower_api_key::{Actor, Plan};
    let admin = Admin::start().await;
    let root = admin.mint("org_a", &[]).await;
    let other = admin.mint("org_b", &[]).await;
    let org_a = OrgId::from("org_a");
    let root_id = admin.manager.list(&org_a).await.unwrap()[0].id.clone();
    // The bootstrap key was minted by the manager itself, as the system.
    let (status, log) = admin
        .call(Method::GET, "/v1/org/audit", Some(&root), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(log["data"].as_array().unwrap().len(), 1);
    assert_eq!(log["data"][0]["action"], "key_created");
    assert_eq!(
        log["data"][0]["actor"],
        json!({"type": "system", "id": null})
    );

    let (_, created) = admin
        .call(
            Method::POST,
            "/v1/api-keys",
            Some(&root),
            Some(json!({"name": "ci", "scopes": ["browser_sessions:read"]})),
        )
        .await;
    let ci = created["api_key"]["id"].as_str().unwrap().to_owned();
    let (_, rotated) = admin
        .call(
            Method::POST,
            &format!("/v1/api-keys/{ci}/rotate"),
            Some(&root),
            None,
        )
        .await;
    let ci2 = rotated["api_key"]["id"].as_str().unwrap().to_owned();
    let (status, _) = admin
        .call(
            Method::DELETE,
            &format!("/v1/api-keys/{ci2}"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // The admin API has no plan route: a host's billing code changes plans through the
    // manager, acting as whoever it names.
    admin
        .manager
        .as_actor(Actor::Key(root_id.clone()))
        .set_plan(&org_a, Plan::Paid)
        .await
        .unwrap();

    let (status, log) = admin
        .call(Method::GET, "/v1/org/audit?limit=4", Some(&root), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let entries = log["data"].as_array().unwrap();
    let summary: Vec<(&str, Option<&str>)> = entries
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["key_id"].as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("plan_changed", None),
            ("key_revoked", Some(ci2.as_str())),
            ("key_rotated", Some(ci.as_str())),
            ("key_created", Some(ci.as_str())),
        ]
    );
    for e in entries {
        assert_eq!(
            e["actor"],
            json!({"type": "key", "id": root_id.as_str()}),
            "{e}"
        );
    }
    assert_eq!(entries[0]["detail"], json!({"plan": "paid"}));
    assert_eq!(entries[2]["detail"]["new_key_id"], ci2.as_str());
    // Paging: the next page holds the bootstrap key's creation, and nothing follows it.
    assert_eq!(log["has_more"], true);
    let cursor = log["next_cursor"].as_str().unwrap();
    assert_eq!(cursor, entries[3]["id"].as_str().unwrap());
    let (_, next) = admin
        .call(
            Method::GET,
            &format!("/v1/org/audit?limit=4&before={cursor}"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(next["data"].as_array().unwrap().len(), 1);
    assert_eq!(next["data"][0]["key_id"], root_id.as_str());
    assert_eq!(next["has_more"], false);
    assert_eq!(next["next_cursor"], Value::Null);

    // Another organization sees only its own bootstrap entry.
    let (_, theirs) = admin
        .call(Method::GET, "/v1/org/audit", Some(&other), None)
        .await;
    let theirs = theirs["data"].as_array().unwrap();
    assert_eq!(theirs.len(), 1);
    assert_ne!(theirs[0]["key_id"], root_id.as_str());
    let (status, problem) = admin
        .call(Method::GET, "/v1/org/audit?limit=0", Some(&root), None)
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
}
