//! `GET /metrics`: the store's groups merged with the process's own families, in the
//! format the scraper's `Accept` asks for, gzipped when its `Accept-Encoding` allows.
//!
//! Uncompressed, the body is sent as the list of cached per-family renderings, so a
//! scrape of an unchanged store copies nothing and allocates next to nothing.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, HttpBody};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http_body::{Frame, SizeHint};

use super::{ApiError, AppState};
use crate::exposition::negotiate_defaulting;
use crate::store::exposition_chunks;

/// Handles a scrape.
pub(super) async fn scrape(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let negotiated = negotiate_defaulting(accept, state.inner.names.default_escaping());
    let chunks = exposition_chunks(
        &state.inner.store,
        state.inner.source.as_ref(),
        negotiated.format,
        negotiated.escaping,
    );
    let content_type = HeaderValue::from_str(&negotiated.content_type())
        .map_err(|error| ApiError::Internal(format!("content type: {error}")))?;
    if !gzip_accepted(&headers) {
        let body = Body::new(Chunks::new(chunks));
        return Ok(([(header::CONTENT_TYPE, content_type)], body).into_response());
    }
    let total: usize = chunks.iter().map(Bytes::len).sum();
    // Fast compression: a scrape of 1,000 groups is ~700 KB, and the scraper waits.
    let mut encoder = GzEncoder::new(Vec::with_capacity(total / 4), Compression::fast());
    chunks
        .iter()
        .try_for_each(|chunk| encoder.write_all(chunk))
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

/// A body made of ready chunks, with an exact length (so `Content-Length` is set).
struct Chunks {
    chunks: VecDeque<Bytes>,
    remaining: u64,
}

impl Chunks {
    fn new(chunks: Vec<Bytes>) -> Self {
        let remaining = chunks.iter().map(|chunk| chunk.len() as u64).sum();
        Self {
            chunks: chunks
                .into_iter()
                .filter(|chunk| !chunk.is_empty())
                .collect(),
            remaining,
        }
    }
}

impl HttpBody for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.chunks.pop_front();
        if let Some(chunk) = &next {
            self.remaining -= chunk.len() as u64;
        }
        Poll::Ready(next.map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
