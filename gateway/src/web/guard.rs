//! The guard: a layer in front of every route (the gateway's, the tracer's, the status
//! page, the 404 fallback) that decides before any handler runs.
//!
//! In this order: a denied path is answered 404 (as if nothing were there, and before
//! asking for credentials, so the answer says nothing about what exists); then basic
//! authentication when the web config has users (401, or 429/503 when too many
//! password checks are already queued or the wait for one is over); then writes from outside
//! `--web.allow-push-from` (403); then the handler, bounded by `--web.request-timeout`
//! (408). Every refusal, its own and the handlers' ([`Reason`] response extensions), is
//! counted in [`Rejections`]. Every response leaves without a `Server` header and
//! with the web config's extra headers.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use tokio::sync::{watch, Semaphore};

use super::config_file::WebSettings;
use super::filter::{PathFilter, PushAllowList};
use super::rejections::{Reason, Rejections};
use crate::api::ApiError;

/// A bcrypt hash of nothing in particular, verified against when the user is unknown so
/// that a wrong user name costs as long as a wrong password (exporter-toolkit's).
const DUMMY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";
/// Successful logins remembered, so a scraper does not pay bcrypt on every request.
const AUTH_CACHE_SIZE: usize = 256;
/// bcrypt checks run at once; more wait, so guessing cannot take every thread.
const CONCURRENT_BCRYPT: usize = 4;
/// Requests that may wait for a bcrypt check beyond those running; more are answered
/// 429 at once rather than queued without bound.
const BCRYPT_QUEUE: usize = 64;
/// The longest a request waits for its bcrypt check to start (or
/// `--web.request-timeout`, if shorter); then it is answered 503.
const BCRYPT_WAIT: Duration = Duration::from_secs(2);

/// A cached login: the user, the hash it was checked against (a reload that changes
/// it forgets the login) and a keyed digest of the password, so the cache never holds
/// a password or anything an offline guesser could test candidates against.
type LoginKey = (String, String, [u8; 32]);

/// Why basic authentication did not let a request through.
enum AuthRefusal {
    /// No or wrong credentials: 401.
    Unauthorized,
    /// Too many bcrypt checks queued already: 429.
    QueueFull,
    /// The check did not start within the wait: 503.
    WaitedTooLong(Duration),
}

/// What the guard decides with. Built once per server; the web settings can change
/// underneath it (reload).
pub struct Guard {
    filter: PathFilter,
    allow: PushAllowList,
    request_timeout: Duration,
    settings: watch::Receiver<Arc<WebSettings>>,
    rejections: Arc<Rejections>,
    auth_cache: Mutex<HashSet<LoginKey>>,
    /// Keys the password digests of the cache; random per process.
    cache_key: ring::hmac::Key,
    /// Admission to a bcrypt check: running plus queued ([`BCRYPT_QUEUE`]).
    bcrypt_admission: Semaphore,
    /// Shared with the blocking task that holds one, so a check whose request went
    /// away still counts until bcrypt is done with it.
    bcrypt_permits: Arc<Semaphore>,
    bcrypt_runs: AtomicU64,
}

impl Guard {
    /// A guard with these rules; `settings` is the current web config (and its reloads).
    #[must_use]
    pub fn new(
        filter: PathFilter,
        allow: PushAllowList,
        request_timeout: Duration,
        settings: watch::Receiver<Arc<WebSettings>>,
        rejections: Arc<Rejections>,
    ) -> Self {
        Self {
            filter,
            allow,
            request_timeout,
            settings,
            rejections,
            auth_cache: Mutex::new(HashSet::new()),
            cache_key: random_hmac_key(),
            bcrypt_admission: Semaphore::new(CONCURRENT_BCRYPT + BCRYPT_QUEUE),
            bcrypt_permits: Arc::new(Semaphore::new(CONCURRENT_BCRYPT)),
            bcrypt_runs: AtomicU64::new(0),
        }
    }

    /// bcrypt checks run so far (cached logins run none).
    #[must_use]
    pub fn bcrypt_checks(&self) -> u64 {
        self.bcrypt_runs.load(Ordering::Relaxed)
    }

    /// `router` with this guard in front of all its routes and its fallback.
    pub fn wrap(self: Arc<Self>, router: Router) -> Router {
        router.layer(axum::middleware::from_fn_with_state(self, guard))
    }

