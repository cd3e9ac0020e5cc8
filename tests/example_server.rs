//! The real example binary (`cargo run --example server`), started on a free port and driven over
//! HTTP the way an API platform's customers would.

mod common;
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
        let mut req = self.http.request(method.clone(), self.srv.url(path));
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
        // Every refusal, the library's and the example's own, is an RFC 9457 problem.
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(
                headers.get("content-type").map(|v| v.to_str().unwrap()),
                Some("application/problem+json"),
                "{method} {path}: {status}"
            );
            let problem = common::problem(text.as_bytes());
            assert_eq!(problem["status"], status.as_u16(), "{method} {path}");
        }
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
    assert!(
        seeded["api_key"]["id"]
            .as_str()
            .unwrap()
            .starts_with("key_")
    );
    // The admin API's envelope for a new secret: the same key object as every admin route.
    assert_eq!(
        seeded["api_key"]["scopes"],
        json!(["browser_sessions:create", "browser_sessions:read"])
    );
    assert_eq!(seeded["api_key"]["access"], "scoped");
    assert_eq!(seeded["api_key"]["last_used_at"], Value::Null);

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
    assert_eq!(
        headers["www-authenticate"],
        "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"browser_sessions:delete\""
    );
    assert_eq!(body["code"], "insufficient_scope");
}

