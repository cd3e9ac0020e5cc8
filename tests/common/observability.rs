//! What tests of the observability pieces share: reading a sample out of Prometheus text,
//! `promtool check metrics`, and checking a Standard Webhooks signature as a receiver would.
//! Included with `#[path = "common/observability.rs"] mod observability;`.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};

use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The value of the sample `name{labels}` (labels as rendered, `""` for none).
pub fn sample(text: &str, name: &str, labels: &str) -> f64 {
    let series = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// `promtool check metrics` on `text`; required when `PROMTOOL` is set (CI), else run when
/// found on the PATH.
pub fn promtool_check(text: &str) {
    let promtool = std::env::var("PROMTOOL").ok();
    let program = promtool.as_deref().unwrap_or("promtool");
    let child = Command::new(program)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if promtool.is_none() => {
            eprintln!("promtool not found ({e}); set PROMTOOL to require it");
            return;
        }
        Err(e) => panic!("PROMTOOL={program} cannot run: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Checks a delivery's signature as a receiver following the Standard Webhooks convention
/// would, independently of the crate: HMAC-SHA256 keyed by the base64-decoded `secret`
/// (`whsec_…`) over `id.timestamp.body`, and a timestamp within five minutes. Returns the
/// `webhook-id`.
pub fn verify_webhook(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<String, String> {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(format!("missing {name}"))
    };
    let (id, ts, sig) = (
        h("webhook-id")?,
        h("webhook-timestamp")?,
        h("webhook-signature")?,
    );
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = BASE64
        .decode(sig.strip_prefix("v1,").ok_or("no v1 signature")?)
        .map_err(|e| e.to_string())?;
    mac.verify_slice(&expected).map_err(|_| "bad signature")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ts: u64 = ts.parse().map_err(|_| "timestamp is not a number")?;
    if ts.abs_diff(now) > 300 {
        return Err("stale timestamp".into());
    }
    Ok(id)
}