    async fn decide(&self, request: Request, next: Next) -> Response {
        let path = request.uri().path().to_owned();
        if self.filter.is_denied(&path) {
            tracing::debug!(%path, "denied path");
            self.rejections.count(Reason::DeniedPath);
            return ApiError::NotFound.into_response();
        }
        let settings = Arc::clone(&self.settings.borrow());
        if !settings.users.is_empty() {
            let authorization = request.headers().get(header::AUTHORIZATION);
            match self.authorized(&settings.users, authorization).await {
                Ok(()) => {}
                Err(AuthRefusal::Unauthorized) => {
                    self.rejections.count(Reason::Unauthorized);
                    return unauthorized();
                }
                Err(AuthRefusal::QueueFull) => {
                    self.rejections.count(Reason::AuthBusy);
                    return busy(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "too many password checks are waiting ({CONCURRENT_BCRYPT} run at once, {BCRYPT_QUEUE} may wait); retry in a second\n"
                        ),
                    );
                }
                Err(AuthRefusal::WaitedTooLong(waited)) => {
                    self.rejections.count(Reason::AuthBusy);
                    return busy(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "the password check did not start within {waited:?}: the gateway is busy checking other passwords; retry in a second\n"
                        ),
                    );
                }
            }
        }
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip());
        if self.filter.is_write(request.method(), &path) && !self.allow.allows(peer) {
            self.rejections.count(Reason::PushNotAllowed);
            let who = peer.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string());
            return plain(
                StatusCode::FORBIDDEN,
                format!(
                    "writes are not accepted from {who}: it is outside --web.allow-push-from\n"
                ),
            );
        }
        let Ok(mut response) = tokio::time::timeout(self.request_timeout, next.run(request)).await
        else {
            self.rejections.count(Reason::RequestTimeout);
            return plain(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request took longer than the gateway's limit of {:?} (--web.request-timeout); send smaller pushes or send them faster\n",
                    self.request_timeout
                ),
            );
        };
        if let Some(reason) = response.extensions_mut().remove::<Reason>() {
            self.rejections.count(reason);
        }
        response
    }

    /// Whether `authorization` carries the right password of a configured user.
    ///
    /// A login seen before (same user, hash and password) is answered from the cache;
    /// anything else costs one bcrypt check, at most [`CONCURRENT_BCRYPT`] at once,
    /// with at most [`BCRYPT_QUEUE`] more waiting, each for at most [`BCRYPT_WAIT`].
    async fn authorized(
        &self,
        users: &BTreeMap<String, String>,
        authorization: Option<&HeaderValue>,
    ) -> Result<(), AuthRefusal> {
        let raw = authorization
            .and_then(|value| value.to_str().ok())
            .ok_or(AuthRefusal::Unauthorized)?;
        let (user, password) = basic_credentials(raw).ok_or(AuthRefusal::Unauthorized)?;
        let known = users.get(&user);
        let digest = ring::hmac::sign(&self.cache_key, password.as_bytes());
        let mut digest_bytes = [0u8; 32];
        digest_bytes.copy_from_slice(&digest.as_ref()[..32]);
        let key: LoginKey = (user, known.cloned().unwrap_or_default(), digest_bytes);
        if known.is_some() && self.cache().contains(&key) {
            return Ok(());
        }
        let hash = known.map_or(DUMMY_HASH.to_owned(), Clone::clone);
        let Ok(_admitted) = self.bcrypt_admission.try_acquire() else {
            return Err(AuthRefusal::QueueFull);
        };
        let wait = BCRYPT_WAIT.min(self.request_timeout);
        let permits = Arc::clone(&self.bcrypt_permits);
        let permit = match tokio::time::timeout(wait, permits.acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err(AuthRefusal::Unauthorized),
            Err(_elapsed) => return Err(AuthRefusal::WaitedTooLong(wait)),
        };
        self.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
        let verified = tokio::task::spawn_blocking(move || {
            let _running = permit;
            bcrypt::verify(password, &hash)
        })
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false);
        if !(verified && known.is_some()) {
            return Err(AuthRefusal::Unauthorized);
        }
        let mut cache = self.cache();
        if cache.len() >= AUTH_CACHE_SIZE {
            cache.clear();
        }
        cache.insert(key);
        Ok(())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashSet<LoginKey>> {
        self.auth_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn finish(&self, mut response: Response) -> Response {
        let headers = response.headers_mut();
        headers.remove(header::SERVER);
        headers.remove("x-powered-by");
        for (name, value) in &self.settings.borrow().headers {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
        response
    }
}

async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let response = guard.decide(request, next).await;
    guard.finish(response)
}

/// `Basic base64(user:password)` → (user, password).
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// A random key for the login cache's password digests.
fn random_hmac_key() -> ring::hmac::Key {
    let rng = ring::rand::SystemRandom::new();
    // Without the system's randomness a fixed key still keeps passwords out of the
    // cache; only the digests become comparable across processes.
    ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
        .unwrap_or_else(|_| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"dropgate login cache"))
}

/// 429 or 503 with `Retry-After: 1`.
fn busy(status: StatusCode, body: String) -> Response {
    let mut response = plain(status, body);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn unauthorized() -> Response {
    let mut response = plain(StatusCode::UNAUTHORIZED, "Unauthorized\n".to_owned());
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
    response
}

fn plain(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials() {
        let table = [
            ("ok", "Basic YWxpY2U6c2VjcmV0", Some(("alice", "secret"))),
            (
                "scheme case",
                "basic YWxpY2U6c2VjcmV0",
                Some(("alice", "secret")),
            ),
            ("colon in password", "Basic YTpiOmM=", Some(("a", "b:c"))),
            ("empty password", "Basic YTo=", Some(("a", ""))),
            ("no colon", "Basic YWxpY2U=", None),
            ("bearer", "Bearer YWxpY2U6c2VjcmV0", None),
            ("bad base64", "Basic !!!", None),
        ];
        for (name, header, want) in table {
            let got = basic_credentials(header);
            let want = want.map(|(u, p)| (u.to_owned(), p.to_owned()));
            assert_eq!(got, want, "case {name}");
        }
    }
}
