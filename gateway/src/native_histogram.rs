//! The buckets of a native (exponential) histogram as intervals, the way Prometheus's
//! histogram model iterates them (the model Pushgateway ≥ 1.8 uses for `/api/v1/metrics`):
//! negative buckets from the most negative up, the zero bucket, then positive buckets;
//! empty buckets skipped.
//!
//! For schema `s` the positive bucket with index `i` is `(2^((i-1)/2^s), 2^(i/2^s)]`; the
//! negative one mirrors it as `[-2^(i/2^s), -2^((i-1)/2^s))`; the zero bucket is
//! `[-threshold, threshold]`.

use crate::model::{BucketSpan, Histogram};

/// Which ends of an interval belong to it, coded as upstream's API does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Boundaries {
    /// `(lower, upper]`
    UpperInclusive = 0,
    /// `[lower, upper)`
    LowerInclusive = 1,
    /// `(lower, upper)`
    Open = 2,
    /// `[lower, upper]`
    Closed = 3,
}

impl Boundaries {
    fn of(lower_inclusive: bool, upper_inclusive: bool) -> Self {
        match (lower_inclusive, upper_inclusive) {
            (false, true) => Self::UpperInclusive,
            (true, false) => Self::LowerInclusive,
            (false, false) => Self::Open,
            (true, true) => Self::Closed,
        }
    }
}

/// A bucket's count: integer histograms count observations, float histograms carry
/// (possibly fractional) counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Count {
    Integer(u64),
    Float(f64),
}

impl Count {
    fn is_zero(self) -> bool {
        match self {
            Self::Integer(n) => n == 0,
            Self::Float(x) => x == 0.0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub boundaries: Boundaries,
    pub lower: f64,
    pub upper: f64,
    pub count: Count,
}

/// Whether the histogram is a float histogram, by the rule upstream applies: a non-zero
/// float sample count or float zero count.
#[must_use]
pub fn is_float(histogram: &Histogram) -> bool {
    histogram.sample_count_float.unwrap_or_default() > 0.0
        || histogram.zero_count_float.unwrap_or_default() > 0.0
}

/// The histogram's total count: the float one for float histograms.
#[must_use]
pub fn total(histogram: &Histogram) -> Count {
    if is_float(histogram) {
        Count::Float(histogram.sample_count_float.unwrap_or_default())
    } else {
        Count::Integer(histogram.sample_count.unwrap_or_default())
    }
}

/// The non-empty buckets in ascending order.
#[must_use]
pub fn intervals(histogram: &Histogram) -> Vec<Interval> {
    let schema = histogram.schema.unwrap_or_default();
    let float = is_float(histogram);
    let side = |spans: &[BucketSpan], deltas: &[i64], counts: &[f64], positive: bool| {
        let counts: Vec<(i32, Count)> = if float {
            indices(spans)
                .zip(counts.iter().map(|c| Count::Float(*c)))
                .collect()
        } else {
            // Integer buckets are deltas to the previous bucket, the first to zero.
            let mut current = 0_i64;
            indices(spans)
                .zip(deltas.iter().map(|d| {
                    current = current.wrapping_add(*d);
                    // As upstream converts: a negative (invalid) count wraps.
                    #[allow(clippy::cast_sign_loss)]
                    Count::Integer(current as u64)
                }))
                .collect()
        };
        counts
            .into_iter()
            .filter(|(_, count)| !count.is_zero())
            .map(|(index, count)| {
                let (low, high) = (bound(index - 1, schema), bound(index, schema));
                let (lower, upper) = if positive { (low, high) } else { (-high, -low) };
                Interval {
                    boundaries: Boundaries::of(lower < 0.0, upper > 0.0),
                    lower,
                    upper,
                    count,
                }
            })
            .collect::<Vec<_>>()
    };
    let mut out = side(
        &histogram.negative_span,
        &histogram.negative_delta,
        &histogram.negative_count,
        false,
    );
    out.reverse();
    let zero = if float {
        Count::Float(histogram.zero_count_float.unwrap_or_default())
    } else {
        Count::Integer(histogram.zero_count.unwrap_or_default())
    };
    if !zero.is_zero() {
        let threshold = histogram.zero_threshold.unwrap_or_default();
        out.push(Interval {
            boundaries: Boundaries::Closed,
            lower: -threshold,
            upper: threshold,
            count: zero,
        });
    }
    out.extend(side(
        &histogram.positive_span,
        &histogram.positive_delta,
        &histogram.positive_count,
        true,
    ));
    out
}

/// The bucket indices the spans describe: each span starts `offset` after the end of
/// the previous one (the first at `offset` from zero).
fn indices(spans: &[BucketSpan]) -> impl Iterator<Item = i32> + '_ {
    let mut next = 0_i32;
    spans.iter().flat_map(move |span| {
        let start = next.wrapping_add(span.offset.unwrap_or_default());
        let length = span.length.unwrap_or_default();
        next = start.wrapping_add_unsigned(length);
        (0..length).map(move |i| start.wrapping_add_unsigned(i))
    })
}

/// The upper bound of bucket `index` in `schema`: `2^(index / 2^schema)`, computed as
/// upstream does (a fraction in [0.5, 1) times a power of two, so powers of two are
/// exact), with the last finite bucket ending at the largest float. The fraction is the
/// nearest double to `2^(k/2^schema)/2`, where upstream's table is off by one unit in
/// the last place for a few `k` (so the 16th digit of such a bound can differ).
fn bound(index: i32, schema: i32) -> f64 {
    if schema < 0 {
        let exp = i64::from(index) << schema.unsigned_abs().min(32);
        if exp == 1024 {
            return f64::MAX;
        }
        return ldexp(1.0, exp);
    }
    let schema = schema.min(8);
    let fraction_index = index & ((1 << schema) - 1);
    // 2^(k / 2^schema) / 2, in [0.5, 1).
    let fraction = (f64::from(fraction_index) / f64::from(1_i32 << schema)).exp2() / 2.0;
    let exp = i64::from(index >> schema) + 1;
    if fraction_index == 0 && exp == 1025 {
        return f64::MAX;
    }
    ldexp(fraction, exp)
}

/// `x * 2^exp`, saturating to infinity or zero as Go's `math.Ldexp` does.
fn ldexp(x: f64, exp: i64) -> f64 {
    // Two steps keep the intermediate power representable for exponents in [-2044, 2046].
    let exp = exp.clamp(-2200, 2200);
    #[allow(clippy::cast_possible_truncation)]
    let half = (exp / 2) as i32;
    #[allow(clippy::cast_possible_truncation)]
    let rest = (exp - exp / 2) as i32;
    x * 2f64.powi(half) * 2f64.powi(rest)
}

#[cfg(test)]
// Exact floats are the point: the API prints them digit for digit.
#[allow(clippy::float_cmp)]
mod tests {
    use super::*;

