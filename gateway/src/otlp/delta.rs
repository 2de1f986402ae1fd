//! Delta temporality: an exporter set to delta sends what changed since its last
//! export; Prometheus wants running totals. Each delta point is added to the same
//! series of the group as stored, and stored series that this export does not mention
//! stay (they did not change). Exact where the sum of two points is one point:
//!
//! - sums (monotonic or not): values added;
//! - histograms: counts and sums added when the bucket bounds are the same; a point
//!   with other bounds is refused (its increments cannot be split over old bounds);
//! - exponential histograms: buckets added, the finer of two scales merged down to the
//!   coarser first (exact); a point with another zero threshold is refused.

use std::collections::BTreeMap;

use super::translate::{encode_buckets, OtlpGroup};
use crate::grouping::GroupingKey;
use crate::model::{Histogram, LabelPair, Metric, MetricFamily};

/// Adds `group`'s delta families to `stored` (the group's families as the store holds
/// them). Returns the points refused, with why, leaving those series as they were.
pub fn accumulate(
    group: &mut OtlpGroup,
    key: &GroupingKey,
    stored: &[MetricFamily],
) -> (usize, Vec<String>) {
    let mut refused = 0;
    let mut messages = Vec::new();
    for family in &mut group.families {
        let name = family.name.clone().unwrap_or_default();
        if !group.delta_families.contains(&name) {
            continue;
        }
        let Some(old) = stored
            .iter()
            .find(|old| old.name.as_deref() == Some(&name) && old.r#type == family.r#type)
        else {
            continue;
        };
        let mut kept = Vec::with_capacity(family.metric.len());
        for mut metric in std::mem::take(&mut family.metric) {
            let labels = own_labels(&metric.label, key);
            let previous = old
                .metric
                .iter()
                .find(|old| own_labels(&old.label, key) == labels);
            match previous.map(|previous| add(&mut metric, previous)) {
                Some(Err(why)) => {
                    refused += 1;
                    messages.push(format!("{name}: {why}"));
                    // The series stays as stored.
                    kept.extend(previous.cloned());
                }
                _ => kept.push(metric),
            }
        }
        for previous in &old.metric {
            let labels = own_labels(&previous.label, key);
            if !kept.iter().any(|new| own_labels(&new.label, key) == labels) {
                kept.push(previous.clone());
            }
        }
        family.metric = kept;
    }
    (refused, messages)
}

/// The labels of a series without the group's (which the store adds to every series).
fn own_labels<'a>(labels: &'a [LabelPair], key: &GroupingKey) -> Vec<&'a LabelPair> {
    let mut own: Vec<&LabelPair> = labels
        .iter()
        .filter(|pair| {
            let name = pair.name.as_deref().unwrap_or_default();
            key.label(name).is_none() && !(name == "instance" && pair.value.as_deref() == Some(""))
        })
        .collect();
    own.sort_by(|a, b| a.name.cmp(&b.name));
    own
}

/// Adds the stored `previous` point to the delta point `metric`.
fn add(metric: &mut Metric, previous: &Metric) -> Result<(), String> {
    if let (Some(counter), Some(old)) = (&mut metric.counter, &previous.counter) {
        counter.value = Some(counter.value.unwrap_or(0.0) + old.value.unwrap_or(0.0));
    }
    if let (Some(gauge), Some(old)) = (&mut metric.gauge, &previous.gauge) {
        gauge.value = Some(gauge.value.unwrap_or(0.0) + old.value.unwrap_or(0.0));
    }
    if let (Some(histogram), Some(old)) = (&mut metric.histogram, &previous.histogram) {
        if histogram.schema.is_some() {
            add_native(histogram, old)?;
        } else {
            add_classic(histogram, old)?;
        }
    }
    Ok(())
}

fn add_classic(histogram: &mut Histogram, old: &Histogram) -> Result<(), String> {
    let bounds = |h: &Histogram| h.bucket.iter().map(|b| b.upper_bound).collect::<Vec<_>>();
    if bounds(histogram) != bounds(old) {
        return Err("the bucket bounds changed between delta exports; the increments cannot be added to the old buckets, so this point was refused (keep the bounds fixed, or export cumulative)".to_owned());
    }
    for (bucket, old) in histogram.bucket.iter_mut().zip(&old.bucket) {
        bucket.cumulative_count =
            Some(bucket.cumulative_count.unwrap_or(0) + old.cumulative_count.unwrap_or(0));
    }
    add_totals(histogram, old);
    Ok(())
}

fn add_totals(histogram: &mut Histogram, old: &Histogram) {
    histogram.sample_count =
        Some(histogram.sample_count.unwrap_or(0) + old.sample_count.unwrap_or(0));
    histogram.sample_sum =
        Some(histogram.sample_sum.unwrap_or(0.0) + old.sample_sum.unwrap_or(0.0));
}

