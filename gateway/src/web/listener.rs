//! Accepting connections: the limits that act before HTTP, TLS, and graceful shutdown.
//!
//! Each accepted connection takes one of `--web.max-connections` permits for its
//! whole life. Past the limit, a few more connections are still read far enough to
//! answer `429` (so the client learns why), and beyond those they are closed at once;
//! both count as `too_many_connections`. TLS (when the web config has it, as of the
//! moment of accept) must finish within `--web.header-read-timeout`, and so must each
//! request head: a connection that sent part of a head, or nothing at all, by then gets
//! `408` and is closed (`header_timeout`); an idle keep-alive connection is just closed.
//!
//! On shutdown: stop accepting, let every connection finish the request it is serving
//! (idle ones close at once), wait for that at most `grace`, then return.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use super::config_file::WebSettings;
use super::rejections::{Reason, Rejections};

/// Connections past the limit that are still answered 429 rather than dropped.
const OVERFLOW_ANSWERED: usize = 64;
/// How long a connection past the limit may take to send its request head.
const OVERFLOW_HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// The connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time for the TLS handshake, and for each request head.
    pub header_read_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub grace: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves; see the module docs.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: watch::Receiver<Arc<WebSettings>>,
    limits: ConnectionLimits,
    rejections: Arc<Rejections>,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_ANSWERED));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            rejections.count(Reason::TooManyConnections);
            let Ok(permit) = Arc::clone(&overflow).try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let tls = settings.borrow().tls.clone();
            let stop = stop_rx.clone();
            connections.spawn(async move {
                let _permit = permit;
                let service = Served::TooManyConnections;
                serve_stream(
                    stream,
                    peer,
                    tls,
                    service,
                    OVERFLOW_HEAD_TIMEOUT,
                    None,
                    stop,
                )
                .await;
            });
            continue;
        };
        let tls = settings.borrow().tls.clone();
        let (router, stop, rejections) = (router.clone(), stop_rx.clone(), Arc::clone(&rejections));
        let head_timeout = limits.header_read_timeout;
        connections.spawn(async move {
            let _permit = permit;
            let service = Served::Router(router);
            serve_stream(
                stream,
                peer,
                tls,
                service,
                head_timeout,
                Some(&rejections),
                stop,
            )
            .await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(limits.grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "connections still busy after the shutdown grace period; closing them"
        );
        connections.shutdown().await;
    }
}

/// What a connection is served with.
#[derive(Clone)]
enum Served {
    Router(Router),
    /// Past `--web.max-connections`: every request is answered 429.
    TooManyConnections,
}

async fn serve_stream(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: Served,
    head_timeout: Duration,
    rejections: Option<&Rejections>,
    stop: watch::Receiver<bool>,
) {
    match tls {
        None => serve_http(stream, peer, service, head_timeout, rejections, stop).await,
        Some(acceptor) => match tokio::time::timeout(head_timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls_stream)) => {
                serve_http(tls_stream, peer, service, head_timeout, rejections, stop).await;
            }
            Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                if let Some(rejections) = rejections {
                    rejections.count(Reason::HeaderTimeout);
                }
            }
        },
    }
}

async fn serve_http<S>(
    stream: S,
    peer: SocketAddr,
    served: Served,
    head_timeout: Duration,
    rejections: Option<&Rejections>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&requests);
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        seen.fetch_add(1, Ordering::Relaxed);
        let served = served.clone();
        request.extensions_mut().insert(ConnectInfo(peer));
        Box::pin(async move {
            Ok::<_, Infallible>(match served {
                Served::Router(router) => match router.oneshot(request.map(Body::new)).await {
                    Ok(response) => response,
                    Err(infallible) => match infallible {},
                },
                Served::TooManyConnections => too_many_connections(),
            })
        })
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        // A client that closes its sending side after the request still gets the
        // answer (and a body cut short by that close is a 400, not a lost answer).
        .half_close(true)
        .keep_alive(true);
    let mut connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut stopping = *stop.borrow();
    if stopping {
        std::pin::Pin::new(&mut connection).graceful_shutdown();
    }
    let result = loop {
        tokio::select! {
            result = poll_fn(|cx| connection.poll_without_shutdown(cx)) => break result,
            _ = stop.changed(), if !stopping => {
                stopping = true;
                std::pin::Pin::new(&mut connection).graceful_shutdown();
            }
        }
    };
    let parts = connection.into_parts();
    let mut io = parts.io.into_inner();
    match result {
        Err(error) if error.is_timeout() => {
            let partial_head = !parts.read_buf.is_empty();
            if partial_head || requests.load(Ordering::Relaxed) == 0 {
                if let Some(rejections) = rejections {
                    rejections.count(Reason::HeaderTimeout);
                }
                let body = format!(
                    "the request head did not arrive within {head_timeout:?} (--web.header-read-timeout)\n"
                );
                let answer = format!(
                    "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), io.write_all(answer.as_bytes()))
                        .await;
            }
        }
        Err(error) => tracing::debug!(%peer, %error, "connection ended with an error"),
        Ok(()) => {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
}

fn too_many_connections() -> Response<Body> {
    let mut response = Response::new(Body::from(
        "the gateway serves too many connections at once (--web.max-connections); retry later\n",
    ));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}
