//! The operator CLI, the built `tower-api-key` binary itself, against a temporary SQLite file and
//! the real PostgreSQL, with the example server started on the same store to prove that what the
//! CLI does is what a service sees: migrate, create, the key works, list without the secret,
//! rotate with an overlap (both keys work), revoke (refused), `hash` + `import` (the original key
//! works). And the documented exit code and one-line message of each bad input.
//!
//! ```text
//! cargo test --features cli --test cli
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo test --all-features --test cli
//! ```
//!
//! The PostgreSQL test skips with a printed reason without `DATABASE_URL`, and fails when it is
//! set and the database cannot be used.

mod common;
#[path = "common/server.rs"]
mod server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use server::ExampleServer;

const BIN: &str = env!("CARGO_BIN_EXE_tower-api-key");

/// What one run of the CLI did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run `tower-api-key --store STORE ARGS` with `stdin`, the store variable unset.
fn cli(store: &str, args: &[&str], stdin: &str) -> Run {
    let mut cmd = Command::new(BIN);
    if !store.is_empty() {
        cmd.args(["--store", store]);
    }
    let mut child = cmd
        .args(args)
        .env_remove("TOWER_API_KEY_STORE")
        .env("RUST_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the CLI");
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("wait for the CLI");
    Run {
        code: out.status.code().expect("the CLI exited, not killed"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// Run and require exit 0; returns the run.
#[track_caller]
fn ok(store: &str, args: &[&str], stdin: &str) -> Run {
    let run = cli(store, args, stdin);
    assert_eq!(run.code, 0, "tower-api-key {args:?} failed: {run:?}");
    run
}

/// Run and require exit `code` with exactly one line, `error: …`, on stderr; returns that line.
#[track_caller]
fn fails(store: &str, args: &[&str], code: i32) -> String {
    let run = cli(store, args, "");
    assert_eq!(run.code, code, "tower-api-key {args:?}: {run:?}");
    assert_eq!(run.stdout, "", "nothing on stdout on failure");
    assert!(
        run.stderr.starts_with("error: ")
            && run.stderr.ends_with('\n')
            && run.stderr.lines().count() == 1,
        "one `error: ` line on stderr: {:?}",
        run.stderr
    );
    run.stderr.trim_end().to_owned()
}

/// The secret a `keys create` or `keys rotate` printed: stdout is that key alone on its line.
#[track_caller]
fn secret(run: &Run) -> String {
    let key = run
        .stdout
        .strip_suffix('\n')
        .expect("the key ends its line");
    assert!(!key.contains('\n'), "stdout is the key alone: {run:?}");
    assert!(
        key.starts_with("br_live_") && key.len() == 40,
        "a br_live_ key: {key:?}"
    );
    assert!(
        !run.stderr.contains(key),
        "the secret is not on stderr: {run:?}"
    );
    key.to_owned()
}

/// The status of `GET path` on the server with `Authorization: Bearer key`.
fn status(srv: &ExampleServer, path: &str, key: &str) -> u16 {
    let addr = srv.base.strip_prefix("http://").expect("http base");
    let mut stream = TcpStream::connect(addr).expect("connect to the example server");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// Poll until `GET path` with `key` answers `want`, for at most `limit`.
fn await_status(srv: &ExampleServer, path: &str, key: &str, want: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let got = status(srv, path, key);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} still answers {got}, not {want}, after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A SQLite file path no other test uses, removed (with its WAL files) on drop.
struct TempDb(PathBuf);

impl TempDb {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tower-api-key-cli-{}-{}.db",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let db = Self(std::env::temp_dir().join(name));
        db.remove();
        db
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.0.display())
    }

    fn remove(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The JSON fields of a key, as `keys show --json` and `keys list --json` print them.
const KEY_FIELDS: [&str; 14] = [
    "allowed_networks",
    "created_at",
    "disabled",
    "environment",
    "expires_at",
    "hint",
    "id",
    "last_used_at",
    "metadata",
    "name",
    "revoked_at",
    "rotated_from",
    "scopes",
    "status",
];

/// The whole life of a key through the CLI, the example server on the same store judging it.
///
/// `restart_to_see_revocation`: a server over SQLite caches records (30 s TTL) with nothing to
/// tell it of another process's revocation, so the test starts a fresh server to see it; over
/// PostgreSQL, `LISTEN/NOTIFY` reaches the running server and the test polls it.
fn lifecycle(store: &str, restart_to_see_revocation: bool) {
    let migrated = ok(store, &["migrate"], "");
    assert_eq!(migrated.stdout, "");
    assert!(migrated.stderr.contains("is migrated"), "{migrated:?}");
    ok(store, &["migrate"], ""); // again: nothing to do

    // Create the first management key, as README's "Going to production" says.
    let created = ok(
        store,
        &[
            "keys",
            "create",
            "--org",
            "org_cli",
            "--name",
            "admin",
            "--scope",
            "api_keys:manage",
        ],
        "",
    );
    let key = secret(&created);

    let list = ok(store, &["keys", "list", "--org", "org_cli", "--json"], "");
    let data: Value = serde_json::from_str(&list.stdout).expect("list --json is JSON");
    let keys = data["data"].as_array().expect("data array");
    assert_eq!(keys.len(), 1, "{data}");
    let k = &keys[0];
    let mut fields: Vec<&str> = k
        .as_object()
        .expect("a key is an object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, KEY_FIELDS, "no `access` member: the key is scoped");
    assert_eq!(k["name"], "admin");
    assert_eq!(k["scopes"], serde_json::json!(["api_keys:manage"]));
    assert_eq!(k["environment"], "live");
    assert_eq!(k["status"], "active");
    assert_eq!(k["hint"], format!("br_live_…{}", &key[36..]));
    let id = k["id"].as_str().expect("id").to_owned();
    assert!(created.stderr.contains(&id), "create names the key id");
    assert!(!list.stdout.contains(&key), "never a secret in a listing");

    let table = ok(store, &["keys", "list", "--org", "org_cli"], "");
    let mut lines = table.stdout.lines();
    assert!(
        lines.next().is_some_and(|h| h.starts_with("ID ")),
        "{table:?}"
    );
    let row = lines.next().expect("one row");
    assert!(
        row.starts_with(&id) && row.contains("api_keys:manage") && row.contains("active"),
        "{row:?}"
    );
    assert!(!table.stdout.contains(&key));

    let srv = ExampleServer::start(&["--store", store, "--no-dev-seed"]);
    assert_eq!(
        status(&srv, "/v1/api-keys", &key),
        200,
        "the created key works"
    );

    // Rotate with an overlap: both keys work meanwhile.
    let before = unix_now();
    let rotated = ok(store, &["keys", "rotate", &id, "--overlap", "1h"], "");
    let after = unix_now();
    let new_key = secret(&rotated);
    assert_ne!(new_key, key);
    assert_eq!(status(&srv, "/v1/api-keys", &new_key), 200, "new key works");
    assert_eq!(
        status(&srv, "/v1/api-keys", &key),
        200,
        "old key works during the overlap"
    );
    let old: Value =
        serde_json::from_str(&ok(store, &["keys", "show", &id, "--json"], "").stdout).unwrap();
    assert_eq!(old["status"], "active");
    // The overlap ends one hour after the rotation, by the store's record: the old key is
    // revoked from then on.
    let ends = old["revoked_at"].as_u64().expect("revocation scheduled");
    assert!(
        (before + 3600..=after + 3600).contains(&ends),
        "the overlap ends an hour after the rotation: {ends} not in {}..={}",
        before + 3600,
        after + 3600
    );

    // Revoke the old key now: the server refuses it; the new one still works.
    let revoked = ok(store, &["keys", "revoke", &id], "");
    assert_eq!(revoked.stdout, "");
    let srv = if restart_to_see_revocation {
        drop(srv);
        ExampleServer::start(&["--store", store, "--no-dev-seed"])
    } else {
        srv
    };
    await_status(&srv, "/v1/api-keys", &key, 401, Duration::from_secs(5));
    assert_eq!(status(&srv, "/v1/api-keys", &new_key), 200);
    let old: Value =
        serde_json::from_str(&ok(store, &["keys", "show", &id, "--json"], "").stdout).unwrap();
    assert_eq!(old["status"], "revoked");
    let err = fails(store, &["keys", "rotate", &id], 5);
    assert_eq!(
        err,
        format!(
            "error: the API key {id} is revoked and cannot be rotated, enabled or changed: create a new one with `tower-api-key keys create`"
        )
    );

    // Move a key in by its hash: the original key authenticates.
    let legacy = format!(
        "br_live_{}",
        "L3gacyK3y0123456789abcdefABCDEF".to_owned() + "x"
    );
    let hashed = ok(store, &["hash"], &format!("{legacy}\n"));
    let hash = hashed.stdout.trim_end().to_owned();
    assert_eq!(hash.len(), 64, "{hashed:?}");
    assert!(!hashed.stdout.contains(&legacy) && !hashed.stderr.contains(&legacy));
    let line = format!(
        r#"{{"hash":"{hash}","org":"org_legacy","name":"legacy","scopes":["api_keys:manage"],"created":"2024-01-31T12:00:00Z","expires":null}}"#
    );
    let imported = ok(store, &["import"], &format!("{line}\n"));
    let imported_id = imported.stdout.trim_end().to_owned();
    assert!(imported_id.starts_with("key_"), "{imported:?}");
    assert_eq!(
        status(&srv, "/v1/api-keys", &legacy),
        200,
        "imported key works"
    );
    let shown: Value =
        serde_json::from_str(&ok(store, &["keys", "show", &imported_id, "--json"], "").stdout)
            .unwrap();
    assert_eq!(shown["created_at"], 1_706_702_400);
    assert_eq!(shown["name"], "legacy");
    let again = cli(store, &["import"], &format!("{line}\n"));
    assert_eq!(
        again.code, 5,
        "the same hash twice is a conflict: {again:?}"
    );

    // Plans.
    ok(
        store,
        &[
            "plans",
            "set",
            "--org",
            "org_cli",
            "enterprise",
            "--requests",
            "500",
            "--per",
            "30s",
            "--sessions",
            "7",
        ],
        "",
    );
    let plan: Value = serde_json::from_str(
        &ok(store, &["plans", "show", "--org", "org_cli", "--json"], "").stdout,
    )
    .unwrap();
    assert_eq!(
        plan,
        serde_json::json!({"org_id": "org_cli", "plan": "enterprise", "requests": 500,
            "period_secs": 30, "concurrent_sessions": 7})
    );
}

/// Disable and enable, metadata and allowed networks through the CLI, judged by the example
/// server (which knows each request's peer address, 127.0.0.1) on the same store.
fn policies(store: &str, restart_to_see_changes: bool) {
    let create = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "keys",
            "create",
            "--org",
            "org_policy",
            "--name",
            name,
            "--scope",
            "api_keys:manage",
        ];
        args.extend_from_slice(extra);
        let run = ok(store, &args, "");
        let key = secret(&run);
        let list = ok(
            store,
            &["keys", "list", "--org", "org_policy", "--json"],
            "",
        );
        let data: Value = serde_json::from_str(&list.stdout).unwrap();
        let id = data["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        (key, id)
    };
    let show = |id: &str| -> Value {
        serde_json::from_str(&ok(store, &["keys", "show", id, "--json"], "").stdout).unwrap()
    };
    let (local, local_id) = create(
        "local",
        &[
            "--metadata",
            r#"{"team":"ops"}"#,
            "--allow-cidr",
            "127.0.0.1",
        ],
    );
    let (remote, remote_id) = create("remote", &["--allow-cidr", "203.0.113.0/24"]);
    let shown = show(&local_id);
    assert_eq!(shown["metadata"], serde_json::json!({"team": "ops"}));
    assert_eq!(
        shown["allowed_networks"],
        serde_json::json!(["127.0.0.1/32"])
    );
    assert_eq!(shown["disabled"], false);
    let details = ok(store, &["keys", "show", &local_id], "").stdout;
    assert!(
        details.contains("127.0.0.1/32") && details.contains(r#"{"team":"ops"}"#),
        "{details}"
    );

    let disabled = ok(store, &["keys", "disable", &local_id], "");
    assert!(
        disabled.stderr.contains("disabled the API key"),
        "{disabled:?}"
    );
    assert_eq!(show(&local_id)["status"], "disabled");
    let srv = ExampleServer::start(&["--store", store, "--no-dev-seed"]);
    assert_eq!(
        status(&srv, "/v1/api-keys", &local),
        401,
        "disabled: refused"
    );
    assert_eq!(
        status(&srv, "/v1/api-keys", &remote),
        403,
        "from outside its networks"
    );

    ok(store, &["keys", "enable", &local_id], "");
    ok(
        store,
        &["keys", "update", &remote_id, "--allow-anywhere"],
        "",
    );
    assert_eq!(show(&remote_id)["allowed_networks"], serde_json::json!([]));
    let srv = if restart_to_see_changes {
        drop(srv);
        ExampleServer::start(&["--store", store, "--no-dev-seed"])
    } else {
        srv
    };
    await_status(&srv, "/v1/api-keys", &local, 200, Duration::from_secs(5));
    await_status(&srv, "/v1/api-keys", &remote, 200, Duration::from_secs(5));

    let err = fails(
        store,
        &["keys", "update", &remote_id, "--metadata", "[1]"],
        1,
    );
    assert!(err.contains("--metadata must be a JSON object"), "{err}");
    let many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("k{i}"), Value::from(i))).collect();
    let many = Value::Object(many).to_string();
    let err = fails(
        store,
        &["keys", "update", &remote_id, "--metadata", &many],
        1,
    );
    assert_eq!(err, "error: metadata may hold at most 32 members (got 33)");
    let err = fails(
        store,
        &["keys", "update", &remote_id, "--allow-cidr", "nowhere"],
        1,
    );
    assert!(err.contains("invalid --allow-cidr \"nowhere\""), "{err}");
    ok(store, &["keys", "revoke", &local_id], "");
    fails(store, &["keys", "enable", &local_id], 5);
}

/// Bad input on a migrated store: each has its exit code and its one line.
fn bad_input(store: &str) {
    let err = fails(store, &["keys", "show", "key_doesnotexist"], 2);
    assert_eq!(
        err,
        "error: no API key \"key_doesnotexist\" in this store: check the id with `tower-api-key keys list --org ORG`"
    );
    fails(store, &["keys", "revoke", "key_doesnotexist"], 2);
    fails(store, &["keys", "rotate", "key_doesnotexist"], 2);

    let err = fails(
        store,
        &[
            "keys",
            "create",
            "--org",
            "o",
            "--name",
            "n",
            "--scope",
            "bad scope",
        ],
        1,
    );
    assert_eq!(
        err,
        "error: invalid scope \"bad scope\": use `resource:action` with [A-Za-z0-9_.-] segments, `resource:*`, or `*`"
    );
    let err = fails(
        store,
        &[
            "keys",
            "create",
            "--org",
            "o",
            "--name",
            "n",
            "--expires-in",
            "soon",
        ],
        1,
    );
    assert!(
        err.contains("write durations like 90s, 24h or 30d"),
        "{err}"
    );

    // A secret is never an argument.
    let err = fails(
        store,
        &["hash", "br_live_0123456789abcdef0123456789abcdef"],
        1,
    );
    assert!(err.contains("unexpected argument"), "{err}");
    assert!(err.ends_with("(see `tower-api-key --help`)"), "{err}");
    let err = fails(store, &["keys", "create", "--org", "o"], 1);
    assert!(err.contains("--name <NAME>"), "{err}");
}

#[test]
fn sqlite_lifecycle_against_the_example_server() {
    let db = TempDb::new();
    lifecycle(&db.url(), true);
    policies(&db.url(), true);
    bad_input(&db.url());
}

#[test]
fn sqlite_unmigrated_and_unreachable_stores() {
    // A file that does not exist: not migrated, and not created by asking.
    let db = TempDb::new();
    let err = fails(&db.url(), &["keys", "list", "--org", "o"], 4);
    assert_eq!(
        err,
        format!(
            "error: the key store at {} is not migrated: run `tower-api-key migrate` with the same store first",
            db.url()
        )
    );
    assert!(!db.0.exists(), "asking does not create the database");

    // A database that exists, without the schema.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = tower_api_key::store::SqliteStore::open(&db.0)
            .await
            .unwrap();
        store.pool().close().await;
    });
    assert!(db.0.exists());
    fails(&db.url(), &["keys", "show", "key_x"], 4);
    fails(&db.url(), &["plans", "show", "--org", "o"], 4);
    fails(&db.url(), &["import"], 4);

    // A directory that does not exist: the store cannot be opened.
    let url = "sqlite:///nonexistent-dir-of-tower-api-key/keys.db";
    for args in [&["migrate"][..], &["keys", "list", "--org", "o"]] {
        let err = fails(url, args, 3);
        assert!(
            err.starts_with(&format!("error: cannot use the key store at {url}: "))
                && err.ends_with(
                    "check the URL (--store or TOWER_API_KEY_STORE) and that the database is up"
                ),
            "{err}"
        );
    }

    // No store at all.
    let err = fails("", &["keys", "list", "--org", "o"], 1);
    assert_eq!(
        err,
        "error: no key store given: pass --store URL or set TOWER_API_KEY_STORE"
    );
}

#[test]
fn help_goes_to_stdout_and_hides_the_store_url() {
    let out = Command::new(BIN)
        .args(["keys", "create", "--help"])
        .env("TOWER_API_KEY_STORE", "postgres://app:hunter2@db/prod")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("--expires-in <DURATION>"), "{help}");
    assert!(
        !help.contains("hunter2"),
        "the URL's password stays out of --help"
    );

    // No command: the help on stderr, exit 1.
    let run = cli("", &[], "");
    assert_eq!(run.code, 1);
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("Exit codes:"), "{run:?}");
}

