//! `tower-api-key`: the operator CLI. Bootstrap the first admin key and manage keys and plans
//! from a shell, against the real SQLite or PostgreSQL store.
//!
//! ```sh
//! cargo install --path . --features cli
//! export TOWER_API_KEY_STORE=postgres://app@db/prod     # or --store URL; or sqlite://keys.db
//! tower-api-key migrate
//! KEY=$(tower-api-key keys create --org org_acme --name admin --scope api_keys:manage)
//! ```
//!
//! Secrets only ever leave on stdout, alone on their line (`keys create`, `keys rotate`), and
//! only ever come in on stdin (`hash`); everything else is written to stderr. Exit codes: see
//! [`EXIT_CODES`].

use std::io::{self, BufRead, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use serde_json::{Value, json};
use tower_api_key::store::{PostgresStore, SqliteStore};
use tower_api_key::{
    BoxedStore, Clock, KeyFormat, KeyHash, KeyId, KeyManager, KeyRecord, KeyStatus, KeyStore,
    ManageError, NewKey, OrgId, Plan, Quota, Rotation, Scopes, StoreError, Timestamp,
};

/// The exit codes, as `--help` shows them.
const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  usage: bad arguments or input (a bad scope, duration, name, JSON line, ...)
  2  not found: no such API key
  3  store unreachable: cannot open or query the store
  4  store not migrated: run `tower-api-key migrate` first
  5  conflict: the key is revoked, or an imported key already exists
  6  internal error";

const USAGE: u8 = 1;
const NOT_FOUND: u8 = 2;
const UNREACHABLE: u8 = 3;
const NOT_MIGRATED: u8 = 4;
const CONFLICT: u8 = 5;
const INTERNAL: u8 = 6;

/// Operate a tower-api-key store: migrate it, create, list, rotate and revoke keys, set plans,
/// hash and import keys. Secrets are read on stdin only and printed on stdout only.
#[derive(Parser)]
#[command(name = "tower-api-key", version, after_help = EXIT_CODES)]
struct Cli {
    /// The key store: sqlite://FILE or postgres://USER@HOST:PORT/DB (a PostgreSQL schema other
    /// than the default: `?options[search_path]=SCHEMA`).
    // The value stays out of `--help`: the URL may hold a password.
    #[arg(
        long,
        env = "TOWER_API_KEY_STORE",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    store: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or upgrade the store's schema with the migrations shipped in this version; safe to
    /// run at every deploy.
    Migrate,
    /// Create, list, show, rotate and revoke API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Set and show organizations' plans.
    #[command(subcommand)]
    Plans(PlansCommand),
    /// Read one key on stdin and print the form it is stored under (hex SHA-256), for `import`.
    Hash,
    /// Import existing keys by their hashes, without re-keying anyone: JSON lines on stdin, each
    /// `{"hash": HEX, "org": ORG, "name": NAME, "scopes": [..], "created": T, "expires": T}`
    /// (`scopes`, `created`, `expires` optional; times as unix seconds or RFC 3339; optional
    /// `environment` (default `live`), `hint`, `id`). Prints the new key ids, one a line.
    Import,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; prints its secret, once, alone on stdout.
    Create(CreateArgs),
    /// An organization's keys, newest first (never a secret).
    List {
        /// The organization.
        #[arg(long)]
        org: String,
        /// JSON for scripts (`{"data": [KEY, ..]}`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One key (never its secret).
    Show {
        /// The key id (`key_…`).
        id: String,
        /// JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key now: the next request with it is refused. Permanent.
    Revoke {
        /// The key id (`key_…`).
        id: String,
    },
    /// Replace a key by a new one with the same name, scopes and expiry; prints the new secret,
    /// once, alone on stdout.
    Rotate {
        /// The key id (`key_…`).
        id: String,
        /// Keep the old key working this long (e.g. `24h`); default: revoke it now.
        #[arg(long, value_name = "DURATION")]
        overlap: Option<String>,
    },
}

#[derive(Args)]
struct CreateArgs {
    /// The organization the key acts for.
    #[arg(long)]
    org: String,
    /// A label, e.g. `ci-pipeline` (1 to 128 characters).
    #[arg(long)]
    name: String,
    /// A permission, e.g. `api_keys:manage`; repeat for more. None: full access.
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// Expire this long after creation, e.g. `30d`, `24h`, `90s`. Default: never.
    #[arg(long, value_name = "DURATION")]
    expires_in: Option<String>,
    /// The key prefix (default `br_live_`; `br_test_` for test keys).
    #[arg(long, default_value = "br_live_")]
    prefix: String,
    /// The key's environment label; default: the prefix's last part (`br_test_` → `test`).
    #[arg(long)]
    environment: Option<String>,
}

#[derive(Subcommand)]
enum PlansCommand {
    /// Put an organization on a plan; applies on its next request.
    Set {
        /// The organization.
        #[arg(long)]
        org: String,
        /// The plan.
        plan: PlanName,
        /// Enterprise only: requests allowed per period.
        #[arg(long)]
        requests: Option<u32>,
        /// Enterprise only: the period of `--requests` (default 60s).
        #[arg(long, value_name = "DURATION")]
        per: Option<String>,
        /// Enterprise only: concurrent sessions allowed.
        #[arg(long)]
        sessions: Option<u32>,
    },
    /// An organization's plan and quota.
    Show {
        /// The organization.
        #[arg(long)]
        org: String,
        /// JSON for scripts instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum PlanName {
    Free,
    Paid,
    Enterprise,
}

/// A failure: the exit code and the one line that says what to do.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }
}

type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_failure(&e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return report(&Failure::new(
                INTERNAL,
                format!("cannot start the async runtime: {e}"),
            ));
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => report(&f),
    }
}

fn report(f: &Failure) -> ExitCode {
    // One line, whatever a driver put in its message.
    let line = f.message.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("error: {line}");
    ExitCode::from(f.code)
}

/// `--help` and `--version` go to stdout with 0; a usage error is one line on stderr with 1.
fn clap_failure(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        // No command given: the help, on stderr, is the useful answer.
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(USAGE)
        }
        _ => {
            // clap's message without its usage block, on one line.
            let rendered = e.to_string();
            let message = rendered
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            report(&Failure::usage(format!(
                "{message} (see `tower-api-key --help`)"
            )))
        }
    }
}

