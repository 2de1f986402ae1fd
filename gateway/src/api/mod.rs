//! The HTTP API: every route of the pushgateway, in one table ([`app`]).
//!
//! Handlers are small: they turn a request into a [`WriteCommand`] or a read of the
//! store, and errors into [`ApiError`] responses. Status codes, bodies and headers
//! follow what the Go pushgateway 1.5.1 answers (405 with `Allow`, `OPTIONS` answered
//! with `Allow`, CORS on `/api/v1`, trailing-slash redirects), so that tests and
//! clients written against it see no difference. [`app`] needs no socket: tests call
//! `app(state).oneshot(request)`. `<prefix>/` is dropgate's status page ([`crate::status`]).
//!
//! [`WriteCommand`]: crate::store::WriteCommand

mod clean;
mod error;
mod lifecycle;
mod otlp;
mod page;
mod push;
mod scrape;
mod v1;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, on, MethodFilter, MethodRouter};
use axum::Router;
use tokio::sync::{watch, Semaphore};

pub use error::ApiError;
pub use v1::rfc3339_nano;

use crate::build_info::BuildInfo;
use crate::codec::limits::PushLimits;
use crate::config::{normalize_route_prefix, GatewayConfig};
use crate::names::NameRules;
use crate::source::MetricSource;
use crate::store::{MetricStore, ReservedNames};

/// What the handlers share: the store, the trace source and the settings of the API.
/// Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<MetricStore>,
    source: Arc<dyn MetricSource>,
    route_prefix: String,
    enable_admin_api: bool,
    enable_lifecycle: bool,
    disable_consistency_check: bool,
    body_limit: usize,
    push_limits: PushLimits,
    /// Which names pushes may use (the store's rules, for the URL and the parsers).
    names: NameRules,
    max_grouping_key_bytes: usize,
    max_render_factor: usize,
    /// Pushes parsed at once: one core fewer than the machine has (at least one), so
    /// that however many large pushes arrive, a core is left for the async workers
    /// (`/-/healthy`, scrapes, small pushes) and memory holds that many at most.
    parse_permits: Arc<Semaphore>,
    /// Held while an OTLP export with delta points reads its group and writes the sum
    /// back, so that two such exports of one job cannot both add to the same old value.
    otlp_delta: std::sync::Mutex<()>,
    status_flags: BTreeMap<String, String>,
    build_info: BuildInfo,
    start_time: SystemTime,
    quit: QuitSignal,
}

impl AppState {
    /// State for [`app`] from the configuration, a store (possibly restored) and the
    /// source of the process's own families.
    #[must_use]
    pub fn new(
        config: &GatewayConfig,
        store: Arc<MetricStore>,
        source: Arc<dyn MetricSource>,
    ) -> Self {
        let names = store.name_rules();
        Self {
            inner: Arc::new(Inner {
                store,
                source,
                route_prefix: normalize_route_prefix(&config.route_prefix),
                enable_admin_api: config.enable_admin_api,
                enable_lifecycle: config.enable_lifecycle,
                disable_consistency_check: config.disable_consistency_check,
                body_limit: config.body_limit,
                push_limits: config.push_limits(),
                names,
                max_grouping_key_bytes: config.max_grouping_key_bytes,
                max_render_factor: config.max_render_factor,
                parse_permits: Arc::new(Semaphore::new(parse_permits())),
                otlp_delta: std::sync::Mutex::new(()),
                status_flags: config.status_flags(),
                build_info: config.build_info,
                start_time: SystemTime::now(),
                quit: QuitSignal::new(),
            }),
        }
    }

    /// State with a new, empty store that reserves `source`'s family names.
    #[must_use]
    pub fn with_empty_store(config: &GatewayConfig, source: Arc<dyn MetricSource>) -> Self {
        let store = Arc::new(
            MetricStore::new(ReservedNames::of_source(source.as_ref()))
                .with_expiry(config.push_ttl, Arc::default())
                .with_names(config.name_rules()),
        );
        Self::new(config, store, source)
    }

    /// The store behind the API.
    #[must_use]
    pub fn store(&self) -> &Arc<MetricStore> {
        &self.inner.store
    }

    /// Fires when `/-/quit` is called (with the lifecycle API enabled).
    #[must_use]
    pub fn quit_signal(&self) -> QuitSignal {
        self.inner.quit.clone()
    }

    fn prefixed(&self, path: &str) -> String {
        format!("{}{path}", self.inner.route_prefix)
    }
}

/// How many pushes are parsed at once: the machine's cores but one, at least one.
fn parse_permits() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .saturating_sub(1)
        .max(1)
}

/// A one-shot "please shut down" flag, set by `/-/quit`, awaited by the server.
#[derive(Clone, Debug)]
pub struct QuitSignal {
    sender: Arc<watch::Sender<bool>>,
}

