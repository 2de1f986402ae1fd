//! One OTLP export as pushed groups, as Prometheus's OTLP ingestion translates it:
//!
//! | OTLP | Prometheus |
//! |---|---|
//! | resource `service.namespace` + `service.name` | `job` (`namespace/name`, or `name`) |
//! | resource `service.instance.id` | `instance` |
//! | other resource attributes | labels of `target_info` (gauge 1) |
//! | scope name, version, attributes | `otel_scope_name`, `otel_scope_version`, `otel_scope_<key>` (as the Collector's Prometheus exporter and `promote_scope_metadata: true` do: two scopes with one metric stay two series) |
//! | point attributes | labels (names sanitised, see [`super::names`]) |
//! | gauge | gauge |
//! | sum, monotonic | counter, `_total` |
//! | sum, not monotonic | gauge |
//! | histogram | classic histogram (`_bucket`, `_sum`, `_count`) |
//! | exponential histogram | native histogram (scale → schema, capped at 8) |
//! | summary | summary |
//!
//! Each (job, instance) is one group. Points are stored without their timestamps (the
//! gateway's samples are stamped at scrape time, as pushed ones are). A point flagged
//! "no recorded value" is left out. Points that cannot be translated are counted as
//! rejected and said why, the rest still stored (OTLP's partial success).

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    AggregationTemporality, ExponentialHistogramDataPoint, HistogramDataPoint, NumberDataPoint,
    SummaryDataPoint,
};

use super::names::{label_name, metric_name, NameKind, NameMode};
use crate::grouping::GroupingKey;
use crate::model::{
    Bucket, BucketSpan, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
    Quantile, Summary,
};

/// The smallest native-histogram schema Prometheus accepts.
const MIN_SCHEMA: i32 = -4;
/// The largest: finer OTLP scales are merged down to it, which is exact.
const MAX_SCHEMA: i32 = 8;
/// The zero bucket's width when the exporter sends none (Prometheus's default for OTLP).
const DEFAULT_ZERO_THRESHOLD: f64 = 1e-128;
/// The OTLP data point flag "no recorded value".
const FLAG_NO_RECORDED_VALUE: u32 = 1;

/// One group of an export.
#[derive(Debug, Default)]
pub struct OtlpGroup {
    /// The family names whose points are increments (delta temporality).
    pub delta_families: Vec<String>,
    /// The translated families, sorted by name.
    pub families: Vec<MetricFamily>,
}

/// What an export becomes.
#[derive(Debug, Default)]
pub struct Translation {
    /// The groups by grouping key.
    pub groups: BTreeMap<GroupingKey, OtlpGroup>,
    /// Points that could not be translated.
    pub rejected_points: u64,
    /// Why, one line per reason (the first few).
    pub messages: Vec<String>,
}

impl Translation {
    fn reject(&mut self, points: usize, message: String) {
        self.rejected_points += points as u64;
        if self.messages.len() < 5 && !self.messages.contains(&message) {
            self.messages.push(message);
        }
    }
}

