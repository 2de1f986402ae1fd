//! The OpenMetrics 1.0 text exposition, for scrapers that ask for it (Prometheus does by
//! default). The Pushgateway never offered it (upstream #400); the layout follows the
//! OpenMetrics specification the way Prometheus's own Go encoder writes it, so a
//! scraper sees the same series over either format:
//!
//! - a counter's family is named without `_total` in `# TYPE`/`# HELP`/`# UNIT`, its
//!   sample with it; a counter whose name lacks `_total` is typed `unknown` (OpenMetrics
//!   requires the suffix), as untyped metrics are;
//! - `# UNIT` when a protobuf push gave the family a unit;
//! - exemplars of counters and histogram buckets (protobuf pushes) after their sample,
//!   `_created` lines from created timestamps, timestamps in seconds;
//! - floats always with a `.` or an exponent (`1.0`), counts as integers;
//! - gauge histograms with `_gcount`/`_gsum`;
//! - the caller ends the exposition with [`EOF`].

use crate::exposition::{write_escaped, write_float, write_name, write_uint};
use crate::model::{Exemplar, LabelPair, Metric, MetricFamily, MetricType, Timestamp};
use crate::names::is_legacy_name;

/// The `Content-Type` of an OpenMetrics 1.0 answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The line that ends every OpenMetrics exposition.
pub const EOF: &[u8] = b"# EOF\n";

/// Appends `families` (without the final [`EOF`]); families without metrics are left out.
pub fn write(families: &[MetricFamily], out: &mut Vec<u8>) {
    for family in families.iter().filter(|f| !f.metric.is_empty()) {
        write_family(family, out);
    }
}

fn write_family(family: &MetricFamily, out: &mut Vec<u8>) {
    let name = family.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        return;
    }
    let Ok(kind) = MetricType::try_from(family.r#type.unwrap_or_default()) else {
        return;
    };
    let total = kind == MetricType::Counter && name.ends_with("_total");
    let family_name = if total { &name[..name.len() - 6] } else { name };
    let type_name = match kind {
        MetricType::Counter if total => "counter",
        MetricType::Counter | MetricType::Untyped => "unknown",
        MetricType::Gauge => "gauge",
        MetricType::Summary => "summary",
        MetricType::Histogram => "histogram",
        MetricType::GaugeHistogram => "gaugehistogram",
    };
    if let Some(help) = &family.help {
        out.extend_from_slice(b"# HELP ");
        write_name(out, family_name);
        out.push(b' ');
        write_escaped(out, help, true);
        out.push(b'\n');
    }
    out.extend_from_slice(b"# TYPE ");
    write_name(out, family_name);
    out.push(b' ');
    out.extend_from_slice(type_name.as_bytes());
    out.push(b'\n');
    if let Some(unit) = family.unit.as_deref().filter(|u| !u.is_empty()) {
        out.extend_from_slice(b"# UNIT ");
        write_name(out, family_name);
        out.push(b' ');
        write_escaped(out, unit, true);
        out.push(b'\n');
    }
    for metric in &family.metric {
        write_metric(name, family_name, kind, metric, out);
    }
}

/// A sample line's value.
#[derive(Clone, Copy)]
enum Value {
    Float(f64),
    Count(u64),
}

struct Line<'a> {
    metric: &'a Metric,
    out: &'a mut Vec<u8>,
}

impl Line<'_> {
    fn sample(
        &mut self,
        name: &str,
        suffix: &str,
        extra: Option<(&str, f64)>,
        value: Value,
        exemplar: Option<&Exemplar>,
    ) {
        let out = &mut *self.out;
        let opened = write_series_name(out, name, suffix);
        write_labels(out, &self.metric.label, extra, opened);
        out.push(b' ');
        match value {
            Value::Float(x) => write_om_float(out, x),
            Value::Count(n) => write_uint(out, n),
        }
        if let Some(ms) = self.metric.timestamp_ms {
            out.push(b' ');
            write_timestamp(out, i128::from(ms) * 1_000_000);
        }
        if let Some(e) = exemplar.filter(|e| !e.label.is_empty()) {
            out.extend_from_slice(b" # ");
            write_labels(out, &e.label, None, false);
            out.push(b' ');
            write_om_float(out, e.value.unwrap_or_default());
            if let Some(ts) = &e.timestamp {
                out.push(b' ');
                write_timestamp(out, nanos(ts));
            }
        }
        out.push(b'\n');
    }

    fn created(&mut self, family_name: &str, created: Option<&Timestamp>) {
        let Some(ts) = created else { return };
        let out = &mut *self.out;
        let opened = write_series_name(out, family_name, "_created");
        write_labels(out, &self.metric.label, None, opened);
        out.push(b' ');
        write_om_float(out, seconds(ts));
        out.push(b'\n');
    }
}

