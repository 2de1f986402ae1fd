//! UTF-8 metric and label names (`--push.enable-utf8-names`, as pushgateway 1.11) with
//! real clients and a real scraper:
//! - `curl` pushes a text body with quoted names (`{"curl.metric","lbl.x"="v"}`) to a
//!   path with a `U__`-escaped label name;
//! - Python's `prometheus_client` 0.22 (from the test venv: Debian's 0.16 cannot make
//!   UTF-8 names) pushes a registry with dotted names, its grouping key naming a label
//!   `U__site_2e_id` whose value it sends as `@base64`;
//! - scrapes see the names escaped as their `Accept` asks (`underscores` without
//!   `escaping=`, quoted with `allow-utf-8`, `U__` with `values`), and the OpenMetrics
//!   one with `allow-utf-8` parses with prometheus_client's parser;
//! - Debian's Prometheus 2.42 (which asks for no escaping) scrapes the gateway and
//!   stores the underscored names, found with PromQL through its HTTP API;
//! - without the flag the same pushes get 400 with Go's text and a word on the flag,
//!   and the store stays as it was.
//!
//! Each test skips (with the reason) when a peer is missing, and fails instead when
//! `DROPGATE_E2E=require`.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use dropgate_tests::{
    gateway::{Request, Server, TempDir},
    may_run,
    prometheus::{self, Prometheus},
    venv_python,
};

const CURL: &str = "/usr/bin/curl";

/// The quoted-name text body `curl` pushes.
const CURL_BODY: &str = "# HELP \"curl.metric\" Pushed by curl.\n# TYPE \"curl.metric\" gauge\n{\"curl.metric\",\"lbl.x\"=\"v\"} 3\n";
const CURL_PATH: &str = "/metrics/job/curl_job/U__zone_2e_name/eu";

/// The Python side: the gateway's address from argv; pushes one gauge with a dotted
/// metric and label name; exits 3 with the HTTP status on an HTTP error.
const PYTHON_CLIENT: &str = r"
import sys, urllib.error
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

r = CollectorRegistry()
Gauge('py.metric', 'Pushed by Python.', ['lbl.y'], registry=r).labels('w').set(4.5)
try:
    # A '/' in the value: the client sends it as U__site_2e_id@base64/...
    push_to_gateway(sys.argv[1], job='py_job', registry=r,
                    grouping_key={'U__site_2e_id': 'a/b'})
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
    sys.exit(3)
";

/// The venv's Python when its `prometheus_client` can make UTF-8 names.
fn python_with_utf8_client() -> Option<std::path::PathBuf> {
    let python = venv_python()?;
    let check = "from prometheus_client import CollectorRegistry, Gauge; \
                 Gauge('a.b', 'x', registry=CollectorRegistry())";
    Command::new(&python)
        .args(["-c", check])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        .then_some(python)
}

