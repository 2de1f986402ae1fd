//! The consistency check of a push, in two halves.
//!
//! [`prepare`] looks at the push alone and needs no lock: timestamps, names, labels,
//! values, duplicates inside the push; it also applies the grouping labels. The store
//! then checks the prepared push against its index (types, series and names held by
//! other groups) under the writer lock, so the cost of a push is proportional to the
//! push, never to the store. Together they reject everything that would make the merged
//! exposition invalid, which upstream lets through in a few cases (fix 1 of the spec).
//!
//! Texts that the Go pushgateway's parser-case verdicts compare by prefix (timestamps,
//! the same series twice, an invalid label name) keep Go's wording, metric rendered in
//! protobuf compact text as Go 1.5.1 prints it; the others say in plain words what
//! clashed with what and what to do.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::hash::{BuildHasher as _, Hash as _, Hasher as _, RandomState};
use std::sync::OnceLock;

use crate::exposition::format_float;
use crate::grouping::{go_quote, GroupingKey};
use crate::model::{LabelPair, Metric, MetricFamily, MetricType};
use crate::names::NameRules;
use crate::source::MetricSource;

use super::{PUSH_FAILURE_TIME_NAME, PUSH_TIME_NAME};

/// Family names starting with this are reserved for dropgate's own (trace) metrics.
pub const RESERVED_PREFIX: &str = "dropgate_";

/// Suffixes under which summaries and histograms expose extra series.
const SUMMARY_SUFFIXES: [&str; 2] = ["_sum", "_count"];
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_sum", "_count", "_bucket"];

/// Why a push was rejected by the consistency check (the part after
/// `pushed metrics are invalid or inconsistent with existing metrics: `).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Inconsistency {
    /// A sample carries a timestamp; the pushgateway model has none.
    #[error("pushed metrics must not have timestamps")]
    Timestamps,
    /// A family name is not a valid Prometheus metric name.
    #[error("metric family name {} is not a valid metric name ({})", go_quote(.name.as_bytes()), if *.utf8_names {
        "any non-empty UTF-8"
    } else {
        "[a-zA-Z_:][a-zA-Z0-9_:]*; UTF-8 names need --push.enable-utf8-names"
    })]
    InvalidMetricName {
        /// The family name.
        name: String,
        /// Whether UTF-8 names were allowed (the hint differs).
        utf8_names: bool,
    },
    /// A family's type is not one of the known `MetricType` values.
    #[error("metric family {} has unknown type number {value}", go_quote(.name.as_bytes()))]
    UnknownType {
        /// The family name.
        name: String,
        /// The type number in the push.
        value: i32,
    },
    /// A family name belongs to dropgate's own or the tracer's metrics.
    #[error("metric family {} uses a name reserved for dropgate's own metrics (names starting with \"dropgate_\", the tracer's families and their _sum/_count/_bucket series); push it under another name", go_quote(.name.as_bytes()))]
    ReservedName {
        /// The family name.
        name: String,
    },
    /// A metric lacks the value field of its family's type (Go's wording).
    #[error("collected metric {} {{ {metric}}} is not a {kind}", go_quote(.family.as_bytes()))]
    WrongValueType {
        /// The family name.
        family: String,
        /// The metric in protobuf compact text.
        metric: String,
        /// The family's type, as Go names it.
        kind: &'static str,
    },
    /// A label name is invalid or starts with `__` (Go's wording).
    #[error("collected metric {} {{ {metric}}} has a label with an invalid name: {label}", go_quote(.family.as_bytes()))]
    InvalidLabelName {
        /// The family name.
        family: String,
        /// The metric in protobuf compact text.
        metric: String,
        /// The offending label name.
        label: String,
    },
    /// A metric has the same label name twice (Go's wording).
    #[error("collected metric {} {{ {metric}}} has two or more labels with the same name: {label}", go_quote(.family.as_bytes()))]
    DuplicateLabelName {
        /// The family name.
        family: String,
        /// The metric in protobuf compact text.
        metric: String,
        /// The repeated label name.
        label: String,
    },
    /// A summary has a `quantile` label or a histogram an `le` label (Go's wording).
    #[error("collected metric {} {{ {metric}}} must not have an explicit {} label", go_quote(.family.as_bytes()), go_quote(.label.as_bytes()))]
    ExplicitReservedLabel {
        /// The family name.
        family: String,
        /// The metric in protobuf compact text.
        metric: String,
        /// `quantile` or `le`.
        label: &'static str,
    },
    /// The same series (name and non-empty labels) twice, in the push or across groups.
    #[error("collected metric {} {{ {metric}}} was collected before with the same name and label values{}", go_quote(.family.as_bytes()), .other_group.as_ref().map(|g| format!(" (group {g} already has it; an empty label value counts as no label, so push one of them with different labels)")).unwrap_or_default())]
    DuplicateSeries {
        /// The family name.
        family: String,
        /// The metric in protobuf compact text.
        metric: String,
        /// The other group holding the series, when it is not the push itself.
        other_group: Option<String>,
    },
    /// A family's type differs from the same family in another group.
    #[error("metric family {} is pushed as {pushed} but group {group} has it as {existing}; push it with the same type or under another name", go_quote(.family.as_bytes()))]
    TypeClash {
        /// The family name.
        family: String,
        /// The pushed type.
        pushed: &'static str,
        /// The type already in the store.
        existing: &'static str,
        /// A group that has the family with the other type.
        group: String,
    },
    /// A family's series names collide with a summary's or histogram's extra series.
    #[error("metric family {} collides with {kind} {}, whose exposition has series named {}; rename one of them", go_quote(.name.as_bytes()), go_quote(.base.as_bytes()), go_quote(.name.as_bytes()))]
    SuffixClash {
        /// The colliding name (`x_count`, `x_sum` or `x_bucket`).
        name: String,
        /// The summary or histogram name (`x`).
        base: String,
        /// `summary` or `histogram`.
        kind: &'static str,
    },
    /// A new group would expose the same labels as an existing one.
    #[error("grouping key {key} exposes the same labels as the existing group {existing} (an empty label value counts as no label); push to that group's URL, or delete it first")]
    GroupIdentityClash {
        /// The pushed grouping key.
        key: String,
        /// The existing group.
        existing: String,
    },
}

