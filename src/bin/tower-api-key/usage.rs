//! `tower-api-key usage`: an organization's metered requests, per bucket and per key.

use super::*;
use tower_api_key::{Granularity, UsageCounts, UsageReport};

/// The bucket sizes `--granularity` takes.
#[derive(Clone, Copy, ValueEnum)]
pub(super) enum GranularityArg {
    Minute,
    Hour,
    Day,
}

impl From<GranularityArg> for Granularity {
    fn from(g: GranularityArg) -> Self {
        match g {
            GranularityArg::Minute => Granularity::Minute,
            GranularityArg::Hour => Granularity::Hour,
            GranularityArg::Day => Granularity::Day,
        }
    }
}

#[derive(Args)]
pub(super) struct UsageArgs {
    /// The organization.
    #[arg(long)]
    org: String,
    /// Start of the range: RFC 3339, Unix seconds, or a duration ago (`24h`). Default: one
    /// hour of minutes, one day of hours or thirty days of days before `--to`.
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// End of the range, excluded (same forms as `--from`). Default: now.
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// Bucket size.
    #[arg(long, value_enum, default_value = "hour")]
    granularity: GranularityArg,
    /// JSON for scripts (the admin API's `GET /org/usage` body) instead of tables.
    #[arg(long)]
    json: bool,
}

pub(super) async fn usage(args: UsageArgs, store: BoxedStore) -> Outcome {
    let manager = KeyManager::new(store);
    let now = manager.now();
    let granularity = Granularity::from(args.granularity);
    let to = match &args.to {
        Some(v) => parse_time("--to", v, now)?,
        None => now,
    };
    let span = match granularity {
        Granularity::Minute => 3_600,
        Granularity::Hour => 86_400,
        Granularity::Day => 30 * 86_400,
    };
    let from = match &args.from {
        Some(v) => parse_time("--from", v, now)?,
        None => Timestamp::from_unix_secs(to.as_unix_secs().saturating_sub(span)),
    };
    let report = manager
        .usage(&OrgId::from(args.org.as_str()), from..to, granularity)
        .await
        .map_err(|e| match e {
            ManageError::InvalidUsageRange => Failure::usage(format!(
                "{e}: make --from earlier than --to, or use a coarser --granularity"
            )),
            e => manage_failure(e, None),
        })?;
    if args.json {
        let text = serde_json::to_string(&report)
            .map_err(|e| Failure::new(INTERNAL, format!("cannot write JSON: {e}")))?;
        return print_stdout(&text);
    }
    print_stdout(&report_text(&report))
}

/// A time given as RFC 3339, Unix seconds, or a duration before `now`.
fn parse_time(flag: &str, value: &str, now: Timestamp) -> Result<Timestamp, Failure> {
    if let Ok(secs) = value.parse::<u64>() {
        return Ok(Timestamp::from_unix_secs(secs));
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(value) {
        return Ok(Timestamp::from(t));
    }
    match humantime::parse_duration(value) {
        Ok(ago) => Ok(Timestamp::from_unix_secs(
            now.as_unix_secs().saturating_sub(ago.as_secs()),
        )),
        Err(_) => Err(Failure::usage(format!(
            "invalid {flag} {value:?}: write a time as RFC 3339 (2026-12-01T00:00:00Z), Unix \
             seconds, or a duration ago (24h)"
        ))),
    }
}

fn counts_cells(c: &UsageCounts) -> [String; 4] {
    [
        c.accepted.to_string(),
        c.rate_limited.to_string(),
        c.scope.to_string(),
        c.session_quota.to_string(),
    ]
}

/// The organization's buckets, then each key's totals, as aligned tables.
fn report_text(r: &UsageReport) -> String {
    const COUNTS: [&str; 4] = ["ACCEPTED", "RATE LIMITED", "SCOPE", "SESSION QUOTA"];
    let mut buckets = vec![
        std::iter::once("BUCKET".to_owned())
            .chain(COUNTS.map(str::to_owned))
            .collect::<Vec<_>>(),
    ];
    for b in &r.buckets {
        let mut row = vec![when(Some(b.start))];
        row.extend(counts_cells(&b.counts));
        buckets.push(row);
    }
    let mut total = vec!["TOTAL".to_owned()];
    total.extend(counts_cells(&r.total));
    buckets.push(total);
    let mut keys = vec![
        std::iter::once("KEY".to_owned())
            .chain(COUNTS.map(str::to_owned))
            .collect::<Vec<_>>(),
    ];
    for k in &r.keys {
        let mut row = vec![k.key_id.to_string()];
        row.extend(counts_cells(&k.total));
        keys.push(row);
    }
    format!(
        "usage by {} from {} to {}\n\n{}\n\n{}",
        r.granularity.as_str(),
        when(Some(r.from)),
        when(Some(r.to)),
        aligned(&buckets),
        aligned(&keys)
    )
}

fn aligned(rows: &[Vec<String>]) -> String {
    let mut widths = vec![0; rows.first().map_or(0, Vec::len)];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            row.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
