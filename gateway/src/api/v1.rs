//! `/api/v1`: status, the stored groups as JSON, and the admin wipe.
//!
//! The JSON has upstream's shape byte for byte where upstream is deterministic (object
//! keys sorted, `time_stamp` in RFC 3339 with nanoseconds, numbers as Go's `%v`
//! strings); groups come in grouping-key order where upstream's order is random. A
//! pushed family named `labels` or `last_push_successful` is left out of its group's
//! object instead of overwriting the group's own field (fix 3 of the spec); it is still
//! served on `/metrics`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::{ApiError, AppState};
use crate::exposition::format_float;
use crate::grouping::GroupingKey;
use crate::model::{Metric, MetricType};
use crate::native_histogram;
use crate::store::{go_type_name, GroupSnapshot, StoredFamily, WriteCommand};

/// Upstream's CORS headers, on every `/api/v1` answer but the wipe.
const CORS: [(HeaderName, &str); 5] = [
    (
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        "Accept, Authorization, Content-Type, Origin",
    ),
    (
        header::ACCESS_CONTROL_ALLOW_METHODS,
        "GET, POST, DELETE, OPTIONS",
    ),
    (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
    (header::ACCESS_CONTROL_EXPOSE_HEADERS, "Date"),
    (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
];

/// `OPTIONS` → 200 with CORS headers, other unrouted methods → 405 with `Allow`.
pub(super) fn with_cors_allow(
    allow: &'static str,
    router: MethodRouter<AppState>,
) -> MethodRouter<AppState> {
    router
        .options(|| async { (StatusCode::OK, CORS) })
        .fallback(move || async move { ApiError::MethodNotAllowed { allow } })
}

/// Any other `/api/v1/...` path: `OPTIONS` is a CORS preflight (200), the rest 404.
pub(super) async fn options_or_not_found(request: Request) -> Response {
    if request.method() == Method::OPTIONS {
        (StatusCode::OK, CORS).into_response()
    } else {
        ApiError::NotFound.into_response()
    }
}

#[derive(Serialize)]
struct Envelope<T: Serialize> {
    status: &'static str,
    data: T,
}

fn json<T: Serialize>(data: T) -> Response {
    match serde_json::to_vec(&Envelope {
        status: "success",
        data,
    }) {
        Ok(body) => (CORS, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => ApiError::Internal(format!("JSON encoding failed: {error}")).into_response(),
    }
}

#[derive(Serialize)]
struct StatusData<'a> {
    build_information: BTreeMap<&'static str, &'static str>,
    flags: &'a BTreeMap<String, String>,
    start_time: String,
}

/// `GET /api/v1/status`.
pub(super) async fn status(State(state): State<AppState>) -> Response {
    // Upstream's keys, so that its UI and scripts find them; values are ours.
    let build_information = BTreeMap::from(state.inner.build_info.status_fields());
    json(StatusData {
        build_information,
        flags: &state.inner.status_flags,
        start_time: rfc3339_nano(state.inner.start_time),
    })
}

/// `GET /api/v1/metrics`.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let groups = state.inner.store.snapshot();
    json(groups.iter().map(GroupJson).collect::<Vec<_>>())
}

/// `PUT /api/v1/admin/wipe` (routed only with the admin API enabled).
pub(super) async fn wipe(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    tracing::info!("wiping the metric store on request of the admin API");
    state
        .inner
        .store
        .apply(WriteCommand::Wipe, SystemTime::now())?;
    Ok(StatusCode::ACCEPTED)
}

/// One group: `labels`, `last_push_successful` and one entry per family, keys sorted.
struct GroupJson<'a>(&'a GroupSnapshot);

impl Serialize for GroupJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        enum Entry<'a> {
            Labels(&'a GroupingKey),
            Successful(bool),
            Family(&'a StoredFamily),
        }
        let group = self.0;
        let mut entries: Vec<(&str, Entry<'_>)> = group
            .families
            .iter()
            .filter(|family| !matches!(family.name(), "labels" | "last_push_successful"))
            .map(|family| (family.name(), Entry::Family(family)))
            .collect();
        entries.push(("labels", Entry::Labels(&group.key)));
        entries.push((
            "last_push_successful",
            Entry::Successful(group.last_push_successful()),
        ));
        entries.sort_by(|a, b| a.0.cmp(b.0));
        let mut map = serializer.serialize_map(Some(entries.len()))?;
        for (key, entry) in entries {
            match entry {
                Entry::Labels(labels) => map.serialize_entry(key, &LabelsJson(labels))?,
                Entry::Successful(successful) => map.serialize_entry(key, &successful)?,
                Entry::Family(family) => map.serialize_entry(key, &FamilyJson::new(family))?,
            }
        }
        map.end()
    }
}

