//! The PromQL of the shipped Grafana dashboard (`tracer/dist/dropgate.dashboard.json`),
//! with its template variables resolved the way Grafana would for "All" hosts, so tests
//! can run every panel's query against promtool and a real Prometheus.

use std::path::Path;

/// Every panel target's `expr`, with `$instance` as the all-value `.+`.
#[must_use]
pub fn queries(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    let dashboard: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("{} is not JSON: {err}", path.display()));
    dashboard["panels"]
        .as_array()
        .expect("the dashboard has panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| {
            target["expr"]
                .as_str()
                .map(|e| e.replace("$instance", ".+"))
        })
        .collect()
}
