//! ApiKeyAuth: every rule of the request path, each in its own test.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::stores::{Mode, TestStore};
use common::*;
use http::{HeaderMap, HeaderName, Request, Response, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_api_key::{ApiKeyAuth, KeyFormat, KeyFormats, KeyStore, Rejection, Responder};

type EchoFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>,
>;
type Stack = ApiKeyAuth<tower::util::ServiceFn<fn(Request<Full<Bytes>>) -> EchoFuture>, TestStore>;

fn boxed_echo(req: Request<Full<Bytes>>) -> EchoFuture {
    Box::pin(echo_principal(req))
}

/// The stack under test: ApiKeyAuth over a store that counts lookups, on the fixture's clock.
fn stack(fx: &Fixture, mode: Mode) -> (TestStore, Stack) {
    let store = TestStore::new(fx.store.clone(), mode);
    let svc = ServiceBuilder::new()
        .layer(ApiKeyAuth::new(store.clone()).clock(fx.clock.clone()))
        .service(service_fn(boxed_echo as fn(_) -> _));
    (store, svc)
}

fn www(res: &Response<impl Sized>) -> &str {
    res.headers()["www-authenticate"].to_str().unwrap()
}

async fn assert_invalid_401(res: Response<tower_api_key::ResponseBody<Full<Bytes>>>) {
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        www(&res),
        "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"Invalid or missing API key\""
    );
    let v = problem_of(res).await;
    assert_eq!(v["title"], "Invalid or missing API key");
    assert_eq!(v["code"], "invalid_api_key");
}

#[tokio::test]
async fn valid_key_reaches_the_handler_with_its_principal() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    let (store, svc) = stack(&fx, Mode::Pass);
    let res = svc.oneshot(get("/", Some(&bearer(&key)))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        body_string(res).await,
        format!("org_a {} live", key.record.id)
    );
    assert_eq!(store.lookups(), 1);
}

#[tokio::test]
async fn scheme_is_case_insensitive() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    let (_, svc) = stack(&fx, Mode::Pass);
    let auth = format!("bEaReR {}", key.key.expose_secret());
    let res = svc.oneshot(get("/", Some(&auth))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn missing_header_is_401_with_a_bare_challenge() {
    let fx = Fixture::new();
    let (store, svc) = stack(&fx, Mode::Pass);
    let res = svc.oneshot(get("/", None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(www(&res), "Bearer realm=\"api\"");
    let v = problem_of(res).await;
    assert_eq!(v["title"], "Invalid or missing API key");
    assert_eq!(v["code"], "missing_api_key");
    assert_eq!(store.lookups(), 0);
}

#[tokio::test]
async fn wrong_scheme_is_401() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    let (store, svc) = stack(&fx, Mode::Pass);
    let auth = format!("Basic {}", key.key.expose_secret());
    let res = svc.oneshot(get("/", Some(&auth))).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(problem_code(res).await, "missing_api_key");
    assert_eq!(store.lookups(), 0);
}

#[tokio::test]
async fn malformed_key_is_refused_before_any_lookup() {
    let fx = Fixture::new();
    let (store, svc) = stack(&fx, Mode::Pass);
    for bad in [
        "Bearer sk_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6",
        "Bearer br_live_tooshort",
        "Bearer br_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p!",
        "Bearer ",
    ] {
        let res = svc.clone().oneshot(get("/", Some(bad))).await.unwrap();
        assert_invalid_401(res).await;
    }
    assert_eq!(store.lookups(), 0);
}

#[tokio::test]
async fn bad_checksum_is_refused_before_any_lookup() {
    let fx = Fixture::new();
    let format = KeyFormat::live().with_checksum(true);
    let manager = fx.manager.clone().formats(format.clone());
    let key = manager
        .create(&"org_a".into(), tower_api_key::NewKey::new("ck"))
        .await
        .unwrap();
    let store = TestStore::new(fx.store.clone(), Mode::Pass);
    let svc = ServiceBuilder::new()
        .layer(
            ApiKeyAuth::new(store.clone())
                .clock(fx.clock.clone())
                .formats(format),
        )
        .service(service_fn(echo_principal));

    let good = key.key.expose_secret().to_owned();
    let mut typo = good.clone().into_bytes();
    typo[10] = if typo[10] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();

    let res = svc
        .clone()
        .oneshot(get("/", Some(&format!("Bearer {typo}"))))
        .await
        .unwrap();
    assert_invalid_401(res).await;
    assert_eq!(store.lookups(), 0);

    let res = svc
        .oneshot(get("/", Some(&format!("Bearer {good}"))))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(store.lookups(), 1);
}

#[tokio::test]
async fn unknown_key_is_401() {
    let fx = Fixture::new();
    let (store, svc) = stack(&fx, Mode::Pass);
    let res = svc
        .oneshot(get(
            "/",
            Some("Bearer br_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6"),
        ))
        .await
        .unwrap();
    assert_invalid_401(res).await;
    assert_eq!(store.lookups(), 1);
}

#[tokio::test]
async fn revoked_key_is_refused_on_the_next_request() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    let (_, svc) = stack(&fx, Mode::Pass);
    let ok = svc
        .clone()
        .oneshot(get("/", Some(&bearer(&key))))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);

    fx.manager
        .revoke(&"org_a".into(), &key.record.id)
        .await
        .unwrap();
    let res = svc.oneshot(get("/", Some(&bearer(&key)))).await.unwrap();
    assert_invalid_401(res).await;
}