#[test]
fn hash_reads_one_key_from_stdin() {
    let run = ok("", &["hash"], "br_live_abc\n");
    assert_eq!(
        run.stdout,
        format!("{}\n", tower_api_key::KeyHash::of("br_live_abc").to_hex())
    );
    assert_eq!(cli("", &["hash"], "").code, 1);
    assert_eq!(cli("", &["hash"], "two keys\n").code, 1);
}

#[test]
fn store_comes_from_the_environment_too() {
    let db = TempDb::new();
    let out = Command::new(BIN)
        .arg("migrate")
        .env("TOWER_API_KEY_STORE", db.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(db.0.exists());
}

#[test]
fn postgres_unreachable_store() {
    // Nothing listens on port 1.
    let url = "postgres://postgres:hunter2@127.0.0.1:1/test";
    let err = fails(url, &["keys", "list", "--org", "o"], 3);
    assert!(
        err.starts_with(
            "error: cannot use the key store at postgres://postgres:***@127.0.0.1:1/test: "
        ),
        "the password stays out of the message: {err}"
    );
}

#[test]
fn postgres_lifecycle_against_the_example_server() {
    let Some(url) = common::pg::database_url("postgres_lifecycle_against_the_example_server")
    else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let guard = rt.block_on(common::pg::empty_schema(&url));
    let store = common::pg::url_in_schema(&url, guard.schema());

    let err = fails(&store, &["keys", "list", "--org", "o"], 4);
    assert!(
        err.ends_with("is not migrated: run `tower-api-key migrate` with the same store first"),
        "{err}"
    );
    lifecycle(&store, false);
    policies(&store, false);
    bad_input(&store);
}

/// Unix time in whole seconds, as the store's JSON gives times.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `usage`: what the flusher wrote, per bucket and per key, as JSON and as tables; bad times and
/// ranges are usage errors.
#[test]
fn usage_reads_the_metered_buckets() {
    use tower_api_key::store::SqliteStore;
    use tower_api_key::{KeyId, KeyStore, OrgId, Timestamp, UsageCounts, UsageDelta};
    let db = TempDb::new();
    let url = db.url();
    ok(&url, &["migrate"], "");
    let t = 1_800_000_000u64; // an hour's start (2027-01-15 08:00 UTC)
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = SqliteStore::connect(&url).await.unwrap();
        let delta =
            |org: &str, key: &str, secs: u64, accepted: i64, rate_limited: i64| UsageDelta {
                org_id: OrgId::from(org),
                key_id: KeyId::from(key),
                minute: Timestamp::from_unix_secs(secs),
                counts: UsageCounts {
                    accepted,
                    rate_limited,
                    ..Default::default()
                },
            };
        store
            .record_usage(&[
                delta("org_u", "key_1", t, 4, 1),
                delta("org_u", "key_2", t + 60, 6, 0),
                delta("org_other", "key_3", t, 50, 0),
            ])
            .await
            .unwrap();
    });
    let (from, to) = (t.to_string(), (t + 3_600).to_string());
    let args = [
        "usage",
        "--org",
        "org_u",
        "--from",
        &from,
        "--to",
        &to,
        "--granularity",
        "minute",
    ];
    let json: Value =
        serde_json::from_str(&ok(&url, &[&args[..], &["--json"]].concat(), "").stdout).unwrap();
    assert_eq!(json["granularity"], "minute");
    assert_eq!(json["total"]["accepted"], 10);
    assert_eq!(json["total"]["rate_limited"], 1);
    assert_eq!(json["buckets"].as_array().unwrap().len(), 2);
    assert_eq!(json["keys"][0]["key_id"], "key_1");
    assert_eq!(json["keys"][1]["total"]["accepted"], 6);
    let table = ok(&url, &args, "").stdout;
    let total = table.lines().find(|l| l.starts_with("TOTAL")).unwrap();
    assert_eq!(
        total.split_whitespace().collect::<Vec<_>>(),
        ["TOTAL", "10", "1", "0", "0"]
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("key_2") && l.contains(" 6 ")),
        "{table}"
    );
    assert!(
        !table.contains("key_3"),
        "another organization's key: {table}"
    );
    // The same hour as RFC 3339 and by the hour: one bucket.
    let hour = ok(
        &url,
        &[
            "usage",
            "--org",
            "org_u",
            "--from",
            "2027-01-15T08:00:00Z",
            "--to",
            &to,
            "--json",
        ],
        "",
    );
    let hour: Value = serde_json::from_str(&hour.stdout).unwrap();
    assert_eq!(hour["granularity"], "hour");
    assert_eq!(hour["from"], t);
    assert_eq!(hour["buckets"].as_array().unwrap().len(), 1);
    assert_eq!(hour["buckets"][0]["counts"]["accepted"], 10);
    let err = fails(&url, &["usage", "--org", "org_u", "--from", "yesterday"], 1);
    assert!(err.contains("--from"), "{err}");
    let err = fails(
        &url,
        &["usage", "--org", "org_u", "--from", &to, "--to", &from],
        1,
    );
    assert!(err.contains("usage range"), "{err}");
}

