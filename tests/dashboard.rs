//! The dashboard over real HTTP, as a browser without JavaScript uses it: a cookie jar, forms
//! posted as `application/x-www-form-urlencoded`, redirects looked at rather than followed.
#![cfg(feature = "dashboard")]

use std::str::FromStr;

use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use reqwest::{Client, StatusCode};
use tower_api_key::dashboard::{COOKIE_NAME, CurrentUsage, Dashboard};
use tower_api_key::{
    ApiKeyAuth, KeyHash, KeyId, KeyManager, KeyStore, MemoryStore, NewKey, OrgId, Plan, Scopes,
    StoreError,
};
use tower_sessions::SessionStore;
use tower_sessions::session::Id;

const MANAGE: &str = "api_keys:manage";

struct App {
    base: String,
    manager: KeyManager<MemoryStore>,
    sessions: tower_sessions::MemoryStore,
}

/// A page as the test reads it.
struct Page {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    html: String,
}

impl Page {
    async fn of(res: reqwest::Response) -> Self {
        Self {
            status: res.status(),
            headers: res.headers().clone(),
            html: res.text().await.unwrap(),
        }
    }

    fn location(&self) -> &str {
        self.headers[LOCATION].to_str().unwrap()
    }

    /// The value of the form field `name` (a hidden input, say).
    fn field(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let at = self
            .html
            .find(&marker)
            .unwrap_or_else(|| panic!("no field {name} in {}", self.html))
            + marker.len();
        self.html[at..].split('"').next().unwrap().to_owned()
    }

    /// The text of the `data-col` cell of the row of key `id`.
    fn cell(&self, id: &str, col: &str) -> String {
        let row = self.row(id);
        let marker = format!("data-col=\"{col}\">");
        let at = row.find(&marker).unwrap() + marker.len();
        strip_tags(&row[at..row[at..].find("</td>").unwrap() + at])
    }

    fn row(&self, id: &str) -> &str {
        let at = self
            .html
            .find(&format!("data-key-id=\"{id}\""))
            .unwrap_or_else(|| panic!("no row for {id}"));
        let end = self.html[at..].find("</tr>").unwrap() + at;
        &self.html[at..end]
    }
}