#[tokio::test]
async fn revocation_is_honoured_even_if_the_revoker_s_clock_runs_ahead() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    let (_, svc) = stack(&fx, Mode::Pass);
    // Another replica, one second ahead, revokes "now".
    let ahead = fx.time.now().saturating_add(Duration::from_secs(1));
    fx.store.revoke(&key.record.id, ahead).await.unwrap();
    let res = svc.oneshot(get("/", Some(&bearer(&key)))).await.unwrap();
    assert_invalid_401(res).await;
}

#[tokio::test]
async fn expired_key_is_401() {
    let fx = Fixture::new();
    let key = fx.mint_expiring("org_a", Duration::from_secs(60)).await;
    let (_, svc) = stack(&fx, Mode::Pass);

    fx.time.advance(Duration::from_secs(59));
    let ok = svc
        .clone()
        .oneshot(get("/", Some(&bearer(&key))))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);

    fx.time.advance(Duration::from_secs(1));
    let res = svc.oneshot(get("/", Some(&bearer(&key)))).await.unwrap();
    assert_invalid_401(res).await;
}

#[tokio::test]
async fn key_in_query_string_is_refused_even_with_a_valid_header() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    let (store, svc) = stack(&fx, Mode::Pass);
    for uri in [
        format!("/v1/browsers?api_key={}", key.key.expose_secret()),
        format!("/v1/browsers?x={}", key.key.expose_secret()),
        "/v1/browsers?access_token=whatever".to_owned(),
    ] {
        let res = svc
            .clone()
            .oneshot(get(&uri, Some(&bearer(&key))))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            www(&res),
            "Bearer realm=\"api\", error=\"invalid_request\", error_description=\"Send the API key in the Authorization header\""
        );
        let v = problem_of(res).await;
        assert_eq!(v["code"], "api_key_in_query");
        assert_eq!(
            v["title"],
            "API keys must not be sent in the URL; use the Authorization: Bearer header"
        );
    }
    assert_eq!(store.lookups(), 0);

    // An ordinary query string is fine.
    let res = svc
        .oneshot(get("/v1/browsers?page=2", Some(&bearer(&key))))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// Percent-encode every byte of `s` (`%XX`, capital hex digits).
fn encode_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// Send `uri` with a valid `Authorization` header; assert the request is refused with
/// `400 api_key_in_query` before any lookup, whatever the header.
async fn assert_refused_in_query(fx: &Fixture, key: &tower_api_key::CreatedKey, uri: &str) {
    let (store, svc) = stack(fx, Mode::Pass);
    let res = svc.oneshot(get(uri, Some(&bearer(key)))).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{uri}");
    let v = problem_of(res).await;
    assert_eq!(v["code"], "api_key_in_query", "{uri}");
    assert_eq!(store.lookups(), 0, "{uri}");
}

/// Send `uri` with a valid `Authorization` header; assert it passes the URL check and
/// authenticates.
async fn assert_passes_query_check(fx: &Fixture, key: &tower_api_key::CreatedKey, uri: &str) {
    let (store, svc) = stack(fx, Mode::Pass);
    let res = svc.oneshot(get(uri, Some(&bearer(key)))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{uri}");
    assert_eq!(store.lookups(), 1, "{uri}");
}

#[tokio::test]
async fn percent_encoded_key_in_query_is_refused() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    let secret = key.key.expose_secret();
    let rest = &secret["br_live_".len()..];
    for uri in [
        format!("/v1/browsers?k=br%5Flive%5F{rest}"),
        format!("/v1/browsers?k=br%5flive%5f{rest}"),
        format!("/v1/browsers?k={}", encode_all(secret)),
        format!("/v1/browsers?k=%62r_live_{rest}"),
        format!("/v1/browsers?page=2&k=br%5Flive_{rest}&sort=asc"),
    ] {
        assert_refused_in_query(&fx, &key, &uri).await;
    }
}

