//! `PUT`, `POST` and `DELETE` on `/metrics/job/<job>{/<label>/<value>}*`.
//!
//! In upstream's order: the grouping key from the URL, then (not for `DELETE`) the
//! body: size limit, `Content-Encoding`, text or protobuf by `Content-Type`; then the
//! write, whose consistency check may still reject it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::{ApiError, AppState};
use crate::codec::body::BodyError;
use crate::codec::limits::{LimitError, RENDER_FLOOR_BYTES};
use crate::codec::{self, PushFormat};
use crate::grouping::GroupingKey;
use crate::model::{MetricFamily, MetricType};
use crate::store::{Ttl, WriteCommand};

/// The header a push asks for its group's time to live with (`0`: never), instead of
/// `--push.ttl`. A header rather than a grouping label: a label would be part of the
/// group's identity and of every series Prometheus stores, so changing the time to live
/// would make a new group and new series; a header says how to keep the group, not
/// what it is, and every push client can add one.
pub const TTL_HEADER: &str = "dropgate-push-ttl";

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
    let key = GroupingKey::of_request_path(uri.path(), &inner.route_prefix, inner.names)
        .ok_or(ApiError::NotFound)??;
    let key_bytes = grouping_bytes(&key);
    if key_bytes > inner.max_grouping_key_bytes {
        return Err(LimitError::GroupingKeyTooLong {
            len: key_bytes,
            limit: inner.max_grouping_key_bytes,
        }
        .into());
    }
    if method == Method::DELETE {
        inner
            .store
            .apply(WriteCommand::Delete { key }, SystemTime::now())?;
        return Ok(StatusCode::ACCEPTED);
    }

    let limit = inner.body_limit;
    let raw = read_body(&headers, body, limit).await?;
    let request_bytes = uri.to_string().len() + raw.len();
    let encoding = header_str(&headers, header::CONTENT_ENCODING).map(str::to_owned);
    let format = codec::push_format(header_str(&headers, header::CONTENT_TYPE));
    let replace = method == Method::PUT;
    let ttl = push_ttl(&headers)?;
    let disable_consistency_check = inner.disable_consistency_check;
    let work = {
        let state = state.clone();
        move |abandoned: &AtomicBool| {
            let inner = &state.inner;
            // A compressed body may inflate by the render factor (and to 1 MiB always),
            // never past the body limit: a bomb of a few KB stops early, before it costs.
            let wire = raw.len();
            let factor = inner.max_render_factor;
            let inflated_limit = limit.min(wire.saturating_mul(factor).max(RENDER_FLOOR_BYTES));
            let decoded = match codec::body::decode(encoding.as_deref(), raw, inflated_limit) {
                Err(BodyError::TooLarge { .. }) if inflated_limit < limit => {
                    return Err(LimitError::Inflates {
                        encoding: encoding.unwrap_or_default(),
                        body: wire,
                        factor,
                    }
                    .into())
                }
                decoded => decoded?,
            };
            let families = match format {
                PushFormat::Text => {
                    codec::text::parse_limited(&decoded, inner.push_limits, inner.names)?
                }
                PushFormat::DelimitedProtobuf => {
                    codec::protobuf::decode_delimited_limited(&decoded, inner.push_limits)?
                }
            };
            drop(decoded);
            check_limits(
                &key,
                &families,
                inner.push_limits.max_labels_per_series,
                inner.push_limits.max_series,
            )?;
            check_render_cost(&families, key_bytes, request_bytes, inner.max_render_factor)?;
            let command = if replace {
                WriteCommand::Put { key, families, ttl }
            } else {
                WriteCommand::Post { key, families, ttl }
            };
            if abandoned.load(Ordering::Acquire) {
                return Err(ApiError::Internal(
                    "push abandoned before it was stored (request timed out)".to_owned(),
                ));
            }
            inner.store.apply(command, SystemTime::now())?;
            Ok::<_, ApiError>(())
        }
    };
    run_push_work(&inner.parse_permits, request_bytes, "push", work).await?;
    Ok(if disable_consistency_check {
        // Upstream answers before storing when the check is off.
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    })
}

/// Pushes up to this size (URL and body on the wire) are parsed on the async worker
/// that read them; larger ones on the blocking pool. At 64 KiB the whole push takes
/// about a millisecond.
pub(super) const INLINE_PUSH_BYTES: usize = 64 * 1024;

