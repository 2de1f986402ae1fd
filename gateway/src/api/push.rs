//! `PUT`, `POST` and `DELETE` on `/metrics/job/<job>{/<label>/<value>}*`.
//!
//! In upstream's order: the grouping key from the URL, then (not for `DELETE`) the
//! body: size limit, `Content-Encoding`, text or protobuf by `Content-Type`; then the
//! write, whose consistency check may still reject it.

use std::time::SystemTime;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::{ApiError, AppState};
use crate::codec::{self, PushFormat};
use crate::grouping::GroupingKey;
use crate::model::MetricFamily;
use crate::store::WriteCommand;

/// Handles a push or a delete.
pub(super) async fn push(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let inner = &state.inner;
    // The same function the path filter judged this request with.
    let key = GroupingKey::of_request_path(uri.path(), &inner.route_prefix)
        .ok_or(ApiError::NotFound)??;
    if method == Method::DELETE {
        inner
            .store
            .apply(WriteCommand::Delete { key }, SystemTime::now())?;
        return Ok(StatusCode::ACCEPTED);
    }

    let limit = inner.body_limit;
    let raw = read_body(&headers, body, limit).await?;
    let decoded = codec::body::decode(header_str(&headers, header::CONTENT_ENCODING), raw, limit)?;
    let families = match codec::push_format(header_str(&headers, header::CONTENT_TYPE)) {
        PushFormat::Text => codec::text::parse(&decoded)?,
        PushFormat::DelimitedProtobuf => codec::protobuf::decode_delimited(&decoded)?,
    };
    drop(decoded);
    check_limits(
        &key,
        &families,
        inner.max_labels_per_series,
        inner.max_series_per_push,
    )?;
    let command = if method == Method::PUT {
        WriteCommand::Put { key, families }
    } else {
        WriteCommand::Post { key, families }
    };
    inner.store.apply(command, SystemTime::now())?;
    Ok(if inner.disable_consistency_check {
        // Upstream answers before storing when the check is off.
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    })
}

/// `--push.max-series-per-push` and `--push.max-labels-per-series`, checked before the
/// store sees the push, so a push over them changes nothing (not even the failure time).
fn check_limits(
    key: &GroupingKey,
    families: &[MetricFamily],
    max_labels: usize,
    max_series: usize,
) -> Result<(), ApiError> {
    let count: usize = families.iter().map(|family| family.metric.len()).sum();
    if count > max_series {
        return Err(ApiError::TooManySeries {
            count,
            limit: max_series,
        });
    }
    for family in families {
        for metric in &family.metric {
            // Grouping labels replace same-named body labels; the rest are added.
            let from_body = metric
                .label
                .iter()
                .filter(|pair| {
                    key.label(pair.name.as_deref().unwrap_or_default())
                        .is_none()
                })
                .count();
            // `instance=""` is added when neither names it.
            let instance = usize::from(
                key.label("instance").is_none()
                    && !metric
                        .label
                        .iter()
                        .any(|pair| pair.name.as_deref() == Some("instance")),
            );
            let labels = from_body + key.labels().len() + instance;
            if labels > max_labels {
                return Err(ApiError::TooManyLabels {
                    series: family.name.clone().unwrap_or_default(),
                    count: labels,
                    limit: max_labels,
                });
            }
        }
    }
    Ok(())
}

/// Reads the whole body, refusing more than `limit` bytes (early when the
/// `Content-Length` already says so).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let announced =
        header_str(headers, header::CONTENT_LENGTH).and_then(|len| len.parse::<u64>().ok());
    if announced.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(ApiError::BodyTooLarge { limit }),
        Err(error) => Err(ApiError::BodyRead(error.to_string())),
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}