async fn run(cli: Cli) -> Outcome {
    match cli.command {
        Command::Hash => hash(),
        Command::Migrate => {
            let url = store_url(cli.store)?;
            let store = Store::open(&url, true).await?;
            store.migrate().await.map_err(|e| unreachable(&url, &e))?;
            eprintln!("the key store at {} is migrated", redact(&url));
            Ok(())
        }
        Command::Keys(cmd) => {
            let store = migrated_store(cli.store).await?;
            keys(cmd, store).await
        }
        Command::Plans(cmd) => {
            let store = migrated_store(cli.store).await?;
            plans(cmd, store).await
        }
        Command::Import => {
            let store = migrated_store(cli.store).await?;
            import(store).await
        }
    }
}

fn store_url(store: Option<String>) -> Result<String, Failure> {
    store.filter(|s| !s.is_empty()).ok_or_else(|| {
        Failure::usage("no key store given: pass --store URL or set TOWER_API_KEY_STORE")
    })
}

async fn migrated_store(store: Option<String>) -> Result<BoxedStore, Failure> {
    let url = store_url(store)?;
    let store = Store::open(&url, false).await?;
    if !store
        .is_migrated()
        .await
        .map_err(|e| unreachable(&url, &e))?
    {
        return Err(not_migrated(&url));
    }
    Ok(store.boxed())
}

fn not_migrated(url: &str) -> Failure {
    Failure::new(
        NOT_MIGRATED,
        format!(
            "the key store at {} is not migrated: run `tower-api-key migrate` with the same store first",
            redact(url)
        ),
    )
}

