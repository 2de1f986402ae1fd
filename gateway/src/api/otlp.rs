//! `POST <prefix>/otlp/v1/metrics`: OTLP/HTTP metric exports (see [`crate::otlp`]).
//!
//! The same limits as a push (body size, decompressed size, series, labels, buckets,
//! render cost) and the same `Dropgate-Push-TTL` header; auth, ACL and the path
//! filter apply in front of every route. Answers follow the OTLP/HTTP specification:
//! 200 with an `ExportMetricsServiceResponse` (its `partial_success` counting points
//! that could not be translated), 400 for data that will stay wrong, 413 for too large,
//! 415 for another `Content-Type`, each refusal with a `google.rpc.Status` in the
//! request's encoding. Each group of the export is written as a `PUT` (the SDK sends
//! full cumulative snapshots), or, when it has delta points, as a `POST` of the summed
//! families (see [`crate::otlp::delta`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::push::{
    check_limits, check_render_cost, grouping_bytes, header_str, push_ttl, read_body, run_push_work,
};
use super::{ApiError, AppState};
use crate::codec::body::BodyError;
use crate::codec::limits::{LimitError, PushLimits, RENDER_FLOOR_BYTES};
use crate::otlp::names::NameMode;
use crate::otlp::wire::{
    CODE_FAILED_PRECONDITION, CODE_INTERNAL, CODE_INVALID_ARGUMENT, CODE_RESOURCE_EXHAUSTED,
    CODE_UNIMPLEMENTED,
};
use crate::otlp::{self, Encoding, Translation};
use crate::store::WriteCommand;

/// Handles one export.
pub(super) async fn export(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let encoding = match Encoding::of_content_type(header_str(&headers, header::CONTENT_TYPE)) {
        Ok(encoding) => encoding,
        Err(error) => {
            let mut response = answer(
                Encoding::Json,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Encoding::Json.status(CODE_UNIMPLEMENTED, &error.to_string()),
            );
            response
                .extensions_mut()
                .insert(crate::web::rejections::Reason::InvalidPush);
            return response;
        }
    };
    match accept(state, headers, body, encoding).await {
        Ok((rejected, message)) => answer(
            encoding,
            StatusCode::OK,
            encoding.success(rejected, &message),
        ),
        Err(error) => refusal(encoding, &error),
    }
}

/// Reads, translates and stores an export; the points rejected and why.
async fn accept(
    state: AppState,
    headers: HeaderMap,
    body: Body,
    encoding: Encoding,
) -> Result<(u64, String), ApiError> {
    let limit = state.inner.body_limit;
    let raw = read_body(&headers, body, limit).await?;
    let ttl = push_ttl(&headers)?;
    let content_encoding = header_str(&headers, header::CONTENT_ENCODING).map(str::to_owned);
    let permits = Arc::clone(&state.inner.parse_permits);
    let wire_bytes = raw.len();
    let work = move |abandoned: &AtomicBool| {
        let inner = &state.inner;
        let wire = raw.len();
        let factor = inner.max_render_factor;
        let inflated_limit = limit.min(wire.saturating_mul(factor).max(RENDER_FLOOR_BYTES));
        let decoded =
            match crate::codec::body::decode(content_encoding.as_deref(), raw, inflated_limit) {
                Err(BodyError::TooLarge { .. }) if inflated_limit < limit => {
                    return Err(LimitError::Inflates {
                        encoding: content_encoding.unwrap_or_default(),
                        body: wire,
                        factor,
                    }
                    .into())
                }
                decoded => decoded?,
            };
        // Counted on the bytes before prost or serde turn them into structs.
        if let Some(structs) = otlp::budget::decoded_bytes(encoding, &decoded) {
            inner.push_limits.check_decoded(structs, decoded.len())?;
        }
        let request = encoding.decode(&decoded)?;
        let request_bytes = decoded.len();
        drop(decoded);
        // `--push.enable-utf8-names` keeps OTLP names as they are (with unit and type
        // suffixes still added); without it they are made legacy, as Prometheus does.
        let mode = if inner.names.utf8() {
            NameMode::Utf8
        } else {
            NameMode::Legacy
        };
        let Translation {
            groups,
            mut rejected_points,
            mut messages,
        } = otlp::translate(&request, mode);
        drop(request);
        check_groups(&groups, inner, request_bytes.max(wire))?;
        if abandoned.load(Ordering::Acquire) {
            return Err(ApiError::Internal(
                "export abandoned before it was stored (request timed out)".to_owned(),
            ));
        }
        for (key, mut group) in groups {
            if group.delta_families.is_empty() {
                let families = group.families;
                inner
                    .store
                    .apply_or_leave(WriteCommand::Put { key, families, ttl }, SystemTime::now())?;
                continue;
            }
            let _one_at_a_time = inner
                .otlp_delta
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let stored = inner.store.group_families(&key).unwrap_or_default();
            let (refused, why) = otlp::delta::accumulate(&mut group, &key, &stored);
            rejected_points += refused as u64;
            messages.extend(why);
            let families = group.families;
            inner
                .store
                .apply_or_leave(WriteCommand::Post { key, families, ttl }, SystemTime::now())?;
        }
        messages.truncate(5);
        Ok((rejected_points, messages.join("; ")))
    };
    run_push_work(&permits, wire_bytes, "export", work).await
}