fn write_metric(
    name: &str,
    family_name: &str,
    kind: MetricType,
    metric: &Metric,
    out: &mut Vec<u8>,
) {
    let mut line = Line { metric, out };
    match kind {
        MetricType::Counter => {
            let Some(counter) = &metric.counter else {
                return;
            };
            line.sample(
                name,
                "",
                None,
                Value::Float(counter.value.unwrap_or_default()),
                counter.exemplar.as_deref(),
            );
            if name.ends_with("_total") {
                line.created(family_name, counter.created_timestamp.as_ref());
            }
        }
        MetricType::Gauge => {
            let Some(gauge) = &metric.gauge else { return };
            line.sample(
                name,
                "",
                None,
                Value::Float(gauge.value.unwrap_or_default()),
                None,
            );
        }
        MetricType::Untyped => {
            let Some(untyped) = &metric.untyped else {
                return;
            };
            line.sample(
                name,
                "",
                None,
                Value::Float(untyped.value.unwrap_or_default()),
                None,
            );
        }
        MetricType::Summary => {
            let Some(summary) = &metric.summary else {
                return;
            };
            for q in &summary.quantile {
                line.sample(
                    name,
                    "",
                    Some(("quantile", q.quantile.unwrap_or_default())),
                    Value::Float(q.value.unwrap_or_default()),
                    None,
                );
            }
            line.sample(
                name,
                "_sum",
                None,
                Value::Float(summary.sample_sum.unwrap_or_default()),
                None,
            );
            line.sample(
                name,
                "_count",
                None,
                Value::Count(summary.sample_count.unwrap_or_default()),
                None,
            );
            line.created(family_name, summary.created_timestamp.as_ref());
        }
        MetricType::Histogram | MetricType::GaugeHistogram => {
            if let Some(histogram) = &metric.histogram {
                let gauge = kind == MetricType::GaugeHistogram;
                write_histogram(&mut line, name, family_name, histogram, gauge);
            }
        }
    }
}

/// A (gauge) histogram's buckets, with `+Inf` added when the push had none, then sum
/// and count.
fn write_histogram(
    line: &mut Line<'_>,
    name: &str,
    family_name: &str,
    histogram: &crate::model::Histogram,
    gauge: bool,
) {
    let mut inf_seen = false;
    for b in &histogram.bucket {
        let bound = b.upper_bound.unwrap_or_default();
        inf_seen |= bound == f64::INFINITY;
        line.sample(
            name,
            "_bucket",
            Some(("le", bound)),
            Value::Count(b.cumulative_count.unwrap_or_default()),
            b.exemplar.as_ref(),
        );
    }
    let count = histogram.sample_count.unwrap_or_default();
    if !inf_seen {
        let inf = Some(("le", f64::INFINITY));
        line.sample(name, "_bucket", inf, Value::Count(count), None);
    }
    let sum = Value::Float(histogram.sample_sum.unwrap_or_default());
    if gauge {
        line.sample(name, "_gcount", None, Value::Count(count), None);
        line.sample(name, "_gsum", None, sum, None);
    } else {
        line.sample(name, "_sum", None, sum, None);
        line.sample(name, "_count", None, Value::Count(count), None);
        line.created(family_name, histogram.created_timestamp.as_ref());
    }
}

/// A series' name, `name` + `suffix`: as it is when legacy, else quoted as the first
/// item inside the braces (`{"my.metric_total"`); says whether it opened the braces.
fn write_series_name(out: &mut Vec<u8>, name: &str, suffix: &str) -> bool {
    if is_legacy_name(name) {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(suffix.as_bytes());
        return false;
    }
    out.extend_from_slice(b"{\"");
    write_escaped(out, name, true);
    write_escaped(out, suffix, true);
    out.push(b'"');
    true
}