#[tokio::test]
async fn key_after_a_plus_or_other_parameters_is_refused() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    let secret = key.key.expose_secret();
    for uri in [
        format!("/v1/browsers?q=my+key+{secret}"),
        format!("/v1/browsers?q=+{secret}+"),
        format!("/v1/browsers?a=1&b=2&c=3&note={secret}"),
        format!("/v1/browsers?note=x{secret}y"),
    ] {
        assert_refused_in_query(&fx, &key, &uri).await;
    }
}

#[tokio::test]
async fn key_as_a_query_parameter_name_is_refused() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    let secret = key.key.expose_secret();
    for uri in [
        format!("/v1/browsers?{secret}"),
        format!("/v1/browsers?{secret}=1"),
        format!("/v1/browsers?page=2&{}=", encode_all(secret)),
    ] {
        assert_refused_in_query(&fx, &key, &uri).await;
    }
}

#[tokio::test]
async fn credential_parameter_names_are_refused_whatever_their_case_encoding_or_value() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    for uri in [
        "/v1/browsers?api%5Fkey=x",
        "/v1/browsers?API_KEY=x",
        "/v1/browsers?ApiKey=",
        "/v1/browsers?ApiKey",
        "/v1/browsers?api-key=1",
        "/v1/browsers?x-api-key=1",
        "/v1/browsers?X%2DApi%2DKey=1",
        "/v1/browsers?access_token=abc",
        "/v1/browsers?page=2&access%5ftoken=abc",
    ] {
        assert_refused_in_query(&fx, &key, uri).await;
    }
}

/// The check decodes once, as the application's query parser does: `%255F` becomes `%5F`, and
/// `br%5Flive%5F…` is not a key to a server that decodes once, so it passes.
#[tokio::test]
async fn double_encoded_key_passes_as_it_is_no_key_after_one_decode() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    let rest = &key.key.expose_secret()["br_live_".len()..];
    let uri = format!("/v1/browsers?k=br%255Flive%255F{rest}");
    assert_passes_query_check(&fx, &key, &uri).await;
}

#[tokio::test]
async fn ordinary_query_strings_pass() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    for uri in [
        "/v1/browsers",
        "/v1/browsers?",
        "/v1/browsers?token=abc",
        "/v1/browsers?key=value",
        "/v1/browsers?q=br_live",
        "/v1/browsers?q=br_live_",
        "/v1/browsers?q=br%5Flive%5Fshort",
        "/v1/browsers?api_keys=1&my_api_key=2",
        "/v1/browsers?page=2&per_page=50",
    ] {
        assert_passes_query_check(&fx, &key, uri).await;
    }
}

#[tokio::test]
async fn invalid_escapes_are_read_literally() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    for uri in [
        "/v1/browsers?q=%zz",
        "/v1/browsers?q=abc%",
        "/v1/browsers?%=%2",
    ] {
        assert_passes_query_check(&fx, &key, uri).await;
    }
    let secret = key.key.expose_secret();
    for uri in [
        format!("/v1/browsers?q=%zz{secret}%"),
        format!("/v1/browsers?q=%{secret}"),
        "/v1/browsers?api_key%=1&api%5Fkey".to_owned(),
    ] {
        assert_refused_in_query(&fx, &key, &uri).await;
    }
}

#[tokio::test]
async fn custom_header_is_accepted_only_when_configured() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    let req = || {
        Request::get("/")
            .header("x-api-key", key.key.expose_secret())
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let (_, plain) = stack(&fx, Mode::Pass);
    let res = plain.oneshot(req()).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let svc = ServiceBuilder::new()
        .layer(
            ApiKeyAuth::new(fx.store.clone())
                .clock(fx.clock.clone())
                .header(HeaderName::from_static("x-api-key")),
        )
        .service(service_fn(echo_principal));
    let res = svc.oneshot(req()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn several_formats_give_the_principal_its_environment() {
    let fx = Fixture::new();
    let formats = KeyFormats::new([KeyFormat::live(), KeyFormat::test()]);
    let manager = fx.manager.clone().formats(formats.clone());
    let test_key = manager
        .create(
            &"org_a".into(),
            tower_api_key::NewKey::new("t").environment("test"),
        )
        .await
        .unwrap();
    assert!(test_key.key.expose_secret().starts_with("br_test_"));
    let svc = ServiceBuilder::new()
        .layer(
            ApiKeyAuth::new(fx.store.clone())
                .clock(fx.clock.clone())
                .formats(formats),
        )
        .service(service_fn(echo_principal));
    let res = svc
        .oneshot(get("/", Some(&bearer(&test_key))))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(body_string(res).await.ends_with(" test"));

    // A service that accepts only live keys refuses it.
    let (_, live_only) = stack(&fx, Mode::Pass);
    let res = live_only
        .oneshot(get("/", Some(&bearer(&test_key))))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(problem_code(res).await, "invalid_api_key");
}

#[tokio::test]
async fn store_failure_is_503_never_401() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    let (_, svc) = stack(&fx, Mode::Fail);
    let res = svc.oneshot(get("/", Some(&bearer(&key)))).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "5");
    assert!(res.headers().get("www-authenticate").is_none());
    assert_eq!(problem_code(res).await, "auth_unavailable");
}