fn unreachable(url: &str, e: &StoreError) -> Failure {
    Failure::new(
        UNREACHABLE,
        format!(
            "cannot use the key store at {}: {e}; check the URL (--store or TOWER_API_KEY_STORE) and that the database is up",
            redact(url)
        ),
    )
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

/// The stores the CLI works on, opened without migrating them.
enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Store {
    /// Open the store at `url`. Unless `create`, a SQLite file that does not exist is not
    /// created: it is reported as not migrated.
    async fn open(url: &str, create: bool) -> Result<Self, Failure> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => {
                if !create {
                    if let Some(path) = sqlite_file(url) {
                        let parent_exists = path
                            .parent()
                            .is_none_or(|p| p.as_os_str().is_empty() || p.is_dir());
                        if !path.exists() && parent_exists {
                            return Err(not_migrated(url));
                        }
                    }
                }
                SqliteStore::connect(url)
                    .await
                    .map(Store::Sqlite)
                    .map_err(|e| unreachable(url, &e))
            }
            "postgres" | "postgresql" => PostgresStore::builder(url)
                .max_connections(2)
                .connect()
                .await
                .map(Store::Postgres)
                .map_err(|e| unreachable(url, &e)),
            _ => Err(Failure::usage(format!(
                "unsupported key store URL scheme {scheme:?}: use sqlite://FILE or postgres://USER@HOST/DB"
            ))),
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.migrate().await,
            Store::Postgres(s) => s.migrate().await,
        }
    }

    async fn is_migrated(&self) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.is_migrated().await,
            Store::Postgres(s) => s.is_migrated().await,
        }
    }

    fn boxed(self) -> BoxedStore {
        match self {
            Store::Sqlite(s) => BoxedStore::new(s),
            Store::Postgres(s) => BoxedStore::new(s),
        }
    }
}

/// The file of a `sqlite://FILE` or `sqlite:FILE` URL; `None` for in-memory databases.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}

fn parse_duration(flag: &str, value: &str) -> Result<Duration, Failure> {
    humantime::parse_duration(value).map_err(|e| {
        Failure::usage(format!(
            "invalid {flag} {value:?}: {e}; write durations like 90s, 24h or 30d"
        ))
    })
}

fn manage_failure(e: ManageError, id: Option<&str>) -> Failure {
    match e {
        ManageError::NotFound => not_found(id.unwrap_or_default()),
        ManageError::Revoked => Failure::new(
            CONFLICT,
            format!(
                "the API key {} is revoked and cannot be rotated: create a new one with `tower-api-key keys create`",
                id.unwrap_or_default()
            ),
        ),
        ManageError::Store(StoreError::Duplicate) => Failure::new(
            CONFLICT,
            "a key with this id or hash already exists in the store",
        ),
        ManageError::Store(e) => Failure::new(
            UNREACHABLE,
            format!("the key store failed: {e}; check that the database is up and retry"),
        ),
        ManageError::Rng(e) => Failure::new(INTERNAL, format!("cannot generate a key: {e}")),
        other => Failure::usage(other.to_string()),
    }
}

fn store_failure(e: StoreError) -> Failure {
    manage_failure(ManageError::Store(e), None)
}

fn not_found(id: &str) -> Failure {
    Failure::new(
        NOT_FOUND,
        format!(
            "no API key {id:?} in this store: check the id with `tower-api-key keys list --org ORG`"
        ),
    )
}

fn parse_scopes(scopes: &[String]) -> Result<Scopes, Failure> {
    Scopes::parse(scopes).map_err(|e| Failure::usage(e.to_string()))
}

/// The secret, alone on its line on stdout.
fn print_secret(secret: &str) -> Outcome {
    let mut out = io::stdout().lock();
    writeln!(out, "{secret}")
        .and_then(|()| out.flush())
        .map_err(|e| Failure::new(INTERNAL, format!("cannot write the key to stdout: {e}")))
}

fn print_stdout(text: &str) -> Outcome {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| Failure::new(INTERNAL, format!("cannot write to stdout: {e}")))
}