/// A grouping key's labels as a JSON object.
struct LabelsJson<'a>(&'a GroupingKey);

impl Serialize for LabelsJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.labels())
    }
}

#[derive(Serialize)]
struct FamilyJson {
    time_stamp: String,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    help: Option<String>,
    metrics: Vec<MetricJson>,
}

impl FamilyJson {
    fn new(stored: &StoredFamily) -> Self {
        let family = stored.family();
        let kind = match family.r#type.map(MetricType::try_from) {
            None => MetricType::Counter,
            Some(Ok(kind)) => kind,
            // The store admits no unknown types; upstream would print the number.
            Some(Err(_)) => MetricType::Untyped,
        };
        Self {
            time_stamp: rfc3339_nano(stored.pushed_at()),
            kind: go_type_name(kind),
            help: family.help.clone().filter(|help| !help.is_empty()),
            metrics: family
                .metric
                .iter()
                .map(|metric| MetricJson::new(metric, kind))
                .collect(),
        }
    }
}

/// Upstream's `encodableMetric`, a Go map: keys in sorted order.
#[derive(Serialize)]
struct MetricJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    buckets: Option<Buckets>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<String>,
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quantiles: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sum: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
}

/// A histogram's `buckets`: upstream ≥ 1.8 shows classic buckets as an object (upper
/// bound → cumulative count) and, for a histogram without classic buckets, the native
/// buckets as `[boundaries, "lower", "upper", "count"]` arrays.
#[derive(Serialize)]
#[serde(untagged)]
enum Buckets {
    Classic(BTreeMap<String, String>),
    Native(Vec<(u8, String, String, String)>),
}

fn native_count(count: native_histogram::Count) -> String {
    match count {
        native_histogram::Count::Integer(n) => n.to_string(),
        native_histogram::Count::Float(x) => go_float(x),
    }
}

impl MetricJson {
    fn new(metric: &Metric, kind: MetricType) -> Self {
        let labels = metric
            .label
            .iter()
            .map(|pair| {
                (
                    pair.name.clone().unwrap_or_default(),
                    pair.value.clone().unwrap_or_default(),
                )
            })
            .collect();
        let mut json = Self {
            buckets: None,
            count: None,
            labels,
            quantiles: None,
            sum: None,
            value: None,
        };
        match kind {
            MetricType::Summary => {
                let summary = metric.summary.clone().unwrap_or_default();
                json.quantiles = Some(
                    summary
                        .quantile
                        .iter()
                        .map(|q| {
                            (
                                go_float(q.quantile.unwrap_or_default()),
                                go_float(q.value.unwrap_or_default()),
                            )
                        })
                        .collect(),
                );
                json.count = Some(summary.sample_count.unwrap_or_default().to_string());
                json.sum = Some(go_float(summary.sample_sum.unwrap_or_default()));
            }
            MetricType::Histogram => {
                let histogram = metric.histogram.as_deref().cloned().unwrap_or_default();
                json.sum = Some(go_float(histogram.sample_sum.unwrap_or_default()));
                if histogram.bucket.is_empty() {
                    json.buckets = Some(Buckets::Native(
                        native_histogram::intervals(&histogram)
                            .into_iter()
                            .map(|b| {
                                (
                                    b.boundaries as u8,
                                    go_float(b.lower),
                                    go_float(b.upper),
                                    native_count(b.count),
                                )
                            })
                            .collect(),
                    ));
                    json.count = Some(native_count(native_histogram::total(&histogram)));
                } else {
                    json.buckets = Some(Buckets::Classic(
                        histogram
                            .bucket
                            .iter()
                            .map(|b| {
                                (
                                    go_float(b.upper_bound.unwrap_or_default()),
                                    b.cumulative_count.unwrap_or_default().to_string(),
                                )
                            })
                            .collect(),
                    ));
                    json.count = Some(histogram.sample_count.unwrap_or_default().to_string());
                }
            }
            _ => {
                let value = metric
                    .gauge
                    .as_ref()
                    .map(|g| g.value)
                    .or_else(|| metric.counter.as_ref().map(|c| c.value))
                    .or_else(|| metric.untyped.as_ref().map(|u| u.value))
                    .flatten()
                    .unwrap_or_default();
                json.value = Some(go_float(value));
            }
        }
        json
    }
}