/// Runs a push's (or an export's) decode-check-store `work`: on this async worker when
/// the request is at most [`INLINE_PUSH_BYTES`] (nearly all are, well under a
/// millisecond: a thread hop and a queue would cost more than they could hold up a
/// worker), else on the blocking pool under one of the parse `permits`, so that other
/// requests (and `/-/healthy`) keep being answered and the request timeout can answer
/// this one. `work` gets a flag set when the handler is dropped (timed out, client
/// gone) before it is done: a request answered 408 must store nothing after.
pub(super) async fn run_push_work<T: Send + 'static>(
    permits: &Arc<tokio::sync::Semaphore>,
    request_bytes: usize,
    what: &str,
    work: impl FnOnce(&AtomicBool) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    if request_bytes <= INLINE_PUSH_BYTES {
        return work(&AtomicBool::new(false));
    }
    // Waiting for a permit is asynchronous: the request timeout still applies.
    let permit = Arc::clone(permits)
        .acquire_owned()
        .await
        .map_err(|error| ApiError::Internal(format!("parse permits closed: {error}")))?;
    let abandoned = Arc::new(AtomicBool::new(false));
    let _abandon_on_drop = AbandonOnDrop(Arc::clone(&abandoned));
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work(&abandoned)
    })
    .await
    .map_err(|error| ApiError::Internal(format!("{what} task failed: {error}")))?
}

/// Marks a push abandoned when the handler's future is dropped.
struct AbandonOnDrop(Arc<AtomicBool>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The time to live the push asks for, [`Ttl::Default`] without the header.
pub(super) fn push_ttl(headers: &HeaderMap) -> Result<Ttl, ApiError> {
    let Some(value) = headers.get(TTL_HEADER) else {
        return Ok(Ttl::Default);
    };
    let bad = || ApiError::BadTtl {
        header: "Dropgate-Push-TTL",
        value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text.is_empty() {
        return Err(bad());
    }
    match crate::config::parse_duration(text).map_err(|_| bad())? {
        ttl if ttl.is_zero() => Ok(Ttl::Never),
        ttl => Ok(Ttl::After(ttl)),
    }
}

/// Bytes of the grouping key: its names and decoded values.
pub(super) fn grouping_bytes(key: &GroupingKey) -> usize {
    key.labels()
        .map(|(name, value)| name.len() + value.len())
        .sum()
}

/// Fixed bytes of one exposition line besides its name and labels: braces, quotes,
/// `instance=""`, the value and the newline.
const LINE_OVERHEAD: usize = 40;
/// What a family costs the store besides its lines: its index entry, its stored header
/// and its place in the group (a family without metrics takes 9 bytes on the wire).
const FAMILY_OVERHEAD: usize = 256;

/// `--push.max-render-factor`: refuses a push whose exposition would take more than
/// `factor` times its request (but never below [`RENDER_FLOOR_BYTES`]). Every line of
/// the exposition repeats its series' labels and the grouping labels, so this is where
/// a few bytes on the wire can turn into much memory in the store.
pub(super) fn check_render_cost(
    families: &[MetricFamily],
    key_bytes: usize,
    request_bytes: usize,
    factor: usize,
) -> Result<(), LimitError> {
    let budget = request_bytes.saturating_mul(factor).max(RENDER_FLOOR_BYTES);
    let mut rendered = 0_usize;
    for family in families {
        rendered = rendered.saturating_add(FAMILY_OVERHEAD);
        let name = family.name.as_deref().unwrap_or_default().len();
        let kind = family
            .r#type
            .and_then(|kind| MetricType::try_from(kind).ok())
            .unwrap_or(MetricType::Counter);
        for metric in &family.metric {
            let lines = match kind {
                MetricType::Summary => 2 + metric.summary.as_ref().map_or(0, |s| s.quantile.len()),
                MetricType::Histogram | MetricType::GaugeHistogram => {
                    3 + metric.histogram.as_ref().map_or(0, |h| h.bucket.len())
                }
                _ => 1,
            };
            let labels: usize = metric
                .label
                .iter()
                .map(|pair| {
                    pair.name.as_deref().map_or(0, str::len)
                        + pair.value.as_deref().map_or(0, str::len)
                        + 4
                })
                .sum();
            // The text line and the sort key both carry the labels.
            let line = name + 2 * (labels + key_bytes) + LINE_OVERHEAD;
            rendered = rendered.saturating_add(lines.saturating_mul(line));
        }
        if rendered > budget {
            return Err(LimitError::TooCostly {
                rendered,
                request: request_bytes,
                factor,
            });
        }
    }
    Ok(())
}

/// `--push.max-series-per-push` and `--push.max-labels-per-series`, checked before the
/// store sees the push, so a push over them changes nothing (not even the failure time).
pub(super) fn check_limits(
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
pub(super) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
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

pub(super) fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}
