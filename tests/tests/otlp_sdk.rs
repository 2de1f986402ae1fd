//! The real OpenTelemetry Python SDK (`opentelemetry-sdk` with
//! `opentelemetry-exporter-otlp-proto-http`, from PyPI, in `cargo xtask setup`'s venv)
//! exports a short batch job to `dropgate gateway`'s OTLP/HTTP route, as protobuf (the
//! SDK's exporter), as OTLP/JSON (the SDK's encoder written with protobuf's
//! `json_format`) and with delta temporality; a real Prometheus (Debian's, native
//! histograms on) scrapes dropgate, and PromQL returns what Prometheus's own OTLP
//! translation would store. The expected names, written down from Prometheus's
//! documentation ("OTLP Receiver", UnderscoreEscapingWithSuffixes) and the OpenTelemetry
//! Prometheus compatibility specification:
//!
//! | SDK instrument | unit | Prometheus |
//! |---|---|---|
//! | counter `jobs.processed` | `{job}` | counter `jobs_processed_total` (braces add no suffix) |
//! | up-down counter `queue.items` | | gauge `queue_items` |
//! | gauge `room.temperature` | `Cel` | gauge `room_temperature_celsius` |
//! | histogram `task.duration` | `s` | histogram `task_duration_seconds_bucket/_sum/_count` |
//! | exponential histogram `payload.size` | `By` | native histogram `payload_size_bytes` |
//! | resource `service.namespace`/`service.name` | | `job="nightly/report-pb"` |
//! | resource `service.instance.id` | | `instance="runner-7"` |
//! | other resource attributes | | `target_info{deployment_environment="e2e",telemetry_sdk_language="python",...} 1` |

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use dropgate_tests::gateway::{Server, TempDir};
use dropgate_tests::prometheus::{self, Prometheus};
use dropgate_tests::{may_run, venv_python};

fn job_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/otlp_job.py")
}

/// Runs the job in `mode` against `gateway`; panics with its output when it fails (the
/// SDK's `force_flush` and the JSON post fail on any answer but 200).
fn run_job(python: &Path, gateway: &Server, mode: &str) {
    let endpoint = format!("http://{}/otlp/v1/metrics", gateway.addr);
    let output = Command::new(python)
        .arg(job_script())
        .args([&endpoint, mode])
        .output()
        .expect("run the SDK job");
    assert!(
        output.status.success(),
        "the SDK job ({mode}) failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn sdk_available() -> Option<PathBuf> {
    let python = venv_python()?;
    Command::new(&python)
        .args([
            "-c",
            "import opentelemetry.exporter.otlp.proto.http.metric_exporter",
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
        .then_some(python)
}

#[test]
fn sdk_exports_are_scraped_by_prometheus_as_its_otlp_translation() {
    let python = sdk_available();
    if !may_run(
        "sdk_exports_are_scraped_by_prometheus_as_its_otlp_translation",
        python.is_some() && prometheus::installed(),
        "the OpenTelemetry SDK venv (cargo xtask setup) and Debian's prometheus",
    ) {
        return;
    }
    let python = python.expect("checked above");
    // Declared first so that it is removed after both servers are stopped.
    let dir = TempDir::new("otlp-prometheus");
    let gateway = Server::dropgate(&[]);
    for mode in ["protobuf", "json", "delta"] {
        run_job(&python, &gateway, mode);
    }
    let scraped = gateway.scrape();
    println!("dropgate's exposition after the SDK jobs:\n{scraped}");

    let mut prometheus =
        Prometheus::scraping(&dir, gateway.addr, &["--enable-feature=native-histograms"]);

    let series = r#"job="nightly/report-pb",instance="runner-7",otel_scope_name="nightly",otel_scope_version="1.0""#;
    let json_series = series.replace("report-pb", "report-json");
    let delta_series = series.replace("report-pb", "report-delta");
    let table: Vec<(&str, String, &str)> = vec![
        ("counter", format!(r#"jobs_processed_total{{{series},kind="pdf"}}"#), "5"),
        ("counter, second series", format!(r#"jobs_processed_total{{{series},kind="csv"}}"#), "2"),
        ("up-down counter", format!("queue_items{{{series}}}"), "3"),
        ("gauge with unit", format!(r#"room_temperature_celsius{{{series},room="a-1"}}"#), "21.5"),
        ("histogram count", format!("task_duration_seconds_count{{{series}}}"), "3"),
        ("histogram sum", format!("task_duration_seconds_sum{{{series}}}"), "3.204"),
        // Prometheus writes `le` as "5" from text, "5.0" from a protobuf scrape.
        ("histogram bucket", format!(r#"task_duration_seconds_bucket{{{series},le=~"5|5.0"}}"#), "3"),
        ("exponential histogram count", format!("histogram_count(payload_size_bytes{{{series}}})"), "4"),
        ("exponential histogram sum", format!("histogram_sum(payload_size_bytes{{{series}}})"), "5600"),
        (
            "target_info",
            r#"target_info{job="nightly/report-pb",instance="runner-7",deployment_environment="e2e",telemetry_sdk_language="python",telemetry_sdk_name="opentelemetry"}"#.to_owned(),
            "1",
        ),
        ("JSON export, counter", format!(r#"jobs_processed_total{{{json_series},kind="pdf"}}"#), "5"),
        ("JSON export, native histogram", format!("histogram_count(payload_size_bytes{{{json_series}}})"), "4"),
        ("delta: the sum of 1+2+3+4", format!(r#"jobs_processed_total{{{delta_series},kind="pdf"}}"#), "10"),
    ];
    let mut failures = Vec::new();
    for (name, query, want) in &table {
        let answer = prometheus.query_until_found(query, Duration::from_secs(30));
        let result = &answer["data"]["result"];
        let got = result[0]["value"][1].as_str().unwrap_or("<none>");
        let count = result.as_array().map_or(0, Vec::len);
        println!("{name}: {query} = {got}");
        if got != *want || count != 1 {
            failures.push(format!(
                "{name}: {query} gave {count} series, value {got}, want {want}: {answer}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(prometheus.stop(), "prometheus stops on SIGTERM");
}