/// Translates an export. `mode` says whether names stay UTF-8.
#[must_use]
pub fn translate(request: &ExportMetricsServiceRequest, mode: NameMode) -> Translation {
    let mut out = Translation::default();
    let mut building: BTreeMap<GroupingKey, GroupBuilder> = BTreeMap::new();
    for resource_metrics in &request.resource_metrics {
        let attributes = resource_metrics
            .resource
            .as_ref()
            .map_or(&[][..], |resource| &resource.attributes[..]);
        let points: usize = resource_metrics
            .scope_metrics
            .iter()
            .flat_map(|scope| &scope.metrics)
            .map(point_count)
            .sum();
        let Some(key) = grouping_key(attributes) else {
            out.reject(
                points,
                "a resource without service.name has no job: set the service.name resource attribute (OTEL_SERVICE_NAME)".to_owned(),
            );
            continue;
        };
        let group = building.entry(key.clone()).or_default();
        if let Some(info) = target_info(attributes, mode) {
            group.add(&mut out, info, false, 0);
        }
        for scope_metrics in &resource_metrics.scope_metrics {
            let scope_labels = scope_labels(scope_metrics.scope.as_ref(), mode);
            for metric in &scope_metrics.metrics {
                let Some(data) = &metric.data else { continue };
                match family_of(metric, data, &scope_labels, mode) {
                    Ok((family, delta, dropped)) => {
                        if dropped.0 > 0 {
                            out.reject(dropped.0, dropped.1);
                        }
                        group.add(&mut out, family, delta, point_count(metric));
                    }
                    Err(message) => out.reject(point_count(metric), message),
                }
            }
        }
    }
    out.groups = building
        .into_iter()
        .filter(|(_, group)| !group.families.is_empty())
        .map(|(key, group)| (key, group.finish()))
        .collect();
    out
}

/// Families of one group while they are collected.
#[derive(Debug, Default)]
struct GroupBuilder {
    families: BTreeMap<String, (MetricFamily, bool)>,
}

impl GroupBuilder {
    /// Adds a family, merging it with a same-named one of the same type.
    fn add(&mut self, out: &mut Translation, family: MetricFamily, delta: bool, points: usize) {
        let name = family.name.clone().unwrap_or_default();
        if family.metric.is_empty() {
            return;
        }
        match self.families.get_mut(&name) {
            None => {
                self.families.insert(name, (family, delta));
            }
            Some((known, known_delta)) if known.r#type == family.r#type && *known_delta == delta => {
                for metric in family.metric {
                    if let Some(same) = known.metric.iter_mut().find(|m| m.label == metric.label) {
                        *same = metric;
                        out.reject(1, format!("two points of {name} have the same labels; the last was kept"));
                    } else {
                        known.metric.push(metric);
                    }
                }
            }
            Some(_) => out.reject(
                points,
                format!("two OTLP metrics become {name} with different types or temporalities; the second was dropped: rename one"),
            ),
        }
    }

    fn finish(self) -> OtlpGroup {
        let mut group = OtlpGroup::default();
        for (name, (family, delta)) in self.families {
            if delta {
                group.delta_families.push(name);
            }
            group.families.push(family);
        }
        group
    }
}

fn point_count(metric: &opentelemetry_proto::tonic::metrics::v1::Metric) -> usize {
    match &metric.data {
        Some(Data::Gauge(gauge)) => gauge.data_points.len(),
        Some(Data::Sum(sum)) => sum.data_points.len(),
        Some(Data::Histogram(histogram)) => histogram.data_points.len(),
        Some(Data::ExponentialHistogram(histogram)) => histogram.data_points.len(),
        Some(Data::Summary(summary)) => summary.data_points.len(),
        None => 0,
    }
}

/// `job` and `instance` from the resource, as Prometheus derives them.
fn grouping_key(attributes: &[KeyValue]) -> Option<GroupingKey> {
    let get = |key: &str| attribute(attributes, key).filter(|value| !value.is_empty());
    let name = get("service.name")?;
    let job = match get("service.namespace") {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name,
    };
    let mut labels = BTreeMap::from([("job".to_owned(), job)]);
    if let Some(instance) = get("service.instance.id") {
        labels.insert("instance".to_owned(), instance);
    }
    // Only `job` and `instance`: legacy names under either rule.
    GroupingKey::from_labels(labels, crate::names::NameRules::Legacy)
}

/// The resource attributes that make `job` and `instance`, left out of `target_info`.
const IDENTIFYING: [&str; 3] = ["service.name", "service.namespace", "service.instance.id"];

