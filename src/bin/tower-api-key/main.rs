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
use tower_api_key::store::{IpNet, PostgresStore, SqliteStore};
use tower_api_key::{
    Actor, BoxedStore, Clock, KeyChanges, KeyFormat, KeyHash, KeyId, KeyManager, KeyRecord,
    KeyStatus, KeyStore, ManageError, Metadata, NewKey, OrgId, Plan, Quota, Rotation, Scopes,
    StoreError, Timestamp,
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
/// read usage, hash and import keys. Secrets are read on stdin only and printed on stdout only.
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
    /// Who is acting, as the audit log names them (a user): default `$USER`.
    #[arg(long, env = "TOWER_API_KEY_ACTOR", global = true, value_name = "NAME")]
    actor: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or upgrade the store's schema with the migrations shipped in this version; safe to
    /// run at every deploy.
    Migrate,
    /// Create, list, show, update, disable, enable, rotate and revoke API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Set and show organizations' plans.
    #[command(subcommand)]
    Plans(PlansCommand),
    /// Read one key on stdin and print the form it is stored under (hex SHA-256), for `import`.
    Hash,
    /// Show and set credit balances (an organization's, or one key's, spent first).
    #[command(subcommand)]
    Credits(CreditsCommand),
    /// An organization's audit log, newest first: who created, revoked, rotated or changed
    /// which key, changed the plan or set credits, and when.
    Audit(AuditArgs),
    /// An organization's metered requests (accepted, rate limited, scope, session quota), per
    /// minute, hour or day and per key, as the flusher wrote them.
    Usage(UsageArgs),
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
    /// Switch a key off: refused until enabled again (reversible, unlike revoke).
    Disable {
        /// The key id (`key_…`).
        id: String,
    },
    /// Switch a disabled key on again (a revoked key stays off).
    Enable {
        /// The key id (`key_…`).
        id: String,
    },
    /// Change a key's metadata or the client networks it may be used from.
    Update(UpdateArgs),
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
    /// Metadata, a JSON object (at most 32 members, 4 KiB), e.g. `{"customer":"cus_42"}`.
    #[arg(long, value_name = "JSON")]
    metadata: Option<String>,
    /// Accept the key only from this client network (CIDR, IPv4 or IPv6); repeat for more.
    #[arg(long = "allow-cidr", value_name = "CIDR")]
    allow_cidrs: Vec<String>,
}

#[derive(Args)]
struct UpdateArgs {
    /// The key id (`key_…`).
    id: String,
    /// Replace the metadata with this JSON object.
    #[arg(long, value_name = "JSON", conflicts_with = "clear_metadata")]
    metadata: Option<String>,
    /// Remove the metadata.
    #[arg(long)]
    clear_metadata: bool,
    /// Replace the allowed client networks (CIDR); repeat for more.
    #[arg(
        long = "allow-cidr",
        value_name = "CIDR",
        conflicts_with = "allow_anywhere"
    )]
    allow_cidrs: Vec<String>,
    /// Remove the network restriction: the key works from anywhere.
    #[arg(long)]
    allow_anywhere: bool,
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

#[derive(Args)]
struct AuditArgs {
    /// The organization.
    #[arg(long)]
    org: String,
    /// The newest N entries (1 to 500).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// JSON for scripts (`{"data": [ENTRY, ..]}`) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum CreditsCommand {
    /// An organization's (or with --key, one key's) balance, refill and next refill.
    Show {
        /// The organization.
        #[arg(long)]
        org: String,
        /// One key of the organization (`key_…`): its own balance.
        #[arg(long)]
        key: Option<String>,
        /// JSON for scripts instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Give an organization (or with --key, one key) a balance, optionally refilled.
    Set {
        /// The organization.
        #[arg(long)]
        org: String,
        /// One key of the organization (`key_…`): a balance of its own, spent before the
        /// organization's.
        #[arg(long)]
        key: Option<String>,
        /// The balance.
        #[arg(long)]
        balance: u64,
        /// What each refill tops the balance up to: the balance (the backends refill to the
        /// amount set).
        #[arg(long, requires = "every")]
        refill: Option<u64>,
        /// Refill every day (00:00 UTC) or every month (on --day, 00:00 UTC); default: never.
        #[arg(long, value_enum)]
        every: Option<EveryArg>,
        /// With `--every month`: the day of the month, 1 to 28.
        #[arg(long)]
        day: Option<u8>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum PlanName {
    Free,
    Paid,
    Enterprise,
}

mod audit;
mod credits;
mod import;
mod keys;
mod plans;
mod store;
mod usage;

use audit::*;
use credits::*;
use import::*;
use keys::*;
use plans::*;
use store::*;
use usage::*;

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
    set_actor(cli.actor);
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
        Command::Credits(cmd) => credits(cmd, cli.store).await,
        Command::Audit(args) => {
            let store = migrated_store(cli.store).await?;
            audit(args, store).await
        }
        Command::Usage(args) => {
            let store = migrated_store(cli.store).await?;
            usage(args, store).await
        }
    }
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
                "the API key {} is revoked and cannot be rotated, enabled or changed: create a new one with `tower-api-key keys create`",
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
    manage_failure(ManageError::from(e), None)
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
