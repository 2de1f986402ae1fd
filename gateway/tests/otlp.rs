//! The OTLP/HTTP route through `app(state).oneshot(..)`: answers per the OTLP/HTTP
//! specification, translation visible in the scrape, refusals that change nothing,
//! delta exports summed. (The real SDK and a real Prometheus: tests/tests/otlp_sdk.rs.)

use std::io::Write as _;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, AggregationTemporality, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use otlp_prost::Message as _;
use tower::ServiceExt;

use gateway::api::{app, AppState};
use gateway::config::GatewayConfig;
use gateway::otlp::wire::RpcStatus;
use gateway::source::NoSource;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";
const ROUTE: &str = "/otlp/v1/metrics";

fn gateway_with(config: &GatewayConfig) -> Router {
    app(AppState::with_empty_store(config, Arc::new(NoSource)))
}

async fn call(
    router: &Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, String, Vec<u8>) {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::from(body)).expect("valid request"))
        .await
        .expect("the router is infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map_or(String::new(), |v| v.to_str().expect("ASCII").to_owned());
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body collects")
        .to_bytes()
        .to_vec();
    (status, content_type, body)
}

async fn export(
    router: &Router,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, String, Vec<u8>) {
    call(
        router,
        Method::POST,
        ROUTE,
        &[("content-type", content_type)],
        body,
    )
    .await
}

/// The scrape without the push gauges (their values are times).
async fn scrape(router: &Router) -> String {
    let (status, _, body) = call(router, Method::GET, "/metrics", &[], Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).expect("UTF-8 exposition");
    let mut kept = String::new();
    for line in text.lines().filter(|line| {
        !line.contains("push_time_seconds") && !line.contains("push_failure_time_seconds")
    }) {
        kept.push_str(line);
        kept.push('\n');
    }
    kept
}

/// The whole scrape, push gauges included.
async fn scrape_all(router: &Router) -> String {
    let (_, _, body) = call(router, Method::GET, "/metrics", &[], Vec::new()).await;
    String::from_utf8(body).expect("UTF-8 exposition")
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

fn point(value: i64, attributes: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        value: Some(number_data_point::Value::AsInt(value)),
        ..NumberDataPoint::default()
    }
}

fn counter(
    name: &str,
    temporality: AggregationTemporality,
    points: Vec<NumberDataPoint>,
) -> Metric {
    Metric {
        name: name.to_owned(),
        data: Some(Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: temporality as i32,
            is_monotonic: true,
        })),
        ..Metric::default()
    }
}

fn request(service: &str, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    text("service.name", service),
                    text("service.instance.id", "i-1"),
                ],
                ..Resource::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

fn cumulative(service: &str, value: i64) -> ExportMetricsServiceRequest {
    request(
        service,
        vec![counter(
            "jobs.done",
            AggregationTemporality::Cumulative,
            vec![point(value, vec![text("queue", "a")])],
        )],
    )
}

#[tokio::test]
async fn protobuf_and_json_exports_are_scraped_translated() {
    let router = gateway_with(&GatewayConfig::default());
    let (status, content_type, body) =
        export(&router, PROTOBUF, cumulative("billing", 7).encode_to_vec()).await;
    assert_eq!((status, content_type.as_str()), (StatusCode::OK, PROTOBUF));
    let answer =
        ExportMetricsServiceResponse::decode(&body[..]).expect("an ExportMetricsServiceResponse");
    assert_eq!(answer.partial_success, None, "full success");
    let json = serde_json::to_vec(&cumulative("audit", 3)).expect("serialises");
    let (status, content_type, body) = export(&router, JSON, json).await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::OK, JSON),
        "{}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice::<serde_json::Value>(&body).expect("a JSON answer");
    let scraped = scrape(&router).await;
    assert!(
        scraped.contains("jobs_done_total{instance=\"i-1\",job=\"billing\",queue=\"a\"} 7\n")
            && scraped.contains("jobs_done_total{instance=\"i-1\",job=\"audit\",queue=\"a\"} 3\n"),
        "{scraped}"
    );
    // A new cumulative snapshot replaces the group.
    export(&router, PROTOBUF, cumulative("billing", 9).encode_to_vec()).await;
    assert!(scrape(&router)
        .await
        .contains("job=\"billing\",queue=\"a\"} 9\n"));
}