/// `target_info`: the resource's other attributes, when it has any.
fn target_info(attributes: &[KeyValue], mode: NameMode) -> Option<MetricFamily> {
    let rest: Vec<&KeyValue> = attributes
        .iter()
        .filter(|pair| !IDENTIFYING.contains(&pair.key.as_str()))
        .collect();
    if rest.is_empty() {
        return None;
    }
    Some(MetricFamily {
        name: Some("target_info".to_owned()),
        help: Some("Target metadata".to_owned()),
        r#type: Some(MetricType::Gauge as i32),
        metric: vec![Metric {
            label: labels(rest.into_iter(), &[], mode),
            gauge: Some(Gauge { value: Some(1.0) }),
            ..Metric::default()
        }],
        unit: None,
    })
}

/// The scope's labels, added to each of its series.
fn scope_labels(
    scope: Option<&opentelemetry_proto::tonic::common::v1::InstrumentationScope>,
    mode: NameMode,
) -> Vec<LabelPair> {
    let Some(scope) = scope else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if !scope.name.is_empty() {
        out.push(LabelPair::new("otel_scope_name", scope.name.clone()));
    }
    if !scope.version.is_empty() {
        out.push(LabelPair::new("otel_scope_version", scope.version.clone()));
    }
    for pair in &scope.attributes {
        out.push(LabelPair::new(
            format!("otel_scope_{}", label_name(&pair.key, mode)),
            value_text(pair.value.as_ref()),
        ));
    }
    out
}

/// Labels from attributes (after the scope's), sorted by name; keys that become the
/// same name have their values joined with `;` in key order, as Prometheus does.
fn labels<'a>(
    attributes: impl Iterator<Item = &'a KeyValue>,
    scope: &[LabelPair],
    mode: NameMode,
) -> Vec<LabelPair> {
    let mut by_name: BTreeMap<String, Vec<(&str, String)>> = BTreeMap::new();
    for pair in attributes {
        by_name
            .entry(label_name(&pair.key, mode))
            .or_default()
            .push((pair.key.as_str(), value_text(pair.value.as_ref())));
    }
    let mut out: Vec<LabelPair> = scope.to_vec();
    for (name, mut values) in by_name {
        if name.is_empty() {
            continue;
        }
        values.sort_by(|a, b| a.0.cmp(b.0));
        let value = values
            .into_iter()
            .map(|(_, value)| value)
            .collect::<Vec<_>>()
            .join(";");
        out.retain(|pair| pair.name.as_deref() != Some(name.as_str()));
        out.push(LabelPair::new(name, value));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// An attribute's value as text.
fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|pair| pair.key == key)
        .map(|pair| value_text(pair.value.as_ref()))
}

/// An `AnyValue` as a label value: strings as they are, numbers and booleans as
/// written, arrays and maps as JSON.
fn value_text(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        None => String::new(),
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        Some(other) => serde_json::to_string(&json_of(other)).unwrap_or_default(),
    }
}