/// Names that pushes may not define: the reserved prefix and the families of the
/// process's own sources, with the extra series names of summaries and histograms.
#[derive(Debug, Clone, Default)]
pub struct ReservedNames {
    names: BTreeSet<String>,
}

impl ReservedNames {
    /// Reserves `names` (typically the names a `MetricSource` returns) besides the prefix.
    #[must_use]
    pub fn new(names: impl IntoIterator<Item = String>) -> Self {
        Self {
            names: names.into_iter().collect(),
        }
    }

    /// Reserves the names of the families `source` returns now.
    #[must_use]
    pub fn of_source(source: &dyn MetricSource) -> Self {
        Self::new(
            source
                .collect()
                .into_iter()
                .filter_map(|family| family.name),
        )
    }

    /// Whether a push may not define a family called `name`.
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        if name.starts_with(RESERVED_PREFIX) || self.names.contains(name) {
            return true;
        }
        HISTOGRAM_SUFFIXES.iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| self.names.contains(base))
                || self.names.contains(&format!("{name}{suffix}"))
        })
    }
}

/// One family of a push, checked on its own and with the grouping labels applied.
#[derive(Debug, Clone)]
pub(crate) struct PreparedFamily {
    /// The family: labels overwritten by the grouping labels, `instance` added, sorted.
    pub family: MetricFamily,
    /// Its type (a family without one is a counter, as Go's `GetType` says).
    pub kind: MetricType,
    /// The hash of each series' identity (see [`series_hash`]).
    pub hashes: Vec<u64>,
}