/// The label set; `opened`: the braces are open already (after a quoted name).
fn write_labels(out: &mut Vec<u8>, labels: &[LabelPair], extra: Option<(&str, f64)>, opened: bool) {
    if labels.is_empty() && extra.is_none() {
        if opened {
            out.push(b'}');
        }
        return;
    }
    let mut separator = if opened { b',' } else { b'{' };
    for label in labels {
        out.push(separator);
        write_name(out, label.name.as_deref().unwrap_or_default());
        out.extend_from_slice(b"=\"");
        write_escaped(out, label.value.as_deref().unwrap_or_default(), true);
        out.push(b'"');
        separator = b',';
    }
    if let Some((name, value)) = extra {
        out.push(separator);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"=\"");
        write_om_float(out, value);
        out.push(b'"');
    }
    out.push(b'}');
}

/// A float as OpenMetrics wants it: Go's shortest `%g`, with `.0` added where that has
/// neither a `.` nor an exponent (so `1` is `1.0`, `-0` is `0.0`).
fn write_om_float(out: &mut Vec<u8>, value: f64) {
    let start = out.len();
    write_float(out, value);
    let written = &out[start..];
    let special = value.is_nan() || value.is_infinite();
    if !special && !written.iter().any(|b| matches!(b, b'.' | b'e')) {
        out.extend_from_slice(b".0");
    }
}

/// A timestamp (nanoseconds since the epoch) in seconds as a plain decimal
/// (`1700000000.5`): exact, and read right by every OpenMetrics parser (Python's
/// `prometheus_client` misreads exponent forms as timestamps).
fn write_timestamp(out: &mut Vec<u8>, nanos: i128) {
    if nanos < 0 {
        out.push(b'-');
    }
    let nanos = nanos.unsigned_abs();
    out.extend_from_slice((nanos / 1_000_000_000).to_string().as_bytes());
    let fraction = format!("{:09}", nanos % 1_000_000_000);
    out.push(b'.');
    let trimmed = fraction.trim_end_matches('0');
    out.extend_from_slice(if trimmed.is_empty() {
        b"0"
    } else {
        trimmed.as_bytes()
    });
}

fn nanos(ts: &Timestamp) -> i128 {
    i128::from(ts.seconds.unwrap_or_default()) * 1_000_000_000
        + i128::from(ts.nanos.unwrap_or_default())
}

