//! `GET /metrics`: the store's groups merged with the process's own families, in the
//! format the scraper's `Accept` asks for, gzipped when its `Accept-Encoding` allows.

use std::io::Write as _;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use flate2::write::GzEncoder;
use flate2::Compression;

use super::{ApiError, AppState};
use crate::exposition::negotiate;
use crate::store::exposition;

/// Handles a scrape.
pub(super) async fn scrape(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = negotiate(accept);
    let body = exposition(&state.inner.store, state.inner.source.as_ref(), format);
    let content_type = HeaderValue::from_static(format.content_type());
    if !gzip_accepted(&headers) {
        return Ok(([(header::CONTENT_TYPE, content_type)], body).into_response());
    }
    // Fast compression: a scrape of 1,000 groups is ~700 KB, and the scraper waits.
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
    encoder
        .write_all(&body)
        .and_then(|()| encoder.finish())
        .map(|gzipped| {
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CONTENT_ENCODING, HeaderValue::from_static("gzip")),
                    (header::VARY, HeaderValue::from_static("Accept-Encoding")),
                ],
                gzipped,
            )
                .into_response()
        })
        .map_err(|error| ApiError::Internal(format!("gzip of the exposition failed: {error}")))
}

/// `client_golang`'s `gzipAccepted`: an `Accept-Encoding` part that is `gzip`, with or
/// without parameters.
fn gzip_accepted(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|part| part == "gzip" || part.starts_with("gzip;"))
}
