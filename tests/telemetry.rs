//! The counters published through the `metrics` facade, rendered by the Prometheus exporter:
//! the values match what happened, and `promtool check metrics` accepts the output.
#![cfg(all(feature = "metrics", feature = "events"))]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use tower_api_key::events::{Actor, EventKind, Events, RecentEvents};
use tower_api_key::telemetry::Telemetry;
use tower_api_key::{CachedStore, KeyHash, KeyId, KeyStore, MemoryStore, OrgId};

/// The value of the sample `name{labels}` (labels as rendered, `""` for none).
fn sample(text: &str, name: &str, labels: &str) -> f64 {
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
fn promtool_check(text: &str) {
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

#[tokio::test]
async fn published_counters_match_what_happened_and_pass_promtool() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();

    // Three lookups of unknown hashes: three misses, and the negative cache holds them.
    let store = CachedStore::new(MemoryStore::new());
    for i in 0..3u8 {
        let hash = KeyHash::of(&format!("br_live_{i:0>32}"));
        assert!(store.find_by_hash(&hash).await.unwrap().is_none());
    }
    // Five events into a queue of two behind a sink that is never polled before the emits.
    let (events, delivery) = Events::builder()
        .sink(RecentEvents::new(10))
        .capacity(2)
        .start();
    let org = OrgId::from("org_1");
    for n in 0..5 {
        events.emit(
            &org,
            EventKind::KeyRevoked {
                key_id: KeyId::from(format!("key_{n}")),
                actor: Actor::System,
            },
        );
    }
    let dropped = events.dropped();
    assert!(
        dropped >= 2,
        "at most 2 queued and 1 in delivery: {dropped}"
    );
    assert!(delivery.shutdown(Duration::from_secs(5)).await);

    let telemetry = Telemetry::new().cache(&store).events(&events);
    telemetry.publish();
    let text = handle.render();

    assert_eq!(sample(&text, "tower_api_key_cache_misses_total", ""), 3.0);
    assert_eq!(
        sample(&text, "tower_api_key_cache_entries", r#"kind="unknown""#),
        3.0
    );
    assert_eq!(
        sample(&text, "tower_api_key_breaker_state", r#"backend="store""#),
        0.0
    );
    assert_eq!(
        sample(&text, "tower_api_key_events_total", r#"result="emitted""#),
        5.0
    );
    assert_eq!(
        sample(&text, "tower_api_key_events_total", r#"result="dropped""#),
        dropped as f64
    );
    assert_eq!(
        sample(&text, "tower_api_key_events_total", r#"result="delivered""#),
        5.0 - dropped as f64
    );
    assert!(text.contains("# HELP tower_api_key_cache_misses_total"));
    promtool_check(&text);
}