#[tokio::test]
async fn every_invalid_key_is_a_401_with_the_documented_message() {
    let api = Api::start(&[]);
    let seeded = api.seed(json!({"expires_in_secs": 1})).await;
    let revoked = api
        .seed(json!({"org_id": "org_rev", "scopes": ["api_keys:manage", "browser_sessions:read"]}))
        .await;
    // Revoke the second key with itself.
    let (status, _, _) = api
        .call(
            "DELETE",
            &format!(
                "/v1/api-keys/{}",
                revoked["api_key"]["id"].as_str().unwrap()
            ),
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
        let (code, challenge) = if k.is_none() {
            ("missing_api_key", "Bearer realm=\"api\"")
        } else {
            (
                "invalid_api_key",
                "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"Invalid or missing API key\"",
            )
        };
        assert_eq!(body["code"], code, "{what}");
        assert_eq!(headers["www-authenticate"], challenge, "{what}");
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
    // Percent-encoded, under any name, and on the routes outside the key stack too.
    let encoded = k.replace('_', "%5F");
    for path in [
        format!("/v1/browsers/x?k={encoded}"),
        "/v1/browsers/x?API%5FKEY=anything".to_owned(),
        format!("/healthz?q={encoded}"),
        "/healthz?access_token=x".to_owned(),
        format!("/dev/seed?note={k}"),
    ] {
        let method = if path.starts_with("/dev") {
            "POST"
        } else {
            "GET"
        };
        let (status, _, body) = api.call(method, &path, None, Some(json!({}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(body["code"], "api_key_in_query", "{path}");
    }
    let (status, _, _) = api.call("GET", "/healthz?token=abc", None, None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "generic parameter names stay allowed"
    );
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
    let v = common::problem(&res.bytes().await.unwrap());
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
    assert_eq!(v["code"], "invalid_request");
    assert_eq!(v["title"], "weight must be one of light, medium, heavy");
    let res = api
        .http
        .post(api.srv.url("/dev/seed"))
        .header("content-type", "application/json")
        .body(r#"{"scopes":["not a scope"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let v = common::problem(&res.bytes().await.unwrap());
    assert_eq!(v["code"], "invalid_request");
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
            Some(json!({"overlap": "1h"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let new_worker = rotated["key"].as_str().unwrap().to_owned();
    let new_id = rotated["api_key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(rotated["api_key"]["name"], "worker");
    assert_eq!(rotated["api_key"]["rotated_from"], worker_id.as_str());
    // The old key works through the hour's overlap, then is refused; revoke it now.
    let (status, _, _) = api
        .call("POST", "/v1/browsers", Some(&worker), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "the overlap keeps the old key");
    let (status, _, _) = api
        .call(
            "DELETE",
            &format!("/v1/api-keys/{worker_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
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

#[tokio::test]
async fn a_free_org_s_101st_request_in_a_minute_is_refused_with_rate_limit_headers() {
    let api = Api::start(&[]);
    let k = key(&api.seed(json!({"org_id": "org_rl", "plan": "free"})).await);
    for i in 1..=100u64 {
        let (status, headers, _) = api.call("GET", "/v1/browsers/none", Some(&k), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "request {i} is admitted");
        assert_eq!(headers["x-ratelimit-limit"], "100");
        let remaining: u64 = headers["x-ratelimit-remaining"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        // One cell spent per request; refill during the loop (one per 600 ms) may add a couple.
        assert!(
            (100 - i..=100 - i + 2).contains(&remaining),
            "request {i}: remaining {remaining}"
        );
        assert!(headers.contains_key("x-ratelimit-reset"));
        // The IETF fields too: the plan's policies, the seed's numbers.
        assert_eq!(
            headers["ratelimit-policy"],
            "\"free\";q=100;w=60, \"sessions\";q=10;qu=\"concurrent-requests\""
        );
        assert!(
            headers["ratelimit"]
                .to_str()
                .unwrap()
                .starts_with("\"free\";r=")
        );
    }
    // Within the same minute the bucket is empty (allowing for a refilled cell or two).
    let mut refused = None;
    for _ in 0..5 {
        let (status, headers, body) = api.call("GET", "/v1/browsers/none", Some(&k), None).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some((headers, body));
            break;
        }
    }
    let (headers, body) = refused.expect("the org is rate limited");
    assert_eq!(headers["x-ratelimit-limit"], "100");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    let reset: u64 = headers["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(reset >= now && reset <= now + 61, "reset {reset} now {now}");
    assert_eq!(body["code"], "rate_limited");

    // Another organization is not affected.
    let other = key(&api.seed(json!({"org_id": "org_rl_other"})).await);
    let (status, _, _) = api
        .call("GET", "/v1/browsers/none", Some(&other), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_11th_concurrent_session_of_a_free_org_is_refused_until_one_ends() {
    let api = Api::start(&["--flush-interval-ms", "50"]);
    let k = key(&api.seed(json!({"org_id": "org_sess"})).await);
    let mut ids = Vec::new();
    for i in 0..10 {
        let path = if i % 2 == 0 {
            "/v1/browsers"
        } else {
            "/v1/sandboxes"
        };
        let (status, _, created) = api.call("POST", path, Some(&k), Some(json!({}))).await;
        assert_eq!(status, StatusCode::CREATED, "session {i}");
        ids.push((path, created["id"].as_str().unwrap().to_owned()));
    }
    let (status, headers, body) = api
        .call("POST", "/v1/browsers", Some(&k), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["code"], "session_limit_exceeded");
    assert_eq!(
        body["title"],
        "Concurrent session limit of 10 reached; end a session first"
    );
    // The first session's 15-minute lease began moments ago (real time: the whole seconds left
    // may already have dropped by one).
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((899..=900).contains(&retry), "retry-after {retry}");

    let (path, id) = &ids[0];
    let (status, _, _) = api
        .call("DELETE", &format!("{path}/{id}"), Some(&k), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = api
        .call("POST", "/v1/browsers", Some(&k), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "the freed slot is reusable");

    // Today's metered requests reach `/v1/usage` once the flusher (every 50 ms) wrote them: 12
    // accepted, and the 11th session refused by the quota.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let usage = loop {
        let (status, _, usage) = api.call("GET", "/v1/usage", Some(&k), None).await;
        assert_eq!(status, StatusCode::OK);
        if usage["requests"].as_i64().unwrap() >= 13 {
            break usage;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "usage never reached 13 requests: {usage}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(usage["open_sessions"], 10);
    assert_eq!(usage["limits"]["concurrent_sessions"], 10);
    assert_eq!(usage["limits"]["requests_per_window"], 100);
    assert_eq!(usage["today"]["total"]["session_quota"], 1, "{usage}");
    assert!(
        usage["today"]["total"]["accepted"].as_i64().unwrap() >= 12,
        "{usage}"
    );
    assert_eq!(usage["today"]["keys"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn sandbox_exec_needs_its_own_scope() {
    let api = Api::start(&[]);
    let k = key(&api
        .seed(json!({"scopes": ["sandbox_sessions:create", "sandbox_sessions:read"]}))
        .await);
    let (_, _, created) = api
        .call("POST", "/v1/sandboxes", Some(&k), Some(json!({})))
        .await;
    let id = created["id"].as_str().unwrap();
    let (status, _, body) = api
        .call(
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            Some(&k),
            Some(json!({"command": "ls"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "insufficient_scope");

    let full = key(&api.seed(json!({"org_id": "org_exec"})).await);
    let (_, _, created) = api
        .call("POST", "/v1/sandboxes", Some(&full), Some(json!({})))
        .await;
    let id = created["id"].as_str().unwrap();
    let (status, _, body) = api
        .call(
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            Some(&full),
            Some(json!({"command": "echo hi"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["stdout"], "echo hi");
    // The SDK's body: `code`.
    let (status, _, body) = api
        .call(
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            Some(&full),
            Some(json!({"code": "print(1)"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["stdout"], "print(1)");
    let (status, _, body) = api.call("GET", "/v1/usage", Some(&k), None).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "usage needs org:billing: {body}"
    );
}

#[tokio::test]
async fn last_used_is_visible_in_the_key_listing() {
    let api = Api::start(&["--flush-interval-ms", "50"]);
    let admin = key(&api
        .seed(json!({"org_id": "org_lu", "scopes": ["api_keys:manage"]}))
        .await);
    let (_, _, listed) = api.call("GET", "/v1/api-keys", Some(&admin), None).await;
    // The listing itself was a use of the key; wait for the flusher to write it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last_used = listed["data"][0]["last_used_at"].clone();
    while last_used.is_null() {
        assert!(
            std::time::Instant::now() < deadline,
            "last_used_at never appeared"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (_, _, listed) = api.call("GET", "/v1/api-keys", Some(&admin), None).await;
        last_used = listed["data"][0]["last_used_at"].clone();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t = last_used.as_u64().unwrap();
    assert!(t <= now && t + 60 >= now, "last_used_at {t}, now {now}");
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn ctrl_c_flushes_last_used_times_before_exit() {
    last_used_survives_a_stop(|srv| srv.interrupt(std::time::Duration::from_secs(20))).await;
}

/// SIGTERM is what systemd and Kubernetes send: it must stop the server as cleanly as Ctrl-C.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sigterm_flushes_last_used_times_before_exit() {
    last_used_survives_a_stop(|srv| srv.terminate(std::time::Duration::from_secs(20))).await;
}

/// Use a key on a SQLite-backed server that never flushes on its own, stop it with `stop`,
/// restart it and read the key's last-used time back.
#[cfg(feature = "sqlite")]
async fn last_used_survives_a_stop(stop: impl FnOnce(ExampleServer) -> std::process::ExitStatus) {
    let dir = tempdir();
    let db = dir.join("keys.db");
    let url = format!("sqlite://{}", db.display());
    // An hour-long flush interval: only the shutdown flush can write the time.
    let api = Api::start(&["--store", &url, "--flush-interval-ms", "3600000"]);
    let k = key(&api
        .seed(json!({"org_id": "org_shutdown", "scopes": ["api_keys:manage", "org:billing"]}))
        .await);
    let (status, _, listed) = api.call("GET", "/v1/api-keys", Some(&k), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(listed["data"][0]["last_used_at"].is_null());
    let Api { srv, .. } = api;
    let exit = stop(srv);
    assert_eq!(exit.code(), Some(0), "{exit:?}");

    let api = Api::start(&["--store", &url]);
    let (status, _, listed) = api.call("GET", "/v1/api-keys", Some(&k), None).await;
    assert_eq!(status, StatusCode::OK, "the key survived the restart");
    assert!(
        listed["data"][0]["last_used_at"].as_u64().is_some(),
        "the use before the stop was flushed: {listed}"
    );
    // So was the usage: the listing before the stop, counted accepted.
    let (status, _, usage) = api.call("GET", "/v1/usage", Some(&k), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(usage["today"]["total"]["accepted"], 1, "{usage}");
    drop(api);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory under the system's temp dir, unique to this process and call.
#[cfg(feature = "sqlite")]
fn tempdir() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tak-example-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A client that sends a request's head and half its body, then nothing: the graceful shutdown
/// waits for it only until the drain deadline, then exits 0 anyway.
#[tokio::test]
async fn a_half_sent_request_does_not_hold_shutdown_past_the_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = Api::start(&["--drain-deadline-ms", "500"]);
    let k = key(&api
        .seed(json!({"org_id": "org_stuck", "scopes": ["browser_sessions:create"]}))
        .await);
    let addr = api.srv.url("").trim_start_matches("http://").to_owned();
    let mut stuck = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // One whole request, then the head and half the body of a second, pipelined: once the
    // first answer arrives, the server has read the second head from the same buffer and its
    // handler is waiting for the rest of the body.
    let requests = format!(
        "GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n\
         POST /v1/browser/sessions HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {k}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"a\":"
    );
    stuck.write_all(requests.as_bytes()).await.unwrap();
    let mut first = Vec::new();
    while !String::from_utf8_lossy(&first).contains(r#"{"status":"ok"}"#) {
        let mut buf = [0u8; 1024];
        let n = stuck.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering /healthz");
        first.extend_from_slice(&buf[..n]);
    }
    let Api { srv, .. } = api;
    let started = std::time::Instant::now();
    let exit = srv.terminate(std::time::Duration::from_secs(10));
    let took = started.elapsed();
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    assert!(
        took < std::time::Duration::from_secs(3),
        "shutdown took {took:?} with a 500 ms drain deadline"
    );
    // The server closed our connection without an answer to the half-sent request.
    let mut rest = Vec::new();
    let _ = stuck.read_to_end(&mut rest).await;
    assert!(
        !String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 2"),
        "the half-sent request was not answered as a success"
    );
}

/// The documented curl call, unchanged but for the host.
#[tokio::test]
async fn the_documented_curl_call_works() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: curl is not installed");
        return;
    }
    let api = Api::start(&[]);
    let k = key(&api.seed(json!({})).await);
    let srv_url = api.srv.url("/v1/browsers");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-X", "POST", &srv_url])
            .args(["-H", &format!("Authorization: Bearer {k}")])
            .args(["-H", "Content-Type: application/json"])
            .args(["-d", "{}"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "201", "{text}");
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["status"], "running");
}

/// The documented TypeScript `fetch` snippet, run by the machine's node.
#[tokio::test]
async fn the_documented_fetch_snippet_works_in_node() {
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: node is not installed");
        return;
    }
    let api = Api::start(&[]);
    let k = key(&api
        .seed(json!({"scopes": ["browser_sessions:create"]}))
        .await);
    let snippet = include_str!("clients/create_browser.mjs")
        .replace("https://api.boxes.banata.dev", &api.srv.base);
    let dir = std::env::temp_dir().join(format!("tak-fetch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("create_browser.mjs");
    std::fs::write(&file, snippet).unwrap();
    let out = tokio::task::spawn_blocking({
        let file = file.clone();
        move || {
            std::process::Command::new("node")
                .arg(&file)
                .env("BANATA_API_KEY", &k)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], 201);
    assert_eq!(v["body"]["weight"], "light");
}