#[tokio::test]
async fn gzip_bodies_are_taken() {
    let router = gateway_with(&GatewayConfig::default());
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder
        .write_all(&cumulative("zipped", 5).encode_to_vec())
        .expect("in memory");
    let body = encoder.finish().expect("in memory");
    let (status, _, _) = call(
        &router,
        Method::POST,
        ROUTE,
        &[("content-type", PROTOBUF), ("content-encoding", "gzip")],
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(scrape(&router)
        .await
        .contains("job=\"zipped\",queue=\"a\"} 5\n"));
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // the table of bad exports reads best in one piece
async fn bad_exports_get_otlp_errors_and_change_nothing() {
    let config = GatewayConfig {
        body_limit: 4096,
        ..GatewayConfig::default()
    };
    let router = gateway_with(&config);
    export(&router, PROTOBUF, cumulative("billing", 7).encode_to_vec()).await;
    // A text push holds `jobs_done_total` as a gauge in another group.
    let (status, _, _) = call(
        &router,
        Method::PUT,
        "/metrics/job/other",
        &[],
        b"# TYPE jobs_done_total gauge\njobs_done_total 1\n".to_vec(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the text push is the inconsistent one here"
    );
    let (status, _, _) = call(
        &router,
        Method::PUT,
        "/metrics/job/gauges",
        &[],
        b"# TYPE queue_depth gauge\nqueue_depth 1\n".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let before = scrape_all(&router).await;

    let whole = cumulative("billing", 8).encode_to_vec();
    let oversized = request(
        "billing",
        vec![counter(
            "big",
            AggregationTemporality::Cumulative,
            (0..400)
                .map(|n| point(n, vec![text("n", &n.to_string())]))
                .collect(),
        )],
    )
    .encode_to_vec();
    assert!(oversized.len() > config.body_limit, "over the body limit");
    // A histogram named like the stored gauge: its type clashes.
    let clash = request(
        "billing",
        vec![Metric {
            name: "queue_depth".to_owned(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    count: 1,
                    bucket_counts: vec![1, 0],
                    explicit_bounds: vec![1.0],
                    ..HistogramDataPoint::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Metric::default()
        }],
    )
    .encode_to_vec();
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode)> = vec![
        (
            "truncated protobuf",
            PROTOBUF,
            whole[..whole.len() - 3].to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "oversized protobuf",
            PROTOBUF,
            oversized,
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "wrong content type",
            "text/plain; version=0.0.4",
            b"jobs_done_total 1\n".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "malformed JSON",
            JSON,
            b"{\"resourceMetrics\": [".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "type clash with a stored group",
            PROTOBUF,
            clash,
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (name, content_type, body, want) in cases {
        let (status, answer_type, answer) = export(&router, content_type, body).await;
        assert_eq!(status, want, "{name}: {}", String::from_utf8_lossy(&answer));
        if content_type == PROTOBUF {
            assert_eq!(answer_type, PROTOBUF, "{name}");
            let rpc = RpcStatus::decode(&answer[..]).expect("a google.rpc.Status");
            assert!(rpc.code != 0 && !rpc.message.is_empty(), "{name}: {rpc:?}");
        } else {
            let rpc: serde_json::Value = serde_json::from_slice(&answer).expect("a JSON Status");
            assert!(
                rpc["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{name}: {rpc}"
            );
        }
        assert_eq!(
            scrape_all(&router).await,
            before,
            "{name}: the store changed"
        );
    }
}

#[tokio::test]
async fn a_gzip_bomb_is_too_large_and_stores_nothing() {
    let config = GatewayConfig {
        body_limit: 64 * 1024 * 1024,
        ..GatewayConfig::default()
    };
    let router = gateway_with(&config);
    // 8 MiB of zeros gzip to a few KB: far past the decoded-size factor of the body.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&vec![0_u8; 8 << 20]).expect("in memory");
    let bomb = encoder.finish().expect("in memory");
    let (status, content_type, body) = call(
        &router,
        Method::POST,
        ROUTE,
        &[("content-type", PROTOBUF), ("content-encoding", "gzip")],
        bomb,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(content_type, PROTOBUF);
    let rpc = RpcStatus::decode(&body[..]).expect("a google.rpc.Status");
    assert!(rpc.message.contains("gzip"), "{rpc:?}");
    assert!(
        !scrape_all(&router).await.contains("job="),
        "nothing stored"
    );
}

#[tokio::test]
async fn tiny_messages_that_decode_into_much_memory_are_refused_before_decoding() {
    let router = gateway_with(&GatewayConfig::default());
    // 100,000 empty ResourceMetrics: 200 KB on the wire, each a struct of ~100 bytes.
    let body: Vec<u8> = std::iter::repeat_n([0x0a_u8, 0x00], 100_000)
        .flatten()
        .collect();
    for (content_type, body) in [
        (PROTOBUF, body),
        (
            JSON,
            format!("{{\"resourceMetrics\":[{}{{}}]}}", "{},".repeat(100_000)).into_bytes(),
        ),
    ] {
        let (status, _, answer) = export(&router, content_type, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{content_type}");
        let message = if content_type == PROTOBUF {
            RpcStatus::decode(&answer[..])
                .expect("a google.rpc.Status")
                .message
        } else {
            serde_json::from_slice::<serde_json::Value>(&answer).expect("JSON")["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        assert!(
            message.contains("max-render-factor"),
            "{content_type}: {message}"
        );
    }
}

#[tokio::test]
async fn untranslatable_points_are_a_partial_success() {
    let router = gateway_with(&GatewayConfig::default());
    let mut export_request = cumulative("billing", 7);
    export_request.resource_metrics[0].scope_metrics[0]
        .metrics
        .push(Metric {
            name: "latency".to_owned(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    count: 1,
                    bucket_counts: vec![1],
                    explicit_bounds: vec![1.0, 2.0],
                    ..HistogramDataPoint::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Metric::default()
        });
    let (status, _, body) = export(&router, PROTOBUF, export_request.encode_to_vec()).await;
    assert_eq!(status, StatusCode::OK);
    let partial = ExportMetricsServiceResponse::decode(&body[..])
        .expect("a response")
        .partial_success
        .expect("partial success");
    assert_eq!(partial.rejected_data_points, 1);
    assert!(
        partial.error_message.contains("latency"),
        "{}",
        partial.error_message
    );
    assert!(
        scrape(&router)
            .await
            .contains("job=\"billing\",queue=\"a\"} 7\n"),
        "the rest is stored"
    );
}

#[tokio::test]
async fn delta_exports_add_up() {
    let router = gateway_with(&GatewayConfig::default());
    let delta = |a: i64, b: Option<i64>| {
        let mut points = vec![point(a, vec![text("queue", "a")])];
        points.extend(b.map(|b| point(b, vec![text("queue", "b")])));
        request(
            "deltas",
            vec![counter("jobs.done", AggregationTemporality::Delta, points)],
        )
        .encode_to_vec()
    };
    for body in [delta(3, Some(10)), delta(4, None), delta(5, Some(1))] {
        let (status, _, answer) = export(&router, PROTOBUF, body).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    let scraped = scrape(&router).await;
    assert!(
        scraped.contains("jobs_done_total{instance=\"i-1\",job=\"deltas\",queue=\"a\"} 12\n")
            && scraped
                .contains("jobs_done_total{instance=\"i-1\",job=\"deltas\",queue=\"b\"} 11\n"),
        "increments summed, a series without news kept: {scraped}"
    );
}

#[tokio::test]
async fn only_post_is_an_export() {
    let router = gateway_with(&GatewayConfig::default());
    let (status, _, _) = call(&router, Method::GET, ROUTE, &[], Vec::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn exported_groups_expire_like_pushed_ones() {
    let config = GatewayConfig {
        push_ttl: std::time::Duration::from_mins(10),
        ..GatewayConfig::default()
    };
    let state = AppState::with_empty_store(&config, Arc::new(NoSource));
    let router = app(state.clone());
    let body = |service: &str| cumulative(service, 1).encode_to_vec();
    let (status, _, _) = export(&router, PROTOBUF, body("by-flag")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(
        &router,
        Method::POST,
        ROUTE,
        &[("content-type", PROTOBUF), ("dropgate-push-ttl", "1h")],
        body("by-header"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, answer) = call(
        &router,
        Method::POST,
        ROUTE,
        &[("content-type", PROTOBUF), ("dropgate-push-ttl", "soon")],
        body("bad-header"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let rpc = RpcStatus::decode(&answer[..]).expect("a google.rpc.Status");
    assert!(rpc.message.contains("Dropgate-Push-TTL"), "{rpc:?}");
    let now = std::time::SystemTime::now();
    let left = |job: &str| {
        state
            .store()
            .snapshot()
            .into_iter()
            .find(|group| group.key.job() == job)
            .and_then(|group| group.deadline)
            .and_then(|deadline| deadline.duration_since(now).ok())
            .map(|left| left.as_secs())
    };
    assert!(
        left("by-flag").is_some_and(|s| (590..=600).contains(&s)),
        "--push.ttl applies: {:?}",
        left("by-flag")
    );
    assert!(
        left("by-header").is_some_and(|s| (3590..=3600).contains(&s)),
        "the header wins: {:?}",
        left("by-header")
    );
    assert!(
        left("bad-header").is_none(),
        "nothing stored for a bad header"
    );
}

/// With `--push.enable-utf8-names`, OTLP names keep their dots (suffixes still added, as
/// Prometheus's translation without escaping does); a scrape that asks for `allow-utf-8`
/// sees them quoted, one that asks for nothing sees them escaped to underscores.
#[tokio::test]
async fn utf8_names_are_kept_when_the_gateway_allows_them() {
    let config = GatewayConfig {
        enable_utf8_names: true,
        ..GatewayConfig::default()
    };
    let router = gateway_with(&config);
    let mut export_request = cumulative("billing", 7);
    export_request.resource_metrics[0].scope_metrics[0].metrics[0].data = Some(Data::Sum(Sum {
        data_points: vec![point(7, vec![text("queue.name", "a")])],
        aggregation_temporality: AggregationTemporality::Cumulative as i32,
        is_monotonic: true,
    }));
    let (status, _, body) = export(&router, PROTOBUF, export_request.encode_to_vec()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let (_, _, quoted) = call(
        &router,
        Method::GET,
        "/metrics",
        &[("accept", "text/plain;version=1.0.0;escaping=allow-utf-8")],
        Vec::new(),
    )
    .await;
    let quoted = String::from_utf8(quoted).expect("UTF-8 exposition");
    assert!(
        quoted.contains(r#"{"jobs.done_total",instance="i-1",job="billing","queue.name"="a"} 7"#),
        "{quoted}"
    );
    assert!(
        scrape(&router)
            .await
            .contains(r#"jobs_done_total{instance="i-1",job="billing",queue_name="a"} 7"#),
        "escaped to underscores for a scraper that did not ask"
    );
}
