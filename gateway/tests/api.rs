//! Handler tests: every route and status of the API, through `app(state).oneshot(..)`,
//! without a socket. Expected texts and headers are what the Go pushgateway 1.5.1
//! answers (checked against the binary), except where the spec lists a fix.

use std::io::Write as _;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use flate2::write::GzEncoder;
use flate2::Compression;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use gateway::api::{app, AppState};
use gateway::config::GatewayConfig;
use gateway::model::{Gauge, LabelPair, Metric, MetricFamily, MetricType};
use gateway::source::{MetricSource, NoSource};

mod common;

use common::{cases, verdicts, EXTRA};
const PROTOBUF: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// A tracer stand-in: one counter family.
struct TraceSource;

impl MetricSource for TraceSource {
    fn collect(&self) -> Vec<MetricFamily> {
        vec![MetricFamily {
            name: Some("dropgate_packets_dropped_total".to_owned()),
            help: Some("Packets dropped.".to_owned()),
            r#type: Some(MetricType::Counter as i32),
            metric: vec![Metric {
                label: vec![LabelPair::new("reason", "IP_INADDRERRORS")],
                counter: Some(gateway::model::Counter {
                    value: Some(3.0),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            unit: None,
        }]
    }
}

struct Gw {
    router: Router,
    state: AppState,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("bodies here are UTF-8")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |v| v.to_str().expect("header is ASCII"))
    }
}

fn gateway_with(config: &GatewayConfig, source: Arc<dyn MetricSource>) -> Gw {
    let state = AppState::with_empty_store(config, source);
    Gw {
        router: app(state.clone()),
        state,
    }
}

fn gateway() -> Gw {
    gateway_with(&GatewayConfig::default(), Arc::new(NoSource))
}

impl Gw {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body.into()).expect("valid request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body collects")
            .to_bytes()
            .to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn put(&self, path: &str, body: &str) -> Answer {
        self.call(Method::PUT, path, &[], body.to_owned()).await
    }

    async fn post(&self, path: &str, body: &str) -> Answer {
        self.call(Method::POST, path, &[], body.to_owned()).await
    }

    /// PUT of `families` as delimited protobuf (the Go client's push format).
    async fn put_protobuf(&self, path: &str, families: &[MetricFamily]) -> Answer {
        let mut body = Vec::new();
        gateway::codec::protobuf::encode_delimited(families, &mut body);
        self.call(Method::PUT, path, &[("content-type", PROTOBUF)], body)
            .await
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, &[], Body::empty()).await
    }

    /// The exposition without the push gauges (their values are times).
    async fn scrape_without_push_times(&self) -> String {
        let text = self.get("/metrics").await.text();
        drop_families(&text, &["push_time_seconds", "push_failure_time_seconds"])
    }
}

fn drop_families(text: &str, names: &[&str]) -> String {
    let mut kept = String::new();
    for line in text.lines() {
        let name = line
            .trim_start_matches("# HELP ")
            .trim_start_matches("# TYPE ")
            .split(['{', ' '])
            .next()
            .unwrap_or_default();
        if !names.contains(&name) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept
}

fn push_gauge(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.parse().expect("gauge value is a float"))
}

#[tokio::test]
async fn put_then_scrape_shows_grouping_labels_sorted_with_instance() {
    let gw = gateway();
    let answer = gw
        .put(
            "/metrics/job/backup/zone/eu",
            "# HELP m Help.\nm{job=\"x\",a=\"1\"} 1\n",
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer.body.is_empty(),
        "200 with an empty body, as upstream"
    );

    let scrape = gw.get("/metrics").await;
    assert_eq!(scrape.status, StatusCode::OK);
    assert_eq!(
        scrape.header("content-type"),
        "text/plain; version=0.0.4; charset=utf-8; escaping=values"
    );
    assert_eq!(
        drop_families(
            &scrape.text(),
            &["push_time_seconds", "push_failure_time_seconds"]
        ),
        "# HELP m Help.\n# TYPE m untyped\nm{a=\"1\",instance=\"\",job=\"backup\",zone=\"eu\"} 1\n"
    );
    let text = scrape.text();
    let labels = "instance=\"\",job=\"backup\",zone=\"eu\"";
    assert!(push_gauge(&text, "push_time_seconds", labels).expect("push time set") > 1e9);
    assert_eq!(
        push_gauge(&text, "push_failure_time_seconds", labels),
        Some(0.0)
    );
    assert!(text.contains(
        "# HELP push_time_seconds Last Unix time when changing this group in the Pushgateway succeeded.\n"
    ));
}

#[tokio::test]
async fn put_replaces_the_group_and_post_only_the_named_families() {
    let gw = gateway();
    gw.put("/metrics/job/j", "a 1\nb 1\n").await;
    assert_eq!(
        gw.post("/metrics/job/j", "b 2\nc 2\n").await.status,
        StatusCode::OK
    );
    assert_eq!(
        gw.scrape_without_push_times().await,
        "# TYPE a untyped\na{instance=\"\",job=\"j\"} 1\n# TYPE b untyped\nb{instance=\"\",job=\"j\"} 2\n# TYPE c untyped\nc{instance=\"\",job=\"j\"} 2\n"
    );
    assert_eq!(
        gw.put("/metrics/job/j", "c 3\n").await.status,
        StatusCode::OK
    );
    assert_eq!(
        gw.scrape_without_push_times().await,
        "# TYPE c untyped\nc{instance=\"\",job=\"j\"} 3\n"
    );
}

