//! deploy/observability through promtool (Go module): `check config`, `check rules` and the rules'
//! unit tests (`promtool test rules`); every metric a rule or a Grafana dashboard names is one the
//! code exports ([`metrics::EXPORTED`]), and every dashboard query parses as PromQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod deploy_tools;

use std::collections::BTreeSet;

use deploy_tools::{root, run};
use onceflow::telemetry::metrics::{self, Kind};
use serde_json::Value;

#[test]
fn prometheus_config_and_rules_pass_promtool_and_their_unit_tests() {
    let dir = root().join("deploy/observability");
    run(
        "promtool",
        &["check", "config", "--syntax-only", "prometheus.yml"],
        &dir,
    );
    run(
        "promtool",
        &["check", "rules", "rules/onceflow.rules.yml"],
        &dir,
    );
    let out = run(
        "promtool",
        &["test", "rules", "rules/onceflow.rules.test.yml"],
        &dir,
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Every `onceflow_…` name in `text`, and the names it uses that onceflow does not export.
fn unknown_metrics(text: &str) -> (BTreeSet<String>, Vec<String>) {
    let mut used = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("onceflow_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if boundary {
            used.insert(text[start..end].to_string());
        }
        i = end;
    }
    let known = |name: &str| {
        metrics::EXPORTED.iter().any(|(m, kind)| {
            name == *m
                || (*kind == Kind::Histogram
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|sfx| name.strip_suffix(sfx) == Some(m)))
        })
    };
    let unknown = used.iter().filter(|n| !known(n)).cloned().collect();
    (used, unknown)
}

#[test]
fn the_metric_check_catches_a_name_the_code_does_not_export() {
    let (used, unknown) = unknown_metrics(
        "rate(onceflow_dlq_records_total[5m]) + onceflow_end_to_end_seconds_bucket + \
         onceflow_dlq_record_total + onceflow_breaker_state_bucket + x_onceflow_other",
    );
    assert_eq!(used.len(), 4, "{used:?}");
    assert_eq!(
        unknown,
        ["onceflow_breaker_state_bucket", "onceflow_dlq_record_total"]
    );
}

#[test]
fn dashboards_and_rules_name_only_exported_metrics_and_parse_as_promql() {
    let dir = root().join("deploy/observability");
    let rules = std::fs::read_to_string(dir.join("rules/onceflow.rules.yml")).unwrap();
    let (used, unknown) = unknown_metrics(&rules);
    assert!(
        unknown.is_empty(),
        "rules name metrics onceflow does not export: {unknown:?}"
    );
    assert!(used.len() >= 10, "{used:?}");

    // Every dashboard expression, as a recording rule promtool parses (Grafana's variables
    // replaced by what they expand to).
    let mut exprs = Vec::new();
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(dir.join("grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut n = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap();
                let (used, unknown) = unknown_metrics(expr);
                assert!(
                    unknown.is_empty(),
                    "{}: {unknown:?} in {expr}",
                    path.display()
                );
                assert!(
                    !used.is_empty(),
                    "{}: {expr} names no onceflow metric",
                    path.display()
                );
                seen.extend(used);
                exprs.push(
                    expr.replace("$__rate_interval", "5m")
                        .replace("$adapter", ".*"),
                );
                n += 1;
            }
        }
        assert!(n > 0, "{}: no queries", path.display());
    }
    // The dashboards cover ingest, both stages, the DLQ by reason and end-to-end latency.
    for m in [
        metrics::INGEST_REQUESTS,
        metrics::PROCESSOR_RECORDS,
        metrics::DISPATCHER_RECORDS,
        metrics::DLQ_RECORDS,
        &format!("{}_bucket", metrics::END_TO_END_SECONDS),
    ] {
        assert!(seen.contains(m), "no dashboard shows {m}");
    }
    let mut file = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        file += &format!(
            "      - record: dashboard:expr{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        );
    }
    let path = std::env::temp_dir().join(format!("onceflow-dashboards-{}.yml", std::process::id()));
    std::fs::write(&path, file).unwrap();
    run(
        "promtool",
        &["check", "rules", path.to_str().unwrap()],
        &dir,
    );
    std::fs::remove_file(&path).ok();
}