/// `credits show` and `credits set`: an organization's and a key's balance in the store's
/// database, refills as flags, a key of another organization not found, bad flags usage errors.
fn credits(store: &str) {
    ok(store, &["migrate"], "");
    let key = secret(&ok(
        store,
        &["keys", "create", "--org", "org_c", "--name", "metered"],
        "",
    ));
    let list: Value =
        serde_json::from_str(&ok(store, &["keys", "list", "--org", "org_c", "--json"], "").stdout)
            .unwrap();
    let id = list["data"][0]["id"].as_str().unwrap().to_owned();
    assert!(!id.is_empty() && !key.is_empty());

    let none: Value = serde_json::from_str(
        &ok(store, &["credits", "show", "--org", "org_c", "--json"], "").stdout,
    )
    .unwrap();
    assert_eq!(none["balance"], Value::Null);

    let set = ok(
        store,
        &[
            "credits",
            "set",
            "--org",
            "org_c",
            "--balance",
            "1000",
            "--refill",
            "1000",
            "--every",
            "month",
            "--day",
            "1",
        ],
        "",
    );
    assert_eq!(set.stdout, "", "set prints nothing on stdout");
    assert!(set.stderr.contains("1000 credits"), "{set:?}");
    let org: Value = serde_json::from_str(
        &ok(store, &["credits", "show", "--org", "org_c", "--json"], "").stdout,
    )
    .unwrap();
    assert_eq!(org["balance"], 1000);
    assert_eq!(org["refill_amount"], 1000);
    assert_eq!(org["refill"]["every"], "month");
    assert_eq!(org["refill"]["day"], 1);
    let next = org["next_refill_at"].as_u64().unwrap();
    assert!(next > unix_now() && next % 86_400 == 0, "{next}");

    ok(
        store,
        &[
            "credits",
            "set",
            "--org",
            "org_c",
            "--key",
            &id,
            "--balance",
            "5",
            "--every",
            "day",
        ],
        "",
    );
    let text = ok(
        store,
        &["credits", "show", "--org", "org_c", "--key", &id],
        "",
    )
    .stdout;
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .split_once(':')
            .unwrap()
            .1
            .trim()
            .to_owned()
    };
    assert_eq!(line("balance"), "5");
    assert_eq!(line("refill"), "to 5 every day at 00:00 UTC");
    assert_eq!(line("key"), id);

    // A key of another organization is not found; bad refills are usage errors.
    let err = fails(
        store,
        &[
            "credits",
            "set",
            "--org",
            "org_other",
            "--key",
            &id,
            "--balance",
            "5",
        ],
        2,
    );
    assert!(err.contains(&id), "{err}");
    let err = fails(
        store,
        &[
            "credits",
            "set",
            "--org",
            "org_c",
            "--balance",
            "5",
            "--every",
            "month",
            "--day",
            "30",
        ],
        1,
    );
    assert!(err.contains("--day 30"), "{err}");
    let err = fails(
        store,
        &[
            "credits",
            "set",
            "--org",
            "org_c",
            "--balance",
            "5",
            "--every",
            "month",
        ],
        1,
    );
    assert!(err.contains("--day"), "{err}");
    let err = fails(
        store,
        &[
            "credits",
            "set",
            "--org",
            "org_c",
            "--balance",
            "5",
            "--refill",
            "9",
            "--every",
            "day",
        ],
        1,
    );
    assert!(err.contains("--refill must equal --balance"), "{err}");
    // The org's balance is unchanged by the refused sets.
    let org: Value = serde_json::from_str(
        &ok(store, &["credits", "show", "--org", "org_c", "--json"], "").stdout,
    )
    .unwrap();
    assert_eq!(org["balance"], 1000);
}