#[allow(clippy::cast_precision_loss)]
fn seconds(ts: &Timestamp) -> f64 {
    ts.seconds.unwrap_or_default() as f64 + f64::from(ts.nanos.unwrap_or_default()) / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Bucket, Counter, Gauge, Histogram, Quantile, Summary, Untyped};

    fn label(name: &str, value: &str) -> LabelPair {
        LabelPair {
            name: Some(name.to_owned()),
            value: Some(value.to_owned()),
        }
    }

    fn family(name: &str, kind: MetricType, metric: Vec<Metric>) -> MetricFamily {
        MetricFamily {
            name: Some(name.to_owned()),
            help: Some(format!("Help for {name}.")),
            r#type: Some(kind as i32),
            metric,
            unit: None,
        }
    }

    fn text(families: &[MetricFamily]) -> String {
        let mut out = Vec::new();
        write(families, &mut out);
        out.extend_from_slice(EOF);
        String::from_utf8(out).unwrap()
    }

    fn timestamp() -> Timestamp {
        Timestamp {
            seconds: Some(1_700_000_000),
            nanos: Some(500_000_000),
        }
    }

    /// Counters (with and without `_total`), a gauge with a unit, an untyped metric.
    fn scalar_families() -> Vec<MetricFamily> {
        let ts = timestamp();
        vec![
            family(
                "jobs_total",
                MetricType::Counter,
                vec![Metric {
                    label: vec![label("job", "batch")],
                    counter: Some(Counter {
                        value: Some(3.0),
                        exemplar: Some(Box::new(Exemplar {
                            label: vec![label("trace_id", "abc")],
                            value: Some(1.0),
                            timestamp: Some(ts.clone()),
                        })),
                        created_timestamp: Some(ts.clone()),
                    }),
                    ..Metric::default()
                }],
            ),
            family(
                "bare",
                MetricType::Counter,
                vec![Metric {
                    counter: Some(Counter {
                        value: Some(0.5),
                        ..Counter::default()
                    }),
                    ..Metric::default()
                }],
            ),
            MetricFamily {
                unit: Some("seconds".to_owned()),
                ..family(
                    "temperature_seconds",
                    MetricType::Gauge,
                    vec![Metric {
                        gauge: Some(Gauge { value: Some(-0.0) }),
                        timestamp_ms: Some(1_700_000_000_123),
                        ..Metric::default()
                    }],
                )
            },
            family(
                "u",
                MetricType::Untyped,
                vec![Metric {
                    untyped: Some(Untyped { value: Some(1e21) }),
                    ..Metric::default()
                }],
            ),
        ]
    }

    /// A summary, a histogram, a gauge histogram and an empty family.
    fn distribution_families() -> Vec<MetricFamily> {
        let ts = timestamp();
        vec![
            family(
                "rpc",
                MetricType::Summary,
                vec![Metric {
                    summary: Some(Box::new(Summary {
                        sample_count: Some(7),
                        sample_sum: Some(2.0),
                        quantile: vec![Quantile {
                            quantile: Some(0.5),
                            value: Some(f64::NAN),
                        }],
                        created_timestamp: None,
                    })),
                    ..Metric::default()
                }],
            ),
            family(
                "latency",
                MetricType::Histogram,
                vec![Metric {
                    histogram: Some(Box::new(Histogram {
                        sample_count: Some(4),
                        sample_sum: Some(1.25),
                        bucket: vec![Bucket {
                            cumulative_count: Some(1),
                            upper_bound: Some(1.0),
                            exemplar: Some(Exemplar {
                                label: vec![label("trace_id", "q\"x")],
                                value: Some(0.7),
                                timestamp: None,
                            }),
                            ..Bucket::default()
                        }],
                        created_timestamp: Some(ts),
                        ..Histogram::default()
                    })),
                    ..Metric::default()
                }],
            ),
            family(
                "queue",
                MetricType::GaugeHistogram,
                vec![Metric {
                    histogram: Some(Box::new(Histogram {
                        sample_count: Some(2),
                        sample_sum: Some(3.0),
                        bucket: vec![Bucket {
                            cumulative_count: Some(2),
                            upper_bound: Some(f64::INFINITY),
                            ..Bucket::default()
                        }],
                        ..Histogram::default()
                    })),
                    ..Metric::default()
                }],
            ),
            family("empty", MetricType::Gauge, vec![]),
        ]
    }

    #[test]
    fn every_type_in_openmetrics_layout() {
        let mut families = scalar_families();
        families.extend(distribution_families());
        assert_eq!(
            text(&families),
            "# HELP jobs Help for jobs_total.\n\
             # TYPE jobs counter\n\
             jobs_total{job=\"batch\"} 3.0 # {trace_id=\"abc\"} 1.0 1700000000.5\n\
             jobs_created{job=\"batch\"} 1.7000000005e+09\n\
             # HELP bare Help for bare.\n\
             # TYPE bare unknown\n\
             bare 0.5\n\
             # HELP temperature_seconds Help for temperature_seconds.\n\
             # TYPE temperature_seconds gauge\n\
             # UNIT temperature_seconds seconds\n\
             temperature_seconds 0.0 1700000000.123\n\
             # HELP u Help for u.\n\
             # TYPE u unknown\n\
             u 1e+21\n\
             # HELP rpc Help for rpc.\n\
             # TYPE rpc summary\n\
             rpc{quantile=\"0.5\"} NaN\n\
             rpc_sum 2.0\n\
             rpc_count 7\n\
             # HELP latency Help for latency.\n\
             # TYPE latency histogram\n\
             latency_bucket{le=\"1.0\"} 1 # {trace_id=\"q\\\"x\"} 0.7\n\
             latency_bucket{le=\"+Inf\"} 4\n\
             latency_sum 1.25\n\
             latency_count 4\n\
             latency_created 1.7000000005e+09\n\
             # HELP queue Help for queue.\n\
             # TYPE queue gaugehistogram\n\
             queue_bucket{le=\"+Inf\"} 2\n\
             queue_gcount 2\n\
             queue_gsum 3.0\n\
             # EOF\n"
        );
    }
}