fn json_of(value: &any_value::Value) -> serde_json::Value {
    use serde_json::Value as Json;
    match value {
        any_value::Value::StringValue(text) => Json::from(text.as_str()),
        any_value::Value::BoolValue(flag) => Json::from(*flag),
        any_value::Value::IntValue(number) => Json::from(*number),
        any_value::Value::DoubleValue(number) => Json::from(*number),
        any_value::Value::BytesValue(bytes) => {
            use base64::Engine as _;
            Json::from(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        any_value::Value::ArrayValue(array) => Json::Array(
            array
                .values
                .iter()
                .map(|item| item.value.as_ref().map_or(Json::Null, json_of))
                .collect(),
        ),
        any_value::Value::KvlistValue(list) => Json::Object(
            list.values
                .iter()
                .map(|pair| {
                    let value = pair
                        .value
                        .as_ref()
                        .and_then(|value| value.value.as_ref())
                        .map_or(Json::Null, json_of);
                    (pair.key.clone(), value)
                })
                .collect(),
        ),
        // Indexes into a profile's string table: no meaning outside profiles.
        any_value::Value::StringValueStrindex(_) => Json::Null,
    }
}

/// Points dropped from a metric that was otherwise translated, and why.
type Dropped = (usize, String);

/// One OTLP metric as a family; whether its points are deltas; points left out.
fn family_of(
    metric: &opentelemetry_proto::tonic::metrics::v1::Metric,
    data: &Data,
    scope: &[LabelPair],
    mode: NameMode,
) -> Result<(MetricFamily, bool, Dropped), String> {
    let delta = |temporality: i32| temporality == AggregationTemporality::Delta as i32;
    let family = |kind: NameKind, r#type: MetricType, metrics: Vec<Metric>| MetricFamily {
        name: Some(metric_name(&metric.name, &metric.unit, kind, mode)),
        help: (!metric.description.is_empty()).then(|| metric.description.clone()),
        r#type: Some(r#type as i32),
        metric: metrics,
        unit: None,
    };
    let recorded = |flags: u32| flags & FLAG_NO_RECORDED_VALUE == 0;
    let mut dropped: Dropped = (0, String::new());
    let translated = match data {
        Data::Gauge(gauge) => (
            family(
                NameKind::Gauge,
                MetricType::Gauge,
                number_metrics(&gauge.data_points, scope, mode, false),
            ),
            false,
        ),
        Data::Sum(sum) => {
            if sum.aggregation_temporality == AggregationTemporality::Unspecified as i32 {
                return Err(format!(
                    "sum {} has no aggregation temporality",
                    metric.name
                ));
            }
            let (kind, r#type) = if sum.is_monotonic {
                (NameKind::Counter, MetricType::Counter)
            } else {
                (NameKind::Gauge, MetricType::Gauge)
            };
            let metrics = number_metrics(&sum.data_points, scope, mode, sum.is_monotonic);
            (
                family(kind, r#type, metrics),
                delta(sum.aggregation_temporality),
            )
        }
        Data::Histogram(histogram) => {
            if histogram.aggregation_temporality == AggregationTemporality::Unspecified as i32 {
                return Err(format!(
                    "histogram {} has no aggregation temporality",
                    metric.name
                ));
            }
            let points = histogram.data_points.iter().filter(|p| recorded(p.flags));
            let metrics = histogram_metrics(points, scope, mode, &mut dropped, |point| {
                let value = classic_histogram(point).ok_or_else(|| {
                    format!(
                        "a point of histogram {} has {} bucket counts for {} bounds (one more than the bounds is needed)",
                        metric.name,
                        point.bucket_counts.len(),
                        point.explicit_bounds.len()
                    )
                })?;
                Ok((value, &point.attributes[..]))
            });
            (
                family(NameKind::Other, MetricType::Histogram, metrics),
                delta(histogram.aggregation_temporality),
            )
        }
        Data::ExponentialHistogram(histogram) => {
            if histogram.aggregation_temporality == AggregationTemporality::Unspecified as i32 {
                return Err(format!(
                    "exponential histogram {} has no aggregation temporality",
                    metric.name
                ));
            }
            let points = histogram.data_points.iter().filter(|p| recorded(p.flags));
            let metrics = histogram_metrics(points, scope, mode, &mut dropped, |point| {
                let value = native_histogram(point).map_err(|why| {
                    format!("a point of exponential histogram {}: {why}", metric.name)
                })?;
                Ok((value, &point.attributes[..]))
            });
            (
                family(NameKind::Other, MetricType::Histogram, metrics),
                delta(histogram.aggregation_temporality),
            )
        }
        Data::Summary(summary) => {
            let metrics = summary
                .data_points
                .iter()
                .filter(|p| recorded(p.flags))
                .map(|point| summary_metric(point, scope, mode))
                .collect();
            (family(NameKind::Other, MetricType::Summary, metrics), false)
        }
    };
    Ok((translated.0, translated.1, dropped))
}

/// Histogram points as series; points that do not translate are counted in `dropped`.
fn histogram_metrics<'a, P: 'a>(
    points: impl Iterator<Item = &'a P>,
    scope: &[LabelPair],
    mode: NameMode,
    dropped: &mut Dropped,
    convert: impl Fn(&'a P) -> Result<(Histogram, &'a [KeyValue]), String>,
) -> Vec<Metric> {
    let mut metrics = Vec::new();
    for point in points {
        match convert(point) {
            Ok((histogram, attributes)) => metrics.push(Metric {
                label: labels(attributes.iter(), scope, mode),
                histogram: Some(Box::new(histogram)),
                ..Metric::default()
            }),
            Err(why) => {
                dropped.0 += 1;
                dropped.1 = why;
            }
        }
    }
    metrics
}

fn number_value(point: &NumberDataPoint) -> f64 {
    match point.value {
        Some(number_data_point::Value::AsDouble(value)) => value,
        Some(number_data_point::Value::AsInt(value)) => value as f64,
        None => 0.0,
    }
}

fn number_metrics(
    points: &[NumberDataPoint],
    scope: &[LabelPair],
    mode: NameMode,
    counter: bool,
) -> Vec<Metric> {
    points
        .iter()
        .filter(|point| point.flags & FLAG_NO_RECORDED_VALUE == 0 && point.value.is_some())
        .map(|point| {
            let value = Some(number_value(point));
            Metric {
                label: labels(point.attributes.iter(), scope, mode),
                counter: counter.then_some(Counter {
                    value,
                    ..Counter::default()
                }),
                gauge: (!counter).then_some(Gauge { value }),
                ..Metric::default()
            }
        })
        .collect()
}

/// A classic histogram: OTLP counts per bucket become cumulative counts per bound.
fn classic_histogram(point: &HistogramDataPoint) -> Option<Histogram> {
    let bounds = &point.explicit_bounds;
    let counts = &point.bucket_counts;
    // No buckets at all is allowed (count and sum only); otherwise one more than bounds.
    if !counts.is_empty() && counts.len() != bounds.len() + 1 {
        return None;
    }
    let mut running = 0_u64;
    let bucket = bounds
        .iter()
        .zip(counts)
        .map(|(bound, count)| {
            running = running.saturating_add(*count);
            Bucket {
                cumulative_count: Some(running),
                upper_bound: Some(*bound),
                ..Bucket::default()
            }
        })
        .collect();
    Some(Histogram {
        sample_count: Some(point.count),
        sample_sum: Some(point.sum.unwrap_or(0.0)),
        bucket,
        ..Histogram::default()
    })
}

/// A native histogram from an exponential one: the scale is the schema, finer scales
/// are merged down to 8 (exact: each bucket of scale s-1 is two of scale s), and the
/// bucket of OTLP index i, (base^i, base^(i+1)], is Prometheus's index i+1.
fn native_histogram(point: &ExponentialHistogramDataPoint) -> Result<Histogram, String> {
    if point.scale < MIN_SCHEMA {
        return Err(format!(
            "scale {} is below {MIN_SCHEMA}, the coarsest Prometheus keeps",
            point.scale
        ));
    }
    let steps = u32::try_from(point.scale - MAX_SCHEMA).unwrap_or(0);
    let (positive_span, positive_delta) = spans(point.positive.as_ref(), steps);
    let (negative_span, negative_delta) = spans(point.negative.as_ref(), steps);
    Ok(Histogram {
        sample_count: Some(point.count),
        sample_sum: Some(point.sum.unwrap_or(0.0)),
        schema: Some(point.scale.min(MAX_SCHEMA)),
        zero_threshold: Some(if point.zero_threshold > 0.0 {
            point.zero_threshold
        } else {
            DEFAULT_ZERO_THRESHOLD
        }),
        zero_count: Some(point.zero_count),
        positive_span,
        positive_delta,
        negative_span,
        negative_delta,
        ..Histogram::default()
    })
}

/// Dense OTLP buckets as Prometheus spans and deltas, merged `steps` scales down.
fn spans(buckets: Option<&Buckets>, steps: u32) -> (Vec<BucketSpan>, Vec<i64>) {
    let Some(buckets) = buckets else {
        return (Vec::new(), Vec::new());
    };
    // Merge down: OTLP index i at scale s is index i >> 1 at scale s-1.
    let mut merged: BTreeMap<i64, u64> = BTreeMap::new();
    for (at, count) in buckets.bucket_counts.iter().enumerate() {
        if *count == 0 {
            continue;
        }
        let index = (i64::from(buckets.offset) + i64::try_from(at).unwrap_or(i64::MAX)) >> steps;
        *merged.entry(index + 1).or_default() += count;
    }
    encode_buckets(merged)
}

/// Native-histogram buckets by Prometheus index as spans and deltas.
pub(super) fn encode_buckets(merged: BTreeMap<i64, u64>) -> (Vec<BucketSpan>, Vec<i64>) {
    let mut span_list: Vec<BucketSpan> = Vec::new();
    let mut deltas = Vec::new();
    let mut previous_index: Option<i64> = None;
    let mut previous_count = 0_i64;
    for (index, count) in merged {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        match previous_index {
            // Gaps of up to two empty buckets are cheaper inside a span than a new one.
            Some(previous) if index - previous <= 3 => {
                let span = span_list.last_mut().expect("a span was opened");
                for _ in previous + 1..index {
                    deltas.push(-previous_count);
                    previous_count = 0;
                }
                span.length = Some(span.length.unwrap_or(0) + (index - previous) as u32);
            }
            _ => {
                let offset = match previous_index {
                    None => index,
                    Some(previous) => index - previous - 1,
                };
                span_list.push(BucketSpan {
                    offset: Some(offset as i32),
                    length: Some(1),
                });
            }
        }
        deltas.push(count - previous_count);
        previous_count = count;
        previous_index = Some(index);
    }
    (span_list, deltas)
}

fn summary_metric(point: &SummaryDataPoint, scope: &[LabelPair], mode: NameMode) -> Metric {
    Metric {
        label: labels(point.attributes.iter(), scope, mode),
        summary: Some(Box::new(Summary {
            sample_count: Some(point.count),
            sample_sum: Some(point.sum),
            quantile: point
                .quantile_values
                .iter()
                .map(|q| Quantile {
                    quantile: Some(q.quantile),
                    value: Some(q.value),
                })
                .collect(),
            ..Summary::default()
        })),
        ..Metric::default()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::metrics::v1::{
        ExponentialHistogram, Gauge as OtlpGauge, Histogram as OtlpHistogram, Metric as OtlpMetric,
        ResourceMetrics, ScopeMetrics, Sum, Summary as OtlpSummary,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    use super::*;

    fn text(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.to_owned())),
            }),
            ..KeyValue::default()
        }
    }

    fn metric(name: &str, unit: &str, data: Data) -> OtlpMetric {
        OtlpMetric {
            name: name.to_owned(),
            unit: unit.to_owned(),
            description: format!("about {name}"),
            data: Some(data),
            ..OtlpMetric::default()
        }
    }

    fn number(value: f64, attributes: Vec<KeyValue>) -> NumberDataPoint {
        NumberDataPoint {
            attributes,
            value: Some(number_data_point::Value::AsDouble(value)),
            ..NumberDataPoint::default()
        }
    }

    fn export(resource: Vec<KeyValue>, metrics: Vec<OtlpMetric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: resource,
                    ..Resource::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "batch".to_owned(),
                        version: "1.2".to_owned(),
                        ..InstrumentationScope::default()
                    }),
                    metrics,
                    ..ScopeMetrics::default()
                }],
                ..ResourceMetrics::default()
            }],
        }
    }

    fn label_text(metric: &Metric) -> String {
        metric
            .label
            .iter()
            .map(|pair| format!("{}={}", pair.name(), pair.value()))
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn resource_becomes_job_instance_and_target_info() {
        let request = export(
            vec![
                text("service.name", "billing"),
                text("service.namespace", "shop"),
                text("service.instance.id", "host-1"),
                text("telemetry.sdk.language", "python"),
            ],
            vec![metric(
                "jobs.done",
                "{job}",
                Data::Sum(Sum {
                    data_points: vec![number(7.0, vec![text("http.method", "GET")])],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                }),
            )],
        );
        let translation = translate(&request, NameMode::Legacy);
        assert_eq!(translation.rejected_points, 0, "{:?}", translation.messages);
        let (key, group) = translation.groups.iter().next().expect("one group");
        let key_labels: Vec<_> = key.labels().collect();
        assert_eq!(
            key_labels,
            [("instance", "host-1"), ("job", "shop/billing")]
        );
        let names: Vec<_> = group.families.iter().map(MetricFamily::name).collect();
        assert_eq!(names, ["jobs_done_total", "target_info"]);
        let counter = &group.families[0];
        assert_eq!(counter.r#type, Some(MetricType::Counter as i32));
        assert_eq!(
            label_text(&counter.metric[0]),
            "http_method=GET,otel_scope_name=batch,otel_scope_version=1.2"
        );
        assert_eq!(
            counter.metric[0].counter.as_ref().and_then(|c| c.value),
            Some(7.0)
        );
        assert_eq!(
            label_text(&group.families[1].metric[0]),
            "telemetry_sdk_language=python"
        );
        assert!(group.delta_families.is_empty());
    }

    #[test]
    #[allow(clippy::too_many_lines)] // one export of every kind reads best in one piece
    fn every_kind_of_metric() {
        let request = export(
            vec![text("service.name", "j")],
            vec![
                metric(
                    "queue.size",
                    "1",
                    Data::Gauge(OtlpGauge {
                        data_points: vec![number(0.5, vec![])],
                    }),
                ),
                metric(
                    "active",
                    "",
                    Data::Sum(Sum {
                        data_points: vec![number(-2.0, vec![])],
                        aggregation_temporality: AggregationTemporality::Delta as i32,
                        is_monotonic: false,
                    }),
                ),
                metric(
                    "latency",
                    "ms",
                    Data::Histogram(OtlpHistogram {
                        data_points: vec![HistogramDataPoint {
                            count: 6,
                            sum: Some(12.5),
                            bucket_counts: vec![1, 2, 3],
                            explicit_bounds: vec![1.0, 5.0],
                            ..HistogramDataPoint::default()
                        }],
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    }),
                ),
                metric(
                    "size",
                    "By",
                    Data::ExponentialHistogram(ExponentialHistogram {
                        data_points: vec![ExponentialHistogramDataPoint {
                            count: 4,
                            sum: Some(9.0),
                            scale: 0,
                            zero_count: 1,
                            positive: Some(Buckets {
                                offset: -1,
                                bucket_counts: vec![1, 0, 0, 0, 2],
                            }),
                            ..ExponentialHistogramDataPoint::default()
                        }],
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    }),
                ),
                metric(
                    "rpc",
                    "s",
                    Data::Summary(OtlpSummary {
                        data_points: vec![SummaryDataPoint {
                            count: 3,
                            sum: 1.5,
                            ..SummaryDataPoint::default()
                        }],
                    }),
                ),
                metric(
                    "bad.histogram",
                    "",
                    Data::Histogram(OtlpHistogram {
                        data_points: vec![HistogramDataPoint {
                            count: 1,
                            bucket_counts: vec![1],
                            explicit_bounds: vec![1.0, 2.0],
                            ..HistogramDataPoint::default()
                        }],
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    }),
                ),
            ],
        );
        let translation = translate(&request, NameMode::Legacy);
        assert_eq!(translation.rejected_points, 1, "the bad histogram's point");
        assert!(
            translation.messages[0].contains("bad.histogram"),
            "{:?}",
            translation.messages
        );
        let group = translation.groups.values().next().expect("one group");
        let by_name = |name: &str| {
            group
                .families
                .iter()
                .find(|f| f.name() == name)
                .unwrap_or_else(|| panic!("{name} in {:?}", group.families))
        };
        assert_eq!(
            by_name("queue_size_ratio").r#type,
            Some(MetricType::Gauge as i32)
        );
        assert_eq!(by_name("active").r#type, Some(MetricType::Gauge as i32));
        assert_eq!(group.delta_families, ["active"]);
        let latency = by_name("latency_milliseconds").metric[0]
            .histogram
            .as_deref()
            .expect("classic histogram");
        let cumulative: Vec<_> = latency
            .bucket
            .iter()
            .map(|b| {
                (
                    b.upper_bound.unwrap_or_default(),
                    b.cumulative_count.unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(cumulative, [(1.0, 1), (5.0, 3)]);
        assert_eq!(
            (latency.sample_count, latency.sample_sum),
            (Some(6), Some(12.5))
        );
        let size = by_name("size_bytes").metric[0]
            .histogram
            .as_deref()
            .expect("native histogram");
        assert_eq!(size.schema, Some(0));
        // OTLP index -1 and 3 are Prometheus's 0 and 4: three empty buckets between
        // make two spans.
        let spans: Vec<_> = size
            .positive_span
            .iter()
            .map(|s| (s.offset.unwrap_or_default(), s.length.unwrap_or_default()))
            .collect();
        assert_eq!(spans, [(0, 1), (3, 1)]);
        assert_eq!(size.positive_delta, [1, 1]);
        assert_eq!(size.zero_count, Some(1));
        assert_eq!(
            by_name("rpc_seconds").r#type,
            Some(MetricType::Summary as i32)
        );
    }

    #[test]
    fn fine_scales_merge_down_to_eight() {
        let (spans, deltas) = spans(
            Some(&Buckets {
                offset: 0,
                bucket_counts: vec![1, 1, 0, 2],
            }),
            1,
        );
        // Scale 9 indexes 0,1 → scale 8 index 0 (Prometheus 1); 3 → 1 (Prometheus 2).
        let spans: Vec<_> = spans
            .iter()
            .map(|s| (s.offset.unwrap_or_default(), s.length.unwrap_or_default()))
            .collect();
        assert_eq!(spans, [(1, 2)]);
        assert_eq!(deltas, [2, 0]);
        let coarse = ExponentialHistogramDataPoint {
            scale: -5,
            ..ExponentialHistogramDataPoint::default()
        };
        assert!(native_histogram(&coarse).is_err(), "below schema -4");
    }

    #[test]
    fn resource_without_service_name_is_rejected() {
        let request = export(
            vec![text("host.name", "h")],
            vec![metric(
                "g",
                "",
                Data::Gauge(OtlpGauge {
                    data_points: vec![number(1.0, vec![]), number(2.0, vec![text("a", "b")])],
                }),
            )],
        );
        let translation = translate(&request, NameMode::Legacy);
        assert!(translation.groups.is_empty());
        assert_eq!(translation.rejected_points, 2);
        assert!(translation.messages[0].contains("service.name"));
    }

    #[test]
    fn attribute_values_and_collisions() {
        let int = KeyValue {
            key: "http.status".to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(200)),
            }),
            ..KeyValue::default()
        };
        let labels = labels(
            [text("a.b", "1"), text("a_b", "2"), int].iter(),
            &[],
            NameMode::Legacy,
        );
        let texts: Vec<_> = labels.iter().map(|p| (p.name(), p.value())).collect();
        assert_eq!(texts, [("a_b", "1;2"), ("http_status", "200")]);
    }
}