/// The environment a prefix names: its last `_`-separated part when it has two or more
/// (`br_test_` → `test`), `live` otherwise.
fn environment_of(prefix: &str) -> String {
    let parts: Vec<&str> = prefix.split('_').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [_, .., last] => (*last).to_owned(),
        _ => "live".to_owned(),
    }
}

/// The format a stored key was issued in: its prefix is the part of its hint before `…`.
fn format_of(record: &KeyRecord) -> Result<KeyFormat, Failure> {
    let env = &*record.environment;
    let prefix = record
        .hint()
        .split('…')
        .next()
        .filter(|p| record.hint().contains('…') && !p.is_empty());
    let prefix = match (prefix, env) {
        (Some(p), _) => p.to_owned(),
        (None, "live") => KeyFormat::live().prefix().to_owned(),
        (None, "test") => KeyFormat::test().prefix().to_owned(),
        (None, _) => {
            return Err(Failure::usage(format!(
                "cannot tell the key prefix of {} (environment {env:?}): create a new key with `keys create --prefix`",
                record.id
            )));
        }
    };
    KeyFormat::new(&prefix, env).map_err(|e| Failure::usage(e.to_string()))
}

async fn keys(cmd: KeysCommand, store: BoxedStore) -> Outcome {
    match cmd {
        KeysCommand::Create(args) => create(args, store).await,
        KeysCommand::List { org, json } => {
            let records = store
                .list(&OrgId::from(org.as_str()))
                .await
                .map_err(store_failure)?;
            let now = Timestamp::now();
            if json {
                let data: Vec<Value> = records.iter().map(|r| key_json(r, now)).collect();
                print_stdout(&json!({ "data": data }).to_string())
            } else {
                if records.is_empty() {
                    eprintln!("no API keys for organization {org}");
                    return Ok(());
                }
                print_stdout(&table(&records, now))
            }
        }
        KeysCommand::Show { id, json } => {
            let record = get(&store, &id).await?;
            let now = Timestamp::now();
            if json {
                print_stdout(&key_json(&record, now).to_string())
            } else {
                print_stdout(&details(&record, now))
            }
        }
        KeysCommand::Revoke { id } => {
            let record = get(&store, &id).await?;
            let now = Timestamp::now();
            let was_revoked = record.is_revoked(now);
            let manager = KeyManager::new(store).clock(Clock::system());
            let revoked = manager
                .revoke(&record.org_id, &record.id)
                .await
                .map_err(|e| manage_failure(e, Some(&id)))?;
            if was_revoked {
                eprintln!(
                    "the API key {id} ({}) of {} was already revoked at {}",
                    revoked.hint(),
                    revoked.org_id,
                    when(revoked.revoked_at)
                );
            } else {
                eprintln!(
                    "revoked the API key {id} ({}) of {}: requests with it are refused from now on",
                    revoked.hint(),
                    revoked.org_id
                );
            }
            Ok(())
        }
        KeysCommand::Rotate { id, overlap } => {
            let overlap = overlap
                .map(|o| parse_duration("--overlap", &o))
                .transpose()?;
            let record = get(&store, &id).await?;
            let format = format_of(&record)?;
            let manager = KeyManager::new(store)
                .formats(format)
                .clock(Clock::system());
            let rotation = overlap.map_or_else(Rotation::immediate, Rotation::with_grace);
            let created = manager
                .rotate(&record.org_id, &record.id, rotation)
                .await
                .map_err(|e| manage_failure(e, Some(&id)))?;
            print_secret(created.key.expose_secret())?;
            let old_until = match overlap {
                Some(o) => format!(
                    "keeps working for {} (until {})",
                    humantime::format_duration(o),
                    when(Some(created.record.created_at.saturating_add(o)))
                ),
                None => "is revoked now".to_owned(),
            };
            eprintln!(
                "rotated the API key {id} of {}: the new key {} ({}) is above, shown once; the old key {old_until}",
                record.org_id,
                created.record.id,
                created.record.hint()
            );
            Ok(())
        }
    }
}