/// Go's `fmt.Sprint` of a float64 (like the exposition's, but `-0` stays `-0`).
fn go_float(value: f64) -> String {
    if value == 0.0 && value.is_sign_negative() {
        "-0".to_owned()
    } else {
        format_float(value)
    }
}

/// A time as Go's `time.Time` marshals to JSON, in UTC: RFC 3339 with as many
/// fractional-second digits as needed (`2024-05-01T12:00:00.5Z`).
#[must_use]
pub fn rfc3339_nano(at: SystemTime) -> String {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    let mut out = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    let nanos = since.subsec_nanos();
    if nanos != 0 {
        out.push('.');
        out.push_str(format!("{nanos:09}").trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn times_like_go_json() {
        let table = [
            (0, 0, "1970-01-01T00:00:00Z"),
            (1_795_619_822, 637_216_734, "2026-11-25T15:17:02.637216734Z"),
            (951_782_400, 500_000_000, "2000-02-29T00:00:00.5Z"),
            (4_107_542_399, 0, "2100-02-28T23:59:59Z"),
        ];
        for (secs, nanos, want) in table {
            let at = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
            assert_eq!(rfc3339_nano(at), want);
        }
    }

    /// Upstream ≥ 1.8's shape for native histograms (api/v1 of pushgateway 1.9): no
    /// classic buckets → `[boundaries, lower, upper, count]` per non-empty bucket,
    /// negative ones first, and `count` from the native count; classic buckets keep
    /// the object form even when native buckets are there too.
    #[test]
    fn native_histograms_show_their_buckets_as_intervals() {
        use crate::model::{Bucket, BucketSpan, Histogram};
        let span = |offset, length| BucketSpan {
            offset: Some(offset),
            length: Some(length),
        };
        let native = Histogram {
            sample_count: Some(7),
            sample_sum: Some(-1.5),
            schema: Some(0),
            zero_threshold: Some(0.125),
            zero_count: Some(2),
            positive_span: vec![span(1, 1)],
            positive_delta: vec![4],
            negative_span: vec![span(0, 1)],
            negative_delta: vec![1],
            ..Histogram::default()
        };
        let metric = |histogram: Histogram| Metric {
            histogram: Some(Box::new(histogram)),
            ..Metric::default()
        };
        let json = serde_json::to_string(&MetricJson::new(
            &metric(native.clone()),
            MetricType::Histogram,
        ))
        .unwrap();
        assert_eq!(
            json,
            r#"{"buckets":[[1,"-1","-0.5","1"],[3,"-0.125","0.125","2"],[0,"1","2","4"]],"count":"7","labels":{},"sum":"-1.5"}"#
        );

        let float = Histogram {
            sample_count_float: Some(2.5),
            schema: Some(0),
            positive_span: vec![span(0, 1)],
            positive_count: vec![2.5],
            ..Histogram::default()
        };
        let json =
            serde_json::to_string(&MetricJson::new(&metric(float), MetricType::Histogram)).unwrap();
        assert_eq!(
            json,
            r#"{"buckets":[[0,"0.5","1","2.5"]],"count":"2.5","labels":{},"sum":"0"}"#
        );

        let both = Histogram {
            bucket: vec![Bucket {
                cumulative_count: Some(7),
                upper_bound: Some(f64::INFINITY),
                ..Bucket::default()
            }],
            ..native
        };
        let json =
            serde_json::to_string(&MetricJson::new(&metric(both), MetricType::Histogram)).unwrap();
        assert_eq!(
            json,
            r#"{"buckets":{"+Inf":"7"},"count":"7","labels":{},"sum":"-1.5"}"#
        );
    }

    #[test]
    fn floats_like_go_sprint() {
        assert_eq!(go_float(-0.0), "-0");
        assert_eq!(go_float(1_795_619_822.637_216_8), "1.7956198226372168e+09");
        assert_eq!(go_float(f64::INFINITY), "+Inf");
        assert_eq!(go_float(0.5), "0.5");
    }
}