#[tokio::test(start_paused = true)]
async fn slow_store_is_bounded_by_the_timeout() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    let store = TestStore::new(fx.store.clone(), Mode::Hang);
    let svc = ServiceBuilder::new()
        .layer(
            ApiKeyAuth::new(store)
                .clock(fx.clock.clone())
                .store_timeout(Duration::from_millis(250)),
        )
        .service(service_fn(echo_principal));
    let started = tokio::time::Instant::now();
    let res = svc.oneshot(get("/", Some(&bearer(&key)))).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Paused time: the response came exactly when the timeout fired, not before.
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    assert_eq!(problem_code(res).await, "auth_unavailable");
}

#[tokio::test]
async fn a_lookup_that_is_pending_at_first_still_authenticates() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    let (store, svc) = stack(&fx, Mode::Yield);
    let res = svc
        .clone()
        .oneshot(get("/", Some(&bearer(&key))))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(body_string(res).await.starts_with("org_a "));
    let res = svc
        .oneshot(get(
            "/",
            Some("Bearer br_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6"),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(store.lookups(), 2);
}

/// A gRPC call: `POST` with `content-type: application/grpc` (every gRPC call is a `POST`).
fn grpc_get(auth: Option<&str>) -> Request<Full<Bytes>> {
    let mut req = get("/pkg.Svc/Method", auth);
    *req.method_mut() = http::Method::POST;
    req.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    req
}

#[tokio::test]
async fn grpc_requests_get_trailers_only_statuses() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;

    let (_, svc) = stack(&fx, Mode::Pass);
    let res = svc.oneshot(grpc_get(None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()["grpc-status"], "16");
    assert_eq!(res.headers()["grpc-message"], "Invalid or missing API key");

    let (_, down) = stack(&fx, Mode::Fail);
    let res = down.oneshot(grpc_get(Some(&bearer(&key)))).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "14");
}

#[tokio::test]
async fn the_rejection_response_can_be_replaced() {
    let fx = Fixture::new();
    let responder = Responder::new(|r: &Rejection, _: &HeaderMap| {
        let mut res = Response::new(Bytes::from(format!("nope: {}", r.code())));
        *res.status_mut() = r.status();
        res.headers_mut()
            .insert("content-type", "text/plain".parse().unwrap());
        res
    });
    let svc = ServiceBuilder::new()
        .layer(
            ApiKeyAuth::new(fx.store.clone())
                .clock(fx.clock.clone())
                .responder(responder),
        )
        .service(service_fn(echo_principal));
    let res = svc.oneshot(get("/", None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["content-type"], "text/plain");
    assert_eq!(body_string(res).await, "nope: missing_api_key");
}

#[tokio::test]
async fn a_second_authorization_header_is_refused() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &[]).await;
    let (store, svc) = stack(&fx, Mode::Pass);
    let mut req = get("/", Some(&bearer(&key)));
    req.headers_mut()
        .append("authorization", "Bearer other".parse().unwrap());
    let res = svc.oneshot(req).await.unwrap();
    assert_invalid_401(res).await;
    assert_eq!(store.lookups(), 0);
}

#[tokio::test]
async fn secrets_never_appear_in_debug_output() {
    let fx = Fixture::new();
    let key = fx.mint("org_a", &["org:billing"]).await;
    let secret = key.key.expose_secret().to_owned();
    let random = &secret["br_live_".len()..];
    let found = fx
        .store
        .find_by_hash(&key.key.hash())
        .await
        .unwrap()
        .unwrap();
    let principal = tower_api_key::Principal::new(found.record.clone(), found.plan);
    for text in [
        format!("{key:?}"),
        format!("{:?}", key.record),
        format!("{principal:?}"),
        format!("{}", key.key),
        serde_json::to_string(&key.record).unwrap(),
    ] {
        assert!(!text.contains(random), "secret leaked in {text}");
    }
}