impl QuitSignal {
    fn new() -> Self {
        Self {
            sender: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Asks for shutdown.
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    /// Whether shutdown was asked for.
    #[must_use]
    pub fn is_triggered(&self) -> bool {
        *self.sender.borrow()
    }

    /// Resolves once shutdown was asked for.
    pub async fn triggered(&self) {
        let mut receiver = self.sender.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = receiver.wait_for(|quit| *quit).await;
    }
}

/// The router with every route of the pushgateway under the configured prefix.
pub fn app(state: AppState) -> Router {
    let p = |path: &str| state.prefixed(path);
    let push = || {
        with_allow(
            "DELETE, OPTIONS, POST, PUT",
            on(
                MethodFilter::PUT
                    .or(MethodFilter::POST)
                    .or(MethodFilter::DELETE),
                push::push,
            ),
        )
    };
    let mut router = Router::new()
        .route(&p("/metrics"), get_only(get(scrape::scrape)))
        .route(&p("/metrics/job/{*rest}"), push())
        .route(&p("/metrics/job@base64/{*rest}"), push())
        .route(
            &p("/otlp/v1/metrics"),
            with_allow("OPTIONS, POST", axum::routing::post(otlp::export)),
        )
        .route(&p("/-/healthy"), get_only(get(lifecycle::ok)))
        .route(&p("/-/ready"), get_only(get(lifecycle::ok)))
        .route(
            &p("/api/v1/status"),
            v1::with_cors_allow("GET, OPTIONS", get(v1::status).head(head_not_allowed)),
        )
        .route(
            &p("/api/v1/metrics"),
            v1::with_cors_allow("GET, OPTIONS", get(v1::metrics).head(head_not_allowed)),
        )
        // Upstream answers OPTIONS on any /api/v1 path (CORS preflight), 404 otherwise.
        .route(&p("/api/v1/{*path}"), any(v1::options_or_not_found))
        // The status page; `get` answers HEAD too.
        .route(
            &p("/"),
            with_allow("GET, HEAD, OPTIONS", get(page::status_page)),
        );
    // Upstream registers the quit handlers under the prefix and a GET handler (405 with
    // its own text) on the bare `/-/quit`, whatever the prefix and lifecycle setting.
    let quit = on(MethodFilter::PUT.or(MethodFilter::POST), lifecycle::quit);
    let quit_get = || get(lifecycle::quit_get).head(head_not_allowed);
    router = if state.inner.route_prefix.is_empty() {
        router.route(
            "/-/quit",
            with_allow("GET, OPTIONS, POST, PUT", quit.merge(quit_get())),
        )
    } else {
        router
            .route(&p("/-/quit"), with_allow("OPTIONS, POST, PUT", quit))
            .route("/-/quit", with_allow("GET, OPTIONS", quit_get()))
    };
    if state.inner.enable_admin_api {
        router = router.route(
            &p("/api/v1/admin/wipe"),
            v1::with_cors_allow("OPTIONS, PUT", axum::routing::put(v1::wipe)),
        );
    }
    router
        .fallback(not_found_or_redirect)
        .layer(axum::middleware::from_fn(clean::redirect_unclean))
        .with_state(state)
}

/// A GET route of upstream's: HEAD is not one of its methods (axum's `get` would answer
/// it), so it gets 405 like any other method.
fn get_only(router: MethodRouter<AppState>) -> MethodRouter<AppState> {
    with_allow("GET, OPTIONS", router.head(head_not_allowed))
}

async fn head_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed {
        allow: "GET, OPTIONS",
    }
}

/// Adds upstream's answers to other methods: `OPTIONS` → 200 with `Allow`, anything
/// else → 405 with `Allow`.
fn with_allow(allow: &'static str, router: MethodRouter<AppState>) -> MethodRouter<AppState> {
    router
        .options(move || async move { (StatusCode::OK, [(header::ALLOW, allow)]) })
        .fallback(move || async move { ApiError::MethodNotAllowed { allow } })
}

/// 404 for unknown paths, except upstream's trailing-slash redirects: `GET /metrics/`
/// → 301 to `/metrics` (and the other GET routes), `PUT /metrics/job/` → 307; and
/// `GET <prefix>` → 301 to the status page at `<prefix>/`.
async fn not_found_or_redirect(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
) -> Response {
    let path = request.uri().path();
    let method = request.method();
    let reading = method == Method::GET || method == Method::HEAD;
    // The status page lives at `<prefix>/`; the bare prefix leads there.
    if reading && !state.inner.route_prefix.is_empty() && path == state.inner.route_prefix {
        let to = format!("{path}/");
        let body = format!("<a href=\"{to}\">Moved Permanently</a>.\n\n");
        return redirect(StatusCode::MOVED_PERMANENTLY, &to, Some(body));
    }
    let Some(trimmed) = path.strip_suffix('/').filter(|t| !t.is_empty()) else {
        return ApiError::NotFound.into_response();
    };
    let get_routes = ["/metrics", "/-/healthy", "/-/ready"].map(|route| state.prefixed(route));
    if reading && get_routes.iter().any(|r| r == trimmed) {
        let body = format!("<a href=\"{trimmed}\">Moved Permanently</a>.\n\n");
        return redirect(StatusCode::MOVED_PERMANENTLY, trimmed, Some(body));
    }
    let push_methods = [Method::PUT, Method::POST, Method::DELETE];
    if push_methods.contains(method) && trimmed == state.prefixed("/metrics/job") {
        return redirect(StatusCode::TEMPORARY_REDIRECT, trimmed, None);
    }
    ApiError::NotFound.into_response()
}

fn redirect(status: StatusCode, location: &str, html: Option<String>) -> Response {
    let location = HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/"));
    let mut response = match html {
        Some(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            body,
        )
            .into_response(),
        None => ().into_response(),
    };
    *response.status_mut() = status;
    response.headers_mut().insert(header::LOCATION, location);
    response
}
