//! Running the gateway: check the web settings, restore, bind, serve, shut down
//! gracefully, persist.
//!
//! The binary calls [`serve`] (for `dropgate gateway` with [`NoSource`], for
//! `dropgate run` with the tracer's source) and passes the future that ends it, usually
//! [`shutdown_signal`]. `/-/quit` ends it too when the lifecycle API is enabled. Tests
//! that need the bound port use [`Gateway::bind`] and [`Gateway::run`]. Every route,
//! merged ones included, is served behind the guard of [`crate::web`], on the
//! connection loop of [`crate::web::listener`].
//!
//! [`NoSource`]: crate::source::NoSource

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::api::{app, AppState};
use crate::config::{normalize_route_prefix, GatewayConfig};
use crate::persistence::{self, LoadOutcome, PersistenceError, SaveFailures};
use crate::source::MetricSource;
use crate::store::{self, MetricStore, ReservedNames};
use crate::web::config_file::{self, Fingerprint, WebConfigError, WebSettings};
use crate::web::filter::{FilterError, PathFilter, PushAllowList};
use crate::web::guard::Guard;
use crate::web::listener::{self, ConnectionLimits};
use crate::web::rejections::{Rejections, WithGatewayMetrics};

/// How often the web config file (and the files it names) is looked at for changes.
const WEB_CONFIG_POLL: Duration = Duration::from_secs(1);

