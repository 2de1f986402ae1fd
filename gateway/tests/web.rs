//! The web front in process: the guard through `oneshot` (filter, networks, basic auth,
//! headers, push limits, request timeout, counting), then the connection loop over real
//! loopback sockets (header timeout, connection limit, graceful shutdown with an
//! in-flight push that is still saved).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use http_body_util::BodyExt;
use tokio::sync::watch;
use tower::ServiceExt;

use gateway::api::{app, AppState};
use gateway::config::GatewayConfig;
use gateway::server::Gateway;
use gateway::source::NoSource;
use gateway::web::config_file::WebSettings;
use gateway::web::filter::{PathFilter, PushAllowList};
use gateway::web::guard::Guard;
use gateway::web::rejections::{Reason, Rejections, WithGatewayMetrics};

const BYPASS_ATTEMPTS: &str = include_str!("data/bypass-attempts.tsv");
const PUSH_BYPASS_ATTEMPTS: &str = include_str!("data/push-bypass-attempts.tsv");
/// The rules `data/push-bypass-attempts.tsv` is written against (see its header).
const PUSH_RULES: [&str; 3] = ["^/metrics/job/secret(/|$)", "/team/red(/|$)", "evil"];

/// A guarded gateway, with `/debug` and `/pprof` routes behind it that answer
/// "SECRET", so a bypass would show.
struct Guarded {
    router: Router,
    rejections: Arc<Rejections>,
    settings: watch::Sender<Arc<WebSettings>>,
    guard: Arc<Guard>,
}

struct Setup {
    config: GatewayConfig,
    allow: Vec<String>,
    request_timeout: Duration,
    settings: WebSettings,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            config: GatewayConfig::default(),
            allow: Vec::new(),
            request_timeout: Duration::from_secs(10),
            settings: WebSettings::default(),
        }
    }
}

fn guarded(setup: Setup) -> Guarded {
    let rejections = Arc::new(Rejections::default());
    let source = Arc::new(WithGatewayMetrics::new(
        Arc::clone(&rejections),
        &setup.config.build_info,
        Arc::new(NoSource),
    ));
    let state = AppState::with_empty_store(&setup.config, source);
    let prefix = gateway::config::normalize_route_prefix(&setup.config.route_prefix);
    let secret = || get(|| async { "SECRET" });
    let mut hidden = Router::new();
    let bases: std::collections::BTreeSet<&str> = ["", prefix.as_str()].into();
    for base in bases {
        for path in ["/debug", "/pprof"] {
            hidden = hidden
                .route(&format!("{base}{path}"), secret())
                .route(&format!("{base}{path}/{{*rest}}"), secret());
        }
    }
    hidden = hidden.route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }),
    );
    let (settings, receiver) = watch::channel(Arc::new(setup.settings));
    let filter = PathFilter::new(&setup.config.deny_paths, &prefix).expect("rules compile");
    let allow = PushAllowList::parse(&setup.allow).expect("networks parse");
    let guard = Arc::new(Guard::new(
        filter,
        allow,
        setup.request_timeout,
        receiver,
        Arc::clone(&rejections),
    ));
    Guarded {
        router: Arc::clone(&guard).wrap(app(state).merge(hidden)),
        rejections,
        settings,
        guard,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Guarded {
    async fn send(&self, request: Request<Body>) -> Answer {
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
            .expect("bodies are in memory")
            .to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn call(&self, method: Method, uri: &str, peer: &str, body: &str) -> Answer {
        let peer: SocketAddr = peer.parse().expect("test peer address");
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_owned()))
            .expect("valid request");
        request.extensions_mut().insert(ConnectInfo(peer));
        self.send(request).await
    }
}

fn attempts() -> Vec<(&'static str, &'static str)> {
    table(BYPASS_ATTEMPTS)
}

fn table(text: &'static str) -> Vec<(&'static str, &'static str)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.split_once('\t').expect("name<TAB>path"))
        .collect()
}