/// Every limit a push of the same groups would meet: the export's totals, then per group
/// the grouping key's length, labels and series, and what rendering it would cost
/// (`body_bytes`: the larger of the wire and the decoded size).
fn check_groups(
    groups: &std::collections::BTreeMap<crate::grouping::GroupingKey, otlp::OtlpGroup>,
    inner: &super::Inner,
    body_bytes: usize,
) -> Result<(), ApiError> {
    check_export(groups, inner.push_limits)?;
    for (key, group) in groups {
        let key_bytes = grouping_bytes(key);
        if key_bytes > inner.max_grouping_key_bytes {
            return Err(LimitError::GroupingKeyTooLong {
                len: key_bytes,
                limit: inner.max_grouping_key_bytes,
            }
            .into());
        }
        check_limits(
            key,
            &group.families,
            inner.push_limits.max_labels_per_series,
            inner.push_limits.max_series,
        )?;
        check_render_cost(
            &group.families,
            key_bytes,
            body_bytes,
            inner.max_render_factor,
        )?;
    }
    Ok(())
}

/// Checks the translated export against the limits the push parsers enforce while
/// they parse: series in the whole export, label name and value bytes, buckets.
fn check_export(
    groups: &std::collections::BTreeMap<crate::grouping::GroupingKey, otlp::OtlpGroup>,
    limits: PushLimits,
) -> Result<(), LimitError> {
    let families = groups.values().flat_map(|group| &group.families);
    let series: usize = families
        .clone()
        .map(|family| family.metric.len().max(1))
        .sum();
    limits.check_series(series)?;
    for family in families {
        let name = family.name.as_deref().unwrap_or_default();
        for metric in &family.metric {
            limits.check_labels(name, metric.label.len())?;
            for pair in &metric.label {
                limits.check_label_name(name, pair.name.as_deref().map_or(0, str::len))?;
                limits.check_label_value(name, pair.value.as_deref().map_or(0, str::len))?;
            }
            limits.check_buckets(name, buckets(metric))?;
        }
    }
    Ok(())
}

/// Buckets, quantiles or native spans and deltas of one series.
fn buckets(metric: &crate::model::Metric) -> usize {
    let histogram = metric.histogram.as_deref().map_or(0, |h| {
        h.bucket.len()
            + h.positive_span.len()
            + h.positive_delta.len()
            + h.negative_span.len()
            + h.negative_delta.len()
    });
    let summary = metric.summary.as_deref().map_or(0, |s| s.quantile.len());
    histogram + summary
}

fn answer(encoding: Encoding, status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(encoding.content_type()),
        )],
        body,
    )
        .into_response()
}

/// A refusal as OTLP answers it: the push API's status code, a `google.rpc.Status`
/// body in the request's encoding, counted like a refused push.
fn refusal(encoding: Encoding, error: &ApiError) -> Response {
    let status = error.status();
    let code = match error {
        ApiError::Store(_) => CODE_FAILED_PRECONDITION,
        ApiError::Internal(_) => CODE_INTERNAL,
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => CODE_RESOURCE_EXHAUSTED,
        _ => CODE_INVALID_ARGUMENT,
    };
    let message = match error {
        ApiError::Internal(detail) => {
            tracing::error!(%detail, "OTLP export failed");
            "internal server error, see the gateway's log".to_owned()
        }
        other => {
            tracing::debug!(error = %other, "rejected OTLP export");
            other.to_string()
        }
    };
    let rejection = error.rejection();
    let mut response = answer(encoding, status, encoding.status(code, &message));
    if let Some(reason) = rejection {
        response.extensions_mut().insert(reason);
    }
    response
}
