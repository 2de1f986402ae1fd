//! Every way a request can fail, and the response each one gets.
//!
//! Client errors carry their message in a `text/plain` body ended by a newline, as Go's
//! `http.Error` writes it; server errors are logged once here and answered with a
//! generic body, so that internals never leak to clients.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::codec::body::BodyError;
use crate::codec::limits::LimitError;
use crate::codec::protobuf::ProtobufError;
use crate::codec::text::{TextError, TextParseError};
use crate::grouping::GroupingError;
use crate::store::StoreError;
use crate::web::rejections::Reason;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The push URL does not name a valid group (400).
    #[error(transparent)]
    Grouping(#[from] GroupingError),
    /// The request body is larger than the configured limit, on the wire or once
    /// decoded (413).
    #[error("request body is larger than the gateway's limit of {limit} bytes; push fewer metrics per request, or raise the limit of the gateway")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A pushed series has more labels than `--push.max-labels-per-series` (400).
    #[error("series {series} has {count} labels (grouping labels included), more than the gateway's limit of {limit}; drop labels, or raise --push.max-labels-per-series")]
    TooManyLabels {
        /// The family name of the series.
        series: String,
        /// Its label count.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A push has more series than `--push.max-series-per-push` (400).
    #[error("the push has {count} series, more than the gateway's limit of {limit}; split it into several groups, or raise --push.max-series-per-push")]
    TooManySeries {
        /// Series in the push.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The request body could not be read from the connection (400).
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    /// The `Content-Encoding` (gzip, snappy) could not be decoded (400).
    #[error(transparent)]
    Encoding(BodyError),
    /// The text format body does not parse (400): Go's text, then any hint.
    #[error("{0}{hint}", hint = .0.hint())]
    Text(#[from] TextParseError),
    /// The protobuf body does not decode (400).
    #[error(transparent)]
    Protobuf(ProtobufError),
    /// The OTLP body does not decode (400).
    #[error(transparent)]
    Otlp(#[from] crate::otlp::WireError),
    /// The `Dropgate-Push-TTL` header is not a duration (400).
    #[error("the {header} header is {value:?}, not a duration; use e.g. 90s, 15m, 1h30m, or 0 for never")]
    BadTtl {
        /// The header's name.
        header: &'static str,
        /// Its value, as far as it is text.
        value: String,
    },
    /// The push goes over one of the limits the parsers enforce (400).
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The push was rejected by the consistency check (400).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No route has this path (404).
    #[error("404 page not found")]
    NotFound,
    /// The route exists but not for this method (405, with `Allow`).
    #[error("Method Not Allowed")]
    MethodNotAllowed {
        /// The `Allow` header value.
        allow: &'static str,
    },
    /// `/-/quit` without `--web.enable-lifecycle` (403).
    #[error("Lifecycle API is not enabled.")]
    LifecycleDisabled,
    /// Something failed on our side (500); the detail goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<BodyError> for ApiError {
    fn from(error: BodyError) -> Self {
        match error {
            BodyError::TooLarge { limit } => Self::BodyTooLarge { limit },
            other => Self::Encoding(other),
        }
    }
}

impl From<TextError> for ApiError {
    fn from(error: TextError) -> Self {
        match error {
            TextError::Syntax(error) => Self::Text(error),
            TextError::Limit(error) => Self::Limit(error),
        }
    }
}

impl From<ProtobufError> for ApiError {
    fn from(error: ProtobufError) -> Self {
        match error {
            ProtobufError::Limit(error) => Self::Limit(error),
            other => Self::Protobuf(other),
        }
    }
}

impl ApiError {
    /// The status code this error is answered with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BodyTooLarge { .. } | Self::Limit(LimitError::Inflates { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::Grouping(_)
            | Self::BodyRead(_)
            | Self::Encoding(_)
            | Self::Text(_)
            | Self::Protobuf(_)
            | Self::Otlp(_)
            | Self::BadTtl { .. }
            | Self::Store(_)
            | Self::Limit(_)
            | Self::TooManyLabels { .. }
            | Self::TooManySeries { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::LifecycleDisabled => StatusCode::FORBIDDEN,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl ApiError {
    /// Under which reason `dropgate_gateway_rejected_total` counts this error, if any
    /// (unknown paths and methods are misses, not rejections).
    #[must_use]
    pub fn rejection(&self) -> Option<Reason> {
        match self {
            Self::Grouping(_)
            | Self::BodyRead(_)
            | Self::Encoding(_)
            | Self::Text(_)
            | Self::Protobuf(_)
            | Self::Otlp(_)
            | Self::BadTtl { .. } => Some(Reason::InvalidPush),
            Self::Store(_) => Some(Reason::InconsistentPush),
            Self::BodyTooLarge { .. } => Some(Reason::BodyTooLarge),
            Self::TooManyLabels { .. } => Some(Reason::TooManyLabels),
            Self::TooManySeries { .. } => Some(Reason::TooManySeries),
            Self::Limit(limit) => Some(match limit {
                LimitError::Inflates { .. } => Reason::BodyTooLarge,
                LimitError::TooManySeries { .. } => Reason::TooManySeries,
                LimitError::TooManyLabels { .. } => Reason::TooManyLabels,
                LimitError::LabelNameTooLong { .. }
                | LimitError::LabelValueTooLong { .. }
                | LimitError::GroupingKeyTooLong { .. } => Reason::LabelTooLong,
                LimitError::TooManyBuckets { .. } => Reason::TooManyBuckets,
                LimitError::TooCostly { .. } | LimitError::DecodesTooLarge { .. } => {
                    Reason::TooCostly
                }
            }),
            Self::NotFound
            | Self::MethodNotAllowed { .. }
            | Self::LifecycleDisabled
            | Self::Internal(_) => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let rejection = self.rejection();
        let mut response = self.respond();
        // Counted by the guard in front of the routes (crate::web::guard).
        if let Some(reason) = rejection {
            response.extensions_mut().insert(reason);
        }
        response
    }
}

impl ApiError {
    fn respond(self) -> Response {
        let status = self.status();
        let body = match &self {
            Self::Internal(detail) => {
                tracing::error!(%detail, "request failed");
                "internal server error, see the gateway's log\n".to_owned()
            }
            // Upstream writes this one without `http.Error`: no newline, no nosniff.
            Self::LifecycleDisabled => {
                return (
                    status,
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    self.to_string(),
                )
                    .into_response();
            }
            other => {
                if status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE {
                    tracing::debug!(error = %other, "rejected request");
                }
                format!("{other}\n")
            }
        };
        let mut response = (
            status,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                ),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            body,
        )
            .into_response();
        if let Self::MethodNotAllowed { allow } = self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}
