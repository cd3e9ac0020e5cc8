//! The pages, as maud templates: every value is escaped by maud, every URL starts with the
//! prefix the dashboard is mounted at, and no page has inline script or style (the CSP forbids
//! them).

use maud::{DOCTYPE, Markup, html};

use super::catalogue::ScopeCatalogue;
use super::error::Problem;
use super::{CurrentUsage, EXPIRATIONS, OVERLAPS, home};
use std::collections::HashMap;

use crate::admin::{Access, ApiKeyView, AuditEntryView, CreditBalance, Every, OrgView, Status};
use crate::manage::UsageReport;
use crate::scopes::Scopes;

/// What every page's frame needs: the mount prefix and, when signed in, the organization and
/// the CSRF token of the sign-out form.
pub(super) struct Frame<'a> {
    pub base: &'a str,
    pub signed_in: Option<(&'a str, &'a str)>,
}

fn layout(frame: &Frame<'_>, title: &str, body: Markup) -> Markup {
    let base = frame.base;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · API keys" }
                link rel="icon" href={ (base) "/assets/favicon.svg" } type="image/svg+xml";
                link rel="stylesheet" href={ (base) "/assets/dashboard.css" };
                script src={ (base) "/assets/dashboard.js" } defer {}
            }
            body {
                header.top {
                    span.brand { "API dashboard" }
                    @if let Some((org, csrf)) = frame.signed_in {
                        nav {
                            a href=(home(base)) { "API Keys" }
                            a href={ (base) "/usage" } { "Usage" }
                            a href={ (base) "/activity" } { "Activity" }
                        }
                        span.org { (org) }
                        form.signout method="post" action={ (base) "/sign-out" } {
                            input type="hidden" name="csrf" value=(csrf);
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// `2026-12-05 07:27 UTC` for Unix seconds.
pub(super) fn format_time(secs: u64) -> String {
    // Civil date from days since the epoch (Howard Hinnant's algorithm), in u64/i64 arithmetic
    // that cannot overflow for any u64 seconds.
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

fn permissions(key: &ApiKeyView) -> Markup {
    html! {
        @if key.access == Access::Full {
            span.full { "Full access" }
        } @else {
            ul.scopes {
                @for scope in &key.scopes { li { code { (scope) } } }
            }
        }
    }
}

/// The rarely set policy of a key, under its name: allowed networks and metadata.
fn policy(key: &ApiKeyView) -> Markup {
    html! {
        @if !key.allowed_networks.is_empty() {
            div.networks data-col="allowed-networks" {
                "Only from "
                @for (i, net) in key.allowed_networks.iter().enumerate() {
                    @if i > 0 { ", " }
                    code { (net) }
                }
            }
        }
        @if let Some(metadata) = &key.metadata {
            details.metadata data-col="metadata" {
                summary { "Metadata" }
                pre { code { (serde_json::to_string_pretty(metadata).unwrap_or_default()) } }
            }
        }
    }
}

/// A one-button form that disables or enables a key (`action` is `disable` or `enable`).
fn switch(frame: &Frame<'_>, key: &ApiKeyView, action: &str, label: &str) -> Markup {
    let csrf = frame.signed_in.map_or("", |(_, csrf)| csrf);
    html! {
        form.inline method="post" action={ (frame.base) "/keys/" (key.id) "/" (action) } {
            input type="hidden" name="csrf" value=(csrf);
            button.link type="submit" data-action=(action) { (label) }
        }
    }
}

fn status(key: &ApiKeyView) -> Markup {
    html! {
        @match (key.status, key.revoked_at) {
            (Status::Active, Some(until)) => {
                span.status.active { "Active" }
                " " span.until { "until " (format_time(until)) }
            }
            (Status::Active, None) => span.status.active { "Active" },
            (Status::Expired, _) => span.status.expired { "Expired" },
            (Status::Revoked, _) => span.status.revoked { "Revoked" },
            (Status::Disabled, _) => span.status.disabled { "Disabled" },
        }
    }
}

pub(super) fn sign_in(frame: &Frame<'_>, csrf: &str, error: Option<&str>) -> Markup {
    let base = frame.base;
    layout(
        frame,
        "Sign in",
        html! {
            h1 { "Sign in" }
            p { "Paste an API key that holds the " code { "api_keys:manage" } " permission. "
                "The key is checked once; the session keeps only its id, never the key." }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            form.card method="post" action={ (base) "/sign-in" } autocomplete="off" {
                input type="hidden" name="csrf" value=(csrf);
                label for="key" { "API key" }
                input #key type="password" name="key" required placeholder="br_live_…"
                    autocomplete="off" spellcheck="false";
                button.primary type="submit" { "Sign in" }
            }
        },
    )
}

/// A balance as a cell reads it: `750 · refilled to 1000 daily`.
fn credit_text(c: &CreditBalance) -> String {
    let every = match (c.refill.every, c.refill.day) {
        (Every::Never, _) => return format!("{} (never refilled)", c.balance),
        (Every::Day, _) => "daily".to_owned(),
        (Every::Month, Some(day)) => format!("monthly on day {day}"),
        (Every::Month, None) => "monthly".to_owned(),
    };
    format!("{} · refilled to {} {every}", c.balance, c.refill_amount)
}

pub(super) fn keys(
    frame: &Frame<'_>,
    keys: &[ApiKeyView],
    credits: &HashMap<String, CreditBalance>,
    notice: Option<&str>,
) -> Markup {
    let base = frame.base;
    let credit_column = !credits.is_empty();
    layout(
        frame,
        "API Keys",
        html! {
            div.heading {
                h1 { "API Keys" }
                a.button.primary href={ (base) "/keys/new" } { "Create new key" }
            }
            @if let Some(notice) = notice { p.notice role="status" { (notice) } }
            @if keys.is_empty() {
                p.empty { "No API keys yet." }
            } @else {
                table.keys {
                    thead { tr {
                        th { "Name" } th { "Key" } th { "Permissions" } th { "Created" }
                        th { "Expires" } th { "Last used" }
                        @if credit_column { th { "Credits" } }
                        th { "Status" } th { span.sr { "Actions" } }
                    } }
                    tbody {
                        @for key in keys {
                            tr data-key-id=(key.id) {
                                td data-col="name" {
                                    (key.name)
                                    (policy(key))
                                }
                                td data-col="hint" { code { (key.hint) } }
                                td data-col="permissions" { (permissions(key)) }
                                td data-col="created" { (format_time(key.created_at)) }
                                td data-col="expires" {
                                    @match key.expires_at { Some(t) => (format_time(t)), None => "Never" }
                                }
                                td data-col="last-used" {
                                    @match key.last_used_at { Some(t) => (format_time(t)), None => "Never" }
                                }
                                @if credit_column {
                                    td data-col="credits" {
                                        @match credits.get(&key.id) {
                                            Some(c) => (credit_text(c)),
                                            None => "Organization's",
                                        }
                                    }
                                }
                                td data-col="status" { (status(key)) }
                                td.actions {
                                    @if key.status == Status::Active && key.revoked_at.is_none() {
                                        a href={ (base) "/keys/" (key.id) "/rotate" } { "Rotate" }
                                        (switch(frame, key, "disable", "Disable"))
                                        a.danger href={ (base) "/keys/" (key.id) "/revoke" } { "Revoke" }
                                    } @else if key.status == Status::Active {
                                        a.danger href={ (base) "/keys/" (key.id) "/revoke" } { "Revoke" }
                                    } @else if key.status == Status::Disabled {
                                        (switch(frame, key, "enable", "Enable"))
                                        a.danger href={ (base) "/keys/" (key.id) "/revoke" } { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// What the create form was filled with, to show it again with an error.
#[derive(Default)]
pub(super) struct NewKeyForm<'a> {
    pub name: &'a str,
    pub scopes: Vec<&'a str>,
    pub expiration: &'a str,
    pub error: Option<String>,
}

pub(super) fn new_key(
    frame: &Frame<'_>,
    catalogue: &ScopeCatalogue,
    held: &Scopes,
    csrf: &str,
    form_token: &str,
    form: &NewKeyForm<'_>,
) -> Markup {
    let base = frame.base;
    layout(
        frame,
        "Create new key",
        html! {
            h1 { "Create new key" }
            @if let Some(error) = &form.error { p.error role="alert" { (error) } }
            form.card method="post" action={ (base) "/keys" } {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="form" value=(form_token);
                label for="name" { "Name" }
                input #name type="text" name="name" required maxlength="128" value=(form.name)
                    placeholder="ci-pipeline";
                fieldset {
                    legend { "Permissions" }
                    @for entry in catalogue.iter() {
                        @let scope = entry.scope.as_str();
                        @let allowed = held.allows(&entry.scope);
                        div.scope.disabled[!allowed] {
                            input type="checkbox" name="scope" value=(scope) id={ "scope-" (scope) }
                                checked[form.scopes.contains(&scope)] disabled[!allowed];
                            label for={ "scope-" (scope) } {
                                code { (scope) }
                                span.description { (entry.description) }
                                @if !allowed { span.note { " (your key does not hold it)" } }
                            }
                        }
                    }
                }
                label for="expiration" { "Expiration" }
                select #expiration name="expiration" {
                    @for (value, label, _) in EXPIRATIONS {
                        option value=(value) selected[form.expiration == value] { (label) }
                    }
                }
                div.actions {
                    button.primary type="submit" { "Create key" }
                    a href=(home(base)) { "Cancel" }
                }
            }
        },
    )
}

/// The page that shows a new secret, once.
pub(super) fn secret(frame: &Frame<'_>, heading: &str, secret: &str, key: &ApiKeyView) -> Markup {
    let base = frame.base;
    layout(
        frame,
        heading,
        html! {
            h1 { (heading) }
            div.secret.card {
                p { strong { "Copy this key now: it is only shown once." }
                    " Only its SHA-256 hash is stored, so it cannot be shown again." }
                div.copyrow {
                    input #new-secret type="text" readonly value=(secret) spellcheck="false"
                        autocomplete="off" aria-label="New API key";
                    button.primary type="button" data-copy="new-secret" { "Copy" }
                }
                p.copied role="status" {}
            }
            dl.summary {
                dt { "Name" } dd { (key.name) }
                dt { "Key" } dd { code { (key.hint) } }
                dt { "Permissions" } dd { (permissions(key)) }
                dt { "Expires" } dd { @match key.expires_at { Some(t) => (format_time(t)), None => "Never" } }
            }
            p { a href=(home(base)) { "Back to API Keys" } }
        },
    )
}

pub(super) fn revoke(frame: &Frame<'_>, csrf: &str, key: &ApiKeyView) -> Markup {
    let base = frame.base;
    layout(
        frame,
        "Revoke key",
        html! {
            h1 { "Revoke “" (key.name) "”?" }
            div.card {
                p { "Key " code { (key.hint) } " stops working on its next request. "
                    strong { "Revocation is permanent:" } " a revoked key cannot be reinstated; "
                    "clients using it need a new key." }
                form method="post" action={ (base) "/keys/" (key.id) "/revoke" } {
                    input type="hidden" name="csrf" value=(csrf);
                    div.actions {
                        button.danger type="submit" { "Revoke key" }
                        a href=(home(base)) { "Cancel" }
                    }
                }
            }
        },
    )
}

pub(super) fn rotate(frame: &Frame<'_>, csrf: &str, form_token: &str, key: &ApiKeyView) -> Markup {
    let base = frame.base;
    layout(
        frame,
        "Rotate key",
        html! {
            h1 { "Rotate “" (key.name) "”" }
            div.card {
                p { "A new key with the same name and permissions replaces " code { (key.hint) } ". "
                    "Choose how long the old key keeps working, so clients can switch over." }
                form method="post" action={ (base) "/keys/" (key.id) "/rotate" } {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="form" value=(form_token);
                    fieldset {
                        legend { "The old key stops working" }
                        @for (i, (value, label, _)) in OVERLAPS.iter().enumerate() {
                            div.option {
                                input type="radio" name="overlap" value=(value) id={ "overlap-" (value) }
                                    checked[i == 0];
                                label for={ "overlap-" (value) } { (label) }
                            }
                        }
                    }
                    div.actions {
                        button.primary type="submit" { "Rotate key" }
                        a href=(home(base)) { "Cancel" }
                    }
                }
            }
        },
    )
}

/// An audit action as a person reads it.
fn action_text(action: &str) -> &str {
    match action {
        "key_created" => "Created key",
        "key_revoked" => "Revoked key",
        "key_rotated" => "Rotated key",
        "key_updated" => "Changed key",
        "key_disabled" => "Disabled key",
        "key_enabled" => "Enabled key",
        "plan_changed" => "Changed plan",
        "credits_set" => "Set credits",
        other => other,
    }
}

/// A recent event as the Activity page lists it: what a person reads, not the event's JSON.
#[cfg_attr(not(feature = "events"), allow(dead_code))] // made only with feature events
pub(super) struct Alert {
    pub id: String,
    /// Unix seconds.
    pub at: u64,
    /// The event's type (`usage_threshold`, …).
    pub kind: &'static str,
    pub text: String,
    pub key_id: Option<String>,
}

#[cfg(feature = "events")]
impl Alert {
    /// The alert for `event`, or `None` for a key change (the audit log shows those, with who).
    pub(super) fn of(event: &crate::events::Event) -> Option<Self> {
        use crate::events::EventKind as K;
        let (text, key_id) = match &event.kind {
            K::KeyCreated { .. }
            | K::KeyRevoked { .. }
            | K::KeyRotated { .. }
            | K::KeyUpdated { .. }
            | K::PlanChanged { .. } => return None,
            K::UsageThreshold {
                policy,
                unit,
                percent,
                ..
            } => (
                format!("Usage reached {percent} % of {unit} (policy {policy})"),
                None,
            ),
            K::DeadKeyPresented {
                key_id,
                status,
                times,
            } => {
                let status = if *status == "expired" {
                    "Expired"
                } else {
                    "Revoked"
                };
                let times = if *times == 1 {
                    "once".to_owned()
                } else {
                    format!("{times} times")
                };
                (format!("{status} key still in use ({times})"), Some(key_id))
            }
            K::KeyLeaked {
                key_id,
                url,
                source,
            } => {
                let text = match url {
                    Some(url) => format!("Key leaked (found at {url})"),
                    None => format!("Key leaked (reported by {source})"),
                };
                (text, Some(key_id))
            }
            K::KeyExpiring { key_id, expires_at } => (
                format!("Key expires on {}", format_time(*expires_at)),
                Some(key_id),
            ),
            K::InvalidKeyBurst { client, attempts } => (
                format!("Address {client} blocked after {attempts} invalid keys"),
                None,
            ),
        };
        Some(Self {
            id: event.id.clone(),
            at: event.at / 1000,
            kind: event.kind.name(),
            text,
            key_id: key_id.map(ToString::to_string),
        })
    }
}

/// The Activity page: the organization's alerts (when the dashboard has them), then its audit
/// log, newest first.
pub(super) fn activity(
    frame: &Frame<'_>,
    alerts: Option<&[Alert]>,
    entries: &[AuditEntryView],
) -> Markup {
    layout(
        frame,
        "Activity",
        html! {
            h1 { "Activity" }
            @if let Some(alerts) = alerts {
                h2 { "Alerts" }
                @if alerts.is_empty() {
                    p.empty data-empty="alerts" { "No alerts." }
                } @else {
                    table.keys data-table="alerts" {
                        thead { tr {
                            th { "When" } th { "What" } th { "Key" }
                        } }
                        tbody {
                            @for a in alerts {
                                tr data-event-id=(a.id) data-kind=(a.kind) {
                                    td data-col="when" { (format_time(a.at)) }
                                    td data-col="what" { (a.text) }
                                    td data-col="key" {
                                        @match &a.key_id { Some(k) => code { (k) }, None => "—" }
                                    }
                                }
                            }
                        }
                    }
                }
                h2 { "Key changes" }
            }
            @if entries.is_empty() {
                p.empty { "Nothing has happened yet." }
            } @else {
                table.keys data-table="activity" {
                    thead { tr {
                        th { "When" } th { "Who" } th { "What" } th { "Key" }
                    } }
                    tbody {
                        @for e in entries {
                            tr data-audit-id=(e.id) {
                                td data-col="when" { (format_time(e.at)) }
                                td data-col="who" {
                                    (e.actor.kind)
                                    @if let Some(id) = &e.actor.id { " " code { (id) } }
                                }
                                td data-col="what" data-action=(e.action) { (action_text(&e.action)) }
                                td data-col="key" {
                                    @match &e.key_id { Some(k) => code { (k) }, None => "—" }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The window as the end of "100 per …".
fn window(secs: u64) -> String {
    match secs {
        1 => "second".into(),
        60 => "minute".into(),
        3600 => "hour".into(),
        s if s % 3600 == 0 => format!("{} hours", s / 3600),
        s if s % 60 == 0 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

pub(super) fn usage(
    frame: &Frame<'_>,
    org: &OrgView,
    current: Option<&CurrentUsage>,
    credits: Option<&Option<CreditBalance>>,
    report: &UsageReport,
) -> Markup {
    let limits = &org.limits;
    layout(
        frame,
        "Usage",
        html! {
            h1 { "Usage" }
            dl.summary.card {
                dt { "Organization" } dd { (org.org_id) }
                dt { "Plan" } dd data-field="plan" { (org.plan) }
                dt { "Requests" } dd data-field="requests" {
                    (limits.requests_per_window) " per " (window(limits.window_secs))
                }
                dt { "Concurrent sessions" } dd data-field="sessions" { (limits.concurrent_sessions) }
            }
            @if let Some(current) = current {
                h2 { "Current use" }
                dl.summary.card {
                    @if let Some(n) = current.requests {
                        dt { "Requests" } dd data-field="current-requests" { (n) }
                    }
                    @if let Some(n) = current.open_sessions {
                        dt { "Open sessions" } dd data-field="current-sessions" {
                            (n) " of " (limits.concurrent_sessions)
                        }
                    }
                }
            }
            @if let Some(credits) = credits {
                h2 { "Credits" }
                dl.summary.card data-section="credits" {
                    @match credits {
                        Some(c) => {
                            dt { "Balance" } dd data-field="credit-balance" { (c.balance) }
                            dt { "Refill" } dd data-field="credit-refill" {
                                @match (c.refill.every, c.refill.day) {
                                    (Every::Never, _) => "Never",
                                    (Every::Day, _) => { "To " (c.refill_amount) " daily" },
                                    (Every::Month, Some(d)) => { "To " (c.refill_amount) " monthly, on day " (d) },
                                    (Every::Month, None) => { "To " (c.refill_amount) " monthly" },
                                }
                            }
                            dt { "Next refill" } dd data-field="credit-next-refill" {
                                @match c.next_refill_at { Some(t) => (format_time(t)), None => "Never" }
                            }
                        }
                        None => {
                            dt { "Balance" } dd data-field="credit-balance" { "No credit balance: calls are not metered in credits" }
                        }
                    }
                }
            }
            h2 { "Requests, last 24 hours" }
            (usage_chart(report))
            @if !report.keys.is_empty() {
                table.keys data-table="usage-by-key" {
                    thead { tr {
                        th { "Key" } th { "Accepted" } th { "Rate limited" }
                        th { "Missing scope" } th { "Session quota" }
                    } }
                    tbody {
                        @for k in &report.keys {
                            tr data-key=(k.key_id) {
                                td { code { (k.key_id) } }
                                td { (k.total.accepted) } td { (k.total.rate_limited) }
                                td { (k.total.scope) } td { (k.total.session_quota) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The organization's requests per bucket as an inline SVG bar chart: accepted below, refused
/// (any reason) stacked above, empty buckets drawn as gaps. No script: it renders under the
/// dashboard's `script-src 'self'` policy and in any browser.
pub(super) fn usage_chart(report: &UsageReport) -> Markup {
    const W: u64 = 720;
    const H: u64 = 160;
    let step = report.granularity.duration().as_secs();
    let (from, to) = (report.from.as_unix_secs(), report.to.as_unix_secs());
    let n = to.saturating_sub(from).div_ceil(step).clamp(1, 500);
    let mut bars = vec![(0u64, 0u64); n as usize];
    for b in &report.buckets {
        let i = (b.start.as_unix_secs().saturating_sub(from) / step) as usize;
        if let Some(bar) = bars.get_mut(i) {
            let c = &b.counts;
            let refused = c.rate_limited + c.scope + c.session_quota;
            *bar = (c.accepted.max(0) as u64, refused.max(0) as u64);
        }
    }
    let max = bars.iter().map(|(a, r)| a + r).max().unwrap_or(0).max(1);
    let width = W / n;
    let total = &report.total;
    html! {
        figure.card.chart {
            svg role="img" viewBox={ "0 0 " (W) " " (H) } width="100%" height=(H)
                aria-label={ (total.requests()) " requests in the last 24 hours" } {
                @for (i, (accepted, refused)) in bars.iter().enumerate() {
                    @let x = i as u64 * width;
                    @let ha = accepted * H / max;
                    @let hr = refused * H / max;
                    @let start = from + i as u64 * step;
                    g data-bucket=(start) {
                        title { (format_time(start)) ": " (accepted) " accepted, " (refused) " refused" }
                        @if ha > 0 {
                            rect.accepted x=(x) y=(H - ha) width=(width.saturating_sub(2).max(1)) height=(ha) fill="#2f7d5b" {}
                        }
                        @if hr > 0 {
                            rect.refused x=(x) y=(H - ha - hr) width=(width.saturating_sub(2).max(1)) height=(hr) fill="#c2483b" {}
                        }
                    }
                }
            }
            figcaption {
                span data-field="usage-accepted" { (total.accepted) } " accepted · "
                span data-field="usage-refused" {
                    (total.rate_limited + total.scope + total.session_quota)
                } " refused ("
                (total.rate_limited) " rate limited, " (total.scope) " missing scope, "
                (total.session_quota) " over the session quota), by hour, UTC"
            }
        }
    }
}

pub(super) fn problem(frame: &Frame<'_>, problem: &Problem) -> Markup {
    let base = frame.base;
    layout(
        frame,
        problem.title,
        html! {
            h1 { (problem.title) }
            p.error role="alert" { (problem.message) }
            p { a href=(home(base)) { "Back to API Keys" } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(format_time(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(format_time(1_796_455_651), "2026-12-05 07:27 UTC");
        // The largest input formats without overflow.
        assert!(format_time(u64::MAX).ends_with(" UTC"));
    }

    #[cfg(feature = "events")]
    #[test]
    fn alerts_read_as_sentences_and_key_changes_are_left_to_the_audit_log() {
        use crate::events::{Actor, Event, EventKind};
        use crate::ids::{KeyId, OrgId};
        let alert = |kind| {
            Alert::of(&Event {
                id: "evt_1".into(),
                at: 1_796_455_651_000,
                org_id: OrgId::from("org_1"),
                kind,
            })
            .map(|a| (a.text, a.key_id))
        };
        let key = || KeyId::from("key_1");
        assert_eq!(
            alert(EventKind::KeyLeaked {
                key_id: key(),
                url: Some("https://example.com/x".into()),
                source: "github".into(),
            }),
            Some((
                "Key leaked (found at https://example.com/x)".into(),
                Some("key_1".into())
            ))
        );
        assert_eq!(
            alert(EventKind::KeyLeaked {
                key_id: key(),
                url: None,
                source: "public_revoke".into(),
            }),
            Some((
                "Key leaked (reported by public_revoke)".into(),
                Some("key_1".into())
            ))
        );
        assert_eq!(
            alert(EventKind::KeyExpiring {
                key_id: key(),
                expires_at: 1_796_455_651,
            }),
            Some((
                "Key expires on 2026-12-05 07:27 UTC".into(),
                Some("key_1".into())
            ))
        );
        assert_eq!(
            alert(EventKind::DeadKeyPresented {
                key_id: key(),
                status: "expired",
                times: 1,
            }),
            Some((
                "Expired key still in use (once)".into(),
                Some("key_1".into())
            ))
        );
        assert_eq!(
            alert(EventKind::KeyRevoked {
                key_id: key(),
                actor: Actor::System,
            }),
            None
        );
    }

    #[test]
    fn windows_read_as_words() {
        assert_eq!(window(60), "minute");
        assert_eq!(window(7200), "2 hours");
        assert_eq!(window(90), "90 seconds");
    }
}
