//! The example server's observability, end to end: the brute-force guard on the real binary,
//! a key's creation and the invalid-key burst delivered signed to a webhook receiver run here,
//! and `GET /metrics` with exact counters that `promtool check metrics` accepts; without a
//! webhook, a revoked key still presented shows on the dashboard's Activity page as an alert.

mod common;
#[path = "common/observability.rs"]
mod observability;
#[path = "common/server.rs"]
mod server;

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use observability::{promtool_check, sample, verify_webhook};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use server::ExampleServer;
use tokio::sync::mpsc;

/// The body of a delivery whose Standard Webhooks signature checks out, else an error.
fn verified(headers: &HeaderMap, body: &[u8]) -> Result<Value, String> {
    verify_webhook(SECRET, headers, body)?;
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

const SECRET: &str = "whsec_dGVzdC1zZWNyZXQtZm9yLXdlYmhvb2tzLTEyMzQ=";

#[tokio::test]
async fn key_changes_and_guessing_reach_the_webhook_and_guessing_is_blocked_and_counted() {
    // The webhook receiver: every verified delivery goes into the channel.
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<Value, String>>();
    let hooks = Router::new()
        .route(
            "/hooks",
            post(
                |State(tx): State<mpsc::UnboundedSender<Result<Value, String>>>,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    let _ = tx.send(verified(&headers, &body));
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let receiver = tokio::spawn(async move { axum::serve(listener, hooks).await });

    let srv = ExampleServer::start(&[
        "--invalid-keys-per-minute",
        "2",
        "--webhook-url",
        &hook_url,
        "--webhook-secret",
        SECRET,
    ]);
    let http = Client::new();
    let seeded: Value = http
        .post(srv.url("/dev/seed"))
        .json(&json!({"scopes": ["org:billing"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = seeded["key"].as_str().expect("seeded key").to_owned();
    let get = |auth: String| http.get(srv.url("/v1/usage")).bearer_auth(auth).send();
    assert_eq!(get(key.clone()).await.unwrap().status(), StatusCode::OK);

    let mut codes = Vec::new();
    let mut retry_after = None;
    for _ in 0..3 {
        let res = get("br_live_nope".to_owned()).await.unwrap();
        let status = res.status().as_u16();
        if status == 429 {
            retry_after = res
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
        }
        let body: Value = res.json().await.unwrap();
        codes.push((status, body["code"].as_str().unwrap().to_owned()));
    }
    assert_eq!(
        codes,
        [
            (401, "invalid_api_key".to_owned()),
            (401, "invalid_api_key".to_owned()),
            (429, "too_many_invalid_keys".to_owned()),
        ]
    );
    assert_eq!(retry_after.as_deref(), Some("30"));
    // The valid key is refused too while its address is blocked.
    assert_eq!(
        get(key).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    let mut next_event = async || {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no webhook delivery within 10 s")
            .expect("receiver channel open")
            .expect("delivery signed with the secret")
    };
    // The seeded key's creation comes first (the audit log's event, done by the system)...
    let created = next_event().await;
    assert_eq!(created["type"], "key_created");
    assert_eq!(created["key_id"], seeded["api_key"]["id"]);
    assert_eq!(created["actor"], json!({"type": "system"}));
    // ...then the block.
    let event = next_event().await;
    assert_eq!(event["type"], "invalid_key_burst");
    assert_eq!(event["org_id"], "_unauthenticated");
    assert_eq!(event["client"], "127.0.0.1");
    assert_eq!(event["attempts"], 3);

    let text = http
        .get(srv.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let auth = |result: &str, reason: &str| {
        sample(
            &text,
            "tower_api_key_auth_decisions_total",
            &format!(r#"result="{result}",reason="{reason}""#),
        )
    };
    assert_eq!(auth("accepted", "none"), 1.0);
    assert_eq!(auth("refused", "malformed"), 2.0);
    assert_eq!(auth("refused", "too_many_invalid_keys"), 2.0);
    assert_eq!(
        sample(
            &text,
            "tower_api_key_rate_limit_decisions_total",
            r#"result="accepted",plan="free""#
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "tower_api_key_events_total", r#"result="emitted""#),
        2.0
    );
    promtool_check(&text);
    receiver.abort();
}

/// The value of the hidden form field `name` in `html`.
fn field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let at = html.find(&marker).expect("no such field") + marker.len();
    html[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_revoked_key_still_presented_shows_as_an_alert_on_the_dashboard_without_a_webhook() {
    // No --webhook-url: the events pipeline runs anyway, for the dashboard.
    let srv = ExampleServer::start(&["--flush-interval-ms", "100"]);
    let http = Client::new();
    let seed = async |scopes: &[&str]| -> Value {
        http.post(srv.url("/dev/seed"))
            .json(&json!({"org_id": "org_alerts", "scopes": scopes}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let admin = seed(&["api_keys:manage"]).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let victim = seed(&["org:billing"]).await;
    let victim_id = victim["api_key"]["id"].as_str().unwrap().to_owned();
    let victim_key = victim["key"].as_str().unwrap().to_owned();
    let revoked = http
        .delete(srv.url(&format!("/v1/api-keys/{victim_id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success(), "{}", revoked.status());
    let refused = http
        .get(srv.url("/v1/usage"))
        .bearer_auth(&victim_key)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    // Sign in to the dashboard with the management key.
    let browser = Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = browser
        .get(srv.url("/dashboard/sign-in"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let signed_in = browser
        .post(srv.url("/dashboard/sign-in"))
        .form(&[("csrf", field(&form, "csrf").as_str()), ("key", &admin)])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);

    // The dead key is reported by the signals' flusher (every 100 ms here): wait for it.
    let row = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let page = browser
                .get(srv.url("/dashboard/activity"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if let Some(at) = page.find("data-kind=\"dead_key_presented\"") {
                let row = &page[at..];
                break row[..row.find("</tr>").unwrap()].to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("no dead_key_presented alert within 10 s");
    assert!(
        row.contains(">Revoked key still in use (once)</td>"),
        "{row}"
    );
    assert!(row.contains(&format!("<code>{victim_id}</code>")), "{row}");
}