/// The longest shutdown waits for requests in flight (less if `--web.request-timeout`
/// is shorter): real requests take milliseconds, and the store must be saved well
/// within the 30 s that systemd and Docker give before SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The persistence file could not be restored safely (or the final save failed).
    #[error(transparent)]
    Persistence(#[from] PersistenceError),
    /// The listen address could not be bound.
    #[error("could not listen on {address}: {source}; is another process (a pushgateway?) using the port, or is the address not local?")]
    Bind {
        /// The configured address.
        address: SocketAddr,
        /// The I/O error.
        source: io::Error,
    },
    /// The HTTP server failed while running.
    #[error("the HTTP server failed: {0}")]
    Serve(io::Error),
    /// `--web.config.file` cannot be used.
    #[error(transparent)]
    WebConfig(#[from] WebConfigError),
    /// A `--web.deny-path` or `--web.allow-push-from` cannot be used.
    #[error(transparent)]
    Filter(#[from] FilterError),
}

/// A gateway whose store is restored and whose socket is bound, not yet serving.
pub struct Gateway {
    config: GatewayConfig,
    listener: TcpListener,
    state: AppState,
    /// Routes of other parts of the process (the tracer's `/api/v1/drops`), served
    /// beside the gateway's own; their paths already carry the route prefix.
    extra_routes: axum::Router,
    rejections: Arc<Rejections>,
    /// Failed saves, counted by the persister, exposed on `/metrics`.
    save_failures: Arc<SaveFailures>,
    filter: PathFilter,
    allow: PushAllowList,
    web_settings: watch::Sender<Arc<WebSettings>>,
    /// The web config file and how its files looked when read, to notice changes.
    web_config: Option<(std::path::PathBuf, Fingerprint)>,
}

impl Gateway {
    /// Restores the store from the persistence file (if configured), then binds.
    ///
    /// `source`'s family names (as it returns them now) and the `dropgate_` prefix are
    /// reserved: pushes may not define them. The web config, deny rules and networks
    /// are checked first, so a mistake there stops the start before anything else.
    pub async fn bind(
        config: GatewayConfig,
        source: Arc<dyn MetricSource>,
    ) -> Result<Self, ServeError> {
        let filter = PathFilter::new(
            &config.deny_paths,
            &normalize_route_prefix(&config.route_prefix),
        )?
        .with_names(config.name_rules());
        let allow = PushAllowList::parse(&config.allow_push_from)?;
        let (settings, web_config) = match &config.web_config_file {
            Some(file) => {
                let (settings, fingerprint) = config_file::load(file)?;
                tracing::info!(file = %file.display(), ?settings, "web config loaded");
                (settings, Some((file.clone(), fingerprint)))
            }
            None => (WebSettings::default(), None),
        };
        let rejections = Arc::new(Rejections::default());
        let with_own = WithGatewayMetrics::new(Arc::clone(&rejections), &config.build_info, source);
        let save_failures = with_own.save_failures();
        let groups_expired = with_own.groups_expired();
        let source: Arc<dyn MetricSource> = Arc::new(with_own);
        let store = Arc::new(
            MetricStore::new(ReservedNames::of_source(source.as_ref()))
                .with_expiry(config.push_ttl, groups_expired)
                .with_names(config.name_rules()),
        );
        if let Some(path) = config.persistence_file.clone() {
            let restoring = Arc::clone(&store);
            let outcome = tokio::task::spawn_blocking(move || persistence::load(&restoring, &path))
                .await
                .map_err(|join| ServeError::Serve(io::Error::other(join)))??;
            if let LoadOutcome::MovedAside(aside) = outcome {
                tracing::warn!(kept_at = %aside.display(), "starting with an empty store");
            }
        }
        let listener = TcpListener::bind(config.listen_address)
            .await
            .map_err(|source| ServeError::Bind {
                address: config.listen_address,
                source,
            })?;
        let state = AppState::new(&config, store, source);
        Ok(Self {
            config,
            listener,
            state,
            extra_routes: axum::Router::new(),
            rejections,
            save_failures,
            filter,
            allow,
            web_settings: watch::Sender::new(Arc::new(settings)),
            web_config,
        })
    }

    /// Serves `routes` beside the gateway's own (paths must include the route prefix,
    /// see [`crate::config::normalize_route_prefix`]). They may not repeat a gateway route.
    #[must_use]
    pub fn merge_routes(mut self, routes: axum::Router) -> Self {
        self.extra_routes = self.extra_routes.merge(routes);
        self
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The state the API serves, e.g. to reach the store.
    #[must_use]
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The counters of refused requests (also exposed on `/metrics`).
    #[must_use]
    pub fn rejections(&self) -> &Arc<Rejections> {
        &self.rejections
    }

    /// The count of failed saves (also exposed on `/metrics`).
    #[must_use]
    pub fn save_failures(&self) -> &Arc<SaveFailures> {
        &self.save_failures
    }

    /// Serves until `shutdown` resolves or `/-/quit` is called; then stops accepting,
    /// lets in-flight requests finish (for at most 10 s, or `--web.request-timeout` if
    /// shorter), saves the store one last time (if persistence is configured) and
    /// returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Self {
            config,
            listener,
            state,
            extra_routes,
            rejections,
            save_failures,
            filter,
            allow,
            web_settings,
            web_config,
        } = self;
        let store = Arc::clone(state.store());
        let (stop_persisting, persisting_stopped) = oneshot::channel::<()>();
        let persister = config.persistence_file.clone().map(|path| {
            tokio::spawn(persistence::run(
                Arc::clone(&store),
                path,
                config.persistence_interval,
                save_failures,
                async move {
                    let _ = persisting_stopped.await;
                },
            ))
        });
        let expiry = tokio::spawn(store::run_expiry(Arc::clone(&store)));
        let quit = state.quit_signal();
        let stop = async move {
            tokio::select! {
                () = shutdown => tracing::info!("shutting down gracefully"),
                () = quit.triggered() => tracing::info!("shutting down on /-/quit"),
            }
        };
        let settings = web_settings.subscribe();
        let watcher = web_config.map(|(file, fingerprint)| {
            tokio::spawn(config_file::watch(
                file,
                fingerprint,
                web_settings,
                WEB_CONFIG_POLL,
            ))
        });
        if let Ok(address) = listener.local_addr() {
            let tls = settings.borrow().tls.is_some();
            tracing::info!(%address, tls, "gateway listening");
        }
        let guard = Arc::new(Guard::new(
            filter,
            allow,
            config.request_timeout,
            settings.clone(),
            Arc::clone(&rejections),
        ));
        let router = guard.wrap(app(state).merge(extra_routes));
        let limits = ConnectionLimits {
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
            grace: config.request_timeout.min(SHUTDOWN_GRACE),
        };
        listener::serve(listener, router, settings, limits, rejections, stop).await;
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        expiry.abort();
        let _ = stop_persisting.send(());
        match persister {
            Some(task) => task
                .await
                .map_err(|join| ServeError::Serve(io::Error::other(join)))?
                .map_err(ServeError::from),
            None => Ok(()),
        }
    }
}

/// Restores, binds and serves until `shutdown` resolves (or `/-/quit`); see
/// [`Gateway::run`] for the shutdown sequence.
pub async fn serve(
    config: GatewayConfig,
    source: Arc<dyn MetricSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    Gateway::bind(config, source).await?.run(shutdown).await
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C), for the binary to pass to [`serve`].
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => tracing::info!("received SIGINT"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}