async fn get(store: &BoxedStore, id: &str) -> Result<KeyRecord, Failure> {
    store
        .get(&KeyId::from(id))
        .await
        .map_err(store_failure)?
        .ok_or_else(|| not_found(id))
}

async fn create(args: CreateArgs, store: BoxedStore) -> Outcome {
    let scopes = parse_scopes(&args.scopes)?;
    let expires_in = args
        .expires_in
        .as_deref()
        .map(|d| parse_duration("--expires-in", d))
        .transpose()?;
    let environment = args
        .environment
        .clone()
        .unwrap_or_else(|| environment_of(&args.prefix));
    let format =
        KeyFormat::new(&args.prefix, &environment).map_err(|e| Failure::usage(e.to_string()))?;
    let manager = KeyManager::new(store)
        .formats(format)
        .clock(Clock::system());
    let mut spec = NewKey::new(args.name).scopes(scopes);
    if let Some(d) = expires_in {
        spec = spec.expires_in(d);
    }
    let org = OrgId::from(args.org.as_str());
    let created = manager
        .create(&org, spec)
        .await
        .map_err(|e| manage_failure(e, None))?;
    print_secret(created.key.expose_secret())?;
    let r = &created.record;
    eprintln!(
        "created the API key {} ({}) for {org} with {}, expires {}: the secret above is shown once, store it now",
        r.id,
        r.hint(),
        scopes_text(&r.scopes),
        r.expires_at
            .map_or_else(|| "never".to_owned(), |t| when(Some(t)))
    );
    Ok(())
}

