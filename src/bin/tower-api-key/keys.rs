//! `keys`: create, list, show, revoke, rotate; a table for people, JSON for scripts.

use super::*;

/// The environment a prefix names: its last `_`-separated part when it has two or more
/// (`br_test_` → `test`), `live` otherwise.
pub(super) fn environment_of(prefix: &str) -> String {
    let parts: Vec<&str> = prefix.split('_').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [_, .., last] => (*last).to_owned(),
        _ => "live".to_owned(),
    }
}

/// The format a stored key was issued in: its prefix is the part of its hint before `…`.
pub(super) fn format_of(record: &KeyRecord) -> Result<KeyFormat, Failure> {
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

pub(super) async fn keys(cmd: KeysCommand, store: BoxedStore) -> Outcome {
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
            let manager = manager_for(store).clock(Clock::system());
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
        KeysCommand::Disable { id } => set_disabled(&store, &id, true).await,
        KeysCommand::Enable { id } => set_disabled(&store, &id, false).await,
        KeysCommand::Update(args) => update(args, store).await,
        KeysCommand::Rotate { id, overlap } => {
            let overlap = overlap
                .map(|o| parse_duration("--overlap", &o))
                .transpose()?;
            let record = get(&store, &id).await?;
            let format = format_of(&record)?;
            let manager = manager_for(store).formats(format).clock(Clock::system());
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

async fn set_disabled(store: &BoxedStore, id: &str, disabled: bool) -> Outcome {
    let record = get(store, id).await?;
    let manager = manager_for(store.clone()).clock(Clock::system());
    let result = if disabled {
        manager.disable(&record.org_id, &record.id).await
    } else {
        manager.enable(&record.org_id, &record.id).await
    };
    let record = result.map_err(|e| manage_failure(e, Some(id)))?;
    if disabled {
        eprintln!(
            "disabled the API key {id} ({}) of {}: requests with it are refused until `keys enable {id}`",
            record.hint(),
            record.org_id
        );
    } else {
        eprintln!(
            "enabled the API key {id} ({}) of {}: requests with it are accepted again",
            record.hint(),
            record.org_id
        );
    }
    Ok(())
}

async fn update(args: UpdateArgs, store: BoxedStore) -> Outcome {
    let mut changes = KeyChanges::new();
    if let Some(json) = &args.metadata {
        changes = changes.metadata(Some(parse_metadata(json)?));
    } else if args.clear_metadata {
        changes = changes.metadata(None);
    }
    if args.allow_anywhere {
        changes = changes.allowed_networks(Vec::new());
    } else if !args.allow_cidrs.is_empty() {
        changes = changes.allowed_networks(parse_cidrs(&args.allow_cidrs)?);
    }
    if changes.is_empty() {
        return Err(Failure::usage(
            "nothing to change: give --metadata, --clear-metadata, --allow-cidr or --allow-anywhere",
        ));
    }
    let record = get(&store, &args.id).await?;
    let manager = manager_for(store).clock(Clock::system());
    let updated = manager
        .update(&record.org_id, &record.id, changes)
        .await
        .map_err(|e| manage_failure(e, Some(&args.id)))?;
    eprintln!(
        "updated the API key {} ({}) of {}",
        updated.id,
        updated.hint(),
        updated.org_id
    );
    Ok(())
}

/// `--metadata`: a JSON object.
fn parse_metadata(json: &str) -> Result<Metadata, Failure> {
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Failure::usage(
            "--metadata must be a JSON object, e.g. '{\"customer\":\"cus_42\"}'",
        )),
        Err(e) => Err(Failure::usage(format!("invalid --metadata JSON: {e}"))),
    }
}

/// `--allow-cidr`: CIDR networks (a bare address is one host).
fn parse_cidrs(cidrs: &[String]) -> Result<Vec<IpNet>, Failure> {
    cidrs
        .iter()
        .map(|c| {
            c.parse::<IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    Failure::usage(format!(
                        "invalid --allow-cidr {c:?}: write a network such as 203.0.113.0/24 or 2001:db8::/32"
                    ))
                })
        })
        .collect()
}

pub(super) async fn get(store: &BoxedStore, id: &str) -> Result<KeyRecord, Failure> {
    store
        .get(&KeyId::from(id))
        .await
        .map_err(store_failure)?
        .ok_or_else(|| not_found(id))
}

pub(super) async fn create(args: CreateArgs, store: BoxedStore) -> Outcome {
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
    let manager = manager_for(store).formats(format).clock(Clock::system());
    let mut spec = NewKey::new(args.name)
        .scopes(scopes)
        .allowed_networks(parse_cidrs(&args.allow_cidrs)?);
    if let Some(d) = expires_in {
        spec = spec.expires_in(d);
    }
    if let Some(json) = &args.metadata {
        spec = spec.metadata(parse_metadata(json)?);
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

pub(super) fn scopes_text(scopes: &Scopes) -> String {
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

pub(super) fn status_text(s: KeyStatus) -> &'static str {
    match s {
        KeyStatus::Active => "active",
        KeyStatus::Expired => "expired",
        KeyStatus::Revoked => "revoked",
        KeyStatus::Disabled => "disabled",
    }
}

/// A key as scripts (and the admin API) see it.
pub(super) fn key_json(r: &KeyRecord, now: Timestamp) -> Value {
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
        "disabled": r.is_disabled(),
        "metadata": r.metadata(),
        "allowed_networks": networks_text(r.allowed_networks()),
        "status": r.status(now),
    });
    if r.scopes.is_full_access() {
        if let Some(map) = v.as_object_mut() {
            map.insert("access".to_owned(), Value::from("full"));
        }
    }
    v
}

fn networks_text(networks: &[IpNet]) -> Vec<String> {
    networks.iter().map(ToString::to_string).collect()
}

pub(super) fn when(t: Option<Timestamp>) -> String {
    match t {
        None => "-".to_owned(),
        Some(t) => {
            let st = UNIX_EPOCH + Duration::from_secs(t.as_unix_secs());
            humantime::format_rfc3339_seconds(st).to_string()
        }
    }
}

pub(super) fn table(records: &[KeyRecord], now: Timestamp) -> String {
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

pub(super) fn details(r: &KeyRecord, now: Timestamp) -> String {
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
        (
            "allowed from",
            if r.allowed_networks().is_empty() {
                "anywhere".to_owned()
            } else {
                networks_text(r.allowed_networks()).join(" ")
            },
        ),
        (
            "metadata",
            r.metadata()
                .map_or_else(|| "-".to_owned(), |m| Value::Object(m.clone()).to_string()),
        ),
    ];
    fields
        .iter()
        .map(|(k, v)| format!("{:<14}{v}", format!("{k}:")))
        .collect::<Vec<_>>()
        .join("\n")
}