/// Checks a push on its own and applies the grouping labels; sorted by family name.
///
/// A family repeated in the push keeps its last occurrence (Go collects them in a map).
/// Families named like the gateway's push gauges are dropped: the gateway sets those.
pub(crate) fn prepare(
    key: &GroupingKey,
    families: Vec<MetricFamily>,
    reserved: &ReservedNames,
    names: NameRules,
) -> Result<Vec<PreparedFamily>, Inconsistency> {
    let mut by_name: BTreeMap<String, MetricFamily> = BTreeMap::new();
    for family in families {
        let name = family.name.clone().unwrap_or_default();
        if name != PUSH_TIME_NAME && name != PUSH_FAILURE_TIME_NAME {
            by_name.insert(name, family);
        }
    }
    // Go checks timestamps before anything else.
    let has_timestamp = by_name
        .values()
        .flat_map(|family| &family.metric)
        .any(|metric| metric.timestamp_ms.is_some());
    if has_timestamp {
        return Err(Inconsistency::Timestamps);
    }
    let mut prepared = Vec::with_capacity(by_name.len());
    for (name, mut family) in by_name {
        if !names.allows_metric_name(&name) {
            return Err(Inconsistency::InvalidMetricName {
                name,
                utf8_names: names.utf8(),
            });
        }
        if reserved.contains(&name) {
            return Err(Inconsistency::ReservedName { name });
        }
        let kind = match family.r#type.map(MetricType::try_from) {
            None => MetricType::Counter,
            Some(Ok(kind)) => kind,
            Some(Err(_)) => {
                return Err(Inconsistency::UnknownType {
                    value: family.r#type.unwrap_or_default(),
                    name,
                })
            }
        };
        let mut seen: HashMap<u64, usize> = HashMap::with_capacity(family.metric.len());
        let mut hashes = Vec::with_capacity(family.metric.len());
        for i in 0..family.metric.len() {
            let metric = &mut family.metric[i];
            apply_grouping_labels(metric, key);
            check_metric(&name, kind, metric, names)?;
            let hash = series_hash(&metric.label);
            if let Some(&earlier) = seen.get(&hash) {
                let metric = &family.metric[i];
                if same_identity(&family.metric[earlier].label, &metric.label) {
                    return Err(Inconsistency::DuplicateSeries {
                        family: name,
                        metric: go_metric_text(metric),
                        other_group: None,
                    });
                }
            }
            seen.insert(hash, i);
            hashes.push(hash);
        }
        prepared.push(PreparedFamily {
            family,
            kind,
            hashes,
        });
    }
    check_suffixes_within(&prepared)?;
    Ok(prepared)
}

/// Grouping labels overwrite same-named labels of the metric, `instance=""` is added
/// when there is none, and the labels end up sorted by name.
pub(crate) fn apply_grouping_labels(metric: &mut Metric, key: &GroupingKey) {
    metric.label.retain(|pair| {
        key.label(pair.name.as_deref().unwrap_or_default())
            .is_none()
    });
    // Exactly: growing by doubling would leave a push's label vectors half empty.
    metric.label.reserve_exact(key.labels().count() + 1);
    metric.label.extend(
        key.labels()
            .map(|(name, value)| LabelPair::new(name, value)),
    );
    if !metric
        .label
        .iter()
        .any(|pair| pair.name.as_deref() == Some("instance"))
    {
        metric.label.push(LabelPair::new("instance", ""));
    }
    metric.label.sort_by(|a, b| a.name.cmp(&b.name));
}

/// The checks of `client_golang`'s `checkMetricConsistency` that do not need the store.
fn check_metric(
    family: &str,
    kind: MetricType,
    metric: &Metric,
    names: NameRules,
) -> Result<(), Inconsistency> {
    let has_value = match kind {
        MetricType::Counter => metric.counter.is_some(),
        MetricType::Gauge => metric.gauge.is_some(),
        MetricType::Summary => metric.summary.is_some(),
        MetricType::Untyped => metric.untyped.is_some(),
        MetricType::Histogram | MetricType::GaugeHistogram => metric.histogram.is_some(),
    };
    if !has_value {
        return Err(Inconsistency::WrongValueType {
            family: family.to_owned(),
            metric: go_metric_text(metric),
            kind: go_type_name(kind),
        });
    }
    let mut previous: Option<&str> = None;
    for pair in &metric.label {
        let label = pair.name.as_deref().unwrap_or_default();
        if previous == Some(label) {
            return Err(Inconsistency::DuplicateLabelName {
                family: family.to_owned(),
                metric: go_metric_text(metric),
                label: label.to_owned(),
            });
        }
        if !names.allows_label_name(label) {
            return Err(Inconsistency::InvalidLabelName {
                family: family.to_owned(),
                metric: go_metric_text(metric),
                label: label.to_owned(),
            });
        }
        let explicit = match kind {
            MetricType::Summary if label == "quantile" => Some("quantile"),
            MetricType::Histogram | MetricType::GaugeHistogram if label == "le" => Some("le"),
            _ => None,
        };
        if let Some(label) = explicit {
            return Err(Inconsistency::ExplicitReservedLabel {
                family: family.to_owned(),
                metric: go_metric_text(metric),
                label,
            });
        }
        previous = Some(label);
    }
    Ok(())
}

/// Summary/histogram extra series against the other families of the same push.
fn check_suffixes_within(prepared: &[PreparedFamily]) -> Result<(), Inconsistency> {
    let kinds: BTreeMap<&str, MetricType> = prepared
        .iter()
        .map(|p| (p.family.name.as_deref().unwrap_or_default(), p.kind))
        .collect();
    for name in kinds.keys() {
        if let Some(clash) = suffix_clash(name, |other| kinds.get(other).copied()) {
            return Err(clash);
        }
    }
    Ok(())
}