#[tokio::test]
async fn bypass_attempts_never_reach_a_route() {
    let mut setup = Setup::default();
    setup.config.route_prefix = "/pg".to_owned();
    let gw = guarded(setup);
    let mut sent = 0;
    for (name, path) in attempts() {
        // `Uri` refuses a raw backslash; the end-to-end test sends that one raw.
        let Ok(uri) = path.parse::<axum::http::Uri>() else {
            continue;
        };
        let before = gw.rejections.get(Reason::DeniedPath);
        let request = Request::get(uri).body(Body::empty()).expect("request");
        let answer = gw.send(request).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "case {name}: {path}");
        assert!(
            !answer.body.contains("SECRET"),
            "case {name} reached a route"
        );
        assert_eq!(
            gw.rejections.get(Reason::DeniedPath),
            before + 1,
            "case {name}: denied by the filter, not just unrouted"
        );
        sent += 1;
    }
    assert!(sent >= 25, "only {sent} attempts could be sent");
    // The hidden route itself works, so the 404s above are the filter's doing.
    let answer = gw.call(Method::GET, "/pg/metrics", "127.0.0.1:1", "").await;
    assert_eq!(answer.status, StatusCode::OK);
}

/// What a scrape must never show after the push bypass attempts: each denied group.
fn assert_no_denied_group(exposition: &str) {
    for denied in ["job=\"secret\"", "team=\"red\"", "evil"] {
        assert!(
            !exposition.to_ascii_lowercase().contains(denied),
            "a denied group was stored ({denied}):\n{exposition}"
        );
    }
}

#[tokio::test]
async fn push_bypass_attempts_store_nothing() {
    let mut setup = Setup::default();
    setup.config.route_prefix = "/pg".to_owned();
    setup.config.deny_paths = PUSH_RULES.map(str::to_owned).to_vec();
    let gw = guarded(setup);
    let attempts = table(PUSH_BYPASS_ATTEMPTS);
    assert!(attempts.len() >= 25, "the table must stay large");
    for (name, path) in attempts {
        for method in [Method::PUT, Method::POST, Method::DELETE] {
            let before = gw.rejections.get(Reason::DeniedPath);
            let answer = gw.call(method.clone(), path, "127.0.0.1:1", "m 1\n").await;
            assert_eq!(
                answer.status,
                StatusCode::NOT_FOUND,
                "case {name}: {method} {path}: {}",
                answer.body
            );
            assert_eq!(
                gw.rejections.get(Reason::DeniedPath),
                before + 1,
                "case {name}: {method} denied by the filter"
            );
        }
    }
    // A group the rules do not name is stored, so the 404s above are the filter's.
    let allowed = gw
        .call(
            Method::PUT,
            "/pg/metrics/job/public/team/blue",
            "127.0.0.1:1",
            "m 1\n",
        )
        .await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", allowed.body);
    let scrape = gw.call(Method::GET, "/pg/metrics", "127.0.0.1:1", "").await;
    assert!(scrape.body.contains("job=\"public\""), "{}", scrape.body);
    assert_no_denied_group(&scrape.body);
}

#[tokio::test]
async fn writes_only_from_allowed_networks_and_scrapes_from_anywhere() {
    let mut setup = Setup {
        allow: vec!["10.0.0.0/8".to_owned(), "::1".to_owned()],
        ..Setup::default()
    };
    setup.config.enable_admin_api = true;
    let gw = guarded(setup);
    let table = [
        (
            "push from outside",
            Method::PUT,
            "/metrics/job/a",
            "127.0.0.1:5",
            403,
        ),
        (
            "delete from outside",
            Method::DELETE,
            "/metrics/job/a",
            "192.0.2.1:5",
            403,
        ),
        (
            "wipe from outside",
            Method::PUT,
            "/api/v1/admin/wipe",
            "127.0.0.1:5",
            403,
        ),
        (
            "quit from outside",
            Method::POST,
            "/-/quit",
            "127.0.0.1:5",
            403,
        ),
        (
            "scrape from outside",
            Method::GET,
            "/metrics",
            "127.0.0.1:5",
            200,
        ),
        (
            "status from outside",
            Method::GET,
            "/api/v1/status",
            "127.0.0.1:5",
            200,
        ),
        (
            "push from inside",
            Method::PUT,
            "/metrics/job/a",
            "10.1.2.3:5",
            200,
        ),
        (
            "push from v6 host",
            Method::PUT,
            "/metrics/job/b",
            "[::1]:5",
            200,
        ),
        (
            "mapped v4 inside",
            Method::PUT,
            "/metrics/job/c",
            "[::ffff:10.0.0.9]:5",
            200,
        ),
    ];
    for (name, method, path, peer, want) in table {
        let answer = gw.call(method, path, peer, "x 1\n").await;
        assert_eq!(answer.status.as_u16(), want, "case {name}: {}", answer.body);
        if want == 403 {
            assert!(answer.body.contains("--web.allow-push-from"), "case {name}");
        }
    }
    assert_eq!(gw.rejections.get(Reason::PushNotAllowed), 4);
}

