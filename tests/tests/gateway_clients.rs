//! Real clients and peers against a running `dropgate gateway`:
//! - Python's `prometheus_client` (Debian's python3-prometheus-client): `push_to_gateway`,
//!   `pushadd_to_gateway` and `delete_from_gateway`, with grouping keys that need base64;
//! - `promtool check metrics` on the exposition of a store with every metric type;
//! - a real Prometheus server scraping the gateway with `honor_labels: true`, queried
//!   with PromQL through its HTTP API;
//! - persistence with the real binary: push, SIGTERM, restart on the same file, and the
//!   exposition of the store is byte-identical (push times are persisted, so nothing is
//!   masked; dropgate's own `dropgate_*` request counters belong to the process and
//!   start again at zero, so they are left out).
//!
//! Each test skips (with the reason) when its peer is not installed, and fails instead
//! when `DROPGATE_E2E=require`.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use dropgate_tests::{
    gateway::{without_families, Reply, Request, Server, TempDir, DROPGATE_OWN_PREFIX},
    may_run,
    prometheus::{self, Prometheus},
    protobuf as pb,
};

const PYTHON: &str = "/usr/bin/python3";
const PROMTOOL: &str = "/usr/bin/promtool";

/// The Python side: builds registries and calls the client's functions; the action and
/// the gateway's address come from argv.
const PYTHON_CLIENT: &str = r"
import sys
from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, Summary,
                               delete_from_gateway, push_to_gateway, pushadd_to_gateway)

gateway, action = sys.argv[1], sys.argv[2]
# '/' in the job and the instance: the client sends them as @base64.
job = 'nightly/batch'
key = {'instance': 'host/1', 'zone': 'eu-west'}

def first():
    r = CollectorRegistry()
    Gauge('py_temperature_celsius', 'Temperature.', registry=r).set(21.5)
    Counter('py_jobs', 'Jobs done.', ['kind'], registry=r).labels('batch').inc(3)
    Summary('py_duration_seconds', 'Duration.', registry=r).observe(1.5)
    Histogram('py_size_bytes', 'Size.', buckets=[10, 100], registry=r).observe(50)
    return r

def second():
    r = CollectorRegistry()
    Gauge('py_extra', 'Extra.', registry=r).set(7)
    return r

if action == 'push':
    push_to_gateway(gateway, job=job, registry=first(), grouping_key=key)
elif action == 'pushadd':
    pushadd_to_gateway(gateway, job=job, registry=second(), grouping_key=key)
elif action == 'push-second':
    push_to_gateway(gateway, job=job, registry=second(), grouping_key=key)
elif action == 'push-empty-instance':
    push_to_gateway(gateway, job='py_empty', registry=second(), grouping_key={'instance': ''})
elif action == 'delete':
    delete_from_gateway(gateway, job=job, grouping_key=key)
elif action == 'delete-empty-instance':
    delete_from_gateway(gateway, job='py_empty', grouping_key={'instance': ''})
else:
    sys.exit('unknown action ' + action)
";