#[test]
fn sqlite_credits_show_and_set() {
    let db = TempDb::new();
    credits(&db.url());
}

#[test]
fn postgres_credits_show_and_set() {
    let Some(url) = common::pg::database_url("postgres_credits_show_and_set") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let guard = rt.block_on(common::pg::empty_schema(&url));
    let store = common::pg::url_in_schema(&url, guard.schema());
    credits(&store);
}

/// `audit`: the CLI's own changes, recorded as the `--actor` user (default `$USER`), newest
/// first, one organization's only.
#[test]
fn audit_shows_a_cli_revocation_with_the_actor_name() {
    let db = TempDb::new();
    let url = db.url();
    ok(&url, &["migrate"], "");
    let key = secret(&ok(
        &url,
        &[
            "--actor", "ann", "keys", "create", "--org", "org_x", "--name", "ci",
        ],
        "",
    ));
    assert!(!key.is_empty());
    ok(
        &url,
        &["keys", "create", "--org", "org_y", "--name", "other"],
        "",
    );
    let list: Value =
        serde_json::from_str(&ok(&url, &["keys", "list", "--org", "org_x", "--json"], "").stdout)
            .unwrap();
    let id = list["data"][0]["id"].as_str().unwrap().to_owned();
    ok(&url, &["keys", "revoke", &id, "--actor", "ops-bob"], "");
    // Without --actor: $USER (the store variable and actor variable unset).
    let out = Command::new(BIN)
        .args(["--store", &url, "keys", "disable", &id])
        .env_remove("TOWER_API_KEY_STORE")
        .env_remove("TOWER_API_KEY_ACTOR")
        .env("USER", "carol")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let json: Value =
        serde_json::from_str(&ok(&url, &["audit", "--org", "org_x", "--json"], "").stdout).unwrap();
    let entries = json["data"].as_array().unwrap();
    let summary: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor"]["type"].as_str().unwrap(),
                e["actor"]["id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("key_disabled", "user", "carol"),
            ("key_revoked", "user", "ops-bob"),
            ("key_created", "user", "ann"),
        ]
    );
    assert!(entries.iter().all(|e| e["key_id"] == id.as_str()));
    let table = ok(&url, &["audit", "--org", "org_x", "--limit", "2"], "").stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two entries: {table}");
    assert!(
        lines[2].contains("user ops-bob") && lines[2].contains("key_revoked"),
        "{table}"
    );
    assert!(lines[2].contains(&id), "{table}");
    assert!(!table.contains(&key), "never a secret: {table}");
    let err = fails(&url, &["audit", "--org", "org_x", "--limit", "0"], 1);
    assert!(err.contains("--limit"), "{err}");
}
