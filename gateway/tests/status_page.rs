//! Handler tests of the status page at `<route-prefix>/`, through `app(state).oneshot`:
//! what it lists, that it escapes what pushers and sources control, HEAD, the prefix.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use tower::ServiceExt;

use gateway::api::{app, AppState};
use gateway::config::GatewayConfig;
use gateway::model::MetricFamily;
use gateway::server::Gateway;
use gateway::source::{MetricSource, NoSource};
use gateway::status::{StatusColumn, StatusRow, StatusSection, Tone};

/// A tracer stand-in that adds one section, with markup in every field it controls.
struct SectionSource;

impl MetricSource for SectionSource {
    fn collect(&self) -> Vec<MetricFamily> {
        Vec::new()
    }

    fn status_sections(&self) -> Vec<StatusSection> {
        vec![StatusSection {
            title: "Findings <now>".into(),
            notes: vec!["checked & rechecked".into()],
            columns: vec![StatusColumn::text("summary"), StatusColumn::text("fix")],
            rows: vec![StatusRow::new(
                Tone::Critical,
                vec![
                    "forwarding is off on <vh-ext>".into(),
                    vec![
                        "sysctl -w net.ipv4.ip_forward=1".to_owned(),
                        "echo 'x' > /etc/sysctl.d/99.conf".to_owned(),
                    ]
                    .into(),
                ],
            )],
            empty: "none".into(),
        }]
    }
}

struct Page {
    status: StatusCode,
    content_type: String,
    body: String,
}

async fn call(router: &Router, method: Method, path: &str, body: &str) -> Page {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::from(body.to_owned()))
        .expect("a valid request");
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("the router answers");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().expect("ASCII header").to_owned())
        .unwrap_or_default();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("the body is readable")
        .to_bytes();
    Page {
        status,
        content_type,
        body: String::from_utf8(bytes.to_vec()).expect("the page is UTF-8"),
    }
}

fn router(prefix: &str, source: Arc<dyn MetricSource>) -> Router {
    let config = GatewayConfig {
        route_prefix: prefix.to_owned(),
        ..GatewayConfig::default()
    };
    app(AppState::with_empty_store(&config, source))
}

#[tokio::test]
async fn page_lists_pushed_groups_with_labels_families_and_push_time() {
    let gw = router("", Arc::new(NoSource));
    let body = "# HELP backup_bytes Bytes written.\n# TYPE backup_bytes gauge\nbackup_bytes{disk=\"a\"} 1\nbackup_bytes{disk=\"b\"} 2\n# TYPE runs_total counter\nruns_total 3\n";
    let pushed = call(&gw, Method::PUT, "/metrics/job/backup/zone/eu", body).await;
    assert_eq!(pushed.status, StatusCode::OK, "push: {}", pushed.body);

    let page = call(&gw, Method::GET, "/", "").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.content_type, "text/html; charset=utf-8");
    let html = &page.body;
    for want in [
        "<span>job=\"backup\"</span>",
        "<span>zone=\"eu\"</span>",
        "<span class=\"ok\">succeeded</span>",
        "2 metric families",
        "<td class=\"mono\">backup_bytes</td><td>GAUGE</td><td class=\"num\">2</td><td>Bytes written.</td>",
        "<td class=\"mono\">runs_total</td><td>COUNTER</td><td class=\"num\">1</td>",
        "1 group</small>",
    ] {
        assert!(html.contains(want), "missing {want:?} in the page:\n{html}");
    }
    // The last push as RFC 3339 with its age.
    let stamp = html
        .split("last push <time datetime=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a <time> for the last push");
    assert!(
        stamp.len() == 20 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "not RFC 3339 to the second: {stamp}"
    );
    assert!(html.contains("s ago)"), "no relative age:\n{html}");
    // The push gauges are the group's header, not rows of its table.
    assert!(!html.contains(">push_time_seconds<"), "{html}");
    assert!(
        !html.contains("<script"),
        "the page has no scripts:\n{html}"
    );
}

#[tokio::test]
async fn page_says_when_a_push_failed() {
    let gw = router("", Arc::new(NoSource));
    call(&gw, Method::PUT, "/metrics/job/a", "# TYPE m gauge\nm 1\n").await;
    let clash = call(
        &gw,
        Method::PUT,
        "/metrics/job/b",
        "# TYPE m counter\nm 1\n",
    )
    .await;
    assert_eq!(clash.status, StatusCode::BAD_REQUEST, "{}", clash.body);
    let html = call(&gw, Method::GET, "/", "").await.body;
    let group_b = html
        .split("<span>job=\"b\"</span>")
        .nth(1)
        .expect("the rejected push's group is listed");
    let header = group_b.split("</summary>").next().unwrap_or_default();
    assert!(header.contains("never succeeded"), "{header}");
    assert!(
        header.contains("<span class=\"failed\">failed</span> at <time"),
        "{header}"
    );
}

#[tokio::test]
async fn page_escapes_label_values_and_help() {
    let gw = router("", Arc::new(NoSource));
    let body = "# HELP m Says <b>hi</b> & \"bye\".\n# TYPE m gauge\nm{v=\"</td><script>\"} 1\n";
    let pushed = call(
        &gw,
        Method::PUT,
        "/metrics/job/j/x/%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        body,
    )
    .await;
    // `%2F` splits the path (upstream decodes before splitting), so use base64 for `/`.
    assert_eq!(pushed.status, StatusCode::BAD_REQUEST, "{}", pushed.body);
    let pushed = call(
        &gw,
        Method::PUT,
        "/metrics/job/j/x@base64/PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg",
        body,
    )
    .await;
    assert_eq!(pushed.status, StatusCode::OK, "{}", pushed.body);
    let html = call(&gw, Method::GET, "/", "").await.body;
    assert!(
        html.contains("<span>x=\"&lt;script&gt;alert(1)&lt;/script&gt;\"</span>"),
        "label value not escaped:\n{html}"
    );
    assert!(
        html.contains("<td>Says &lt;b&gt;hi&lt;/b&gt; &amp; &quot;bye&quot;.</td>"),
        "help not escaped:\n{html}"
    );
    assert!(!html.contains("<script"), "unescaped markup:\n{html}");
    assert!(!html.contains("<b>"), "unescaped markup:\n{html}");
}