/// Whether a family `name` collides, by the extra series names of summaries and
/// histograms, with a family that `kind_of` says exists (with its type).
pub(crate) fn suffix_clash(
    name: &str,
    kind_of: impl Fn(&str) -> Option<MetricType>,
) -> Option<Inconsistency> {
    // `name` is x_sum / x_count / x_bucket and x is a summary or histogram.
    for suffix in HISTOGRAM_SUFFIXES {
        let Some(base) = name.strip_suffix(suffix) else {
            continue;
        };
        let kind = match kind_of(base) {
            Some(MetricType::Summary) if suffix != "_bucket" => "summary",
            Some(MetricType::Histogram | MetricType::GaugeHistogram) => "histogram",
            _ => continue,
        };
        return Some(Inconsistency::SuffixClash {
            name: name.to_owned(),
            base: base.to_owned(),
            kind,
        });
    }
    // `name` is a summary or histogram and one of its extra series names exists.
    let (suffixes, kind): (&[&str], _) = match kind_of(name) {
        Some(MetricType::Summary) => (&SUMMARY_SUFFIXES, "summary"),
        Some(MetricType::Histogram | MetricType::GaugeHistogram) => {
            (&HISTOGRAM_SUFFIXES, "histogram")
        }
        _ => return None,
    };
    suffixes.iter().find_map(|suffix| {
        let other = format!("{name}{suffix}");
        kind_of(&other).map(|_| Inconsistency::SuffixClash {
            name: other,
            base: name.to_owned(),
            kind,
        })
    })
}

/// The identity of a series inside its family is its labels with a non-empty value:
/// Prometheus treats an empty value as an absent label, so `m{a=""}` and `m` are the
/// same series. This hashes that identity (labels are sorted by name already); equal
/// hashes are confirmed with [`same_identity`] before anything is rejected.
///
/// The SipHash keys are random per process ([`series_hash_keys`]): with fixed keys a
/// collision could be computed offline, and a colliding series taken for one of the
/// pushing group's own would let a real duplicate through. Hashes are never persisted.
pub(crate) fn series_hash(labels: &[LabelPair]) -> u64 {
    let mut hasher = series_hash_keys().build_hasher();
    for (name, value) in identity_pairs(labels) {
        name.hash(&mut hasher);
        value.hash(&mut hasher);
    }
    hasher.finish()
}

/// The process's keys for [`series_hash`], drawn once from the OS's randomness.
pub(crate) fn series_hash_keys() -> &'static RandomState {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    KEYS.get_or_init(RandomState::new)
}

/// Whether two label sets name the same series (non-empty labels equal).
pub(crate) fn same_identity(a: &[LabelPair], b: &[LabelPair]) -> bool {
    identity_pairs(a).eq(identity_pairs(b))
}

fn identity_pairs(labels: &[LabelPair]) -> impl Iterator<Item = (&str, &str)> {
    labels
        .iter()
        .map(|pair| {
            (
                pair.name.as_deref().unwrap_or_default(),
                pair.value.as_deref().unwrap_or_default(),
            )
        })
        .filter(|(_, value)| !value.is_empty())
}

/// The type as Go's `MetricType.String()` names it.
#[must_use]
pub fn go_type_name(kind: MetricType) -> &'static str {
    match kind {
        MetricType::Counter => "COUNTER",
        MetricType::Gauge => "GAUGE",
        MetricType::Summary => "SUMMARY",
        MetricType::Untyped => "UNTYPED",
        MetricType::Histogram => "HISTOGRAM",
        MetricType::GaugeHistogram => "GAUGE_HISTOGRAM",
    }
}

