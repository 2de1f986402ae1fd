//! `/-/healthy`, `/-/ready` and `/-/quit`.
//!
//! Ready and healthy are the same here: the store is restored before the server
//! listens, so any answer at all means ready.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use super::{ApiError, AppState};

const TEXT_PLAIN: (header::HeaderName, &str) = (header::CONTENT_TYPE, "text/plain; charset=utf-8");

/// `GET /-/healthy` and `GET /-/ready`.
pub(super) async fn ok() -> impl IntoResponse {
    ([TEXT_PLAIN], "OK")
}

/// `PUT`/`POST /-/quit`: asks the server to shut down gracefully, if allowed.
pub(super) async fn quit(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    if !state.inner.enable_lifecycle {
        return Err(ApiError::LifecycleDisabled);
    }
    tracing::warn!("received termination request via web service, exiting gracefully");
    state.inner.quit.trigger();
    Ok(([TEXT_PLAIN], "Requesting termination... Goodbye!"))
}

/// `GET /-/quit`: upstream's own 405 text.
pub(super) async fn quit_get() -> impl IntoResponse {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [TEXT_PLAIN],
        "Only POST or PUT requests allowed.",
    )
}
