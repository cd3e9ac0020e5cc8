//! The real example binary (`cargo run --example server`), started on a free port and driven over
//! HTTP the way the seeds' users would.

#[path = "common/server.rs"]
mod server;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use server::ExampleServer;

struct Api {
    srv: ExampleServer,
    http: Client,
}

impl Api {
    fn start(args: &[&str]) -> Self {
        Self {
            srv: ExampleServer::start(args),
            http: Client::new(),
        }
    }

    async fn seed(&self, body: Value) -> Value {
        let res = self
            .http
            .post(self.srv.url("/dev/seed"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        res.json().await.unwrap()
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, self.srv.url(path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, headers, json)
    }
}

fn key(v: &Value) -> String {
    v["key"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn seed_create_and_read_a_browser_session() {
    let api = Api::start(&[]);
    let seeded = api
        .seed(json!({"org_id": "org_story", "scopes": ["browser_sessions:create", "browser_sessions:read"]}))
        .await;
    assert_eq!(seeded["org_id"], "org_story");
    assert_eq!(seeded["plan"], "free");
    assert!(key(&seeded).starts_with("br_live_"));
    assert_eq!(key(&seeded).len(), 40);
    assert!(seeded["key_id"].as_str().unwrap().starts_with("key_"));

    let k = key(&seeded);
    let (status, _, created) = api
        .call(
            "POST",
            "/v1/browsers",
            Some(&k),
            Some(json!({"weight": "light"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["status"], "running");
    let id = created["id"].as_str().unwrap();

    let (status, _, read) = api
        .call("GET", &format!("/v1/browsers/{id}"), Some(&k), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["id"], id);

    // No delete scope.
    let (status, headers, body) = api
        .call("DELETE", &format!("/v1/browsers/{id}"), Some(&k), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );
    assert_eq!(body["code"], "insufficient_scope");
}

#[tokio::test]
async fn every_invalid_key_is_a_401_with_the_seeds_message() {
    let api = Api::start(&[]);
    let seeded = api.seed(json!({"expires_in_secs": 1})).await;
    let revoked = api
        .seed(json!({"org_id": "org_rev", "scopes": ["api_keys:manage", "browser_sessions:read"]}))
        .await;
    // Revoke the second key with itself.
    let (status, _, _) = api
        .call(
            "DELETE",
            &format!("/v1/api-keys/{}", revoked["key_id"].as_str().unwrap()),
            Some(&key(&revoked)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let unknown = "br_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6".to_owned();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("malformed", Some("br_live_short".to_owned())),
        ("unknown", Some(unknown)),
        ("revoked", Some(key(&revoked))),
    ];
    for (what, k) in &cases {
        let (status, headers, body) = api.call("GET", "/v1/browsers/x", k.as_deref(), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(body["title"], "Invalid or missing API key", "{what}");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer realm=")
        );
    }

    // Expired: the seeded key lived one second; wait for the server's clock to pass it.
    let k = key(&seeded);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, _, body) = api.call("GET", "/v1/browsers/x", Some(&k), None).await;
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(body["code"], "invalid_api_key");
            break;
        }
        assert_eq!(status, StatusCode::NOT_FOUND, "valid until it expires");
        assert!(std::time::Instant::now() < deadline, "key never expired");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sessions_are_visible_to_their_own_organization_only() {
    let api = Api::start(&[]);
    let a = key(&api.seed(json!({"org_id": "org_a"})).await);
    let b = key(&api.seed(json!({"org_id": "org_b"})).await);
    let (_, _, created) = api
        .call("POST", "/v1/browsers", Some(&a), Some(json!({})))
        .await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/browsers/{id}");
    let (status, _, body) = api.call("GET", &path, Some(&b), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "not_found");
    let (status, _, _) = api.call("DELETE", &path, Some(&b), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = api.call("GET", &path, Some(&a), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn key_in_the_url_is_refused() {
    let api = Api::start(&[]);
    let k = key(&api.seed(json!({})).await);
    let (status, _, body) = api
        .call("GET", &format!("/v1/browsers/x?api_key={k}"), None, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "api_key_in_query");
}

#[tokio::test]
async fn bad_bodies_get_clear_json_errors() {
    let api = Api::start(&[]);
    let k = key(&api.seed(json!({})).await);
    let res = api
        .http
        .post(api.srv.url("/v1/browsers"))
        .bearer_auth(&k)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["code"], "invalid_request");
    let (status, _, v) = api
        .call(
            "POST",
            "/v1/browsers",
            Some(&k),
            Some(json!({"weight": "gigantic"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["title"].as_str().unwrap().contains("weight"));
    let res = api
        .http
        .post(api.srv.url("/dev/seed"))
        .header("content-type", "application/json")
        .body(r#"{"scopes":["not a scope"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn create_use_rotate_revoke_a_managed_key() {
    let api = Api::start(&[]);
    let admin = key(&api
        .seed(json!({"org_id": "org_m", "scopes": ["api_keys:manage", "browser_sessions:*"]}))
        .await);
    // Escalation is refused.
    let (status, _, body) = api
        .call(
            "POST",
            "/v1/api-keys",
            Some(&admin),
            Some(json!({"name": "bill", "scopes": ["org:billing"]})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "scope_escalation");

    let (status, _, created) = api
        .call(
            "POST",
            "/v1/api-keys",
            Some(&admin),
            Some(json!({"name": "worker", "scopes": ["browser_sessions:create"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let worker = created["key"].as_str().unwrap().to_owned();
    let worker_id = created["api_key"]["id"].as_str().unwrap().to_owned();
    let (status, _, _) = api
        .call("POST", "/v1/browsers", Some(&worker), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, _, rotated) = api
        .call(
            "POST",
            &format!("/v1/api-keys/{worker_id}/rotate"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let new_worker = rotated["key"].as_str().unwrap().to_owned();
    let new_id = rotated["api_key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(rotated["api_key"]["name"], "worker");
    let (status, _, _) = api
        .call("POST", "/v1/browsers", Some(&worker), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = api
        .call("POST", "/v1/browsers", Some(&new_worker), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, _, _) = api
        .call(
            "DELETE",
            &format!("/v1/api-keys/{new_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = api
        .call("POST", "/v1/browsers", Some(&new_worker), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _, listed) = api.call("GET", "/v1/api-keys", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let data = listed["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert!(data.iter().all(|k| k.get("key").is_none()));
    let text = listed.to_string();
    assert!(!text.contains(&worker[8..]) && !text.contains(&new_worker[8..]));
}

#[tokio::test]
async fn healthz_needs_no_key_and_dev_seed_can_be_turned_off() {
    let api = Api::start(&["--no-dev-seed"]);
    let (status, _, body) = api.call("GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    let res = api
        .http
        .post(api.srv.url("/dev/seed"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    // Without the seed route the path is just another API route: a key is required.
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}