fn strip_tags(s: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

impl App {
    async fn start() -> Self {
        Self::start_with(|d| d).await
    }

    async fn start_with(
        configure: impl FnOnce(
            Dashboard<MemoryStore>,
        ) -> Dashboard<MemoryStore, tower_sessions::MemoryStore>,
    ) -> Self {
        let store = MemoryStore::new();
        let manager = KeyManager::new(store.clone());
        let sessions = tower_sessions::MemoryStore::default();
        let dashboard = configure(
            Dashboard::new(manager.clone())
                .secure_cookies(false)
                .session_store(sessions.clone()),
        );
        let api = axum::Router::new()
            .route("/v1/ping", axum::routing::get(|| async { "pong" }))
            .layer(ApiKeyAuth::new(store));
        let app = axum::Router::new()
            .nest("/dashboard", dashboard.router())
            .merge(api);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base,
            manager,
            sessions,
        }
    }

    /// A key of `org` minted directly (as the CLI would), with `scopes`.
    async fn mint(&self, org: &str, scopes: &[&str]) -> (String, String) {
        let created = self
            .manager
            .create(
                &OrgId::from(org),
                NewKey::new("bootstrap").scopes(Scopes::parse(scopes).unwrap()),
            )
            .await
            .unwrap();
        (
            created.key.expose_secret().to_owned(),
            created.record.id.to_string(),
        )
    }

    fn browser(&self) -> Client {
        Client::builder()
            .cookie_store(true)
            .redirect(Policy::none())
            .build()
            .unwrap()
    }

    async fn get(&self, client: &Client, path: &str) -> Page {
        Page::of(
            client
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn post(&self, client: &Client, path: &str, form: &[(&str, &str)]) -> Page {
        Page::of(
            client
                .post(format!("{}{path}", self.base))
                .form(form)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// A browser signed in with a fresh key of `org` holding `scopes`.
    async fn signed_in(&self, org: &str, scopes: &[&str]) -> (Client, String) {
        let (key, id) = self.mint(org, scopes).await;
        let client = self.browser();
        let page = self.sign_in(&client, &key).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        assert_eq!(page.location(), "/dashboard");
        (client, id)
    }

    async fn sign_in(&self, client: &Client, key: &str) -> Page {
        let form = self.get(client, "/dashboard/sign-in").await;
        let csrf = form.field("csrf");
        self.post(
            client,
            "/dashboard/sign-in",
            &[("csrf", &csrf), ("key", key)],
        )
        .await
    }

    /// The create form's CSRF and one-time tokens.
    async fn new_key_form(&self, client: &Client) -> (String, String) {
        let page = self.get(client, "/dashboard/keys/new").await;
        assert_eq!(page.status, StatusCode::OK);
        (page.field("csrf"), page.field("form"))
    }

    async fn keys_named(&self, org: &str, name: &str) -> Vec<tower_api_key::KeyRecord> {
        let all = self.manager.list(&OrgId::from(org)).await.unwrap();
        all.into_iter().filter(|k| k.name() == name).collect()
    }
}

fn new_secret(page: &Page) -> String {
    let marker = "id=\"new-secret\" type=\"text\" readonly value=\"";
    let at = page.html.find(marker).expect("no secret on the page") + marker.len();
    page.html[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_management_key_signs_in_and_sees_the_api_keys_page() {
    let app = App::start().await;
    let (key, _) = app.mint("org_a", &[MANAGE]).await;
    let client = app.browser();
    let signed_in = app.sign_in(&client, &key).await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    let page = app.get(&client, signed_in.location()).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.html.contains("<h1>API Keys</h1>"), "{}", page.html);
    assert!(page.html.contains("Create new key"));
}

#[tokio::test]
async fn a_key_without_api_keys_manage_cannot_sign_in() {
    let app = App::start().await;
    let (key, _) = app.mint("org_a", &["browser_sessions:read"]).await;
    let client = app.browser();
    let page = app.sign_in(&client, &key).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(
        page.html.contains(
            "This API key cannot manage API keys: it lacks the api_keys:manage permission."
        ),
        "{}",
        page.html
    );
    assert!(!page.html.contains(&key), "the key is not echoed back");
    let list = app.get(&client, "/dashboard").await;
    assert_eq!(list.status, StatusCode::SEE_OTHER);
    assert_eq!(list.location(), "/dashboard/sign-in");
}

#[tokio::test]
async fn unknown_revoked_and_malformed_keys_cannot_sign_in() {
    let app = App::start().await;
    let (key, id) = app.mint("org_a", &[MANAGE]).await;
    app.manager
        .revoke(&OrgId::from("org_a"), &KeyId::from(id))
        .await
        .unwrap();
    let client = app.browser();
    let revoked = app.sign_in(&client, &key).await;
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED);
    assert!(
        revoked
            .html
            .contains("This API key is unknown, revoked or expired.")
    );
    let malformed = app.sign_in(&client, "hello").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert!(
        malformed
            .html
            .contains("That is not an API key of this service")
    );
}

#[tokio::test]
async fn pages_redirect_to_sign_in_until_signed_in() {
    let app = App::start().await;
    let client = app.browser();
    for path in [
        "/dashboard",
        "/dashboard/keys/new",
        "/dashboard/usage",
        "/dashboard/keys/key_x/revoke",
        "/dashboard/keys/key_x/rotate",
    ] {
        let page = app.get(&client, path).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(page.location(), "/dashboard/sign-in", "{path}");
    }
    let page = app.post(&client, "/dashboard/keys", &[("name", "x")]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/dashboard/sign-in");
}

#[tokio::test]
async fn the_list_shows_each_key_and_never_for_an_unused_one() {
    let app = App::start().await;
    let (client, id) = app.signed_in("org_a", &[MANAGE, "org:billing"]).await;
    let page = app.get(&client, "/dashboard").await;
    assert_eq!(page.cell(&id, "name"), "bootstrap");
    assert_eq!(page.cell(&id, "permissions"), "api_keys:manageorg:billing");
    assert_eq!(page.cell(&id, "last-used"), "Never");
    assert_eq!(page.cell(&id, "expires"), "Never");
    assert_eq!(page.cell(&id, "status"), "Active");
    assert!(page.cell(&id, "hint").starts_with("br_live_…"));
}

#[tokio::test]
async fn creating_a_key_shows_its_secret_once_and_never_again() {
    let app = App::start().await;
    let (client, _) = app
        .signed_in(
            "org_a",
            &[MANAGE, "browser_sessions:read", "browser_sessions:create"],
        )
        .await;
    let (csrf, form) = app.new_key_form(&client).await;
    let submitted = [
        ("csrf", csrf.as_str()),
        ("form", form.as_str()),
        ("name", "ci-pipeline"),
        ("scope", "browser_sessions:read"),
        ("scope", "browser_sessions:create"),
        ("expiration", "30d"),
    ];
    let page = app.post(&client, "/dashboard/keys", &submitted).await;
    assert_eq!(page.status, StatusCode::CREATED, "{}", page.html);
    assert_eq!(page.headers[CACHE_CONTROL], "no-store");
    assert!(page.html.contains("it is only shown once"));
    assert!(
        page.html.contains("data-copy=\"new-secret\""),
        "a Copy button"
    );
    let secret = new_secret(&page);

    let created = app.keys_named("org_a", "ci-pipeline").await;
    assert_eq!(created.len(), 1);
    let stored = app
        .manager
        .store()
        .find_by_hash(&KeyHash::of(&secret))
        .await
        .unwrap()
        .expect("the secret shown is the key created");
    assert_eq!(stored.record.id, created[0].id);
    assert_eq!(
        stored.record.scopes,
        Scopes::parse(["browser_sessions:create", "browser_sessions:read"]).unwrap()
    );
    let expires = stored.record.expires_at.unwrap();
    assert_eq!(
        expires.as_unix_secs() - stored.record.created_at.as_unix_secs(),
        30 * 86_400
    );

    let list = app.get(&client, "/dashboard").await;
    assert!(!list.html.contains(&secret), "no secret in the list");
    let id = created[0].id.as_str();
    assert_eq!(
        list.cell(id, "permissions"),
        "browser_sessions:createbrowser_sessions:read"
    );
    assert_eq!(list.cell(id, "last-used"), "Never");

    // Reloading the answer resubmits the form: nothing is created and no secret is shown.
    let again = app.post(&client, "/dashboard/keys", &submitted).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.html.contains("This form was already submitted"));
    assert!(!again.html.contains("br_live_"), "no secret at all");
    assert_eq!(app.keys_named("org_a", "ci-pipeline").await.len(), 1);
}

#[tokio::test]
async fn the_session_holds_the_key_id_and_never_the_secret() {
    let app = App::start().await;
    let (key, id) = app.mint("org_a", &[MANAGE]).await;
    let client = app.browser();
    let page = app.sign_in(&client, &key).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    let cookie = page.headers[SET_COOKIE].to_str().unwrap();
    let value = cookie
        .strip_prefix(&format!("{COOKIE_NAME}="))
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    let record = app
        .sessions
        .load(&Id::from_str(value).unwrap())
        .await
        .unwrap()
        .expect("a session after sign-in");
    let stored = serde_json::to_string(&record.data).unwrap();
    assert!(stored.contains(&id), "{stored}");
    assert!(!stored.contains(&key), "{stored}");
    assert!(!stored.contains(&KeyHash::of(&key).to_hex()), "{stored}");
}

#[tokio::test]
async fn forms_without_the_right_csrf_token_are_refused_and_change_nothing() {
    let app = App::start().await;
    let (client, own_id) = app
        .signed_in("org_a", &[MANAGE, "browser_sessions:read"])
        .await;
    let (csrf, form) = app.new_key_form(&client).await;
    let wrong = "0".repeat(64);
    for token in [None, Some(wrong.as_str()), Some("")] {
        let mut fields = vec![
            ("form", form.as_str()),
            ("name", "sneaky"),
            ("scope", "browser_sessions:read"),
            ("expiration", "never"),
        ];
        if let Some(t) = token {
            fields.push(("csrf", t));
        }
        let page = app.post(&client, "/dashboard/keys", &fields).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{token:?}");
        assert!(page.html.contains("security token (CSRF)"), "{}", page.html);

        let mut fields = vec![];
        if let Some(t) = token {
            fields.push(("csrf", t));
        }
        let path = format!("/dashboard/keys/{own_id}/revoke");
        assert_eq!(
            app.post(&client, &path, &fields).await.status,
            StatusCode::FORBIDDEN
        );
        let path = format!("/dashboard/keys/{own_id}/rotate");
        fields.push(("overlap", "now"));
        assert_eq!(
            app.post(&client, &path, &fields).await.status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            app.post(&client, "/dashboard/sign-out", &[]).await.status,
            StatusCode::FORBIDDEN
        );
    }
    assert!(app.keys_named("org_a", "sneaky").await.is_empty());
    let own = app.manager.list(&OrgId::from("org_a")).await.unwrap();
    assert_eq!(own.len(), 1, "no rotation created a key");
    assert_eq!(own[0].revoked_at, None, "not revoked");
    // Still signed in, and the right token still works.
    let page = app
        .post(
            &client,
            "/dashboard/keys",
            &[
                ("csrf", csrf.as_str()),
                ("form", form.as_str()),
                ("name", "fine"),
                ("scope", "browser_sessions:read"),
                ("expiration", "never"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_user_cannot_grant_permissions_their_key_lacks() {
    let app = App::start().await;
    let (client, _) = app
        .signed_in("org_a", &[MANAGE, "browser_sessions:read"])
        .await;
    let form_page = app.get(&client, "/dashboard/keys/new").await;
    assert!(
        form_page
            .html
            .contains("value=\"org:billing\" id=\"scope-org:billing\" disabled"),
        "{}",
        form_page.html
    );
    assert!(
        form_page
            .html
            .contains("value=\"browser_sessions:read\" id=\"scope-browser_sessions:read\">")
    );
    let page = app
        .post(
            &client,
            "/dashboard/keys",
            &[
                ("csrf", &form_page.field("csrf")),
                ("form", &form_page.field("form")),
                ("name", "escalated"),
                ("scope", "browser_sessions:read"),
                ("scope", "org:billing"),
                ("expiration", "never"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(
        page.html.contains(
            "You can only grant permissions that the key you signed in with holds itself."
        ),
        "{}",
        page.html
    );
    assert!(app.keys_named("org_a", "escalated").await.is_empty());

    // Nor rotate a key that holds more than theirs.
    let (_, billing) = app.mint("org_a", &["org:billing"]).await;
    let path = format!("/dashboard/keys/{billing}/rotate");
    let form = app.get(&client, &path).await;
    let page = app
        .post(
            &client,
            &path,
            &[
                ("csrf", &form.field("csrf")),
                ("form", &form.field("form")),
                ("overlap", "now"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.html.contains("Permission denied"));
    let record = app
        .manager
        .get(&OrgId::from("org_a"), &KeyId::from(billing))
        .await
        .unwrap();
    assert_eq!(record.revoked_at, None);
}

#[tokio::test]
async fn a_form_with_no_permission_or_an_unknown_one_is_shown_again_with_the_reason() {
    let app = App::start().await;
    let (client, _) = app.signed_in("org_a", &[]).await;
    for (scopes, reason) in [
        (vec![], "Choose at least one permission."),
        (
            vec!["reports:read"],
            "Unknown permission &quot;reports:read&quot;.",
        ),
    ] {
        let (csrf, form) = app.new_key_form(&client).await;
        let mut fields = vec![
            ("csrf", csrf.as_str()),
            ("form", form.as_str()),
            ("name", "ci"),
            ("expiration", "never"),
        ];
        fields.extend(scopes.iter().map(|s| ("scope", *s)));
        let page = app.post(&client, "/dashboard/keys", &fields).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST);
        assert!(page.html.contains(reason), "{}", page.html);
        assert!(page.html.contains("value=\"ci\""), "the name is kept");
    }
    assert!(app.keys_named("org_a", "ci").await.is_empty());
}

#[tokio::test]
async fn another_organizations_key_is_not_found() {
    let app = App::start().await;
    let (client, _) = app.signed_in("org_a", &[MANAGE]).await;
    let (_, theirs) = app.mint("org_b", &[MANAGE]).await;
    let list = app.get(&client, "/dashboard").await;
    assert!(!list.html.contains(&theirs));
    let csrf = list.field("csrf");
    for path in ["revoke", "rotate"] {
        let page = app
            .get(&client, &format!("/dashboard/keys/{theirs}/{path}"))
            .await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}");
        assert!(page.html.contains("No such API key"));
    }
    let page = app
        .post(
            &client,
            &format!("/dashboard/keys/{theirs}/revoke"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    let rotate_form = app.get(&client, "/dashboard/keys/new").await.field("form");
    let page = app
        .post(
            &client,
            &format!("/dashboard/keys/{theirs}/rotate"),
            &[("csrf", &csrf), ("form", &rotate_form), ("overlap", "now")],
        )
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    let record = app
        .manager
        .get(&OrgId::from("org_b"), &KeyId::from(theirs))
        .await
        .unwrap();
    assert_eq!(record.revoked_at, None);
    assert_eq!(
        app.manager.list(&OrgId::from("org_b")).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn revoking_asks_first_then_the_key_is_refused() {
    let app = App::start().await;
    let (client, _) = app.signed_in("org_a", &[MANAGE]).await;
    let (victim_key, victim) = app.mint("org_a", &["browser_sessions:read"]).await;
    let ping = |key: String| {
        let url = format!("{}/v1/ping", app.base);
        async move {
            Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(ping(victim_key.clone()).await, StatusCode::OK);
    let confirm = app
        .get(&client, &format!("/dashboard/keys/{victim}/revoke"))
        .await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(confirm.html.contains("Revocation is permanent:"));
    let done = app
        .post(
            &client,
            &format!("/dashboard/keys/{victim}/revoke"),
            &[("csrf", &confirm.field("csrf"))],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    assert_eq!(done.location(), "/dashboard");
    assert_eq!(ping(victim_key).await, StatusCode::UNAUTHORIZED);
    let list = app.get(&client, "/dashboard").await;
    assert_eq!(list.cell(&victim, "status"), "Revoked");
    assert!(list.html.contains("Revoked “bootstrap”"), "a notice");
    assert!(
        !list.row(&victim).contains("/revoke"),
        "no actions on a revoked key"
    );
}

#[tokio::test]
async fn disabling_refuses_the_key_until_enabled_and_the_list_shows_its_policy() {
    let app = App::start().await;
    let (client, _) = app.signed_in("org_a", &[MANAGE]).await;
    let meta = serde_json::json!({"customer_id": "cus_<42>"});
    let restricted = app
        .manager
        .create(
            &OrgId::from("org_a"),
            NewKey::new("partner")
                .scopes(Scopes::parse(["browser_sessions:read"]).unwrap())
                .metadata(meta.as_object().unwrap().clone())
                .allowed_networks(["127.0.0.0/8".parse().unwrap()]),
        )
        .await
        .unwrap();
    let ping = |key: String| {
        let url = format!("{}/v1/ping", app.base);
        async move {
            Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // axum::serve inserts no PeerAddr, so a key restricted to networks is refused here (fail
    // closed); the dashboard shows the restriction and the metadata, escaped.
    assert_eq!(
        ping(restricted.key.expose_secret().to_owned()).await,
        StatusCode::FORBIDDEN
    );
    let list = app.get(&client, "/dashboard").await;
    let row = list.row(restricted.record.id.as_str());
    assert!(
        row.contains("Only from") && row.contains("<code>127.0.0.0/8</code>"),
        "{row}"
    );
    assert!(
        row.contains("cus_&lt;42&gt;"),
        "metadata shown, escaped: {row}"
    );
    assert!(row.contains("data-action=\"disable\""), "{row}");

    let (open_key, open) = app.mint("org_a", &["browser_sessions:read"]).await;
    assert_eq!(ping(open_key.clone()).await, StatusCode::OK);
    let csrf = list.field("csrf");
    let done = app
        .post(
            &client,
            &format!("/dashboard/keys/{open}/disable"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    assert_eq!(ping(open_key.clone()).await, StatusCode::UNAUTHORIZED);
    let list = app.get(&client, "/dashboard").await;
    assert_eq!(list.cell(&open, "status"), "Disabled");
    assert!(list.html.contains("Disabled “bootstrap”"), "a notice");
    assert!(list.row(&open).contains("data-action=\"enable\""));
    assert!(
        !list.row(&open).contains("/rotate"),
        "no rotation while disabled"
    );

    // With a wrong CSRF token nothing changes.
    let refused = app
        .post(
            &client,
            &format!("/dashboard/keys/{open}/enable"),
            &[("csrf", "forged")],
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(ping(open_key.clone()).await, StatusCode::UNAUTHORIZED);

    let done = app
        .post(
            &client,
            &format!("/dashboard/keys/{open}/enable"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    assert_eq!(ping(open_key).await, StatusCode::OK);
    assert_eq!(
        app.get(&client, "/dashboard").await.cell(&open, "status"),
        "Active"
    );
}

#[tokio::test]
async fn revoking_the_key_signed_in_with_signs_out() {
    let app = App::start().await;
    let (client, own) = app.signed_in("org_a", &[MANAGE]).await;
    assert_eq!(app.get(&client, "/dashboard").await.status, StatusCode::OK);
    app.manager
        .revoke(&OrgId::from("org_a"), &KeyId::from(own))
        .await
        .unwrap();
    let page = app.get(&client, "/dashboard").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/dashboard/sign-in");
}

#[tokio::test]
async fn rotating_with_an_overlap_shows_the_new_secret_once_and_keeps_the_old_key_working() {
    let app = App::start().await;
    let (client, _) = app
        .signed_in("org_a", &[MANAGE, "browser_sessions:read"])
        .await;
    let (old_key, old) = app.mint("org_a", &["browser_sessions:read"]).await;
    let form = app
        .get(&client, &format!("/dashboard/keys/{old}/rotate"))
        .await;
    assert_eq!(form.status, StatusCode::OK);
    for overlap in ["now", "1h", "24h", "7d"] {
        assert!(
            form.html
                .contains(&format!("name=\"overlap\" value=\"{overlap}\""))
        );
    }
    let fields = [
        ("csrf", form.field("csrf")),
        ("form", form.field("form")),
        ("overlap", "1h".to_owned()),
    ];
    let path = format!("/dashboard/keys/{old}/rotate");
    let page = app
        .post(
            &client,
            &path,
            &fields
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        )
        .await;
    assert_eq!(page.status, StatusCode::CREATED, "{}", page.html);
    assert_eq!(page.headers[CACHE_CONTROL], "no-store");
    let new_key = new_secret(&page);
    assert_ne!(new_key, old_key);

    let ping = |key: &str| {
        let req = Client::new()
            .get(format!("{}/v1/ping", app.base))
            .bearer_auth(key);
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(
        ping(&old_key).await,
        StatusCode::OK,
        "old key inside the overlap"
    );
    assert_eq!(ping(&new_key).await, StatusCode::OK);
    let old_record = app
        .manager
        .get(&OrgId::from("org_a"), &KeyId::from(old.clone()))
        .await
        .unwrap();
    let revoke_at = old_record.revoked_at.unwrap().as_unix_secs();
    assert!(revoke_at > app.manager.now().as_unix_secs() + 3590);

    let list = app.get(&client, "/dashboard").await;
    assert!(!list.html.contains(&new_key));
    assert!(list.cell(&old, "status").starts_with("Active until "));

    // Resubmitting rotates nothing more.
    let again = app
        .post(
            &client,
            &path,
            &fields
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(
        app.manager.list(&OrgId::from("org_a")).await.unwrap().len(),
        3
    );
}

#[tokio::test]
async fn rotating_now_revokes_the_old_key_at_once_and_an_unknown_overlap_is_refused() {
    let app = App::start().await;
    let (client, _) = app
        .signed_in("org_a", &[MANAGE, "browser_sessions:read"])
        .await;
    let (old_key, old) = app.mint("org_a", &["browser_sessions:read"]).await;
    let path = format!("/dashboard/keys/{old}/rotate");
    let form = app.get(&client, &path).await;
    let (csrf, token) = (form.field("csrf"), form.field("form"));
    let bad = app
        .post(
            &client,
            &path,
            &[("csrf", &csrf), ("form", &token), ("overlap", "3w")],
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.html.contains("Choose when the old key stops working"));
    let page = app
        .post(
            &client,
            &path,
            &[("csrf", &csrf), ("form", &token), ("overlap", "now")],
        )
        .await;
    assert_eq!(page.status, StatusCode::CREATED);
    let status = Client::new()
        .get(format!("{}/v1/ping", app.base))
        .bearer_auth(&old_key)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let rotate_again = app.get(&client, &path).await;
    assert_eq!(rotate_again.status, StatusCode::CONFLICT);
    assert!(
        rotate_again
            .html
            .contains("a revoked key cannot be rotated")
    );
}

#[tokio::test]
async fn every_answer_has_a_csp_without_unsafe_inline_and_pages_are_not_cached() {
    let app = App::start().await;
    let (client, _) = app.signed_in("org_a", &[MANAGE]).await;
    let anonymous = app.browser();
    for (client, path) in [
        (&anonymous, "/dashboard/sign-in"),
        (&anonymous, "/dashboard"),
        (&client, "/dashboard"),
        (&client, "/dashboard/keys/new"),
        (&client, "/dashboard/usage"),
        (&client, "/dashboard/keys/key_nope/revoke"),
        (&client, "/dashboard/no-such-page"),
        (&client, "/dashboard/assets/dashboard.css"),
    ] {
        let page = app.get(client, path).await;
        let csp = page.headers[CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(page.headers["x-frame-options"], "DENY", "{path}");
        if !path.contains("/assets/") {
            assert_eq!(page.headers[CACHE_CONTROL], "no-store", "{path}");
        }
    }
}

#[tokio::test]
async fn an_unknown_dashboard_path_is_a_readable_404() {
    let app = App::start().await;
    let page = app.get(&app.browser(), "/dashboard/no-such-page").await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(
        page.html.contains("<h1>Page not found</h1>"),
        "{}",
        page.html
    );
}

#[tokio::test]
async fn assets_are_served_under_the_mount_prefix_and_pages_link_them_there() {
    let app = App::start().await;
    let client = app.browser();
    let page = app.get(&client, "/dashboard/sign-in").await;
    assert!(
        page.html
            .contains("href=\"/dashboard/assets/dashboard.css\"")
    );
    assert!(page.html.contains("src=\"/dashboard/assets/dashboard.js\""));
    assert!(!page.html.contains("<style"), "no inline style");
    assert!(!page.html.contains("<script>"), "no inline script");
    let css = app.get(&client, "/dashboard/assets/dashboard.css").await;
    assert_eq!(css.status, StatusCode::OK);
    assert_eq!(css.headers[CONTENT_TYPE], "text/css; charset=utf-8");
    let js = app.get(&client, "/dashboard/assets/dashboard.js").await;
    assert_eq!(js.headers[CONTENT_TYPE], "text/javascript; charset=utf-8");
    assert!(js.html.contains("navigator.clipboard.writeText"));
}

#[tokio::test]
async fn the_session_cookie_is_http_only_strict_and_secure_when_configured() {
    for (secure, expect_secure) in [(false, false), (true, true)] {
        let app = App::start_with(|d| d.secure_cookies(secure)).await;
        let page = app.get(&app.browser(), "/dashboard/sign-in").await;
        let cookie = page.headers[SET_COOKIE].to_str().unwrap();
        assert!(cookie.starts_with(&format!("{COOKIE_NAME}=")), "{cookie}");
        let attrs: Vec<&str> = cookie.split("; ").skip(1).collect();
        assert!(attrs.contains(&"HttpOnly"), "{cookie}");
        assert!(attrs.contains(&"SameSite=Strict"), "{cookie}");
        assert_eq!(attrs.contains(&"Secure"), expect_secure, "{cookie}");
    }
}

#[tokio::test]
async fn signing_in_changes_the_session_id_and_signing_out_ends_the_session() {
    let app = App::start().await;
    let (key, _) = app.mint("org_a", &[MANAGE]).await;
    let client = app.browser();
    let form = app.get(&client, "/dashboard/sign-in").await;
    let before = form.headers[SET_COOKIE].to_str().unwrap().to_owned();
    let page = app
        .post(
            &client,
            "/dashboard/sign-in",
            &[("csrf", &form.field("csrf")), ("key", &key)],
        )
        .await;
    let after = page.headers[SET_COOKIE].to_str().unwrap();
    assert_ne!(before.split(';').next(), after.split(';').next());

    let list = app.get(&client, "/dashboard").await;
    let out = app
        .post(
            &client,
            "/dashboard/sign-out",
            &[("csrf", &list.field("csrf"))],
        )
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(out.location(), "/dashboard/sign-in");
    let page = app.get(&client, "/dashboard").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_usage_page_shows_the_plan_its_limits_and_the_hosts_current_use() {
    let app = App::start_with(|d| {
        d.usage(|org| async move {
            assert_eq!(org.as_str(), "org_a");
            CurrentUsage {
                requests: Some(42),
                open_sessions: Some(3),
            }
        })
    })
    .await;
    app.manager
        .set_plan(&OrgId::from("org_a"), Plan::Paid)
        .await
        .unwrap();
    let (client, _) = app.signed_in("org_a", &[MANAGE]).await;
    let page = app.get(&client, "/dashboard/usage").await;
    assert_eq!(page.status, StatusCode::OK);
    let dd = |field: &str| {
        let marker = format!("data-field=\"{field}\">");
        let at = page.html.find(&marker).unwrap() + marker.len();
        page.html[at..].split("</dd>").next().unwrap().to_owned()
    };
    assert_eq!(dd("plan"), "paid");
    assert_eq!(dd("requests"), "1000 per minute");
    assert_eq!(dd("sessions"), "100");
    assert_eq!(dd("current-requests"), "42");
    assert_eq!(dd("current-sessions"), "3 of 100");
}

#[tokio::test]
async fn links_follow_whatever_prefix_the_host_nests_at() {
    let manager = KeyManager::new(MemoryStore::new());
    let app = axum::Router::new()
        .nest(
            "/admin/ui",
            Dashboard::new(manager.clone())
                .secure_cookies(false)
                .router(),
        )
        .nest_service(
            "/bare",
            Dashboard::new(manager).secure_cookies(false).router::<()>(),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::builder().redirect(Policy::none()).build().unwrap();
    for prefix in ["/admin/ui", "/bare"] {
        let res = client.get(format!("{base}{prefix}")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            res.headers()[LOCATION],
            format!("{prefix}/sign-in").as_str()
        );
        let page = Page::of(
            client
                .get(format!("{base}{prefix}/sign-in"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert!(
            page.html
                .contains(&format!("href=\"{prefix}/assets/dashboard.css\"")),
            "{}",
            page.html
        );
        assert!(page.html.contains(&format!("action=\"{prefix}/sign-in\"")));
        let css = client
            .get(format!("{base}{prefix}/assets/dashboard.css"))
            .send()
            .await
            .unwrap();
        assert_eq!(css.status(), StatusCode::OK, "{prefix}");
    }
}

/// A `MemoryStore` whose `list` fails while `down` is set, as a database that stops answering.
#[derive(Clone)]
struct FlakyStore {
    inner: MemoryStore,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl KeyStore for FlakyStore {
    type Lookup = <MemoryStore as KeyStore>::Lookup;

    fn find_by_hash(&self, hash: &KeyHash) -> Self::Lookup {
        self.inner.find_by_hash(hash)
    }
    async fn insert(&self, record: tower_api_key::KeyRecord) -> Result<(), StoreError> {
        self.inner.insert(record).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<tower_api_key::KeyRecord>, StoreError> {
        self.inner.get(id).await
    }
    async fn list(&self, org: &OrgId) -> Result<Vec<tower_api_key::KeyRecord>, StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::unavailable(
                "connection refused to 10.1.2.3:5432",
            ));
        }
        self.inner.list(org).await
    }
    async fn revoke(
        &self,
        id: &KeyId,
        at: tower_api_key::Timestamp,
    ) -> Result<Option<tower_api_key::KeyRecord>, StoreError> {
        self.inner.revoke(id, at).await
    }
    async fn update(
        &self,
        id: &KeyId,
        changes: &tower_api_key::KeyChanges,
    ) -> Result<Option<tower_api_key::KeyRecord>, StoreError> {
        self.inner.update(id, changes).await
    }
    async fn touch_last_used(
        &self,
        batch: &[(KeyId, tower_api_key::Timestamp)],
    ) -> Result<(), StoreError> {
        self.inner.touch_last_used(batch).await
    }
    async fn record_usage(&self, batch: &[tower_api_key::UsageDelta]) -> Result<(), StoreError> {
        self.inner.record_usage(batch).await
    }
    async fn usage(
        &self,
        org: &OrgId,
        from: tower_api_key::Timestamp,
        to: tower_api_key::Timestamp,
        granularity: tower_api_key::Granularity,
    ) -> Result<Vec<tower_api_key::UsageRow>, StoreError> {
        self.inner.usage(org, from, to, granularity).await
    }
    async fn prune_usage(
        &self,
        granularity: tower_api_key::Granularity,
        before: tower_api_key::Timestamp,
    ) -> Result<u64, StoreError> {
        self.inner.prune_usage(granularity, before).await
    }
    async fn set_plan(&self, org: &OrgId, plan: Plan) -> Result<(), StoreError> {
        self.inner.set_plan(org, plan).await
    }
    async fn plan(&self, org: &OrgId) -> Result<Plan, StoreError> {
        self.inner.plan(org).await
    }

    async fn claim_expiry_reminders(
        &self,
        now: tower_api_key::Timestamp,
        until: tower_api_key::Timestamp,
        limit: usize,
    ) -> Result<Vec<tower_api_key::KeyRecord>, StoreError> {
        self.inner.claim_expiry_reminders(now, until, limit).await
    }
}

#[tokio::test]
async fn a_store_failure_is_a_readable_503_page_without_its_detail() {
    let store = FlakyStore {
        inner: MemoryStore::new(),
        down: Default::default(),
    };
    let manager = KeyManager::new(store.clone());
    let created = manager
        .create(
            &OrgId::from("org_a"),
            NewKey::new("admin").scopes(Scopes::parse([MANAGE]).unwrap()),
        )
        .await
        .unwrap();
    let app = axum::Router::new().nest(
        "/dashboard",
        Dashboard::new(manager).secure_cookies(false).router(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::builder()
        .cookie_store(true)
        .redirect(Policy::none())
        .build()
        .unwrap();
    let form = Page::of(
        client
            .get(format!("{base}/dashboard/sign-in"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let signed_in = client
        .post(format!("{base}/dashboard/sign-in"))
        .form(&[
            ("csrf", form.field("csrf").as_str()),
            ("key", created.key.expose_secret()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);

    store.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let page = Page::of(
        client
            .get(format!("{base}/dashboard"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        page.html
            .contains("The key store is temporarily unavailable; retry in a moment."),
        "{}",
        page.html
    );
    assert!(
        !page.html.contains("10.1.2.3"),
        "no driver detail on the page"
    );
}

#[tokio::test]
async fn the_usage_page_charts_the_last_day_of_metered_requests() {
    use tower_api_key::{Timestamp, UsageCounts, UsageDelta};
    let app = App::start().await;
    let (client, _) = app.signed_in("org_a", &[MANAGE]).await;
    let now = Timestamp::now().as_unix_secs();
    let delta = |org: &str, key: &str, secs: u64, accepted: i64, scope: i64| UsageDelta {
        org_id: OrgId::from(org),
        key_id: KeyId::from(key),
        minute: Timestamp::from_unix_secs(secs - secs % 60),
        counts: UsageCounts {
            accepted,
            scope,
            ..Default::default()
        },
    };
    app.manager
        .store()
        .record_usage(&[
            delta("org_a", "key_chart_1", now, 30, 2),
            delta("org_a", "key_chart_2", now - 3 * 3_600, 10, 0),
            // Older than the chart's 24 hours, and another organization's: not shown.
            delta("org_a", "key_chart_old", now - 30 * 3_600, 99, 0),
            delta("org_b", "key_chart_b", now, 500, 0),
        ])
        .await
        .unwrap();
    let page = app.get(&client, "/dashboard/usage").await;
    assert_eq!(page.status, StatusCode::OK);
    let field = |name: &str| {
        let marker = format!("data-field=\"{name}\">");
        let at = page.html.find(&marker).unwrap() + marker.len();
        page.html[at..].split('<').next().unwrap().to_owned()
    };
    assert_eq!(field("usage-accepted"), "40");
    assert_eq!(field("usage-refused"), "2");
    // Two hours with requests: two accepted bars, one refused bar, 24 buckets in all.
    assert_eq!(page.html.matches("<rect class=\"accepted\"").count(), 2);
    assert_eq!(page.html.matches("<rect class=\"refused\"").count(), 1);
    assert_eq!(page.html.matches("<g data-bucket=").count(), 24);
    assert!(page.html.contains("data-key=\"key_chart_1\""));
    assert!(page.html.contains("data-key=\"key_chart_2\""));
    assert!(!page.html.contains("key_chart_old"));
    assert!(!page.html.contains("key_chart_b"));
    assert!(!page.html.contains("<script>"), "no inline script");
}

#[tokio::test]
async fn credit_balances_show_on_the_usage_page_and_in_key_rows() {
    use tower_api_key::credits::{Account, Credits, Refill};
    use tower_api_key::{Clock, Timestamp};
    // 2026-03-14 12:00 UTC: a refill on the 15th is next at 2026-03-15 00:00 UTC.
    let (clock, _manual) = Clock::manual(Timestamp::from_unix_secs(1_773_489_600));
    let credits = Credits::new().clock(clock);
    let shown = credits.clone();
    let app = App::start_with(move |d| d.credits(shown)).await;
    let org = OrgId::from("org_a");
    let (client, signed_in_id) = app.signed_in("org_a", &[MANAGE]).await;
    let (_, other_id) = app.mint("org_a", &["browser_sessions:read"]).await;

    // No balance yet: the Usage page says so, and the keys page has no Credits column.
    let dd = |page: &Page, field: &str| {
        let marker = format!("data-field=\"{field}\">");
        let at = page
            .html
            .find(&marker)
            .unwrap_or_else(|| panic!("no {field}"))
            + marker.len();
        strip_tags(page.html[at..].split("</dd>").next().unwrap())
    };
    let page = app.get(&client, "/dashboard/usage").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        dd(&page, "credit-balance").starts_with("No credit balance"),
        "{}",
        page.html
    );
    let keys = app.get(&client, "/dashboard").await;
    assert!(!keys.html.contains("data-col=\"credits\""), "{}", keys.html);

    credits
        .set(Account::Org(&org), 1_000, Refill::Monthly { day: 15 })
        .await
        .unwrap();
    credits
        .spend_for(&org, &KeyId::from(other_id.as_str()), 250)
        .await
        .unwrap();
    let key = KeyId::from(other_id.as_str());
    credits
        .set(
            Account::Key {
                org: &org,
                key: &key,
            },
            40,
            Refill::Daily,
        )
        .await
        .unwrap();

    let page = app.get(&client, "/dashboard/usage").await;
    assert_eq!(dd(&page, "credit-balance"), "750");
    assert_eq!(dd(&page, "credit-refill"), "To 1000 monthly, on day 15");
    assert_eq!(dd(&page, "credit-next-refill"), "2026-03-15 00:00 UTC");

    let keys = app.get(&client, "/dashboard").await;
    assert_eq!(keys.cell(&other_id, "credits"), "40 · refilled to 40 daily");
    assert_eq!(keys.cell(&signed_in_id, "credits"), "Organization's");
}

#[tokio::test]
async fn the_activity_page_shows_a_revocation_by_the_signed_in_user() {
    let app = App::start().await;
    let (client, user_key) = app.signed_in("org_a", &[MANAGE]).await;
    let (_, victim) = app.mint("org_a", &["browser_sessions:read"]).await;
    let (_, elsewhere) = app.mint("org_b", &["browser_sessions:read"]).await;
    app.manager
        .revoke(&OrgId::from("org_b"), &KeyId::from(elsewhere.as_str()))
        .await
        .unwrap();

    let form = app
        .get(&client, &format!("/dashboard/keys/{victim}/revoke"))
        .await;
    let page = app
        .post(
            &client,
            &format!("/dashboard/keys/{victim}/revoke"),
            &[("csrf", &form.field("csrf"))],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);

    let keys = app.get(&client, "/dashboard").await;
    assert!(
        keys.html.contains("href=\"/dashboard/activity\""),
        "the nav links the Activity page"
    );
    let page = app.get(&client, "/dashboard/activity").await;
    assert_eq!(page.status, StatusCode::OK);
    // Newest first: the revocation, then the two keys minted by the system.
    let rows: Vec<&str> = page.html.split("data-audit-id=").skip(1).collect();
    assert_eq!(rows.len(), 3, "{}", page.html);
    let cell = |row: &str, col: &str| {
        let marker = format!("data-col=\"{col}\"");
        let at = row.find(&marker).unwrap();
        let start = row[at..].find('>').unwrap() + at + 1;
        strip_tags(&row[start..start + row[start..].find("</td>").unwrap()])
    };
    assert_eq!(cell(rows[0], "what"), "Revoked key");
    assert_eq!(cell(rows[0], "who"), format!("user {user_key}"));
    assert_eq!(cell(rows[0], "key"), victim);
    assert!(cell(rows[0], "when").ends_with(" UTC"));
    assert_eq!(cell(rows[1], "what"), "Created key");
    assert_eq!(cell(rows[1], "who"), "system");
    assert!(
        !page.html.contains(&elsewhere),
        "another organization's entries stay out"
    );
    assert!(
        !page.html.contains(">Alerts<") && !page.html.contains("data-table=\"alerts\""),
        "without Dashboard::events there is no Alerts section"
    );
}

#[cfg(feature = "events")]
#[tokio::test]
async fn the_activity_page_lists_the_organizations_alerts_newest_first() {
    use std::time::Duration;
    use tower_api_key::events::{Actor, EventKind, Events, RecentEvents};
    use tower_api_key::{Clock, Timestamp};

    let recent = RecentEvents::new(50);
    // 2026-12-05 07:27:31 UTC; the dead key is reported a minute later.
    let (clock, manual) = Clock::manual(Timestamp::from_unix_secs(1_796_455_651));
    let (events, delivery) = Events::builder().sink(recent.clone()).clock(clock).start();
    let org_a = OrgId::from("org_a");
    events.emit(
        &org_a,
        EventKind::UsageThreshold {
            policy: "free".into(),
            unit: "requests",
            percent: 90,
            limit: 1000,
            window_secs: 3600,
        },
    );
    events.emit(
        &OrgId::from("org_b"),
        EventKind::UsageThreshold {
            policy: "policy_of_org_b".into(),
            unit: "requests",
            percent: 80,
            limit: 10,
            window_secs: 60,
        },
    );
    manual.advance(Duration::from_secs(60));
    events.emit(
        &org_a,
        EventKind::DeadKeyPresented {
            key_id: KeyId::from("key_dead"),
            status: "revoked",
            times: 3,
        },
    );
    // A key change: the audit table shows those, not the alerts.
    events.emit(
        &org_a,
        EventKind::KeyCreated {
            key_id: KeyId::from("key_new"),
            actor: Actor::System,
        },
    );
    assert!(delivery.shutdown(Duration::from_secs(5)).await);
    assert_eq!(recent.list(&org_a).len(), 3);

    let app = App::start_with(|d| d.events(recent.clone())).await;
    let (client, _) = app.signed_in("org_a", &[MANAGE]).await;
    let page = app.get(&client, "/dashboard/activity").await;
    assert_eq!(page.status, StatusCode::OK);

    let table = page
        .html
        .split("data-table=\"alerts\"")
        .nth(1)
        .expect("an alerts table");
    let table = &table[..table.find("</table>").unwrap()];
    let rows: Vec<&str> = table.split("<tr data-event-id=").skip(1).collect();
    assert_eq!(rows.len(), 2, "{table}");
    let cell = |row: &str, col: &str| {
        let marker = format!("data-col=\"{col}\">");
        let at = row.find(&marker).unwrap() + marker.len();
        strip_tags(&row[at..at + row[at..].find("</td>").unwrap()])
    };
    assert!(
        rows[0].contains("data-kind=\"dead_key_presented\""),
        "{}",
        rows[0]
    );
    assert_eq!(cell(rows[0], "what"), "Revoked key still in use (3 times)");
    assert_eq!(cell(rows[0], "key"), "key_dead");
    assert_eq!(cell(rows[0], "when"), "2026-12-05 07:28 UTC");
    assert!(
        rows[1].contains("data-kind=\"usage_threshold\""),
        "{}",
        rows[1]
    );
    assert_eq!(
        cell(rows[1], "what"),
        "Usage reached 90 % of requests (policy free)"
    );
    assert_eq!(cell(rows[1], "key"), "—");
    assert_eq!(cell(rows[1], "when"), "2026-12-05 07:27 UTC");
    assert!(
        !page.html.contains("policy_of_org_b"),
        "another organization's alerts stay out"
    );
    assert!(
        page.html.find("data-table=\"alerts\"") < page.html.find("data-table=\"activity\""),
        "the alerts come above the audit table"
    );
}