#[tokio::test]
async fn basic_auth_from_the_web_config() {
    let hash = bcrypt::hash("s3cret", 4).expect("bcrypt");
    let mut setup = Setup::default();
    setup.settings.users = BTreeMap::from([("alice".to_owned(), hash)]);
    let gw = guarded(setup);
    let basic = |credentials: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    };
    let table = [
        ("no credentials", None, 401),
        ("wrong password", Some(basic("alice:wrong")), 401),
        ("no password", Some(basic("alice:")), 401),
        ("unknown user", Some(basic("bob:s3cret")), 401),
        ("other scheme", Some("Bearer s3cret".to_owned()), 401),
        ("right password", Some(basic("alice:s3cret")), 200),
        ("right password, cached", Some(basic("alice:s3cret")), 200),
    ];
    for (name, authorization, want) in table {
        let mut request = Request::get("/metrics");
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let answer = gw.send(request.body(Body::empty()).expect("request")).await;
        assert_eq!(answer.status.as_u16(), want, "case {name}");
        if want == 401 {
            assert_eq!(
                answer.headers.get(header::WWW_AUTHENTICATE),
                Some(&HeaderValue::from_static("Basic")),
                "case {name}"
            );
        }
    }
    assert_eq!(gw.rejections.get(Reason::Unauthorized), 5);
    // A denied path is 404 before any question of credentials.
    let answer = gw.call(Method::GET, "/debug", "127.0.0.1:1", "").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    // A reload that removes the users opens the gateway again.
    gw.settings.send_replace(Arc::new(WebSettings::default()));
    let answer = gw.call(Method::GET, "/metrics", "127.0.0.1:1", "").await;
    assert_eq!(answer.status, StatusCode::OK);
}

fn basic(credentials: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

/// A bcrypt hash of `password` whose check takes at least `at_least` on this machine
/// and build (debug builds run bcrypt far slower than release ones).
fn slow_hash(password: &str, at_least: Duration) -> String {
    for cost in 6..=14 {
        let started = std::time::Instant::now();
        let hash = bcrypt::hash(password, cost).expect("bcrypt");
        if started.elapsed() >= at_least {
            return hash;
        }
    }
    panic!("no bcrypt cost up to 14 takes {at_least:?} here");
}

/// 100 wrong passwords at once: 4 checks run, 64 wait and give up with 503 after the
/// wait (here the request timeout, shorter than a check), the other 32 are refused
/// with 429 at once; none waits without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bcrypt_checks_are_bounded_queued_and_time_out() {
    let wait = Duration::from_millis(150);
    let mut setup = Setup {
        request_timeout: wait,
        ..Setup::default()
    };
    setup.settings.users = BTreeMap::from([(
        "alice".to_owned(),
        slow_hash("s3cret", Duration::from_millis(400)),
    )]);
    let gw = Arc::new(guarded(setup));
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let gw = Arc::clone(&gw);
            tokio::spawn(async move {
                let request = Request::get("/metrics")
                    .header(header::AUTHORIZATION, basic(&format!("alice:guess{i}")))
                    .body(Body::empty())
                    .expect("request");
                let answer = gw.send(request).await;
                (answer.status, answer.headers, started.elapsed())
            })
        })
        .collect();
    let mut by_status = BTreeMap::new();
    for task in tasks {
        let (status, headers, elapsed) = task.await.expect("request task");
        *by_status.entry(status.as_u16()).or_insert(0) += 1;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(elapsed < wait, "429 is at once: {elapsed:?}");
        }
        if matches!(status.as_u16(), 429 | 503) {
            assert_eq!(
                headers.get(header::RETRY_AFTER),
                Some(&HeaderValue::from_static("1"))
            );
        }
    }
    let count = |code: u16| by_status.get(&code).copied().unwrap_or(0);
    assert_eq!(count(429), 32, "{by_status:?}");
    assert_eq!(count(503), 64, "{by_status:?}");
    assert_eq!(count(401), 4, "{by_status:?}");
    assert_eq!(gw.guard.bcrypt_checks(), 4, "only the admitted checks ran");
    assert_eq!(gw.rejections.get(Reason::AuthBusy), 96);
}