/// `curl` PUTs [`CURL_BODY`] to [`CURL_PATH`]; returns the status and the body.
fn curl_push(gateway: &Server) -> (u16, String) {
    let url = format!("http://{}{CURL_PATH}", gateway.addr);
    let mut child = Command::new(CURL)
        .args([
            "-sS",
            "-X",
            "PUT",
            "--data-binary",
            "@-",
            "-w",
            "\n%{http_code}",
            &url,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run curl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(CURL_BODY.as_bytes())
        .expect("write the body to curl");
    let output = child.wait_with_output().expect("curl finishes");
    assert!(output.status.success(), "curl failed: {}", text(&output));
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = out.rsplit_once('\n').expect("status line from -w");
    (
        status.trim().parse().expect("numeric status"),
        body.to_owned(),
    )
}

fn python_push(python: &Path, gateway: &Server) -> Output {
    Command::new(python)
        .args(["-c", PYTHON_CLIENT, &gateway.addr.to_string()])
        .output()
        .expect("run python")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `exposition` through prometheus_client's OpenMetrics parser: one line per sample,
/// `name {labels} value` (labels sorted); panics with the parser's error.
fn parse_openmetrics(python: &Path, exposition: &str) -> String {
    const PARSE: &str = r"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        print(s.name, dict(sorted(s.labels.items())), s.value)
";
    let mut child = Command::new(python)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write the exposition");
    let output = child.wait_with_output().expect("python finishes");
    assert!(
        output.status.success(),
        "OpenMetrics parser refused the exposition: {}\n{exposition}",
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A scrape with `accept` (none: no header); the `Content-Type` and the body.
fn scrape(gateway: &Server, accept: Option<&str>) -> (String, String) {
    let mut request = Request::new("GET", "/metrics");
    if let Some(accept) = accept {
        request = request.header("Accept", accept);
    }
    let reply = gateway.send(&request);
    assert_eq!(reply.status, 200, "scrape: {}", reply.text());
    let content_type = reply.header("content-type").unwrap_or_default().to_owned();
    (content_type, reply.text())
}

#[test]
fn utf8_pushes_from_curl_and_python_reach_prometheus_escaped() {
    let python = python_with_utf8_client();
    if !may_run(
        "utf8_pushes_from_curl_and_python_reach_prometheus_escaped",
        python.is_some() && prometheus::installed() && Path::new(CURL).exists(),
        "curl, Debian's prometheus and prometheus-client 0.22 in the test venv (cargo xtask setup)",
    ) {
        return;
    }
    let python = python.expect("checked above");
    // Declared first so that it is removed after both servers are stopped.
    let dir = TempDir::new("utf8-prometheus");
    let gateway = Server::dropgate(&["--push.enable-utf8-names"]);

    let (status, body) = curl_push(&gateway);
    assert_eq!(status, 200, "curl push accepted: {body}");
    let pushed = python_push(&python, &gateway);
    assert!(
        pushed.status.success(),
        "python push accepted: {}",
        text(&pushed)
    );

    let (content_type, plain) = scrape(&gateway, None);
    assert!(
        content_type.ends_with("; escaping=underscores"),
        "{content_type}"
    );
    for line in [
        "# HELP curl_metric Pushed by curl.",
        "curl_metric{instance=\"\",job=\"curl_job\",lbl_x=\"v\",zone_name=\"eu\"} 3",
        "py_metric{instance=\"\",job=\"py_job\",lbl_y=\"w\",site_id=\"a/b\"} 4.5",
    ] {
        assert!(plain.lines().any(|l| l == line), "{line} in\n{plain}");
    }
    let (content_type, quoted) = scrape(
        &gateway,
        Some("text/plain;version=0.0.4;escaping=allow-utf-8"),
    );
    assert!(
        content_type.ends_with("; escaping=allow-utf-8"),
        "{content_type}"
    );
    for line in [
        "# TYPE \"curl.metric\" gauge",
        "{\"curl.metric\",instance=\"\",job=\"curl_job\",\"lbl.x\"=\"v\",\"zone.name\"=\"eu\"} 3",
        "{\"py.metric\",instance=\"\",job=\"py_job\",\"lbl.y\"=\"w\",\"site.id\"=\"a/b\"} 4.5",
    ] {
        assert!(quoted.lines().any(|l| l == line), "{line} in\n{quoted}");
    }
    // Prometheus 3's first choice: OpenMetrics with UTF-8 names, as its parser (here
    // prometheus_client's) reads it.
    let (content_type, openmetrics) = scrape(
        &gateway,
        Some("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8"),
    );
    assert!(
        content_type.ends_with("; escaping=allow-utf-8"),
        "{content_type}"
    );
    let parsed = parse_openmetrics(&python, &openmetrics);
    for sample in [
        "curl.metric {'instance': '', 'job': 'curl_job', 'lbl.x': 'v', 'zone.name': 'eu'} 3.0",
        "py.metric {'instance': '', 'job': 'py_job', 'lbl.y': 'w', 'site.id': 'a/b'} 4.5",
    ] {
        assert!(parsed.lines().any(|l| l == sample), "{sample} in\n{parsed}");
    }
    let (_, values) = scrape(&gateway, Some("text/plain;version=0.0.4;escaping=values"));
    let line = "U__curl_2e_metric{instance=\"\",job=\"curl_job\",U__lbl_2e_x=\"v\",U__zone_2e_name=\"eu\"} 3";
    assert!(values.lines().any(|l| l == line), "{line} in\n{values}");

    assert_prometheus_stores_escaped(&dir, &gateway);
}

/// Debian's Prometheus (2.42: asks for no escaping) scrapes `gateway` and stores the
/// underscored names.
fn assert_prometheus_stores_escaped(dir: &TempDir, gateway: &Server) {
    let mut prometheus = Prometheus::scraping(dir, gateway.addr, &[]);
    for (query, value) in [
        (
            r#"curl_metric{job="curl_job",zone_name="eu",lbl_x="v"}"#,
            "3",
        ),
        (r#"py_metric{job="py_job",site_id="a/b",lbl_y="w"}"#, "4.5"),
    ] {
        let answer = prometheus.query_until_found(query, Duration::from_mins(1));
        let result = &answer["data"]["result"];
        assert_eq!(
            result.as_array().map(Vec::len),
            Some(1),
            "{query}: one series under the escaped names, got {answer}"
        );
        assert_eq!(result[0]["value"][1], value, "{query}: {answer}");
    }
    assert!(prometheus.stop(), "prometheus stops on SIGTERM");
}

#[test]
fn utf8_pushes_are_refused_without_the_flag() {
    let python = python_with_utf8_client();
    if !may_run(
        "utf8_pushes_are_refused_without_the_flag",
        python.is_some() && Path::new(CURL).exists(),
        "curl and prometheus-client 0.22 in the test venv (cargo xtask setup)",
    ) {
        return;
    }
    let python = python.expect("checked above");
    let gateway = Server::dropgate(&[]);
    gateway.send(&Request::new("PUT", "/metrics/job/keep").body("kept 1\n"));
    let before = scrape(&gateway, None).1;

    let (status, body) = curl_push(&gateway);
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body,
        "text format parsing error in line 1: invalid metric name in comment (quoted UTF-8 metric and label names are accepted only with --push.enable-utf8-names)\n"
    );
    let pushed = python_push(&python, &gateway);
    assert_eq!(pushed.status.code(), Some(3), "{}", text(&pushed));
    let answer = String::from_utf8_lossy(&pushed.stdout);
    assert!(
        answer.starts_with(
            "400 text format parsing error in line 1: invalid metric name in comment ("
        ) && answer.contains("--push.enable-utf8-names"),
        "{answer}"
    );
    let after = scrape(&gateway, None).1;
    let without_times = |exposition: &str| -> Vec<String> {
        exposition
            .lines()
            .filter(|l| {
                !l.contains("push_time_seconds") && !l.contains("push_failure_time_seconds")
            })
            .filter(|l| !l.starts_with("dropgate_") && !l.contains(" dropgate_"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        without_times(&after),
        without_times(&before),
        "store unchanged"
    );
    assert!(
        after.contains("kept{instance=\"\",job=\"keep\"} 1"),
        "{after}"
    );
}
