//! The example server with `--redis`: replicas (separate processes) share one request limit and
//! one concurrent-session count, and `--redis-fail` decides what happens when Redis dies.
//!
//! Needs `REDIS_URL` (skipped with a message when unset, failing when set and unreachable) and
//! `redis-server` on PATH for the outage test, which kills a private instance.
#![cfg(all(feature = "redis", feature = "sqlite"))]

#[path = "common/child_redis.rs"]
mod child_redis;
#[path = "common/server.rs"]
mod server;

use std::time::{SystemTime, UNIX_EPOCH};

use child_redis::ChildRedis;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use server::ExampleServer;

fn redis_url(test: &str) -> Option<String> {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipping {test}: REDIS_URL is not set");
            None
        }
    }
}

/// An organization id no earlier run left state under in the shared Redis.
fn unique_org(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("org_{test}_{}_{nanos}", std::process::id())
}

/// A fresh SQLite file both replicas open: the keys they share.
fn shared_sqlite(test: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("tak-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("keys.db").display());
    (dir, url)
}

async fn seed(http: &Client, srv: &ExampleServer, body: Value) -> String {
    let res = http
        .post(srv.url("/dev/seed"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    created["key"].as_str().unwrap().to_owned()
}

/// Status and problem `code` (if any) of a request with `key`.
async fn call(
    http: &Client,
    srv: &ExampleServer,
    method: reqwest::Method,
    path: &str,
    key: &str,
) -> (StatusCode, Option<String>) {
    let mut req = http.request(method.clone(), srv.url(path)).bearer_auth(key);
    if method == reqwest::Method::POST {
        req = req.json(&json!({}));
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (status, body["code"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn two_replicas_on_one_redis_admit_the_org_limit_once_not_twice() {
    let Some(redis) = redis_url("two_replicas_share_the_limit") else {
        return;
    };
    let (dir, store) = shared_sqlite("shared-limit");
    let args = ["--store", &store, "--redis", &redis];
    let a = ExampleServer::start(&args);
    let b = ExampleServer::start(&args);
    let http = Client::new();
    let org = unique_org("limit");
    let key = seed(&http, &a, json!({"org_id": org, "plan": "free"})).await;

    // The free plan: 100 requests a minute, one cell back every 600 ms. Alternate replicas
    // until the first refusal: one shared bucket admits 100 (plus the cells refilled meanwhile);
    // two separate buckets would admit 200.
    let mut admitted = 0;
    let refused = loop {
        let srv = if admitted % 2 == 0 { &a } else { &b };
        match call(&http, srv, reqwest::Method::GET, "/v1/browsers/none", &key).await {
            (StatusCode::NOT_FOUND, _) => admitted += 1,
            other => break other,
        }
        assert!(
            admitted <= 110,
            "{admitted} admitted: the limit is not shared"
        );
    };
    assert_eq!(
        refused,
        (
            StatusCode::TOO_MANY_REQUESTS,
            Some("rate_limited".to_owned())
        )
    );
    assert!(
        (100..=103).contains(&admitted),
        "{admitted} admitted across the two"
    );
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn two_replicas_on_one_redis_share_the_concurrent_session_limit() {
    let Some(redis) = redis_url("two_replicas_share_sessions") else {
        return;
    };
    let (dir, store) = shared_sqlite("shared-sessions");
    let args = ["--store", &store, "--redis", &redis];
    let a = ExampleServer::start(&args);
    let b = ExampleServer::start(&args);
    let http = Client::new();
    let key = seed(&http, &a, json!({"org_id": unique_org("sessions")})).await;
    for i in 0..10 {
        let srv = if i % 2 == 0 { &a } else { &b };
        let (status, code) = call(&http, srv, reqwest::Method::POST, "/v1/browsers", &key).await;
        assert_eq!(status, StatusCode::CREATED, "session {i}: {code:?}");
    }
    // The free plan's 10 sessions are open, five on each replica: the 11th is refused on both.
    for srv in [&a, &b] {
        let refused = call(&http, srv, reqwest::Method::POST, "/v1/browsers", &key).await;
        assert_eq!(
            refused,
            (
                StatusCode::TOO_MANY_REQUESTS,
                Some("session_limit_exceeded".to_owned())
            )
        );
    }
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Redis dies under a running server: `--redis-fail open` keeps serving (each replica limits on
/// its own), `--redis-fail closed` answers 503 with `Retry-After` until Redis is back.
#[tokio::test]
async fn when_redis_dies_fail_open_serves_and_fail_closed_answers_503() {
    if redis_url("when_redis_dies").is_none() {
        return;
    }
    let mut redis = ChildRedis::start();
    let url = redis.url();
    let open = ExampleServer::start(&["--redis", &url, "--redis-fail", "open"]);
    let closed = ExampleServer::start(&["--redis", &url, "--redis-fail", "closed"]);
    let http = Client::new();
    let open_key = seed(&http, &open, json!({"org_id": unique_org("open")})).await;
    let closed_key = seed(&http, &closed, json!({"org_id": unique_org("closed")})).await;
    let get = reqwest::Method::GET;
    for (srv, key) in [(&open, &open_key), (&closed, &closed_key)] {
        let (status, _) = call(&http, srv, get.clone(), "/v1/browsers/none", key).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "admitted while Redis is up");
    }

    redis.kill();
    let (status, _) = call(&http, &open, get.clone(), "/v1/browsers/none", &open_key).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "fail open: still admitted");
    let (status, _) = call(
        &http,
        &open,
        reqwest::Method::POST,
        "/v1/browsers",
        &open_key,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "fail open: sessions counted locally"
    );

    let res = http
        .get(closed.url("/v1/browsers/none"))
        .bearer_auth(&closed_key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "fail closed");
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "retry-after {retry}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "auth_unavailable");
}