    fn span(offset: i32, length: u32) -> BucketSpan {
        BucketSpan {
            offset: Some(offset),
            length: Some(length),
        }
    }

    #[test]
    fn bounds_are_upstreams_table() {
        // 2^(k/2^s)/2 rounded to the nearest double (computed with 60 digits), times the
        // bucket's power of two. Upstream's precomputed table agrees on most entries and
        // is one unit in the last place lower on some (schema 3, k = 7: ...711 where the
        // nearest double is ...712); dropgate gives the nearest double.
        assert_eq!(bound(1, 3), 0.545_253_866_332_628_8 * 2.0);
        assert_eq!(bound(3, 3), 0.648_419_777_325_504_8 * 2.0);
        assert_eq!(bound(7, 3), 0.917_004_043_204_671_2 * 2.0);
        assert_eq!(bound(5, 4), 0.620_928_906_036_742 * 2.0);
        assert_eq!(bound(-3, 3), 0.771_105_412_703_970_4);
        assert_eq!(bound(0, 0), 1.0);
        assert_eq!(bound(-1, 0), 0.5);
        assert_eq!(bound(2, 1), 2.0);
        assert_eq!(bound(1, -2), 16.0);
        assert_eq!(bound(256, -2), f64::MAX);
        assert_eq!(bound(1024, 0), f64::MAX);
    }

    #[test]
    fn integer_buckets_in_upstreams_order() {
        // Schema 0: positive buckets 0 and 1 (deltas 2, +1 → 2, 3), one empty gap, bucket 3
        // (delta -3 → 0, skipped), bucket 4 (+4 → 4); negative bucket 1 (count 1); zero
        // bucket 5 within ±0.001.
        let h = Histogram {
            sample_count: Some(15),
            schema: Some(0),
            zero_threshold: Some(0.001),
            zero_count: Some(5),
            positive_span: vec![span(0, 2), span(1, 2)],
            positive_delta: vec![2, 1, -3, 4],
            negative_span: vec![span(1, 1)],
            negative_delta: vec![1],
            ..Histogram::default()
        };
        let got: Vec<(u8, f64, f64, Count)> = intervals(&h)
            .into_iter()
            .map(|i| (i.boundaries as u8, i.lower, i.upper, i.count))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, -2.0, -1.0, Count::Integer(1)),
                (3, -0.001, 0.001, Count::Integer(5)),
                (0, 0.5, 1.0, Count::Integer(2)),
                (0, 1.0, 2.0, Count::Integer(3)),
                (0, 8.0, 16.0, Count::Integer(4)),
            ]
        );
        assert_eq!(total(&h), Count::Integer(15));
    }

    #[test]
    fn float_histograms_take_absolute_counts() {
        let h = Histogram {
            sample_count_float: Some(3.5),
            schema: Some(1),
            positive_span: vec![span(-1, 2)],
            positive_count: vec![1.5, 2.0],
            ..Histogram::default()
        };
        assert!(is_float(&h));
        assert_eq!(total(&h), Count::Float(3.5));
        let got: Vec<(f64, f64, Count)> = intervals(&h)
            .into_iter()
            .map(|i| (i.lower, i.upper, i.count))
            .collect();
        assert_eq!(
            got,
            vec![
                (0.5, bound(-1, 1), Count::Float(1.5)),
                (bound(-1, 1), 1.0, Count::Float(2.0)),
            ]
        );
    }
}
