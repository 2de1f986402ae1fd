//! The text parser against the verdicts of the real pushgateway 1.5.1.
//!
//! `data/parser-cases.json` holds 38 push bodies and `data/parser-verdicts.tsv` the status
//! and body Go answered for each. Rows whose text starts with "text format parsing
//! error" are parser errors and must match in full; "pushed metrics are invalid or
//! inconsistent" rows are store rejections, so the parser must accept those bodies. The
//! second half checks the structure parsed from the valid cases.
//!
//! `data/parser-extra-cases.json` holds 319 more bodies (edge cases and randomised ones)
//! with what the same binary answered: the parse error text, or for accepted bodies the
//! exposition it then served for them (pushed to `job="diff"`). It is a regression net
//! for both the parser and the text writer.

use gateway::codec::text::parse;
use gateway::exposition::{sort_families, write_text};
use gateway::model::{LabelPair, Metric, MetricFamily, MetricType};

mod common;

use common::{cases, verdicts, EXTRA};

#[test]
fn every_case_gets_go_verdict() {
    let cases = cases();
    let verdicts = verdicts();
    assert_eq!(cases.len(), 38, "the spec has 38 cases");
    assert_eq!(verdicts.len(), cases.len(), "one verdict per case");
    let mut failures = Vec::new();
    for (name, body) in &cases {
        let (status, text) = verdicts.get(name).expect("every case has a verdict");
        let result = parse(body.as_bytes());
        let parser_error = *status == 400 && text.starts_with("text format parsing error");
        match (&result, parser_error) {
            (Ok(_), false) => {}
            (Err(err), true) if err.to_string() == *text => {}
            (Ok(_), true) => failures.push(format!("{name}: parsed, Go said {text:?}")),
            (Err(err), _) => failures.push(format!("{name}: got {err}, Go said {status} {text:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "verdicts differ:\n{}",
        failures.join("\n")
    );
}

/// The body of a named case, so the structure tests use exactly the spec's bytes.
fn case(name: &str) -> Vec<MetricFamily> {
    let body = cases()
        .into_iter()
        .find(|(case, _)| case == name)
        .map(|(_, body)| body)
        .expect("the case exists");
    parse(body.as_bytes()).expect("the case parses")
}

fn labels(metric: &Metric) -> Vec<(&str, &str)> {
    metric
        .label
        .iter()
        .map(|LabelPair { name, value }| {
            (
                name.as_deref().unwrap_or_default(),
                value.as_deref().unwrap_or_default(),
            )
        })
        .collect()
}

/// One sample of a flat family: labels, value and timestamp.
type FlatSample = (Vec<(String, String)>, f64, Option<i64>);

/// A flat view of one family: name, type, help, and each metric's labels and value.
#[derive(Debug, PartialEq)]
struct Flat {
    name: String,
    kind: MetricType,
    help: Option<String>,
    samples: Vec<FlatSample>,
}

fn flat(families: &[MetricFamily]) -> Vec<Flat> {
    families
        .iter()
        .map(|family| Flat {
            name: family.name.clone().expect("families are named"),
            kind: MetricType::try_from(family.r#type.expect("families are typed"))
                .expect("a known type"),
            help: family.help.clone(),
            samples: family
                .metric
                .iter()
                .map(|metric| {
                    let value = metric
                        .untyped
                        .as_ref()
                        .and_then(|u| u.value)
                        .or_else(|| metric.gauge.as_ref().and_then(|g| g.value))
                        .or_else(|| metric.counter.as_ref().and_then(|c| c.value))
                        .expect("a simple value");
                    let labels = labels(metric)
                        .into_iter()
                        .map(|(n, v)| (n.to_owned(), v.to_owned()))
                        .collect();
                    (labels, value, metric.timestamp_ms)
                })
                .collect(),
        })
        .collect()
}

fn untyped(name: &str, samples: &[(&[(&str, &str)], f64)]) -> Flat {
    Flat {
        name: name.to_owned(),
        kind: MetricType::Untyped,
        help: None,
        samples: samples
            .iter()
            .map(|(labels, value)| {
                let labels = labels
                    .iter()
                    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                    .collect();
                (labels, *value, None)
            })
            .collect(),
    }
}

#[test]
fn simple_cases_parse_to_expected_families() {
    let table: Vec<(&str, Vec<Flat>)> = vec![
        ("valid_simple", vec![untyped("m", &[(&[], 1.0)])]),
        ("blank_lines", vec![untyped("m", &[(&[], 1.0)])]),
        ("tab_separator", vec![untyped("m", &[(&[], 1.0)])]),
        ("openmetrics_eof", vec![untyped("m", &[(&[], 1.0)])]),
        ("comment_line", vec![untyped("m", &[(&[], 1.0)])]),
        (
            "trailing_comma_labels",
            vec![untyped("m", &[(&[("a", "b")], 1.0)])],
        ),
        (
            "space_before_labels",
            vec![untyped("m", &[(&[("a", "b")], 1.0)])],
        ),
        (
            "label_value_with_newline_escape",
            vec![untyped("m", &[(&[("a", "x\ny")], 1.0)])],
        ),
        (
            "same_series_twice",
            vec![untyped("m", &[(&[], 1.0), (&[], 2.0)])],
        ),
        (
            "reserved_label_prefix",
            vec![untyped("m", &[(&[("__x", "b")], 1.0)])],
        ),
        (
            "TYPE_for_other_name_then_sample",
            vec![untyped("c_total", &[(&[], 1.0)])],
        ),
        (
            "HELP_escape",
            vec![Flat {
                help: Some("line\nbreak \\ ok".to_owned()),
                ..untyped("m", &[(&[], 1.0)])
            }],
        ),
        (
            "HELP_after_samples",
            vec![Flat {
                kind: MetricType::Counter,
                help: Some("x".to_owned()),
                ..untyped("m", &[(&[], 1.0)])
            }],
        ),
        ("empty_body", vec![]),
    ];
    for (name, want) in table {
        assert_eq!(flat(&case(name)), want, "case {name}");
    }
}

#[test]
fn timestamp_is_kept_for_the_store_to_reject() {
    let families = case("timestamp_int");
    assert_eq!(families[0].metric[0].timestamp_ms, Some(1000), "1000 ms");
}

#[test]
fn nan_and_infinities_are_values() {
    let families = flat(&case("nan_inf"));
    let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["m", "n", "o"], "order of appearance");
    assert!(families[0].samples[0].1.is_nan(), "NaN");
    // Bit patterns, because clippy rightly frowns on float equality.
    let bits = |i: usize| families[i].samples[0].1.to_bits();
    assert_eq!(bits(1), f64::INFINITY.to_bits(), "+Inf");
    assert_eq!(bits(2), f64::NEG_INFINITY.to_bits(), "-Inf");
}

#[test]
fn histogram_is_assembled_from_its_lines() {
    let families = case("histogram_valid");
    assert_eq!(families.len(), 1, "one family h");
    let family = &families[0];
    assert_eq!(family.name.as_deref(), Some("h"), "family name");
    assert_eq!(family.r#type, Some(MetricType::Histogram as i32), "type");
    assert_eq!(family.metric.len(), 1, "all lines make one histogram");
    let histogram = family.metric[0].histogram.as_ref().expect("a histogram");
    let buckets: Vec<(f64, u64)> = histogram
        .bucket
        .iter()
        .map(|b| {
            (
                b.upper_bound.expect("bound"),
                b.cumulative_count.expect("count"),
            )
        })
        .collect();
    assert_eq!(buckets, [(1.0, 1), (f64::INFINITY, 2)], "buckets");
    assert_eq!(histogram.sample_sum, Some(3.0), "sum");
    assert_eq!(histogram.sample_count, Some(2), "count");
    assert!(family.metric[0].label.is_empty(), "le is not a label");
}

#[test]
fn histogram_bucket_without_le_is_an_empty_histogram() {
    let families = case("histogram_bucket_without_le");
    let metric = &families[0].metric[0];
    let histogram = metric.histogram.as_ref().expect("a histogram");
    assert!(histogram.bucket.is_empty(), "no bucket without le");
    assert_eq!(histogram.sample_count, None, "no count");
    assert_eq!(histogram.sample_sum, None, "no sum");
}

#[test]
fn summary_is_assembled_from_its_lines() {
    let families = case("summary_valid");
    assert_eq!(families.len(), 1, "one family s");
    assert_eq!(
        families[0].r#type,
        Some(MetricType::Summary as i32),
        "summary type"
    );
    let metric = &families[0].metric[0];
    let summary = metric.summary.as_ref().expect("a summary");
    assert_eq!(summary.quantile.len(), 1, "one quantile");
    assert_eq!(summary.quantile[0].quantile, Some(0.5), "quantile 0.5");
    assert_eq!(summary.quantile[0].value, Some(1.0), "its value");
    assert_eq!(summary.sample_sum, Some(1.0), "sum");
    assert_eq!(summary.sample_count, Some(1), "count");
    assert!(metric.label.is_empty(), "quantile is not a label");
}

/// One recorded answer of pushgateway 1.5.1 to `PUT /metrics/job/diff`.
#[derive(serde::Deserialize)]
struct ExtraCase {
    name: String,
    body: String,
    status: u16,
    /// The full error text when Go's parser rejected the body.
    parse_error: Option<String>,
    /// The exposition of the pushed families when Go accepted the push.
    exposition: Option<String>,
}

/// What the pushgateway does to pushed labels before serving them: the URL's `job`
/// wins, `instance=""` is added when absent, and labels are sorted by name.
fn as_pushed_to_job_diff(families: &mut [MetricFamily]) {
    for metric in families.iter_mut().flat_map(|f| f.metric.iter_mut()) {
        metric.label.retain(|l| l.name.as_deref() != Some("job"));
        metric.label.push(LabelPair::new("job", "diff"));
        if !metric
            .label
            .iter()
            .any(|l| l.name.as_deref() == Some("instance"))
        {
            metric.label.push(LabelPair::new("instance", ""));
        }
        metric.label.sort_by(|a, b| a.name.cmp(&b.name));
    }
    sort_families(families);
}

#[test]
fn extra_cases_match_recorded_go_answers() {
    let cases: Vec<ExtraCase> =
        serde_json::from_str(EXTRA).expect("parser-extra-cases.json is a list of cases");
    assert!(cases.len() > 300, "the recording is complete");
    let mut failures = Vec::new();
    for case in &cases {
        let result = parse(case.body.as_bytes());
        match (&case.parse_error, result) {
            (Some(want), Err(err)) if err.to_string() == *want => {}
            (Some(want), got) => {
                failures.push(format!("{}: want {want:?}, got {got:?}", case.name));
            }
            (None, Err(err)) => {
                failures.push(format!(
                    "{}: Go answered {}, we failed: {err}",
                    case.name, case.status
                ));
            }
            (None, Ok(mut families)) => {
                let Some(want) = &case.exposition else {
                    continue;
                };
                as_pushed_to_job_diff(&mut families);
                let mut out = Vec::new();
                write_text(&families, &mut out);
                let got = String::from_utf8(out).expect("the exposition is UTF-8");
                if got != *want {
                    failures.push(format!("{}: exposition\n{want}\nvs ours\n{got}", case.name));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "differences from Go:\n{}",
        failures.join("\n")
    );
}