#[tokio::test]
async fn page_renders_the_sources_sections_escaped_and_above_the_groups() {
    let gw = router("", Arc::new(SectionSource));
    let html = call(&gw, Method::GET, "/", "").await.body;
    for want in [
        "<h2>Findings &lt;now&gt;</h2>",
        "<p class=\"note\">checked &amp; rechecked</p>",
        "<tr class=\"critical\"><td>forwarding is off on &lt;vh-ext&gt;</td>",
        "<div>sysctl -w net.ipv4.ip_forward=1</div><div>echo &#39;x&#39; &gt; /etc/sysctl.d/99.conf</div>",
        "<a href=\"#section-0\">Findings &lt;now&gt;</a>",
    ] {
        assert!(html.contains(want), "missing {want:?} in the page:\n{html}");
    }
    let section = html.find("Findings &lt;now&gt;</h2>").expect("section");
    let groups = html.find("<section id=\"groups\">").expect("groups");
    assert!(section < groups, "the source's sections come first");
}

#[tokio::test]
async fn gateway_alone_shows_groups_only() {
    let gw = router("", Arc::new(NoSource));
    let html = call(&gw, Method::GET, "/", "").await.body;
    assert!(html.contains("No group has been pushed yet."), "{html}");
    assert!(!html.contains("section-0"), "no source sections: {html}");
}

#[tokio::test]
async fn head_answers_like_get_without_a_body_and_other_methods_are_refused() {
    let gw = router("", Arc::new(NoSource));
    let head = call(&gw, Method::HEAD, "/", "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.content_type, "text/html; charset=utf-8");
    assert!(head.body.is_empty(), "HEAD has no body: {}", head.body);
    let post = call(&gw, Method::POST, "/", "x").await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn page_lives_under_the_route_prefix() {
    let gw = router("/pg/", Arc::new(NoSource));
    call(&gw, Method::PUT, "/pg/metrics/job/prefixed", "m 1\n").await;
    let page = call(&gw, Method::GET, "/pg/", "").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("job=\"prefixed\""), "{}", page.body);
    assert!(page.body.contains("href=\"/pg/metrics\""), "{}", page.body);
    let bare = Request::builder()
        .uri("/pg")
        .body(Body::empty())
        .expect("request");
    let redirect = gw.clone().oneshot(bare).await.expect("answer");
    assert_eq!(redirect.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        redirect
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().expect("ASCII")),
        Some("/pg/")
    );
    assert_eq!(
        call(&gw, Method::GET, "/", "").await.status,
        StatusCode::NOT_FOUND,
        "nothing outside the prefix"
    );
}

#[tokio::test]
async fn the_served_gateway_keeps_the_sources_sections() {
    // `Gateway::bind` wraps the source (to add its own families); the page must still
    // show the sections of the source it was given.
    let config = GatewayConfig {
        listen_address: "127.0.0.1:0".parse().expect("loopback"),
        ..GatewayConfig::default()
    };
    let gateway = Gateway::bind(config, Arc::new(SectionSource))
        .await
        .expect("bind on loopback");
    let gw = app(gateway.state().clone());
    let html = call(&gw, Method::GET, "/", "").await.body;
    assert!(
        html.contains("<h2>Findings &lt;now&gt;</h2>"),
        "the source's section is missing:\n{html}"
    );
}

/// A push time no clock gives (a restored or hand-made group: pushes always get the
/// gateway's own) must not take the page down: it reads as "never succeeded" rather
/// than overflowing a `SystemTime`.
#[tokio::test]
async fn page_survives_push_times_out_of_range() {
    use gateway::grouping::GroupingKey;
    use gateway::model::{Gauge, Metric, MetricType};
    use gateway::store::RestoredGroup;

    let gauge = |name: &str, value: f64| MetricFamily {
        name: Some(name.to_owned()),
        r#type: Some(MetricType::Gauge as i32),
        metric: vec![Metric {
            gauge: Some(Gauge { value: Some(value) }),
            ..Metric::default()
        }],
        ..MetricFamily::default()
    };
    let state = AppState::with_empty_store(&GatewayConfig::default(), Arc::new(NoSource));
    let groups = [1e19, 9.3e18, f64::MAX, f64::INFINITY]
        .iter()
        .enumerate()
        .map(|(i, &time)| RestoredGroup {
            key: GroupingKey::from_path(&format!("job/huge{i}")).expect("valid key"),
            families: vec![
                (gauge("m", 1.0), std::time::SystemTime::UNIX_EPOCH),
                (
                    gauge("push_time_seconds", time),
                    std::time::SystemTime::UNIX_EPOCH,
                ),
                (
                    gauge("push_failure_time_seconds", time),
                    std::time::SystemTime::UNIX_EPOCH,
                ),
            ],
            expiry: gateway::store::Expiry::Default,
        })
        .collect();
    let skipped = state.store().restore(groups);
    assert!(skipped.is_empty(), "{skipped:?}");
    let gw = app(state);
    let page = call(&gw, Method::GET, "/", "").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("job=\"huge0\""), "{}", page.body);
    let json = call(&gw, Method::GET, "/api/v1/metrics", "").await;
    assert_eq!(json.status, StatusCode::OK, "{}", json.body);
}