/// A metric in protobuf compact text as Go 1.5.1's `%s` prints it in gatherer errors:
/// `label:<name:"job" value:"x" > gauge:<value:1 > `.
pub(crate) fn go_metric_text(metric: &Metric) -> String {
    let mut out = String::new();
    for pair in &metric.label {
        out.push_str("label:<");
        if let Some(name) = &pair.name {
            let _ = write!(out, "name:{} ", proto_quote(name));
        }
        if let Some(value) = &pair.value {
            let _ = write!(out, "value:{} ", proto_quote(value));
        }
        out.push_str("> ");
    }
    let simple = [
        ("gauge", metric.gauge.as_ref().map(|g| g.value)),
        ("counter", metric.counter.as_ref().map(|c| c.value)),
    ];
    for (field, value) in simple {
        if let Some(value) = value {
            write_value_field(&mut out, field, value);
        }
    }
    if let Some(summary) = &metric.summary {
        out.push_str("summary:<");
        if let Some(count) = summary.sample_count {
            let _ = write!(out, "sample_count:{count} ");
        }
        if let Some(sum) = summary.sample_sum {
            let _ = write!(out, "sample_sum:{} ", proto_float(sum));
        }
        for quantile in &summary.quantile {
            out.push_str("quantile:<");
            if let Some(q) = quantile.quantile {
                let _ = write!(out, "quantile:{} ", proto_float(q));
            }
            if let Some(v) = quantile.value {
                let _ = write!(out, "value:{} ", proto_float(v));
            }
            out.push_str("> ");
        }
        out.push_str("> ");
    }
    if let Some(untyped) = &metric.untyped {
        write_value_field(&mut out, "untyped", untyped.value);
    }
    if let Some(timestamp) = metric.timestamp_ms {
        let _ = write!(out, "timestamp_ms:{timestamp} ");
    }
    if let Some(histogram) = &metric.histogram {
        out.push_str("histogram:<");
        if let Some(count) = histogram.sample_count {
            let _ = write!(out, "sample_count:{count} ");
        }
        if let Some(sum) = histogram.sample_sum {
            let _ = write!(out, "sample_sum:{} ", proto_float(sum));
        }
        for bucket in &histogram.bucket {
            out.push_str("bucket:<");
            if let Some(count) = bucket.cumulative_count {
                let _ = write!(out, "cumulative_count:{count} ");
            }
            if let Some(bound) = bucket.upper_bound {
                let _ = write!(out, "upper_bound:{} ", proto_float(bound));
            }
            out.push_str("> ");
        }
        out.push_str("> ");
    }
    out
}

fn write_value_field(out: &mut String, field: &str, value: Option<f64>) {
    match value {
        Some(value) => {
            let _ = write!(out, "{field}:<value:{} > ", proto_float(value));
        }
        None => {
            let _ = write!(out, "{field}:<> ");
        }
    }
}

/// Go protobuf text floats: `%g`-like shortest digits, `inf`, `-inf`, `nan`.
fn proto_float(value: f64) -> String {
    if value.is_nan() {
        "nan".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "inf" } else { "-inf" }.to_owned()
    } else {
        format_float(value)
    }
}