fn scopes_text(scopes: &Scopes) -> String {
    if scopes.is_empty() {
        "full access".to_owned()
    } else {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn status_text(s: KeyStatus) -> &'static str {
    match s {
        KeyStatus::Active => "active",
        KeyStatus::Expired => "expired",
        KeyStatus::Revoked => "revoked",
    }
}

/// A key as scripts (and the admin API) see it.
fn key_json(r: &KeyRecord, now: Timestamp) -> Value {
    let mut v = json!({
        "id": r.id,
        "name": r.name(),
        "hint": r.hint(),
        "scopes": r.scopes,
        "environment": &*r.environment,
        "created_at": r.created_at,
        "expires_at": r.expires_at,
        "last_used_at": r.last_used_at,
        "revoked_at": r.revoked_at,
        "rotated_from": r.rotated_from(),
        "status": r.status(now),
    });
    if r.scopes.is_full_access() {
        if let Some(map) = v.as_object_mut() {
            map.insert("access".to_owned(), Value::from("full"));
        }
    }
    v
}

fn when(t: Option<Timestamp>) -> String {
    match t {
        None => "-".to_owned(),
        Some(t) => {
            let st = UNIX_EPOCH + Duration::from_secs(t.as_unix_secs());
            humantime::format_rfc3339_seconds(st).to_string()
        }
    }
}

fn table(records: &[KeyRecord], now: Timestamp) -> String {
    let header = [
        "ID",
        "NAME",
        "HINT",
        "SCOPES",
        "ENV",
        "STATUS",
        "CREATED",
        "EXPIRES",
        "LAST USED",
    ];
    let rows: Vec<[String; 9]> = records
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.name().to_owned(),
                r.hint().to_owned(),
                scopes_text(&r.scopes),
                r.environment.to_string(),
                status_text(r.status(now)).to_owned(),
                when(Some(r.created_at)),
                when(r.expires_at),
                when(r.last_used_at),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(header.to_vec())];
    for row in &rows {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

fn details(r: &KeyRecord, now: Timestamp) -> String {
    let fields = [
        ("id", r.id.to_string()),
        ("org", r.org_id.to_string()),
        ("name", r.name().to_owned()),
        ("hint", r.hint().to_owned()),
        ("scopes", scopes_text(&r.scopes)),
        ("environment", r.environment.to_string()),
        ("status", status_text(r.status(now)).to_owned()),
        ("created", when(Some(r.created_at))),
        ("expires", when(r.expires_at)),
        ("last used", when(r.last_used_at)),
        ("revoked", when(r.revoked_at)),
        (
            "rotated from",
            r.rotated_from()
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
        ),
    ];
    fields
        .iter()
        .map(|(k, v)| format!("{:<14}{v}", format!("{k}:")))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn plans(cmd: PlansCommand, store: BoxedStore) -> Outcome {
    let manager = KeyManager::new(store);
    match cmd {
        PlansCommand::Set {
            org,
            plan,
            requests,
            per,
            sessions,
        } => {
            let plan = match plan {
                PlanName::Free | PlanName::Paid
                    if requests.is_some() || per.is_some() || sessions.is_some() =>
                {
                    return Err(Failure::usage(
                        "--requests, --per and --sessions set an enterprise quota: use them with `enterprise` only",
                    ));
                }
                PlanName::Free => Plan::Free,
                PlanName::Paid => Plan::Paid,
                PlanName::Enterprise => {
                    let (Some(requests), Some(concurrent_sessions)) = (requests, sessions) else {
                        return Err(Failure::usage(
                            "the enterprise plan needs its quota: pass --requests N and --sessions N (and --per, default 60s)",
                        ));
                    };
                    let period = match per {
                        Some(p) => parse_duration("--per", &p)?,
                        None => Duration::from_secs(60),
                    };
                    if period.is_zero() || requests == 0 {
                        return Err(Failure::usage(
                            "--requests and --per must be more than zero",
                        ));
                    }
                    Plan::Enterprise(Quota {
                        requests,
                        period,
                        concurrent_sessions,
                    })
                }
            };
            let org_id = OrgId::from(org.as_str());
            manager
                .set_plan(&org_id, plan)
                .await
                .map_err(|e| manage_failure(e, None))?;
            eprintln!(
                "{org} is now on the {} plan ({}); it applies on its next request",
                plan.name(),
                quota_text(plan.quota())
            );
            Ok(())
        }
        PlansCommand::Show { org, json } => {
            let plan = manager
                .plan(&OrgId::from(org.as_str()))
                .await
                .map_err(|e| manage_failure(e, None))?;
            let q = plan.quota();
            if json {
                print_stdout(
                    &json!({
                        "org_id": org,
                        "plan": plan.name(),
                        "requests": q.requests,
                        "period_secs": q.period.as_secs(),
                        "concurrent_sessions": q.concurrent_sessions,
                    })
                    .to_string(),
                )
            } else {
                print_stdout(&format!(
                    "org:    {org}\nplan:   {}\nquota:  {}",
                    plan.name(),
                    quota_text(q)
                ))
            }
        }
    }
}

fn quota_text(q: Quota) -> String {
    format!(
        "{} requests per {}, {} concurrent sessions",
        q.requests,
        humantime::format_duration(q.period),
        q.concurrent_sessions
    )
}

/// Read all of stdin (a key, or JSON lines).
fn read_stdin() -> Result<String, Failure> {
    let mut input = String::new();
    io::stdin()
        .lock()
        .read_to_string(&mut input)
        .map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
    Ok(input)
}

fn hash() -> Outcome {
    let input = zeroize::Zeroizing::new(read_stdin()?);
    let key = input.trim();
    if key.is_empty() {
        return Err(Failure::usage(
            "no key on stdin: pipe one key in, e.g. `tower-api-key hash < key.txt`",
        ));
    }
    if key.contains(char::is_whitespace) {
        return Err(Failure::usage(
            "stdin holds more than one word: `hash` reads exactly one key",
        ));
    }
    print_stdout(&KeyHash::of(key).to_hex())
}

/// One line of `import`'s input.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportLine {
    hash: String,
    org: String,
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    created: Option<TimeField>,
    #[serde(default)]
    expires: Option<TimeField>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    hint: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TimeField {
    UnixSecs(u64),
    Rfc3339(String),
}

impl TimeField {
    fn timestamp(&self) -> Result<Timestamp, String> {
        match self {
            TimeField::UnixSecs(s) => Ok(Timestamp::from_unix_secs(*s)),
            TimeField::Rfc3339(s) => humantime::parse_rfc3339_weak(s)
                .map(Timestamp::from)
                .map_err(|e| {
                    format!("invalid time {s:?}: {e}; use unix seconds or RFC 3339 (2025-01-31T12:00:00Z)")
                }),
        }
    }
}

fn import_record(line: &str) -> Result<KeyRecord, String> {
    let l: ImportLine = serde_json::from_str(line).map_err(|e| {
        format!("{e}; expected {{\"hash\": HEX, \"org\": ORG, \"name\": NAME, \"scopes\": [..], \"created\": T, \"expires\": T}}")
    })?;
    let hash = KeyHash::from_hex(l.hash.trim()).ok_or_else(|| {
        format!(
            "invalid hash {:?}: 64 hex digits of the key's SHA-256, as `tower-api-key hash` prints",
            l.hash
        )
    })?;
    if l.org.trim().is_empty() {
        return Err("empty org".to_owned());
    }
    let name = l.name.trim();
    if name.is_empty() || name.chars().count() > 128 {
        return Err("key names must be 1 to 128 characters".to_owned());
    }
    let scopes = Scopes::parse(&l.scopes).map_err(|e| e.to_string())?;
    let created = match &l.created {
        Some(t) => t.timestamp()?,
        None => Timestamp::now(),
    };
    let expires = l.expires.as_ref().map(TimeField::timestamp).transpose()?;
    let environment = l.environment.unwrap_or_else(|| "live".to_owned());
    // The environment label follows the key formats' rule.
    KeyFormat::new("x_", &environment).map_err(|e| e.to_string())?;
    let id = match l.id {
        Some(id) if !id.trim().is_empty() => KeyId::from(id.trim()),
        _ => KeyId::generate().map_err(|e| e.to_string())?,
    };
    let mut record = KeyRecord::new(
        id,
        OrgId::from(l.org.trim()),
        name.to_owned(),
        hash,
        l.hint.unwrap_or_else(|| "(imported)".to_owned()),
        scopes,
        Arc::from(environment.as_str()),
        created,
    );
    record.expires_at = expires;
    Ok(record)
}

async fn import(store: BoxedStore) -> Outcome {
    // Check every line before writing any.
    let mut records = Vec::new();
    for (n, line) in io::stdin().lock().lines().enumerate() {
        let line = line.map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let record =
            import_record(&line).map_err(|e| Failure::usage(format!("line {}: {e}", n + 1)))?;
        records.push((n + 1, record));
    }
    if records.is_empty() {
        return Err(Failure::usage(
            "nothing to import: give one JSON object a line on stdin",
        ));
    }
    let total = records.len();
    for (done, (n, record)) in records.into_iter().enumerate() {
        let id = record.id.clone();
        match store.insert(record).await {
            Ok(()) => print_stdout(id.as_str())?,
            Err(StoreError::Duplicate) => {
                return Err(Failure::new(
                    CONFLICT,
                    format!(
                        "line {n}: a key with this hash or id already exists; {done} of {total} keys imported before it (their ids are on stdout): remove the lines up to {n} and run again"
                    ),
                ));
            }
            Err(e) => {
                let mut f = store_failure(e);
                f.message = format!(
                    "line {n}: {}; {done} of {total} keys imported before it",
                    f.message
                );
                return Err(f);
            }
        }
    }
    eprintln!("imported {total} keys");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/prod"),
            "postgres://app:***@db:5432/prod"
        );
        assert_eq!(redact("postgres://app@db/prod"), "postgres://app@db/prod");
        assert_eq!(redact("sqlite://keys.db"), "sqlite://keys.db");
    }

    #[test]
    fn prefixes_name_their_environment() {
        assert_eq!(environment_of("br_test_"), "test");
        assert_eq!(environment_of("br_live_"), "live");
        assert_eq!(environment_of("btk_"), "live");
    }

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(sqlite_file("sqlite://keys.db"), Some("keys.db".into()));
        assert_eq!(
            sqlite_file("sqlite:///tmp/k.db?mode=rwc"),
            Some("/tmp/k.db".into())
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
    }
}
