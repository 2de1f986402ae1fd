//! The Prometheus rules and the Grafana dashboard shipped in `tracer/dist` are valid for
//! the real tools: `promtool check rules` accepts the rules, `promtool test rules` runs
//! the unit cases of `tests/data/dropgate.rules.test.yml`, every alert has at least one
//! case that expects it to fire, and every dashboard query is valid PromQL (the fleet
//! test runs them against a real Prometheus and wants data back from each).

use std::{fmt::Write as _, path::Path, process::Command};

use dropgate_tests::{docker::on_path, may_run};

const DIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer/dist");
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data");

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// Names after `key:` on lines of a YAML file (the rule and test files are flat enough
/// that a line scan finds every alert name without a YAML parser).
fn values_of(path: &Path, key: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("read YAML")
        .lines()
        .filter_map(|line| {
            let rest = line.trim_start().trim_start_matches("- ");
            rest.strip_prefix(key)
                .map(|value| value.trim().trim_matches('"').to_owned())
        })
        .collect()
}

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() {
    if !may_run(
        "rules_pass_promtool_check_and_their_unit_tests",
        on_path("promtool"),
        "promtool (Debian package prometheus)",
    ) {
        return;
    }
    let rules = Path::new(DIST).join("dropgate.rules.yml");
    let checked = promtool(&["check", "rules", rules.to_str().expect("utf-8 path")]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    // promtool resolves rule_files relative to the test file.
    let cases = Path::new(DATA).join("dropgate.rules.test.yml");
    let tested = promtool(&["test", "rules", cases.to_str().expect("utf-8 path")]);
    assert!(tested.contains("SUCCESS"), "{tested}");

    let alerts = values_of(&rules, "alert:");
    assert!(alerts.len() >= 4, "the shipped alerts: {alerts:?}");
    let tested_alerts = values_of(&cases, "alertname:");
    for alert in &alerts {
        assert!(
            tested_alerts.contains(alert),
            "alert {alert} has no `promtool test rules` case in {}",
            cases.display()
        );
    }
}

#[test]
fn dashboard_queries_are_valid_promql() {
    if !may_run(
        "dashboard_queries_are_valid_promql",
        on_path("promtool"),
        "promtool (Debian package prometheus)",
    ) {
        return;
    }
    let queries =
        dropgate_tests::dashboard::queries(&Path::new(DIST).join("dropgate.dashboard.json"));
    assert!(queries.len() >= 10, "dashboard queries: {queries:?}");
    // promtool checks PromQL syntax as part of a rule file: wrap each query in a
    // recording rule of a throw-away file.
    let dir = dropgate_tests::tempdir::TempDir::new("dashboard-promql");
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, query) in queries.iter().enumerate() {
        let escaped = query.replace('\'', "''");
        writeln!(
            file,
            "      - record: dashboard:query_{index}\n        expr: '{escaped}'"
        )
        .expect("write to a String");
    }
    let path = dir.path().join("dashboard.rules.yml");
    std::fs::write(&path, file).expect("write the query file");
    promtool(&["check", "rules", path.to_str().expect("utf-8 path")]);
}