fn add_native(histogram: &mut Histogram, old: &Histogram) -> Result<(), String> {
    let (Some(schema), Some(old_schema)) = (histogram.schema, old.schema) else {
        return Err("a native histogram was stored where a classic one is now sent".to_owned());
    };
    if histogram.zero_threshold != old.zero_threshold {
        return Err(
            "the zero threshold changed between delta exports; this point was refused".to_owned(),
        );
    }
    let target = schema.min(old_schema);
    let merge = |spans: &[crate::model::BucketSpan], deltas: &[i64], from: i32| {
        let mut out = BTreeMap::new();
        for (index, count) in decode_buckets(spans, deltas) {
            let mut index = index;
            for _ in target..from {
                // Prometheus index j at schema s is (j + 1) >> 1 at schema s - 1.
                index = (index + 1) >> 1;
            }
            *out.entry(index).or_insert(0_u64) += count;
        }
        out
    };
    let mut positive = merge(&histogram.positive_span, &histogram.positive_delta, schema);
    for (index, count) in merge(&old.positive_span, &old.positive_delta, old_schema) {
        *positive.entry(index).or_default() += count;
    }
    let mut negative = merge(&histogram.negative_span, &histogram.negative_delta, schema);
    for (index, count) in merge(&old.negative_span, &old.negative_delta, old_schema) {
        *negative.entry(index).or_default() += count;
    }
    (histogram.positive_span, histogram.positive_delta) = encode_buckets(positive);
    (histogram.negative_span, histogram.negative_delta) = encode_buckets(negative);
    histogram.schema = Some(target);
    histogram.zero_count = Some(histogram.zero_count.unwrap_or(0) + old.zero_count.unwrap_or(0));
    add_totals(histogram, old);
    Ok(())
}

/// Spans and deltas back to counts by Prometheus index.
fn decode_buckets(spans: &[crate::model::BucketSpan], deltas: &[i64]) -> Vec<(i64, u64)> {
    let mut out = Vec::new();
    let mut index = 0_i64;
    let mut count = 0_i64;
    let mut deltas = deltas.iter();
    for (n, span) in spans.iter().enumerate() {
        let offset = i64::from(span.offset.unwrap_or(0));
        index = if n == 0 { offset } else { index + offset + 1 };
        for step in 0..span.length.unwrap_or(0) {
            if step > 0 {
                index += 1;
            }
            count += deltas.next().copied().unwrap_or(0);
            if count > 0 {
                out.push((index, count as u64));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Bucket, MetricType};

    fn native(schema: i32, buckets: &[(i64, u64)]) -> Histogram {
        let (positive_span, positive_delta) =
            encode_buckets(buckets.iter().copied().collect::<BTreeMap<_, _>>());
        Histogram {
            sample_count: Some(buckets.iter().map(|(_, c)| c).sum()),
            sample_sum: Some(1.0),
            schema: Some(schema),
            zero_threshold: Some(1e-128),
            zero_count: Some(0),
            positive_span,
            positive_delta,
            ..Histogram::default()
        }
    }

    fn group_of(histogram: Histogram) -> OtlpGroup {
        OtlpGroup {
            delta_families: vec!["h".to_owned()],
            families: vec![family(histogram)],
        }
    }

    fn family(histogram: Histogram) -> MetricFamily {
        MetricFamily {
            name: Some("h".to_owned()),
            r#type: Some(MetricType::Histogram as i32),
            metric: vec![Metric {
                label: vec![LabelPair::new("job", "j")],
                histogram: Some(Box::new(histogram)),
                ..Metric::default()
            }],
            ..MetricFamily::default()
        }
    }

    #[test]
    fn native_buckets_add_at_the_coarser_schema() {
        let key = GroupingKey::from_labels(
            BTreeMap::from([("job".to_owned(), "j".to_owned())]),
            crate::names::NameRules::Legacy,
        )
        .expect("valid key");
        // Schema 1 indexes 1, 2 and 5 are schema 0 indexes 1, 1 and 3.
        let mut group = group_of(native(1, &[(1, 1), (2, 2), (5, 4)]));
        let stored = [family(native(0, &[(1, 10), (2, 20)]))];
        let (refused, why) = accumulate(&mut group, &key, &stored);
        assert_eq!(refused, 0, "{why:?}");
        let sum = group.families[0].metric[0]
            .histogram
            .as_deref()
            .expect("histogram");
        assert_eq!(sum.schema, Some(0));
        assert_eq!(
            decode_buckets(&sum.positive_span, &sum.positive_delta),
            [(1, 13), (2, 20), (3, 4)]
        );
        assert_eq!((sum.sample_count, sum.sample_sum), (Some(37), Some(2.0)));
    }

    #[test]
    fn classic_buckets_must_keep_their_bounds() {
        let key = GroupingKey::from_labels(
            BTreeMap::from([("job".to_owned(), "j".to_owned())]),
            crate::names::NameRules::Legacy,
        )
        .expect("valid key");
        let classic = |bound: f64, count: u64| Histogram {
            sample_count: Some(count),
            sample_sum: Some(1.0),
            bucket: vec![Bucket {
                cumulative_count: Some(count),
                upper_bound: Some(bound),
                ..Bucket::default()
            }],
            ..Histogram::default()
        };
        let mut same = group_of(classic(1.0, 2));
        assert_eq!(accumulate(&mut same, &key, &[family(classic(1.0, 3))]).0, 0);
        let added = same.families[0].metric[0]
            .histogram
            .as_deref()
            .expect("histogram");
        assert_eq!(added.bucket[0].cumulative_count, Some(5));
        let mut moved = group_of(classic(2.0, 2));
        let (refused, why) = accumulate(&mut moved, &key, &[family(classic(1.0, 3))]);
        assert_eq!(refused, 1);
        assert!(why[0].contains("bounds changed"), "{why:?}");
        let kept = moved.families[0].metric[0]
            .histogram
            .as_deref()
            .expect("histogram");
        assert_eq!(
            kept.bucket[0].cumulative_count,
            Some(3),
            "the stored series stays"
        );
    }
}
