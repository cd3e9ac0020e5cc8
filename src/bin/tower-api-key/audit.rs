//! `audit` and `--actor`: the audit log, and who the CLI's changes are recorded as.

use std::sync::OnceLock;

use tower_api_key::AuditQuery;

use super::*;

/// Who this run acts as: `--actor`, `TOWER_API_KEY_ACTOR`, `$USER`, or `operator`.
static ACTOR: OnceLock<Actor> = OnceLock::new();

pub(super) fn set_actor(name: Option<String>) {
    let name = name
        .filter(|n| !n.trim().is_empty())
        .or_else(|| std::env::var("USER").ok().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| "operator".to_owned());
    let _ = ACTOR.set(Actor::User(name.trim().to_owned()));
}

/// A manager over `store` acting as this run's actor (every change it makes is audited so).
pub(super) fn manager_for(store: BoxedStore) -> KeyManager<BoxedStore> {
    let manager = KeyManager::new(store);
    match ACTOR.get() {
        Some(actor) => manager.as_actor(actor.clone()),
        None => manager,
    }
}

pub(super) async fn audit(args: AuditArgs, store: BoxedStore) -> Outcome {
    if !(1..=AuditQuery::MAX_LIMIT).contains(&args.limit) {
        return Err(Failure::usage(format!(
            "--limit must be 1 to {}",
            AuditQuery::MAX_LIMIT
        )));
    }
    let org = OrgId::from(args.org.as_str());
    let entries = manager_for(store)
        .audit_log(&org, &AuditQuery::new().limit(args.limit))
        .await
        .map_err(|e| manage_failure(e, None))?;
    if args.json {
        return print_stdout(&json!({ "data": entries }).to_string());
    }
    if entries.is_empty() {
        eprintln!("no audit entries for {}", args.org);
        return Ok(());
    }
    let mut rows = vec![vec![
        "WHEN".to_owned(),
        "ACTOR".to_owned(),
        "ACTION".to_owned(),
        "KEY".to_owned(),
        "DETAIL".to_owned(),
    ]];
    for e in &entries {
        rows.push(vec![
            when(Some(e.at)),
            e.actor.to_string(),
            e.action.to_string(),
            e.key_id
                .as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string),
            e.detail.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let text: Vec<String> = rows
        .iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        })
        .collect();
    print_stdout(&text.join("\n"))
}