/// Go protobuf text strings: printable ASCII as is, other bytes as octal escapes.
fn proto_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for byte in text.bytes() {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b' '..=b'~' => out.push(char::from(byte)),
            _ => {
                let _ = write!(out, "\\{byte:03o}");
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Gauge, Untyped};

    fn key(path: &str) -> GroupingKey {
        GroupingKey::from_path(path).expect("test paths are valid")
    }

    fn untyped(name: &str, labels: &[(&str, &str)], value: f64) -> MetricFamily {
        MetricFamily {
            name: Some(name.to_owned()),
            r#type: Some(MetricType::Untyped as i32),
            metric: vec![Metric {
                label: labels.iter().map(|(n, v)| LabelPair::new(*n, *v)).collect(),
                untyped: Some(Untyped { value: Some(value) }),
                ..Metric::default()
            }],
            ..MetricFamily::default()
        }
    }

    #[test]
    fn grouping_labels_overwrite_and_instance_is_added() {
        let mut metric = Metric {
            label: vec![
                LabelPair::new("zone", "eu"),
                LabelPair::new("job", "body"),
                LabelPair::new("a", "x"),
            ],
            ..Metric::default()
        };
        apply_grouping_labels(&mut metric, &key("job/url/a/"));
        let labels: Vec<(String, String)> = metric
            .label
            .iter()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.value.clone().unwrap_or_default(),
                )
            })
            .collect();
        let want = [("a", ""), ("instance", ""), ("job", "url"), ("zone", "eu")];
        assert_eq!(
            labels,
            want.map(|(n, v)| (n.to_owned(), v.to_owned())),
            "grouping labels win, instance added, sorted"
        );
    }

    #[test]
    fn prepare_rejects_what_go_rejects_with_go_texts() {
        let grouping = key("job/j");
        let reserved = ReservedNames::default();
        let twice = MetricFamily {
            metric: [untyped("m", &[], 1.0), untyped("m", &[], 2.0)]
                .into_iter()
                .flat_map(|f| f.metric)
                .collect(),
            ..untyped("m", &[], 0.0)
        };
        let err = prepare(&grouping, vec![twice], &reserved, NameRules::Legacy)
            .expect_err("same series twice");
        assert!(
            err.to_string().starts_with(
                "collected metric \"m\" { label:<name:\"instance\" value:\"\" > label:<name:\"job\" value:\"j\" > untyped:<value:2 > } was collected before"
            ),
            "{err}"
        );
        let err = prepare(
            &grouping,
            vec![untyped("m", &[("__x", "b")], 1.0)],
            &reserved,
            NameRules::Legacy,
        )
        .expect_err("reserved label prefix");
        assert!(
            err.to_string()
                .starts_with("collected metric \"m\" { label:<name:\"__x\" value:\"b\" > l"),
            "{err}"
        );
        let mut stamped = untyped("m", &[], 1.0);
        stamped.metric[0].timestamp_ms = Some(0);
        let err = prepare(&grouping, vec![stamped], &reserved, NameRules::Legacy)
            .expect_err("timestamp of 0");
        assert_eq!(err, Inconsistency::Timestamps);
    }

    #[test]
    fn prepare_rejects_what_would_break_the_exposition() {
        let grouping = key("job/j");
        let reserved = ReservedNames::new(["tracer_total".to_owned()]);
        let gauge_without_value = MetricFamily {
            r#type: Some(MetricType::Gauge as i32),
            ..untyped("g", &[], 1.0)
        };
        let mut summary = untyped("s", &[], 1.0);
        summary.r#type = Some(MetricType::Summary as i32);
        summary.metric[0].untyped = None;
        summary.metric[0].summary = Some(Box::default());
        let gauge_count = MetricFamily {
            name: Some("s_count".to_owned()),
            r#type: Some(MetricType::Gauge as i32),
            metric: vec![Metric {
                gauge: Some(Gauge { value: Some(1.0) }),
                ..Metric::default()
            }],
            ..MetricFamily::default()
        };
        let table: Vec<(&str, Vec<MetricFamily>, &str)> = vec![
            (
                "empty-label twin",
                vec![MetricFamily {
                    metric: [untyped("m", &[("a", "")], 1.0), untyped("m", &[], 2.0)]
                        .into_iter()
                        .flat_map(|f| f.metric)
                        .collect(),
                    ..untyped("m", &[], 0.0)
                }],
                "was collected before",
            ),
            (
                "reserved prefix",
                vec![untyped("dropgate_x", &[], 1.0)],
                "reserved",
            ),
            (
                "source family",
                vec![untyped("tracer_total", &[], 1.0)],
                "reserved",
            ),
            (
                "source family suffix",
                vec![untyped("tracer_total_count", &[], 1.0)],
                "reserved",
            ),
            (
                "bad metric name",
                vec![untyped("1m", &[], 1.0)],
                "not a valid metric name",
            ),
            (
                "value of another type",
                vec![gauge_without_value],
                "is not a GAUGE",
            ),
            (
                "summary and its _count",
                vec![summary, gauge_count],
                "collides with summary",
            ),
            (
                "duplicate label",
                vec![untyped("m", &[("a", "1"), ("a", "2")], 1.0)],
                "two or more labels",
            ),
        ];
        for (name, families, want) in table {
            let err = prepare(&grouping, families, &reserved, NameRules::Legacy).expect_err(name);
            assert!(err.to_string().contains(want), "{name}: {err}");
        }
    }

    #[test]
    fn series_hash_is_keyed_per_process_not_fixed() {
        // Fixed keys (DefaultHasher::new) make collisions computable offline; the
        // keys here come from the OS once per process, so they are not those.
        let labels = [LabelPair::new("a", "1"), LabelPair::new("b", "2")];
        let mut fixed = std::hash::DefaultHasher::new();
        for (name, value) in identity_pairs(&labels) {
            name.hash(&mut fixed);
            value.hash(&mut fixed);
        }
        assert_ne!(
            series_hash(&labels),
            fixed.finish(),
            "keyed, not the fixed keys"
        );
        assert_eq!(
            series_hash(&labels),
            series_hash(&labels),
            "stable within the process"
        );
    }

    #[test]
    fn series_identity_ignores_empty_values() {
        let with_empty = [LabelPair::new("a", ""), LabelPair::new("b", "x")];
        let without = [LabelPair::new("b", "x")];
        let other = [LabelPair::new("b", "y")];
        assert_eq!(series_hash(&with_empty), series_hash(&without));
        assert!(same_identity(&with_empty, &without));
        assert!(!same_identity(&with_empty, &other));
    }
}