#[tokio::test]
async fn empty_bodies_put_leaves_only_push_gauges_post_moves_push_time() {
    let gw = gateway();
    gw.put("/metrics/job/j", "a 1\n").await;
    let before = gw.get("/metrics").await.text();
    assert_eq!(gw.post("/metrics/job/j", "").await.status, StatusCode::OK);
    assert_eq!(
        gw.scrape_without_push_times().await,
        "# TYPE a untyped\na{instance=\"\",job=\"j\"} 1\n"
    );
    let after = gw.get("/metrics").await.text();
    let labels = "instance=\"\",job=\"j\"";
    assert!(
        push_gauge(&after, "push_time_seconds", labels)
            >= push_gauge(&before, "push_time_seconds", labels)
    );

    assert_eq!(gw.put("/metrics/job/j", "").await.status, StatusCode::OK);
    assert_eq!(gw.scrape_without_push_times().await, "");
    let text = gw.get("/metrics").await.text();
    assert!(push_gauge(&text, "push_time_seconds", labels).is_some());
    assert!(push_gauge(&text, "push_failure_time_seconds", labels).is_some());
}

#[tokio::test]
async fn delete_answers_202_and_removes_exactly_that_group() {
    let gw = gateway();
    gw.put("/metrics/job/j/instance/a", "m 1\n").await;
    gw.put("/metrics/job/j/instance/b", "m 2\n").await;
    let absent = gw
        .call(Method::DELETE, "/metrics/job/nothere", &[], Body::empty())
        .await;
    assert_eq!(absent.status, StatusCode::ACCEPTED);
    let partial_key = gw
        .call(Method::DELETE, "/metrics/job/j", &[], Body::empty())
        .await;
    assert_eq!(partial_key.status, StatusCode::ACCEPTED);
    assert_eq!(
        gw.state.store().group_count(),
        2,
        "only the exact key is deleted"
    );
    let deleted = gw
        .call(
            Method::DELETE,
            "/metrics/job/j/instance/a",
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(deleted.status, StatusCode::ACCEPTED);
    assert_eq!(
        gw.scrape_without_push_times().await,
        "# TYPE m untyped\nm{instance=\"b\",job=\"j\"} 2\n"
    );
}

#[tokio::test]
async fn base64_job_and_label_values() {
    let gw = gateway();
    // job "/var/backup", path "/tmp", empty "e"
    let answer = gw
        .put(
            "/metrics/job@base64/L3Zhci9iYWNrdXA/path@base64/L3RtcA==/e@base64/=",
            "m 1\n",
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        gw.scrape_without_push_times().await,
        "# TYPE m untyped\nm{e=\"\",instance=\"\",job=\"/var/backup\",path=\"/tmp\"} 1\n"
    );
    let delete = gw
        .call(
            Method::DELETE,
            "/metrics/job@base64/L3Zhci9iYWNrdXA/path@base64/L3RtcA/e/",
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(delete.status, StatusCode::ACCEPTED);
    assert_eq!(
        gw.state.store().group_count(),
        0,
        "the same key, written differently"
    );
}

#[tokio::test]
async fn bad_push_urls_answer_400_with_upstreams_texts() {
    let gw = gateway();
    let table = [
        (
            "odd components",
            "/metrics/job/x/a",
            "odd number of components in label string \"/a\"\n",
        ),
        (
            "decoded before split",
            "/metrics/job/x/a%2Fb/c",
            "odd number of components in label string \"/a/b/c\"\n",
        ),
        (
            "reserved label name",
            "/metrics/job/x/__a/b",
            "improper label name \"__a\"\n",
        ),
        (
            "bad label name",
            "/metrics/job/x/a-b/c",
            "improper label name \"a-b\" (label names beyond [a-zA-Z_][a-zA-Z0-9_]* need --push.enable-utf8-names)\n",
        ),
        (
            "bad base64 value",
            "/metrics/job/x/a@base64/!!",
            "invalid base64 encoding for label a=\"!!\": illegal base64 data at input byte 0\n",
        ),
        (
            "empty job",
            "/metrics/job@base64/=",
            "job name is required\n",
        ),
    ];
    for (name, path, want) in table {
        for method in [Method::PUT, Method::POST, Method::DELETE] {
            let answer = gw.call(method.clone(), path, &[], "m 1\n").await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{name} {method}");
            assert_eq!(answer.text(), want, "{name} {method}");
            assert_eq!(
                answer.header("content-type"),
                "text/plain; charset=utf-8",
                "{name}"
            );
            assert_eq!(answer.header("x-content-type-options"), "nosniff", "{name}");
        }
    }
    assert_eq!(gw.state.store().group_count(), 0, "nothing was stored");
}

#[tokio::test]
async fn the_38_parser_cases_get_upstreams_status_and_text() {
    let cases = cases();
    let verdicts = verdicts();
    assert_eq!(cases.len(), 38);
    for (name, body) in cases {
        let (status, text) = verdicts.get(&name).expect("every case has a verdict");
        let gw = gateway();
        let answer = gw.put("/metrics/job/case", &body).await;
        assert_eq!(answer.status.as_u16(), *status, "{name}: {}", answer.text());
        assert!(
            answer.text().starts_with(text.as_str()),
            "{name}: got {:?}, want prefix {text:?}",
            answer.text()
        );
        let stored = gw.state.store().group_count();
        if text.starts_with("text format parsing error") {
            assert_eq!(stored, 0, "{name}: a parse error changes nothing");
        } else {
            assert_eq!(stored, 1, "{name}: success or rejection leaves the group");
        }
    }
}

#[derive(serde::Deserialize)]
struct ExtraCase {
    name: String,
    body: String,
    status: u16,
    #[serde(default)]
    exposition: String,
}

#[tokio::test]
async fn upstreams_extra_cases_give_the_same_status_and_exposition() {
    let cases: Vec<ExtraCase> = serde_json::from_str(EXTRA).expect("array of cases");
    let mut mismatches = Vec::new();
    for case in &cases {
        let gw = gateway();
        let answer = gw.put("/metrics/job/diff", &case.body).await;
        if answer.status.as_u16() != case.status {
            mismatches.push(format!(
                "{}: status {} want {}: {}",
                case.name,
                answer.status,
                case.status,
                answer.text()
            ));
            continue;
        }
        if case.status == 200 {
            let got = gw.scrape_without_push_times().await;
            if got != case.exposition {
                mismatches.push(format!(
                    "{}: exposition\n{got}\nwant\n{}",
                    case.name, case.exposition
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}

#[tokio::test]
async fn a_rejected_push_records_the_failure_and_changes_nothing_else() {
    let gw = gateway();
    gw.put("/metrics/job/a", "# TYPE m gauge\nm 1\n").await;
    let before = gw.scrape_without_push_times().await;

    let clash = gw.put("/metrics/job/b", "# TYPE m counter\nm 1\n").await;
    assert_eq!(clash.status, StatusCode::BAD_REQUEST);
    assert!(clash
        .text()
        .starts_with("pushed metrics are invalid or inconsistent with existing metrics: metric family \"m\" is pushed as COUNTER but group {job=\"a\"} has it as GAUGE"));
    assert_eq!(gw.scrape_without_push_times().await, before);
    let text = gw.get("/metrics").await.text();
    let b = "instance=\"\",job=\"b\"";
    assert_eq!(
        push_gauge(&text, "push_time_seconds", b),
        Some(0.0),
        "created with push time 0"
    );
    assert!(push_gauge(&text, "push_failure_time_seconds", b).expect("failure set") > 1e9);

    let json = gw.get("/api/v1/metrics").await.json();
    let b_group = json["data"]
        .as_array()
        .expect("data is an array")
        .iter()
        .find(|g| g["labels"]["job"] == "b")
        .expect("group b exists");
    assert_eq!(b_group["last_push_successful"], false);

    // A parse error changes nothing at all, not even the failure time.
    let snapshot = gw.get("/metrics").await.text();
    let parse_error = gw.put("/metrics/job/b", "m abc\n").await;
    assert_eq!(parse_error.status, StatusCode::BAD_REQUEST);
    assert_eq!(gw.get("/metrics").await.text(), snapshot);
}

#[tokio::test]
async fn pushes_that_would_break_the_exposition_are_rejected() {
    let gw = gateway_with(&GatewayConfig::default(), Arc::new(TraceSource));
    gw.put(
        "/metrics/job/a",
        "m{instance=\"i\",x=\"\"} 1\n# TYPE s summary\ns_sum 1\ns_count 1\n",
    )
    .await;
    let table = [
        (
            "empty label twin in another group (fix 1)",
            "/metrics/job/a/x/",
            "m 1\n",
            "exposes the same labels as the existing group {job=\"a\"}",
        ),
        (
            "same series in another group once empty labels drop (fix 1)",
            "/metrics/job/a/instance/i",
            "m 1\n",
            "was collected before",
        ),
        (
            "summary extra series",
            "/metrics/job/b",
            "s_count 1\n",
            "collides with summary \"s\"",
        ),
        (
            "trace metric prefix",
            "/metrics/job/b",
            "dropgate_x 1\n",
            "reserved for dropgate's own metrics",
        ),
        (
            "type clash, untyped vs counter",
            "/metrics/job/b",
            "# TYPE m counter\nm 1\n",
            "pushed as COUNTER",
        ),
        (
            "timestamps",
            "/metrics/job/b",
            "n 1 1000\n",
            "pushed metrics must not have timestamps",
        ),
    ];
    for (name, path, body, want) in table {
        let answer = gw.put(path, body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{name}");
        assert!(
            answer
                .text()
                .starts_with("pushed metrics are invalid or inconsistent with existing metrics: "),
            "{name}: {}",
            answer.text()
        );
        assert!(answer.text().contains(want), "{name}: {}", answer.text());
    }
    // The same series pushed via a key that differs only by grouping labels' empty
    // values never gets a group of its own (its push gauges would clash).
    let groups: Vec<Value> = gw.get("/api/v1/metrics").await.json()["data"]
        .as_array()
        .expect("array")
        .clone();
    assert!(groups.iter().all(|g| g["labels"].get("x").is_none()));
    let scrape = gw.get("/metrics").await;
    assert_eq!(scrape.status, StatusCode::OK, "the scrape still works");
}

#[tokio::test]
async fn trace_families_are_merged_into_the_scrape_in_name_order() {
    let gw = gateway_with(&GatewayConfig::default(), Arc::new(TraceSource));
    gw.put("/metrics/job/a", "a_metric 1\nz_metric 2\n").await;
    let text = gw.scrape_without_push_times().await;
    assert_eq!(
        text,
        "# TYPE a_metric untyped\na_metric{instance=\"\",job=\"a\"} 1\n\
         # HELP dropgate_packets_dropped_total Packets dropped.\n# TYPE dropgate_packets_dropped_total counter\ndropgate_packets_dropped_total{reason=\"IP_INADDRERRORS\"} 3\n\
         # TYPE z_metric untyped\nz_metric{instance=\"\",job=\"a\"} 2\n"
    );
}

#[tokio::test]
async fn conflicting_help_goes_to_the_first_group_in_key_order() {
    let gw = gateway();
    gw.put("/metrics/job/zeta", "# HELP m from zeta\nm 1\n")
        .await;
    gw.put("/metrics/job/alpha", "# HELP m from alpha\nm 2\n")
        .await;
    gw.put("/metrics/job/beta", "m 3\n").await;
    let text = gw.scrape_without_push_times().await;
    assert!(
        text.starts_with("# HELP m from alpha\n# TYPE m untyped\n"),
        "{text}"
    );
    gw.call(Method::DELETE, "/metrics/job/alpha", &[], Body::empty())
        .await;
    let text = gw.scrape_without_push_times().await;
    assert!(
        text.starts_with("# HELP m from zeta\n"),
        "the next group with a HELP: {text}"
    );
}

#[tokio::test]
async fn wrong_methods_get_405_with_allow_and_options_200() {
    let gw = gateway();
    let table = [
        (Method::PUT, "/metrics", "GET, OPTIONS"),
        (Method::GET, "/metrics/job/x", "DELETE, OPTIONS, POST, PUT"),
        (
            Method::PATCH,
            "/metrics/job@base64/eA",
            "DELETE, OPTIONS, POST, PUT",
        ),
        (Method::POST, "/-/healthy", "GET, OPTIONS"),
        (Method::POST, "/-/ready", "GET, OPTIONS"),
        // Upstream also registers GET on the bare /-/quit (see the differential test).
        (Method::DELETE, "/-/quit", "GET, OPTIONS, POST, PUT"),
        (Method::POST, "/api/v1/status", "GET, OPTIONS"),
        (Method::DELETE, "/api/v1/metrics", "GET, OPTIONS"),
    ];
    for (method, path, allow) in table {
        let answer = gw.call(method.clone(), path, &[], Body::empty()).await;
        assert_eq!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(answer.header("allow"), allow, "{method} {path}");
        assert_eq!(answer.text(), "Method Not Allowed\n", "{method} {path}");
        if !path.starts_with("/api") {
            let options = gw.call(Method::OPTIONS, path, &[], Body::empty()).await;
            assert_eq!(options.status, StatusCode::OK, "OPTIONS {path}");
            assert_eq!(options.header("allow"), allow, "OPTIONS {path}");
        }
    }
    let quit = gw.get("/-/quit").await;
    assert_eq!(quit.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(quit.text(), "Only POST or PUT requests allowed.");
}

#[tokio::test]
async fn unknown_paths_404_and_trailing_slashes_redirect() {
    let gw = gateway();
    for path in [
        "/nope",
        "/api/v1/nothing",
        "/api/v2",
        "/metrics/job",
        "/metrics/job@base64/",
    ] {
        let answer = gw.call(Method::PUT, path, &[], Body::empty()).await;
        let answer = if path.starts_with("/api") {
            gw.get(path).await
        } else {
            answer
        };
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(answer.text(), "404 page not found\n", "{path}");
    }
    let moved = gw.get("/metrics/").await;
    assert_eq!(moved.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(moved.header("location"), "/metrics");
    let temporary = gw
        .call(Method::PUT, "/metrics/job/", &[], Body::empty())
        .await;
    assert_eq!(temporary.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(temporary.header("location"), "/metrics/job");
}

#[tokio::test]
async fn health_and_readiness() {
    let gw = gateway();
    for path in ["/-/healthy", "/-/ready"] {
        let answer = gw.get(path).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.text(), "OK");
    }
}

#[tokio::test]
async fn quit_needs_the_lifecycle_api_and_then_signals_shutdown() {
    let gw = gateway();
    for method in [Method::PUT, Method::POST] {
        let answer = gw.call(method, "/-/quit", &[], Body::empty()).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert_eq!(answer.text(), "Lifecycle API is not enabled.");
    }
    assert!(!gw.state.quit_signal().is_triggered());

    let config = GatewayConfig {
        enable_lifecycle: true,
        ..GatewayConfig::default()
    };
    let gw = gateway_with(&config, Arc::new(NoSource));
    let answer = gw.call(Method::POST, "/-/quit", &[], Body::empty()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "Requesting termination... Goodbye!");
    assert!(gw.state.quit_signal().is_triggered());
    // `triggered` resolves at once now.
    gw.state.quit_signal().triggered().await;
}

#[tokio::test]
async fn wipe_needs_the_admin_api() {
    let gw = gateway();
    gw.put("/metrics/job/a", "m 1\n").await;
    assert_eq!(
        gw.call(Method::PUT, "/api/v1/admin/wipe", &[], Body::empty())
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(gw.state.store().group_count(), 1);

    let config = GatewayConfig {
        enable_admin_api: true,
        ..GatewayConfig::default()
    };
    let gw = gateway_with(&config, Arc::new(NoSource));
    gw.put("/metrics/job/a", "m 1\n").await;
    gw.put("/metrics/job/b", "m 1\n").await;
    let wipe = gw
        .call(Method::PUT, "/api/v1/admin/wipe", &[], Body::empty())
        .await;
    assert_eq!(wipe.status, StatusCode::ACCEPTED);
    assert_eq!(gw.state.store().group_count(), 0);
    assert_eq!(gw.get("/metrics").await.text(), "");
    let wrong = gw.get("/api/v1/admin/wipe").await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.header("allow"), "OPTIONS, PUT");
}

/// Issue 14: `Dropgate-Push-TTL` sets the pushed group's time to live (`0`: never),
/// instead of `--push.ttl`; a value that is not a duration is refused with 400, the
/// header named, and nothing stored.
#[tokio::test]
async fn a_push_asks_for_its_own_ttl_with_a_header() {
    let config = GatewayConfig {
        push_ttl: std::time::Duration::from_mins(1),
        ..GatewayConfig::default()
    };
    let gw = gateway_with(&config, Arc::new(NoSource));
    for bad in ["soon", "5d", "", "-1s", "99999999999999999999999h", "1 h"] {
        let answer = gw
            .call(
                Method::PUT,
                "/metrics/job/bad",
                &[("Dropgate-Push-TTL", bad)],
                "m 1\n",
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "value {bad:?}");
        assert!(
            answer.text().contains("Dropgate-Push-TTL header"),
            "value {bad:?}: {}",
            answer.text()
        );
    }
    assert_eq!(gw.state.store().group_count(), 0, "refusals store nothing");

    let before = std::time::SystemTime::now();
    for (job, ttl) in [
        ("own", Some("1m30s")),
        ("never", Some("0")),
        ("default", None),
    ] {
        let headers: Vec<(&str, &str)> =
            ttl.map(|t| ("Dropgate-Push-TTL", t)).into_iter().collect();
        let answer = gw
            .call(
                Method::PUT,
                &format!("/metrics/job/{job}"),
                &headers,
                "m 1\n",
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{job}: {}", answer.text());
    }
    let after = std::time::SystemTime::now();
    let deadline = |job: &str| {
        gw.state
            .store()
            .snapshot()
            .into_iter()
            .find(|group| group.key.label("job") == Some(job))
            .expect("the group is stored")
            .deadline
    };
    let within = |job: &str, secs: u64| {
        let ttl = std::time::Duration::from_secs(secs);
        deadline(job).is_some_and(|at| at >= before + ttl && at <= after + ttl)
    };
    assert!(within("own", 90), "own: {:?}", deadline("own"));
    assert!(within("default", 60), "default: {:?}", deadline("default"));
    assert_eq!(deadline("never"), None);
}

fn assert_cors(answer: &Answer) {
    assert_eq!(answer.header("access-control-allow-origin"), "*");
    assert_eq!(
        answer.header("access-control-allow-methods"),
        "GET, POST, DELETE, OPTIONS"
    );
    assert_eq!(
        answer.header("access-control-allow-headers"),
        "Accept, Authorization, Content-Type, Origin"
    );
    assert_eq!(answer.header("access-control-expose-headers"), "Date");
    assert_eq!(
        answer.header("cache-control"),
        "no-cache, no-store, must-revalidate"
    );
}

#[tokio::test]
async fn api_v1_status_and_cors() {
    let config = GatewayConfig {
        persistence_file: Some("/var/lib/dropgate/store".into()),
        build_info: gateway::build_info::BuildInfo {
            version: "9.8.7",
            revision: "0123456789abcdef",
            branch: "release-9",
            build_user: "builder@ci",
            build_date: "20260102-03:04:05",
            rust_version: "1.95.0",
        },
        ..GatewayConfig::default()
    };
    let gw = gateway_with(&config, Arc::new(NoSource));
    let answer = gw.get("/api/v1/status").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), "application/json");
    assert_cors(&answer);
    let json = answer.json();
    assert_eq!(json["status"], "success");
    let flags = &json["data"]["flags"];
    assert_eq!(flags["persistence.file"], "/var/lib/dropgate/store");
    assert_eq!(flags["persistence.interval"], "5m0s");
    assert_eq!(flags["web.enable-admin-api"], "false");
    assert_eq!(flags["web.listen-address"], "[::]:9091");
    // The pushgateway's keys, carrying the build the binary embedded.
    assert_eq!(
        json["data"]["build_information"],
        serde_json::json!({
            "branch": "release-9",
            "buildDate": "20260102-03:04:05",
            "buildUser": "builder@ci",
            "goVersion": "1.95.0",
            "revision": "0123456789abcdef",
            "version": "9.8.7",
        })
    );
    assert!(json["data"]["start_time"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z') && t.contains('T')));

    for path in [
        "/api/v1/status",
        "/api/v1/metrics",
        "/api/v1/anything/at/all",
    ] {
        let options = gw.call(Method::OPTIONS, path, &[], Body::empty()).await;
        assert_eq!(options.status, StatusCode::OK, "{path}");
        assert_cors(&options);
    }
}

#[tokio::test]
async fn api_v1_metrics_json_shape() {
    let gw = gateway();
    let empty = gw.get("/api/v1/metrics").await;
    assert_eq!(empty.text(), "{\"status\":\"success\",\"data\":[]}");
    assert_cors(&empty);

    gw.put(
        "/metrics/job/j/instance/i",
        "# HELP g A gauge.\n# TYPE g gauge\ng{a=\"b\"} 5\n# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 2\ns_count 3\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\nlabels 7\n",
    )
    .await;
    let json = gw.get("/api/v1/metrics").await.json();
    let group = &json["data"][0];
    assert_eq!(
        group["labels"],
        serde_json::json!({"instance": "i", "job": "j"}),
        "fix 3: the family named labels does not overwrite"
    );
    assert_eq!(group["last_push_successful"], true);
    assert_eq!(group["g"]["type"], "GAUGE");
    assert_eq!(group["g"]["help"], "A gauge.");
    assert_eq!(
        group["g"]["metrics"],
        serde_json::json!([{"labels": {"a": "b", "instance": "i", "job": "j"}, "value": "5"}])
    );
    assert!(
        group["s"].get("help").is_none(),
        "help is omitted when empty"
    );
    assert_eq!(
        group["s"]["metrics"][0]["quantiles"],
        serde_json::json!({"0.5": "1"})
    );
    assert_eq!(group["s"]["metrics"][0]["count"], "3");
    assert_eq!(group["s"]["metrics"][0]["sum"], "2");
    assert_eq!(
        group["h"]["metrics"][0]["buckets"],
        serde_json::json!({"1": "1", "+Inf": "2"})
    );
    assert!(group["push_time_seconds"]["time_stamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let keys: Vec<&String> = group
        .as_object()
        .expect("group is an object")
        .keys()
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "keys sorted, as Go marshals maps");
    // The family is still served on /metrics.
    assert!(gw
        .get("/metrics")
        .await
        .text()
        .contains("labels{instance=\"i\",job=\"j\"} 7\n"));
}

#[tokio::test]
async fn route_prefix_moves_every_route() {
    let config = GatewayConfig {
        route_prefix: "/gw/".to_owned(),
        ..GatewayConfig::default()
    };
    let gw = gateway_with(&config, Arc::new(NoSource));
    assert_eq!(
        gw.put("/gw/metrics/job/a", "m 1\n").await.status,
        StatusCode::OK
    );
    assert!(gw
        .get("/gw/metrics")
        .await
        .text()
        .contains("m{instance=\"\",job=\"a\"} 1"));
    assert_eq!(gw.get("/gw/-/healthy").await.status, StatusCode::OK);
    assert_eq!(gw.get("/gw/api/v1/status").await.status, StatusCode::OK);
    assert_eq!(gw.get("/metrics").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        gw.put("/metrics/job/a", "m 1\n").await.status,
        StatusCode::NOT_FOUND
    );

    // Pushgateway ≥ 1.7 cuts one trailing slash only: `/gw//` registers routes under
    // `/gw/` (`/gw//metrics`), which Go's ServeMux never reaches: it redirects the
    // unclean path to `/gw/metrics`, which is not routed. The same here.
    let config = GatewayConfig {
        route_prefix: "/gw//".to_owned(),
        ..GatewayConfig::default()
    };
    let gw = gateway_with(&config, Arc::new(NoSource));
    let unclean = gw.get("/gw//metrics").await;
    assert_eq!(unclean.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(unclean.header("location"), "/gw/metrics");
    assert_eq!(gw.get("/gw/metrics").await.status, StatusCode::NOT_FOUND);
    // `gw/` is `/gw`, as before.
    let config = GatewayConfig {
        route_prefix: "gw/".to_owned(),
        ..GatewayConfig::default()
    };
    let gw = gateway_with(&config, Arc::new(NoSource));
    assert_eq!(gw.get("/gw/metrics").await.status, StatusCode::OK);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).expect("gzip into memory");
    encoder.finish().expect("gzip finishes")
}

#[tokio::test]
async fn compressed_bodies_and_the_body_limit() {
    let config = GatewayConfig {
        body_limit: 1024,
        ..GatewayConfig::default()
    };
    let gw = gateway_with(&config, Arc::new(NoSource));
    let gzipped = gw
        .call(
            Method::PUT,
            "/metrics/job/z",
            &[("content-encoding", "gzip")],
            gzip(b"m 1\n"),
        )
        .await;
    assert_eq!(gzipped.status, StatusCode::OK);
    let bad = gw
        .call(
            Method::PUT,
            "/metrics/job/z",
            &[("content-encoding", "gzip")],
            "not gzip at all",
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.text(), "gzip: invalid header\n");

    let big = "m 1\n".repeat(300);
    let too_large = gw.put("/metrics/job/z", &big).await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE, "fix 6");
    assert!(
        too_large.text().contains("limit of 1024 bytes"),
        "{}",
        too_large.text()
    );
    let bomb = gzip(&vec![b'#'; 64 * 1024]);
    assert!(bomb.len() < 1024, "small on the wire");
    let expands = gw
        .call(
            Method::PUT,
            "/metrics/job/z",
            &[("content-encoding", "gzip")],
            bomb,
        )
        .await;
    assert_eq!(
        expands.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "decoded size is bounded too"
    );
}

#[tokio::test]
async fn protobuf_push_and_protobuf_and_gzip_scrapes() {
    let gw = gateway();
    let family = MetricFamily {
        name: Some("g".to_owned()),
        help: Some("Gauge.".to_owned()),
        r#type: Some(MetricType::Gauge as i32),
        metric: vec![Metric {
            label: vec![LabelPair::new("a", "b")],
            gauge: Some(Gauge { value: Some(0.0) }),
            ..Default::default()
        }],
        unit: None,
    };
    let push = gw
        .put_protobuf("/metrics/job/p", std::slice::from_ref(&family))
        .await;
    assert_eq!(push.status, StatusCode::OK, "{}", push.text());
    assert!(gw
        .scrape_without_push_times()
        .await
        .contains("g{a=\"b\",instance=\"\",job=\"p\"} 0\n"));

    let scrape = gw
        .call(
            Method::GET,
            "/metrics",
            &[("accept", PROTOBUF)],
            Body::empty(),
        )
        .await;
    assert_eq!(
        scrape.header("content-type"),
        format!("{PROTOBUF}; escaping=values")
    );
    let families =
        gateway::codec::protobuf::decode_delimited(&scrape.body).expect("delimited protobuf");
    let names: Vec<&str> = families.iter().filter_map(|f| f.name.as_deref()).collect();
    assert_eq!(
        names,
        ["g", "push_failure_time_seconds", "push_time_seconds"]
    );
    assert_eq!(families[0].metric[0].label.len(), 3);

    let gzipped = gw
        .call(
            Method::GET,
            "/metrics",
            &[("accept-encoding", "gzip, deflate")],
            Body::empty(),
        )
        .await;
    assert_eq!(gzipped.header("content-encoding"), "gzip");
    let mut plain = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&gzipped.body[..]),
        &mut plain,
    )
    .expect("valid gzip");
    assert_eq!(plain, gw.get("/metrics").await.text());
}

#[tokio::test]
async fn disabled_consistency_check_answers_202_like_upstream() {
    let config = GatewayConfig {
        disable_consistency_check: true,
        ..GatewayConfig::default()
    };
    let gw = gateway_with(&config, Arc::new(NoSource));
    assert_eq!(
        gw.put("/metrics/job/a", "m 1\n").await.status,
        StatusCode::ACCEPTED
    );
    let clash = gw.put("/metrics/job/b", "# TYPE m gauge\nm 1\n").await;
    assert_eq!(
        clash.status,
        StatusCode::BAD_REQUEST,
        "still checked: fix 1 depends on it"
    );
}

/// Upstream ≥ 1.8: a pushed native histogram (protobuf) shows in `/api/v1/metrics` with
/// its buckets as `[boundaries, lower, upper, count]` and its native count.
#[tokio::test]
async fn native_histograms_in_the_metrics_api_as_since_1_8() {
    use gateway::model::{BucketSpan, Histogram};
    let gw = gateway();
    let family = MetricFamily {
        name: Some("latency_seconds".to_owned()),
        help: Some("Latency.".to_owned()),
        r#type: Some(MetricType::Histogram as i32),
        metric: vec![Metric {
            histogram: Some(Box::new(Histogram {
                sample_count: Some(6),
                sample_sum: Some(3.25),
                schema: Some(1),
                zero_threshold: Some(0.001),
                zero_count: Some(1),
                positive_span: vec![BucketSpan {
                    offset: Some(-1),
                    length: Some(2),
                }],
                positive_delta: vec![2, 1],
                ..Histogram::default()
            })),
            ..Default::default()
        }],
        unit: None,
    };
    let push = gw
        .put_protobuf("/metrics/job/native", std::slice::from_ref(&family))
        .await;
    assert_eq!(push.status, StatusCode::OK, "{}", push.text());
    let api = gw.get("/api/v1/metrics").await.json();
    let metric = &api["data"][0]["latency_seconds"]["metrics"][0];
    // Schema 1: bucket -1 is (2^-1, 2^-0.5], bucket 0 is (2^-0.5, 1].
    assert_eq!(
        metric["buckets"],
        serde_json::json!([
            [3, "-0.001", "0.001", "1"],
            [0, "0.5", "0.7071067811865476", "2"],
            [0, "0.7071067811865476", "1", "3"]
        ])
    );
    assert_eq!(metric["count"], "6");
    assert_eq!(metric["sum"], "3.25");
}

/// A scraper asking for OpenMetrics (Prometheus' default `Accept`) gets it: counters
/// without `_total` in their metadata, the unit, exemplars and created timestamps that a
/// protobuf push carried, and `# EOF` at the end; the text scrape is unchanged.
#[tokio::test]
async fn openmetrics_for_scrapers_that_ask_for_it() {
    use gateway::model::{Bucket, Counter, Exemplar, Histogram, Timestamp};
    let gw = gateway();
    let exemplar = |trace: &str, value: f64| Exemplar {
        label: vec![LabelPair::new("trace_id", trace)],
        value: Some(value),
        timestamp: Some(Timestamp {
            seconds: Some(1_700_000_000),
            nanos: Some(250_000_000),
        }),
    };
    let families = vec![
        MetricFamily {
            name: Some("jobs_total".to_owned()),
            help: Some("Jobs run.".to_owned()),
            r#type: Some(MetricType::Counter as i32),
            metric: vec![Metric {
                counter: Some(Counter {
                    value: Some(3.0),
                    exemplar: Some(Box::new(exemplar("abc", 1.0))),
                    created_timestamp: Some(Timestamp {
                        seconds: Some(1_700_000_000),
                        nanos: Some(0),
                    }),
                }),
                ..Default::default()
            }],
            unit: None,
        },
        MetricFamily {
            name: Some("duration_seconds".to_owned()),
            help: Some("How long.".to_owned()),
            r#type: Some(MetricType::Histogram as i32),
            metric: vec![Metric {
                histogram: Some(Box::new(Histogram {
                    sample_count: Some(2),
                    sample_sum: Some(0.75),
                    bucket: vec![Bucket {
                        cumulative_count: Some(1),
                        upper_bound: Some(0.5),
                        exemplar: Some(exemplar("def", 0.25)),
                        ..Bucket::default()
                    }],
                    ..Histogram::default()
                })),
                ..Default::default()
            }],
            unit: Some("seconds".to_owned()),
        },
    ];
    let push = gw.put_protobuf("/metrics/job/om", &families).await;
    assert_eq!(push.status, StatusCode::OK, "{}", push.text());
    let scrape = gw
        .call(
            Method::GET,
            "/metrics",
            &[(
                "accept",
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            )],
            Body::empty(),
        )
        .await;
    assert_eq!(
        scrape.header("content-type"),
        "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=values"
    );
    let text = scrape.text();
    for line in [
        "# TYPE jobs counter\n",
        "jobs_total{instance=\"\",job=\"om\"} 3.0 # {trace_id=\"abc\"} 1.0 1700000000.25\n",
        "jobs_created{instance=\"\",job=\"om\"} 1.7e+09\n",
        "# UNIT duration_seconds seconds\n",
        "duration_seconds_bucket{instance=\"\",job=\"om\",le=\"0.5\"} 1 # {trace_id=\"def\"} 0.25 1700000000.25\n",
        "duration_seconds_bucket{instance=\"\",job=\"om\",le=\"+Inf\"} 2\n",
        "# TYPE push_time_seconds gauge\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1);
    // The text format is what it was.
    let plain = gw.get("/metrics").await.text();
    assert!(
        plain.contains("jobs_total{instance=\"\",job=\"om\"} 3\n"),
        "{plain}"
    );
    assert!(!plain.contains("# EOF"));
}

/// A text push may carry `x_created` gauges beside a summary `x` (Python's client
/// does): in OpenMetrics those names belong to `x`, so they are left out of that format
/// only.
#[tokio::test]
async fn openmetrics_leaves_out_families_that_clash_with_a_typed_family() {
    let gw = gateway();
    let body = "# TYPE x summary\nx_sum 1\nx_count 2\n# TYPE x_created gauge\nx_created 1.7e+09\n# TYPE jobs_total counter\njobs_total 3\n# TYPE jobs_created gauge\njobs_created 1.7e+09\n# TYPE other gauge\nother 1\n";
    assert_eq!(gw.put("/metrics/job/py", body).await.status, StatusCode::OK);
    let om = gw
        .call(
            Method::GET,
            "/metrics",
            &[("accept", "application/openmetrics-text;version=1.0.0")],
            Body::empty(),
        )
        .await
        .text();
    assert!(!om.contains("x_created"), "{om}");
    assert!(!om.contains("jobs_created"), "{om}");
    assert!(
        om.contains("# TYPE x summary\n") && om.contains("# TYPE other gauge\n"),
        "{om}"
    );
    let text = gw.get("/metrics").await.text();
    assert!(
        text.contains("x_created{") && text.contains("jobs_created{"),
        "{text}"
    );
}

/// `--push.enable-utf8-names` on: a quoted text push and a `U__` path are stored under
/// their UTF-8 names; a scrape without `escaping=` sees them with underscores (as from
/// pushgateway 1.11), one asking for `allow-utf-8` sees them quoted; the JSON API shows
/// them as pushed.
#[tokio::test]
async fn utf8_names_are_stored_and_served_escaped_as_asked() {
    let config = GatewayConfig {
        enable_utf8_names: true,
        ..GatewayConfig::default()
    };
    let gw = gateway_with(&config, Arc::new(NoSource));
    let pushed = gw
        .put(
            "/metrics/job/j/U__zone_2e_name@base64/ZXUtMQ",
            "# TYPE \"my.metric\" gauge\n{\"my.metric\",\"lbl.x\"=\"v\"} 1\n",
        )
        .await;
    assert_eq!(pushed.status, StatusCode::OK, "{}", pushed.text());

    let plain = gw.get("/metrics").await;
    assert_eq!(
        plain.header("content-type"),
        "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"
    );
    assert!(
        plain
            .text()
            .contains("my_metric{instance=\"\",job=\"j\",lbl_x=\"v\",zone_name=\"eu-1\"} 1\n"),
        "{}",
        plain.text()
    );
    let utf8 = gw
        .call(
            Method::GET,
            "/metrics",
            &[("accept", "text/plain;version=0.0.4;escaping=allow-utf-8")],
            Body::empty(),
        )
        .await;
    assert_eq!(
        utf8.header("content-type"),
        "text/plain; version=0.0.4; charset=utf-8; escaping=allow-utf-8"
    );
    assert!(
        utf8.text().contains(
            "{\"my.metric\",instance=\"\",job=\"j\",\"lbl.x\"=\"v\",\"zone.name\"=\"eu-1\"} 1\n"
        ),
        "{}",
        utf8.text()
    );
    let json = gw.get("/api/v1/metrics").await.json();
    let group = &json["data"][0];
    assert_eq!(group["labels"]["zone.name"], "eu-1", "{group}");
    assert!(group.get("my.metric").is_some(), "{group}");
}

/// Off (the default, as pushgateway 1.9): the same pushes get 400 with Go's text and a
/// word on the flag, and the store does not change.
#[tokio::test]
async fn utf8_names_are_refused_without_the_flag() {
    let gw = gateway();
    gw.put("/metrics/job/j", "m 1\n").await;
    let before = gw.scrape_without_push_times().await;
    let text = gw
        .put("/metrics/job/j", "{\"my.metric\",\"lbl.x\"=\"v\"} 1\n")
        .await;
    assert_eq!(text.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        text.text(),
        "text format parsing error in line 1: invalid metric name (quoted UTF-8 metric and label names are accepted only with --push.enable-utf8-names)\n"
    );
    let path = gw.put("/metrics/job/j/zone.name/x", "m 1\n").await;
    assert_eq!(path.status, StatusCode::BAD_REQUEST);
    assert!(
        path.text()
            .starts_with("improper label name \"zone.name\" (")
            && path.text().contains("--push.enable-utf8-names"),
        "{}",
        path.text()
    );
    assert_eq!(
        gw.scrape_without_push_times().await,
        before,
        "store unchanged"
    );
    // A `U__` name is a legacy name: 1.9 stores it as it is, and so do we.
    let legacy = gw.put("/metrics/job/j/U__zone_2e_name/x", "m 1\n").await;
    assert_eq!(legacy.status, StatusCode::OK);
    assert!(gw
        .get("/metrics")
        .await
        .text()
        .contains("m{U__zone_2e_name=\"x\",instance=\"\",job=\"j\"} 1\n"));
}

/// Protobuf pushes may carry any UTF-8 name with the flag (kept as is in a protobuf
/// scrape asking for `allow-utf-8`, escaped in one asking for nothing), and are refused
/// without it, as upstream's check refuses them.
#[tokio::test]
async fn protobuf_pushes_with_utf8_names() {
    let family = MetricFamily {
        name: Some("pb.metric".to_owned()),
        help: None,
        r#type: Some(MetricType::Gauge as i32),
        metric: vec![Metric {
            label: vec![LabelPair::new("größe", "b")],
            gauge: Some(Gauge { value: Some(2.0) }),
            ..Default::default()
        }],
        unit: None,
    };
    let mut body = Vec::new();
    gateway::codec::protobuf::encode_delimited(std::slice::from_ref(&family), &mut body);
    let legacy = gateway();
    let refused = legacy
        .call(
            Method::PUT,
            "/metrics/job/p",
            &[("content-type", PROTOBUF)],
            body.clone(),
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused.text().starts_with(
            "pushed metrics are invalid or inconsistent with existing metrics: metric family name \"pb.metric\" is not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*; UTF-8 names need --push.enable-utf8-names)"
        ),
        "{}",
        refused.text()
    );
    assert!(!legacy.get("/metrics").await.text().contains("pb"));

    let config = GatewayConfig {
        enable_utf8_names: true,
        ..GatewayConfig::default()
    };
    let gw = gateway_with(&config, Arc::new(NoSource));
    let accepted = gw
        .call(
            Method::PUT,
            "/metrics/job/p",
            &[("content-type", PROTOBUF)],
            body,
        )
        .await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.text());
    let accept = format!("{PROTOBUF};escaping=allow-utf-8");
    let scrape = gw
        .call(
            Method::GET,
            "/metrics",
            &[("accept", &accept)],
            Body::empty(),
        )
        .await;
    let families =
        gateway::codec::protobuf::decode_delimited(&scrape.body).expect("delimited protobuf");
    assert_eq!(families[0].name.as_deref(), Some("pb.metric"));
    assert_eq!(
        families[0].metric[0].label[0].name.as_deref(),
        Some("größe")
    );
    let text = gw.scrape_without_push_times().await;
    assert!(
        text.contains("pb_metric{gr__e=\"b\",instance=\"\",job=\"p\"} 2\n"),
        "{text}"
    );
}
