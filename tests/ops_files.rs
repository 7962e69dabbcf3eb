//! The operations files in docker/ stay true to the binary: every `strata_*` series the
//! Grafana dashboard and the Prometheus alert rules use is one Strata defines, and every
//! file the compose file mounts exists.

use std::collections::BTreeSet;
use std::path::Path;

use strata_pipeline::ops::metrics::Metrics;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `strata_…` identifiers in a PromQL expression.
fn series_in(expr: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("strata_") {
        let preceded_by_ident = rest[..i]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_ident {
            found.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    found
}

fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo("docker/grafana/dashboards/strata.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("a target expression").to_string())
        .collect()
}

fn alert_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo("docker/prometheus/alerts.yml")).unwrap();
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("alert rules are YAML");
    let mut exprs = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            assert!(
                rule["alert"].as_str().is_some(),
                "every rule is an alert: {rule:?}"
            );
            exprs.push(rule["expr"].as_str().expect("an expression").to_string());
        }
    }
    exprs
}

#[test]
fn dashboard_and_alerts_use_only_metrics_strata_defines() {
    let defined: BTreeSet<String> = Metrics::new().series_names().into_iter().collect();
    let mut used = BTreeSet::new();
    for expr in dashboard_exprs().iter().chain(&alert_exprs()) {
        used.extend(series_in(expr));
    }
    let unknown: Vec<_> = used.difference(&defined).collect();
    assert!(unknown.is_empty(), "not defined by Strata: {unknown:?}");
    for needed in [
        "strata_consumer_lag",
        "strata_slot_retained_wal_bytes",
        "strata_replication_lag_bytes",
        "strata_dead_letters_total",
    ] {
        assert!(
            used.contains(needed),
            "the alerts and dashboard cover {needed}"
        );
    }
}

#[test]
fn expression_scanner_finds_series_names() {
    assert_eq!(
        series_in("sum(rate(strata_events_in_total[1m])) / x_strata_no + strata_up"),
        ["strata_events_in_total", "strata_up"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}

#[test]
fn compose_mounts_files_that_exist() {
    let text = std::fs::read_to_string(repo("docker/compose.yaml")).unwrap();
    let compose: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("compose is YAML");
    let mut checked = 0;
    for (_, service) in compose["services"].as_mapping().expect("services") {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let Some(spec) = volume.as_str() else {
                continue;
            };
            let source = spec.split(':').next().unwrap_or_default();
            if source.starts_with('.') {
                assert!(
                    repo("docker").join(source).exists(),
                    "compose mounts {source}, which does not exist"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 5, "bind mounts checked: {checked}");
}