/// A right password costs one bcrypt check, then none while it stays right; a wrong
/// one for the same user is checked every time; a reload with a new hash forgets it.
#[tokio::test]
async fn successful_logins_are_cached_by_user_and_password() {
    let mut setup = Setup::default();
    setup.settings.users = BTreeMap::from([(
        "alice".to_owned(),
        bcrypt::hash("s3cret", 4).expect("bcrypt"),
    )]);
    let gw = guarded(setup);
    let get = |credentials: &str| {
        Request::get("/metrics")
            .header(header::AUTHORIZATION, basic(credentials))
            .body(Body::empty())
            .expect("request")
    };
    for _ in 0..10 {
        assert_eq!(gw.send(get("alice:s3cret")).await.status, StatusCode::OK);
    }
    assert_eq!(gw.guard.bcrypt_checks(), 1, "one check for ten logins");
    for _ in 0..3 {
        let answer = gw.send(get("alice:s3cret2")).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        gw.guard.bcrypt_checks(),
        4,
        "wrong passwords are never cached"
    );
    // Another header spelling of the same login is the same login.
    let answer = gw
        .send(
            Request::get("/metrics")
                .header(
                    header::AUTHORIZATION,
                    format!("basic  {}", &basic("alice:s3cret")[6..]),
                )
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(gw.guard.bcrypt_checks(), 4, "keyed by user and password");
    // A reload with a new password: the old one is checked again, and refused.
    let settings = WebSettings {
        users: BTreeMap::from([("alice".to_owned(), bcrypt::hash("n3w", 4).expect("bcrypt"))]),
        ..WebSettings::default()
    };
    gw.settings.send_replace(Arc::new(settings));
    let answer = gw.send(get("alice:s3cret")).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(gw.guard.bcrypt_checks(), 5);
}

#[tokio::test]
async fn headers_from_the_web_config_and_no_server_banner() {
    let mut setup = Setup::default();
    setup.settings.headers = vec![(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    )];
    let gw = guarded(setup);
    for (method, path) in [
        (Method::GET, "/metrics"),
        (Method::GET, "/debug"),
        (Method::GET, "/nowhere"),
        (Method::PUT, "/metrics/job/a/odd"),
    ] {
        let answer = gw.call(method, path, "127.0.0.1:1", "").await;
        assert!(answer.headers.get(header::SERVER).is_none(), "{path}");
        assert_eq!(
            answer.headers.get(header::STRICT_TRANSPORT_SECURITY),
            Some(&HeaderValue::from_static("max-age=31536000")),
            "{path}"
        );
    }
}

#[tokio::test]
async fn push_limits_reject_and_change_nothing() {
    let mut setup = Setup::default();
    setup.config.max_series_per_push = 3;
    setup.config.max_labels_per_series = 5;
    setup.config.max_label_value_bytes = 8;
    setup.config.max_buckets_per_series = 2;
    setup.config.max_grouping_key_bytes = 16;
    let gw = guarded(setup);
    let ok = gw
        .call(
            Method::PUT,
            "/metrics/job/j",
            "127.0.0.1:1",
            "a 1\nb 2\nc 3\n",
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let before = gw
        .call(Method::GET, "/metrics", "127.0.0.1:1", "")
        .await
        .body;
    let table = [
        (
            "four series",
            "/metrics/job/j",
            "a 1\nb 2\nc 3\nd 4\n",
            "4 series",
        ),
        (
            "six labels with job and instance",
            "/metrics/job/j",
            "a{l1=\"1\",l2=\"2\",l3=\"3\",l4=\"4\"} 1\n",
            "6 labels",
        ),
        (
            "grouping labels count",
            "/metrics/job/j/g1/x/g2/y/g3/z",
            "a{l1=\"1\"} 1\n",
            "6 labels",
        ),
        (
            "long label value",
            "/metrics/job/j",
            "a{l1=\"123456789\"} 1\n",
            "label value of \"a\" is 9 bytes long",
        ),
        (
            "three buckets",
            "/metrics/job/j",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"3\"} 1\n",
            "at least 3 buckets",
        ),
        (
            "long grouping key",
            "/metrics/job/j/g/0123456789abcdef",
            "a 1\n",
            "grouping key of the URL is 21 bytes long",
        ),
    ];
    for (name, path, body, want) in table {
        let answer = gw.call(Method::PUT, path, "127.0.0.1:1", body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "case {name}");
        assert!(answer.body.contains(want), "case {name}: {}", answer.body);
        let metrics = gw
            .call(Method::GET, "/metrics", "127.0.0.1:1", "")
            .await
            .body;
        let strip = |text: &str| {
            text.lines()
                .filter(|l| !l.starts_with("dropgate_gateway_rejected_total"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            strip(&metrics),
            strip(&before),
            "case {name} changed the store"
        );
    }
    assert_eq!(gw.rejections.get(Reason::TooManySeries), 1);
    assert_eq!(gw.rejections.get(Reason::TooManyLabels), 2);
    assert_eq!(gw.rejections.get(Reason::LabelTooLong), 2);
    assert_eq!(gw.rejections.get(Reason::TooManyBuckets), 1);
    let exposed = gw
        .call(Method::GET, "/metrics", "127.0.0.1:1", "")
        .await
        .body;
    assert!(
        exposed.contains("dropgate_gateway_rejected_total{reason=\"too_many_labels\"} 2"),
        "{exposed}"
    );
}

#[tokio::test]
async fn the_rejection_counter_cannot_be_pushed() {
    let gw = guarded(Setup::default());
    let answer = gw
        .call(
            Method::PUT,
            "/metrics/job/j",
            "127.0.0.1:1",
            "dropgate_gateway_rejected_total{reason=\"x\"} 1\n",
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    assert_eq!(gw.rejections.get(Reason::InconsistentPush), 1);
}

#[tokio::test]
async fn slow_requests_time_out_with_408() {
    let setup = Setup {
        request_timeout: Duration::from_millis(100),
        ..Setup::default()
    };
    let gw = guarded(setup);
    let answer = gw.call(Method::GET, "/slow", "127.0.0.1:1", "").await;
    assert_eq!(answer.status, StatusCode::REQUEST_TIMEOUT);
    assert!(answer.body.contains("--web.request-timeout"));
    assert_eq!(gw.rejections.get(Reason::RequestTimeout), 1);
}

/// A temp dir removed at the end of the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("dropgate-web-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A gateway on 127.0.0.1:<any port>, run until the returned sender fires.
async fn running(
    config: GatewayConfig,
) -> (
    SocketAddr,
    Arc<Rejections>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), gateway::server::ServeError>>,
) {
    let config = GatewayConfig {
        listen_address: "127.0.0.1:0".parse().expect("loopback"),
        ..config
    };
    let gateway = Gateway::bind(config, Arc::new(NoSource))
        .await
        .expect("the gateway binds");
    let addr = gateway.local_addr().expect("bound address");
    let rejections = Arc::clone(gateway.rejections());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gateway.run(async move {
        let _ = stopped.await;
    }));
    (addr, rejections, stop, task)
}

/// Sends `raw` on a new connection and reads until the server closes (blocking, in a
/// blocking task).
async fn exchange(addr: SocketAddr, raw: impl Into<Vec<u8>>) -> String {
    let raw = raw.into();
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect to the gateway");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set timeout");
        stream.write_all(&raw).expect("send");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .expect("client thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_or_missing_head_gets_408_after_the_header_timeout() {
    let config = GatewayConfig {
        header_read_timeout: Duration::from_millis(300),
        ..GatewayConfig::default()
    };
    let (addr, rejections, stop, task) = running(config).await;
    let partial = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await;
    assert!(partial.starts_with("HTTP/1.1 408"), "{partial}");
    assert!(partial.contains("--web.header-read-timeout"), "{partial}");
    let silent = exchange(addr, b"").await;
    assert!(silent.starts_with("HTTP/1.1 408"), "{silent}");
    assert_eq!(rejections.get(Reason::HeaderTimeout), 2);
    // A complete request is answered as usual.
    let whole = exchange(
        addr,
        b"GET /-/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(whole.starts_with("HTTP/1.1 200"), "{whole}");
    let _ = stop.send(());
    task.await.expect("join").expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_get_429() {
    let config = GatewayConfig {
        max_connections: 2,
        header_read_timeout: Duration::from_secs(5),
        ..GatewayConfig::default()
    };
    let (addr, rejections, stop, task) = running(config).await;
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    // Let the server accept both before the third arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(third.starts_with("HTTP/1.1 429"), "{third}");
    assert!(third.contains("--web.max-connections"), "{third}");
    assert_eq!(rejections.get(Reason::TooManyConnections), 1);
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fourth = exchange(
        addr,
        b"GET /-/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        fourth.starts_with("HTTP/1.1 200"),
        "freed permits are reused: {fourth}"
    );
    let _ = stop.send(());
    task.await.expect("join").expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_push_in_flight_saves_it_and_accepts_no_more() {
    let dir = TempDir::new("shutdown");
    let file = dir.0.join("store");
    let config = GatewayConfig {
        persistence_file: Some(file.clone()),
        ..GatewayConfig::default()
    };
    let (addr, _, stop, task) = running(config).await;
    let body = b"in_flight 42\n";
    let mut client = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            stream,
            "PUT /metrics/job/flight HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .expect("send head");
        stream.write_all(&body[..5]).expect("send half the body");
        stream
    })
    .await
    .expect("client");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "no new connection is accepted once shutdown began"
    );
    assert!(!task.is_finished(), "shutdown waits for the push in flight");
    let answer = tokio::task::spawn_blocking(move || {
        client.write_all(&body[5..]).expect("send the rest");
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .expect("client");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    task.await.expect("join").expect("clean stop");
    let store = gateway::store::MetricStore::new(gateway::store::ReservedNames::default());
    gateway::persistence::load(&store, &file).expect("the saved file loads");
    let exposition = gateway::store::exposition(
        &store,
        &NoSource,
        gateway::exposition::negotiate(None).format,
        gateway::exposition::negotiate(None).escaping,
    );
    let text = String::from_utf8(exposition).expect("text");
    assert!(
        text.contains("in_flight{instance=\"\",job=\"flight\"} 42"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_cannot_hold_up_shutdown() {
    let dir = TempDir::new("stalled");
    let file = dir.0.join("store");
    let config = GatewayConfig {
        persistence_file: Some(file.clone()),
        request_timeout: Duration::from_secs(2),
        ..GatewayConfig::default()
    };
    let (addr, _, stop, task) = running(config).await;
    let stalled = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .write_all(
                b"PUT /metrics/job/stall HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx",
            )
            .expect("send a head and one byte of the body");
        stream
    })
    .await
    .expect("client");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("shutdown is bounded although the client never finishes")
        .expect("join")
        .expect("clean stop");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(file.exists(), "the store was saved");
    drop(stalled);
}

/// The push bypass table over a real socket: raw request lines as a client sends
/// them (no client library re-encodes them), then a scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_bypass_attempts_over_a_socket_store_nothing() {
    let config = GatewayConfig {
        route_prefix: "/pg".to_owned(),
        deny_paths: PUSH_RULES.map(str::to_owned).to_vec(),
        ..GatewayConfig::default()
    };
    let (addr, rejections, stop, task) = running(config).await;
    let put = |path: &str| {
        format!(
            "PUT {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nConnection: close\r\n\r\nm 1\n"
        )
    };
    let attempts = table(PUSH_BYPASS_ATTEMPTS);
    for (name, path) in &attempts {
        let answer = exchange(addr, put(path)).await;
        assert!(
            answer.starts_with("HTTP/1.1 404"),
            "case {name}: PUT {path}:\n{answer}"
        );
    }
    assert_eq!(rejections.get(Reason::DeniedPath), attempts.len() as u64);
    let allowed = exchange(addr, put("/pg/metrics/job/public")).await;
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    let scrape = exchange(
        addr,
        "GET /pg/metrics HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(scrape.contains("job=\"public\""), "{scrape}");
    assert_no_denied_group(&scrape);
    let _ = stop.send(());
    task.await.expect("server task").expect("clean stop");
}