/// Runs one action of [`PYTHON_CLIENT`] against `gateway`; panics with its output if it
/// fails (the client raises on any non-2xx answer).
fn python_client(gateway: &Server, action: &str) {
    let output = Command::new(PYTHON)
        .args(["-c", PYTHON_CLIENT, &gateway.addr.to_string(), action])
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "prometheus_client {action} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn python_client_installed() -> bool {
    Path::new(PYTHON).exists()
        && Command::new(PYTHON)
            .args(["-c", "import prometheus_client"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// The lines of `exposition` for family `name` (its samples and its `_sum`, `_count`,
/// `_bucket`, `_total` siblings), without HELP/TYPE.
fn samples<'a>(exposition: &'a str, prefix: &str) -> Vec<&'a str> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .collect()
}

#[test]
fn python_client_pushes_adds_and_deletes() {
    if !may_run(
        "python_client_pushes_adds_and_deletes",
        python_client_installed(),
        "Debian's python3 with python3-prometheus-client",
    ) {
        return;
    }
    let gateway = Server::dropgate(&[]);
    let group = r#"instance="host/1",job="nightly/batch",zone="eu-west""#;

    python_client(&gateway, "push");
    let exposition = gateway.scrape();
    for want in [
        format!("py_temperature_celsius{{{group}}} 21.5"),
        format!("py_duration_seconds_sum{{{group}}} 1.5"),
        format!("py_duration_seconds_count{{{group}}} 1"),
        // Labels sorted by name, but Go writes `le` last.
        r#"py_jobs_total{instance="host/1",job="nightly/batch",kind="batch",zone="eu-west"} 3"#
            .to_owned(),
        format!("py_size_bytes_bucket{{{group},le=\"10\"}} 0"),
        format!("py_size_bytes_bucket{{{group},le=\"100\"}} 1"),
        format!("py_size_bytes_bucket{{{group},le=\"+Inf\"}} 1"),
        format!("push_failure_time_seconds{{{group}}} 0"),
        "# HELP py_temperature_celsius Temperature.".to_owned(),
        "# TYPE py_jobs_total counter".to_owned(),
        "# TYPE py_duration_seconds summary".to_owned(),
        "# TYPE py_size_bytes histogram".to_owned(),
    ] {
        assert!(
            exposition.lines().any(|l| l == want),
            "after push_to_gateway, want the line {want:?} in:\n{exposition}"
        );
    }
    assert_eq!(
        samples(&exposition, "push_time_seconds{").len(),
        1,
        "one group after the first push:\n{exposition}"
    );

    python_client(&gateway, "pushadd");
    let exposition = gateway.scrape();
    for want in [
        format!("py_extra{{{group}}} 7"),
        format!("py_temperature_celsius{{{group}}} 21.5"),
    ] {
        assert!(
            exposition.lines().any(|l| l == want),
            "pushadd_to_gateway (POST) adds and keeps the rest: want {want:?} in:\n{exposition}"
        );
    }

    python_client(&gateway, "push-second");
    let exposition = gateway.scrape();
    assert!(
        exposition
            .lines()
            .any(|l| l == format!("py_extra{{{group}}} 7")),
        "push_to_gateway (PUT) stores the new registry:\n{exposition}"
    );
    assert!(
        samples(&exposition, "py_temperature_celsius").is_empty()
            && samples(&exposition, "py_jobs").is_empty(),
        "push_to_gateway (PUT) replaces the whole group:\n{exposition}"
    );

    python_client(&gateway, "push-empty-instance");
    let exposition = gateway.scrape();
    assert!(
        exposition
            .lines()
            .any(|l| l == r#"py_extra{instance="",job="py_empty"} 7"#),
        "an empty grouping value (sent as instance@base64/=) is a group of its own:\n{exposition}"
    );

    python_client(&gateway, "delete");
    let exposition = gateway.scrape();
    assert!(
        !exposition.contains("nightly/batch"),
        "delete_from_gateway removes the group:\n{exposition}"
    );
    assert!(
        exposition.contains(r#"job="py_empty""#),
        "delete_from_gateway leaves other groups alone:\n{exposition}"
    );
    python_client(&gateway, "delete-empty-instance");
    let exposition = gateway.scrape();
    assert!(
        samples(&exposition, "push_time_seconds").is_empty(),
        "every group deleted:\n{exposition}"
    );
}

/// A text push with every metric type, following promtool's lint rules (HELP, `_total`
/// on counters, base units).
const LINT_CLEAN_TEXT: &str = "\
# HELP app_requests_total Requests handled.
# TYPE app_requests_total counter
app_requests_total{code=\"200\"} 1027
app_requests_total{code=\"500\"} 3
# HELP app_temperature_celsius Temperature of the \\\\ room \\n now.
# TYPE app_temperature_celsius gauge
app_temperature_celsius{room=\"a \\\"b\\\"\"} -3.5
# HELP app_duration_seconds Duration of a run.
# TYPE app_duration_seconds summary
app_duration_seconds{quantile=\"0.5\"} 0.25
app_duration_seconds{quantile=\"0.99\"} 1.5
app_duration_seconds_sum 30.5
app_duration_seconds_count 100
# HELP app_size_bytes Size of the output.
# TYPE app_size_bytes histogram
app_size_bytes_bucket{le=\"1024\"} 5
app_size_bytes_bucket{le=\"1.048576e+06\"} 9
app_size_bytes_bucket{le=\"+Inf\"} 10
app_size_bytes_sum 4.2e+06
app_size_bytes_count 10
# HELP app_ratio An untyped value.
# TYPE app_ratio untyped
app_ratio NaN
";

/// The same families once more, in protobuf, under other names.
fn lint_clean_protobuf() -> Vec<u8> {
    pb::delimited(&[
        pb::family(
            "pb_events_total",
            Some("Events seen."),
            pb::COUNTER,
            &[pb::metric(&[("kind", "x")], 3, &pb::simple(12.0), None)],
        ),
        pb::family(
            "pb_queue_length",
            Some("Queue length."),
            pb::GAUGE,
            &[pb::metric(&[], 2, &pb::simple(4.0), None)],
        ),
        pb::family(
            "pb_latency_seconds",
            Some("Latency."),
            pb::SUMMARY,
            &[pb::metric(
                &[],
                4,
                &pb::summary(10, 2.5, &[(0.5, 0.2), (0.9, 0.7)]),
                None,
            )],
        ),
        pb::family(
            "pb_payload_bytes",
            Some("Payload sizes."),
            pb::HISTOGRAM,
            &[pb::metric(
                &[],
                7,
                &pb::histogram(5, 123.0, &[(10.0, 1), (100.0, 4)]),
                None,
            )],
        ),
        pb::family(
            "pb_flag",
            Some("Untyped flag."),
            pb::UNTYPED,
            &[pb::metric(&[], 5, &pb::simple(1.0), None)],
        ),
    ])
}

fn push(gateway: &Server, request: &Request, what: &str) {
    let reply = gateway.send(request);
    assert_eq!(reply.status, 200, "{what}: {}", reply.text());
}

#[test]
fn promtool_accepts_the_exposition() {
    if !may_run(
        "promtool_accepts_the_exposition",
        Path::new(PROMTOOL).exists(),
        "Debian's promtool (apt-get install prometheus)",
    ) {
        return;
    }
    let gateway = Server::dropgate(&[]);
    push(
        &gateway,
        &Request::new("PUT", "/metrics/job/lint/instance/a").body(LINT_CLEAN_TEXT),
        "text push of every type",
    );
    push(
        &gateway,
        &Request::new("PUT", "/metrics/job/lint/instance/b")
            .body(LINT_CLEAN_TEXT.replace("1027", "5")),
        "the same families in a second group",
    );
    push(
        &gateway,
        &Request::new("PUT", "/metrics/job@base64/bGludC9wYg/instance/")
            .header("Content-Type", pb::CONTENT_TYPE)
            .body(lint_clean_protobuf()),
        "protobuf push of every type",
    );
    let exposition = gateway.scrape();
    for kind in ["counter", "gauge", "summary", "histogram", "untyped"] {
        assert!(
            exposition.contains(&format!(" {kind}\n")),
            "the store has a {kind}:\n{exposition}"
        );
    }

    let mut promtool = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    promtool
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(exposition.as_bytes())
        .expect("feed the exposition to promtool");
    let output = promtool.wait_with_output().expect("wait for promtool");
    assert!(
        output.status.success(),
        "promtool check metrics failed ({}): {}{}\non:\n{exposition}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn prometheus_scrapes_the_pushed_value() {
    if !may_run(
        "prometheus_scrapes_the_pushed_value",
        prometheus::installed(),
        "Debian's prometheus (apt-get install prometheus)",
    ) {
        return;
    }
    // Declared first so that it is removed after both servers are stopped.
    let dir = TempDir::new("prometheus");
    let gateway = Server::dropgate(&[]);
    push(
        &gateway,
        &Request::new("PUT", "/metrics/job/pushed_job/instance/box1")
            .body("# HELP e2e_probe_value A value to find.\n# TYPE e2e_probe_value gauge\ne2e_probe_value{kind=\"e2e\"} 42.5\n"),
        "push the probe",
    );

    let mut prometheus = Prometheus::scraping(&dir, gateway.addr, &[]);

    let answer = prometheus.query_until_found(
        r#"e2e_probe_value{job="pushed_job",instance="box1"}"#,
        Duration::from_mins(1),
    );
    let result = &answer["data"]["result"];
    assert_eq!(
        result.as_array().map(Vec::len),
        Some(1),
        "one series for the pushed value, got {answer}"
    );
    assert_eq!(
        result[0]["value"][1], "42.5",
        "PromQL returns the pushed value: {answer}"
    );
    assert_eq!(
        result[0]["metric"]["kind"], "e2e",
        "the pushed labels survive: {answer}"
    );

    // honor_labels: the pushed job wins over the scrape job's name.
    let scraped_as = prometheus.query_until_found(r#"up{job="dropgate"}"#, Duration::from_secs(30));
    assert_eq!(
        scraped_as["data"]["result"][0]["value"][1], "1",
        "prometheus scrapes the gateway successfully: {scraped_as}"
    );
    let stolen = prometheus.query_until_found(
        r#"e2e_probe_value{job="dropgate"}"#,
        Duration::from_millis(1),
    );
    assert_eq!(
        stolen["data"]["result"].as_array().map(Vec::len),
        Some(0),
        "with honor_labels the pushed job label is kept: {stolen}"
    );
    assert!(prometheus.stop(), "prometheus stops on SIGTERM");
}

/// Everything a scrape can show of the store: text, protobuf and the JSON API. The text
/// leaves out dropgate's own families (request counters of this process, which start
/// at zero again after a restart); so does the comparison of the protobuf scrape.
fn snapshot(gateway: &Server) -> (String, Reply, Reply) {
    let protobuf =
        gateway.send(&Request::new("GET", "/metrics").header("Accept", pb::CONTENT_TYPE));
    assert_eq!(protobuf.status, 200, "protobuf scrape");
    let api = gateway.get("/api/v1/metrics");
    assert_eq!(api.status, 200, "/api/v1/metrics");
    (
        without_families(&gateway.scrape(), &[DROPGATE_OWN_PREFIX]),
        protobuf,
        api,
    )
}

#[test]
fn persistence_survives_a_restart_byte_for_byte() {
    let dir = TempDir::new("persistence");
    let file = dir.join("store");
    let persistence = format!("--persistence.file={}", file.display());
    let flags = [persistence.as_str(), "--persistence.interval=5m"];
    let mut gateway = Server::dropgate(&flags);

    push(
        &gateway,
        &Request::new("PUT", "/metrics/job/persist/instance/a").body(LINT_CLEAN_TEXT),
        "text push of every type",
    );
    push(
        &gateway,
        &Request::new("PUT", "/metrics/job@base64/cC9x/path@base64/L3Zhci90bXA")
            .header("Content-Type", pb::CONTENT_TYPE)
            .body(lint_clean_protobuf()),
        "protobuf push into a base64 group",
    );
    push(
        &gateway,
        &Request::new("POST", "/metrics/job/persist/instance/a").body("added_later 1\n"),
        "POST into the first group",
    );
    push(
        &gateway,
        &Request::new("PUT", "/metrics/job/persist/instance/").body("empty_instance 2\n"),
        "a group with an empty instance",
    );
    let rejected = gateway.send(
        &Request::new("PUT", "/metrics/job/rejected")
            .body("# TYPE app_requests_total gauge\napp_requests_total 1\n"),
    );
    assert_eq!(
        rejected.status,
        400,
        "a type clash is rejected and leaves a failure time: {}",
        rejected.text()
    );
    let before = snapshot(&gateway);
    assert!(
        before
            .0
            .contains(r#"push_time_seconds{instance="",job="rejected"} 0"#),
        "the rejected push created its group with push_time_seconds 0:\n{}",
        before.0
    );

    assert!(
        gateway.terminate().success(),
        "dropgate exits cleanly on SIGTERM"
    );
    assert!(file.exists(), "the store was written on SIGTERM");
    drop(gateway);

    for restart in 1..=2 {
        let mut again = Server::dropgate(&flags);
        let after = snapshot(&again);
        assert_eq!(
            after.0, before.0,
            "restart {restart}: the text exposition is byte-identical"
        );
        let store_families = |reply: &Reply| {
            pb::families_except(&reply.body, DROPGATE_OWN_PREFIX)
                .expect("a well-formed delimited protobuf exposition")
        };
        assert_eq!(
            store_families(&after.1),
            store_families(&before.1),
            "restart {restart}: the protobuf exposition is byte-identical"
        );
        assert_eq!(
            after.2.text(),
            before.2.text(),
            "restart {restart}: /api/v1/metrics is identical, time stamps included"
        );
        assert!(
            again.terminate().success(),
            "dropgate exits cleanly on SIGTERM after restart {restart}"
        );
    }
}

const OPENMETRICS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Python's `prometheus_client` OpenMetrics parser reads dropgate's OpenMetrics answer
/// for every pushed shape (the Python client's text pushes and the protobuf families,
/// one with an exemplar); prints `name type samples exemplars` per family.
const PYTHON_OPENMETRICS: &str = r"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for f in text_string_to_metric_families(sys.stdin.read()):
    ex = sum(1 for s in f.samples if s.exemplar is not None)
    print(f.name, f.type, len(f.samples), ex)
";

/// Pushes every shape: the Python client's families, the protobuf ones, and a counter
/// with an exemplar stamped now (returned, in seconds).
fn push_every_shape_with_an_exemplar(gateway: &Server) -> u64 {
    python_client(gateway, "push");
    push(
        gateway,
        &Request::new("PUT", "/metrics/job/pb")
            .header("Content-Type", pb::CONTENT_TYPE)
            .body(lint_clean_protobuf()),
        "push the protobuf families",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let counter = pb::counter_with_exemplar(5.0, &[("trace_id", "4bf92f3577b34da6")], 1.0, now);
    push(
        gateway,
        &Request::new("PUT", "/metrics/job/traced")
            .header("Content-Type", pb::CONTENT_TYPE)
            .body(pb::delimited(&[pb::family(
                "om_requests_total",
                Some("Requests with a traced one."),
                pb::COUNTER,
                &[pb::metric(&[("path", "/x")], 3, &counter, None)],
            )])),
        "push the counter with an exemplar",
    );
    now
}

/// `prometheus_client`'s OpenMetrics parser reads the answer; every family is there.
fn assert_prometheus_client_parses_openmetrics(gateway: &Server) {
    let scrape =
        gateway.send(&Request::new("GET", "/metrics").header("Accept", OPENMETRICS_ACCEPT));
    assert_eq!(scrape.status, 200);
    let mut python = Command::new(PYTHON)
        .args(["-c", PYTHON_OPENMETRICS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    python
        .stdin
        .take()
        .expect("stdin")
        .write_all(&scrape.body)
        .expect("feed the exposition");
    let out = python.wait_with_output().expect("python3 ends");
    let parsed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "prometheus_client's OpenMetrics parser refused the answer: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        scrape.text()
    );
    for family in [
        "py_temperature_celsius gauge",
        "py_jobs counter",
        "py_duration_seconds summary",
        "py_size_bytes histogram",
        "pb_events counter",
        "pb_queue_length gauge",
        "pb_latency_seconds summary",
        "pb_payload_bytes histogram",
        "pb_flag unknown",
        "om_requests counter 1 1",
    ] {
        assert!(
            parsed.lines().any(|l| l.starts_with(family)),
            "{family:?} not parsed:\n{parsed}"
        );
    }
}

/// A real Prometheus with exemplar storage scrapes over OpenMetrics and returns the
/// pushed exemplar from `query_exemplars`.
fn assert_prometheus_keeps_the_exemplar(dir: &TempDir, gateway: &Server, now: u64) {
    let mut prometheus =
        Prometheus::scraping(dir, gateway.addr, &["--enable-feature=exemplar-storage"]);
    let answer = prometheus.query_until_found(
        r#"om_requests_total{job="traced",path="/x"}"#,
        Duration::from_mins(1),
    );
    assert_eq!(answer["data"]["result"][0]["value"][1], "5", "{answer}");
    let path = format!(
        "/api/v1/query_exemplars?query=om_requests_total&start={}&end={}",
        now - 60,
        now + 600
    );
    let exemplars = prometheus.poll(&path, Duration::from_secs(30));
    let first = &exemplars["data"][0]["exemplars"][0];
    assert_eq!(
        first["labels"]["trace_id"], "4bf92f3577b34da6",
        "{exemplars}"
    );
    assert_eq!(first["value"], "1", "{exemplars}");
    assert!(prometheus.stop(), "prometheus stops on SIGTERM");
}

#[test]
fn openmetrics_parses_with_prometheus_client_and_prometheus_keeps_the_exemplar() {
    let tools = prometheus::installed() && python_client_installed();
    if !may_run(
        "openmetrics_parses_with_prometheus_client_and_prometheus_keeps_the_exemplar",
        tools,
        "Debian's prometheus and python3-prometheus-client",
    ) {
        return;
    }
    let dir = TempDir::new("openmetrics");
    let gateway = Server::dropgate(&[]);
    let now = push_every_shape_with_an_exemplar(&gateway);
    assert_prometheus_client_parses_openmetrics(&gateway);
    assert_prometheus_keeps_the_exemplar(&dir, &gateway, now);
}
